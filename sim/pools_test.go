package sim

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
	"servelab/serving"
	"servelab/sim/latency"
)

// poolsSpec is a small cluster spec with explicit KV blocks, so runs are quick.
func poolsSpec() ClusterSpec {
	c := DefaultClusterSpec()
	c.Router = "least-request"
	c.NumGPUBlocksOverride = 0
	return c
}

func TestOnePoolRunsExactlyTheOneInstanceForm(t *testing.T) {
	for _, tc := range []struct {
		name      string
		instances int
		gpu       string
		tp        int
	}{
		{"h100", 3, "h100", 1},
		{"a100 tp2", 2, "a100-80g", 2},
		{"l4", 4, "l4", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			flat := poolsSpec()
			flat.Instances, flat.GPU, flat.TP = tc.instances, tc.gpu, tc.tp
			pooled := poolsSpec()
			pooled.UsePools([]PoolSpec{{Name: "only", Role: RoleBoth, Instances: tc.instances, GPU: tc.gpu, TP: tc.tp}})
			rows := randomRows(300, 7)
			run := func(c ClusterSpec) (Result, []serving.Record) {
				t.Helper()
				cfg, err := c.Build(metrics.SLO{TTFTMs: 500})
				if err != nil {
					t.Fatal(err)
				}
				return runCollect(t, cfg, rows, false)
			}
			wantRes, wantRecs := run(flat)
			gotRes, gotRecs := run(pooled)
			if diff := cmp.Diff(wantRes, gotRes); diff != "" {
				t.Errorf("result (-instances/gpu/tp +one pool):\n%s", diff)
			}
			if diff := cmp.Diff(wantRecs, gotRecs); diff != "" {
				t.Errorf("records (-instances/gpu/tp +one pool):\n%s", diff)
			}
			if wantRes.Summary.Cost == nil {
				t.Fatal("no cost reported")
			}
		})
	}
}

func TestCostSumsOverPools(t *testing.T) {
	spec := poolsSpec()
	spec.UsePools([]PoolSpec{
		{Name: "big", Instances: 2, GPU: "a100-80g", TP: 2},
		{Name: "small", Role: RoleBoth, Instances: 3, GPU: "l4"},
	})
	spec.GPUPricePerHour = map[string]float64{"l4": 0.5}
	cfg, err := spec.Build(metrics.SLO{TTFTMs: 60})
	if err != nil {
		t.Fatal(err)
	}
	res, recs := runCollect(t, cfg, randomRows(200, 3), false)
	a100, err := latency.LookupGPU("a100-80g")
	if err != nil {
		t.Fatal(err)
	}
	dur := res.Summary.Duration
	good := 0
	for i := range recs {
		if !recs[i].Failed && (metrics.SLO{TTFTMs: 60}).Met(&recs[i]) {
			good++
		}
	}
	bigHours, smallHours := 2*2*dur/3600, 3*1*dur/3600
	usd := bigHours*a100.PricePerHour + smallHours*0.5
	want := &metrics.Cost{GPUHours: bigHours + smallHours, USD: usd, GoodputPerDollar: float64(good) / usd}
	if diff := cmp.Diff(want, res.Summary.Cost, cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Abs(a) })); diff != "" {
		t.Errorf("cost (-want +got):\n%s", diff)
	}
	if good == 0 || good == len(recs) {
		t.Errorf("%d of %d requests met the SLO; pick an SLO that tells goodput from throughput", good, len(recs))
	}
}

func TestMixedPoolsGetTheirOwnHardware(t *testing.T) {
	spec := poolsSpec()
	spec.UsePools([]PoolSpec{
		{Name: "big", Instances: 2, GPU: "a100-80g"},
		{Name: "small", Instances: 3, GPU: "l4"},
	})
	cfg, err := spec.Build(metrics.SLO{})
	if err != nil {
		t.Fatal(err)
	}
	// Each pool's instances run what a one-pool cluster of its GPU runs.
	for i, gpu := range []string{"a100-80g", "a100-80g", "l4", "l4", "l4"} {
		one := poolsSpec()
		one.GPU = gpu
		oneCfg, err := one.Build(metrics.SLO{})
		if err != nil {
			t.Fatal(err)
		}
		want, err := oneCfg.Resolved(0)
		if err != nil {
			t.Fatal(err)
		}
		// max_model_len is the cluster's (the smallest of the pools'), the rest the pool's.
		want.MaxModelLen = cfg.MaxModelLen
		got, err := cfg.Resolved(i)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("instance %d (%s) (-one pool of %s +mixed cluster):\n%s", i, gpu, gpu, diff)
		}
	}
	if a, l := cfg.Pools[0].KVBlocks, cfg.Pools[1].KVBlocks; a <= l {
		t.Fatalf("an A100 has %d KV blocks, an L4 %d; the test needs them to differ", a, l)
	}

	// Each instance steps with its pool's latency model.
	var steps []StepInfo
	cfg.OnStep = func(s StepInfo) error { steps = append(steps, s); return nil }
	res, _ := runCollect(t, cfg, randomRows(300, 5), false)
	if res.Summary.Completed != 300 {
		t.Fatalf("completed %d of 300", res.Summary.Completed)
	}
	seen := map[int]bool{}
	for _, s := range steps {
		pool := cfg.Pools[0]
		if s.Instance >= 2 {
			pool = cfg.Pools[1]
		}
		if want := pool.Latency.StepTime(s.Shape); math.Abs(s.End-s.Start-want) > 1e-9 {
			t.Fatalf("instance %d (pool %s) stepped %v s, its pool's model says %v", s.Instance, pool.Name, s.End-s.Start, want)
		}
		if s.KVBlocksUsed > pool.KVBlocks {
			t.Fatalf("instance %d used %d blocks, its pool has %d", s.Instance, s.KVBlocksUsed, pool.KVBlocks)
		}
		seen[s.Instance] = true
	}
	if len(seen) != 5 {
		t.Errorf("steps on %d instances, want all 5", len(seen))
	}
}

func TestPoolsRefuseBadInput(t *testing.T) {
	pool := func(name, role string, n int, gpu string, tp int) PoolSpec {
		return PoolSpec{Name: name, Role: role, Instances: n, GPU: gpu, TP: tp}
	}
	for _, tc := range []struct {
		name    string
		pools   []PoolSpec
		edit    func(*ClusterSpec)
		wantErr string
	}{
		{"unknown GPU", []PoolSpec{pool("a", "both", 1, "tpu-v9", 1)}, nil, `pools[0].gpu: unknown GPU "tpu-v9"`},
		{"negative instances", []PoolSpec{pool("a", "both", 1, "l4", 1), pool("b", "both", -2, "l4", 1)}, nil, "pools[1].instances: must be positive, got -2"},
		{"zero instances", []PoolSpec{pool("a", "both", 0, "l4", 1)}, nil, "pools[0].instances: must be positive"},
		{"negative tp", []PoolSpec{pool("a", "both", 1, "l4", -1)}, nil, "pools[0].tp: must be positive"},
		{"duplicate names", []PoolSpec{pool("a", "both", 1, "l4", 1), pool("a", "both", 1, "h100", 1)}, nil, `pools[1].name: pool "a" appears twice`},
		{"no name", []PoolSpec{pool("", "both", 1, "l4", 1)}, nil, "pools[0].name: must be set"},
		{"unknown role", []PoolSpec{pool("a", "mixed", 1, "l4", 1)}, nil, `pools[0].role: unknown role "mixed"`},
		{"prefill pools only", []PoolSpec{pool("p", "prefill", 1, "a100-80g", 1)}, nil, "every pool has role prefill"},
		{"decode without prefill", []PoolSpec{pool("d", "decode", 2, "l4", 1)}, nil, "a pool has role decode but none has role prefill"},
		{"unknown kv link", []PoolSpec{pool("p", "prefill", 1, "a100-80g", 1), pool("d", "decode", 2, "l4", 1)},
			func(c *ClusterSpec) { c.KVLink = "carrier-pigeon" }, `kv_link: unknown KV link "carrier-pigeon"`},
		{"negative non_cached_tokens", []PoolSpec{pool("p", "prefill", 1, "a100-80g", 1), pool("d", "decode", 2, "l4", 1)},
			func(c *ClusterSpec) { n := -1; c.NonCachedTokens = &n }, "non_cached_tokens: nonCachedTokens: must be 0 or positive"},
		{"bad prefill router", []PoolSpec{pool("p", "prefill", 1, "a100-80g", 1), pool("d", "decode", 2, "l4", 1)},
			func(c *ClusterSpec) { c.PrefillRouter = "nope" }, "prefill_router:"},
		{"kv link without prefill pool", []PoolSpec{pool("a", "both", 1, "l4", 1)}, func(c *ClusterSpec) { c.KVLink = "tcp" }, "kv_link: set, but no pool has role prefill"},
		{"pools with instances", []PoolSpec{pool("a", "both", 1, "l4", 1)}, func(c *ClusterSpec) { c.Instances = 2 }, "instances: set together with pools"},
		{"pools with gpu", []PoolSpec{pool("a", "both", 1, "l4", 1)}, func(c *ClusterSpec) { c.GPU = "h100" }, "gpu: set together with pools"},
		{"negative price", nil, func(c *ClusterSpec) { c.GPUPricePerHour = map[string]float64{"l4": -1} }, "gpu_price_per_hour.l4: must be 0 or a positive number"},
		{"NaN price", nil, func(c *ClusterSpec) { c.GPUPricePerHour = map[string]float64{"h100": math.NaN()} }, "gpu_price_per_hour.h100: must be 0 or a positive number"},
		{"price of an unknown GPU", nil, func(c *ClusterSpec) { c.GPUPricePerHour = map[string]float64{"b300": 9} }, `gpu_price_per_hour: unknown GPU "b300"`},
		{"negative instances, one pool", nil, func(c *ClusterSpec) { c.Instances = -1 }, "instances: must be positive, got -1"},
		{"profile latency on mixed GPUs", []PoolSpec{pool("a", "both", 1, "l4", 1), pool("b", "both", 1, "h100", 1)},
			func(c *ClusterSpec) { c.Latency = "profile:nonexistent.json" }, "need the roofline model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := poolsSpec()
			if tc.pools != nil {
				spec.UsePools(tc.pools)
			}
			if tc.edit != nil {
				tc.edit(&spec)
			}
			_, err := spec.Build(metrics.SLO{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Build() error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestParsePool(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    PoolSpec
		wantErr string
	}{
		{"big:both:4:a100-80g", PoolSpec{Name: "big", Role: "both", Instances: 4, GPU: "a100-80g", TP: 1}, ""},
		{"big:both:4:a100-80g:2", PoolSpec{Name: "big", Role: "both", Instances: 4, GPU: "a100-80g", TP: 2}, ""},
		{"big:both:4", PoolSpec{}, "want NAME:ROLE:INSTANCES:GPU[:TP]"},
		{"big:both:four:l4", PoolSpec{}, `instances "four" is not an integer`},
		{"big:both:4:l4:x", PoolSpec{}, `tp "x" is not an integer`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePool(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParsePool(%q) error %v, want one containing %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParsePool(%q) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}
