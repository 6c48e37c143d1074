package router

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies/route"
	"servelab/serving"
)

// abState runs an online A/B test of two routing policies (Config.Policy a *route.AB):
// every proxied request is assigned an arm, routed by that arm's policy over the same
// endpoint views, tagged with its arm on the response (serving.ArmHeader) and counted in
// its arm's metrics. The assignment is route.Split's, the simulator's: by the client's
// x-request-id (servelab bench sends the trace row index, the simulator's request id),
// else by the router's own request counter; a request's serving.ArmHeader (a or b)
// chooses the arm itself.
type abState struct {
	policy *route.AB
	// requests counts proxied requests by arm, serving endpoint and HTTP status; duration
	// and firstByte time them from the routing decision's start.
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	firstByte *prometheus.HistogramVec
	scoring   *prometheus.HistogramVec
}

// Metrics of an A/B test, registered only when the router runs one, so a router without
// one exports what it always did.
func (r *Router) initAB() {
	ab, ok := r.cfg.Policy.(*route.AB)
	if !ok {
		return
	}
	buckets := prometheus.ExponentialBuckets(1e-3, 2, 18) // 1 ms to 131 s
	s := &abState{
		policy: ab,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "servelab_router_arm_requests_total",
			Help: "Requests proxied in an A/B test of routing policies, by arm (a: --router, b: --ab-router), the endpoint that served them and HTTP status code (499: the client left first).",
		}, []string{"arm", "endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "servelab_router_arm_request_duration_seconds",
			Help:    "End-to-end time of requests in an A/B test, from the router reading the body to the response's last byte, by arm.",
			Buckets: buckets,
		}, []string{"arm"}),
		firstByte: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "servelab_router_arm_time_to_first_byte_seconds",
			Help:    "Time from the router reading a request's body to the first byte of its successful response's body, by arm: for a streamed completion, its first token's chunk.",
			Buckets: buckets,
		}, []string{"arm"}),
		scoring: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "servelab_router_arm_scoring_seconds",
			Help:    "Time each arm's routing policy took per decision (servelab_router_scoring_seconds is both arms').",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10),
		}, []string{"arm"}),
	}
	r.cfg.Registry.MustRegister(s.requests, s.duration, s.firstByte, s.scoring)
	// The router times each arm's decisions through the policy it calls.
	r.cfg.Policy = timedAB{s}
	r.ab = s
}

// timedAB routes as its route.AB does, timing each arm's decision.
type timedAB struct{ s *abState }

func (t timedAB) Route(req *serving.Request, views []serving.InstanceView) int {
	arm := t.s.policy.Assign(req)
	start := time.Now()
	i := t.s.policy.Route(req, views)
	t.s.scoring.WithLabelValues(arm).Observe(time.Since(start).Seconds())
	return i
}

// begin assigns req's arm and tags the response with it. It answers 400 itself, and
// returns false, when the request names an arm that does not exist.
func (s *abState) begin(w http.ResponseWriter, req *http.Request, rr *serving.Request) bool {
	if v := req.Header.Get(serving.ArmHeader); v != "" {
		arm, err := route.ParseArm(strings.TrimSpace(v))
		if err != nil {
			writeErrorParam(w, http.StatusBadRequest, "BadRequestError", err.Error(), serving.ArmHeader)
			return false
		}
		rr.Arm = arm
	} else {
		key := rr.ID
		if id := req.Header.Get(RequestIDHeader); id != "" {
			key = route.SplitKey(id)
		}
		rr.Arm = s.policy.Split.Arm(key)
	}
	w.Header().Set(serving.ArmHeader, rr.Arm)
	return true
}

// end counts the finished request, its response as m saw it, in its arm.
func (s *abState) end(m *meter, arm string) {
	code := m.code
	if code == 0 && m.req.Context().Err() != nil {
		code = 499 // nginx's "client closed request"
	}
	if !m.first.IsZero() && code < 300 {
		s.firstByte.WithLabelValues(arm).Observe(m.first.Sub(m.start).Seconds())
	}
	s.requests.WithLabelValues(arm, m.Header().Get(serving.ServedEndpointHeader), strconv.Itoa(code)).Inc()
	s.duration.WithLabelValues(arm).Observe(time.Since(m.start).Seconds())
}

// RemoveInstance passes an endpoint's removal to the arms (route.InstanceRemover).
func (t timedAB) RemoveInstance(instance int) { t.s.policy.RemoveInstance(instance) }
