// Package telemetry samples every GPU's utilisation, memory, power, clocks, temperature and
// energy through NVML (github.com/NVIDIA/go-nvml) on a timer and exposes them as Prometheus
// metrics under the DCGM exporter's metric names, label names and units, so dashboards and
// alerts written for dcgm-exporter read the engine's /metrics unchanged.
//
// The fields are those of dcgm-exporter's default counters (NVIDIA/dcgm-exporter,
// etc/default-counters.csv, release 4.5.3-4.8.2) that NVML itself gives, with that file's
// metric types and help texts; the labels are those its GPU metrics carry
// (internal/pkg/rendermetrics/render_metrics.go and internal/pkg/collector/gpu_collector.go,
// toMetric): gpu (the NVML index), UUID, pci_bus_id, device ("nvidia<index>"), modelName,
// Hostname, and the default counters' one label field, DCGM_FI_DRIVER_VERSION. (dcgm-exporter's
// main branch renamed Hostname to hostname after 4.5.3-4.8.2; this follows the release.)
// Left out, because NVML alone does not give them or they need an event loop: the profiling
// (DCGM_FI_PROF_*) fields, which come from DCGM's own profiling module, DCGM_FI_DEV_XID_ERRORS
// (NVML XID events), DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL and DCGM_FI_DEV_VGPU_LICENSE_STATUS.
// DCGM_FI_DEV_FB_TOTAL, a DCGM field outside the default counters, is added for the memory
// total.
//
// Only the files built with cgo import go-nvml's pkg/nvml (it needs cgo); without cgo, or
// with -tags nocuda, Open reports that telemetry is not built in and the rest of servelab
// builds as before.
package telemetry

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultInterval is how often the engine samples by default. dcgm-exporter collects every
// 30 s (its --collect-interval, pkg/cmd/app.go); the engine samples every second because a
// sample is a few NVML queries per GPU and a profile's measurement lasts seconds, not minutes.
const DefaultInterval = time.Second

// ErrNotBuilt is Open's error in a binary built without cgo or with -tags nocuda.
var ErrNotBuilt = errors.New("GPU telemetry is not built into this servelab binary: go-nvml needs cgo (build with CGO_ENABLED=1 and without -tags nocuda)")

// Field is one sampled quantity, named as its DCGM field.
type Field int

// The fields, in dcgm-exporter's default-counters.csv order, each in DCGM's unit.
const (
	SMClock               Field = iota // MHz
	MemClock                           // MHz
	MemoryTemp                         // C
	GPUTemp                            // C
	PowerUsage                         // W
	TotalEnergy                        // mJ since boot
	PCIeReplayCounter                  // count
	GPUUtil                            // %
	MemCopyUtil                        // %
	EncUtil                            // %
	DecUtil                            // %
	FBFree                             // MiB
	FBUsed                             // MiB
	FBReserved                         // MiB
	FBTotal                            // MiB
	UncorrectableRemapped              // rows
	CorrectableRemapped                // rows
	RowRemapFailure                    // 0 or 1
	numFields
)

type fieldSpec struct {
	name, help string
	counter    bool
}

// specs are the fields' DCGM names, Prometheus types and help texts, as in dcgm-exporter's
// etc/default-counters.csv (FB_TOTAL, not there, in its style).
var specs = [numFields]fieldSpec{
	SMClock:               {"DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", false},
	MemClock:              {"DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", false},
	MemoryTemp:            {"DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", false},
	GPUTemp:               {"DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", false},
	PowerUsage:            {"DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", false},
	TotalEnergy:           {"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ).", true},
	PCIeReplayCounter:     {"DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.", true},
	GPUUtil:               {"DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", false},
	MemCopyUtil:           {"DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", false},
	EncUtil:               {"DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %).", false},
	DecUtil:               {"DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %).", false},
	FBFree:                {"DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", false},
	FBUsed:                {"DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", false},
	FBReserved:            {"DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).", false},
	FBTotal:               {"DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory total (in MiB).", false},
	UncorrectableRemapped: {"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for uncorrectable errors", true},
	CorrectableRemapped:   {"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors", true},
	RowRemapFailure:       {"DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", false},
}

// String is the field's DCGM name.
func (f Field) String() string {
	if f < 0 || f >= numFields {
		return "Field(" + strconv.Itoa(int(f)) + ")"
	}
	return specs[f].name
}

// labelNames are dcgm-exporter's labels of a GPU metric (render_metrics.go's gpuMetricsFormat
// in 4.5.3-4.8.2), then the default counters' label field.
var labelNames = []string{"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}

// Device is what identifies a GPU, read once when the sampler starts.
type Device struct {
	// Index is NVML's index of the device (the gpu label).
	Index int
	// UUID is NVML's "GPU-..." identifier.
	UUID string
	// Name is the product name (the modelName label), e.g. "NVIDIA H200".
	Name string
	// PCIBusID is NVML's bus id, "00000000:3B:00.0" (the pci_bus_id label).
	PCIBusID string
	// MemoryTotalMiB is the framebuffer's size in MiB; 0 when NVML did not say.
	MemoryTotalMiB float64
}

// Reading is one sample of one device: Values[f] is valid where Has[f]. A field whose NVML
// call failed (not supported on the device, say) is absent, as DCGM leaves out blank values.
type Reading struct {
	Values [numFields]float64
	Has    [numFields]bool
}

func (r *Reading) set(f Field, v float64) { r.Values[f], r.Has[f] = v, true }

// Get returns the field's value and whether the sample has it.
func (r Reading) Get(f Field) (float64, bool) { return r.Values[f], r.Has[f] }

// reader is the NVML side of a sampler: the devices it found and one reading of each.
// read is never called concurrently, nor after close.
type reader interface {
	devices() []Device
	driverVersion() string
	read() []Reading
	close() error
}

// Config configures a Sampler.
type Config struct {
	// Interval is the time between samples; DefaultInterval when 0.
	Interval time.Duration
	// Hostname is the Hostname label. Empty: NODE_NAME, else os.Hostname, as dcgm-exporter
	// does (internal/pkg/hostname/hostname.go, getLocalHostname).
	Hostname string
}

// Sampler samples every GPU on a timer. It is a prometheus.Collector: register it with the
// registry whose /metrics should carry the DCGM metrics. Close stops it.
type Sampler struct {
	r        reader
	interval time.Duration
	devs     []Device
	labels   [][]string // per device, in labelNames order
	descs    [numFields]*prometheus.Desc

	readMu  sync.Mutex // one read at a time
	mu      sync.Mutex // guards below
	latest  []Reading
	samples int
	recs    map[*Recording]struct{}
	closed  bool

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Hostname is the Hostname label dcgm-exporter would give this machine: $NODE_NAME, else
// the kernel's host name.
func Hostname() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// start takes a first sample (so /metrics has values at once) and starts the timer.
func start(r reader, cfg Config) (*Sampler, error) {
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("telemetry interval %v: must not be negative", cfg.Interval)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	host := cfg.Hostname
	if host == "" {
		host = Hostname()
	}
	s := &Sampler{r: r, interval: cfg.Interval, devs: r.devices(), recs: map[*Recording]struct{}{},
		stop: make(chan struct{}), done: make(chan struct{})}
	driver := r.driverVersion()
	for _, d := range s.devs {
		idx := strconv.Itoa(d.Index)
		s.labels = append(s.labels, []string{idx, d.UUID, d.PCIBusID, "nvidia" + idx, d.Name, host, driver})
	}
	for f := range numFields {
		s.descs[f] = prometheus.NewDesc(specs[f].name, specs[f].help, labelNames, nil)
	}
	s.sample()
	go s.loop()
	return s, nil
}

func (s *Sampler) loop() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.sample()
		}
	}
}

// sample reads every device and hands the readings to the collector and the recordings.
func (s *Sampler) sample() {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	rs := s.r.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latest = rs
	s.samples++
	for rec := range s.recs {
		rec.add(rs)
	}
}

// Interval is the time between samples.
func (s *Sampler) Interval() time.Duration { return s.interval }

// Devices are the GPUs sampled, in NVML's index order.
func (s *Sampler) Devices() []Device { return append([]Device(nil), s.devs...) }

// DriverVersion is the NVIDIA driver's version as NVML reports it.
func (s *Sampler) DriverVersion() string { return s.r.driverVersion() }

// Latest is the last sample of every device, in Devices' order.
func (s *Sampler) Latest() []Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Reading(nil), s.latest...)
}

// Samples is how many samples have been taken.
func (s *Sampler) Samples() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

// Describe implements prometheus.Collector.
func (s *Sampler) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range s.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the latest sample's fields, each device's
// absent fields left out. Nothing after Close.
func (s *Sampler) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	latest := s.latest
	s.mu.Unlock()
	for i, r := range latest {
		for f := range numFields {
			if !r.Has[f] {
				continue
			}
			vt := prometheus.GaugeValue
			if specs[f].counter {
				vt = prometheus.CounterValue
			}
			ch <- prometheus.MustNewConstMetric(s.descs[f], vt, r.Values[f], s.labels[i]...)
		}
	}
}

// Close stops the timer, waits for a sample in progress and shuts NVML down. Later calls
// return the first's result.
func (s *Sampler) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.readMu.Lock()
		s.mu.Lock()
		s.closed = true
		s.latest = nil
		s.mu.Unlock()
		s.closeErr = s.r.close()
		s.readMu.Unlock()
	})
	return s.closeErr
}

// Stat summarises one field of one device over a recording.
type Stat struct {
	// N is the number of samples that had the field.
	N int
	// Sum, Min and Max are over those samples.
	Sum, Min, Max float64
}

// Mean is Sum/N (0 without samples).
func (st Stat) Mean() float64 {
	if st.N == 0 {
		return 0
	}
	return st.Sum / float64(st.N)
}

// Summary is one device's fields over a recording.
type Summary struct {
	Device Device
	// Samples is the number of samples taken while recording.
	Samples int
	Stats   [numFields]Stat
}

// Stat returns the field's statistics and whether any sample had it.
func (s Summary) Stat(f Field) (Stat, bool) { return s.Stats[f], s.Stats[f].N > 0 }

// Recording accumulates the samples taken between Record and Stop.
type Recording struct {
	s    *Sampler
	sums []Summary
	once sync.Once
}

// Record starts summarising the samples taken from now on (Stop ends it).
func (s *Sampler) Record() *Recording {
	rec := &Recording{s: s, sums: make([]Summary, len(s.devs))}
	for i, d := range s.devs {
		rec.sums[i].Device = d
	}
	s.mu.Lock()
	s.recs[rec] = struct{}{}
	s.mu.Unlock()
	return rec
}

// add takes one sample; the sampler's mu is held.
func (rec *Recording) add(rs []Reading) {
	for i := range rec.sums {
		if i >= len(rs) {
			break
		}
		sum := &rec.sums[i]
		sum.Samples++
		for f := range numFields {
			if !rs[i].Has[f] {
				continue
			}
			st, v := &sum.Stats[f], rs[i].Values[f]
			if st.N == 0 || v > st.Max {
				st.Max = v
			}
			if st.N == 0 || v < st.Min {
				st.Min = v
			}
			st.N++
			st.Sum += v
		}
	}
}

// Stop takes a last sample, so that a measurement shorter than the interval has one, ends
// the recording and returns each device's summary, in Devices' order.
func (rec *Recording) Stop() []Summary {
	rec.once.Do(func() {
		rec.s.sample()
		rec.s.mu.Lock()
		delete(rec.s.recs, rec)
		rec.s.mu.Unlock()
	})
	rec.s.mu.Lock()
	defer rec.s.mu.Unlock()
	return append([]Summary(nil), rec.sums...)
}
