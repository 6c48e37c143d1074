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
	at      time.Time
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

// flowCandidates builds the views of the endpoints a request may go to; r.mu is held.
func (r *Router) flowCandidates() []*endpoint {
	r.views = r.views[:0]
	var cands []*endpoint
	for _, e := range r.endpoints {
		if !e.healthy() || !route.DecodeRoleFilter().Allows(e.role) {
			continue
		}
		r.views = append(r.views, e.view())
		cands = append(cands, e)
	}
	// The policy sees the candidates as indexed 0..n-1, as pickAt's does.
	return cands
}

// flowDecided records a decision; r.mu is held.
func (r *Router) flowDecided(d flow.Decision) {
	r.flow.outcomes.WithLabelValues(d.Outcome.String(), strconv.Itoa(d.Flow.Priority)).Inc()
	if r.cfg.OnFlowDecision != nil {
		r.cfg.OnFlowDecision(d)
	}
}

// flowRoute routes req over the current candidate views and counts it as waiting on the
// endpoint until its next scrape, as the simulator does; r.mu is held.
func (r *Router) flowRoute(req *serving.Request, cands []*endpoint) int {
	if len(cands) == 0 {
		return -1
	}
	i := r.cfg.Policy.Route(req, r.views)
	if i < 0 || i >= len(cands) {
		i = 0
	}
	e := cands[i]
	e.mu.Lock()
	e.waiting++
	e.mu.Unlock()
	return i
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

// flowAdmit runs flow control on a request: it returns the endpoint to send it to and when
// it was routed, or, for a refused request, writes the refusal and returns nil.
func (r *Router) flowAdmit(ctx context.Context, w http.ResponseWriter, rr *serving.Request) (*endpoint, time.Time, bool) {
	res, gone := r.flowWait(ctx, rr)
	switch {
	case gone:
		return nil, res.at, false // the client went away
	case res.outcome != flow.Dispatched:
		flowRefuse(w, res.outcome)
		return nil, res.at, false
	case res.e == nil:
		writeError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "no healthy endpoint left to try")
		return nil, res.at, false
	}
	return res.e, res.at, true
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
	d := g.ctl.Arrive(flow.Request{ID: rr.ID, Flow: key, Enqueued: now}, now, r.views,
		func(flow.Request) int { return r.flowRoute(rr, cands) })
	r.flowDecided(d)
	if d.Outcome != flow.Queued {
		r.mu.Unlock()
		res = flowResult{outcome: d.Outcome, at: routedAt}
		if d.Outcome == flow.Dispatched && d.Instance >= 0 {
			res.e = cands[d.Instance]
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
	for _, d := range g.ctl.Pump(now, r.views, func(q flow.Request) int { return r.flowRoute(g.waiters[q.ID].req, cands) }) {
		r.flowDecided(d)
		res := flowResult{outcome: flow.Dispatched, at: at}
		if d.Instance >= 0 {
			res.e = cands[d.Instance]
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
