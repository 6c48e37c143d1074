package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"servelab/experiments"
	"servelab/metrics"
)

// view is a client's picture of a run, built from messages the way dash.js builds it.
type view struct {
	seq       uint64
	snapshots int
	updates   int
	status    string
	progress  float64
	cells     map[string]*viewCell
	order     []string
	// prefixHashes is the last message's prefix_hashes (nil: absent).
	prefixHashes *bool
}

type viewCell struct {
	status  string
	summary bool
	rows    [][]float64
}

func (v *view) apply(t testing.TB, data []byte) {
	t.Helper()
	var m struct {
		Type     string  `json:"type"`
		Seq      uint64  `json:"seq"`
		Status   string  `json:"status"`
		Progress float64 `json:"progress"`
		Error    string  `json:"error"`
		Prefix   *bool   `json:"prefix_hashes"`
		Cells    []struct {
			ID      string           `json:"id"`
			Status  string           `json:"status"`
			Summary *json.RawMessage `json:"summary"`
			From    int              `json:"from"`
			Samples [][]float64      `json:"samples"`
		} `json:"cells"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("bad message %.200s: %v", data, err)
	}
	switch m.Type {
	case "snapshot":
		v.snapshots++
		v.cells, v.order = map[string]*viewCell{}, nil
	case "update":
		v.updates++
		if v.cells == nil {
			t.Fatal("an update came before any snapshot")
		}
		if m.Seq != v.seq+1 {
			t.Errorf("update %d after %d: a gap the client would have to repair", m.Seq, v.seq)
		}
	default:
		t.Fatalf("message type %q: %s", m.Type, data)
	}
	v.seq, v.status, v.progress, v.prefixHashes = m.Seq, m.Status, m.Progress, m.Prefix
	for _, mc := range m.Cells {
		c := v.cells[mc.ID]
		if c == nil {
			c = &viewCell{}
			v.cells[mc.ID] = c
			v.order = append(v.order, mc.ID)
		}
		c.status = mc.Status
		c.summary = c.summary || mc.Summary != nil
		if mc.From > len(c.rows) {
			t.Errorf("cell %s: samples from %d but the client holds %d", mc.ID, mc.From, len(c.rows))
		}
		c.rows = append(c.rows[:min(mc.From, len(c.rows))], mc.Samples...)
	}
}

// row is a sample as the websocket encodes it.
func row(s experiments.Sample) []float64 {
	return []float64{s.Time, float64(s.Completed), s.RequestThroughput, s.OutputThroughput,
		float64(s.Running), float64(s.Waiting), s.KVCacheUsage, s.PrefixCacheHitRate, s.TTFTP50Ms}
}

// checkView compares a client's view with the hub's state.
func checkView(t testing.TB, who string, v *view, h *hub) {
	t.Helper()
	h.view(func(st *runState) {
		if v.status != st.status {
			t.Errorf("%s: status %q, hub %q", who, v.status, st.status)
		}
		if len(v.cells) != len(st.cells) {
			t.Errorf("%s: %d cells, hub %d", who, len(v.cells), len(st.cells))
		}
		for _, c := range st.cells {
			vc := v.cells[c.ID]
			if vc == nil {
				t.Errorf("%s: no cell %s", who, c.ID)
				continue
			}
			if vc.status != c.status || vc.summary != (c.summary != nil) {
				t.Errorf("%s: cell %s status %q summary %v, hub %q %v", who, c.ID, vc.status, vc.summary, c.status, c.summary != nil)
			}
			want := make([][]float64, len(c.samples))
			for i, s := range c.samples {
				want[i] = row(s)
			}
			if !slices.EqualFunc(vc.rows, want, slices.Equal) {
				t.Errorf("%s: cell %s has %d samples, hub %d (or they differ)", who, c.ID, len(vc.rows), len(want))
			}
		}
	})
}

// fakeSink records a client's messages; while blocked, writes wait (a stuck client).
type fakeSink struct {
	mu      sync.Mutex
	msgs    [][]byte
	blocked chan struct{} // writes wait until it is closed; nil: never block
	failing bool
	closed  chan struct{}
	once    sync.Once
	arrived chan struct{}
}

func newFakeSink() *fakeSink {
	return &fakeSink{closed: make(chan struct{}), arrived: make(chan struct{}, 1)}
}

func (f *fakeSink) write(data []byte) error {
	if f.blocked != nil {
		select {
		case <-f.blocked:
		case <-f.closed:
			return errors.New("closed")
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return errors.New("broken pipe")
	}
	f.msgs = append(f.msgs, data)
	select {
	case f.arrived <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeSink) ping() error { return nil }
func (f *fakeSink) close()      { f.once.Do(func() { close(f.closed) }) }

func (f *fakeSink) view(t testing.TB) *view {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := &view{}
	for _, m := range f.msgs {
		v.apply(t, m)
	}
	return v
}

func (f *fakeSink) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.msgs)
}

func sample(i int) experiments.Sample {
	return experiments.Sample{Time: 0.5 * float64(i+1), Completed: 3 * i, RequestThroughput: float64(i%7) + 0.25,
		OutputThroughput: 100.5 * float64(i), Running: i % 11, Waiting: i % 5, KVCacheUsage: float64(i%10) / 10,
		PrefixCacheHitRate: 0.125, TTFTP50Ms: 40 + float64(i)}
}

var testCells = []experiments.Cell{
	{ID: "a__vllm__lru__s1", Router: "a", Batch: "vllm", Evict: "lru", Seed: 1, RateScale: 1},
	{ID: "b__vllm__lru__s1", Router: "b", Batch: "vllm", Evict: "lru", Seed: 1, RateScale: 1},
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHubSendsASnapshotThenUpdates(t *testing.T) {
	h := newHub("r", testCells, hubOptions{Interval: 5 * time.Millisecond})
	defer h.close()
	h.Apply(experiments.Event{Experiment: "x", Kind: experiments.ExperimentStart})
	h.Apply(experiments.Event{Cell: testCells[0].ID, Kind: experiments.CellStart})
	for i := range 3 {
		s := sample(i)
		h.Apply(experiments.Event{Cell: testCells[0].ID, Kind: experiments.CellSample, Progress: 0.1, Sample: &s})
	}
	waitFor(t, "the first publish", func() bool { return h.pushes.Load() == 1 })
	sink := newFakeSink()
	if h.subscribe(sink) == nil {
		t.Fatal("subscribe refused")
	}
	waitFor(t, "the snapshot", func() bool { return sink.count() >= 1 })
	v := sink.view(t)
	if v.snapshots != 1 || v.updates > 1 || v.status != StatusRunning || len(v.order) != 2 || v.order[0] != testCells[0].ID {
		t.Fatalf("first messages: %+v", v)
	}
	var snap struct {
		Fields []string `json:"fields"`
		Cells  []struct {
			Cell *experiments.Cell `json:"cell"`
		} `json:"cells"`
	}
	json.Unmarshal(sink.msgs[0], &snap)
	if !slices.Equal(snap.Fields, sampleFields) || snap.Cells[1].Cell == nil || *snap.Cells[1].Cell != testCells[1] {
		t.Errorf("snapshot fields %v, cells %+v", snap.Fields, snap.Cells)
	}
	n := sink.count()
	for i := 3; i < 10; i++ {
		s := sample(i)
		h.Apply(experiments.Event{Cell: testCells[0].ID, Kind: experiments.CellSample, Progress: 0.5, Sample: &s})
	}
	waitFor(t, "an update", func() bool { return sink.count() > n })
	h.Apply(experiments.Event{Cell: testCells[0].ID, Kind: experiments.CellDone, Progress: 1, Summary: &metrics.Summary{Completed: 9}})
	h.Apply(experiments.Event{Cell: testCells[1].ID, Kind: experiments.CellError, Error: "boom"})
	h.Apply(experiments.Event{Kind: experiments.ExperimentDone, Progress: 1, Error: "1 of 2 cells failed"})
	waitFor(t, "the end", func() bool { return sink.view(t).status == StatusFailed })
	v = sink.view(t)
	if v.snapshots != 1 || v.updates < 2 {
		t.Errorf("%d snapshots, %d updates", v.snapshots, v.updates)
	}
	checkView(t, "client", v, h)
	if c := v.cells[testCells[0].ID]; len(c.rows) != 10 || c.status != StatusDone || !c.summary {
		t.Errorf("cell a: %+v", c)
	}
	if c := v.cells[testCells[1].ID]; c.status != StatusError {
		t.Errorf("cell b: %+v", c)
	}
	// Each update carries only what changed: the 7 later samples went out once.
	var sent int
	for _, m := range sink.msgs[1:] {
		var u struct {
			Cells []struct {
				Samples [][]float64 `json:"samples"`
			} `json:"cells"`
		}
		json.Unmarshal(m, &u)
		for _, c := range u.Cells {
			sent += len(c.Samples)
		}
	}
	if sent != 7 {
		t.Errorf("updates carried %d samples, want the 7 new ones", sent)
	}
}

// A client that stops reading loses its oldest queued updates and gets a snapshot instead;
// meanwhile Apply never waits and other clients get every update.
func TestSlowClientDropsOldestWithoutStallingOthers(t *testing.T) {
	h := newHub("r", testCells, hubOptions{Interval: 2 * time.Millisecond, QueueLen: 4})
	defer h.close()
	slow, fast := newFakeSink(), newFakeSink()
	slow.blocked = make(chan struct{})
	sc := h.subscribe(slow)
	h.subscribe(fast)
	h.Apply(experiments.Event{Experiment: "x", Kind: experiments.ExperimentStart})
	var worst time.Duration
	for i := range 400 {
		s := sample(i)
		ev := experiments.Event{Cell: testCells[i%2].ID, Kind: experiments.CellSample, Progress: float64(i) / 400, Sample: &s}
		start := time.Now()
		h.Apply(ev)
		worst = max(worst, time.Since(start))
		if i%40 == 0 { // let several updates go out, however loaded the machine
			n := fast.count()
			waitFor(t, "an update to the fast client", func() bool { return fast.count() > n })
		}
	}
	h.Apply(experiments.Event{Kind: experiments.ExperimentDone, Progress: 1})
	waitFor(t, "the fast client to see the end", func() bool { return fast.view(t).status == StatusDone })
	// The slow client stays stuck for the whole loop: an Apply that waited for it would
	// never return, or only after a write timeout (5 s by default). The bound proves that
	// much, not how fast Apply is (a benchmark's job): a loaded machine can hold one call
	// back for a good part of a second.
	if worst > 2*time.Second {
		t.Errorf("Apply took up to %v with a stuck client", worst)
	}
	fv := fast.view(t)
	checkView(t, "fast client", fv, h)
	if fv.snapshots != 1 || fv.updates < 5 {
		t.Errorf("fast client: %d snapshots, %d updates", fv.snapshots, fv.updates)
	}
	if sc.drops.Load() == 0 {
		t.Fatal("the stuck client's queue dropped nothing")
	}
	if slow.count() != 0 {
		t.Fatal("the stuck client wrote while blocked")
	}
	close(slow.blocked)
	waitFor(t, "the slow client to catch up", func() bool { return slow.view(t).status == StatusDone })
	sv := slow.view(t)
	checkView(t, "slow client", sv, h)
	if sv.snapshots < 2 {
		t.Errorf("slow client got %d snapshots; after drops it needs a fresh one", sv.snapshots)
	}
}

func TestManyClientsSeeTheSameRun(t *testing.T) {
	h := newHub("r", testCells, hubOptions{Interval: 2 * time.Millisecond})
	defer h.close()
	var sinks []*fakeSink
	var wg sync.WaitGroup
	h.Apply(experiments.Event{Experiment: "x", Kind: experiments.ExperimentStart})
	for i := range 600 {
		if i%10 == 0 && len(sinks) < 50 { // clients join all along the run
			s := newFakeSink()
			sinks = append(sinks, s)
			h.subscribe(s)
		}
		wg.Add(1)
		go func() { // events come from several goroutines, as cells run in parallel
			defer wg.Done()
			s := sample(i)
			h.Apply(experiments.Event{Cell: fmt.Sprintf("c%d", i%3), Kind: experiments.CellSample, Sample: &s})
		}()
		if i%50 == 0 {
			wg.Wait()
			time.Sleep(2 * time.Millisecond)
		}
	}
	wg.Wait()
	h.Apply(experiments.Event{Kind: experiments.ExperimentDone, Progress: 1})
	if got := h.numClients(); got != 50 {
		t.Fatalf("%d clients, want 50", got)
	}
	for i, s := range sinks {
		waitFor(t, "every client to see the end", func() bool { return s.view(t).status == StatusDone })
		checkView(t, fmt.Sprintf("client %d", i), s.view(t), h)
	}
}

func TestFailingClientIsDropped(t *testing.T) {
	h := newHub("r", testCells, hubOptions{Interval: 2 * time.Millisecond})
	defer h.close()
	bad := newFakeSink()
	bad.failing = true
	h.subscribe(bad)
	h.subscribe(newFakeSink())
	waitFor(t, "the failing client to go", func() bool { return h.numClients() == 1 })
	select {
	case <-bad.closed:
	default:
		t.Error("the failing client's connection was not closed")
	}
}

func TestClosedHubDisconnectsClients(t *testing.T) {
	h := newHub("r", testCells, hubOptions{})
	s := newFakeSink()
	h.subscribe(s)
	h.close()
	<-s.closed
	if h.subscribe(newFakeSink()) != nil {
		t.Error("a closed hub took a client")
	}
}

// A cell's series stays bounded: past maxSamples it is halved, and the clients get the
// halved series in full.
func TestLongSeriesAreDownsampled(t *testing.T) {
	h := newHub("r", testCells, hubOptions{Interval: time.Millisecond, MaxSamples: 16})
	defer h.close()
	sink := newFakeSink()
	h.subscribe(sink)
	h.Apply(experiments.Event{Cell: "a", Kind: experiments.CellStart})
	for i := range 1000 {
		s := sample(i)
		h.Apply(experiments.Event{Cell: "a", Kind: experiments.CellSample, Sample: &s})
		if i%100 == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	h.Apply(experiments.Event{Kind: experiments.ExperimentDone})
	waitFor(t, "the end", func() bool { return sink.view(t).status == StatusDone })
	checkView(t, "client", sink.view(t), h)
	h.view(func(st *runState) {
		c := st.byID["a"]
		if len(c.samples) > 16 || len(c.samples) < 8 {
			t.Fatalf("%d samples kept of 1000, want 8..16", len(c.samples))
		}
		// Evenly spaced: every stride-th sample from the first.
		for i, s := range c.samples {
			if want := sample(i * c.stride).Time; s.Time != want {
				t.Fatalf("sample %d at t=%v, want %v (stride %d)", i, s.Time, want, c.stride)
			}
		}
	})
}

func TestSampleRowsEncodeNonFiniteAsNull(t *testing.T) {
	b, err := json.Marshal(sampleRows{{Time: 1, RequestThroughput: math.Inf(1), TTFTP50Ms: math.NaN(), Completed: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `[[1,2,null,0,0,0,0,0,null]]`; string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
}
