// Package model is the CPU engine's Llama-family transformer: Hugging Face config and
// safetensors loading, and a batched forward pass over a paged KV cache.
//
// One [Runner.Forward] computes a step of the engine loop: the tokens of every sequence in
// the batch (prefill chunks and single decode tokens mixed) are concatenated into one
// activation matrix, so each linear layer is a single matrix multiplication over all of
// them. Keys and values are written into the KV cache blocks that each sequence's block
// table names (the block table of engine/kv's Manager), then attention reads them back
// through the block table. Prefix-cache hits (a block table whose leading blocks another
// sequence filled) and recomputation after preemption need nothing special.
//
// Supported: LlamaForCausalLM, Qwen2ForCausalLM (q/k/v biases) and MistralForCausalLM, with
// grouped-query attention, tied or untied classifiers, an explicit head_dim, and linear or
// Llama 3.1 rope scaling. RoPE uses Hugging Face's rotate-half layout. Weights may be
// F32, F16 or BF16 in the files; they are computed in float32.
package model

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"servelab/engine/cpu"
	"servelab/engine/safetensors"
)

// ConfigFile is the name of the model configuration in a model directory.
const ConfigFile = "config.json"

// Model is a loaded transformer. Its weights are read-only once loaded. Its Runners share
// its cpu.Pool, whose methods must not be called concurrently, so one Forward runs at a
// time per Model.
type Model struct {
	Config Config

	pool   *cpu.Pool
	embed  []float32 // [Vocab, Dim]
	layers []layer
	norm   []float32 // [Dim]
	lmHead []float32 // [Vocab, Dim]; the embedding when tied

	invFreq []float64 // [HeadDim/2], rope scaling applied
	ropeMu  sync.Mutex
	rope    atomic.Pointer[ropeTable]
}

// layer is one decoder layer's weights, with the projections that share an input fused
// into one matrix so that each takes one MatMul.
type layer struct {
	attnNorm, ffnNorm []float32 // [Dim]
	wqkv              []float32 // [QDim+2*KVDim, Dim]: q_proj rows, then k_proj, then v_proj
	bqkv              []float32 // [QDim+2*KVDim] or nil
	wo                []float32 // [Dim, QDim]
	wgu               []float32 // [2*Hidden, Dim]: gate_proj rows, then up_proj
	wdown             []float32 // [Dim, Hidden]
}

// Pool is the thread pool the model computes with.
func (m *Model) Pool() *cpu.Pool { return m.pool }

// Weight names one of the model's (fused) weights as the forward pass holds it.
type Weight uint8

const (
	WEmbed    Weight = iota // [Vocab, Dim]
	WAttnNorm               // [Dim], per layer
	WQKV                    // [QDim+2*KVDim, Dim], per layer: q_proj rows, then k_proj, then v_proj
	WBQKV                   // [QDim+2*KVDim], per layer, with QKVBias
	WO                      // [Dim, QDim], per layer
	WFFNNorm                // [Dim], per layer
	WGU                     // [2*Hidden, Dim], per layer: gate_proj rows, then up_proj
	WDown                   // [Dim, Hidden], per layer
	WNorm                   // [Dim]
	WLMHead                 // [Vocab, Dim], untied models only
)

// TensorSpec is one tensor of the checkpoint and where it goes: elements [Off, Off+size)
// of weight Weight (of layer Layer; -1 for the model's own), which holds Total elements.
type TensorSpec struct {
	Name   string
	Shape  []int
	Weight Weight
	Layer  int
	Off    int
	Total  int
}

// TensorSpecs lists every tensor a model of config c loads, in checkpoint order
// (Hugging Face names and shapes), fused into the forward pass's weights.
func TensorSpecs(c Config) []TensorSpec {
	d, q, kv, h := c.Dim, c.QDim(), c.KVDim(), c.Hidden
	specs := []TensorSpec{{Name: "model.embed_tokens.weight", Shape: []int{c.Vocab, d}, Weight: WEmbed, Layer: -1, Total: c.Vocab * d}}
	for i := range c.Layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		qkv := (q + 2*kv) * d
		specs = append(specs,
			TensorSpec{Name: p + "input_layernorm.weight", Shape: []int{d}, Weight: WAttnNorm, Layer: i, Total: d},
			TensorSpec{Name: p + "self_attn.q_proj.weight", Shape: []int{q, d}, Weight: WQKV, Layer: i, Total: qkv},
			TensorSpec{Name: p + "self_attn.k_proj.weight", Shape: []int{kv, d}, Weight: WQKV, Layer: i, Off: q * d, Total: qkv},
			TensorSpec{Name: p + "self_attn.v_proj.weight", Shape: []int{kv, d}, Weight: WQKV, Layer: i, Off: (q + kv) * d, Total: qkv},
		)
		if c.QKVBias {
			specs = append(specs,
				TensorSpec{Name: p + "self_attn.q_proj.bias", Shape: []int{q}, Weight: WBQKV, Layer: i, Total: q + 2*kv},
				TensorSpec{Name: p + "self_attn.k_proj.bias", Shape: []int{kv}, Weight: WBQKV, Layer: i, Off: q, Total: q + 2*kv},
				TensorSpec{Name: p + "self_attn.v_proj.bias", Shape: []int{kv}, Weight: WBQKV, Layer: i, Off: q + kv, Total: q + 2*kv},
			)
		}
		specs = append(specs,
			TensorSpec{Name: p + "self_attn.o_proj.weight", Shape: []int{d, q}, Weight: WO, Layer: i, Total: d * q},
			TensorSpec{Name: p + "post_attention_layernorm.weight", Shape: []int{d}, Weight: WFFNNorm, Layer: i, Total: d},
			TensorSpec{Name: p + "mlp.gate_proj.weight", Shape: []int{h, d}, Weight: WGU, Layer: i, Total: 2 * h * d},
			TensorSpec{Name: p + "mlp.up_proj.weight", Shape: []int{h, d}, Weight: WGU, Layer: i, Off: h * d, Total: 2 * h * d},
			TensorSpec{Name: p + "mlp.down_proj.weight", Shape: []int{d, h}, Weight: WDown, Layer: i, Total: d * h},
		)
	}
	specs = append(specs, TensorSpec{Name: "model.norm.weight", Shape: []int{d}, Weight: WNorm, Layer: -1, Total: d})
	if !c.Tied {
		specs = append(specs, TensorSpec{Name: "lm_head.weight", Shape: []int{c.Vocab, d}, Weight: WLMHead, Layer: -1, Total: c.Vocab * d})
	}
	return specs
}

// dst is where spec s's weight lives in m.
func (m *Model) dst(s TensorSpec) *[]float32 {
	var l *layer
	if s.Layer >= 0 {
		l = &m.layers[s.Layer]
	}
	switch s.Weight {
	case WEmbed:
		return &m.embed
	case WAttnNorm:
		return &l.attnNorm
	case WQKV:
		return &l.wqkv
	case WBQKV:
		return &l.bqkv
	case WO:
		return &l.wo
	case WFFNNorm:
		return &l.ffnNorm
	case WGU:
		return &l.wgu
	case WDown:
		return &l.wdown
	case WNorm:
		return &m.norm
	case WLMHead:
		return &m.lmHead
	}
	panic(fmt.Sprintf("model: weight %d", s.Weight))
}

// Open reads a model directory's config.json and opens its safetensors checkpoint,
// checking that every tensor the architecture has is present with exactly its Hugging
// Face shape (see [Load]); nothing is converted. A backend loading the weights elsewhere
// (a GPU) streams them from the returned set tensor by tensor, as TensorSpecs lists them.
func Open(dir string) (Config, *safetensors.Set, error) {
	data, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return Config{}, nil, fmt.Errorf("model: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, nil, fmt.Errorf("model: %s: %w", dir, err)
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return Config{}, nil, fmt.Errorf("model: %w", err)
	}
	if err := checkTensors(dir, cfg, set, TensorSpecs(cfg)); err != nil {
		return Config{}, nil, err
	}
	return cfg, set, nil
}

// Load reads a Hugging Face model directory: config.json (see [ParseConfig]) and
// model.safetensors or a sharded model.safetensors.index.json. Tensors may be F32, F16 or
// BF16 and are converted to float32. Every tensor the architecture has must be present
// with exactly its Hugging Face shape; any other tensor is an error too, except rotary
// inv_freq buffers, and lm_head.weight of a tied model (ignored: the embedding is used).
// A nil pool means cpu.NewPool(0).
func Load(dir string, pool *cpu.Pool) (*Model, error) {
	cfg, set, err := Open(dir)
	if err != nil {
		return nil, err
	}
	if pool == nil {
		pool = cpu.NewPool(0)
	}
	m := &Model{Config: cfg, pool: pool, layers: make([]layer, cfg.Layers)}
	for _, s := range TensorSpecs(cfg) {
		t, _ := set.Tensor(s.Name)
		v, err := t.Float32()
		if err != nil {
			return nil, fmt.Errorf("model: %s: tensor %s: %w", dir, s.Name, err)
		}
		dst := m.dst(s)
		if s.Off == 0 && len(v) == s.Total {
			*dst = v
			continue
		}
		if *dst == nil {
			*dst = make([]float32, s.Total)
		}
		copy((*dst)[s.Off:], v)
	}
	if cfg.Tied {
		m.lmHead = m.embed
	}
	m.invFreq = invFreq(cfg)
	m.rope.Store(newRopeTable(m.invFreq, min(cfg.MaxPos, initialRopePositions)))
	return m, nil
}

// checkTensors reports the first missing or misshapen tensor, then any unexpected one,
// saying how many other problems there are.
func checkTensors(dir string, cfg Config, set *safetensors.Set, specs []TensorSpec) error {
	var problems []string
	want := make(map[string]bool, len(specs))
	for _, s := range specs {
		want[s.Name] = true
		t, ok := set.Tensor(s.Name)
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("tensor %s: missing (want shape %v)", s.Name, s.Shape))
		case !slices.Equal(t.Shape, s.Shape):
			problems = append(problems, fmt.Sprintf("tensor %s: shape %v, want %v", s.Name, t.Shape, s.Shape))
		}
	}
	for _, name := range set.Names() {
		if want[name] || strings.HasSuffix(name, "rotary_emb.inv_freq") {
			continue
		}
		if name == "lm_head.weight" && cfg.Tied {
			t, _ := set.Tensor(name)
			if s := []int{cfg.Vocab, cfg.Dim}; !slices.Equal(t.Shape, s) {
				problems = append(problems, fmt.Sprintf("tensor %s: shape %v, want %v", name, t.Shape, s))
			}
			continue
		}
		problems = append(problems, fmt.Sprintf("tensor %s: unexpected for %s", name, cfg.Arch))
	}
	switch len(problems) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("model: %s: %s", dir, problems[0])
	default:
		return fmt.Errorf("model: %s: %s (and %d more tensor problems)", dir, problems[0], len(problems)-1)
	}
}

// KVBytesPerBlock is the memory one KV block of blockSize tokens takes: keys and values of
// every layer, float32.
func (m *Model) KVBytesPerBlock(blockSize int) int {
	return 2 * m.Config.Layers * blockSize * m.Config.KVDim() * 4
}
