package modelfile

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/engine/safetensors"
)

func TestPresets(t *testing.T) {
	tests := []struct {
		name                                              string
		dim, hidden, layers, heads, kv, vocab, seq, param int
	}{
		{"tiny", 64, 172, 2, 8, 4, 512, 512, 0},
		{"15m", 288, 768, 6, 6, 6, 32000, 256, 15191712},
		{"110m", 768, 2048, 12, 12, 12, 32000, 1024, 109529856},
	}
	for _, tt := range tests {
		s, err := Preset(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		want := Spec{Dim: tt.dim, Hidden: tt.hidden, Layers: tt.layers, Heads: tt.heads, KVHeads: tt.kv, Vocab: tt.vocab,
			MaxSeqLen: tt.seq, RopeTheta: 10000, NormEps: 1e-5, Tied: true, BOS: 1, EOS: 2, DType: safetensors.F32}
		if diff := cmp.Diff(want, s); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if tt.param != 0 && s.NumParams() != tt.param {
			t.Errorf("%s: NumParams = %d, want %d", tt.name, s.NumParams(), tt.param)
		}
	}
	if _, err := Preset("7b"); err == nil {
		t.Errorf("Preset(7b) succeeded")
	}
}

func TestSpecValidate(t *testing.T) {
	good, _ := Preset("tiny")
	tests := []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"zero dim", func(s *Spec) { s.Dim = 0 }, "spec Dim = 0, want > 0"},
		{"dim not multiple", func(s *Spec) { s.Dim = 60 }, "spec Dim 60 is not a multiple of Heads 8"},
		{"gqa", func(s *Spec) { s.KVHeads = 3 }, "spec Heads 8 is not a multiple of KVHeads 3"},
		{"odd head", func(s *Spec) { s.Dim, s.Heads, s.KVHeads = 24, 8, 8 }, "spec head dim 3 is odd"},
		{"eos", func(s *Spec) { s.EOS = 512 }, "spec BOS 1 / EOS 512 outside the vocabulary [0, 512)"},
		{"dtype", func(s *Spec) { s.DType = safetensors.I8 }, `spec DType "I8": want F32, F16 or BF16`},
		{"theta", func(s *Spec) { s.RopeTheta = 0 }, "spec RopeTheta = 0, want > 0"},
	}
	for _, tt := range tests {
		s := good
		tt.edit(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestRandomWeights(t *testing.T) {
	spec, _ := Preset("tiny")
	a, b := RandomWeights(spec, 7), RandomWeights(spec, 7)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("same seed, different weights")
	}
	if c := RandomWeights(spec, 8); cmp.Equal(a.Wq, c.Wq) {
		t.Errorf("different seeds, same weights")
	}
	if err := a.Check(spec); err != nil {
		t.Fatal(err)
	}
	if a.LMHead != nil {
		t.Errorf("tied spec got an LMHead")
	}
	var sum, sq float64
	for _, v := range a.Embed {
		sum += float64(v)
		sq += float64(v) * float64(v)
	}
	n := float64(len(a.Embed))
	mean, std := sum/n, math.Sqrt(sq/n-(sum/n)*(sum/n))
	if math.Abs(mean) > 1e-3 || math.Abs(std-InitStd) > 1e-3 {
		t.Errorf("embedding mean %g std %g, want 0, %g", mean, std, InitStd)
	}
	for l := range a.AttnNorm {
		for _, v := range append(slices.Clone(a.AttnNorm[l]), a.FFNNorm[l]...) {
			if v != 1 {
				t.Fatalf("layer %d norm weight %g, want 1", l, v)
			}
		}
	}
	spec.Tied = false
	if u := RandomWeights(spec, 7); len(u.LMHead) != spec.Vocab*spec.Dim {
		t.Errorf("untied LMHead has %d values", len(u.LMHead))
	}
}

// hfNames is every tensor name LlamaForCausalLM has for spec, written out independently of the
// package.
func hfNames(spec Spec) []string {
	names := []string{"model.embed_tokens.weight", "model.norm.weight"}
	if !spec.Tied {
		names = append(names, "lm_head.weight")
	}
	for i := 0; i < spec.Layers; i++ {
		for _, s := range []string{"input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
			"self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
			names = append(names, "model.layers."+strconv.Itoa(i)+"."+s+".weight")
		}
	}
	slices.Sort(names)
	return names
}

const tinyConfigJSON = `{
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "head_dim": 8,
  "hidden_act": "silu",
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 172,
  "max_position_embeddings": 512,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 8,
  "num_hidden_layers": 2,
  "num_key_value_heads": 4,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "float32",
  "use_cache": true,
  "vocab_size": 512
}
`

const tinyGenerationConfigJSON = `{
  "bos_token_id": 1,
  "do_sample": false,
  "eos_token_id": [
    2
  ]
}
`

// roundTo returns v as it reads back after encoding as dt.
func roundTo(dt safetensors.DType, v []float32) []float32 {
	if v == nil {
		return nil
	}
	switch dt {
	case safetensors.F16:
		out := make([]float32, len(v))
		for i, x := range v {
			out[i] = safetensors.F16ToFloat32(safetensors.Float32ToF16(x))
		}
		return out
	case safetensors.BF16:
		out := make([]float32, len(v))
		for i, x := range v {
			out[i] = safetensors.BF16ToFloat32(safetensors.Float32ToBF16(x))
		}
		return out
	}
	return v
}

func TestWriteLoad(t *testing.T) {
	base, _ := Preset("tiny")
	for _, tc := range []struct {
		dt   safetensors.DType
		tied bool
	}{{safetensors.F32, true}, {safetensors.F32, false}, {safetensors.F16, true}, {safetensors.BF16, false}} {
		t.Run(string(tc.dt)+map[bool]string{true: "-tied", false: "-untied"}[tc.tied], func(t *testing.T) {
			spec := base
			spec.DType, spec.Tied = tc.dt, tc.tied
			w := RandomWeights(spec, 3)
			dir := filepath.Join(t.TempDir(), "a", "model")
			if err := Write(dir, spec, w); err != nil {
				t.Fatal(err)
			}
			set, err := safetensors.OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(hfNames(spec), set.Names()); diff != "" {
				t.Errorf("tensor names (-want +got):\n%s", diff)
			}
			shapes := map[string][]int{
				"model.embed_tokens.weight":                      {512, 64},
				"model.layers.1.self_attn.q_proj.weight":         {64, 64},
				"model.layers.1.self_attn.k_proj.weight":         {32, 64},
				"model.layers.1.self_attn.v_proj.weight":         {32, 64},
				"model.layers.1.self_attn.o_proj.weight":         {64, 64},
				"model.layers.0.mlp.gate_proj.weight":            {172, 64},
				"model.layers.0.mlp.up_proj.weight":              {172, 64},
				"model.layers.0.mlp.down_proj.weight":            {64, 172},
				"model.layers.0.post_attention_layernorm.weight": {64},
			}
			for name, want := range shapes {
				tn, _ := set.Tensor(name)
				if tn == nil || !slices.Equal(tn.Shape, want) || tn.DType != tc.dt {
					t.Errorf("%s = %+v, want shape %v dtype %s", name, tn, want, tc.dt)
				}
			}
			if md := set.Files[0].Metadata; md["format"] != "pt" {
				t.Errorf("metadata %v, want format pt", md)
			}
			gotSpec, got, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(spec, gotSpec); diff != "" {
				t.Errorf("spec (-want +got):\n%s", diff)
			}
			want := *w
			want.Embed = roundTo(tc.dt, w.Embed)
			want.LMHead = roundTo(tc.dt, w.LMHead)
			for _, pp := range []*[][]float32{&want.Wq, &want.Wk, &want.Wv, &want.Wo, &want.W1, &want.W2, &want.W3} {
				layers := make([][]float32, len(*pp))
				for l, v := range *pp {
					layers[l] = roundTo(tc.dt, v)
				}
				*pp = layers
			}
			if diff := cmp.Diff(&want, got); diff != "" {
				t.Errorf("weights differ after Write/Load: %.2000s", diff)
			}
			// Guard against roundTo hiding a mix-up: gate and up differ.
			if cmp.Equal(got.W1[0], got.W3[0]) {
				t.Errorf("gate and up are equal")
			}
		})
	}

	// config.json and generation_config.json, byte for byte.
	dir := t.TempDir()
	if err := Write(dir, base, RandomWeights(base, 1)); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{ConfigFile: tinyConfigJSON, GenerationConfigFile: tinyGenerationConfigJSON} {
		got, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, string(got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", file, diff)
		}
	}
}

func TestWriteRejects(t *testing.T) {
	spec, _ := Preset("tiny")
	w := RandomWeights(spec, 1)
	bad := *w
	bad.Wk = slices.Clone(w.Wk)
	bad.Wk[1] = w.Wk[1][:10]
	dir := t.TempDir()
	if err := Write(dir, spec, &bad); err == nil || !strings.Contains(err.Error(), "model.layers.1.self_attn.k_proj.weight has 10 values, want 2048 for shape [32 64]") {
		t.Errorf("short Wk: err = %v", err)
	}
	bad = *w
	bad.LMHead = w.Embed
	if err := Write(dir, spec, &bad); err == nil || !strings.Contains(err.Error(), "LMHead is set but the spec ties it") {
		t.Errorf("LMHead with tied spec: err = %v", err)
	}
	bad = *w
	bad.W2 = w.W2[:1]
	if err := Write(dir, spec, &bad); err == nil || !strings.Contains(err.Error(), "weights W2 has 1 layers, want 2") {
		t.Errorf("missing layer: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, WeightsFile)); err == nil {
		t.Errorf("model written despite errors")
	}
}

func TestPyFloat(t *testing.T) {
	for v, want := range map[float64]string{1e-5: "1e-05", 1e-6: "1e-06", 10000: "10000.0", 500000: "500000.0", 0.02: "0.02",
		0: "0.0", 1e16: "1e+16", 1.5e-4: "0.00015", 1234567.25: "1234567.25", -2.5e-7: "-2.5e-07"} {
		got, err := pyFloat(v).MarshalJSON()
		if err != nil || string(got) != want {
			t.Errorf("pyFloat(%g) = %s, %v; want %s", v, got, err, want)
		}
	}
}

func TestPermuteRotaryRows(t *testing.T) {
	const heads, hd, cols = 2, 8, 3
	w := make([]float32, heads*hd*cols)
	for r := 0; r < heads*hd; r++ {
		for c := 0; c < cols; c++ {
			w[r*cols+c] = float32(r*10 + c)
		}
	}
	p := PermuteRotaryRows(w, heads, hd, cols)
	var order []int
	for r := 0; r < heads*hd; r++ {
		order = append(order, int(p[r*cols])/10)
		if p[r*cols+2] != p[r*cols]+2 {
			t.Fatalf("row %d was not moved whole", r)
		}
	}
	want := []int{0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15}
	if diff := cmp.Diff(want, order); diff != "" {
		t.Errorf("row order (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(w, UnpermuteRotaryRows(p, heads, hd, cols)); diff != "" {
		t.Errorf("unpermute(permute(w)) != w")
	}
}

// matVec is y = W x for row-major W [len(y), len(x)], in float64.
func matVec(w []float32, x []float64, rows int) []float64 {
	cols := len(x)
	y := make([]float64, rows)
	for r := range y {
		var s float64
		for c, xv := range x {
			s += float64(w[r*cols+c]) * xv
		}
		y[r] = s
	}
	return y
}

// ropeAdjacent rotates pairs (2i, 2i+1) of each head, as llama2.c's run.c does.
func ropeAdjacent(v []float64, hd, pos int, theta float64) {
	for h := 0; h < len(v)/hd; h++ {
		for i := 0; i < hd/2; i++ {
			a := float64(pos) * math.Pow(theta, -float64(2*i)/float64(hd))
			c, s := math.Cos(a), math.Sin(a)
			x0, x1 := v[h*hd+2*i], v[h*hd+2*i+1]
			v[h*hd+2*i], v[h*hd+2*i+1] = x0*c-x1*s, x0*s+x1*c
		}
	}
}

// ropeHalf rotates dims (i, i+hd/2) of each head, as transformers' apply_rotary_pos_emb does.
func ropeHalf(v []float64, hd, pos int, theta float64) {
	for h := 0; h < len(v)/hd; h++ {
		for i := 0; i < hd/2; i++ {
			a := float64(pos) * math.Pow(theta, -float64(2*i)/float64(hd))
			c, s := math.Cos(a), math.Sin(a)
			x1, x2 := v[h*hd+i], v[h*hd+i+hd/2]
			v[h*hd+i], v[h*hd+i+hd/2] = x1*c-x2*s, x2*c+x1*s
		}
	}
}

// scores is q·k/sqrt(hd) per query head against its grouped kv head.
func scores(q, k []float64, heads, kvHeads, hd int) []float64 {
	out := make([]float64, heads)
	for h := range out {
		kh := h / (heads / kvHeads)
		var s float64
		for i := 0; i < hd; i++ {
			s += q[h*hd+i] * k[kh*hd+i]
		}
		out[h] = s / math.Sqrt(float64(hd))
	}
	return out
}

func randVec(rng *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	return v
}

func TestPermutationPreservesAttentionScores(t *testing.T) {
	spec, _ := Preset("tiny")
	spec.Layers = 1
	w := RandomWeights(spec, 11)
	hf := PermuteQKToHF(spec, w)
	if !cmp.Equal(hf.Wv, w.Wv) || &hf.Wv[0][0] != &w.Wv[0][0] {
		t.Errorf("Wv was changed or copied")
	}
	hd, kvDim := spec.HeadDim(), spec.KVDim()
	rng := rand.New(rand.NewPCG(1, 2))
	permutedDiffers := false
	for _, pp := range [][2]int{{0, 0}, {1, 0}, {5, 3}, {17, 17}, {200, 31}, {511, 2}} {
		x, y := randVec(rng, spec.Dim), randVec(rng, spec.Dim) // query and key positions' inputs
		q, k := matVec(w.Wq[0], x, spec.Dim), matVec(w.Wk[0], y, kvDim)
		ropeAdjacent(q, hd, pp[0], spec.RopeTheta)
		ropeAdjacent(k, hd, pp[1], spec.RopeTheta)
		want := scores(q, k, spec.Heads, spec.KVHeads, hd)

		q2, k2 := matVec(hf.Wq[0], x, spec.Dim), matVec(hf.Wk[0], y, kvDim)
		ropeHalf(q2, hd, pp[0], spec.RopeTheta)
		ropeHalf(k2, hd, pp[1], spec.RopeTheta)
		got := scores(q2, k2, spec.Heads, spec.KVHeads, hd)
		if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) <= 1e-12*(1+math.Abs(a)) })); diff != "" {
			t.Errorf("positions %v: scores (-adjacent/original +rotate-half/permuted):\n%s", pp, diff)
		}

		// Control: rotate-half on the unpermuted weights is a different function.
		q3, k3 := matVec(w.Wq[0], x, spec.Dim), matVec(w.Wk[0], y, kvDim)
		ropeHalf(q3, hd, pp[0], spec.RopeTheta)
		ropeHalf(k3, hd, pp[1], spec.RopeTheta)
		for h, s := range scores(q3, k3, spec.Heads, spec.KVHeads, hd) {
			if math.Abs(s-want[h]) > 1e-6 {
				permutedDiffers = true
			}
		}
	}
	if !permutedDiffers {
		t.Errorf("control failed: rotate-half on unpermuted weights gave the same scores")
	}
	back := PermuteQKFromHF(spec, hf)
	if !cmp.Equal(back.Wq, w.Wq) || !cmp.Equal(back.Wk, w.Wk) {
		t.Errorf("PermuteQKFromHF does not invert PermuteQKToHF")
	}
}

// encodeLlama2C writes spec and w in llama2.c's format (freq_cis filled with a marker value).
func encodeLlama2C(spec Spec, w *Weights) []byte {
	vocab := spec.Vocab
	if !spec.Tied {
		vocab = -vocab
	}
	var b []byte
	for _, v := range []int{spec.Dim, spec.Hidden, spec.Layers, spec.Heads, spec.KVHeads, vocab, spec.MaxSeqLen} {
		b = binary.LittleEndian.AppendUint32(b, uint32(int32(v)))
	}
	put := func(vs ...[]float32) {
		for _, v := range vs {
			b = append(b, safetensors.EncodeF32(v)...)
		}
	}
	put(w.Embed)
	for _, layers := range [][][]float32{w.AttnNorm, w.Wq, w.Wk, w.Wv, w.Wo, w.FFNNorm, w.W1, w.W2, w.W3} {
		put(layers...)
	}
	put(w.FinalNorm)
	freq := make([]float32, spec.MaxSeqLen*spec.HeadDim()/2)
	for i := range freq {
		freq[i] = 42
	}
	put(freq, freq)
	if !spec.Tied {
		put(w.LMHead)
	}
	return b
}

func TestReadLlama2C(t *testing.T) {
	spec, _ := Preset("tiny")
	spec.Layers, spec.MaxSeqLen = 2, 16
	dir := t.TempDir()
	for _, tied := range []bool{true, false} {
		spec.Tied = tied
		w := RandomWeights(spec, 5)
		path := filepath.Join(dir, "m.bin")
		if err := os.WriteFile(path, encodeLlama2C(spec, w), 0o644); err != nil {
			t.Fatal(err)
		}
		gotSpec, got, err := ReadLlama2C(path)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(spec, gotSpec); diff != "" {
			t.Errorf("tied=%v spec (-want +got):\n%s", tied, diff)
		}
		if diff := cmp.Diff(w, got); diff != "" {
			t.Errorf("tied=%v: weights differ", tied)
		}
	}

	spec.Tied = true
	good := encodeLlama2C(spec, RandomWeights(spec, 5))
	header := func(vals ...int32) []byte {
		var b []byte
		for _, v := range vals {
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		}
		return b
	}
	untiedHeader := slices.Clone(good)
	negVocab := int32(-512)
	binary.LittleEndian.PutUint32(untiedHeader[20:], uint32(negVocab))
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "0 bytes, too short for the 28-byte llama2.c header"},
		{"magic", header(0x616b3432, 1, 0, 0, 0, 0, 0), `llama2.c export format version 1 (magic "ak42") is not supported`},
		{"bad header", header(64, 172, 2, 7, 4, 512, 16), "spec Dim 64 is not a multiple of Heads 7"},
		{"huge header", header(1<<30, 1<<30, 1<<30, 1<<20, 1<<20, 1<<30, 1<<30), "field token_embedding is too large for any file"},
		{"truncated header only", header(64, 172, 2, 8, 4, 512, 16), "truncated: field token_embedding needs 32768 floats (131072 bytes) at offset 28, but only 0 bytes remain"},
		{"truncated in w2", good[:28+4*(512*64+2*64+2*64*64+2*2*32*64+2*64*64+2*64+2*172*64+100)], "truncated: field w2 needs 22016 floats (88064 bytes) at offset"},
		{"truncated freq", good[:len(good)-4], "truncated: field freq_cis_imag needs 64 floats"},
		{"trailing", append(slices.Clone(good), 0, 0, 0, 0), "4 trailing bytes after the last field freq_cis_imag"},
		{"untied missing wcls", untiedHeader, "truncated: field wcls needs 32768 floats"},
		{"wcls present but tied", append(slices.Clone(good), make([]byte, 4*512*64)...), "that is exactly an untied classifier"},
	}
	for _, tt := range tests {
		path := filepath.Join(dir, "bad.bin")
		if err := os.WriteFile(path, tt.data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, err := ReadLlama2C(path)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v, want it to name %s and contain %q", tt.name, err, path, tt.want)
		}
	}
}

// fixturePath finds the stories260K llama2.c checkpoint; the shared fixtures sit beside the
// repository (../shared from its root) or inside it.
func fixturePath(t *testing.T, name string) string {
	t.Helper()
	for _, p := range []string{"../../../shared/fixtures/llama2c-260k/", "../../shared/fixtures/llama2c-260k/"} {
		if _, err := os.Stat(p + name); err == nil {
			return p + name
		}
	}
	t.Skipf("fixture shared/fixtures/llama2c-260k/%s not found beside or inside the repository; skipping", name)
	return ""
}

// rawLlama2C reads the fixture's float32 arrays by hand, independently of ReadLlama2C.
func rawLlama2C(t *testing.T, data []byte) (hdr [7]int, fields map[string][]float32) {
	for i := range hdr {
		hdr[i] = int(int32(binary.LittleEndian.Uint32(data[4*i:])))
	}
	dim, hidden, L, heads, kv, vocab, seq := hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6]
	kvDim := dim * kv / heads
	fields = map[string][]float32{}
	off := 28
	for _, f := range []struct {
		name string
		n    int
	}{{"emb", vocab * dim}, {"rms_att", L * dim}, {"wq", L * dim * dim}, {"wk", L * dim * kvDim}, {"wv", L * dim * kvDim},
		{"wo", L * dim * dim}, {"rms_ffn", L * dim}, {"w1", L * hidden * dim}, {"w2", L * dim * hidden}, {"w3", L * hidden * dim},
		{"rms_final", dim}, {"freq", seq * (dim / heads)}} {
		v := make([]float32, f.n)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[off+4*i:]))
		}
		fields[f.name] = v
		off += 4 * f.n
	}
	if off != len(data) {
		t.Fatalf("fixture: %d bytes accounted for, file has %d", off, len(data))
	}
	return hdr, fields
}

func TestConvertLlama2CFixture(t *testing.T) {
	path := fixturePath(t, "model.bin")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := ConvertLlama2C(path, out); err != nil {
		t.Fatal(err)
	}
	spec, err := ReadConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{Dim: 64, Hidden: 172, Layers: 5, Heads: 8, KVHeads: 4, Vocab: 512, MaxSeqLen: 512, RopeTheta: 10000,
		NormEps: 1e-5, Tied: true, BOS: 1, EOS: 2, DType: safetensors.F32}
	if diff := cmp.Diff(want, spec); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}

	hdr, raw := rawLlama2C(t, data)
	dim, hidden, L := hdr[0], hdr[1], hdr[2]
	hd, kvDim := dim/hdr[3], dim*hdr[4]/hdr[3]
	// permuted(m, heads) reorders each head's rows to [0,2,4,..,1,3,5,..], written out directly.
	permuted := func(m []float32, heads int) []float32 {
		var o []float32
		for h := 0; h < heads; h++ {
			for _, parity := range []int{0, 1} {
				for r := parity; r < hd; r += 2 {
					row := h*hd + r
					o = append(o, m[row*dim:(row+1)*dim]...)
				}
			}
		}
		return o
	}
	layer := func(name string, l, n int) []float32 { return raw[name][l*n : (l+1)*n] }
	wantT := map[string][]float32{"model.embed_tokens.weight": raw["emb"], "model.norm.weight": raw["rms_final"]}
	for l := 0; l < L; l++ {
		p := "model.layers." + strconv.Itoa(l) + "."
		wantT[p+"input_layernorm.weight"] = layer("rms_att", l, dim)
		wantT[p+"post_attention_layernorm.weight"] = layer("rms_ffn", l, dim)
		wantT[p+"self_attn.q_proj.weight"] = permuted(layer("wq", l, dim*dim), hdr[3])
		wantT[p+"self_attn.k_proj.weight"] = permuted(layer("wk", l, kvDim*dim), hdr[4])
		wantT[p+"self_attn.v_proj.weight"] = layer("wv", l, kvDim*dim)
		wantT[p+"self_attn.o_proj.weight"] = layer("wo", l, dim*dim)
		wantT[p+"mlp.gate_proj.weight"] = layer("w1", l, hidden*dim)
		wantT[p+"mlp.down_proj.weight"] = layer("w2", l, dim*hidden)
		wantT[p+"mlp.up_proj.weight"] = layer("w3", l, hidden*dim)
	}
	set, err := safetensors.OpenDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(hfNames(spec), set.Names()); diff != "" {
		t.Errorf("tensor names (-want +got):\n%s", diff)
	}
	for name, wv := range wantT {
		tn, _ := set.Tensor(name)
		if tn == nil || tn.DType != safetensors.F32 {
			t.Fatalf("%s: %+v", name, tn)
		}
		got, err := tn.Float32()
		if err != nil {
			t.Fatal(err)
		}
		// Compare bit patterns: exactness, NaN-safe.
		if !slices.Equal(bitsOf(wv), bitsOf(got)) {
			t.Errorf("%s differs from the checkpoint", name)
		}
	}
	if q, _ := set.Tensor("model.layers.0.self_attn.q_proj.weight"); slices.Equal(bitsOf(layer("wq", 0, dim*dim)), bitsOf(mustF32(t, q))) {
		t.Errorf("q_proj was not permuted")
	}

	// End to end: a rotate-half float64 forward pass over the written HF files reproduces run.c's
	// logits at positions 0..2.
	lspec, w, err := Load(out)
	if err != nil {
		t.Fatal(err)
	}
	checkLogits(t, lspec, w, fixturePath(t, "logits_pos0-2.txt"))
}

func bitsOf(v []float32) []uint32 {
	b := make([]uint32, len(v))
	for i, x := range v {
		b[i] = math.Float32bits(x)
	}
	return b
}

func mustF32(t *testing.T, tn *safetensors.Tensor) []float32 {
	v, err := tn.Float32()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func rmsnorm(x []float64, g []float32, eps float64) []float64 {
	var ss float64
	for _, v := range x {
		ss += v * v
	}
	r := 1 / math.Sqrt(ss/float64(len(x))+eps)
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = v * r * float64(g[i])
	}
	return out
}

// checkLogits runs a minimal float64 Llama (rotate-half RoPE, GQA) on the HF weights and compares
// with the reference logits file: lines "pos P token T logits v0 v1 ...".
func checkLogits(t *testing.T, s Spec, w *Weights, refPath string) {
	f, err := os.Open(refPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hd, kvDim := s.HeadDim(), s.KVDim()
	keys := make([][][]float64, s.Layers)
	vals := make([][][]float64, s.Layers)
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 5+s.Vocab || fs[0] != "pos" || fs[2] != "token" || fs[4] != "logits" {
			t.Fatalf("unexpected reference line %.60q", sc.Text())
		}
		pos, _ := strconv.Atoi(fs[1])
		tok, _ := strconv.Atoi(fs[3])
		x := make([]float64, s.Dim)
		for i := range x {
			x[i] = float64(w.Embed[tok*s.Dim+i])
		}
		for l := 0; l < s.Layers; l++ {
			xb := rmsnorm(x, w.AttnNorm[l], s.NormEps)
			q, k, v := matVec(w.Wq[l], xb, s.Dim), matVec(w.Wk[l], xb, kvDim), matVec(w.Wv[l], xb, kvDim)
			ropeHalf(q, hd, pos, s.RopeTheta)
			ropeHalf(k, hd, pos, s.RopeTheta)
			keys[l] = append(keys[l], k)
			vals[l] = append(vals[l], v)
			att := make([]float64, s.Dim)
			for h := 0; h < s.Heads; h++ {
				kh := h / (s.Heads / s.KVHeads)
				sc := make([]float64, pos+1)
				maxS := math.Inf(-1)
				for p := 0; p <= pos; p++ {
					var d float64
					for i := 0; i < hd; i++ {
						d += q[h*hd+i] * keys[l][p][kh*hd+i]
					}
					sc[p] = d / math.Sqrt(float64(hd))
					maxS = max(maxS, sc[p])
				}
				var sum float64
				for p := range sc {
					sc[p] = math.Exp(sc[p] - maxS)
					sum += sc[p]
				}
				for p := range sc {
					for i := 0; i < hd; i++ {
						att[h*hd+i] += sc[p] / sum * vals[l][p][kh*hd+i]
					}
				}
			}
			o := matVec(w.Wo[l], att, s.Dim)
			for i := range x {
				x[i] += o[i]
			}
			xb = rmsnorm(x, w.FFNNorm[l], s.NormEps)
			g, u := matVec(w.W1[l], xb, s.Hidden), matVec(w.W3[l], xb, s.Hidden)
			for i := range g {
				g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
			}
			d := matVec(w.W2[l], g, s.Dim)
			for i := range x {
				x[i] += d[i]
			}
		}
		x = rmsnorm(x, w.FinalNorm, s.NormEps)
		cls := w.LMHead
		if s.Tied {
			cls = w.Embed
		}
		logits := matVec(cls, x, s.Vocab)
		worst := 0.0
		for i, l := range logits {
			ref, err := strconv.ParseFloat(fs[5+i], 64)
			if err != nil {
				t.Fatal(err)
			}
			worst = max(worst, math.Abs(ref-l))
		}
		if worst > 1e-4 {
			t.Errorf("pos %d: logits differ from run.c's by up to %g", pos, worst)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestReadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(cfg map[string]any) {
		b, _ := json.Marshal(cfg)
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := func() map[string]any {
		return map[string]any{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
			"num_attention_heads": 8, "vocab_size": 512, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
			"rope_theta": 500000.0, "bos_token_id": 0, "eos_token_id": []int{3, 4}, "dtype": "bfloat16"}
	}
	write(base())
	got, err := ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{Dim: 64, Hidden: 172, Layers: 2, Heads: 8, KVHeads: 8, Vocab: 512, MaxSeqLen: 128, RopeTheta: 500000,
		NormEps: 1e-6, BOS: 0, EOS: 3, DType: safetensors.BF16}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	for _, tt := range []struct {
		key  string
		val  any
		want string
	}{
		{"rope_scaling", map[string]any{"rope_type": "llama3"}, "rope_scaling"},
		{"model_type", "mistral", `model_type "mistral"`},
		{"head_dim", 16, "head_dim 16"},
		{"hidden_size", nil, "hidden_size is missing"},
		{"hidden_act", "gelu", `hidden_act "gelu"`},
		{"num_key_value_heads", 3, "not a multiple of KVHeads 3"},
	} {
		cfg := base()
		if tt.val == nil {
			delete(cfg, tt.key)
		} else {
			cfg[tt.key] = tt.val
		}
		write(cfg)
		if _, err := ReadConfig(dir); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s=%v: err = %v, want %q", tt.key, tt.val, err, tt.want)
		}
	}
}

func TestWriteLlama2CRoundTrip(t *testing.T) {
	for _, tied := range []bool{true, false} {
		spec, err := Preset("tiny")
		if err != nil {
			t.Fatal(err)
		}
		spec.Tied = tied
		w := RandomWeights(spec, 3)
		path := filepath.Join(t.TempDir(), "model.bin")
		if err := WriteLlama2C(path, spec, w); err != nil {
			t.Fatal(err)
		}
		gotSpec, got, err := ReadLlama2C(path)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(spec, gotSpec); diff != "" {
			t.Errorf("tied=%v spec (-want +got)\n%s", tied, diff)
		}
		// ReadLlama2C returns llama2.c order; back in HF order it must be the original.
		if diff := cmp.Diff(w, PermuteQKToHF(gotSpec, got)); diff != "" {
			t.Errorf("tied=%v weights differ (-want +got)\n%s", tied, diff)
		}
	}
}

// TestWriteRandomRefusesHugeSpecs: a spec (from a hostile config.json) whose tensors
// overflow or exceed the bounds is refused before anything is allocated or written;
// model synth --config panicked in makeslice. 2^30 layers is not listed layer by layer.
func TestWriteRandomRefusesHugeSpecs(t *testing.T) {
	good, _ := Preset("tiny")
	for _, tt := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"huge tensor", func(s *Spec) { s.Dim, s.Hidden, s.Vocab = 1<<22, 1<<22, 2e9 }, "spec tensor model.embed_tokens.weight of shape [2000000000 4194304] is larger than 16 GiB"},
		{"overflowing tensor", func(s *Spec) { s.Vocab, s.Dim, s.Heads, s.KVHeads = 1<<40, 1<<40, 1, 1 }, "spec tensor model.embed_tokens.weight"},
		{"huge model", func(s *Spec) { s.Dim, s.Hidden, s.Heads, s.KVHeads, s.Layers = 8192, 28672, 64, 8, 100000 }, "spec weights exceed 2 TiB"},
		{"2^30 layers", func(s *Spec) { s.Layers = 1 << 30 }, "spec weights exceed 2 TiB (1073741824 layers of"},
	} {
		s := good
		tt.edit(&s)
		dir := t.TempDir()
		if _, err := WriteRandom(dir, s, 1, RandomOptions{}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s: wrote %d files", tt.name, len(entries))
		}
	}
}
