// Package latency holds the simulator's step-time models: how long one engine step takes
// given its shape. Roofline derives it from a GPU's datasheet and a model's Hugging Face
// config; Linear takes coefficients fitted (FitLinear) to the real engine's measured steps,
// stored in a Profile.
//
// StepTime is called once per simulated step, so every model computes it in constant time
// from serving.StepShape's sums, without allocating.
package latency

import (
	"embed"
	"fmt"

	"servelab/serving"
)

// Model gives the duration of an engine step in seconds.
type Model interface {
	// StepTime is the wall-clock seconds of one step of the given shape; 0 for an empty
	// step. It must be constant-time and must not allocate.
	StepTime(s serving.StepShape) float64
	// Name describes the model for logs and reports.
	Name() string
}

// Capacity is implemented by models that know how large an instance's KV cache is.
type Capacity interface {
	// KVCacheBlocks is the number of KV blocks an instance holds, as vLLM's
	// num_gpu_blocks.
	KVCacheBlocks(blockSize int, gpuMemoryUtilization float64) (int, error)
	// MaxModelLen is the longest sequence the model serves; 0 when unknown.
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
