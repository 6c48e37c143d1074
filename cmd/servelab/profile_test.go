package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/serving"
	"servelab/sim/latency"
)

// profile --from-steps fits the step-time model to logged steps: steps made by a known
// linear model give that model back, with the engine's KV cache from the flags.
func TestProfileFromSteps(t *testing.T) {
	dir := synthTiny(t)
	want := latency.LinearCoefficients{Intercept: 2e-3, PrefillToken: 5e-5, DecodeSeq: 3e-4, ContextToken: 1e-6}
	model := latency.NewLinear(want)
	logs := filepath.Join(t.TempDir(), "steps.jsonl")
	f, err := os.Create(logs)
	if err != nil {
		t.Fatal(err)
	}
	enc := json.NewEncoder(f)
	for i := 1; i <= 200; i++ {
		pre, dec := (i*37)%300, (i*11)%24
		if pre+dec == 0 {
			dec = 1
		}
		shape := serving.StepShape{PrefillTokens: pre, DecodeSeqs: dec, ContextTokens: pre + dec*(100+(i*53)%400)}
		if pre > 0 {
			shape.PrefillSeqs = 1
			shape.PrefillAttention = float64(pre) * float64(pre) / 2
		}
		enc.Encode(latency.Sample{Shape: shape, Seconds: model.StepTime(shape)})
	}
	f.Close()
	out := filepath.Join(t.TempDir(), "profile.json")
	stdout, err := run(t, "profile", "--model", dir, "--from-steps", logs, "--num-gpu-blocks-override", "300", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	prof, err := latency.LoadProfile(out)
	if err != nil {
		t.Fatal(err)
	}
	if prof.Samples != 200 || prof.NumGPUBlocks != 300 || prof.BlockSize != 16 || prof.R2 < 0.999 {
		t.Errorf("profile %+v", prof)
	}
	// The profile records and the command prints the fit per class of step.
	if fit := prof.Fit; fit == nil || fit.Steps != 200 || math.Abs(fit.RelativeError()) > 1e-6 || len(fit.Classes) < 4 {
		t.Errorf("fit report %+v", fit)
	} else {
		for _, c := range append(fit.Classes, latency.StepClass{Class: "all"}) {
			if !strings.Contains(stdout, "\n"+c.Class+" ") {
				t.Errorf("output does not show class %s:\n%s", c.Class, stdout)
			}
		}
	}
	got := prof.Coefficients
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"intercept", got.Intercept, want.Intercept}, {"prefill token", got.PrefillToken, want.PrefillToken},
		{"decode seq", got.DecodeSeq, want.DecodeSeq}, {"context token", got.ContextToken, want.ContextToken}} {
		if math.Abs(c.got-c.want) > 0.02*c.want {
			t.Errorf("%s: %g, want %g", c.name, c.got, c.want)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty.jsonl")
	os.WriteFile(empty, nil, 0o644)
	if _, err := run(t, "profile", "--model", dir, "--from-steps", empty, "--out", out); err == nil || !strings.Contains(err.Error(), "no steps in "+empty) {
		t.Errorf("an empty step log: err = %v", err)
	}
}
