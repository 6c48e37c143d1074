package sim

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
	"servelab/traces"
)

var update = flag.Bool("update", false, "rewrite testdata/legacy_fresh_views.json from this build")

// legacyCases are runs whose results the simulator published before it modelled the
// router's stale views: every router kind (gauges, router-local prefix index, exact caches
// through the precise prefix-cache scorer) on both shipped trace slices, under load.
var legacyCases = []struct {
	trace     string
	rate      float64
	instances int
	gpu       string
	router    string
}{
	{"azure_conv_3000.csv", 8, 4, "a100-80g", "round-robin"},
	{"azure_conv_3000.csv", 8, 4, "a100-80g", "least-request"},
	{"azure_conv_3000.csv", 8, 4, "a100-80g", "prefix-affinity"},
	{"azure_conv_3000.csv", 8, 4, "a100-80g", "weighted"},
	{"mooncake_conv_500.jsonl", 1, 8, "h100", "least-request"},
	{"mooncake_conv_500.jsonl", 1, 8, "h100", "prefix-affinity"},
	{"mooncake_conv_500.jsonl", 1, 8, "h100", "weighted"},
	{"mooncake_conv_500.jsonl", 1, 8, "h100", "weighted:precise-prefix=3,prefix=0,queue=2,kv=2"},
}

// legacyFreshViews runs every legacy case with the router reading live gauges and live
// prefix caches, as every simulation did before ScrapeInterval and KVEventDelay existed,
// and returns the summaries as indented JSON.
func legacyFreshViews(t *testing.T) []byte {
	t.Helper()
	out := map[string]metrics.Summary{}
	for _, tc := range legacyCases {
		spec := DefaultClusterSpec()
		spec.Instances = tc.instances
		spec.GPU = tc.gpu
		spec.Router = tc.router
		spec.Seed = 7
		spec.ScrapeInterval, spec.KVEventDelay = 0, 0
		cfg, err := spec.Build(metrics.SLO{TTFTMs: 500, TPOTMs: 50})
		if err != nil {
			t.Fatalf("%s: %v", tc.router, err)
		}
		r, c, err := traces.Open(filepath.Join("..", "examples", "traces", tc.trace), "")
		if err != nil {
			t.Fatal(err)
		}
		res, err := Run(cfg, traces.ScaleRate(r, tc.rate))
		c.Close()
		if err != nil {
			t.Fatalf("%s on %s: %v", tc.router, tc.trace, err)
		}
		out[fmt.Sprintf("%s x%g %d x %s %s", tc.trace, tc.rate, tc.instances, tc.gpu, tc.router)] = res.Summary
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestFreshViewsReproduceLegacyResults: with ScrapeInterval 0 and KVEventDelay 0 the
// simulator routes on exact instantaneous views and reproduces, byte for byte, the
// summaries it published before it modelled stale views (testdata/legacy_fresh_views.json,
// written by the build before that change).
func TestFreshViewsReproduceLegacyResults(t *testing.T) {
	golden := filepath.Join("testdata", "legacy_fresh_views.json")
	got := legacyFreshViews(t)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("summaries differ from %s (-want +got):\n%s", golden, cmp.Diff(string(want), string(got)))
	}
}
