// Command servelab is the one CLI of the servelab testbed: simulate a serving cluster on a
// trace, inspect and synthesise traces, and (as the project grows) run the real engine,
// router and experiments.
package main

import (
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "servelab:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "servelab",
		Short:         "A testbed for LLM inference serving policies: routing, batching, KV-cache eviction",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var cpuProfile string
	var stopProfile func()
	root.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile (go tool pprof) of the command to this file")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if cpuProfile == "" {
			return nil
		}
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		stopProfile = func() {
			pprof.StopCPUProfile()
			f.Close()
		}
		return nil
	}
	root.PersistentPostRun = func(*cobra.Command, []string) {
		if stopProfile != nil {
			stopProfile()
		}
	}
	root.AddCommand(newSimCmd(), newCompareCmd(), newTraceCmd(), newEngineCmd(), newModelCmd(), newProfileCmd(), newRouterCmd(), newUpCmd(), newFidelityCmd(), newBenchCmd(), newRunCmd(), newReportCmd(), newDashCmd(),
		newClusterCmd(), newControllerCmd(), newDeployCmd())
	return root
}
