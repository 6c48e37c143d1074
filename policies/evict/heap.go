package evict

import "fmt"

// keyHeap is a binary min-heap of blocks ordered by (k1, k2), with each block's position
// kept so a cache hit can take it out of the middle in O(log n). Keys sit next to the
// block in the heap array, so sifting compares without chasing per-block slices.
type keyHeap struct {
	items []heapItem
	pos   []int32 // index in items, or none
}

type heapItem struct {
	k1, k2 uint64
	block  int32
}

func (h *keyHeap) reset(numBlocks int) {
	if cap(h.items) < numBlocks {
		h.items = make([]heapItem, 0, numBlocks)
	}
	h.items = h.items[:0]
	if cap(h.pos) < numBlocks {
		h.pos = make([]int32, numBlocks)
	}
	h.pos = h.pos[:numBlocks]
	for i := range h.pos {
		h.pos[i] = none
	}
}

func (h *keyHeap) len() int { return len(h.items) }

func (h *keyHeap) has(b int32) bool { return h.pos[b] != none }

func (a *heapItem) less(b *heapItem) bool {
	return a.k1 < b.k1 || (a.k1 == b.k1 && a.k2 < b.k2)
}

// up moves the item at i towards the root until its parent is not greater; the item is
// carried in a register and written once, instead of swapped at every level.
func (h *keyHeap) up(i int) {
	it := h.items[i]
	for i > 0 {
		parent := (i - 1) / 2
		if !it.less(&h.items[parent]) {
			break
		}
		h.items[i] = h.items[parent]
		h.pos[h.items[i].block] = int32(i)
		i = parent
	}
	h.items[i] = it
	h.pos[it.block] = int32(i)
}

func (h *keyHeap) down(i int) {
	n := len(h.items)
	it := h.items[i]
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h.items[r].less(&h.items[c]) {
			c = r
		}
		if !h.items[c].less(&it) {
			break
		}
		h.items[i] = h.items[c]
		h.pos[h.items[i].block] = int32(i)
		i = c
	}
	h.items[i] = it
	h.pos[it.block] = int32(i)
}

func (h *keyHeap) push(b int32, k1, k2 uint64) {
	if h.pos[b] != none {
		panic(fmt.Sprintf("evict: block %d freed while already free", b))
	}
	h.items = append(h.items, heapItem{k1: k1, k2: k2, block: b})
	h.up(len(h.items) - 1)
}

// remove takes b out of the heap and reports whether it was there.
func (h *keyHeap) remove(b int32) bool {
	i := int(h.pos[b])
	if i == int(none) {
		return false
	}
	h.pos[b] = none
	last := len(h.items) - 1
	if i != last {
		h.items[i] = h.items[last]
		h.items = h.items[:last]
		h.down(i)
		h.up(i)
	} else {
		h.items = h.items[:last]
	}
	return true
}

func (h *keyHeap) popMin() (int32, bool) {
	if len(h.items) == 0 {
		return 0, false
	}
	b := h.items[0].block
	h.remove(b)
	return b, true
}
