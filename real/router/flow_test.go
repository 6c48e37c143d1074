package router

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/policies/flow"
	"servelab/policies/route"
	"servelab/serving"
	"servelab/sim"
	"servelab/sim/latency"
	"servelab/traces"
)

// gauged is an endpoint whose /metrics serves gauges the test sets, and whose completions
// answer at once, recording each body.
type gauged struct {
	*httptest.Server
	mu     sync.Mutex
	view   serving.InstanceView
	bodies []string
}

func newGauged(t *testing.T) *gauged {
	t.Helper()
	g := &gauged{}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		g.mu.Lock()
		defer g.mu.Unlock()
		fmt.Fprintf(w, "vllm:num_requests_waiting %d\nvllm:num_requests_running %d\nvllm:kv_cache_usage_perc %s\n",
			g.view.Waiting, g.view.Running, strconv.FormatFloat(g.view.KVUsage, 'g', -1, 64))
	})
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		g.bodies = append(g.bodies, string(b))
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"choices":[{"text":"x"}]}`)
	})
	g.Server = httptest.NewServer(mux)
	t.Cleanup(g.Close)
	return g
}

func (g *gauged) set(v serving.InstanceView) {
	g.mu.Lock()
	g.view = v
	g.mu.Unlock()
}

// decisionLog collects flow decisions, safe for the router's goroutines.
type decisionLog struct {
	mu sync.Mutex
	ds []flow.Decision
}

func (l *decisionLog) add(d flow.Decision) {
	l.mu.Lock()
	l.ds = append(l.ds, d)
	l.mu.Unlock()
}

func (l *decisionLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ds)
}

// TestFlowSameDecisionsAsSimulator runs one two-class trace through the simulator's
// router with flow control, then replays it through servelab router: endpoints whose
// /metrics serve, at each of the simulator's scrapes, the gauges the simulator's router
// read then, and the trace's requests sent in the simulator's order with their objective
// and fairness-id headers. Both routers take the same decisions — dispatched at once,
// held, refused (429), and, at each scrape, which held requests go, in which order, to
// which endpoint.
func TestFlowSameDecisionsAsSimulator(t *testing.T) {
	rows, objectives, fc, env, newRoute := flowSameDecisionsSetup(t)

	// The simulator: its decisions, and the events to replay in its order.
	type event struct {
		scrape bool
		gauges []serving.InstanceView
		row    int
	}
	var events []event
	var simDecisions []flow.Decision
	next := 0
	cfg := sim.Config{
		Instances: 2, Router: newRoute(),
		NewBatch: func(int) (batch.Policy, error) {
			p, _, err := batch.Registry.Parse("vllm:max_num_seqs=8", env)
			return p, err
		},
		KVBlocks: 512, BlockSize: 16,
		Latency:        latency.NewLinear(latency.LinearCoefficients{Intercept: 0.01, PrefillToken: 1e-4, DecodeSeq: 1e-3}),
		ScrapeInterval: 0.05,
		FlowControl:    &fc, Objectives: objectives,
		OnFlowDecision: func(d flow.Decision) error {
			// An arrival's decision comes as the simulator reads its row.
			if d.At == rows[d.ID].Arrival && int(d.ID) == next {
				events = append(events, event{row: next})
				next++
			}
			simDecisions = append(simDecisions, d)
			return nil
		},
		OnScrape: func(_ float64, g []serving.InstanceView) error {
			events = append(events, event{scrape: true, gauges: append([]serving.InstanceView(nil), g...)})
			return nil
		},
		SLO: metrics.SLO{},
	}
	if _, err := sim.Run(cfg, &rowReader{rows: rows}); err != nil {
		t.Fatal(err)
	}
	if next != len(rows) {
		t.Fatalf("the simulator decided %d arrivals of %d", next, len(rows))
	}
	outcomes := map[flow.Outcome]int{}
	for _, d := range simDecisions {
		outcomes[d.Outcome]++
	}
	if outcomes[flow.Queued] == 0 || outcomes[flow.RejectedSaturated] == 0 || outcomes[flow.Dispatched] == 0 {
		t.Fatalf("the trace does not exercise flow control: %v", outcomes)
	}

	t.Logf("simulator outcomes: %v", outcomes)
	// servelab router, replaying them.
	eps := []*gauged{newGauged(t), newGauged(t)}
	var log decisionLog
	r := readyRouter(t, Config{
		Endpoints: []string{eps[0].URL, eps[1].URL}, Policy: newRoute(),
		ScrapeInterval: time.Hour, // the test scrapes
		FlowControl:    &fc, Objectives: objectives, OnFlowDecision: log.add,
		Logf: t.Logf,
	})
	ctx := t.Context()
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	var wg sync.WaitGroup
	codes := make([]int, len(rows))
	for _, ev := range events {
		if ev.scrape {
			for i, e := range r.snapshot() {
				eps[i].set(ev.gauges[i])
				if err := r.scrapeOnce(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			r.flowPump()
			continue
		}
		row := rows[ev.row]
		before := log.len()
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/completions", strings.NewReader(`{"model":"m","prompt":"hi","max_tokens":1}`))
			req.Header.Set(flow.ObjectiveHeader, row.Objective)
			req.Header.Set(flow.FairnessIDHeader, row.FairnessID)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[ev.row] = resp.StatusCode
		}()
		// The next event waits for this request's decision.
		for log.len() == before {
			if ctx.Err() != nil {
				t.Fatalf("no decision for request %d", ev.row)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	real := log.ds
	for k := range real {
		real[k].ID-- // the router numbers requests from 1, the simulator from 0
	}
	if d := cmp.Diff(simDecisions, real, cmpopts.IgnoreFields(flow.Decision{}, "At")); d != "" {
		t.Errorf("decisions (-simulator +router):\n%s", d)
	}
	for i, c := range codes {
		want := http.StatusOK
		for _, d := range simDecisions {
			if d.ID == uint64(i) && d.Outcome.HTTPStatus() != 0 {
				want = d.Outcome.HTTPStatus()
			}
		}
		if c != want {
			t.Errorf("request %d (%s): status %d, want %d", i, rows[i].Objective, c, want)
		}
	}
	// The engines got each request's priority, vLLM's way round.
	for _, e := range eps {
		for _, b := range e.bodies {
			if !strings.Contains(b, `"priority":-2`) && !strings.Contains(b, `"priority":0`) && !strings.Contains(b, `"priority":1`) {
				t.Errorf("a forwarded body without the objective's priority: %s", b)
			}
		}
	}
}

type rowReader struct {
	rows []traces.Row
	next int
}

func (r *rowReader) Next() (traces.Row, error) {
	if r.next == len(r.rows) {
		return traces.Row{}, io.EOF
	}
	r.next++
	return r.rows[r.next-1], nil
}

func TestWithPriority(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"model":"m"}`, `{"priority":-1,"model":"m"}`},
		{` { } `, `{"priority":-1} `},
		{`{}`, `{"priority":-1}`},
		{`[1]`, `[1]`},
	} {
		if got := string(withPriority([]byte(tc.in), -1)); got != tc.want {
			t.Errorf("withPriority(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestFlowHeldRequests: on saturated endpoints a critical request is held, a client that
// goes away leaves the queue, a held request past the TTL is answered 503, and a held
// request goes out once a scrape shows room.
func TestFlowHeldRequests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The TTL: 503.
	_, _, send := heldRouter(ctx, t, 0.3)
	if code, err := send(ctx); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("a request held past the TTL: status %d, %v; want 503", code, err)
	}
	// The rest hold requests while the test acts on them: a TTL far longer than the
	// test, so that however slowly a loaded machine runs it they are still queued.
	r, ep, send := heldRouter(ctx, t, 60)
	waitQueued := func(what string, n int) {
		t.Helper()
		for r.flowLen() != n {
			if ctx.Err() != nil {
				t.Fatalf("%s: %d requests queued, want %d", what, r.flowLen(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// A client that goes away while held leaves the queue.
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { send(cctx); close(done) }()
	waitQueued("a request held", 1)
	ccancel()
	<-done
	waitQueued("the cancelled request gone", 0)
	// Room appears: a held request goes out, with the objective's priority (1, vLLM's -1).
	codes := make(chan int, 1)
	go func() { c, _ := send(ctx); codes <- c }()
	waitQueued("a request held", 1)
	ep.set(serving.InstanceView{Waiting: 0})
	if c := <-codes; c != http.StatusOK {
		t.Fatalf("released request: status %d", c)
	}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if len(ep.bodies) != 1 || !strings.Contains(ep.bodies[0], `"priority":-1`) {
		t.Errorf("the endpoint got %q, want one body with priority -1", ep.bodies)
	}
}

// heldRouter starts a router with flow control (request TTL ttl seconds) in front of one
// saturated endpoint, and returns it, the endpoint, and a function that sends it a
// critical request and returns the status.
func heldRouter(ctx context.Context, t *testing.T, ttl float64) (*Router, *gauged, func(context.Context) (int, error)) {
	t.Helper()
	ep := newGauged(t)
	ep.set(serving.InstanceView{Waiting: 10})
	fc := flow.Defaults
	fc.RequestTTL = ttl
	var log decisionLog
	r, err := New(Config{
		Endpoints: []string{ep.URL}, Policy: mustRoute(t, "least-request"), ScrapeInterval: 20 * time.Millisecond,
		FlowControl: &fc, Objectives: flow.Objectives{"critical": 1}, OnFlowDecision: log.add, Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)
	send := func(ctx context.Context) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/completions", strings.NewReader(`{"model":"critical","prompt":"hi"}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	return r, ep, send
}

func mustRoute(t *testing.T, spec string) route.Policy {
	t.Helper()
	p, _, err := route.Registry.Parse(spec, policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestObjectivePriorityWithoutFlowControl: objectives alone set the engines' priority; with
// NoEnginePriority, or a body that has one, the body goes as sent.
func TestObjectivePriorityWithoutFlowControl(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
		noPriority       bool
	}{
		{"set", `{"model":"m","prompt":"hi"}`, `"priority":-3`, false},
		{"kept", `{"model":"m","prompt":"hi","priority":7}`, `"priority":7`, false},
		{"off", `{"model":"m","prompt":"hi"}`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := newGauged(t)
			r := readyRouter(t, Config{
				Endpoints: []string{ep.URL}, Policy: mustRoute(t, "least-request"),
				Objectives: flow.Objectives{"gold": 3}, NoEnginePriority: tc.noPriority, Logf: t.Logf,
			})
			srv := httptest.NewServer(r.Handler())
			defer srv.Close()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/completions", strings.NewReader(tc.body))
			req.Header.Set(flow.ObjectiveHeader, "gold")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			ep.mu.Lock()
			defer ep.mu.Unlock()
			if len(ep.bodies) != 1 {
				t.Fatalf("%d bodies forwarded", len(ep.bodies))
			}
			if tc.want == "" && strings.Contains(ep.bodies[0], "priority") || tc.want != "" && !strings.Contains(ep.bodies[0], tc.want) {
				t.Errorf("forwarded %s, want %q in it", ep.bodies[0], tc.want)
			}
		})
	}
}

// TestFlowExtProc: behind a gateway (GIE's ext_proc protocol) flow control refuses a
// sheddable request with an immediate 429 while saturated, holds a critical one, and
// answers it with its destination once a scrape shows room.
func TestFlowExtProc(t *testing.T) {
	ep := newGauged(t)
	ep.set(serving.InstanceView{Waiting: 10})
	fc := flow.Defaults
	r := readyRouter(t, Config{
		Endpoints: []string{ep.URL}, Policy: mustRoute(t, "least-request"), ScrapeInterval: 10 * time.Millisecond,
		FlowControl: &fc, Objectives: flow.Objectives{"critical": 1, "sheddable": -1}, Logf: t.Logf,
	})
	ctx := t.Context()
	conn := extProcClient(t, r, ExtProcConfig{})
	body := `{"model":"m","prompt":"hi"}`

	g := openStream(t, conn)
	g.send(requestHeaders("/v1/completions", false, nil, flow.ObjectiveHeader, "sheddable"), requestBody(body, true))
	if code, _ := immediateStatus(t, g); code != http.StatusTooManyRequests {
		t.Fatalf("sheddable while saturated: status %d, want 429", code)
	}

	g = openStream(t, conn)
	g.send(requestHeaders("/v1/completions", false, nil, flow.ObjectiveHeader, "critical", flow.FairnessIDHeader, "a"), requestBody(body, true))
	for r.flowLen() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the critical request was not held")
		}
		time.Sleep(time.Millisecond)
	}
	ep.set(serving.InstanceView{Waiting: 0})
	resp := g.recv()
	if dest := destination(t, resp, resp.GetRequestHeaders().GetResponse()); !strings.Contains(ep.URL, dest) {
		t.Errorf("destination %q, want the endpoint %s", dest, ep.URL)
	}
}

// flowSameDecisionsSetup is what the simulator-agreement tests share: a bursty trace of three
// objectives (two tenants in the critical one), their priorities, a flow control that holds
// past three waiting requests with round-robin fairness, and least-request routing.
func flowSameDecisionsSetup(t *testing.T) ([]traces.Row, flow.Objectives, flow.Config, policies.Env, func() route.Policy) {
	t.Helper()
	gen, err := traces.NewSynth(traces.SynthConfig{
		Requests: 120, Rate: 150, InputMean: 200, OutputMean: 30, InputSigma: 0.3, OutputSigma: 0.3, Seed: 9,
		Classes: []traces.SynthClass{{Name: "critical", Share: 0.6, Tenants: 2}, {Name: "standard", Share: 0.2}, {Name: "sheddable", Share: 0.2}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var rows []traces.Row
	for {
		r, err := gen.Next()
		if err != nil {
			break
		}
		rows = append(rows, r)
	}
	objectives := flow.Objectives{"critical": 2, "standard": 0, "sheddable": -1}
	fc := flow.Defaults
	fc.QueueDepthThreshold, fc.Fairness = 3, "round-robin"
	env := policies.Env{Seed: 1, BlockSize: 16}
	newRoute := func() route.Policy {
		p, _, err := route.Registry.Parse("least-request", env)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	return rows, objectives, fc, env, newRoute
}
