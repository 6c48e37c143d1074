package emu_test

import (
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"
	"unsafe"

	"servelab/cuda/driver"
	"servelab/cuda/kernels"
	"servelab/cuda/kernels/emu"
)

func f32bytes(v []float32) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)) }

// TestDevice: the emulated device's memory calls behave as the driver's: 256-byte
// aligned allocations, uninitialised memory reads as NaN, copies and memsets checked
// against the allocations, the stated total enforced, frees checked; and a kernel
// launched through kernels.NewModule computes on that memory.
func TestDevice(t *testing.T) {
	lib := emu.Load(t)
	d := lib.NewDevice(1 << 20)
	x, err := d.MemAlloc(1000)
	if err != nil {
		t.Fatal(err)
	}
	y, err := d.MemAlloc(4000)
	if err != nil {
		t.Fatal(err)
	}
	if x%256 != 0 || y%256 != 0 {
		t.Errorf("allocations at %#x, %#x: want 256-byte aligned", uint64(x), uint64(y))
	}
	got := make([]float32, 250)
	if err := d.MemcpyDtoH(f32bytes(got), x); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(float64(got[0])) || !math.IsNaN(float64(got[249])) {
		t.Errorf("uninitialised memory reads %g, %g; want NaN", got[0], got[249])
	}
	a, b := make([]float32, 250), make([]float32, 250)
	for i := range a {
		a[i], b[i] = float32(i), float32(2*i)
	}
	if err := d.MemcpyHtoD(x, f32bytes(a)); err != nil {
		t.Fatal(err)
	}
	if err := d.MemcpyHtoD(y, f32bytes(b)); err != nil {
		t.Fatal(err)
	}
	if err := kernels.NewModule(lib).Add(0, x, y, 250); err != nil {
		t.Fatal(err)
	}
	if err := d.MemcpyDtoH(f32bytes(got), x); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != float32(3*i) {
			t.Fatalf("sl_add: x[%d] = %g, want %d", i, v, 3*i)
		}
	}
	if free, total, _ := d.MemGetInfo(); total != 1<<20 || free != 1<<20-5000 {
		t.Errorf("MemGetInfo = %d free of %d; want %d of %d", free, total, 1<<20-5000, 1<<20)
	}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"copy past the end", d.MemcpyHtoD(x+996, make([]byte, 8)), "cuMemcpyHtoD_v2 of 8 bytes"},
		{"copy from nowhere", d.MemcpyDtoH(make([]byte, 4), 8), "not inside an allocation"},
		{"memset past the end", d.MemsetD8(y, 0, 4001), "cuMemsetD8_v2 of 4001 bytes"},
		{"alloc beyond the total", func() error { _, err := d.MemAlloc(1 << 20); return err }(), "CUDA_ERROR_OUT_OF_MEMORY"},
		{"alloc of nothing", func() error { _, err := d.MemAlloc(0); return err }(), "CUDA_ERROR_INVALID_VALUE"},
		{"free inside an allocation", d.MemFree(x + 256), "not an allocation"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: err = %v; want %q", tc.name, tc.err, tc.want)
		}
	}
	if err := d.MemsetD8(y+8, 0, 8); err != nil {
		t.Error(err)
	}
	for _, p := range []driver.DevicePtr{x, y} {
		if err := d.MemFree(p); err != nil {
			t.Error(err)
		}
	}
	if n := d.Live(); n != 0 {
		t.Errorf("%d allocations live after freeing both", n)
	}
}

// TestOverrunFaults: a kernel writing past the end of an allocation crashes the process
// (the guard page after it), as a GPU faults, rather than writing into another buffer. It
// runs the overrun in a child process (this test binary again).
func TestOverrunFaults(t *testing.T) {
	if os.Getenv("SERVELAB_EMU_OVERRUN") == "1" {
		lib := emu.Load(t)
		d := lib.NewDevice(1 << 20)
		x, _ := d.MemAlloc(1024) // 256 floats: its end is the guard page
		y, _ := d.MemAlloc(4096)
		err := kernels.NewModule(lib).Add(0, x, y, 256+64)
		t.Fatalf("sl_add 64 floats past the allocation returned (err %v) instead of faulting", err)
	}
	emu.Load(t) // skips without a compiler, as the child would
	cmd := exec.Command(os.Args[0], "-test.run=^TestOverrunFaults$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SERVELAB_EMU_OVERRUN=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "SIGSEGV") {
		t.Fatalf("the overrun child: err %v, output:\n%.2000s\nwant a SIGSEGV crash", err, out)
	}
}
