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
		Args:  cobra.ExactArgs(1),
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
	cmd.Flags().StringVar(&format, "format", "", "trace format: azure, mooncake, burstgpt or native (guessed when empty)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the statistics as JSON")
	return cmd
}

func newTraceSynthCmd() *cobra.Command {
	cfg := traces.SynthConfig{InputMean: 1024, OutputMean: 256, InputSigma: 0.6, OutputSigma: 0.6, Arrival: "poisson"}
	var out string
	cmd := &cobra.Command{
		Use:   "synth --requests N --rate R --out FILE",
		Short: "Write a synthetic trace in servelab's native JSONL format",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			gen, err := traces.NewSynth(cfg)
			if err != nil {
				return err
			}
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			err = copyRows(traces.NewNativeWriter(f), gen)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.Requests, "requests", 1000, "number of requests")
	fl.Float64Var(&cfg.Rate, "rate", 10, "arrivals per second (new conversations when --turns-mean > 1)")
	fl.StringVar(&cfg.Arrival, "arrival", cfg.Arrival, "arrival process: poisson or gamma")
	fl.Float64Var(&cfg.CV, "cv", 2, "coefficient of variation of gamma inter-arrival times (burstiness)")
	fl.Float64Var(&cfg.InputMean, "input-mean", cfg.InputMean, "mean prompt tokens")
	fl.Float64Var(&cfg.OutputMean, "output-mean", cfg.OutputMean, "mean output tokens")
	fl.Float64Var(&cfg.InputSigma, "input-sigma", cfg.InputSigma, "lognormal sigma of prompt lengths (0: all equal)")
	fl.Float64Var(&cfg.OutputSigma, "output-sigma", cfg.OutputSigma, "lognormal sigma of output lengths (0: all equal)")
	fl.IntVar(&cfg.PrefixGroups, "prefix-groups", 0, "requests share one of this many prefixes")
	fl.IntVar(&cfg.PrefixTokens, "prefix-tokens", 0, "tokens of each shared prefix (default 512 with --prefix-groups)")
	fl.Float64Var(&cfg.TurnsMean, "turns-mean", 0, "mean turns per conversation; above 1 makes multi-turn sessions")
	fl.Float64Var(&cfg.ThinkTimeMean, "think-time-mean", 0, "mean seconds between a conversation's turns (default 30)")
	fl.IntVar(&cfg.BlockSize, "block-size", 0, "tokens per prefix hash id (default 16)")
	fl.Uint64Var(&cfg.Seed, "seed", 0, "random seed")
	fl.StringVar(&out, "out", "", "output file (native JSONL)")
	return cmd
}

func copyRows(w *traces.NativeWriter, r traces.Reader) error {
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return w.Flush()
		}
		if err != nil {
			return err
		}
		if err := w.Write(row); err != nil {
			return err
		}
	}
}
