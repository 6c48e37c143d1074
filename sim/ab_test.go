package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/metrics"
	"servelab/policies/route"
	"servelab/serving"
)

func abSpec(a, b string, fraction float64) ClusterSpec {
	c := poolsSpec()
	c.Instances, c.Seed = 3, 4
	c.Router, c.ABRouter, c.ABFraction = a, b, fraction
	return c
}

// TestABSplitsAndSummarisesEachArm: every request is in the arm route.Split gives its id
// (the split the real router runs), its record says so, and each arm's summary holds
// exactly its arm's records.
func TestABSplitsAndSummarisesEachArm(t *testing.T) {
	cfg, err := abSpec("least-request", "round-robin", 0.3).Build(metrics.SLO{TTFTMs: 500})
	if err != nil {
		t.Fatal(err)
	}
	ab, ok := cfg.Router.(*route.AB)
	if !ok {
		t.Fatalf("router is a %T", cfg.Router)
	}
	if _, ok := ab.B.(*route.RoundRobin); !ok || ab.Split != (route.Split{Fraction: 0.3, Seed: 4}) {
		t.Fatalf("arm b %T, split %+v", ab.B, ab.Split)
	}
	rows := randomRows(400, 3)
	res, recs := runCollect(t, cfg, rows, false)
	want := map[string]*metrics.Collector{serving.ArmA: metrics.NewCollector(cfg.SLO), serving.ArmB: metrics.NewCollector(cfg.SLO)}
	for _, r := range recs {
		if w := ab.Split.Arm(r.ID); r.Arm != w {
			t.Fatalf("request %d: arm %q, the split gives %q", r.ID, r.Arm, w)
		}
		want[r.Arm].Add(&r)
	}
	if len(res.Summary.Arms) != 2 {
		t.Fatalf("arms %v", res.Summary.Arms)
	}
	total := 0
	for arm, c := range want {
		got := res.Summary.Arms[arm]
		w := c.Summary(res.Summary.Duration, metrics.EngineCounters{})
		// The collector above saw no ITLs nor cache counters; compare the rest.
		opts := cmpopts.IgnoreFields(metrics.Summary{}, "MeanITLMs", "MedianITLMs", "StdITLMs", "P90ITLMs", "P99ITLMs", "PrefixCacheHitRate", "Preemptions")
		if diff := cmp.Diff(w, *got, opts); diff != "" {
			t.Errorf("arm %s (-its records +its summary):\n%s", arm, diff)
		}
		if got.MeanITLMs <= 0 {
			t.Errorf("arm %s: no ITLs", arm)
		}
		total += got.Completed
	}
	if total != res.Summary.Completed {
		t.Errorf("arms completed %d, the run %d", total, res.Summary.Completed)
	}
}

// An A/B test that sends every request to one arm decides as that arm's policy alone.
func TestABAllInOneArmIsThatPolicy(t *testing.T) {
	rows := randomRows(300, 5)
	run := func(c ClusterSpec) (Result, []serving.Record) {
		t.Helper()
		cfg, err := c.Build(metrics.SLO{TTFTMs: 500})
		if err != nil {
			t.Fatal(err)
		}
		return runCollect(t, cfg, rows, false)
	}
	noArms := []cmp.Option{
		cmpopts.IgnoreFields(metrics.Summary{}, "Arms"),
		cmpopts.IgnoreFields(serving.Record{}, "Arm"),
	}
	for _, tc := range []struct {
		name     string
		alone    string
		fraction float64
	}{{"fraction 0: arm a", "least-request", 0}, {"fraction 1: arm b", "prefix-affinity", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			plain := poolsSpec()
			plain.Instances, plain.Seed, plain.Router = 3, 4, tc.alone
			wantRes, wantRecs := run(plain)
			gotRes, gotRecs := run(abSpec("least-request", "prefix-affinity", tc.fraction))
			if diff := cmp.Diff(wantRes, gotRes, noArms...); diff != "" {
				t.Errorf("result (-%s alone +A/B):\n%s", tc.alone, diff)
			}
			if diff := cmp.Diff(wantRecs, gotRecs, noArms...); diff != "" {
				t.Errorf("records (-%s alone +A/B):\n%s", tc.alone, diff)
			}
			if len(gotRes.Summary.Arms) != 1 {
				t.Errorf("arms %v, want one", gotRes.Summary.Arms)
			}
		})
	}
}

func TestABRefusesBadSpecs(t *testing.T) {
	// EndpointPickerConfigs with a precise-prefix-cache-scorer's kvEventsConfig: servelab
	// router follows the endpoints once for both arms and refuses two that disagree.
	epp := func(kv string) string {
		t.Helper()
		p := filepath.Join(t.TempDir(), "epp.yaml")
		data := "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n" +
			"- type: precise-prefix-cache-scorer\n  parameters:\n    kvEventsConfig:\n" + kv +
			"schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: precise-prefix-cache-scorer\n"
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kvA := epp("      topicFilter: kv@\n")
	kvB := epp("      topicFilter: kv@b\n")
	kvBad := epp("      podDiscoveryConfig:\n        socketPort: 0\n")
	// Agreeing arms run: concurrency has no effect on the router's subscription.
	ok := poolsSpec()
	ok.Router, ok.ABRouter, ok.ABFraction = kvA, epp("      topicFilter: kv@\n      concurrency: 8\n"), 0.5
	if _, err := ok.Build(metrics.SLO{}); err != nil {
		t.Errorf("arms whose kvEventsConfigs agree: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*ClusterSpec)
		want string
	}{
		{"fraction alone", func(c *ClusterSpec) { c.ABFraction = 0.5 }, "ab_fraction: 0.5 without ab_router"},
		{"bad arm b", func(c *ClusterSpec) { c.ABRouter = "nope" }, "ab_router: unknown route policy"},
		{"fraction out of range", func(c *ClusterSpec) { c.ABRouter, c.ABFraction = "random", 2 }, "ab_fraction: fraction 2: want the share"},
		{"P/D arm b", func(c *ClusterSpec) { c.ABRouter = "../policies/route/testdata/llm-d-pd.yaml" }, "cannot be an A/B arm"},
		{"P/D arm a", func(c *ClusterSpec) {
			c.Router, c.ABRouter = "../policies/route/testdata/llm-d-pd.yaml", "random"
		}, "ab_router: router ../policies/route/testdata/llm-d-pd.yaml is a P/D EndpointPickerConfig"},
		{"disaggregated", func(c *ClusterSpec) {
			c.UsePools([]PoolSpec{{Name: "p", Role: RolePrefill, Instances: 1, GPU: "h100"}, {Name: "d", Role: RoleDecode, Instances: 1, GPU: "h100"}})
			c.ABRouter = "random"
		}, "cannot run in a disaggregated cluster"},
		{"arms' kvEventsConfigs disagree", func(c *ClusterSpec) { c.Router, c.ABRouter = kvA, kvB },
			"ab_router: " + kvA + `: plugins[0].parameters.kvEventsConfig.topicFilter "kv@" and ` + kvB + `: plugins[0].parameters.kvEventsConfig.topicFilter "kv@b" disagree`},
		{"bad kvEventsConfig in arm b", func(c *ClusterSpec) { c.ABRouter = kvBad },
			"ab_router: " + kvBad + ": EndpointPickerConfig: plugins[0].parameters.kvEventsConfig.podDiscoveryConfig.socketPort: 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := poolsSpec()
			tc.edit(&c)
			if _, err := c.Build(metrics.SLO{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
