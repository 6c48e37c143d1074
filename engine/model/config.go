package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Supported values of config.json's "architectures".
const (
	ArchLlama   = "LlamaForCausalLM"
	ArchQwen2   = "Qwen2ForCausalLM"
	ArchMistral = "MistralForCausalLM"
)

// modelTypes maps config.json's model_type to the architecture, for configs without
// "architectures".
var modelTypes = map[string]string{"llama": ArchLlama, "qwen2": ArchQwen2, "mistral": ArchMistral}

// defaultMaxPos is each configuration class's default max_position_embeddings in
// transformers, used when config.json omits it.
var defaultMaxPos = map[string]int{ArchLlama: 2048, ArchQwen2: 32768, ArchMistral: 4096 * 32}

// RopeScaling is config.json's rope_scaling. Type "" is plain RoPE.
//
//   - "linear" (position interpolation): positions are divided by Factor.
//   - "llama3" (Llama 3.1): inverse frequencies with wavelength above
//     OriginalMaxPos/LowFreqFactor are divided by Factor, those below
//     OriginalMaxPos/HighFreqFactor kept, and those between interpolated smoothly.
//
// "dynamic" (NTK) scaling is not supported: its frequencies depend on the length of the
// sequence being computed, so keys cached at one length would not match queries at
// another. "yarn", "longrope" and other types are not supported either.
type RopeScaling struct {
	Type                          string
	Factor                        float64
	LowFreqFactor, HighFreqFactor float64
	OriginalMaxPos                int
}

// Config is the part of a Hugging Face config.json the forward pass needs.
type Config struct {
	// Arch is the architecture (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM).
	Arch string
	// Dim is hidden_size, Hidden intermediate_size, Layers num_hidden_layers.
	Dim, Hidden, Layers int
	// Heads and KVHeads are num_attention_heads and num_key_value_heads; query head h
	// reads key/value head h / (Heads/KVHeads).
	Heads, KVHeads int
	// HeadDim is head_dim, by default Dim / Heads.
	HeadDim int
	// Vocab is vocab_size.
	Vocab int
	// MaxPos is max_position_embeddings, lowered to the sliding window when a Mistral or
	// Qwen2 model declares one smaller than it (attention is exact up to the window).
	MaxPos int
	// RopeTheta is rope_theta, NormEps rms_norm_eps.
	RopeTheta, NormEps float64
	RopeScaling        RopeScaling
	// Tied is tie_word_embeddings: the classifier is the token embedding.
	Tied bool
	// QKVBias is whether q_proj, k_proj and v_proj have biases (always so for Qwen2).
	QKVBias bool
	// BOS is bos_token_id, -1 when absent.
	BOS int
	// EOS is eos_token_id (an int or a list in the file), empty when absent.
	EOS []int
	// TorchDType is torch_dtype (or dtype, its newer name), as written.
	TorchDType string
}

// QDim is Heads*HeadDim, the width of the queries (and of o_proj's input).
func (c Config) QDim() int { return c.Heads * c.HeadDim }

// KVDim is KVHeads*HeadDim, the width of the keys and of the values.
func (c Config) KVDim() int { return c.KVHeads * c.HeadDim }

// rawConfig is config.json's top-level object, values kept raw so that absent and null
// can be told apart and type errors name their field.
type rawConfig map[string]json.RawMessage

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

// fieldError is an error about one field of config.json.
func fieldError(field, format string, args ...any) error {
	return fmt.Errorf("config.json: %s: %s", field, fmt.Sprintf(format, args...))
}

// has reports whether the field is present and not null.
func (r rawConfig) has(name string) bool { return !isNull(r[name]) }

// int reads an integer field; def is returned when it is absent or null.
func (r rawConfig) int(prefix, name string, def int) (int, error) {
	raw := r[name]
	if isNull(raw) {
		return def, nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, fieldError(prefix+name, "want an integer, got %s", raw)
	}
	return int(f), nil
}

// positive reads an integer field that must be present (when required) and > 0.
func (r rawConfig) positive(prefix, name string, def int, required bool) (int, error) {
	if required && !r.has(name) {
		return 0, fieldError(prefix+name, "missing")
	}
	v, err := r.int(prefix, name, def)
	if err != nil {
		return 0, err
	}
	if v <= 0 {
		return 0, fieldError(prefix+name, "want > 0, got %d", v)
	}
	return v, nil
}

func (r rawConfig) float(prefix, name string, def float64) (float64, error) {
	raw := r[name]
	if isNull(raw) {
		return def, nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return 0, fieldError(prefix+name, "want a number, got %s", raw)
	}
	return f, nil
}

func (r rawConfig) bool(name string, def bool) (bool, error) {
	raw := r[name]
	if isNull(raw) {
		return def, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return false, fieldError(name, "want true or false, got %s", raw)
	}
	return b, nil
}

func (r rawConfig) string(prefix, name string) (string, error) {
	raw := r[name]
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldError(prefix+name, "want a string, got %s", raw)
	}
	return s, nil
}

// tokenIDs reads a token id field written as an int, a list of ints, or null.
func tokenIDs(name string, raw json.RawMessage) ([]int, error) {
	if isNull(raw) {
		return nil, nil
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		if one < 0 {
			return nil, fieldError(name, "negative token id %d", one)
		}
		return []int{one}, nil
	}
	var many []int
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fieldError(name, "want an int or a list of ints, got %s", raw)
	}
	for _, id := range many {
		if id < 0 {
			return nil, fieldError(name, "negative token id %d", id)
		}
	}
	return many, nil
}

// ParseConfig reads a Hugging Face config.json for LlamaForCausalLM, Qwen2ForCausalLM or
// MistralForCausalLM (the architecture comes from "architectures", or from "model_type"
// when that is absent). Absent optional fields take transformers' defaults:
// num_key_value_heads = num_attention_heads, head_dim = hidden_size/num_attention_heads,
// rms_norm_eps 1e-6, rope_theta 10000, tie_word_embeddings false, max_position_embeddings
// the class default. rope_scaling may be null or {"rope_type" (or "type"): "default" |
// "linear" | "llama3", ...}; transformers 5's rope_parameters is read the same way (with
// its rope_theta). eos_token_id may be an int or a list.
//
// A sliding window (Mistral's sliding_window, Qwen2's when use_sliding_window is true)
// is supported by capping MaxPos at the window: within it, sliding-window attention is
// full causal attention.
//
// Unsupported or malformed values are errors naming the field, such as
// `config.json: rope_scaling.rope_type: unsupported "yarn"`.
func ParseConfig(data []byte) (Config, error) {
	var r rawConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return Config{}, fmt.Errorf("config.json: %w", err)
	}
	if r == nil {
		return Config{}, errors.New("config.json: want a JSON object, got null")
	}
	var c Config
	var err error
	if c.Arch, err = parseArch(r); err != nil {
		return Config{}, err
	}
	if c.Dim, err = r.positive("", "hidden_size", 0, true); err != nil {
		return Config{}, err
	}
	if c.Hidden, err = r.positive("", "intermediate_size", 0, true); err != nil {
		return Config{}, err
	}
	if c.Layers, err = r.positive("", "num_hidden_layers", 0, true); err != nil {
		return Config{}, err
	}
	if c.Heads, err = r.positive("", "num_attention_heads", 0, true); err != nil {
		return Config{}, err
	}
	if c.KVHeads, err = r.positive("", "num_key_value_heads", c.Heads, false); err != nil {
		return Config{}, err
	}
	if c.Heads%c.KVHeads != 0 {
		return Config{}, fieldError("num_key_value_heads", "%d does not divide num_attention_heads %d", c.KVHeads, c.Heads)
	}
	if c.Vocab, err = r.positive("", "vocab_size", 0, true); err != nil {
		return Config{}, err
	}
	if c.MaxPos, err = r.positive("", "max_position_embeddings", defaultMaxPos[c.Arch], false); err != nil {
		return Config{}, err
	}
	if r.has("head_dim") {
		if c.HeadDim, err = r.positive("", "head_dim", 0, true); err != nil {
			return Config{}, err
		}
	} else {
		if c.Dim%c.Heads != 0 {
			return Config{}, fieldError("num_attention_heads", "%d does not divide hidden_size %d and head_dim is not given", c.Heads, c.Dim)
		}
		c.HeadDim = c.Dim / c.Heads
	}
	if c.HeadDim%2 != 0 {
		return Config{}, fieldError("head_dim", "%d is odd; rotary embeddings need pairs", c.HeadDim)
	}
	if c.NormEps, err = r.float("", "rms_norm_eps", 1e-6); err != nil {
		return Config{}, err
	}
	if !(c.NormEps > 0) {
		return Config{}, fieldError("rms_norm_eps", "want > 0, got %g", c.NormEps)
	}
	if c.RopeTheta, c.RopeScaling, err = parseRope(r); err != nil {
		return Config{}, err
	}
	if c.Tied, err = r.bool("tie_word_embeddings", false); err != nil {
		return Config{}, err
	}
	act, err := r.string("", "hidden_act")
	if err != nil {
		return Config{}, err
	}
	if act != "" && act != "silu" && act != "swish" {
		return Config{}, fieldError("hidden_act", "unsupported %q (want \"silu\")", act)
	}
	if mlpBias, err := r.bool("mlp_bias", false); err != nil {
		return Config{}, err
	} else if mlpBias {
		return Config{}, fieldError("mlp_bias", "unsupported true")
	}
	switch c.Arch {
	case ArchQwen2:
		// Qwen2's attention has q/k/v biases whatever the config says (and no o_proj bias).
		c.QKVBias = true
	default:
		// Llama's attention_bias puts a bias on o_proj too, which this engine lacks.
		if b, err := r.bool("attention_bias", false); err != nil {
			return Config{}, err
		} else if b {
			return Config{}, fieldError("attention_bias", "unsupported true")
		}
	}
	if err := applySlidingWindow(r, &c); err != nil {
		return Config{}, err
	}
	bos, err := tokenIDs("bos_token_id", r["bos_token_id"])
	if err != nil {
		return Config{}, err
	}
	c.BOS = -1
	if len(bos) > 0 {
		c.BOS = bos[0]
	}
	if c.EOS, err = tokenIDs("eos_token_id", r["eos_token_id"]); err != nil {
		return Config{}, err
	}
	if c.TorchDType, err = r.string("", "torch_dtype"); err != nil {
		return Config{}, err
	}
	if c.TorchDType == "" {
		if c.TorchDType, err = r.string("", "dtype"); err != nil {
			return Config{}, err
		}
	}
	return c, nil
}

func parseArch(r rawConfig) (string, error) {
	supported := func(a string) bool { return a == ArchLlama || a == ArchQwen2 || a == ArchMistral }
	if r.has("architectures") {
		var archs []string
		if err := json.Unmarshal(r["architectures"], &archs); err != nil {
			return "", fieldError("architectures", "want a list of strings, got %s", r["architectures"])
		}
		if len(archs) > 0 {
			if !supported(archs[0]) {
				return "", fieldError("architectures", "unsupported %q (supported: %s, %s, %s)", archs[0], ArchLlama, ArchQwen2, ArchMistral)
			}
			return archs[0], nil
		}
	}
	mt, err := r.string("", "model_type")
	if err != nil {
		return "", err
	}
	if mt == "" {
		return "", fieldError("architectures", "missing (and no model_type)")
	}
	arch, ok := modelTypes[mt]
	if !ok {
		return "", fieldError("model_type", "unsupported %q (supported: llama, qwen2, mistral)", mt)
	}
	return arch, nil
}

// parseRope reads rope_theta and rope_scaling, or transformers 5's rope_parameters.
func parseRope(r rawConfig) (float64, RopeScaling, error) {
	theta, err := r.float("", "rope_theta", 10000)
	if err != nil {
		return 0, RopeScaling{}, err
	}
	field := "rope_scaling"
	if !r.has(field) && r.has("rope_parameters") {
		field = "rope_parameters"
	}
	var s RopeScaling
	if r.has(field) {
		var obj rawConfig
		if err := json.Unmarshal(r[field], &obj); err != nil {
			return 0, RopeScaling{}, fieldError(field, "want an object or null, got %s", r[field])
		}
		if field == "rope_parameters" {
			if theta, err = obj.float(field+".", "rope_theta", theta); err != nil {
				return 0, RopeScaling{}, err
			}
		}
		if s, err = parseRopeScaling(field, obj); err != nil {
			return 0, RopeScaling{}, err
		}
	}
	if !(theta > 0) || math.IsInf(theta, 0) {
		return 0, RopeScaling{}, fieldError("rope_theta", "want > 0, got %g", theta)
	}
	return theta, s, nil
}

func parseRopeScaling(field string, obj rawConfig) (RopeScaling, error) {
	p := field + "."
	key := "rope_type"
	if !obj.has(key) {
		key = "type"
	}
	typ, err := obj.string(p, key)
	if err != nil {
		return RopeScaling{}, err
	}
	var s RopeScaling
	switch typ {
	case "", "default":
		return RopeScaling{}, nil
	case "linear", "llama3":
		s.Type = typ
	default:
		return RopeScaling{}, fieldError(p+key, "unsupported %q (supported: default, linear, llama3)", typ)
	}
	if !obj.has("factor") {
		return RopeScaling{}, fieldError(p+"factor", "missing")
	}
	if s.Factor, err = obj.float(p, "factor", 0); err != nil {
		return RopeScaling{}, err
	}
	if !(s.Factor > 0) || math.IsInf(s.Factor, 0) {
		return RopeScaling{}, fieldError(p+"factor", "want > 0, got %g", s.Factor)
	}
	if typ == "linear" {
		return s, nil
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{{"low_freq_factor", &s.LowFreqFactor}, {"high_freq_factor", &s.HighFreqFactor}} {
		if !obj.has(f.name) {
			return RopeScaling{}, fieldError(p+f.name, "missing")
		}
		if *f.v, err = obj.float(p, f.name, 0); err != nil {
			return RopeScaling{}, err
		}
		if !(*f.v > 0) || math.IsInf(*f.v, 0) {
			return RopeScaling{}, fieldError(p+f.name, "want > 0, got %g", *f.v)
		}
	}
	if !(s.HighFreqFactor > s.LowFreqFactor) {
		return RopeScaling{}, fieldError(p+"high_freq_factor", "%g must exceed low_freq_factor %g", s.HighFreqFactor, s.LowFreqFactor)
	}
	if s.OriginalMaxPos, err = obj.positive(p, "original_max_position_embeddings", 0, true); err != nil {
		return RopeScaling{}, err
	}
	return s, nil
}

// applySlidingWindow caps MaxPos at a sliding window that applies to the model.
func applySlidingWindow(r rawConfig, c *Config) error {
	switch c.Arch {
	case ArchMistral:
	case ArchQwen2:
		use, err := r.bool("use_sliding_window", false)
		if err != nil || !use {
			return err
		}
	default:
		return nil
	}
	if !r.has("sliding_window") {
		return nil
	}
	w, err := r.positive("", "sliding_window", 0, true)
	if err != nil {
		return err
	}
	c.MaxPos = min(c.MaxPos, w)
	return nil
}

// GenerationConfig is the sampling defaults of generation_config.json; nil (or empty)
// means the file does not set the value.
type GenerationConfig struct {
	Temperature, TopP *float64
	TopK              *int
	EOS               []int
	RepetitionPenalty *float64
}

// GenerationConfigFile is the name of the generation defaults file in a model directory.
const GenerationConfigFile = "generation_config.json"

// LoadGenerationConfig reads dir/generation_config.json: temperature, top_p, top_k,
// repetition_penalty and eos_token_id (an int or a list), as vLLM takes its default
// sampling parameters from it. A missing file gives the zero value.
func LoadGenerationConfig(dir string) (GenerationConfig, error) {
	path := filepath.Join(dir, GenerationConfigFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return GenerationConfig{}, nil
	}
	if err != nil {
		return GenerationConfig{}, fmt.Errorf("model: %w", err)
	}
	g, err := parseGenerationConfig(data)
	if err != nil {
		return GenerationConfig{}, fmt.Errorf("model: %s: %w", path, err)
	}
	return g, nil
}

func parseGenerationConfig(data []byte) (GenerationConfig, error) {
	var r rawConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return GenerationConfig{}, err
	}
	var g GenerationConfig
	floats := []struct {
		name string
		dst  **float64
	}{{"temperature", &g.Temperature}, {"top_p", &g.TopP}, {"repetition_penalty", &g.RepetitionPenalty}}
	for _, f := range floats {
		if !r.has(f.name) {
			continue
		}
		v, err := r.float("", f.name, 0)
		if err != nil {
			return GenerationConfig{}, genFieldError(err)
		}
		*f.dst = &v
	}
	if r.has("top_k") {
		k, err := r.int("", "top_k", 0)
		if err != nil {
			return GenerationConfig{}, genFieldError(err)
		}
		g.TopK = &k
	}
	eos, err := tokenIDs("eos_token_id", r["eos_token_id"])
	if err != nil {
		return GenerationConfig{}, genFieldError(err)
	}
	g.EOS = eos
	return g, nil
}

// genFieldError drops the config.json prefix of a field error: the caller names the file.
func genFieldError(err error) error {
	return errors.New(strings.TrimPrefix(err.Error(), "config.json: "))
}
