//go:build cgo && !nocuda

package telemetry

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gpuState is what one mock GPU's telemetry calls return; tests change it between samples.
// A field of fail names a call that returns its Return instead.
type gpuState struct {
	mu                 sync.Mutex
	smMHz, memMHz      uint32
	gpuC, memC         uint32
	powerMW            uint32
	energyMJ           uint64
	replays            int
	util               nvml.Utilization
	enc, dec           uint32
	mem                nvml.Memory_v2
	corr, unc          int
	remapFailed        bool
	fail               map[string]nvml.Return
	calls              int  // telemetry calls made
	callsAfterShutdown bool // a call came after the server's Shutdown
}

func (g *gpuState) update(f func(*gpuState)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

// mockServer is go-nvml's DGX H200 mock with n GPUs whose telemetry calls answer from states.
type mockServer struct {
	*server.Server
	states []*gpuState
	mu     sync.Mutex
	shut   int
}

func newMock(t *testing.T, n int) *mockServer {
	t.Helper()
	cfgs := make([]gpus.Config, n)
	for i := range cfgs {
		cfgs[i] = gpus.H200_SXM5_141GB
	}
	m := &mockServer{Server: dgxh200.NewWithGPUs(cfgs...)}
	m.ShutdownFunc = func() nvml.Return {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.shut++
		return nvml.SUCCESS
	}
	for i, d := range m.Devices {
		st := &gpuState{
			smMHz: 1980, memMHz: 3201, gpuC: 41, memC: 38, powerMW: 412345, energyMJ: 123456789, replays: 2,
			util: nvml.Utilization{Gpu: 87, Memory: 55}, enc: 0, dec: 1,
			mem:  nvml.Memory_v2{Total: 144384 << 20, Reserved: 512 << 20, Used: 100000<<20 + 12345, Free: (144384-512-100000)<<20 - 12345},
			corr: 1, unc: 0,
			fail: map[string]nvml.Return{},
		}
		st.smMHz += uint32(i) // tell the devices apart
		m.states = append(m.states, st)
		m.install(d.(*server.Device), st)
	}
	return m
}

func (m *mockServer) shutdowns() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.shut
}

// install answers d's telemetry calls from st.
func (m *mockServer) install(d *server.Device, st *gpuState) {
	call := func(name string) (nvml.Return, func()) {
		st.mu.Lock()
		st.calls++
		if m.shutdowns() > 0 {
			st.callsAfterShutdown = true
		}
		if r, ok := st.fail[name]; ok {
			return r, st.mu.Unlock
		}
		return nvml.SUCCESS, st.mu.Unlock
	}
	d.GetClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
		r, done := call(fmt.Sprint("clock", c))
		defer done()
		if c == nvml.CLOCK_SM {
			return st.smMHz, r
		}
		return st.memMHz, r
	}
	d.GetFieldValuesFunc = func(fv []nvml.FieldValue) nvml.Return {
		r, done := call("fields")
		defer done()
		for i := range fv {
			if fv[i].FieldId != nvml.FI_DEV_MEMORY_TEMP {
				fv[i].NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				continue
			}
			fv[i].ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
			binary.LittleEndian.PutUint32(fv[i].Value[:], st.memC)
			fv[i].NvmlReturn = uint32(r)
		}
		return nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
		r, done := call("temp")
		defer done()
		return st.gpuC, r
	}
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) {
		r, done := call("power")
		defer done()
		return st.powerMW, r
	}
	d.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) {
		r, done := call("energy")
		defer done()
		return st.energyMJ, r
	}
	d.GetPcieReplayCounterFunc = func() (int, nvml.Return) {
		r, done := call("replay")
		defer done()
		return st.replays, r
	}
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		r, done := call("util")
		defer done()
		return st.util, r
	}
	d.GetEncoderUtilizationFunc = func() (uint32, uint32, nvml.Return) {
		r, done := call("enc")
		defer done()
		return st.enc, 167000, r
	}
	d.GetDecoderUtilizationFunc = func() (uint32, uint32, nvml.Return) {
		r, done := call("dec")
		defer done()
		return st.dec, 167000, r
	}
	d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
		r, done := call("mem_v2")
		defer done()
		return st.mem, r
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		r, done := call("mem")
		defer done()
		return nvml.Memory{Total: st.mem.Total, Free: st.mem.Free, Used: st.mem.Used + st.mem.Reserved}, r
	}
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		var p nvml.PciInfo
		for i, c := range fmt.Sprintf("00000000:%02X:00.0", 0x18+d.Index) {
			p.BusId[i] = int8(c)
		}
		return p, nvml.SUCCESS
	}
	d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) {
		r, done := call("remap")
		defer done()
		return st.corr, st.unc, false, st.remapFailed, r
	}
}

// labels is the label set dcgm-exporter gives device i of m.
func (m *mockServer) labels(i int) string {
	d := m.Devices[i].(*server.Device)
	return fmt.Sprintf(`DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="testhost",UUID="%s",device="nvidia%d",gpu="%d",modelName="NVIDIA H200 141GB HBM3e",pci_bus_id="00000000:%02X:00.0"`,
		d.UUID, i, i, 0x18+i)
}

// scrape is the registry's /metrics page, as Prometheus reads it.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func startMock(t *testing.T, m *mockServer, interval time.Duration) (*Sampler, *prometheus.Registry) {
	t.Helper()
	s, err := New(m, Config{Interval: interval, Hostname: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	reg := prometheus.NewRegistry()
	reg.MustRegister(s)
	return s, reg
}

// TestMetricsText checks the /metrics page: dcgm-exporter's names, types, help, labels and
// units (MiB, W, MHz, C, mJ), and that a call failing on one device (power not supported)
// leaves only that device's metric out.
func TestMetricsText(t *testing.T) {
	m := newMock(t, 2)
	m.states[1].fail["power"] = nvml.ERROR_NOT_SUPPORTED
	m.states[1].fail["fields"] = nvml.ERROR_NOT_SUPPORTED
	_, reg := startMock(t, m, time.Hour)
	l0, l1 := m.labels(0), m.labels(1)
	want := fmt.Sprintf(`
# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{%[1]s} 1980
DCGM_FI_DEV_SM_CLOCK{%[2]s} 1981
# HELP DCGM_FI_DEV_MEM_CLOCK Memory clock frequency (in MHz).
# TYPE DCGM_FI_DEV_MEM_CLOCK gauge
DCGM_FI_DEV_MEM_CLOCK{%[1]s} 3201
DCGM_FI_DEV_MEM_CLOCK{%[2]s} 3201
# HELP DCGM_FI_DEV_MEMORY_TEMP Memory temperature (in C).
# TYPE DCGM_FI_DEV_MEMORY_TEMP gauge
DCGM_FI_DEV_MEMORY_TEMP{%[1]s} 38
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{%[1]s} 41
DCGM_FI_DEV_GPU_TEMP{%[2]s} 41
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{%[1]s} 412.345
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{%[1]s} 1.23456789e+08
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{%[2]s} 1.23456789e+08
# HELP DCGM_FI_DEV_PCIE_REPLAY_COUNTER Total number of PCIe retries.
# TYPE DCGM_FI_DEV_PCIE_REPLAY_COUNTER counter
DCGM_FI_DEV_PCIE_REPLAY_COUNTER{%[1]s} 2
DCGM_FI_DEV_PCIE_REPLAY_COUNTER{%[2]s} 2
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %%).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{%[1]s} 87
DCGM_FI_DEV_GPU_UTIL{%[2]s} 87
# HELP DCGM_FI_DEV_MEM_COPY_UTIL Memory utilization (in %%).
# TYPE DCGM_FI_DEV_MEM_COPY_UTIL gauge
DCGM_FI_DEV_MEM_COPY_UTIL{%[1]s} 55
DCGM_FI_DEV_MEM_COPY_UTIL{%[2]s} 55
# HELP DCGM_FI_DEV_ENC_UTIL Encoder utilization (in %%).
# TYPE DCGM_FI_DEV_ENC_UTIL gauge
DCGM_FI_DEV_ENC_UTIL{%[1]s} 0
DCGM_FI_DEV_ENC_UTIL{%[2]s} 0
# HELP DCGM_FI_DEV_DEC_UTIL Decoder utilization (in %%).
# TYPE DCGM_FI_DEV_DEC_UTIL gauge
DCGM_FI_DEV_DEC_UTIL{%[1]s} 1
DCGM_FI_DEV_DEC_UTIL{%[2]s} 1
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{%[1]s} 43871
DCGM_FI_DEV_FB_FREE{%[2]s} 43871
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{%[1]s} 100000
DCGM_FI_DEV_FB_USED{%[2]s} 100000
# HELP DCGM_FI_DEV_FB_RESERVED Framebuffer memory reserved (in MiB).
# TYPE DCGM_FI_DEV_FB_RESERVED gauge
DCGM_FI_DEV_FB_RESERVED{%[1]s} 512
DCGM_FI_DEV_FB_RESERVED{%[2]s} 512
# HELP DCGM_FI_DEV_FB_TOTAL Framebuffer memory total (in MiB).
# TYPE DCGM_FI_DEV_FB_TOTAL gauge
DCGM_FI_DEV_FB_TOTAL{%[1]s} 144384
DCGM_FI_DEV_FB_TOTAL{%[2]s} 144384
# HELP DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS Number of remapped rows for uncorrectable errors
# TYPE DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS counter
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{%[1]s} 0
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{%[2]s} 0
# HELP DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS Number of remapped rows for correctable errors
# TYPE DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS counter
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS{%[1]s} 1
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS{%[2]s} 1
# HELP DCGM_FI_DEV_ROW_REMAP_FAILURE Whether remapping of rows has failed
# TYPE DCGM_FI_DEV_ROW_REMAP_FAILURE gauge
DCGM_FI_DEV_ROW_REMAP_FAILURE{%[1]s} 0
DCGM_FI_DEV_ROW_REMAP_FAILURE{%[2]s} 0
`, l0, l1)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	// The same on the HTTP page a Prometheus server scrapes.
	page := scrape(t, reg)
	for _, line := range []string{
		fmt.Sprintf("DCGM_FI_DEV_POWER_USAGE{%s} 412.345", l0),
		fmt.Sprintf("DCGM_FI_DEV_FB_USED{%s} 100000", l1),
	} {
		if !strings.Contains(page, line) {
			t.Errorf("/metrics lacks %q:\n%s", line, page)
		}
	}
	if strings.Contains(page, "DCGM_FI_DEV_POWER_USAGE{"+l1) {
		t.Errorf("/metrics has GPU 1's power, whose call is not supported:\n%s", page)
	}
}

// metricLine returns the value of name on device i in the registry's page ("" when absent).
func metricValue(t *testing.T, reg *prometheus.Registry, m *mockServer, name string, i int) string {
	t.Helper()
	prefix := name + "{" + m.labels(i) + "} "
	for line := range strings.SplitSeq(scrape(t, reg), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return v
		}
	}
	return ""
}

// waitFor polls cond until it holds or 20 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestTimer: a value changed in the mock shows in a later scrape without anyone asking for
// a sample; a call that starts failing drops its metric, and it comes back when the call
// succeeds again.
func TestTimer(t *testing.T) {
	tests := []struct {
		name, metric string
		change       func(*gpuState)
		want         string
	}{
		{"power", "DCGM_FI_DEV_POWER_USAGE", func(g *gpuState) { g.powerMW = 655000 }, "655"},
		{"sm clock", "DCGM_FI_DEV_SM_CLOCK", func(g *gpuState) { g.smMHz = 1755 }, "1755"},
		{"utilisation", "DCGM_FI_DEV_GPU_UTIL", func(g *gpuState) { g.util.Gpu = 13 }, "13"},
		{"memory used", "DCGM_FI_DEV_FB_USED", func(g *gpuState) { g.mem.Used = 7 << 20 }, "7"},
		{"temperature", "DCGM_FI_DEV_GPU_TEMP", func(g *gpuState) { g.gpuC = 77 }, "77"},
		{"energy", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", func(g *gpuState) { g.energyMJ = 5e9 }, "5e+09"},
		{"power fails", "DCGM_FI_DEV_POWER_USAGE", func(g *gpuState) { g.fail["power"] = nvml.ERROR_GPU_IS_LOST }, ""},
		{"memory falls back to v1", "DCGM_FI_DEV_FB_RESERVED", func(g *gpuState) { g.fail["mem_v2"] = nvml.ERROR_FUNCTION_NOT_FOUND }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMock(t, 1)
			_, reg := startMock(t, m, 2*time.Millisecond)
			if v := metricValue(t, reg, m, tc.metric, 0); v == tc.want || v == "" {
				t.Fatalf("%s is %q before the change", tc.metric, v)
			}
			m.states[0].update(tc.change)
			waitFor(t, fmt.Sprintf("%s to read %q", tc.metric, tc.want), func() bool { return metricValue(t, reg, m, tc.metric, 0) == tc.want })
			if strings.HasPrefix(tc.name, "power fails") {
				// The other fields still come.
				if v := metricValue(t, reg, m, "DCGM_FI_DEV_SM_CLOCK", 0); v != "1980" {
					t.Errorf("SM clock %q while power fails, want 1980", v)
				}
				m.states[0].update(func(g *gpuState) { delete(g.fail, "power") })
				waitFor(t, "power to come back", func() bool { return metricValue(t, reg, m, tc.metric, 0) == "412.345" })
			}
		})
	}
}

// TestClose: Close stops the timer before it shuts NVML down (no call reaches the GPU after
// nvmlShutdown), shuts it down once, and the registry has no GPU metrics after it.
func TestClose(t *testing.T) {
	m := newMock(t, 2)
	s, reg := startMock(t, m, time.Millisecond)
	calls := func() int {
		m.states[0].mu.Lock()
		defer m.states[0].mu.Unlock()
		return m.states[0].calls
	}
	first := calls()
	waitFor(t, "timer samples", func() bool { return calls() > 3*first })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	default:
		t.Fatal("the sampling goroutine is still running after Close")
	}
	if n := m.shutdowns(); n != 1 {
		t.Errorf("nvmlShutdown called %d times, want 1", n)
	}
	after := calls()
	// The goroutine is gone (above); a sample through Record's Stop is refused too.
	s.Record().Stop()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := m.shutdowns(); n != 1 {
		t.Errorf("nvmlShutdown called %d times after a second Close, want 1", n)
	}
	if got := calls(); got != after {
		t.Errorf("%d NVML calls after Close", got-after)
	}
	for _, st := range m.states {
		if st.callsAfterShutdown {
			t.Error("an NVML call came after nvmlShutdown")
		}
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("%d metrics (%v) after Close, want none", n, err)
	}
}

// TestRecording: a recording's mean and max are over the samples taken while it ran (the
// last one taken by Stop), per device, and a field absent from some samples averages over
// those that have it.
func TestRecording(t *testing.T) {
	m := newMock(t, 2)
	s, _ := startMock(t, m, time.Hour) // only the samples this test takes
	set := func(util uint32, powerW float64, powerOK bool, usedMiB uint64) {
		m.states[0].update(func(g *gpuState) {
			g.util.Gpu = util
			g.powerMW = uint32(powerW * 1000)
			if powerOK {
				delete(g.fail, "power")
			} else {
				g.fail["power"] = nvml.ERROR_NOT_SUPPORTED
			}
			g.mem.Used = usedMiB << 20
		})
	}
	set(99, 700, true, 140000) // before the recording: not in it
	s.sample()
	rec := s.Record()
	set(10, 100, true, 1000)
	s.sample()
	set(50, 300, false, 5000)
	s.sample()
	set(30, 200, true, 3000)
	sums := rec.Stop()
	set(100, 999, true, 9000) // after: not in it
	s.sample()

	if len(sums) != 2 {
		t.Fatalf("%d summaries, want 2", len(sums))
	}
	got := map[string]Stat{}
	for _, f := range []Field{GPUUtil, PowerUsage, FBUsed, SMClock} {
		st, _ := sums[0].Stat(f)
		got[f.String()] = st
	}
	want := map[string]Stat{
		"DCGM_FI_DEV_GPU_UTIL":    {N: 3, Sum: 90, Min: 10, Max: 50},
		"DCGM_FI_DEV_POWER_USAGE": {N: 2, Sum: 300, Min: 100, Max: 200},
		"DCGM_FI_DEV_FB_USED":     {N: 3, Sum: 9000, Min: 1000, Max: 5000},
		"DCGM_FI_DEV_SM_CLOCK":    {N: 3, Sum: 3 * 1980, Min: 1980, Max: 1980},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("device 0's stats (-want +got):\n%s", d)
	}
	if sums[0].Samples != 3 || sums[1].Samples != 3 {
		t.Errorf("samples %d and %d, want 3 each", sums[0].Samples, sums[1].Samples)
	}
	if st := got["DCGM_FI_DEV_POWER_USAGE"]; st.Mean() != 150 {
		t.Errorf("mean power %v, want 150", st.Mean())
	}
	if d := sums[1].Device; d.Name != "NVIDIA H200 141GB HBM3e" || d.MemoryTotalMiB != 144384 || d.Index != 1 || d.PCIBusID != "00000000:19:00.0" {
		t.Errorf("device 1 is %+v", d)
	}
	if v := s.DriverVersion(); v != "550.54.15" {
		t.Errorf("driver version %q", v)
	}
}

// TestStartErrors: nvmlInit and device enumeration failures are errors naming the call,
// and a failed start shuts NVML down again.
func TestStartErrors(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(*mockServer)
		want    string
		shut    int
	}{
		{"init", func(m *mockServer) { m.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED } }, "nvmlInit: ERROR_DRIVER_NOT_LOADED", 0},
		{"count", func(m *mockServer) {
			m.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
		}, "nvmlDeviceGetCount: ERROR_UNKNOWN", 1},
		{"handle", func(m *mockServer) {
			m.DeviceGetHandleByIndexFunc = func(int) (nvml.Device, nvml.Return) { return nil, nvml.ERROR_GPU_IS_LOST }
		}, "nvmlDeviceGetHandleByIndex(0): ERROR_GPU_IS_LOST", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMock(t, 1)
			tc.breakIt(m)
			_, err := New(m, Config{Interval: time.Hour})
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if n := m.shutdowns(); n != tc.shut {
				t.Errorf("%d shutdowns, want %d", n, tc.shut)
			}
		})
	}
	if _, err := New(newMock(t, 1), Config{Interval: -time.Second}); err == nil || !strings.Contains(err.Error(), "must not be negative") {
		t.Errorf("negative interval: %v", err)
	}
}

func TestFieldValue(t *testing.T) {
	put := func(vt nvml.ValueType, f func([]byte)) nvml.FieldValue {
		fv := nvml.FieldValue{ValueType: uint32(vt)}
		f(fv.Value[:])
		return fv
	}
	le := binary.LittleEndian
	tests := []struct {
		fv   nvml.FieldValue
		want float64
	}{
		{put(nvml.VALUE_TYPE_DOUBLE, func(b []byte) { le.PutUint64(b, math.Float64bits(36.5)) }), 36.5},
		{put(nvml.VALUE_TYPE_UNSIGNED_INT, func(b []byte) { le.PutUint32(b, 45) }), 45},
		{put(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, func(b []byte) { le.PutUint64(b, 1<<40) }), 1 << 40},
		{put(nvml.VALUE_TYPE_SIGNED_LONG_LONG, func(b []byte) { le.PutUint64(b, uint64(1<<64-3)) }), -3},
		{put(nvml.VALUE_TYPE_SIGNED_INT, func(b []byte) { le.PutUint32(b, uint32(1<<32-7)) }), -7},
		{put(nvml.VALUE_TYPE_UNSIGNED_SHORT, func(b []byte) { le.PutUint16(b, 65535) }), 65535},
	}
	for _, tc := range tests {
		got, err := fieldValue(tc.fv)
		if err != nil || got != tc.want {
			t.Errorf("type %d: %v, %v; want %v", tc.fv.ValueType, got, err, tc.want)
		}
	}
	if _, err := fieldValue(nvml.FieldValue{ValueType: 99}); err == nil {
		t.Error("unknown value type: no error")
	}
}
