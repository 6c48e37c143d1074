package router

import (
	"net/http"
	"time"

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
