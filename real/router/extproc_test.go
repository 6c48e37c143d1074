package router

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procmode "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
)

// recordingPolicy routes with a policy and keeps the requests it was asked to route.
type recordingPolicy struct {
	route.Policy
	mu   sync.Mutex
	reqs []serving.Request
}

func (p *recordingPolicy) Route(req *serving.Request, views []serving.InstanceView) int {
	p.mu.Lock()
	p.reqs = append(p.reqs, *req)
	p.mu.Unlock()
	return p.Policy.Route(req, views)
}

func (p *recordingPolicy) promptTokens() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n []int
	for _, r := range p.reqs {
		n = append(n, r.PromptTokens)
	}
	return n
}

// epRouter builds a router over urls with cfg's other settings and, when ready is set,
// waits for its endpoints.
func epRouter(t *testing.T, cfg Config, spec string, ready bool, urls ...string) *Router {
	t.Helper()
	if cfg.Policy == nil {
		p, err := route.Parse(spec, policies.Env{Seed: 1, BlockSize: 16})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Policy = p
	}
	cfg.Endpoints, cfg.Registry, cfg.Logf = urls, prometheus.NewRegistry(), t.Logf
	if cfg.ScrapeInterval == 0 {
		cfg.ScrapeInterval = 5 * time.Millisecond
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	if ready {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// extProcClient serves r's ext_proc on loopback and dials it, as a gateway would.
func extProcClient(t *testing.T, r *Router, cfg ExtProcConfig) *grpc.ClientConn {
	t.Helper()
	s, err := r.NewExtProcServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// gateway plays the data plane's part of one ext_proc stream (one HTTP request).
type gateway struct {
	t      *testing.T
	s      extprocv3.ExternalProcessor_ProcessClient
	cancel context.CancelFunc
}

func openStream(t *testing.T, conn *grpc.ClientConn) *gateway {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	s, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &gateway{t: t, s: s, cancel: cancel}
}

func (g *gateway) send(reqs ...*extprocv3.ProcessingRequest) {
	g.t.Helper()
	for _, r := range reqs {
		if err := g.s.Send(r); err != nil {
			g.t.Fatalf("send: %v", err)
		}
	}
}

func (g *gateway) recv() *extprocv3.ProcessingResponse {
	g.t.Helper()
	resp, err := g.s.Recv()
	if err != nil {
		g.t.Fatalf("recv: %v", err)
	}
	return resp
}

// requestHeaders is the request-headers message of a request to path, with headers in
// pairs; md, if set, is its metadata context.
func requestHeaders(path string, eos bool, md *corev3.Metadata, kv ...string) *extprocv3.ProcessingRequest {
	hs := []*corev3.HeaderValue{{Key: ":method", RawValue: []byte("POST")}, {Key: ":path", RawValue: []byte(path)},
		{Key: "content-type", RawValue: []byte("application/json")}}
	for i := 0; i+1 < len(kv); i += 2 {
		hs = append(hs, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return &extprocv3.ProcessingRequest{MetadataContext: md, Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: hs}, EndOfStream: eos}}}
}

func requestBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

func responseHeaders(eos bool, md *corev3.Metadata) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{MetadataContext: md, Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":status", RawValue: []byte("200")}, {Key: "content-type", RawValue: []byte("text/event-stream")}}}, EndOfStream: eos}}}
}

func responseBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

// withMode sets the data plane's protocol_config, sent on the first message.
func withMode(m *extprocv3.ProcessingRequest, mode procmode.ProcessingMode_BodySendMode) *extprocv3.ProcessingRequest {
	m.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: mode, ResponseBodyMode: mode}
	return m
}

// subsetHint is the data plane's subset hint holding v.
func subsetHint(t *testing.T, v any) *corev3.Metadata {
	t.Helper()
	s, err := structpb.NewStruct(map[string]any{SubsetFilterKey: v})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{SubsetFilterNamespace: s}}
}

// setHeaders is a header mutation's headers by name; it fails on a header that does not
// replace the client's.
func setHeaders(t *testing.T, m *extprocv3.HeaderMutation) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, h := range m.GetSetHeaders() {
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s: append action %v, want OVERWRITE_IF_EXISTS_OR_ADD", h.GetHeader().GetKey(), h.GetAppendAction())
		}
		out[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	return out
}

// destination checks that an answer names one destination in the header and the
// metadata, and returns it.
func destination(t *testing.T, resp *extprocv3.ProcessingResponse, common *extprocv3.CommonResponse) string {
	t.Helper()
	if common == nil {
		t.Fatalf("no answer with a destination: %v", resp)
	}
	if !common.GetClearRouteCache() {
		t.Error("clear_route_cache is not set, so the gateway may keep a route chosen before the destination")
	}
	header := setHeaders(t, common.GetHeaderMutation())[DestinationEndpointKey]
	meta := resp.GetDynamicMetadata().GetFields()[DestinationEndpointNamespace].GetStructValue().GetFields()[DestinationEndpointKey].GetStringValue()
	if header == "" || header != meta {
		t.Errorf("header %s %q, metadata %s/%s %q: want one non-empty value", DestinationEndpointKey, header, DestinationEndpointNamespace, DestinationEndpointKey, meta)
	}
	return header
}

// routed sends a full-duplex request with body and returns its destination.
func routed(t *testing.T, conn *grpc.ClientConn, body string, md *corev3.Metadata) (*gateway, string) {
	t.Helper()
	g := openStream(t, conn)
	g.send(requestHeaders("/v1/completions", false, md), requestBody(body, true))
	resp := g.recv()
	dest := destination(t, resp, resp.GetRequestHeaders().GetResponse())
	for {
		b := g.recv().GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
		if b == nil {
			t.Fatal("no request body sent back")
		}
		if b.GetEndOfStream() {
			break
		}
	}
	return g, dest
}

// immediateStatus receives an immediate response and checks its OpenAI error body.
func immediateStatus(t *testing.T, g *gateway) (int, string) {
	t.Helper()
	resp := g.recv()
	ir := resp.GetImmediateResponse()
	if ir == nil {
		t.Fatalf("want an immediate response, got %v", resp)
	}
	if ct := setHeaders(t, ir.GetHeaders())["content-type"]; ct != "application/json" {
		t.Errorf("content-type %q", ct)
	}
	var e openAIError
	if err := json.Unmarshal(ir.GetBody(), &e); err != nil || e.Error == nil || e.Error.Message == "" {
		t.Errorf("body %q is not an OpenAI error: %v", ir.GetBody(), err)
	} else if code, _ := e.Error.Code.(float64); int(code) != int(ir.GetStatus().GetCode()) {
		t.Errorf("error.code %v, status %d", e.Error.Code, ir.GetStatus().GetCode())
	}
	if _, err := g.s.Recv(); err == nil {
		t.Error("the stream goes on after an immediate response")
	}
	if e.Error == nil {
		return int(ir.GetStatus().GetCode()), ""
	}
	return int(ir.GetStatus().GetCode()), e.Error.Message
}

func host(s *stub) string { return strings.TrimPrefix(s.URL, "http://") }

// TestExtProcReadsTheWholeBody: whether the body arrives in one message or in chunks,
// buffered or full-duplex streamed, the policy routes the whole prompt once, at the
// body's end, and a streamed body goes back unchanged.
func TestExtProcReadsTheWholeBody(t *testing.T) {
	prompt := strings.Repeat("0123456789", 40) // 400 bytes: 100 tokens at 4 bytes each
	body := `{"model":"m","prompt":"` + prompt + `","max_tokens":4}`
	up := newStub(t, "a")
	for _, tc := range []struct {
		name   string
		mode   procmode.ProcessingMode_BodySendMode // 0: no protocol_config (older data planes)
		chunks []string
	}{
		{"full duplex, one message", procmode.ProcessingMode_FULL_DUPLEX_STREAMED, []string{body}},
		{"full duplex, chunks", procmode.ProcessingMode_FULL_DUPLEX_STREAMED, []string{body[:10], body[10:200], "", body[200:]}},
		{"no protocol config, chunks", 0, []string{body[:50], body[50:]}},
		{"buffered", procmode.ProcessingMode_BUFFERED, []string{body}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := route.Parse("round-robin", policies.Env{Seed: 1, BlockSize: 16})
			rec := &recordingPolicy{Policy: p}
			r := epRouter(t, Config{Policy: rec}, "", true, up.URL)
			g := openStream(t, extProcClient(t, r, ExtProcConfig{}))
			first := requestHeaders("/v1/completions", false, nil)
			if tc.mode != 0 {
				withMode(first, tc.mode)
			}
			g.send(first)
			var common *extprocv3.CommonResponse
			var resp *extprocv3.ProcessingResponse
			if tc.mode == procmode.ProcessingMode_BUFFERED {
				// The data plane waits for the headers' answer before sending the body.
				if h := g.recv().GetRequestHeaders(); h == nil || h.GetResponse().GetHeaderMutation() != nil {
					t.Fatalf("headers answered with %v, want a plain continue", h)
				}
				g.send(requestBody(body, true))
				resp = g.recv()
				common = resp.GetRequestBody().GetResponse()
				if common.GetBodyMutation() != nil {
					t.Errorf("a buffered body is mutated: %v", common.GetBodyMutation())
				}
			} else {
				for i, c := range tc.chunks {
					g.send(requestBody(c, i == len(tc.chunks)-1))
				}
				resp = g.recv()
				common = resp.GetRequestHeaders().GetResponse()
				var back strings.Builder
				for done := false; !done; {
					b := g.recv().GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
					if b == nil {
						t.Fatal("the body is not sent back as a streamed response")
					}
					back.Write(b.GetBody())
					done = b.GetEndOfStream()
				}
				if back.String() != body {
					t.Errorf("body sent back %q, want %q", back.String(), body)
				}
			}
			if got := destination(t, resp, common); got != host(up) {
				t.Errorf("destination %q, want %q", got, host(up))
			}
			if diff := cmp.Diff([]int{100}, rec.promptTokens()); diff != "" {
				t.Errorf("prompt tokens routed (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExtProcBodyEndedByTrailers: a streamed body that ends with trailers rather than
// end_of_stream is routed when the trailers come, and goes back without end_of_stream.
func TestExtProcBodyEndedByTrailers(t *testing.T) {
	up := newStub(t, "a")
	r := epRouter(t, Config{}, "round-robin", true, up.URL)
	g := openStream(t, extProcClient(t, r, ExtProcConfig{}))
	g.send(requestHeaders("/v1/completions", false, nil), requestBody(`{"prompt":`, false), requestBody(`"x"}`, false),
		&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}})
	resp := g.recv()
	if dest := destination(t, resp, resp.GetRequestHeaders().GetResponse()); dest != host(up) {
		t.Errorf("destination %q", dest)
	}
	b := g.recv().GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
	if string(b.GetBody()) != `{"prompt":"x"}` || b.GetEndOfStream() {
		t.Errorf("body sent back %q, end_of_stream %v", b.GetBody(), b.GetEndOfStream())
	}
	if g.recv().GetRequestTrailers() == nil {
		t.Error("the trailers are not answered")
	}
}

// TestExtProcSharesThePolicyWithTheProxy: the gateway's requests and the proxy's are
// routed by one policy object: round-robin alternates across both front doors.
func TestExtProcSharesThePolicyWithTheProxy(t *testing.T) {
	a, b := newStub(t, "a"), newStub(t, "b")
	close(a.release)
	close(b.release)
	r := epRouter(t, Config{}, "round-robin", true, a.URL, b.URL)
	url := serve(t, r.Handler())
	conn := extProcClient(t, r, ExtProcConfig{})
	var got []string
	for i := range 4 {
		if i%2 == 0 {
			_, dest := routed(t, conn, `{"prompt":"x"}`, nil)
			got = append(got, "gateway:"+dest)
			continue
		}
		resp, err := httpPost(url+"/v1/completions", `{"prompt":"x"}`)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, "proxy:"+resp)
	}
	want := []string{"gateway:" + host(a), "proxy:" + host(b), "gateway:" + host(a), "proxy:" + host(b)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("destinations (-want +got):\n%s", diff)
	}
	if n := counterValue(r.decisions.WithLabelValues(a.URL)); n != 2 {
		t.Errorf("decisions for a: %v, want 2", n)
	}
}

// TestExtProcFollowsScrapedLoad: least-request through the gateway avoids the endpoint
// whose scraped queues are long, as through the proxy (TestRoutesOnScrapedLoad).
func TestExtProcFollowsScrapedLoad(t *testing.T) {
	a, b := newStub(t, "a"), newStub(t, "b")
	a.mu.Lock()
	a.waiting, a.running = 5, 8
	a.mu.Unlock()
	r := epRouter(t, Config{}, "least-request", true, a.URL, b.URL)
	conn := extProcClient(t, r, ExtProcConfig{})
	for range 3 {
		if _, dest := routed(t, conn, `{"prompt":"x"}`, nil); dest != host(b) {
			t.Errorf("routed to %q, want the idle %q", dest, host(b))
		}
	}
	// Then b's queues fill and a's empty: the next scrapes turn the gateway's picks.
	a.mu.Lock()
	a.waiting, a.running = 0, 0
	a.mu.Unlock()
	b.mu.Lock()
	b.waiting, b.running = 9, 9
	b.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, dest := routed(t, conn, `{"prompt":"x"}`, nil); dest == host(a) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateway's picks never followed the new load")
		}
	}
}

func TestExtProcSubsetHint(t *testing.T) {
	a, b, c := newStub(t, "a"), newStub(t, "b"), newStub(t, "c")
	r := epRouter(t, Config{}, "round-robin", true, a.URL, b.URL, c.URL)
	conn := extProcClient(t, r, ExtProcConfig{})
	_, aPort, _ := net.SplitHostPort(host(a))
	for _, tc := range []struct {
		name   string
		subset any
		want   []string // the destinations allowed; nil: 503
	}{
		{"list of one", []any{host(b)}, []string{host(b)}},
		{"list of two", []any{host(c), host(a)}, []string{host(a), host(c)}},
		{"comma-separated string", host(c) + ", " + host(b), []string{host(b), host(c)}},
		{"bare address admits every port", []any{"127.0.0.1"}, []string{host(a), host(b), host(c)}},
		{"an endpoint the router does not have", []any{"10.0.0.1:" + aPort}, nil},
		{"empty list", []any{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			for range 6 {
				if tc.want == nil {
					g := openStream(t, conn)
					g.send(requestHeaders("/v1/completions", false, subsetHint(t, tc.subset)), requestBody(`{"prompt":"x"}`, true))
					if code, msg := immediateStatus(t, g); code != 503 || !strings.Contains(msg, "subset") {
						t.Errorf("status %d %q, want 503 naming the subset", code, msg)
					}
					continue
				}
				_, dest := routed(t, conn, `{"prompt":"x"}`, subsetHint(t, tc.subset))
				seen[dest] = true
			}
			if tc.want == nil {
				return
			}
			var got []string
			for d := range seen {
				got = append(got, d)
			}
			if diff := cmp.Diff(tc.want, got, cmpSorted); diff != "" {
				t.Errorf("destinations over 6 round-robin requests (-want +got):\n%s", diff)
			}
		})
	}
}

var cmpSorted = cmpopts.SortSlices(func(a, b string) bool { return a < b })

// httpPost sends a completion through the proxy and returns the endpoint that served it.
func httpPost(url, body string) (string, error) {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.Header.Get(serving.ServedEndpointHeader), nil
}

// TestExtProcFallbacks: fallbacks follow the primary in the order the policy ranks the
// rest, the order the proxy fails over in; a subset bounds them too.
func TestExtProcFallbacks(t *testing.T) {
	a, b, c := newStub(t, "a"), newStub(t, "b"), newStub(t, "c")
	for s, load := range map[*stub]int{a: 5, b: 0, c: 2} {
		s.mu.Lock()
		s.waiting = load
		s.mu.Unlock()
	}
	r := epRouter(t, Config{}, "least-request", true, a.URL, b.URL, c.URL)
	eventually(t, "scraped loads", func() bool { return r.endpoints[0].view().Waiting == 5 && r.endpoints[2].view().Waiting == 2 })
	conn := extProcClient(t, r, ExtProcConfig{Fallbacks: 2})
	_, all := routed(t, conn, `{"prompt":"x"}`, nil)
	_, subset := routed(t, conn, `{"prompt":"x"}`, subsetHint(t, []any{host(a), host(c)}))
	want := []string{host(b) + "," + host(c) + "," + host(a), host(c) + "," + host(a)}
	if diff := cmp.Diff(want, []string{all, subset}); diff != "" {
		t.Errorf("destination lists (-want +got):\n%s", diff)
	}
	if _, err := r.NewExtProcServer(ExtProcConfig{Fallbacks: -1}); err == nil {
		t.Error("negative fallbacks accepted")
	}
}

// TestExtProcErrors: the picker's own refusals reach the client as immediate responses
// with the statuses GIE's picker uses, in OpenAI's error shape.
func TestExtProcErrors(t *testing.T) {
	up := newStub(t, "a")
	r := epRouter(t, Config{APIKey: "router-key"}, "round-robin", true, up.URL)
	conn := extProcClient(t, r, ExtProcConfig{})
	dead := epRouter(t, Config{}, "round-robin", false, "http://127.0.0.1:1")
	deadConn := extProcClient(t, dead, ExtProcConfig{})
	auth := []string{"authorization", "Bearer router-key"}
	for _, tc := range []struct {
		name    string
		conn    *grpc.ClientConn
		headers []string
		body    []string
		status  int
	}{
		{"not JSON", conn, auth, []string{`{"prompt":`, `"x"`}, 400},
		{"JSON but not an object", conn, auth, []string{`["x"]`}, 400},
		{"empty body", conn, auth, []string{""}, 400},
		{"no key", conn, nil, []string{`{"prompt":"x"}`}, 401},
		{"wrong key", conn, []string{"authorization", "Bearer nope"}, []string{`{"prompt":"x"}`}, 401},
		{"no healthy endpoint", deadConn, nil, []string{`{"prompt":"x"}`}, 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := openStream(t, tc.conn)
			g.send(requestHeaders("/v1/completions", false, nil, tc.headers...))
			if tc.status != 401 { // refused on the headers, before any body
				for i, c := range tc.body {
					g.send(requestBody(c, i == len(tc.body)-1))
				}
			}
			if code, _ := immediateStatus(t, g); code != tc.status {
				t.Errorf("status %d, want %d", code, tc.status)
			}
		})
	}
	t.Run("unsupported body mode", func(t *testing.T) {
		g := openStream(t, conn)
		g.send(withMode(requestHeaders("/v1/completions", false, nil, auth...), procmode.ProcessingMode_STREAMED))
		_, err := g.s.Recv()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "FULL_DUPLEX_STREAMED") {
			t.Errorf("err %v, want InvalidArgument naming the modes that work", err)
		}
	})
}

// TestExtProcInFlight: a request counts against --max-inflight from its pick until the
// gateway reports the response's end, or until its stream ends without one (a client that
// went away), shared with the proxy.
func TestExtProcInFlight(t *testing.T) {
	a, b := newStub(t, "a"), newStub(t, "b")
	r := epRouter(t, Config{MaxInFlight: 1}, "round-robin", true, a.URL, b.URL)
	conn := extProcClient(t, r, ExtProcConfig{})
	inflight := func() int { return len(r.inflight) }

	g, dest := routed(t, conn, `{"prompt":"x","stream":true}`, nil)
	if inflight() != 1 {
		t.Fatalf("in flight after the pick: %d, want 1", inflight())
	}
	shed := openStream(t, conn)
	shed.send(requestHeaders("/v1/completions", false, nil), requestBody(`{"prompt":"x"}`, true))
	if code, _ := immediateStatus(t, shed); code != 429 {
		t.Errorf("over the cap: status %d, want 429", code)
	}
	// The proxy's requests count against the same cap.
	resp, err := http.Post(serve(t, r.Handler())+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the proxy over the gateway's request: status %d, want 429", resp.StatusCode)
	}

	// The response: headers (naming the endpoint that served it), chunks sent back as they
	// come, and the count closed at the last.
	served := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{DestinationEndpointNamespace: {Fields: map[string]*structpb.Value{
		DestinationEndpointServedKey: structpb.NewStringValue(dest)}}}}
	g.send(responseHeaders(false, served))
	if h := setHeaders(t, g.recv().GetResponseHeaders().GetResponse().GetHeaderMutation()); h[serving.ServedEndpointHeader] != dest {
		t.Errorf("response headers set %v, want %s: %s", h, serving.ServedEndpointHeader, dest)
	}
	for i, chunk := range []string{"data: 1\n\n", "data: [DONE]\n\n"} {
		last := i == 1
		g.send(responseBody(chunk, last))
		sr := g.recv().GetResponseBody().GetResponse().GetBodyMutation().GetStreamedResponse()
		if string(sr.GetBody()) != chunk || sr.GetEndOfStream() != last {
			t.Errorf("response chunk %d sent back as %q eos %v", i, sr.GetBody(), sr.GetEndOfStream())
		}
		if want := map[bool]int{false: 1, true: 0}[last]; inflight() != want {
			t.Errorf("in flight after response chunk %d: %d, want %d", i, inflight(), want)
		}
	}
	g.s.CloseSend()

	// A client that goes away mid-response frees its place when its stream ends.
	g2, _ := routed(t, conn, `{"prompt":"x"}`, nil)
	g2.send(responseHeaders(false, nil))
	g2.recv()
	if inflight() != 1 {
		t.Fatalf("in flight: %d, want 1", inflight())
	}
	g2.cancel()
	deadline := time.Now().Add(10 * time.Second)
	for inflight() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a cancelled stream still counts in flight")
		}
		time.Sleep(time.Millisecond)
	}
	// And the next request is served.
	routed(t, conn, `{"prompt":"x"}`, nil)
}

// TestExtProcHeadersOnly: a request without a body (a GET) is routed on its headers.
func TestExtProcHeadersOnly(t *testing.T) {
	up := newStub(t, "a")
	r := epRouter(t, Config{EngineAPIKey: "engine-key"}, "round-robin", true, up.URL)
	g := openStream(t, extProcClient(t, r, ExtProcConfig{}))
	g.send(requestHeaders("/v1/models", true, nil, "authorization", "Bearer client"))
	resp := g.recv()
	common := resp.GetRequestHeaders().GetResponse()
	if dest := destination(t, resp, common); dest != host(up) {
		t.Errorf("destination %q", dest)
	}
	// As the proxy, the engines' key replaces the client's.
	if got := setHeaders(t, common.GetHeaderMutation())["authorization"]; got != "Bearer engine-key" {
		t.Errorf("authorization set to %q", got)
	}
}

func TestExtProcHealth(t *testing.T) {
	up := newStub(t, "a")
	r := epRouter(t, Config{}, "round-robin", true, up.URL)
	dead := epRouter(t, Config{}, "round-robin", false, "http://127.0.0.1:1")
	for _, tc := range []struct {
		r       *Router
		service string
		want    healthpb.HealthCheckResponse_ServingStatus
		code    codes.Code
	}{
		{r, "liveness", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{r, "readiness", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{r, "envoy.service.ext_proc.v3.ExternalProcessor", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{dead, "liveness", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{dead, "readiness", healthpb.HealthCheckResponse_NOT_SERVING, codes.OK},
		{r, "nothing", 0, codes.NotFound},
	} {
		hc := healthpb.NewHealthClient(extProcClient(t, tc.r, ExtProcConfig{}))
		resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: tc.service})
		if status.Code(err) != tc.code || resp.GetStatus() != tc.want {
			t.Errorf("%s: %v, %v; want %v, %v", tc.service, resp.GetStatus(), err, tc.want, tc.code)
		}
	}
}

// TestStreamedBodyChunks: bodies go back in chunks of at most GIE's 62000 bytes, with
// end_of_stream on the last only.
func TestStreamedBodyChunks(t *testing.T) {
	for _, tc := range []struct {
		n    int
		eos  bool
		want []int
	}{
		{0, true, []int{0}},
		{5, true, []int{5}},
		{bodyByteLimit, true, []int{bodyByteLimit}},
		{2*bodyByteLimit + 6000, true, []int{bodyByteLimit, bodyByteLimit, 6000}},
		{bodyByteLimit + 1, false, []int{bodyByteLimit, 1}},
	} {
		body := []byte(strings.Repeat("x", tc.n))
		var got []int
		var back []byte
		resps := streamedBody(body, tc.eos, false)
		for i, r := range resps {
			sr := r.GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
			got = append(got, len(sr.GetBody()))
			back = append(back, sr.GetBody()...)
			if want := tc.eos && i == len(resps)-1; sr.GetEndOfStream() != want {
				t.Errorf("%d bytes: chunk %d end_of_stream %v, want %v", tc.n, i, sr.GetEndOfStream(), want)
			}
		}
		if diff := cmp.Diff(tc.want, got); diff != "" || len(back) != tc.n {
			t.Errorf("%d bytes: chunk sizes (-want +got):\n%s", tc.n, diff)
		}
	}
}

// TestExtProcRequestPhaseTimeout: a stream whose request does not arrive within the
// router's body timeout is ended with DeadlineExceeded (the HTTP path's 408), while a
// routed request's response may take longer.
func TestExtProcRequestPhaseTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	a := newStub(t, "a")
	r := epRouter(t, Config{BodyTimeout: timeout}, "round-robin", true, a.URL)
	conn := extProcClient(t, r, ExtProcConfig{})
	for _, tc := range []struct {
		name string
		sent []*extprocv3.ProcessingRequest
	}{
		{"nothing sent", nil},
		{"headers, then a body that stops", []*extprocv3.ProcessingRequest{requestHeaders("/v1/completions", false, nil), requestBody(`{"prompt":"x",`, false)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := openStream(t, conn)
			start := time.Now()
			g.send(tc.sent...)
			_, err := g.s.Recv()
			// The router's error, not the test stream's own 30 s deadline.
			if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "--body-timeout") {
				t.Fatalf("stalled stream: Recv = %v, want DeadlineExceeded", err)
			}
			if el := time.Since(start); el < timeout {
				t.Errorf("cut off after %s, before the body timeout %s", el, timeout)
			}
		})
	}
	t.Run("response phase unbounded", func(t *testing.T) {
		g, _ := routed(t, conn, `{"prompt":"x"}`, nil)
		time.Sleep(2 * timeout) // past the request phase's deadline, waiting for the upstream
		g.send(responseHeaders(false, nil))
		if g.recv().GetResponseHeaders() == nil {
			t.Fatal("the response's headers were not answered after the body timeout passed")
		}
	})
}
