package evict

import "servelab/policies"

// LRU is vLLM v1's free-block queue: Reset queues every block in index order, Pop takes
// the head, Free appends at the tail, and a cache hit (Touch) takes a free block out of
// the middle. Cached and uncached free blocks share the one queue, as in vLLM, so an
// uncached block is not preferred: what makes the eviction least-recently-used is that
// the block manager frees a finished request's blocks tail first.
type LRU struct{ q queues }

// Reset queues blocks 0..numBlocks-1 in order.
func (p *LRU) Reset(numBlocks int) {
	p.q.reset(numBlocks, 1)
	for b := range int32(numBlocks) {
		p.q.pushBack(0, b)
	}
}

// Free appends b at the tail of the queue.
func (p *LRU) Free(b int32, _ BlockInfo) { p.q.pushBack(0, b) }

// Touch takes b out of the queue.
func (p *LRU) Touch(b int32) { p.q.unlink(b) }

// Pop takes the head of the queue.
func (p *LRU) Pop() (int32, bool) { return p.q.popFront(0) }

// Len is the number of free blocks.
func (p *LRU) Len() int { return p.q.n }

// Spec is the policy's resolved spec; it has no parameters.
func (p *LRU) Spec() policies.Spec { return policies.Spec{Name: "lru"} }

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "lru",
		Doc:  "vLLM v1's free-block queue: reuse the block freed longest ago, cached or not; a finished request's blocks are freed tail first",
		New:  func(*policies.Params, policies.Env) (Policy, error) { return &LRU{}, nil },
	})
}
