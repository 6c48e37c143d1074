package driver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// libcudaPresent reports whether a libcuda.so.1 is installed in the usual places, without
// loading it.
func libcudaPresent() bool {
	for _, dir := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"} {
		if _, err := os.Stat(filepath.Join(dir, LibName)); err == nil {
			return true
		}
	}
	for _, dir := range filepath.SplitList(os.Getenv("LD_LIBRARY_PATH")) {
		if _, err := os.Stat(filepath.Join(dir, LibName)); err == nil && dir != "" {
			return true
		}
	}
	return false
}

// TestLoadWithoutDriverIsErrNoDriver: on a machine without the NVIDIA driver, Load returns
// ErrNoDriver with the loader's reason, and does not crash. Load never calls cuInit, so
// this is safe on any machine.
func TestLoadWithoutDriverIsErrNoDriver(t *testing.T) {
	if libcudaPresent() {
		t.Skip("a libcuda.so.1 is installed here; this test checks the machine without one")
	}
	d, err := Load()
	if !errors.Is(err, ErrNoDriver) {
		t.Fatalf("Load() = %v, %v; want ErrNoDriver", d, err)
	}
	if d != nil {
		t.Errorf("Load() returned a driver with an error")
	}
	for _, want := range []string{"no CUDA driver", "libcuda.so.1 not found", "dlopen"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// A second Load gives the same answer.
	if _, err2 := Load(); !errors.Is(err2, ErrNoDriver) {
		t.Errorf("second Load() = %v", err2)
	}
}

// TestLoadMissingLibraryNamesIt: a library that is not there is ErrNoDriver naming it.
func TestLoadMissingLibraryNamesIt(t *testing.T) {
	_, err := load("libservelab-no-such-cuda.so.1")
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "libservelab-no-such-cuda.so.1") {
		t.Fatalf("load(missing) = %v; want ErrNoDriver naming the file", err)
	}
}

// TestSymbolsAreTheDriverAPINames pins the symbols bound to the driver API's exported
// names, the _v2 ones where cuda.h's macros select them.
func TestSymbolsAreTheDriverAPINames(t *testing.T) {
	got := strings.Join(Symbols(), " ")
	for _, want := range []string{"cuInit", "cuDeviceGet", "cuDeviceGetCount", "cuDeviceGetName", "cuCtxCreate_v2", "cuCtxDestroy_v2",
		"cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel", "cuMemAlloc_v2", "cuMemFree_v2", "cuMemcpyHtoD_v2",
		"cuMemcpyDtoH_v2", "cuStreamCreate", "cuStreamSynchronize", "cuEventCreate", "cuEventRecord", "cuEventElapsedTime",
		"cuGetErrorString", "cuGetErrorName", "cuMemAllocHost_v2", "cuMemFreeHost"} {
		if !strings.Contains(" "+got+" ", " "+want+" ") {
			t.Errorf("Symbols() lacks %s: %s", want, got)
		}
	}
	for _, unversioned := range []string{"cuCtxCreate", "cuMemAlloc", "cuMemFree", "cuMemcpyHtoD", "cuMemcpyDtoH", "cuMemAllocHost"} {
		if strings.Contains(" "+got+" ", " "+unversioned+" ") {
			t.Errorf("Symbols() binds %s, the CUDA 3 ABI; want %s_v2", unversioned, unversioned)
		}
	}
}

func TestErrorNamesCallAndCode(t *testing.T) {
	e := &Error{Call: "cuMemAlloc_v2", Code: ErrorOutOfMemory, Name: "CUDA_ERROR_OUT_OF_MEMORY", Description: "out of memory"}
	if got, want := e.Error(), "cuda: cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
