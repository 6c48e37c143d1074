package route

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/serving"
)

// tierCache is an exact prefix cache that knows the medium holding each block.
type tierCache map[uint64]string

func (c tierCache) CachedPrefixBlocks(hashes []uint64) int {
	for i, h := range hashes {
		if _, ok := c[h]; !ok {
			return i
		}
	}
	return len(hashes)
}

func (c tierCache) CachedPrefixWeight(hashes []uint64, weight func(string) float64) float64 {
	w := 0.0
	for _, h := range hashes[:c.CachedPrefixBlocks(hashes)] {
		w += weight(c[h])
	}
	return w
}

// TestPreciseScorerWeighsTiers: as llm-d-kv-cache's LongestPrefixScorer with its default
// backend weights, a block on CPU counts 0.8 and one on GPU (or disk, which the defaults do
// not list) 1. Four blocks with two on CPU (3.6) rank below four on GPU (4) and above
// three on GPU (3); by count alone the first two would tie.
func TestPreciseScorerWeighsTiers(t *testing.T) {
	h := prompt(1, 1, 6, 6)
	on := func(media ...string) tierCache {
		c := tierCache{}
		for i, m := range media {
			c[h[i]] = m
		}
		return c
	}
	views := []serving.InstanceView{
		{Cache: on("GPU", "GPU", "GPU", "GPU")},
		{Cache: on("GPU", "GPU", "CPU", "CPU")},
		{Cache: on("GPU", "GPU", "GPU")},
		{Cache: on("DISK", "DISK", "DISK", "DISK")},
		{Cache: on("CPU")},
	}
	got := scoreOf(precisePrefixCacheScorer{}, request(h), views)
	// min 0.8 (one CPU block), max 4.
	want := []float64{1, (3.6 - 0.8) / 3.2, (3 - 0.8) / 3.2, 1, 0}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
		t.Errorf("scores (-want +got):\n%s", diff)
	}
}
