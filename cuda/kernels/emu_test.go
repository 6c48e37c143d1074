package kernels_test

import (
	"testing"

	"servelab/cuda/kernels"
	"servelab/cuda/kernels/emu"
)

// TestKernelsEmulated runs TestKernelsMatchCPU's comparisons (its smaller shapes) with
// kernels.cu compiled for the CPU by cuda/kernels/emu, through the launch functions
// (kernels.NewModule over the emulation): no GPU, so this checks the kernels' indexing,
// tails, block/warp structure and mma fragment bookkeeping against the CPU references,
// not the GPU's arithmetic, memory model or speed. It skips without a C++ compiler (g++,
// or $CXX), except under CI=true.
func TestKernelsEmulated(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipping the emulation in -short mode")
	}
	lib := emu.Load(t)
	kernels.MatchCPUEmulated(t, lib.NewDevice(1<<30), kernels.NewModule(lib))
}
