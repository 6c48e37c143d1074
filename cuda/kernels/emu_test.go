package kernels

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"

	"servelab/cuda/driver"
)

// emuLib is kernels.cu compiled for the CPU with testdata/emu/emu.h (see there), loaded
// as a shared library.
type emuLib struct {
	launch func(name *byte, gx, gy, gz, bx, by, bz uint32, args *uint64, n int32) int32
	alloc  func(n uint64) uint64
	free   func(p uint64)
	htod   func(dst uint64, src unsafe.Pointer, n uint64)
	dtoh   func(dst unsafe.Pointer, src uint64, n uint64)
}

// emuDispatch writes the C++ that calls each kernel of Table with its arguments.
func emuDispatch() string {
	var b strings.Builder
	b.WriteString(`#include "emu.h"
#include "kernels.cu"

// EmuArg converts a launch argument (its bits in 64) to the kernel parameter's type.
struct EmuArg {
	uint64_t v;
	template <class T> operator T *() const { return (T *)(uintptr_t)v; }
	operator int() const { return (int)(uint32_t)v; }
	operator float() const { return __uint_as_float((uint32_t)v); }
};

extern "C" int emu_launch(const char *name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, const uint64_t *args, int n) {
	const EmuArg *a = (const EmuArg *)args;
	const emu_dim3 grid{gx, gy, gz}, block{bx, by, bz};
`)
	for _, k := range Table {
		var args []string
		for i := range k.Params {
			args = append(args, fmt.Sprintf("a[%d]", i))
		}
		fmt.Fprintf(&b, "\tif (!strcmp(name, %q)) return n == %d ? emu_launch_grid(grid, block, [&] { %s(%s); }) : -3;\n",
			k.Name, len(k.Params), k.Name, strings.Join(args, ", "))
	}
	b.WriteString(`	return -1;
}

extern "C" uint64_t emu_alloc(uint64_t n) {
	void *p = aligned_alloc(256, (n + 255) / 256 * 256);
	memset(p, 0xff, n); // uninitialised device memory: NaN as float32
	return (uint64_t)(uintptr_t)p;
}
extern "C" void emu_free(uint64_t p) { free((void *)(uintptr_t)p); }
extern "C" void emu_htod(uint64_t dst, const void *src, uint64_t n) { memcpy((void *)(uintptr_t)dst, src, n); }
extern "C" void emu_dtoh(void *dst, uint64_t src, uint64_t n) { memcpy(dst, (const void *)(uintptr_t)src, n); }
`)
	return b.String()
}

// buildEmu compiles the emulation with the host's C++ compiler; it skips without one.
func buildEmu(t *testing.T) *emuLib {
	t.Helper()
	cxx := os.Getenv("CXX")
	if cxx == "" {
		cxx = "g++"
	}
	if _, err := exec.LookPath(cxx); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: no C++ compiler (%s) for the emulation (.ci/run installs g++): %v", cxx, err)
		}
		t.Skipf("skipping: no C++ compiler (%s) for the emulation: %v", cxx, err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "emu.cpp")
	if err := os.WriteFile(src, []byte(emuDispatch()), 0o644); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(dir, "emu.so")
	cmd := exec.Command(cxx, "-std=c++20", "-O1", "-g0", "-fPIC", "-shared", "-ffp-contract=off", "-Wno-unknown-pragmas",
		"-I", filepath.Join(wd, "testdata", "emu"), "-I", wd, "-o", lib, src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	h, err := purego.Dlopen(lib, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		t.Fatal(err)
	}
	e := &emuLib{}
	for name, fptr := range map[string]any{"emu_launch": &e.launch, "emu_alloc": &e.alloc, "emu_free": &e.free, "emu_htod": &e.htod, "emu_dtoh": &e.dtoh} {
		purego.RegisterLibFunc(fptr, h, name)
	}
	return e
}

type emuMemory struct{ e *emuLib }

func (m emuMemory) alloc(n int) (driver.DevicePtr, error) {
	return driver.DevicePtr(m.e.alloc(uint64(n))), nil
}
func (m emuMemory) htod(p driver.DevicePtr, b []byte) error {
	if len(b) > 0 {
		m.e.htod(uint64(p), unsafe.Pointer(&b[0]), uint64(len(b)))
	}
	return nil
}
func (m emuMemory) dtoh(b []byte, p driver.DevicePtr) error {
	if len(b) > 0 {
		m.e.dtoh(unsafe.Pointer(&b[0]), uint64(p), uint64(len(b)))
	}
	return nil
}
func (m emuMemory) sync() error { return nil }

// emuLauncher runs launches in the emulation, synchronously.
type emuLauncher struct{ e *emuLib }

func (l emuLauncher) launch(k *Kernel, grid, block driver.Dim3, sharedMem uint32, s driver.Stream, args []any) error {
	a := make([]uint64, len(args))
	for i, v := range args {
		switch v := v.(type) {
		case driver.DevicePtr:
			a[i] = uint64(v)
		case int32:
			a[i] = uint64(uint32(v))
		case float32:
			a[i] = uint64(math.Float32bits(v))
		}
	}
	name := append([]byte(k.Name), 0)
	var ap *uint64
	if len(a) > 0 {
		ap = &a[0]
	}
	if rc := l.e.launch(&name[0], grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, ap, int32(len(a))); rc != 0 {
		return fmt.Errorf("emulation: launching %s: code %d", k.Name, rc)
	}
	return nil
}

// TestKernelsEmulated runs TestKernelsMatchCPU's comparisons (its smaller shapes) with
// kernels.cu compiled for the CPU through testdata/emu/emu.h: no GPU, so this checks the
// kernels' indexing, tails, block/warp structure and mma fragment bookkeeping against the
// CPU references, not the GPU's arithmetic, memory model or speed. It skips without a
// C++ compiler (g++, or $CXX), except under CI=true.
func TestKernelsEmulated(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipping the emulation in -short mode")
	}
	e := buildEmu(t)
	g := &gpu{t: t, mem: emuMemory{e}, m: &Module{l: emuLauncher{e}}, emulated: true}
	t.Cleanup(func() {
		for _, p := range g.alloc {
			e.free(uint64(p))
		}
	})
	matchCPU(t, g)
}
