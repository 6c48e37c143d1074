// Package backend loads a Hugging Face model directory for the engine: the model on the CPU
// (engine/model's kernels) or on an NVIDIA GPU (cuda/gpu, behind the nocuda build tag), the
// tokenizer, generation defaults, and a KV cache sized to a memory budget. It is the glue
// the engine command, the profiler and the local cluster share.
package backend

import (
	"fmt"
	"runtime"
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
	// torch_dtype), "float32" or "bfloat16". The CPU computes in float32 whatever the files
	// hold (and refuses bfloat16); the GPU computes matrices in the dtype (cuda/gpu).
	DType string
	// GPUMemoryUtilization is vLLM's --gpu-memory-utilization (cuda only; 0 means 0.9): the
	// KV cache gets that fraction of the GPU's memory less the weights and activations,
	// unless KVCacheMemory or NumBlocks say otherwise.
	GPUMemoryUtilization float64
	// MaxNumBatchedTokens and MaxNumSeqs size the GPU's activations, reserved before its KV
	// cache (0: 2048 and 256, the batch policy's defaults).
	MaxNumBatchedTokens, MaxNumSeqs int
}

// KVCache is the KV cache's block contents as the KV tiers and P/D transfers move them
// (model.KVCache on the CPU, the GPU backend on cuda).
type KVCache interface {
	BlockBytes() int
	ReadBlock(b int32, dst []byte)
	WriteBlock(b int32, src []byte)
}

// DeviceInfo says where a backend computes, as /server_info reports it.
type DeviceInfo = server.DeviceInfo

// Backend is a loaded model ready to serve.
type Backend struct {
	// Config is the model's configuration.
	Config model.Config
	// Model, Pool and CPUCache are the CPU model, its threads and its KV cache; nil on cuda.
	Model    *model.Model
	Pool     *cpu.Pool
	CPUCache *model.KVCache
	// Cache is the KV cache (CPUCache on the CPU, the GPU's on cuda).
	Cache       KVCache
	Device      DeviceInfo
	Tokenizer   *tokenizer.Tokenizer
	Generation  model.GenerationConfig
	BlockSize   int
	NumBlocks   int
	MaxModelLen int

	newExecutor func() engine.Executor
	close       func() error
}

// DefaultGPUMemoryUtilization is vLLM's --gpu-memory-utilization default.
const DefaultGPUMemoryUtilization = 0.9

// DefaultKVCacheMemory is the KV budget when none is given.
const DefaultKVCacheMemory = 1 << 30

// Load reads the model directory and allocates the KV cache.
func Load(opts Options) (*Backend, error) {
	var b *Backend
	var err error
	switch opts.Device {
	case "", "cpu":
		b, err = loadCPU(opts)
	case "cuda":
		b, err = loadCUDA(opts)
	default:
		return nil, fmt.Errorf("backend: device %q: want cpu or cuda", opts.Device)
	}
	if err != nil {
		return nil, err
	}
	if err := b.finish(opts); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// finish loads the tokenizer and generation defaults and resolves the context length.
func (b *Backend) finish(opts Options) error {
	var err error
	if b.Tokenizer, err = tokenizer.Load(opts.Dir); err != nil {
		return err
	}
	if b.Generation, err = model.LoadGenerationConfig(opts.Dir); err != nil {
		return err
	}
	maxLen := opts.MaxModelLen
	if maxLen <= 0 {
		maxLen = min(b.Config.MaxPos, b.NumBlocks*b.BlockSize)
	}
	if maxLen > b.Config.MaxPos {
		return fmt.Errorf("backend: max model length %d exceeds the model's max_position_embeddings %d", maxLen, b.Config.MaxPos)
	}
	b.MaxModelLen = maxLen
	return nil
}

// loadCPU loads the model for the CPU kernels.
func loadCPU(opts Options) (*Backend, error) {
	switch opts.DType {
	case "", "auto", "float32", "fp32", "float":
	case "bfloat16", "bf16":
		return nil, fmt.Errorf("backend: --dtype %s: the CPU kernels compute in float32 (bfloat16 is for --device cuda)", opts.DType)
	default:
		return nil, fmt.Errorf("backend: --dtype %q: want auto, float32 or bfloat16", opts.DType)
	}
	pool := cpu.NewPool(opts.Threads)
	m, err := model.Load(opts.Dir, pool)
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
	cache := m.NewKVCache(blocks, bs)
	return &Backend{
		Config: m.Config, Model: m, Pool: pool, CPUCache: cache, Cache: cache,
		Device:    DeviceInfo{Device: "cpu", Name: fmt.Sprintf("%s/%s, %d threads", runtime.GOOS, runtime.GOARCH, pool.Threads()), DType: "float32"},
		BlockSize: bs, NumBlocks: blocks,
		newExecutor: func() engine.Executor { return &executor{runner: m.NewRunner(cache), cache: cache} },
	}, nil
}

// Close releases what the backend holds on its device (the GPU's memory and context);
// nothing on the CPU.
func (b *Backend) Close() error {
	if b.close == nil {
		return nil
	}
	return b.close()
}

// EOS is every end-of-sequence id the model's files declare: config.json,
// generation_config.json and the tokenizer's eos_token.
func (b *Backend) EOS() []int32 {
	var ids []int32
	for _, id := range b.Config.EOS {
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
func (b *Backend) NewExecutor() engine.Executor { return b.newExecutor() }

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
