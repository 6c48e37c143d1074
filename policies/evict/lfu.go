package evict

import (
	"fmt"
	"math/bits"

	"servelab/policies"
)

// lfuBuckets is how many hit counts get an O(1) queue of their own; blocks hit more often
// than that are rare and go to a heap.
const lfuBuckets = 64

// LFU evicts the cached block with the fewest cache hits, the least recently freed among
// equals. Uncached free blocks hold nothing worth keeping, so they are reused first.
//
// Cached blocks with h < lfuBuckets hits wait in queue 1+h in the order they were freed,
// and a bitmap of the non-empty queues finds the fewest hits in one instruction; only
// blocks with more hits pay for the heap.
type LFU struct {
	q        queues // queue 0: uncached blocks; queue 1+h: cached blocks with h hits
	nonEmpty uint64 // bit h is set when queue 1+h holds a block
	many     keyHeap
	frees    uint64
}

// Reset makes every block an uncached free block, reused in index order.
func (p *LFU) Reset(numBlocks int) {
	p.q.reset(numBlocks, 1+lfuBuckets)
	p.many.reset(numBlocks)
	p.nonEmpty, p.frees = 0, 0
	for b := range int32(numBlocks) {
		p.q.pushBack(0, b)
	}
}

// Free adds b to the free set.
func (p *LFU) Free(b int32, info BlockInfo) {
	if p.many.has(b) || p.q.queued(b) {
		panic(fmt.Sprintf("evict: block %d freed while already free", b))
	}
	p.frees++
	switch {
	case !info.Cached:
		p.q.pushBack(0, b)
	case info.Hits < lfuBuckets:
		p.q.pushBack(int32(1+info.Hits), b)
		p.nonEmpty |= 1 << info.Hits
	default:
		p.many.push(b, uint64(info.Hits), p.frees)
	}
}

// Touch takes b out of the free set.
func (p *LFU) Touch(b int32) {
	if q := p.q.unlink(b); q != none {
		p.clearIfEmpty(q)
		return
	}
	p.many.remove(b)
}

func (p *LFU) clearIfEmpty(q int32) {
	if q > 0 && p.q.empty(q) {
		p.nonEmpty &^= 1 << (q - 1)
	}
}

// Pop takes an uncached block if there is one, else the cached block with the fewest hits
// that was freed longest ago.
func (p *LFU) Pop() (int32, bool) {
	if b, ok := p.q.popFront(0); ok {
		return b, true
	}
	if p.nonEmpty != 0 {
		q := int32(1 + bits.TrailingZeros64(p.nonEmpty))
		b, _ := p.q.popFront(q)
		p.clearIfEmpty(q)
		return b, true
	}
	return p.many.popMin()
}

// Len is the number of free blocks.
func (p *LFU) Len() int { return p.q.n + p.many.len() }

// Spec is the policy's resolved spec; it has no parameters.
func (p *LFU) Spec() policies.Spec { return policies.Spec{Name: "lfu"} }

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "lfu",
		Doc:  "evict the cached block with the fewest cache hits, the least recently freed among equals; uncached free blocks are reused first",
		New:  func(*policies.Params, policies.Env) (Policy, error) { return &LFU{}, nil },
	})
}
