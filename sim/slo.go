package sim

import (
	"servelab/metrics"
	"servelab/policies"
	"servelab/sim/latency"
)

// withRouterLatency gives the routing policy what SLO-aware routing (route's
// predicted-latency-scorer) predicts with: the step-time model of the cluster's first pool,
// the same model its instances advance the clock by, and the experiment's SLO as the
// objective of requests that carry none. A model that does not parse is left out here;
// building the pools reports it.
func (c ClusterSpec) withRouterLatency(env *policies.Env, p resolvedPool, slo metrics.SLO) {
	if lat, err := latency.Parse(c.Latency, p.GPU, c.Model, p.TP); err == nil {
		env.StepTime = lat
	}
	env.TTFTSLO, env.AvgTPOTSLO = slo.TTFTMs/1000, slo.TPOTMs/1000
}
