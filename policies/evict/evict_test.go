package evict

import (
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
)

func build(t testing.TB, name string) Policy {
	t.Helper()
	p, err := Registry.Build(policies.Spec{Name: name}, policies.Env{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// popAll drains a policy and returns the order.
func popAll(p Policy) []int32 {
	var out []int32
	for {
		b, ok := p.Pop()
		if !ok {
			return out
		}
		out = append(out, b)
	}
}

func TestOrder(t *testing.T) {
	type free struct {
		block int32
		info  BlockInfo
	}
	cached := func(b int32, hits uint32, filled uint64) free {
		return free{b, BlockInfo{Cached: true, Hits: hits, Filled: filled}}
	}
	tests := []struct {
		policy string
		frees  []free
		touch  []int32
		want   []int32
	}{
		{
			policy: "lru",
			frees:  []free{cached(3, 9, 1), {block: 1}, cached(0, 0, 3), cached(2, 5, 2)},
			touch:  []int32{1},
			want:   []int32{3, 0, 2}, // queue order, cached or not; the touched block is gone
		},
		{
			policy: "fifo",
			frees:  []free{cached(3, 9, 4), {block: 1}, cached(0, 0, 3), cached(2, 5, 1)},
			want:   []int32{1, 2, 0, 3}, // uncached first, then by fill order
		},
		{
			policy: "lfu",
			frees:  []free{cached(3, 9, 1), cached(0, 2, 2), {block: 1}, cached(2, 2, 3)},
			touch:  []int32{3},
			want:   []int32{1, 0, 2}, // uncached first, then fewest hits, ties by freeing order
		},
	}
	for _, tc := range tests {
		t.Run(tc.policy, func(t *testing.T) {
			p := build(t, tc.policy)
			p.Reset(4)
			popAll(p) // take every block, as if all were allocated
			for _, f := range tc.frees {
				p.Free(f.block, f.info)
			}
			for _, b := range tc.touch {
				p.Touch(b)
			}
			if diff := cmp.Diff(tc.want, popAll(p)); diff != "" {
				t.Errorf("eviction order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResetFreesEveryBlockInOrder(t *testing.T) {
	for _, name := range Registry.Names() {
		p := build(t, name)
		p.Reset(5)
		if diff := cmp.Diff([]int32{0, 1, 2, 3, 4}, popAll(p)); diff != "" {
			t.Errorf("%s: blocks after Reset (-want +got):\n%s", name, diff)
		}
	}
}

// TestConformance drives every policy with random operations and checks it against a set:
// Pop returns only free blocks, each once; Touch removes; Len counts.
func TestConformance(t *testing.T) {
	const n = 64
	for _, name := range Registry.Names() {
		t.Run(name, func(t *testing.T) {
			p := build(t, name)
			p.Reset(n)
			free := map[int32]bool{}
			for b := range int32(n) {
				free[b] = true
			}
			rng := rand.New(rand.NewPCG(1, 2))
			var fills uint64
			for range 20000 {
				switch op := rng.IntN(3); {
				case op == 0 && len(free) > 0:
					b, ok := p.Pop()
					if !ok || !free[b] {
						t.Fatalf("Pop = %d, %v; not a free block", b, ok)
					}
					delete(free, b)
				case op == 1:
					b := int32(rng.IntN(n))
					if free[b] {
						continue
					}
					fills++
					p.Free(b, BlockInfo{Cached: rng.IntN(2) == 0, Hits: uint32(rng.IntN(4)), Filled: fills})
					free[b] = true
				default:
					b := int32(rng.IntN(n))
					if !free[b] {
						continue
					}
					p.Touch(b)
					delete(free, b)
				}
				if p.Len() != len(free) {
					t.Fatalf("Len = %d, want %d", p.Len(), len(free))
				}
			}
			for _, b := range popAll(p) {
				if !free[b] {
					t.Fatalf("drained block %d that is not free", b)
				}
				delete(free, b)
			}
			if len(free) != 0 {
				t.Errorf("%d free blocks never popped", len(free))
			}
		})
	}
}

// BenchmarkFreePop frees a held block and reuses one, as a busy cache does; every other
// iteration the freed block is hit (touched) instead.
func BenchmarkFreePop(b *testing.B) {
	for _, name := range Registry.Names() {
		b.Run(name, func(b *testing.B) {
			p := build(b, name)
			p.Reset(1 << 14)
			held := popAll(p)
			for i, blk := range held[:len(held)/2] {
				p.Free(blk, BlockInfo{Cached: true, Hits: uint32(i % 7), Filled: uint64(i)})
			}
			held = held[len(held)/2:]
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				k := i % len(held)
				p.Free(held[k], BlockInfo{Cached: true, Hits: uint32(i % 7), Filled: uint64(i + len(held))})
				if i%2 == 1 {
					p.Touch(held[k])
					continue
				}
				held[k], _ = p.Pop()
			}
		})
	}
}
