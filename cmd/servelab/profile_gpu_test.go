package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/serving"
	"servelab/sim/latency"
)

// A profile measured here (the tiny model on the CPU) records its measured steps, and
// profile compare sets them beside the simulator's h200 roofline: each row's measured time
// is the step's, its roofline time the roofline's for that step's shape.
func TestProfileCompareAgainstRoofline(t *testing.T) {
	dir := synthTiny(t)
	file := filepath.Join(t.TempDir(), "profile.json")
	if out, err := run(t, "profile", "--model", dir, "--quick", "--repeats", "1", "--out", file); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p, err := latency.LoadProfile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Points) != p.Samples || p.GPU != "" || !strings.HasPrefix(p.Machine, "CPU ") {
		t.Fatalf("profile records %d points of %d samples, gpu %q, machine %q", len(p.Points), p.Samples, p.GPU, p.Machine)
	}
	if _, err := run(t, "profile", "--model", dir, "--grid", "tpu", "--out", file); err == nil || !strings.Contains(err.Error(), `--grid "tpu": want auto, cpu or gpu`) {
		t.Errorf("--grid tpu: err = %v", err)
	}
	if _, err := run(t, "profile", "compare", file); err == nil || !strings.Contains(err.Error(), "--gpu") {
		t.Errorf("compare of a CPU profile without --gpu: err = %v, want --gpu asked for", err)
	}
	out, err := run(t, "profile", "compare", file, "--gpu", "h200")
	if err != nil {
		t.Fatal(err)
	}
	roof, err := latency.Parse("roofline", "h200", dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	rows, decodes, prefills := 0, 0, 0
	for _, s := range p.Points {
		sh := s.Shape
		var row string
		switch {
		case sh.PrefillSeqs == 1 && sh.DecodeSeqs == 0 && sh.ContextTokens == sh.PrefillTokens:
			row = fmt.Sprintf("| prefill | 1 | %d | 0 | %.3f |", sh.PrefillTokens, 1e3*s.Seconds)
			prefills++
		case sh.PrefillSeqs == 0:
			row = fmt.Sprintf("| decode | %d | 1 | %d | %.3f |", sh.DecodeSeqs, sh.DecodeContextTokens/sh.DecodeSeqs-1, 1e3*s.Seconds)
			decodes++
		default:
			continue
		}
		rows++
		row += fmt.Sprintf(" %.3f | %.3f |", 1e3*p.StepModel().StepTime(sh), 1e3*roof.StepTime(sh))
		if !strings.Contains(out, row) {
			t.Errorf("no row %q in:\n%s", row, out)
		}
	}
	if prefills < 2 || decodes < 4 || !strings.Contains(out, fmt.Sprintf("| all %d above |", rows)) {
		t.Errorf("%d prefill and %d decode rows:\n%s", prefills, decodes, out)
	}
	if !strings.Contains(out, "measured on a CPU, not on h200") {
		t.Errorf("the table does not say it compares a CPU with an h200:\n%s", out)
	}

	// Without a profile: the roofline alone, nothing claimed measured.
	out, err = run(t, "profile", "compare", "--gpu", "h200", "--model", "llama-3.1-8b")
	if err != nil {
		t.Fatal(err)
	}
	roof8b, err := latency.Parse("roofline", "h200", "llama-3.1-8b", 1)
	if err != nil {
		t.Fatal(err)
	}
	var st serving.Step
	for range 64 {
		st.Add(&serving.Seq{Req: &serving.Request{PromptTokens: 1024}, NumComputed: 1024, NumOutput: 1}, 1)
	}
	if row := fmt.Sprintf("| decode | 64 | 1 | 1024 | not measured | | %.3f | |", 1e3*roof8b.StepTime(st.Shape)); !strings.Contains(out, row) {
		t.Errorf("no row %q in:\n%s", row, out)
	}
}

// A profile measured on a GPU ("gpu": "h200") runs as that GPU in sim: priced at its price
// by default, and another --gpu or pool GPU is refused naming both. No GPU was lent here,
// so the profile is the tiny model's measured on the CPU with its "gpu" set, as servelab
// profile --device cuda sets it on an H200.
func TestSimRunsTheProfiledGPU(t *testing.T) {
	dir := synthTiny(t)
	cpuFile := filepath.Join(t.TempDir(), "cpu.json")
	if out, err := run(t, "profile", "--model", dir, "--quick", "--repeats", "1", "--out", cpuFile); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p, err := latency.LoadProfile(cpuFile)
	if err != nil {
		t.Fatal(err)
	}
	p.GPU = "h200"
	gpuFile := filepath.Join(t.TempDir(), "h200.json")
	if err := p.Write(gpuFile); err != nil {
		t.Fatal(err)
	}
	var warned bool
	sim := func(file string, args ...string) (float64, error) {
		t.Helper()
		out, err := run(t, append([]string{"sim", "--latency", "profile:" + file, "--trace", azureSlice, "--max-requests", "40", "--token-scale", "auto", "--json"}, args...)...)
		if err != nil {
			return 0, err
		}
		warned = strings.Contains(out, "was not measured on a GPU")
		var r struct {
			Cost struct {
				GPUHours float64 `json:"gpu_hours"`
				USD      float64 `json:"cost_usd"`
			} `json:"cost"`
		}
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &r); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return r.Cost.USD / r.Cost.GPUHours, nil
	}
	h100, _ := latency.LookupGPU("h100")
	h200, _ := latency.LookupGPU("h200")
	for _, tt := range []struct {
		name  string
		file  string
		args  []string
		price float64
		err   string
	}{
		{"CPU profile: --gpu's default prices it", cpuFile, nil, h100.PricePerHour, ""},
		{"CPU profile priced as an h200", cpuFile, []string{"--gpu", "h200"}, h200.PricePerHour, ""},
		{"h200 profile: its GPU by default", gpuFile, nil, h200.PricePerHour, ""},
		{"h200 profile with --gpu h200", gpuFile, []string{"--gpu", "H200"}, h200.PricePerHour, ""},
		{"h200 profile with --gpu h100", gpuFile, []string{"--gpu", "h100"}, 0, "--gpu h100: --latency profile:" + gpuFile + " was measured on h200"},
		{"h200 profile in an h100 pool", gpuFile, []string{"--pool", "a:both:1:h100"}, 0, "--pool a: GPU h100, but --latency profile:" + gpuFile + " was measured on h200"},
	} {
		price, err := sim(tt.file, tt.args...)
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: err = %v, want %q", tt.name, err, tt.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case math.Abs(price-tt.price) > 1e-9:
			t.Errorf("%s: priced at %g $/GPU-hour, want %g", tt.name, price, tt.price)
		case warned != (tt.file == cpuFile && len(tt.args) > 0):
			t.Errorf("%s: warned that the profile is a CPU's: %v", tt.name, warned)
		}
	}
	// A profile naming a GPU the table lacks is refused by name.
	raw, _ := os.ReadFile(gpuFile)
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(strings.Replace(string(raw), `"gpu": "h200"`, `"gpu": "b300"`, 1)), 0o644)
	if _, err := sim(bad); err == nil || !strings.Contains(err.Error(), `field "gpu": unknown GPU "b300"`) {
		t.Errorf("err = %v, want the unknown gpu named", err)
	}
}
