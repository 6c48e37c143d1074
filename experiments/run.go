package experiments

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/gonum/stat/distuv"

	"servelab/internal/atomicfile"
	"servelab/metrics"
	"servelab/serving"
	"servelab/sim"
	"servelab/traces"
)

// Options control a run.
type Options struct {
	// Out is the experiment directory; empty means runs/<name>.
	Out string
	// Parallel is how many cells run at once; 0 means GOMAXPROCS.
	Parallel int
	// SampleInterval is the simulated seconds between time-series samples; 0 means the
	// workload's span / 200, at least 0.1 s.
	SampleInterval float64
	// OnEvent, if set, receives every event; it is called from the cells' goroutines
	// concurrently and must not block.
	OnEvent func(Event)
	// Real runs the cells of a spec whose world is real. The command line supplies one
	// that starts local engine processes and replays the workload over HTTP; this package
	// stays free of processes and sockets.
	Real RealWorld
}

// RealWorld runs cells on real engines.
type RealWorld interface {
	RunCell(ctx context.Context, cell RealCell) (*metrics.Summary, error)
}

// RealCell is one cell for a RealWorld to run.
type RealCell struct {
	Spec *Spec
	Cell Cell
	// Workload is the cell's requests: windowed, limited, token- and rate-scaled.
	Workload traces.Reader
	// OnRecord takes every request's record and OnSample the cluster's state every
	// SampleInterval seconds (wall time since the run started; cumulative counters since
	// then). Both must be called from one goroutine.
	OnRecord       func(*serving.Record) error
	OnSample       func(sim.Sample) error
	SampleInterval float64
}

// Event kinds.
const (
	ExperimentStart = "experiment_start"
	CellStart       = "cell_start"
	CellSample      = "sample"
	CellDone        = "cell_done"
	CellError       = "cell_error"
	CellSkipped     = "cell_skipped"
	ExperimentDone  = "experiment_done"
)

// Event is one step of a run, as the dashboard streams it and events.jsonl records it.
type Event struct {
	Experiment string `json:"experiment"`
	Cell       string `json:"cell,omitempty"`
	Kind       string `json:"kind"`
	// Progress is, for cell events, the fraction of the cell's requests finished; for
	// experiment events, the fraction of cells finished.
	Progress float64          `json:"progress"`
	Sample   *Sample          `json:"sample,omitempty"`
	Summary  *metrics.Summary `json:"summary,omitempty"`
	Error    string           `json:"error,omitempty"`
	// PrefixHashes is, on experiment_start, whether the workload's requests carry prefix
	// hash ids (results.json's prefix_hashes, known before the first cell runs), so a live
	// view can tell "no prefix information" from "no hits". Absent from older runs' events.
	PrefixHashes *bool `json:"prefix_hashes,omitempty"`
}

// Sample is one point of a cell's time series.
type Sample struct {
	// Time is simulated seconds since the start.
	Time      float64 `json:"t"`
	Completed int     `json:"completed"`
	// RequestThroughput and OutputThroughput are over the interval since the last sample.
	// Every sample ends a whole interval: the last one, taken when the last request
	// finished, is placed at the end of its interval and its rates are over all of it
	// (nothing finished in the rest), rather than over a partial interval.
	RequestThroughput float64 `json:"request_throughput"`
	OutputThroughput  float64 `json:"output_throughput"`
	// Running and Waiting are summed over instances (vLLM's gauges).
	Running int `json:"num_requests_running"`
	Waiting int `json:"num_requests_waiting"`
	// KVCacheUsage is the mean over instances, 0..1.
	KVCacheUsage float64 `json:"kv_cache_usage_perc"`
	// PrefixCacheHitRate is over the interval (hits over queried prompt tokens).
	PrefixCacheHitRate float64 `json:"prefix_cache_hit_rate"`
	// TTFTP50Ms is the median TTFT of the requests finished in the interval.
	TTFTP50Ms float64 `json:"ttft_p50_ms"`
	// Instances is the simulated instances started (billed) at the sample: the cluster's
	// size, which an autoscaled cluster changes. Absent from real runs and older results.
	Instances int `json:"instances,omitempty"`
}

// Results is results.json: every cell and the policies aggregated over seeds.
type Results struct {
	Experiment string         `json:"experiment"`
	Cells      []CellResult   `json:"cells"`
	Policies   []PolicyResult `json:"policies"`
	// PrefixHashes says whether the workload's requests carry prefix hash ids (Mooncake's
	// hash_ids). Without them every prompt has blocks of its own and the prefix cache
	// cannot hit, whatever the policy. Absent in the results of older runs.
	PrefixHashes *bool `json:"prefix_hashes,omitempty"`
}

// CellResult is one cell's outcome.
type CellResult struct {
	Cell
	Status      string           `json:"status"` // "done" or "error"
	Error       string           `json:"error,omitempty"`
	Summary     *metrics.Summary `json:"summary,omitempty"`
	WallSeconds float64          `json:"wall_s"`
	// InstanceRequests counts the requests routed to each instance (index = instance),
	// failed ones included; requests that reached no instance are not counted, and a
	// disaggregated request counts on its prefill and its decode instance. Absent when
	// the records do not say (the real world's).
	InstanceRequests []int `json:"instance_requests,omitempty"`
}

// Stat is a mean over seeds with the half-width of its 95% confidence interval (Student's
// t; 0 with one seed).
type Stat struct {
	Mean float64 `json:"mean"`
	CI95 float64 `json:"ci95"`
}

// PolicyResult is one policy combination at one rate scale (on one of the spec's
// clusters, when it has several), over its seeds.
type PolicyResult struct {
	// Cluster names the entry of the spec's clusters; empty for a spec of one cluster.
	Cluster   string  `json:"cluster,omitempty"`
	Router    string  `json:"router"`
	Batch     string  `json:"batch"`
	Evict     string  `json:"evict"`
	RateScale float64 `json:"rate_scale"`
	// Seeds counts the cells that finished; FailedCells those that did not.
	Seeds       int `json:"seeds"`
	FailedCells int `json:"failed_cells,omitempty"`

	RequestGoodput     Stat `json:"request_goodput"`
	RequestThroughput  Stat `json:"request_throughput"`
	OutputThroughput   Stat `json:"output_throughput"`
	MeanTTFTMs         Stat `json:"mean_ttft_ms"`
	MedianTTFTMs       Stat `json:"median_ttft_ms"`
	P99TTFTMs          Stat `json:"p99_ttft_ms"`
	MedianTPOTMs       Stat `json:"median_tpot_ms"`
	P99TPOTMs          Stat `json:"p99_tpot_ms"`
	PrefixCacheHitRate Stat `json:"prefix_cache_hit_rate"`
	Preemptions        Stat `json:"preemptions"`
	// GPUHours, CostUSD and GoodputPerDollar are the cells' metrics.Cost, where every cell
	// reports one (a simulated cluster on GPUs the price table knows).
	GPUHours         *Stat `json:"gpu_hours,omitempty"`
	CostUSD          *Stat `json:"cost_usd,omitempty"`
	GoodputPerDollar *Stat `json:"goodput_per_dollar,omitempty"`
	// KVTiers is each KV-cache tier's share of the prefix-cache hits, the accelerator's
	// (GPU) first, where the cells have tiers below it (summary.json's kv_tiers): the
	// tiers' rates add up to prefix_cache_hit_rate.
	KVTiers []TierResult `json:"kv_tiers,omitempty"`
	// DisaggregatedShare is the fraction of the finished and failed requests that the pd
	// decider sent to a prefill instance, and MeanKVTransferMs the mean time their
	// prompts' KV took over the link, where the cluster is disaggregated.
	DisaggregatedShare *Stat `json:"disaggregated_share,omitempty"`
	MeanKVTransferMs   *Stat `json:"mean_kv_transfer_ms,omitempty"`
	// SLOAttainment is the fraction of requests (finished or failed) that met the SLO, and
	// MeanInstances the instances started on average over the run, where the cluster is
	// autoscaled (summary.json's autoscale) or the experiment has an autoscaled cluster to
	// compare it with (then a fixed cluster's MeanInstances is its size).
	SLOAttainment *Stat `json:"slo_attainment,omitempty"`
	MeanInstances *Stat `json:"mean_instances,omitempty"`
	// InstanceShare is each instance's share of the requests (0..1), over seeds; Starved
	// the instances that got no request at all, in how many seeds. A router that ties and
	// always breaks the tie the same way shows here.
	InstanceShare []Share      `json:"instance_share,omitempty"`
	Starved       []Starvation `json:"starved_instances,omitempty"`
	// Classes breaks the metrics down by request class (the workload's objective column),
	// where the requests have classes (classes.go).
	Classes []ClassResult `json:"classes,omitempty"`
	// Arms are the arms of an online A/B test of routing policies, side by side, where the
	// cluster split its requests (ab_router, ab_fraction; arms.go).
	Arms []ArmResult `json:"arms,omitempty"`
}

// TierResult is one KV-cache tier's prefix-cache hit rate (prompt tokens found on the tier
// over prompt tokens looked up) over seeds.
type TierResult struct {
	Medium             string `json:"medium"`
	PrefixCacheHitRate Stat   `json:"prefix_cache_hit_rate"`
}

// Share is an instance's share of the requests: the mean over seeds and the lowest and
// highest seed's (a confidence interval of a share that is 0 in one seed and 1 in the
// other would run far outside 0..1).
type Share struct {
	Mean float64 `json:"mean"`
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
}

// Starvation is an instance that got no request in Seeds of a policy's seeds.
type Starvation struct {
	Instance int `json:"instance"`
	Seeds    int `json:"seeds"`
}

// Name is the policy combination as people read it, after its cluster's name when the
// spec has several.
func (p *PolicyResult) Name() string {
	name := p.Router
	if p.Cluster != "" {
		name = p.Cluster + " · " + name
	}
	if p.Batch != "vllm" {
		name += " / " + p.Batch
	}
	return name + " / " + p.Evict
}

// Run runs every cell of the spec not already finished in the experiment directory.
func Run(ctx context.Context, spec *Spec, opts Options) (*Results, error) {
	if opts.Out == "" {
		opts.Out = filepath.Join("runs", spec.Name)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = runtime.GOMAXPROCS(0)
	}
	if spec.World == "real" {
		if opts.Real == nil {
			return nil, errors.New("world: real: this runner has no real world to run in")
		}
		// The engines of one cell take the machine's cores.
		opts.Parallel = 1
	}
	if err := os.MkdirAll(filepath.Join(opts.Out, "cells"), 0o755); err != nil {
		return nil, err
	}
	norm, err := spec.Normalized()
	if err != nil {
		return nil, err
	}
	specPath := filepath.Join(opts.Out, "spec.yaml")
	if old, err := os.ReadFile(specPath); err == nil && !bytes.Equal(old, norm) && !sameSpec(opts.Out, norm) {
		return nil, fmt.Errorf("%s holds another spec's run; give another --out or remove it", opts.Out)
	}
	if err := writeFileAtomic(specPath, norm); err != nil {
		return nil, err
	}
	shape, err := spec.scanWorkload()
	if err != nil {
		return nil, err
	}
	sink, err := newEventSink(filepath.Join(opts.Out, "events.jsonl"), opts.OnEvent)
	if err != nil {
		return nil, err
	}
	defer sink.close()

	// Whether the requests carry prefix hash ids: said on experiment_start and in
	// results.json, one answer for both.
	hashes := shape.HashBlockSize > 0
	cells := spec.Cells()
	sink.emit(Event{Experiment: spec.Name, Kind: ExperimentStart, PrefixHashes: &hashes})
	results := make([]CellResult, len(cells))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(opts.Parallel, len(cells)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				results[i] = runCell(ctx, spec, cells[i], opts, shape, sink)
			}
		}()
	}
dispatch:
	for i := range cells {
		select {
		case jobs <- i:
		case <-ctx.Done():
			for k := i; k < len(cells); k++ {
				results[k] = CellResult{Cell: cells[k], Status: "error", Error: "not run: " + ctx.Err().Error()}
			}
			break dispatch
		}
	}
	close(jobs)
	wg.Wait()

	res := &Results{Experiment: spec.Name, Cells: results, Policies: aggregate(results, spec.PrefillInstances()), PrefixHashes: &hashes}
	nameArms(spec, res.Policies)
	if err := writeJSONAtomic(filepath.Join(opts.Out, "results.json"), res); err != nil {
		return res, err
	}
	var failed []string
	for _, c := range results {
		if c.Status != "done" {
			failed = append(failed, c.ID+": "+c.Error)
		}
	}
	done := Event{Experiment: spec.Name, Kind: ExperimentDone, Progress: 1}
	if len(failed) > 0 {
		done.Error = fmt.Sprintf("%d of %d cells failed", len(failed), len(cells))
	}
	sink.emit(done)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if len(failed) > 0 {
		return res, fmt.Errorf("%d of %d cells failed:\n  %s", len(failed), len(cells), strings.Join(failed, "\n  "))
	}
	return res, nil
}

// sameSpec says whether the spec.yaml in dir, written by an older servelab (without the
// resolved cluster, say), normalizes to norm: the same experiment, which may resume.
func sameSpec(dir string, norm []byte) bool {
	old, err := ReadSpec(dir)
	if err != nil {
		return false
	}
	again, err := old.Normalized()
	return err == nil && bytes.Equal(again, norm)
}

func (s *Spec) scanWorkload() (traces.Shape, error) {
	src, closer, err := s.openWorkload(1)
	if err != nil {
		return traces.Shape{}, err
	}
	defer closer.Close()
	shape, err := traces.ScanShape(src)
	if err == nil && shape.Rows == 0 {
		err = errors.New("workload: no requests")
	}
	return shape, err
}

// openWorkload opens the workload at a rate scale.
func (s *Spec) openWorkload(rateScale float64) (traces.Reader, io.Closer, error) {
	w := s.Workload
	var r traces.Reader
	closer := io.Closer(nopCloser{})
	if w.Synthetic != nil {
		var err error
		if r, err = traces.NewSynth(*w.Synthetic); err != nil {
			return nil, nil, err
		}
	} else {
		var err error
		if r, closer, err = traces.Open(s.TracePath(), traces.Format(w.Format)); err != nil {
			return nil, nil, err
		}
	}
	if w.Window != nil {
		r = traces.Window(r, w.Window.StartS, w.Window.EndS)
	}
	if w.MaxRequests > 0 {
		r = traces.Limit(r, w.MaxRequests)
	}
	input := w.TokenScale
	if input == 0 {
		input = 1
	}
	output := input
	if w.OutputTokenScale > 0 {
		output = w.OutputTokenScale
	}
	if input != 1 || output != 1 {
		r = traces.ScaleLengths(r, input, output)
	}
	if rateScale != 1 {
		r = traces.ScaleRate(r, rateScale)
	}
	return r, closer, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

func cellDir(out, id string) string { return filepath.Join(out, "cells", id) }

// runCell runs one cell, or reports the result a previous run left.
func runCell(ctx context.Context, spec *Spec, cell Cell, opts Options, shape traces.Shape, sink *eventSink) (res CellResult) {
	res = CellResult{Cell: cell, Status: "error"}
	dir := cellDir(opts.Out, cell.ID)
	if raw, err := os.ReadFile(filepath.Join(dir, "summary.json")); err == nil {
		var s metrics.Summary
		if err := json.Unmarshal(raw, &s); err == nil {
			res.Status, res.Summary = "done", &s
			if raw, err := os.ReadFile(filepath.Join(dir, "wall.json")); err == nil {
				json.Unmarshal(raw, &res.WallSeconds)
			}
			if rows, err := ReadRecords(opts.Out, cell.ID); err == nil {
				counts := make([]int, spec.ClusterInstances(cell.Cluster))
				for _, r := range rows {
					countInstance(counts, int(r.Instance))
					if r.KVTransferS > 0 { // older files have no prefill_instance column
						countInstance(counts, int(r.PrefillInstance))
					}
				}
				res.InstanceRequests = knownCounts(counts)
			}
			sink.emit(Event{Experiment: spec.Name, Cell: cell.ID, Kind: CellSkipped, Progress: 1, Summary: &s})
			return res
		}
	}
	start := time.Now()
	sink.emit(Event{Experiment: spec.Name, Cell: cell.ID, Kind: CellStart})
	defer func() {
		if p := recover(); p != nil {
			res.Status, res.Error = "error", fmt.Sprintf("panic: %v\n%s", p, debug.Stack())
		}
		res.WallSeconds = time.Since(start).Seconds()
		if res.Status != "done" {
			sink.emit(Event{Experiment: spec.Name, Cell: cell.ID, Kind: CellError, Error: res.Error})
		}
	}()
	counts := make([]int, spec.ClusterInstances(cell.Cluster))
	summary, err := runInWorld(ctx, spec, cell, opts, shape, dir, sink, counts)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.Status, res.Summary, res.InstanceRequests = "done", summary, knownCounts(counts)
	wall, _ := json.Marshal(time.Since(start).Seconds())
	if err := writeFileAtomic(filepath.Join(dir, "wall.json"), wall); err != nil {
		res.Status, res.Error = "error", err.Error()
		return res
	}
	// summary.json goes last: its presence marks the cell finished for a resumed run.
	if err := writeJSONAtomic(filepath.Join(dir, "summary.json"), summary); err != nil {
		res.Status, res.Error = "error", err.Error()
		return res
	}
	sink.emit(Event{Experiment: spec.Name, Cell: cell.ID, Kind: CellDone, Progress: 1, Summary: summary})
	return res
}

// runInWorld runs one cell in the spec's world, writing its records and time series.
// knownCounts is counts, or nil when no request named its instance: the real world's
// records do not (the router does not say which engine served a request), and a row of
// zeros would flag every instance idle.
func knownCounts(counts []int) []int {
	for _, n := range counts {
		if n > 0 {
			return counts
		}
	}
	return nil
}

// countInstance counts a request routed to instance i; one that reached none (-1) is not.
func countInstance(counts []int, i int) {
	if i >= 0 && i < len(counts) {
		counts[i]++
	}
}

func runInWorld(ctx context.Context, spec *Spec, cell Cell, opts Options, shape traces.Shape, dir string, sink *eventSink, instances []int) (*metrics.Summary, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	records, err := newRecordFile(filepath.Join(dir, "records.parquet"))
	if err != nil {
		return nil, err
	}
	defer records.abort()
	interval := opts.SampleInterval
	if interval <= 0 {
		interval = max(shape.Span/cell.RateScale/200, 0.1)
	}
	ts := &timeSeries{interval: interval}
	onRecord := func(r *serving.Record) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ts.record(r)
		countInstance(instances, r.Instance)
		if r.PrefillInstance != nil {
			// A disaggregated request reached its prefill instance too.
			countInstance(instances, *r.PrefillInstance)
		}
		return records.write(r)
	}
	onSample := func(s sim.Sample) error {
		smp := ts.sample(s)
		sink.emit(Event{Experiment: spec.Name, Cell: cell.ID, Kind: CellSample,
			Progress: float64(s.Completed) / float64(shape.Rows), Sample: &smp})
		return ctx.Err()
	}
	src, closer, err := spec.openWorkload(cell.RateScale)
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	var summary *metrics.Summary
	if spec.World == "real" {
		summary, err = opts.Real.RunCell(ctx, RealCell{Spec: spec, Cell: cell, Workload: src,
			OnRecord: onRecord, OnSample: onSample, SampleInterval: interval})
	} else {
		summary, err = simulate(spec, cell, src, interval, onRecord, onSample)
	}
	if err != nil {
		return nil, err
	}
	if err := records.close(); err != nil {
		return nil, err
	}
	if err := writeJSONAtomic(filepath.Join(dir, "timeseries.json"), ts.samples); err != nil {
		return nil, err
	}
	return summary, nil
}

func simulate(spec *Spec, cell Cell, src traces.Reader, interval float64,
	onRecord func(*serving.Record) error, onSample func(sim.Sample) error) (*metrics.Summary, error) {
	cluster := spec.clusterSpec(cell.Cluster, cell.Router, cell.Batch, cell.Evict, cell.Seed)
	cfg, err := cluster.Build(spec.SLO.Metrics())
	if err != nil {
		return nil, err
	}
	cfg.OnRecord, cfg.OnSample, cfg.SampleInterval = onRecord, onSample, interval
	result, err := sim.Run(cfg, src)
	if err != nil {
		return nil, err
	}
	return &result.Summary, nil
}

// timeSeries turns the simulator's cumulative samples into per-interval rates.
type timeSeries struct {
	interval float64
	samples  []Sample
	last     sim.Sample
	ttfts    []float64 // of requests finished since the last sample
}

func (ts *timeSeries) record(r *serving.Record) {
	if !r.Failed {
		ts.ttfts = append(ts.ttfts, r.TTFT())
	}
}

func (ts *timeSeries) sample(s sim.Sample) Sample {
	dt := s.Time - ts.last.Time
	if dt < ts.interval {
		// The last sample, taken at the last finish, closes a partial interval. Nothing
		// finishes after it, so it stands at the end of its interval with rates over the
		// whole of it; over its own few milliseconds a handful of finishes read as a spike
		// (68 req/s on Azure). The series stays on the interval grid, as the seeds' means
		// in reports need. (A real-world tick a little early moves by its jitter.)
		dt = ts.interval
		s.Time = ts.last.Time + ts.interval
	}
	out := Sample{
		Time: s.Time, Completed: int(s.Completed), Running: s.Running, Waiting: s.Waiting,
		KVCacheUsage: s.KVCacheUsage, Instances: s.Instances,
		RequestThroughput: float64(s.Completed-ts.last.Completed) / dt,
		OutputThroughput:  float64(s.OutputTokens-ts.last.OutputTokens) / dt,
	}
	if q := s.PrefixCacheQueries - ts.last.PrefixCacheQueries; q > 0 {
		out.PrefixCacheHitRate = float64(s.PrefixCacheHits-ts.last.PrefixCacheHits) / float64(q)
	}
	if len(ts.ttfts) > 0 {
		slices.Sort(ts.ttfts)
		out.TTFTP50Ms = 1000 * metrics.Percentile(ts.ttfts, 50)
		ts.ttfts = ts.ttfts[:0]
	}
	ts.last = s
	ts.samples = append(ts.samples, out)
	return out
}

// eventSink appends events to events.jsonl, flushed at least every 100 ms so another
// process can follow the run, and hands them to the caller's OnEvent.
type eventSink struct {
	mu      sync.Mutex
	file    *os.File
	buf     *bufio.Writer
	enc     *json.Encoder
	onEvent func(Event)
	stop    chan struct{}
	done    chan struct{}
}

func newEventSink(path string, onEvent func(Event)) (*eventSink, error) {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	buf := bufio.NewWriterSize(file, 64<<10)
	s := &eventSink{file: file, buf: buf, enc: json.NewEncoder(buf), onEvent: onEvent,
		stop: make(chan struct{}), done: make(chan struct{})}
	go s.flushLoop()
	return s, nil
}

func (s *eventSink) emit(e Event) {
	s.mu.Lock()
	s.enc.Encode(e)
	s.mu.Unlock()
	if s.onEvent != nil {
		s.onEvent(e)
	}
}

func (s *eventSink) flushLoop() {
	defer close(s.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.mu.Lock()
			s.buf.Flush()
			s.mu.Unlock()
		case <-s.stop:
			return
		}
	}
}

func (s *eventSink) close() error {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.buf.Flush()
	if cerr := s.file.Close(); err == nil {
		err = cerr
	}
	return err
}

// aggregate groups finished cells by policy and rate scale, ranked by goodput (then by
// p99 TTFT). Instances in prefill are never starved: a request's record names its decode
// instance, and prefill instances get only prefill legs.
func aggregate(cells []CellResult, prefill map[int]bool) []PolicyResult {
	type key struct {
		cluster, router, batch, evict string
		rate                          float64
	}
	groups := map[key][]*metrics.Summary{}
	counts := map[key][][]int{}
	failed := map[key]int{}
	var order []key
	for i := range cells {
		c := &cells[i]
		k := key{c.Cluster, c.Router, c.Batch, c.Evict, c.RateScale}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
			groups[k] = nil
		}
		if c.Status == "done" && c.Summary != nil {
			groups[k] = append(groups[k], c.Summary)
			if c.InstanceRequests != nil {
				counts[k] = append(counts[k], c.InstanceRequests)
			}
		} else {
			failed[k]++
		}
	}
	var out []PolicyResult
	for _, k := range order {
		ss := groups[k]
		stat := func(f func(*metrics.Summary) float64) Stat {
			xs := make([]float64, len(ss))
			for i, s := range ss {
				xs[i] = f(s)
			}
			return meanCI(xs)
		}
		out = append(out, PolicyResult{
			Cluster: k.cluster, Router: k.router, Batch: k.batch, Evict: k.evict, RateScale: k.rate,
			Seeds: len(ss), FailedCells: failed[k],
			RequestGoodput:     stat(func(s *metrics.Summary) float64 { return s.RequestGoodput }),
			RequestThroughput:  stat(func(s *metrics.Summary) float64 { return s.RequestThroughput }),
			OutputThroughput:   stat(func(s *metrics.Summary) float64 { return s.OutputThroughput }),
			MeanTTFTMs:         stat(func(s *metrics.Summary) float64 { return s.MeanTTFTMs }),
			MedianTTFTMs:       stat(func(s *metrics.Summary) float64 { return s.MedianTTFTMs }),
			P99TTFTMs:          stat(func(s *metrics.Summary) float64 { return s.P99TTFTMs }),
			MedianTPOTMs:       stat(func(s *metrics.Summary) float64 { return s.MedianTPOTMs }),
			P99TPOTMs:          stat(func(s *metrics.Summary) float64 { return s.P99TPOTMs }),
			PrefixCacheHitRate: stat(func(s *metrics.Summary) float64 { return s.PrefixCacheHitRate }),
			Preemptions:        stat(func(s *metrics.Summary) float64 { return float64(s.Preemptions) }),
		})
		out[len(out)-1].InstanceShare, out[len(out)-1].Starved = instanceShares(counts[k], prefill)
		if costed := len(ss) > 0 && !slices.ContainsFunc(ss, func(s *metrics.Summary) bool { return s.Cost == nil }); costed {
			p := &out[len(out)-1]
			costStat := func(f func(*metrics.Cost) float64) *Stat {
				st := stat(func(s *metrics.Summary) float64 { return f(s.Cost) })
				return &st
			}
			p.GPUHours = costStat(func(c *metrics.Cost) float64 { return c.GPUHours })
			p.CostUSD = costStat(func(c *metrics.Cost) float64 { return c.USD })
			p.GoodputPerDollar = costStat(func(c *metrics.Cost) float64 { return c.GoodputPerDollar })
		}
		p := &out[len(out)-1]
		p.KVTiers = tierResults(ss, stat)
		p.Classes = classResults(ss, stat)
		p.Arms = armResults(ss, stat)
		if len(ss) > 0 && !slices.ContainsFunc(ss, func(s *metrics.Summary) bool { return s.Disaggregation == nil }) {
			share := stat(func(s *metrics.Summary) float64 {
				if n := s.Completed + s.Failed; n > 0 {
					return float64(s.Disaggregation.Requests) / float64(n)
				}
				return 0
			})
			transfer := stat(func(s *metrics.Summary) float64 { return 1000 * s.Disaggregation.MeanKVTransfer })
			p.DisaggregatedShare, p.MeanKVTransferMs = &share, &transfer
		}
		scaledResults(p, ss, stat)
	}
	withAutoscale(out)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		if a.RateScale != b.RateScale {
			return a.RateScale < b.RateScale
		}
		if a.RequestGoodput.Mean != b.RequestGoodput.Mean {
			return a.RequestGoodput.Mean > b.RequestGoodput.Mean
		}
		return a.P99TTFTMs.Mean < b.P99TTFTMs.Mean
	})
	return out
}

// tierResults is each KV-cache tier's hit rate over the seeds' summaries, in the order the
// first seed lists them (a seed without a tier counts 0 for it); nil when no seed has tiers.
func tierResults(ss []*metrics.Summary, stat func(func(*metrics.Summary) float64) Stat) []TierResult {
	var out []TierResult
	for _, s := range ss {
		for _, t := range s.KVTiers {
			if !slices.ContainsFunc(out, func(r TierResult) bool { return r.Medium == t.Medium }) {
				out = append(out, TierResult{Medium: t.Medium})
			}
		}
	}
	for i := range out {
		medium := out[i].Medium
		out[i].PrefixCacheHitRate = stat(func(s *metrics.Summary) float64 {
			for _, t := range s.KVTiers {
				if t.Medium == medium {
					return t.PrefixCacheHitRate
				}
			}
			return 0
		})
	}
	return out
}

// instanceShares is each instance's share of the requests over seeds (the seeds' counts),
// and the instances that got none, those in prefill left out.
func instanceShares(seeds [][]int, prefill map[int]bool) ([]Share, []Starvation) {
	n := 0
	for _, c := range seeds {
		n = max(n, len(c))
	}
	if n == 0 {
		return nil, nil
	}
	shares := make([]Share, n)
	var starved []Starvation
	for i := range n {
		xs := make([]float64, 0, len(seeds))
		zero := 0
		for _, c := range seeds {
			total := 0
			for _, v := range c {
				total += v
			}
			v := 0
			if i < len(c) {
				v = c[i]
			}
			if v == 0 {
				zero++
			}
			if total > 0 {
				xs = append(xs, float64(v)/float64(total))
			}
		}
		if len(xs) > 0 {
			shares[i] = Share{Mean: meanCI(xs).Mean, Min: slices.Min(xs), Max: slices.Max(xs)}
		}
		if zero > 0 && !prefill[i] {
			starved = append(starved, Starvation{Instance: i, Seeds: zero})
		}
	}
	return shares, starved
}

func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(data, '\n'))
}

func writeFileAtomic(path string, data []byte) error { return atomicfile.Write(path, data, 0o644) }

// ReadResults reads an experiment directory's results.json.
func ReadResults(dir string) (*Results, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "results.json"), err)
	}
	return &r, nil
}

// ReadTimeSeries reads a cell's timeseries.json.
func ReadTimeSeries(dir, cellID string) ([]Sample, error) {
	path := filepath.Join(cellDir(dir, cellID), "timeseries.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s []Sample
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// meanCI is the mean and the 95% confidence half-width of xs.
func meanCI(xs []float64) Stat {
	n := len(xs)
	if n == 0 {
		return Stat{}
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	mean := sum / float64(n)
	if n == 1 {
		return Stat{Mean: mean}
	}
	var ss float64
	for _, x := range xs {
		ss += (x - mean) * (x - mean)
	}
	sd := math.Sqrt(ss / float64(n-1))
	return Stat{Mean: mean, CI95: studentT975(n-1) * sd / math.Sqrt(float64(n))}
}

// studentT975 is the 97.5% quantile of Student's t with dof degrees of freedom.
func studentT975(dof int) float64 {
	return distuv.StudentsT{Mu: 0, Sigma: 1, Nu: float64(dof)}.Quantile(0.975)
}
