package modelfile

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"servelab/engine/safetensors"
)

// PresetNames are the names Preset takes.
var PresetNames = []string{"tiny", "15m", "110m", "llama-3.2-1b", "llama-3.1-8b"}

// Preset returns a named model shape. tiny, 15m and 110m have rope theta 10000, rms eps
// 1e-5, tied embeddings, BOS 1, EOS 2 and F32 tensors:
//
//	tiny: dim 64, hidden 172, 2 layers, 8 heads, 4 kv heads, vocab 512, seq 512
//	15m:  dim 288, hidden 768, 6 layers, 6 heads, 6 kv heads, vocab 32000, seq 256 (TinyStories 15M)
//	110m: dim 768, hidden 2048, 12 layers, 12 heads, 12 kv heads, vocab 32000, seq 1024 (TinyStories 110M)
//
// llama-3.2-1b and llama-3.1-8b are the shapes of meta-llama/Llama-3.2-1B and
// meta-llama/Llama-3.1-8B as their config.json files give them (rope theta 500000, Llama
// 3.1 rope_scaling, rms eps 1e-5, max_position_embeddings 131072, vocab 128256, BOS
// 128000, EOS 128001, BF16 tensors):
//
//	llama-3.2-1b: dim 2048, hidden 8192, 16 layers, 32 heads, 8 kv heads, tied, rope_scaling factor 32
//	llama-3.1-8b: dim 4096, hidden 14336, 32 layers, 32 heads, 8 kv heads, untied, rope_scaling factor 8
func Preset(name string) (Spec, error) {
	base := Spec{RopeTheta: 10000, NormEps: 1e-5, Tied: true, BOS: 1, EOS: 2, DType: safetensors.F32}
	llama3 := Spec{Vocab: 128256, MaxSeqLen: 131072, RopeTheta: 500000, NormEps: 1e-5, BOS: 128000, EOS: 128001, DType: safetensors.BF16}
	switch name {
	case "llama-3.2-1b":
		s := llama3
		s.Dim, s.Hidden, s.Layers, s.Heads, s.KVHeads, s.Tied = 2048, 8192, 16, 32, 8, true
		s.RopeScaling = &RopeScaling{Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}
		return s, nil
	case "llama-3.1-8b":
		s := llama3
		s.Dim, s.Hidden, s.Layers, s.Heads, s.KVHeads, s.Tied = 4096, 14336, 32, 32, 8, false
		s.RopeScaling = &RopeScaling{Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}
		return s, nil
	case "tiny":
		base.Dim, base.Hidden, base.Layers, base.Heads, base.KVHeads, base.Vocab, base.MaxSeqLen = 64, 172, 2, 8, 4, 512, 512
	case "15m":
		base.Dim, base.Hidden, base.Layers, base.Heads, base.KVHeads, base.Vocab, base.MaxSeqLen = 288, 768, 6, 6, 6, 32000, 256
	case "110m":
		base.Dim, base.Hidden, base.Layers, base.Heads, base.KVHeads, base.Vocab, base.MaxSeqLen = 768, 2048, 12, 12, 12, 32000, 1024
	default:
		return Spec{}, fmt.Errorf("modelfile: unknown preset %q (want %s)", name, strings.Join(PresetNames, ", "))
	}
	return base, nil
}

// InitStd is the standard deviation of RandomWeights' matrices: transformers' Llama
// initializer_range.
const InitStd = 0.02

// RandomWeights returns deterministic random weights for spec, initialised as transformers
// initialises a Llama: every matrix (embedding and classifier included) N(0, InitStd²), every
// RMSNorm weight 1. The same spec and seed give the same weights (math/rand/v2 PCG seeded with
// seed); tensors are drawn in file order: embedding, then per layer q, k, v, o, gate, up, down,
// then the classifier when untied. It panics on an invalid spec (see [Spec.Validate]).
func RandomWeights(spec Spec, seed uint64) *Weights {
	if err := spec.Validate(); err != nil {
		panic(err)
	}
	rng := rand.New(rand.NewPCG(seed, 0x853c49e6748fea9b))
	normal := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * InitStd)
		}
		return v
	}
	ones := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = 1
		}
		return v
	}
	d, q, kv, h := spec.Dim, spec.Heads*spec.HeadDim(), spec.KVDim(), spec.Hidden
	w := newWeights(spec.Layers)
	w.Embed = normal(spec.Vocab * d)
	for l := 0; l < spec.Layers; l++ {
		w.AttnNorm[l] = ones(d)
		w.Wq[l] = normal(q * d)
		w.Wk[l] = normal(kv * d)
		w.Wv[l] = normal(kv * d)
		w.Wo[l] = normal(d * q)
		w.FFNNorm[l] = ones(d)
		w.W1[l] = normal(h * d)
		w.W3[l] = normal(h * d)
		w.W2[l] = normal(d * h)
	}
	w.FinalNorm = ones(d)
	if !spec.Tied {
		w.LMHead = normal(spec.Vocab * d)
	}
	return w
}
