package main

import (
	"fmt"
	"strconv"
	"strings"

	"servelab/experiments"
	"servelab/metrics"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/sim/latency"
)

// withLatencyProfile gives env the default objectives of --slo (the simulator's are the
// experiment's slo) and the step-time model of --latency-profile: the linear model
// `servelab profile` fitted to the real engine, the model `servelab sim --latency
// profile:FILE` advances its clock by, so the predicted-latency-scorer predicts alike in
// both worlds; and, where the profile recorded the engine's configuration, its step token
// budget.
func (f *routerFlags) withLatencyProfile(env *policies.Env) error {
	if f.slo != "" {
		slo, err := metrics.ParseSLO(f.slo)
		if err != nil {
			return fmt.Errorf("--slo: %w", err)
		}
		env.TTFTSLO, env.AvgTPOTSLO = slo.TTFTMs/1000, slo.TPOTMs/1000
	}
	if f.latencyProfile == "" {
		return nil
	}
	lin, err := latency.LoadLinear(f.latencyProfile)
	if err != nil {
		return fmt.Errorf("--latency-profile: %w", err)
	}
	env.StepTime = lin
	if p, err := latency.LoadProfile(f.latencyProfile); err == nil && p.Engine != nil {
		if spec, err := policies.ParseSpec(p.Engine.Batch); err == nil {
			env.MaxNumBatchedTokens, _ = strconv.Atoi(spec.Params["max_num_batched_tokens"])
		}
	}
	return nil
}

// checkLatencyProfile refuses a predicted-latency-scorer without a step-time model: it
// would only fall back to llm-d's composite score, silently.
func (f *routerFlags) checkLatencyProfile(p route.Policy) error {
	if f.latencyProfile == "" && route.UsesPredictedLatency(p) {
		return fmt.Errorf("--router: %s predicts latency from the engines' step times: give --latency-profile FILE (a 'servelab profile' of the engines)", route.PredictedLatencyScorerType)
	}
	return nil
}

// realWorldObjectives gives a real cell's router what the simulator gives its scorer: the
// experiment's slo as the default objectives. (Its step-time model it cannot: a real cell
// has no latency model, and a predicted-latency-scorer there is refused for want of
// --latency-profile.)
func realWorldObjectives(f *routerFlags, rc experiments.RealCell) {
	slo := rc.Spec.SLO.Metrics()
	var parts []string
	if slo.TTFTMs > 0 {
		parts = append(parts, fmt.Sprintf("ttft:%g", slo.TTFTMs))
	}
	if slo.TPOTMs > 0 {
		parts = append(parts, fmt.Sprintf("tpot:%g", slo.TPOTMs))
	}
	f.slo = strings.Join(parts, ",")
}
