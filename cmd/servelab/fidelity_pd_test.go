package main

import (
	"path/filepath"
	"strings"
	"testing"

	"servelab/metrics"
)

// TestFidelityPDAndTiers runs fidelity on a disaggregated cluster with a tiered cache: one
// prefill and two decode engine processes, every engine with a CPU and a disk tier below a
// small KV cache, against the simulator's prefill and decode pools with the same tiers.
// Both worlds report the disaggregated requests and their KV transfer's time, and each
// tier's hits and loads, in the same table.
func TestFidelityPDAndTiers(t *testing.T) {
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	dir := synthTiny(t)
	out := filepath.Join(t.TempDir(), "fid")
	stdout, err := run(t, "fidelity", "--trace", mooncakeSlice, "--max-requests", "24", "--model", dir,
		"--engines", "2", "--prefill-engines", "1", "--router", "../../examples/router/llm-d-pd.yaml",
		"--num-gpu-blocks-override", "64", "--kv-tier", "cpu:16", "--kv-tier", "disk:512",
		"--quick", "--threads", "1", "--pin-cpus=false", "--calibrate=false", "--capacity-burst", "0", "--repeats", "1",
		"--out", out, "--allow-busy", "--busy-wait", "0") // a loaded CI machine marks the runs contended
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	for _, want := range []string{"Disaggregated requests", "Mean KV transfer (ms)", "Hit rate GPU tier (%)", "Hit rate CPU tier (%)",
		"Hit rate DISK tier (%)", "blocks offloaded to it", "load per block (us)", "3 engines of"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	rep := readFidelityReport(t, out)
	if len(rep.Runs) != 1 || len(rep.Runs[0].Repeats) != 1 || rep.Engines != 3 {
		t.Fatalf("report: %d runs, %d engines", len(rep.Runs), rep.Engines)
	}
	r := rep.Runs[0].Repeats[0]
	for _, w := range []struct {
		name string
		s    metrics.Summary
	}{{"predicted", r.Predicted}, {"measured", r.Measured}} {
		if w.s.Completed != 24 || w.s.Failed != 0 {
			t.Errorf("%s: %d completed, %d failed", w.name, w.s.Completed, w.s.Failed)
		}
		if d := w.s.Disaggregation; d == nil || d.Requests == 0 || !(d.MeanKVTransfer > 0) {
			t.Errorf("%s: disaggregation %+v", w.name, d)
		}
		var media []string
		offloaded := int64(0)
		for _, tier := range w.s.KVTiers {
			media = append(media, tier.Medium)
			offloaded += tier.OffloadedBlocks
		}
		if strings.Join(media, ",") != "GPU,CPU,DISK" || offloaded == 0 {
			t.Errorf("%s: KV tiers %+v, want GPU, CPU and DISK with blocks offloaded", w.name, w.s.KVTiers)
		}
	}
	if link := r.Predicted.Disaggregation.Link; link != "local" {
		t.Errorf("the simulator's KV link is %q, want fidelity's default, local", link)
	}
	// The prefill engines come first in both worlds, and no whole request goes to one.
	if len(r.PredictedPerEngine) != 3 || r.PredictedPerEngine[0] != 0 || len(r.MeasuredPerEngine) != 3 || r.MeasuredPerEngine[0] != 0 {
		t.Errorf("requests per engine: predicted %v, measured %v; want none on the prefill engine (0)", r.PredictedPerEngine, r.MeasuredPerEngine)
	}
}

// TestFidelityPDTiersFlags: bad flags are refused before anything runs.
func TestFidelityPDTiersFlags(t *testing.T) {
	dir := synthTiny(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--prefill-engines", "1", "--kv-link", "pigeon", "--router", "../../examples/router/llm-d-pd.yaml"}, `--kv-link: unknown KV link "pigeon"`},
		{[]string{"--prefill-engines", "-1"}, "--prefill-engines must be 0 or more"},
		{[]string{"--kv-tier", "tape:10"}, `--kv-tier "tape:10": unknown medium "tape"`},
		{[]string{"--kv-tier", "cpu:0"}, `--kv-tier "cpu:0": blocks must be positive`},
		{[]string{"--kv-tier", "cpu"}, "--kv-tier: kv tier \"cpu\": want MEDIUM:BLOCKS"},
		{[]string{"--kv-tier", "cpu:10", "--enable-prefix-caching=false"}, "--kv-tier needs --enable-prefix-caching"},
	} {
		_, stderr, err := runSplit(t, append([]string{"fidelity", "--trace", mooncakeSlice, "--model", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v (stderr %s), want %q", tc.args, err, stderr, tc.want)
		}
	}
}
