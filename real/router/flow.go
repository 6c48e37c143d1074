package router

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies/flow"
	"servelab/policies/route"
	"servelab/serving"
)

// flowGate is the router's flow control (Config.FlowControl): policies/flow's Controller,
// the simulator's, over the endpoints' scraped views. Requests it holds wait in their
// handlers; it reconsiders them after every scrape (the only time its views change, as in
// the simulator) and evicts those past the TTL.
type flowGate struct {
	ctl     *flow.Controller
	start   time.Time // the controller's clock: seconds since start
	waiters map[uint64]*flowWaiter
	kick    chan struct{}

	queued   *prometheus.GaugeVec
	outcomes *prometheus.CounterVec
}

type flowWaiter struct {
	req  *serving.Request
	flow flow.FlowKey
	done chan flowResult // receives once, buffered
}

type flowResult struct {
	outcome flow.Outcome
	e       *endpoint
	// p is the prefill endpoint the P/D handler picked with e, its decode endpoint (nil:
	// no P/D policy, or e runs the request alone).
	p  *endpoint
	at time.Time
}

// otherObjectiveHeader is llm-d's name for GIE's objective header, read when GIE's is absent.
const otherObjectiveHeader = "x-llm-d-inference-objective"

func (r *Router) initFlow() {
	if r.cfg.FlowControl == nil {
		return
	}
	g := &flowGate{
		ctl: flow.New(*r.cfg.FlowControl), start: time.Now(),
		waiters: map[uint64]*flowWaiter{}, kick: make(chan struct{}, 1),
		queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "servelab_router_flow_queued_requests", Help: "Requests flow control holds, by priority.",
		}, []string{"priority"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "servelab_router_flow_outcomes_total", Help: "Flow-control decisions, by outcome (dispatched, queued, rejected-saturated, rejected-capacity, evicted-ttl) and priority.",
		}, []string{"outcome", "priority"}),
	}
	r.cfg.Registry.MustRegister(g.queued, g.outcomes)
	r.flow = g
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.cfg.ScrapeInterval)
		defer t.Stop()
		for {
			select {
			case <-r.ctx.Done():
				return
			case <-g.kick:
			case <-t.C:
			}
			r.flowPump()
		}
	}()
}

// flowScraped tells flow control an endpoint's gauges were read.
func (r *Router) flowScraped() {
	if r.flow != nil {
		select {
		case r.flow.kick <- struct{}{}:
		default:
		}
	}
}

// now is the controller's clock.
func (g *flowGate) now() float64 { return time.Since(g.start).Seconds() }

// flowCands are the endpoints flow control's views (r.views) describe, in order, and with
// a P/D policy the prefill profile's (r.pviews).
type flowCands struct{ d, p []*endpoint }

// flowCandidates builds the views of the endpoints a request may go to; r.mu is held.
// Saturation is measured over the decode candidates, with or without a P/D policy (the
// decode filter's endpoints, as pickPD's decode profile sees them): see flowRoute.
func (r *Router) flowCandidates() flowCands {
	r.views, r.pviews = r.views[:0], r.pviews[:0]
	var c flowCands
	filter := route.DecodeRoleFilter()
	if r.pd != nil {
		filter = r.pd.DecodeFilter
	}
	for _, e := range r.endpoints {
		if !e.healthy() {
			continue
		}
		if filter.Allows(e.role) {
			r.views = append(r.views, e.view())
			c.d = append(c.d, e)
		}
		if r.pd != nil && r.pd.PrefillFilter.Allows(e.role) {
			r.pviews = append(r.pviews, e.view())
			c.p = append(c.p, e)
		}
	}
	// The policy sees the candidates as indexed 0..n-1, as pickAt's does.
	return c
}

// flowDecided records a decision; r.mu is held.
func (r *Router) flowDecided(d flow.Decision) {
	r.flow.outcomes.WithLabelValues(d.Outcome.String(), strconv.Itoa(d.Flow.Priority)).Inc()
	if r.cfg.OnFlowDecision != nil {
		r.cfg.OnFlowDecision(d)
	}
}

// flowRoute routes req over the current candidate views and counts it as waiting on the
// endpoint until its next scrape, as the simulator does; r.mu is held. It returns the
// endpoint's index among the decode candidates and, with a P/D policy, the prefill
// endpoint (nil: the decode endpoint runs it alone).
//
// With a P/D policy flow control runs as in llm-d's EPP: the flow controller holds a
// request while the saturation detector finds the decode candidates saturated (GIE's
// utilization detector reads the candidate pods it is given; in llm-d the request is
// scheduled to its decode pod, which keeps it and its KV for the whole decode, the
// prefill pod seeing only the max_tokens-1 leg), then the scheduler's pd-profile-handler
// picks the decode endpoint, asks the decider and picks the prefill endpoint: this one
// run is the pick servePD's first attempt uses. The simulator does the same (sim/flow.go).
func (r *Router) flowRoute(req *serving.Request, cands flowCands) (int, *endpoint) {
	if len(cands.d) == 0 {
		return -1, nil
	}
	var i, j int
	// The policy's time counts as the router's scoring, as pickAt's and pickPD's do: with
	// flow control this is the pick the request's first attempt uses.
	start := time.Now()
	if r.pd != nil {
		i, j = r.pd.Pick(req, r.views, r.pviews)
	} else {
		i, j = r.cfg.Policy.Route(req, r.views), -1
	}
	r.scoring.Observe(time.Since(start).Seconds())
	if i < 0 || i >= len(cands.d) {
		i = 0
	}
	e := cands.d[i]
	e.mu.Lock()
	e.waiting++
	e.mu.Unlock()
	var p *endpoint
	if j >= 0 && j < len(cands.p) {
		// The prefill endpoint too counts the request until its next scrape, in the
		// views later picks of this pump read as well.
		p = cands.p[j]
		p.mu.Lock()
		p.waiting++
		p.mu.Unlock()
		r.pviews[j].Waiting++
	}
	return i, p
}

// flowObjective resolves a request's objective, GIE's way: the objective header names it,
// else a model name that is an objective's name; and its fairness id from its header. A
// known objective's priority goes into the body as vLLM's priority field when the body
// has none (flow.EnginePriority), so the engine's priority batch policy orders it too.
func (r *Router) flowObjective(in *http.Request, body []byte, rr *serving.Request) []byte {
	name := in.Header.Get(flow.ObjectiveHeader)
	if name == "" {
		name = in.Header.Get(otherObjectiveHeader)
	}
	return r.resolveObjective(name, in.Header.Get(flow.FairnessIDHeader), body, rr)
}

// resolveObjective sets rr's objective (the header's name, else the body's model when it
// names an objective) and fairness id, and returns the body with the objective's engine
// priority (see flowObjective).
func (r *Router) resolveObjective(name, fairness string, body []byte, rr *serving.Request) []byte {
	var parsed struct {
		Model    string          `json:"model"`
		Priority json.RawMessage `json:"priority"`
	}
	json.Unmarshal(body, &parsed)
	if _, ok := r.cfg.Objectives[parsed.Model]; name == "" && ok {
		name = parsed.Model
	}
	rr.Objective, rr.FairnessID = name, fairness
	p, known := r.cfg.Objectives[name]
	if !known || parsed.Priority != nil || r.cfg.NoEnginePriority {
		return body
	}
	rr.Priority = flow.EnginePriority(p)
	return withPriority(body, rr.Priority)
}

// withPriority adds "priority": p to a JSON object body.
func withPriority(body []byte, p int) []byte {
	t := bytes.TrimLeft(body, " \t\r\n")
	if len(t) == 0 || t[0] != '{' {
		return body
	}
	field := `"priority":` + strconv.Itoa(p)
	rest := bytes.TrimLeft(t[1:], " \t\r\n")
	out := make([]byte, 0, len(body)+len(field)+2)
	out = append(out, '{')
	out = append(out, field...)
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

// flowAdmit runs flow control on a request: it returns the endpoint to send it to (with a
// P/D policy, the decode endpoint and the prefill endpoint, nil for decode alone) and when
// it was routed, or, for a refused request, writes the refusal and returns false.
func (r *Router) flowAdmit(ctx context.Context, w http.ResponseWriter, rr *serving.Request) (flowResult, bool) {
	res, gone := r.flowWait(ctx, rr)
	switch {
	case gone:
		return res, false // the client went away
	case res.outcome != flow.Dispatched:
		flowRefuse(w, res.outcome)
		return res, false
	case res.e == nil:
		writeError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "no healthy endpoint left to try")
		return res, false
	}
	return res, true
}

// flowWait runs flow control on a request and waits for its outcome: dispatched (to res.e;
// nil when no endpoint was healthy) or refused; gone reports a client that went away
// while the request was held.
func (r *Router) flowWait(ctx context.Context, rr *serving.Request) (res flowResult, gone bool) {
	g := r.flow
	key := flow.FlowKey{ID: rr.FairnessID, Priority: r.cfg.Objectives.Priority(rr.Objective)}
	r.mu.Lock()
	now := g.now()
	cands := r.flowCandidates()
	routedAt := time.Now()
	var pre *endpoint
	d := g.ctl.Arrive(flow.Request{ID: rr.ID, Flow: key, Enqueued: now}, now, r.views,
		func(flow.Request) int {
			i, p := r.flowRoute(rr, cands)
			pre = p
			return i
		})
	r.flowDecided(d)
	if d.Outcome != flow.Queued {
		r.mu.Unlock()
		res = flowResult{outcome: d.Outcome, at: routedAt}
		if d.Outcome == flow.Dispatched && d.Instance >= 0 {
			res.e, res.p = cands.d[d.Instance], pre
		}
		return res, false
	}
	wt := &flowWaiter{req: rr, flow: key, done: make(chan flowResult, 1)}
	g.waiters[rr.ID] = wt
	g.queued.WithLabelValues(strconv.Itoa(key.Priority)).Inc()
	r.mu.Unlock()
	select {
	case res := <-wt.done:
		return res, false
	case <-ctx.Done():
		r.mu.Lock()
		removed := g.ctl.Remove(rr.ID, key)
		if removed {
			delete(g.waiters, rr.ID)
			g.queued.WithLabelValues(strconv.Itoa(key.Priority)).Dec()
		}
		r.mu.Unlock()
		if removed {
			return flowResult{at: time.Now()}, true
		}
		return <-wt.done, false // decided meanwhile
	}
}

// flowRefuse answers a refused request: 429 (with Retry-After) or 503, in OpenAI's shape.
func flowRefuse(w http.ResponseWriter, o flow.Outcome) {
	status := o.HTTPStatus()
	typ := "ServiceUnavailableError"
	if status == http.StatusTooManyRequests {
		typ = "RateLimitError"
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, status, typ, o.Message())
}

// flowPump evicts held requests past the TTL and dispatches held requests while the
// endpoints, as last scraped, are not saturated.
func (r *Router) flowPump() {
	g := r.flow
	r.mu.Lock()
	defer r.mu.Unlock()
	if g.ctl.Len() == 0 {
		return
	}
	now := g.now()
	at := time.Now()
	for _, q := range g.ctl.Expire(now) {
		d := flow.Decision{ID: q.ID, Flow: q.Flow, Outcome: flow.EvictedTTL, At: now, Instance: -1}
		r.flowDecided(d)
		r.flowRelease(q.ID, flowResult{outcome: flow.EvictedTTL, at: at})
	}
	cands := r.flowCandidates()
	pre := map[uint64]*endpoint{}
	for _, d := range g.ctl.Pump(now, r.views, func(q flow.Request) int {
		i, p := r.flowRoute(g.waiters[q.ID].req, cands)
		if p != nil {
			pre[q.ID] = p
		}
		return i
	}) {
		r.flowDecided(d)
		res := flowResult{outcome: flow.Dispatched, at: at}
		if d.Instance >= 0 {
			res.e, res.p = cands.d[d.Instance], pre[d.ID]
		}
		r.flowRelease(d.ID, res)
	}
}

// flowRelease hands a held request its result; r.mu is held.
func (r *Router) flowRelease(id uint64, res flowResult) {
	g := r.flow
	wt := g.waiters[id]
	delete(g.waiters, id)
	g.queued.WithLabelValues(strconv.Itoa(wt.flow.Priority)).Dec()
	wt.done <- res
}

// flowLen is the number of held requests.
func (r *Router) flowLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flow.ctl.Len()
}
