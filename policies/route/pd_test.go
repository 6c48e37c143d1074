package route

import (
	"testing"

	"servelab/serving"
)

// fakeCache caches the first n blocks of any prompt.
type fakeCache int

func (c fakeCache) CachedPrefixBlocks(h []uint64) int { return min(int(c), len(h)) }

func TestPrefixBasedPDDecider(t *testing.T) {
	req := func(prompt int) *serving.Request {
		return &serving.Request{PromptTokens: prompt, BlockHashes: make([]uint64, prompt/16)}
	}
	for _, tc := range []struct {
		name      string
		threshold int
		prompt    int
		cached    int // blocks the decode endpoint holds
		noCache   bool
		want      bool
	}{
		{"short prompt stays", 16, 15, 0, false, false},
		{"prompt at threshold disaggregates", 16, 16, 0, false, true},
		{"long uncached prompt disaggregates", 16, 1000, 0, false, true},
		{"fully cached prompt stays", 16, 160, 10, false, false},
		{"uncached rest below threshold stays", 16, 170, 10, false, false},
		{"uncached rest at threshold disaggregates", 16, 176, 10, false, true},
		{"no cache view counts nothing cached", 16, 160, 10, true, true},
		{"threshold 0 always disaggregates", 0, 1, 0, false, true},
		{"threshold 0 even fully cached", 0, 160, 10, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := serving.InstanceView{}
			if !tc.noCache {
				v.Cache = fakeCache(tc.cached)
			}
			d := PrefixBasedPDDecider{NonCachedTokens: tc.threshold}
			if got := d.Disaggregate(req(tc.prompt), v, 16); got != tc.want {
				t.Errorf("Disaggregate(prompt %d, cached %d blocks, threshold %d) = %v, want %v", tc.prompt, tc.cached, tc.threshold, got, tc.want)
			}
		})
	}
	if err := (PrefixBasedPDDecider{NonCachedTokens: -1}).Validate(); err == nil {
		t.Error("Validate accepted a negative nonCachedTokens")
	}
}

func TestPDProfileHandlerPick(t *testing.T) {
	h := &PDProfileHandler{Decode: &RoundRobin{}, Prefill: &RoundRobin{}, Decider: PrefixBasedPDDecider{NonCachedTokens: 16}, BlockSize: 16}
	dec := []serving.InstanceView{{Index: 2}, {Index: 3}}
	pre := []serving.InstanceView{{Index: 0}, {Index: 1}}
	long := &serving.Request{PromptTokens: 64, BlockHashes: make([]uint64, 4)}
	short := &serving.Request{PromptTokens: 8}
	type pick struct{ d, p int }
	var got []pick
	for _, r := range []*serving.Request{long, short, long} {
		d, p := h.Pick(r, dec, pre)
		got = append(got, pick{d, p})
	}
	want := []pick{{0, 0}, {1, -1}, {0, 1}}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("picks = %v, want %v", got, want)
		}
	}
	if d, p := h.Pick(long, dec, nil); p != -1 || d < 0 {
		t.Errorf("with no prefill endpoints Pick = %d, %d; want a decode endpoint and -1", d, p)
	}
}
