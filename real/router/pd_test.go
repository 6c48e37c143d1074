package router

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies"
	"servelab/policies/route"
)

// llmdPDConfig is llm-d's shipped P/D EndpointPickerConfig: decode and prefill profiles of
// prefix-cache and queue scorers, prefill-filter and decode-filter, prefix-based decider
// at 16 tokens.
const llmdPDConfig = "../../policies/route/testdata/llm-d-pd.yaml"

// pdEngine is a fake engine speaking servelab's P/D protocol (see the engine's
// kv_transfer_params): a prefill request (kv_transfer_params.do_remote_decode) is
// answered with one token and the kv_transfer_params of the blocks it holds; any other
// request is served as a decode: streamed when asked, else one JSON object naming the
// engine and echoing the kv_transfer_params it got.
type pdEngine struct {
	*httptest.Server
	name string
	port int

	mu sync.Mutex
	// seen are the /v1/* requests' bodies and x-request-id headers, in order.
	seen []seenRequest
	// waiting is its vllm:num_requests_waiting gauge.
	waiting int
	// prefillStatus, if set, answers prefill requests with that status; dropPrefill
	// closes their connection without an answer.
	prefillStatus int
	dropPrefill   bool
	// dropDecode closes the connection of every other request without an answer.
	dropDecode bool
	// stopAtFirst answers prefill requests as vLLM does when the one token ended the
	// request (EOS): no kv_transfer_params, nothing held.
	stopAtFirst bool
	// kvPullFailures is how many decode requests with kv_transfer_params are answered
	// 503 with x-servelab-retry: kv-pull before one is served.
	kvPullFailures int
	// cached are block hashes its /v1/kv_events snapshot reports.
	cached []uint64
}

type seenRequest struct {
	Body map[string]any
	ID   string
}

// prefillRequests and decodeRequests split seen by kind.
func (e *pdEngine) requests() (prefill, decode []seenRequest) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.seen {
		if kv, ok := s.Body["kv_transfer_params"].(map[string]any); ok && kv["do_remote_decode"] == true {
			prefill = append(prefill, s)
		} else {
			decode = append(decode, s)
		}
	}
	return prefill, decode
}

// streamChunks is what a decode engine streams, byte for byte.
func streamChunks(name string) []string {
	return []string{
		fmt.Sprintf("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"text\":\"a\"}],\"from\":%q}\n\n", name),
		fmt.Sprintf("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"text\":\"b\",\"finish_reason\":\"length\"}],\"from\":%q}\n\n", name),
		"data: [DONE]\n\n",
	}
}

func newPDEngine(t *testing.T, name string) *pdEngine {
	t.Helper()
	e := &pdEngine{name: name}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		e.mu.Lock()
		defer e.mu.Unlock()
		fmt.Fprintf(w, "vllm:num_requests_waiting{model_name=\"m\"} %d\nvllm:num_requests_running{model_name=\"m\"} 0\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.1\n", e.waiting)
	})
	mux.HandleFunc("/v1/kv_events", func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		hashes, _ := json.Marshal(e.cached)
		e.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: {\"seq\":1,\"events\":[{\"type\":\"AllBlocksCleared\"},{\"type\":\"BlockStored\",\"block_hashes\":%s}]}\n\n", hashes)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	serveLLM := func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		e.mu.Lock()
		e.seen = append(e.seen, seenRequest{Body: body, ID: r.Header.Get(RequestIDHeader)})
		kv, _ := body["kv_transfer_params"].(map[string]any)
		prefill := kv != nil && kv["do_remote_decode"] == true
		status, drop, stop, dropDecode := e.prefillStatus, e.dropPrefill, e.stopAtFirst, e.dropDecode
		failPull := !prefill && kv != nil && e.kvPullFailures > 0
		if failPull {
			e.kvPullFailures--
		}
		e.mu.Unlock()
		w.Header().Set("X-Engine", e.name)
		switch {
		case (prefill && drop) || (!prefill && dropDecode):
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		case prefill && status != 0:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":{"message":"prefill refused by %s","type":"X","param":null,"code":%d}}`, e.name, status)
		case prefill && stop:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"id":"p","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"stop"}],"kv_transfer_params":null}`)
		case prefill:
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{
				"id": "p", "object": "text_completion", "choices": []any{map[string]any{"index": 0, "text": "x", "finish_reason": "length"}},
				"kv_transfer_params": map[string]any{
					"do_remote_prefill": true, "do_remote_decode": false, "remote_engine_id": e.name,
					"remote_request_id": r.Header.Get(RequestIDHeader), "remote_block_ids": []int{3, 1, 4},
					"remote_host": "127.0.0.1", "remote_port": e.port, "tp_size": 1,
				},
			})
		case failPull:
			w.Header().Set(RetryHeader, RetryKVPull)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"message":"the remote prefill's KV could not be fetched","type":"ServiceUnavailableError","param":null,"code":503}}`)
		case body["stream"] == true:
			w.Header().Set("Content-Type", "text/event-stream")
			for _, c := range streamChunks(e.name) {
				io.WriteString(w, c)
				w.(http.Flusher).Flush()
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"from": e.name, "kv_transfer_params": kv})
		}
	}
	mux.HandleFunc("/v1/completions", serveLLM)
	mux.HandleFunc("/v1/chat/completions", serveLLM)
	e.Server = httptest.NewServer(mux)
	t.Cleanup(e.Close)
	u, _ := url.Parse(e.URL)
	e.port, _ = strconv.Atoi(u.Port())
	return e
}

// newPDRouter routes over the endpoints (ROLE=URL) with llm-d's P/D configuration.
func newPDRouter(t *testing.T, kvEvents bool, endpoints ...string) (*Router, string, *prometheus.Registry) {
	t.Helper()
	p, err := route.Parse(llmdPDConfig, policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := New(Config{Endpoints: endpoints, Policy: p, Registry: reg, KVEvents: kvEvents, ScrapeInterval: 20 * time.Millisecond, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return r, serve(t, r.Handler()), reg
}

// post sends body to the router and returns the response with its whole body.
func post(t *testing.T, base, path, body string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(data)
}

func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return m
}

// gathered reads a counter of reg with the given labels.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// longPrompt is well over 16 tokens at the router's 4 bytes per token.
var longPrompt = strings.Repeat("the quick brown fox jumps over the lazy dog ", 10)

// TestPDTwoLegs: a disaggregated request's prefill leg is the client's request with
// max_tokens 1, stream false, no stream_options and kv_transfer_params do_remote_decode;
// its decode leg is the client's request as sent plus the kv_transfer_params the prefill
// answered; both carry the same x-request-id; a streamed decode passes through byte for
// byte.
func TestPDTwoLegs(t *testing.T) {
	wantPrefillKV := map[string]any{"do_remote_decode": true, "do_remote_prefill": false,
		"remote_engine_id": nil, "remote_block_ids": nil, "remote_host": nil, "remote_port": nil}
	for _, tc := range []struct {
		name, path, body string
		// prefillChanges are the fields the prefill leg changes (nil: removed).
		prefillChanges map[string]any
		stream         bool
	}{
		{"completions", "/v1/completions", `{"model":"m","prompt":"` + longPrompt + `","max_tokens":20,"temperature":0.5}`,
			map[string]any{"max_tokens": 1.0, "stream": false}, false},
		{"completions with vLLM's min_tokens", "/v1/completions", `{"model":"m","prompt":"` + longPrompt + `","max_tokens":20,"min_tokens":20,"ignore_eos":true}`,
			map[string]any{"max_tokens": 1.0, "min_tokens": 1.0, "stream": false}, false},
		{"streamed chat with max_completion_tokens and stream_options", "/v1/chat/completions",
			`{"model":"m","messages":[{"role":"user","content":"` + longPrompt + `"}],"max_completion_tokens":30,"stream":true,"stream_options":{"include_usage":true}}`,
			map[string]any{"max_tokens": 1.0, "max_completion_tokens": 1.0, "stream": false, "stream_options": nil}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, d := newPDEngine(t, "p"), newPDEngine(t, "d")
			_, base, reg := newPDRouter(t, false, "prefill="+p.URL, "decode="+d.URL)
			resp, got := post(t, base, tc.path, tc.body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, got)
			}
			client := decodeJSON(t, tc.body)
			pre, preDecode := p.requests()
			dPre, dec := d.requests()
			if len(pre) != 1 || len(preDecode) != 0 || len(dPre) != 0 || len(dec) != 1 {
				t.Fatalf("prefill engine got %d prefill and %d other requests, decode engine %d and %d; want one prefill leg and one decode leg",
					len(pre), len(preDecode), len(dPre), len(dec))
			}
			wantPre := decodeJSON(t, tc.body)
			for k, v := range tc.prefillChanges {
				if v == nil {
					delete(wantPre, k)
				} else {
					wantPre[k] = v
				}
			}
			wantPre["kv_transfer_params"] = wantPrefillKV
			if diff := cmp.Diff(wantPre, pre[0].Body); diff != "" {
				t.Errorf("prefill leg (-want +got):\n%s", diff)
			}
			wantDec := client
			wantDec["kv_transfer_params"] = map[string]any{"do_remote_prefill": true, "do_remote_decode": false, "remote_engine_id": "p",
				"remote_request_id": pre[0].ID, "remote_block_ids": []any{3.0, 1.0, 4.0}, "remote_host": "127.0.0.1", "remote_port": float64(p.port), "tp_size": 1.0}
			if diff := cmp.Diff(wantDec, dec[0].Body); diff != "" {
				t.Errorf("decode leg (-want +got):\n%s", diff)
			}
			if pre[0].ID == "" || pre[0].ID != dec[0].ID {
				t.Errorf("x-request-id: prefill leg %q, decode leg %q; want the same router id", pre[0].ID, dec[0].ID)
			}
			if tc.stream {
				if want := strings.Join(streamChunks("d"), ""); got != want {
					t.Errorf("stream:\n%q\nwant\n%q", got, want)
				}
			} else if m := decodeJSON(t, got); m["from"] != "d" {
				t.Errorf("response %s, want the decode engine's", got)
			}
			if h := resp.Header.Get(PrefillEndpointHeader); h != strings.TrimPrefix(p.URL, "http://") {
				t.Errorf("%s: %q, want %s", PrefillEndpointHeader, h, p.URL)
			}
			if h := resp.Header.Get("x-gateway-destination-endpoint-served"); h != strings.TrimPrefix(d.URL, "http://") {
				t.Errorf("served endpoint %q, want %s", h, d.URL)
			}
			for _, name := range []string{"llm_d_inference_scheduler_disagg_decision_total", "llm_d_inference_scheduler_pd_decision_total"} {
				if v := gathered(t, reg, name, map[string]string{"model_name": "m", "decision_type": "prefill-decode"}); v != 1 {
					t.Errorf("%s{prefill-decode} = %v, want 1", name, v)
				}
			}
			if v := gathered(t, reg, "servelab_router_prefill_legs_total", map[string]string{"outcome": "ok"}); v != 1 {
				t.Errorf("prefill legs ok = %v, want 1", v)
			}
		})
	}
}

// TestPDDecision: the prefix-based decider keeps a short prompt, and a prompt the decode
// endpoint already caches (from its KV events), on the decode endpoint alone: the body
// goes there unchanged and no prefill leg is sent.
func TestPDDecision(t *testing.T) {
	short := `{"model":"m","prompt":"hi there","max_tokens":5}`
	cachedBody := `{"model":"m","prompt":"` + longPrompt + `","max_tokens":5}`
	for _, tc := range []struct {
		name, body  string
		cacheOnD    bool
		wantPrefill bool
	}{
		{"short prompt stays on decode", short, false, false},
		{"long uncached prompt disaggregates", cachedBody, false, true},
		{"long prompt cached on the decode endpoint stays", cachedBody, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, d := newPDEngine(t, "p"), newPDEngine(t, "d")
			r0 := &Router{cfg: Config{BlockSize: 16}}
			hashes := r0.routingRequest(context.Background(), "/v1/completions", []byte(tc.body)).BlockHashes
			if tc.cacheOnD {
				d.cached = hashes
			}
			r, base, reg := newPDRouter(t, tc.cacheOnD, "prefill="+p.URL, "decode="+d.URL)
			if tc.cacheOnD {
				deadline := time.Now().Add(10 * time.Second)
				for {
					v := r.Views()[d.URL]
					if v.Cache != nil && v.Cache.CachedPrefixBlocks(hashes) == len(hashes) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the decode endpoint's KV events never arrived")
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			resp, got := post(t, base, "/v1/completions", tc.body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, got)
			}
			pre, _ := p.requests()
			_, dec := d.requests()
			if (len(pre) == 1) != tc.wantPrefill || len(dec) != 1 {
				t.Fatalf("%d prefill legs, %d decode requests; want disaggregated %t", len(pre), len(dec), tc.wantPrefill)
			}
			decision := "decode-only"
			if tc.wantPrefill {
				decision = "prefill-decode"
			} else if diff := cmp.Diff(decodeJSON(t, tc.body), dec[0].Body); diff != "" {
				t.Errorf("decode-only body changed (-client +sent):\n%s", diff)
			}
			if v := gathered(t, reg, "llm_d_inference_scheduler_disagg_decision_total", map[string]string{"decision_type": decision}); v != 1 {
				t.Errorf("decisions %s = %v, want 1", decision, v)
			}
		})
	}
}

// TestPDFailures: a failed prefill leg is retried once on another prefill endpoint, then
// the decode endpoint runs the request alone; a prefill 4xx goes back to the client; a
// decode 503 kv-pull reruns the whole flow once, on the other prefill endpoint.
func TestPDFailures(t *testing.T) {
	type counts struct{ P1, P2, Decode, DecodeWithKV int }
	for _, tc := range []struct {
		name       string
		setup      func(p1, p2, d *pdEngine)
		wantStatus int
		want       counts
		// wantKVFrom is the prefill engine whose kv_transfer_params the served decode got
		// ("": none, the decode ran alone).
		wantKVFrom string
		metrics    map[string]float64
	}{
		{"prefill 500 retried on the other prefill endpoint", func(p1, p2, d *pdEngine) { p1.prefillStatus = 500 },
			200, counts{1, 1, 1, 1}, "p2", map[string]float64{"failed": 1, "ok": 1, "fallbacks": 0}},
		{"prefill connection dropped, retried", func(p1, p2, d *pdEngine) { p1.dropPrefill = true },
			200, counts{1, 1, 1, 1}, "p2", map[string]float64{"failed": 1, "ok": 1, "fallbacks": 0}},
		{"both prefill endpoints fail: decode alone", func(p1, p2, d *pdEngine) { p1.prefillStatus = 502; p2.dropPrefill = true },
			200, counts{1, 1, 1, 0}, "", map[string]float64{"failed": 2, "ok": 0, "fallbacks": 1}},
		{"prefill stopped at its first token: decode alone, no retry", func(p1, p2, d *pdEngine) { p1.stopAtFirst = true },
			200, counts{1, 0, 1, 0}, "", map[string]float64{"no_kv": 1, "failed": 0, "ok": 0, "fallbacks": 0}},
		{"prefill 400 goes back to the client", func(p1, p2, d *pdEngine) { p1.prefillStatus = 400 },
			400, counts{1, 0, 0, 0}, "", map[string]float64{"rejected": 1, "ok": 0, "fallbacks": 0}},
		{"kv-pull 503 reruns the flow on the other prefill endpoint", func(p1, p2, d *pdEngine) { d.kvPullFailures = 1 },
			200, counts{1, 1, 2, 2}, "p2", map[string]float64{"ok": 2, "kv_pull_retries": 1}},
		{"kv-pull 503 twice goes back to the client", func(p1, p2, d *pdEngine) { d.kvPullFailures = 2 },
			503, counts{1, 1, 2, 2}, "", map[string]float64{"ok": 2, "kv_pull_retries": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p1, p2, d := newPDEngine(t, "p1"), newPDEngine(t, "p2"), newPDEngine(t, "d")
			p2.waiting = 5 // the queue scorer prefers p1 first
			tc.setup(p1, p2, d)
			_, base, reg := newPDRouter(t, false, "prefill="+p1.URL, "prefill="+p2.URL, "decode="+d.URL)
			body := `{"model":"m","prompt":"` + longPrompt + `","max_tokens":5}`
			resp, got := post(t, base, "/v1/completions", body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, got, tc.wantStatus)
			}
			pre1, _ := p1.requests()
			pre2, _ := p2.requests()
			_, dec := d.requests()
			c := counts{P1: len(pre1), P2: len(pre2), Decode: len(dec)}
			for _, r := range dec {
				if r.Body["kv_transfer_params"] != nil {
					c.DecodeWithKV++
				}
			}
			if diff := cmp.Diff(tc.want, c); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
			if tc.wantStatus == 200 {
				last := dec[len(dec)-1].Body
				from := ""
				if kv, ok := last["kv_transfer_params"].(map[string]any); ok {
					from, _ = kv["remote_engine_id"].(string)
				} else if diff := cmp.Diff(decodeJSON(t, body), last); diff != "" {
					t.Errorf("decode alone: body changed (-client +sent):\n%s", diff)
				}
				if from != tc.wantKVFrom {
					t.Errorf("decode got the KV of %q, want %q", from, tc.wantKVFrom)
				}
			}
			if tc.wantStatus == 400 && !strings.Contains(got, "prefill refused by p1") {
				t.Errorf("client got %s, want the prefill engine's error", got)
			}
			for k, want := range tc.metrics {
				var v float64
				switch k {
				case "fallbacks":
					v = gathered(t, reg, "servelab_router_pd_fallbacks_total", nil)
				case "kv_pull_retries":
					v = gathered(t, reg, "servelab_router_kv_pull_retries_total", nil)
				default:
					v = gathered(t, reg, "servelab_router_prefill_legs_total", map[string]string{"outcome": k})
				}
				if v != want {
					t.Errorf("%s = %v, want %v", k, v, want)
				}
			}
		})
	}
}

// TestEndpointRoles: ROLE=URL endpoints parse, a bad role is refused, and a policy that
// is not P/D never routes to a prefill-only endpoint.
func TestEndpointRoles(t *testing.T) {
	for _, tc := range []struct {
		in, role, url, err string
	}{
		{"http://a:1", "", "http://a:1", ""},
		{"prefill=http://a:1", "prefill", "http://a:1", ""},
		{"decode=http://a:1/", "decode", "http://a:1/", ""},
		{"both=http://a:1", "both", "http://a:1", ""},
		{"prefill-decode=http://a:1", "prefill-decode", "http://a:1", ""},
		{"http://a:1/?x=y", "", "http://a:1/?x=y", ""},
		{"prefiller=http://a:1", "", "", `role "prefiller" is not one of`},
	} {
		role, u, err := ParseEndpoint(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseEndpoint(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || role != tc.role || u != tc.url {
			t.Errorf("ParseEndpoint(%q) = %q, %q, %v; want %q, %q", tc.in, role, u, err, tc.role, tc.url)
		}
	}

	p, d := newPDEngine(t, "p"), newPDEngine(t, "d")
	r, base, _ := newRouter(t, "round-robin", 20*time.Millisecond, "prefill="+p.URL, "decode="+d.URL)
	for range 4 {
		if resp, got := post(t, base, "/v1/completions", `{"model":"m","prompt":"`+longPrompt+`"}`); resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, got)
		}
	}
	if pre, other := p.requests(); len(pre)+len(other) != 0 {
		t.Errorf("the prefill-only endpoint got %d requests from a policy without P/D", len(pre)+len(other))
	}
	if got, want := r.Endpoints(), []string{"prefill=" + p.URL, "decode=" + d.URL}; !cmp.Equal(got, want) {
		t.Errorf("Endpoints() = %v, want %v", got, want)
	}
	if err := r.SetEndpoints([]string{"prefill=" + p.URL, "decode=" + p.URL}); err == nil || !strings.Contains(err.Error(), "two roles") {
		t.Errorf("one URL with two roles: error %v", err)
	}
}

// TestExtProcPD: behind a gateway, a P/D policy's destination is the decode endpoint and
// a disaggregated request names its prefill endpoint in x-prefiller-host-port, as llm-d's
// EPP tells its routing sidecar; a short prompt gets no prefill endpoint.
func TestExtProcPD(t *testing.T) {
	p, d := newPDEngine(t, "p"), newPDEngine(t, "d")
	r := epRouter(t, Config{}, llmdPDConfig, true, "prefill="+p.URL, "decode="+d.URL)
	conn := extProcClient(t, r, ExtProcConfig{})
	for _, tc := range []struct {
		name, body, wantPrefill string
	}{
		{"long prompt", `{"model":"m","prompt":"` + longPrompt + `"}`, strings.TrimPrefix(p.URL, "http://")},
		{"short prompt", `{"model":"m","prompt":"hi"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := openStream(t, conn)
			g.send(requestHeaders("/v1/completions", false, nil), requestBody(tc.body, true))
			resp := g.recv()
			common := resp.GetRequestHeaders().GetResponse()
			if dest := destination(t, resp, common); dest != strings.TrimPrefix(d.URL, "http://") {
				t.Errorf("destination %s, want the decode endpoint %s", dest, d.URL)
			}
			if got := setHeaders(t, common.GetHeaderMutation())[PrefillEndpointHeader]; got != tc.wantPrefill {
				t.Errorf("%s %q, want %q", PrefillEndpointHeader, got, tc.wantPrefill)
			}
		})
	}
}

// TestPDDecodeFailure: a decode endpoint that fails reruns the flow on another decode
// endpoint; the prefill endpoint, which did its part, serves the rerun.
func TestPDDecodeFailure(t *testing.T) {
	p, d1, d2 := newPDEngine(t, "p"), newPDEngine(t, "d1"), newPDEngine(t, "d2")
	d1.dropDecode = true
	d2.waiting = 5 // the queue scorer prefers d1 first
	_, base, _ := newPDRouter(t, false, "prefill="+p.URL, "decode="+d1.URL, "decode="+d2.URL)
	resp, got := post(t, base, "/v1/completions", `{"model":"m","prompt":"`+longPrompt+`","max_tokens":5}`)
	if resp.StatusCode != http.StatusOK || decodeJSON(t, got)["from"] != "d2" {
		t.Fatalf("status %d: %s; want d2's answer", resp.StatusCode, got)
	}
	pre, _ := p.requests()
	_, dec1 := d1.requests()
	_, dec2 := d2.requests()
	if len(pre) != 2 || len(dec1) != 1 || len(dec2) != 1 {
		t.Errorf("%d prefill legs, %d requests to d1, %d to d2; want 2, 1, 1", len(pre), len(dec1), len(dec2))
	}
}
