// Package backend loads a Hugging Face model directory for the engine: the model and its
// CPU kernels, the tokenizer, generation defaults, and a KV cache sized to a memory budget.
// It is the glue the engine command, the profiler and the local cluster share.
package backend

import (
	"fmt"
	"slices"

	"servelab/engine"
	"servelab/engine/cpu"
	"servelab/engine/model"
	"servelab/engine/server"
	"servelab/engine/tokenizer"
)

// Options choose how a model is loaded.
type Options struct {
	Dir string
	// Threads for the CPU kernels; 0 means GOMAXPROCS.
	Threads int
	// BlockSize is tokens per KV block; 0 means 16.
	BlockSize int
	// KVCacheMemory is the KV cache budget in bytes (vLLM's --kv-cache-memory-bytes);
	// 0 means 1 GiB. NumBlocks, if set, overrides it (vLLM's --num-gpu-blocks-override).
	KVCacheMemory int64
	NumBlocks     int
	// MaxModelLen caps the context; 0 means the model's max_position_embeddings, reduced
	// to what the KV cache holds.
	MaxModelLen int
	// Device is where the model runs: "" or "cpu", or "cuda" (the first GPU).
	Device string
	// DType is the weights' compute type, vLLM's --dtype: "" or "auto" (config.json's
	// torch_dtype), "float32" or "bfloat16". The CPU computes in float32 whatever the files hold.
	DType string
}

// Backend is a loaded model ready to serve.
type Backend struct {
	Model       *model.Model
	Tokenizer   *tokenizer.Tokenizer
	Generation  model.GenerationConfig
	Pool        *cpu.Pool
	Cache       *model.KVCache
	BlockSize   int
	NumBlocks   int
	MaxModelLen int
}

// DefaultKVCacheMemory is the KV budget when none is given.
const DefaultKVCacheMemory = 1 << 30

// Load reads the model directory and allocates the KV cache.
func Load(opts Options) (*Backend, error) {
	switch opts.Device {
	case "", "cpu":
	case "cuda":
		return nil, fmt.Errorf("backend: device cuda: the CUDA backend is not built yet (issue 15)")
	default:
		return nil, fmt.Errorf("backend: device %q: want cpu or cuda", opts.Device)
	}
	pool := cpu.NewPool(opts.Threads)
	m, err := model.Load(opts.Dir, pool)
	if err != nil {
		return nil, err
	}
	tok, err := tokenizer.Load(opts.Dir)
	if err != nil {
		return nil, err
	}
	gen, err := model.LoadGenerationConfig(opts.Dir)
	if err != nil {
		return nil, err
	}
	bs := opts.BlockSize
	if bs <= 0 {
		bs = 16
	}
	blocks := opts.NumBlocks
	if blocks <= 0 {
		budget := opts.KVCacheMemory
		if budget <= 0 {
			budget = DefaultKVCacheMemory
		}
		blocks = int(budget / int64(m.KVBytesPerBlock(bs)))
	}
	if blocks < 1 {
		return nil, fmt.Errorf("backend: the KV cache budget holds no block of %d bytes", m.KVBytesPerBlock(bs))
	}
	maxLen := opts.MaxModelLen
	if maxLen <= 0 {
		maxLen = min(m.Config.MaxPos, blocks*bs)
	}
	if maxLen > m.Config.MaxPos {
		return nil, fmt.Errorf("backend: max model length %d exceeds the model's max_position_embeddings %d", maxLen, m.Config.MaxPos)
	}
	return &Backend{
		Model: m, Tokenizer: tok, Generation: gen, Pool: pool,
		Cache:     m.NewKVCache(blocks, bs),
		BlockSize: bs, NumBlocks: blocks, MaxModelLen: maxLen,
	}, nil
}

// EOS is every end-of-sequence id the model's files declare: config.json,
// generation_config.json and the tokenizer's eos_token.
func (b *Backend) EOS() []int32 {
	var ids []int32
	for _, id := range b.Model.Config.EOS {
		ids = append(ids, int32(id))
	}
	for _, id := range b.Generation.EOS {
		ids = append(ids, int32(id))
	}
	ids = append(ids, b.Tokenizer.EOS()...)
	slices.Sort(ids)
	return slices.Compact(ids)
}

// NewExecutor returns an executor running the model over the backend's KV cache. Only
// one executor may run at a time per backend.
func (b *Backend) NewExecutor() engine.Executor {
	return &executor{runner: b.Model.NewRunner(b.Cache), cache: b.Cache}
}

type executor struct {
	runner *model.Runner
	cache  *model.KVCache // for engine.KVBlockIO (kvio.go)
	inputs []model.SeqInput
}

func (x *executor) Execute(batch []engine.Input) [][]float32 {
	x.inputs = x.inputs[:0]
	for _, in := range batch {
		x.inputs = append(x.inputs, model.SeqInput(in))
	}
	return x.runner.Forward(x.inputs)
}

// NewDecoder starts incremental detokenisation for the engine.
func (b *Backend) NewDecoder(skipSpecial bool) engine.TextDecoder {
	return b.Tokenizer.NewDecoder(skipSpecial)
}

// ServerTokenizer adapts the tokenizer to what the HTTP server needs.
func (b *Backend) ServerTokenizer() server.Tokenizer { return serverTokenizer{b.Tokenizer} }

// serverTokenizer has the tokenizer's EncodePrefix, so the server encodes prompts bounded
// by the context and the request's lifetime.
type serverTokenizer struct{ *tokenizer.Tokenizer }

var _ server.PrefixEncoder = serverTokenizer{}

func (t serverTokenizer) RenderChat(msgs []server.Message, addGenerationPrompt bool) (string, error) {
	conv := make([]tokenizer.Message, len(msgs))
	for i, m := range msgs {
		conv[i] = tokenizer.Message{Role: m.Role, Content: m.Content}
	}
	return t.ApplyChatTemplate(conv, addGenerationPrompt)
}
