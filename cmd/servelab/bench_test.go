package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"servelab/metrics"
	"servelab/serving"
	"servelab/traces"
)

// TestUpAndBenchOnAShippedTrace replays the shipped Mooncake slice (scaled to the tiny
// model's context) through `servelab up` with `servelab bench`: every request completes
// with the trace's output length, and the engines serve the shared prefixes from cache.
func TestUpAndBenchOnAShippedTrace(t *testing.T) {
	dir := synthTiny(t)
	url, _ := startUp(t, "--engines", "2", "--model", dir, "--router", "prefix-affinity",
		"--num-gpu-blocks-override", "512", "--threads", "1")
	out := filepath.Join(t.TempDir(), "bench")
	stdout, stderr, err := runSplit(t, "bench", "--endpoint", url, "--trace", mooncakeSlice, "--max-requests", "30", "--rate-scale", "20",
		"--token-scale", "0.03125", "--max-model-len", "512", "--model", dir, "--out", out, "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	// What scaling did to the slice is on stderr, and in config.json.
	if want := "of 30 requests clipped to the 512-token context"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
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
	explain := filepath.Join(t.TempDir(), "explain")
	stdout, err := run(t, "fidelity", "--trace", mooncakeSlice, "--max-requests", "24", "--engines", "2", "--model", dir,
		"--router", "round-robin", "--router", "prefix-affinity", "--quick", "--threads", "1", "--out", out,
		"--repeats", "2", "--explain", explain, "--capacity-burst", "500ms", "--capacity-repeats", "3",
		"--allow-busy", "--busy-wait", "0") // a loaded CI machine marks the runs contended
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	for _, want := range []string{"P50 TTFT (ms)", "P99 TPOT (ms)", "Prefix cache hit rate", "Ranking by mean TTFT", "== round-robin ==", "== prefix-affinity ==",
		"Mean of 2 repeats", "Sent late by", "Schedules of repeat 1", "step time real/modelled", "round-robin vs prefix-affinity  mean TTFT", "Decided: ",
		"Slice: ", "requests clipped to the 512-token context", "Capacity: ", "req/s measured", "Requests per engine"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	rep := readFidelityReport(t, out)
	if len(rep.Runs) != 2 || rep.Requests != 24 || rep.RateScale <= 0 || rep.TokenScale <= 0 || rep.TokenScale > 1 {
		t.Fatalf("report %+v", rep)
	}
	// The offered load is --load (0.7) of the real cluster's measured capacity.
	if rep.Capacity == nil || len(rep.Capacity.Bursts) != 3 || rep.Capacity.RPS <= 0 {
		t.Fatalf("measured capacity %+v", rep.Capacity)
	}
	src, closer, err := traces.Open(mooncakeSlice, "")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	shape, err := traces.ScanShape(traces.Limit(src, 24))
	if err != nil {
		t.Fatal(err)
	}
	if want := rateScaleFor(0.7, rep.Capacity.RPS, shape); math.Abs(rep.RateScale-want) > 1e-9*want {
		t.Errorf("rate scale %.6g, want %.6g: 0.7 of the measured %.2f req/s", rep.RateScale, want, rep.Capacity.RPS)
	}
	if rep.Shape.Rows != 24 || rep.OutputTokenScale <= 0 || rep.OutputTokenScale > 1 {
		t.Errorf("slice shape %+v, output token scale %g", rep.Shape, rep.OutputTokenScale)
	}
	for _, r := range rep.Runs {
		if r.Measured.Completed != 24 || r.Predicted.Completed != 24 || r.Measured.MeanTTFTMs <= 0 {
			t.Errorf("%s: predicted %d / measured %d completed (failures %v)", r.Router, r.Predicted.Completed, r.Measured.Completed, r.Failures)
		}
	}
	// Each router ran twice in each world, seeds 0 and 1, the simulator on each run's
	// measured arrivals; --explain compared every engine's steps.
	for _, r := range rep.Runs {
		if len(r.Repeats) != 2 {
			t.Fatalf("%s: %d repeats, want 2", r.Router, len(r.Repeats))
		}
		for k, x := range r.Repeats {
			if x.Seed != uint64(k) || x.Predicted.Completed != 24 || x.Scheduled.Completed != 24 || x.Measured.Completed != 24 {
				t.Errorf("%s repeat %d: seed %d, completed %d predicted, %d on scheduled arrivals, %d measured",
					r.Router, k, x.Seed, x.Predicted.Completed, x.Scheduled.Completed, x.Measured.Completed)
			}
			if x.Explain == nil || len(x.Explain.Divergences) != 2 || x.Explain.Ratios.Steps == 0 {
				t.Fatalf("%s repeat %d: explain %+v", r.Router, k, x.Explain)
			}
			for i, d := range x.Explain.Divergences {
				for _, name := range []string{fmt.Sprintf("real-engine-%d.jsonl", i), fmt.Sprintf("sim-instance-%d.jsonl", i)} {
					if _, err := os.Stat(filepath.Join(x.Explain.Dir, name)); err != nil {
						t.Error(err)
					}
				}
				if d.RealSteps == 0 && d.SimSteps == 0 && r.Router == "round-robin" {
					t.Errorf("%s repeat %d: engine %d ran no steps", r.Router, k, i)
				}
			}
		}
	}
	if len(rep.Rankings) != 3 {
		t.Errorf("%d rankings, want 3 (one pair by mean TTFT, TPOT and E2E latency)", len(rep.Rankings))
	}
	// Mooncake's shared prefixes survive token scaling: both worlds see cache hits.
	if pa := rep.Runs[1]; pa.Predicted.PrefixCacheHitRate <= 0 || pa.Measured.PrefixCacheHitRate <= 0 {
		t.Errorf("prefix-affinity hit rates: predicted %.3f, measured %.3f", pa.Predicted.PrefixCacheHitRate, pa.Measured.PrefixCacheHitRate)
	}
}

// runSplit runs the CLI with stdout and stderr apart.
func runSplit(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errb.String(), err
}

// readmeBenchArgs is the README's `servelab bench` line with its placeholders filled in
// and its optional flags left out: what a newcomer types first. Of "(--model DIR |
// --vocab-size N)" it takes the alternative alt (0 or 1).
func readmeBenchArgs(t *testing.T, url, trace, model string, vocab, alt int) []string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "servelab bench ") {
			line = strings.TrimSuffix(l, "\\")
			break
		}
	}
	if line == "" {
		t.Fatal("the README has no `servelab bench` line")
	}
	line = regexp.MustCompile(`\[[^]]*\]`).ReplaceAllString(line, "")
	line = regexp.MustCompile(`\(([^|)]*)\|([^)]*)\)`).ReplaceAllStringFunc(line, func(g string) string {
		return strings.Split(strings.Trim(g, "()"), "|")[alt]
	})
	args := strings.Fields(line)[1:]
	for i, a := range args {
		switch a {
		case "URL":
			args[i] = url
		case "FILE":
			args[i] = trace
		case "DIR":
			args[i] = model
		case "N":
			args[i] = strconv.Itoa(vocab)
		}
	}
	return args
}

// The README's bench line works as written against the tiny model: the token counts are
// scaled to its 512-token context by default. Replayed as they are (--token-scale 1),
// the Azure slice's long requests fail: bench says so, with the engine's message and what
// to pass, and exits non-zero unless --allow-failures.
func TestREADMEBenchLineOnTheTinyModel(t *testing.T) {
	dir := synthTiny(t)
	url := startEngine(t, dir)
	slice := []string{"--max-requests", "12", "--rate-scale", "50"}
	for _, tc := range []struct {
		name      string
		args      []string
		wantErr   string
		wantInErr []string
	}{
		{"README line with --model", append(readmeBenchArgs(t, url, azureSlice, dir, 512, 0), slice...), "",
			[]string{"token scale", "512-token context"}},
		{"README line with --vocab-size, the context from /v1/models, no scheme",
			append(readmeBenchArgs(t, strings.TrimPrefix(url, "http://"), azureSlice, dir, 512, 1), slice...), "",
			[]string{"using http://", "512-token context"}},
		{"unscaled", append(readmeBenchArgs(t, url, azureSlice, dir, 512, 0), append(slice, "--token-scale", "1")...),
			" of 12 requests failed (--allow-failures",
			[]string{"HTTP 400, the first: HTTP 400:", "maximum context length is 512 tokens", "hint: prompts plus outputs exceed the model's context: --token-scale auto"}},
		{"unscaled, failures allowed", append(readmeBenchArgs(t, url, azureSlice, dir, 512, 0), append(slice, "--token-scale", "1", "--allow-failures")...),
			"", []string{" of 12 requests failed:", "HTTP 400"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, err := runSplit(t, append(tc.args, "--json")...)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("%v: err = %v, want %q\n%s", tc.args, err, tc.wantErr, stderr)
			}
			for _, want := range tc.wantInErr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
			var s metrics.Summary
			if err := json.Unmarshal([]byte(stdout), &s); err != nil {
				t.Fatalf("stdout is not a summary: %v\n%s", err, stdout)
			}
			if tc.wantErr == "" && !strings.Contains(tc.name, "unscaled") && (s.Completed != 12 || s.Failed != 0) {
				t.Errorf("completed %d, failed %d, want 12 and 0\n%s", s.Completed, s.Failed, stderr)
			}
		})
	}
}

func TestBenchRejectsBadURLsAndScales(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--endpoint", "ftp://127.0.0.1:1"}, "want http:// or https://"},
		{[]string{"--endpoint", "http://127.0.0.1:1", "--token-scale", "-2"}, "--token-scale: want a positive number or auto"},
		{[]string{"--endpoint", "http://127.0.0.1:1", "--token-scale", "x"}, "--token-scale"},
		// auto asks the (absent) server for its context and says what to pass instead.
		{[]string{"--endpoint", "http://127.0.0.1:1"}, "give --max-model-len N or --token-scale 1"},
	} {
		_, _, err := runSplit(t, append([]string{"bench", "--trace", azureSlice, "--vocab-size", "100"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
}

// fidelity checks its flags before profiling (minutes) and names the flag, not the
// simulator's field.
func TestFidelityChecksFlagsFirst(t *testing.T) {
	dir := synthTiny(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--engines", "0"}, "--engines must be positive, got 0"},
		{[]string{"--max-requests", "0"}, "--max-requests must be positive"},
		{[]string{"--repeats", "0"}, "--repeats must be positive, got 0"},
		{[]string{"--load", "0"}, "--load must be positive"},
		{[]string{"--token-scale", "x"}, "--token-scale: want a positive number or auto"},
		{[]string{"--output-token-scale", "0"}, "--output-token-scale: want a positive number or auto"},
		{[]string{"--capacity-burst", "-1s"}, "--capacity-burst must not be negative"},
		{[]string{"--capacity-repeats", "0"}, "--capacity-repeats must be positive"},
		{[]string{"--router", "fastest"}, `--router "fastest"`},
	} {
		start := time.Now()
		_, stderr, err := runSplit(t, append([]string{"fidelity", "--trace", mooncakeSlice, "--model", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
		if strings.Contains(stderr, "profiling") {
			t.Errorf("%v: profiled before rejecting the flags (%s)", tc.args, time.Since(start))
		}
	}
}

// A --metrics URL without vLLM's counters (a router's) is left out with a warning, and a
// hit rate nobody reported is printed as such rather than as 0.00.
func TestBenchMetricsAtARouter(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics": // a router's: its own counters only
			fmt.Fprint(w, "# TYPE router_requests_total counter\nrouter_requests_total 7\n")
		case "/v1/models":
			fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model","max_model_len":4096}]}`)
		case "/v1/completions": // one token, usage without prompt_tokens_details
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"choices\":[{\"text\":\"x\",\"token_ids\":[5]}]}\n\n")
			fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	stdout, stderr, err := runSplit(t, "bench", "--endpoint", srv.URL, "--trace", azureSlice, "--max-requests", "3",
		"--rate-scale", "100", "--vocab-size", "100", "--metrics", srv.URL+"/metrics")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if want := srv.URL + "/metrics has no vllm:prefix_cache_queries/hits counters"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if !regexp.MustCompile(`Prefix cache hit rate \(%\): +not reported`).MatchString(stdout) {
		t.Errorf("stdout does not say the hit rate was not reported:\n%s", stdout)
	}
}

// readFidelityReport reads the fidelity.json that `fidelity --out DIR` wrote.
func readFidelityReport(t *testing.T, dir string) fidelityReport {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "fidelity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep fidelityReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}
