//go:build !nocuda

package backend

import (
	"fmt"

	"servelab/cuda/gpu"
	"servelab/engine"
	"servelab/engine/model"
)

// loadCUDA loads the model on the first GPU (cuda/gpu). Without the NVIDIA driver it fails
// with cuda/driver's "no CUDA driver" error.
func loadCUDA(opts Options) (*Backend, error) {
	g, err := gpu.Load(gpu.Options{
		Dir: opts.Dir, DType: opts.DType, BlockSize: opts.BlockSize,
		GPUMemoryUtilization: opts.GPUMemoryUtilization, KVCacheMemory: opts.KVCacheMemory, NumBlocks: opts.NumBlocks,
		MaxNumBatchedTokens: opts.MaxNumBatchedTokens, MaxNumSeqs: opts.MaxNumSeqs,
	})
	if err != nil {
		return nil, fmt.Errorf("backend: device cuda: %w", err)
	}
	info := g.Info()
	return &Backend{
		Config: g.Config(), Cache: g,
		Device:    DeviceInfo{Device: "cuda", Name: info.Device, DType: info.DType},
		BlockSize: g.BlockSize(), NumBlocks: g.NumBlocks(),
		newExecutor: func() engine.Executor { return &gpuExecutor{g: g} },
		close:       g.Close,
	}, nil
}

// gpuExecutor runs steps on the GPU backend.
type gpuExecutor struct {
	g      *gpu.Backend
	inputs []model.SeqInput
}

var _ engine.FallibleExecutor = (*gpuExecutor)(nil)
var _ engine.TokenExecutor = (*gpuExecutor)(nil)
var _ engine.KVBlockIO = (*gpuExecutor)(nil)

// Execute is ExecuteErr for callers that cannot take an error; the engine and the
// profiler (engine/profile) call ExecuteTokens, so only another caller panics on a device
// error.
func (x *gpuExecutor) Execute(batch []engine.Input) [][]float32 {
	out, err := x.ExecuteErr(batch)
	if err != nil {
		panic(err.Error())
	}
	return out
}

// ExecuteErr runs the step on the GPU; a device error fails it (and every later one).
// Every logits row is copied back, Greedy or not.
func (x *gpuExecutor) ExecuteErr(batch []engine.Input) ([][]float32, error) {
	x.convert(batch)
	return x.g.Forward(x.inputs)
}

// ExecuteTokens runs the step on the GPU with the greedy rows' argmax taken on the device
// (gpu.Backend.ForwardTokens): only their tokens and the other rows' logits are copied
// back. The engine calls it for every step.
func (x *gpuExecutor) ExecuteTokens(batch []engine.Input) ([][]float32, []int32, error) {
	x.convert(batch)
	return x.g.ForwardTokens(x.inputs)
}

func (x *gpuExecutor) convert(batch []engine.Input) {
	x.inputs = x.inputs[:0]
	for _, in := range batch {
		x.inputs = append(x.inputs, model.SeqInput(in))
	}
}

func (x *gpuExecutor) BlockBytes() int                { return x.g.BlockBytes() }
func (x *gpuExecutor) ReadBlock(b int32, dst []byte)  { x.g.ReadBlock(b, dst) }
func (x *gpuExecutor) WriteBlock(b int32, src []byte) { x.g.WriteBlock(b, src) }
