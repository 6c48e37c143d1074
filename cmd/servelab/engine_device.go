package main

import "fmt"

// deviceHelp is --device's help.
const deviceHelp = "where the model runs: cpu, or cuda (the first NVIDIA GPU, through libcuda.so.1 loaded at run time; " +
	"fails with \"no CUDA driver\" on a machine without the NVIDIA driver; see the README for what has run on a GPU)"

// dtypeHelp is --dtype's help (vLLM's flag).
const dtypeHelp = "the weights' compute dtype (vLLM's --dtype): auto (config.json's torch_dtype: bfloat16 or float16 checkpoints " +
	"in bfloat16, float32 ones in float32), float32 or bfloat16; bfloat16 needs --device cuda and every matrix's inner dimension a multiple of 8"

// checkDevice validates --device and, for cuda, loads the driver (loadCUDADriver, which
// never calls cuInit), so a machine without one fails with "no CUDA driver" before the
// model is read.
func (f *engineFlags) checkDevice() error {
	switch f.device {
	case "", "cpu":
		return nil
	case "cuda":
		if err := loadCUDADriver(); err != nil {
			return fmt.Errorf("--device cuda: %w", err)
		}
		return nil
	default:
		return fmt.Errorf("--device %q: want cpu or cuda", f.device)
	}
}
