package gpu

import (
	"errors"
	"sync"
	"testing"
	"unsafe"

	"servelab/cuda/driver"
	"servelab/cuda/kernels"
	"servelab/cuda/kernels/emu"
)

// emuTotal is the emulated device's memory as MemGetInfo states it (KV cache sizing
// reads it; the tests size the cache with NumBlocks).
const emuTotal = 1 << 30

// countingLauncher counts each kernel's launches on the way to the emulation.
type countingLauncher struct {
	l  kernels.Launcher
	mu sync.Mutex
	n  map[string]int
}

func (c *countingLauncher) Launch(k *kernels.Kernel, grid, block driver.Dim3, sharedMem uint32, s driver.Stream, args []any) error {
	c.mu.Lock()
	c.n[k.Name]++
	c.mu.Unlock()
	return c.l.Launch(k, grid, block, sharedMem, s, args)
}

func (c *countingLauncher) launched(kernel string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[kernel]
}

// emuDevice is the backend's device and ops on kernels.cu compiled for the CPU
// (cuda/kernels/emu): device memory in host memory with the driver's memory calls, and
// cuda/kernels' own launch functions (kernels.NewModule) launching the emulated kernels.
// It skips t without a C++ compiler, except under CI=true, and in -short mode.
func emuDevice(t *testing.T) testDevice {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping the kernels' emulation in -short mode")
	}
	lib := emu.Load(t)
	d := &emuHostDevice{Device: lib.NewDevice(emuTotal)}
	cl := &countingLauncher{l: lib, n: map[string]int{}}
	closed := new(int)
	open := func(int) (*opened, error) {
		return &opened{dev: d, ops: kernels.NewModule(cl), name: "CPU emulation of kernels.cu", image: "emulated",
			close: func() error { *closed++; return nil }}, nil
	}
	return testDevice{open: open, launched: cl.launched, live: func() int {
		_, _, host := d.host.counts()
		return d.Live() + host
	}, closed: closed}
}

// emuHostDevice is the emulated device with page-locked host memory, which the emulation
// does not model: Go memory (testHost), which its copies read and write as any host memory.
type emuHostDevice struct {
	*emu.Device
	host testHost
}

func (d *emuHostDevice) MemAllocHost(n uintptr) (unsafe.Pointer, error) {
	if n == 0 {
		return nil, errors.New("emu: cuMemAllocHost_v2 of 0 bytes: CUDA_ERROR_INVALID_VALUE (1)")
	}
	return d.host.alloc(n), nil
}

func (d *emuHostDevice) MemFreeHost(p unsafe.Pointer) error { return d.host.free(p) }

// TestEmulatedForwardMatchesCPU is TestFakeForwardMatchesCPU with the real kernels:
// cuda/kernels' launch functions and kernels.cu, compiled for the CPU (cuda/kernels/emu),
// under the backend's real layout, pointers, strides and launch arguments, against the CPU
// engine: in float32 (the tiny preset) greedy tokens identical and logits within 1e-4
// relative RMS error over the mixed batch and 32 decode steps; in bfloat16 (a bfloat16
// checkpoint whose inner dimensions are multiples of 8, so the bf16 embedding, the
// tensor-core GEMM and the GEMV run) logits within 1%. The emulation is not a GPU (no
// memory model, the host's arithmetic): TestForwardMatchesCPU is that check.
func TestEmulatedForwardMatchesCPU(t *testing.T) {
	for _, tc := range smallModelCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			forwardMatchesCPU(t, tc.spec, tc.dtype, emuDevice(t))
		})
	}
}

// TestEmulatedKVBlocksMatchCPU is TestFakeKVBlocksMatchCPU with the real kernels: the KV
// that sl_rope_store writes, read off the device, is the CPU cache's block for the same
// tokens (model.KVCache's format), so blocks move between CPU and GPU engines as they are.
func TestEmulatedKVBlocksMatchCPU(t *testing.T) {
	kvBlocksMatchCPU(t, emuDevice(t).open)
}

// TestEmulatedWideBatchMatchesCPU is wideBatchMatchesCPU with the real kernels, in
// float32 (tiny preset) and bfloat16 (a bfloat16 checkpoint).
func TestEmulatedWideBatchMatchesCPU(t *testing.T) {
	for _, tc := range smallModelCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			wideBatchMatchesCPU(t, tc.spec, tc.dtype, emuDevice(t))
		})
	}
}
