package latency

import (
	"fmt"
	"strings"
	"sync"

	"sigs.k8s.io/yaml"
)

// GPU is an accelerator's datasheet figures; data/gpus.yaml cites the sources.
type GPU struct {
	// Name is the lower-case short name LookupGPU takes ("h100").
	Name        string `json:"name"`
	Description string `json:"description"`
	// DeviceNames are the names the CUDA driver and nvidia-smi report for the part
	// ("NVIDIA H200").
	DeviceNames []string `json:"device_names,omitempty"`
	// PeakTFLOPS is dense (no sparsity) BF16 tensor-core throughput.
	PeakTFLOPS float64 `json:"peak_tflops"`
	// MemoryBandwidthGBps is peak DRAM bandwidth in GB/s.
	MemoryBandwidthGBps float64 `json:"memory_bandwidth_gbps"`
	// MemoryGB is the capacity the datasheet sells.
	MemoryGB float64 `json:"memory_gb"`
	// MemoryMiB is the total memory the device reports (nvidia-smi memory.total), which
	// gpu_memory_utilization is a fraction of. 0 means MemoryGB decimal gigabytes.
	MemoryMiB float64 `json:"memory_mib,omitempty"`
	// Interconnect names the GPU-to-GPU link ("nvlink4", "pcie4").
	Interconnect string `json:"interconnect"`
	// InterconnectGBps is the per-direction GPU-to-GPU bandwidth that tensor-parallel
	// all-reduces use, GB/s.
	InterconnectGBps float64 `json:"interconnect_gbps"`
	// PricePerHour is the default US dollars per GPU-hour that cost reports charge: a
	// default to override, not a fact (data/gpus.yaml says where the figures come from).
	PricePerHour float64 `json:"price_per_hour"`
}

// MemoryBytes is the device memory that vLLM's gpu_memory_utilization applies to.
func (g GPU) MemoryBytes() float64 {
	if g.MemoryMiB > 0 {
		return g.MemoryMiB * (1 << 20)
	}
	return g.MemoryGB * 1e9
}

func (g GPU) validate() error {
	for _, f := range []struct {
		name  string
		value float64
	}{
		{"peak_tflops", g.PeakTFLOPS}, {"memory_bandwidth_gbps", g.MemoryBandwidthGBps}, {"memory_gb", g.MemoryGB},
	} {
		if !(f.value > 0) {
			return fmt.Errorf("GPU %q: field %q must be positive, got %v", g.Name, f.name, f.value)
		}
	}
	if g.MemoryMiB < 0 || g.InterconnectGBps < 0 || g.PricePerHour < 0 {
		return fmt.Errorf("GPU %q: fields \"memory_mib\", \"interconnect_gbps\" and \"price_per_hour\" must not be negative", g.Name)
	}
	return nil
}

// gpus parses the embedded table once; a bad table is a build defect, caught by the tests.
var gpus = sync.OnceValue(func() []GPU {
	raw, err := data.ReadFile("data/gpus.yaml")
	if err != nil {
		panic(err)
	}
	var list []GPU
	if err := yaml.UnmarshalStrict(raw, &list); err != nil {
		panic(fmt.Sprintf("embedded gpus.yaml: %v", err))
	}
	for _, g := range list {
		if err := g.validate(); err != nil {
			panic(fmt.Sprintf("embedded gpus.yaml: %v", err))
		}
	}
	return list
})

// GPUNames lists the known GPUs in the order of data/gpus.yaml.
func GPUNames() []string {
	var names []string
	for _, g := range gpus() {
		names = append(names, g.Name)
	}
	return names
}

// LookupGPU finds a GPU by its short name (h100, h200, a100-80g, l40s, l4), ignoring case.
func LookupGPU(name string) (GPU, error) {
	key := strings.ToLower(strings.TrimSpace(name))
	for _, g := range gpus() {
		if g.Name == key {
			return g, nil
		}
	}
	return GPU{}, fmt.Errorf("unknown GPU %q (known: %s)", name, strings.Join(GPUNames(), ", "))
}

// LookupGPUByDeviceName finds the GPU whose device_names include name, the name the CUDA
// driver (cuDeviceGetName) or nvidia-smi reports, ignoring case and surrounding space; a
// device the table does not list is an error naming it.
func LookupGPUByDeviceName(name string) (GPU, error) {
	key := strings.TrimSpace(name)
	for _, g := range gpus() {
		for _, n := range g.DeviceNames {
			if strings.EqualFold(n, key) {
				return g, nil
			}
		}
	}
	var known []string
	for _, g := range gpus() {
		known = append(known, g.DeviceNames...)
	}
	return GPU{}, fmt.Errorf("GPU device %q is not in the GPU table (known: %s)", name, strings.Join(known, ", "))
}

// GPUClass is "h100" for the GPUs vLLM gives its larger scheduling defaults (H100, H200),
// "" otherwise.
func GPUClass(name string) string {
	switch strings.ToLower(name) {
	case "h100", "h200":
		return "h100"
	}
	return ""
}
