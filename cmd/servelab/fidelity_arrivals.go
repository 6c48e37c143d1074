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
	// RouterOrder says the replay takes the order in which the router's policy saw the
	// requests (bench.Result.Routed); Reordered counts the positions where that order
	// differs from the send order.
	RouterOrder bool `json:"router_order"`
	Reordered   int  `json:"reordered"`
}

// measuredArrivals reads the trace slice src to its end and returns its rows with each
// row's arrival replaced by when the load generator actually sent it: the Arrival (seconds
// since the run's start, bench.Result.Start) of the record whose ID is the row's index, as
// bench numbers requests in trace order from 0. Token counts, prefix hash ids and the rest
// of each row are the slice's own. The rows come out in order of their send times: a
// request's goroutine may record its send a moment after the next one's, and a
// traces.Reader's arrivals never decrease. order[k] is the record ID (trace row) of the
// k-th row out, which the simulator numbers k.
//
// When routed (bench.Result.Routed) says for every request when the router decided where
// it went, the rows come out in that order instead: requests sent within a millisecond of
// each other can reach the router's policy in another order, and a policy with state
// (round-robin's turn, a prefix index) then decides otherwise. The k-th row in the router's
// order takes the k-th earliest send time, so arrival times stay the measured send times
// (the base of the measured TTFT) and only their order follows the router.
func measuredArrivals(src traces.Reader, records []serving.Record, routed map[uint64]float64) (_ traces.Reader, _ sendLag, order []uint64, _ error) {
	sent := make(map[uint64]float64, len(records))
	for _, r := range records {
		if _, dup := sent[r.ID]; dup {
			return nil, sendLag{}, nil, fmt.Errorf("measured arrivals: two records of request %d", r.ID)
		}
		sent[r.ID] = r.Arrival
	}
	type sentRow struct {
		row traces.Row
		id  uint64
	}
	var rows []sentRow
	var lags []float64
	for id := uint64(0); ; id++ {
		row, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, sendLag{}, nil, err
		}
		at, ok := sent[id]
		if !ok {
			return nil, sendLag{}, nil, fmt.Errorf("measured arrivals: request %d (trace line %d) has no record: it was never sent", id, row.Line)
		}
		delete(sent, id)
		lags = append(lags, 1000*(at-row.Arrival))
		row.Arrival = at
		rows = append(rows, sentRow{row, id})
	}
	if len(sent) > 0 {
		return nil, sendLag{}, nil, fmt.Errorf("measured arrivals: %d records for requests beyond the slice's %d rows", len(sent), len(rows))
	}
	slices.SortStableFunc(rows, func(a, b sentRow) int { return cmp.Compare(a.row.Arrival, b.row.Arrival) })
	var lag sendLag
	if len(routed) == len(rows) && len(rows) > 0 {
		sendOrder := make([]uint64, len(rows))
		sendTimes := make([]float64, len(rows))
		for k, r := range rows {
			sendOrder[k], sendTimes[k] = r.id, r.row.Arrival
		}
		all := true
		for _, r := range rows {
			_, ok := routed[r.id]
			all = all && ok
		}
		if all {
			slices.SortStableFunc(rows, func(a, b sentRow) int { return cmp.Compare(routed[a.id], routed[b.id]) })
			lag.RouterOrder = true
			for k := range rows {
				rows[k].row.Arrival = sendTimes[k]
				if rows[k].id != sendOrder[k] {
					lag.Reordered++
				}
			}
		}
	}
	out := make([]traces.Row, len(rows))
	order = make([]uint64, len(rows))
	for k, r := range rows {
		out[k], order[k] = r.row, r.id
	}
	slices.Sort(lags)
	if len(lags) > 0 {
		lag.MedianMs, lag.P99Ms, lag.MaxMs = metrics.Percentile(lags, 50), metrics.Percentile(lags, 99), lags[len(lags)-1]
	}
	return &rowsReader{rows: out}, lag, order, nil
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
	arrivals, lag, order, err := measuredArrivals(src, res.Records, res.Routed)
	if err != nil {
		return err
	}
	run.SendLag = lag
	var steps *simSteps
	var onStep func(sim.StepInfo) error
	if f.explain != "" {
		steps = newSimSteps(f.cluster.total(), model)
		onStep = steps.observe
	}
	// Which engine each request went to, in both worlds: the routers' decisions, which
	// the latency percentiles only show through their effects.
	run.PredictedPerEngine = make([]int, f.cluster.total())
	simulatedOn := make(map[uint64]int, len(order)) // record ID (trace row) -> instance
	countPredicted := func(r *serving.Record) error {
		if r.Instance >= 0 && r.Instance < len(run.PredictedPerEngine) {
			run.PredictedPerEngine[r.Instance]++
		}
		if r.ID < uint64(len(order)) {
			simulatedOn[order[r.ID]] = r.Instance
		}
		return nil
	}
	if run.Predicted, err = simulateOn(cfg, run.Seed, arrivals, onStep, countPredicted); err != nil {
		return fmt.Errorf("simulating the measured arrivals: %w", err)
	}
	run.MeasuredPerEngine = perEngine(res.Records, f.cluster.total())
	run.SameEngine = sameEngine(res.Records, simulatedOn)
	if f.explain == "" {
		return nil
	}
	real := make([][]explainStep, f.cluster.total())
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

// sameEngine is the fraction of requests the simulator sent to the engine that served
// them in reality, over the requests both worlds placed (the measured engine comes from the
// router's serving.ServedEndpointHeader); -1 when none can be compared.
func sameEngine(measured []serving.Record, simulatedOn map[uint64]int) float64 {
	same, both := 0, 0
	for _, r := range measured {
		sim, ok := simulatedOn[r.ID]
		if r.Instance < 0 || !ok || sim < 0 {
			continue
		}
		both++
		if sim == r.Instance {
			same++
		}
	}
	if both == 0 {
		return -1
	}
	return float64(same) / float64(both)
}
