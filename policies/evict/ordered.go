package evict

import "servelab/policies"

// ordered keeps worthless (uncached) free blocks in a queue reused first, and cached free
// blocks in a heap whose order the policy chooses. FIFO and LFU are this with different
// keys.
type ordered struct {
	uncached list
	cached   blockHeap
	frees    uint64
	key      func(info BlockInfo, freeSeq uint64) (primary, secondary uint64)
}

func (p *ordered) Reset(n int) {
	p.uncached.reset(n)
	p.cached.reset(n)
	p.frees = 0
	for b := range int32(n) {
		p.uncached.pushBack(b)
	}
}

func (p *ordered) Free(b int32, info BlockInfo) {
	p.frees++
	if !info.Cached {
		p.uncached.pushBack(b)
		return
	}
	k1, k2 := p.key(info, p.frees)
	p.cached.push(b, k1, k2)
}

func (p *ordered) Touch(b int32) {
	if !p.cached.remove(b) {
		p.uncached.unlink(b)
	}
}

func (p *ordered) Pop() (int32, bool) {
	if b, ok := p.uncached.popFront(); ok {
		return b, true
	}
	return p.cached.popMin()
}

func (p *ordered) Len() int { return p.uncached.n + len(p.cached.items) }

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "fifo",
		Doc:  "evict the cached block filled earliest, whatever its use since; free uncached blocks go first",
		New: func(*policies.Params, policies.Env) (Policy, error) {
			return &ordered{key: func(info BlockInfo, _ uint64) (uint64, uint64) { return info.Filled, 0 }}, nil
		},
	})
	Registry.Register(policies.Entry[Policy]{
		Name: "lfu",
		Doc:  "evict the cached block with the fewest cache hits, the least recently freed among equals; free uncached blocks go first",
		New: func(*policies.Params, policies.Env) (Policy, error) {
			return &ordered{key: func(info BlockInfo, seq uint64) (uint64, uint64) { return uint64(info.Hits), seq }}, nil
		},
	})
}
