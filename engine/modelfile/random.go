package modelfile

import (
	"fmt"
	"math/rand/v2"

	"servelab/engine/safetensors"
)

// Preset returns a named model shape, all with rope theta 10000, rms eps 1e-5, tied
// embeddings, BOS 1, EOS 2 and F32 tensors:
//
//	tiny: dim 64, hidden 172, 2 layers, 8 heads, 4 kv heads, vocab 512, seq 512
//	15m:  dim 288, hidden 768, 6 layers, 6 heads, 6 kv heads, vocab 32000, seq 256 (TinyStories 15M)
//	110m: dim 768, hidden 2048, 12 layers, 12 heads, 12 kv heads, vocab 32000, seq 1024 (TinyStories 110M)
func Preset(name string) (Spec, error) {
	base := Spec{RopeTheta: 10000, NormEps: 1e-5, Tied: true, BOS: 1, EOS: 2, DType: safetensors.F32}
	switch name {
	case "tiny":
		base.Dim, base.Hidden, base.Layers, base.Heads, base.KVHeads, base.Vocab, base.MaxSeqLen = 64, 172, 2, 8, 4, 512, 512
	case "15m":
		base.Dim, base.Hidden, base.Layers, base.Heads, base.KVHeads, base.Vocab, base.MaxSeqLen = 288, 768, 6, 6, 6, 32000, 256
	case "110m":
		base.Dim, base.Hidden, base.Layers, base.Heads, base.KVHeads, base.Vocab, base.MaxSeqLen = 768, 2048, 12, 12, 12, 32000, 1024
	default:
		return Spec{}, fmt.Errorf("modelfile: unknown preset %q (want tiny, 15m or 110m)", name)
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
