package main

import (
	"fmt"
	"strconv"

	"servelab/policies"
	"servelab/policies/route"
	"servelab/sim/latency"
)

// withLatencyProfile gives env the step-time model of --latency-profile: the linear model
// `servelab profile` fitted to the real engine, the model `servelab sim --latency
// profile:FILE` advances its clock by, so the predicted-latency-scorer predicts alike in
// both worlds; and, where the profile recorded the engine's configuration, its step token
// budget.
func (f *routerFlags) withLatencyProfile(env *policies.Env) error {
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
