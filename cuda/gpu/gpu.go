// Package gpu is the engine's CUDA backend: a Llama-family model's weights, KV cache and
// activations on an NVIDIA GPU, and engine/model's forward pass ([model.Forward]) run
// through cuda/kernels' launch functions ([model.Kernels] implemented on the device).
// The engine's step loop, scheduler, KV manager and policies are the CPU engine's; only
// the kernels differ.
//
// Threading: one CUDA context, created on a dedicated goroutine locked to its OS thread
// (runtime.LockOSThread) that serves every CUDA call of the backend for its whole life:
// steps, KV block reads and writes from the tiers and P/D transfers, and the final
// cleanup. The context is current on that thread only and never moves, so no call pays a
// cuCtxSetCurrent and no two goroutines interleave driver calls; the engine's other
// goroutines hand work to it and wait. KV block copies therefore serialise with steps,
// which the engine's KVBlockIO contract allows (they touch blocks no running step uses).
//
// Memory: weights are streamed from the safetensors files tensor by tensor, each
// converted in chunks of at most 4 Mi elements to the compute dtype and copied to the
// device, so the host never holds the model in float32 (nor converted at all beyond one
// chunk). The files themselves are read whole (engine/safetensors reads each into memory,
// 16 GB for Llama-3.1-8B in bfloat16, released once Load returns). The KV cache is float32 in the CPU engine's layout (engine/model/kvcache.go),
// so KV blocks move to the CPU and disk tiers and to other engines byte for byte. Each
// step's logits are copied into page-locked host memory (cuMemAllocHost), reserved with
// the activations and grown with them; the rows Forward returns are slices of it. A greedy
// row (ForwardTokens) is reduced to its argmax on the device and only the token copied.
//
// Errors from the driver are returned: Load fails, a step fails. A failed step leaves
// the CUDA context in an unknown state (a kernel fault is sticky), so the backend keeps
// the first error and fails every later step and KV copy with it.
package gpu

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"

	"servelab/cuda/driver"
	"servelab/cuda/kernels"
	"servelab/engine/model"
	"servelab/engine/safetensors"
)

// Options choose how a model is loaded onto the GPU.
type Options struct {
	// Dir is the Hugging Face model directory.
	Dir string
	// DType is vLLM's --dtype (see ResolveDType).
	DType string
	// BlockSize is tokens per KV block; 0 means 16.
	BlockSize int
	// GPUMemoryUtilization, KVCacheMemory and NumBlocks size the KV cache (see kvBlocks):
	// vLLM's --gpu-memory-utilization (0 means 0.9), --kv-cache-memory-bytes and
	// --num-gpu-blocks-override.
	GPUMemoryUtilization float64
	KVCacheMemory        int64
	NumBlocks            int
	// MaxNumBatchedTokens and MaxNumSeqs size the activations reserved before the KV
	// cache (0: 2048 and 256).
	MaxNumBatchedTokens, MaxNumSeqs int
	// Ordinal is the CUDA device; 0 is the first GPU.
	Ordinal int
}

// Info describes a loaded backend.
type Info struct {
	// Device is the GPU's name (cuDeviceGetName), e.g. "NVIDIA H200".
	Device string
	// DType is the weights' compute dtype: "float32" or "bfloat16".
	DType string
	// Image is the kernels image loaded: "cubin sm_90" or "ptx (JIT)".
	Image string
	// TotalMemory is the device's memory; WeightBytes, ActivationBytes and KVBytes what
	// the backend allocated for each.
	TotalMemory                           uint64
	WeightBytes, ActivationBytes, KVBytes int64
}

// device is the driver calls the backend makes on its thread once a context is current:
// *driver.Driver's methods, or a host-memory fake in tests. MemAllocHost is page-locked
// host memory on a GPU (plain host memory on the fakes) that the logits are copied into.
type device interface {
	MemAlloc(bytes uintptr) (driver.DevicePtr, error)
	MemFree(p driver.DevicePtr) error
	MemAllocHost(bytes uintptr) (unsafe.Pointer, error)
	MemFreeHost(p unsafe.Pointer) error
	MemcpyHtoD(dst driver.DevicePtr, src []byte) error
	MemcpyDtoH(dst []byte, src driver.DevicePtr) error
	MemsetD8(dst driver.DevicePtr, v uint8, n uintptr) error
	CtxSynchronize() error
	MemGetInfo() (free, total uint64, err error)
}

// ops is the kernels the forward pass launches: *kernels.Module's launch functions, or
// Go implementations of their contract in tests.
type ops interface {
	EmbedF32(s driver.Stream, x, table, tokens driver.DevicePtr, rows, dim int) error
	EmbedBF16(s driver.Stream, x, table, tokens driver.DevicePtr, rows, dim int) error
	RMSNorm(s driver.Stream, out, x, rowIdx, w driver.DevicePtr, rows, dim int, eps float32) error
	RopeStore(s driver.Stream, qkv, bias, cos, sin, tokPos, tokSlot, kcache, vcache driver.DevicePtr, rows, heads, kvHeads, headDim int, scale float32) error
	AttnDecode(s driver.Stream, out, qkv, kcache, vcache, seqs, seqStart, seqPos, blockTables driver.DevicePtr, nSeqs, maxBlocks, heads, kvHeads, headDim, blockSize int) error
	AttnPrefill(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error
	AttnPrefillBF16(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error
	AttnPrefillBF16GQA(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error
	SiLUMul(s driver.Stream, act, gu driver.DevicePtr, rows, hidden int) error
	Linear(s driver.Stream, y, x, w driver.DevicePtr, rows, n, k int, dtype string, accumulate bool) error
	Argmax(s driver.Stream, idx, logits driver.DevicePtr, rows, vocab int) error
}

var _ ops = (*kernels.Module)(nil)
var _ device = (*driver.Driver)(nil)

// opened is a device ready for the backend: its context current on the worker's thread.
type opened struct {
	dev   device
	ops   ops
	name  string
	image string
	close func() error // destroys the context (on the worker's thread)
}

// opener makes the context on the worker's thread.
type opener func(ordinal int) (*opened, error)

// GPUPresent reports whether this machine has an NVIDIA GPU whose driver is loaded: the
// driver creates /dev/nvidiactl when it loads. Checking it never creates it, unlike
// cuInit on a machine with the driver library but no GPU.
func GPUPresent() bool { return driver.DevicePresent() }

// openCUDA initialises the driver and makes a context on device ordinal, current on the
// calling (locked) thread, with the kernels loaded. It calls cuInit, so only a GPU code
// path reaches it, and only where /dev/nvidiactl exists (cuInit on a machine with the
// driver library but no GPU creates device nodes as root).
func openCUDA(ordinal int) (*opened, error) {
	d, err := driver.Load()
	if err != nil {
		return nil, err
	}
	if !GPUPresent() {
		return nil, errors.New("no NVIDIA GPU: the CUDA driver library is installed but /dev/nvidiactl does not exist (the kernel driver is not loaded)")
	}
	if err := d.Init(); err != nil {
		return nil, err
	}
	n, err := d.DeviceCount()
	if err != nil {
		return nil, err
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("CUDA device %d: the machine has %d", ordinal, n)
	}
	dev, err := d.DeviceGet(ordinal)
	if err != nil {
		return nil, err
	}
	name, err := d.DeviceName(dev)
	if err != nil {
		return nil, err
	}
	ctx, err := d.CtxCreate(0, dev)
	if err != nil {
		return nil, err
	}
	mod, image, err := kernels.Load(d, dev)
	if err != nil {
		d.CtxDestroy(ctx)
		return nil, err
	}
	return &opened{dev: d, ops: mod, name: name, image: image, close: func() error { return d.CtxDestroy(ctx) }}, nil
}

// worker runs functions on one goroutine locked to its OS thread, where the CUDA context
// is current.
type worker struct {
	calls chan func()
}

func newWorker() *worker {
	w := &worker{calls: make(chan func())}
	go func() {
		// Never unlocked: the thread exits with the goroutine (after the context is
		// destroyed), so no other goroutine ever runs on it.
		runtime.LockOSThread()
		for f := range w.calls {
			f()
		}
	}()
	return w
}

// do runs f on the worker's thread and returns its error.
func (w *worker) do(f func() error) error {
	done := make(chan error, 1)
	w.calls <- func() { done <- f() }
	return <-done
}

func (w *worker) stop() { close(w.calls) }

// Backend is a model loaded on a GPU: its weights, KV cache and activations, and the
// worker thread that owns the CUDA context. Forward runs one step at a time (the engine's
// loop); ReadBlock and WriteBlock may come from other goroutines.
type Backend struct {
	cfg       model.Config
	info      Info
	blockSize int
	numBlocks int

	w *worker
	// life is held shared by every call into the worker and exclusively by Close, so
	// Close waits for a step in flight and no call reaches a stopped worker.
	life   sync.RWMutex
	closed bool       // under life
	mu     sync.Mutex // guards err
	err    error      // the first device error; every later call fails with it

	// Everything below is used on the worker's thread only.
	dev     device
	ops     ops
	closeFn func() error
	wts     weights
	kcache  []driver.DevicePtr // per layer, [numBlocks·blockSize, KVDim] float32
	vcache  []driver.DevicePtr
	k       gpuKernels
	step    model.Step // built on the caller's goroutine, read on the worker's
}

// weights are the model's weights on the device.
type weights struct {
	embed, norm, lmHead driver.DevicePtr
	layers              []layerWeights
	allocs              []driver.DevicePtr
}

type layerWeights struct {
	attnNorm, ffnNorm, wqkv, bqkv, wo, wgu, wdown driver.DevicePtr
}

func (w *weights) ptr(s model.TensorSpec) *driver.DevicePtr {
	var l *layerWeights
	if s.Layer >= 0 {
		l = &w.layers[s.Layer]
	}
	switch s.Weight {
	case model.WEmbed:
		return &w.embed
	case model.WAttnNorm:
		return &l.attnNorm
	case model.WQKV:
		return &l.wqkv
	case model.WBQKV:
		return &l.bqkv
	case model.WO:
		return &l.wo
	case model.WFFNNorm:
		return &l.ffnNorm
	case model.WGU:
		return &l.wgu
	case model.WDown:
		return &l.wdown
	case model.WNorm:
		return &w.norm
	case model.WLMHead:
		return &w.lmHead
	}
	panic(fmt.Sprintf("gpu: weight %d", s.Weight))
}

// Load loads the model directory onto CUDA device o.Ordinal and allocates its KV cache.
// Without a driver it fails with cuda/driver's ErrNoDriver; it checks the model (and the
// dtype's constraints) before touching the GPU.
func Load(o Options) (*Backend, error) {
	return load(o, openCUDA)
}

func load(o Options, open opener) (*Backend, error) {
	cfg, set, err := model.Open(o.Dir)
	if err != nil {
		return nil, err
	}
	dtype, err := ResolveDType(o.DType, cfg.TorchDType)
	if err != nil {
		return nil, fmt.Errorf("gpu: %s: %w", o.Dir, err)
	}
	if dtype == BFloat16 {
		if err := checkBF16(cfg); err != nil {
			return nil, fmt.Errorf("gpu: %s: --dtype bfloat16: %w", o.Dir, err)
		}
	}
	if cfg.HeadDim > kernels.MaxHeadDim || cfg.HeadDim%2 != 0 {
		return nil, fmt.Errorf("gpu: %s: head_dim %d: the attention kernels need it even and at most %d", o.Dir, cfg.HeadDim, kernels.MaxHeadDim)
	}
	bs := o.BlockSize
	if bs <= 0 {
		bs = 16
	}
	b := &Backend{cfg: cfg, blockSize: bs, w: newWorker()}
	b.info.DType = dtype
	if err := b.w.do(func() error { return b.setup(o, open, set, dtype) }); err != nil {
		b.w.do(b.release)
		b.w.stop()
		return nil, fmt.Errorf("gpu: %w", err)
	}
	return b, nil
}

// setup runs on the worker: context, weights, activations, KV cache.
func (b *Backend) setup(o Options, open opener, set *safetensors.Set, dtype string) error {
	op, err := open(o.Ordinal)
	if err != nil {
		return err
	}
	b.dev, b.ops, b.closeFn = op.dev, op.ops, op.close
	b.info.Device, b.info.Image = op.name, op.image
	b.k = gpuKernels{b: b, dtype: dtype, eps: float32(b.cfg.NormEps), scale: float32(1 / math.Sqrt(float64(b.cfg.HeadDim)))}
	if err := b.uploadWeights(set, dtype); err != nil {
		return err
	}
	// Rotary tables for the model's positions (grown if a step goes beyond).
	if err := b.k.ensureRope(min(b.cfg.MaxPos, 1<<17)); err != nil {
		return err
	}
	tokens := o.MaxNumBatchedTokens
	if tokens <= 0 {
		tokens = DefaultMaxNumBatchedTokens
	}
	seqs := o.MaxNumSeqs
	if seqs <= 0 {
		seqs = 256
	}
	if err := b.k.reserve(tokens, min(seqs, tokens)); err != nil {
		return fmt.Errorf("activations for %d tokens: %w", tokens, err)
	}
	b.info.ActivationBytes = activationBytes(b.cfg, tokens, min(seqs, tokens))
	free, total, err := b.dev.MemGetInfo()
	if err != nil {
		return err
	}
	b.info.TotalMemory = total
	blockBytes := int64(b.BlockBytes())
	n, err := kvBlocks(kvSizing{Total: total, Free: free, Utilization: o.GPUMemoryUtilization,
		KVCacheMemory: o.KVCacheMemory, NumBlocks: o.NumBlocks, BlockBytes: blockBytes})
	if err != nil {
		return err
	}
	if err := b.allocKV(n); err != nil {
		return err
	}
	return b.dev.CtxSynchronize()
}

// allocKV allocates (and zeroes) n blocks of KV cache, fewer if n·blockSize slots would
// overflow the int32 slot numbers the kernels take: per layer, keys and values of
// [n·blockSize, KVDim] float32.
func (b *Backend) allocKV(n int) error {
	if int64(n)*int64(b.blockSize) > math.MaxInt32 {
		n = math.MaxInt32 / b.blockSize
	}
	b.numBlocks = n
	per := uintptr(n) * uintptr(b.blockSize) * uintptr(b.cfg.KVDim()) * 4
	for range b.cfg.Layers {
		for _, dst := range []*[]driver.DevicePtr{&b.kcache, &b.vcache} {
			p, err := b.dev.MemAlloc(per)
			if err != nil {
				return fmt.Errorf("KV cache of %d blocks: %w", n, err)
			}
			*dst = append(*dst, p)
			if err := b.dev.MemsetD8(p, 0, per); err != nil {
				return err
			}
		}
	}
	b.info.KVBytes = int64(n) * int64(b.BlockBytes())
	return nil
}

// uploadWeights streams every tensor to the device in the compute dtype.
func (b *Backend) uploadWeights(set *safetensors.Set, dtype string) error {
	b.wts.layers = make([]layerWeights, b.cfg.Layers)
	var buf []byte
	for _, s := range model.TensorSpecs(b.cfg) {
		t, _ := set.Tensor(s.Name) // model.Open checked every one is there with its shape
		es := elemSize(s.Weight, dtype)
		p := b.wts.ptr(s)
		if *p == 0 {
			size := uintptr(s.Total) * uintptr(es)
			q, err := b.dev.MemAlloc(size)
			if err != nil {
				return fmt.Errorf("tensor %s: %d bytes: %w", s.Name, size, err)
			}
			*p = q
			b.wts.allocs = append(b.wts.allocs, q)
			b.info.WeightBytes += int64(size)
		}
		out := Float32
		if es == 2 {
			out = BFloat16
		}
		base := *p + driver.DevicePtr(s.Off*es)
		err := stream(t, out, &buf, func(off int, chunk []byte) error {
			return b.dev.MemcpyHtoD(base+driver.DevicePtr(off*es), chunk)
		})
		if err != nil {
			return fmt.Errorf("tensor %s: %w", s.Name, err)
		}
	}
	if b.cfg.Tied {
		b.wts.lmHead = b.wts.embed
	}
	return nil
}

// release frees everything on the device and destroys the context (on the worker).
func (b *Backend) release() error {
	if b.dev == nil {
		return nil
	}
	var errs []error
	free := func(p driver.DevicePtr) {
		if p != 0 {
			errs = append(errs, b.dev.MemFree(p))
		}
	}
	for _, p := range b.wts.allocs {
		free(p)
	}
	for i := range b.kcache {
		free(b.kcache[i])
	}
	for i := range b.vcache {
		free(b.vcache[i])
	}
	b.k.freeAll(free, func(p unsafe.Pointer) { errs = append(errs, b.dev.MemFreeHost(p)) })
	b.wts, b.kcache, b.vcache = weights{}, nil, nil
	if b.closeFn != nil {
		errs = append(errs, b.closeFn())
	}
	b.dev = nil
	return errors.Join(errs...)
}

// Close waits for a step or KV copy in flight, then frees the device memory, destroys the
// context and stops the worker; later calls fail saying the backend is closed.
func (b *Backend) Close() error {
	b.life.Lock()
	defer b.life.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	err := b.w.do(b.release)
	b.w.stop()
	return err
}

// Config is the model's configuration.
func (b *Backend) Config() model.Config { return b.cfg }

// Info describes the device and what the backend allocated.
func (b *Backend) Info() Info { return b.info }

// NumBlocks and BlockSize are the KV cache's shape.
func (b *Backend) NumBlocks() int { return b.numBlocks }
func (b *Backend) BlockSize() int { return b.blockSize }

// Err is the device error that stopped the backend, or nil.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// run runs f on the worker unless the backend has failed or closed, keeping f's error as
// the backend's.
func (b *Backend) run(f func() error) error {
	b.life.RLock()
	defer b.life.RUnlock()
	if b.closed {
		return errors.New("gpu: the backend is closed")
	}
	if err := b.Err(); err != nil {
		return err
	}
	if err := b.w.do(f); err != nil {
		b.mu.Lock()
		if b.err == nil {
			b.err = fmt.Errorf("gpu: %w (the CUDA backend stops: every later step fails)", err)
		}
		err = b.err
		b.mu.Unlock()
		return err
	}
	return nil
}

// Forward computes one step on the GPU, as model.Runner.Forward does on the CPU, and
// returns its logits rows (page-locked host memory the backend reuses, valid until the
// next Forward or Close: engine.Executor's contract). Inconsistent input
// is an error before anything runs (and does not stop the backend); a device error
// fails this step and every later one.
func (b *Backend) Forward(batch []model.SeqInput) ([][]float32, error) {
	if err := b.step.Build(batch, &b.cfg, b.numBlocks, b.blockSize); err != nil {
		return nil, err
	}
	var out [][]float32
	err := b.run(func() error {
		var err error
		out, err = model.Forward(&b.k, &b.step, b.cfg.Layers)
		return err
	})
	b.step.Batch = nil
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ForwardTokens is Forward for a batch with Greedy inputs (engine.TokenExecutor's
// contract): the argmax of each greedy row is taken on the device (sl_argmax, whose choice
// is engine/sampling.Argmax's) and only it is copied back, 4 bytes instead of the row's
// Vocab float32s; the other rows' logits come back as Forward returns them, and a greedy
// row's is nil. tokens has an entry per logits row, meaningful for the greedy ones (nil
// when no row is greedy: then no sl_argmax runs).
func (b *Backend) ForwardTokens(batch []model.SeqInput) (logits [][]float32, tokens []int32, err error) {
	if err := b.step.Build(batch, &b.cfg, b.numBlocks, b.blockSize); err != nil {
		return nil, nil, err
	}
	err = b.run(func() error {
		var err error
		logits, tokens, err = model.ForwardTokens(&b.k, &b.step, b.cfg.Layers)
		return err
	})
	b.step.Batch = nil
	if err != nil {
		return nil, nil, err
	}
	return logits, tokens, nil
}

// BlockBytes is one KV block's size as ReadBlock writes it: every layer's keys then
// values for the block's positions, float32 little-endian (model.KVCache's format).
func (b *Backend) BlockBytes() int {
	return 2 * b.cfg.Layers * b.blockSize * b.cfg.KVDim() * 4
}

// blockCopy checks a block id and buffer size, as model.KVCache's do.
func (b *Backend) blockCopy(blk int32, size int) (per uintptr, off driver.DevicePtr) {
	if blk < 0 || int(blk) >= b.numBlocks {
		panic(fmt.Sprintf("gpu: KV block %d out of range [0, %d)", blk, b.numBlocks))
	}
	if size != b.BlockBytes() {
		panic(fmt.Sprintf("gpu: KV block buffer of %d bytes, want %d", size, b.BlockBytes()))
	}
	per = uintptr(b.blockSize * b.cfg.KVDim() * 4)
	return per, driver.DevicePtr(uintptr(blk) * per)
}

// ReadBlock copies block blk's keys and values, every layer, from the device into dst
// (BlockBytes long), in model.KVCache's format. A device error stops the backend (the
// next step fails with it) and leaves dst zeroed.
func (b *Backend) ReadBlock(blk int32, dst []byte) {
	per, off := b.blockCopy(blk, len(dst))
	err := b.run(func() error {
		o := uintptr(0)
		for l := range b.cfg.Layers {
			for _, c := range [2]driver.DevicePtr{b.kcache[l], b.vcache[l]} {
				if err := b.dev.MemcpyDtoH(dst[o:o+per], c+off); err != nil {
					return fmt.Errorf("reading KV block %d: %w", blk, err)
				}
				o += per
			}
		}
		return nil
	})
	if err != nil {
		clear(dst)
	}
}

// WriteBlock fills block blk from src, as ReadBlock wrote it. A device error stops the
// backend: the next step fails with it.
func (b *Backend) WriteBlock(blk int32, src []byte) {
	per, off := b.blockCopy(blk, len(src))
	b.run(func() error {
		o := uintptr(0)
		for l := range b.cfg.Layers {
			for _, c := range [2]driver.DevicePtr{b.kcache[l], b.vcache[l]} {
				if err := b.dev.MemcpyHtoD(c+off, src[o:o+per]); err != nil {
					return fmt.Errorf("writing KV block %d: %w", blk, err)
				}
				o += per
			}
		}
		return nil
	})
}

// bytesOf is s's memory as bytes.
func bytesOf[T int32 | float32](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*4)
}
