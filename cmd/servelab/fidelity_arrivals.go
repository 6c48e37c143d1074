package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"

	"servelab/metrics"
	"servelab/real/bench"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
	"servelab/traces"
)

// sendLag is how late the load generator sent the requests of a run: each request's
// measured send time minus its scheduled arrival, in milliseconds.
type sendLag struct {
	MedianMs float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
}

// measuredArrivals reads the trace slice src to its end and returns its rows with each
// row's arrival replaced by when the load generator actually sent it: the Arrival (seconds
// since the run's start, bench.Result.Start) of the record whose ID is the row's index, as
// bench numbers requests in trace order from 0. Token counts, prefix hash ids and the rest
// of each row are the slice's own. The rows come out in order of their send times: a
// request's goroutine may record its send a moment after the next one's, and a
// traces.Reader's arrivals never decrease.
func measuredArrivals(src traces.Reader, records []serving.Record) (traces.Reader, sendLag, error) {
	sent := make(map[uint64]float64, len(records))
	for _, r := range records {
		if _, dup := sent[r.ID]; dup {
			return nil, sendLag{}, fmt.Errorf("measured arrivals: two records of request %d", r.ID)
		}
		sent[r.ID] = r.Arrival
	}
	var rows []traces.Row
	var lags []float64
	for id := uint64(0); ; id++ {
		row, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, sendLag{}, err
		}
		at, ok := sent[id]
		if !ok {
			return nil, sendLag{}, fmt.Errorf("measured arrivals: request %d (trace line %d) has no record: it was never sent", id, row.Line)
		}
		delete(sent, id)
		lags = append(lags, 1000*(at-row.Arrival))
		row.Arrival = at
		rows = append(rows, row)
	}
	if len(sent) > 0 {
		return nil, sendLag{}, fmt.Errorf("measured arrivals: %d records for requests beyond the slice's %d rows", len(sent), len(rows))
	}
	slices.SortStableFunc(rows, func(a, b traces.Row) int { return cmp.Compare(a.Arrival, b.Arrival) })
	slices.Sort(lags)
	var lag sendLag
	if len(lags) > 0 {
		lag = sendLag{MedianMs: metrics.Percentile(lags, 50), P99Ms: metrics.Percentile(lags, 99), MaxMs: lags[len(lags)-1]}
	}
	return &rowsReader{rows: rows}, lag, nil
}

// rowsReader replays rows held in memory.
type rowsReader struct {
	rows []traces.Row
	next int
}

func (r *rowsReader) Next() (traces.Row, error) {
	if r.next == len(r.rows) {
		return traces.Row{}, io.EOF
	}
	r.next++
	return r.rows[r.next-1], nil
}

// predictMeasured runs the simulator of cfg with the repeat's seed on the slice at the
// arrivals the load generator measured in res, setting run.Predicted and run.SendLag; with
// --explain it also compares the simulator's steps with the engines' step logs.
func (f *fidelityFlags) predictMeasured(run *fidelityRepeat, cfg *fidelityConfig, res bench.Result,
	slice func(float64) (traces.Reader, io.Closer, error), rateScale float64,
	simulateOn func(*fidelityConfig, uint64, traces.Reader, func(sim.StepInfo) error, func(*serving.Record) error) (metrics.Summary, error),
	model latency.Model, stepLog func(int) string, repeat int) error {
	src, closer, err := slice(rateScale)
	if err != nil {
		return err
	}
	defer closer.Close()
	arrivals, lag, err := measuredArrivals(src, res.Records)
	if err != nil {
		return err
	}
	run.SendLag = lag
	var steps *simSteps
	var onStep func(sim.StepInfo) error
	if f.explain != "" {
		steps = newSimSteps(f.cluster.engines, model)
		onStep = steps.observe
	}
	// Which engine each request went to, in both worlds: the routers' decisions, which
	// the latency percentiles only show through their effects.
	run.PredictedPerEngine = make([]int, f.cluster.engines)
	countPredicted := func(r *serving.Record) error {
		if r.Instance >= 0 && r.Instance < len(run.PredictedPerEngine) {
			run.PredictedPerEngine[r.Instance]++
		}
		return nil
	}
	if run.Predicted, err = simulateOn(cfg, run.Seed, arrivals, onStep, countPredicted); err != nil {
		return fmt.Errorf("simulating the measured arrivals: %w", err)
	}
	run.MeasuredPerEngine = perEngine(res.Records, f.cluster.engines)
	if f.explain == "" {
		return nil
	}
	real := make([][]explainStep, f.cluster.engines)
	for i := range real {
		log, err := readStepLog(stepLog(i))
		if err != nil {
			return err
		}
		real[i] = realSteps(log, res.Start.UnixNano(), model)
	}
	run.Explain, err = explainRepeat(filepath.Join(f.explain, dirName(cfg.Label), fmt.Sprintf("repeat-%d", repeat+1)), real, steps.steps)
	return err
}

// perEngine counts the records each of n engines served; nil when no record names its
// engine (a router that does not return serving.ServedEndpointHeader).
func perEngine(records []serving.Record, n int) []int {
	counts, named := make([]int, n), false
	for _, r := range records {
		if r.Instance >= 0 && r.Instance < n {
			counts[r.Instance]++
			named = true
		}
	}
	if !named {
		return nil
	}
	return counts
}
