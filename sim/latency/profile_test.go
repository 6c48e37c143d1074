package latency

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/serving"
)

func TestProfileRoundTrip(t *testing.T) {
	p := &Profile{Model: "meta-llama/Llama-3.1-8B-Instruct", Machine: "1x NVIDIA H100 80GB HBM3", TensorParallelSize: 1,
		BlockSize: 16, NumGPUBlocks: 27000, MaxModelLen: 131072,
		Engine: &serving.EngineConfig{Batch: "vllm:chunked_prefill=true,long_prefill_token_threshold=0,max_num_batched_tokens=8192,max_num_seqs=1024",
			Evict: "lru", BlockSize: 16, NumGPUBlocks: 27000, MaxModelLen: 131072, EnablePrefixCaching: true},
		Coefficients: LinearCoefficients{Intercept: 1.2e-3, PrefillToken: 4.1e-6, PrefillSeq: 2e-4, DecodeSeq: 2.7e-5, ContextToken: 1.1e-8, PrefillAttention: 3e-12},
		Samples:      1234, R2: 0.987, MeanRelativeError: 0.031,
		Fit: &FitReport{Steps: 1234, R2: 0.987, MeanRelativeError: 0.031, MeasuredSeconds: 12.5, PredictedSeconds: 12.5,
			Classes: []StepClass{
				{Class: "decode/short", MinContext: 20, MaxContext: 300, Steps: 600, MeasuredSeconds: 4, PredictedSeconds: 4.1},
				{Class: "decode/long", MinContext: 301, MaxContext: 4000, Steps: 600, MeasuredSeconds: 6, PredictedSeconds: 5.8},
				{Class: "mixed/short", MinContext: 100, MaxContext: 100, Steps: 34, MeasuredSeconds: 2.5, PredictedSeconds: 2.6},
			}},
		GPUs: []ProfiledGPU{{Index: 0, Name: "NVIDIA H200", UUID: "GPU-0f6e-test", MemoryTotalMiB: 143771, DriverVersion: "570.86.15",
			Telemetry: &GPUTelemetry{IntervalSeconds: 1, Samples: 12, MeanUtilizationPercent: ptr(71.5), MaxUtilizationPercent: ptr(100),
				MeanPowerWatts: ptr(402.25), EnergyJoules: ptr(4827), MeanSMClockMHz: ptr(1980), MaxTemperatureC: ptr(52), MaxMemoryUsedMiB: ptr(120033)}},
			{Index: 1, Name: "NVIDIA H200", Telemetry: &GPUTelemetry{IntervalSeconds: 1, Samples: 12}}}}
	file := filepath.Join(t.TempDir(), "profile.json")
	if err := p.Write(file); err != nil {
		t.Fatal(err)
	}
	back, err := LoadProfile(file)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if err := (&Profile{}).Write(filepath.Join(t.TempDir(), "bad.json")); err == nil {
		t.Error("wrote a profile without coefficients")
	}
}

func ptr(v float64) *float64 { return &v }

// TestProfileWithoutGPUs: a profile written before "gpus" existed (the fixture) loads, and
// one without GPUs writes no "gpus" key.
func TestProfileWithoutGPUs(t *testing.T) {
	p, err := LoadProfile("testdata/profile.json")
	if err != nil {
		t.Fatal(err)
	}
	if p.GPUs != nil {
		t.Errorf("GPUs %+v from a profile without them", p.GPUs)
	}
	file := filepath.Join(t.TempDir(), "p.json")
	if err := p.Write(file); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(`"gpus"`)) {
		t.Errorf("a profile without GPUs wrote a gpus key:\n%s", raw)
	}
}

func TestProfileModel(t *testing.T) {
	m, err := Parse("profile:testdata/profile.json", "", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.Name(), "Llama-3.1-8B-Instruct") {
		t.Errorf("name %q does not say what was profiled", m.Name())
	}
	shape := serving.StepShape{PrefillTokens: 100, PrefillSeqs: 1, DecodeSeqs: 10, ContextTokens: 5000, PrefillAttention: 5000}
	// The fixture's coefficients, applied by hand.
	want := 1.5e-3 + 4e-6*100 + 2.5e-4*1 + 2.8e-5*10 + 1.2e-8*5000 + 5e-12*5000
	if got := m.StepTime(shape); !within(got, want, 1e-12) {
		t.Errorf("step time %v, want %v", got, want)
	}
	if m.StepTime(serving.StepShape{}) != 0 {
		t.Error("an empty step takes time")
	}
	for _, tc := range []struct{ blockSize, want int }{{16, 28000}, {32, 14000}, {8, 56000}} {
		if got, err := KVCacheBlocks(m, tc.blockSize, 0.9); err != nil || got != tc.want {
			t.Errorf("KV blocks at block size %d: %d, %v; want %d", tc.blockSize, got, err, tc.want)
		}
	}
	if MaxModelLen(m) != 131072 {
		t.Errorf("max model len %d", MaxModelLen(m))
	}
}

func TestLinearFileTakesBareCoefficients(t *testing.T) {
	m, err := Parse("linear:testdata/coefficients.json", "", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.StepTime(serving.StepShape{DecodeSeqs: 4, ContextTokens: 1000}); !within(got, 6e-3+4*3e-5+1000*1e-8, 1e-12) {
		t.Errorf("step time %v", got)
	}
	if _, err := KVCacheBlocks(m, 16, 0.9); err == nil || !strings.Contains(err.Error(), "num-gpu-blocks-override") {
		t.Errorf("bare coefficients know a KV size: %v", err)
	}
	if MaxModelLen(m) != 0 {
		t.Error("bare coefficients know a context limit")
	}
	// A profile is accepted too.
	p, err := Parse("linear:testdata/profile.json", "", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if blocks, err := KVCacheBlocks(p, 16, 0.9); err != nil || blocks != 28000 {
		t.Errorf("profile through linear: %d blocks, %v", blocks, err)
	}
}

func TestBadProfilesNameFileAndField(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ body, want string }{
		{`{"block_size": 16, "num_gpu_blocks": 10, "coefficients": {"intercept_s": -1}}`, `"intercept_s"`},
		{`{"block_size": "sixteen", "coefficients": {"intercept_s": 0.001}}`, `field "block_size"`},
		{`{"coefficients": {"intercept_s": 0.001, "per_token_s": 1}}`, `"per_token_s"`},
		{`{"coefficients": {"intercept_s": 0.001}, "colour": 1}`, `"colour"`},
		{`{"num_gpu_blocks": 10, "coefficients": {"intercept_s": 0.001}}`, `"block_size"`},
		{`{"coefficients": {}}`, `"coefficients"`},
		{`{"coefficients": {"intercept_s": 0.001}, "r2": 1.5}`, `"r2"`},
		{`{"coefficients": {"intercept_s": 0.001}, "samples": -3}`, `"samples"`},
		{`{"coefficients": {"intercept_s": 0.001}, "mean_relative_error": -0.1}`, `"mean_relative_error"`},
		{`{"coefficients": {"intercept_s": 0.001}, "fit": {"steps": -1}}`, `field "fit": field "steps"`},
		{`{"coefficients": {"intercept_s": 0.001}, "fit": {"steps": 1, "classes": [{"class": "decode/short", "steps": 2}]}}`, `field "fit": field "classes"`},
		{`{"coefficients": {"intercept_s": 0.001}, "fit": {"r2_adjusted": 1}}`, `"r2_adjusted"`},
		{`{"coefficients": {"intercept_s": 0.001}} {}`, ":1:42: data after"},
		{"{\n  \"coefficients\": {\n    \"intercept_s\": 0.001,\n  }\n}", ":4:3:"},
		{``, "empty"},
		{`{"coefficients": {"intercept_s": 0.001}, "engine": {"evict": "lru", "block_size": 16, "num_gpu_blocks": 8, "max_model_len": 64}}`, `field "engine": field "batch"`},
		{`{"block_size": 32, "coefficients": {"intercept_s": 0.001}, "engine": {"batch": "vllm", "evict": "lru", "block_size": 16, "num_gpu_blocks": 8, "max_model_len": 64}}`, `field "block_size": 32, but`},
		{`{"coefficients": {"intercept_s": 0.001}, "engine": {"batch": "vllm", "evict": "lru", "block_size": 16, "num_gpu_blocks": 8, "max_model_len": 64, "gpu": "h100"}}`, `"gpu"`},
		{`{"coefficients": {"intercept_s": 0.0`, "unexpected end"},
		{`{"coefficients": {"intercept_s": 0.001}, "gpus": [{"name": "H200", "telemetry": {"mean_utilization_percent": 130}}]}`, `field "gpus"[0]: field "telemetry": field "mean_utilization_percent": 130 is not between 0 and 100`},
		{`{"coefficients": {"intercept_s": 0.001}, "gpus": [{"name": "H200"}, {"index": -1}]}`, `field "gpus"[1]: field "index": must not be negative`},
		{`{"coefficients": {"intercept_s": 0.001}, "gpus": [{"name": "H200", "telemetry": {"mean_power_watts": -4}}]}`, `field "mean_power_watts": -4`},
		{`{"coefficients": {"intercept_s": 0.001}, "gpus": [{"name": "H200", "telemetry": {"samples": -1}}]}`, `field "samples": must not be negative`},
		{`{"coefficients": {"intercept_s": 0.001}, "gpus": [{"name": "H200", "power_w": 400}]}`, `"power_w"`},
	} {
		file := filepath.Join(dir, "p.json")
		if err := os.WriteFile(file, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadProfile(file)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), file) {
			t.Errorf("%s: error %v, want one starting with %s and naming %s", tc.body, err, file, tc.want)
		}
	}
	if _, err := LoadProfile(filepath.Join(dir, "none.json")); err == nil || !strings.Contains(err.Error(), "none.json") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParseProfile(f *testing.F) {
	for _, file := range []string{"testdata/profile.json", "testdata/coefficients.json"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{"block_size":16,"num_gpu_blocks":10,"coefficients":{"intercept_s":1e-3,"per_decode_seq_s":1e-5},"r2":-2}`))
	f.Add([]byte(`{"coefficients":{"intercept_s":1e-3},"fit":{"steps":5,"r2":0.5,"mean_relative_error":0.1,"measured_s":1,"predicted_s":1,"classes":[{"class":"mixed/long","min_context":3,"max_context":9,"steps":5,"measured_s":1,"predicted_s":1}]}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := ParseProfile(raw, "fuzz.json")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.json") {
				t.Fatalf("error does not name the source: %v", err)
			}
			return
		}
		// What is accepted predicts sane times and survives a write and a re-read.
		shape := serving.StepShape{PrefillTokens: 10, PrefillSeqs: 1, DecodeSeqs: 3, ContextTokens: 100, PrefillAttention: 50}
		if v := p.StepModel().StepTime(shape); !(v >= 0) {
			t.Fatalf("accepted profile gives step time %v", v)
		}
		file := filepath.Join(t.TempDir(), "p.json")
		if err := p.Write(file); err != nil {
			t.Fatalf("accepted profile cannot be written: %v", err)
		}
		written, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseProfile(written, file)
		if err != nil {
			t.Fatalf("written profile cannot be read: %v\n%s", err, written)
		}
		if diff := cmp.Diff(p, back); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s", diff)
		}
		if bytes.Contains(written, []byte("NaN")) {
			t.Fatalf("wrote NaN:\n%s", written)
		}
	})
}
