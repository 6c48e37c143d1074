// Package router is servelab's endpoint picker: an OpenAI-compatible proxy that routes each
// request with a policies/route policy — the same objects the simulator routes with — over
// live views of its endpoints. Views come from each endpoint's /metrics, scraped with vLLM's
// metric names (so vLLM and llm-d-inference-sim servers work too), and, where an endpoint
// offers /v1/kv_events (servelab's engine), from its KV events: an exact prefix index, as
// llm-d's precise prefix-cache scorer uses.
package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"servelab/policies/route"
	"servelab/serving"
)

// Config assembles a router.
type Config struct {
	// Endpoints are the engines' base URLs (http://host:port).
	Endpoints []string
	Policy    route.Policy
	// ScrapeInterval is how often /metrics is read; 0 means 50 ms.
	ScrapeInterval time.Duration
	// BlockSize is the engines' KV block size, for hashing prompts; 0 means 16.
	BlockSize int
	// Encode, if set, turns prompt text into the engines' token ids, so prompt hashes
	// equal the engines' block hashes. Without it prompts are hashed by bytes (4 per
	// token), which serves prefix-affinity routing but cannot match KV events. It is
	// called with the request's context, and need only return the ids an engine could
	// accept (a prompt over the engines' context is refused by them anyway): the router
	// wires it to tokenizer.EncodePrefix with the model's max_position_embeddings, so a
	// huge prompt costs no more than the longest valid one.
	Encode func(ctx context.Context, text string) []int32
	// KVEvents subscribes to each endpoint's /v1/kv_events for an exact prefix index.
	KVEvents bool
	// Registry receives the router's metrics; nil makes one. Served at /metrics.
	Registry *prometheus.Registry
	Client   *http.Client
}

// Router proxies OpenAI requests to the endpoint its policy picks.
type Router struct {
	cfg       Config
	endpoints []*endpoint
	mux       *http.ServeMux
	nextID    atomic.Uint64

	mu    sync.Mutex // serialises the policy, which is not safe for concurrent use
	views []serving.InstanceView

	decisions *prometheus.CounterVec
	scoring   prometheus.Histogram
	retries   prometheus.Counter

	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// New builds a router and starts scraping its endpoints.
func New(cfg Config) (*Router, error) {
	if len(cfg.Endpoints) == 0 || cfg.Policy == nil {
		return nil, errors.New("router: endpoints and a policy are required")
	}
	if cfg.ScrapeInterval <= 0 {
		cfg.ScrapeInterval = 50 * time.Millisecond
	}
	if cfg.BlockSize <= 0 {
		cfg.BlockSize = 16
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	}
	r := &Router{cfg: cfg, mux: http.NewServeMux()}
	for i, u := range cfg.Endpoints {
		u = strings.TrimRight(u, "/")
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("router: endpoint %q: want an http:// or https:// URL", u)
		}
		r.endpoints = append(r.endpoints, &endpoint{index: i, url: u})
	}
	r.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "servelab_router_decisions_total", Help: "Requests routed, by endpoint.",
	}, []string{"endpoint"})
	r.scoring = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "servelab_router_scoring_seconds", Help: "Time the routing policy took per decision.",
		Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10),
	})
	r.retries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "servelab_router_retries_total", Help: "Requests resent to another endpoint after a failure.",
	})
	healthy := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "servelab_router_healthy_endpoints", Help: "Endpoints currently answering.",
	}, func() float64 {
		n := 0
		for _, e := range r.endpoints {
			if e.healthy() {
				n++
			}
		}
		return float64(n)
	})
	cfg.Registry.MustRegister(r.decisions, r.scoring, r.retries, healthy)
	for _, e := range r.endpoints {
		r.decisions.WithLabelValues(e.url)
	}
	r.mux.HandleFunc("/v1/completions", r.proxy)
	r.mux.HandleFunc("/v1/chat/completions", r.proxy)
	r.mux.HandleFunc("/v1/models", r.models)
	r.mux.HandleFunc("/health", r.health)
	r.mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))

	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	for _, e := range r.endpoints {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.scrapeLoop(ctx, e) }()
		if cfg.KVEvents {
			r.wg.Add(1)
			go func() { defer r.wg.Done(); r.eventLoop(ctx, e) }()
		}
	}
	return r, nil
}

// Handler is the router's HTTP handler.
func (r *Router) Handler() http.Handler { return r.mux }

// Close stops scraping and event subscriptions.
func (r *Router) Close() {
	if r.closed.Swap(true) {
		return
	}
	r.stop()
	r.wg.Wait()
}

// WaitReady waits until every endpoint has answered a scrape, or ctx ends.
func (r *Router) WaitReady(ctx context.Context) error {
	for {
		ready := true
		for _, e := range r.endpoints {
			ready = ready && e.healthy()
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("router: endpoints not ready: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (r *Router) health(w http.ResponseWriter, _ *http.Request) {
	for _, e := range r.endpoints {
		if e.healthy() {
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	writeError(w, http.StatusServiceUnavailable, "no healthy endpoint")
}

func (r *Router) models(w http.ResponseWriter, req *http.Request) {
	for _, e := range r.endpoints {
		if !e.healthy() {
			continue
		}
		resp, err := r.forward(req.Context(), e, req, nil)
		if err != nil {
			continue
		}
		defer resp.Body.Close()
		copyResponse(w, resp)
		return
	}
	writeError(w, http.StatusServiceUnavailable, "no healthy endpoint")
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": msg, "type": http.StatusText(status), "param": nil, "code": status,
	}})
}

// routingRequest builds the policy's view of a request body: prompt length and block hashes.
func (r *Router) routingRequest(ctx context.Context, path string, body []byte) *serving.Request {
	var parsed struct {
		Prompt   json.RawMessage `json:"prompt"`
		Messages []struct {
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
		Priority int `json:"priority"`
	}
	json.Unmarshal(body, &parsed) // a malformed body is routed anyway; the engine rejects it
	var text strings.Builder
	var ids []int32
	if strings.HasSuffix(path, "/chat/completions") {
		for _, m := range parsed.Messages {
			var s string
			if json.Unmarshal(m.Content, &s) != nil {
				s = string(m.Content)
			}
			text.WriteString(m.Role)
			text.WriteByte('\n')
			text.WriteString(s)
			text.WriteByte('\n')
		}
	} else {
		var s string
		if json.Unmarshal(parsed.Prompt, &s) == nil {
			text.WriteString(s)
		} else {
			json.Unmarshal(parsed.Prompt, &ids)
		}
	}
	req := &serving.Request{ID: r.nextID.Add(1), Priority: parsed.Priority}
	switch {
	case ids != nil:
	case r.cfg.Encode != nil:
		ids = r.cfg.Encode(ctx, text.String())
	default:
		// Bytes stand in for tokens, about four per token.
		s := text.String()
		req.PromptTokens = (len(s) + 3) / 4
		byteIDs := make([]int32, len(s)/4)
		for i := range byteIDs {
			byteIDs[i] = int32(s[4*i]) | int32(s[4*i+1])<<8 | int32(s[4*i+2])<<16 | int32(s[4*i+3])<<24
		}
		req.BlockHashes = serving.TokenBlockHashes(byteIDs, r.cfg.BlockSize)
		return req
	}
	req.PromptTokens = len(ids)
	req.BlockHashes = serving.TokenBlockHashes(ids, r.cfg.BlockSize)
	return req
}

// pick routes req among healthy endpoints not in exclude.
func (r *Router) pick(req *serving.Request, exclude map[*endpoint]bool) *endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.views = r.views[:0]
	var cands []*endpoint
	for _, e := range r.endpoints {
		if exclude[e] || !e.healthy() {
			continue
		}
		r.views = append(r.views, e.view())
		cands = append(cands, e)
	}
	if len(cands) == 0 {
		return nil
	}
	start := time.Now()
	i := r.cfg.Policy.Route(req, r.views)
	r.scoring.Observe(time.Since(start).Seconds())
	if i < 0 || i >= len(cands) {
		i = 0
	}
	return cands[i]
}

func (r *Router) proxy(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, 32<<20))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	rr := r.routingRequest(req.Context(), req.URL.Path, body)
	tried := map[*endpoint]bool{}
	for {
		e := r.pick(rr, tried)
		if e == nil {
			writeError(w, http.StatusServiceUnavailable, "no healthy endpoint left to try")
			return
		}
		if len(tried) > 0 {
			r.retries.Inc()
		}
		tried[e] = true
		resp, err := r.forward(req.Context(), e, req, body)
		if err != nil {
			if req.Context().Err() != nil {
				return // the client went away
			}
			e.markDown()
			continue
		}
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
			// The endpoint failed before answering anything; another may succeed.
			resp.Body.Close()
			e.markDown()
			continue
		}
		r.decisions.WithLabelValues(e.url).Inc()
		copyResponse(w, resp)
		resp.Body.Close()
		return
	}
}

func (r *Router) forward(ctx context.Context, e *endpoint, in *http.Request, body []byte) (*http.Response, error) {
	out, err := http.NewRequestWithContext(ctx, in.Method, e.url+in.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Content-Type", "Authorization", "Accept"} {
		if v := in.Header.Get(h); v != "" {
			out.Header.Set(h, v)
		}
	}
	return r.cfg.Client.Do(out)
}

// copyResponse passes the response through, flushing every read so SSE streams are not
// buffered.
func copyResponse(w http.ResponseWriter, resp *http.Response) {
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}
