package minheap

import (
	"math/rand/v2"
	"slices"
	"testing"
)

type item struct{ key, seq int }

func (a item) Less(b item) bool { return a.key < b.key || a.key == b.key && a.seq < b.seq }

func TestHeapSortsLikeSlicesSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 3, 10, 257} {
		var all []item
		var h Heap[item]
		init := Heap[item]{}
		for i := range n {
			x := item{rng.IntN(20), i}
			all = append(all, x)
			h.Push(x)
			init = append(init, x)
		}
		init.Init()
		slices.SortFunc(all, func(a, b item) int {
			if a.Less(b) {
				return -1
			}
			if b.Less(a) {
				return 1
			}
			return 0
		})
		for _, heap := range []*Heap[item]{&h, &init} {
			var got []item
			for len(*heap) > 0 {
				got = append(got, heap.Pop())
			}
			if !slices.Equal(got, all) {
				t.Fatalf("n=%d: popped %v, want %v", n, got, all)
			}
		}
	}
}

func TestInterleavedPushPop(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var h Heap[item]
	var ref []item
	for i := range 1500 {
		if len(ref) > 0 && rng.IntN(3) == 0 {
			got := h.Pop()
			m := slices.IndexFunc(ref, func(x item) bool {
				return x == slices.MinFunc(ref, func(a, b item) int {
					if a.Less(b) {
						return -1
					}
					if b.Less(a) {
						return 1
					}
					return 0
				})
			})
			if got != ref[m] {
				t.Fatalf("step %d: popped %v, want %v", i, got, ref[m])
			}
			ref = slices.Delete(ref, m, m+1)
			continue
		}
		x := item{rng.IntN(100), i}
		h.Push(x)
		ref = append(ref, x)
	}
}
