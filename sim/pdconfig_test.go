package sim

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
	"servelab/serving"
)

// llmdPD is llm-d's shipped P/D EndpointPickerConfig (decode and prefill profiles of
// 2*prefix-cache-scorer + 1*queue-scorer, prefix-based-pd-decider at 16 tokens), and
// llmdPDSpec the same profile as a compact spec.
const (
	llmdPD     = "../policies/route/testdata/llm-d-pd.yaml"
	llmdPDSpec = "weighted:prefix=2,queue=1,kv=0,lru_capacity=31250,max_prefix_blocks=256"
)

// TestPDEndpointPickerConfigDrivesTheSim: one P/D EndpointPickerConfig as the router
// runs the same disaggregated simulation as the flags it replaces (--router and
// --prefill-router the profile, --non-cached-tokens 16), request by request.
func TestPDEndpointPickerConfigDrivesTheSim(t *testing.T) {
	pools := []PoolSpec{{Name: "p", Role: RolePrefill, Instances: 2, GPU: "a100-80g", TP: 1}, {Name: "d", Role: RoleDecode, Instances: 3, GPU: "l4", TP: 1}}
	flags := poolsSpec()
	flags.UsePools(pools)
	flags.Router, flags.PrefillRouter = llmdPDSpec, llmdPDSpec
	n := 16
	flags.NonCachedTokens = &n
	file := poolsSpec()
	file.UsePools(pools)
	file.Router = llmdPD
	rows := randomRows(300, 11)
	run := func(c ClusterSpec) []serving.Record {
		t.Helper()
		cfg, err := c.Build(metrics.SLO{TTFTMs: 500})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Disagg == nil {
			t.Fatal("not disaggregated")
		}
		_, recs := runCollect(t, cfg, rows, false)
		return recs
	}
	want, got := run(flags), run(file)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records (-flags +EndpointPickerConfig):\n%s", diff)
	}
	disagg := 0
	for _, r := range got {
		if r.PrefillInstance != nil {
			disagg++
		}
	}
	if disagg == 0 || disagg == len(got) {
		t.Errorf("%d of %d requests disaggregated; the workload should exercise both decisions", disagg, len(got))
	}

	for _, tc := range []struct {
		name    string
		edit    func(*ClusterSpec)
		wantErr string
	}{
		{"prefill router besides", func(c *ClusterSpec) { c.PrefillRouter = "least-request" }, "prefill_router: set with router"},
		{"threshold besides", func(c *ClusterSpec) { c.NonCachedTokens = &n }, "non_cached_tokens: set with router"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := file
			tc.edit(&c)
			if _, err := c.Build(metrics.SLO{}); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Build() error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
