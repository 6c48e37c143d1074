package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"servelab/traces"
)

func newTraceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Inspect and synthesise request traces",
	}
	cmd.AddCommand(newTraceInspectCmd(), newTraceSynthCmd())
	return cmd
}

func newTraceInspectCmd() *cobra.Command {
	var format string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Print a trace's rows, span, rate, token-length percentiles and prefix sharing",
		Long: "Reads a trace (Azure LLM CSV, BurstGPT CSV, Mooncake JSONL or servelab's native JSONL,\n" +
			"told from its first line unless --format says) and prints its rows, span, mean rate,\n" +
			"input and output token percentiles and, for traces with prefix hash ids, the share of\n" +
			"blocks that repeat an earlier block (what an unbounded prefix cache could reuse).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, c, err := traces.Open(args[0], traces.Format(format))
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := traces.Inspect(r)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			return st.WriteText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "trace format: azure, mooncake, burstgpt or native (detected when empty)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the statistics as JSON")
	return cmd
}

func newTraceSynthCmd() *cobra.Command {
	cfg := traces.SynthConfig{Requests: 1000, Rate: 10, InputMean: 1024, OutputMean: 256, InputSigma: 0.6, OutputSigma: 0.6, Arrival: "poisson", CV: 2}
	var out, lengthsFrom, lengthsFormat string
	var classes []string
	cmd := &cobra.Command{
		Use:   "synth --requests N --rate R --out FILE",
		Short: "Write a synthetic trace in servelab's native JSONL format",
		Long: "Generates a workload: Poisson or gamma (bursty) arrivals, lognormal prompt and output\n" +
			"lengths (or lengths sampled from a trace with --lengths-from), shared prefixes\n" +
			"(--prefix-groups) and multi-turn conversations (--turns-mean), with prefix hash ids of\n" +
			"--block-size tokens; --rate-curve shapes the rate over time (a day-shaped sine, or\n" +
			"steps). The same flags and seed give the same file.\n\n" +
			"--class NAME:SHARE[:tenants=N] (repeatable) gives each conversation a class, drawn by\n" +
			"share (shares add up to 1; a class's rate is SHARE x --rate): the row's objective column,\n" +
			"which the cluster's --objective NAME=PRIORITY (GIE's InferenceObjective) gives a\n" +
			"priority, and a fairness id (its flow; NAME, or NAME-0..NAME-(N-1) with tenants=N), e.g.\n" +
			"--class critical:0.7 --class sheddable:0.3.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, c := range classes {
				k, err := traces.ParseSynthClass(c)
				if err != nil {
					return fmt.Errorf("--class: %w", err)
				}
				cfg.Classes = append(cfg.Classes, k)
			}
			if lengthsFrom != "" {
				var err error
				if cfg.InputEmpirical, cfg.OutputEmpirical, err = traceLengths(lengthsFrom, traces.Format(lengthsFormat)); err != nil {
					return err
				}
			}
			gen, err := traces.NewSynth(cfg)
			if err != nil {
				return err
			}
			if out == "-" {
				_, _, err := copyRows(traces.NewNativeWriter(cmd.OutOrStdout()), gen)
				return err
			}
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			n, span, err := copyRows(traces.NewNativeWriter(f), gen)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d requests over %.1f s (%.2f req/s)\n", out, n, span, float64(n)/max(span, 1e-9))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.Requests, "requests", cfg.Requests, "number of requests, follow-up turns included")
	fl.Float64Var(&cfg.Rate, "rate", cfg.Rate, "requests per second, follow-up turns included")
	fl.StringVar(&cfg.Arrival, "arrival", cfg.Arrival, "arrival process: poisson or gamma")
	fl.StringVar(&cfg.RateCurve, "rate-curve", "", "vary the rate over time: --rate times a multiplier, 'sine:period=SECONDS[,amplitude=A][,phase=F]' (1-A*cos(2*pi*(t/period+F)): a day-shaped curve, trough at 0 and peak at period/2; A default 0.8, below 1) or 'steps:0=M0,T1=M1,...' (multiplier Mi from Ti seconds on)")
	fl.Float64Var(&cfg.CV, "cv", cfg.CV, "coefficient of variation of gamma inter-arrival times (burstiness; 1 is Poisson)")
	fl.Float64Var(&cfg.InputMean, "input-mean", cfg.InputMean, "mean prompt tokens")
	fl.Float64Var(&cfg.OutputMean, "output-mean", cfg.OutputMean, "mean output tokens")
	fl.Float64Var(&cfg.InputSigma, "input-sigma", cfg.InputSigma, "lognormal sigma of prompt lengths (0: all equal)")
	fl.Float64Var(&cfg.OutputSigma, "output-sigma", cfg.OutputSigma, "lognormal sigma of output lengths (0: all equal)")
	fl.StringVar(&lengthsFrom, "lengths-from", "", "sample prompt and output lengths from this trace instead of lognormals")
	fl.StringVar(&lengthsFormat, "lengths-format", "", "format of --lengths-from (detected when empty)")
	fl.IntVar(&cfg.PrefixGroups, "prefix-groups", 0, "each conversation starts with one of this many shared prefixes")
	fl.IntVar(&cfg.PrefixTokens, "prefix-tokens", 0, "tokens of each shared prefix (default 512 with --prefix-groups)")
	fl.Float64Var(&cfg.TurnsMean, "turns-mean", 0, "mean turns per conversation; above 1 makes multi-turn sessions")
	fl.Float64Var(&cfg.ThinkTimeMean, "think-time-mean", 0, "mean seconds between a conversation's turns (default 30)")
	fl.IntVar(&cfg.BlockSize, "block-size", 0, "tokens per prefix hash id (default 16)")
	fl.IntVar(&cfg.MinTokens, "min-tokens", 0, "smallest prompt or output length (default 1)")
	fl.IntVar(&cfg.MaxTokens, "max-tokens", 0, "largest prompt or output length (default 32768)")
	fl.Uint64Var(&cfg.Seed, "seed", 0, "random seed")
	fl.StringArrayVar(&classes, "class", nil, "request class NAME:SHARE[:tenants=N] (repeatable): the objective and fairness-id columns")
	fl.StringVar(&out, "out", "", `output file (native JSONL; "-" for standard output)`)
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// traceLengths reads a trace's prompt and output lengths.
func traceLengths(path string, format traces.Format) (in, out []int, err error) {
	r, c, err := traces.Open(path, format)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		in = append(in, row.InputTokens)
		out = append(out, row.OutputTokens)
	}
	if len(in) == 0 {
		return nil, nil, fmt.Errorf("%s: no rows to take lengths from", path)
	}
	return in, out, nil
}

// copyRows writes r's rows to w and returns how many and the last arrival time.
func copyRows(w *traces.NativeWriter, r traces.Reader) (n int, span float64, err error) {
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return n, span, w.Flush()
		}
		if err != nil {
			return n, span, err
		}
		if err := w.Write(row); err != nil {
			return n, span, err
		}
		n++
		span = row.Arrival
	}
}
