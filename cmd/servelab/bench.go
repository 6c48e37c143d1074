package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/spf13/cobra"

	"servelab/engine/model"
	"servelab/engine/tokenizer"
	"servelab/metrics"
	"servelab/real/bench"
	"servelab/traces"
)

func newBenchCmd() *cobra.Command {
	var (
		f           simFlags // trace, format, rate-scale, max-requests, goodput
		endpoint    string
		modelName   string
		modelDir    string
		vocab       int
		concurrency int
		seed        uint64
		metricsURLs []string
		apiKey      string
		out         string
		asJSON      bool
		tokenScale  float64
		maxLen      int
	)
	cmd := &cobra.Command{
		Use:   "bench --endpoint URL --trace FILE [--rate-scale X] [--max-requests N] [--out DIR] [--json]",
		Short: "Replay a trace against an OpenAI-compatible endpoint and report vLLM benchmark metrics",
		Long: `Replay a trace against any OpenAI-compatible server (servelab's engine or router, vLLM, llm-d):
each request is sent at its arrival time (open loop) or with --concurrency requests in flight
(closed loop), as a streamed /v1/completions call whose prompt is token ids of the trace's input
length and which generates exactly the trace's output length (min_tokens, ignore_eos). Requests
with shared Mooncake hash ids share those prompt tokens, reproducing the trace's prefix reuse.
Records and summary have the same schema as 'servelab sim'; failed requests are counted apart.
Prompt token ids need the vocabulary size: give --model DIR (its config.json) or --vocab-size.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if endpoint == "" {
				return fmt.Errorf("--endpoint is required")
			}
			if vocab == 0 && modelDir != "" {
				var err error
				if _, vocab, err = modelLimits(modelDir, 0); err != nil {
					return err
				}
			}
			if vocab == 0 {
				return fmt.Errorf("give --model DIR or --vocab-size N: prompt token ids must lie in the served model's vocabulary")
			}
			slo, err := metrics.ParseSLO(f.goodput...)
			if err != nil {
				return err
			}
			src, closer, err := f.openTrace()
			if err != nil {
				return err
			}
			defer closer.Close()
			if tokenScale <= 0 {
				return fmt.Errorf("--token-scale must be positive, got %g", tokenScale)
			}
			if tokenScale != 1 {
				src = traces.ScaleTokens(src, tokenScale)
			}
			if maxLen > 0 {
				src = traces.FitContext(src, maxLen)
			}
			var records *recordWriter
			if out != "" {
				if records, err = newRecordWriter(out); err != nil {
					return err
				}
			}
			opts := bench.Options{
				Endpoint: endpoint, Model: modelName, APIKey: apiKey, Trace: src, Concurrency: concurrency,
				VocabSize: vocab, Seed: seed, SLO: slo, MetricsURLs: metricsURLs,
			}
			if records != nil {
				opts.OnRecord = records.write
			}
			if isTerminal(cmd.ErrOrStderr()) {
				opts.Progress = cmd.ErrOrStderr()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := bench.Run(ctx, opts)
			if records != nil {
				if cerr := records.close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				return err
			}
			if out != "" {
				config := struct {
					Endpoint    string   `json:"endpoint"`
					Model       string   `json:"model,omitempty"`
					Trace       string   `json:"trace"`
					Format      string   `json:"format,omitempty"`
					RateScale   float64  `json:"rate_scale"`
					MaxRequests int      `json:"max_requests,omitempty"`
					Concurrency int      `json:"concurrency,omitempty"`
					VocabSize   int      `json:"vocab_size"`
					Seed        uint64   `json:"seed"`
					Goodput     []string `json:"goodput,omitempty"`
					TokenScale  float64  `json:"token_scale"`
					MaxModelLen int      `json:"max_model_len,omitempty"`
				}{endpoint, modelName, f.trace, f.format, f.rateScale, f.maxRequests, concurrency, vocab, seed, f.goodput, tokenScale, maxLen}
				if err := writeJSONFile(filepath.Join(out, "summary.json"), res.Summary); err != nil {
					return err
				}
				if err := writeJSONFile(filepath.Join(out, "config.json"), config); err != nil {
					return err
				}
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res.Summary)
			}
			printSummary(cmd.OutOrStdout(), endpoint, res.Summary, -1)
			if len(res.Failures) > 0 {
				kinds := make([]string, 0, len(res.Failures))
				for k := range res.Failures {
					kinds = append(kinds, k)
				}
				sort.Strings(kinds)
				fmt.Fprintln(cmd.OutOrStdout(), "Failed requests by kind:")
				for _, k := range kinds {
					fmt.Fprintf(cmd.OutOrStdout(), "  %-30s %d\n", k, res.Failures[k])
				}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&endpoint, "endpoint", "", "server base URL, e.g. http://127.0.0.1:8080 (required)")
	fl.StringVar(&f.trace, "trace", "", "trace file to replay (required)")
	fl.StringVar(&f.format, "format", "", "trace format: "+fmt.Sprint(traces.Formats())+" (guessed when empty)")
	fl.Float64Var(&f.rateScale, "rate-scale", 1, "multiply the trace's arrival rate")
	fl.IntVar(&f.maxRequests, "max-requests", 0, "replay at most this many requests (0: all)")
	fl.Float64Var(&tokenScale, "token-scale", 1, "multiply the trace's token counts (hash blocks scale with them), to replay big-model traffic on a small model")
	fl.IntVar(&maxLen, "max-model-len", 0, "shorten requests to fit this context (prompt plus output)")
	fl.IntVar(&concurrency, "concurrency", 0, "closed loop with this many requests in flight (0: open loop at the trace's arrival times)")
	fl.StringVar(&modelName, "model-name", "", "model name in requests (default: the first of /v1/models)")
	fl.StringVar(&modelDir, "model", "", "the served model's directory, for its vocabulary size")
	fl.IntVar(&vocab, "vocab-size", 0, "the served model's vocabulary size (instead of --model)")
	fl.Uint64Var(&seed, "seed", 0, "prompt synthesis seed")
	fl.StringSliceVar(&f.goodput, "goodput", nil, "SLOs for goodput in ms: ttft:MS,tpot:MS,e2el:MS")
	fl.StringSliceVar(&metricsURLs, "metrics", nil, "engines' /metrics URLs, read before and after for prefix-cache and preemption counters")
	fl.StringVar(&apiKey, "api-key", "", "Bearer token for the endpoint")
	fl.StringVar(&out, "out", "", "write summary.json, records.jsonl and config.json to this directory")
	fl.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	return cmd
}

// modelLimits reads what prompts for the model in dir must respect: the context engines
// serve it with (max_position_embeddings, or maxModelLen when set and shorter), and how
// many token ids a prompt may use (the smaller of the model's embedding rows and its
// tokenizer's vocabulary, which the server checks).
func modelLimits(dir string, maxModelLen int) (context, vocab int, err error) {
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return 0, 0, err
	}
	mc, err := model.ParseConfig(raw)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", dir, err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return 0, 0, err
	}
	context = mc.MaxPos
	if maxModelLen > 0 {
		context = min(context, maxModelLen)
	}
	return context, min(mc.Vocab, tok.VocabSize()), nil
}
