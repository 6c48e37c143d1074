package bench

import (
	"context"
	"math"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/real/router"
	"servelab/serving"
	"servelab/sim"
	"servelab/traces"
)

// pickPolicy always routes to the candidate at index i.
type pickPolicy int

func (p pickPolicy) Route(_ *serving.Request, views []serving.InstanceView) int {
	return min(int(p), len(views)-1)
}

// TestBenchSummarisesEachArm: behind servelab's router running an A/B test, each record
// carries the arm the router named, the arms are the simulator's split of the trace's row
// ids, and the summary has a block per arm with the arm's own latencies.
func TestBenchSummarisesEachArm(t *testing.T) {
	// Arm a's engine answers its first token after 5 ms, arm b's after 80 ms.
	_, fast := startStub(t, 5*time.Millisecond, time.Millisecond)
	_, slow := startStub(t, 80*time.Millisecond, time.Millisecond)
	ab, err := route.NewAB(pickPolicy(0), pickPolicy(1), 0.4)
	if err != nil {
		t.Fatal(err)
	}
	ab.Split.Seed = 12
	r, err := router.New(router.Config{Endpoints: []string{fast, slow}, Policy: ab, ScrapeInterval: time.Hour,
		Registry: prometheus.NewRegistry(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)

	const n = 30
	var trace []traces.Row
	want := map[string]int{}
	for i := range n {
		trace = append(trace, traces.Row{Arrival: float64(i) * 0.005, InputTokens: 16 + i, OutputTokens: 4})
		want[ab.Split.Arm(uint64(i))]++
	}
	if want[serving.ArmA] == 0 || want[serving.ArmB] == 0 {
		t.Fatalf("the split put every request in one arm: %v", want)
	}
	slo := metrics.SLO{TTFTMs: 40}
	res, err := Run(ctx, Options{Endpoint: srv.URL, Model: "m", Trace: &rows{trace}, VocabSize: 1000, Seed: 1, SLO: slo})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range res.Records {
		if rec.Failed {
			t.Fatalf("request %d failed: %s", rec.ID, rec.Error)
		}
		if w := ab.Split.Arm(rec.ID); rec.Arm != w {
			t.Errorf("request %d: arm %q, the simulator's split gives %q", rec.ID, rec.Arm, w)
		}
	}
	got := map[string]int{}
	for arm, s := range res.Summary.Arms {
		got[arm] = s.Completed
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("completed requests per arm (-split +summary):\n%s", diff)
	}
	// Each arm's latencies and goodput are its own records': checked against those
	// records rather than against how fast the test machine served arm a (under load,
	// hundreds of ms). The arms share the run's duration.
	ttfts, good := map[string][]float64{}, map[string]int{}
	for i := range res.Records {
		rec := &res.Records[i]
		ttfts[rec.Arm] = append(ttfts[rec.Arm], 1e3*rec.TTFT())
		if slo.Met(rec) {
			good[rec.Arm]++
		}
	}
	for arm, s := range res.Summary.Arms {
		var sum float64
		for _, ms := range ttfts[arm] {
			sum += ms
		}
		mean := sum / float64(len(ttfts[arm]))
		if math.Abs(s.MeanTTFTMs-mean) > 1e-6*mean || s.Duration != res.Summary.Duration || math.Abs(s.RequestGoodput-float64(good[arm])/s.Duration) > 1e-9 {
			t.Errorf("arm %s: mean TTFT %.3f ms, goodput %.3f req/s over %v s; its %d records: mean TTFT %.3f ms, %d within the SLO, over the run's %v s",
				arm, s.MeanTTFTMs, s.RequestGoodput, s.Duration, len(ttfts[arm]), mean, good[arm], res.Summary.Duration)
		}
	}
	// What the engines' waits guarantee however loaded the machine: arm b's first tokens
	// all miss the 40 ms SLO.
	a, b := res.Summary.Arms[serving.ArmA], res.Summary.Arms[serving.ArmB]
	if a.MeanTTFTMs < 5 || b.MeanTTFTMs < 80 || b.RequestGoodput != 0 {
		t.Errorf("arm a mean TTFT %.1f ms (engine waits 5), arm b %.1f ms (engine waits 80) with goodput %.2f req/s, want 0",
			a.MeanTTFTMs, b.MeanTTFTMs, b.RequestGoodput)
	}
	if sum := a.RequestThroughput + b.RequestThroughput; sum < res.Summary.RequestThroughput*0.999 || sum > res.Summary.RequestThroughput*1.001 {
		t.Errorf("arms' throughputs add to %.3f req/s, the run's is %.3f", sum, res.Summary.RequestThroughput)
	}
	if a.MeanITLMs <= 0 || b.MeanITLMs <= 0 || a.PrefixCacheHitRate < 0.4 || a.PrefixCacheHitRate > 0.6 {
		t.Errorf("arm a ITL %.2f ms, hit rate %.2f (the stub caches half of each prompt); arm b ITL %.2f ms", a.MeanITLMs, a.PrefixCacheHitRate, b.MeanITLMs)
	}
}

// Straight to an engine (no A/B test) the summary has no arms.
func TestBenchWithoutArms(t *testing.T) {
	_, url := startStub(t, time.Millisecond, time.Millisecond)
	res, err := Run(context.Background(), Options{Endpoint: url, Model: "m", VocabSize: 100,
		Trace: &rows{[]traces.Row{{InputTokens: 8, OutputTokens: 2}}}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Arms != nil || res.Records[0].Arm != "" {
		t.Errorf("arms %v, record arm %q", res.Summary.Arms, res.Records[0].Arm)
	}
}

// TestSimAndRouterSplitAlike: one trace, replayed in the simulator with --ab-router and
// through servelab's router with the same specs, fraction and seed by servelab bench,
// puts every request in the same arm in both worlds.
func TestSimAndRouterSplitAlike(t *testing.T) {
	const (
		a, b     = "least-request", "round-robin"
		fraction = 0.35
		seed     = 77
	)
	var trace []traces.Row
	for i := range 40 {
		trace = append(trace, traces.Row{Arrival: float64(i) * 0.004, InputTokens: 32 + i%7, OutputTokens: 3})
	}

	spec := sim.DefaultClusterSpec()
	spec.Instances, spec.Seed, spec.Router, spec.ABRouter, spec.ABFraction = 2, seed, a, b, fraction
	cfg, err := spec.Build(metrics.SLO{})
	if err != nil {
		t.Fatal(err)
	}
	simulated := map[uint64]string{}
	cfg.OnRecord = func(r *serving.Record) error { simulated[r.ID] = r.Arm; return nil }
	simRes, err := sim.Run(cfg, &rows{append([]traces.Row(nil), trace...)})
	if err != nil {
		t.Fatal(err)
	}

	_, e0 := startStub(t, time.Millisecond, time.Millisecond)
	_, e1 := startStub(t, time.Millisecond, time.Millisecond)
	pol, err := route.ParseAB(a, b, fraction, policies.Env{Seed: seed, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(router.Config{Endpoints: []string{e0, e1}, Policy: pol, ScrapeInterval: time.Hour,
		Registry: prometheus.NewRegistry(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)
	res, err := Run(ctx, Options{Endpoint: srv.URL, Model: "m", Trace: &rows{trace}, VocabSize: 1000, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	measured := map[uint64]string{}
	for _, rec := range res.Records {
		measured[rec.ID] = rec.Arm
	}
	if diff := cmp.Diff(simulated, measured); diff != "" {
		t.Errorf("arm per request (-simulator +router):\n%s", diff)
	}
	for _, arm := range []string{serving.ArmA, serving.ArmB} {
		s, m := simRes.Summary.Arms[arm], res.Summary.Arms[arm]
		if s == nil || m == nil || s.Completed != m.Completed {
			t.Errorf("arm %s: simulated %+v, measured %+v", arm, s, m)
		}
	}
}
