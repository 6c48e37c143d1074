package router

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies/route"
	"servelab/serving"
)

// epoch is the origin of the arrival times the router gives requests (serving.Request's
// Arrival, seconds), which an SLO-aware policy reads as the simulator's virtual arrivals.
var epoch = time.Now()

// withObjectives completes the policy's view of a request for SLO-aware routing: its
// objectives from llm-d's headers x-slo-ttft-ms and x-slo-tpot-ms (milliseconds; a
// malformed value is an error naming the header) and its arrival on the router's clock
// (routingRequest read its max_tokens).
func withObjectives(req *serving.Request, h http.Header) error {
	for _, o := range []struct {
		name string
		into *float64
	}{{route.TTFTSLOHeader, &req.TTFTSLO}, {route.TPOTSLOHeader, &req.AvgTPOTSLO}} {
		if v := h.Get(o.name); v != "" {
			s, err := route.ParseSLOHeader(o.name, v)
			if err != nil {
				return err
			}
			*o.into = s
		}
	}
	req.Arrival = time.Since(epoch).Seconds()
	return nil
}

// SLO outcomes, servelab_router_slo_requests_total's outcome label.
const (
	SLOMet    = "met"
	SLOMissed = "missed"
)

// initSLO registers the count of proxied requests by SLO outcome, both outcomes from zero.
func (r *Router) initSLO() {
	r.sloRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "servelab_router_slo_requests_total",
		Help: "Requests proxied, by whether they met their objectives (x-slo-ttft-ms and x-slo-tpot-ms, else the router's --slo; TTFT, TPOT and E2E as the simulator's SLO attainment): met, or missed (a failed request too: an error status, a stream cut before [DONE]).",
	}, []string{"outcome"})
	r.sloRequests.WithLabelValues(SLOMet)
	r.sloRequests.WithLabelValues(SLOMissed)
	r.cfg.Registry.MustRegister(r.sloRequests)
}

// sloMeasure counts a proxied request, its response as m saw it, as met or missed: a
// failed one missed, one with no objective met, as the simulator counts finished requests
// for the autoscaler's slo metric (metrics.SLO.Met).
func (r *Router) sloMeasure(m *meter, rr *serving.Request) {
	slo := r.cfg.SLO
	if rr.TTFTSLO > 0 {
		slo.TTFTMs = rr.TTFTSLO * 1000
	}
	if rr.AvgTPOTSLO > 0 {
		slo.TPOTMs = rr.AvgTPOTSLO * 1000
	}
	outcome := SLOMissed
	if rec, failed := m.record(); !failed && slo.Met(&rec) {
		outcome = SLOMet
	}
	r.sloRequests.WithLabelValues(outcome).Inc()
}
