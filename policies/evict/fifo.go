package evict

import (
	"fmt"

	"servelab/policies"
)

// FIFO evicts the cached block that was filled earliest, however often it was hit since.
// Uncached free blocks hold nothing worth keeping, so they are reused first, in the order
// they were freed.
type FIFO struct {
	uncached queues
	cached   keyHeap // by (Filled, free order)
	frees    uint64
}

// Reset makes every block an uncached free block, reused in index order.
func (p *FIFO) Reset(numBlocks int) {
	p.uncached.reset(numBlocks, 1)
	p.cached.reset(numBlocks)
	p.frees = 0
	for b := range int32(numBlocks) {
		p.uncached.pushBack(0, b)
	}
}

// Free adds b to the free set.
func (p *FIFO) Free(b int32, info BlockInfo) {
	if p.cached.has(b) || p.uncached.queued(b) {
		panic(fmt.Sprintf("evict: block %d freed while already free", b))
	}
	p.frees++
	if !info.Cached {
		p.uncached.pushBack(0, b)
		return
	}
	// The free order breaks ties so that equal keys still evict deterministically.
	p.cached.push(b, info.Filled, p.frees)
}

// Touch takes b out of the free set.
func (p *FIFO) Touch(b int32) {
	if !p.cached.remove(b) {
		p.uncached.unlink(b)
	}
}

// Pop takes an uncached block if there is one, else the cached block filled earliest.
func (p *FIFO) Pop() (int32, bool) {
	if b, ok := p.uncached.popFront(0); ok {
		return b, true
	}
	return p.cached.popMin()
}

// Len is the number of free blocks.
func (p *FIFO) Len() int { return p.uncached.n + p.cached.len() }

// Spec is the policy's resolved spec; it has no parameters.
func (p *FIFO) Spec() policies.Spec { return policies.Spec{Name: "fifo"} }

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "fifo",
		Doc:  "evict the cached block filled earliest, whatever its use since; uncached free blocks are reused first",
		New:  func(*policies.Params, policies.Env) (Policy, error) { return &FIFO{}, nil },
	})
}
