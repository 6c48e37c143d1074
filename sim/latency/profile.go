package latency

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"

	"servelab/serving"
)

// Profile is the file that `servelab profile` writes after timing the real engine's steps
// and fitting a linear model to them (FitLinear), and that `--latency profile:FILE` reads.
// It is JSON with exactly these keys; unknown keys are errors.
type Profile struct {
	// Model is the served model, as given to the engine (a Hugging Face repository or
	// path). For people; the simulator does not check it.
	Model string `json:"model"`
	// Machine describes the hardware that was profiled ("1x NVIDIA H100 80GB HBM3"). For
	// people.
	Machine string `json:"machine"`
	// GPU is the GPU table's short name (h200, see LookupGPUByDeviceName) of the GPU the
	// engine ran on, when it ran on one the table knows; "" for the CPU engine. A
	// simulation of the profile runs (and prices) that GPU, and refuses another.
	GPU string `json:"gpu,omitempty"`
	// TensorParallelSize is the number of GPUs the engine split the model over; 0 when
	// not recorded.
	TensorParallelSize int `json:"tensor_parallel_size,omitempty"`
	// BlockSize is the engine's KV block size in tokens. Required when NumGPUBlocks is set.
	BlockSize int `json:"block_size"`
	// NumGPUBlocks is the engine's KV cache size in blocks of BlockSize (vLLM's
	// num_gpu_blocks); 0 when not recorded, and the simulation must then be told the size.
	NumGPUBlocks int `json:"num_gpu_blocks"`
	// MaxModelLen is the engine's context limit in tokens; 0 when not recorded.
	MaxModelLen int `json:"max_model_len,omitempty"`
	// KVBytesPerToken is the KV cache one token takes in the profiled engine (its KV block's
	// bytes over the block size: float32 keys and values of every layer on the CPU engine),
	// which prices a simulated KV transfer or tier load as the roofline's does on a GPU; 0
	// when not recorded (such a profile cannot simulate disaggregation or KV tiers).
	KVBytesPerToken float64 `json:"kv_bytes_per_token,omitempty"`
	// Engine is the profiled engine's resolved configuration, as it reports it (GET
	// /server_info): its policies with every parameter, KV cache and context. A simulator
	// built from the profile (--latency profile:FILE, servelab fidelity) runs exactly it
	// rather than its own defaults. Absent in profiles written before it was recorded.
	Engine *serving.EngineConfig `json:"engine,omitempty"`
	// Coefficients is the fitted step-time model; see LinearCoefficients.
	Coefficients LinearCoefficients `json:"coefficients"`
	// Samples is the number of measured steps the coefficients were fitted to.
	Samples int `json:"samples"`
	// R2 is the fit's coefficient of determination over those steps' durations.
	R2 float64 `json:"r2"`
	// MeanRelativeError is the mean of |predicted - measured| / measured over the steps;
	// 0 when not recorded.
	MeanRelativeError float64 `json:"mean_relative_error,omitempty"`
	// Points are the measured steps the coefficients were fitted to (servelab profile
	// records them; absent in profiles written before it did, and in those fitted to step
	// logs), which `servelab profile compare` sets beside the roofline.
	Points []Sample `json:"points,omitempty"`
	// Fit says how well the coefficients reproduce the steps they were fitted to: in
	// total and per class of step (prefill, decode, mixed; short and long context).
	// Absent in profiles written before it was recorded.
	Fit *FitReport `json:"fit,omitempty"`
	// GPUs are the GPUs of the profiled machine, as NVML saw them while the steps were
	// measured (servelab profile --device cuda; every GPU NVML lists, in its index order).
	// Absent for a CPU profile, one fitted to step logs, and profiles written before it was
	// recorded.
	GPUs []ProfiledGPU `json:"gpus,omitempty"`
}

// ProfiledGPU is one GPU of a profiled machine and a summary of what NVML read from it while the
// profile's steps were measured (cuda/telemetry, sampling the DCGM exporter's fields).
type ProfiledGPU struct {
	// Index is NVML's index of the GPU (dcgm-exporter's gpu label).
	Index int `json:"index"`
	// Name is the product name, e.g. "NVIDIA H200" (dcgm-exporter's modelName label).
	Name string `json:"name"`
	// UUID is NVML's "GPU-..." identifier.
	UUID string `json:"uuid,omitempty"`
	// MemoryTotalMiB is the GPU's memory in MiB (DCGM_FI_DEV_FB_TOTAL); 0 when NVML did not
	// say.
	MemoryTotalMiB float64 `json:"memory_total_mib,omitempty"`
	// DriverVersion is the NVIDIA driver's version (DCGM_FI_DRIVER_VERSION).
	DriverVersion string `json:"driver_version,omitempty"`
	// Telemetry summarises the samples taken during the measurement.
	Telemetry *GPUTelemetry `json:"telemetry,omitempty"`
}

// GPUTelemetry summarises a GPU's telemetry over a profile's measurement, in the DCGM
// exporter's units. Each value is over the samples that had its field; a field NVML did not
// give on this GPU (power on some boards, say) is absent.
type GPUTelemetry struct {
	// IntervalSeconds is the time between samples (servelab profile
	// --gpu-telemetry-interval); one more sample is taken when the measurement ends.
	IntervalSeconds float64 `json:"interval_seconds"`
	// Samples is the number of samples taken during the measurement.
	Samples int `json:"samples"`
	// MeanUtilizationPercent and MaxUtilizationPercent are over DCGM_FI_DEV_GPU_UTIL (%: the
	// share of the driver's sample period in which a kernel ran).
	MeanUtilizationPercent *float64 `json:"mean_utilization_percent,omitempty"`
	MaxUtilizationPercent  *float64 `json:"max_utilization_percent,omitempty"`
	// MeanPowerWatts is the mean of DCGM_FI_DEV_POWER_USAGE (W).
	MeanPowerWatts *float64 `json:"mean_power_watts,omitempty"`
	// EnergyJoules is the rise of DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION over the samples (J).
	EnergyJoules *float64 `json:"energy_joules,omitempty"`
	// MeanSMClockMHz is the mean of DCGM_FI_DEV_SM_CLOCK (MHz).
	MeanSMClockMHz *float64 `json:"mean_sm_clock_mhz,omitempty"`
	// MaxTemperatureC is the highest DCGM_FI_DEV_GPU_TEMP (C).
	MaxTemperatureC *float64 `json:"max_temperature_c,omitempty"`
	// MaxMemoryUsedMiB is the highest DCGM_FI_DEV_FB_USED (MiB).
	MaxMemoryUsedMiB *float64 `json:"max_memory_used_mib,omitempty"`
}

// Validate checks the GPU's fields; errors name the JSON key.
func (g *ProfiledGPU) Validate() error {
	if g.Index < 0 {
		return fmt.Errorf("field \"index\": must not be negative, got %d", g.Index)
	}
	if !(g.MemoryTotalMiB >= 0) || math.IsInf(g.MemoryTotalMiB, 0) {
		return fmt.Errorf("field \"memory_total_mib\": %v is not a non-negative number", g.MemoryTotalMiB)
	}
	t := g.Telemetry
	if t == nil {
		return nil
	}
	if !(t.IntervalSeconds >= 0) || math.IsInf(t.IntervalSeconds, 0) {
		return fmt.Errorf("field \"telemetry\": field \"interval_seconds\": %v is not a non-negative number", t.IntervalSeconds)
	}
	if t.Samples < 0 {
		return fmt.Errorf("field \"telemetry\": field \"samples\": must not be negative, got %d", t.Samples)
	}
	for _, f := range []struct {
		name string
		v    *float64
		max  float64
	}{
		{"mean_utilization_percent", t.MeanUtilizationPercent, 100}, {"max_utilization_percent", t.MaxUtilizationPercent, 100},
		{"mean_power_watts", t.MeanPowerWatts, math.MaxFloat64}, {"energy_joules", t.EnergyJoules, math.MaxFloat64},
		{"mean_sm_clock_mhz", t.MeanSMClockMHz, math.MaxFloat64}, {"max_temperature_c", t.MaxTemperatureC, math.MaxFloat64},
		{"max_memory_used_mib", t.MaxMemoryUsedMiB, math.MaxFloat64},
	} {
		if f.v == nil {
			continue
		}
		if v := *f.v; !(v >= 0 && v <= f.max) {
			return fmt.Errorf("field \"telemetry\": field %q: %v is not between 0 and %v", f.name, v, f.max)
		}
	}
	return nil
}

// LoadProfile reads a profile file. Errors name the file and the offending field.
func LoadProfile(path string) (*Profile, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseProfile(raw, path)
}

// ParseProfile reads a profile from JSON; source names it in errors.
func ParseProfile(raw []byte, source string) (*Profile, error) {
	var p Profile
	if err := decodeStrict(source, raw, &p); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return &p, nil
}

// Validate checks the profile's fields; errors name the JSON key.
func (p *Profile) Validate() error {
	for _, f := range []struct {
		name  string
		value int
	}{
		{"tensor_parallel_size", p.TensorParallelSize}, {"block_size", p.BlockSize},
		{"num_gpu_blocks", p.NumGPUBlocks}, {"max_model_len", p.MaxModelLen}, {"samples", p.Samples},
	} {
		if f.value < 0 {
			return fmt.Errorf("field %q: must not be negative, got %d", f.name, f.value)
		}
	}
	if p.NumGPUBlocks > 0 && p.BlockSize == 0 {
		return fmt.Errorf("field \"block_size\": required with num_gpu_blocks")
	}
	if math.IsNaN(p.R2) || p.R2 > 1 {
		return fmt.Errorf("field \"r2\": %v is not at most 1", p.R2)
	}
	if !(p.MeanRelativeError >= 0) || math.IsInf(p.MeanRelativeError, 0) {
		return fmt.Errorf("field \"mean_relative_error\": %v is not a non-negative number", p.MeanRelativeError)
	}
	if e := p.Engine; e != nil {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("field \"engine\": %w", err)
		}
		// The top-level copies predate "engine"; they must say the same.
		for _, f := range []struct {
			name          string
			top, recorded int
		}{{"block_size", p.BlockSize, e.BlockSize}, {"num_gpu_blocks", p.NumGPUBlocks, e.NumGPUBlocks}, {"max_model_len", p.MaxModelLen, e.MaxModelLen}} {
			if f.top != 0 && f.top != f.recorded {
				return fmt.Errorf("field %q: %d, but the engine's resolved configuration (\"engine\") has %d", f.name, f.top, f.recorded)
			}
		}
	}
	if err := p.Coefficients.Validate(); err != nil {
		return fmt.Errorf("field \"coefficients\": %w", err)
	}
	if p.GPU != "" {
		if _, err := LookupGPU(p.GPU); err != nil {
			return fmt.Errorf("field \"gpu\": %w", err)
		}
	}
	for i, s := range p.Points {
		if err := checkSample(s); err != nil {
			return fmt.Errorf("field \"points\"[%d]: %w", i, err)
		}
	}
	if p.Fit != nil {
		if err := p.Fit.Validate(); err != nil {
			return fmt.Errorf("field \"fit\": %w", err)
		}
	}
	for i := range p.GPUs {
		if err := p.GPUs[i].Validate(); err != nil {
			return fmt.Errorf("field \"gpus\"[%d]: %w", i, err)
		}
	}
	return nil
}

// Write writes the profile as indented JSON, after checking that LoadProfile will accept
// it.
func (p *Profile) Write(path string) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	raw, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}

// StepModel returns the profile's step-time model, which also reports the profiled KV
// cache size and context limit. (It is not called Model because that is a field.)
func (p *Profile) StepModel() *Linear {
	name := "linear"
	if m := strings.TrimSpace(p.Model); m != "" {
		name = "linear(" + m + ")"
	}
	return &Linear{Coefficients: p.Coefficients, name: name, blocks: p.NumGPUBlocks, blockSize: p.BlockSize, maxLen: p.MaxModelLen,
		kvBytesPerToken: p.KVBytesPerToken}
}

// LoadLinear reads the file of `--latency linear:FILE`: either a profile or, for
// coefficients written by hand, a bare LinearCoefficients object. A JSON object with a
// "coefficients" key is a profile.
func LoadLinear(path string) (*Linear, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return nil, describeJSONError(path, raw, err)
	}
	if _, ok := keys["coefficients"]; ok {
		p, err := ParseProfile(raw, path)
		if err != nil {
			return nil, err
		}
		return p.StepModel(), nil
	}
	var c LinearCoefficients
	if err := decodeStrict(path, raw, &c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return NewLinear(c), nil
}
