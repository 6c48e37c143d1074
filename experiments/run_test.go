package experiments

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/metrics"
	"servelab/serving"
	"servelab/sim"
)

// smallSpec is two routers x two evictors x two seeds on 300 requests of the shipped Azure
// slice, at a rate that queues.
func smallSpec(t *testing.T, extra string) *Spec {
	t.Helper()
	s, err := Parse([]byte("name: small\nworkload: {trace: "+trace+", max_requests: 300, rate_scale: 6}\n"+
		"cluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\n"+
		"policies: {routers: [round-robin, least-request], evict: [lru, lfu]}\nseeds: [1, 2]\n"+
		"slo: {ttft_ms: 500, tpot_ms: 50}\n"+extra), filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// events collects a run's events.
type events struct {
	mu   sync.Mutex
	list []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
}

func (e *events) cells(kind string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	for _, ev := range e.list {
		if ev.Kind == kind {
			ids = append(ids, ev.Cell)
		}
	}
	return ids
}

func TestRunWritesEveryCell(t *testing.T) {
	spec := smallSpec(t, "")
	out := t.TempDir()
	var ev events
	res, err := Run(context.Background(), spec, Options{Out: out, Parallel: 2, OnEvent: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cells) != 8 || len(res.Policies) != 4 {
		t.Fatalf("%d cells, %d policies; want 8 and 4", len(res.Cells), len(res.Policies))
	}
	for _, p := range res.Policies {
		if p.Seeds != 2 || p.FailedCells != 0 {
			t.Errorf("%s: %d seeds, %d failed", p.Name(), p.Seeds, p.FailedCells)
		}
		if p.RequestThroughput.Mean <= 0 || p.MeanTTFTMs.Mean <= 0 {
			t.Errorf("%s: empty aggregates %+v", p.Name(), p)
		}
	}
	for i := 1; i < len(res.Policies); i++ {
		if a, b := res.Policies[i-1], res.Policies[i]; a.RequestGoodput.Mean < b.RequestGoodput.Mean {
			t.Errorf("policies not ranked by goodput: %s %v before %s %v", a.Name(), a.RequestGoodput.Mean, b.Name(), b.RequestGoodput.Mean)
		}
	}
	for _, c := range res.Cells {
		rows, err := ReadRecords(out, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 300 || c.Summary.Completed+c.Summary.Failed != 300 {
			t.Errorf("%s: %d records, summary %d+%d, want 300", c.ID, len(rows), c.Summary.Completed, c.Summary.Failed)
		}
		samples, err := ReadTimeSeries(out, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(samples) < 50 || samples[len(samples)-1].Completed != c.Summary.Completed {
			t.Errorf("%s: %d samples, last %+v", c.ID, len(samples), samples[len(samples)-1])
		}
	}
	if got := len(ev.cells(CellSample)); got < 8*50 {
		t.Errorf("%d sample events for 8 cells", got)
	}
	if got := len(ev.cells(CellDone)); got != 8 {
		t.Errorf("%d cell_done events, want 8", got)
	}
	lines, err := os.ReadFile(filepath.Join(out, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(lines), "\n"); n != len(ev.list) {
		t.Errorf("events.jsonl has %d lines, OnEvent saw %d", n, len(ev.list))
	}
	written, err := ReadResults(out)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(res, written); diff != "" {
		t.Errorf("results.json differs from what Run returned (-ran +read):\n%s", diff)
	}
}

// The same spec and seeds give byte-identical cell outputs, whatever the parallelism.
func TestRunIsDeterministic(t *testing.T) {
	spec := smallSpec(t, "")
	a, b := t.TempDir(), t.TempDir()
	if _, err := Run(context.Background(), spec, Options{Out: a, Parallel: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), spec, Options{Out: b, Parallel: 4}); err != nil {
		t.Fatal(err)
	}
	for _, c := range spec.Cells() {
		for _, f := range []string{"summary.json", "timeseries.json", "records.parquet"} {
			x, errA := os.ReadFile(filepath.Join(cellDir(a, c.ID), f))
			y, errB := os.ReadFile(filepath.Join(cellDir(b, c.ID), f))
			if errA != nil || errB != nil {
				t.Fatalf("%v %v", errA, errB)
			}
			if string(x) != string(y) {
				t.Errorf("%s/%s differs between runs", c.ID, f)
			}
		}
	}
	ra, _ := ReadResults(a)
	rb, _ := ReadResults(b)
	if diff := cmp.Diff(ra, rb, cmpopts.IgnoreFields(CellResult{}, "WallSeconds")); diff != "" {
		t.Errorf("results differ (-a +b):\n%s", diff)
	}
}

func TestInterruptedRunResumes(t *testing.T) {
	spec := smallSpec(t, "")
	out := t.TempDir()
	first, err := Run(context.Background(), spec, Options{Out: out})
	if err != nil {
		t.Fatal(err)
	}
	// An interrupted run leaves a cell without its summary.json.
	redo := spec.Cells()[5].ID
	if err := os.Remove(filepath.Join(cellDir(out, redo), "summary.json")); err != nil {
		t.Fatal(err)
	}
	var ev events
	again, err := Run(context.Background(), spec, Options{Out: out, OnEvent: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{redo}, ev.cells(CellStart)); diff != "" {
		t.Errorf("cells run again (-want +got):\n%s", diff)
	}
	if n := len(ev.cells(CellSkipped)); n != 7 {
		t.Errorf("%d cells skipped, want 7", n)
	}
	if diff := cmp.Diff(first, again, cmpopts.IgnoreFields(CellResult{}, "WallSeconds")); diff != "" {
		t.Errorf("the resumed run's results differ (-first +resumed):\n%s", diff)
	}

	other := smallSpec(t, "")
	other.Seeds = []uint64{7}
	if _, err := Run(context.Background(), other, Options{Out: out}); err == nil || !strings.Contains(err.Error(), "another spec") {
		t.Errorf("running another spec into the same directory: %v", err)
	}
}

// A cell that fails is reported in results.json and the error, and the others still run.
func TestFailedCellIsReported(t *testing.T) {
	dir := t.TempDir()
	epp := filepath.Join(dir, "epp.yaml")
	config, err := os.ReadFile("../examples/router/llm-d-default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(epp, config, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs("../examples/traces/azure_conv_3000.csv")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse([]byte("name: broken\nworkload: {trace: "+abs+", max_requests: 100}\n"+
		"policies: {routers: [round-robin, epp.yaml]}\n"), filepath.Join(dir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The router's config goes missing after the spec was checked.
	if err := os.Remove(epp); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	var ev events
	res, err := Run(context.Background(), s, Options{Out: out, OnEvent: ev.add})
	if err == nil || !strings.Contains(err.Error(), "1 of 2 cells failed") || !strings.Contains(err.Error(), "epp") {
		t.Fatalf("Run: %v", err)
	}
	written, rerr := ReadResults(out)
	if rerr != nil {
		t.Fatal(rerr)
	}
	for _, r := range []*Results{res, written} {
		if r.Cells[0].Status != "done" || r.Cells[1].Status != "error" || !strings.Contains(r.Cells[1].Error, "epp.yaml") {
			t.Errorf("cells: %+v", r.Cells)
		}
		if len(r.Policies) != 2 || r.Policies[1].FailedCells != 1 && r.Policies[0].FailedCells != 1 {
			t.Errorf("policies: %+v", r.Policies)
		}
	}
	if got := ev.cells(CellError); len(got) != 1 || got[0] != s.Cells()[1].ID {
		t.Errorf("cell_error events for %v", got)
	}
}

func TestCancelledRunStopsAndResumes(t *testing.T) {
	spec := smallSpec(t, "")
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	_, err := Run(ctx, spec, Options{Out: out, Parallel: 1, OnEvent: func(e Event) {
		if e.Kind == CellDone {
			once.Do(cancel)
		}
	}})
	if err == nil {
		t.Fatal("a cancelled run reported success")
	}
	res, err := Run(context.Background(), spec, Options{Out: out, Parallel: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Cells {
		if c.Status != "done" {
			t.Errorf("%s: %s %s", c.ID, c.Status, c.Error)
		}
	}
	var s map[string]any
	raw, _ := os.ReadFile(filepath.Join(cellDir(out, res.Cells[0].ID), "summary.json"))
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Error(err)
	}
}

func TestMeanCI(t *testing.T) {
	tests := []struct {
		xs   []float64
		want Stat
	}{
		{nil, Stat{}},
		{[]float64{3}, Stat{Mean: 3}},
		// t(0.975, 2) = 4.3027; sd = 1; n = 3.
		{[]float64{1, 2, 3}, Stat{Mean: 2, CI95: 4.302652729911275 / 1.7320508075688772}},
	}
	for _, tt := range tests {
		got := meanCI(tt.xs)
		if diff := cmp.Diff(tt.want, got, cmpopts.EquateApprox(1e-9, 0)); diff != "" {
			t.Errorf("meanCI(%v) (-want +got):\n%s", tt.xs, diff)
		}
	}
}

// fakeWorld serves every request in 10 ms plus 1 ms per output token, one at a time,
// sampling after each.
type fakeWorld struct {
	mu    sync.Mutex
	cells []RealCell
}

func (f *fakeWorld) RunCell(ctx context.Context, rc RealCell) (*metrics.Summary, error) {
	f.mu.Lock()
	f.cells = append(f.cells, rc)
	f.mu.Unlock()
	c := metrics.NewCollector(rc.Spec.SLO.Metrics())
	var now float64
	var state sim.Sample
	for id := uint64(0); ; id++ {
		row, err := rc.Workload.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		now = max(now, row.Arrival)
		// Instance -1: as real/bench, which does not learn which engine served a request.
		rec := serving.Record{ID: id, Instance: -1, Arrival: row.Arrival, Scheduled: now, FirstToken: now + 0.01,
			Finish: now + 0.01 + 0.001*float64(row.OutputTokens), PromptTokens: row.InputTokens, OutputTokens: row.OutputTokens}
		now = rec.Finish
		c.Add(&rec)
		if err := rc.OnRecord(&rec); err != nil {
			return nil, err
		}
		state.Time, state.Completed, state.OutputTokens = now, state.Completed+1, state.OutputTokens+int64(row.OutputTokens)
		if err := rc.OnSample(state); err != nil {
			return nil, err
		}
	}
	s := c.Summary(now, metrics.EngineCounters{})
	return &s, nil
}

func TestRealWorldCellsRunThroughTheRealWorld(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny")
	if err := os.MkdirAll(model, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(model, "config.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("../examples/traces/azure_conv_3000.csv")
	spec, err := Parse([]byte("name: real\nworld: real\nworkload: {trace: "+abs+", max_requests: 50, token_scale: 0.5}\n"+
		"cluster: {instances: 2, model: tiny}\npolicies: {routers: [round-robin, prefix-affinity]}\nseeds: [1, 2]\n"),
		filepath.Join(dir, "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if spec.ModelPath() != model {
		t.Errorf("model path %q, want %q", spec.ModelPath(), model)
	}
	out := filepath.Join(dir, "out")
	if _, err := Run(context.Background(), spec, Options{Out: out}); err == nil {
		t.Error("a real-world spec ran without a real world")
	}
	world := &fakeWorld{}
	res, err := Run(context.Background(), spec, Options{Out: out, Parallel: 4, Real: world})
	if err != nil {
		t.Fatal(err)
	}
	if len(world.cells) != 4 || len(res.Policies) != 2 {
		t.Fatalf("the world ran %d cells; %d policies", len(world.cells), len(res.Policies))
	}
	for _, p := range res.Policies {
		// Records without instances give no shares, not every instance flagged idle.
		if p.InstanceShare != nil || p.Starved != nil {
			t.Errorf("%s: instance shares %v, starved %v from records that name no instance", p.Name(), p.InstanceShare, p.Starved)
		}
	}
	for _, c := range res.Cells {
		rows, err := ReadRecords(out, c.ID)
		if err != nil || len(rows) != 50 {
			t.Fatalf("%s: %d records, %v", c.ID, len(rows), err)
		}
		samples, err := ReadTimeSeries(out, c.ID)
		if err != nil || len(samples) != 50 || samples[49].Completed != 50 {
			t.Fatalf("%s: %d samples, %v", c.ID, len(samples), err)
		}
		// Token scale 0.5 halves the output lengths the world saw.
		full, _ := Parse([]byte("name: full\nworkload: {trace: "+abs+", max_requests: 50}\npolicies: {routers: [round-robin]}\n"), filepath.Join(dir, "spec.yaml"))
		src, closer, _ := full.openWorkload(1)
		first, _ := src.Next()
		closer.Close()
		if rows[0].OutputTokens != int32(max(1, (first.OutputTokens+1)/2)) && rows[0].OutputTokens != int32(first.OutputTokens/2) {
			t.Errorf("%s: first request has %d output tokens, the trace %d at token scale 0.5", c.ID, rows[0].OutputTokens, first.OutputTokens)
		}
	}
}

// The last sample, taken when the last request finishes, closes a partial interval; its
// rates are over the full interval it ends (nothing finishes after it), so the series ends
// on the interval grid without the spike a rate over a few milliseconds gave.
func TestTimeSeriesLastIntervalIsWhole(t *testing.T) {
	tests := []struct {
		name string
		in   []sim.Sample
		want []Sample
	}{
		{
			name: "partial last interval",
			in: []sim.Sample{
				{Time: 1, Completed: 10, OutputTokens: 100},
				{Time: 2, Completed: 20, OutputTokens: 200},
				{Time: 2.05, Completed: 23, OutputTokens: 230},
			},
			want: []Sample{
				{Time: 1, Completed: 10, RequestThroughput: 10, OutputThroughput: 100},
				{Time: 2, Completed: 20, RequestThroughput: 10, OutputThroughput: 100},
				{Time: 3, Completed: 23, RequestThroughput: 3, OutputThroughput: 30},
			},
		},
		{
			name: "run shorter than one interval",
			in:   []sim.Sample{{Time: 0.25, Completed: 5, OutputTokens: 50}},
			want: []Sample{{Time: 1, Completed: 5, RequestThroughput: 5, OutputThroughput: 50}},
		},
		{
			name: "late sample (a real-world tick) keeps its own length",
			in:   []sim.Sample{{Time: 1, Completed: 10}, {Time: 2.5, Completed: 25}},
			want: []Sample{{Time: 1, Completed: 10, RequestThroughput: 10}, {Time: 2.5, Completed: 25, RequestThroughput: 10}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := &timeSeries{interval: 1}
			var got []Sample
			for _, s := range tt.in {
				got = append(got, ts.sample(s))
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
				t.Errorf("samples (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(got, ts.samples); diff != "" {
				t.Errorf("timeseries.json differs from the events (-events +file):\n%s", diff)
			}
		})
	}
}

// A whole run's series lies on the sample interval, its last sample included.
func TestRunTimeSeriesOnTheInterval(t *testing.T) {
	spec, err := Parse([]byte("name: grid\nworkload: {trace: "+trace+", max_requests: 200}\n"+
		"cluster: {instances: 2}\npolicies: {routers: [least-request]}\n"), filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	const interval = 0.7
	res, err := Run(context.Background(), spec, Options{Out: out, Parallel: 1, SampleInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	samples, err := ReadTimeSeries(out, res.Cells[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range samples {
		if k := s.Time / interval; math.Abs(k-math.Round(k)) > 1e-6 || math.Round(k) != float64(i+1) {
			t.Errorf("sample %d of %d at %v s, want %v", i, len(samples), s.Time, float64(i+1)*interval)
		}
	}
	if last := samples[len(samples)-1]; last.Completed != res.Cells[0].Summary.Completed {
		t.Errorf("the series ends with %d completed, the summary %d", last.Completed, res.Cells[0].Summary.Completed)
	}
}

// results.json and experiment_start say whether the workload carries prefix hash ids, so a
// report and the dashboard can tell "no prefix information" from "no hits".
func TestRunsSayWhetherTheWorkloadHasPrefixes(t *testing.T) {
	tests := []struct {
		name, workload string
		want           bool
	}{
		{"Azure: no hash ids", "{trace: " + trace + ", max_requests: 50}", false},
		{"Mooncake: hash ids", "{trace: ../../examples/traces/mooncake_conv_500.jsonl, max_requests: 50}", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := Parse([]byte("name: p\nworkload: "+tt.workload+"\npolicies: {routers: [round-robin]}\n"), filepath.Join("testdata", "spec.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			var start []*bool // experiment_start's prefix_hashes, as OnEvent heard it
			onEvent := func(ev Event) {
				if ev.Kind == ExperimentStart {
					start = append(start, ev.PrefixHashes)
				}
			}
			if _, err := Run(context.Background(), spec, Options{Out: out, Parallel: 1, OnEvent: onEvent}); err != nil {
				t.Fatal(err)
			}
			res, err := ReadResults(out)
			if err != nil {
				t.Fatal(err)
			}
			if res.PrefixHashes == nil || *res.PrefixHashes != tt.want {
				t.Errorf("prefix_hashes %v, want %v", res.PrefixHashes, tt.want)
			}
			// The live view learns it before any cell runs: experiment_start says it, in
			// events.jsonl too.
			if len(start) != 1 || start[0] == nil || *start[0] != tt.want {
				t.Errorf("experiment_start events' prefix_hashes %v, want one saying %v", start, tt.want)
			}
			events, err := os.ReadFile(filepath.Join(out, "events.jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf(`"kind":"experiment_start","progress":0,"prefix_hashes":%v}`, tt.want); !strings.Contains(string(events), want) {
				t.Errorf("events.jsonl has no %s:\n%.300s", want, events)
			}
		})
	}
}

func TestInstanceShares(t *testing.T) {
	tests := []struct {
		name        string
		seeds       [][]int
		prefill     map[int]bool
		wantShare   []Share
		wantStarved []Starvation
	}{
		{"no counts", nil, nil, nil, nil},
		{"balanced", [][]int{{5, 5}}, nil, []Share{{0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}}, nil},
		{"one idle in one seed of two", [][]int{{6, 4, 0}, {4, 4, 2}}, nil,
			[]Share{{0.5, 0.4, 0.6}, {0.4, 0.4, 0.4}, {0.1, 0, 0.2}},
			[]Starvation{{Instance: 2, Seeds: 1}}},
		{"a prefill instance serves no whole request and is not starved", [][]int{{0, 6, 4, 0}}, map[int]bool{0: true},
			[]Share{{0, 0, 0}, {0.6, 0.6, 0.6}, {0.4, 0.4, 0.4}, {0, 0, 0}},
			[]Starvation{{Instance: 3, Seeds: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			share, starved := instanceShares(tt.seeds, tt.prefill)
			if diff := cmp.Diff(tt.wantShare, share, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
				t.Errorf("shares (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantStarved, starved); diff != "" {
				t.Errorf("starved (-want +got):\n%s", diff)
			}
		})
	}
}

// results.json counts each cell's requests per instance, an instance that got none
// included, and a resumed run counts the same from the records.
func TestResultsCountRequestsPerInstance(t *testing.T) {
	spec, err := Parse([]byte("name: share\nworkload: {trace: "+trace+", max_requests: 2}\n"+
		"cluster: {instances: 4}\npolicies: {routers: [round-robin]}\n"), filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	first, err := Run(context.Background(), spec, Options{Out: out, Parallel: 1})
	if err != nil {
		t.Fatal(err)
	}
	again, err := Run(context.Background(), spec, Options{Out: out, Parallel: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range []*Results{first, again} {
		if diff := cmp.Diff([]int{1, 1, 0, 0}, res.Cells[0].InstanceRequests); diff != "" {
			t.Errorf("requests per instance (-want +got):\n%s", diff)
		}
		p := res.Policies[0]
		if diff := cmp.Diff([]Share{{0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}, {}, {}}, p.InstanceShare); diff != "" {
			t.Errorf("shares (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]Starvation{{2, 1}, {3, 1}}, p.Starved); diff != "" {
			t.Errorf("starved (-want +got):\n%s", diff)
		}
	}
}

// A run begun by an older servelab, whose spec.yaml had "cluster: {}" where the resolved
// cluster stands now, resumes; another spec's run directory is still refused.
func TestRunResumesASpecWrittenBefore(t *testing.T) {
	spec := smallSpec(t, "")
	out := t.TempDir()
	norm, err := spec.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	var before strings.Builder
	skip := false
	for _, line := range strings.SplitAfter(string(norm), "\n") {
		switch {
		case line == "cluster:\n":
			before.WriteString("cluster:\n  gpu: a100-80g\n  instances: 2\n  model: llama-3.1-8b\n")
			skip = true
		case skip && strings.HasPrefix(line, "  "):
		default:
			skip = false
			before.WriteString(line)
		}
	}
	if before.String() == string(norm) {
		t.Fatalf("no cluster to unresolve in\n%s", norm)
	}
	if err := os.WriteFile(filepath.Join(out, "spec.yaml"), []byte(before.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Workload.MaxRequests = 20
	if _, err := Run(context.Background(), spec, Options{Out: out}); err == nil || !strings.Contains(err.Error(), "another spec") {
		t.Fatalf("another spec's directory: %v", err)
	}
	spec.Workload.MaxRequests = 300
	if _, err := Run(context.Background(), spec, Options{Out: out, Parallel: 2}); err != nil {
		t.Fatalf("the same spec as an older servelab wrote it: %v", err)
	}
}

// results.json aggregates the cells' cost: a mean of each cell's GPU-hours, dollars and
// goodput per dollar, the dollars at the spec's prices.
func TestResultsAggregateCost(t *testing.T) {
	spec, err := Parse([]byte("name: cost\nworkload: {trace: "+trace+", max_requests: 100, rate_scale: 6}\n"+
		"cluster: {pools: [{name: big, role: both, instances: 1, gpu: a100-80g}, {name: small, role: both, instances: 2, gpu: l4}], gpu_price_per_hour: {l4: 0.5}}\n"+
		"policies: {routers: [least-request]}\nseeds: [1, 2]\nslo: {ttft_ms: 500}\n"), filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), spec, Options{Out: t.TempDir(), Parallel: 1})
	if err != nil {
		t.Fatal(err)
	}
	var hours, usd, perDollar []float64
	for _, c := range res.Cells {
		if c.Summary == nil || c.Summary.Cost == nil {
			t.Fatalf("cell %s reports no cost", c.ID)
		}
		k := c.Summary.Cost
		if want := 3 * c.Summary.Duration / 3600; math.Abs(k.GPUHours-want) > 1e-12 {
			t.Errorf("cell %s: %v GPU-hours, want 3 GPUs x %v s = %v", c.ID, k.GPUHours, c.Summary.Duration, want)
		}
		hours, usd, perDollar = append(hours, k.GPUHours), append(usd, k.USD), append(perDollar, k.GoodputPerDollar)
	}
	p := res.Policies[0]
	if p.GPUHours == nil || p.CostUSD == nil || p.GoodputPerDollar == nil {
		t.Fatalf("policy without cost: %+v", p)
	}
	if diff := cmp.Diff([]Stat{meanCI(hours), meanCI(usd), meanCI(perDollar)}, []Stat{*p.GPUHours, *p.CostUSD, *p.GoodputPerDollar}); diff != "" {
		t.Errorf("aggregated cost (-cells +policy):\n%s", diff)
	}
}
