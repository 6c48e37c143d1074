package sim

import (
	"strconv"

	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/batch"
	"servelab/sim/latency"
)

// withRouterLatency gives the routing policy what SLO-aware routing (route's
// predicted-latency-scorer) predicts with: the step-time model of the cluster's first pool,
// the same model its instances advance the clock by; their batch policy's step token
// budget; and the experiment's SLO as the objective of requests that carry none. A model or
// batch spec that does not build is left out here; building the pools reports it.
func (c ClusterSpec) withRouterLatency(env *policies.Env, p resolvedPool, slo metrics.SLO) {
	if lat, err := latency.Parse(c.Latency, p.GPU, c.Model, p.TP); err == nil {
		env.StepTime = lat
	}
	if spec, err := policies.ParseSpec(c.Batch); err == nil {
		if bp, err := batch.Registry.Build(spec, *env); err == nil {
			env.MaxNumBatchedTokens, _ = strconv.Atoi(bp.Spec().Params["max_num_batched_tokens"])
		}
	}
	env.TTFTSLO, env.AvgTPOTSLO = slo.TTFTMs/1000, slo.TPOTMs/1000
}
