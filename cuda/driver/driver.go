// Package driver binds the CUDA driver API (libcuda.so.1) at run time through
// github.com/ebitengine/purego, without cgo: a servelab binary built with CGO_ENABLED=0
// loads the driver when asked to and reports ErrNoDriver on a machine without one.
//
// Loading the library (Load) resolves symbols only; it never calls cuInit. On a machine
// without a GPU, cuInit (like nvmlInit) with a real driver library installed creates
// /dev/nvidia* device nodes as root, which CI must never do, so cuInit runs only through
// an explicit Init that GPU code paths call.
//
// The signatures are the driver API's (cuda.h, CUDA 12): CUdevice is an int, CUdeviceptr
// an unsigned long long, contexts, modules, functions, streams and events are opaque
// pointers, and every call returns a CUresult. The _v2 names are the symbols cuda.h's
// macros select (cuCtxCreate -> cuCtxCreate_v2, cuMemAlloc -> cuMemAlloc_v2, ...).
package driver

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// LibName is the driver library's soname, as the NVIDIA driver installs it.
const LibName = "libcuda.so.1"

// ErrNoDriver is returned (wrapped, with the loader's reason) when libcuda.so.1 cannot be
// loaded: the machine has no NVIDIA driver.
var ErrNoDriver = errors.New("no CUDA driver: " + LibName + " not found (the NVIDIA driver is not installed on this machine)")

// Result is a CUresult.
type Result int32

// A few CUresult values (cuda.h); every other code is named by cuGetErrorName.
const (
	Success             Result = 0   // CUDA_SUCCESS
	ErrorInvalidValue   Result = 1   // CUDA_ERROR_INVALID_VALUE
	ErrorOutOfMemory    Result = 2   // CUDA_ERROR_OUT_OF_MEMORY
	ErrorNotInitialized Result = 3   // CUDA_ERROR_NOT_INITIALIZED
	ErrorNoDevice       Result = 100 // CUDA_ERROR_NO_DEVICE
)

// knownNames names the codes above when the driver cannot (cuGetErrorName failed).
var knownNames = map[Result]string{
	Success:             "CUDA_SUCCESS",
	ErrorInvalidValue:   "CUDA_ERROR_INVALID_VALUE",
	ErrorOutOfMemory:    "CUDA_ERROR_OUT_OF_MEMORY",
	ErrorNotInitialized: "CUDA_ERROR_NOT_INITIALIZED",
	ErrorNoDevice:       "CUDA_ERROR_NO_DEVICE",
}

// Error is a failed driver call: the symbol called and the CUresult it returned, with
// the driver's name and description of it.
type Error struct {
	Call        string // the symbol, e.g. "cuMemAlloc_v2"
	Code        Result
	Name        string // e.g. "CUDA_ERROR_OUT_OF_MEMORY"
	Description string // cuGetErrorString's text; may be empty
}

func (e *Error) Error() string {
	s := fmt.Sprintf("cuda: %s: %s (%d)", e.Call, e.Name, int32(e.Code))
	if e.Description != "" {
		s += ": " + e.Description
	}
	return s
}

// Opaque driver handles.
type (
	Device    int32   // CUdevice
	DevicePtr uint64  // CUdeviceptr
	Context   uintptr // CUcontext
	Module    uintptr // CUmodule
	Function  uintptr // CUfunction
	Stream    uintptr // CUstream (0 is the legacy default stream)
	Event     uintptr // CUevent
)

// Driver is the loaded library's entry points.
type Driver struct {
	handle uintptr

	cuDriverGetVersion   func(version *int32) Result
	cuInit               func(flags uint32) Result
	cuDeviceGet          func(dev *Device, ordinal int32) Result
	cuDeviceGetCount     func(count *int32) Result
	cuDeviceGetName      func(name *byte, length int32, dev Device) Result
	cuCtxCreate          func(ctx *Context, flags uint32, dev Device) Result
	cuCtxDestroy         func(ctx Context) Result
	cuModuleLoadData     func(mod *Module, image unsafe.Pointer) Result
	cuModuleUnload       func(mod Module) Result
	cuModuleGetFunction  func(fn *Function, mod Module, name *byte) Result
	cuLaunchKernel       func(fn Function, gx, gy, gz, bx, by, bz, sharedMem uint32, stream Stream, params, extra unsafe.Pointer) Result
	cuMemAlloc           func(ptr *DevicePtr, size uintptr) Result
	cuMemFree            func(ptr DevicePtr) Result
	cuMemcpyHtoD         func(dst DevicePtr, src unsafe.Pointer, size uintptr) Result
	cuMemcpyDtoH         func(dst unsafe.Pointer, src DevicePtr, size uintptr) Result
	cuMemAllocHost       func(pp *unsafe.Pointer, size uintptr) Result
	cuMemFreeHost        func(p unsafe.Pointer) Result
	cuStreamCreate       func(s *Stream, flags uint32) Result
	cuStreamSynchronize  func(s Stream) Result
	cuStreamDestroy      func(s Stream) Result
	cuEventCreate        func(e *Event, flags uint32) Result
	cuEventRecord        func(e Event, s Stream) Result
	cuEventSynchronize   func(e Event) Result
	cuEventElapsedTime   func(ms *float32, start, end Event) Result
	cuEventDestroy       func(e Event) Result
	cuGetErrorName       func(code Result, str **byte) Result
	cuDeviceGetAttribute func(v *int32, attr int32, dev Device) Result
	cuDeviceTotalMem     func(bytes *uintptr, dev Device) Result
	cuCtxSetCurrent      func(ctx Context) Result
	cuCtxSynchronize     func() Result
	cuMemGetInfo         func(free, total *uintptr) Result
	cuMemsetD8           func(dst DevicePtr, v uint8, n uintptr) Result
	cuMemcpyDtoD         func(dst, src DevicePtr, size uintptr) Result
	cuFuncGetAttribute   func(v *int32, attr int32, fn Function) Result
	cuFuncSetAttribute   func(fn Function, attr int32, v int32) Result
	cuGetErrorString     func(code Result, str **byte) Result
}

// symbols lists every entry point with the symbol it binds.
func (d *Driver) symbols() []struct {
	name string
	fptr any
} {
	return []struct {
		name string
		fptr any
	}{
		{"cuDriverGetVersion", &d.cuDriverGetVersion},
		{"cuInit", &d.cuInit},
		{"cuDeviceGet", &d.cuDeviceGet},
		{"cuDeviceGetCount", &d.cuDeviceGetCount},
		{"cuDeviceGetName", &d.cuDeviceGetName},
		{"cuCtxCreate_v2", &d.cuCtxCreate},
		{"cuCtxDestroy_v2", &d.cuCtxDestroy},
		{"cuModuleLoadData", &d.cuModuleLoadData},
		{"cuModuleUnload", &d.cuModuleUnload},
		{"cuModuleGetFunction", &d.cuModuleGetFunction},
		{"cuLaunchKernel", &d.cuLaunchKernel},
		{"cuMemAlloc_v2", &d.cuMemAlloc},
		{"cuMemFree_v2", &d.cuMemFree},
		{"cuMemcpyHtoD_v2", &d.cuMemcpyHtoD},
		{"cuMemcpyDtoH_v2", &d.cuMemcpyDtoH},
		{"cuMemAllocHost_v2", &d.cuMemAllocHost},
		{"cuMemFreeHost", &d.cuMemFreeHost},
		{"cuStreamCreate", &d.cuStreamCreate},
		{"cuStreamSynchronize", &d.cuStreamSynchronize},
		{"cuStreamDestroy_v2", &d.cuStreamDestroy},
		{"cuEventCreate", &d.cuEventCreate},
		{"cuEventRecord", &d.cuEventRecord},
		{"cuEventSynchronize", &d.cuEventSynchronize},
		{"cuEventElapsedTime", &d.cuEventElapsedTime},
		{"cuEventDestroy_v2", &d.cuEventDestroy},
		{"cuGetErrorName", &d.cuGetErrorName},
		{"cuGetErrorString", &d.cuGetErrorString},
		{"cuDeviceGetAttribute", &d.cuDeviceGetAttribute},
		{"cuDeviceTotalMem_v2", &d.cuDeviceTotalMem},
		{"cuCtxSetCurrent", &d.cuCtxSetCurrent},
		{"cuCtxSynchronize", &d.cuCtxSynchronize},
		{"cuMemGetInfo_v2", &d.cuMemGetInfo},
		{"cuMemsetD8_v2", &d.cuMemsetD8},
		{"cuMemcpyDtoD_v2", &d.cuMemcpyDtoD},
		{"cuFuncGetAttribute", &d.cuFuncGetAttribute},
		{"cuFuncSetAttribute", &d.cuFuncSetAttribute},
	}
}

// Symbols is the driver API symbols Load binds, in order.
func Symbols() []string {
	var d Driver
	var names []string
	for _, s := range d.symbols() {
		names = append(names, s.name)
	}
	return names
}

var (
	loadOnce sync.Once
	loaded   *Driver
	loadErr  error
)

// Load opens libcuda.so.1 and binds the driver API symbols, once per process; it does not
// call cuInit. Without the library it returns an error wrapping ErrNoDriver; a library
// missing one of the symbols is an error naming it.
func Load() (*Driver, error) {
	loadOnce.Do(func() { loaded, loadErr = load(LibName) })
	return loaded, loadErr
}

func load(lib string) (*Driver, error) {
	h, err := purego.Dlopen(lib, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("%w (dlopen: %v)", ErrNoDriver, err)
	}
	d := &Driver{handle: h}
	for _, s := range d.symbols() {
		addr, err := purego.Dlsym(h, s.name)
		if err != nil {
			purego.Dlclose(h)
			return nil, fmt.Errorf("cuda: %s has no symbol %s (driver too old?): %v", lib, s.name, err)
		}
		purego.RegisterFunc(s.fptr, addr)
	}
	return d, nil
}

// check turns a CUresult into an *Error naming call, or nil.
func (d *Driver) check(call string, r Result) error {
	if r == Success {
		return nil
	}
	e := &Error{Call: call, Code: r, Name: knownNames[r]}
	var p *byte
	if d.cuGetErrorName(r, &p) == Success && p != nil {
		e.Name = cString(p)
	}
	if e.Name == "" {
		e.Name = fmt.Sprintf("CUresult %d", int32(r))
	}
	p = nil
	if d.cuGetErrorString(r, &p) == Success && p != nil {
		e.Description = cString(p)
	}
	return e
}

// cString copies a NUL-terminated C string owned by the driver.
func cString(p *byte) string {
	var b []byte
	for q := unsafe.Pointer(p); *(*byte)(q) != 0; q = unsafe.Add(q, 1) {
		b = append(b, *(*byte)(q))
	}
	return string(b)
}

func cBytes(s string) []byte { return append([]byte(s), 0) }

// Version is cuDriverGetVersion: the CUDA version the driver supports (1000*major +
// 10*minor). It needs no cuInit.
func (d *Driver) Version() (int, error) {
	var v int32
	if err := d.check("cuDriverGetVersion", d.cuDriverGetVersion(&v)); err != nil {
		return 0, err
	}
	return int(v), nil
}

// Init calls cuInit(0). Only GPU code paths call it: on a machine without a GPU it creates
// /dev/nvidia* device nodes (see the package comment).
func (d *Driver) Init() error { return d.check("cuInit", d.cuInit(0)) }

// DeviceCount is cuDeviceGetCount (after Init).
func (d *Driver) DeviceCount() (int, error) {
	var n int32
	if err := d.check("cuDeviceGetCount", d.cuDeviceGetCount(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// DeviceGet is cuDeviceGet.
func (d *Driver) DeviceGet(ordinal int) (Device, error) {
	var dev Device
	return dev, d.check("cuDeviceGet", d.cuDeviceGet(&dev, int32(ordinal)))
}

// DeviceName is cuDeviceGetName.
func (d *Driver) DeviceName(dev Device) (string, error) {
	buf := make([]byte, 256)
	if err := d.check("cuDeviceGetName", d.cuDeviceGetName(&buf[0], int32(len(buf)), dev)); err != nil {
		return "", err
	}
	return cString(&buf[0]), nil
}

// CtxCreate is cuCtxCreate_v2; the context becomes current on the calling OS thread, so
// callers lock their goroutine to it (runtime.LockOSThread).
func (d *Driver) CtxCreate(flags uint32, dev Device) (Context, error) {
	var c Context
	return c, d.check("cuCtxCreate_v2", d.cuCtxCreate(&c, flags, dev))
}

// CtxDestroy is cuCtxDestroy_v2.
func (d *Driver) CtxDestroy(c Context) error { return d.check("cuCtxDestroy_v2", d.cuCtxDestroy(c)) }

// ModuleLoadData is cuModuleLoadData over a cubin or NUL-terminated PTX image.
func (d *Driver) ModuleLoadData(image []byte) (Module, error) {
	if len(image) == 0 {
		return 0, errors.New("cuda: cuModuleLoadData: empty image")
	}
	var m Module
	err := d.check("cuModuleLoadData", d.cuModuleLoadData(&m, unsafe.Pointer(&image[0])))
	runtime.KeepAlive(image)
	return m, err
}

// ModuleUnload is cuModuleUnload.
func (d *Driver) ModuleUnload(m Module) error { return d.check("cuModuleUnload", d.cuModuleUnload(m)) }

// ModuleGetFunction is cuModuleGetFunction.
func (d *Driver) ModuleGetFunction(m Module, name string) (Function, error) {
	var f Function
	n := cBytes(name)
	if err := d.check("cuModuleGetFunction", d.cuModuleGetFunction(&f, m, &n[0])); err != nil {
		return 0, fmt.Errorf("%w (kernel %q)", err, name)
	}
	return f, nil
}

// Dim3 is a grid or block size.
type Dim3 struct{ X, Y, Z uint32 }

// LaunchKernel is cuLaunchKernel with kernelParams: args holds one pointer per kernel
// parameter, to a value of that parameter's type (e.g. *DevicePtr, *int32, *float32). The
// pointers and the array are pinned for the call.
func (d *Driver) LaunchKernel(f Function, grid, block Dim3, sharedMem uint32, s Stream, args ...unsafe.Pointer) error {
	var pin runtime.Pinner
	defer pin.Unpin()
	var params unsafe.Pointer
	if len(args) > 0 {
		for _, a := range args {
			pin.Pin(a)
		}
		pin.Pin(&args[0])
		params = unsafe.Pointer(&args[0])
	}
	return d.check("cuLaunchKernel", d.cuLaunchKernel(f, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedMem, s, params, nil))
}

// MemAlloc is cuMemAlloc_v2.
func (d *Driver) MemAlloc(bytes uintptr) (DevicePtr, error) {
	var p DevicePtr
	return p, d.check("cuMemAlloc_v2", d.cuMemAlloc(&p, bytes))
}

// MemFree is cuMemFree_v2.
func (d *Driver) MemFree(p DevicePtr) error { return d.check("cuMemFree_v2", d.cuMemFree(p)) }

// MemcpyHtoD is cuMemcpyHtoD_v2 of len(src) bytes.
func (d *Driver) MemcpyHtoD(dst DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	err := d.check("cuMemcpyHtoD_v2", d.cuMemcpyHtoD(dst, unsafe.Pointer(&src[0]), uintptr(len(src))))
	runtime.KeepAlive(src)
	return err
}

// MemcpyDtoH is cuMemcpyDtoH_v2 of len(dst) bytes.
func (d *Driver) MemcpyDtoH(dst []byte, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	err := d.check("cuMemcpyDtoH_v2", d.cuMemcpyDtoH(unsafe.Pointer(&dst[0]), src, uintptr(len(dst))))
	runtime.KeepAlive(dst)
	return err
}

// MemAllocHost is cuMemAllocHost_v2: bytes of page-locked host memory, which the device
// reads and writes by DMA, so cuMemcpyDtoH and cuMemcpyHtoD to and from it run at the
// link's bandwidth (from pageable memory the driver stages every copy through its own
// pinned buffers). The context owns it; free it with MemFreeHost before destroying the
// context. Pinning takes physical memory from the host's pageable pool: allocate it once
// and reuse it.
func (d *Driver) MemAllocHost(bytes uintptr) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	return p, d.check("cuMemAllocHost_v2", d.cuMemAllocHost(&p, bytes))
}

// MemFreeHost is cuMemFreeHost of memory MemAllocHost returned.
func (d *Driver) MemFreeHost(p unsafe.Pointer) error {
	return d.check("cuMemFreeHost", d.cuMemFreeHost(p))
}

// StreamCreate is cuStreamCreate.
func (d *Driver) StreamCreate(flags uint32) (Stream, error) {
	var s Stream
	return s, d.check("cuStreamCreate", d.cuStreamCreate(&s, flags))
}

// StreamSynchronize is cuStreamSynchronize.
func (d *Driver) StreamSynchronize(s Stream) error {
	return d.check("cuStreamSynchronize", d.cuStreamSynchronize(s))
}

// StreamDestroy is cuStreamDestroy_v2.
func (d *Driver) StreamDestroy(s Stream) error {
	return d.check("cuStreamDestroy_v2", d.cuStreamDestroy(s))
}

// EventCreate is cuEventCreate.
func (d *Driver) EventCreate(flags uint32) (Event, error) {
	var e Event
	return e, d.check("cuEventCreate", d.cuEventCreate(&e, flags))
}

// EventRecord is cuEventRecord.
func (d *Driver) EventRecord(e Event, s Stream) error {
	return d.check("cuEventRecord", d.cuEventRecord(e, s))
}

// EventSynchronize is cuEventSynchronize.
func (d *Driver) EventSynchronize(e Event) error {
	return d.check("cuEventSynchronize", d.cuEventSynchronize(e))
}

// EventElapsedTime is cuEventElapsedTime, in milliseconds.
func (d *Driver) EventElapsedTime(start, end Event) (float32, error) {
	var ms float32
	return ms, d.check("cuEventElapsedTime", d.cuEventElapsedTime(&ms, start, end))
}

// EventDestroy is cuEventDestroy_v2.
func (d *Driver) EventDestroy(e Event) error {
	return d.check("cuEventDestroy_v2", d.cuEventDestroy(e))
}

// Device attributes (CUdevice_attribute, cuda.h) that the backend reads.
const (
	AttrMultiprocessorCount          int32 = 16 // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
	AttrComputeCapabilityMajor       int32 = 75 // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
	AttrComputeCapabilityMinor       int32 = 76 // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
	AttrMaxSharedMemoryPerBlockOptin int32 = 97 // CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
)

// Function attributes (CUfunction_attribute, cuda.h).
const (
	FuncAttrMaxThreadsPerBlock        int32 = 0 // CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
	FuncAttrNumRegs                   int32 = 4 // CU_FUNC_ATTRIBUTE_NUM_REGS
	FuncAttrMaxDynamicSharedSizeBytes int32 = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
	FuncAttrLocalSizeBytes            int32 = 3 // CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES
)

// DeviceGetAttribute is cuDeviceGetAttribute.
func (d *Driver) DeviceGetAttribute(attr int32, dev Device) (int, error) {
	var v int32
	err := d.check("cuDeviceGetAttribute", d.cuDeviceGetAttribute(&v, attr, dev))
	return int(v), err
}

// ComputeCapability is the device's (major, minor), e.g. (9, 0) for an H100 or H200.
func (d *Driver) ComputeCapability(dev Device) (major, minor int, err error) {
	if major, err = d.DeviceGetAttribute(AttrComputeCapabilityMajor, dev); err != nil {
		return 0, 0, err
	}
	minor, err = d.DeviceGetAttribute(AttrComputeCapabilityMinor, dev)
	return major, minor, err
}

// DeviceTotalMem is cuDeviceTotalMem_v2, in bytes.
func (d *Driver) DeviceTotalMem(dev Device) (uint64, error) {
	var n uintptr
	err := d.check("cuDeviceTotalMem_v2", d.cuDeviceTotalMem(&n, dev))
	return uint64(n), err
}

// CtxSetCurrent is cuCtxSetCurrent: it binds c to the calling OS thread.
func (d *Driver) CtxSetCurrent(c Context) error {
	return d.check("cuCtxSetCurrent", d.cuCtxSetCurrent(c))
}

// CtxSynchronize is cuCtxSynchronize.
func (d *Driver) CtxSynchronize() error { return d.check("cuCtxSynchronize", d.cuCtxSynchronize()) }

// MemGetInfo is cuMemGetInfo_v2: free and total device memory in bytes.
func (d *Driver) MemGetInfo() (free, total uint64, err error) {
	var f, t uintptr
	err = d.check("cuMemGetInfo_v2", d.cuMemGetInfo(&f, &t))
	return uint64(f), uint64(t), err
}

// MemsetD8 is cuMemsetD8_v2: n bytes at dst set to v.
func (d *Driver) MemsetD8(dst DevicePtr, v uint8, n uintptr) error {
	return d.check("cuMemsetD8_v2", d.cuMemsetD8(dst, v, n))
}

// MemcpyDtoD is cuMemcpyDtoD_v2 of size bytes.
func (d *Driver) MemcpyDtoD(dst, src DevicePtr, size uintptr) error {
	if size == 0 {
		return nil
	}
	return d.check("cuMemcpyDtoD_v2", d.cuMemcpyDtoD(dst, src, size))
}

// FuncGetAttribute is cuFuncGetAttribute (e.g. FuncAttrNumRegs).
func (d *Driver) FuncGetAttribute(attr int32, f Function) (int, error) {
	var v int32
	err := d.check("cuFuncGetAttribute", d.cuFuncGetAttribute(&v, attr, f))
	return int(v), err
}

// FuncSetAttribute is cuFuncSetAttribute (e.g. FuncAttrMaxDynamicSharedSizeBytes, needed
// before a launch with more than 48 KiB of dynamic shared memory).
func (d *Driver) FuncSetAttribute(attr int32, f Function, v int) error {
	return d.check("cuFuncSetAttribute", d.cuFuncSetAttribute(f, attr, int32(v)))
}

// DevicePresent reports whether this machine has an NVIDIA GPU whose kernel driver is
// loaded: the driver creates /dev/nvidiactl when it loads. Checking never creates it,
// whereas cuInit on a machine with the driver library but no GPU creates device nodes.
func DevicePresent() bool {
	_, err := os.Stat("/dev/nvidiactl")
	return err == nil
}
