// Package bench replays a trace against any OpenAI-compatible endpoint, as `vllm bench
// serve` does: open loop at the trace's arrival times or closed loop at a fixed
// concurrency, every response streamed, and the same per-request records and summary as
// the simulator writes, so a measured run and a simulated one compare field by field.
//
// Prompts are token ids synthesised to the trace's input lengths. Where a trace gives
// prefix hash ids (Mooncake, native), requests that share hash ids share exactly those
// prompt tokens, so the engines see the trace's block sharing.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"servelab/metrics"
	"servelab/policies/flow"
	"servelab/serving"
	"servelab/traces"
)

// FirstTokenID is the lowest prompt token id: ids below it are special tokens (BOS, EOS,
// padding) in most vocabularies.
const FirstTokenID = 3

// MaxRowTokens bounds a trace row's prompt and output lengths: 16 Mi tokens, beyond the
// longest context any served model has. A longer row (a corrupt trace, an overflowing
// --token-scale) fails as "row too large" instead of allocating its prompt.
const MaxRowTokens = 1 << 24

// DefaultScrapeGiveUp is how long /metrics may fail without a break before a run with
// samples fails (Options.ScrapeGiveUp).
const DefaultScrapeGiveUp = 30 * time.Second

// Options describe a benchmark run.
type Options struct {
	// Endpoint is the server's base URL; requests go to Endpoint/v1/completions.
	Endpoint string
	// Model is the request's "model"; empty asks /v1/models for the first one.
	Model  string
	APIKey string
	// Trace yields the requests, already scaled and limited.
	Trace traces.Reader
	// Concurrency > 0 runs closed loop with that many requests in flight, ignoring arrival
	// times; 0 sends each request at its arrival time (open loop).
	Concurrency int
	// VocabSize bounds prompt token ids to [FirstTokenID, VocabSize).
	VocabSize int
	// Seed makes the prompts; the same seed and trace give the same prompts.
	Seed uint64
	SLO  metrics.SLO
	// MetricsURLs are engines' /metrics, read before and after the run for the prefix-cache
	// and preemption counters (vLLM names). Without them the prefix-cache hit rate comes
	// from the responses' cached_tokens.
	MetricsURLs []string
	// Client sends the requests; nil uses one without an overall timeout.
	Client *http.Client
	// OnRecord receives every request's record as it finishes, from one goroutine.
	OnRecord func(*serving.Record) error
	// Progress, if set, gets a progress line redrawn with carriage returns.
	Progress io.Writer
	// SampleInterval > 0 calls OnSample that often while the run lasts, and once at its
	// end, from the goroutine that calls OnRecord, with the engines' state read from
	// MetricsURLs.
	SampleInterval time.Duration
	OnSample       func(Sample) error
	// ScrapeGiveUp is how long reading MetricsURLs may keep failing before the run fails
	// (0: DefaultScrapeGiveUp). A failed read is retried with backoff while the sampling
	// interval lasts; a sample whose reads all failed is skipped, so an engine too busy to
	// answer one scrape in time does not end the run.
	ScrapeGiveUp time.Duration
}

// Sample is the run and the engines at one instant.
type Sample struct {
	// Elapsed is seconds since the run started (the first arrival).
	Elapsed float64
	// Completed counts finished requests, failures included; OutputTokens their tokens.
	Completed, OutputTokens int64
	Engines                 EngineState
}

// EngineState is the engines' vLLM gauges and counters, summed over MetricsURLs.
type EngineState struct {
	// Running and Waiting are vllm:num_requests_running and _waiting.
	Running, Waiting int
	// KVCacheUsage is vllm:kv_cache_usage_perc (0..1), the mean over engines.
	KVCacheUsage float64
	// Counters are vllm:prefix_cache_queries, _hits and num_preemptions since the engines
	// started.
	Counters metrics.EngineCounters
}

// Result is a finished run.
type Result struct {
	Summary metrics.Summary
	// Start is when the run started: the records' times (Arrival is when a request was
	// sent) are seconds since it.
	Start time.Time
	// Records holds every request, by id.
	Records []serving.Record
	// Failures counts failed requests by kind ("HTTP 429", "connection refused", ...),
	// with each kind's first error message.
	Failures metrics.Failures
	// PrefixCacheSource says where Summary's prefix-cache hit rate comes from: "metrics"
	// (the engines' vLLM counters), "responses" (the usage's cached_tokens) or "" when
	// neither reported it (the rate is then meaningless and should not be shown).
	PrefixCacheSource string
	// Warnings are things the caller should tell the user: an endpoint without a scheme,
	// a metrics URL without vLLM's counters, skipped samples.
	Warnings []string
	// Routed holds, by request id, when a servelab router decided where the request went
	// (serving.RoutedAtHeader), in seconds since Start; nil when no response said (no router,
	// or another one). Its order is the order the router's policy saw the requests in.
	Routed map[uint64]float64
	// CachedTokensReported says a response's usage carried prompt_tokens_details: the
	// source of each A/B arm's prefix-cache hit rate (Summary.Arms), which engine counters
	// cannot split by arm.
	CachedTokensReported bool
}

// outcome is one request's record and its inter-token latencies.
type outcome struct {
	rec  serving.Record
	itls []float64
	kind string // failure kind, for Failures
	// cacheReported is set when the usage carried prompt_tokens_details.
	cacheReported bool
	// routed is when the router decided where the request went, in seconds since the
	// run's start (serving.RoutedAtHeader); ok when the response said.
	routed   float64
	routedOK bool
}

type runner struct {
	opts   Options
	client *http.Client
	start  time.Time
	itls   []float64 // every request's inter-token latencies, gathered by collect
	// arms collects each A/B arm's records and inter-token latencies (serving.ArmHeader).
	arms   *metrics.Arms
	before metrics.EngineCounters
	// cacheReported is set when any response carried prompt_tokens_details.
	cacheReported bool
	warnings      []string
	// scrapeFailingSince is when the current run of failed samples began (zero: none).
	scrapeFailingSince time.Time
	skipped            int
	// instances maps an engine's host:port (from MetricsURLs, in order) to its index, for
	// the records' Instance.
	instances map[string]int
}

// NormalizeURL accepts a base URL with or without its scheme: "localhost:8080" becomes
// "http://localhost:8080" (note says so; it is empty when nothing was added). A trailing
// /v1, as OpenAI clients' base_url and an LLMService's status.url carry it, is dropped,
// since requests go to /v1/completions under the base. Only http and https are served.
func NormalizeURL(raw string) (u, note string, err error) {
	u = strings.TrimRight(strings.TrimSpace(raw), "/")
	if !strings.Contains(u, "://") {
		u, note = "http://"+u, fmt.Sprintf("%q has no scheme; using http://%s", raw, u)
	}
	u = strings.TrimSuffix(u, "/v1")
	parsed, err := url.Parse(u)
	if err != nil {
		return "", "", fmt.Errorf("bench: URL %q: %w", raw, err)
	}
	if parsed.Scheme != "http" && parsed.Scheme != "https" {
		return "", "", fmt.Errorf("bench: URL %q: scheme %q, want http:// or https://", raw, parsed.Scheme)
	}
	if parsed.Host == "" {
		return "", "", fmt.Errorf("bench: URL %q has no host", raw)
	}
	return u, note, nil
}

// Run replays the trace and returns when every request has finished or ctx is done;
// requests cut off by ctx are recorded as failed.
func Run(ctx context.Context, opts Options) (res Result, err error) {
	if opts.Endpoint == "" || opts.Trace == nil {
		return Result{}, errors.New("bench: an endpoint and a trace are required")
	}
	if opts.VocabSize <= FirstTokenID || opts.VocabSize > math.MaxInt32 {
		return Result{}, fmt.Errorf("bench: vocabulary size %d: want more than %d (the special ids) and at most %d (token ids are int32)", opts.VocabSize, FirstTokenID, math.MaxInt32)
	}
	if opts.Concurrency < 0 {
		return Result{}, fmt.Errorf("bench: concurrency must not be negative, got %d", opts.Concurrency)
	}
	r := &runner{opts: opts, client: opts.Client, arms: metrics.NewArms(opts.SLO)}
	var note string
	if r.opts.Endpoint, note, err = NormalizeURL(opts.Endpoint); err != nil {
		return Result{}, err
	}
	if note != "" {
		r.warnings = append(r.warnings, "--endpoint "+note)
	}
	r.opts.MetricsURLs = make([]string, len(opts.MetricsURLs))
	for i, m := range opts.MetricsURLs {
		if r.opts.MetricsURLs[i], note, err = NormalizeURL(m); err != nil {
			return Result{}, err
		}
		if note != "" {
			r.warnings = append(r.warnings, "--metrics "+note)
		}
		if u, err := url.Parse(r.opts.MetricsURLs[i]); err == nil && u.Host != "" {
			if r.instances == nil {
				r.instances = map[string]int{}
			}
			r.instances[u.Host] = i
		}
	}
	if r.opts.ScrapeGiveUp <= 0 {
		r.opts.ScrapeGiveUp = DefaultScrapeGiveUp
	}
	if r.client == nil {
		r.client = &http.Client{Transport: &http.Transport{
			Proxy:               nil, // loopback benchmarks must not detour through a proxy
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			MaxIdleConns:        4096,
			MaxIdleConnsPerHost: 4096,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	if r.opts.Model == "" {
		name, err := r.firstModel(ctx)
		if err != nil {
			return Result{}, err
		}
		r.opts.Model = name
	}
	if err := r.dropNonVLLM(ctx); err != nil {
		return Result{}, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	before, err := r.scrapeRetry(sctx)
	cancel()
	if err != nil {
		return Result{}, err
	}
	r.before = before.Counters

	outcomes := make(chan outcome, 256)
	var sendErr error
	var wg sync.WaitGroup
	r.start = time.Now()
	go func() {
		sendErr = r.send(ctx, &wg, outcomes)
		wg.Wait()
		close(outcomes)
	}()
	res, err = r.collect(outcomes)
	res.Start = r.start
	if err == nil {
		err = sendErr
	}
	defer func() { res.Warnings = r.warnings }()
	if err != nil {
		return res, err
	}
	// The closing scrape runs even when ctx ended the run early.
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	counters, err := r.counters(cctx, r.before, res.Records)
	if err != nil {
		return res, err
	}
	c := metrics.NewCollector(opts.SLO)
	var first, last float64
	for i := range res.Records {
		rec := &res.Records[i]
		c.Add(rec)
		if i == 0 || rec.Arrival < first {
			first = rec.Arrival
		}
		if !rec.Failed {
			last = max(last, rec.Finish)
		}
	}
	for _, itl := range r.itls {
		c.AddITL(itl)
	}
	res.Summary = c.Summary(max(last-first, 0), counters)
	res.Summary.Arms = r.arms.Summaries(res.Summary.Duration)
	res.CachedTokensReported = r.cacheReported
	switch {
	case len(r.opts.MetricsURLs) > 0:
		res.PrefixCacheSource = "metrics"
	case r.cacheReported:
		res.PrefixCacheSource = "responses"
	}
	return res, nil
}

// send starts one goroutine per request, at its arrival time or when a slot frees.
func (r *runner) send(ctx context.Context, wg *sync.WaitGroup, outcomes chan<- outcome) error {
	var slots chan struct{}
	if r.opts.Concurrency > 0 {
		slots = make(chan struct{}, r.opts.Concurrency)
	}
	for id := uint64(0); ; id++ {
		row, err := r.opts.Trace.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if slots != nil {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
		} else if wait := time.Until(r.start.Add(time.Duration(row.Arrival * float64(time.Second)))); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := r.do(ctx, id, row)
			if slots != nil {
				<-slots
			}
			outcomes <- o
		}()
	}
}

// collect gathers outcomes in completion order, feeding OnRecord and the progress line.
func (r *runner) collect(outcomes <-chan outcome) (Result, error) {
	res := Result{Failures: metrics.Failures{}}
	var err error
	failed := 0
	lastDraw := time.Time{}
	var tick <-chan time.Time
	if r.opts.SampleInterval > 0 && r.opts.OnSample != nil {
		t := time.NewTicker(r.opts.SampleInterval)
		defer t.Stop()
		tick = t.C
	}
	var progress Sample
	sample := func() {
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.opts.SampleInterval+time.Second)
		defer cancel()
		st, serr := r.scrapeRetry(ctx)
		if serr != nil {
			// A sample the engines were too busy to answer is skipped; failing reads
			// end the run only when they persist.
			if r.scrapeFailingSince.IsZero() {
				r.scrapeFailingSince = time.Now()
			}
			if time.Since(r.scrapeFailingSince) >= r.opts.ScrapeGiveUp {
				err = fmt.Errorf("%w (failing for %s)", serr, time.Since(r.scrapeFailingSince).Round(time.Second))
			} else {
				r.skipped++
			}
			return
		}
		r.scrapeFailingSince = time.Time{}
		st.Counters = st.Counters.Sub(r.before)
		progress.Elapsed, progress.Engines = time.Since(r.start).Seconds(), st
		err = r.opts.OnSample(progress)
	}
	for {
		var o outcome
		var ok bool
		select {
		case o, ok = <-outcomes:
		case <-tick:
			sample()
			continue
		}
		if !ok {
			break
		}
		progress.Completed++
		progress.OutputTokens += int64(o.rec.OutputTokens)
		res.Records = append(res.Records, o.rec)
		if o.routedOK {
			if res.Routed == nil {
				res.Routed = map[uint64]float64{}
			}
			res.Routed[o.rec.ID] = o.routed
		}
		r.itls = append(r.itls, o.itls...)
		r.arms.Add(&o.rec)
		for _, itl := range o.itls {
			r.arms.AddITL(o.rec.Arm, itl)
		}
		r.cacheReported = r.cacheReported || o.cacheReported
		if o.rec.Failed {
			res.Failures.Add(o.kind, o.rec.Error)
			failed++
		}
		if r.opts.OnRecord != nil && err == nil {
			err = r.opts.OnRecord(&o.rec)
		}
		if r.opts.Progress != nil && time.Since(lastDraw) > 100*time.Millisecond {
			r.drawProgress(len(res.Records), failed)
			lastDraw = time.Now()
		}
	}
	if tick != nil {
		sample()
		if r.skipped > 0 {
			r.warnings = append(r.warnings, fmt.Sprintf("skipped %d samples whose /metrics reads failed", r.skipped))
		}
	}
	if r.opts.Progress != nil {
		r.drawProgress(len(res.Records), failed)
		fmt.Fprintln(r.opts.Progress)
	}
	slices.SortFunc(res.Records, func(a, b serving.Record) int { return int(a.ID) - int(b.ID) })
	return res, err
}

func (r *runner) drawProgress(done, failed int) {
	elapsed := time.Since(r.start).Seconds()
	fmt.Fprintf(r.opts.Progress, "\r%6d done  %4d failed  %7.1f s  %7.2f req/s", done, failed, elapsed, float64(done)/max(elapsed, 1e-9))
}

// completionRequest is the body sent: greedy, exactly the trace's output length (vLLM's
// min_tokens and ignore_eos), streamed with usage.
type completionRequest struct {
	Model       string  `json:"model"`
	Prompt      []int32 `json:"prompt"`
	MaxTokens   int     `json:"max_tokens"`
	MinTokens   int     `json:"min_tokens"`
	IgnoreEOS   bool    `json:"ignore_eos"`
	Temperature float64 `json:"temperature"`
	// ReturnTokenIDs (vLLM's) has servers that support it stream every token as it is
	// produced with its id, so inter-token latencies are per token even while the text
	// is held back (incomplete UTF-8, a possible stop string).
	ReturnTokenIDs bool `json:"return_token_ids"`
	Stream         bool `json:"stream"`
	// Priority is the trace row's (vLLM's request field; lower runs first), left out when
	// 0, so a router with flow control may set it from the request's objective.
	Priority      int `json:"priority,omitempty"`
	StreamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// do sends one request and reads its stream to the end.
func (r *runner) do(ctx context.Context, id uint64, row traces.Row) outcome {
	if row.InputTokens < 0 || row.InputTokens > MaxRowTokens || row.OutputTokens < 0 || row.OutputTokens > MaxRowTokens {
		return outcome{kind: "row too large", rec: serving.Record{
			ID: id, Instance: -1, Failed: true, Arrival: time.Since(r.start).Seconds(), Objective: row.Objective,
			Error: fmt.Sprintf("trace row %d: input_tokens %d, output_tokens %d: each must lie in [0, %d]",
				id, row.InputTokens, row.OutputTokens, MaxRowTokens),
		}}
	}
	body := completionRequest{
		Model: r.opts.Model, Prompt: Prompt(row, id, r.opts.Seed, r.opts.VocabSize),
		MaxTokens: row.OutputTokens, MinTokens: row.OutputTokens, IgnoreEOS: true, Stream: true,
		ReturnTokenIDs: true, Priority: row.Priority,
	}
	body.StreamOptions.IncludeUsage = true
	raw, _ := json.Marshal(body)
	o := outcome{rec: serving.Record{ID: id, Instance: -1, PromptTokens: row.InputTokens, Objective: row.Objective}}
	now := func() float64 { return time.Since(r.start).Seconds() }
	fail := func(kind string, err error) outcome {
		o.rec.Failed, o.rec.Error, o.kind, o.itls = true, err.Error(), kind, nil
		o.rec.Finish = now()
		return o
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.opts.Endpoint+"/v1/completions", bytes.NewReader(raw))
	if err != nil {
		return fail("bad request", err)
	}
	req.Header.Set("Content-Type", "application/json")
	// The trace row index, the simulator's request id: a router splitting traffic between
	// two routing policies (servelab router --ab-router) assigns it the arm the simulator
	// assigns the same row (route.SplitKey).
	req.Header.Set("x-request-id", strconv.FormatUint(id, 10))
	if r.opts.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+r.opts.APIKey)
	}
	// The row's class and flow, as GIE's gateway passes them to its endpoint picker.
	if row.Objective != "" {
		req.Header.Set(flow.ObjectiveHeader, row.Objective)
	}
	if row.FairnessID != "" {
		req.Header.Set(flow.FairnessIDHeader, row.FairnessID)
	}
	setSLOHeaders(req.Header, row)
	o.rec.Arrival = now()
	// The queueing delay inside the engine is not observable over HTTP.
	o.rec.Scheduled = o.rec.Arrival
	resp, err := r.client.Do(req)
	if err != nil {
		return fail(errorKind(ctx, err), err)
	}
	defer resp.Body.Close()
	// A router that says which engine served the request (serving.ServedEndpointHeader, as
	// servelab router does) lets the record name it, as the simulator's do; the engines
	// are numbered as MetricsURLs lists them.
	if i, ok := r.instances[resp.Header.Get(serving.ServedEndpointHeader)]; ok {
		o.rec.Instance = i
	}
	// A router running an A/B test of routing policies names the request's arm.
	o.rec.Arm = resp.Header.Get(serving.ArmHeader)
	if ns, err := strconv.ParseInt(resp.Header.Get(serving.RoutedAtHeader), 10, 64); err == nil {
		o.routed, o.routedOK = time.Unix(0, ns).Sub(r.start).Seconds(), true
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fail(fmt.Sprintf("HTTP %d", resp.StatusCode), fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(msg)))
	}
	var last float64
	sawDone := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		data, done, ok := serving.SSEData(sc.Bytes())
		if !ok {
			continue
		}
		if done {
			sawDone = true
			break
		}
		t := now()
		var chunk serving.StreamChunk
		if err := json.Unmarshal(data, &chunk); err != nil {
			return fail("bad stream", fmt.Errorf("undecodable chunk %.80q: %v", data, err))
		}
		if chunk.Error != nil {
			return fail("stream error", errors.New(chunk.Error.Message))
		}
		if chunk.CarriesToken() {
			if o.rec.FirstToken == 0 {
				o.rec.FirstToken = t
			} else {
				o.itls = append(o.itls, t-last)
			}
			last = t
		}
		if u := chunk.Usage; u != nil {
			o.rec.PromptTokens, o.rec.OutputTokens = u.PromptTokens, u.CompletionTokens
			if u.PromptTokensDetails != nil {
				o.rec.CachedTokens = u.PromptTokensDetails.CachedTokens
				o.cacheReported = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fail(errorKind(ctx, err), err)
	}
	if !sawDone {
		return fail("truncated stream", errors.New("the stream ended without [DONE]"))
	}
	if o.rec.FirstToken == 0 {
		// Every output token decoded to nothing visible; the stream's end stands in.
		o.rec.FirstToken, last = now(), now()
	}
	if o.rec.OutputTokens == 0 {
		o.rec.OutputTokens = len(o.itls) + 1
	}
	o.rec.Finish = last
	return o
}

// errorKind names a transport error's class for the failure counts.
func errorKind(ctx context.Context, err error) string {
	switch {
	case ctx.Err() != nil:
		return "canceled"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case strings.Contains(err.Error(), "connection reset"), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection lost"
	case strings.Contains(err.Error(), "timeout"):
		return "timeout"
	}
	return "transport error"
}

func (r *runner) firstModel(ctx context.Context) (string, error) {
	m, err := ServedModel(ctx, r.client, r.opts.Endpoint, r.opts.APIKey)
	return m.ID, err
}

// Model is what /v1/models says of the first model an endpoint serves.
type Model struct {
	ID string `json:"id"`
	// MaxModelLen is vLLM's max_model_len (servelab's engine and router report it too);
	// 0 when the server does not say.
	MaxModelLen int `json:"max_model_len"`
}

// ServedModel asks endpoint's /v1/models for the first model it serves; client nil uses
// http.DefaultClient.
func ServedModel(ctx context.Context, client *http.Client, endpoint, apiKey string) (Model, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/v1/models", nil)
	if err != nil {
		return Model{}, err
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Model{}, fmt.Errorf("bench: asking %s/v1/models for the model name: %w", endpoint, err)
	}
	defer resp.Body.Close()
	var list struct {
		Data []Model `json:"data"`
	}
	if resp.StatusCode != http.StatusOK {
		return Model{}, fmt.Errorf("bench: %s/v1/models: HTTP %d", endpoint, resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&list); err != nil || len(list.Data) == 0 {
		return Model{}, fmt.Errorf("bench: %s/v1/models lists no model (%v); give the model name", endpoint, err)
	}
	return list.Data[0], nil
}

// dropNonVLLM leaves out the metrics URLs that lack vLLM's prefix-cache counters (a
// router's /metrics, a typo's 404), with a warning: their hit rate would read 0.
func (r *runner) dropNonVLLM(ctx context.Context) error {
	given := len(r.opts.MetricsURLs)
	kept := r.opts.MetricsURLs[:0]
	for _, u := range r.opts.MetricsURLs {
		var families map[string]*dto.MetricFamily
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := retry(rctx, func(ctx context.Context) (err error) {
			families, err = r.read(ctx, u)
			return err
		})
		cancel()
		if err != nil {
			return err
		}
		_, queries := families["vllm:prefix_cache_queries_total"]
		_, hits := families["vllm:prefix_cache_hits_total"]
		if !queries || !hits {
			r.warnings = append(r.warnings, fmt.Sprintf("--metrics %s has no vllm:prefix_cache_queries/hits counters "+
				"(a router's /metrics?); leaving it out: give the engines' own /metrics URLs", u))
			continue
		}
		kept = append(kept, u)
	}
	r.opts.MetricsURLs = kept
	if given > 0 && len(kept) == 0 {
		r.warnings = append(r.warnings, "no usable --metrics URL: the prefix-cache hit rate comes from the responses' cached_tokens, if they report it")
	}
	return nil
}

// read fetches and parses one /metrics page.
func (r *runner) read(ctx context.Context, u string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: reading %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return nil, fmt.Errorf("bench: reading %s: HTTP %d: %s", u, resp.StatusCode, bytes.TrimSpace(msg))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("bench: parsing %s: %w", u, err)
	}
	return families, nil
}

// scrapeRetry scrapes until it succeeds or ctx ends (see retry): an engine that drops
// one scrape under load answers the next.
func (r *runner) scrapeRetry(ctx context.Context) (st EngineState, err error) {
	err = retry(ctx, func(ctx context.Context) (err error) {
		st, err = r.scrape(ctx)
		return err
	})
	return st, err
}

// retry calls fn until it succeeds or ctx ends, backing off 50 ms, 100 ms, ... 1 s
// between calls, and returns fn's last error.
func retry(ctx context.Context, fn func(context.Context) error) error {
	backoff := 50 * time.Millisecond
	for {
		err := fn(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		backoff = min(2*backoff, time.Second)
	}
}

// scrape reads the engines' state from MetricsURLs.
func (r *runner) scrape(ctx context.Context) (EngineState, error) {
	var st EngineState
	c := &st.Counters
	for _, url := range r.opts.MetricsURLs {
		families, err := r.read(ctx, url)
		if err != nil {
			return st, err
		}
		sum := func(name string) float64 {
			var total float64
			if f, ok := families[name]; ok {
				for _, m := range f.GetMetric() {
					total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
			return total
		}
		c.PrefixCacheQueries += int64(sum("vllm:prefix_cache_queries_total"))
		c.PrefixCacheHits += int64(sum("vllm:prefix_cache_hits_total"))
		c.Preemptions += int64(sum("vllm:num_preemptions_total"))
		st.Running += int(sum("vllm:num_requests_running"))
		st.Waiting += int(sum("vllm:num_requests_waiting"))
		st.KVCacheUsage += sum("vllm:kv_cache_usage_perc") / float64(len(r.opts.MetricsURLs))
	}
	return st, nil
}

// counters are the run's engine counters: the scrape difference, or, without metrics
// URLs, the prompt and cached tokens the responses reported.
func (r *runner) counters(ctx context.Context, before metrics.EngineCounters, records []serving.Record) (metrics.EngineCounters, error) {
	if len(r.opts.MetricsURLs) == 0 {
		var c metrics.EngineCounters
		for _, rec := range records {
			if !rec.Failed {
				c.PrefixCacheQueries += int64(rec.PromptTokens)
				c.PrefixCacheHits += int64(rec.CachedTokens)
			}
		}
		return c, nil
	}
	after, err := r.scrapeRetry(ctx)
	if err != nil {
		return metrics.EngineCounters{}, err
	}
	return after.Counters.Sub(before), nil
}
