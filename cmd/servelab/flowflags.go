package main

import (
	"fmt"
	"io"
	"slices"

	"github.com/spf13/pflag"

	"servelab/metrics"
	"servelab/policies/flow"
)

// flowFlags are flow control's flags, shared by servelab router, up and sim.
type flowFlags struct {
	spec       string
	objectives []string
	// noPriority keeps request bodies' priority as sent (router.Config.NoEnginePriority).
	noPriority bool
}

const flowControlUsage = "flow control, as GIE's: hold requests while every endpoint is saturated, serve them by priority, shed sheddable ones with 429; " +
	"spec gie[:queue_depth_threshold=5,kv_cache_util_threshold=0.8,fairness=global-strict|round-robin,ordering=fcfs,ttl_s=0,max_queued=0,sheddable=reject|queue] (empty: off)"

const objectiveUsage = "an InferenceObjective NAME=PRIORITY (repeatable): requests naming NAME in x-gateway-inference-objective (or as their model; the trace's objective column) " +
	"get PRIORITY (higher is more important, negative is sheddable); engines get vLLM's priority -PRIORITY"

func (f *flowFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.spec, "flow-control", "", flowControlUsage)
	fl.StringArrayVar(&f.objectives, "objective", nil, objectiveUsage)
	fl.BoolVar(&f.noPriority, "no-engine-priority", false, "do not set vLLM's priority field from the objective (vLLM refuses a nonzero one unless run with --scheduling-policy priority)")
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

// objectivesFlag reads repeated --objective NAME=PRIORITY into a map.
type objectivesFlag struct{ m *map[string]int }

func (o objectivesFlag) String() string {
	if o.m == nil || len(*o.m) == 0 {
		return ""
	}
	return fmt.Sprint(*o.m)
}

func (o objectivesFlag) Set(s string) error {
	name, p, err := flow.ParseObjective(s)
	if err != nil {
		return err
	}
	if *o.m == nil {
		*o.m = map[string]int{}
	}
	if _, dup := (*o.m)[name]; dup {
		return fmt.Errorf("objective %q given twice", name)
	}
	(*o.m)[name] = p
	return nil
}

func (o objectivesFlag) Type() string { return "NAME=PRIORITY" }

// printClasses writes the summary's breakdown by class (objective), one section each.
func printClasses(w io.Writer, s metrics.Summary) {
	names := make([]string, 0, len(s.Classes))
	for n := range s.Classes {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		c := s.Classes[n]
		fmt.Fprintf(w, "%s\n", center("Class "+n, 60, '-'))
		fmt.Fprintf(w, "%-40s %d\n", "Successful requests:", c.Completed)
		fmt.Fprintf(w, "%-40s %d\n", "Failed requests:", c.Failed)
		for _, m := range []struct {
			name string
			v    float64
		}{
			{"Request throughput (req/s)", c.RequestThroughput}, {"Request goodput (req/s)", c.RequestGoodput},
			{"Median TTFT (ms)", c.MedianTTFTMs}, {"P99 TTFT (ms)", c.P99TTFTMs},
			{"Median TPOT (ms)", c.MedianTPOTMs}, {"P99 TPOT (ms)", c.P99TPOTMs},
			{"Median E2EL (ms)", c.MedianE2ELMs}, {"P99 E2EL (ms)", c.P99E2ELMs},
		} {
			fmt.Fprintf(w, "%-40s %.2f\n", m.name+":", m.v)
		}
	}
}
