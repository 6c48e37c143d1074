package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
	"servelab/real/bench"
	"servelab/serving"
	"servelab/sim"
	"servelab/traces"
)

func readAll(t *testing.T, r traces.Reader) []traces.Row {
	t.Helper()
	var rows []traces.Row
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return rows
		}
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, row)
	}
}

// sliceRows is a small scheduled slice with prefix hash ids.
func sliceRows() []traces.Row {
	return []traces.Row{
		{Arrival: 0, InputTokens: 100, OutputTokens: 5, HashIDs: []int64{1, 2}, HashBlockSize: 64, Line: 2},
		{Arrival: 0, InputTokens: 30, OutputTokens: 2, Line: 3},
		{Arrival: 0.1, InputTokens: 70, OutputTokens: 9, HashIDs: []int64{1, 3}, HashBlockSize: 64, Line: 4},
		{Arrival: 0.2, InputTokens: 12, OutputTokens: 1, Line: 5},
	}
}

// The reader built from a run's records replays the slice's rows (token counts, hash
// ids, line) at the measured send times, in the order they were sent.
func TestMeasuredArrivalsReplaySendTimes(t *testing.T) {
	rows := sliceRows()
	// Request 1 was sent before request 0 (their goroutines raced); request 3 was late.
	records := []serving.Record{
		{ID: 2, Arrival: 0.1012, PromptTokens: 70},
		{ID: 0, Arrival: 0.0009},
		{ID: 3, Arrival: 0.25, Failed: true, Instance: -1},
		{ID: 1, Arrival: 0.0004},
	}
	r, lag, order, err := measuredArrivals(&rowsReader{rows: rows}, records, nil)
	if err != nil {
		t.Fatal(err)
	}
	at := func(i int, arrival float64) traces.Row { row := rows[i]; row.Arrival = arrival; return row }
	want := []traces.Row{at(1, 0.0004), at(0, 0.0009), at(2, 0.1012), at(3, 0.25)}
	if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	// The simulator numbers the rows as they come out; order maps them back.
	if diff := cmp.Diff([]uint64{1, 0, 2, 3}, order); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
	// Lags 0.9, 0.4, 1.2 and 50 ms.
	if lag.MaxMs < 49.999 || lag.MaxMs > 50.001 || lag.MedianMs < 1.049 || lag.MedianMs > 1.051 {
		t.Errorf("send lag %+v, want median 1.05 ms and max 50 ms", lag)
	}
}

// With the router's decision times for every request, the rows come out in the order the
// router's policy saw them, each taking the next earliest send time; without them for
// every request, in send order.
func TestMeasuredArrivalsFollowTheRoutersOrder(t *testing.T) {
	rows := sliceRows()
	records := []serving.Record{
		{ID: 0, Arrival: 0.0004}, {ID: 1, Arrival: 0.0009}, {ID: 2, Arrival: 0.1012}, {ID: 3, Arrival: 0.2001},
	}
	// Request 1, sent after request 0, reached the router's policy first.
	routed := map[uint64]float64{0: 0.0015, 1: 0.0011, 2: 0.1020, 3: 0.2008}
	r, lag, order, err := measuredArrivals(&rowsReader{rows: rows}, records, routed)
	if err != nil {
		t.Fatal(err)
	}
	at := func(i int, arrival float64) traces.Row { row := rows[i]; row.Arrival = arrival; return row }
	want := []traces.Row{at(1, 0.0004), at(0, 0.0009), at(2, 0.1012), at(3, 0.2001)}
	if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint64{1, 0, 2, 3}, order); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
	if !lag.RouterOrder || lag.Reordered != 2 {
		t.Errorf("router order %v, %d reordered; want true, 2", lag.RouterOrder, lag.Reordered)
	}

	delete(routed, 3) // one response without the header: send order
	r, lag, order, err = measuredArrivals(&rowsReader{rows: rows}, records, routed)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint64{0, 1, 2, 3}, order); diff != "" || lag.RouterOrder {
		t.Errorf("without every decision time: order %v (router order %v), want send order", order, lag.RouterOrder)
	}
	_ = readAll(t, r)
}

func TestMeasuredArrivalsRefuseRecordsThatDoNotMatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		records []serving.Record
		want    string
	}{
		{"missing", []serving.Record{{ID: 0}, {ID: 1}, {ID: 2}}, "request 3 (trace line 5) has no record"},
		{"duplicate", []serving.Record{{ID: 0}, {ID: 1}, {ID: 1}, {ID: 2}, {ID: 3}}, "two records of request 1"},
		{"beyond", []serving.Record{{ID: 0}, {ID: 1}, {ID: 2}, {ID: 3}, {ID: 4}}, "1 records for requests beyond the slice's 4 rows"},
	} {
		_, _, _, err := measuredArrivals(&rowsReader{rows: sliceRows()}, tc.records, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// fidelity's prediction of a run is the simulator on the run's measured send times, with
// the repeat's router and seed; the simulator really runs them (its records arrive then).
func TestPredictMeasuredFeedsTheSimulator(t *testing.T) {
	rows := sliceRows()
	res := bench.Result{Records: []serving.Record{{ID: 0, Arrival: 0.003}, {ID: 1, Arrival: 0.002}, {ID: 2, Arrival: 0.15}, {ID: 3, Arrival: 0.201}}}
	slice := func(float64) (traces.Reader, io.Closer, error) {
		return &rowsReader{rows: rows}, io.NopCloser(nil), nil
	}
	var gotRouter string
	var gotSeed uint64
	var fed []traces.Row
	var simulated []float64
	simulateOn := func(fc *fidelityConfig, seed uint64, src traces.Reader, onStep func(sim.StepInfo) error, onRecord func(*serving.Record) error) (metrics.Summary, error) {
		router := fc.Router
		gotRouter, gotSeed = router, seed
		fed = readAll(t, src)
		spec := sim.DefaultClusterSpec()
		spec.Instances, spec.Router = 2, router
		cfg, err := spec.Build(metrics.SLO{})
		if err != nil {
			return metrics.Summary{}, err
		}
		cfg.OnRecord = func(r *serving.Record) error {
			simulated = append(simulated, r.Arrival)
			return onRecord(r)
		}
		out, err := sim.Run(cfg, &rowsReader{rows: fed})
		return out.Summary, err
	}
	f := &fidelityFlags{}
	f.cluster.engines = 2
	run := fidelityRepeat{Seed: 7}
	if err := f.predictMeasured(&run, &fidelityConfig{Router: "least-request", Label: "least-request"}, res, slice, 1, simulateOn, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	if n := run.PredictedPerEngine[0] + run.PredictedPerEngine[1]; n != len(fed) {
		t.Errorf("the simulated requests per engine %v add up to %d, want %d", run.PredictedPerEngine, n, len(fed))
	}
	if gotRouter != "least-request" || gotSeed != 7 {
		t.Errorf("simulated %q with seed %d, want least-request with the repeat's seed 7", gotRouter, gotSeed)
	}
	var arrivals []float64
	for _, r := range fed {
		arrivals = append(arrivals, r.Arrival)
	}
	if diff := cmp.Diff([]float64{0.002, 0.003, 0.15, 0.201}, arrivals); diff != "" {
		t.Fatalf("arrivals fed to the simulator (-want +got):\n%s", diff)
	}
	if fed[0].InputTokens != 30 || fed[1].InputTokens != 100 || len(fed[1].HashIDs) != 2 {
		t.Errorf("rows fed: %+v", fed)
	}
	if run.Predicted.Completed != 4 || len(simulated) != 4 {
		t.Fatalf("predicted %+v", run.Predicted)
	}
	for _, a := range simulated {
		if a != 0.002 && a != 0.003 && a != 0.15 && a != 0.201 {
			t.Errorf("a simulated request arrived at %v, not a measured send time", a)
		}
	}
}

func TestPerEngine(t *testing.T) {
	for _, tc := range []struct {
		name      string
		instances []int
		want      []int
	}{
		{"named", []int{0, 1, 1, 0, 1}, []int{2, 3}},
		{"unnamed (a router without the header)", []int{-1, -1}, nil},
		{"an unknown engine is left out", []int{0, 5, -1}, []int{1, 0}},
	} {
		var recs []serving.Record
		for _, i := range tc.instances {
			recs = append(recs, serving.Record{Instance: i})
		}
		if diff := cmp.Diff(tc.want, perEngine(recs, 2)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestSameEngine(t *testing.T) {
	measured := []serving.Record{{ID: 0, Instance: 1}, {ID: 1, Instance: 0}, {ID: 2, Instance: 1}, {ID: 3, Instance: -1}, {ID: 4, Instance: 0}}
	for _, tc := range []struct {
		name      string
		simulated map[uint64]int
		want      float64
	}{
		{"all alike", map[uint64]int{0: 1, 1: 0, 2: 1, 3: 0, 4: 0}, 1},
		{"half", map[uint64]int{0: 1, 1: 1, 2: 0, 4: 0}, 0.5},
		{"a request the simulator refused is left out", map[uint64]int{0: 1, 1: -1}, 1},
		{"nothing to compare", map[uint64]int{3: 0}, -1},
	} {
		if got := sameEngine(measured, tc.simulated); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
