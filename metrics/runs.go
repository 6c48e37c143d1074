package metrics

import (
	"cmp"
	"slices"
)

// runs is a multiset of values kept as (value, count) entries, merging a value equal to
// the last one added.
type runs struct {
	values, counts []float64
}

func (r *runs) add(v, n float64) {
	if k := len(r.values); k > 0 && r.values[k-1] == v {
		r.counts[k-1] += n
		return
	}
	r.values = append(r.values, v)
	r.counts = append(r.counts, n)
}

// sorted returns the values in increasing order with their counts, equal values merged.
func (r *runs) sorted() (values, counts []float64) {
	idx := make([]int, len(r.values))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(r.values[a], r.values[b]) })
	for _, i := range idx {
		if k := len(values); k > 0 && values[k-1] == r.values[i] {
			counts[k-1] += r.counts[i]
			continue
		}
		values = append(values, r.values[i])
		counts = append(counts, r.counts[i])
	}
	return values, counts
}
