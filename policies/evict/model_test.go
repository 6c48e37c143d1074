package evict

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// model is a slow, obviously correct policy: a list of free blocks scanned for the one a
// rule says goes first.
type model struct {
	entries []modelEntry
	seq     uint64
	first   func(a, b *modelEntry) bool // a is evicted before b
}

type modelEntry struct {
	block int32
	info  BlockInfo
	seq   uint64 // free order
}

func (m *model) reset(n int) {
	m.entries = m.entries[:0]
	for b := range int32(n) {
		m.seq++
		m.entries = append(m.entries, modelEntry{block: b, seq: m.seq})
	}
}

func (m *model) free(b int32, info BlockInfo) {
	m.seq++
	m.entries = append(m.entries, modelEntry{block: b, info: info, seq: m.seq})
}

func (m *model) remove(b int32) bool {
	for i, e := range m.entries {
		if e.block == b {
			m.entries = append(m.entries[:i], m.entries[i+1:]...)
			return true
		}
	}
	return false
}

func (m *model) touch(b int32) { m.remove(b) }

func (m *model) size() int { return len(m.entries) }

func (m *model) pop() (int32, bool) {
	if len(m.entries) == 0 {
		return 0, false
	}
	best := 0
	for i := range m.entries {
		if m.first(&m.entries[i], &m.entries[best]) {
			best = i
		}
	}
	b := m.entries[best].block
	m.remove(b)
	return b, true
}

// uncachedFirst wraps a rule for cached blocks: uncached blocks go first, in free order.
func uncachedFirst(cached func(a, b *modelEntry) bool) func(a, b *modelEntry) bool {
	return func(a, b *modelEntry) bool {
		if a.info.Cached != b.info.Cached {
			return !a.info.Cached
		}
		if !a.info.Cached {
			return a.seq < b.seq
		}
		return cached(a, b)
	}
}

// models holds the reference rule of each policy in this package.
var models = map[string]func(a, b *modelEntry) bool{
	"lru": func(a, b *modelEntry) bool { return a.seq < b.seq },
	"fifo": uncachedFirst(func(a, b *modelEntry) bool {
		return a.info.Filled < b.info.Filled || (a.info.Filled == b.info.Filled && a.seq < b.seq)
	}),
	"lfu": uncachedFirst(func(a, b *modelEntry) bool {
		return a.info.Hits < b.info.Hits || (a.info.Hits == b.info.Hits && a.seq < b.seq)
	}),
}

// TestMatchesModel checks every eviction decision of each policy against its reference
// rule under random frees, touches and pops.
func TestMatchesModel(t *testing.T) {
	for name, first := range models {
		t.Run(name, func(t *testing.T) {
			for seed := range uint64(4) {
				const n = 48
				p := build(t, name)
				m := &model{first: first}
				p.Reset(n)
				m.reset(n)
				rng := rand.New(rand.NewPCG(seed, 7))
				var fills uint64
				checkAgainstModel(t, fmt.Sprintf("seed %d", seed), p, m, n, 6000, rng, modelHooks{
					freeInfo: func(int32) BlockInfo {
						fills++
						// Few distinct hit counts and fill orders, so ties happen.
						info := BlockInfo{Cached: rng.IntN(4) > 0, Hits: uint32(rng.IntN(3)), Filled: fills / 3}
						if rng.IntN(6) == 0 {
							info.Hits = 60 + uint32(rng.IntN(8))
						}
						return info
					},
				})
			}
		})
	}
}

// referenceModel is a policy written as plain scans, to check a policy's every decision.
type referenceModel interface {
	pop() (int32, bool)
	free(b int32, info BlockInfo)
	touch(b int32)
	size() int // the free blocks it holds: the policy's Len
}

// modelHooks say what a random run does beyond pops, frees and touches: freeInfo makes a
// freed block's BlockInfo (nil: uncached); popped and touched hear of a block leaving the
// free set, for the content a test tracks.
type modelHooks struct {
	freeInfo func(b int32) BlockInfo
	popped   func(b int32)
	touched  func(b int32)
}

// checkAgainstModel runs ops random operations on n blocks, the same on p and m (p reset
// to n free blocks, as m starts): pops, frees of popped blocks and touches (prefix hits)
// of free ones, and fails at the first pop or length they disagree on.
func checkAgainstModel(t *testing.T, label string, p Policy, m referenceModel, n, ops int, rng *rand.Rand, h modelHooks) {
	t.Helper()
	held := map[int32]bool{}
	for i := range ops {
		switch rng.IntN(5) {
		case 0, 1:
			got, ok := p.Pop()
			want, wantOK := m.pop()
			if got != want || ok != wantOK {
				t.Fatalf("%s op %d: Pop = %d, %v; model says %d, %v", label, i, got, ok, want, wantOK)
			}
			if ok {
				held[got] = true
				if h.popped != nil {
					h.popped(got)
				}
			}
		case 2, 3:
			b := int32(rng.IntN(n))
			if !held[b] {
				continue
			}
			delete(held, b)
			var info BlockInfo
			if h.freeInfo != nil {
				info = h.freeInfo(b)
			}
			p.Free(b, info)
			m.free(b, info)
		default:
			b := int32(rng.IntN(n))
			if held[b] {
				continue
			}
			if h.touched != nil {
				h.touched(b)
			}
			p.Touch(b)
			m.touch(b)
			held[b] = true
		}
		if got, want := p.Len(), m.size(); got != want {
			t.Fatalf("%s op %d: Len = %d, model %d", label, i, got, want)
		}
	}
}
