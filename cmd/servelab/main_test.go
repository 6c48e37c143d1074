package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/metrics"
)

const azureSlice = "../../examples/traces/azure_conv_3000.csv"
const mooncakeSlice = "../../examples/traces/mooncake_conv_500.jsonl"

func run(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestSimJSONIsDeterministic(t *testing.T) {
	args := []string{"sim", "--trace", mooncakeSlice, "--instances", "2", "--router", "weighted:prefix=3,queue=1,kv=1",
		"--batch", "vllm", "--evict", "lru", "--model", "llama-3.1-8b", "--gpu", "h100", "--seed", "7", "--json",
		"--goodput", "ttft:2000"}
	first, err := run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	second, err := run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Error("same inputs and seed gave different output")
	}
	var s metrics.Summary
	dec := json.NewDecoder(strings.NewReader(first))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("output is not a summary: %v\n%s", err, first)
	}
	if s.Completed+s.Failed != 500 || s.PrefixCacheHitRate <= 0 {
		t.Errorf("completed %d + failed %d of 500, prefix hit rate %g", s.Completed, s.Failed, s.PrefixCacheHitRate)
	}
}

func TestSimOutDir(t *testing.T) {
	dir := t.TempDir()
	_, err := run(t, "sim", "--trace", azureSlice, "--max-requests", "200", "--instances", "2", "--out", dir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"summary.json", "config.json", "records.jsonl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("missing %s: %v", name, err)
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, "records.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "\n"); n != 200 {
		t.Errorf("records.jsonl has %d lines, want 200", n)
	}
}

func TestSimErrorsNameTheProblem(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sim"}, "--trace"},
		{[]string{"sim", "--trace", azureSlice, "--router", "fastest"}, "fastest"},
		{[]string{"sim", "--trace", azureSlice, "--batch", "vllm:max_num_seqs=x"}, "max_num_seqs"},
		{[]string{"sim", "--trace", azureSlice, "--evict", "lru:size=3"}, "size"},
		{[]string{"sim", "--trace", azureSlice, "--gpu", "tpu"}, "tpu"},
		{[]string{"sim", "--trace", azureSlice, "--model", "gpt-5"}, "gpt-5"},
		{[]string{"sim", "--trace", "no/such/file.csv"}, "no/such/file.csv"},
		{[]string{"sim", "--trace", azureSlice, "--goodput", "ttft:-3"}, "ttft"},
		{[]string{"sim", "--trace", azureSlice, "--rate-scale", "NaN"}, "--rate-scale"},
		{[]string{"sim", "--trace", azureSlice, "--rate-scale", "+Inf"}, "--rate-scale"},
		{[]string{"sim", "--trace", azureSlice, "--scrape-interval", "-5ms"}, "scrape-interval"},
		{[]string{"sim", "--trace", azureSlice, "--kv-event-delay", "-1ms"}, "kv-event-delay"},
		{[]string{"sim", "--trace", azureSlice, "--flow-control", "gie:fairness=wfq"}, "fairness"},
		{[]string{"sim", "--trace", azureSlice, "--flow-control", "gie", "--scrape-interval", "0"}, "scrape_interval"},
		{[]string{"sim", "--trace", azureSlice, "--objective", "critical"}, "NAME=PRIORITY"},
		{[]string{"sim", "--trace", azureSlice, "--objective", "a=1", "--objective", "a=2"}, "twice"},
	} {
		_, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one mentioning %q", tc.args, err, tc.want)
		}
	}
}

func TestSimHelpListsPolicies(t *testing.T) {
	out, err := run(t, "sim", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"round-robin", "prefix-affinity", "weighted", "vllm", "priority", "static", "lru", "lfu", "fifo", "max_num_batched_tokens", "--goodput"} {
		if !strings.Contains(out, want) {
			t.Errorf("sim --help does not mention %q", want)
		}
	}
}

func TestCompare(t *testing.T) {
	out, err := run(t, "compare", "--trace", azureSlice, "--max-requests", "300", "--instances", "2",
		"--router", "round-robin", "--router", "least-request", "--router", "weighted:prefix=3,queue=2,kv=2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"round-robin", "least-request", "weighted:prefix=3,queue=2,kv=2", "p99 TTFT ms"} {
		if !strings.Contains(out, want) {
			t.Errorf("comparison lacks %q:\n%s", want, out)
		}
	}
}

// sim says why requests failed and exits non-zero unless --allow-failures; its
// --token-scale auto (bench's and fidelity's code) fits the trace to the context.
func TestSimExplainsFailures(t *testing.T) {
	base := []string{"sim", "--trace", azureSlice, "--max-requests", "200", "--max-model-len", "512", "--json"}
	for _, tc := range []struct {
		name     string
		extra    []string
		wantErr  string
		inStderr []string
	}{
		{"too long for the context", nil, " of 200 requests failed (--allow-failures",
			[]string{"context exceeds max_model_len, the first: request ", "more than max_model_len 512", "hint: prompts plus outputs exceed max_model_len: --token-scale auto"}},
		{"failures allowed", []string{"--allow-failures"}, "", []string{"context exceeds max_model_len"}},
		{"token-scale auto", []string{"--token-scale", "auto"}, "", []string{"servelab sim: token scale 0.1417, output token scale 0.5441: 10 of 200 requests clipped to the 512-token context (10 prompts, 0 outputs), 0 outputs raised to 2 tokens"}},
		{"bad token scale", []string{"--token-scale", "0"}, "--token-scale: want a positive number or auto", nil},
		{"bad output token scale", []string{"--output-token-scale", "x"}, "--output-token-scale: want a positive number or auto", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, err := runSplit(t, append(base, tc.extra...)...)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q\n%s", err, tc.wantErr, stderr)
			}
			for _, want := range tc.inStderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
			if tc.inStderr == nil && stderr != "" {
				t.Errorf("stderr: %s", stderr)
			}
			if tc.name == "token-scale auto" {
				var s metrics.Summary
				if err := json.Unmarshal([]byte(stdout), &s); err != nil || s.Completed != 200 {
					t.Errorf("summary %+v (%v), want 200 completed", s, err)
				}
			}
		})
	}
}

// Help texts say what is there: no server flags in profile's, no pointer to a list that
// is not below, no flag that does not exist (engine's --step-log names profile
// --from-steps, which TestProfileFromSteps runs).
func TestHelpTexts(t *testing.T) {
	for _, tc := range []struct {
		cmd           []string
		want, notWant []string
	}{
		{[]string{"profile"}, []string{"--num-gpu-blocks-override", "--max-num-seqs", "--threads", "--quick"},
			[]string{"--port", "--host", "--api-key", "--served-model-name", "--step-log string", "--max-waiting-requests"}},
		{[]string{"sim"}, []string{"policies listed above", "--token-scale", "--allow-failures"}, []string{"see below"}},
		{[]string{"compare"}, []string{"policies listed above"}, []string{"see below"}},
		{[]string{"engine"}, []string{"--step-log", "servelab profile --from-steps"}, nil},
		{[]string{"profile"}, []string{"--from-steps"}, nil},
		{[]string{"bench"}, []string{"--token-scale", "--allow-failures", "auto"}, nil},
	} {
		out, err := run(t, append(tc.cmd, "--help")...)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v --help lacks %q", tc.cmd, w)
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(out, w) {
				t.Errorf("%v --help mentions %q", tc.cmd, w)
			}
		}
	}
}

// compare counts failed requests per router and says why they failed.
func TestCompareShowsFailures(t *testing.T) {
	stdout, stderr, err := runSplit(t, "compare", "--trace", azureSlice, "--max-requests", "100", "--router", "round-robin",
		"--max-model-len", "512")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "failed") || !strings.Contains(stderr, "round-robin: ") || !strings.Contains(stderr, "context exceeds max_model_len") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
}
