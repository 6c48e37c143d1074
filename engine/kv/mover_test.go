package kv

import (
	"math/rand/v2"
	"slices"
	"testing"

	"servelab/policies/evict"
	"servelab/serving"
)

// contentMover models the real engine's block contents: each accelerator block and tier
// slot holds the hash of the tokens whose KV it stores (0: nothing usable), and the mover's
// calls copy them as real KV bytes would be copied.
type contentMover struct {
	t       testing.TB
	gpu     []uint64
	slots   [][]uint64
	staging map[int]uint64
	staged  map[int]int // tier each staging buffer was fetched from
	calls   map[string]int
}

func newContentMover(t testing.TB, blocks int, tiers []TierConfig) *contentMover {
	c := &contentMover{t: t, gpu: make([]uint64, blocks), staging: map[int]uint64{}, staged: map[int]int{}, calls: map[string]int{}}
	for _, tc := range tiers {
		c.slots = append(c.slots, make([]uint64, tc.Blocks))
	}
	return c
}

func (c *contentMover) Offload(b, slot int32) {
	c.calls["offload"]++
	c.slots[0][slot] = c.gpu[b]
}

func (c *contentMover) Demote(tier int, from, to int32) {
	c.calls["demote"]++
	c.slots[tier+1][to] = c.slots[tier][from]
}

func (c *contentMover) Fetch(tier int, slot int32, i int) {
	c.calls["fetch"]++
	if _, busy := c.staging[i]; busy {
		c.t.Fatalf("staging buffer %d fetched twice before its load", i)
	}
	c.staging[i], c.staged[i] = c.slots[tier][slot], tier
}

func (c *contentMover) Load(tier, i int, b int32) {
	c.calls["load"]++
	v, ok := c.staging[i]
	if !ok || c.staged[i] != tier {
		c.t.Fatalf("load of staging buffer %d from tier %d: fetched %v from tier %d", i, tier, ok, c.staged[i])
	}
	delete(c.staging, i)
	c.gpu[b] = v
}

// TestMoverContentsFollowHashes runs random traffic over a tiny accelerator with CPU and
// disk tiers and a mover that copies modelled contents: every block a prefix hit hands a
// sequence, on the accelerator or loaded back from a tier, holds the contents its hash
// names, and every tier slot holds the contents of the hash the manager placed there.
// Without the mover's calls (or with them in the wrong order: a slot reused before its
// contents were fetched) the contents diverge.
func TestMoverContentsFollowHashes(t *testing.T) {
	for _, name := range []string{"lru", "fifo", "s3fifo"} {
		if !slices.Contains(evict.Registry.Names(), name) {
			continue
		}
		t.Run(name, func(t *testing.T) {
			tiers := []TierConfig{
				{Medium: MediumCPU, Blocks: 5, Evict: buildPolicy(t, name)},
				{Medium: MediumDisk, Blocks: 9, Evict: buildPolicy(t, name)},
			}
			const blocks = 12
			mv := newContentMover(t, blocks, tiers)
			m, err := New(Config{NumBlocks: blocks, BlockSize: testBlockSize, EnablePrefixCaching: true,
				Evict: buildPolicy(t, name), Tiers: tiers, Mover: mv})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(7, 11))
			var live []*serving.Seq
			var next uint64
			for range 4000 {
				switch r := rng.IntN(10); {
				case r < 4:
					next++
					s := prompt(next, int64(rng.IntN(6)), rng.IntN(5), 1+rng.IntN(24))
					cached := cachedFor(m, s)
					if !admit(m, s) {
						continue
					}
					for i, b := range s.Blocks {
						full := i < len(s.Req.BlockHashes)
						switch {
						case i < cached && mv.gpu[b] != s.Req.BlockHashes[i]:
							t.Fatalf("request %d: prefix block %d (accelerator block %d) holds %x, want %x", s.Req.ID, i, b, mv.gpu[b], s.Req.BlockHashes[i])
						case i >= cached && full:
							mv.gpu[b] = s.Req.BlockHashes[i] // the forward pass computes it
						case !full:
							mv.gpu[b] = 0 // a partial block: never reused by hash
						}
					}
					if len(mv.staging) != 0 {
						t.Fatalf("%d staging buffers fetched and never loaded", len(mv.staging))
					}
					live = append(live, s)
				case r < 6 && len(live) > 0:
					s := live[rng.IntN(len(live))]
					if m.Allocate(s, 1, 0) {
						s.NumComputed++
						mv.gpu[s.Blocks[len(s.Blocks)-1]] = 0
					}
				case len(live) > 0:
					i := rng.IntN(len(live))
					m.Free(live[i])
					live = slices.Delete(live, i, i+1)
				}
				for b := range m.blocks {
					if h := m.blocks[b].hash; h != noHash && mv.gpu[b] != h {
						t.Fatalf("accelerator block %d is cached as %x but holds %x", b, h, mv.gpu[b])
					}
				}
				for lvl, tr := range m.tiers {
					for slot, h := range tr.hashes {
						if h != noHash && mv.slots[lvl][slot] != h {
							t.Fatalf("%s slot %d is indexed as %x but holds %x", tr.medium, slot, h, mv.slots[lvl][slot])
						}
					}
				}
			}
			for _, c := range []string{"offload", "demote", "fetch", "load"} {
				if mv.calls[c] == 0 {
					t.Fatalf("no %s call in the run: it tests nothing (calls %v)", c, mv.calls)
				}
			}
			st := m.TierStats()
			if got, want := int64(mv.calls["load"]), st[1].Loaded+st[2].Loaded; got != want {
				t.Errorf("%d loads moved, the tiers count %d", got, want)
			}
			if got, want := int64(mv.calls["offload"]+mv.calls["demote"]), st[1].Offloaded+st[2].Offloaded; got != want {
				t.Errorf("%d offloads and demotions moved, the tiers count %d", got, want)
			}
		})
	}
}

// TestMoverIgnoredWithoutTiers: a mover with no tier below the accelerator is never called.
func TestMoverIgnoredWithoutTiers(t *testing.T) {
	mv := newContentMover(t, 4, nil)
	m, err := New(Config{NumBlocks: 4, BlockSize: testBlockSize, EnablePrefixCaching: true, Mover: mv})
	if err != nil {
		t.Fatal(err)
	}
	for id := range uint64(6) {
		s := prompt(id+1, int64(id%2), 2, 9)
		mustAdmit(t, m, s)
		m.Free(s)
	}
	if len(mv.calls) != 0 {
		t.Fatalf("calls without tiers: %v", mv.calls)
	}
}
