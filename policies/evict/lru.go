package evict

import "servelab/policies"

// list is an intrusive doubly linked list over block indices: O(1) push, pop and unlink
// with no allocation after Reset.
type list struct {
	prev, next []int32
	in         []bool
	head, tail int32
	n          int
}

const none int32 = -1

func (l *list) reset(n int) {
	l.prev = resize(l.prev, n)
	l.next = resize(l.next, n)
	l.in = resizeBool(l.in, n)
	l.head, l.tail, l.n = none, none, 0
}

func (l *list) pushBack(b int32) {
	l.prev[b], l.next[b] = l.tail, none
	if l.tail == none {
		l.head = b
	} else {
		l.next[l.tail] = b
	}
	l.tail = b
	l.in[b] = true
	l.n++
}

func (l *list) unlink(b int32) {
	if !l.in[b] {
		return
	}
	p, n := l.prev[b], l.next[b]
	if p == none {
		l.head = n
	} else {
		l.next[p] = n
	}
	if n == none {
		l.tail = p
	} else {
		l.prev[n] = p
	}
	l.in[b] = false
	l.n--
}

func (l *list) popFront() (int32, bool) {
	b := l.head
	if b == none {
		return 0, false
	}
	l.unlink(b)
	return b, true
}

func resize(s []int32, n int) []int32 {
	if cap(s) < n {
		return make([]int32, n)
	}
	return s[:n]
}

func resizeBool(s []bool, n int) []bool {
	if cap(s) < n {
		return make([]bool, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// LRU is vLLM v1's free-block queue: allocation takes the head, a freed block joins the
// tail, and a cache hit takes a free block out of the middle.
type LRU struct{ q list }

func (p *LRU) Reset(n int) {
	p.q.reset(n)
	for b := range int32(n) {
		p.q.pushBack(b)
	}
}
func (p *LRU) Free(b int32, _ BlockInfo) { p.q.pushBack(b) }
func (p *LRU) Touch(b int32)             { p.q.unlink(b) }
func (p *LRU) Pop() (int32, bool)        { return p.q.popFront() }
func (p *LRU) Len() int                  { return p.q.n }

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "lru",
		Doc:  "vLLM's free-block queue: reuse the block freed longest ago; a finished request's blocks are freed tail first",
		New:  func(*policies.Params, policies.Env) (Policy, error) { return &LRU{}, nil },
	})
}
