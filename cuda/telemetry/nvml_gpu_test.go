//go:build cgo && !nocuda

package telemetry

import (
	"servelab/internal/gputest"

	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestOpenOnGPU samples the real GPUs through the driver's NVML: every GPU has a name, a
// UUID and memory; the fields every datacenter GPU reports are present and plausible; the
// timer takes further samples; /metrics carries them.
func TestOpenOnGPU(t *testing.T) {
	gputest.Require(t)
	s, err := Open(Config{Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	devs := s.Devices()
	if len(devs) == 0 || s.DriverVersion() == "" {
		t.Fatalf("%d GPUs, driver %q", len(devs), s.DriverVersion())
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.Samples() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d samples after 20 s at 20 ms", s.Samples())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i, r := range s.Latest() {
		d := devs[i]
		t.Logf("GPU %d %s %s %s, %.0f MiB, driver %s", d.Index, d.Name, d.UUID, d.PCIBusID, d.MemoryTotalMiB, s.DriverVersion())
		for f := range numFields {
			if v, ok := r.Get(f); ok {
				t.Logf("  %s %v", f, v)
			} else {
				t.Logf("  %s absent", f)
			}
		}
		if d.Name == "" || !strings.HasPrefix(d.UUID, "GPU-") || d.MemoryTotalMiB <= 0 || d.PCIBusID == "" {
			t.Errorf("GPU %d: %+v", i, d)
		}
		for _, c := range []struct {
			f        Field
			min, max float64
		}{
			{GPUUtil, 0, 100}, {SMClock, 1, 5000}, {MemClock, 1, 20000}, {GPUTemp, 1, 120},
			{PowerUsage, 1, 2000}, {FBUsed, 0, d.MemoryTotalMiB}, {FBFree, 0, d.MemoryTotalMiB}, {FBTotal, d.MemoryTotalMiB, d.MemoryTotalMiB},
		} {
			v, ok := r.Get(c.f)
			if !ok || v < c.min || v > c.max {
				t.Errorf("GPU %d: %s = %v (present %t), want between %v and %v", i, c.f, v, ok, c.min, c.max)
			}
		}
		used, _ := r.Get(FBUsed)
		free, _ := r.Get(FBFree)
		reserved, _ := r.Get(FBReserved)
		if sum := used + free + reserved; sum < 0.99*d.MemoryTotalMiB || sum > d.MemoryTotalMiB+3 {
			t.Errorf("GPU %d: used %v + free %v + reserved %v MiB = %v, total %v", i, used, free, reserved, sum, d.MemoryTotalMiB)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(s)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_GPU_TEMP"} {
		if !names[want] {
			t.Errorf("/metrics lacks %s (has %v)", want, names)
		}
	}
}
