package latency

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"servelab/serving"
)

func roofline(t testing.TB, gpu, model string, tp int) *Roofline {
	t.Helper()
	m, err := Parse("roofline", gpu, model, tp)
	if err != nil {
		t.Fatal(err)
	}
	return m.(*Roofline)
}

func within(got, want, rel float64) bool { return math.Abs(got-want) <= rel*math.Abs(want) }

const gib = 1 << 30

func TestKVCacheBlocks(t *testing.T) {
	r := roofline(t, "h100", "llama-3.1-8b", 1)
	if got := r.KVBytesPerToken(); got != 128<<10 {
		t.Errorf("Llama-3.1-8B KV per token %v bytes, want 128 KiB (2 x 32 layers x 8 heads x 128 x 2 bytes)", got)
	}
	if got := r.WeightBytes() / gib; !within(got, 14.96, 0.001) {
		t.Errorf("Llama-3.1-8B weights %.3f GiB, want 14.96 GiB (8.03e9 x 2 bytes)", got)
	}
	got, err := r.KVCacheBlocks(16, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	// 90% of the 81559 MiB an H100 reports, less 14.96 GiB of weights and the 2 GiB
	// reserve, in 16-token blocks of 128 KiB per token.
	budget := (81559.0/1024*0.9 - 14.957527 - 2) * gib
	want := int(math.Floor(budget / (16 * 128 << 10)))
	if got != want {
		t.Errorf("Llama-3.1-8B on H100 at 0.9: %d blocks, want %d", got, want)
	}
	// The back-of-envelope figure: (72 GB - 16 GB) / 128 KiB per token.
	if rough := 56e9 / (128 << 10) / 16; !within(float64(got), rough, 0.1) {
		t.Errorf("%d blocks, not within 10%% of the rough %.0f", got, rough)
	}
	if half, _ := r.KVCacheBlocks(32, 0.9); half != got/2 {
		t.Errorf("block size 32: %d blocks, want %d", half, got/2)
	}
}

func TestKVCacheBlocksAcrossTensorParallelism(t *testing.T) {
	for _, tc := range []struct {
		gpu, model string
		tp         int
	}{{"l4", "llama-3.1-70b", 1}, {"h100", "llama-3.1-70b", 1}, {"h200", "llama-3.1-70b", 1}} {
		_, err := roofline(t, tc.gpu, tc.model, tc.tp).KVCacheBlocks(16, 0.9)
		if err == nil || !strings.Contains(err.Error(), "does not fit") {
			t.Errorf("%s on %dx %s: %v, want a does-not-fit error", tc.model, tc.tp, tc.gpu, err)
		}
	}
	tp4, err := roofline(t, "h100", "llama-3.1-70b", 4).KVCacheBlocks(16, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	tp8, err := roofline(t, "h100", "llama-3.1-70b", 8).KVCacheBlocks(16, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	// Each GPU holds a quarter of the weights at tp 4 (33 GiB) and an eighth at tp 8,
	// and a quarter or an eighth of each token's 320 KiB of KV.
	if tp4 < 25000 || tp4 > 35000 || tp8 < 2*tp4 {
		t.Errorf("70B on H100: %d blocks at tp 4, %d at tp 8", tp4, tp8)
	}
	// With more GPUs than KV heads, vLLM replicates KV heads: one per GPU, never fewer.
	tp8kv := roofline(t, "h100", "llama-3.1-8b", 8).KVBytesPerToken()
	tp16kv := roofline(t, "h100", "llama-3.1-8b", 16).KVBytesPerToken()
	if tp8kv != 16<<10 || tp16kv != tp8kv {
		t.Errorf("8B KV per token per GPU: %v at tp 8, %v at tp 16; want 16 KiB both", tp8kv, tp16kv)
	}
	if _, err := roofline(t, "h100", "llama-3.1-8b", 1).KVCacheBlocks(16, 1.5); err == nil {
		t.Error("gpu memory utilization 1.5 accepted")
	}
}

func TestTensorParallelismRules(t *testing.T) {
	for _, tc := range []struct {
		model string
		tp    int
		want  string
	}{
		{"qwen2.5-7b", 3, "attention heads"}, // 28 heads
		{"qwen2.5-7b", 8, "attention heads"}, // 28 heads
		{"qwen2.5-7b", 14, "KV heads"},       // 4 KV heads cannot be spread over 14
		{"llama-3.1-8b", 0, "must be positive"},
		{"llama-3.1-8b", 64, "attention heads"}, // 32 heads
		{"llama-3.1-8b", 16, ""},                // KV heads replicated
		{"qwen2.5-7b", 4, ""},
		{"llama-3.1-70b", 8, ""},
		{"mistral-7b", 2, ""},
		{"testdata/tiny-config.json", 4, "intermediate_size"}, // 150 does not divide by 4
	} {
		_, err := Parse("roofline", "h100", tc.model, tc.tp)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s tp %d: %v", tc.model, tc.tp, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s tp %d: %v, want an error about %s", tc.model, tc.tp, err, tc.want)
		}
	}
}

func TestDecodeIsMemoryBound(t *testing.T) {
	r := roofline(t, "h100", "llama-3.1-8b", 1)
	decode := r.StepTime(serving.StepShape{DecodeSeqs: 1, ContextTokens: 1000, DecodeContextTokens: 1000})
	// Streaming the 15 GB of weights outside the embedding and 1000 tokens of KV at 80%
	// of 3.35 TB/s, plus the 1 ms step overhead.
	streamed := (8.03e9 - 128256*4096) * 2
	want := (streamed+1001*128<<10)/(3.35e12*0.8) + 1e-3
	if !within(decode, want, 0.01) {
		t.Errorf("batch-1 decode %.3f ms, want %.3f ms", decode*1e3, want*1e3)
	}
	if floor := streamed / 3.35e12; decode < floor {
		t.Errorf("batch-1 decode %.3f ms beats the bandwidth floor %.3f ms", decode*1e3, floor*1e3)
	}
	// At batch 64, decode is still memory-bound: the step costs little more than batch 1
	// beyond the extra KV.
	batch := r.StepTime(serving.StepShape{DecodeSeqs: 64, ContextTokens: 64 * 1000, DecodeContextTokens: 64 * 1000})
	kv := 63 * 1000 * float64(128<<10) / (3.35e12 * 0.8)
	if !within(batch, decode+kv, 0.01) {
		t.Errorf("batch-64 decode %.3f ms, want %.3f ms", batch*1e3, (decode+kv)*1e3)
	}
}

func TestPrefillIsComputeBound(t *testing.T) {
	r := roofline(t, "h100", "llama-3.1-8b", 1)
	const n = 8192
	shape := serving.StepShape{PrefillTokens: n, PrefillSeqs: 1, ContextTokens: n, PrefillAttention: n * n / 2}
	linear := 2 * float64(32*(4096*4096*2+2*4096*1024+3*4096*14336)) * n
	attention := 4 * 128 * 32 * 32 * float64(n*n/2)
	logits := 2 * float64(128256*4096)
	want := (linear+attention+logits)/(989.4e12*0.65) + 1e-3
	if got := r.StepTime(shape); !within(got, want, 1e-9) {
		t.Errorf("8192-token prefill %.2f ms, want the compute bound %.2f ms", got*1e3, want*1e3)
	}
}

func TestTensorParallelismSpeedsUpA70BDecode(t *testing.T) {
	shape := serving.StepShape{DecodeSeqs: 32, ContextTokens: 32 * 2000, DecodeContextTokens: 32 * 2000}
	tp4 := roofline(t, "h100", "llama-3.1-70b", 4)
	tp8 := roofline(t, "h100", "llama-3.1-70b", 8)
	t4, t8 := tp4.StepTime(shape), tp8.StepTime(shape)
	if !(t8 < t4) {
		t.Errorf("70B decode: tp 8 %.2f ms not faster than tp 4 %.2f ms", t8*1e3, t4*1e3)
	}
	// Each GPU streams a quarter of the weights; 160 all-reduces add 10 µs each plus
	// 32 tokens x 16 KiB x 1.5 over 450 GB/s.
	memory := (tp4.weightBytes + 32*2001*float64(80<<10)) / (3.35e12 * 0.8)
	allReduce := 160 * (10e-6 + 32*8192*2*1.5/450e9)
	if want := memory + allReduce + 1e-3; !within(t4, want, 1e-9) {
		t.Errorf("70B tp 4 decode %.3f ms, want %.3f ms", t4*1e3, want*1e3)
	}
	if one := roofline(t, "h100", "llama-3.1-8b", 1).StepTime(shape); one > t4 {
		t.Errorf("8B on one GPU (%.2f ms) slower than 70B on four (%.2f ms)", one*1e3, t4*1e3)
	}
}

func TestStepTimeIsMonotonic(t *testing.T) {
	for _, tc := range []struct {
		gpu, model string
		tp         int
	}{{"h100", "llama-3.1-8b", 1}, {"a100-80g", "qwen2.5-7b", 1}, {"h200", "llama-3.1-70b", 8}, {"l4", "mistral-7b", 1}, {"l40s", "llama-3.1-8b", 2}} {
		r := roofline(t, tc.gpu, tc.model, tc.tp)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range 3000 {
			base := serving.StepShape{
				PrefillTokens: rng.IntN(4096), PrefillSeqs: rng.IntN(4), DecodeSeqs: rng.IntN(256),
				ContextTokens: rng.IntN(1 << 18), DecodeContextTokens: rng.IntN(1 << 17), PrefillAttention: float64(rng.IntN(1 << 24)),
			}
			grown := base
			switch i % 6 {
			case 0:
				grown.PrefillTokens += 1 + rng.IntN(512)
			case 1:
				grown.PrefillSeqs += 1 + rng.IntN(4)
			case 2:
				grown.DecodeSeqs += 1 + rng.IntN(64)
			case 3:
				grown.ContextTokens += 1 + rng.IntN(1<<14)
			case 4:
				grown.DecodeContextTokens += 1 + rng.IntN(1<<14)
			default:
				grown.PrefillAttention += float64(1 + rng.IntN(1<<20))
			}
			if r.StepTime(grown) < r.StepTime(base) {
				t.Fatalf("%s/%s: more work took less time: %+v vs %+v", tc.gpu, tc.model, grown, base)
			}
		}
		if r.StepTime(serving.StepShape{}) != 0 {
			t.Errorf("%s/%s: an empty step takes time", tc.gpu, tc.model)
		}
	}
}

func TestStepTimeDoesNotAllocate(t *testing.T) {
	shape := serving.StepShape{PrefillTokens: 512, PrefillSeqs: 1, DecodeSeqs: 64, ContextTokens: 64 * 1500, DecodeContextTokens: 64 * 1400, PrefillAttention: 512 * 600}
	for _, m := range []Model{roofline(t, "h100", "llama-3.1-8b", 1), NewLinear(LinearCoefficients{Intercept: 1e-3, DecodeSeq: 1e-5})} {
		if allocs := testing.AllocsPerRun(100, func() { m.StepTime(shape) }); allocs != 0 {
			t.Errorf("%s: %v allocations per StepTime", m.Name(), allocs)
		}
	}
}
