package driver_test

import (
	"testing"

	"servelab/internal/gputest"
)

// TestGPUInitAndDeviceCount calls cuInit and cuDeviceGetCount; it runs only on a machine
// with a GPU or under SERVELAB_REQUIRE_GPU=1.
func TestGPUInitAndDeviceCount(t *testing.T) {
	d := gputest.Require(t)
	v, err := d.Version()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	n, err := d.DeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 {
		t.Fatalf("cuDeviceGetCount = %d, want at least 1", n)
	}
	dev, err := d.DeviceGet(0)
	if err != nil {
		t.Fatal(err)
	}
	name, err := d.DeviceName(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CUDA driver %d.%d, %d device(s), device 0: %s", v/1000, v%1000/10, n, name)
}
