// Package gputest decides whether a test that needs an NVIDIA GPU runs: every GPU test in
// the repository starts with Require, so the rule is one. Without a GPU the test skips
// with a message, and the driver is never initialised (cuInit or nvmlInit with a real
// driver library on a machine without a GPU creates /dev/nvidia* as root, which .ci/run
// fails on); with SERVELAB_REQUIRE_GPU=1 (scripts/gpu-check.sh sets it) a missing GPU or
// driver fails the test instead, so a device run cannot pass by skipping.
package gputest

import (
	"os"
	"testing"

	"servelab/cuda/driver"
)

// EnvRequire is the variable that turns a missing GPU into a failure.
const EnvRequire = "SERVELAB_REQUIRE_GPU"

// Required reports whether SERVELAB_REQUIRE_GPU=1.
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Require skips t unless the machine has a GPU (driver.DevicePresent) and the CUDA driver
// library loads, or fails it under SERVELAB_REQUIRE_GPU=1. It returns the loaded driver,
// not yet initialised (the test calls Init).
func Require(t testing.TB) *driver.Driver {
	t.Helper()
	present := driver.DevicePresent()
	d, err := driver.Load()
	switch {
	case present && err == nil:
		return d
	case Required() && !present:
		t.Fatalf("%s=1 but /dev/nvidiactl does not exist (no NVIDIA GPU or driver)", EnvRequire)
	case Required():
		t.Fatalf("%s=1 but the CUDA driver does not load: %v", EnvRequire, err)
	case !present:
		t.Skipf("no GPU: /dev/nvidiactl does not exist (%s=1 makes this a failure)", EnvRequire)
	default:
		t.Skipf("no GPU: %v (%s=1 makes this a failure)", err, EnvRequire)
	}
	return nil
}
