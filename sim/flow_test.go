package sim

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies/flow"
	"servelab/serving"
	"servelab/traces"
)

// overload is a two-class workload well above what two instances of affineModel serve.
func overload(t *testing.T, n int, rate float64) []traces.Row {
	t.Helper()
	g, err := traces.NewSynth(traces.SynthConfig{
		Requests: n, Rate: rate, InputMean: 200, OutputMean: 40, InputSigma: 0.3, OutputSigma: 0.3, Seed: 5,
		Classes: []traces.SynthClass{{Name: "critical", Share: 0.7}, {Name: "sheddable", Share: 0.3}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var rows []traces.Row
	for {
		r, err := g.Next()
		if err != nil {
			break
		}
		rows = append(rows, r)
	}
	return rows
}

func p99TTFT(recs []serving.Record, class string) (float64, int, int) {
	var v []float64
	failed := 0
	for _, r := range recs {
		if r.Objective != class {
			continue
		}
		if r.Failed {
			failed++
			continue
		}
		v = append(v, r.TTFT())
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0, 0, failed
	}
	return v[(len(v)*99+99)/100-1], len(v), failed
}

// TestFlowControlProtectsCritical: at 1.5 times the two instances' capacity (about 76
// requests/s of this workload), 30% of it sheddable, FCFS engines (vLLM's default), flow
// control (queue_depth_threshold 20) keeps critical requests' waits far below those without
// it, refusing sheddable requests with 429 first, and every request has a record.
// Running instances ahead gives the same records as queueing every step.
func TestFlowControlProtectsCritical(t *testing.T) {
	rows := overload(t, 1500, 114)
	run := func(fc bool, queueEvery bool) []serving.Record {
		cfg := testConfig(t, 2, "least-request", "vllm", 4096)
		cfg.Latency = affineModel{perStep: 0.01, perToken: 0.0001}
		cfg.ScrapeInterval = 0.05
		cfg.Objectives = flow.Objectives{"critical": 1, "sheddable": -1}
		if fc {
			c := flow.Defaults
			c.QueueDepthThreshold = 20
			cfg.FlowControl = &c
		}
		_, recs := runCollect(t, cfg, rows, queueEvery)
		if len(recs) != len(rows) {
			t.Fatalf("%d records of %d requests", len(recs), len(rows))
		}
		return recs
	}
	plain, held := run(false, false), run(true, false)
	critPlain, _, _ := p99TTFT(plain, "critical")
	critHeld, nCrit, failedCrit := p99TTFT(held, "critical")
	_, _, shed := p99TTFT(held, "sheddable")
	t.Logf("critical p99 TTFT: %.3f s without flow control, %.3f s with; %d critical served, %d failed; %d sheddable refused", critPlain, critHeld, nCrit, failedCrit, shed)
	if failedCrit != 0 {
		t.Errorf("%d critical requests refused", failedCrit)
	}
	if shed == 0 {
		t.Error("no sheddable request refused under overload")
	}
	if !(critHeld < critPlain/2) {
		t.Errorf("critical p99 TTFT %.3f s with flow control, not under half of %.3f s without", critHeld, critPlain)
	}
	every := run(true, true)
	byID := func(a, b serving.Record) int { return int(a.ID) - int(b.ID) }
	slices.SortFunc(held, byID)
	slices.SortFunc(every, byID)
	if d := cmp.Diff(held, every); d != "" {
		t.Errorf("running ahead changed the records (-ahead +every step):\n%s", d)
	}
}

func TestFlowControlNeedsScrapes(t *testing.T) {
	cfg := testConfig(t, 2, "least-request", "priority", 4096)
	c := flow.Defaults
	cfg.FlowControl = &c
	if _, err := newSimulation(cfg); err == nil {
		t.Fatal("flow control without a scrape interval was accepted")
	}
}

// TestFlowControlWithDisagg: flow control gates a disaggregated cluster (one prefill and
// one decode instance) on the decode instance's saturation and hands what it admits to the
// pd-profile-handler: under a burst it holds requests, every request then runs through
// both legs and finishes, no block leaks, the decisions name the decode instance, and the
// same run gives a byte-identical summary. With a short TTL, held requests are evicted
// with 503 records instead.
func TestFlowControlWithDisagg(t *testing.T) {
	var rows []traces.Row
	for i := range 120 {
		rows = append(rows, traces.Row{Arrival: 0.002 * float64(i), InputTokens: 100 + i%7*10, OutputTokens: 20})
	}
	run := func(ttl float64) (Result, []serving.Record, map[flow.Outcome]int, *simulation) {
		t.Helper()
		cfg := pdConfig(t, 0) // every request disaggregated
		cfg.ScrapeInterval = 0.05
		c := flow.Defaults
		c.QueueDepthThreshold = 2
		c.RequestTTL = ttl
		cfg.FlowControl = &c
		outcomes := map[flow.Outcome]int{}
		cfg.OnFlowDecision = func(d flow.Decision) error {
			outcomes[d.Outcome]++
			if d.Outcome == flow.Dispatched && d.Instance != 1 {
				t.Errorf("request %d dispatched to instance %d, not the decode instance 1", d.ID, d.Instance)
			}
			return nil
		}
		res, recs, s := runPD(t, cfg, rows)
		if len(recs) != len(rows) {
			t.Fatalf("%d records of %d requests", len(recs), len(rows))
		}
		checkNoLeak(t, s)
		return res, recs, outcomes, s
	}
	res, recs, outcomes, _ := run(0)
	t.Logf("outcomes: %v", outcomes)
	if outcomes[flow.Queued] == 0 {
		t.Errorf("no request held: %v", outcomes)
	}
	if outcomes[flow.Dispatched] != len(rows) {
		t.Errorf("%d dispatched of %d: %v", outcomes[flow.Dispatched], len(rows), outcomes)
	}
	for _, r := range recs {
		if r.Failed || r.PrefillInstance == nil || *r.PrefillInstance != 0 || r.Instance != 1 {
			t.Fatalf("request %d: failed %v (%s), prefill %v, decode %d; want served by prefill 0 and decode 1", r.ID, r.Failed, r.Error, r.PrefillInstance, r.Instance)
		}
	}
	again, _, _, _ := run(0)
	a, err := json.Marshal(res.Summary)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(again.Summary)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("two runs' summaries differ:\n%s", cmp.Diff(string(a), string(b)))
	}

	_, recs, outcomes, _ = run(0.1)
	failed := 0
	for _, r := range recs {
		if r.Failed {
			failed++
		}
	}
	if outcomes[flow.EvictedTTL] == 0 || failed != outcomes[flow.EvictedTTL] {
		t.Errorf("ttl 0.1 s: %d evicted, %d failed records; want some, as many: %v", outcomes[flow.EvictedTTL], failed, outcomes)
	}
}
