package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gorilla/websocket"

	"servelab/experiments"
	"servelab/internal/echartsjs"
)

var azureSlice = func() string {
	p, err := filepath.Abs("../examples/traces/azure_conv_3000.csv")
	if err != nil {
		panic(err)
	}
	return p
}()

// specYAML is a spec over the shipped Azure slice.
func specYAML(name string, maxRequests int, routers string, extra string) string {
	return fmt.Sprintf("name: %s\nworkload: {trace: %s, max_requests: %d, rate_scale: 4}\n"+
		"cluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\npolicies: {routers: [%s]}\n"+
		"slo: {ttft_ms: 2000, tpot_ms: 100}\n%s", name, azureSlice, maxRequests, routers, extra)
}

func writeFile(t testing.TB, path, body string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type testDash struct {
	t     testing.TB
	srv   *Server
	hs    *httptest.Server
	runs  string
	specs string
}

func newTestDash(t testing.TB, tweak func(*Server)) *testDash {
	t.Helper()
	d := &testDash{t: t, runs: t.TempDir(), specs: t.TempDir()}
	srv, err := New(Config{RunsDir: d.runs, SpecDirs: []string{d.specs}, Interval: 20 * time.Millisecond, Parallel: 1})
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(srv)
	}
	d.srv = srv
	d.hs = httptest.NewServer(srv.Handler())
	t.Cleanup(d.hs.Close)
	t.Cleanup(srv.Close) // first: stops runs and disconnects websockets
	return d
}

func (d *testDash) do(method, path, contentType, body string, header http.Header) (int, []byte) {
	d.t.Helper()
	req, err := http.NewRequest(method, d.hs.URL+path, strings.NewReader(body))
	if err != nil {
		d.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (d *testDash) getJSON(path string, v any) int {
	d.t.Helper()
	code, b := d.do("GET", path, "", "", nil)
	if code == http.StatusOK && v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			d.t.Fatalf("GET %s: %v\n%s", path, err, b)
		}
	}
	return code
}

// start POSTs a StartRequest and returns the run's id.
func (d *testDash) start(req StartRequest) string {
	d.t.Helper()
	body, _ := json.Marshal(req)
	code, b := d.do("POST", "/api/runs", "application/json", string(body), nil)
	if code != http.StatusCreated {
		d.t.Fatalf("POST /api/runs: %d %s", code, b)
	}
	var r struct{ ID, URL string }
	json.Unmarshal(b, &r)
	if r.URL != "/runs/"+pathEscape(r.ID) {
		d.t.Errorf("url %q for run %q", r.URL, r.ID)
	}
	return r.ID
}

func (d *testDash) dial(id string, origin string) (*websocket.Conn, *http.Response, error) {
	u := "ws" + strings.TrimPrefix(d.hs.URL, "http") + "/api/runs/" + pathEscape(id) + "/ws"
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	return websocket.DefaultDialer.Dial(u, h)
}

// watch reads a run's websocket into a view until the run is done or failed.
func watch(t testing.TB, conn *websocket.Conn) *view {
	t.Helper()
	v := &view{}
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for v.status != StatusDone && v.status != StatusFailed {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("websocket: %v (view %+v)", err, v)
		}
		v.apply(t, msg)
	}
	return v
}

// checkAgainstFiles compares a view of a finished run with its cells' timeseries.json.
func checkAgainstFiles(t testing.TB, v *view, dir string, cells []experiments.Cell) {
	t.Helper()
	if len(v.cells) != len(cells) {
		t.Errorf("view has %d cells, the spec %d", len(v.cells), len(cells))
	}
	for _, c := range cells {
		ts, err := experiments.ReadTimeSeries(dir, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		vc := v.cells[c.ID]
		if vc == nil || vc.status != StatusDone || !vc.summary {
			t.Errorf("cell %s: %+v", c.ID, vc)
			continue
		}
		want := make([][]float64, len(ts))
		for i, s := range ts {
			want[i] = row(s)
		}
		if !slices.EqualFunc(vc.rows, want, slices.Equal) {
			t.Errorf("cell %s: the live view has %d samples, timeseries.json %d (or they differ)", c.ID, len(vc.rows), len(want))
		}
	}
}

func TestRunStartedFromTheAPICompletes(t *testing.T) {
	d := newTestDash(t, nil)
	spec := writeFile(t, filepath.Join(d.specs, "small.yaml"), specYAML("small", 300, "round-robin, least-request, weighted", ""))
	id := d.start(StartRequest{Spec: spec, SampleInterval: 0.5})
	if id != "small" {
		t.Fatalf("run id %q, want the spec's name", id)
	}
	conn, _, err := d.dial(id, d.hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	v := watch(t, conn)
	if v.status != StatusDone || v.snapshots != 1 {
		t.Fatalf("view: status %s, %d snapshots", v.status, v.snapshots)
	}
	res, err := d.srv.Job(id).Wait()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := experiments.Load(spec)
	checkAgainstFiles(t, v, filepath.Join(d.runs, "small"), s.Cells())

	var got experiments.Results
	if code := d.getJSON("/api/runs/small/results", &got); code != 200 || len(got.Cells) != 3 || len(got.Policies) != 3 {
		t.Errorf("results: %d, %d cells", code, len(got.Cells))
	}
	if got.Policies[0].RequestThroughput != res.Policies[0].RequestThroughput {
		t.Errorf("results.json differs from the run's results")
	}
	var ts []experiments.Sample
	cell := s.Cells()[1].ID
	if code := d.getJSON("/api/runs/small/cells/"+cell+"/timeseries", &ts); code != 200 {
		t.Fatalf("timeseries: %d", code)
	}
	if want, _ := experiments.ReadTimeSeries(filepath.Join(d.runs, "small"), cell); !slices.Equal(ts, want) {
		t.Errorf("timeseries API: %d samples, file %d", len(ts), len(want))
	}
	var list struct {
		Experiments []Experiment `json:"experiments"`
	}
	d.getJSON("/api/runs", &list)
	if len(list.Experiments) != 1 || len(list.Experiments[0].Runs) != 1 {
		t.Fatalf("listing %+v", list)
	}
	if r := list.Experiments[0].Runs[0]; r.Status != StatusDone || r.Cells != 3 || r.DoneCells != 3 || r.Progress != 1 {
		t.Errorf("listed %+v", r)
	}

	// Another spec into the same directory is refused; the same spec resumes (nothing to do).
	other := writeFile(t, filepath.Join(d.specs, "other.yaml"), specYAML("small", 100, "round-robin", ""))
	body, _ := json.Marshal(StartRequest{Spec: other})
	if code, b := d.do("POST", "/api/runs", "application/json", string(body), nil); code != http.StatusConflict || !strings.Contains(string(b), "another spec") {
		t.Errorf("another spec into the same directory: %d %s", code, b)
	}
	again := d.start(StartRequest{Spec: spec, SampleInterval: 0.5})
	if _, err := d.srv.Job(again).Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestAPIErrors(t *testing.T) {
	d := newTestDash(t, nil)
	good := writeFile(t, filepath.Join(d.specs, "good.yaml"), specYAML("good", 50, "round-robin", ""))
	typo := writeFile(t, filepath.Join(d.specs, "typo.yaml"), specYAML("typo", 50, "round-robin", "clustr: {}\n"))
	badRouter := writeFile(t, filepath.Join(d.specs, "router.yaml"), specYAML("router", 50, "no-such-router", ""))
	outside := writeFile(t, filepath.Join(t.TempDir(), "outside.yaml"), specYAML("outside", 50, "round-robin", ""))
	os.Symlink(outside, filepath.Join(d.specs, "link.yaml"))
	js := "application/json"
	for _, tc := range []struct {
		name, method, path, ctype, body string
		header                          http.Header
		status                          int
		want                            string
	}{
		{"no spec", "POST", "/api/runs", js, `{}`, nil, 400, "spec: give the path"},
		{"missing file", "POST", "/api/runs", js, `{"spec": "` + filepath.Join(d.specs, "nope.yaml") + `"}`, nil, 400, "no such file"},
		{"outside", "POST", "/api/runs", js, `{"spec": "` + outside + `"}`, nil, 400, "outside the directories"},
		{"symlink out", "POST", "/api/runs", js, `{"spec": "` + filepath.Join(d.specs, "link.yaml") + `"}`, nil, 400, "outside the directories"},
		{"unknown key", "POST", "/api/runs", js, `{"spec": "` + typo + `"}`, nil, 400, "clustr: unknown key"},
		{"bad policy", "POST", "/api/runs", js, `{"spec": "` + badRouter + `"}`, nil, 400, "policies.routers[0]"},
		{"bad out", "POST", "/api/runs", js, `{"spec": "` + good + `", "out": "../escape"}`, nil, 400, "out:"},
		{"bad interval", "POST", "/api/runs", js, `{"spec": "` + good + `", "sample_interval": -1}`, nil, 400, "sample_interval"},
		{"unknown field", "POST", "/api/runs", js, `{"spec": "` + good + `", "sped": 1}`, nil, 400, "unknown field"},
		{"not JSON", "POST", "/api/runs", "application/x-www-form-urlencoded", "spec=" + good, nil, 415, "application/json"},
		{"foreign origin", "POST", "/api/runs", js, `{"spec": "` + good + `"}`, http.Header{"Origin": {"http://evil.example"}}, 403, "cross-origin"},
		{"no run", "GET", "/api/runs/nope", "", "", nil, 404, "no run"},
		{"no run results", "GET", "/api/runs/nope/results", "", "", nil, 404, "no run"},
		{"traversal", "GET", "/api/runs/..%2F..%2Fetc/results", "", "", nil, 404, "no run"},
		{"no run ws", "GET", "/api/runs/nope/ws", "", "", nil, 404, "no run"},
		{"cancel nothing", "POST", "/api/runs/nope/cancel", js, "", nil, 404, "no run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, b := d.do(tc.method, tc.path, tc.ctype, tc.body, tc.header)
			if code != tc.status || !strings.Contains(string(b), tc.want) {
				t.Errorf("%s %s: %d %s; want %d with %q", tc.method, tc.path, code, b, tc.status, tc.want)
			}
		})
	}
	if entries, _ := os.ReadDir(d.runs); len(entries) != 0 {
		t.Errorf("refused requests left %d entries in the runs directory", len(entries))
	}

	// A run directory whose results are not written yet, and a cell it does not have.
	s, _ := experiments.Load(good)
	norm, _ := s.Normalized()
	writeFile(t, filepath.Join(d.runs, "pending", "spec.yaml"), string(norm))
	if code, b := d.do("GET", "/api/runs/pending/results", "", "", nil); code != 404 || !strings.Contains(string(b), "not finished") {
		t.Errorf("results of an unfinished run: %d %s", code, b)
	}
	if code, _ := d.do("GET", "/api/runs/pending/cells/..%2F..%2Fspec/timeseries", "", "", nil); code != 404 {
		t.Errorf("a cell outside the run: %d", code)
	}
	if code, b := d.do("GET", "/api/runs/pending/cells/"+s.Cells()[0].ID+"/timeseries", "", "", nil); code != 404 || !strings.Contains(string(b), "no time series yet") {
		t.Errorf("time series of a cell not started: %d %s", code, b)
	}
}

func TestWebsocketRefusesAForeignOrigin(t *testing.T) {
	d := newTestDash(t, nil)
	s, _ := experiments.Parse([]byte(specYAML("x", 50, "round-robin", "")), "x.yaml")
	norm, _ := s.Normalized()
	writeFile(t, filepath.Join(d.runs, "x", "spec.yaml"), string(norm))
	for _, origin := range []string{"http://evil.example", "http://127.0.0.1:1", "null", "file://"} {
		conn, resp, err := d.dial("x", origin)
		if err == nil {
			conn.Close()
			t.Errorf("origin %s: connected", origin)
			continue
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("origin %s: %v %v, want 403", origin, resp, err)
		}
	}
	conn, _, err := d.dial("x", d.hs.URL) // same origin
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := conn.ReadMessage()
	if err != nil || !bytes.Contains(msg, []byte(`"type":"snapshot"`)) {
		t.Errorf("first message %.100s %v", msg, err)
	}
	conn.Close()
	conn, _, err = d.dial("x", "") // not a browser
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}

func TestHostsGuardAgainstDNSRebinding(t *testing.T) {
	d := newTestDash(t, func(s *Server) {})
	d.srv.cfg.Hosts = LoopbackHosts
	h := d.srv.routes()
	for host, want := range map[string]int{"127.0.0.1:8090": 200, "localhost:8090": 200, "[::1]:8090": 200, "evil.example:8090": 403, "evil.example": 403} {
		req := httptest.NewRequest("GET", "/api/runs", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("Host %s: %d, want %d", host, rec.Code, want)
		}
	}
}

func TestListsExperimentsAndRuns(t *testing.T) {
	d := newTestDash(t, nil)
	load := func(name string) *experiments.Spec {
		s, err := experiments.Parse([]byte(specYAML(name, 60, "round-robin, least-request", "")), filepath.Join(d.specs, name+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	small := load("small")
	for _, out := range []string{"small", "sweeps/small-again"} {
		if _, err := experiments.Run(context.Background(), small, experiments.Options{Out: filepath.Join(d.runs, out), Parallel: 1}); err != nil {
			t.Fatal(err)
		}
	}
	crafted := load("crafted")
	norm, _ := crafted.Normalized()
	cells := crafted.Cells()
	events := func(evs ...experiments.Event) string {
		var b strings.Builder
		for _, e := range evs {
			e.Experiment = "crafted"
			j, _ := json.Marshal(e)
			b.Write(append(j, '\n'))
		}
		return b.String()
	}
	start := experiments.Event{Kind: experiments.ExperimentStart}
	for dir, evs := range map[string]string{
		"live":        events(start, experiments.Event{Kind: experiments.CellStart, Cell: cells[0].ID}),
		"interrupted": events(start, experiments.Event{Kind: experiments.CellStart, Cell: cells[0].ID}),
		"failed": events(start, experiments.Event{Kind: experiments.CellError, Cell: cells[0].ID, Error: "boom"},
			experiments.Event{Kind: experiments.CellDone, Cell: cells[1].ID, Progress: 1},
			experiments.Event{Kind: experiments.ExperimentDone, Progress: 1, Error: "1 of 2 cells failed"}),
		"fresh": "",
	} {
		writeFile(t, filepath.Join(d.runs, dir, "spec.yaml"), string(norm))
		if evs != "" {
			writeFile(t, filepath.Join(d.runs, dir, "events.jsonl"), evs+`{"experiment":"crafted","kind":"sample","cell":"`+cells[0].ID+`","progress":0.5`)
		}
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(d.runs, "interrupted", "events.jsonl"), old, old)
	writeFile(t, filepath.Join(d.runs, ".hidden", "x", "spec.yaml"), string(norm))
	os.MkdirAll(filepath.Join(d.runs, "not-a-run", "deeper"), 0o755)

	var list struct {
		RunsDir     string       `json:"runs_dir"`
		Experiments []Experiment `json:"experiments"`
	}
	if code := d.getJSON("/api/runs", &list); code != 200 {
		t.Fatal(code)
	}
	type brief struct {
		ID, Status          string
		Cells, Done, Failed int
	}
	got := map[string][]brief{}
	for _, e := range list.Experiments {
		for _, r := range e.Runs {
			got[e.Name] = append(got[e.Name], brief{r.ID, r.Status, r.Cells, r.DoneCells, r.FailedCells})
		}
	}
	want := map[string][]brief{
		"crafted": {{"failed", StatusFailed, 2, 1, 1}, {"fresh", StatusNew, 2, 0, 0}, {"interrupted", StatusInterrupted, 2, 0, 0}, {"live", StatusRunning, 2, 0, 0}},
		"small":   {{"small", StatusDone, 2, 2, 0}, {"sweeps/small-again", StatusDone, 2, 2, 0}},
	}
	for name, runs := range got { // newest first; compare as sets
		slices.SortFunc(runs, func(a, b brief) int { return strings.Compare(a.ID, b.ID) })
		got[name] = runs
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("listing\n got %v\nwant %v", got, want)
	}
	if list.Experiments[0].Name != "crafted" || list.RunsDir != d.srv.RunsDir() {
		t.Errorf("experiments not sorted by name, or runs dir %q", list.RunsDir)
	}

	// The run's cells, with statuses from its events.
	var run struct {
		RunInfo
		CellList []CellInfo `json:"cell_list"`
	}
	d.getJSON("/api/runs/failed", &run)
	if len(run.CellList) != 2 || run.CellList[0].Status != StatusError || run.CellList[0].Error != "boom" || run.CellList[1].Status != StatusDone ||
		run.CellList[0].Router != "round-robin" {
		t.Errorf("cells %+v", run.CellList)
	}

	// The pages list them too.
	code, page := d.do("GET", "/", "", "", nil)
	for _, s := range []string{`href="/runs/sweeps%2Fsmall-again"`, "interrupted", `data-run="live"`} {
		if code != 200 || !strings.Contains(string(page), s) {
			t.Errorf("index page (%d) lacks %q", code, s)
		}
	}
	code, page = d.do("GET", "/runs/sweeps%2Fsmall-again", "", "", nil)
	if code != 200 || !strings.Contains(string(page), `data-run="sweeps/small-again"`) || !strings.Contains(string(page), cells[1].ID) {
		t.Errorf("live page: %d", code)
	}
	code, page = d.do("GET", "/compare?run=small&run=sweeps/small-again&run=nope", "", "", nil)
	if code != 200 || strings.Count(string(page), `class="run-cells"`) != 2 {
		t.Errorf("compare page: %d, %d runs picked", code, strings.Count(string(page), `class="run-cells"`))
	}
	if code, _ := d.do("GET", "/runs/nope", "", "", nil); code != 404 {
		t.Errorf("live page of no run: %d", code)
	}
}

func TestServesEChartsLocally(t *testing.T) {
	d := newTestDash(t, nil)
	code, js := d.do("GET", "/static/echarts.min.js", "", "", nil)
	if code != 200 || !bytes.Equal(js, echartsjs.Script()) {
		t.Errorf("echarts.min.js: %d, %d bytes", code, len(js))
	}
	if code, b := d.do("GET", "/static/dash.js", "", "", nil); code != 200 || !bytes.Contains(b, []byte("new WebSocket")) {
		t.Errorf("dash.js: %d", code)
	}
	_, page := d.do("GET", "/", "", "", nil)
	if bytes.Contains(page, []byte("cdn")) || !bytes.Contains(page, []byte(`src="/static/echarts.min.js"`)) {
		t.Error("the page does not load ECharts from /static")
	}
}

// A run started by another process (servelab run) is followed through its events.jsonl.
func TestFollowsARunOfAnotherProcess(t *testing.T) {
	d := newTestDash(t, nil)
	spec, err := experiments.Parse([]byte(specYAML("elsewhere", 1500, "round-robin, least-request, weighted", "seeds: [1, 2]\n")), filepath.Join(d.specs, "e.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(d.runs, "elsewhere")
	norm, _ := spec.Normalized()
	writeFile(t, filepath.Join(out, "spec.yaml"), string(norm)) // as the run will write it
	conn, _, err := d.dial("elsewhere", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := conn.ReadMessage()
	if err != nil || !bytes.Contains(msg, []byte(`"status":"new"`)) {
		t.Fatalf("snapshot before the run: %s %v", msg, err)
	}
	v := &view{}
	v.apply(t, msg)
	// The run is paced by what the dashboard shows: after each cell_done it waits until an
	// update has reached the client. On an idle machine the six cells finish inside one
	// flush of events.jsonl, and how many updates a free-running run gets is luck.
	var updates atomic.Int64
	paced := func(e experiments.Event) {
		if e.Kind != experiments.CellDone {
			return
		}
		before := updates.Load()
		for deadline := time.Now().Add(30 * time.Second); updates.Load() == before && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := experiments.Run(context.Background(), spec, experiments.Options{Out: out, Parallel: 1, SampleInterval: 0.25, OnEvent: paced})
		done <- err
	}()
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	for v.status != StatusDone {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		v.apply(t, msg)
		updates.Store(int64(v.updates))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if cells := len(spec.Cells()); v.updates < cells {
		t.Errorf("%d updates while the run of %d cells went on, one at least after each cell", v.updates, cells)
	}
	checkAgainstFiles(t, v, out, spec.Cells())
}

// The live and compare pages learn from the run whether its trace carries prefix hash ids
// (the experiment_start event, or results.json), to show a note instead of a hit-rate chart
// of zeros; a run of an older servelab, which does not say, gets the chart.
func TestRunsSayWhetherTheTraceHasPrefixes(t *testing.T) {
	mooncake, err := filepath.Abs("../examples/traces/mooncake_conv_500.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, trace string
		want        bool
	}{
		{"azure", azureSlice, false},
		{"mooncake", mooncake, true},
	}
	d := newTestDash(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := writeFile(t, filepath.Join(d.specs, tt.name+".yaml"), fmt.Sprintf("name: %s\n"+
				"workload: {trace: %s, max_requests: 60}\ncluster: {instances: 2, model: llama-3.1-8b, gpu: a100-80g}\n"+
				"policies: {routers: [round-robin]}\n", tt.name, tt.trace))
			id := d.start(StartRequest{Spec: spec, SampleInterval: 0.5})
			conn, _, err := d.dial(id, d.hs.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			v := watch(t, conn)
			if v.prefixHashes == nil || *v.prefixHashes != tt.want {
				t.Errorf("websocket: prefix_hashes %s, want %v", boolOrNil(v.prefixHashes), tt.want)
			}
			if _, err := d.srv.Job(id).Wait(); err != nil {
				t.Fatal(err)
			}
			var info RunInfo
			if code := d.getJSON("/api/runs/"+id, &info); code != 200 || info.PrefixHashes == nil || *info.PrefixHashes != tt.want {
				t.Errorf("GET /api/runs/%s: %d, prefix_hashes %s, want %v", id, code, boolOrNil(info.PrefixHashes), tt.want)
			}
		})
	}

	// An older servelab's runs: events without prefix_hashes say nothing; results.json alone
	// (no events) says what it records.
	old := filepath.Join(d.runs, "old")
	writeFile(t, filepath.Join(old, "spec.yaml"), "name: old\n")
	writeFile(t, filepath.Join(old, "events.jsonl"), `{"experiment":"old","kind":"experiment_start","progress":0}`+"\n"+
		`{"experiment":"old","kind":"experiment_done","progress":1}`+"\n")
	older := filepath.Join(d.runs, "older")
	writeFile(t, filepath.Join(older, "spec.yaml"), "name: older\n")
	writeFile(t, filepath.Join(older, "results.json"), `{"experiment":"older","cells":[],"policies":[],"prefix_hashes":false}`)
	for id, want := range map[string]*bool{"old": nil, "older": new(bool)} {
		var info RunInfo
		if code := d.getJSON("/api/runs/"+id, &info); code != 200 || !cmp.Equal(info.PrefixHashes, want) {
			t.Errorf("GET /api/runs/%s: %d, prefix_hashes %s, want %s", id, code, boolOrNil(info.PrefixHashes), boolOrNil(want))
		}
	}
	conn, _, err := d.dial("old", d.hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if v := watch(t, conn); v.prefixHashes != nil {
		t.Errorf("websocket of a run whose events do not say: prefix_hashes %s", boolOrNil(v.prefixHashes))
	}
}

func boolOrNil(b *bool) string {
	if b == nil {
		return "absent"
	}
	return fmt.Sprint(*b)
}

// smallBuffers makes a websocket's socket buffers a few KB, so that a client that does not
// read blocks the server's writes at once instead of after megabytes.
func smallBuffers(c *websocket.Conn) {
	if tcp, ok := c.NetConn().(*net.TCPConn); ok {
		tcp.SetWriteBuffer(4 << 10)
		tcp.SetReadBuffer(4 << 10)
	}
}

var smallBufferDialer = &websocket.Dialer{NetDial: func(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if tcp, ok := c.(*net.TCPConn); ok {
		tcp.SetReadBuffer(4 << 10)
	}
	return c, err
}}

// A websocket client that never reads does not slow the run or the other clients; its
// writes time out and it is disconnected.
func TestStuckWebsocketClientDoesNotStallTheRun(t *testing.T) {
	d := newTestDash(t, func(s *Server) {
		s.opt.WriteWait, s.opt.QueueLen, s.connHook = 300*time.Millisecond, 2, smallBuffers
	})
	spec := writeFile(t, filepath.Join(d.specs, "s.yaml"), specYAML("stuck", 600, "round-robin, least-request", "seeds: [1, 2]\n"))
	s, _ := experiments.Load(spec)
	norm, _ := s.Normalized()
	writeFile(t, filepath.Join(d.runs, "stuck", "spec.yaml"), string(norm))
	stuck, _, err := smallBufferDialer.Dial("ws"+strings.TrimPrefix(d.hs.URL, "http")+"/api/runs/stuck/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	reader, _, err := d.dial("stuck", "")
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	id := d.start(StartRequest{Spec: spec, SampleInterval: 0.05})
	v := watch(t, reader)
	if _, err := d.srv.Job(id).Wait(); err != nil {
		t.Fatal(err)
	}
	checkAgainstFiles(t, v, filepath.Join(d.runs, "stuck"), s.Cells())
	h, _ := d.srv.hub("stuck")
	waitFor(t, "the stuck client to be disconnected", func() bool { return h.numClients() == 1 })
}

// A client that answers no ping is disconnected; one that reads (and so answers) stays.
func TestPingDropsUnresponsiveClients(t *testing.T) {
	// A 500 ms period gives the answering client about that long to send each pong: a loaded
	// machine (the race detector, other jobs) may hold its reader back for tens of ms, and a
	// pong later than the server's 2-period read deadline would drop it too.
	const period = 500 * time.Millisecond
	d := newTestDash(t, func(s *Server) { s.opt.PingPeriod = period })
	s, _ := experiments.Parse([]byte(specYAML("x", 50, "round-robin", "")), "x.yaml")
	norm, _ := s.Normalized()
	writeFile(t, filepath.Join(d.runs, "x", "spec.yaml"), string(norm))
	mute, _, err := d.dial("x", "")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	alive, _, err := d.dial("x", "")
	if err != nil {
		t.Fatal(err)
	}
	defer alive.Close()
	// Reading makes the client answer pings (as gorilla's default handler does); the
	// handler also counts them, so the test knows how many the server has sent it.
	var pings atomic.Int64
	alive.SetPingHandler(func(data string) error {
		pings.Add(1)
		err := alive.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(10*time.Second))
		if err == websocket.ErrCloseSent {
			return nil
		}
		return err
	})
	go func() {
		for {
			if _, _, err := alive.ReadMessage(); err != nil {
				return
			}
		}
	}()
	h, _ := d.srv.hub("x")
	waitFor(t, "the mute client to be dropped", func() bool { return h.numClients() == 1 })
	// The answering client stays through several more pings, longer than the 2-period
	// read deadline that dropped the mute one.
	n := pings.Load()
	waitFor(t, "three more pings to the answering client", func() bool { return pings.Load() >= n+3 })
	if h.numClients() != 1 {
		t.Errorf("%d clients; the one answering pings was dropped too", h.numClients())
	}
}

func TestCancelARun(t *testing.T) {
	d := newTestDash(t, nil)
	spec := writeFile(t, filepath.Join(d.specs, "c.yaml"), specYAML("cancelled", 3000, "round-robin, least-request, weighted", "seeds: [1, 2, 3, 4]\n"))
	id := d.start(StartRequest{Spec: spec})
	if code, b := d.do("POST", "/api/runs/"+id+"/cancel", "application/json", "", nil); code != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", code, b)
	}
	if _, err := d.srv.Job(id).Wait(); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("cancelled run returned %v", err)
	}
	var info RunInfo
	d.getJSON("/api/runs/"+id, &info)
	if info.Status != StatusFailed || info.DoneCells == info.Cells {
		t.Errorf("after cancel: %+v", info)
	}
}

// A followed run whose events stopped shows as interrupted, and as running again if they
// resume.
func TestFollowedRunGoesStaleAndResumes(t *testing.T) {
	d := newTestDash(t, nil)
	s, _ := experiments.Parse([]byte(specYAML("x", 50, "round-robin", "")), "x.yaml")
	norm, _ := s.Normalized()
	cell := s.Cells()[0].ID
	writeFile(t, filepath.Join(d.runs, "x", "spec.yaml"), string(norm))
	line := func(e experiments.Event) string {
		e.Experiment = "x"
		b, _ := json.Marshal(e)
		return string(b) + "\n"
	}
	smp := sample(1)
	events := writeFile(t, filepath.Join(d.runs, "x", "events.jsonl"), line(experiments.Event{Kind: experiments.ExperimentStart})+
		line(experiments.Event{Kind: experiments.CellStart, Cell: cell})+line(experiments.Event{Kind: experiments.CellSample, Cell: cell, Sample: &smp}))
	old := time.Now().Add(-time.Hour)
	os.Chtimes(events, old, old)
	conn, _, err := d.dial("x", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	v := &view{}
	readUntil := func(status string) {
		t.Helper()
		for v.status != status {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				t.Fatalf("waiting for %s: %v (at %s)", status, err, v.status)
			}
			v.apply(t, msg)
		}
	}
	readUntil(StatusInterrupted)
	f, err := os.OpenFile(events, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	smp = sample(2)
	f.WriteString(line(experiments.Event{Kind: experiments.CellSample, Cell: cell, Sample: &smp}))
	readUntil(StatusRunning)
	f.WriteString(line(experiments.Event{Kind: experiments.CellDone, Cell: cell, Progress: 1}) + line(experiments.Event{Kind: experiments.ExperimentDone, Progress: 1}))
	f.Close()
	readUntil(StatusDone)
	if c := v.cells[cell]; len(c.rows) != 2 || c.status != StatusDone {
		t.Errorf("cell %+v", c)
	}
}
