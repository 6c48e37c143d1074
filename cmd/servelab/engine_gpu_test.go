package main

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"servelab/cuda/telemetry"
)

// noNVML makes any start of GPU telemetry fail t for the rest of the test: no test may load
// the real libnvidia-ml.so.1.
func noNVML(t *testing.T) *int {
	t.Helper()
	calls := new(int)
	old := openGPUTelemetry
	openGPUTelemetry = func(telemetry.Config) (*telemetry.Sampler, error) {
		*calls++
		return nil, errors.New("test: GPU telemetry must not start here")
	}
	t.Cleanup(func() { openGPUTelemetry = old })
	return calls
}

// TestGPUTelemetryOnlyOnGPU: telemetry starts only for --device cuda with a non-zero
// interval; a negative interval is refused naming the flag, whatever the device.
func TestGPUTelemetryOnlyOnGPU(t *testing.T) {
	calls := noNVML(t)
	for _, tc := range []struct {
		device   string
		interval time.Duration
		start    bool
		err      string
	}{
		{"cpu", time.Second, false, ""},
		{"", time.Second, false, ""},
		{"cuda", 0, false, ""},
		{"cuda", time.Second, true, "--gpu-telemetry-interval: GPU telemetry: test: GPU telemetry must not start here (--gpu-telemetry-interval 0 runs without it)"},
		{"cpu", -time.Second, false, "--gpu-telemetry-interval -1s: want a positive duration, or 0 to disable"},
	} {
		*calls = 0
		f := engineFlags{device: tc.device, gpuTelemetryInterval: tc.interval}
		s, err := f.startGPUTelemetry(nil)
		if s != nil || (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("device %q interval %v: %v, %v; want error %q", tc.device, tc.interval, s, err, tc.err)
		}
		if started := *calls > 0; started != tc.start {
			t.Errorf("device %q interval %v: telemetry started %t, want %t", tc.device, tc.interval, started, tc.start)
		}
	}
}

// TestCPUEngineHasNoGPUMetrics: an engine on the CPU (with the default interval) does not
// touch NVML and its /metrics has no DCGM metrics.
func TestCPUEngineHasNoGPUMetrics(t *testing.T) {
	calls := noNVML(t)
	r := serveEngine(t, engineFlags{model: synthTiny(t), host: "127.0.0.1", blockSize: 16, prefixCaching: true,
		numBlocksOverride: 64, batchSpec: "vllm", evictSpec: "lru", gpuTelemetryInterval: telemetry.DefaultInterval})
	page := getMetrics(t, "http://"+r.listener.Addr().String())
	if !strings.Contains(page, "vllm:num_requests_running") || strings.Contains(page, "DCGM_") {
		t.Errorf("CPU engine's /metrics:\n%s", page)
	}
	if *calls != 0 {
		t.Errorf("a CPU engine started GPU telemetry %d times", *calls)
	}
}

func getMetrics(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d, %v", resp.StatusCode, err)
	}
	return string(body)
}
