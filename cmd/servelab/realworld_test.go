package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/experiments"
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
