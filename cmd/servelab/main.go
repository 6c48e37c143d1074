// Command servelab is the one CLI of the servelab testbed: simulate a serving cluster on a
// trace, inspect and synthesise traces, and (as the project grows) run the real engine,
// router and experiments.
package main

import (
	"fmt"
	"os"

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
	root.AddCommand(newSimCmd(), newCompareCmd(), newTraceCmd())
	return root
}
