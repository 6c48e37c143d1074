package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/experiments"
	"servelab/policies/route"
)

// TestRunPDTiersRealExample runs the shipped experiments/examples/pd-tiers-real.yaml, cut
// to a few requests and a KV cache small enough to spill into its disk tier: one prefill
// and two decode engine processes with their roles and tiers, the router in P/D mode, both
// built from the spec's simulator keys. Every request completes, the router disaggregated
// requests and the decode engines pulled their KV (the cell's summary reports it as the
// simulator's does), and blocks went down to the disk tier.
func TestRunPDTiersRealExample(t *testing.T) {
	model := synthTiny(t)
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "experiments/examples/pd-tiers-real.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	spec := string(data)
	for _, r := range []struct{ old, new string }{
		{"../../", root + "/"},
		{"model: " + root + "/bin/models/tiny", "model: " + model},
		{"max_requests: 150", "max_requests: 16"},
		{"num_gpu_blocks_override: 192", "num_gpu_blocks_override: 64"},
		{"{medium: cpu, blocks: 384}", "{medium: cpu, blocks: 16}"},
	} {
		if !strings.Contains(spec, r.old) {
			t.Fatalf("the example no longer has %q:\n%s", r.old, spec)
		}
		spec = strings.ReplaceAll(spec, r.old, r.new)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "pd-tiers-real.yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	stdout, err := run(t, "run", path, "--out", out, "--report=false")
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	res, err := experiments.ReadResults(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cells) != 2 {
		t.Fatalf("%d cells, want 2", len(res.Cells))
	}
	for _, c := range res.Cells {
		s := c.Summary
		if c.Status != "done" || s == nil || s.Completed != 16 || s.Failed != 0 {
			t.Fatalf("%s: %s %s %+v", c.ID, c.Status, c.Error, s)
		}
		if d := s.Disaggregation; d == nil || d.Requests == 0 || !(d.MeanKVTransfer > 0) {
			t.Errorf("%s: disaggregation %+v, want requests sent to the prefill engine and their KV pulled", c.ID, d)
		}
		var disk int64 = -1
		for _, tier := range s.KVTiers {
			if tier.Medium == "DISK" {
				disk = tier.OffloadedBlocks
			}
		}
		if disk <= 0 {
			t.Errorf("%s: KV tiers %+v, want blocks offloaded to the disk tier", c.ID, s.KVTiers)
		}
	}
	for _, p := range res.Policies {
		for _, st := range p.Starved {
			if st.Instance == 0 {
				t.Errorf("%s: the prefill engine (instance 0) reported as starved", p.Router)
			}
		}
	}
}

// A world: real cluster with ab_router and ab_fraction starts its router with the A/B
// split (arm a the cell's router, arm b ab_router): bench's x-request-id, the row index,
// puts each request in the arm route.Split gives it with the cell's seed, as the
// simulator's cells do, and the results carry both arms.
func TestRunABInTheRealWorld(t *testing.T) {
	const n, seed = 20, 3
	model := synthTiny(t)
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	trace, err := filepath.Abs(mooncakeSlice)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := filepath.Join(dir, "ab.yaml")
	if err := os.WriteFile(spec, []byte(fmt.Sprintf("name: ab\nworld: real\n"+
		"workload: {trace: %s, max_requests: %d, token_scale: 0.03125, rate_scale: 20}\n"+
		"cluster: {instances: 2, model: %s, max_model_len: 512, num_gpu_blocks_override: 512, ab_router: prefix-affinity, ab_fraction: 0.5}\n"+
		"policies: {routers: [round-robin]}\nseeds: [%d]\nslo: {ttft_ms: 5000}\n", trace, n, model, seed)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if stdout, err := run(t, "run", spec, "--out", out, "--report=false"); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	res, err := experiments.ReadResults(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for id := range uint64(n) {
		want[route.Split{Fraction: 0.5, Seed: seed}.Arm(id)]++
	}
	c := res.Cells[0]
	if c.Status != "done" || c.Summary.Completed != n {
		t.Fatalf("%s: %s %s %+v", c.ID, c.Status, c.Error, c.Summary)
	}
	got := map[string]int{}
	for arm, s := range c.Summary.Arms {
		got[arm] = s.Completed + s.Failed
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("requests per arm (-route.Split +the router's):\n%s", diff)
	}
	var routers []string
	for _, a := range res.Policies[0].Arms {
		routers = append(routers, a.Name+" "+a.Router)
	}
	if diff := cmp.Diff([]string{"a round-robin", "b prefix-affinity"}, routers); diff != "" {
		t.Errorf("the results' arms (-want +got):\n%s", diff)
	}
}
