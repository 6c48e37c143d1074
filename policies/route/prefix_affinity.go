package route

import (
	"math/rand/v2"
	"strconv"

	"servelab/policies"
	"servelab/serving"
)

// prefixIndexParams are the parameters shared by every policy that keeps a PrefixIndex,
// under GIE's meaning, in engine blocks.
var prefixIndexParams = []policies.Param{
	{Name: "lru_capacity", Default: strconv.Itoa(DefaultLRUCapacityPerServer),
		Doc: "block hashes remembered per instance, LRU-evicted (GIE/llm-d lruCapacityPerServer)"},
	{Name: "max_prefix_blocks", Default: strconv.Itoa(DefaultMaxPrefixBlocksToMatch),
		Doc: "leading prompt blocks matched and recorded (GIE/llm-d maxPrefixBlocksToMatch)"},
}

// prefixIndexFromParams builds the PrefixIndex the parameters describe, over engine blocks.
func prefixIndexFromParams(p *policies.Params) *PrefixIndex {
	capacity := p.Int("lru_capacity", DefaultLRUCapacityPerServer)
	p.Check(capacity >= 1 && capacity <= maxLRUCapacity, "lru_capacity", "in [1, 2^30]")
	maxBlocks := p.Int("max_prefix_blocks", DefaultMaxPrefixBlocksToMatch)
	p.Check(maxBlocks >= 1, "max_prefix_blocks", "a positive integer")
	x, err := NewPrefixIndex(capacity, maxBlocks, 1)
	if err != nil {
		// The checks above recorded why; Build reports it.
		x, _ = NewPrefixIndex(DefaultLRUCapacityPerServer, DefaultMaxPrefixBlocksToMatch, 1)
	}
	return x
}

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "prefix-affinity",
		Doc: "longest prefix the router has sent to an instance (GIE/llm-d approximate prefix index); " +
			"ties to fewer waiting+running, then seeded draw",
		Params: append(append([]policies.Param{}, prefixIndexParams...), policies.Param{
			Name: "load_guard", Default: "0",
			Doc: "if > 0, only instances within this many waiting+running requests of the least loaded are candidates",
		}),
		New: func(p *policies.Params, env policies.Env) (Policy, error) {
			x := prefixIndexFromParams(p)
			guard := p.Int("load_guard", 0)
			p.Check(guard >= 0, "load_guard", "a non-negative integer")
			return &PrefixAffinity{index: x, loadGuard: guard, rng: newRand(env.Seed, "prefix-affinity")}, nil
		},
	})
}

// PrefixAffinity routes a request to the instance believed to hold the longest leading
// part of its prompt: the prefix-cache-scorer's score (matched blocks over prompt blocks)
// alone, as a policy. Equal scores go to the instance with fewer waiting plus running
// requests, then to a seeded uniform draw. The request's blocks are then recorded against
// the chosen instance.
type PrefixAffinity struct {
	index     *PrefixIndex
	loadGuard int
	rng       *rand.Rand
	match     []int // scratch, one per view
}

// Route implements Policy.
func (p *PrefixAffinity) Route(req *serving.Request, views []serving.InstanceView) int {
	if len(views) == 0 {
		return -1
	}
	maxLoad := int(^uint(0) >> 1)
	if p.loadGuard > 0 {
		least := views[0].Load()
		for i := 1; i < len(views); i++ {
			least = min(least, views[i].Load())
		}
		if least <= maxLoad-p.loadGuard { // else the sum would overflow: no guard
			maxLoad = least + p.loadGuard
		}
	}
	if cap(p.match) < len(views) {
		p.match = make([]int, len(views))
	}
	match := p.match[:len(views)]
	// Scores share the denominator, so comparing matched block counts is comparing scores.
	// Guarded-out views get -1, below any match; the least loaded view is never guarded out.
	bestMatch, bestLoad, ties := -1, 0, 0
	for i := range views {
		load := views[i].Load()
		if load > maxLoad {
			match[i] = -1
			continue
		}
		m := p.index.Match(views[i].Index, req.BlockHashes)
		match[i] = m
		switch {
		case m > bestMatch || m == bestMatch && load < bestLoad:
			bestMatch, bestLoad, ties = m, load, 1
		case m == bestMatch && load == bestLoad:
			ties++
		}
	}
	r := 0
	if ties > 1 {
		r = p.rng.IntN(ties)
	}
	pick := -1
	for i, m := range match {
		if m == bestMatch && views[i].Load() == bestLoad {
			if r == 0 {
				pick = i
				break
			}
			r--
		}
	}
	p.index.Record(views[pick].Index, req.BlockHashes)
	return pick
}
