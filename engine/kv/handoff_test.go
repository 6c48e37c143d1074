package kv

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies/evict"
	"servelab/serving"
)

// callLog records a mover's calls in order.
type callLog []string

func (c *callLog) Offload(b, slot int32) { *c = append(*c, fmt.Sprint("offload", b, slot)) }
func (c *callLog) Demote(tier int, from, to int32) {
	*c = append(*c, fmt.Sprint("demote", tier, from, to))
}
func (c *callLog) Fetch(tier int, slot int32, i int) {
	*c = append(*c, fmt.Sprint("fetch", tier, slot, i))
}
func (c *callLog) Load(tier, i int, b int32) { *c = append(*c, fmt.Sprint("load", tier, i, b)) }

// twin is one of two managers driven through the same operations.
type twin struct {
	m      *Manager
	p      *tracked
	events []Event
	moves  callLog
}

func newTwin(t *testing.T, policy string, tiers []TierConfig, caching bool) *twin {
	t.Helper()
	w := &twin{p: track(t, buildPolicy(t, policy))}
	var ts []TierConfig
	for _, tc := range tiers {
		tc.Evict = buildPolicy(t, policy)
		ts = append(ts, tc)
	}
	m, err := New(Config{NumBlocks: 48, BlockSize: testBlockSize, EnablePrefixCaching: caching, Evict: w.p,
		Events: func(e Event) { w.events = append(w.events, e) }, Tiers: ts, Mover: &w.moves})
	if err != nil {
		t.Fatal(err)
	}
	w.m = m
	return w
}

// state is what a twin's manager shows of itself.
type twinState struct {
	Free, Cached int
	Hashes       []uint64
	Tiers        []TierStats
	LastHits     []int
	Blocks       []block
	Pops         []int32
	Events       []Event
	Moves        []string
}

func (w *twin) state() twinState {
	return twinState{Free: w.m.NumFree(), Cached: w.m.NumCached(), Hashes: w.m.CachedHashes(), Tiers: w.m.TierStats(),
		LastHits: append([]int(nil), w.m.LastPrefixHits()...), Blocks: append([]block(nil), w.m.blocks...),
		Pops: append([]int32(nil), w.p.pops...), Events: append([]Event(nil), w.events...), Moves: append([]string(nil), w.moves...)}
}

// TestRetainPromptIsCachedPrefixBlocksThenRetain drives two managers through the same
// random traffic, in which finished prompts are held for a KV transfer: one holds them
// with CachedPrefixBlocks and Retain, the other with RetainPrompt, hinted with the freed
// block table, a stale or wrong one, or none. Every policy, with and without tiers and
// prefix caching: the two must stay identical in every block, event, mover call and
// eviction.
func TestRetainPromptIsCachedPrefixBlocksThenRetain(t *testing.T) {
	type setup struct {
		name    string
		tiers   []TierConfig
		caching bool
	}
	setups := []setup{
		{"gpu", nil, true},
		{"cpu+disk", []TierConfig{{Medium: MediumCPU, Blocks: 12}, {Medium: MediumDisk, Blocks: 30}}, true},
		{"no-caching", nil, false},
	}
	for _, policy := range evict.Registry.Names() {
		for _, su := range setups {
			t.Run(policy+"/"+su.name, func(t *testing.T) {
				for seed := range uint64(2) {
					rng := rand.New(rand.NewPCG(seed, 13))
					a, b := newTwin(t, policy, su.tiers, su.caching), newTwin(t, policy, su.tiers, su.caching)
					type pair struct{ a, b *serving.Seq }
					var live []pair
					var stale []int32
					next := uint64(0)
					for op := range 1200 {
						switch r := rng.IntN(10); {
						case r < 4: // admit a prompt sharing a prefix with one of a few groups
							next++
							tokens := 1 + rng.IntN(40)
							g, shared := int64(rng.IntN(3)), rng.IntN(8)
							sa, sb := prompt(next, g, shared, tokens), prompt(next, g, shared, tokens)
							if admit(a.m, sa) != admit(b.m, sb) {
								t.Fatalf("seed %d op %d: admissions differ", seed, op)
							}
							if sa.NumComputed > 0 {
								live = append(live, pair{sa, sb})
							}
						case r < 6 && len(live) > 0: // a decode step
							p := live[rng.IntN(len(live))]
							if p.a.NumComputed > 0 && a.m.Allocate(p.a, 1, 0) != b.m.Allocate(p.b, 1, 0) {
								t.Fatalf("seed %d op %d: decode allocations differ", seed, op)
							}
						case len(live) > 0: // finish; a prefill's KV is often held for a transfer
							k := rng.IntN(len(live))
							p := live[k]
							live = append(live[:k], live[k+1:]...)
							table := append([]int32(nil), p.b.Blocks...)
							a.m.Free(p.a)
							b.m.Free(p.b)
							if p.a.NumComputed == 0 || rng.IntN(3) == 0 {
								break // a holder's release, or a plain finish
							}
							var hint []int32
							switch rng.IntN(5) {
							case 0, 1:
								hint = table
							case 2:
								hint = stale
							case 3:
								hint = make([]int32, len(table)+2)
								for i := range hint {
									hint[i] = int32(rng.IntN(60)) - 6 // out of range too
								}
							}
							stale = table
							ha := &serving.Seq{Req: p.a.Req}
							hb := &serving.Seq{Req: p.b.Req}
							cached := a.m.CachedPrefixBlocks(p.a.Req.BlockHashes)
							okA := a.m.Retain(ha, max(0, p.a.Req.PromptTokens-cached*testBlockSize), cached)
							okB := b.m.RetainPrompt(hb, hint)
							if okA != okB {
								t.Fatalf("seed %d op %d: Retain %v, RetainPrompt %v", seed, op, okA, okB)
							}
							if diff := cmp.Diff(ha.Blocks, hb.Blocks); diff != "" {
								t.Fatalf("seed %d op %d: held blocks differ (-Retain +RetainPrompt):\n%s", seed, op, diff)
							}
							if okA {
								ha.NumComputed, hb.NumComputed = 0, 0
								live = append(live, pair{ha, hb})
							}
						}
						if diff := cmp.Diff(a.state(), b.state(), cmp.AllowUnexported(block{})); diff != "" {
							t.Fatalf("seed %d op %d: managers differ (-Retain +RetainPrompt):\n%s", seed, op, diff)
						}
						for _, w := range []*twin{a, b} { // compared: the next op's are new
							w.events, w.moves, w.p.pops = w.events[:0], w.moves[:0], w.p.pops[:0]
						}
					}
				}
			})
		}
	}
}

// TestEventHashesAreTheReceiversOwn checks that events' hash slices, which share the
// manager's slabs, stay what they reported whatever a receiver does with another's: one
// appended to, or written through, must not show in any other event.
func TestEventHashesAreTheReceiversOwn(t *testing.T) {
	var events []Event
	var copies [][]uint64
	m := newManager(t, buildPolicy(t, "lru"), 16, func(e Event) {
		events = append(events, e)
		copies = append(copies, append([]uint64(nil), e.Hashes...))
	})
	for i := range 400 { // enough evictions to fill several slabs
		s := prompt(uint64(i), int64(i%5), 2, 4*testBlockSize)
		mustAdmit(t, m, s)
		m.Free(s)
	}
	if len(events) < 2*eventSlab {
		t.Fatalf("only %d events", len(events))
	}
	for i := range events {
		if i%2 == 0 {
			events[i].Hashes = append(events[i].Hashes, 1, 2, 3)
		} else if len(events[i].Hashes) > 0 {
			events[i].Hashes[0] = 42
			copies[i][0] = 42
		}
	}
	for i, e := range events {
		if diff := cmp.Diff(copies[i], e.Hashes[:len(copies[i])]); diff != "" {
			t.Fatalf("event %d of %d changed by what a receiver did with another (-reported +now):\n%s", i, len(events), diff)
		}
	}
}
