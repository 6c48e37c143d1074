package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"servelab/sim"
)

func newCompareCmd() *cobra.Command {
	var f simFlags
	var routers []string
	cmd := &cobra.Command{
		Use:   "compare --trace FILE --router SPEC --router SPEC ... [flags]",
		Short: "Simulate one trace under several routing policies and print a comparison table",
		Long:  "Run the same trace and cluster once per --router and compare the results.\n\n" + policyHelp(),
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(routers) < 1 {
				return fmt.Errorf("give at least one --router")
			}
			if err := f.useProfileEngine(cmd.Flags(), cmd.ErrOrStderr()); err != nil {
				return err
			}
			rows := make([]compareRow, 0, len(routers))
			for _, r := range routers {
				cluster := f.cluster
				cluster.Router = r
				res, err := f.simulate(cluster, nil)
				if err != nil {
					return fmt.Errorf("router %q: %w", r, err)
				}
				rows = append(rows, compareRow{router: r, result: res})
			}
			printComparison(cmd.OutOrStdout(), f, rows)
			for _, r := range rows {
				if r.result.Failures.Total() > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: ", r.router)
					reportFailures(cmd.ErrOrStderr(), r.result.Failures, int(r.result.Requests), simHint)
				}
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringArrayVar(&routers, "router", nil, "routing policy spec to compare (repeat the flag)")
	return cmd
}

type compareRow struct {
	router string
	result sim.Result
}

func printComparison(w io.Writer, f simFlags, rows []compareRow) {
	c := f.cluster
	batch, evict := c.Batch, c.Evict
	if c.Engine != nil {
		batch, evict = c.Engine.Batch, c.Engine.Evict
	}
	hardware := fmt.Sprintf("%d x %s on %s (tp %d)", c.Instances, c.Model, c.GPU, c.TP)
	if pools := c.ResolvedPools(); len(pools) > 0 {
		var parts []string
		for _, p := range pools {
			parts = append(parts, fmt.Sprintf("%s: %d on %s (tp %d, %s)", p.Name, p.Instances, p.GPU, p.TP, p.Role))
		}
		hardware = c.Model + " in pools " + strings.Join(parts, ", ")
	}
	fmt.Fprintf(w, "trace %s (rate x%g, prompt tokens x%.4g, output tokens x%.4g): %s, batch %s, evict %s, seed %d\n\n",
		f.trace, f.rateScale, f.scales.Input, f.scales.Output, hardware, batch, evict, c.Seed)
	costed := len(rows) > 0 && !slices.ContainsFunc(rows, func(r compareRow) bool { return r.result.Summary.Cost == nil })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "router\tcompleted\tfailed\treq/s\tgoodput\tout tok/s\tmean TTFT ms\tp99 TTFT ms\tmean TPOT ms\tp99 TPOT ms\tp99 ITL ms\tmean E2E ms\tprefix hit %\tpreempt\t"
	if costed {
		head += "GPU-hours\tcost $\tgoodput/$\t"
	}
	fmt.Fprintln(tw, head)
	for _, r := range rows {
		s := r.result.Summary
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.2f\t%.0f\t%.1f\t%.1f\t%.2f\t%.2f\t%.2f\t%.0f\t%.1f\t%d\t",
			r.router, s.Completed, s.Failed, s.RequestThroughput, s.RequestGoodput, s.OutputThroughput,
			s.MeanTTFTMs, s.P99TTFTMs, s.MeanTPOTMs, s.P99TPOTMs, s.P99ITLMs, s.MeanE2ELMs,
			s.PrefixCacheHitRate*100, s.Preemptions)
		if costed {
			fmt.Fprintf(tw, "%.4f\t%.4f\t%.1f\t", s.Cost.GPUHours, s.Cost.USD, s.Cost.GoodputPerDollar)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}
