package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/cuda/telemetry"
	"servelab/sim/latency"
)

// gpuTelemetryHelp is --gpu-telemetry-interval's help.
const gpuTelemetryHelp = "with --device cuda, sample every GPU's utilisation, memory, power, clocks, temperature and energy " +
	"through NVML this often: the engine serves them on /metrics under the DCGM exporter's names (DCGM_FI_DEV_GPU_UTIL, " +
	"DCGM_FI_DEV_FB_USED, DCGM_FI_DEV_POWER_USAGE, ...), profile summarises them in its \"gpus\"; needs a binary built with cgo. " +
	"0 disables. (dcgm-exporter's own default is 30s)"

// openGPUTelemetry starts NVML sampling; tests replace it with go-nvml's mock
// (telemetry.New), so that no test loads the real libnvidia-ml.so.1.
var openGPUTelemetry = telemetry.Open

// gpuTelemetryOn reports whether an engine or profile started from f samples its GPUs:
// when the model runs on one and the interval is not 0.
func (f *engineFlags) gpuTelemetryOn() bool {
	return (f.device == "cuda" || f.gpuTelemetryAnyDevice) && f.gpuTelemetryInterval != 0
}

// startGPUTelemetry starts sampling the GPUs and registers their DCGM metrics with reg
// (the registry of the engine's /metrics), when gpuTelemetryOn; else it returns nil.
func (f *engineFlags) startGPUTelemetry(reg prometheus.Registerer) (*telemetry.Sampler, error) {
	if f.gpuTelemetryInterval < 0 {
		return nil, fmt.Errorf("--gpu-telemetry-interval %v: want a positive duration, or 0 to disable", f.gpuTelemetryInterval)
	}
	if !f.gpuTelemetryOn() {
		return nil, nil
	}
	s, err := openGPUTelemetry(telemetry.Config{Interval: f.gpuTelemetryInterval})
	if err != nil {
		return nil, fmt.Errorf("--gpu-telemetry-interval: GPU telemetry: %w (--gpu-telemetry-interval 0 runs without it)", err)
	}
	if reg != nil {
		if err := reg.Register(s); err != nil {
			s.Close()
			return nil, fmt.Errorf("GPU telemetry: %w", err)
		}
	}
	return s, nil
}

// gpuProfile is a profile's GPUs: each GPU NVML lists and its telemetry over a recording.
func gpuProfile(s *telemetry.Sampler, sums []telemetry.Summary) []latency.ProfiledGPU {
	out := make([]latency.ProfiledGPU, 0, len(sums))
	for _, sum := range sums {
		d := sum.Device
		tel := &latency.GPUTelemetry{IntervalSeconds: s.Interval().Seconds(), Samples: sum.Samples}
		stat := func(f telemetry.Field, v func(telemetry.Stat) float64) *float64 {
			st, ok := sum.Stat(f)
			if !ok {
				return nil
			}
			x := v(st)
			return &x
		}
		mean := func(st telemetry.Stat) float64 { return st.Mean() }
		max := func(st telemetry.Stat) float64 { return st.Max }
		tel.MeanUtilizationPercent = stat(telemetry.GPUUtil, mean)
		tel.MaxUtilizationPercent = stat(telemetry.GPUUtil, max)
		tel.MeanPowerWatts = stat(telemetry.PowerUsage, mean)
		tel.EnergyJoules = stat(telemetry.TotalEnergy, func(st telemetry.Stat) float64 { return (st.Max - st.Min) / 1000 })
		tel.MeanSMClockMHz = stat(telemetry.SMClock, mean)
		tel.MaxTemperatureC = stat(telemetry.GPUTemp, max)
		tel.MaxMemoryUsedMiB = stat(telemetry.FBUsed, max)
		out = append(out, latency.ProfiledGPU{Index: d.Index, Name: d.Name, UUID: d.UUID, MemoryTotalMiB: d.MemoryTotalMiB,
			DriverVersion: s.DriverVersion(), Telemetry: tel})
	}
	return out
}

// measureWithGPUTelemetry runs measure, recording the GPUs' telemetry around it when
// gpuTelemetryOn; the profile's GPUs, or nil.
func (f *engineFlags) measureWithGPUTelemetry(measure func() error) ([]latency.ProfiledGPU, error) {
	s, err := f.startGPUTelemetry(nil)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, measure()
	}
	defer s.Close()
	rec := s.Record()
	if err := measure(); err != nil {
		return nil, err
	}
	return gpuProfile(s, rec.Stop()), nil
}

// describeGPUTelemetry is the engine's start-up line about GPU telemetry ("" without it).
func describeGPUTelemetry(s *telemetry.Sampler) string {
	if s == nil {
		return ""
	}
	var names []string
	for _, d := range s.Devices() {
		names = append(names, fmt.Sprintf("%d %s", d.Index, d.Name))
	}
	return fmt.Sprintf("GPU telemetry: %d GPUs (%s), driver %s, sampled every %v through NVML; DCGM_FI_DEV_* on /metrics",
		len(names), strings.Join(names, ", "), s.DriverVersion(), s.Interval())
}

// printGPUs writes a profile's GPUs and their telemetry over the measurement.
func printGPUs(w io.Writer, gpus []latency.ProfiledGPU) {
	num := func(v *float64, format string) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf(format, *v)
	}
	for _, g := range gpus {
		fmt.Fprintf(w, "GPU %d %s, %.0f MiB, driver %s", g.Index, g.Name, g.MemoryTotalMiB, g.DriverVersion)
		if t := g.Telemetry; t != nil {
			fmt.Fprintf(w, ": %d samples, utilisation mean %s%% max %s%%, power mean %s W, energy %s J, SM clock mean %s MHz, temperature max %s C, memory used max %s MiB",
				t.Samples, num(t.MeanUtilizationPercent, "%.1f"), num(t.MaxUtilizationPercent, "%.0f"), num(t.MeanPowerWatts, "%.1f"),
				num(t.EnergyJoules, "%.1f"), num(t.MeanSMClockMHz, "%.0f"), num(t.MaxTemperatureC, "%.0f"), num(t.MaxMemoryUsedMiB, "%.0f"))
		}
		fmt.Fprintln(w)
	}
}
