package latency

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/serving"
)

func TestParamCounts(t *testing.T) {
	// Published sizes of the models whose configs are shipped.
	for name, want := range map[string]float64{
		"llama-3.1-8b":  8.03e9,
		"llama-3.1-70b": 70.6e9,
		"qwen2.5-7b":    7.62e9,
		"mistral-7b":    7.25e9,
	} {
		m, err := LookupModel(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := float64(m.Params()); math.Abs(got-want) > 0.01*want {
			t.Errorf("%s: %.3g parameters, want %.3g within 1%%", name, got, want)
		}
	}
}

func roofline(t *testing.T, gpu, model string, tp int) *Roofline {
	t.Helper()
	m, err := Parse("roofline", gpu, model, tp)
	if err != nil {
		t.Fatal(err)
	}
	return m.(*Roofline)
}

func TestKVCacheBlocks(t *testing.T) {
	r := roofline(t, "h100", "llama-3.1-8b", 1)
	got, err := r.KVCacheBlocks(16, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	// 72 GiB budget - 14.96 GiB of weights - 2 GiB reserve, at 128 KiB of KV per token.
	budget := 72 - 14.96 - 2.0
	want := int(budget * (1 << 30) / (16 * 128 << 10))
	if math.Abs(float64(got-want)) > 0.01*float64(want) {
		t.Errorf("Llama-3.1-8B on H100 at 0.9: %d blocks, want about %d", got, want)
	}
	if _, err := roofline(t, "l4", "llama-3.1-70b", 1).KVCacheBlocks(16, 0.9); err == nil {
		t.Error("70B on one L4 fits, want an error")
	}
	tp4, err := roofline(t, "h100", "llama-3.1-70b", 4).KVCacheBlocks(16, 0.9)
	if err != nil || tp4 < 10000 {
		t.Errorf("70B on 4 H100s: %d blocks, %v", tp4, err)
	}
}

func TestRooflineRegimes(t *testing.T) {
	r := roofline(t, "h100", "llama-3.1-8b", 1)
	// One decode token: memory-bound, streaming 16 GB of weights at 80% of 3.35 TB/s.
	decode := r.StepTime(serving.StepShape{DecodeSeqs: 1, ContextTokens: 1000, DecodeContextTokens: 1000})
	wantDecode := 16.06e9/(3.35e12*0.8) + 1e-3
	if math.Abs(decode-wantDecode) > 0.05*wantDecode {
		t.Errorf("batch-1 decode %.2f ms, want about %.2f ms", decode*1e3, wantDecode*1e3)
	}
	// A large prefill: compute-bound, 2 x 8B FLOPs per token at 65% of 989 TFLOPS.
	prefill := r.StepTime(serving.StepShape{PrefillTokens: 8192, PrefillSeqs: 1, ContextTokens: 8192, PrefillAttention: 8192 * 4096})
	if lo := 2 * 7.5e9 * 8192 / (989.4e12 * 0.65); prefill < lo {
		t.Errorf("8192-token prefill %.1f ms, below the compute bound %.1f ms", prefill*1e3, lo*1e3)
	}
	if prefill > 0.3 {
		t.Errorf("8192-token prefill %.1f ms is implausibly slow", prefill*1e3)
	}
	if r.StepTime(serving.StepShape{}) != 0 {
		t.Error("an empty step takes time")
	}
}

func TestRooflineIsMonotonic(t *testing.T) {
	for _, tc := range []struct {
		gpu, model string
		tp         int
	}{{"h100", "llama-3.1-8b", 1}, {"a100-80g", "qwen2.5-7b", 1}, {"h200", "llama-3.1-70b", 8}, {"l4", "mistral-7b", 1}} {
		r := roofline(t, tc.gpu, tc.model, tc.tp)
		rng := rand.New(rand.NewPCG(1, 2))
		for range 2000 {
			base := serving.StepShape{
				PrefillTokens: rng.IntN(4096), PrefillSeqs: rng.IntN(4), DecodeSeqs: 1 + rng.IntN(256),
				ContextTokens: rng.IntN(1 << 18), DecodeContextTokens: rng.IntN(1 << 17), PrefillAttention: float64(rng.IntN(1 << 24)),
			}
			grown := base
			switch rng.IntN(4) {
			case 0:
				grown.PrefillTokens += 1 + rng.IntN(512)
			case 1:
				grown.DecodeSeqs += 1 + rng.IntN(64)
			case 2:
				grown.ContextTokens += 1 + rng.IntN(1<<14)
			default:
				grown.PrefillAttention += float64(1 + rng.IntN(1<<20))
			}
			if r.StepTime(grown) < r.StepTime(base) {
				t.Fatalf("%s/%s: more work took less time: %+v vs %+v", tc.gpu, tc.model, grown, base)
			}
		}
	}
}

func TestTensorParallelismSpeedsUpDecode(t *testing.T) {
	shape := serving.StepShape{DecodeSeqs: 32, ContextTokens: 32 * 2000, DecodeContextTokens: 32 * 2000}
	tp4 := roofline(t, "h100", "llama-3.1-70b", 4).StepTime(shape)
	tp8 := roofline(t, "h100", "llama-3.1-70b", 8).StepTime(shape)
	if !(tp8 < tp4) {
		t.Errorf("70B decode: tp8 %.2f ms not faster than tp4 %.2f ms", tp8*1e3, tp4*1e3)
	}
	if _, err := Parse("roofline", "h100", "qwen2.5-7b", 3); err == nil {
		t.Error("tp 3 with 28 heads accepted")
	}
}

func TestFitRecoversCoefficients(t *testing.T) {
	want := LinearCoefficients{Intercept: 2e-3, PrefillToken: 5e-6, DecodeSeq: 3e-5, ContextToken: 2e-8, PrefillAttention: 1e-11}
	truth := NewLinear(want)
	rng := rand.New(rand.NewPCG(3, 4))
	var samples []Sample
	for range 400 {
		prefill, decode := rng.IntN(2048), rng.IntN(128)
		ctx, prefillCtx := rng.IntN(1<<16), rng.IntN(1<<14)
		s := serving.StepShape{PrefillTokens: prefill, PrefillSeqs: min(prefill, 1), DecodeSeqs: decode, ContextTokens: ctx + prefill,
			PrefillAttention: float64(prefill) * (float64(prefillCtx) + float64(prefill)/2)}
		noise := 1 + 0.01*rng.NormFloat64()
		samples = append(samples, Sample{Shape: s, Seconds: truth.StepTime(s) * noise})
	}
	got, r2, err := FitLinear(samples)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0.1, 0)); diff != "" {
		t.Errorf("fitted coefficients (-want +got):\n%s", diff)
	}
	if r2 < 0.99 {
		t.Errorf("R2 = %.4f, want > 0.99", r2)
	}
	for _, c := range got.slice() {
		if c < 0 {
			t.Errorf("negative coefficient in %+v", got)
		}
	}
}

func TestProfileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := &Profile{Model: "tiny", Machine: "test", BlockSize: 16, NumGPUBlocks: 1000, MaxModelLen: 2048,
		Coefficients: LinearCoefficients{Intercept: 1e-3, PrefillToken: 1e-5, DecodeSeq: 1e-4, ContextToken: 1e-7}, Samples: 9, R2: 0.98}
	file := filepath.Join(dir, "profile.json")
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
	m, err := Parse("profile:"+file, "", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if blocks, err := KVCacheBlocks(m, 32, 0.9); err != nil || blocks != 500 {
		t.Errorf("KV blocks at block size 32: %d, %v; want 500", blocks, err)
	}
	if MaxModelLen(m) != 2048 {
		t.Errorf("max model len %d", MaxModelLen(m))
	}
}

func TestBadProfilesNameTheField(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ body, want string }{
		{`{"block_size": 16, "num_gpu_blocks": 10, "coefficients": {"intercept_s": -1}}`, "intercept_s"},
		{`{"block_size": "sixteen"}`, "block_size"},
		{`{"coefficients": {"intercept_s": 0.001}, "colour": 1}`, "colour"},
		{`{"num_gpu_blocks": 10, "coefficients": {"intercept_s": 0.001}}`, "block_size"},
		{`{"coefficients": {}}`, "coefficients"},
	} {
		file := filepath.Join(dir, "p.json")
		if err := os.WriteFile(file, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadProfile(file)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), file) {
			t.Errorf("%s: error %v, want one naming %s and %q", tc.body, err, file, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ spec, gpu, model, want string }{
		{"roofline", "tpu", "llama-3.1-8b", "tpu"},
		{"roofline", "h100", "gpt-9", "gpt-9"},
		{"roofline:mfu=2", "h100", "llama-3.1-8b", "efficiencies"},
		{"roofline:speed=2", "h100", "llama-3.1-8b", "speed"},
		{"magic", "h100", "llama-3.1-8b", "magic"},
		{"profile:/no/such/file.json", "", "", "/no/such/file.json"},
	} {
		_, err := Parse(tc.spec, tc.gpu, tc.model, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q, %q, %q): %v, want an error naming %q", tc.spec, tc.gpu, tc.model, err, tc.want)
		}
	}
}

func FuzzLoadProfile(f *testing.F) {
	f.Add(`{"model":"m","block_size":16,"num_gpu_blocks":10,"coefficients":{"intercept_s":0.001,"per_decode_seq_s":1e-5},"samples":3,"r2":0.9}`)
	f.Fuzz(func(t *testing.T, body string) {
		file := filepath.Join(t.TempDir(), "p.json")
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := LoadProfile(file)
		if err != nil {
			return
		}
		m := p.StepModel()
		if v := m.StepTime(serving.StepShape{DecodeSeqs: 1, ContextTokens: 10}); v < 0 || math.IsNaN(v) {
			t.Fatalf("accepted profile gives step time %v", v)
		}
	})
}

func BenchmarkStepTime(b *testing.B) {
	r, err := Parse("roofline", "h100", "llama-3.1-8b", 1)
	if err != nil {
		b.Fatal(err)
	}
	s := serving.StepShape{PrefillTokens: 512, PrefillSeqs: 1, DecodeSeqs: 64, ContextTokens: 64 * 1500, DecodeContextTokens: 64 * 1400, PrefillAttention: 512 * 600}
	b.ReportAllocs()
	var sum float64
	for range b.N {
		sum += r.StepTime(s)
	}
	if sum < 0 {
		b.Fatal(sum)
	}
}
