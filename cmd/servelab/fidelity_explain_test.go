package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
	"servelab/sim"
)

// constModel gives every step the same time.
type constModel float64

func (m constModel) StepTime(serving.StepShape) float64 { return float64(m) }
func (m constModel) Name() string                       { return "const" }

func step(k, prefillTok, prefillSeqs, decode, kv int) explainStep {
	return explainStep{Step: k, Shape: serving.StepShape{PrefillTokens: prefillTok, PrefillSeqs: prefillSeqs, DecodeSeqs: decode}, KVBlocksUsed: kv}
}

func TestFirstDivergence(t *testing.T) {
	common := []explainStep{step(0, 100, 1, 0, 7), step(1, 64, 2, 1, 12), step(2, 0, 0, 3, 12)}
	with := func(s ...explainStep) []explainStep { return append(append([]explainStep(nil), common...), s...) }
	for _, tc := range []struct {
		name            string
		real, simulated []explainStep
		want            int
		wantReal        *explainStep
		wantSim         *explainStep
	}{
		{"identical", common, common, -1, nil, nil},
		{"both empty", nil, nil, -1, nil, nil},
		// KV usage alone is not a different schedule.
		{"same batches, other KV", with(step(3, 0, 0, 3, 13)), with(step(3, 0, 0, 3, 14)), -1, nil, nil},
		{"prefill tokens", with(step(3, 32, 1, 3, 14)), with(step(3, 31, 1, 3, 14)), 3, &explainStep{}, &explainStep{}},
		{"prefill seqs", with(step(3, 32, 2, 3, 14)), with(step(3, 32, 1, 3, 14)), 3, &explainStep{}, &explainStep{}},
		{"decode seqs", with(step(3, 0, 0, 2, 12)), with(step(3, 0, 0, 3, 12)), 3, &explainStep{}, &explainStep{}},
		{"at the first step", []explainStep{step(0, 10, 1, 0, 1)}, []explainStep{step(0, 20, 1, 0, 2)}, 0, &explainStep{}, &explainStep{}},
		{"the real engine ran more steps", with(step(3, 0, 0, 1, 5)), common, 3, &explainStep{}, nil},
		{"the simulator ran more steps", common, with(step(3, 0, 0, 1, 5)), 3, nil, &explainStep{}},
	} {
		d := firstDivergence(1, tc.real, tc.simulated)
		if d.Step != tc.want || d.Engine != 1 || d.RealSteps != len(tc.real) || d.SimSteps != len(tc.simulated) {
			t.Errorf("%s: divergence %+v, want step %d", tc.name, d, tc.want)
			continue
		}
		if (d.Real != nil) != (tc.wantReal != nil) || (d.Sim != nil) != (tc.wantSim != nil) {
			t.Errorf("%s: real %v, sim %v", tc.name, d.Real, d.Sim)
			continue
		}
		if d.Real != nil && d.Real != &tc.real[d.Step] || d.Sim != nil && d.Sim != &tc.simulated[d.Step] {
			t.Errorf("%s: the divergence does not point at step %d of each world", tc.name, d.Step)
		}
	}
}

func TestStepTimeRatios(t *testing.T) {
	// Ratios 1..10 (in shuffled order) and a step the model gives no time, left out.
	var steps []explainStep
	for _, r := range []float64{7, 2, 9, 1, 10, 4, 3, 8, 6, 5} {
		steps = append(steps, explainStep{Seconds: r * 0.002, Modelled: 0.002})
	}
	steps = append(steps, explainStep{Seconds: 0.5})
	got := stepTimeRatios(steps)
	// numpy.percentile([1..10], [10, 50, 90]) = 1.9, 5.5, 9.1
	want := ratioQuantiles{Steps: 10, P10: 1.9, P50: 5.5, P90: 9.1}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) < 1e-9 })); diff != "" {
		t.Errorf("ratios (-want +got):\n%s", diff)
	}
	if got := stepTimeRatios(nil); got != (ratioQuantiles{}) {
		t.Errorf("no steps: %+v", got)
	}
}

// Both worlds' steps reach the explain files in one format, times from the run's start, and
// the printed comparison names the diverging step.
func TestExplainWritesBothWorldsInOneFormat(t *testing.T) {
	const start = int64(1_700_000_000_000_000_000)
	shape := func(prefill, seqs, decode int) serving.StepShape {
		return serving.StepShape{PrefillTokens: prefill, PrefillSeqs: seqs, DecodeSeqs: decode}
	}
	log := []stepLogRecord{
		{EndUnixNs: start + 30_000_000, Running: 1, KVBlocksUsed: 4},
		{EndUnixNs: start + 50_000_000, Running: 2, Waiting: 1, KVBlocksUsed: 9},
	}
	log[0].Shape, log[0].Seconds = shape(64, 1, 0), 0.020
	log[1].Shape, log[1].Seconds = shape(48, 1, 1), 0.010
	real := realSteps(log, start, constModel(0.005))
	collect := newSimSteps(1, constModel(0.005))
	for _, s := range []sim.StepInfo{
		{Instance: 0, Start: 0.011, End: 0.016, Shape: shape(64, 1, 0), Running: 1, KVBlocksUsed: 4},
		{Instance: 0, Start: 0.016, End: 0.021, Shape: shape(96, 2, 1), Running: 3, KVBlocksUsed: 12},
	} {
		if err := collect.observe(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := collect.observe(sim.StepInfo{Instance: 1}); err == nil {
		t.Error("a step of an instance the cluster does not have was taken")
	}
	dir := filepath.Join(t.TempDir(), "explain")
	rep, err := explainRepeat(dir, [][]explainStep{real}, collect.steps)
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) []explainStep {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var out []explainStep
		sc := bufio.NewScanner(bytes.NewReader(raw))
		for sc.Scan() {
			dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
			dec.DisallowUnknownFields()
			var s explainStep
			if err := dec.Decode(&s); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			out = append(out, s)
		}
		return out
	}
	approx := cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) < 1e-9 })
	wantReal := []explainStep{
		{Step: 0, Start: 0.010, Seconds: 0.020, Modelled: 0.005, Shape: shape(64, 1, 0), Running: 1, KVBlocksUsed: 4},
		{Step: 1, Start: 0.040, Seconds: 0.010, Modelled: 0.005, Shape: shape(48, 1, 1), Running: 2, Waiting: 1, KVBlocksUsed: 9},
	}
	wantSim := []explainStep{
		{Step: 0, Start: 0.011, Seconds: 0.005, Modelled: 0.005, Shape: shape(64, 1, 0), Running: 1, KVBlocksUsed: 4},
		{Step: 1, Start: 0.016, Seconds: 0.005, Modelled: 0.005, Shape: shape(96, 2, 1), Running: 3, KVBlocksUsed: 12},
	}
	if diff := cmp.Diff(wantReal, read("real-engine-0.jsonl"), approx); diff != "" {
		t.Errorf("real steps (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantSim, read("sim-instance-0.jsonl"), approx); diff != "" {
		t.Errorf("simulated steps (-want +got):\n%s", diff)
	}
	if len(rep.Divergences) != 1 || rep.Divergences[0].Step != 1 {
		t.Fatalf("divergences %+v, want engine 0 at step 1", rep.Divergences)
	}
	if r := rep.Ratios; r.Steps != 2 || math.Abs(r.P50-3) > 1e-9 {
		t.Errorf("ratios %+v, want the real steps' 4 and 2 (p50 3)", r)
	}
	var out strings.Builder
	printExplain(&out, rep)
	for _, want := range []string{
		"engine 0: 2 real steps, 2 simulated; first divergence at step 1",
		"real at   0.040 s: prefill 48 tok / 1 seq, decode 1 seq; after it KV 9 blocks, 2 running, 1 waiting",
		"sim  at   0.016 s: prefill 96 tok / 2 seq, decode 1 seq; after it KV 12 blocks, 3 running, 0 waiting",
		"p10 2.20  p50 3.00  p90 3.80",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed explanation lacks %q:\n%s", want, out.String())
		}
	}
}
