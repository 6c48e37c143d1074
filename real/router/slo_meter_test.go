package router

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/metrics"
)

// sloStubRequest is how a test tells the SLO stub engine to answer, in the request body
// (the router forwards it as it is).
type sloStubRequest struct {
	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Stub struct {
		FirstMs int    `json:"first_ms"` // before the first token
		GapMs   int    `json:"gap_ms"`   // between tokens
		Tokens  int    `json:"tokens"`   // token chunks (or completion_tokens)
		Usage   int    `json:"usage"`    // completion_tokens reported, if not 0
		Fail    string `json:"fail"`     // "500", or "cut": the stream is cut after the first token
	} `json:"stub"`
}

// newSLOStub is an engine on loopback that answers completions and chat completions as
// its requests' stub field says: streamed (a chat stream opening with its role chunk at
// once, as vLLM's and servelab's do) or not.
func newSLOStub(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n")
	})
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model","owned_by":"stub","max_model_len":512}]}`)
	})
	answer := func(w http.ResponseWriter, r *http.Request) {
		var req sloStubRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s := req.Stub
		if s.Fail == "500" {
			http.Error(w, "engine failure", http.StatusInternalServerError)
			return
		}
		chat := strings.HasSuffix(r.URL.Path, "/chat/completions")
		sleep := func(ms int) bool {
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
				return true
			case <-r.Context().Done():
				return false
			}
		}
		usage := s.Tokens
		if s.Usage != 0 {
			usage = s.Usage
		}
		if !req.Stream {
			if !sleep(s.FirstMs + s.GapMs*max(s.Tokens-1, 0)) {
				return
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id":"x","choices":[{"index":0,"text":%q,"finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":%d,"total_tokens":%d}}`,
				strings.Repeat("t", s.Tokens), usage, usage+2)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		send := func(chunk string) {
			fmt.Fprintf(w, "data: %s\n\n", chunk)
			w.(http.Flusher).Flush()
		}
		if chat {
			send(`{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`)
		}
		for i := range s.Tokens {
			if !sleep(map[bool]int{true: s.FirstMs, false: s.GapMs}[i == 0]) {
				return
			}
			if chat {
				send(`{"choices":[{"index":0,"delta":{"content":"t"}}]}`)
			} else {
				send(`{"choices":[{"index":0,"text":"t"}]}`)
			}
			if s.Fail == "cut" {
				panic(http.ErrAbortHandler) // the connection is cut mid-stream
			}
		}
		send(`{"choices":[{"index":0,"text":"","finish_reason":"length"}]}`)
		if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
			send(fmt.Sprintf(`{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":%d}}`, usage))
		}
		send("[DONE]")
	}
	mux.HandleFunc("/v1/completions", answer)
	mux.HandleFunc("/v1/chat/completions", answer)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL
}

// sloCounts reads servelab_router_slo_requests_total by outcome.
func sloCounts(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "servelab_router_slo_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

// TestSLOCountsMetAndMissed: each proxied request counts once, met or missed, by its
// objectives (headers, else the router's defaults) measured as the simulator's SLO
// attainment measures them; a failed request is missed. The stub's delays (500 ms) are far
// from the objectives (5 ms missed, 60 s met), so the outcome does not hang on timing.
func TestSLOCountsMetAndMissed(t *testing.T) {
	const (
		met    = "60000"
		missed = "5"
	)
	for _, tc := range []struct {
		name     string
		path     string // default /v1/completions
		body     string
		ttft     string // x-slo-ttft-ms, if set
		tpot     string // x-slo-tpot-ms, if set
		defaults metrics.SLO
		want     string
	}{
		{name: "stream within header objectives", body: `{"stream":true,"stub":{"first_ms":0,"gap_ms":0,"tokens":3}}`, ttft: met, tpot: met, want: SLOMet},
		{name: "stream over header ttft", body: `{"stream":true,"stub":{"first_ms":500,"tokens":3}}`, ttft: missed, tpot: met, want: SLOMissed},
		{name: "stream over header tpot", body: `{"stream":true,"stub":{"gap_ms":500,"tokens":3}}`, ttft: met, tpot: missed, want: SLOMissed},
		{name: "stream over default ttft", body: `{"stream":true,"stub":{"first_ms":500,"tokens":2}}`, defaults: metrics.SLO{TTFTMs: 5}, want: SLOMissed},
		{name: "stream over default e2el", body: `{"stream":true,"stub":{"gap_ms":500,"tokens":2}}`, defaults: metrics.SLO{E2ELMs: 5}, want: SLOMissed},
		{name: "header ttft replaces the default", body: `{"stream":true,"stub":{"first_ms":500,"tokens":2}}`, ttft: met, defaults: metrics.SLO{TTFTMs: 5}, want: SLOMet},
		{name: "no objective", body: `{"stream":true,"stub":{"first_ms":500,"gap_ms":500,"tokens":2}}`, want: SLOMet},
		// One token by the usage, however many chunks: its TPOT is not defined (met).
		{name: "stream usage over chunks", body: `{"stream":true,"stream_options":{"include_usage":true},"stub":{"gap_ms":500,"tokens":2,"usage":1}}`, tpot: missed, want: SLOMet},
		{name: "stream usage within tpot", body: `{"stream":true,"stream_options":{"include_usage":true},"stub":{"tokens":3}}`, ttft: met, tpot: met, want: SLOMet},
		{name: "chat's role chunk is no token", path: "/v1/chat/completions", body: `{"messages":[{"role":"user","content":"hi"}],"stream":true,"stub":{"first_ms":500,"tokens":2}}`, ttft: missed, want: SLOMissed},
		{name: "chat stream within", path: "/v1/chat/completions", body: `{"messages":[{"role":"user","content":"hi"}],"stream":true,"stub":{"tokens":2}}`, ttft: met, tpot: met, want: SLOMet},
		{name: "json within", body: `{"stub":{"tokens":3}}`, ttft: met, tpot: met, want: SLOMet},
		{name: "json over ttft", body: `{"stub":{"first_ms":500,"tokens":3}}`, ttft: missed, want: SLOMissed},
		{name: "json over default ttft", body: `{"stub":{"first_ms":500,"tokens":3}}`, defaults: metrics.SLO{TTFTMs: 5}, want: SLOMissed},
		{name: "cut stream", body: `{"stream":true,"stub":{"tokens":3,"fail":"cut"}}`, ttft: met, tpot: met, want: SLOMissed},
		{name: "cut stream without objectives", body: `{"stream":true,"stub":{"tokens":3,"fail":"cut"}}`, want: SLOMissed},
		{name: "engine 500", body: `{"stream":true,"stub":{"fail":"500"}}`, ttft: met, want: SLOMissed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			r := readyRouter(t, Config{Endpoints: []string{newSLOStub(t)}, Policy: fixedPolicy{0}, ScrapeInterval: time.Hour, Registry: reg, Logf: t.Logf, SLO: tc.defaults})
			url := serve(t, r.Handler())
			if got := sloCounts(t, reg); !cmp.Equal(got, map[string]float64{SLOMet: 0, SLOMissed: 0}) {
				t.Fatalf("before any request: %v, want both outcomes at 0", got)
			}
			path := tc.path
			if path == "" {
				path = "/v1/completions"
			}
			req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if tc.ttft != "" {
				req.Header.Set("x-slo-ttft-ms", tc.ttft)
			}
			if tc.tpot != "" {
				req.Header.Set("x-slo-tpot-ms", tc.tpot)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body) // a cut stream ends in an error here
			resp.Body.Close()
			want := map[string]float64{SLOMet: 0, SLOMissed: 0}
			want[tc.want] = 1
			// The router counts after the response's last byte, which the client may see
			// first: wait for the count, generously.
			deadline := time.Now().Add(30 * time.Second)
			for {
				got := sloCounts(t, reg)
				if got[SLOMet]+got[SLOMissed] > 0 || time.Now().After(deadline) {
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("servelab_router_slo_requests_total (-want +got), response %s:\n%s", resp.Status, diff)
					}
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestMeterReadsEventsSplitAcrossWrites: the meter reads a stream's events and a JSON
// body's usage however the bytes are cut into writes, and keeps no more of a JSON body than
// its tail.
func TestMeterReadsEventsSplitAcrossWrites(t *testing.T) {
	stream := "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n" +
		"data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\r\n\r\n" +
		"data: {\"choices\":[{\"index\":0,\"text\":\"\"}]}\n\n" + // held back: no token
		"data: {\"choices\":[{\"index\":0,\"token_ids\":[5]}]}\n\n" +
		"data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n" +
		"data: [DONE]\n\n"
	long := `{"choices":[{"text":"` + strings.Repeat(`x\"usage\": 1`, 4000) + `"}],"usage":{"prompt_tokens":3,"completion_tokens":7}}`
	for _, tc := range []struct {
		name, contentType, body string
		step                    int
		wantTokens              int
		wantFailed              bool
	}{
		{name: "stream whole", contentType: "text/event-stream", body: stream, step: len(stream), wantTokens: 2},
		{name: "stream byte by byte", contentType: "text/event-stream; charset=utf-8", body: stream, step: 1, wantTokens: 2},
		{name: "stream without DONE", contentType: "text/event-stream", body: strings.TrimSuffix(stream, "data: [DONE]\n\n"), step: 7, wantFailed: true},
		{name: "stream error event", contentType: "text/event-stream", body: "data: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n", step: 5, wantFailed: true},
		{name: "long json", contentType: "application/json", body: long, step: 1000, wantTokens: 7},
		{name: "json without usage", contentType: "application/json", body: `{"choices":[{"text":"abc"}]}`, step: 3, wantFailed: true},
		{name: "cut json", contentType: "application/json", body: long[:len(long)-10], step: 1000, wantFailed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", tc.contentType)
			m := newMeter(rec, httptest.NewRequest(http.MethodPost, "/v1/completions", nil))
			for b := []byte(tc.body); len(b) > 0; {
				n := min(tc.step, len(b))
				if _, err := m.Write(b[:n]); err != nil {
					t.Fatal(err)
				}
				b = b[n:]
			}
			if len(m.tail) > maxJSONTail || cap(m.line) > 2*maxEventLine {
				t.Errorf("kept %d bytes of the tail, a line buffer of %d", len(m.tail), cap(m.line))
			}
			got, failed := m.record()
			if failed != tc.wantFailed || (!failed && got.OutputTokens != tc.wantTokens) {
				t.Errorf("failed %v, %d output tokens; want failed %v, %d tokens", failed, got.OutputTokens, tc.wantFailed, tc.wantTokens)
			}
			if !failed && (got.FirstToken < 0 || got.FirstToken > got.Finish) {
				t.Errorf("first token at %v s, finish at %v s", got.FirstToken, got.Finish)
			}
			if rec.Body.String() != tc.body {
				t.Errorf("passed %d bytes through, want the %d written", rec.Body.Len(), len(tc.body))
			}
		})
	}
}

// BenchmarkMeterStreamChunk is what the meter adds per streamed chunk (one token's, as
// servelab's engine and vLLM stream them): reading its event on the router's copy.
func BenchmarkMeterStreamChunk(b *testing.B) {
	chunk := []byte(`data: {"id":"cmpl-1","object":"text_completion","created":1733370000,"model":"m","choices":[{"index":0,"text":" token","logprobs":null,"finish_reason":null,"stop_reason":null}]}` + "\n\n")
	m := newMeter(discardWriter{http.Header{"Content-Type": {"text/event-stream"}}}, httptest.NewRequest(http.MethodPost, "/v1/completions", nil))
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		m.Write(chunk)
	}
	if m.events == 0 {
		b.Fatal("no token counted")
	}
}

// discardWriter is a ResponseWriter that keeps nothing, so a benchmark times the meter.
type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header         { return d.h }
func (d discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d discardWriter) WriteHeader(int)             {}
