package metrics

import "math"

// histogram keeps a distribution of durations in constant memory: log-linear buckets of
// 2^-14 relative width (14 mantissa bits per power of two) from 2^-30 s to 2^12 s, each
// with its count and the sum of its values. A percentile reads the mean of the bucket
// holding its rank, so it is exact whenever a bucket holds one distinct value (as the
// steps of a steady batch do) and otherwise within 0.006% of the exact value. Means and
// standard deviations come from exact running sums.
type histogram struct {
	counts []uint64
	sums   []float64
	n      float64
	sum    float64
	sumSq  float64
}

const (
	mantissaBits = 14
	minExp       = -30
	maxExp       = 12
	buckets      = (maxExp - minExp) << mantissaBits
)

func bucketOf(v float64) int {
	if v <= 0 {
		return 0
	}
	b := math.Float64bits(v)
	exp := int(b>>52&0x7ff) - 1023
	switch {
	case exp < minExp:
		return 0
	case exp >= maxExp:
		return buckets - 1
	}
	return (exp-minExp)<<mantissaBits | int(b>>(52-mantissaBits)&(1<<mantissaBits-1))
}

func (h *histogram) add(v, n float64) {
	if h.counts == nil {
		h.counts = make([]uint64, buckets)
		h.sums = make([]float64, buckets)
	}
	i := bucketOf(v)
	h.counts[i] += uint64(n)
	h.sums[i] += v * n
	h.n += n
	h.sum += v * n
	h.sumSq += v * v * n
}

// describe returns mean, median, population standard deviation, p90 and p99 in ms.
func (h *histogram) describe() (mean, median, std, p90, p99 float64) {
	if h.n == 0 {
		return 0, 0, 0, 0, 0
	}
	mean = h.sum / h.n
	std = math.Sqrt(math.Max(0, h.sumSq/h.n-mean*mean))
	ms := func(v float64) float64 { return v * 1000 }
	return ms(mean), ms(h.percentile(50)), ms(std), ms(h.percentile(90)), ms(h.percentile(99))
}

// percentile interpolates linearly between the closest ranks, as numpy.percentile does.
func (h *histogram) percentile(p float64) float64 {
	rank := p / 100 * (h.n - 1)
	lo := math.Floor(rank)
	a := h.at(lo)
	if rank == lo {
		return a
	}
	return a + (h.at(lo+1)-a)*(rank-lo)
}

// at is the value at position pos (0-based) of the sorted sample.
func (h *histogram) at(pos float64) float64 {
	var seen float64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		seen += float64(c)
		if pos < seen {
			return h.sums[i] / float64(c)
		}
	}
	return h.sum / h.n
}
