package latency

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// ModelConfig is the part of a Hugging Face config.json that sizes a dense decoder-only
// transformer (Llama, Mistral, Qwen2 and their relatives). Field names and JSON keys are
// those of the Hub files; keys not listed here are ignored.
type ModelConfig struct {
	// Name is where the config came from: a short name LookupModel knows, or a path.
	Name string `json:"-"`

	NameOrPath            string   `json:"_name_or_path,omitempty"`
	Architectures         []string `json:"architectures"`
	ModelType             string   `json:"model_type"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumKeyValueHeads      int      `json:"num_key_value_heads,omitempty"`
	HeadDim               int      `json:"head_dim,omitempty"`
	VocabSize             int      `json:"vocab_size"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	// TieWordEmbeddings shares the embedding matrix with the lm_head. Absent means false,
	// the default of the Llama, Mistral and Qwen2 config classes.
	TieWordEmbeddings bool `json:"tie_word_embeddings"`
	// TorchDtype is the checkpoint's dtype; transformers 4.56 and later write Dtype.
	TorchDtype string  `json:"torch_dtype,omitempty"`
	Dtype      string  `json:"dtype,omitempty"`
	HiddenAct  string  `json:"hidden_act,omitempty"`
	RMSNormEps float64 `json:"rms_norm_eps,omitempty"`
	RopeTheta  float64 `json:"rope_theta,omitempty"`
	// AttentionBias and MLPBias are Llama's switches for biases on the attention and MLP
	// projections. Qwen2 has q, k and v biases without a key for them.
	AttentionBias bool `json:"attention_bias,omitempty"`
	MLPBias       bool `json:"mlp_bias,omitempty"`

	// The following mark checkpoints the roofline does not model; a config that sets them
	// is refused rather than mis-sized.
	NumLocalExperts    int             `json:"num_local_experts,omitempty"`
	NumExperts         int             `json:"num_experts,omitempty"`
	QuantizationConfig json.RawMessage `json:"quantization_config,omitempty"`
}

// ModelNames lists the shipped model configs.
func ModelNames() []string { return slices.Clone(modelNames()) }

var modelNames = sync.OnceValue(func() []string {
	entries, err := fs.ReadDir(data, "data/models")
	if err != nil {
		panic(err)
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
})

// LookupModel returns a shipped config by short name (llama-3.1-8b, llama-3.1-70b,
// qwen2.5-7b, mistral-7b), or reads a Hugging Face config.json from a path; a directory
// means its config.json, as in a downloaded model.
func LookupModel(name string) (ModelConfig, error) {
	if slices.Contains(modelNames(), name) {
		raw, err := data.ReadFile(path.Join("data/models", name+".json"))
		if err != nil {
			return ModelConfig{}, err
		}
		return ParseModelConfig(raw, name)
	}
	file := name
	if info, err := os.Stat(name); err == nil && info.IsDir() {
		file = filepath.Join(name, "config.json")
	} else if errors.Is(err, fs.ErrNotExist) && !strings.ContainsRune(name, os.PathSeparator) && !strings.HasSuffix(name, ".json") {
		return ModelConfig{}, fmt.Errorf("unknown model %q (known: %s, or a path to a Hugging Face config.json)", name, strings.Join(modelNames(), ", "))
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return ModelConfig{}, err
	}
	return ParseModelConfig(raw, file)
}

// ParseModelConfig reads a Hugging Face config.json; source names it in errors. Unknown
// keys are ignored, as Hub configs carry many that do not affect cost.
func ParseModelConfig(raw []byte, source string) (ModelConfig, error) {
	var m ModelConfig
	if err := json.Unmarshal(raw, &m); err != nil {
		return ModelConfig{}, describeJSONError(source, raw, err)
	}
	m.Name = source
	if err := m.normalize(); err != nil {
		return ModelConfig{}, fmt.Errorf("%s: %w", source, err)
	}
	return m, nil
}

// normalize checks the config and fills in what Hugging Face derives when a key is absent:
// num_key_value_heads defaults to num_attention_heads, head_dim to hidden_size over heads.
func (m *ModelConfig) normalize() error {
	for _, f := range []struct {
		name  string
		value int
	}{
		{"hidden_size", m.HiddenSize}, {"intermediate_size", m.IntermediateSize},
		{"num_hidden_layers", m.NumHiddenLayers}, {"num_attention_heads", m.NumAttentionHeads},
		{"vocab_size", m.VocabSize},
	} {
		if f.value <= 0 {
			return fmt.Errorf("field %q must be positive, got %d", f.name, f.value)
		}
	}
	if m.NumKeyValueHeads < 0 || m.HeadDim < 0 || m.MaxPositionEmbeddings < 0 {
		return errors.New(`fields "num_key_value_heads", "head_dim" and "max_position_embeddings" must not be negative`)
	}
	if m.NumLocalExperts > 0 || m.NumExperts > 0 {
		return errors.New(`fields "num_local_experts"/"num_experts": mixture-of-experts models are not modelled`)
	}
	if len(m.QuantizationConfig) > 0 && string(m.QuantizationConfig) != "null" {
		return errors.New(`field "quantization_config": quantized checkpoints are not modelled`)
	}
	if m.NumKeyValueHeads == 0 {
		m.NumKeyValueHeads = m.NumAttentionHeads
	}
	if m.NumAttentionHeads%m.NumKeyValueHeads != 0 {
		return fmt.Errorf("field \"num_key_value_heads\": %d does not divide num_attention_heads %d", m.NumKeyValueHeads, m.NumAttentionHeads)
	}
	if m.HeadDim == 0 {
		if m.HiddenSize%m.NumAttentionHeads != 0 {
			return fmt.Errorf("field \"head_dim\" is missing and hidden_size %d does not divide by num_attention_heads %d", m.HiddenSize, m.NumAttentionHeads)
		}
		m.HeadDim = m.HiddenSize / m.NumAttentionHeads
	}
	if _, err := m.dtypeBytes(); err != nil {
		return err
	}
	return nil
}

// dtypeBytes is the width of the weights and KV cache as vLLM serves the checkpoint with
// --dtype auto: bfloat16 and float16 as they are, float32 cast down to 16 bits.
func (m *ModelConfig) dtypeBytes() (float64, error) {
	key, dtype := "torch_dtype", m.TorchDtype
	if dtype == "" {
		key, dtype = "dtype", m.Dtype
	}
	switch dtype {
	case "bfloat16", "float16", "float32", "":
		return 2, nil
	}
	return 0, fmt.Errorf("field %q: unsupported dtype %q (want bfloat16, float16 or float32)", key, dtype)
}

// qkvBias reports biases on the q, k and v projections: always in Qwen2, on request
// (attention_bias) in Llama.
func (m *ModelConfig) qkvBias() bool {
	return m.AttentionBias || m.ModelType == "qwen2" || slices.Contains(m.Architectures, "Qwen2ForCausalLM")
}

// layerShape is one decoder layer's projections on one GPU of a tensor-parallel group of
// tp, in parameters. tp must be valid for the model (see checkTP).
type layerShape struct {
	linear float64 // q, k, v, o, gate, up and down weights
	extra  float64 // biases and the two RMSNorm weights
}

func (m *ModelConfig) layer(tp int) layerShape {
	h := float64(m.HiddenSize)
	hd := float64(m.HeadDim)
	q := float64(m.NumAttentionHeads/tp) * hd
	kv := float64(max(1, m.NumKeyValueHeads/tp)) * hd // replicated when tp > kv heads
	inter := float64(m.IntermediateSize / tp)
	s := layerShape{
		linear: 2*h*q + 2*h*kv + 3*h*inter,
		extra:  2 * h,
	}
	if m.qkvBias() {
		s.extra += q + 2*kv
	}
	if m.AttentionBias {
		s.extra += h // o_proj bias, added once after the all-reduce but stored on every GPU
	}
	if m.MLPBias {
		s.extra += 2*inter + h
	}
	return s
}

// LayerParams is the parameters of one decoder layer.
func (m *ModelConfig) LayerParams() int64 {
	s := m.layer(1)
	return int64(s.linear + s.extra)
}

// EmbeddingParams is the parameters of the token embedding (and of the lm_head, which has
// the same shape).
func (m *ModelConfig) EmbeddingParams() int64 { return int64(m.VocabSize) * int64(m.HiddenSize) }

// Params is the model's total parameter count: embedding, decoder layers, final norm and
// the lm_head unless it is tied to the embedding.
func (m *ModelConfig) Params() int64 {
	total := m.EmbeddingParams() + int64(m.NumHiddenLayers)*m.LayerParams() + int64(m.HiddenSize)
	if !m.TieWordEmbeddings {
		total += m.EmbeddingParams()
	}
	return total
}

// checkTP applies vLLM's rules for splitting the model over tp GPUs: attention heads and
// the MLP divide evenly, and KV heads either divide evenly or are replicated so that each
// GPU holds one (tp a multiple of the KV heads).
func (m *ModelConfig) checkTP(tp int) error {
	switch {
	case tp <= 0:
		return fmt.Errorf("tensor parallelism must be positive, got %d", tp)
	case m.NumAttentionHeads%tp != 0:
		return fmt.Errorf("tensor parallelism %d does not divide the %d attention heads", tp, m.NumAttentionHeads)
	case m.NumKeyValueHeads >= tp && m.NumKeyValueHeads%tp != 0:
		return fmt.Errorf("tensor parallelism %d does not divide the %d KV heads", tp, m.NumKeyValueHeads)
	case m.NumKeyValueHeads < tp && tp%m.NumKeyValueHeads != 0:
		return fmt.Errorf("tensor parallelism %d is not a multiple of the %d KV heads, so they cannot be replicated evenly", tp, m.NumKeyValueHeads)
	case m.IntermediateSize%tp != 0:
		return fmt.Errorf("tensor parallelism %d does not divide intermediate_size %d", tp, m.IntermediateSize)
	}
	return nil
}
