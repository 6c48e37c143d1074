package kv

import (
	"math/rand/v2"
	"slices"
	"testing"

	"servelab/policies/evict"
	"servelab/serving"
)

// guarded wraps an eviction policy under a manager and checks, at each call, what every
// evictor owes the manager: Pop and Touch only take blocks nobody references; and, for
// radix-lru, that a block is never evicted while a free cached block extends it.
type guarded struct {
	evict.Policy
	t    *testing.T
	name string
	m    *Manager
	// evicted collects the hashes Pop took from cached blocks, checked after the call.
	evicted []uint64
	// The parent each block recorded at its first cached Free since it was handed out,
	// and the generation (times handed out) of that parent then.
	parent    []int32
	parentGen []int
	gen       []int
}

func (g *guarded) Reset(n int) {
	g.Policy.Reset(n)
	g.parent = slices.Repeat([]int32{none}, n)
	g.parentGen = make([]int, n)
	g.gen = make([]int, n)
}

func (g *guarded) Free(b int32, info evict.BlockInfo) {
	if !info.Cached {
		g.parent[b] = none
	} else if g.parent[b] == none && info.HasParent {
		g.parent[b], g.parentGen[b] = info.Parent, g.gen[info.Parent]
	}
	g.Policy.Free(b, info)
}

func (g *guarded) Touch(b int32) {
	g.t.Helper()
	if r := g.m.blocks[b].ref; r != 0 {
		g.t.Fatalf("%s: Touch(%d) on a block with %d references", g.name, b, r)
	}
	g.Policy.Touch(b)
}

func (g *guarded) Pop() (int32, bool) {
	g.t.Helper()
	b, ok := g.Policy.Pop()
	if !ok {
		return b, ok
	}
	if r := g.m.blocks[b].ref; r != 0 {
		g.t.Fatalf("%s: evicted block %d, which %d sequences reference", g.name, b, r)
	}
	if h := g.m.blocks[b].hash; h != noHash {
		g.evicted = append(g.evicted, h)
		if g.name == "radix-lru" {
			for c := range g.m.blocks {
				blk := &g.m.blocks[c]
				if blk.ref == 0 && blk.hash != noHash && g.parent[c] == b && g.parentGen[c] == g.gen[b] {
					g.t.Fatalf("radix-lru evicted block %d while free cached block %d extends it", b, c)
				}
			}
		}
	}
	g.gen[b]++
	g.parent[b] = none
	return b, ok
}

// TestEvictorInvariants drives the block manager under every registered eviction policy
// with random admissions (with prefix hits on cached blocks, free or in use), re-sent
// prompts, decode steps and finishes, on a pool small enough that allocations evict. After
// every step: no referenced block was evicted; every block is free and uncached, free and
// cached (evictable), or referenced, and the free ones are exactly the policy's; an
// evicted hash no longer hits unless another block holds the same content.
func TestEvictorInvariants(t *testing.T) {
	for _, name := range evict.Registry.Names() {
		t.Run(name, func(t *testing.T) {
			var evictions, hits int
			for seed := range uint64(4) {
				g := &guarded{Policy: buildPolicy(t, name), t: t, name: name}
				m := newManager(t, g, 24, nil)
				g.m = m
				rng := rand.New(rand.NewPCG(seed, 13))
				var live []*serving.Seq
				var done [][]uint64 // finished prompts' hashes, re-sent for full hits
				var next uint64
				for range 3000 {
					switch r := rng.IntN(10); {
					case r < 4:
						next++
						s := prompt(next, int64(rng.IntN(3)), rng.IntN(4), 1+rng.IntN(28))
						if rng.IntN(3) == 0 && len(done) > 0 {
							hs := done[rng.IntN(len(done))]
							s.Req.BlockHashes, s.Req.PromptTokens = hs, len(hs)*testBlockSize+1
						}
						cached := cachedFor(m, s)
						if admit(m, s) {
							hits += cached
							live = append(live, s)
						}
					case r < 7 && len(live) > 0:
						s := live[rng.IntN(len(live))]
						if m.Allocate(s, 1, 0) {
							s.NumComputed++
						}
					case len(live) > 0:
						i := rng.IntN(len(live))
						s := live[i]
						if len(s.Req.BlockHashes) > 0 {
							done = append(done, s.Req.BlockHashes)
						}
						m.Free(s)
						live = slices.Delete(live, i, i+1)
					}
					evictions += len(g.evicted)
					checkEvictorInvariants(t, m, live, g)
				}
			}
			if evictions == 0 || hits == 0 {
				t.Fatalf("the run evicted %d cached blocks and hit %d: it tests nothing", evictions, hits)
			}
		})
	}
}

func checkEvictorInvariants(t *testing.T, m *Manager, live []*serving.Seq, g *guarded) {
	t.Helper()
	refs := make([]int32, m.NumBlocks())
	for _, s := range live {
		for _, b := range s.Blocks {
			refs[b]++
		}
	}
	var freeUncached, freeCached, inUse int
	for b := range m.blocks {
		blk := &m.blocks[b]
		if blk.ref != refs[b] {
			t.Fatalf("block %d: ref %d, sequences hold it %d times", b, blk.ref, refs[b])
		}
		switch {
		case blk.ref > 0:
			inUse++
		case blk.hash != noHash:
			freeCached++
		default:
			freeUncached++
		}
	}
	if freeUncached+freeCached+inUse != m.NumBlocks() {
		t.Fatalf("%d free uncached + %d free cached + %d in use != %d blocks", freeUncached, freeCached, inUse, m.NumBlocks())
	}
	if free := freeUncached + freeCached; free != m.NumFree() || free != g.Len() {
		t.Fatalf("free blocks: %d counted, manager says %d, policy holds %d", free, m.NumFree(), g.Len())
	}
	for _, h := range g.evicted {
		held := false
		for b := range m.blocks {
			held = held || m.blocks[b].hash == h
		}
		if got := m.CachedPrefixBlocks([]uint64{h}); !held && got != 0 {
			t.Fatalf("hash %x evicted from every block still hits", h)
		}
	}
	g.evicted = g.evicted[:0]
}
