package sim

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/evict"
	"servelab/policies/route"
	"servelab/serving"
	"servelab/traces"
)

// affineModel costs a fixed time per step plus a time per token computed.
type affineModel struct{ perStep, perToken, perContext float64 }

func (m affineModel) StepTime(s serving.StepShape) float64 {
	return m.perStep + m.perToken*float64(s.Tokens()) + m.perContext*float64(s.ContextTokens)
}
func (m affineModel) Name() string { return "affine" }

type sliceReader struct {
	rows []traces.Row
	next int
}

func (r *sliceReader) Next() (traces.Row, error) {
	if r.next == len(r.rows) {
		return traces.Row{}, io.EOF
	}
	r.next++
	return r.rows[r.next-1], nil
}

func testConfig(t *testing.T, instances int, router, batchSpec string, blocks int) Config {
	t.Helper()
	env := policies.Env{Seed: 3, BlockSize: 16}
	r, _, err := route.Registry.Parse(router, env)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Instances: instances,
		Router:    r,
		NewBatch: func(int) (batch.Policy, error) {
			p, _, err := batch.Registry.Parse(batchSpec, env)
			return p, err
		},
		NewEvict: func(int) (evict.Policy, error) {
			p, _, err := evict.Registry.Parse("lru", env)
			return p, err
		},
		KVBlocks:      blocks,
		BlockSize:     16,
		PrefixCaching: true,
		Latency:       affineModel{perStep: 0.01, perToken: 1e-4, perContext: 1e-7},
		SLO:           metrics.SLO{TTFTMs: 500},
	}
}

// randomRows is a bursty workload with shared prefixes, enough to queue and preempt.
func randomRows(n int, seed uint64) []traces.Row {
	syn, err := traces.NewSynth(traces.SynthConfig{
		Requests: n, Rate: 40, Arrival: "gamma", CV: 2,
		InputMean: 300, OutputMean: 80, InputSigma: 0.8, OutputSigma: 0.8,
		PrefixGroups: 4, PrefixTokens: 128, BlockSize: 16, Seed: seed,
	})
	if err != nil {
		panic(err)
	}
	var rows []traces.Row
	for {
		row, err := syn.Next()
		if err == io.EOF {
			return rows
		}
		if err != nil {
			panic(err)
		}
		rows = append(rows, row)
	}
}

// checkRunAhead runs a config from newConfig with every step queued and with instances running ahead, and
// checks that both give the same records (compared by request: they finish in another
// order) and summaries within tol (sums of the same values in another order may differ in
// the last bits), and that running ahead queued fewer events. It returns the run-ahead run.
func checkRunAhead(t *testing.T, newConfig func() Config, rows []traces.Row, tol float64) (Result, []serving.Record) {
	t.Helper()
	plain, plainRecs := runCollect(t, newConfig(), rows, true)
	fast, fastRecs := runCollect(t, newConfig(), rows, false)
	byID := func(a, b serving.Record) int { return int(a.ID) - int(b.ID) }
	slices.SortFunc(fastRecs, byID)
	slices.SortFunc(plainRecs, byID)
	if diff := cmp.Diff(plainRecs, fastRecs); diff != "" {
		t.Errorf("records differ (-every step queued +run ahead):\n%s", diff)
	}
	if diff := cmp.Diff(plain.Summary, fast.Summary, cmpopts.EquateApprox(tol, 0)); diff != "" {
		t.Errorf("summaries differ (-every step queued +run ahead):\n%s", diff)
	}
	if fast.Events >= plain.Events {
		t.Errorf("running ahead queued %d step events, every step %d: nothing ran ahead", fast.Events, plain.Events)
	}
	return fast, fastRecs
}

func runCollect(t *testing.T, cfg Config, rows []traces.Row, queueEveryStep bool) (Result, []serving.Record) {
	t.Helper()
	var recs []serving.Record
	cfg.OnRecord = func(r *serving.Record) error {
		recs = append(recs, *r)
		return nil
	}
	s, err := newSimulation(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.queueEveryStep = queueEveryStep
	res, err := s.run(&sliceReader{rows: rows})
	if err != nil {
		t.Fatal(err)
	}
	return res, recs
}

func TestOneRequestTiming(t *testing.T) {
	cfg := testConfig(t, 1, "round-robin", "vllm", 100)
	rows := []traces.Row{{Arrival: 2, InputTokens: 100, OutputTokens: 3}}
	res, recs := runCollect(t, cfg, rows, false)
	m := cfg.Latency.(affineModel)
	prefill := m.perStep + 100*m.perToken + 100*m.perContext
	decode1 := m.perStep + m.perToken + 101*m.perContext
	decode2 := m.perStep + m.perToken + 102*m.perContext
	want := serving.Record{
		ID: 0, Arrival: 2, Scheduled: 2, FirstToken: 2 + prefill, Finish: 2 + prefill + decode1 + decode2,
		PromptTokens: 100, OutputTokens: 3,
	}
	if diff := cmp.Diff([]serving.Record{want}, recs, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if res.Summary.Completed != 1 || math.Abs(res.Summary.MeanTTFTMs-prefill*1000) > 1e-9 {
		t.Errorf("summary completed %d TTFT %g ms, want 1 and %g", res.Summary.Completed, res.Summary.MeanTTFTMs, prefill*1000)
	}
	if got, want := res.Summary.MeanITLMs, (decode1+decode2)/2*1000; math.Abs(got-want) > 1e-9 {
		t.Errorf("mean ITL %g ms, want %g", got, want)
	}
}

// TestRunningAheadMatchesPlainSchedule checks the simulator's one optimisation: running an
// instance's steps ahead of the event queue must give exactly the records of a schedule
// that queues every step.
func TestRunningAheadMatchesPlainSchedule(t *testing.T) {
	rows := randomRows(600, 5)
	// A scrape interval adds horizons (the scrape each arrival is routed on) that running
	// ahead must respect too; KV events published at step ends must reach the router's
	// index in the same order and at the same times.
	const precise = "weighted:precise-prefix=3,prefix=0,queue=2,kv=2"
	for _, router := range []string{"round-robin", "least-request", "prefix-affinity", "weighted", "weighted@50ms",
		precise, precise + "@50ms+kv20ms"} {
		t.Run(router, func(t *testing.T) {
			spec, scrape, kvDelay := router, 0.0, 0.0
			if s, ok := strings.CutSuffix(router, "@50ms"); ok {
				spec, scrape = s, 0.05
			}
			if s, ok := strings.CutSuffix(router, "@50ms+kv20ms"); ok {
				spec, scrape, kvDelay = s, 0.05, 0.02
			}
			config := func() Config {
				cfg := testConfig(t, 3, spec, "vllm:max_num_batched_tokens=512", 150)
				cfg.ScrapeInterval, cfg.KVEventDelay = scrape, kvDelay
				return cfg
			}
			fast, _ := checkRunAhead(t, config, rows, 1e-12)
			if fast.Summary.Preemptions == 0 || fast.Summary.PrefixCacheHitRate == 0 {
				t.Errorf("workload too easy: %d preemptions, hit rate %g", fast.Summary.Preemptions, fast.Summary.PrefixCacheHitRate)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	rows := randomRows(400, 9)
	encode := func() []byte {
		res, recs := runCollect(t, testConfig(t, 4, "random", "vllm", 300), rows, false)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		if err := enc.Encode(res.Summary); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if err := enc.Encode(r); err != nil {
				t.Fatal(err)
			}
		}
		return buf.Bytes()
	}
	if a, b := encode(), encode(); !bytes.Equal(a, b) {
		t.Error("two runs with the same seed differ")
	}
}

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	rows := randomRows(400, 2)
	_, recs := runCollect(t, testConfig(t, 4, "round-robin", "vllm", 300), rows, false)
	per := make([]int, 4)
	for _, r := range recs {
		per[r.Instance]++
	}
	if diff := cmp.Diff([]int{100, 100, 100, 100}, per); diff != "" {
		t.Errorf("requests per instance (-want +got):\n%s", diff)
	}
}

func TestOversizedRequestFails(t *testing.T) {
	cfg := testConfig(t, 1, "round-robin", "vllm", 10) // 160 tokens of KV
	cfg.MaxModelLen = 256
	rows := []traces.Row{
		{Arrival: 0, InputTokens: 100, OutputTokens: 10},
		{Arrival: 1, InputTokens: 200, OutputTokens: 10},
		{Arrival: 2, InputTokens: 300, OutputTokens: 10},
		{Arrival: 3, InputTokens: 400, OutputTokens: 10},
	}
	res, recs := runCollect(t, cfg, rows, false)
	if res.Summary.Completed != 1 || res.Summary.Failed != 3 {
		t.Fatalf("completed %d failed %d, want 1 and 3", res.Summary.Completed, res.Summary.Failed)
	}
	if !recs[1].Failed || recs[1].Error == "" {
		t.Errorf("oversized request record %+v lacks failure and reason", recs[1])
	}
	want := metrics.Failures{
		"context exceeds KV cache":      {Count: 1, FirstError: "request 1 needs 210 tokens of context (200 prompt + 10 output), more than an instance's KV cache holds (10 blocks of 16 tokens)"},
		"context exceeds max_model_len": {Count: 2, FirstError: "request 2 needs 310 tokens of context (300 prompt + 10 output), more than max_model_len 256"},
	}
	if diff := cmp.Diff(want, res.Failures); diff != "" {
		t.Errorf("failures (-want +got):\n%s", diff)
	}
}

func TestBadConfig(t *testing.T) {
	good := testConfig(t, 1, "round-robin", "vllm", 10)
	for name, mutate := range map[string]func(*Config){
		"no instances": func(c *Config) { c.Instances = 0 },
		"no router":    func(c *Config) { c.Router = nil },
		"no latency":   func(c *Config) { c.Latency = nil },
		"no blocks":    func(c *Config) { c.KVBlocks = 0 },
	} {
		cfg := good
		mutate(&cfg)
		if _, err := Run(cfg, &sliceReader{}); err == nil {
			t.Errorf("%s: Run succeeded", name)
		}
	}
}

// TestSamplesAreExactAndChangeNothing: sampling every 0.5 s leaves the records as they
// were, and the samples of a run that runs ahead equal those of the plain schedule.
func TestSamplesAreExactAndChangeNothing(t *testing.T) {
	rows := randomRows(400, 9)
	collect := func(queueEveryStep bool) ([]Sample, []serving.Record) {
		cfg := testConfig(t, 3, "least-request", "vllm:max_num_batched_tokens=512", 150)
		var samples []Sample
		cfg.SampleInterval = 0.5
		cfg.OnSample = func(s Sample) error { samples = append(samples, s); return nil }
		_, recs := runCollect(t, cfg, rows, queueEveryStep)
		return samples, recs
	}
	fast, fastRecs := collect(false)
	plain, _ := collect(true)
	_, unsampled := runCollect(t, testConfig(t, 3, "least-request", "vllm:max_num_batched_tokens=512", 150), rows, false)
	// Records come out in another order when run-ahead stops at samples; compare by id.
	byID := func(a, b serving.Record) int { return int(a.ID) - int(b.ID) }
	slices.SortFunc(unsampled, byID)
	slices.SortFunc(fastRecs, byID)
	if diff := cmp.Diff(unsampled, fastRecs); diff != "" {
		t.Errorf("sampling changed the records (-without +with):\n%s", diff)
	}
	if diff := cmp.Diff(plain, fast, cmpopts.EquateApprox(1e-12, 0)); diff != "" {
		t.Errorf("samples differ (-plain +fast):\n%s", diff)
	}
	last := fastRecs[0].Finish
	for _, r := range fastRecs {
		last = max(last, r.Finish)
	}
	if len(fast) == 0 || fast[len(fast)-1].Time != last || fast[len(fast)-1].Completed != int64(len(fastRecs)) {
		t.Fatalf("%d samples, the last %+v; the run ends at %v with %d records", len(fast), fast[len(fast)-1], last, len(fastRecs))
	}
	busy := false
	for i, s := range fast[:len(fast)-1] {
		if want := 0.5 * float64(i+1); math.Abs(s.Time-want) > 1e-9 {
			t.Fatalf("sample %d at %v, want %v", i, s.Time, want)
		}
		if i > 0 && (s.Completed < fast[i-1].Completed || s.PrefixCacheQueries < fast[i-1].PrefixCacheQueries) {
			t.Fatalf("counters went back at sample %d", i)
		}
		busy = busy || s.Running > 0 && s.KVCacheUsage > 0
	}
	if !busy || fast[len(fast)-1].Completed == 0 {
		t.Error("the samples never saw a running request or a completion")
	}
}
