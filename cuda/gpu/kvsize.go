package gpu

import (
	"fmt"

	"servelab/engine/model"
)

// DefaultGPUMemoryUtilization is vLLM's --gpu-memory-utilization default.
const DefaultGPUMemoryUtilization = 0.9

// DefaultMaxNumBatchedTokens is the activation reserve's token count when none is given
// (the batch policy's default token budget).
const DefaultMaxNumBatchedTokens = 2048

// activationBytes is the device memory one step of tokens rows (logitRows of which want
// logits) takes in activations: the residual and its norm, the fused q/k/v, the attention
// output, the fused gate/up and SwiGLU's output per row, float32, plus the normalised
// logit rows, their logits and their argmax (int32). The backend allocates this much before sizing the KV cache
// (vLLM profiles a forward pass of max_num_batched_tokens for the same reason) and grows
// the buffers if a step needs more.
func activationBytes(c model.Config, tokens, logitRows int) int64 {
	perRow := int64(2*c.Dim + c.QDim() + 2*c.KVDim() + c.QDim() + 2*c.Hidden + c.Hidden)
	return 4 * (int64(tokens)*perRow + int64(logitRows)*int64(c.Dim+c.Vocab+1))
}

// kvSizing is what the KV cache's size is computed from.
type kvSizing struct {
	// Total and Free are the device's memory (cuMemGetInfo) after the weights and the
	// activations are allocated.
	Total, Free uint64
	// Utilization is --gpu-memory-utilization, KVCacheMemory --kv-cache-memory-bytes,
	// NumBlocks --num-gpu-blocks-override (0: not given).
	Utilization   float64
	KVCacheMemory int64
	NumBlocks     int
	BlockBytes    int64
}

// kvBlocks sizes the KV cache as vLLM does (vllm/v1/worker/gpu_worker.py
// determine_available_memory): --num-gpu-blocks-override if given, else
// --kv-cache-memory-bytes if given, else the part of --gpu-memory-utilization × total
// memory that the weights, activations and everything else already on the device
// (another process's memory included) leave. Whatever is asked must fit in free memory.
func kvBlocks(s kvSizing) (int, error) {
	if s.BlockBytes <= 0 {
		return 0, fmt.Errorf("KV block of %d bytes", s.BlockBytes)
	}
	used := s.Total - min(s.Free, s.Total)
	switch {
	case s.NumBlocks > 0:
		if need := int64(s.NumBlocks) * s.BlockBytes; uint64(need) > s.Free {
			return 0, fmt.Errorf("--num-gpu-blocks-override %d: %d blocks of %d bytes need %s; the GPU has %s free", s.NumBlocks, s.NumBlocks, s.BlockBytes, gib(uint64(need)), gib(s.Free))
		}
		return s.NumBlocks, nil
	case s.KVCacheMemory > 0:
		if uint64(s.KVCacheMemory) > s.Free {
			return 0, fmt.Errorf("--kv-cache-memory-bytes %d: the GPU has %s free", s.KVCacheMemory, gib(s.Free))
		}
		n := int(s.KVCacheMemory / s.BlockBytes)
		if n < 1 {
			return 0, fmt.Errorf("--kv-cache-memory-bytes %d holds no KV block of %d bytes", s.KVCacheMemory, s.BlockBytes)
		}
		return n, nil
	}
	u := s.Utilization
	if u == 0 {
		u = DefaultGPUMemoryUtilization
	}
	if !(u > 0 && u <= 1) {
		return 0, fmt.Errorf("--gpu-memory-utilization %g: want a fraction in (0, 1]", u)
	}
	budget := int64(u*float64(s.Total)) - int64(used)
	if budget < s.BlockBytes {
		return 0, fmt.Errorf("--gpu-memory-utilization %g of %s is %s, and %s is already in use (weights, activations, the CUDA context, other processes): no room for a KV block of %d bytes; raise --gpu-memory-utilization or pass --kv-cache-memory-bytes",
			u, gib(s.Total), gib(uint64(u*float64(s.Total))), gib(used), s.BlockBytes)
	}
	return int(budget / s.BlockBytes), nil
}

func gib(n uint64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }
