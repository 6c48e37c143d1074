package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"servelab/experiments"
	"servelab/experiments/report"
)

func newRunCmd() *cobra.Command {
	var opts experiments.Options
	var trace, format string
	var maxRequests int
	var quiet, verbose, writeReport bool
	cmd := &cobra.Command{
		Use:   "run SPEC",
		Short: "Run an experiment: every cell of a spec's policy matrix over its seeds, in the simulator",
		Long: `Run an experiment spec (YAML; see experiments/examples): a workload, a cluster and a
matrix of routing, batching and eviction policies over seeds and rate scales. Cells run in
parallel; each writes cells/<id>/summary.json, records.parquet and timeseries.json under the
experiment directory, and results.json ranks the policies by goodput with 95% confidence
intervals over seeds. Running the same spec into the same directory again resumes: finished
cells are kept, the rest run.

With 'world: real' each cell runs on a local cluster instead, one cell at a time: the
spec's cluster.instances engine processes serving cluster.model (a model directory, as
'servelab model synth' makes) behind the router, as 'servelab up' starts them, with the
workload replayed over HTTP as 'servelab bench' does; the outputs are the same.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := experiments.Load(args[0])
			if err != nil {
				return err
			}
			if trace != "" {
				if err := spec.ReplaceTrace(trace, format); err != nil {
					return err
				}
			}
			if maxRequests > 0 {
				spec.Workload.MaxRequests = maxRequests
			}
			if opts.Out == "" {
				opts.Out = filepath.Join("runs", spec.Name)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			w := cmd.OutOrStdout()
			cells := len(spec.Cells())
			fmt.Fprintf(w, "experiment %s: %d cells into %s\n", spec.Name, cells, opts.Out)
			progress := &runProgress{w: w, total: cells, quiet: quiet}
			opts.OnEvent = progress.event
			opts.Real = localWorld{log: cmd.ErrOrStderr(), verbose: verbose}
			start := time.Now()
			res, err := experiments.Run(ctx, spec, opts)
			if res != nil {
				fmt.Fprintln(w)
				printRanking(w, res)
				fmt.Fprintf(w, "\n%d cells in %.1f s; results: %s\n", cells, time.Since(start).Seconds(), filepath.Join(opts.Out, "results.json"))
				// A report of an interrupted run would show a part as the whole; the
				// resumed run writes it.
				if writeReport && !errors.Is(err, context.Canceled) {
					htmlPath, mdPath, rerr := report.Write(opts.Out)
					if rerr != nil {
						return errors.Join(err, fmt.Errorf("report: %w", rerr))
					}
					fmt.Fprintf(w, "report: %s (Markdown: %s)\n", htmlPath, mdPath)
				}
			}
			if errors.Is(err, context.Canceled) {
				return fmt.Errorf("interrupted; run the same command again to resume the unfinished cells")
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Out, "out", "", "experiment directory (default runs/<spec name>)")
	fl.IntVar(&opts.Parallel, "parallel", 0, "cells run at once (0: one per core)")
	fl.Float64Var(&opts.SampleInterval, "sample-interval", 0, "simulated seconds between time-series samples (0: the workload's span / 200)")
	fl.StringVar(&trace, "trace", "", "replay this trace instead of the spec's workload (keeps its window, limit and rate scales)")
	fl.StringVar(&format, "format", "", "format of --trace: azure, mooncake, burstgpt or native (guessed when empty)")
	fl.IntVar(&maxRequests, "max-requests", 0, "replay at most this many requests (overrides the spec's max_requests)")
	fl.BoolVarP(&quiet, "quiet", "q", false, "no line per finished cell")
	fl.BoolVar(&verbose, "verbose", false, "world real: print the engines' output")
	fl.BoolVar(&writeReport, "report", true, "write report.html and report.md into the experiment directory (servelab report)")
	return cmd
}

// runProgress prints a line per finished cell; events come from the cells' goroutines.
type runProgress struct {
	mu       sync.Mutex
	w        io.Writer
	total    int
	finished int
	quiet    bool
}

func (p *runProgress) event(e experiments.Event) {
	switch e.Kind {
	case experiments.CellDone, experiments.CellSkipped, experiments.CellError:
	default:
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finished++
	if p.quiet {
		return
	}
	prefix := fmt.Sprintf("[%*d/%d] %s", len(fmt.Sprint(p.total)), p.finished, p.total, e.Cell)
	switch {
	case e.Kind == experiments.CellError:
		msg, _, _ := strings.Cut(e.Error, "\n")
		fmt.Fprintf(p.w, "%s: FAILED: %s\n", prefix, msg)
	case e.Summary != nil:
		kept := ""
		if e.Kind == experiments.CellSkipped {
			kept = " (kept from an earlier run)"
		}
		fmt.Fprintf(p.w, "%s: goodput %.2f req/s, p99 TTFT %.0f ms%s\n", prefix, e.Summary.RequestGoodput, e.Summary.P99TTFTMs, kept)
	}
}

// printRanking prints results.json's ranking: per rate scale, the policies by goodput; then
// the instances a policy sent no request to.
func printRanking(w io.Writer, res *experiments.Results) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// The cost columns show where the cells report a cost (a simulated cluster of GPUs).
	costed := len(res.Policies) > 0 && !slices.ContainsFunc(res.Policies, func(p experiments.PolicyResult) bool { return p.CostUSD == nil })
	head := "rate\tpolicy\tseeds\tgoodput req/s\tthroughput req/s\tmean TTFT ms\tp99 TTFT ms\tmedian TPOT ms\tprefix hit %\t"
	if costed {
		head += "cost $\tgoodput/$\t"
	}
	fmt.Fprintln(tw, head)
	for _, p := range res.Policies {
		stat := func(s experiments.Stat, scale float64) string { return report.FormatStat(s, p.Seeds, scale) }
		fmt.Fprintf(tw, "x%g\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t", p.RateScale, p.Name(), report.SeedsText(&p),
			stat(p.RequestGoodput, 1), stat(p.RequestThroughput, 1), stat(p.MeanTTFTMs, 1),
			stat(p.P99TTFTMs, 1), stat(p.MedianTPOTMs, 1), stat(p.PrefixCacheHitRate, 100))
		if costed {
			fmt.Fprintf(tw, "%s\t%s\t", stat(*p.CostUSD, 1), stat(*p.GoodputPerDollar, 1))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, warn := range report.IdleInstances(res) {
		fmt.Fprintf(w, "⚠ %s\n", warn)
	}
}
