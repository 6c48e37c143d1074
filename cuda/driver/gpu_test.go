package driver_test

import (
	"bytes"
	"runtime"
	"testing"
	"time"
	"unsafe"

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

// TestGPUMemcpyPinned copies Llama-3.1-8B's logits (vocabulary 128256, float32) at batch
// 64 and 256 from the device into page-locked memory (MemAllocHost) and into pageable Go
// memory, checks that the bytes arrive in both, frees the page-locked buffer with
// MemFreeHost, and logs each copy's bandwidth: the measurement behind cuda/gpu copying
// the logits into page-locked memory. It checks no speed.
func TestGPUMemcpyPinned(t *testing.T) {
	d := gputest.Require(t)
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread() // the context is current on this thread
	defer runtime.UnlockOSThread()
	dev, err := d.DeviceGet(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := d.CtxCreate(0, dev)
	if err != nil {
		t.Fatal(err)
	}
	defer d.CtxDestroy(ctx)
	const vocab, reps = 128256, 5
	for _, rows := range []int{64, 256} {
		n := rows * vocab * 4
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i*131 + i>>12)
		}
		dp, err := d.MemAlloc(uintptr(n))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.MemcpyHtoD(dp, src); err != nil {
			t.Fatal(err)
		}
		hp, err := d.MemAllocHost(uintptr(n))
		if err != nil {
			t.Fatal(err)
		}
		pinned := unsafe.Slice((*byte)(hp), n)
		pageable := make([]byte, n)
		for _, c := range []struct {
			name string
			dst  []byte
		}{{"page-locked", pinned}, {"pageable", pageable}} {
			clear(c.dst)
			if err := d.MemcpyDtoH(c.dst, dp); err != nil { // the first copy touches the pages
				t.Fatal(err)
			}
			start := time.Now()
			for range reps {
				if err := d.MemcpyDtoH(c.dst, dp); err != nil {
					t.Fatal(err)
				}
			}
			el := time.Since(start)
			if !bytes.Equal(c.dst, src) {
				t.Errorf("%d rows, %s: the bytes copied back differ from those uploaded", rows, c.name)
			}
			t.Logf("%d logits rows (%d MB) to %s memory: %.2f ms a copy, %.1f GB/s",
				rows, n/1e6, c.name, el.Seconds()*1e3/reps, float64(n)*reps/el.Seconds()/1e9)
		}
		if err := d.MemFreeHost(hp); err != nil {
			t.Fatal(err)
		}
		if err := d.MemFree(dp); err != nil {
			t.Fatal(err)
		}
	}
}
