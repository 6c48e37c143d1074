package report

import (
	"strings"
	"testing"

	"servelab/experiments"
)

// An A/B cell's verdict weighs each arm's goodput over its share of the requests: arm b,
// a fifth of the requests, serving 0.6 req/s of goodput does better per request than arm
// a serving 2.0 with the rest; a cell with one arm (ab_fraction 0 or 1) has no verdict.
func TestABVerdictsWeighArmsByTheirShares(t *testing.T) {
	arm := func(name, router string, requests, goodput float64) experiments.ArmResult {
		return experiments.ArmResult{Name: name, Router: router, Requests: experiments.Stat{Mean: requests},
			RequestGoodput: experiments.Stat{Mean: goodput}}
	}
	tests := []struct {
		name string
		arms []experiments.ArmResult
		want string
	}{
		{"b leads per request", []experiments.ArmResult{arm("a", "weighted", 800, 2), arm("b", "least-request", 200, 0.6)},
			"arm b (least-request, 20% of the requests) 0.600 req/s of goodput, arm a (weighted) 2.00; over each arm's share of the requests, 3 against 2.5 req/s: arm b leads by 20%."},
		{"a leads per request", []experiments.ArmResult{arm("a", "weighted", 500, 2), arm("b", "least-request", 500, 1)},
			"over each arm's share of the requests, 2 against 4 req/s: arm a leads by 2.0×."},
		{"one arm", []experiments.ArmResult{arm("b", "least-request", 1000, 3)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &experiments.PolicyResult{Cluster: "ab", Router: "weighted", Batch: "vllm", Evict: "lru", Seeds: 1, Arms: tt.arms}
			got := strings.Join(abVerdicts([]*experiments.PolicyResult{p}), "\n")
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) || tt.want != "" && !strings.HasPrefix(got, "A/B in ab · weighted / lru: ") {
				t.Errorf("verdict %q, want one containing %q", got, tt.want)
			}
		})
	}
}
