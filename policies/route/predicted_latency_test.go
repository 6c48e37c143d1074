package route

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/serving"
)

// linearSteps is a step-time model for tests: 10 ms a step, 50 µs a prefill token, 1 ms a
// decoding sequence.
type linearSteps struct{}

func (linearSteps) StepTime(s serving.StepShape) float64 {
	if s.Tokens() == 0 {
		return 0
	}
	return 0.010 + 50e-6*float64(s.PrefillTokens) + 1e-3*float64(s.DecodeSeqs)
}

func latencyEnv() policies.Env {
	env := testEnv
	env.StepTime = linearSteps{}
	return env
}

func latencyScorer(t *testing.T, spec string, env policies.Env) *predictedLatencyScorer {
	t.Helper()
	w := mustParse(t, spec, env).(*Weighted)
	for _, s := range w.scorers {
		if p, ok := s.scorer.(*predictedLatencyScorer); ok {
			return p
		}
	}
	t.Fatalf("%s has no %s", spec, PredictedLatencyScorerType)
	return nil
}

// TestPredictedLatencyPredicts: TTFT grows with the prefill queue ahead and shrinks with a
// cached prefix; TPOT grows with the batch the request joins. With budget 2048, a 512-token
// prompt behind 8 waiting 512-token prompts on an endpoint with 4 running is 4608 prefill
// tokens in steps of 2044: two full steps and one of 520.
func TestPredictedLatencyPredicts(t *testing.T) {
	s := latencyScorer(t, "weighted:predicted-latency=1,prefix=0,queue=0,kv=0", latencyEnv())
	hashes := prompt(1, 1, 32, 32)
	req := &serving.Request{PromptTokens: 512, MaxTokens: 100, BlockHashes: hashes}
	cache := setCache{}
	for _, h := range hashes[:16] {
		cache[h] = true
	}
	step := func(prefill, decode float64) float64 { return 0.010 + 50e-6*prefill + 1e-3*decode }
	for _, tc := range []struct {
		name       string
		view       serving.InstanceView
		ttft, tpot float64
	}{
		{"idle", serving.InstanceView{}, step(512, 0), step(0, 1)},
		{"queued", serving.InstanceView{Waiting: 8, Running: 4}, 2*step(2044, 4) + step(520, 4), step(0, 13)},
		{"half cached", serving.InstanceView{Cache: cache}, step(256, 0), step(0, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ttft, tpot := s.predict(req, &tc.view, 1)
			if diff := cmp.Diff([]float64{tc.ttft, tc.tpot}, []float64{ttft, tpot}, cmp.Comparer(func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 })); diff != "" {
				t.Errorf("TTFT, TPOT (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPredictedLatencyScores checks llm-d's tiers: an endpoint meeting the SLO beats every
// one that misses it; among those meeting it, least packs and most spreads; when all miss,
// an idle endpoint wins, then the least deficit; with no SLO, the lowest predicted latency.
func TestPredictedLatencyScores(t *testing.T) {
	const spec = "weighted:predicted-latency=1,prefix=0,queue=0,kv=0"
	req := func(ttft, tpot float64) *serving.Request {
		return &serving.Request{PromptTokens: 512, MaxTokens: 100, BlockHashes: prompt(1, 1, 32, 32), TTFTSLO: ttft, AvgTPOTSLO: tpot}
	}
	for _, tc := range []struct {
		name  string
		extra string
		req   *serving.Request
		views []serving.InstanceView
		want  int
	}{
		// TTFTs about 0.04 s, 0.19 s, 0.65 s; a 0.3 s SLO is met by the first two.
		{"meets beats misses, least packs", "", req(0.3, 0.1),
			[]serving.InstanceView{{Running: 1}, {Waiting: 4, Running: 4}, {Waiting: 16, Running: 4}}, 1},
		{"most spreads", ",headroom_strategy=most", req(0.3, 0.1),
			[]serving.InstanceView{{Waiting: 4, Running: 4}, {Running: 1}, {Waiting: 16, Running: 4}}, 1},
		{"all miss, idle first", "", req(0.001, 0.001),
			[]serving.InstanceView{{Running: 1}, {Waiting: 20, Running: 40}, {}}, 2},
		{"all miss, least deficit", "", req(0.001, 0.001),
			[]serving.InstanceView{{Waiting: 20, Running: 40}, {Waiting: 2, Running: 3}, {Waiting: 9, Running: 9}}, 1},
		{"TPOT-only misses beat TTFT misses", "", req(0.1, 0.025),
			[]serving.InstanceView{{Waiting: 12, Running: 1}, {Running: 20}, {Waiting: 30, Running: 30}}, 1},
		{"no SLO: lowest latency", "", req(0, 0),
			[]serving.InstanceView{{Waiting: 3, Running: 3}, {Waiting: 1, Running: 2}, {Waiting: 6, Running: 1}}, 1},
		{"default SLO from the spec", ",ttft_slo_ms=300,tpot_slo_ms=100", req(0, 0),
			[]serving.InstanceView{{Running: 1}, {Waiting: 16, Running: 4}, {Waiting: 4, Running: 4}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, spec+tc.extra, latencyEnv())
			if got := p.Route(tc.req, tc.views); got != tc.want {
				s := latencyScorer(t, spec+tc.extra, latencyEnv())
				out := make([]float64, len(tc.views))
				s.score(tc.req, tc.views, out)
				t.Errorf("routed to %d, want %d (scores %v)", got, tc.want, out)
			}
		})
	}
}

// TestPredictedLatencyWithoutModelFallsBack: with no step-time model the scorer is llm-d's
// composite of free KV, relative queue and prefix hit.
func TestPredictedLatencyWithoutModelFallsBack(t *testing.T) {
	s := latencyScorer(t, "weighted:predicted-latency=1,prefix=0,queue=0,kv=0", testEnv)
	views := []serving.InstanceView{{Waiting: 4, KVUsage: 0.5}, {Waiting: 0, KVUsage: 0.9}}
	out := make([]float64, 2)
	s.score(request(prompt(1, 1, 4, 4)), views, out)
	if diff := cmp.Diff([]float64{0.17, 0.37}, out); diff != "" {
		t.Errorf("composite scores (-want +got):\n%s", diff)
	}
}

func TestPredictedLatencyConfig(t *testing.T) {
	const head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: predicted-latency-scorer\n"
	ok := head + "  parameters:\n    headroomSelectionStrategy: most\n    sloBufferFactor: 1.2\n    samplingMean: 1000\n    maxNumBatchedTokens: 4096\n"
	p, err := LoadEndpointPickerConfig([]byte(ok), latencyEnv())
	if err != nil {
		t.Fatal(err)
	}
	s := p.(*Weighted).scorers[0].scorer.(*predictedLatencyScorer)
	want := defaultPredictedLatencyConfig(latencyEnv())
	want.HeadroomSelectionStrategy, want.SLOBufferFactor, want.MaxNumBatchedTokens = "most", 1.2, 4096
	if diff := cmp.Diff(want, s.cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	for _, tc := range []struct{ params, want string }{
		{"headroomSelectionStrategy: middle", "plugins[0].parameters.headroomSelectionStrategy"},
		{"epsilonExploreNeg: 0.01", "plugins[0].parameters.epsilonExploreNeg"},
		{"sloBufferFactor: 0", "plugins[0].parameters.sloBufferFactor"},
		{"maxNumBatchedTokens: -1", "plugins[0].parameters.maxNumBatchedTokens"},
		{"headroomTPOTWeight: -1", "plugins[0].parameters.headroomTPOTWeight"},
		{"selectionMode: linear", "plugins[0].parameters.selectionMode"},
		{"bogus: 1", "bogus"},
	} {
		_, err := LoadEndpointPickerConfig([]byte(head+"  parameters:\n    "+tc.params+"\n"), latencyEnv())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.params, err, tc.want)
		}
	}
	for _, spec := range []string{
		"weighted:predicted-latency=1,headroom_strategy=middle",
		"weighted:predicted-latency=1,slo_buffer_factor=0",
		"weighted:predicted-latency=1,ttft_slo_ms=-5",
		"weighted:predicted-latency=1,max_num_batched_tokens=0",
	} {
		if _, err := Parse(spec, latencyEnv()); err == nil {
			t.Errorf("%s: no error", spec)
		}
	}
	if !UsesPredictedLatency(p) || UsesPredictedLatency(mustParse(t, "weighted", testEnv)) {
		t.Error("UsesPredictedLatency does not tell a predicted-latency-scorer")
	}
	if !ReadsCaches(p) {
		t.Error("a predicted-latency-scorer reads the caches (the cached prefix shortens TTFT)")
	}
}

// TestPredictedLatencyCountsItsBacklog: a prompt the scorer sent an endpoint holds that
// endpoint's prefill queue until the endpoint's prefill rate has worked it off, though the
// gauges show it as one running request. With the test model a 2048-token budget step of
// prefill takes 0.1124 s: 18221 tokens a second.
func TestPredictedLatencyCountsItsBacklog(t *testing.T) {
	s := latencyScorer(t, "weighted:predicted-latency=1,prefix=0,queue=0,kv=0", latencyEnv())
	long := &serving.Request{PromptTokens: 20480, MaxTokens: 10, BlockHashes: prompt(1, 1, 1280, 1280)}
	idle := serving.InstanceView{Index: 7}
	s.picked(long, &idle)
	busy := serving.InstanceView{Index: 7, Running: 1} // the gauges: one running request
	short := func(at float64) float64 {
		req := &serving.Request{Arrival: at, PromptTokens: 512, MaxTokens: 10, BlockHashes: prompt(2, 2, 32, 32)}
		ttft, _ := s.predict(req, &busy, 2)
		return ttft
	}
	other := serving.InstanceView{Index: 8, Running: 1}
	alone, _ := s.predict(&serving.Request{PromptTokens: 512, MaxTokens: 10, BlockHashes: prompt(2, 2, 32, 32)}, &other, 2)
	rate := 2048 / (0.010 + 50e-6*2048)
	for _, tc := range []struct {
		at       float64
		backlogd bool
	}{{0, true}, {0.5, true}, {20480/rate + 0.01, false}} {
		got := short(tc.at)
		if backlogd := got > alone+1e-9; backlogd != tc.backlogd {
			t.Errorf("at %v s: TTFT %v behind the long prompt, %v on an endpoint without it: backlog counted %v, want %v", tc.at, got, alone, backlogd, tc.backlogd)
		}
	}
	if a, b := short(0), short(0.5); !(a > b) {
		t.Errorf("the backlog does not drain: TTFT %v at 0 s, %v at 0.5 s", a, b)
	}
}
