package main

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
)

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		values []float64
		want   float64
	}{
		{nil, 0},
		{[]float64{5}, 0},
		{[]float64{90, 110}, 0.2},
		{[]float64{100, 100, 100}, 0},
		{[]float64{10, 20, 30}, 1},
		{[]float64{0, 0}, 0},
	} {
		if got := spread(tc.values); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("spread(%v) = %v, want %v", tc.values, got, tc.want)
		}
	}
}

// A ranking is decided only where the predicted gap exceeds the noise, and agrees only
// where the measurement also separates the pair beyond the noise, in the same order.
func TestRankPair(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		predA, predB           []float64
		measA, measB           []float64
		wantDecided            bool
		wantVerdict            string
		wantPredGap, wantNoise float64
	}{
		{"clear and the same order",
			[]float64{100, 100}, []float64{150, 150}, []float64{190, 210}, []float64{290, 310},
			true, verdictAgrees, -0.4, 0.1},
		{"clear and the other order",
			[]float64{100, 100}, []float64{150, 150}, []float64{290, 310}, []float64{190, 210},
			true, verdictDisagrees, -0.4, 0.1},
		// The coin flip: predictions 0.5% apart, runs 4% apart.
		{"a predicted gap inside the measured spread",
			[]float64{100, 100}, []float64{100.5, 100.5}, []float64{98, 102}, []float64{120, 120},
			false, verdictMissed, -0.004987531, 0.04},
		{"both within noise",
			[]float64{100, 100}, []float64{101, 101}, []float64{95, 105}, []float64{97, 103},
			false, verdictWithinNoise, -0.009950249, 0.1},
		{"predicted beyond noise, measured within",
			[]float64{100, 100}, []float64{130, 130}, []float64{95, 105}, []float64{100, 108},
			true, verdictUnconfirmed, -0.260869565, 0.1},
		// The simulator's own spread counts as noise too.
		{"the simulator's spread hides the gap",
			[]float64{80, 120}, []float64{125, 125}, []float64{100, 100}, []float64{160, 160},
			false, verdictMissed, -0.222222222, 0.4},
		// One repeat: no noise estimate, every nonzero gap is decided.
		{"one repeat",
			[]float64{100}, []float64{101}, []float64{103}, []float64{102},
			true, verdictDisagrees, -0.009950249, 0},
		{"equal everywhere",
			[]float64{100}, []float64{100}, []float64{100}, []float64{100},
			false, verdictWithinNoise, 0, 0},
	} {
		r := rankPair(tc.predA, tc.predB, tc.measA, tc.measB)
		if r.Decided != tc.wantDecided || r.Verdict != tc.wantVerdict ||
			math.Abs(r.PredictedGap-tc.wantPredGap) > 1e-6 || math.Abs(r.Noise-tc.wantNoise) > 1e-9 {
			t.Errorf("%s: %+v, want decided %t, %s, predicted gap %.6f, noise %.3f", tc.name, r, tc.wantDecided, tc.wantVerdict, tc.wantPredGap, tc.wantNoise)
		}
	}
}

// Repeats of a router add up to one run: means of the metrics, the fewest completed and
// the most failed, failures summed; rankings cover every pair by each metric.
func TestRepeatsSummarizeAndRank(t *testing.T) {
	rep := &fidelityReport{}
	sum := func(ttft float64, completed, failed int) metrics.Summary {
		return metrics.Summary{MeanTTFTMs: ttft, MeanTPOTMs: ttft / 10, MeanE2ELMs: 2 * ttft, Completed: completed, Failed: failed, TotalOutputTokens: int64(completed)}
	}
	rep.addRepeat(&fidelityConfig{Router: "a", Label: "a"}, fidelityRepeat{Seed: 1, Predicted: sum(100, 10, 0), Measured: sum(200, 10, 0), StepTimeRatio: 1,
		Failures: metrics.Failures{"HTTP 500": {Count: 1, FirstError: "boom"}}, Steps: 5})
	rep.addRepeat(&fidelityConfig{Router: "a", Label: "a"}, fidelityRepeat{Seed: 2, Predicted: sum(110, 10, 0), Measured: sum(220, 9, 1), StepTimeRatio: 2,
		Failures: metrics.Failures{"HTTP 500": {Count: 2, FirstError: "bang"}}, Steps: 7})
	rep.addRepeat(&fidelityConfig{Router: "b", Label: "b"}, fidelityRepeat{Seed: 1, Predicted: sum(300, 10, 0), Measured: sum(400, 10, 0)})
	rep.addRepeat(&fidelityConfig{Router: "b", Label: "b"}, fidelityRepeat{Seed: 2, Predicted: sum(300, 10, 0), Measured: sum(404, 10, 0)})
	if len(rep.Runs) != 2 || len(rep.Runs[0].Repeats) != 2 || len(rep.Runs[1].Repeats) != 2 {
		t.Fatalf("runs %+v", rep.Runs)
	}
	a := rep.Runs[0]
	want := metrics.Summary{MeanTTFTMs: 210, MeanTPOTMs: 21, MeanE2ELMs: 420, Completed: 9, Failed: 1, TotalOutputTokens: 10}
	if diff := cmp.Diff(want, a.Measured); diff != "" {
		t.Errorf("measured (-want +got):\n%s", diff)
	}
	if a.Predicted.MeanTTFTMs != 105 || a.StepTimeRatio != 1.5 || a.Steps != 12 {
		t.Errorf("predicted mean TTFT %v, step ratio %v, steps %d", a.Predicted.MeanTTFTMs, a.StepTimeRatio, a.Steps)
	}
	if diff := cmp.Diff(metrics.Failures{"HTTP 500": {Count: 3, FirstError: "boom"}}, a.Failures); diff != "" {
		t.Errorf("failures (-want +got):\n%s", diff)
	}
	rs := rankings(rep.Runs)
	if len(rs) != 3 {
		t.Fatalf("%d rankings, want one pair by 3 metrics", len(rs))
	}
	for _, r := range rs {
		if r.A != "a" || r.B != "b" || !r.Decided || r.Verdict != verdictAgrees {
			t.Errorf("%+v", r)
		}
	}
	rep.Rankings = rs
	var out strings.Builder
	printRankings(&out, rep)
	for _, want := range []string{"a vs b  mean TTFT", "over 2 repeats", "Decided: 3 of 3 rankings: 3 agree, 0 unconfirmed (measured within noise), 0 disagree.", "Within noise: 0."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rankings lack %q:\n%s", want, out.String())
		}
	}
}
