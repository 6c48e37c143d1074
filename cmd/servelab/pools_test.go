package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
)

// --pool NAME:both:N:GPU:TP is exactly --instances N --gpu GPU --tp TP: the same summary
// and the same records, byte for byte.
func TestSimOnePoolIsTheInstancesFlags(t *testing.T) {
	for _, tc := range []struct {
		name       string
		flat, pool []string
	}{
		{"a100", []string{"--instances", "3", "--gpu", "a100-80g"}, []string{"--pool", "only:both:3:a100-80g"}},
		{"h100 tp 2", []string{"--instances", "2", "--gpu", "h100", "--tp", "2"}, []string{"--pool", "only:both:2:h100:2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := func(extra []string) (string, string) {
				t.Helper()
				dir := t.TempDir()
				out, err := run(t, append([]string{"sim", "--trace", mooncakeSlice, "--max-requests", "200", "--router", "least-request",
					"--seed", "3", "--goodput", "ttft:2000", "--json", "--out", dir, "--allow-failures"}, extra...)...)
				if err != nil {
					t.Fatal(err)
				}
				recs, err := os.ReadFile(filepath.Join(dir, "records.jsonl"))
				if err != nil {
					t.Fatal(err)
				}
				return out, string(recs)
			}
			flatOut, flatRecs := sim(tc.flat)
			poolOut, poolRecs := sim(tc.pool)
			if flatOut != poolOut {
				t.Errorf("summary differs (-instances/gpu/tp +pool):\n%s", cmp.Diff(flatOut, poolOut))
			}
			if flatRecs != poolRecs {
				t.Errorf("records differ")
			}
			if !strings.Contains(flatOut, `"goodput_per_dollar"`) {
				t.Errorf("summary has no cost:\n%s", flatOut)
			}
		})
	}
}

func TestSimGPUPriceSetsTheCost(t *testing.T) {
	summary := func(extra ...string) metrics.Summary {
		t.Helper()
		out, err := run(t, append([]string{"sim", "--trace", azureSlice, "--max-requests", "100", "--json",
			"--pool", "big:both:1:a100-80g", "--pool", "small:both:2:l4"}, extra...)...)
		if err != nil {
			t.Fatal(err)
		}
		var s metrics.Summary
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if s.Cost == nil {
			t.Fatalf("no cost:\n%s", out)
		}
		return s
	}
	s := summary("--gpu-price", "a100-80g=4,l4=1")
	hours := s.Duration / 3600
	want := metrics.Cost{GPUHours: 3 * hours, USD: 4*hours + 2*hours, GoodputPerDollar: float64(s.Completed) / (6 * hours)}
	near := cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Abs(a) })
	if diff := cmp.Diff(want, *s.Cost, near); diff != "" {
		t.Errorf("cost at a100-80g=4, l4=1 (-want +got):\n%s", diff)
	}
	// The repeated flag form, and the defaults where no price is given.
	again := summary("--gpu-price", "l4=1", "--gpu-price", "a100-80g=4")
	if diff := cmp.Diff(s, again); diff != "" {
		t.Errorf("--gpu-price repeated differs from comma-separated:\n%s", diff)
	}
	if def := summary(); def.Cost.USD == s.Cost.USD {
		t.Errorf("the default prices cost the same as a100-80g=4, l4=1: %v", def.Cost.USD)
	}
}

func TestPoolFlagErrorsNameTheProblem(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pool", "a:both:2:l4", "--instances", "2"}, "--instances: given with --pool"},
		{[]string{"--pool", "a:both:2:l4", "--gpu", "h100"}, "--gpu: given with --pool"},
		{[]string{"--pool", "a:both:2"}, "--pool: pool \"a:both:2\": want NAME:ROLE:INSTANCES:GPU[:TP]"},
		{[]string{"--pool", "a:both:2:tpu"}, `pools[0].gpu: unknown GPU "tpu"`},
		{[]string{"--pool", "a:both:-1:l4"}, "pools[0].instances: must be positive"},
		{[]string{"--pool", "a:both:1:l4", "--pool", "a:both:1:h100"}, `pools[1].name: pool "a" appears twice`},
		{[]string{"--pool", "p:prefill:1:a100-80g"}, "pools: every pool has role prefill"},
		{[]string{"--gpu-price", "l4"}, "--gpu-price \"l4\": want GPU=USD"},
		{[]string{"--gpu-price", "l4=-1"}, "gpu_price_per_hour.l4: must be 0 or a positive number"},
		{[]string{"--gpu-price", "b300=9"}, `gpu_price_per_hour: unknown GPU "b300"`},
	} {
		for _, cmd := range []string{"sim", "compare"} {
			args := append([]string{cmd, "--trace", azureSlice, "--max-requests", "10", "--router", "round-robin"}, tc.args...)
			_, err := run(t, args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v: error %v, want one containing %q", args, err, tc.want)
			}
		}
	}
}

func TestCompareShowsPoolsAndCost(t *testing.T) {
	out, err := run(t, "compare", "--trace", azureSlice, "--max-requests", "100", "--pool", "big:both:1:a100-80g", "--pool", "small:both:2:l4:1",
		"--router", "round-robin", "--router", "least-request")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"in pools big: 1 on a100-80g (tp 1, both), small: 2 on l4 (tp 1, both)", "GPU-hours", "cost $", "goodput/$"} {
		if !strings.Contains(out, want) {
			t.Errorf("comparison lacks %q:\n%s", want, out)
		}
	}
}

// A prefill pool makes the run disaggregated; --non-cached-tokens and --kv-link reach it.
func TestSimDisaggregatedPools(t *testing.T) {
	summary := func(extra ...string) metrics.Summary {
		t.Helper()
		out, err := run(t, append([]string{"sim", "--trace", azureSlice, "--max-requests", "100", "--json", "--router", "least-request",
			"--pool", "p:prefill:1:a100-80g", "--pool", "d:decode:2:l4"}, extra...)...)
		if err != nil {
			t.Fatal(err)
		}
		var s metrics.Summary
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	def := summary()
	if d := def.Disaggregation; d == nil || d.Requests == 0 || d.Link != "rdma" {
		t.Fatalf("default run: disaggregation %+v, want some requests over rdma", d)
	}
	tcp := summary("--kv-link", "tcp")
	if !(tcp.Disaggregation.MeanKVTransfer > def.Disaggregation.MeanKVTransfer) {
		t.Errorf("mean KV transfer over tcp %v s, not above rdma's %v s", tcp.Disaggregation.MeanKVTransfer, def.Disaggregation.MeanKVTransfer)
	}
	// No azure prompt is this long: nothing is disaggregated.
	none := summary("--non-cached-tokens", "1000000", "--prefill-router", "round-robin")
	if none.Disaggregation.Requests != 0 {
		t.Errorf("with a threshold above every prompt %d requests disaggregated, want 0", none.Disaggregation.Requests)
	}
}
