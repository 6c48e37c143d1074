package latency

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestGPUTable(t *testing.T) {
	// The datasheet figures the roofline is built on (see data/gpus.yaml for sources).
	type figures struct{ TFLOPS, BandwidthGBps, MemoryGB, InterconnectGBps float64 }
	want := map[string]figures{
		"h100":     {989.4, 3350, 80, 450},
		"h200":     {989.4, 4800, 141, 450},
		"a100-80g": {312, 2039, 80, 300},
		"l40s":     {362.05, 864, 48, 32},
		"l4":       {121, 300, 24, 32},
	}
	if diff := cmp.Diff([]string{"h100", "h200", "a100-80g", "l40s", "l4"}, GPUNames()); diff != "" {
		t.Errorf("GPUNames (-want +got):\n%s", diff)
	}
	for name, w := range want {
		g, err := LookupGPU(strings.ToUpper(name))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, figures{g.PeakTFLOPS, g.MemoryBandwidthGBps, g.MemoryGB, g.InterconnectGBps}); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
		// The device reports within a few percent of the datasheet capacity, whether the
		// datasheet means GB or GiB.
		if got := g.MemoryBytes(); got < 0.93*g.MemoryGB*1e9 || got > 1.08*g.MemoryGB*1e9 {
			t.Errorf("%s: %.3g bytes reported for %g GB", name, got, g.MemoryGB)
		}
	}
	if _, err := LookupGPU("tpu-v5"); err == nil || !strings.Contains(err.Error(), "h100") {
		t.Errorf("unknown GPU: %v, want an error listing the known ones", err)
	}
	if (GPU{MemoryGB: 24}).MemoryBytes() != 24e9 {
		t.Error("without memory_mib the datasheet figure is not used")
	}
}

func TestGPUClass(t *testing.T) {
	for name, want := range map[string]string{"h100": "h100", "H200": "h100", "a100-80g": "", "l4": ""} {
		if got := GPUClass(name); got != want {
			t.Errorf("GPUClass(%q) = %q, want %q", name, got, want)
		}
	}
}

// A device name as the CUDA driver or nvidia-smi reports it finds its row.
func TestLookupGPUByDeviceName(t *testing.T) {
	for dev, want := range map[string]string{
		"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100", " nvidia a100-sxm4-80gb ": "a100-80g", "NVIDIA L4": "l4",
	} {
		g, err := LookupGPUByDeviceName(dev)
		if err != nil || g.Name != want {
			t.Errorf("%q: got %q, %v; want %s", dev, g.Name, err, want)
		}
	}
	if _, err := LookupGPUByDeviceName("NVIDIA GeForce RTX 4090"); err == nil || !strings.Contains(err.Error(), `"NVIDIA GeForce RTX 4090" is not in the GPU table`) {
		t.Errorf("err = %v, want the unknown device named", err)
	}
}
