// Package server is the engine's OpenAI-compatible HTTP API, with vLLM's extensions and
// conventions: /v1/completions and /v1/chat/completions (SSE streaming, usage with
// prompt_tokens_details.cached_tokens), /v1/models, /health, /metrics (vLLM metric names)
// and /v1/kv_events.
//
// /v1/kv_events streams the engine's prefix-cache events as server-sent events, one
// KVEventBatch per message, named after vLLM's kv_events:
//
//	data: {"seq":1,"ts":1732500000.123,"events":[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[...]}]}
//
// The first batch is a snapshot (AllBlocksCleared, then every cached hash); seq has no
// gaps. A subscriber that falls behind is disconnected and must reconnect for a fresh
// snapshot. Hashes are servelab's chained block hashes (serving.TokenBlockHashes).
//
// Errors use OpenAI's body, {"error": {"message", "type", "param", "code"}}, with vLLM's
// types: BadRequestError (400), AuthenticationError (401), NotFoundError (404),
// MethodNotAllowed (405), RateLimitError (429, with Retry-After), ServiceUnavailableError (503).
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"servelab/engine"
)

// Message is one chat turn.
type Message struct{ Role, Content string }

// Tokenizer is what the server needs of a tokenizer.
type Tokenizer interface {
	Encode(text string, addSpecial bool) []int32
	Decode(ids []int32, skipSpecial bool) string
	// RenderChat applies the model's chat template (or a plain fallback) to messages.
	RenderChat(msgs []Message, addGenerationPrompt bool) (string, error)
}

// GenerationDefaults come from generation_config.json and apply when a request omits a
// parameter, as in vLLM.
type GenerationDefaults struct {
	Temperature, TopP *float64
	TopK              *int
}

// Config assembles a server.
type Config struct {
	Engine      *engine.Engine
	Tokenizer   Tokenizer
	ModelName   string
	MaxModelLen int
	// APIKey, if set, is required as a Bearer token on /v1 endpoints (vLLM --api-key).
	APIKey   string
	Registry *prometheus.Registry
	Defaults GenerationDefaults
	// RetryAfter is advertised with 429s; at least one second.
	RetryAfter time.Duration
}

// Server serves one engine.
type Server struct {
	cfg     Config
	mux     *http.ServeMux
	http    *http.Server
	created int64

	mu      sync.Mutex
	closing bool
}

// New builds a server.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil || cfg.Tokenizer == nil || cfg.ModelName == "" {
		return nil, errors.New("server: Engine, Tokenizer and ModelName are required")
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.RetryAfter < time.Second {
		cfg.RetryAfter = time.Second
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), created: time.Now().Unix()}
	s.mux.HandleFunc("/v1/completions", s.auth(s.post(s.completions)))
	s.mux.HandleFunc("/v1/chat/completions", s.auth(s.post(s.chatCompletions)))
	s.mux.HandleFunc("/v1/models", s.auth(s.get(s.models)))
	s.mux.HandleFunc("/v1/kv_events", s.auth(s.get(s.kvEvents)))
	s.mux.HandleFunc("/health", s.get(s.health))
	s.mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	s.http = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// ListenAndServe serves on addr, 127.0.0.1:8000 when empty.
func (s *Server) ListenAndServe(addr string) error {
	if addr == "" {
		addr = "127.0.0.1:8000"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve serves on a listener.
func (s *Server) Serve(ln net.Listener) error { return s.http.Serve(ln) }

// Shutdown stops accepting connections and requests; in-flight requests finish until ctx
// ends and are aborted then, freeing their KV blocks.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	engErr := make(chan error, 1)
	go func() { engErr <- s.cfg.Engine.Shutdown(ctx) }()
	err := s.http.Shutdown(ctx)
	if e := <-engErr; e != nil && err == nil {
		err = e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Streams were aborted by the engine; close what is left.
		s.http.Close()
	}
	return err
}

// apiError is OpenAI's error body.
type apiError struct {
	status int
	Msg    string `json:"message"`
	Type   string `json:"type"`
	Param  any    `json:"param"`
	Code   int    `json:"code"`
}

func (e *apiError) Error() string { return e.Msg }

func badRequest(param, format string, args ...any) *apiError {
	var p any
	if param != "" {
		p = param
	}
	return &apiError{status: http.StatusBadRequest, Msg: fmt.Sprintf(format, args...), Type: "BadRequestError", Param: p}
}

func writeError(w http.ResponseWriter, e *apiError) {
	e.Code = e.status
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]any{"error": e})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIKey != "" && r.Header.Get("Authorization") != "Bearer "+s.cfg.APIKey {
			writeError(w, &apiError{status: http.StatusUnauthorized, Msg: "Unauthorized", Type: "AuthenticationError"})
			return
		}
		h(w, r)
	}
}

func method(m string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m {
			w.Header().Set("Allow", m)
			writeError(w, &apiError{status: http.StatusMethodNotAllowed, Msg: fmt.Sprintf("method %s not allowed, use %s", r.Method, m), Type: "MethodNotAllowed"})
			return
		}
		h(w, r)
	}
}

func (s *Server) post(h http.HandlerFunc) http.HandlerFunc { return method(http.MethodPost, h) }
func (s *Server) get(h http.HandlerFunc) http.HandlerFunc  { return method(http.MethodGet, h) }

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	if s.shuttingDown() {
		writeError(w, &apiError{status: http.StatusServiceUnavailable, Msg: "shutting down", Type: "ServiceUnavailableError"})
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]any{"object": "list", "data": []any{map[string]any{
		"id": s.cfg.ModelName, "object": "model", "created": s.created, "owned_by": "servelab",
		"root": s.cfg.ModelName, "max_model_len": s.cfg.MaxModelLen,
	}}})
}

func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func (s *Server) kvEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, &apiError{status: http.StatusInternalServerError, Msg: "streaming unsupported", Type: "InternalServerError"})
		return
	}
	events, cancel := s.cfg.Engine.SubscribeKVEvents(1024)
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case b, ok := <-events:
			if !ok {
				return
			}
			out := map[string]any{"seq": b.Seq, "ts": float64(b.Time.UnixNano()) / 1e9}
			evs := make([]map[string]any, len(b.Events))
			for i, e := range b.Events {
				evs[i] = map[string]any{"type": e.Kind.String()}
				if e.Hashes != nil {
					evs[i]["block_hashes"] = e.Hashes
				}
			}
			out["events"] = evs
			data, _ := json.Marshal(out)
			if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// retryAfter renders the Retry-After header value.
func (s *Server) retryAfter() string {
	return strconv.Itoa(int((s.cfg.RetryAfter + time.Second - 1) / time.Second))
}

// submitError maps engine errors to HTTP errors.
func (s *Server) submitError(w http.ResponseWriter, err error) {
	var inv *engine.InvalidRequestError
	switch {
	case errors.As(err, &inv):
		writeError(w, badRequest(inv.Param, "%s", inv.Msg))
	case errors.Is(err, engine.ErrQueueFull):
		w.Header().Set("Retry-After", s.retryAfter())
		writeError(w, &apiError{status: http.StatusTooManyRequests, Msg: "the engine's waiting queue is full; retry later", Type: "RateLimitError"})
	case errors.Is(err, engine.ErrShuttingDown):
		writeError(w, &apiError{status: http.StatusServiceUnavailable, Msg: "the engine is shutting down", Type: "ServiceUnavailableError"})
	default:
		writeError(w, &apiError{status: http.StatusInternalServerError, Msg: err.Error(), Type: "InternalServerError"})
	}
}

// checkModel accepts the served name (or none).
func (s *Server) checkModel(model string) *apiError {
	if model != "" && model != s.cfg.ModelName {
		return &apiError{status: http.StatusNotFound, Msg: fmt.Sprintf("The model `%s` does not exist.", model), Type: "NotFoundError", Param: "model"}
	}
	return nil
}
