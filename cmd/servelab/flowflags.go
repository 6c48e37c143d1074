package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"servelab/policies/flow"
)

// flowFlags are flow control's flags, shared by servelab router, up and sim.
type flowFlags struct {
	spec       string
	objectives []string
}

const flowControlUsage = "flow control, as GIE's: hold requests while every endpoint is saturated, serve them by priority, shed sheddable ones with 429; " +
	"spec gie[:queue_depth_threshold=5,kv_cache_util_threshold=0.8,fairness=global-strict|round-robin,ordering=fcfs,ttl_s=0,max_queued=0,sheddable=reject|queue] (empty: off)"

const objectiveUsage = "an InferenceObjective NAME=PRIORITY (repeatable): requests naming NAME in x-gateway-inference-objective (or as their model; the trace's objective column) " +
	"get PRIORITY (higher is more important, negative is sheddable); engines get vLLM's priority -PRIORITY"

func (f *flowFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.spec, "flow-control", "", flowControlUsage)
	fl.StringArrayVar(&f.objectives, "objective", nil, objectiveUsage)
}

// parse returns the flow-control config (nil when off) and the objectives.
func (f *flowFlags) parse() (*flow.Config, flow.Objectives, error) {
	obj, err := flow.ParseObjectives(f.objectives)
	if err != nil {
		return nil, nil, fmt.Errorf("--objective: %w", err)
	}
	if f.spec == "" {
		return nil, obj, nil
	}
	c, err := flow.ParseConfig(f.spec)
	if err != nil {
		return nil, nil, fmt.Errorf("--flow-control: %w", err)
	}
	return &c, obj, nil
}
