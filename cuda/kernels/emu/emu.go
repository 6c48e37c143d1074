// Package emu runs cuda/kernels' CUDA C (kernels.cu) on the CPU, for tests on machines
// without a GPU: it compiles kernels.cu with the host's C++ compiler ($CXX, or g++) and
// emu.h (a thread block as coroutines on one thread; the inline PTX helpers by the PTX
// ISA's semantics: see emu.h), loads the library with purego, and gives
//   - a kernels.Launcher (Lib.Launch), so kernels.NewModule(lib) is the real launch
//     functions (grids, argument checks and order) over the real kernels, emulated;
//   - device memory with the driver's memory calls (Device), so code written against
//     *driver.Driver's MemAlloc, MemcpyHtoD, ... runs on it unchanged.
//
// It checks the kernels' indexing, tails, synchronisation structure and fragment
// bookkeeping, and the launches' pointers, sizes and strides; it is not a GPU: no memory
// model, no timing, the host's arithmetic (no FMA contraction); a kernel's access past the
// end of an allocation faults (a guard page: see Device), other stray accesses are not
// caught. It is slow (each thread is a coroutine):
// keep shapes tiny.
package emu

import (
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"

	"servelab/cuda/driver"
	"servelab/cuda/kernels"
)

//go:embed emu.h
var header string

// ErrNoCompiler is returned by Build when the C++ compiler is not installed.
var ErrNoCompiler = errors.New("emu: no C++ compiler")

// Lib is kernels.cu compiled for the CPU and loaded. Its Launch runs one kernel at a time
// (the emulation's scheduler state is global), synchronously, on the calling thread.
type Lib struct {
	mu     sync.Mutex // serialises launches
	launch func(name *byte, gx, gy, gz, bx, by, bz uint32, args *uint64, n int32) int32
	alloc  func(n uint64) uint64
	free   func(p, n uint64)
	htod   func(dst uint64, src unsafe.Pointer, n uint64)
	dtoh   func(dst unsafe.Pointer, src uint64, n uint64)
	memset func(dst uint64, v int32, n uint64)
}

var _ kernels.Launcher = (*Lib)(nil)

// dispatch is the C++ that compiles kernels.cu with emu.h and calls each kernel of
// kernels.Table by name with its arguments, plus the memory functions.
func dispatch() string {
	var b strings.Builder
	b.WriteString(`#include "emu.h"
#include "kernels.cu"

#include <sys/mman.h>
#include <unistd.h>

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
	for _, k := range kernels.Table {
		var args []string
		for i := range k.Params {
			args = append(args, fmt.Sprintf("a[%d]", i))
		}
		fmt.Fprintf(&b, "\tif (!strcmp(name, %q)) return n == %d ? emu_launch_grid(grid, block, [&] { %s(%s); }) : -3;\n",
			k.Name, len(k.Params), k.Name, strings.Join(args, ", "))
	}
	b.WriteString(`	return -1;
}

// emu_alloc maps n bytes (rounded up to 256) so that they end where an inaccessible guard
// page begins: a kernel reading or writing past an allocation's rounded end faults at
// once instead of touching another buffer. The start is 256-byte aligned, as cuMemAlloc's.
static uint64_t emu_span(uint64_t n, uint64_t *lead) {
	const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), used = (n + 255) / 256 * 256;
	const uint64_t mapped = (used + page - 1) / page * page;
	*lead = mapped - used;
	return mapped + page;
}
extern "C" uint64_t emu_alloc(uint64_t n) {
	uint64_t lead;
	const uint64_t span = emu_span(n, &lead);
	char *base = (char *)mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) return 0;
	const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	if (mprotect(base + span - page, page, PROT_NONE) != 0) {
		munmap(base, span);
		return 0;
	}
	memset(base + lead, 0xff, n); // uninitialised device memory: NaN as float32
	return (uint64_t)(uintptr_t)(base + lead);
}
extern "C" void emu_free(uint64_t p, uint64_t n) {
	uint64_t lead;
	const uint64_t span = emu_span(n, &lead);
	munmap((char *)(uintptr_t)p - lead, span);
}
extern "C" void emu_htod(uint64_t dst, const void *src, uint64_t n) { memcpy((void *)(uintptr_t)dst, src, n); }
extern "C" void emu_dtoh(void *dst, uint64_t src, uint64_t n) { memcpy(dst, (const void *)(uintptr_t)src, n); }
extern "C" void emu_memset(uint64_t dst, int v, uint64_t n) { memset((void *)(uintptr_t)dst, v, n); }
`)
	return b.String()
}

// Compiler is the C++ compiler Build uses: $CXX, or g++.
func Compiler() string {
	if cxx := os.Getenv("CXX"); cxx != "" {
		return cxx
	}
	return "g++"
}

// Build compiles the emulation with Compiler() in dir and loads it. Without the compiler
// the error wraps ErrNoCompiler.
func Build(dir string) (*Lib, error) {
	cxx := Compiler()
	if _, err := exec.LookPath(cxx); err != nil {
		return nil, fmt.Errorf("%w (%s) for the kernels' emulation: %v", ErrNoCompiler, cxx, err)
	}
	for name, text := range map[string]string{"emu.h": header, "kernels.cu": kernels.Source(), "emu.cpp": dispatch()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	lib := filepath.Join(dir, "emu.so")
	cmd := exec.Command(cxx, "-std=c++20", "-O1", "-g0", "-fPIC", "-shared", "-ffp-contract=off", "-Wno-unknown-pragmas",
		"-U_FORTIFY_SOURCE", // emu.h's coroutines _longjmp between stacks, which the fortified longjmp refuses
		"-I", dir, "-o", lib, filepath.Join(dir, "emu.cpp"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("emu: %s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	h, err := purego.Dlopen(lib, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, fmt.Errorf("emu: loading %s: %w", lib, err)
	}
	l := &Lib{}
	for name, fptr := range map[string]any{"emu_launch": &l.launch, "emu_alloc": &l.alloc, "emu_free": &l.free,
		"emu_htod": &l.htod, "emu_dtoh": &l.dtoh, "emu_memset": &l.memset} {
		purego.RegisterLibFunc(fptr, h, name)
	}
	return l, nil
}

var shared struct {
	once sync.Once
	lib  *Lib
	err  error
}

// Load returns the emulation, built once per process (a few seconds) in a temporary
// directory removed once loaded. Without a C++ compiler it skips t, except under CI=true
// (CI installs g++), where it fails t; a compile error fails t.
func Load(t testing.TB) *Lib {
	t.Helper()
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "servelab-emu-")
		if err != nil {
			shared.err = err
			return
		}
		defer os.RemoveAll(dir) // the loaded library stays mapped
		shared.lib, shared.err = Build(dir)
	})
	switch {
	case shared.err == nil:
		return shared.lib
	case errors.Is(shared.err, ErrNoCompiler) && os.Getenv("CI") != "true":
		t.Skipf("skipping: %v", shared.err)
	case errors.Is(shared.err, ErrNoCompiler):
		t.Fatalf("CI=true: %v (.ci/run installs g++)", shared.err)
	default:
		t.Fatal(shared.err)
	}
	return nil
}

// Launch runs kernel k over grid×block in the emulation and returns when it is done; it
// implements kernels.Launcher. The stream is ignored (everything is synchronous).
func (l *Lib) Launch(k *kernels.Kernel, grid, block driver.Dim3, sharedMem uint32, s driver.Stream, args []any) error {
	a := make([]uint64, len(args))
	for i, v := range args {
		switch v := v.(type) {
		case driver.DevicePtr:
			a[i] = uint64(v)
		case int32:
			a[i] = uint64(uint32(v))
		case float32:
			a[i] = uint64(math.Float32bits(v))
		default:
			return fmt.Errorf("emu: %s: argument %d of type %T", k.Name, i, v)
		}
	}
	name := append([]byte(k.Name), 0)
	var ap *uint64
	if len(a) > 0 {
		ap = &a[0]
	}
	l.mu.Lock()
	rc := l.launch(&name[0], grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, ap, int32(len(a)))
	l.mu.Unlock()
	switch rc {
	case 0:
		return nil
	case -1:
		return fmt.Errorf("emu: launching %s: no such kernel in the emulation", k.Name)
	case -2:
		return fmt.Errorf("emu: launching %s: block %+v: the emulation runs 1-D blocks of whole warps, at most 1024 threads", k.Name, block)
	case -3:
		return fmt.Errorf("emu: launching %s: %d arguments, the kernel takes another number", k.Name, len(a))
	}
	return fmt.Errorf("emu: launching %s: code %d", k.Name, rc)
}

// Device is the emulation's device memory with *driver.Driver's memory calls, so code
// written against the driver runs on it: MemAlloc gives host memory 256-byte aligned (as
// cuMemAlloc's), filled with 0xff bytes (NaN as float32, so a kernel reading memory
// nobody wrote computes NaN), its size rounded up to 256 bytes ending at an inaccessible
// guard page (a kernel reading or writing past it crashes the process with SIGSEGV, as a
// GPU faults); MemGetInfo reports the total the Device was made with and what is
// allocated. Host copies and memsets outside an allocation are errors, as the driver's;
// kernels' accesses before an allocation or inside another are not caught. Safe for
// concurrent use.
type Device struct {
	lib   *Lib
	total uint64

	mu    sync.Mutex
	used  uint64
	bases []uint64 // sorted
	sizes map[uint64]uint64
}

// NewDevice returns device memory of total bytes (what MemGetInfo reports; MemAlloc fails
// with out of memory beyond it).
func (l *Lib) NewDevice(total uint64) *Device {
	return &Device{lib: l, total: total, sizes: map[uint64]uint64{}}
}

func (d *Device) MemAlloc(bytes uintptr) (driver.DevicePtr, error) {
	if bytes == 0 {
		return 0, errors.New("emu: cuMemAlloc_v2 of 0 bytes: CUDA_ERROR_INVALID_VALUE (1)")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.used+uint64(bytes) > d.total {
		return 0, fmt.Errorf("emu: cuMemAlloc_v2 of %d bytes (%d of %d in use): CUDA_ERROR_OUT_OF_MEMORY (2)", bytes, d.used, d.total)
	}
	p := d.lib.alloc(uint64(bytes))
	if p == 0 {
		return 0, fmt.Errorf("emu: cuMemAlloc_v2 of %d bytes: the host is out of memory: CUDA_ERROR_OUT_OF_MEMORY (2)", bytes)
	}
	i := sort.Search(len(d.bases), func(i int) bool { return d.bases[i] > p })
	d.bases = append(d.bases, 0)
	copy(d.bases[i+1:], d.bases[i:])
	d.bases[i] = p
	d.sizes[p] = uint64(bytes)
	d.used += uint64(bytes)
	return driver.DevicePtr(p), nil
}

func (d *Device) MemFree(p driver.DevicePtr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.sizes[uint64(p)]
	if !ok {
		return fmt.Errorf("emu: cuMemFree_v2 of %#x, not an allocation: CUDA_ERROR_INVALID_VALUE (1)", uint64(p))
	}
	d.lib.free(uint64(p), n)
	delete(d.sizes, uint64(p))
	i := sort.Search(len(d.bases), func(i int) bool { return d.bases[i] >= uint64(p) })
	d.bases = append(d.bases[:i], d.bases[i+1:]...)
	d.used -= n
	return nil
}

// check says whether [p, p+n) lies inside one allocation.
func (d *Device) check(call string, p driver.DevicePtr, n uintptr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	addr := uint64(p)
	if i := sort.Search(len(d.bases), func(i int) bool { return d.bases[i] > addr }) - 1; i >= 0 {
		base := d.bases[i]
		if size := d.sizes[base]; addr+uint64(n) <= base+size && addr < base+size {
			return nil
		}
	}
	return fmt.Errorf("emu: %s of %d bytes at %#x: not inside an allocation: CUDA_ERROR_INVALID_VALUE (1)", call, n, addr)
}

func (d *Device) MemcpyHtoD(dst driver.DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	if err := d.check("cuMemcpyHtoD_v2", dst, uintptr(len(src))); err != nil {
		return err
	}
	d.lib.htod(uint64(dst), unsafe.Pointer(&src[0]), uint64(len(src)))
	return nil
}

func (d *Device) MemcpyDtoH(dst []byte, src driver.DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	if err := d.check("cuMemcpyDtoH_v2", src, uintptr(len(dst))); err != nil {
		return err
	}
	d.lib.dtoh(unsafe.Pointer(&dst[0]), uint64(src), uint64(len(dst)))
	return nil
}

func (d *Device) MemsetD8(dst driver.DevicePtr, v uint8, n uintptr) error {
	if n == 0 {
		return nil
	}
	if err := d.check("cuMemsetD8_v2", dst, n); err != nil {
		return err
	}
	d.lib.memset(uint64(dst), int32(v), uint64(n))
	return nil
}

// CtxSynchronize returns at once: every launch and copy is synchronous.
func (d *Device) CtxSynchronize() error { return nil }

// MemGetInfo is the stated total and what is not allocated.
func (d *Device) MemGetInfo() (free, total uint64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.total - d.used, d.total, nil
}

// Live is the number of allocations not freed, for leak checks.
func (d *Device) Live() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sizes)
}
