//go:build cgo && !nocuda

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"servelab/cuda/telemetry"
	"servelab/sim/latency"
)

// mockGPU is one H200 of go-nvml's DGX H200 mock; its utilisation can change between
// samples, power is not supported (so its metric is absent) and the rest is fixed.
type mockGPU struct {
	util atomic.Uint32
}

// useMockNVML makes openGPUTelemetry start on go-nvml's DGX H200 mock with n GPUs (never the
// real NVML) for the rest of the test; it returns the GPUs and how often NVML was shut down.
func useMockNVML(t *testing.T, n int) ([]*mockGPU, func() int) {
	t.Helper()
	srv := dgxh200.New()
	srv.Devices = srv.Devices[:n]
	var mu sync.Mutex
	shut := 0
	srv.ShutdownFunc = func() nvml.Return {
		mu.Lock()
		defer mu.Unlock()
		shut++
		return nvml.SUCCESS
	}
	var gpus []*mockGPU
	for _, dev := range srv.Devices {
		d, g := dev.(*server.Device), &mockGPU{}
		g.util.Store(20)
		gpus = append(gpus, g)
		notSupported := func() nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: g.util.Load(), Memory: 30}, nvml.SUCCESS
		}
		d.GetClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
			if c == nvml.CLOCK_SM {
				return 1980, nvml.SUCCESS
			}
			return 3201, nvml.SUCCESS
		}
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 45, nvml.SUCCESS }
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, notSupported() }
		d.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 0, notSupported() }
		d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: 144384 << 20, Reserved: 500 << 20, Used: 80000 << 20, Free: 63884 << 20}, nvml.SUCCESS
		}
		d.GetFieldValuesFunc = func([]nvml.FieldValue) nvml.Return { return notSupported() }
		d.GetPcieReplayCounterFunc = func() (int, nvml.Return) { return 0, notSupported() }
		d.GetEncoderUtilizationFunc = func() (uint32, uint32, nvml.Return) { return 0, 0, notSupported() }
		d.GetDecoderUtilizationFunc = func() (uint32, uint32, nvml.Return) { return 0, 0, notSupported() }
		d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, notSupported() }
	}
	old := openGPUTelemetry
	openGPUTelemetry = func(cfg telemetry.Config) (*telemetry.Sampler, error) {
		cfg.Hostname = "testhost"
		return telemetry.New(srv, cfg)
	}
	t.Cleanup(func() { openGPUTelemetry = old })
	return gpus, func() int {
		mu.Lock()
		defer mu.Unlock()
		return shut
	}
}

// TestEngineServesGPUMetrics: an engine with GPU telemetry serves the DCGM metrics on its
// /metrics beside the vllm: ones, sampled on the timer, and stops sampling when it closes.
func TestEngineServesGPUMetrics(t *testing.T) {
	gpus, shutdowns := useMockNVML(t, 2)
	ef := engineFlags{model: synthTiny(t), host: "127.0.0.1", blockSize: 16, prefixCaching: true,
		numBlocksOverride: 64, batchSpec: "vllm", evictSpec: "lru",
		gpuTelemetryInterval: 5 * time.Millisecond, gpuTelemetryAnyDevice: true}
	r, err := ef.start()
	if err != nil {
		t.Fatal(err)
	}
	go r.server.Serve(r.listener)
	if r.gpu == nil {
		t.Fatal("the engine started no GPU telemetry")
	}
	url := "http://" + r.listener.Addr().String()
	d := r.gpu.Devices()[1]
	labels := fmt.Sprintf(`{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="testhost",UUID="%s",device="nvidia1",gpu="1",modelName="NVIDIA H200 141GB HBM3e",pci_bus_id=""}`, d.UUID)
	page := getMetrics(t, url)
	for _, want := range []string{
		"vllm:num_requests_running{",
		"DCGM_FI_DEV_GPU_UTIL" + labels + " 20\n",
		"DCGM_FI_DEV_FB_USED" + labels + " 80000\n",
		"DCGM_FI_DEV_SM_CLOCK" + labels + " 1980\n",
		"# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "DCGM_FI_DEV_POWER_USAGE") {
		t.Errorf("/metrics has power, which the GPUs do not support:\n%s", page)
	}
	gpus[1].util.Store(93)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(getMetrics(t, url), "DCGM_FI_DEV_GPU_UTIL"+labels+" 93\n") {
		if time.Now().After(deadline) {
			t.Fatal("the changed utilisation never reached /metrics")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.server.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	if n := shutdowns(); n != 1 {
		t.Errorf("NVML shut down %d times when the engine closed, want 1", n)
	}
}

// TestProfileRecordsGPUs: a profile measured with GPU telemetry has each GPU's name,
// memory, driver and telemetry summary, and the file loads back with them.
func TestProfileRecordsGPUs(t *testing.T) {
	gpus, shutdowns := useMockNVML(t, 1)
	gpus[0].util.Store(64)
	f := engineFlags{model: synthTiny(t), blockSize: 16, prefixCaching: true, numBlocksOverride: 512,
		batchSpec: "vllm", evictSpec: "lru", gpuTelemetryInterval: time.Millisecond, gpuTelemetryAnyDevice: true}
	p, err := measureProfile(f, true, 1, func(int, int) {})
	if err != nil {
		t.Fatal(err)
	}
	if n := shutdowns(); n != 1 {
		t.Errorf("NVML shut down %d times after the profile, want 1", n)
	}
	file := filepath.Join(t.TempDir(), "profile.json")
	if err := p.Write(file); err != nil {
		t.Fatal(err)
	}
	back, err := latency.LoadProfile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.GPUs) != 1 {
		t.Fatalf("profile GPUs %+v, want 1", back.GPUs)
	}
	g := back.GPUs[0]
	tel := g.Telemetry
	if g.Name != "NVIDIA H200 141GB HBM3e" || g.MemoryTotalMiB != 144384 || g.DriverVersion != "550.54.15" || tel == nil || tel.Samples < 1 {
		t.Fatalf("profile GPU %+v, telemetry %+v", g, tel)
	}
	for _, c := range []struct {
		name string
		got  *float64
		want float64
	}{
		{"mean utilisation", tel.MeanUtilizationPercent, 64}, {"max utilisation", tel.MaxUtilizationPercent, 64},
		{"mean SM clock", tel.MeanSMClockMHz, 1980}, {"max temperature", tel.MaxTemperatureC, 45},
		{"max memory used", tel.MaxMemoryUsedMiB, 80000},
	} {
		if c.got == nil || *c.got != c.want {
			t.Errorf("%s %v, want %v", c.name, c.got, c.want)
		}
	}
	if tel.MeanPowerWatts != nil || tel.EnergyJoules != nil {
		t.Errorf("power %v and energy %v recorded from GPUs that do not support them", tel.MeanPowerWatts, tel.EnergyJoules)
	}
	if tel.IntervalSeconds != 0.001 {
		t.Errorf("interval %v s, want 0.001", tel.IntervalSeconds)
	}
}
