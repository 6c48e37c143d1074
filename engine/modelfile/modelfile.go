// Package modelfile writes and reads Hugging Face format Llama model directories
// (config.json, generation_config.json, model.safetensors) with exactly the tensor names and
// shapes transformers' LlamaForCausalLM uses, converts llama2.c checkpoints into them, and
// makes deterministic random models for tests and benchmarks.
//
// Matrices are row-major [out, in], as nn.Linear stores them. Tensor names:
//
//	model.embed_tokens.weight                      [vocab, dim]
//	model.layers.{i}.input_layernorm.weight        [dim]
//	model.layers.{i}.self_attn.q_proj.weight       [heads*head_dim, dim]
//	model.layers.{i}.self_attn.k_proj.weight       [kv_heads*head_dim, dim]
//	model.layers.{i}.self_attn.v_proj.weight       [kv_heads*head_dim, dim]
//	model.layers.{i}.self_attn.o_proj.weight       [dim, heads*head_dim]
//	model.layers.{i}.post_attention_layernorm.weight [dim]
//	model.layers.{i}.mlp.gate_proj.weight          [hidden, dim]
//	model.layers.{i}.mlp.up_proj.weight            [hidden, dim]
//	model.layers.{i}.mlp.down_proj.weight          [dim, hidden]
//	model.norm.weight                              [dim]
//	lm_head.weight                                 [vocab, dim]  (absent when tied)
//
// RoPE convention: a Hugging Face Llama checkpoint is meant for rotate-half RoPE (dimension i of
// a head rotates with dimension i+head_dim/2), while llama2.c (and Meta's original checkpoints)
// rotate adjacent pairs (2i, 2i+1). [PermuteQKToHF] applies transformers'
// convert_llama_weights_to_hf row permutation to wq and wk so that a rotate-half engine computes
// the same function; [ConvertLlama2C] does it for you. Everything a [Weights] holds that is
// written by [Write] or returned by [Load] is in the Hugging Face (rotate-half) convention;
// [ReadLlama2C] alone returns the llama2.c (adjacent-pair) convention.
//
// Token ids of converted llama2.c models: BOS 1, EOS 2 (config.json "eos_token_id": 2,
// generation_config.json "eos_token_id": [2]). Beware that llama2.c's run.c does not stop on
// EOS: it stops when it samples BOS (1) again, so a reference run.c transcript ends where it
// produced a 1.
package modelfile

import (
	"fmt"

	"servelab/engine/safetensors"
)

// Spec is a Llama model's shape and the config.json values that go with it.
type Spec struct {
	Dim       int // hidden_size
	Hidden    int // intermediate_size
	Layers    int // num_hidden_layers
	Heads     int // num_attention_heads
	KVHeads   int // num_key_value_heads
	Vocab     int // vocab_size
	MaxSeqLen int // max_position_embeddings
	RopeTheta float64
	NormEps   float64 // rms_norm_eps
	Tied      bool    // tie_word_embeddings: the classifier is the token embedding
	BOS, EOS  int
	// DType is the dtype of model.safetensors' tensors: F32, F16 or BF16 ("" means F32).
	DType safetensors.DType
	// RopeScaling is config.json's rope_scaling; nil writes null (plain RoPE).
	RopeScaling *RopeScaling
}

// RopeScaling is Llama 3.1's rope_scaling ("rope_type": "llama3"), as its config.json
// writes it: inverse frequencies of wavelength above OriginalMaxPositionEmbeddings /
// LowFreqFactor divided by Factor, below OriginalMaxPositionEmbeddings / HighFreqFactor
// kept, and interpolated between (engine/model's RopeScaling computes it).
type RopeScaling struct {
	Factor                        float64
	LowFreqFactor, HighFreqFactor float64
	OriginalMaxPositionEmbeddings int
}

// validate checks the factors as transformers' _validate_llama3_parameters does.
func (r *RopeScaling) validate() error {
	if !(r.Factor >= 1) {
		return fmt.Errorf("modelfile: spec rope_scaling factor = %g, want >= 1", r.Factor)
	}
	if !(r.LowFreqFactor > 0) || !(r.HighFreqFactor > r.LowFreqFactor) {
		return fmt.Errorf("modelfile: spec rope_scaling low_freq_factor %g / high_freq_factor %g: want 0 < low < high", r.LowFreqFactor, r.HighFreqFactor)
	}
	if r.OriginalMaxPositionEmbeddings <= 0 {
		return fmt.Errorf("modelfile: spec rope_scaling original_max_position_embeddings = %d, want > 0", r.OriginalMaxPositionEmbeddings)
	}
	return nil
}

// HeadDim is Dim / Heads.
func (s Spec) HeadDim() int {
	if s.Heads <= 0 {
		return 0
	}
	return s.Dim / s.Heads
}

// KVDim is KVHeads * HeadDim.
func (s Spec) KVDim() int { return s.KVHeads * s.HeadDim() }

// dtype is DType with "" meaning F32.
func (s Spec) dtype() safetensors.DType {
	if s.DType == "" {
		return safetensors.F32
	}
	return s.DType
}

// Validate checks that the shape is consistent.
func (s Spec) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"Dim", s.Dim}, {"Hidden", s.Hidden}, {"Layers", s.Layers}, {"Heads", s.Heads}, {"KVHeads", s.KVHeads}, {"Vocab", s.Vocab}, {"MaxSeqLen", s.MaxSeqLen}} {
		if f.v <= 0 {
			return fmt.Errorf("modelfile: spec %s = %d, want > 0", f.name, f.v)
		}
	}
	if s.Dim%s.Heads != 0 {
		return fmt.Errorf("modelfile: spec Dim %d is not a multiple of Heads %d", s.Dim, s.Heads)
	}
	if s.Heads%s.KVHeads != 0 {
		return fmt.Errorf("modelfile: spec Heads %d is not a multiple of KVHeads %d", s.Heads, s.KVHeads)
	}
	if s.HeadDim()%2 != 0 {
		return fmt.Errorf("modelfile: spec head dim %d is odd; RoPE needs pairs", s.HeadDim())
	}
	if !(s.RopeTheta > 0) {
		return fmt.Errorf("modelfile: spec RopeTheta = %g, want > 0", s.RopeTheta)
	}
	if !(s.NormEps > 0) {
		return fmt.Errorf("modelfile: spec NormEps = %g, want > 0", s.NormEps)
	}
	if s.BOS < 0 || s.BOS >= s.Vocab || s.EOS < 0 || s.EOS >= s.Vocab {
		return fmt.Errorf("modelfile: spec BOS %d / EOS %d outside the vocabulary [0, %d)", s.BOS, s.EOS, s.Vocab)
	}
	switch s.dtype() {
	case safetensors.F32, safetensors.F16, safetensors.BF16:
	default:
		return fmt.Errorf("modelfile: spec DType %q: want F32, F16 or BF16", string(s.DType))
	}
	if s.RopeScaling != nil {
		return s.RopeScaling.validate()
	}
	return nil
}

// Weights are a Llama model's parameters as float32, each matrix row-major [out, in] (the
// nn.Linear layout), per-layer slices indexed by layer.
type Weights struct {
	Embed    []float32   // [Vocab, Dim]
	AttnNorm [][]float32 // [Dim]
	Wq       [][]float32 // [Heads*HeadDim, Dim]
	Wk       [][]float32 // [KVHeads*HeadDim, Dim]
	Wv       [][]float32 // [KVHeads*HeadDim, Dim]
	Wo       [][]float32 // [Dim, Heads*HeadDim]
	FFNNorm  [][]float32 // [Dim]
	W1       [][]float32 // gate_proj [Hidden, Dim]
	W2       [][]float32 // down_proj [Dim, Hidden]
	W3       [][]float32 // up_proj [Hidden, Dim]

	FinalNorm []float32 // [Dim]
	LMHead    []float32 // [Vocab, Dim]; nil when Spec.Tied
}

// tensorRef names one tensor of a model: its HF name, shape, and where it lives in Weights.
type tensorRef struct {
	name  string
	shape []int
	ptr   *[]float32
}

// tensors lists every tensor of spec in w, in HF naming. When tied, lm_head is left out.
func tensors(spec Spec, w *Weights) []tensorRef {
	d, hd := spec.Dim, spec.HeadDim()
	refs := []tensorRef{{"model.embed_tokens.weight", []int{spec.Vocab, d}, &w.Embed}}
	for i := 0; i < spec.Layers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		refs = append(refs,
			tensorRef{p + "input_layernorm.weight", []int{d}, &w.AttnNorm[i]},
			tensorRef{p + "self_attn.q_proj.weight", []int{spec.Heads * hd, d}, &w.Wq[i]},
			tensorRef{p + "self_attn.k_proj.weight", []int{spec.KVHeads * hd, d}, &w.Wk[i]},
			tensorRef{p + "self_attn.v_proj.weight", []int{spec.KVHeads * hd, d}, &w.Wv[i]},
			tensorRef{p + "self_attn.o_proj.weight", []int{d, spec.Heads * hd}, &w.Wo[i]},
			tensorRef{p + "post_attention_layernorm.weight", []int{d}, &w.FFNNorm[i]},
			tensorRef{p + "mlp.gate_proj.weight", []int{spec.Hidden, d}, &w.W1[i]},
			tensorRef{p + "mlp.up_proj.weight", []int{spec.Hidden, d}, &w.W3[i]},
			tensorRef{p + "mlp.down_proj.weight", []int{d, spec.Hidden}, &w.W2[i]},
		)
	}
	refs = append(refs, tensorRef{"model.norm.weight", []int{d}, &w.FinalNorm})
	if !spec.Tied {
		refs = append(refs, tensorRef{"lm_head.weight", []int{spec.Vocab, d}, &w.LMHead})
	}
	return refs
}

// newWeights allocates the per-layer slices of a Weights (not the tensors).
func newWeights(layers int) *Weights {
	return &Weights{
		AttnNorm: make([][]float32, layers), Wq: make([][]float32, layers), Wk: make([][]float32, layers),
		Wv: make([][]float32, layers), Wo: make([][]float32, layers), FFNNorm: make([][]float32, layers),
		W1: make([][]float32, layers), W2: make([][]float32, layers), W3: make([][]float32, layers),
	}
}

// Check reports the first tensor of w whose size does not match spec.
func (w *Weights) Check(spec Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if w == nil {
		return fmt.Errorf("modelfile: nil weights")
	}
	layered := []struct {
		name string
		v    [][]float32
	}{{"AttnNorm", w.AttnNorm}, {"Wq", w.Wq}, {"Wk", w.Wk}, {"Wv", w.Wv}, {"Wo", w.Wo}, {"FFNNorm", w.FFNNorm}, {"W1", w.W1}, {"W2", w.W2}, {"W3", w.W3}}
	for _, l := range layered {
		if len(l.v) != spec.Layers {
			return fmt.Errorf("modelfile: weights %s has %d layers, want %d", l.name, len(l.v), spec.Layers)
		}
	}
	if spec.Tied && w.LMHead != nil {
		return fmt.Errorf("modelfile: weights LMHead is set but the spec ties it to the embedding")
	}
	for _, r := range tensors(spec, w) {
		want := 1
		for _, d := range r.shape {
			want *= d
		}
		if len(*r.ptr) != want {
			return fmt.Errorf("modelfile: tensor %s has %d values, want %d for shape %v", r.name, len(*r.ptr), want, r.shape)
		}
	}
	return nil
}

// NumParams is the number of parameters of spec (tied embeddings counted once).
func (s Spec) NumParams() int {
	d, hd, L := s.Dim, s.HeadDim(), s.Layers
	perLayer := 2*d + s.Heads*hd*d + 2*s.KVHeads*hd*d + d*s.Heads*hd + 3*s.Hidden*d
	n := s.Vocab*d + L*perLayer + d
	if !s.Tied {
		n += s.Vocab * d
	}
	return n
}
