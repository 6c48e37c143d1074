package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"servelab/real/local"
)

// pinCPUsHelp is --pin-cpus' help, for up and fidelity.
const pinCPUsHelp = `pin each engine to its own CPUs (sched_setaffinity, Linux) with --threads to match and GOMAXPROCS one more (for its HTTP side),
and this process (router, load generator) to the CPUs left: with more CPUs than engines one CPU goes to
the router and the rest are split evenly among the engines (leftovers to the router); with as many CPUs as
engines (2 engines on 2 CPUs) each engine gets one and the router shares them; with fewer CPUs than
engines it is an error; with up --autoscale the plan is for max-replicas engines, each engine started
taking a free set (waiting, if every set is held by a running engine, until one exits)`

// registerPinCPUs adds --pin-cpus with its command's default.
func (f *clusterFlags) registerPinCPUs(cmd *cobra.Command, def bool) {
	cmd.Flags().BoolVar(&f.pinCPUs, "pin-cpus", def, pinCPUsHelp)
}

// resolveCPUs makes the CPU plan --pin-cpus asks for (f.cpus; nil when not pinning), from
// the CPUs this process may use. Two engines are never pinned to one CPU: with fewer CPUs
// than engines it is an error.
func (f *clusterFlags) resolveCPUs() error {
	f.cpus = nil
	if !f.pinCPUs {
		return nil
	}
	allowed, err := local.AllowedCPUs()
	if err != nil {
		return fmt.Errorf("--pin-cpus: %w; pass --pin-cpus=false to run the engines unpinned", err)
	}
	plan, err := local.PlanCPUs(allowed, f.total())
	if err != nil {
		return fmt.Errorf("--pin-cpus: %w; pass --pin-cpus=false to run them unpinned, sharing the CPUs", err)
	}
	f.cpus = &plan
	return nil
}
