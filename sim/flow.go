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
	if s.pd != nil {
		s.pdViews()
		var pick pdPick
		d := s.flow.ctl.Arrive(r, req.Arrival, s.pd.dviews, func(flow.Request) int { pick = s.pickPD(req); return pick.d })
		s.flowPD(req, d, pick, req.Arrival)
		return
	}
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

// With prefill/decode disaggregation flow control gates admission as llm-d's EPP does:
// its flow controller holds the request while the saturation detector finds the pool
// saturated, then hands it to the scheduler, whose pd-profile-handler runs the decode
// profile, the decider and the prefill profile. Saturation is measured over the decode
// profile's candidates (the controller gets the decode views): GIE's utilization detector
// reads the candidate pods the request may be scheduled to (pkg/epp/saturationdetector,
// IsSaturated over the pods it is given), and in llm-d the request is scheduled to its
// decode pod, which keeps it and its KV for the whole decode (the prefill pod sees only
// the max_tokens-1 leg). The controller's pick is the handler's one run, so the decode
// instance it counts as waiting is the one the request goes to.

// flowPD completes a flow-control decision d on req under disaggregation; pick is the
// handler's run when d dispatched it.
func (s *simulation) flowPD(req *serving.Request, d flow.Decision, pick pdPick, t float64) {
	if d.Outcome == flow.Dispatched {
		if pick.err != nil {
			s.fail(pick.err)
			return
		}
		d.Instance = pick.decode // the decision names the cluster's instance, as without P/D
	}
	s.flowDecided(d)
	switch d.Outcome {
	case flow.Dispatched:
		s.flowSent(pick.decode)
		if pick.prefill >= 0 {
			s.flowSent(pick.prefill)
		}
		s.dispatch(pick.req, pick.target, t)
	case flow.Queued:
		s.flow.held[req.ID] = req
	default:
		s.flowRefuse(req, d.Outcome, t)
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
	if s.pd != nil {
		s.pdViews()
		picks := map[uint64]pdPick{}
		for _, d := range s.flow.ctl.Pump(t, s.pd.dviews, func(r flow.Request) int {
			pick := s.pickPD(s.flow.held[r.ID])
			picks[r.ID] = pick
			return pick.d
		}) {
			req := s.flow.held[d.ID]
			delete(s.flow.held, d.ID)
			s.flowPD(req, d, picks[d.ID], t)
			if s.err != nil {
				return
			}
		}
		return
	}
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
