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
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"servelab/metrics"
	"servelab/policies/flow"
	"servelab/policies/route"
	"servelab/serving"
)

// Config assembles a router.
type Config struct {
	// Endpoints are the engines' base URLs (http://host:port), each optionally ROLE=URL
	// (ParseEndpoint) and URL#kv-events=tcp://...[&kv-events-replay=tcp://...]
	// (ParseEndpointKVEvents: the engine's own ZeroMQ KV-event addresses). It may be empty when the
	// endpoints are given later, and changed while the router runs, with SetEndpoints
	// (Kubernetes discovery does).
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
	// EncodeChat, if set, turns a chat request's messages into the token ids the engines
	// run: their chat template applied, as the engine does (chat.go). Without it chat
	// prompts are hashed from their role and content text, which cannot match KV events.
	EncodeChat func(ctx context.Context, msgs []ChatMessage) []int32
	// KVEvents subscribes to each endpoint's /v1/kv_events for an exact prefix index.
	KVEvents bool
	// KVEventsZMQ, if set, follows the endpoints' KV events over ZeroMQ as vLLM publishes
	// them (zmq.go) instead of /v1/kv_events.
	KVEventsZMQ *ZMQConfig
	// Registry receives the router's metrics; nil makes one. Served at /metrics.
	Registry *prometheus.Registry
	Client   *http.Client

	// APIKey, if set, is required as a Bearer token on /v1/* (as vLLM's --api-key);
	// /health and /metrics stay open.
	APIKey string
	// EngineAPIKey, if set, is presented as a Bearer token on everything the router sends
	// the endpoints: proxied requests (replacing the client's Authorization header),
	// /metrics scrapes, /v1/models lookups and /v1/kv_events subscriptions. Without it the
	// client's Authorization header is forwarded unchanged, as llm-d and the Gateway API
	// Inference Extension do.
	EngineAPIKey string
	// BodyTimeout bounds the time to read a request's body, from the start of the handler;
	// a client that trickles its body is answered 408 and disconnected. 0 means
	// DefaultBodyTimeout; negative, none. Responses (long SSE streams) are not bounded.
	BodyTimeout time.Duration
	// MaxInFlight caps the requests being served at once, /health and /metrics aside; over
	// it requests are shed with 429 and Retry-After. 0 means no cap.
	MaxInFlight int
	// PrefillTimeout bounds a prefill leg of a disaggregated request (a P/D policy: its
	// prefill profile's endpoint runs the prompt with max_tokens 1), from sending it to
	// reading its whole response; a leg over it counts as failed. 0 means
	// DefaultPrefillTimeout.
	PrefillTimeout time.Duration
	// Logf receives endpoint transitions (down, back up) and why an endpoint's metrics or
	// KV events are unavailable, each once per cause; nil logs to stderr.
	Logf func(format string, args ...any)

	// FlowControl, if set, holds requests while every endpoint is saturated, as GIE's flow
	// control does (policies/flow, the simulator's; flow.go). With a P/D policy it measures
	// saturation over the decode endpoints and admits to the P/D handler, as llm-d does.
	FlowControl *flow.Config
	// Objectives are the InferenceObjectives requests name (x-gateway-inference-objective
	// or their model): name to priority.
	Objectives flow.Objectives
	// OnFlowDecision, if set, receives every flow-control decision in the order taken.
	OnFlowDecision func(flow.Decision)
	// NoEnginePriority leaves request bodies alone: without it a request whose objective
	// is known and whose body has no priority gets vLLM's priority field, the objective's
	// priority negated. vLLM refuses a nonzero priority unless it runs
	// --scheduling-policy priority (servelab engines take it under any batch policy).
	NoEnginePriority bool
	// SLO is the objectives of requests without x-slo-ttft-ms / x-slo-tpot-ms headers
	// (each header replaces its own); a zero field is no objective. The router counts the
	// requests it proxies by whether they met theirs (servelab_router_slo_requests_total).
	SLO metrics.SLO
}

// DefaultBodyTimeout is Config.BodyTimeout's default: generous for a 32 MiB body on a slow
// link, short enough that a trickling client does not hold a connection for long.
const DefaultBodyTimeout = 60 * time.Second

// Router proxies OpenAI requests to the endpoint its policy picks.
type Router struct {
	cfg Config
	// endpoints is the endpoint set, guarded by mu; SetEndpoints replaces the slice and never
	// modifies one in place, so a slice read under mu (snapshot) stays valid after.
	endpoints []*endpoint
	mux       *http.ServeMux
	handler   http.Handler
	nextID    atomic.Uint64
	inflight  chan struct{} // a semaphore of Config.MaxInFlight slots; nil without a cap

	mu    sync.Mutex // serialises the policy, which is not safe for concurrent use
	views []serving.InstanceView
	// pd is the policy when it is llm-d's P/D profile handler (a P/D EndpointPickerConfig):
	// requests run its decode profile, decider and prefill profile, and the two legs.
	pd     *route.PDProfileHandler
	pviews []serving.InstanceView
	pdm    pdMetrics
	// ab runs an A/B test of two routing policies when Config.Policy is a *route.AB (ab.go).
	ab *abState
	// idPrefix makes the x-request-id the router sends on P/D legs unique across routers.
	idPrefix string
	// flow is the flow control when Config.FlowControl is set (flow.go).
	flow *flowGate

	decisions *prometheus.CounterVec
	scoring   prometheus.Histogram
	retries   prometheus.Counter
	shed      prometheus.Counter
	// kvEventLag is how long after an engine published a KV-event batch (its "ts", at the
	// end of the step that produced it) the batch was in the endpoint's prefix index.
	kvEventLag prometheus.Histogram
	// sloRequests counts proxied requests by SLO outcome (slo.go).
	sloRequests *prometheus.CounterVec

	ctx    context.Context // the endpoints' loops run until it ends (Close)
	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool // set under mu, so no endpoint loop starts after Close
}

// DefaultScrapeInterval is how often the router reads each endpoint's /metrics unless told
// otherwise: llm-d's and GIE's DefaultRefreshMetricsInterval, serving's one default, which
// the simulator's router takes too (sim.ClusterSpec.ScrapeInterval).
const DefaultScrapeInterval = serving.DefaultScrapeInterval

// New builds a router and starts scraping its endpoints.
func New(cfg Config) (*Router, error) {
	if cfg.Policy == nil {
		return nil, errors.New("router: a policy is required")
	}
	if cfg.ScrapeInterval <= 0 {
		cfg.ScrapeInterval = DefaultScrapeInterval
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
	if cfg.BodyTimeout == 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.MaxInFlight < 0 {
		return nil, fmt.Errorf("router: MaxInFlight %d: want 0 (no cap) or more", cfg.MaxInFlight)
	}
	if cfg.Logf == nil {
		l := log.New(os.Stderr, "servelab router: ", log.LstdFlags)
		cfg.Logf = l.Printf
	}
	if cfg.PrefillTimeout <= 0 {
		cfg.PrefillTimeout = DefaultPrefillTimeout
	}
	r := &Router{cfg: cfg, mux: http.NewServeMux(), idPrefix: newIDPrefix()}
	r.pd, _ = cfg.Policy.(*route.PDProfileHandler)
	if cfg.MaxInFlight > 0 {
		r.inflight = make(chan struct{}, cfg.MaxInFlight)
	}
	for i, u := range cfg.Endpoints {
		e, err := r.newEndpoint(i, u)
		if err != nil {
			return nil, err
		}
		r.endpoints = append(r.endpoints, e)
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
		for _, e := range r.snapshot() {
			if e.healthy() {
				n++
			}
		}
		return float64(n)
	})
	r.shed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "servelab_router_shed_total", Help: "Requests refused with 429 because MaxInFlight requests were being served.",
	})
	r.kvEventLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "servelab_router_kv_event_lag_seconds",
		Help:    "Time from an engine publishing a KV-event batch (the end of the step that produced it, its ts) to the batch being in the router's prefix index; across hosts it includes their clock offset.",
		Buckets: prometheus.ExponentialBuckets(1e-5, 2, 16),
	})
	cfg.Registry.MustRegister(r.decisions, r.scoring, r.retries, r.shed, r.kvEventLag, healthy)
	r.pdm = newPDMetrics(cfg.Registry)
	r.initAB()
	r.initSLO()
	for _, e := range r.endpoints {
		e.decisions = r.decisions.WithLabelValues(e.url)
	}
	r.mux.HandleFunc("/v1/completions", r.proxy)
	r.mux.HandleFunc("/v1/chat/completions", r.proxy)
	r.mux.HandleFunc("/v1/models", r.models)
	r.mux.HandleFunc("/v1/models/{id...}", r.model)
	r.mux.HandleFunc("/health", r.health)
	r.mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	r.mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, "NotFoundError", "no such endpoint: "+req.URL.Path)
	})
	r.handler = r.guard(r.mux)

	r.ctx, r.stop = context.WithCancel(context.Background())
	r.initFlow()
	for _, e := range r.endpoints {
		r.startLoops(e)
	}
	return r, nil
}

// Handler is the router's HTTP handler.
func (r *Router) Handler() http.Handler { return r.handler }

// Close stops scraping and event subscriptions.
func (r *Router) Close() {
	r.mu.Lock()
	was := r.closed.Swap(true)
	r.mu.Unlock()
	if was {
		return
	}
	r.stop()
	r.wg.Wait()
}

// WaitReady waits until every endpoint has answered a scrape, or ctx ends.
func (r *Router) WaitReady(ctx context.Context) error {
	for {
		ready := true
		for _, e := range r.snapshot() {
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
	for _, e := range r.snapshot() {
		if e.healthy() {
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	writeError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "no healthy endpoint")
}

// models answers GET /v1/models from the first healthy endpoint that answers it.
func (r *Router) models(w http.ResponseWriter, req *http.Request) {
	if !allow(w, req, http.MethodGet) {
		return
	}
	for _, e := range r.snapshot() {
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
	writeError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "no healthy endpoint")
}

// model answers GET /v1/models/{id} with the model card of that id from the healthy
// endpoints' /v1/models lists (vLLM serves no /v1/models/{id}; OpenAI's API has it).
func (r *Router) model(w http.ResponseWriter, req *http.Request) {
	if !allow(w, req, http.MethodGet) {
		return
	}
	id := req.PathValue("id")
	asked := 0
	for _, e := range r.snapshot() {
		if !e.healthy() {
			continue
		}
		list, err := r.listModels(req.Context(), e, req.Header)
		if err != nil {
			continue
		}
		asked++
		for _, card := range list {
			var c struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(card, &c) == nil && c.ID == id {
				w.Header().Set("Content-Type", "application/json")
				w.Write(append(card, '\n'))
				return
			}
		}
	}
	if asked == 0 {
		writeError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "no healthy endpoint")
		return
	}
	writeErrorParam(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist.", id), "model")
}

// listModels reads an endpoint's /v1/models cards.
func (r *Router) listModels(ctx context.Context, e *endpoint, h http.Header) ([]json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/models", nil)
	if err != nil {
		return nil, err
	}
	r.authorize(out, h)
	resp, err := r.cfg.Client.Do(out)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/v1/models: %s", e.url, resp.Status)
	}
	var list struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&list); err != nil {
		return nil, fmt.Errorf("%s/v1/models: %w", e.url, err)
	}
	return list.Data, nil
}

// allow answers 405 unless req uses method.
func allow(w http.ResponseWriter, req *http.Request, method string) bool {
	if req.Method == method {
		return true
	}
	w.Header().Set("Allow", method)
	writeError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", fmt.Sprintf("method %s is not allowed on %s; use %s", req.Method, req.URL.Path, method))
	return false
}

// writeError answers with OpenAI's error body, {"error": {"message", "type", "param",
// "code"}}, with vLLM's type names and the HTTP status as code, as servelab's engine does.
func writeError(w http.ResponseWriter, status int, typ, msg string) {
	writeErrorParam(w, status, typ, msg, "")
}

func writeErrorParam(w http.ResponseWriter, status int, typ, msg, param string) {
	var p any
	if param != "" {
		p = param
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": p, "code": status,
	}})
}

// routingRequest builds the policy's view of a request body: prompt length and block hashes.
func (r *Router) routingRequest(ctx context.Context, path string, body []byte) *serving.Request {
	var parsed requestFields
	json.Unmarshal(body, &parsed) // a malformed body is routed anyway; the engine rejects it
	req := r.promptRequest(ctx, path, &parsed)
	// The output it asks for, which the predicted-latency scorer reads.
	req.MaxTokens = max(parsed.MaxTokens, parsed.MaxCompletionTokens, 0)
	return req
}

// requestFields are the fields of a request's body the router reads, parsed once.
type requestFields struct {
	Prompt              json.RawMessage `json:"prompt"`
	Messages            []wireMessage   `json:"messages"`
	Priority            int             `json:"priority"`
	MaxTokens           int             `json:"max_tokens"`
	MaxCompletionTokens int             `json:"max_completion_tokens"`
}

// promptRequest is the policy's view of a request's prompt: its tokens (or their stand-in)
// and block hashes.
func (r *Router) promptRequest(ctx context.Context, path string, parsed *requestFields) *serving.Request {
	var text strings.Builder
	var ids []int32
	if strings.HasSuffix(path, "/chat/completions") {
		if req := r.chatRequest(ctx, parsed.Messages, parsed.Priority); req != nil {
			return req
		}
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
	e, _ := r.pickAt(req, exclude)
	return e
}

// pickAt is pick, also returning when the policy ran (read under the lock that orders the
// decisions, so the times order them as the policy saw them; zero when no endpoint was a
// candidate).
func (r *Router) pickAt(req *serving.Request, exclude map[*endpoint]bool) (*endpoint, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.views = r.views[:0]
	var cands []*endpoint
	filter := route.DecodeRoleFilter() // a prefill endpoint does not serve a request alone
	if r.pd != nil {
		filter = r.pd.DecodeFilter
	}
	for _, e := range r.endpoints {
		if exclude[e] || !e.healthy() || !filter.Allows(e.role) {
			continue
		}
		r.views = append(r.views, e.view())
		cands = append(cands, e)
	}
	if len(cands) == 0 {
		return nil, time.Time{}
	}
	start := time.Now()
	i := r.cfg.Policy.Route(req, r.views)
	r.scoring.Observe(time.Since(start).Seconds())
	if i < 0 || i >= len(cands) {
		i = 0
	}
	return cands[i], start
}

func (r *Router) proxy(w http.ResponseWriter, req *http.Request) {
	if !allow(w, req, http.MethodPost) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &tooLarge):
			writeError(w, http.StatusRequestEntityTooLarge, "RequestTooLargeError", fmt.Sprintf("the request body is over %d bytes", tooLarge.Limit))
		case errors.As(err, &ne) && ne.Timeout():
			writeError(w, http.StatusRequestTimeout, "RequestTimeoutError", fmt.Sprintf("the request body did not arrive within %v", r.cfg.BodyTimeout))
		default:
			writeError(w, http.StatusBadRequest, "BadRequestError", "reading the body: "+err.Error())
		}
		return
	}
	if !json.Valid(body) {
		writeError(w, http.StatusBadRequest, "BadRequestError", "the request body is not valid JSON")
		return
	}
	rr := r.routingRequest(req.Context(), req.URL.Path, body)
	if err := withObjectives(rr, req.Header); err != nil {
		writeError(w, http.StatusBadRequest, "BadRequestError", err.Error())
		return
	}
	if r.ab != nil && !r.ab.begin(w, req, rr) {
		return
	}
	// The response is measured from here: its SLO outcome, and its arm's metrics.
	m := newMeter(w, req)
	w = m
	defer r.sloMeasure(m, rr)
	if r.ab != nil {
		defer r.ab.end(m, rr.Arm)
	}
	if r.flow != nil || len(r.cfg.Objectives) > 0 {
		body = r.flowObjective(req, body, rr)
	}
	var admission flowResult // flow control's pick, the first try
	if r.flow != nil {
		var ok bool
		if admission, ok = r.flowAdmit(req.Context(), w, rr); !ok {
			return
		}
	}
	if r.pd != nil {
		r.servePD(w, req, body, rr, admission)
		return
	}
	admitted, admittedAt := admission.e, admission.at
	tried := map[*endpoint]bool{}
	var routedAt time.Time // the first decision's: the order requests reached the policy in
	for {
		e, at := admitted, admittedAt
		if e == nil {
			e, at = r.pickAt(rr, tried)
		}
		admitted = nil
		if routedAt.IsZero() {
			routedAt = at
		}
		if e == nil {
			writeError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", "no healthy endpoint left to try")
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
			e.markDown("proxying: " + cause(err))
			continue
		}
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
			// The endpoint failed before answering anything; another may succeed.
			resp.Body.Close()
			e.markDown("proxying: " + resp.Status)
			continue
		}
		e.decisions.Inc()
		w.Header().Set(serving.ServedEndpointHeader, e.host)
		w.Header().Set(serving.RoutedAtHeader, strconv.FormatInt(routedAt.UnixNano(), 10))
		copyResponse(w, resp)
		resp.Body.Close()
		return
	}
}

// maxBody is the largest request body accepted, as servelab's engine.
const maxBody = 32 << 20

func (r *Router) forward(ctx context.Context, e *endpoint, in *http.Request, body []byte) (*http.Response, error) {
	out, err := http.NewRequestWithContext(ctx, in.Method, e.url+in.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Content-Type", "Accept"} {
		if v := in.Header.Get(h); v != "" {
			out.Header.Set(h, v)
		}
	}
	r.authorize(out, in.Header)
	return r.cfg.Client.Do(out)
}

// authorize sets out's Authorization: the engine key if the router has one, else the
// client's header (from, nil for the router's own requests) unchanged.
func (r *Router) authorize(out *http.Request, from http.Header) {
	switch {
	case r.cfg.EngineAPIKey != "":
		out.Header.Set("Authorization", "Bearer "+r.cfg.EngineAPIKey)
	case from.Get("Authorization") != "":
		out.Header.Set("Authorization", from.Get("Authorization"))
	}
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
