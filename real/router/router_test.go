package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
)

// stub is an upstream that reports vLLM gauges and streams a completion in two chunks,
// the second only after release is closed.
type stub struct {
	*httptest.Server
	mu               sync.Mutex
	waiting, running int
	hits             int
	release          chan struct{}
	// key, if set, is wanted as a Bearer token on /v1/* (as the engine's --api-key).
	key string
	// sick makes /metrics answer 500.
	sick bool
	// auths are the Authorization headers seen on /v1/*, events the /v1/kv_events requests.
	auths  []string
	events int
}

func newStub(t testing.TB, name string) *stub {
	t.Helper()
	s := &stub{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.sick {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} %d\n", s.waiting)
		fmt.Fprintf(w, "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} %d\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n", s.running)
	})
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model","owned_by":"stub","max_model_len":512}]}`)
	})
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits++
		s.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: {\"from\":%q}\n\n", name)
		w.(http.Flusher).Flush()
		select {
		case <-s.release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	mux.HandleFunc("/v1/kv_events", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.events++
		s.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"seq\":1,\"events\":[{\"type\":\"AllBlocksCleared\"},{\"type\":\"BlockStored\",\"block_hashes\":[7]}]}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			s.mu.Lock()
			key, auth := s.key, r.Header.Get("Authorization")
			s.auths = append(s.auths, auth)
			s.mu.Unlock()
			if key != "" && auth != "Bearer "+key {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func newRouter(t testing.TB, spec string, scrape time.Duration, urls ...string) (*Router, string, *prometheus.Registry) {
	t.Helper()
	p, err := route.Parse(spec, policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := New(Config{Endpoints: urls, Policy: p, ScrapeInterval: scrape, Registry: reg, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	// Generous: the first scrapes of a local stub are quick, unless the machine is loaded.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return r, serve(t, r.Handler()), reg
}

// serve serves h on loopback for the test's life.
func serve(t testing.TB, h http.Handler) string {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts.URL
}

func TestStreamingPassesThroughUnbuffered(t *testing.T) {
	up := newStub(t, "a")
	_, url, _ := newRouter(t, "round-robin", 5*time.Millisecond, up.URL)
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hi","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// The first chunk arrives while the upstream is still holding the rest back.
	line, err := br.ReadString('\n')
	if err != nil || line != "data: {\"from\":\"a\"}\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(up.release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "[DONE]") {
		t.Errorf("rest %q", rest)
	}
}

func TestFailoverMarksEndpointDown(t *testing.T) {
	good, bad := newStub(t, "good"), newStub(t, "bad")
	close(good.release)
	r, url, reg := newRouter(t, "round-robin", time.Hour, bad.URL, good.URL)
	bad.Close() // dies after the router saw it healthy; no scrape notices before the requests
	for range 4 {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "good") {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	}
	if r.endpoints[0].healthy() {
		t.Error("the dead endpoint is still healthy")
	}
	if n := counterValue(r.retries); n < 1 {
		t.Errorf("retries %v", n)
	}
	if n := counterValue(r.decisions.WithLabelValues(good.URL)); n != 4 {
		t.Errorf("decisions for the good endpoint %v, want 4", n)
	}
	_ = reg
}

func TestRoutesOnScrapedLoad(t *testing.T) {
	a, b := newStub(t, "a"), newStub(t, "b")
	close(a.release)
	close(b.release)
	a.mu.Lock()
	a.waiting, a.running = 5, 8
	a.mu.Unlock()
	_, url, _ := newRouter(t, "least-request", 5*time.Millisecond, a.URL, b.URL)
	time.Sleep(30 * time.Millisecond) // a few scrapes
	for range 3 {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), `"b"`) {
			t.Errorf("routed to the loaded endpoint: %s", body)
		}
	}
}

// TestSamePolicyObjectsAsTheSimulator routes one sequence of requests through the router's
// picker and through the policy directly (as the simulator calls it) with equal views.
func TestSamePolicyObjectsAsTheSimulator(t *testing.T) {
	for _, spec := range []string{"round-robin", "power-of-two", "prefix-affinity", "weighted", "random"} {
		env := policies.Env{Seed: 42, BlockSize: 16}
		simPolicy, err := route.Parse(spec, env)
		if err != nil {
			t.Fatal(err)
		}
		realPolicy, _ := route.Parse(spec, env)
		r := &Router{cfg: Config{Policy: realPolicy, BlockSize: 16}}
		r.scoring = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"})
		for i := range 3 {
			r.endpoints = append(r.endpoints, &endpoint{index: i, url: fmt.Sprint("http://e", i), up: true, waiting: i, running: 2 * (2 - i), kvUsage: 0.1 * float64(i)})
		}
		for n := range 50 {
			req := r.routingRequest(context.Background(), "/v1/completions", []byte(fmt.Sprintf(`{"prompt":"shared system prompt %d, then question %d"}`, n%4, n)))
			views := make([]serving.InstanceView, len(r.endpoints))
			for i, e := range r.endpoints {
				views[i] = e.view()
			}
			want := simPolicy.Route(req, views)
			if got := r.pick(req, nil); got.index != want {
				t.Fatalf("%s: request %d: router picked %d, the policy %d", spec, n, got.index, want)
			}
		}
	}
}

func TestParseMetrics(t *testing.T) {
	text := "# HELP x\nvllm:num_requests_running{a=\"1\"} 3\nvllm:num_requests_running{a=\"2\"} 4\nvllm:kv_cache_usage_perc 0.5\nother 9\nvllm:num_requests_waiting 2e+00\n"
	var e endpoint
	if err := parseMetrics(strings.NewReader(text), func(n string, v float64) { scraped[n](&e, v) }); err != nil {
		t.Fatal(err)
	}
	if e.running != 7 || e.waiting != 2 || e.kvUsage != 0.5 {
		t.Errorf("parsed running %d waiting %d kv %v", e.running, e.waiting, e.kvUsage)
	}
	if err := parseMetrics(strings.NewReader("vllm:num_requests_running nope\n"), func(string, float64) {}); err == nil {
		t.Error("a bad value was accepted")
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestResponseNamesTheServedEndpoint: every routed response names the engine that served
// it (GIE's x-gateway-destination-endpoint-served, as host:port), the one the body came
// from, including after a failover.
func TestResponseNamesTheServedEndpoint(t *testing.T) {
	a, b, dead := newStub(t, "a"), newStub(t, "b"), newStub(t, "dead")
	close(a.release)
	close(b.release)
	_, url, _ := newRouter(t, "round-robin", time.Hour, dead.URL, a.URL, b.URL)
	dead.Close()
	hosts := map[string]string{"a": strings.TrimPrefix(a.URL, "http://"), "b": strings.TrimPrefix(b.URL, "http://")}
	seen := map[string]bool{}
	for range 6 {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","stream":true}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		served := resp.Header.Get(serving.ServedEndpointHeader)
		for name, host := range hosts {
			if strings.Contains(string(body), `"from":"`+name+`"`) {
				seen[name] = true
				if served != host {
					t.Errorf("body from %s (%s), header %s %q", name, host, serving.ServedEndpointHeader, served)
				}
			}
		}
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("round-robin over the live endpoints served %v", seen)
	}
}

// TestResponseSaysWhenItWasRouted: the routed-at header is the decision's time, between the
// request's send and its answer, increasing over sequential requests, and the first
// decision's when a failed endpoint made the router try another.
func TestResponseSaysWhenItWasRouted(t *testing.T) {
	a, dead := newStub(t, "a"), newStub(t, "dead")
	close(a.release)
	_, url, _ := newRouter(t, "round-robin", time.Hour, dead.URL, a.URL)
	dead.Close()
	var last int64
	for range 4 {
		before := time.Now().UnixNano()
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","stream":true}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		after := time.Now().UnixNano()
		at, err := strconv.ParseInt(resp.Header.Get(serving.RoutedAtHeader), 10, 64)
		if err != nil {
			t.Fatalf("%s %q: %v", serving.RoutedAtHeader, resp.Header.Get(serving.RoutedAtHeader), err)
		}
		if at < before || at > after || at <= last {
			t.Errorf("routed at %d: want within [%d, %d] and after the previous request's %d", at, before, after, last)
		}
		last = at
	}
}

// readyRouter builds a router from cfg, closed when the test ends, and waits (generously:
// a loaded machine scrapes local stubs slowly) until its endpoints have been scraped.
func readyRouter(t testing.TB, cfg Config) *Router {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}
