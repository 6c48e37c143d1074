// Package latency holds the simulator's step-time models: how long one engine step takes
// given its shape. roofline derives it from a GPU's datasheet and a model's Hugging Face
// config; linear takes coefficients fitted to the real engine's measured steps.
package latency

import (
	"embed"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"servelab/serving"
)

// Model gives the duration of an engine step in seconds. StepTime is called once per
// simulated step and must be constant-time.
type Model interface {
	StepTime(s serving.StepShape) float64
	Name() string
}

// Capacity is implemented by models that know how large the KV cache is.
type Capacity interface {
	// KVCacheBlocks is the number of KV blocks an instance holds, as vLLM's
	// num_gpu_blocks.
	KVCacheBlocks(blockSize int, gpuMemoryUtilization float64) (int, error)
	// MaxModelLen is the longest sequence the model serves.
	MaxModelLen() int
}

// KVCacheBlocks asks a model for its KV capacity.
func KVCacheBlocks(m Model, blockSize int, gpuMemoryUtilization float64) (int, error) {
	c, ok := m.(Capacity)
	if !ok {
		return 0, fmt.Errorf("latency model %s does not know the KV cache size: give --num-gpu-blocks-override", m.Name())
	}
	return c.KVCacheBlocks(blockSize, gpuMemoryUtilization)
}

// MaxModelLen asks a model for its context limit; 0 when it does not know.
func MaxModelLen(m Model) int {
	if c, ok := m.(Capacity); ok {
		return c.MaxModelLen()
	}
	return 0
}

//go:embed data/gpus.yaml data/models/*.json
var data embed.FS

// GPU is an accelerator's datasheet figures.
type GPU struct {
	Name                string  `json:"name"`
	Description         string  `json:"description"`
	PeakTFLOPS          float64 `json:"peak_tflops"`
	MemoryBandwidthGBps float64 `json:"memory_bandwidth_gbps"`
	MemoryGiB           float64 `json:"memory_gib"`
	InterconnectGBps    float64 `json:"interconnect_gbps"`
}

func gpus() []GPU {
	raw, err := data.ReadFile("data/gpus.yaml")
	if err != nil {
		panic(err)
	}
	var list []GPU
	if err := yaml.UnmarshalStrict(raw, &list); err != nil {
		panic(fmt.Sprintf("embedded gpus.yaml: %v", err))
	}
	return list
}

// GPUNames lists the known GPUs.
func GPUNames() []string {
	var names []string
	for _, g := range gpus() {
		names = append(names, g.Name)
	}
	return names
}

// LookupGPU finds a GPU by its lower-case name.
func LookupGPU(name string) (GPU, error) {
	for _, g := range gpus() {
		if g.Name == name {
			return g, nil
		}
	}
	return GPU{}, fmt.Errorf("unknown GPU %q (known: %s)", name, strings.Join(GPUNames(), ", "))
}

// GPUClass is "h100" for the GPUs vLLM gives its larger scheduling defaults (H100, H200),
// "" otherwise.
func GPUClass(name string) string {
	if name == "h100" || name == "h200" {
		return "h100"
	}
	return ""
}

// ModelConfig is the part of a Hugging Face config.json that sizes a decoder-only model.
type ModelConfig struct {
	NameOrPath            string   `json:"_name_or_path,omitempty"`
	Architectures         []string `json:"architectures"`
	ModelType             string   `json:"model_type"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumKeyValueHeads      int      `json:"num_key_value_heads"`
	HeadDim               int      `json:"head_dim,omitempty"`
	VocabSize             int      `json:"vocab_size"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	TorchDtype            string   `json:"torch_dtype"`
}

// ModelNames lists the shipped model configs.
func ModelNames() []string {
	entries, err := data.ReadDir("data/models")
	if err != nil {
		panic(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".json"))
	}
	slices.Sort(names)
	return names
}

// LookupModel finds a shipped model config by name, or reads a config.json at a path.
func LookupModel(name string) (ModelConfig, error) {
	var raw []byte
	var err error
	source := name
	if slices.Contains(ModelNames(), name) {
		source = "config of " + name
		raw, err = data.ReadFile(path.Join("data/models", name+".json"))
	} else if strings.HasSuffix(name, ".json") || strings.Contains(name, "/") {
		raw, err = os.ReadFile(name)
	} else {
		return ModelConfig{}, fmt.Errorf("unknown model %q (known: %s, or a path to a Hugging Face config.json)", name, strings.Join(ModelNames(), ", "))
	}
	if err != nil {
		return ModelConfig{}, err
	}
	var m ModelConfig
	if err := json.Unmarshal(raw, &m); err != nil {
		return ModelConfig{}, fmt.Errorf("%s: %w", source, err)
	}
	return m, m.validate(source)
}

func (m *ModelConfig) validate(source string) error {
	for _, f := range []struct {
		name  string
		value int
	}{
		{"hidden_size", m.HiddenSize}, {"intermediate_size", m.IntermediateSize},
		{"num_hidden_layers", m.NumHiddenLayers}, {"num_attention_heads", m.NumAttentionHeads},
		{"vocab_size", m.VocabSize},
	} {
		if f.value <= 0 {
			return fmt.Errorf("%s: field %q must be positive, got %d", source, f.name, f.value)
		}
	}
	if m.NumKeyValueHeads == 0 {
		m.NumKeyValueHeads = m.NumAttentionHeads
	}
	if m.NumAttentionHeads%m.NumKeyValueHeads != 0 {
		return fmt.Errorf("%s: field \"num_key_value_heads\": %d does not divide num_attention_heads %d", source, m.NumKeyValueHeads, m.NumAttentionHeads)
	}
	if m.HeadDim == 0 {
		if m.HiddenSize%m.NumAttentionHeads != 0 {
			return fmt.Errorf("%s: field \"head_dim\" missing and hidden_size does not divide by the heads", source)
		}
		m.HeadDim = m.HiddenSize / m.NumAttentionHeads
	}
	if _, err := dtypeBytes(m.TorchDtype); err != nil {
		return fmt.Errorf("%s: field \"torch_dtype\": %w", source, err)
	}
	return nil
}

func dtypeBytes(dtype string) (float64, error) {
	switch dtype {
	case "bfloat16", "float16", "":
		return 2, nil
	case "float32":
		return 4, nil
	}
	return 0, fmt.Errorf("unsupported dtype %q", dtype)
}

// hasQKVBias reports the Qwen2 family's biases on the q, k and v projections.
func (m *ModelConfig) hasQKVBias() bool {
	return slices.Contains(m.Architectures, "Qwen2ForCausalLM")
}

// LayerParams is the parameters of one decoder layer.
func (m *ModelConfig) LayerParams() int64 {
	h, q, kv := int64(m.HiddenSize), int64(m.NumAttentionHeads*m.HeadDim), int64(m.NumKeyValueHeads*m.HeadDim)
	attn := h*q + 2*h*kv + q*h
	if m.hasQKVBias() {
		attn += q + 2*kv
	}
	mlp := 3 * h * int64(m.IntermediateSize)
	return attn + mlp + 2*h
}

// Params is the model's total parameter count.
func (m *ModelConfig) Params() int64 {
	embed := int64(m.VocabSize) * int64(m.HiddenSize)
	total := embed + int64(m.NumHiddenLayers)*m.LayerParams() + int64(m.HiddenSize)
	if !m.TieWordEmbeddings {
		total += embed
	}
	return total
}
