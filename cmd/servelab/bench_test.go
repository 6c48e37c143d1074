package main

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/metrics"
	"servelab/serving"
)

// TestUpAndBenchOnAShippedTrace replays the shipped Mooncake slice (scaled to the tiny
// model's context) through `servelab up` with `servelab bench`: every request completes
// with the trace's output length, and the engines serve the shared prefixes from cache.
func TestUpAndBenchOnAShippedTrace(t *testing.T) {
	dir := synthTiny(t)
	url, _ := startUp(t, "--engines", "2", "--model", dir, "--router", "prefix-affinity",
		"--num-gpu-blocks-override", "512", "--threads", "1")
	out := filepath.Join(t.TempDir(), "bench")
	stdout, err := run(t, "bench", "--endpoint", url, "--trace", mooncakeSlice, "--max-requests", "30", "--rate-scale", "20",
		"--token-scale", "0.03125", "--max-model-len", "512", "--model", dir, "--out", out, "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	var s metrics.Summary
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout)
	}
	if s.Completed != 30 || s.Failed != 0 || s.PrefixCacheHitRate <= 0 || s.MeanTTFTMs <= 0 {
		t.Fatalf("summary %+v", s)
	}
	f, err := os.Open(filepath.Join(out, "records.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var outputTokens int64
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r serving.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		outputTokens += int64(r.OutputTokens)
		n++
	}
	if n != 30 || outputTokens != s.TotalOutputTokens {
		t.Errorf("records.jsonl: %d records, %d output tokens; summary %d", n, outputTokens, s.TotalOutputTokens)
	}
	for _, name := range []string{"summary.json", "config.json"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Error(err)
		}
	}
}

func TestBenchNeedsTheVocabulary(t *testing.T) {
	_, err := run(t, "bench", "--endpoint", "http://127.0.0.1:1", "--trace", azureSlice)
	if err == nil || !strings.Contains(err.Error(), "--vocab-size") {
		t.Fatalf("err = %v, want one asking for --model or --vocab-size", err)
	}
}

// TestFidelityPrintsPredictedAgainstMeasured runs the fidelity command end to end on a
// small slice: profile, simulate, start a real cluster per router, replay, compare.
func TestFidelityPrintsPredictedAgainstMeasured(t *testing.T) {
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	dir := synthTiny(t)
	out := filepath.Join(t.TempDir(), "fid")
	stdout, err := run(t, "fidelity", "--trace", mooncakeSlice, "--max-requests", "40", "--engines", "2", "--model", dir,
		"--router", "round-robin", "--router", "prefix-affinity", "--quick", "--threads", "1", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	for _, want := range []string{"P50 TTFT (ms)", "P99 TPOT (ms)", "Prefix cache hit rate", "Ranking by mean TTFT", "== round-robin ==", "== prefix-affinity =="} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	raw, err := os.ReadFile(filepath.Join(out, "fidelity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep fidelityReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 || rep.Requests != 40 || rep.RateScale <= 0 || rep.TokenScale <= 0 || rep.TokenScale > 1 {
		t.Fatalf("report %+v", rep)
	}
	for _, r := range rep.Runs {
		if r.Measured.Completed != 40 || r.Predicted.Completed != 40 || r.Measured.MeanTTFTMs <= 0 {
			t.Errorf("%s: predicted %d / measured %d completed (failures %v)", r.Router, r.Predicted.Completed, r.Measured.Completed, r.Failures)
		}
	}
	// Mooncake's shared prefixes survive token scaling: both worlds see cache hits.
	if pa := rep.Runs[1]; pa.Predicted.PrefixCacheHitRate <= 0 || pa.Measured.PrefixCacheHitRate <= 0 {
		t.Errorf("prefix-affinity hit rates: predicted %.3f, measured %.3f", pa.Predicted.PrefixCacheHitRate, pa.Measured.PrefixCacheHitRate)
	}
}
