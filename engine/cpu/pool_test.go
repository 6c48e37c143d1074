package cpu

import (
	"sync/atomic"
	"testing"
)

func TestParallelCoversRangeOnce(t *testing.T) {
	for _, threads := range []int{1, 2, 3, 4, 7} {
		p := NewPool(threads)
		for n := 0; n <= 40; n++ {
			for _, grain := range []int{0, 1, 2, 5} {
				hits := make([]atomic.Int32, n)
				p.Parallel(n, grain, func(lo, hi int) {
					for i := lo; i < hi; i++ {
						hits[i].Add(1)
					}
				})
				for i := range hits {
					if h := hits[i].Load(); h != 1 {
						t.Fatalf("threads=%d n=%d grain=%d: index %d done %d times", threads, n, grain, i, h)
					}
				}
			}
		}
	}
}
