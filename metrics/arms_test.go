package metrics

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
)

func TestArms(t *testing.T) {
	var none *Arms // a run without an A/B test
	none.Add(&serving.Record{Arm: "a"})
	none.AddITL("a", 1)
	if got := none.Summaries(10); got != nil {
		t.Errorf("nil Arms: %v", got)
	}

	a := NewArms(SLO{TTFTMs: 100})
	recs := []serving.Record{
		{ID: 0, Arm: "a", Arrival: 0, FirstToken: 0.05, Finish: 0.25, PromptTokens: 100, CachedTokens: 50, OutputTokens: 5, Preemptions: 1},
		{ID: 1, Arm: "b", Arrival: 1, FirstToken: 1.5, Finish: 2, PromptTokens: 100, OutputTokens: 3},
		{ID: 2, Arm: "a", Arrival: 2, FirstToken: 2.2, Finish: 2.4, PromptTokens: 300, CachedTokens: 150, OutputTokens: 2},
		{ID: 3, Arm: "b", Arrival: 3, Failed: true, PromptTokens: 10},
		{ID: 4, Arrival: 3, FirstToken: 3.1, Finish: 3.2, PromptTokens: 10, OutputTokens: 2}, // no arm: not in the test
	}
	for i := range recs {
		a.Add(&recs[i])
	}
	a.AddITL("a", 0.01)
	a.AddITL("", 0.5)
	got := a.Summaries(10)
	if len(got) != 2 {
		t.Fatalf("arms %v", got)
	}
	type brief struct {
		Completed, Failed, Good int
		HitRate                 float64
		Preemptions             int64
		Input, Output           int64
	}
	have := map[string]brief{}
	for k, s := range got {
		have[k] = brief{s.Completed, s.Failed, int(s.RequestGoodput*10 + 0.5), s.PrefixCacheHitRate, s.Preemptions, s.TotalInputTokens, s.TotalOutputTokens}
	}
	want := map[string]brief{
		"a": {Completed: 2, Good: 1, HitRate: 0.5, Preemptions: 1, Input: 400, Output: 7},
		"b": {Completed: 1, Failed: 1, Good: 0, HitRate: 0, Input: 100, Output: 3},
	}
	if diff := cmp.Diff(want, have); diff != "" {
		t.Errorf("arms (-want +got):\n%s", diff)
	}
	if got["a"].MeanITLMs < 9.9 || got["a"].MeanITLMs > 10.1 || got["b"].MeanITLMs != 0 {
		t.Errorf("ITL: arm a %v ms, arm b %v ms", got["a"].MeanITLMs, got["b"].MeanITLMs)
	}
}
