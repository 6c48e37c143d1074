package gpubench

import (
	"math"
	"os"
	"testing"

	"servelab/sim/latency"
)

func h200Bounds(t *testing.T) *Bounds {
	t.Helper()
	gpu, err := latency.LookupGPU("h200")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../sim/latency/data/models/llama-3.1-8b.json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBounds(gpu, raw, "llama-3.1-8b.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9*math.Abs(want) {
		t.Errorf("%s = %.10g, want %.10g", what, got, want)
	}
}

// The bounds of Llama-3.1-8B in bfloat16 on an H200, counted by hand from the shape
// (dim 4096, 32 layers, 32 heads of 128, 8 KV heads, hidden 14336, vocab 128256, untied)
// and the datasheet (4.8 TB/s, 989.4 dense BF16 TFLOPS).
func TestBoundsLlama31_8BOnH200(t *testing.T) {
	b := h200Bounds(t)
	const (
		dim, layers, heads, kvHeads, headDim, hidden, vocab = 4096, 32, 32, 8, 128, 14336, 128256
	)
	perLayer := float64(dim*(heads+2*kvHeads)*headDim + heads*headDim*dim + 3*dim*hidden) // q, k, v, o, gate, up, down
	norms := float64(2*dim*layers + dim)
	// Streamed: every layer (norms too), the final norm, lm_head; not the embedding.
	weights := 2 * (layers*perLayer + norms + vocab*dim)
	near(t, "WeightBytes", b.WeightBytes(), weights)
	near(t, "WeightBytes (all parameters but the embedding)", b.WeightBytes(), 2*(8030261248-vocab*dim))
	near(t, "SingleStreamTokensPerSecond", b.SingleStreamTokensPerSecond(), 4800e9/weights)
	if got := b.SingleStreamTokensPerSecond(); math.Abs(got-319.79) > 0.01 {
		t.Errorf("single-stream roofline %.2f tok/s, want 319.79", got)
	}
	near(t, "SingleStreamFraction(160)", b.SingleStreamFraction(160), 160/(4800e9/weights))

	// A 2048-token prompt: 2 FLOPs per weight per token, the logits of its last token, and
	// causal attention's 2048*1024 query-key pairs (QKᵀ and PV, 2 FLOPs each, per head).
	const p = 2048
	flops := 2*layers*perLayer*p + 2*vocab*dim + 4*headDim*heads*layers*(p*p/2.0)
	near(t, "FLOPs(prefill 2048)", b.FLOPs(PrefillShape(p)), flops)
	near(t, "PeakFLOPS", b.PeakFLOPS(), 989.4e12)
	// At the 25% target a 2048-token prefill takes flops / (0.25 * peak) seconds.
	at25 := flops / (0.25 * 989.4e12)
	near(t, "PrefillFraction at the target", b.PrefillFraction(PrefillShape(p), at25), 0.25)

	// Batch-64 decode at context 1024: the weights once plus each of 64 sequences reading
	// the KV (2 bytes, K and V, 32 layers, 8 KV heads of 128) of 1025 tokens (the new one's
	// included, as the roofline counts it) and writing one token's.
	kvPerToken := 2.0 * 2 * layers * kvHeads * headDim
	near(t, "BatchBytesBound(64, 1024)", b.BatchBytesBound(DecodeShape(64, 1024)), (weights+64*1026*kvPerToken)/4800e9)

	// What docs/BENCHMARKS.md quotes (go test -v -run TestBoundsLlama31_8BOnH200 ./cuda/gpubench/).
	t.Logf("%s", b)
	t.Logf("single-stream decode: roofline %.1f tok/s (%.2f ms a token); the 50%% target is %.1f tok/s",
		b.SingleStreamTokensPerSecond(), 1e3/b.SingleStreamTokensPerSecond(), TargetSingleStreamFraction*b.SingleStreamTokensPerSecond())
	bb := b.BatchBytesBound(DecodeShape(64, 1024))
	t.Logf("batch-64 decode at context 1024: HBM bound %.2f ms a step = %.0f tok/s; the target is %d tok/s (%.0f%% of that bound)",
		1e3*bb, 64/bb, TargetBatch64TokensPerSecond, 100*TargetBatch64TokensPerSecond/(64/bb))
	for _, n := range []int{512, 2048, 8192} {
		f := b.FLOPs(PrefillShape(n))
		t.Logf("prefill of %d tokens: %.2f TFLOP; at the peak %.2f ms, at the 25%% target %.2f ms (%.0f tok/s)",
			n, f/1e12, 1e3*f/b.PeakFLOPS(), 1e3*f/(TargetPrefillFraction*b.PeakFLOPS()), float64(n)/(f/(TargetPrefillFraction*b.PeakFLOPS())))
	}
}

func TestShapes(t *testing.T) {
	d := DecodeShape(64, 1024)
	if d.DecodeSeqs != 64 || d.PrefillTokens != 0 || d.ContextTokens != 64*1025 || d.DecodeContextTokens != 64*1025 {
		t.Errorf("DecodeShape(64, 1024) = %+v", d)
	}
	p := PrefillShape(512)
	if p.PrefillSeqs != 1 || p.PrefillTokens != 512 || p.DecodeSeqs != 0 || p.PrefillAttention != 512*256 {
		t.Errorf("PrefillShape(512) = %+v", p)
	}
}
