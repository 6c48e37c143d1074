// Package minheap is a binary min-heap kept in a slice and ordered by its elements' Less
// method: container/heap's algorithm without boxing every element in an interface, for
// loops that push and pop millions of small values (BPE merges, the BPE trainer's pair
// counts, a synthetic workload's pending turns).
package minheap

// Lesser orders values of its own type.
type Lesser[T any] interface {
	Less(other T) bool
}

// Heap is a min-heap: build it by appending to a slice and calling Init, or by Push.
type Heap[T Lesser[T]] []T

// Init orders an arbitrary slice into a heap in O(n).
func (h Heap[T]) Init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// Push adds x.
func (h *Heap[T]) Push(x T) {
	*h = append(*h, x)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if !a[i].Less(a[p]) {
			break
		}
		a[i], a[p] = a[p], a[i]
		i = p
	}
}

// Pop removes and returns the least element; the heap must not be empty. The vacated slot
// is zeroed so the heap keeps no reference to what it gave out.
func (h *Heap[T]) Pop() T {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	var zero T
	a[last] = zero
	*h = a[:last]
	h.down(0)
	return top
}

func (h Heap[T]) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h[r].Less(h[l]) {
			m = r
		}
		if !h[m].Less(h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
