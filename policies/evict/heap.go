package evict

// blockHeap is a binary min-heap of block indices keyed by (primary, secondary), with a
// position index so a block can be removed from the middle in O(log n).
type blockHeap struct {
	items              []int32
	pos                []int32 // position in items, or none
	primary, secondary []uint64
}

func (h *blockHeap) reset(n int) {
	h.items = h.items[:0]
	h.pos = resize(h.pos, n)
	for i := range h.pos {
		h.pos[i] = none
	}
	h.primary = resize64(h.primary, n)
	h.secondary = resize64(h.secondary, n)
}

func resize64(s []uint64, n int) []uint64 {
	if cap(s) < n {
		return make([]uint64, n)
	}
	return s[:n]
}

func (h *blockHeap) less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	if h.primary[a] != h.primary[b] {
		return h.primary[a] < h.primary[b]
	}
	return h.secondary[a] < h.secondary[b]
}

func (h *blockHeap) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.pos[h.items[i]] = int32(i)
	h.pos[h.items[j]] = int32(j)
}

func (h *blockHeap) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if !h.less(i, parent) {
			return
		}
		h.swap(i, parent)
		i = parent
	}
}

func (h *blockHeap) down(i int) {
	n := len(h.items)
	for {
		smallest, l, r := i, 2*i+1, 2*i+2
		if l < n && h.less(l, smallest) {
			smallest = l
		}
		if r < n && h.less(r, smallest) {
			smallest = r
		}
		if smallest == i {
			return
		}
		h.swap(i, smallest)
		i = smallest
	}
}

func (h *blockHeap) push(b int32, primary, secondary uint64) {
	h.primary[b], h.secondary[b] = primary, secondary
	h.items = append(h.items, b)
	h.pos[b] = int32(len(h.items) - 1)
	h.up(len(h.items) - 1)
}

func (h *blockHeap) remove(b int32) bool {
	i := int(h.pos[b])
	if i == int(none) {
		return false
	}
	last := len(h.items) - 1
	h.swap(i, last)
	h.items = h.items[:last]
	h.pos[b] = none
	if i < last {
		h.down(i)
		h.up(i)
	}
	return true
}

func (h *blockHeap) popMin() (int32, bool) {
	if len(h.items) == 0 {
		return 0, false
	}
	b := h.items[0]
	h.remove(b)
	return b, true
}
