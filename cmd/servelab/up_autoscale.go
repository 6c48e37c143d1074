package main

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"servelab/policies"
	"servelab/policies/scale"
	"servelab/real/local"
)

// upAutoscale checks --autoscale against up's other flags and sets the cluster up for it:
// min-replicas engines, a registry the autoscaler reads the router's counters from, and
// restarts (--restart-backoff, --max-restarts) supervised with the autoscaler, which counts a
// restarting engine as its replica; with --pin-cpus, a CPU plan for max-replicas engines,
// whose sets the autoscaler hands to the engines it starts (local.Cluster.Autoscale).
func upAutoscale(cmd *cobra.Command, f *clusterFlags, opts *local.Options, spec string) (scale.Policy, error) {
	pol, err := scale.Parse(spec, policies.Env{Seed: f.router.seed})
	if err != nil {
		return nil, fmt.Errorf("--autoscale: %w", err)
	}
	switch {
	case cmd.Flags().Changed("engines"):
		return nil, fmt.Errorf("--engines and --autoscale: the policy's min-replicas and max-replicas decide the engines")
	case f.prefillEngines > 0:
		return nil, fmt.Errorf("--autoscale and --prefill-engines: the autoscaler scales one pool of engines, not a prefill and a decode pool; drop one")
	}
	lo, hi := pol.Bounds()
	if f.pinCPUs {
		// A set for each engine the autoscaler may run: it never runs more than
		// max-replicas ready or starting ones.
		f.engines = hi
		if err := f.resolveCPUs(); err != nil {
			return nil, fmt.Errorf("--autoscale with max-replicas %d: %w", hi, err)
		}
		opts.CPUs = f.cpus
	}
	f.engines = lo
	opts.Engines = lo
	if f.threads == 0 {
		// Each engine's threads as if max-replicas ran: the machine divided among them.
		f.engines = hi
		threads := f.threadsPerEngine()
		f.engines = lo
		opts.EngineArgs = setFlag(opts.EngineArgs, "--threads", fmt.Sprint(threads))
	}
	opts.Autoscaled = true
	if opts.Router.Registry == nil {
		opts.Router.Registry = prometheus.NewRegistry()
	}
	return pol, nil
}

// setFlag replaces the value of flag in args.
func setFlag(args []string, flag, value string) []string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			args[i+1] = value
		}
	}
	return args
}
