package report

import (
	"slices"
	"strings"
	"testing"

	"servelab/experiments"
	"servelab/sim"
)

func TestRouterViews(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	def := sim.DefaultClusterSpec()
	for _, tc := range []struct {
		name string
		k    experiments.Cluster
		want string
	}{
		{"a spec from before the keys", experiments.Cluster{}, ""},
		{"exact", experiments.Cluster{ScrapeInterval: f(0), KVEventDelay: f(0)}, "router on exact views"},
		{"the real router's", experiments.Cluster{ScrapeInterval: f(0.05), KVEventDelay: f(0.002)}, "router on gauges scraped every 50ms and KV events 2ms late"},
		{"one given", experiments.Cluster{ScrapeInterval: f(0.2)}, "router on gauges scraped every 200ms and KV events 2ms late"},
	} {
		if got := routerViews(tc.k, def); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCostColumnsOnlyWhereCostIsKnown(t *testing.T) {
	heads := func(ps []*experiments.PolicyResult) []string {
		var out []string
		for _, c := range tableColumns(ps) {
			out = append(out, c.Head)
		}
		return out
	}
	measured := &experiments.PolicyResult{Router: "round-robin", Seeds: 1}
	priced := &experiments.PolicyResult{Router: "least-request", Seeds: 1,
		CostUSD: &experiments.Stat{Mean: 2.5}, GoodputPerDollar: &experiments.Stat{Mean: 120}}
	if got := heads([]*experiments.PolicyResult{measured}); slices.Contains(got, "cost $") || slices.Contains(got, "goodput/$") {
		t.Errorf("a run without cost has cost columns: %q", got)
	}
	got := heads([]*experiments.PolicyResult{measured, priced})
	if !slices.Contains(got, "cost $") || !slices.Contains(got, "goodput/$") {
		t.Fatalf("a run with cost lacks cost columns: %q", got)
	}
	for _, c := range tableColumns([]*experiments.PolicyResult{priced}) {
		switch c.Head {
		case "cost $":
			if v := c.Value(priced); v != "2.50" {
				t.Errorf("cost $ = %q, want 2.50", v)
			}
		case "goodput/$":
			if v := c.Value(priced); v != "120" {
				t.Errorf("goodput/$ = %q, want 120", v)
			}
		}
	}
	for _, c := range tableColumns([]*experiments.PolicyResult{measured, priced}) {
		if c.Head == "cost $" {
			if v := c.Value(measured); v != "–" {
				t.Errorf("cost $ of a policy without cost = %q, want –", v)
			}
		}
	}
}

func TestFactsDescribePoolsAndPrices(t *testing.T) {
	e := &Experiment{Spec: experiments.Spec{Cluster: experiments.Cluster{Model: "llama-3.1-8b",
		Pools:           []sim.PoolSpec{{Name: "big", Role: "both", Instances: 4, GPU: "a100-80g", TP: 2}, {Name: "small", Role: "both", Instances: 8, GPU: "l4", TP: 1}},
		GPUPricePerHour: map[string]float64{"l4": 0.5, "a100-80g": 3.2}}}}
	want := "llama-3.1-8b in pools big: 4 × a100-80g TP 2, small: 8 × l4, GPU-hour prices a100-80g $3.2, l4 $0.5"
	for _, f := range e.facts() {
		if f.Label == "cluster" {
			if !strings.HasPrefix(f.Value, want) {
				t.Errorf("cluster fact %q, want it to begin %q", f.Value, want)
			}
			return
		}
	}
	t.Errorf("no cluster fact in %+v", e.facts())
}
