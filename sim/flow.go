package sim

import (
	"fmt"
	"math"

	"servelab/policies/flow"
	"servelab/serving"
)

// flowState is the cluster router's flow control (Config.FlowControl): requests it holds
// while the instances are saturated, released at scrapes, the only instants its view of
// the instances changes (servelab router pumps its queue after each scrape likewise).
type flowState struct {
	ctl  *flow.Controller
	held map[uint64]*serving.Request
}

func (s *simulation) initFlow() error {
	if s.cfg.FlowControl == nil {
		return nil
	}
	switch {
	case !(s.cfg.ScrapeInterval > 0):
		return fmt.Errorf("sim: flow control needs a positive scrape interval: it releases held requests at scrapes")
	case s.cfg.Disagg != nil:
		return fmt.Errorf("sim: flow control with prefill/decode disaggregation is not supported")
	}
	s.flow = &flowState{ctl: flow.New(*s.cfg.FlowControl), held: map[uint64]*serving.Request{}}
	return nil
}

// flowKey is the request's flow: its fairness id and its objective's priority.
func (s *simulation) flowKey(req *serving.Request) flow.FlowKey {
	return flow.FlowKey{ID: req.FairnessID, Priority: s.cfg.Objectives.Priority(req.Objective)}
}

// flowPending says whether requests are held.
func (s *simulation) flowPending() bool { return s.flow != nil && s.flow.ctl.Len() > 0 }

// nextFlowScrape is the scrape after the last one while requests are held (+Inf when none
// are): held requests are reconsidered at every scrape, arrivals or not.
func (s *simulation) nextFlowScrape() float64 {
	if !s.flowPending() {
		return math.Inf(1)
	}
	return s.lastScrape + s.cfg.ScrapeInterval
}

// flowArrive runs flow control on an arriving request, whose views are built.
func (s *simulation) flowArrive(req *serving.Request) {
	r := flow.Request{ID: req.ID, Flow: s.flowKey(req), Enqueued: req.Arrival}
	d := s.flow.ctl.Arrive(r, req.Arrival, s.views, func(flow.Request) int { return s.cfg.Router.Route(req, s.views) })
	s.flowDecided(d)
	switch d.Outcome {
	case flow.Dispatched:
		s.flowSent(d.Instance)
		s.dispatch(req, d.Instance, req.Arrival)
	case flow.Queued:
		s.flow.held[req.ID] = req
	default:
		s.flowRefuse(req, d.Outcome, req.Arrival)
	}
}

// flowPump evicts held requests past their TTL and dispatches held requests while the
// instances, as just scraped at t, are not saturated.
func (s *simulation) flowPump(t float64) {
	if !s.flowPending() {
		return
	}
	for _, r := range s.flow.ctl.Expire(t) {
		req := s.flow.held[r.ID]
		delete(s.flow.held, r.ID)
		s.flowDecided(flow.Decision{ID: r.ID, Flow: r.Flow, Outcome: flow.EvictedTTL, At: t, Instance: -1})
		s.flowRefuse(req, flow.EvictedTTL, t)
	}
	s.buildViews(t)
	for _, d := range s.flow.ctl.Pump(t, s.views, func(r flow.Request) int { return s.cfg.Router.Route(s.flow.held[r.ID], s.views) }) {
		req := s.flow.held[d.ID]
		delete(s.flow.held, d.ID)
		s.flowDecided(d)
		s.flowSent(d.Instance)
		s.dispatch(req, d.Instance, t)
		if s.err != nil {
			return
		}
	}
}

// flowSent counts a dispatched request as waiting on its instance until the next scrape,
// as the real router does (flow.Controller.Pump).
func (s *simulation) flowSent(i int) {
	if i >= 0 && i < len(s.scraped) {
		s.scraped[i].Waiting++
	}
}

func (s *simulation) flowDecided(d flow.Decision) {
	if s.cfg.OnFlowDecision != nil && s.err == nil {
		s.err = s.cfg.OnFlowDecision(d)
	}
}

// flowRefuse records a request flow control refused, as the real path records its 429 or
// 503: failed, with the router's message.
func (s *simulation) flowRefuse(req *serving.Request, o flow.Outcome, t float64) {
	msg := fmt.Sprintf("%d: %s", o.HTTPStatus(), o.Message())
	s.result.Failures.Add("flow control: "+o.String(), msg)
	s.emit(&serving.Record{
		ID: req.ID, Instance: -1, Arrival: req.Arrival, FirstToken: t, Finish: t, PromptTokens: req.PromptTokens,
		Failed: true, Error: msg, Objective: req.Objective,
	})
}

// buildFlow sets cfg's flow control and objectives from the spec's.
func (c ClusterSpec) buildFlow(cfg *Config) error {
	if len(c.Objectives) > 0 {
		cfg.Objectives = flow.Objectives(c.Objectives)
	}
	if c.FlowControl == "" {
		return nil
	}
	fc, err := flow.ParseConfig(c.FlowControl)
	if err != nil {
		return fmt.Errorf("flow_control: %w", err)
	}
	if !(c.ScrapeInterval > 0) {
		return fmt.Errorf("flow_control: needs a positive scrape_interval_s (it releases held requests at scrapes)")
	}
	cfg.FlowControl = &fc
	return nil
}
