package kernels

import (
	"errors"
	"fmt"
	"math"
	"unsafe"

	"servelab/cuda/driver"
)

// The compiled images, set by embed.go from the files `go generate` writes; nil in a tree
// that has never been generated.
var cubinImage, ptxImage []byte

// Arch is the GPU architecture the cubin is compiled for; any other GPU JIT-compiles
// the PTX.
const Arch = "sm_90"

// Module is the kernels' launch functions (ops.go) over a Launcher: the kernels loaded
// into the current CUDA context (Load), or another implementation of them (NewModule).
type Module struct {
	l Launcher
}

// Launcher runs one kernel of Table: the driver's (Load), cuda/kernels/emu's CPU
// emulation of kernels.cu, or a recorder in tests that check every launch function's
// arguments against Table without a GPU. Launch gets the kernel's table entry, the grid
// and block its launch function computed (never an empty grid) and its arguments in the
// table's order, already checked against k.Params: driver.DevicePtr for Ptr, int32 for
// I32, float32 for F32. It must not keep args after it returns.
type Launcher interface {
	Launch(k *Kernel, grid, block driver.Dim3, sharedMem uint32, s driver.Stream, args []any) error
}

// NewModule returns the launch functions over l; Load makes the driver's.
func NewModule(l Launcher) *Module { return &Module{l: l} }

// Image picks the image for a GPU of compute capability major.minor: the cubin on
// sm_90, else the PTX (which the driver JIT-compiles, for newer GPUs too).
func Image(major, minor int) (image []byte, kind string, err error) {
	if len(cubinImage) == 0 || len(ptxImage) == 0 {
		return nil, "", errors.New("kernels: no compiled kernels in this build (run go generate ./cuda/kernels)")
	}
	if major == 9 && minor == 0 {
		return cubinImage, "cubin " + Arch, nil
	}
	if major < 8 {
		return nil, "", fmt.Errorf("kernels: compute capability %d.%d: the kernels need 8.0 or newer (bf16 tensor-core mma.sync)", major, minor)
	}
	// cuModuleLoadData wants PTX NUL-terminated.
	return append(append([]byte(nil), ptxImage...), 0), "ptx (JIT)", nil
}

// Load loads the kernels into the current context of device dev and resolves every
// kernel of Table. kind says which image loaded ("cubin sm_90" or "ptx (JIT)").
func Load(d *driver.Driver, dev driver.Device) (m *Module, kind string, err error) {
	major, minor, err := d.ComputeCapability(dev)
	if err != nil {
		return nil, "", err
	}
	image, kind, err := Image(major, minor)
	if err != nil {
		return nil, "", err
	}
	mod, err := d.ModuleLoadData(image)
	if err != nil {
		return nil, "", fmt.Errorf("kernels: loading the %s image: %w", kind, err)
	}
	dl := &driverLauncher{d: d, fn: make(map[string]driver.Function, len(Table))}
	for _, k := range Table {
		f, err := d.ModuleGetFunction(mod, k.Name)
		if err != nil {
			d.ModuleUnload(mod)
			return nil, "", err
		}
		dl.fn[k.Name] = f
	}
	return &Module{l: dl}, kind, nil
}

type driverLauncher struct {
	d  *driver.Driver
	fn map[string]driver.Function
}

func (dl *driverLauncher) Launch(k *Kernel, grid, block driver.Dim3, sharedMem uint32, s driver.Stream, args []any) error {
	ptrs := make([]unsafe.Pointer, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case driver.DevicePtr:
			ptrs[i] = unsafe.Pointer(&v)
		case int32:
			ptrs[i] = unsafe.Pointer(&v)
		case float32:
			ptrs[i] = unsafe.Pointer(&v)
		}
	}
	return dl.d.LaunchKernel(dl.fn[k.Name], grid, block, sharedMem, s, ptrs...)
}

// launch checks args against the table entry of name, then launches it. A Go int size
// argument must fit an int32.
func (m *Module) launch(name string, grid, block driver.Dim3, sharedMem uint32, s driver.Stream, args ...any) error {
	k, ok := Lookup(name)
	if !ok {
		return fmt.Errorf("kernels: %s is not in the table", name)
	}
	if len(args) != len(k.Params) {
		return fmt.Errorf("kernels: %s takes %d parameters, launched with %d", name, len(k.Params), len(args))
	}
	for i, a := range args {
		var got Kind
		switch v := a.(type) {
		case driver.DevicePtr:
			got = Ptr
		case int:
			if v < math.MinInt32 || v > math.MaxInt32 {
				return fmt.Errorf("kernels: %s: parameter %s = %d overflows int32", name, k.Params[i].Name, v)
			}
			args[i], got = int32(v), I32
		case int32:
			got = I32
		case float32:
			got = F32
		default:
			return fmt.Errorf("kernels: %s: parameter %s: unsupported Go type %T", name, k.Params[i].Name, a)
		}
		if got != k.Params[i].Kind {
			return fmt.Errorf("kernels: %s: parameter %d (%s) is %s, launched with %s", name, i, k.Params[i].Name, k.Params[i].Kind, got)
		}
	}
	if grid.X == 0 || grid.Y == 0 || grid.Z == 0 {
		return nil // nothing to compute
	}
	return m.l.Launch(&k, grid, block, sharedMem, s, args)
}

func ceilDiv(a, b int) uint32 { return uint32((a + b - 1) / b) }

func boolArg(b bool) int32 {
	if b {
		return 1
	}
	return 0
}
