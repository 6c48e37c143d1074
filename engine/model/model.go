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

// tensorSpec is one tensor Load expects: its name, shape, and where its values go (at
// offset off of *dst, which Load allocates with size total when still nil).
type tensorSpec struct {
	name  string
	shape []int
	dst   *[]float32
	off   int
	total int
}

func (m *Model) tensorSpecs() []tensorSpec {
	c := m.Config
	d, q, kv, h := c.Dim, c.QDim(), c.KVDim(), c.Hidden
	specs := []tensorSpec{{name: "model.embed_tokens.weight", shape: []int{c.Vocab, d}, dst: &m.embed}}
	for i := range m.layers {
		l := &m.layers[i]
		p := fmt.Sprintf("model.layers.%d.", i)
		qkv := (q + 2*kv) * d
		specs = append(specs,
			tensorSpec{name: p + "input_layernorm.weight", shape: []int{d}, dst: &l.attnNorm},
			tensorSpec{name: p + "self_attn.q_proj.weight", shape: []int{q, d}, dst: &l.wqkv, total: qkv},
			tensorSpec{name: p + "self_attn.k_proj.weight", shape: []int{kv, d}, dst: &l.wqkv, off: q * d, total: qkv},
			tensorSpec{name: p + "self_attn.v_proj.weight", shape: []int{kv, d}, dst: &l.wqkv, off: (q + kv) * d, total: qkv},
		)
		if c.QKVBias {
			specs = append(specs,
				tensorSpec{name: p + "self_attn.q_proj.bias", shape: []int{q}, dst: &l.bqkv, total: q + 2*kv},
				tensorSpec{name: p + "self_attn.k_proj.bias", shape: []int{kv}, dst: &l.bqkv, off: q, total: q + 2*kv},
				tensorSpec{name: p + "self_attn.v_proj.bias", shape: []int{kv}, dst: &l.bqkv, off: q + kv, total: q + 2*kv},
			)
		}
		specs = append(specs,
			tensorSpec{name: p + "self_attn.o_proj.weight", shape: []int{d, q}, dst: &l.wo},
			tensorSpec{name: p + "post_attention_layernorm.weight", shape: []int{d}, dst: &l.ffnNorm},
			tensorSpec{name: p + "mlp.gate_proj.weight", shape: []int{h, d}, dst: &l.wgu, total: 2 * h * d},
			tensorSpec{name: p + "mlp.up_proj.weight", shape: []int{h, d}, dst: &l.wgu, off: h * d, total: 2 * h * d},
			tensorSpec{name: p + "mlp.down_proj.weight", shape: []int{d, h}, dst: &l.wdown},
		)
	}
	specs = append(specs, tensorSpec{name: "model.norm.weight", shape: []int{d}, dst: &m.norm})
	if !c.Tied {
		specs = append(specs, tensorSpec{name: "lm_head.weight", shape: []int{c.Vocab, d}, dst: &m.lmHead})
	}
	return specs
}

// Load reads a Hugging Face model directory: config.json (see [ParseConfig]) and
// model.safetensors or a sharded model.safetensors.index.json. Tensors may be F32, F16 or
// BF16 and are converted to float32. Every tensor the architecture has must be present
// with exactly its Hugging Face shape; any other tensor is an error too, except rotary
// inv_freq buffers, and lm_head.weight of a tied model (ignored: the embedding is used).
// A nil pool means cpu.NewPool(0).
func Load(dir string, pool *cpu.Pool) (*Model, error) {
	data, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("model: %s: %w", dir, err)
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if pool == nil {
		pool = cpu.NewPool(0)
	}
	m := &Model{Config: cfg, pool: pool, layers: make([]layer, cfg.Layers)}
	specs := m.tensorSpecs()
	if err := m.checkTensors(dir, set, specs); err != nil {
		return nil, err
	}
	for _, s := range specs {
		t, _ := set.Tensor(s.name)
		v, err := t.Float32()
		if err != nil {
			return nil, fmt.Errorf("model: %s: tensor %s: %w", dir, s.name, err)
		}
		if s.total == 0 {
			*s.dst = v
			continue
		}
		if *s.dst == nil {
			*s.dst = make([]float32, s.total)
		}
		copy((*s.dst)[s.off:], v)
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
func (m *Model) checkTensors(dir string, set *safetensors.Set, specs []tensorSpec) error {
	var problems []string
	want := make(map[string]bool, len(specs))
	for _, s := range specs {
		want[s.name] = true
		t, ok := set.Tensor(s.name)
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("tensor %s: missing (want shape %v)", s.name, s.shape))
		case !slices.Equal(t.Shape, s.shape):
			problems = append(problems, fmt.Sprintf("tensor %s: shape %v, want %v", s.name, t.Shape, s.shape))
		}
	}
	for _, name := range set.Names() {
		if want[name] || strings.HasSuffix(name, "rotary_emb.inv_freq") {
			continue
		}
		if name == "lm_head.weight" && m.Config.Tied {
			t, _ := set.Tensor(name)
			if s := []int{m.Config.Vocab, m.Config.Dim}; !slices.Equal(t.Shape, s) {
				problems = append(problems, fmt.Sprintf("tensor %s: shape %v, want %v", name, t.Shape, s))
			}
			continue
		}
		problems = append(problems, fmt.Sprintf("tensor %s: unexpected for %s", name, m.Config.Arch))
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
