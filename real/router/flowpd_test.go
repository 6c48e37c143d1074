package router

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies"
	"servelab/policies/flow"
	"servelab/policies/route"
)

// newFlowPDRouter routes over one prefill and two decode engines, all with the given
// vllm:num_requests_waiting, with llm-d's P/D configuration and flow control (GIE's
// defaults: queue depth threshold 5; request TTL ttl seconds).
func newFlowPDRouter(t *testing.T, ttl float64, waiting int) (*Router, string, *prometheus.Registry, *pdEngine, []*pdEngine, *decisionLog) {
	t.Helper()
	pre := newPDEngine(t, "p")
	decs := []*pdEngine{newPDEngine(t, "d0"), newPDEngine(t, "d1")}
	for _, e := range append([]*pdEngine{pre}, decs...) {
		e.mu.Lock()
		e.waiting = waiting
		e.mu.Unlock()
	}
	p, err := route.Parse(llmdPDConfig, policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	fc := flow.Defaults
	fc.RequestTTL = ttl
	reg := prometheus.NewRegistry()
	log := &decisionLog{}
	r := readyRouter(t, Config{
		Endpoints: []string{"prefill=" + pre.URL, "decode=" + decs[0].URL, "decode=" + decs[1].URL},
		Policy:    p, Registry: reg, ScrapeInterval: 20 * time.Millisecond, Logf: t.Logf,
		FlowControl: &fc, OnFlowDecision: log.add,
	})
	return r, serve(t, r.Handler()), reg, pre, decs, log
}

// setWaiting sets engines' vllm:num_requests_waiting.
func setWaiting(n int, engines ...*pdEngine) {
	for _, e := range engines {
		e.mu.Lock()
		e.waiting = n
		e.mu.Unlock()
	}
}

// flowPDResult is a response the test's client got.
type flowPDResult struct {
	resp *http.Response
	body string
	err  error
}

func postAsync(base, body string) chan flowPDResult {
	out := make(chan flowPDResult, 1)
	go func() {
		resp, err := http.Post(base+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			out <- flowPDResult{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		out <- flowPDResult{resp: resp, body: string(b), err: err}
	}()
	return out
}

// waitFor polls cond until it holds, failing the test after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFlowControlWithPD: with a P/D policy, flow control measures saturation over the
// decode endpoints: with both decode engines saturated (an idle prefill engine does not
// count) it holds a request; once their scrapes show them free it hands the request to
// the P/D handler, whose decode pick at admission is the endpoint that serves it, through
// both legs.
func TestFlowControlWithPD(t *testing.T) {
	r, base, reg, pre, decs, log := newFlowPDRouter(t, 0, 10)
	setWaiting(0, pre) // only the decode endpoints are saturated
	done := postAsync(base, `{"model":"m","prompt":"`+longPrompt+`","max_tokens":5}`)
	waitFor(t, "the request to be held", func() bool { return r.flowLen() == 1 })
	if p, d := pre.requests(); len(p)+len(d) != 0 {
		t.Fatalf("the prefill engine got %d prefill and %d other requests while the request was held", len(p), len(d))
	}
	setWaiting(0, decs...)
	var res flowPDResult
	select {
	case res = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the held request was not served after saturation cleared")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.resp.StatusCode, res.body)
	}
	if got, want := res.resp.Header.Get(PrefillEndpointHeader), strings.TrimPrefix(pre.URL, "http://"); got != want {
		t.Errorf("prefill endpoint %q, want %q", got, want)
	}
	if p, _ := pre.requests(); len(p) != 1 {
		t.Errorf("the prefill engine got %d prefill legs, want 1", len(p))
	}
	log.mu.Lock()
	ds := append([]flow.Decision(nil), log.ds...)
	log.mu.Unlock()
	if len(ds) != 2 || ds[0].Outcome != flow.Queued || ds[1].Outcome != flow.Dispatched {
		t.Fatalf("decisions %+v, want queued then dispatched", ds)
	}
	// The decision's instance indexes the decode candidates (the decode engines, in order).
	d := decs[ds[1].Instance]
	if got, want := res.resp.Header.Get("X-Engine"), d.name; got != want {
		t.Errorf("served by %q, the flow controller's pick was %q", got, want)
	}
	if _, dl := d.requests(); len(dl) != 1 || dl[0].Body["kv_transfer_params"] == nil {
		t.Errorf("decode engine %s got %d requests (%+v), want one decode leg with kv_transfer_params", d.name, len(dl), dl)
	}
	for _, o := range []string{"queued", "dispatched"} {
		if v := gathered(t, reg, "servelab_router_flow_outcomes_total", map[string]string{"outcome": o}); v != 1 {
			t.Errorf("servelab_router_flow_outcomes_total{outcome=%q} = %v, want 1", o, v)
		}
	}
}

// TestFlowControlWithPDEvictsAfterTTL: a request held while the decode endpoints stay
// saturated is answered 503 after the TTL, and neither leg is sent.
func TestFlowControlWithPDEvictsAfterTTL(t *testing.T) {
	_, base, reg, pre, decs, _ := newFlowPDRouter(t, 0.2, 10)
	var res flowPDResult
	select {
	case res = <-postAsync(base, `{"model":"m","prompt":"`+longPrompt+`","max_tokens":5}`):
	case <-time.After(60 * time.Second):
		t.Fatal("the held request was not evicted")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(res.body, flow.EvictedTTL.Message()) {
		t.Errorf("status %d %s, want 503 %q", res.resp.StatusCode, res.body, flow.EvictedTTL.Message())
	}
	for _, e := range append([]*pdEngine{pre}, decs...) {
		if p, d := e.requests(); len(p)+len(d) != 0 {
			t.Errorf("engine %s got %d prefill and %d other requests", e.name, len(p), len(d))
		}
	}
	if v := gathered(t, reg, "servelab_router_flow_outcomes_total", map[string]string{"outcome": "evicted-ttl"}); v != 1 {
		t.Errorf("servelab_router_flow_outcomes_total{outcome=\"evicted-ttl\"} = %v, want 1", v)
	}
}

// TestFlowControlWithPDIgnoresPrefillLoad: a saturated prefill engine does not hold
// requests whose decode endpoints are free (saturation is measured over the decode
// candidates, the pods the request is scheduled to).
func TestFlowControlWithPDIgnoresPrefillLoad(t *testing.T) {
	r, base, _, pre, _, log := newFlowPDRouter(t, 0, 0)
	setWaiting(100, pre)
	// Over all three endpoints the pool would be saturated (mean 100/5/3 > 1).
	waitFor(t, "the router to scrape the prefill engine's load", func() bool {
		return r.snapshot()[0].view().Waiting == 100
	})
	resp, body := post(t, base, "/v1/completions", `{"model":"m","prompt":"`+longPrompt+`","max_tokens":5}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.ds) != 1 || log.ds[0].Outcome != flow.Dispatched {
		t.Errorf("decisions %+v, want one dispatched at once", log.ds)
	}
}

// TestFlowControlWithPDThroughExtProc: behind a gateway, a request flow control admits with
// a P/D policy gets the handler's picks at admission: one destination, the decode endpoint
// the controller counted, and the prefill endpoint in x-prefiller-host-port.
func TestFlowControlWithPDThroughExtProc(t *testing.T) {
	r, _, _, pre, decs, log := newFlowPDRouter(t, 0, 0)
	conn := extProcClient(t, r, ExtProcConfig{})
	g := openStream(t, conn)
	g.send(requestHeaders("/v1/completions", false, nil), requestBody(`{"model":"m","prompt":"`+longPrompt+`","max_tokens":5}`, true))
	resp := g.recv()
	common := resp.GetRequestHeaders().GetResponse()
	dest := destination(t, resp, common)
	log.mu.Lock()
	ds := append([]flow.Decision(nil), log.ds...)
	log.mu.Unlock()
	if len(ds) != 1 || ds[0].Outcome != flow.Dispatched || ds[0].Instance < 0 || ds[0].Instance >= len(decs) {
		t.Fatalf("decisions %+v, want one dispatched to a decode endpoint", ds)
	}
	if want := strings.TrimPrefix(decs[ds[0].Instance].URL, "http://"); dest != want {
		t.Errorf("destination %q, want the flow controller's decode pick %q alone", dest, want)
	}
	if got, want := setHeaders(t, common.GetHeaderMutation())[PrefillEndpointHeader], strings.TrimPrefix(pre.URL, "http://"); got != want {
		t.Errorf("%s %q, want %q", PrefillEndpointHeader, got, want)
	}
}

// TestFlowScoringRecorded: a request flow control dispatches counts its one pick in
// servelab_router_scoring_seconds, with a P/D policy (the handler's run at admission) and
// without (the policy's), as a request routed without flow control does.
func TestFlowScoringRecorded(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (string, *prometheus.Registry)
	}{
		{"pd", func(t *testing.T) (string, *prometheus.Registry) {
			_, base, reg, _, _, _ := newFlowPDRouter(t, 0, 0)
			return base, reg
		}},
		{"plain", func(t *testing.T) (string, *prometheus.Registry) {
			ep := newGauged(t)
			fc := flow.Defaults
			reg := prometheus.NewRegistry()
			r := readyRouter(t, Config{
				Endpoints: []string{ep.URL}, Policy: mustRoute(t, "least-request"), Registry: reg,
				ScrapeInterval: 20 * time.Millisecond, FlowControl: &fc, Logf: t.Logf,
			})
			return serve(t, r.Handler()), reg
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, reg := tc.start(t)
			resp, body := post(t, base, "/v1/completions", `{"model":"m","prompt":"`+longPrompt+`","max_tokens":5}`)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if n := histogramCount(t, reg, "servelab_router_scoring_seconds"); n != 1 {
				t.Errorf("servelab_router_scoring_seconds has %d samples, want 1 (the admission's pick)", n)
			}
		})
	}
}

// histogramCount is the sample count of the unlabelled histogram name in reg.
func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("no histogram %s", name)
	return 0
}
