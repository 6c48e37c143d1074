package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"servelab/engine/model"
	"servelab/engine/tokenizer"
	"servelab/metrics"
	"servelab/real/bench"
	"servelab/traces"
)

func newBenchCmd() *cobra.Command {
	var (
		f             simFlags // trace, format, rate-scale, max-requests, goodput
		endpoint      string
		modelName     string
		modelDir      string
		vocab         int
		concurrency   int
		seed          uint64
		metricsURLs   []string
		apiKey        string
		out           string
		asJSON        bool
		tokenScale    string
		outputScale   string
		maxLen        int
		blockSize     int
		allowFailures bool
	)
	cmd := &cobra.Command{
		Use:   "bench --endpoint URL --trace FILE (--model DIR | --vocab-size N) [--token-scale auto|F] [--output-token-scale auto|F] [--rate-scale X] [--max-requests N] [--out DIR] [--json]",
		Short: "Replay a trace against an OpenAI-compatible endpoint and report vLLM benchmark metrics",
		Long: `Replay a trace against any OpenAI-compatible server (servelab's engine or router, vLLM, llm-d):
each request is sent at its arrival time (open loop) or with --concurrency requests in flight
(closed loop), as a streamed /v1/completions call whose prompt is token ids of the trace's input
length and which generates exactly the trace's output length (min_tokens, ignore_eos). Requests
with shared Mooncake hash ids share those prompt tokens, reproducing the trace's prefix reuse.
Records and summary have the same schema as 'servelab sim'.
Prompt token ids need the vocabulary size: give --model DIR (its config.json) or --vocab-size.

Token counts are scaled to the model's context by default (--token-scale auto, as 'servelab
fidelity' does): the mean prompt becomes a quarter of the context (never scaled up) and
requests are clipped to it. Outputs are scaled apart (--output-token-scale auto): they keep
their lengths unless their mean would crowd the context, and keep at least 2 tokens. The
clipped requests are counted on stderr. The context is --max-model-len, else the --model
directory's, else the max_model_len the endpoint's /v1/models reports. --token-scale 1
--output-token-scale 1 replays the trace as is.

Behind servelab router running an A/B test of routing policies (--ab-router), every request's
arm is read from the response (x-servelab-arm): a block per arm follows the summary, under the
same names, and --json, summary.json and records.jsonl carry the arms ("arms", "arm"). Requests
carry x-request-id: the trace row index, so the router splits a replay as 'servelab sim
--ab-router' split the same trace.

Failed requests are listed by kind with the first error of each and a hint; any failure makes
the command exit non-zero unless --allow-failures is given. --metrics takes engines' /metrics
URLs (a router's has no vLLM counters: it is left out with a warning).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			stderr := cmd.ErrOrStderr()
			if endpoint == "" {
				return fmt.Errorf("--endpoint is required")
			}
			base, note, err := bench.NormalizeURL(endpoint)
			if err != nil {
				return fmt.Errorf("--endpoint: %w", err)
			}
			if note != "" {
				fmt.Fprintf(stderr, "servelab bench: --endpoint %s\n", note)
			}
			if maxLen < 0 {
				return fmt.Errorf("--max-model-len must not be negative, got %d", maxLen)
			}
			context := maxLen
			if modelDir != "" {
				c, v, err := modelLimits(modelDir, maxLen)
				if err != nil {
					return err
				}
				context = c
				if vocab == 0 {
					vocab = v
				}
			}
			if vocab == 0 {
				return fmt.Errorf("give --model DIR or --vocab-size N: prompt token ids must lie in the served model's vocabulary")
			}
			slo, err := metrics.ParseSLO(f.goodput...)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if tokenScale == "auto" && context == 0 {
				// The served model's context, as vLLM's /v1/models reports it.
				client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}
				m, err := bench.ServedModel(ctx, client, base, apiKey)
				if err != nil {
					return fmt.Errorf("--token-scale auto needs the model's context: %w (give --max-model-len N or --token-scale 1)", err)
				}
				if context = m.MaxModelLen; context == 0 {
					return fmt.Errorf("--token-scale auto needs the model's context, and %s/v1/models does not report max_model_len: give --max-model-len N, --model DIR or --token-scale 1", base)
				}
			}
			scales, err := f.benchTokenScale(tokenScale, outputScale, context, blockSize)
			if err != nil {
				return err
			}
			if tokenScale == "auto" {
				fmt.Fprintf(stderr, "servelab bench: token scale %.4g (auto: the mean prompt a quarter of the %d-token context), output token scale %.4g, requests clipped to %d tokens\n",
					scales.Input, context, scales.Output, scales.Clip)
			} else if maxLen > 0 {
				scales.Clip = maxLen
			}
			src, closer, err := f.openTrace()
			if err != nil {
				return err
			}
			defer closer.Close()
			src, shaped := scales.apply(src)
			var records *recordWriter
			if out != "" {
				if records, err = newRecordWriter(out); err != nil {
					return err
				}
			}
			opts := bench.Options{
				Endpoint: base, Model: modelName, APIKey: apiKey, Trace: src, Concurrency: concurrency,
				VocabSize: vocab, Seed: seed, SLO: slo, MetricsURLs: metricsURLs,
			}
			if records != nil {
				opts.OnRecord = records.write
			}
			if isTerminal(stderr) {
				opts.Progress = stderr
			}
			res, err := bench.Run(ctx, opts)
			for _, w := range res.Warnings {
				fmt.Fprintf(stderr, "servelab bench: warning: %s\n", w)
			}
			if records != nil {
				if cerr := records.close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				return err
			}
			if scales != (tokenScales{Input: 1, Output: 1}) {
				fmt.Fprintf(stderr, "servelab bench: %s\n", shaped())
			}
			if out != "" {
				config := struct {
					Endpoint    string     `json:"endpoint"`
					Model       string     `json:"model,omitempty"`
					Trace       string     `json:"trace"`
					Format      string     `json:"format,omitempty"`
					RateScale   float64    `json:"rate_scale"`
					MaxRequests int        `json:"max_requests,omitempty"`
					Concurrency int        `json:"concurrency,omitempty"`
					VocabSize   int        `json:"vocab_size"`
					Seed        uint64     `json:"seed"`
					Goodput     []string   `json:"goodput,omitempty"`
					TokenScale  float64    `json:"token_scale"`
					OutputScale float64    `json:"output_token_scale"`
					MaxModelLen int        `json:"max_model_len,omitempty"`
					Shape       sliceShape `json:"slice_shape"`
				}{base, modelName, f.trace, f.format, f.rateScale, f.maxRequests, concurrency, vocab, seed, f.goodput,
					scales.Input, scales.Output, scales.Clip, shaped()}
				if err := writeJSONFile(filepath.Join(out, "summary.json"), res.Summary); err != nil {
					return err
				}
				if err := writeJSONFile(filepath.Join(out, "config.json"), config); err != nil {
					return err
				}
			}
			hitRate := ""
			if res.PrefixCacheSource == "" {
				hitRate = "not reported (no engine /metrics with vLLM's counters, no cached_tokens in the responses)"
			}
			if asJSON {
				err = writeJSON(cmd.OutOrStdout(), res.Summary)
			} else {
				printSummary(cmd.OutOrStdout(), base, res.Summary, -1, hitRate)
				armHitRate := ""
				if !res.CachedTokensReported {
					armHitRate = "not reported (no cached_tokens in the responses)"
				}
				printArms(cmd.OutOrStdout(), res.Summary, nil, armHitRate)
			}
			if err != nil {
				return err
			}
			reportFailures(stderr, res.Failures, len(res.Records), benchHint)
			if n := res.Failures.Total(); n > 0 && !allowFailures {
				return fmt.Errorf("%d of %d requests failed (--allow-failures accepts a run with failures)", n, len(res.Records))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&endpoint, "endpoint", "", "server base URL, e.g. http://127.0.0.1:8080 (required; http:// is added when there is no scheme)")
	fl.StringVar(&f.trace, "trace", "", "trace file to replay (required)")
	fl.StringVar(&f.format, "format", "", "trace format: "+fmt.Sprint(traces.Formats())+" (guessed when empty)")
	fl.Float64Var(&f.rateScale, "rate-scale", 1, "multiply the trace's arrival rate")
	fl.IntVar(&f.maxRequests, "max-requests", 0, "replay at most this many requests (0: all)")
	fl.StringVar(&tokenScale, "token-scale", "auto", tokenScaleHelp)
	fl.StringVar(&outputScale, "output-token-scale", "auto", outputTokenScaleHelp)
	fl.IntVar(&maxLen, "max-model-len", 0, "the served context: shorten requests to fit it (prompt plus output)")
	fl.IntVar(&blockSize, "block-size", 16, "the engines' KV block size: --token-scale auto keeps the trace's hash blocks whole blocks of it")
	fl.IntVar(&concurrency, "concurrency", 0, "closed loop with this many requests in flight (0: open loop at the trace's arrival times)")
	fl.StringVar(&modelName, "model-name", "", "model name in requests (default: the first of /v1/models)")
	fl.StringVar(&modelDir, "model", "", "the served model's directory, for its vocabulary size and context")
	fl.IntVar(&vocab, "vocab-size", 0, "the served model's vocabulary size (instead of --model)")
	fl.Uint64Var(&seed, "seed", 0, "prompt synthesis seed")
	fl.StringSliceVar(&f.goodput, "goodput", nil, "SLOs for goodput in ms: ttft:MS,tpot:MS,e2el:MS")
	fl.StringSliceVar(&metricsURLs, "metrics", nil, "engines' /metrics URLs, read before and after for prefix-cache and preemption counters (not a router's: it has none)")
	fl.StringVar(&apiKey, "api-key", "", "Bearer token for the endpoint")
	fl.StringVar(&out, "out", "", "write summary.json, records.jsonl and config.json to this directory")
	fl.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	fl.BoolVar(&allowFailures, "allow-failures", false, "exit 0 even when requests failed")
	return cmd
}

// benchTokenScale resolves --token-scale (prompts) and --output-token-scale for the
// flags' trace slice (the rows that will be replayed) and the context; the clip is the
// context requests are fitted to (0: none), set when the prompts' scale is auto.
func (f *simFlags) benchTokenScale(inFlag, outFlag string, context, blockSize int) (tokenScales, error) {
	var shape traces.Shape
	if inFlag == "auto" || outFlag == "auto" {
		src, closer, err := f.openTrace()
		if err != nil {
			return tokenScales{}, err
		}
		defer closer.Close()
		if shape, err = traces.ScanShape(src); err != nil {
			return tokenScales{}, err
		}
	}
	var ts tokenScales
	var err error
	if ts.Input, err = resolveTokenScale(inFlag, shape, context, blockSize); err != nil {
		return tokenScales{}, err
	}
	if ts.Output, err = resolveOutputTokenScale(outFlag, shape, ts.Input, context); err != nil {
		return tokenScales{}, err
	}
	if inFlag == "auto" {
		ts.Clip = context
	}
	return ts, nil
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
