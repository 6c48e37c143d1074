package report

import (
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
