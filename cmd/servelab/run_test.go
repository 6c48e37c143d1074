package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/experiments"
)

func TestRunAnExampleAndResume(t *testing.T) {
	out := t.TempDir()
	args := []string{"run", "../../experiments/examples/azure-routers.yaml", "--out", out, "--max-requests", "200"}
	first, err := run(t, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, first)
	}
	res, err := experiments.ReadResults(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cells) != 18 || len(res.Policies) != 6 {
		t.Fatalf("%d cells, %d policies", len(res.Cells), len(res.Policies))
	}
	for _, p := range res.Policies {
		if !strings.Contains(first, p.Name()) {
			t.Errorf("the ranking does not show %s:\n%s", p.Name(), first)
		}
	}
	if !strings.Contains(first, "cost $") || !strings.Contains(first, "goodput/$") {
		t.Errorf("the ranking shows no cost:\n%s", first)
	}
	if !strings.Contains(first, "[18/18]") || !strings.Contains(first, filepath.Join(out, "results.json")) ||
		!strings.Contains(first, filepath.Join(out, "report.html")) {
		t.Errorf("no progress, results or report path:\n%s", first)
	}
	for _, f := range []string{"report.html", "report.md"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	again, err := run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(again, "kept from an earlier run"); n != 18 {
		t.Errorf("the second run kept %d cells, want 18:\n%s", n, again)
	}
}

func TestRunTraceOverride(t *testing.T) {
	out := t.TempDir()
	if _, err := run(t, "run", "../../experiments/examples/azure-routers.yaml", "--out", out, "--trace", mooncakeSlice, "--max-requests", "100", "-q"); err != nil {
		t.Fatal(err)
	}
	spec, err := os.ReadFile(filepath.Join(out, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(spec), "mooncake_conv_500.jsonl") || !strings.Contains(string(spec), "max_requests: 100") {
		t.Errorf("spec.yaml as run:\n%s", spec)
	}
	if _, err := run(t, "run", "../../experiments/examples/azure-routers.yaml", "--trace", "nowhere.csv"); err == nil || !strings.Contains(err.Error(), "nowhere.csv") {
		t.Errorf("a missing trace: %v", err)
	}
}

func TestRunRejectsABadSpec(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(spec, []byte("name: x\nworkload: {synthetic: {requests: 10, rate: 1, input_mean: 100, output_mean: 10}}\npolicies: {routers: [round-robin], evict: [lru, fifo2]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := run(t, "run", spec)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml") || !strings.Contains(err.Error(), "policies.evict[1]") {
		t.Errorf("error %v does not name the file and the key", err)
	}
}

// A real-world experiment runs each cell on a local cluster of engine processes (this test
// binary, as TestMain lets it be) and writes what a simulated one does.
func TestRunInTheRealWorld(t *testing.T) {
	model := synthTiny(t)
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	trace, err := filepath.Abs(mooncakeSlice)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := filepath.Join(dir, "real.yaml")
	if err := os.WriteFile(spec, []byte("name: real\nworld: real\n"+
		"workload: {trace: "+trace+", max_requests: 20, token_scale: 0.03125, rate_scale: 20}\n"+
		"cluster: {instances: 2, model: "+model+", max_model_len: 512, num_gpu_blocks_override: 512}\n"+
		"policies: {routers: [round-robin, prefix-affinity]}\nseeds: [1]\nslo: {ttft_ms: 5000}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	stdout, err := run(t, "run", spec, "--out", out, "--sample-interval", "0.05")
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	res, err := experiments.ReadResults(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Cells {
		if c.Status != "done" || c.Summary.Completed != 20 || c.Summary.Failed != 0 {
			t.Fatalf("%s: %s %s %+v", c.ID, c.Status, c.Error, c.Summary)
		}
		rows, err := experiments.ReadRecords(out, c.ID)
		if err != nil || len(rows) != 20 {
			t.Fatalf("%s: %d records, %v", c.ID, len(rows), err)
		}
		samples, err := experiments.ReadTimeSeries(out, c.ID)
		if err != nil || len(samples) < 2 || samples[len(samples)-1].Completed != 20 {
			t.Fatalf("%s: samples %+v, %v", c.ID, samples, err)
		}
	}
	if hit := res.Policies[0].PrefixCacheHitRate.Mean + res.Policies[1].PrefixCacheHitRate.Mean; hit <= 0 {
		t.Errorf("no prefix-cache hits on Mooncake's shared prefixes: %+v", res.Policies)
	}
}

// The terminal flags an instance a policy sent no request to, as the report does.
func TestRunFlagsIdleInstances(t *testing.T) {
	dir := t.TempDir()
	trace, err := filepath.Abs("../../examples/traces/azure_conv_3000.csv")
	if err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(dir, "idle.yaml")
	if err := os.WriteFile(spec, []byte("name: idle\nworkload: {trace: "+trace+", max_requests: 2}\n"+
		"cluster: {instances: 3}\npolicies: {routers: [round-robin]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "run", spec, "--out", filepath.Join(dir, "out"), "-q", "--report=false")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := "⚠ round-robin / lru: instance 2 got no requests.\n"; !strings.Contains(out, want) {
		t.Errorf("the output does not say %q:\n%s", want, out)
	}
}
