//go:build !nocuda

package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"servelab/cuda/driver"
)

// skipIfCUDADriver skips t where a libcuda.so.1 loads (driver.Load does not call cuInit).
func skipIfCUDADriver(t *testing.T) {
	t.Helper()
	if _, err := driver.Load(); !errors.Is(err, driver.ErrNoDriver) {
		t.Skipf("a CUDA driver loads here (%v); this test checks a machine without one", err)
	}
}

// TestEngineDeviceCUDAWithoutDriver: --device cuda on a machine without the NVIDIA driver
// fails before anything else with the driver's "no CUDA driver" error.
func TestEngineDeviceCUDAWithoutDriver(t *testing.T) {
	skipIfCUDADriver(t)
	for _, args := range [][]string{
		{"engine", "--device", "cuda"},
		{"engine", "--device", "cuda", "--model", synthTiny(t)},
	} {
		_, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), "--device cuda: no CUDA driver: libcuda.so.1 not found") {
			t.Errorf("servelab %s: err = %v; want the no CUDA driver error", strings.Join(args, " "), err)
		}
	}
}

// TestEngineDeviceUnknownRefused: --device takes cpu or cuda, and the error names the flag.
func TestEngineDeviceUnknownRefused(t *testing.T) {
	for _, dev := range []string{"gpu", "CUDA", "rocm", "cuda:0"} {
		_, err := run(t, "engine", "--device", dev, "--model", "unused")
		if want := `--device "` + dev + `": want cpu or cuda`; err == nil || err.Error() != want {
			t.Errorf("--device %s: err = %v; want %q", dev, err, want)
		}
	}
	// cpu (the default) passes on to the next check.
	if _, err := run(t, "engine", "--device", "cpu"); err == nil || err.Error() != "--model is required" {
		t.Errorf("--device cpu without --model: err = %v; want --model is required", err)
	}
}

// TestEngineDeviceCUDAExitsNonZero runs servelab's main in a child process: --device cuda
// without a driver prints the error and exits 1, without a panic.
func TestEngineDeviceCUDAExitsNonZero(t *testing.T) {
	if os.Getenv("SERVELAB_TEST_MAIN") == "1" {
		os.Args = []string{"servelab", "engine", "--device", "cuda"}
		main()
		os.Exit(0)
	}
	skipIfCUDADriver(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestEngineDeviceCUDAExitsNonZero$")
	cmd.Env = append(os.Environ(), "SERVELAB_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v; want status 1; output:\n%s", err, out)
	}
	if got := string(out); !strings.HasPrefix(got, "servelab: --device cuda: no CUDA driver: libcuda.so.1 not found") || strings.Contains(got, "panic") {
		t.Errorf("output %q; want the no CUDA driver error and no panic", got)
	}
}
