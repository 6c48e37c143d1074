package evict

import "fmt"

// none marks the absence of a block (an empty queue end, a missing neighbour) or of a
// queue (a block in no queue).
const none int32 = -1

// queues is a set of FIFO queues threaded through per-block links, like vLLM's
// FreeKVCacheBlockQueue: a block is in at most one queue, and push, pop and unlinking a
// block from the middle are O(1) without allocation after reset.
type queues struct {
	links []link
	ends  []ends
	n     int // blocks in any queue
}

// link keeps a block's neighbours and queue together: one cache line per touch.
type link struct {
	prev, next int32
	queue      int32 // none when the block is in no queue
}

type ends struct{ head, tail int32 }

// reset empties the queues and sizes them for numBlocks blocks and numQueues queues.
func (qs *queues) reset(numBlocks, numQueues int) {
	if cap(qs.links) < numBlocks {
		qs.links = make([]link, numBlocks)
	}
	qs.links = qs.links[:numBlocks]
	for i := range qs.links {
		qs.links[i] = link{prev: none, next: none, queue: none}
	}
	if cap(qs.ends) < numQueues {
		qs.ends = make([]ends, numQueues)
	}
	qs.ends = qs.ends[:numQueues]
	for i := range qs.ends {
		qs.ends[i] = ends{head: none, tail: none}
	}
	qs.n = 0
}

// queued reports whether b is in any queue.
func (qs *queues) queued(b int32) bool { return qs.links[b].queue != none }

// pushBack appends b to queue q. Pushing a block that is already queued would corrupt the
// links, so it panics: the block manager freed a block twice.
func (qs *queues) pushBack(q, b int32) {
	if qs.links[b].queue != none {
		panic(fmt.Sprintf("evict: block %d freed while already free", b))
	}
	e := &qs.ends[q]
	qs.links[b] = link{prev: e.tail, next: none, queue: q}
	if e.tail == none {
		e.head = b
	} else {
		qs.links[e.tail].next = b
	}
	e.tail = b
	qs.n++
}

// unlink removes b from its queue and returns that queue, or none if b was in none.
func (qs *queues) unlink(b int32) int32 {
	lb := &qs.links[b]
	q := lb.queue
	if q == none {
		return none
	}
	p, n := lb.prev, lb.next
	*lb = link{prev: none, next: none, queue: none}
	e := &qs.ends[q]
	if p == none {
		e.head = n
	} else {
		qs.links[p].next = n
	}
	if n == none {
		e.tail = p
	} else {
		qs.links[n].prev = p
	}
	qs.n--
	return q
}

// empty reports whether queue q holds no block.
func (qs *queues) empty(q int32) bool { return qs.ends[q].head == none }

// popFront removes and returns the head of queue q.
func (qs *queues) popFront(q int32) (int32, bool) {
	b := qs.ends[q].head
	if b == none {
		return 0, false
	}
	qs.unlink(b)
	return b, true
}
