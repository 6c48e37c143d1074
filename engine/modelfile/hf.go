package modelfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"servelab/engine/safetensors"
)

// File names of a Hugging Face model directory.
const (
	ConfigFile           = "config.json"
	GenerationConfigFile = "generation_config.json"
	WeightsFile          = safetensors.SingleFileName
)

// pyFloat marshals like Python's repr of a float (1e-05, 10000.0, 0.02), as json.dumps writes it.
type pyFloat float64

func (f pyFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return nil, fmt.Errorf("modelfile: %v has no JSON form", v)
	}
	if v == 0 {
		if math.Signbit(v) {
			return []byte("-0.0"), nil
		}
		return []byte("0.0"), nil
	}
	// Python's repr: shortest round-trip digits, scientific when exp < -4 or exp >= 16.
	e := strconv.FormatFloat(v, 'e', -1, 64) // d.ddde±XX
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		return fmt.Appendf(nil, "%se%s%02d", mant, sign, exp), nil
	}
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return []byte(s), nil
}

// hfConfig is config.json as transformers' LlamaConfig writes it; fields are in the sorted
// order json.dumps(sort_keys=True) uses.
type hfConfig struct {
	Architectures         []string `json:"architectures"`
	AttentionBias         bool     `json:"attention_bias"`
	AttentionDropout      pyFloat  `json:"attention_dropout"`
	BOSTokenID            int      `json:"bos_token_id"`
	EOSTokenID            int      `json:"eos_token_id"`
	HeadDim               int      `json:"head_dim"`
	HiddenAct             string   `json:"hidden_act"`
	HiddenSize            int      `json:"hidden_size"`
	InitializerRange      pyFloat  `json:"initializer_range"`
	IntermediateSize      int      `json:"intermediate_size"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	MLPBias               bool     `json:"mlp_bias"`
	ModelType             string   `json:"model_type"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumKeyValueHeads      int      `json:"num_key_value_heads"`
	PretrainingTP         int      `json:"pretraining_tp"`
	RMSNormEps            pyFloat  `json:"rms_norm_eps"`
	RopeScaling           any      `json:"rope_scaling"`
	RopeTheta             pyFloat  `json:"rope_theta"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	TorchDType            string   `json:"torch_dtype"`
	UseCache              bool     `json:"use_cache"`
	VocabSize             int      `json:"vocab_size"`
}

// hfRopeScaling is rope_scaling of a Llama 3.1 config.json (sorted keys).
type hfRopeScaling struct {
	Factor                        pyFloat `json:"factor"`
	HighFreqFactor                pyFloat `json:"high_freq_factor"`
	LowFreqFactor                 pyFloat `json:"low_freq_factor"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings"`
	RopeType                      string  `json:"rope_type"`
}

// hfGenerationConfig is generation_config.json (sorted keys, as transformers writes it).
type hfGenerationConfig struct {
	BOSTokenID int   `json:"bos_token_id"`
	DoSample   bool  `json:"do_sample"`
	EOSTokenID []int `json:"eos_token_id"`
}

var torchDTypes = map[safetensors.DType]string{
	safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16",
}

// ConfigJSON returns config.json for spec, formatted as transformers writes it (2-space
// indent, sorted keys, trailing newline).
func ConfigJSON(spec Spec) ([]byte, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	c := hfConfig{
		Architectures:         []string{"LlamaForCausalLM"},
		BOSTokenID:            spec.BOS,
		EOSTokenID:            spec.EOS,
		HeadDim:               spec.HeadDim(),
		HiddenAct:             "silu",
		HiddenSize:            spec.Dim,
		InitializerRange:      0.02,
		IntermediateSize:      spec.Hidden,
		MaxPositionEmbeddings: spec.MaxSeqLen,
		ModelType:             "llama",
		NumAttentionHeads:     spec.Heads,
		NumHiddenLayers:       spec.Layers,
		NumKeyValueHeads:      spec.KVHeads,
		PretrainingTP:         1,
		RMSNormEps:            pyFloat(spec.NormEps),
		RopeTheta:             pyFloat(spec.RopeTheta),
		TieWordEmbeddings:     spec.Tied,
		TorchDType:            torchDTypes[spec.dtype()],
		UseCache:              true,
		VocabSize:             spec.Vocab,
	}
	if r := spec.RopeScaling; r != nil {
		c.RopeScaling = hfRopeScaling{Factor: pyFloat(r.Factor), HighFreqFactor: pyFloat(r.HighFreqFactor), LowFreqFactor: pyFloat(r.LowFreqFactor),
			OriginalMaxPositionEmbeddings: r.OriginalMaxPositionEmbeddings, RopeType: "llama3"}
	}
	return marshalIndent(c)
}

// GenerationConfigJSON returns generation_config.json for spec: bos_token_id, greedy
// do_sample false, and eos_token_id as a list ([spec.EOS]).
func GenerationConfigJSON(spec Spec) ([]byte, error) {
	return marshalIndent(hfGenerationConfig{BOSTokenID: spec.BOS, EOSTokenID: []int{spec.EOS}})
}

func marshalIndent(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil { // Encode ends with '\n', as transformers does
		return nil, err
	}
	return b.Bytes(), nil
}

// Write creates dir (and parents) and writes config.json, generation_config.json and
// model.safetensors (dtype spec.DType, metadata {"format": "pt"} as save_pretrained writes)
// for w, which must be in the Hugging Face (rotate-half) convention. Other files in dir are
// left alone.
func Write(dir string, spec Spec, w *Weights) error {
	if err := w.Check(spec); err != nil {
		return err
	}
	cfg, err := ConfigJSON(spec)
	if err != nil {
		return err
	}
	gen, err := GenerationConfigJSON(spec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("modelfile: %w", err)
	}
	dt := spec.dtype()
	refs := tensors(spec, w)
	ts := make([]safetensors.Tensor, len(refs))
	for i, r := range refs {
		data, err := safetensors.Encode(dt, *r.ptr)
		if err != nil {
			return err
		}
		ts[i] = safetensors.Tensor{Name: r.name, DType: dt, Shape: r.shape, Data: data}
	}
	if err := safetensors.Write(filepath.Join(dir, WeightsFile), ts, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), cfg, 0o644); err != nil {
		return fmt.Errorf("modelfile: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, GenerationConfigFile), gen, 0o644); err != nil {
		return fmt.Errorf("modelfile: %w", err)
	}
	return nil
}

// readConfig is the subset of config.json Load reads; pointers tell absent from zero.
type readConfig struct {
	Architectures         []string        `json:"architectures"`
	ModelType             string          `json:"model_type"`
	HiddenSize            *int            `json:"hidden_size"`
	IntermediateSize      *int            `json:"intermediate_size"`
	NumHiddenLayers       *int            `json:"num_hidden_layers"`
	NumAttentionHeads     *int            `json:"num_attention_heads"`
	NumKeyValueHeads      *int            `json:"num_key_value_heads"`
	HeadDim               *int            `json:"head_dim"`
	VocabSize             *int            `json:"vocab_size"`
	MaxPositionEmbeddings *int            `json:"max_position_embeddings"`
	RMSNormEps            *float64        `json:"rms_norm_eps"`
	RopeTheta             *float64        `json:"rope_theta"`
	RopeScaling           json.RawMessage `json:"rope_scaling"`
	TieWordEmbeddings     *bool           `json:"tie_word_embeddings"`
	BOSTokenID            json.RawMessage `json:"bos_token_id"`
	EOSTokenID            json.RawMessage `json:"eos_token_id"`
	TorchDType            string          `json:"torch_dtype"`
	DType                 string          `json:"dtype"` // newer transformers' name for torch_dtype
	HiddenAct             string          `json:"hidden_act"`
	AttentionBias         bool            `json:"attention_bias"`
	MLPBias               bool            `json:"mlp_bias"`
}

// firstID reads a token id written as an int, a list of ints (first taken) or null (-1).
func firstID(raw json.RawMessage) (int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return -1, nil
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		return one, nil
	}
	var many []int
	if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 {
		return 0, fmt.Errorf("want an int or a non-empty list of ints, got %s", raw)
	}
	return many[0], nil
}

// ReadConfig reads dir/config.json into a Spec, rejecting what this package's Llama cannot
// express: rope_scaling other than a complete Llama 3.1 ("llama3") one, biases, an activation other than silu, head_dim != hidden_size /
// num_attention_heads. A list eos_token_id gives its first id. Spec.DType is torch_dtype.
func ReadConfig(dir string) (Spec, error) {
	return ReadConfigFile(filepath.Join(dir, ConfigFile))
}

// ReadConfigFile is ReadConfig of a config.json file at any path.
func ReadConfigFile(path string) (Spec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Spec{}, fmt.Errorf("modelfile: %w", err)
	}
	var c readConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return Spec{}, fmt.Errorf("modelfile: %s: %w", path, err)
	}
	bad := func(format string, args ...any) (Spec, error) {
		return Spec{}, fmt.Errorf("modelfile: %s: %s", path, fmt.Sprintf(format, args...))
	}
	if c.ModelType != "llama" {
		return bad("model_type %q, want \"llama\"", c.ModelType)
	}
	req := []struct {
		name string
		p    *int
	}{{"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize}, {"num_hidden_layers", c.NumHiddenLayers},
		{"num_attention_heads", c.NumAttentionHeads}, {"vocab_size", c.VocabSize}, {"max_position_embeddings", c.MaxPositionEmbeddings}}
	for _, r := range req {
		if r.p == nil {
			return bad("%s is missing", r.name)
		}
	}
	s := Spec{
		Dim: *c.HiddenSize, Hidden: *c.IntermediateSize, Layers: *c.NumHiddenLayers, Heads: *c.NumAttentionHeads,
		KVHeads: *c.NumAttentionHeads, Vocab: *c.VocabSize, MaxSeqLen: *c.MaxPositionEmbeddings,
		RopeTheta: 10000, NormEps: 1e-6, Tied: false, // LlamaConfig's defaults
	}
	if c.NumKeyValueHeads != nil {
		s.KVHeads = *c.NumKeyValueHeads
	}
	if c.RMSNormEps != nil {
		s.NormEps = *c.RMSNormEps
	}
	if c.RopeTheta != nil {
		s.RopeTheta = *c.RopeTheta
	}
	if c.TieWordEmbeddings != nil {
		s.Tied = *c.TieWordEmbeddings
	}
	if len(c.RopeScaling) != 0 && string(c.RopeScaling) != "null" {
		var r struct {
			RopeType                      string   `json:"rope_type"`
			Factor                        *float64 `json:"factor"`
			LowFreqFactor                 *float64 `json:"low_freq_factor"`
			HighFreqFactor                *float64 `json:"high_freq_factor"`
			OriginalMaxPositionEmbeddings *int     `json:"original_max_position_embeddings"`
		}
		if err := json.Unmarshal(c.RopeScaling, &r); err != nil || r.RopeType != "llama3" || r.Factor == nil ||
			r.LowFreqFactor == nil || r.HighFreqFactor == nil || r.OriginalMaxPositionEmbeddings == nil {
			return bad("rope_scaling %s is not supported (only a complete Llama 3.1 \"llama3\" one is)", c.RopeScaling)
		}
		s.RopeScaling = &RopeScaling{Factor: *r.Factor, LowFreqFactor: *r.LowFreqFactor, HighFreqFactor: *r.HighFreqFactor,
			OriginalMaxPositionEmbeddings: *r.OriginalMaxPositionEmbeddings}
	}
	if c.HiddenAct != "" && c.HiddenAct != "silu" {
		return bad("hidden_act %q, want \"silu\"", c.HiddenAct)
	}
	if c.AttentionBias || c.MLPBias {
		return bad("attention_bias / mlp_bias are not supported")
	}
	if c.HeadDim != nil && s.Heads > 0 && *c.HeadDim*s.Heads != s.Dim {
		return bad("head_dim %d * num_attention_heads %d != hidden_size %d is not supported", *c.HeadDim, s.Heads, s.Dim)
	}
	if s.BOS, err = firstID(c.BOSTokenID); err != nil {
		return bad("bos_token_id: %v", err)
	}
	if s.EOS, err = firstID(c.EOSTokenID); err != nil {
		return bad("eos_token_id: %v", err)
	}
	td := c.TorchDType
	if td == "" {
		td = c.DType
	}
	for dt, name := range torchDTypes {
		if name == td {
			s.DType = dt
		}
	}
	if s.DType == "" {
		s.DType = safetensors.F32
	}
	// Token ids may be absent (-1); validate the shape only.
	check := s
	check.BOS, check.EOS = 0, 0
	if err := check.Validate(); err != nil {
		return bad("%v", err)
	}
	return s, nil
}

// Load reads a Hugging Face Llama directory (config.json and model.safetensors or a sharded
// index) into float32 Weights in the Hugging Face (rotate-half) convention. Tensors may be
// F32, F16 or BF16 whatever config.json's torch_dtype says; each must have the exact shape
// LlamaForCausalLM gives it. When tied, lm_head.weight (if present) is ignored and LMHead is nil.
func Load(dir string) (Spec, *Weights, error) {
	spec, err := ReadConfig(dir)
	if err != nil {
		return Spec{}, nil, err
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return Spec{}, nil, err
	}
	w := newWeights(spec.Layers)
	for _, r := range tensors(spec, w) {
		v, err := set.Float32(r.name, r.shape)
		if err != nil {
			return Spec{}, nil, err
		}
		*r.ptr = v
	}
	return spec, w, nil
}
