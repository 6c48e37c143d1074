package report

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/experiments"
)

func TestAutoscaleVerdictsCompareWithTheSmallestFixedClusterAsGood(t *testing.T) {
	st := func(v float64) *experiments.Stat { return &experiments.Stat{Mean: v} }
	ps := []*experiments.PolicyResult{
		{Cluster: "fixed-6", Router: "r", Batch: "b", Evict: "e", Seeds: 1, SLOAttainment: st(1), GPUHours: st(12)},
		{Cluster: "fixed-5", Router: "r", Batch: "b", Evict: "e", Seeds: 1, SLOAttainment: st(0.9999), GPUHours: st(10)},
		{Cluster: "fixed-4", Router: "r", Batch: "b", Evict: "e", Seeds: 1, SLOAttainment: st(0.85), GPUHours: st(8)}, // cheaper, but attains less
		{Cluster: "auto", Router: "r", Batch: "b", Evict: "e", Seeds: 1, SLOAttainment: st(0.9995), GPUHours: st(6.5), MeanInstances: st(3.25)},
		{Cluster: "auto-best", Router: "r", Batch: "b", Evict: "e", Seeds: 1, SLOAttainment: st(1), GPUHours: st(13), MeanInstances: st(6.5)},
		{Cluster: "fixed-none", Router: "r", Batch: "b", Evict: "e", Seeds: 1}, // a real run: no cost
	}
	got := autoscaleVerdicts(ps)
	want := []string{
		"Autoscaled auto · r / b / e meets the SLO for 99.95% of requests on 3.25 instances on average, 6.50 GPU-hours: 65% of the GPU-hours of fixed-5 · r / b / e (10.0 GPU-hours, 99.99%), the smallest fixed cluster attaining as much.",
		"Autoscaled auto-best · r / b / e meets the SLO for 100.00% of requests on 6.50 instances on average, 13.0 GPU-hours: 108% of the GPU-hours of fixed-6 · r / b / e (12.0 GPU-hours, 100.00%), the smallest fixed cluster attaining as much.",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	if got := autoscaleVerdicts(ps[:3]); got != nil {
		t.Errorf("no autoscaled cluster, verdicts %q", got)
	}
}
