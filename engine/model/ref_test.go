package model

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"servelab/engine/safetensors"
)

// testArch is a small random model for the tests: its config and how its files are written.
type testArch struct {
	name                                       string
	arch                                       string
	dim, hidden, layers, heads, kvHeads, vocab int
	headDim                                    int // 0: dim/heads, and config.json omits head_dim
	maxPos                                     int
	theta, eps                                 float64
	tied                                       bool
	scaling                                    map[string]any // rope_scaling, nil for none
	dtype                                      safetensors.DType
	shards                                     int // 0 or 1: model.safetensors; more: an index
	blockSize                                  int // KV block size the forward tests use
}

func (a testArch) hd() int {
	if a.headDim != 0 {
		return a.headDim
	}
	return a.dim / a.heads
}

func (a testArch) bias() bool { return a.arch == ArchQwen2 }

// refModel is a testArch with random weights, held in float64 exactly as the files store
// them (after rounding to the file's dtype), for the reference forward.
type refModel struct {
	a      testArch
	names  []string // tensor names in file order
	shapes map[string][]int
	w      map[string][]float64
}

// newRefModel draws weights: embedding N(0,1), matrices N(0, 1/in) (queries twice that
// scale so attention is far from uniform), biases N(0, 0.3²), norm weights U(0.5, 1.5).
func newRefModel(a testArch, seed uint64) *refModel {
	rng := rand.New(rand.NewPCG(seed, 7))
	rm := &refModel{a: a, shapes: map[string][]int{}, w: map[string][]float64{}}
	d, hd := a.dim, a.hd()
	q, kv := a.heads*hd, a.kvHeads*hd
	round := func(v float64) float64 {
		f := float32(v)
		switch a.dtype {
		case safetensors.F16:
			f = safetensors.F16ToFloat32(safetensors.Float32ToF16(f))
		case safetensors.BF16:
			f = safetensors.BF16ToFloat32(safetensors.Float32ToBF16(f))
		}
		return float64(f)
	}
	add := func(name string, shape []int, gen func() float64) {
		n := 1
		for _, s := range shape {
			n *= s
		}
		v := make([]float64, n)
		for i := range v {
			v[i] = round(gen())
		}
		rm.names = append(rm.names, name)
		rm.shapes[name] = shape
		rm.w[name] = v
	}
	normal := func(std float64) func() float64 { return func() float64 { return rng.NormFloat64() * std } }
	norm := func() float64 { return 0.5 + rng.Float64() }
	add("model.embed_tokens.weight", []int{a.vocab, d}, normal(1))
	for l := range a.layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", []int{d}, norm)
		add(p+"self_attn.q_proj.weight", []int{q, d}, normal(2/math.Sqrt(float64(d))))
		add(p+"self_attn.k_proj.weight", []int{kv, d}, normal(1/math.Sqrt(float64(d))))
		add(p+"self_attn.v_proj.weight", []int{kv, d}, normal(1/math.Sqrt(float64(d))))
		if a.bias() {
			add(p+"self_attn.q_proj.bias", []int{q}, normal(0.3))
			add(p+"self_attn.k_proj.bias", []int{kv}, normal(0.3))
			add(p+"self_attn.v_proj.bias", []int{kv}, normal(0.3))
		}
		add(p+"self_attn.o_proj.weight", []int{d, q}, normal(1/math.Sqrt(float64(q))))
		add(p+"post_attention_layernorm.weight", []int{d}, norm)
		add(p+"mlp.gate_proj.weight", []int{a.hidden, d}, normal(1/math.Sqrt(float64(d))))
		add(p+"mlp.up_proj.weight", []int{a.hidden, d}, normal(1/math.Sqrt(float64(d))))
		add(p+"mlp.down_proj.weight", []int{d, a.hidden}, normal(1/math.Sqrt(float64(a.hidden))))
	}
	add("model.norm.weight", []int{d}, norm)
	if !a.tied {
		add("lm_head.weight", []int{a.vocab, d}, normal(1/math.Sqrt(float64(d))))
	}
	return rm
}

// config is the model's config.json as a map, for tests to alter.
func (rm *refModel) config() map[string]any {
	a := rm.a
	types := map[string]string{ArchLlama: "llama", ArchQwen2: "qwen2", ArchMistral: "mistral"}
	dtypes := map[safetensors.DType]string{"": "float32", safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16"}
	c := map[string]any{
		"architectures":           []string{a.arch},
		"model_type":              types[a.arch],
		"hidden_size":             a.dim,
		"intermediate_size":       a.hidden,
		"num_hidden_layers":       a.layers,
		"num_attention_heads":     a.heads,
		"num_key_value_heads":     a.kvHeads,
		"vocab_size":              a.vocab,
		"max_position_embeddings": a.maxPos,
		"rms_norm_eps":            a.eps,
		"rope_theta":              a.theta,
		"tie_word_embeddings":     a.tied,
		"rope_scaling":            a.scaling,
		"hidden_act":              "silu",
		"bos_token_id":            1,
		"eos_token_id":            2,
		"torch_dtype":             dtypes[a.dtype],
	}
	if a.headDim != 0 {
		c["head_dim"] = a.headDim
	}
	if a.arch == ArchMistral {
		c["sliding_window"] = nil
	}
	return c
}

// tensors returns the model's tensors encoded in its dtype, in file order.
func (rm *refModel) tensors(t testing.TB) []safetensors.Tensor {
	t.Helper()
	dt := rm.a.dtype
	if dt == "" {
		dt = safetensors.F32
	}
	out := make([]safetensors.Tensor, 0, len(rm.names))
	for _, name := range rm.names {
		v := make([]float32, len(rm.w[name]))
		for i, x := range rm.w[name] {
			v[i] = float32(x)
		}
		data, err := safetensors.Encode(dt, v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, safetensors.Tensor{Name: name, DType: dt, Shape: rm.shapes[name], Data: data})
	}
	return out
}

// write writes a Hugging Face directory for the model: config.json (after editConfig, if
// given) and its tensors (after editTensors, if given), in one file or in a.shards shards
// with an index.
func (rm *refModel) write(t testing.TB, dir string, editConfig func(map[string]any), editTensors func([]safetensors.Tensor) []safetensors.Tensor) {
	t.Helper()
	cfg := rm.config()
	if editConfig != nil {
		editConfig(cfg)
	}
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	ts := rm.tensors(t)
	if editTensors != nil {
		ts = editTensors(ts)
	}
	meta := map[string]string{"format": "pt"}
	if rm.a.shards <= 1 {
		if err := safetensors.Write(filepath.Join(dir, safetensors.SingleFileName), ts, meta); err != nil {
			t.Fatal(err)
		}
		return
	}
	weightMap := map[string]string{}
	per := (len(ts) + rm.a.shards - 1) / rm.a.shards
	for s := range rm.a.shards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, rm.a.shards)
		part := ts[min(len(ts), s*per):min(len(ts), (s+1)*per)]
		for _, tt := range part {
			weightMap[tt.Name] = name
		}
		if err := safetensors.Write(filepath.Join(dir, name), part, meta); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, safetensors.IndexFileName), idx, 0o644); err != nil {
		t.Fatal(err)
	}
}

// load writes the model into a temporary directory and loads it.
func (rm *refModel) load(t testing.TB) *Model {
	t.Helper()
	dir := t.TempDir()
	rm.write(t, dir, nil, nil)
	m, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// refInvFreq is RoPE's inverse frequencies per the config, written independently of
// invFreq: plain theta^(-2i/d), and for llama3 Meta's apply_scaling as published with
// Llama 3.1. Linear scaling is applied to positions in refRotate instead.
func (rm *refModel) refInvFreq() []float64 {
	hd := rm.a.hd()
	freqs := make([]float64, hd/2)
	for i := range freqs {
		freqs[i] = 1 / math.Pow(rm.a.theta, float64(2*i)/float64(hd))
	}
	if rm.a.scaling == nil || rm.a.scaling["rope_type"] != "llama3" {
		return freqs
	}
	scale := rm.a.scaling["factor"].(float64)
	low := rm.a.scaling["low_freq_factor"].(float64)
	high := rm.a.scaling["high_freq_factor"].(float64)
	old := float64(rm.a.scaling["original_max_position_embeddings"].(int))
	lowWavelen, highWavelen := old/low, old/high
	out := make([]float64, 0, len(freqs))
	for _, freq := range freqs {
		wavelen := 2 * math.Pi / freq
		if wavelen < highWavelen {
			out = append(out, freq)
		} else if wavelen > lowWavelen {
			out = append(out, freq/scale)
		} else {
			smooth := (old/wavelen - low) / (high - low)
			out = append(out, (1-smooth)*freq/scale+smooth*freq)
		}
	}
	return out
}

// refForward is the reference: one sequence, every position in turn, float64 throughout,
// keys and values in plain per-position slices. It returns the logits at every position.
// It shares no code with the package's forward pass.
func (rm *refModel) refForward(tokens []int32) [][]float64 {
	a := rm.a
	d, hd, H, KV := a.dim, a.hd(), a.heads, a.kvHeads
	w := rm.w
	inv := rm.refInvFreq()
	posScale := 1.0
	if a.scaling != nil && a.scaling["rope_type"] == "linear" {
		posScale = 1 / a.scaling["factor"].(float64)
	}
	linear := func(name string, x []float64) []float64 {
		mat := w[name]
		in := len(x)
		out := make([]float64, len(mat)/in)
		for o := range out {
			var s float64
			for i, v := range x {
				s += mat[o*in+i] * v
			}
			out[o] = s
		}
		if b, ok := w[name[:len(name)-len("weight")]+"bias"]; ok {
			for o := range out {
				out[o] += b[o]
			}
		}
		return out
	}
	rmsnorm := func(x, weight []float64) []float64 {
		var ss float64
		for _, v := range x {
			ss += v * v
		}
		r := 1 / math.Sqrt(ss/float64(len(x))+a.eps)
		out := make([]float64, len(x))
		for i, v := range x {
			out[i] = v * r * weight[i]
		}
		return out
	}
	rotate := func(v []float64, pos int) { // rotate-half, one head
		half := len(v) / 2
		for i := range half {
			theta := float64(pos) * posScale * inv[i]
			x0, x1 := v[i], v[i+half]
			v[i] = x0*math.Cos(theta) - x1*math.Sin(theta)
			v[i+half] = x1*math.Cos(theta) + x0*math.Sin(theta)
		}
	}
	keys := make([][][]float64, a.layers) // [layer][pos][kv*hd]
	vals := make([][][]float64, a.layers)
	var logits [][]float64
	for pos, tok := range tokens {
		x := append([]float64(nil), w["model.embed_tokens.weight"][int(tok)*d:(int(tok)+1)*d]...)
		for l := range a.layers {
			p := fmt.Sprintf("model.layers.%d.", l)
			xn := rmsnorm(x, w[p+"input_layernorm.weight"])
			q := linear(p+"self_attn.q_proj.weight", xn)
			k := linear(p+"self_attn.k_proj.weight", xn)
			v := linear(p+"self_attn.v_proj.weight", xn)
			for h := range H {
				rotate(q[h*hd:(h+1)*hd], pos)
			}
			for h := range KV {
				rotate(k[h*hd:(h+1)*hd], pos)
			}
			keys[l] = append(keys[l], k)
			vals[l] = append(vals[l], v)
			att := make([]float64, H*hd)
			for h := range H {
				kvh := h / (H / KV)
				qh := q[h*hd : (h+1)*hd]
				scores := make([]float64, pos+1)
				maxS := math.Inf(-1)
				for j := 0; j <= pos; j++ {
					var s float64
					for i := range hd {
						s += qh[i] * keys[l][j][kvh*hd+i]
					}
					scores[j] = s / math.Sqrt(float64(hd))
					maxS = max(maxS, scores[j])
				}
				var sum float64
				for j := range scores {
					scores[j] = math.Exp(scores[j] - maxS)
					sum += scores[j]
				}
				for j := range scores {
					for i := range hd {
						att[h*hd+i] += scores[j] / sum * vals[l][j][kvh*hd+i]
					}
				}
			}
			o := linear(p+"self_attn.o_proj.weight", att)
			for i := range x {
				x[i] += o[i]
			}
			xn = rmsnorm(x, w[p+"post_attention_layernorm.weight"])
			g := linear(p+"mlp.gate_proj.weight", xn)
			u := linear(p+"mlp.up_proj.weight", xn)
			for i := range g {
				g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
			}
			down := linear(p+"mlp.down_proj.weight", g)
			for i := range x {
				x[i] += down[i]
			}
		}
		xf := rmsnorm(x, w["model.norm.weight"])
		head := "lm_head.weight"
		if a.tied {
			head = "model.embed_tokens.weight"
		}
		logits = append(logits, linear(head, xf))
	}
	return logits
}

// relErr is the error measure of the logits tests: max_i |got_i - want_i| / max(1,
// max_i |want_i|), the largest absolute error relative to the row's largest magnitude
// (floored at 1).
func relErr(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var maxDiff, maxAbs float64
	for i, w := range want {
		diff := math.Abs(float64(got[i]) - w)
		if math.IsNaN(diff) {
			return math.Inf(1)
		}
		maxDiff = max(maxDiff, diff)
		maxAbs = max(maxAbs, math.Abs(w))
	}
	return maxDiff / max(1, maxAbs)
}

// tolerance bounds relErr in every logits comparison.
const tolerance = 1e-4

func checkLogits(t *testing.T, what string, got []float32, want []float64) {
	t.Helper()
	if e := relErr(got, want); !(e <= tolerance) {
		t.Errorf("%s: logits relative error %.3g > %g (got[:4] %v, want[:4] %v)", what, e, tolerance, got[:min(4, len(got))], want[:min(4, len(want))])
	}
}

// randomTokens returns n token ids in [0, vocab).
func randomTokens(rng *rand.Rand, n, vocab int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(rng.IntN(vocab))
	}
	return out
}

// poisonCache fills the cache with NaN, so that reading a slot no step wrote shows up in
// the logits.
func poisonCache(c *KVCache) {
	nan := float32(math.NaN())
	for l := range c.k {
		for i := range c.k[l] {
			c.k[l][i], c.v[l][i] = nan, nan
		}
	}
}

// sortedKeys returns a map's keys in order, for deterministic iteration.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
