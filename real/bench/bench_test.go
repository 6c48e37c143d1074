package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/metrics"
	"servelab/serving"
	"servelab/traces"
)

type rows struct{ r []traces.Row }

func (s *rows) Next() (traces.Row, error) {
	if len(s.r) == 0 {
		return traces.Row{}, io.EOF
	}
	r := s.r[0]
	s.r = s.r[1:]
	return r, nil
}

// stub is an OpenAI completions server that streams max_tokens tokens, the first after
// firstDelay and the rest interDelay apart, and misbehaves for chosen prompt lengths.
type stub struct {
	t                      *testing.T
	firstDelay, interDelay time.Duration
	inFlight, maxInFlight  atomic.Int64
	mu                     sync.Mutex
	bodies                 []completionRequest
	headers                []http.Header // each body's request headers
	received               []time.Time   // when each of bodies arrived
	// scrapes counts /metrics reads; metricsFault, if set, may answer read n itself
	// (returning true) to make it fail or hang.
	scrapes      atomic.Int64
	metricsFault func(n int64, w http.ResponseWriter, r *http.Request) bool
	// reject, if set, answers every completion with this status and body.
	reject     int
	rejectBody string
}

const (
	lenTooMany   = 7  // answered with 429
	lenServerErr = 8  // answered with 500
	lenDropped   = 9  // the connection drops after two tokens
	lenSlow      = 10 // streams for ten seconds
)

func (s *stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/router-metrics" { // a router's /metrics: no vLLM counters
		fmt.Fprint(w, "# TYPE router_requests_total counter\nrouter_requests_total 3\n")
		return
	}
	if r.URL.Path == "/metrics" {
		if n := s.scrapes.Add(1); s.metricsFault != nil && s.metricsFault(n, w, r) {
			return
		}
		// vLLM's gauges and counters: the requests in flight run, and every prompt token
		// ever received was queried, half of them hits.
		s.mu.Lock()
		var prompt int
		for _, b := range s.bodies {
			prompt += len(b.Prompt)
		}
		s.mu.Unlock()
		fmt.Fprintf(w, "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"stub-model\"} %d\n", s.inFlight.Load())
		fmt.Fprintf(w, "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"stub-model\"} 0\n")
		fmt.Fprintf(w, "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"stub-model\"} %g\n", 0.1*float64(s.inFlight.Load()))
		fmt.Fprintf(w, "# TYPE vllm:prefix_cache_queries_total counter\nvllm:prefix_cache_queries_total{model_name=\"stub-model\"} %d\n", 1000+prompt)
		fmt.Fprintf(w, "# TYPE vllm:prefix_cache_hits_total counter\nvllm:prefix_cache_hits_total{model_name=\"stub-model\"} %d\n", 500+prompt/2)
		return
	}
	if r.URL.Path == "/v1/models" {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"stub-model","object":"model"}]}`)
		return
	}
	if r.URL.Path != "/v1/completions" || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	n := s.inFlight.Add(1)
	// A request leaves flight before its last event goes out: the client may send the next
	// one as soon as it reads [DONE], before this handler returns.
	leave := sync.OnceFunc(func() { s.inFlight.Add(-1) })
	defer leave()
	for {
		m := s.maxInFlight.Load()
		if n <= m || s.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	var req completionRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		s.t.Errorf("stub: undecodable body: %v", err)
		http.Error(w, err.Error(), 400)
		return
	}
	s.mu.Lock()
	s.bodies = append(s.bodies, req)
	s.headers = append(s.headers, r.Header.Clone())
	s.received = append(s.received, time.Now())
	s.mu.Unlock()
	if s.reject != 0 {
		http.Error(w, s.rejectBody, s.reject)
		return
	}
	switch len(req.Prompt) {
	case lenTooMany:
		http.Error(w, `{"error":{"message":"too many requests"}}`, http.StatusTooManyRequests)
		return
	case lenServerErr:
		http.Error(w, `{"error":{"message":"boom"}}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	flusher := w.(http.Flusher)
	delay := s.firstDelay
	for i := range req.MaxTokens {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		if len(req.Prompt) == lenSlow {
			delay = 10 * time.Second
		} else {
			delay = s.interDelay
		}
		fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"text\":\"t%d\",\"token_ids\":[%d]}]}\n\n", i, 100+i)
		flusher.Flush()
		if len(req.Prompt) == lenDropped && i == 1 {
			panic(http.ErrAbortHandler) // drops the connection without ending the stream
		}
	}
	fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":%d}}}\n\n",
		len(req.Prompt), req.MaxTokens, len(req.Prompt)/2)
	leave()
	fmt.Fprint(w, "data: [DONE]\n\n")
	flusher.Flush()
}

func startStub(t *testing.T, first, inter time.Duration) (*stub, string) {
	t.Helper()
	s := &stub{t: t, firstDelay: first, interDelay: inter}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return s, srv.URL
}

// TestOpenLoopTimings: requests go out on the trace's schedule and their latencies are
// measured from when each was sent. The stub's waits and the gaps between arrivals are long
// next to the slack the bounds allow a loaded machine (a quarter of a second), so that a
// latency measured from the wrong instant (the run's start, say) still misses them.
func TestOpenLoopTimings(t *testing.T) {
	const first, inter, slack = 0.1, 0.05, 0.25 // seconds
	s, url := startStub(t, time.Duration(first*float64(time.Second)), time.Duration(inter*float64(time.Second)))
	trace := []traces.Row{
		{Arrival: 0, InputTokens: 20, OutputTokens: 5},
		{Arrival: 0.5, InputTokens: 40, OutputTokens: 3},
		{Arrival: 1, InputTokens: 30, OutputTokens: 1},
	}
	var streamed []uint64
	before := time.Now()
	res, err := Run(context.Background(), Options{
		Endpoint: url, Trace: &rows{trace}, VocabSize: 1000, Seed: 1, SLO: metrics.SLO{TTFTMs: 1000},
		OnRecord: func(r *serving.Record) error { streamed = append(streamed, r.ID); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Start.Before(before) || res.Start.After(time.Now()) {
		t.Errorf("run started at %v, not during Run (from %v)", res.Start, before)
	}
	if len(res.Records) != 3 || len(streamed) != 3 || res.Summary.Completed != 3 || res.Summary.Failed != 0 {
		t.Fatalf("records %+v, summary %+v", res.Records, res.Summary)
	}
	for i, r := range res.Records {
		row := trace[i]
		if r.ID != uint64(i) || r.PromptTokens != row.InputTokens || r.OutputTokens != row.OutputTokens || r.CachedTokens != row.InputTokens/2 {
			t.Errorf("record %d: %+v", i, r)
		}
		// Sent on schedule, never early.
		if r.Arrival < row.Arrival || r.Arrival > row.Arrival+slack {
			t.Errorf("request %d sent at %.3f s, scheduled at %.3f s", i, r.Arrival, row.Arrival)
		}
		if ttft := r.TTFT(); ttft < first || ttft > first+slack {
			t.Errorf("request %d: TTFT %.3f s, the stub waits %.3f s", i, ttft, first)
		}
		// The stub cannot finish sooner; a late read of the first token only moves time
		// from TPOT to TTFT, so TPOT is checked through E2E, which it must add up to.
		minE2E := first + inter*float64(row.OutputTokens-1)
		if e2e := r.E2E(); e2e < minE2E || e2e > minE2E+slack {
			t.Errorf("request %d: E2E %.3f s, the stub takes %.3f s", i, e2e, minE2E)
		}
		if tpot, ok := r.TPOT(); ok != (row.OutputTokens > 1) || ok && (tpot > inter+slack || math.Abs(r.TTFT()+tpot*float64(row.OutputTokens-1)-r.E2E()) > 1e-9) {
			t.Errorf("request %d: TPOT %.3f s (%t), TTFT %.3f s, E2E %.3f s over %d tokens: want TTFT + TPOT for each token after the first = E2E",
				i, tpot, ok, r.TTFT(), r.E2E(), row.OutputTokens)
		}
	}
	// Six intervals, each one the stub's 50 ms apart: a late read lengthens one and
	// shortens the next, which the median mostly ignores.
	if got := res.Summary.MedianITLMs; got < 1e3*inter*0.4 || got > 1e3*(inter+slack) {
		t.Errorf("median ITL %.1f ms, want about %.0f", got, 1e3*inter)
	}
	if res.Summary.PrefixCacheHitRate < 0.45 || res.Summary.PrefixCacheHitRate > 0.55 {
		t.Errorf("prefix cache hit rate from cached_tokens: %.3f, want ~0.5", res.Summary.PrefixCacheHitRate)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A record's arrival is when its request was sent: after Start by that much, just
	// before the server received it (the prompt lengths tell the requests apart).
	for i, b := range s.bodies {
		for _, r := range res.Records {
			if r.PromptTokens != len(b.Prompt) {
				continue
			}
			sent := res.Start.Add(time.Duration(r.Arrival * float64(time.Second)))
			if lag := s.received[i].Sub(sent); lag < -time.Millisecond || lag > time.Duration(slack*float64(time.Second)) {
				t.Errorf("request %d: sent at %v (start + %.4f s), received %v later", r.ID, sent, r.Arrival, lag)
			}
		}
	}
	for _, b := range s.bodies {
		if b.Model != "stub-model" || !b.Stream || !b.StreamOptions.IncludeUsage || !b.IgnoreEOS || b.MinTokens != b.MaxTokens ||
			!b.ReturnTokenIDs || b.Temperature != 0 {
			t.Errorf("request body %+v", b)
		}
		for _, id := range b.Prompt {
			if id < FirstTokenID || id >= 1000 {
				t.Errorf("prompt token %d outside [%d, 1000)", id, FirstTokenID)
			}
		}
	}
}

// Samples read the engines' gauges while requests run and end with the whole run.
func TestSamplesFollowTheRun(t *testing.T) {
	_, url := startStub(t, 20*time.Millisecond, 20*time.Millisecond)
	var trace []traces.Row
	for i := range 10 {
		trace = append(trace, traces.Row{Arrival: 0.02 * float64(i), InputTokens: 40, OutputTokens: 10})
	}
	var samples []Sample
	records := 0
	res, err := Run(context.Background(), Options{
		Endpoint: url, Trace: &rows{trace}, VocabSize: 1000, MetricsURLs: []string{url + "/metrics"},
		SampleInterval: 30 * time.Millisecond,
		OnRecord:       func(*serving.Record) error { records++; return nil },
		OnSample: func(s Sample) error {
			if s.Completed != int64(records) {
				t.Errorf("a sample counts %d finished requests, OnRecord saw %d", s.Completed, records)
			}
			samples = append(samples, s)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) < 5 {
		t.Fatalf("%d samples over a run of %.2f s", len(samples), res.Summary.Duration)
	}
	last := samples[len(samples)-1]
	want := EngineState{Counters: metrics.EngineCounters{PrefixCacheQueries: 400, PrefixCacheHits: 200}}
	if last.Completed != 10 || last.OutputTokens != 100 || !cmp.Equal(want, last.Engines) {
		t.Errorf("the last sample %+v, want 10 requests, 100 tokens, engines %+v", last, want)
	}
	busy := false
	for i, s := range samples {
		busy = busy || s.Engines.Running > 0 && s.Engines.KVCacheUsage > 0
		if i > 0 && s.Elapsed < samples[i-1].Elapsed {
			t.Errorf("sample %d goes back in time", i)
		}
	}
	if !busy {
		t.Error("no sample saw a running request")
	}
}

func TestClosedLoopBoundsConcurrency(t *testing.T) {
	s, url := startStub(t, 5*time.Millisecond, time.Millisecond)
	var trace []traces.Row
	for i := range 24 {
		trace = append(trace, traces.Row{Arrival: float64(i) * 100, InputTokens: 12, OutputTokens: 4})
	}
	start := time.Now()
	res, err := Run(context.Background(), Options{Endpoint: url, Model: "m", Trace: &rows{trace}, Concurrency: 3, VocabSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Completed != 24 {
		t.Fatalf("completed %d of 24", res.Summary.Completed)
	}
	if m := s.maxInFlight.Load(); m > 3 || m < 2 {
		t.Errorf("at most %d requests in flight, want 3", m)
	}
	if time.Since(start) > 20*time.Second {
		t.Error("closed loop waited for arrival times")
	}
}

func TestFailuresAreRecordedApart(t *testing.T) {
	_, url := startStub(t, time.Millisecond, time.Millisecond)
	trace := []traces.Row{
		{InputTokens: 20, OutputTokens: 3},
		{InputTokens: lenTooMany, OutputTokens: 3},
		{InputTokens: lenServerErr, OutputTokens: 3},
		{InputTokens: lenDropped, OutputTokens: 5},
		{InputTokens: 21, OutputTokens: 2},
	}
	res, err := Run(context.Background(), Options{Endpoint: url, Model: "m", Trace: &rows{trace}, VocabSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Completed != 2 || res.Summary.Failed != 3 {
		t.Fatalf("completed %d, failed %d; records %+v", res.Summary.Completed, res.Summary.Failed, res.Records)
	}
	want := map[string]int{"HTTP 429": 1, "HTTP 500": 1, "connection lost": 1}
	if lost := res.Failures["truncated stream"].Count; lost > 0 { // the drop may surface as a clean EOF
		want["truncated stream"] = lost
		delete(want, "connection lost")
	}
	got := map[string]int{}
	for k, f := range res.Failures {
		got[k] = f.Count
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("failures (-want +got):\n%s", diff)
	}
	if msg := res.Failures["HTTP 429"].FirstError; !strings.Contains(msg, "too many requests") {
		t.Errorf("the 429's first error %q lacks the server's message", msg)
	}
	for _, i := range []int{1, 2, 3} {
		if r := res.Records[i]; !r.Failed || r.Error == "" {
			t.Errorf("record %d should be failed with an error: %+v", i, r)
		}
	}
	// Latencies come from the two completed requests only.
	if res.Summary.TotalOutputTokens != 5 || res.Summary.TotalInputTokens != 41 {
		t.Errorf("totals %d in / %d out, want 41 / 5", res.Summary.TotalInputTokens, res.Summary.TotalOutputTokens)
	}
}

func TestCancelStopsTheRun(t *testing.T) {
	_, url := startStub(t, time.Millisecond, time.Millisecond)
	trace := []traces.Row{
		{Arrival: 0, InputTokens: lenSlow, OutputTokens: 3},
		{Arrival: 30, InputTokens: 20, OutputTokens: 3},
	}
	// Long enough for the first request to be sent however loaded the machine, well short
	// of its 10 s stream and the second request's arrival.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, Options{Endpoint: url, Model: "m", Trace: &rows{trace}, VocabSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("Run did not return soon after its context ended")
	}
	if len(res.Records) != 1 || !res.Records[0].Failed || res.Failures["canceled"].Count != 1 {
		t.Fatalf("records %+v failures %v: want the in-flight request recorded as canceled and the later one not sent", res.Records, res.Failures)
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	for _, opts := range []Options{
		{Trace: &rows{}, VocabSize: 10},
		{Endpoint: "http://127.0.0.1:1", VocabSize: 10},
		{Endpoint: "http://127.0.0.1:1", Trace: &rows{}, VocabSize: FirstTokenID},
		{Endpoint: "http://127.0.0.1:1", Trace: &rows{}, VocabSize: 1 << 40}, // ids would wrap in int32
		{Endpoint: "http://127.0.0.1:1", Trace: &rows{}, VocabSize: 10, Concurrency: -1},
	} {
		if _, err := Run(context.Background(), opts); err == nil {
			t.Errorf("Run(%+v) succeeded", opts)
		}
	}
}

func TestPromptsShareExactlyTheTracesBlocks(t *testing.T) {
	row := func(in int, ids ...int64) traces.Row {
		return traces.Row{InputTokens: in, HashBlockSize: 16, HashIDs: ids}
	}
	a := Prompt(row(40, 1, 2, 3), 0, 7, 5000)
	b := Prompt(row(40, 1, 2, 9), 1, 7, 5000)
	c := Prompt(row(60, 1, 2, 3, 4), 2, 7, 5000)
	d := Prompt(row(40, 5, 2, 3), 3, 7, 5000)
	common := func(x, y []int32) int {
		n := 0
		for n < min(len(x), len(y)) && x[n] == y[n] {
			n++
		}
		return n
	}
	for _, tc := range []struct {
		name string
		x, y []int32
		want int
	}{
		{"two equal blocks then different", a, b, 32},
		{"a's whole prompt, its last block partial, is c's prefix", a, c, 40},
		{"different first hash id", a, d, 0},
	} {
		// Unique tokens may equal by chance; the first differing token must be where the
		// blocks stop matching, allowing one accidental match in a 5000-token vocabulary.
		if got := common(tc.x, tc.y); got < tc.want || got > tc.want+1 {
			t.Errorf("%s: common prefix %d tokens, want %d", tc.name, got, tc.want)
		}
	}
	if !slices.Equal(a, Prompt(row(40, 1, 2, 3), 0, 7, 5000)) {
		t.Error("the same seed, row and id gave a different prompt")
	}
	if slices.Equal(a[:16], Prompt(row(40, 1, 2, 3), 0, 8, 5000)[:16]) {
		t.Error("another seed gave the same shared block")
	}
	plain := Prompt(traces.Row{InputTokens: 30}, 4, 7, 5000)
	other := Prompt(traces.Row{InputTokens: 30}, 5, 7, 5000)
	if common(plain, other) > 1 {
		t.Error("requests without hash ids share a prefix")
	}
}

// When every request fails, the result says how, with the server's first message.
func TestEveryRequestFailingIsExplained(t *testing.T) {
	s, url := startStub(t, time.Millisecond, time.Millisecond)
	s.reject = http.StatusBadRequest
	s.rejectBody = `{"error":{"message":"This model's maximum context length is 512 tokens. However, you requested 900 tokens (800 in the prompt, 100 in the completion).","type":"BadRequestError","param":"prompt"}}`
	trace := []traces.Row{{InputTokens: 800, OutputTokens: 100}, {InputTokens: 850, OutputTokens: 100}, {InputTokens: 20, OutputTokens: 1}}
	res, err := Run(context.Background(), Options{Endpoint: url, Model: "m", Trace: &rows{trace}, VocabSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Completed != 0 || res.Summary.Failed != 3 || res.Failures.Total() != 3 {
		t.Fatalf("summary %+v, failures %v", res.Summary, res.Failures)
	}
	f := res.Failures["HTTP 400"]
	if f.Count != 3 || !strings.Contains(f.FirstError, "maximum context length is 512") {
		t.Errorf("failures %+v: want 3 x HTTP 400 with the server's message", res.Failures)
	}
}

// A row too large to synthesise fails alone, without a request.
func TestRowTooLargeFailsAlone(t *testing.T) {
	s, url := startStub(t, time.Millisecond, time.Millisecond)
	trace := []traces.Row{{InputTokens: MaxRowTokens + 1, OutputTokens: 3}, {InputTokens: 20, OutputTokens: -1}, {InputTokens: 20, OutputTokens: 2}}
	res, err := Run(context.Background(), Options{Endpoint: url, Model: "m", Trace: &rows{trace}, VocabSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if f := res.Failures["row too large"]; f.Count != 2 || !strings.Contains(f.FirstError, "must lie in [0, 16777216]") {
		t.Errorf("failures %+v: want rows 0 and 1 too large", res.Failures)
	}
	if res.Summary.Completed != 1 || len(s.bodies) != 1 {
		t.Errorf("completed %d, %d requests sent; want the one good row alone", res.Summary.Completed, len(s.bodies))
	}
}

func TestEndpointWithoutSchemeIsHTTP(t *testing.T) {
	_, url := startStub(t, time.Millisecond, time.Millisecond)
	bare := strings.TrimPrefix(url, "http://")
	res, err := Run(context.Background(), Options{Endpoint: bare, Trace: &rows{[]traces.Row{{InputTokens: 5, OutputTokens: 2}}},
		VocabSize: 50, MetricsURLs: []string{bare + "/metrics"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Completed != 1 {
		t.Fatalf("summary %+v", res.Summary)
	}
	if got := strings.Join(res.Warnings, "\n"); !strings.Contains(got, "using http://"+bare) || !strings.Contains(got, "--metrics") {
		t.Errorf("warnings %q: want a note that http:// was added to both URLs", got)
	}
	for _, bad := range []string{"ftp://" + bare, "http://"} {
		if _, err := Run(context.Background(), Options{Endpoint: bad, Trace: &rows{}, VocabSize: 50}); err == nil {
			t.Errorf("endpoint %q accepted", bad)
		}
	}
}

// A router's /metrics has no vLLM counters: it is left out with a warning, and the hit
// rate comes from the responses instead of reading 0.
func TestMetricsWithoutVLLMCountersAreLeftOut(t *testing.T) {
	_, url := startStub(t, time.Millisecond, time.Millisecond)
	res, err := Run(context.Background(), Options{Endpoint: url, Trace: &rows{[]traces.Row{{InputTokens: 40, OutputTokens: 2}}},
		VocabSize: 50, MetricsURLs: []string{url + "/router-metrics"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.Warnings, "\n"); !strings.Contains(got, "/router-metrics has no vllm:prefix_cache") {
		t.Errorf("warnings %q: want one naming the URL without vLLM counters", got)
	}
	if res.PrefixCacheSource != "responses" || res.Summary.PrefixCacheHitRate != 0.5 {
		t.Errorf("hit rate %g from %q, want 0.5 from the responses", res.Summary.PrefixCacheHitRate, res.PrefixCacheSource)
	}
}

// Reads of /metrics that fail now and then are retried or skipped; reads that keep
// failing end the run.
func TestScrapeFailures(t *testing.T) {
	trace := func() *rows {
		var r []traces.Row
		for i := range 8 {
			r = append(r, traces.Row{Arrival: 0.03 * float64(i), InputTokens: 12, OutputTokens: 6})
		}
		return &rows{r}
	}
	for _, tc := range []struct {
		name    string
		fault   func(n int64, w http.ResponseWriter, r *http.Request) bool
		giveUp  time.Duration
		wantErr bool
	}{
		{"one read times out", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n != 3 {
				return false
			}
			<-r.Context().Done() // hangs until the client gives up
			return true
		}, 0, false},
		{"one read fails", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n != 3 {
				return false
			}
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return true
		}, 0, false},
		{"reads keep failing", func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n < 3 {
				return false
			}
			http.Error(w, "gone", http.StatusServiceUnavailable)
			return true
		}, 100 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, url := startStub(t, 20*time.Millisecond, 20*time.Millisecond)
			s.metricsFault = tc.fault
			samples := 0
			res, err := Run(context.Background(), Options{
				Endpoint: url, Trace: trace(), VocabSize: 1000, MetricsURLs: []string{url + "/metrics"},
				SampleInterval: 20 * time.Millisecond, ScrapeGiveUp: tc.giveUp,
				OnSample: func(Sample) error { samples++; return nil },
			})
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "HTTP 503") {
					t.Fatalf("err = %v, want the persistent HTTP 503", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Summary.Completed != 8 || samples < 2 || s.scrapes.Load() < 4 {
				t.Errorf("completed %d, %d samples, %d scrapes", res.Summary.Completed, samples, s.scrapes.Load())
			}
		})
	}
}

// TestRecordsNameTheServingEngine: behind a router that names the engine that served each
// request (serving.ServedEndpointHeader, as servelab router does), each record's Instance
// is that engine's position in MetricsURLs, as the simulator's records number instances;
// without the header it stays -1.
func TestRecordsNameTheServingEngine(t *testing.T) {
	_, e0 := startStub(t, time.Millisecond, time.Millisecond)
	_, e1 := startStub(t, time.Millisecond, time.Millisecond)
	engines := []string{e0, e1}
	var mu sync.Mutex
	servedBy := map[int]int{} // prompt length -> engine
	var n atomic.Int64
	router := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req completionRequest
		if err := json.Unmarshal(body, &req); err != nil {
			t.Error(err)
		}
		k := int(n.Add(1)) % 2
		mu.Lock()
		servedBy[len(req.Prompt)] = k
		mu.Unlock()
		resp, err := http.Post(engines[k]+r.URL.Path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		w.Header().Set(serving.ServedEndpointHeader, strings.TrimPrefix(engines[k], "http://"))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(router.Close)
	var trace []traces.Row
	for i := range 6 {
		trace = append(trace, traces.Row{Arrival: float64(i) * 0.001, InputTokens: 20 + i, OutputTokens: 3})
	}
	for _, tc := range []struct {
		name     string
		endpoint string
		named    bool
	}{{"behind the router", router.URL, true}, {"straight to an engine", e0, false}} {
		t.Run(tc.name, func(t *testing.T) {
			var recs []serving.Record
			_, err := Run(context.Background(), Options{
				Endpoint: tc.endpoint, Model: "m", Trace: &rows{append([]traces.Row(nil), trace...)}, VocabSize: 50,
				MetricsURLs: []string{e0 + "/metrics", e1 + "/metrics"},
				OnRecord:    func(r *serving.Record) error { recs = append(recs, *r); return nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != len(trace) {
				t.Fatalf("%d records", len(recs))
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range recs {
				want := -1
				if tc.named {
					want = servedBy[r.PromptTokens]
				}
				if r.Instance != want {
					t.Errorf("request %d (%d prompt tokens): instance %d, want %d", r.ID, r.PromptTokens, r.Instance, want)
				}
			}
		})
	}
}

func TestNormalizeURL(t *testing.T) {
	for _, tc := range []struct {
		raw, want string
		note      bool
		err       string
	}{
		{raw: "http://127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{raw: " http://127.0.0.1:8080/ ", want: "http://127.0.0.1:8080"},
		{raw: "localhost:8080", want: "http://localhost:8080", note: true},
		{raw: "http://winner-router.default.svc.cluster.local:8080/v1", want: "http://winner-router.default.svc.cluster.local:8080"},
		{raw: "http://127.1.0.7:8080/v1/", want: "http://127.1.0.7:8080"},
		{raw: "https://gw.example/openai/v1", want: "https://gw.example/openai"},
		{raw: "ftp://x", err: "scheme"},
	} {
		got, note, err := NormalizeURL(tc.raw)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NormalizeURL(%q) error %v, want one saying %q", tc.raw, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || (note != "") != tc.note {
			t.Errorf("NormalizeURL(%q) = %q, note %q, %v; want %q (note: %v)", tc.raw, got, note, err, tc.want, tc.note)
		}
	}
}

// TestResultHoldsWhenTheRouterRouted: a router's routed-at header becomes Result.Routed, in
// seconds since Start; without it Routed stays nil.
func TestResultHoldsWhenTheRouterRouted(t *testing.T) {
	_, engine := startStub(t, time.Millisecond, time.Millisecond)
	var routedAt sync.Map // prompt length -> unix nanos the stub router stamped
	router := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req completionRequest
		if err := json.Unmarshal(body, &req); err != nil {
			t.Error(err)
		}
		now := time.Now().UnixNano()
		routedAt.Store(len(req.Prompt), now)
		resp, err := http.Post(engine+r.URL.Path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		w.Header().Set(serving.RoutedAtHeader, strconv.FormatInt(now, 10))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(router.Close)
	trace := func() *rows {
		var r []traces.Row
		for i := range 5 {
			r = append(r, traces.Row{Arrival: float64(i) * 0.002, InputTokens: 20 + i, OutputTokens: 3})
		}
		return &rows{r}
	}
	res, err := Run(context.Background(), Options{Endpoint: router.URL, Model: "m", Trace: trace(), VocabSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Routed) != 5 {
		t.Fatalf("Routed holds %d requests, want 5: %v", len(res.Routed), res.Routed)
	}
	for _, rec := range res.Records {
		v, ok := routedAt.Load(rec.PromptTokens)
		if !ok {
			t.Fatalf("request %d (%d prompt tokens) never reached the router", rec.ID, rec.PromptTokens)
		}
		want := time.Unix(0, v.(int64)).Sub(res.Start).Seconds()
		if got := res.Routed[rec.ID]; math.Abs(got-want) > 1e-9 || got < rec.Arrival {
			t.Errorf("request %d: routed at %g s, want %g (sent at %g)", rec.ID, got, want, rec.Arrival)
		}
	}
	direct, err := Run(context.Background(), Options{Endpoint: engine, Model: "m", Trace: trace(), VocabSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	if direct.Routed != nil {
		t.Errorf("straight to an engine: Routed %v, want nil", direct.Routed)
	}
}
