package evict

import "servelab/policies"

// list is an intrusive doubly linked list over block indices: O(1) push, pop and unlink
// with no allocation after Reset.
type list struct {
	links      []link
	head, tail int32
	n          int
}

// link keeps a block's neighbours together: one cache line per touch.
type link struct {
	prev, next int32
	in         bool
}

const none int32 = -1

func (l *list) reset(n int) {
	if cap(l.links) < n {
		l.links = make([]link, n)
	}
	l.links = l.links[:n]
	clear(l.links)
	l.head, l.tail, l.n = none, none, 0
}

func (l *list) pushBack(b int32) {
	l.links[b] = link{prev: l.tail, next: none, in: true}
	if l.tail == none {
		l.head = b
	} else {
		l.links[l.tail].next = b
	}
	l.tail = b
	l.n++
}

func (l *list) unlink(b int32) {
	lb := &l.links[b]
	if !lb.in {
		return
	}
	p, n := lb.prev, lb.next
	lb.in = false
	if p == none {
		l.head = n
	} else {
		l.links[p].next = n
	}
	if n == none {
		l.tail = p
	} else {
		l.links[n].prev = p
	}
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
