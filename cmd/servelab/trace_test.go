package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTraceInspect(t *testing.T) {
	out, err := run(t, "trace", "inspect", mooncakeSlice, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Rows          int     `json:"rows"`
		RepeatedShare float64 `json:"repeated_hash_share"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	if st.Rows != 500 || st.RepeatedShare <= 0 {
		t.Errorf("inspect: %d rows, repeated share %g; want 500 rows and some sharing", st.Rows, st.RepeatedShare)
	}
	text, err := run(t, "trace", "inspect", azureSlice)
	if err != nil || !strings.Contains(text, "3000") {
		t.Errorf("inspect text output %q, %v", text, err)
	}
}

func TestTraceSynthThenSimulate(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "synth.jsonl")
	args := []string{"trace", "synth", "--requests", "300", "--rate", "20", "--input-mean", "400", "--output-mean", "60",
		"--prefix-groups", "4", "--seed", "9", "--out", file}
	out, err := run(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	// A newcomer sees what was written.
	if want := "wrote " + file + ": 300 requests over "; !strings.Contains(out, want) {
		t.Errorf("synth printed %q, want %q...", out, want)
	}
	first, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(first), "\n"); n != 300 {
		t.Fatalf("synth wrote %d rows, want 300", n)
	}
	if _, err := run(t, args...); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(file)
	if string(first) != string(second) {
		t.Error("the same flags and seed wrote different traces")
	}
	out, err = run(t, "sim", "--trace", file, "--instances", "2", "--router", "prefix-affinity", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"completed": 300`) {
		t.Errorf("simulating the synthetic trace:\n%s", out)
	}
}

func TestTraceErrorsNameTheProblem(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.csv")
	if err := os.WriteFile(bad, []byte("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,many,4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"trace", "inspect", bad}, `bad.csv:2: field "ContextTokens"`},
		{[]string{"sim", "--trace", bad}, `bad.csv:2: field "ContextTokens"`},
		{[]string{"trace", "synth", "--requests", "0", "--out", filepath.Join(t.TempDir(), "x")}, "requests"},
		{[]string{"trace", "synth", "--class", "critical", "--out", filepath.Join(t.TempDir(), "x")}, "--class"},
		{[]string{"trace", "synth", "--class", "critical:0.7", "--out", filepath.Join(t.TempDir(), "x")}, "add up to 0.7"},
	} {
		_, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

// TestSynthClassesBreakDownTheSummary: a trace synthesised with classes simulates under
// flow control into a summary broken down by class, sheddable requests refused with 429.
func TestSynthClassesBreakDownTheSummary(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "classes.jsonl")
	if _, err := run(t, "trace", "synth", "--requests", "400", "--rate", "200", "--class", "critical:0.7", "--class", "sheddable:0.3",
		"--input-mean", "512", "--output-mean", "128", "--out", trace); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "sim", "--trace", trace, "--instances", "1", "--gpu", "l4", "--flow-control", "gie",
		"--objective", "critical=1", "--objective", "sheddable=-1", "--allow-failures")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Class critical", "Class sheddable", "flow control: rejected-saturated", "429: system saturated"} {
		if !strings.Contains(out, want) {
			t.Errorf("the summary lacks %q:\n%s", want, out)
		}
	}
}
