package evict

import (
	"math/rand/v2"
	"testing"
)

// model is a slow, obviously correct policy: a list of free blocks scanned for the one a
// rule says goes first.
type model struct {
	free  []modelEntry
	seq   uint64
	first func(a, b *modelEntry) bool // a is evicted before b
}

type modelEntry struct {
	block int32
	info  BlockInfo
	seq   uint64 // free order
}

func (m *model) reset(n int) {
	m.free = m.free[:0]
	for b := range int32(n) {
		m.seq++
		m.free = append(m.free, modelEntry{block: b, seq: m.seq})
	}
}

func (m *model) add(b int32, info BlockInfo) {
	m.seq++
	m.free = append(m.free, modelEntry{block: b, info: info, seq: m.seq})
}

func (m *model) remove(b int32) bool {
	for i, e := range m.free {
		if e.block == b {
			m.free = append(m.free[:i], m.free[i+1:]...)
			return true
		}
	}
	return false
}

func (m *model) pop() (int32, bool) {
	if len(m.free) == 0 {
		return 0, false
	}
	best := 0
	for i := range m.free {
		if m.first(&m.free[i], &m.free[best]) {
			best = i
		}
	}
	b := m.free[best].block
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
				held := map[int32]bool{}
				rng := rand.New(rand.NewPCG(seed, 7))
				var fills uint64
				for i := range 6000 {
					switch rng.IntN(5) {
					case 0, 1:
						got, ok := p.Pop()
						want, wantOK := m.pop()
						if got != want || ok != wantOK {
							t.Fatalf("seed %d op %d: Pop = %d, %v; model says %d, %v", seed, i, got, ok, want, wantOK)
						}
						if ok {
							held[got] = true
						}
					case 2, 3:
						b := int32(rng.IntN(n))
						if !held[b] {
							continue
						}
						delete(held, b)
						fills++
						// Few distinct hit counts and fill orders, so ties happen.
						info := BlockInfo{Cached: rng.IntN(4) > 0, Hits: uint32(rng.IntN(3)), Filled: fills / 3}
						if rng.IntN(6) == 0 {
							info.Hits = 60 + uint32(rng.IntN(8))
						}
						p.Free(b, info)
						m.add(b, info)
					default:
						b := int32(rng.IntN(n))
						if held[b] {
							continue
						}
						p.Touch(b)
						m.remove(b)
						held[b] = true
					}
				}
			}
		})
	}
}
