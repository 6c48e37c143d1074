package kv

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/evict"
	"servelab/serving"
)

func newTiered(t testing.TB, blocks int, tiers []TierConfig, events func(Event)) *Manager {
	t.Helper()
	m, err := New(Config{NumBlocks: blocks, BlockSize: testBlockSize, EnablePrefixCaching: true,
		Evict: buildPolicy(t, "lru"), Events: events, Tiers: tiers})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestTierOffloadAndHit fills a 3-block accelerator with prompt A (2 full blocks), evicts
// it with prompt B, and sends A again: its blocks come back from the tier they went to.
func TestTierOffloadAndHit(t *testing.T) {
	a, b := prompt(1, 7, 2, 9), prompt(2, 8, 2, 9)
	a0, a1 := a.Req.BlockHashes[0], a.Req.BlockHashes[1]
	b0, b1 := b.Req.BlockHashes[0], b.Req.BlockHashes[1]
	ev := func(k EventKind, medium string, hs ...uint64) Event {
		return Event{Kind: k, Hashes: hs, Medium: medium}
	}
	for _, tc := range []struct {
		name     string
		tiers    []TierConfig
		wantHits []int
		// wantWeight is A's prefix weighted GPU 1, CPU 10, DISK 100 before it is loaded.
		wantWeight float64
		// wantEvents are the events from B's admission on.
		wantEvents []Event
	}{
		{
			name:     "cpu",
			tiers:    []TierConfig{{Medium: MediumCPU, Blocks: 4}},
			wantHits: []int{0, 2}, wantWeight: 20,
			wantEvents: []Event{
				// B evicts A's blocks, LRU order (A was freed tail first): a1, then a0.
				ev(BlockRemoved, MediumGPU, a1), ev(BlockStored, MediumCPU, a1),
				ev(BlockRemoved, MediumGPU, a0), ev(BlockStored, MediumCPU, a0),
				ev(BlockStored, MediumGPU, b0, b1),
				// A again: its blocks leave the CPU, B's make room for them and go down.
				ev(BlockRemoved, MediumCPU, a0), ev(BlockRemoved, MediumCPU, a1),
				ev(BlockRemoved, MediumGPU, b1), ev(BlockStored, MediumCPU, b1),
				ev(BlockStored, MediumGPU, a0, a1),
				ev(BlockRemoved, MediumGPU, b0), ev(BlockStored, MediumCPU, b0),
			},
		},
		{
			name:     "cpu of one block, then disk",
			tiers:    []TierConfig{{Medium: MediumCPU, Blocks: 1}, {Medium: MediumDisk, Blocks: 4}},
			wantHits: []int{0, 1, 1}, wantWeight: 110,
			wantEvents: []Event{
				ev(BlockRemoved, MediumGPU, a1), ev(BlockStored, MediumCPU, a1),
				// The full CPU tier's LRU sends a1 down to disk to take a0.
				ev(BlockRemoved, MediumGPU, a0), ev(BlockRemoved, MediumCPU, a1), ev(BlockStored, MediumDisk, a1), ev(BlockStored, MediumCPU, a0),
				ev(BlockStored, MediumGPU, b0, b1),
				ev(BlockRemoved, MediumCPU, a0), ev(BlockRemoved, MediumDisk, a1),
				ev(BlockRemoved, MediumGPU, b1), ev(BlockStored, MediumCPU, b1),
				ev(BlockStored, MediumGPU, a0, a1),
				ev(BlockRemoved, MediumGPU, b0), ev(BlockRemoved, MediumCPU, b1), ev(BlockStored, MediumDisk, b1), ev(BlockStored, MediumCPU, b0),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var events []Event
			m := newTiered(t, 3, tc.tiers, func(e Event) { events = append(events, e) })
			a, b, again := prompt(1, 7, 2, 9), prompt(2, 8, 2, 9), prompt(3, 7, 2, 9)
			mustAdmit(t, m, a)
			m.Free(a)
			if diff := cmp.Diff([]Event{ev(BlockStored, MediumGPU, a0, a1)}, events); diff != "" {
				t.Fatalf("A's events (-want +got):\n%s", diff)
			}
			events = nil
			mustAdmit(t, m, b)
			m.Free(b)
			if got := cachedFor(m, again); got != 2 {
				t.Fatalf("A's prefix after eviction: %d blocks found, want 2 (on lower tiers)", got)
			}
			w := map[string]float64{MediumGPU: 1, MediumCPU: 10, MediumDisk: 100}
			if got := m.CachedPrefixWeight(again.Req.BlockHashes, func(m string) float64 { return w[m] }); got != tc.wantWeight {
				t.Errorf("A's prefix weighs %v by tier, want %v", got, tc.wantWeight)
			}
			mustAdmit(t, m, again)
			if diff := cmp.Diff(tc.wantHits, m.LastPrefixHits()); diff != "" {
				t.Errorf("prefix hits per tier (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantEvents, events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if got := m.blocks[again.Blocks[0]].hash; got != a0 {
				t.Errorf("loaded block holds %x, want %x", got, a0)
			}
			loaded := int64(0)
			for _, st := range m.TierStats()[1:] {
				loaded += st.Loaded
			}
			if loaded != 2 {
				t.Errorf("loaded %d blocks, want 2", loaded)
			}
		})
	}
}

// mru is a test eviction policy that evicts the most recently freed block, the opposite
// of every registered one, to show which policy decides on a tier.
type mru struct{ stack []int32 }

func (p *mru) Reset(int)                       { p.stack = p.stack[:0] }
func (p *mru) Free(b int32, _ evict.BlockInfo) { p.stack = append(p.stack, b) }
func (p *mru) Touch(b int32) {
	p.stack = slices.DeleteFunc(p.stack, func(x int32) bool { return x == b })
}
func (p *mru) Len() int            { return len(p.stack) }
func (p *mru) Spec() policies.Spec { return policies.Spec{Name: "mru-test"} }
func (p *mru) Pop() (int32, bool) {
	if len(p.stack) == 0 {
		return 0, false
	}
	b := p.stack[len(p.stack)-1]
	p.stack = p.stack[:len(p.stack)-1]
	return b, true
}

// TestTierOwnEvictor offloads three blocks into a CPU tier of two: the tier's policy, not
// the accelerator's, picks the one that leaves it.
func TestTierOwnEvictor(t *testing.T) {
	for _, tc := range []struct {
		name  string
		evict evict.Policy
		// dropped is the index among the offloads (in order) of the block the CPU drops.
		dropped int
	}{
		{"lru", buildPolicy(t, "lru"), 0},
		{"mru", &mru{}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var offloaded, dropped []uint64
			m := newTiered(t, 4, []TierConfig{{Medium: MediumCPU, Blocks: 2, Evict: tc.evict}}, func(e Event) {
				if e.Medium == MediumCPU && e.Kind == BlockStored {
					offloaded = append(offloaded, e.Hashes...)
				}
				if e.Medium == MediumCPU && e.Kind == BlockRemoved {
					dropped = append(dropped, e.Hashes...)
				}
			})
			a := prompt(1, 7, 3, 13) // 3 full blocks + 1
			mustAdmit(t, m, a)
			m.Free(a)
			b := prompt(2, 8, 3, 13)
			mustAdmit(t, m, b)
			if len(offloaded) != 3 || len(dropped) != 1 {
				t.Fatalf("offloaded %d, dropped %d; want 3 and 1", len(offloaded), len(dropped))
			}
			if dropped[0] != offloaded[tc.dropped] {
				t.Errorf("CPU dropped %x, want the offload #%d %x", dropped[0], tc.dropped, offloaded[tc.dropped])
			}
			if got := m.CachedPrefixBlocks([]uint64{dropped[0]}); got != 0 {
				t.Errorf("dropped hash still hits")
			}
		})
	}
}

// TestTierInvariants drives a tiered manager with random admissions (many re-sent
// prompts), decode steps and finishes, with every registered policy on the accelerator and
// on both tiers. After every step it checks the invariant tiering holds: a hash is on at
// most one tier (the accelerator's cache or one lower tier); each tier holds at most its
// capacity and its policy holds exactly its occupied slots; replaying the events per
// medium gives exactly each tier's contents (so a block leaves a tier only by an event, into
// the next tier down, or out of the last); every hash on any tier is found by a lookup.
func TestTierInvariants(t *testing.T) {
	for _, name := range evict.Registry.Names() {
		t.Run(name, func(t *testing.T) {
			var loads, offloads int64
			for seed := range uint64(3) {
				sets := map[string]map[uint64]bool{MediumGPU: {}, MediumCPU: {}, MediumDisk: {}}
				m, err := New(Config{NumBlocks: 16, BlockSize: testBlockSize, EnablePrefixCaching: true,
					Evict: buildPolicy(t, name), Tiers: []TierConfig{
						{Medium: MediumCPU, Blocks: 6, Evict: buildPolicy(t, name)},
						{Medium: MediumDisk, Blocks: 10, Evict: buildPolicy(t, name)},
					}, Events: func(e Event) {
						set := sets[e.Medium]
						if set == nil {
							t.Fatalf("event with medium %q", e.Medium)
						}
						for _, h := range e.Hashes {
							switch e.Kind {
							case BlockStored:
								for med, s := range sets {
									// A hash enters a tier only after leaving the one it was on.
									if s[h] {
										t.Fatalf("%s stored %x, still on %s", e.Medium, h, med)
									}
								}
								set[h] = true
							case BlockRemoved:
								if !set[h] {
									t.Fatalf("%s removed %x, not on it", e.Medium, h)
								}
								delete(set, h)
							}
						}
					}})
				if err != nil {
					t.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(seed, 17))
				var live []*serving.Seq
				var next uint64
				for range 3000 {
					switch r := rng.IntN(10); {
					case r < 4:
						next++
						s := prompt(next, int64(rng.IntN(8)), rng.IntN(5), 1+rng.IntN(24))
						if admit(m, s) {
							live = append(live, s)
						}
					case r < 6 && len(live) > 0:
						s := live[rng.IntN(len(live))]
						if m.Allocate(s, 1, 0) {
							s.NumComputed++
						}
					case len(live) > 0:
						i := rng.IntN(len(live))
						m.Free(live[i])
						live = slices.Delete(live, i, i+1)
					}
					checkTiers(t, m, sets)
				}
				st := m.TierStats()
				loads += st[1].Loaded + st[2].Loaded
				offloads += st[2].Offloaded
			}
			if loads == 0 || offloads == 0 {
				t.Fatalf("%d loads, %d offloads to disk: the run tests nothing", loads, offloads)
			}
		})
	}
}

func checkTiers(t *testing.T, m *Manager, sets map[string]map[uint64]bool) {
	t.Helper()
	gpu := map[uint64]bool{}
	for b := range m.blocks {
		if h := m.blocks[b].hash; h != noHash {
			gpu[h] = true
		}
	}
	if diff := cmp.Diff(sets[MediumGPU], gpu); diff != "" {
		t.Fatalf("GPU hashes vs its events (-events +blocks):\n%s", diff)
	}
	indexed := make([]int, len(m.tiers))
	m.lower.Range(func(h uint64, v int32) bool {
		indexed[v&maxTiers]++
		if got := m.tiers[v&maxTiers].hashes[v>>tierBits]; got != h {
			t.Fatalf("index: %x on tier %d slot %d, which holds %x", h, v&maxTiers, v>>tierBits, got)
		}
		return true
	})
	for lvl, tr := range m.tiers {
		occupied := map[uint64]bool{}
		for _, h := range tr.hashes {
			if h != noHash {
				occupied[h] = true
			}
		}
		if len(occupied)+len(tr.empty) != len(tr.hashes) || len(occupied) != indexed[lvl] || tr.evict.Len() != len(occupied) {
			t.Fatalf("%s: %d occupied + %d empty slots of %d; %d indexed; policy holds %d",
				tr.medium, len(occupied), len(tr.empty), len(tr.hashes), indexed[lvl], tr.evict.Len())
		}
		if diff := cmp.Diff(sets[tr.medium], occupied); diff != "" {
			t.Fatalf("%s hashes vs its events (-events +slots):\n%s", tr.medium, diff)
		}
		for h := range occupied {
			if gpu[h] {
				t.Fatalf("%x on the GPU and on %s", h, tr.medium)
			}
			if m.CachedPrefixBlocks([]uint64{h}) != 1 {
				t.Fatalf("%x on %s is not found", h, tr.medium)
			}
		}
	}
	snap := map[string]map[uint64]bool{MediumGPU: {}, MediumCPU: {}, MediumDisk: {}}
	for _, e := range m.SnapshotEvents()[1:] {
		for _, h := range e.Hashes {
			snap[e.Medium][h] = true
		}
	}
	if diff := cmp.Diff(sets, snap); diff != "" {
		t.Fatalf("snapshot vs the events (-events +snapshot):\n%s", diff)
	}
	if len(sets[MediumCPU])+len(sets[MediumDisk])+len(gpu) != len(m.CachedHashes()) {
		t.Fatalf("CachedHashes has %d, tiers hold %d", len(m.CachedHashes()), len(sets[MediumCPU])+len(sets[MediumDisk])+len(gpu))
	}
}
