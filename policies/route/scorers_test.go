package route

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/serving"
)

func scoreOf(s scorer, req *serving.Request, views []serving.InstanceView) []float64 {
	out := make([]float64, len(views))
	s.score(req, views, out)
	return out
}

func TestScorers(t *testing.T) {
	h := prompt(1, 1, 8, 8)
	running := loadViews(0, 2, 4)
	running[0].Running = 4 // loads 4, 2, 4
	kv := []serving.InstanceView{{KVUsage: 0}, {KVUsage: 0.25}, {KVUsage: 1}}
	caches := []serving.InstanceView{
		{Cache: setCache{h[0]: true, h[1]: true}}, // 2 blocks
		{Cache: nil}, // cannot say
		{Cache: setCache{h[0]: true, h[1]: true, h[2]: true, h[3]: true}}, // 4 blocks
		{Cache: setCache{h[1]: true}},                                     // no leading block
	}
	one := func(c setCache) []serving.InstanceView { return []serving.InstanceView{{Cache: c}, {}} }
	tests := []struct {
		name   string
		scorer scorer
		views  []serving.InstanceView
		want   []float64
	}{
		{"queue min-max", queueScorer{}, loadViews(4, 0, 2, 4), []float64{0, 1, 0.5, 0}},
		{"queue all equal", queueScorer{}, loadViews(3, 3, 3), []float64{1, 1, 1}},
		{"queue all empty", queueScorer{}, loadViews(0, 0), []float64{1, 1}},
		{"queue one view", queueScorer{}, loadViews(7), []float64{1}},
		{"queue ignores running", queueScorer{}, running, []float64{1, 0.5, 0}},
		{"kv utilisation", kvCacheUtilizationScorer{}, kv, []float64{1, 0.75, 0}},
		{"load-aware", &loadAwareScorer{threshold: 8}, loadViews(0, 1, 4, 8, 100), []float64{0.5, 0.4375, 0.25, 0, 0}},
		{"active-request", activeRequestScorer{}, running, []float64{0, 0.5, 0}},
		{"active-request idle", activeRequestScorer{}, loadViews(0, 0), []float64{1, 1}},
		{"active-request one idle", activeRequestScorer{}, loadViews(0, 4, 1), []float64{1, 0, 0.75}},
		{"precise min-max over hits", precisePrefixCacheScorer{}, caches, []float64{0, 0, 1, 0}},
		{"precise single hit scores 1", precisePrefixCacheScorer{}, one(setCache{h[0]: true}), []float64{1, 0}},
		{"precise no caches", precisePrefixCacheScorer{}, loadViews(0, 0), []float64{0, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := scoreOf(tc.scorer, request(h), tc.views)
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
				t.Errorf("scores (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPreciseScorerMinMax(t *testing.T) {
	h := prompt(1, 1, 10, 10)
	held := func(n int) setCache {
		c := setCache{}
		for _, x := range h[:n] {
			c[x] = true
		}
		return c
	}
	views := []serving.InstanceView{{Cache: held(2)}, {Cache: held(6)}, {Cache: held(10)}, {Cache: held(0)}}
	got := scoreOf(precisePrefixCacheScorer{}, request(h), views)
	want := []float64{0, 0.5, 1, 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("scores (-want +got):\n%s", diff)
	}
}

func TestPrefixCacheScorer(t *testing.T) {
	x := newIndex(t, 1000, 256, 1)
	s := &prefixCacheScorer{index: x}
	views := []serving.InstanceView{{Index: 4}, {Index: 7}}
	a := prompt(1, 1, 6, 8)
	s.picked(request(a), &views[1])
	b := prompt(1, 2, 6, 12) // shares 6 of its 12 blocks with a
	if diff := cmp.Diff([]float64{0, 0.5}, scoreOf(s, request(b), views)); diff != "" {
		t.Errorf("scores (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]float64{0, 0}, scoreOf(s, request(nil), views)); diff != "" {
		t.Errorf("scores of a prompt without full blocks (-want +got):\n%s", diff)
	}
}
