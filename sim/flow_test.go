package sim

import (
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
