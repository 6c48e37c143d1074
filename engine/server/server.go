// Package server is the engine's OpenAI-compatible HTTP API, with vLLM's extensions and
// conventions, in front of one *engine.Engine.
//
// # Endpoints
//
//   - POST /v1/completions: prompt (a string or a list of token ids; a list of one string or
//     one list of ids is that prompt; batched prompts are refused), with OpenAI's and vLLM's
//     sampling fields (temperature, top_p, top_k, min_p, seed, stop, stop_token_ids,
//     ignore_eos, min_tokens, skip_special_tokens, priority), n (only 1), echo, stream and
//     stream_options.include_usage. logprobs are not supported (400).
//   - POST /v1/chat/completions: messages (content a string or a list of {"type":"text"}
//     parts) rendered with Tokenizer.RenderChat and encoded without special tokens (chat
//     templates write their own BOS); max_completion_tokens (or the older max_tokens).
//   - GET /v1/models, GET /v1/models/{id} (the model object; 404 for another id), GET /health (200, or 503 once Shutdown began), GET /metrics (promhttp
//     over Config.Registry), GET /v1/kv_events (below).
//   - POST /v1/kv_transfer/pull: a decode engine reads the KV blocks a finished
//     do_remote_decode request holds (prefill/decode disaggregation with vLLM's
//     kv_transfer_params; kvtransfer.go describes the protocol).
//
// Unknown request fields are ignored, as OpenAI-compatible servers do; known fields are
// decoded strictly and a wrong type is a 400 that names the field. A field the engine cannot
// honour with a non-default value (logprobs, n > 1, best_of > 1, penalties, logit_bias,
// suffix, response_format, tools, tool_choice, functions, vLLM's guided_* and others: the
// tables in openai.go) is a 400 too, rather than being silently ignored; null or the
// default value is accepted. Sizes are checked without overflow: max_tokens is at least 1
// and at most what the prompt leaves of max_model_len, with at most engine.MaxStopStrings
// stop strings of engine.MaxStopBytes and engine.MaxStopTokenIDs stop token ids.
// max_tokens defaults to 16 for completions (OpenAI's and vLLM's default) and to what the
// context leaves for chat, and temperature, top_p and top_k to Config.Defaults
// (generation_config.json) when the request omits them, as in vLLM.
//
// Streaming responses are server-sent events, one "data: {json}\n\n" per chunk, flushed at
// once, ending with "data: [DONE]\n\n". Each generated token gets its own text chunk, whose
// text is empty while it is held back (an incomplete UTF-8 sequence, a possible stop
// string), as vLLM streams. Text chunks carry no finish_reason; a last chunk
// with empty text (or an empty delta) carries finish_reason and stop_reason, and with
// stream_options.include_usage a final chunk with "choices": [] carries the usage. Chat
// streams open with a chunk whose delta is {"role":"assistant","content":""}. The streamed
// text equals the non-streamed text for the same request and seed. A client that
// disconnects aborts its request, which frees its KV blocks.
//
// Usage is OpenAI's, with vLLM's prompt_tokens_details.cached_tokens (prompt tokens served
// from the prefix cache). stop_reason is vLLM's: the stop string or stop token id that
// ended generation, null otherwise.
//
// # Errors
//
// Errors have OpenAI's body, {"error": {"message", "type", "param", "code"}}, with vLLM's
// type names and the HTTP status as code:
//
//	400 BadRequestError          malformed JSON, a wrong field type, an empty prompt or
//	                             messages, an unknown role, max_tokens < 1, a prompt longer
//	                             than the context, an out-of-range parameter; param names it
//	401 AuthenticationError      Config.APIKey is set and the Bearer token differs (/v1/* only)
//	404 NotFoundError            an unknown model ("The model `x` does not exist.") or path
//	405 MethodNotAllowed         a wrong method (with an Allow header)
//	413 RequestTooLargeError     a body over 32 MiB
//	429 RateLimitError           the engine's waiting queue is full; Retry-After in seconds
//	503 ServiceUnavailableError  the server or engine is shutting down; or a decode request's
//	                             KV pull failed (header x-servelab-retry: kv-pull)
//
// # KV events
//
// GET /v1/kv_events streams the engine's prefix-cache events as server-sent events, one
// batch per message, named after vLLM's KVEventBatch, BlockStored, BlockRemoved and
// AllBlocksCleared:
//
//	data: {"seq":1,"ts":1732500000.123,"events":[{"type":"AllBlocksCleared"},{"type":"BlockStored","block_hashes":[123,456]}]}
//	data: {"seq":2,"ts":1732500000.456,"events":[{"type":"BlockRemoved","block_hashes":[123]}]}
//
// seq counts batches of this subscription from 1 without gaps; ts is the Unix time in
// seconds. The first batch is a snapshot: AllBlocksCleared, then one BlockStored with every
// cached hash. block_hashes (always present on BlockStored and BlockRemoved, possibly
// empty) are servelab's chained block hashes (serving.TokenBlockHashes), unsigned 64-bit
// integers written as JSON numbers (exact in Go; a JavaScript reader needs a big-integer
// parser). With KV tiers below the engine's blocks (--kv-tier), BlockStored and BlockRemoved
// carry vLLM's "medium" ("GPU", "CPU" or "DISK": where the hashes entered or left; a hash
// offloaded from the GPU is removed there and stored on the CPU), and the snapshot has one
// BlockStored per tier; without tiers there is no medium (vLLM's None). When the engine
// drops the subscription (the reader fell behind) or shuts down, the response ends; a
// client reconnects and starts again from a fresh snapshot.
//
// The same events go out over ZeroMQ in vLLM's own format with PublishKVEvents (zmq.go;
// servelab engine --kv-events-config).
package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"servelab/engine"
	"servelab/engine/kv"
	"servelab/serving"
)

// Message is one chat turn.
type Message struct{ Role, Content string }

// Tokenizer is what the server needs of a tokenizer.
//
// A Tokenizer that also has a VocabSize() int method lets the server refuse token-id
// prompts outside the vocabulary (400) before they reach the model; without it only
// negative ids are refused.
type Tokenizer interface {
	Encode(text string, addSpecial bool) []int32
	Decode(ids []int32, skipSpecial bool) string
	// RenderChat applies the model's chat template (or a plain fallback) to messages.
	RenderChat(msgs []Message, addGenerationPrompt bool) (string, error)
}

// vocabSizer is the optional Tokenizer method that bounds token ids.
type vocabSizer interface{ VocabSize() int }

// PrefixEncoder is the optional Tokenizer method the server encodes prompts with when
// the tokenizer has it (tokenizer.Tokenizer does): Encode that stops once the text is
// known to encode to more than maxTokens ids (truncated) and when ctx ends. Without it,
// prompts are encoded whole with Encode.
type PrefixEncoder interface {
	EncodePrefix(ctx context.Context, text string, addSpecial bool, maxTokens int) (ids []int32, truncated bool, err error)
}

// GenerationDefaults come from generation_config.json and apply when a request omits a
// parameter, as in vLLM.
type GenerationDefaults struct {
	Temperature, TopP *float64
	TopK              *int
}

// Config assembles a server.
type Config struct {
	// Device, if set, is reported by /server_info: where the engine computes.
	Device    *DeviceInfo
	Engine    *engine.Engine
	Tokenizer Tokenizer
	// ModelName is the served model id; requests naming another model get a 404.
	ModelName string
	// MaxModelLen is reported by /v1/models and bounds prompts; 0 means the engine's.
	MaxModelLen int
	// APIKey, if set, is required as a Bearer token on /v1/* (vLLM --api-key).
	APIKey string
	// Registry is served at /metrics; the caller registers the engine's metrics in it.
	Registry *prometheus.Registry
	Defaults GenerationDefaults
	// RetryAfter is advertised with 429s, rounded up to whole seconds, at least one.
	RetryAfter time.Duration

	// BodyTimeout bounds reading a request's body (default DefaultBodyTimeout); a client
	// that sends it slower gets a 408 and its connection closed. Unlike http.Server's
	// ReadTimeout it ends once the body is read, so a long streamed response is not cut.
	BodyTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long (default DefaultIdleTimeout).
	IdleTimeout time.Duration
	// MaxInFlight caps the /v1/ requests being handled at once, streams included (default
	// DefaultMaxInFlight; negative: no cap); requests over it get a 503 in OpenAI's error
	// shape with Retry-After. /health and /metrics are not counted.
	MaxInFlight int
	// MaxBodyBytes bounds request bodies (413 over it). 0 sizes it from the context:
	// 1 MiB for the other fields plus (MaxModelLen+1) tokens of the longest text one token
	// stands for, 6 JSON bytes a text byte (\u00XX), when the Tokenizer has a
	// BytesPerToken() int method (tokenizer.Tokenizer does; a longer body cannot hold a
	// prompt that fits the context); at most DefaultMaxBodyBytes, which is the bound
	// without it.
	MaxBodyBytes int64
	// MaxTokenizing caps the prompts being tokenized at once (default GOMAXPROCS); the
	// others wait for a slot, or until their client goes away. As many requests with
	// bodies over 1 MiB are read, decoded and encoded at once; one that waits BodyTimeout
	// for its turn gets a 503.
	MaxTokenizing int

	// KVTransfer configures prefill/decode disaggregation (kvtransfer.go).
	KVTransfer KVTransferConfig

	// freeEvery: the heap is handed back to the OS once large bodies of this many bytes
	// were released, even while others are in flight (default defaultFreeEvery).
	freeEvery int64
}

// defaultFreeEvery is Config.freeEvery's default: two 32 MiB bodies. A forced GC costs
// milliseconds, reading 64 MiB of body far more, while without it the garbage of huge
// bodies grows until the next GC, whose goal is twice the live heap: with a model's
// weights and KV cache live, gigabytes.
const defaultFreeEvery = 64 << 20

// Defaults of Config's limits.
const (
	DefaultBodyTimeout = 30 * time.Second
	DefaultIdleTimeout = 120 * time.Second
	DefaultMaxInFlight = 4096
)

// Server serves one engine.
type Server struct {
	cfg     Config
	handler http.Handler
	http    *http.Server
	created int64

	closing atomic.Bool
	// kvBuffer is the KV event subscription's buffer, in batches.
	kvBuffer int
	// maxBody bounds request bodies, in bytes.
	maxBody int64
	// inFlight holds a slot per /v1/ request being handled; tokenizing one per prompt
	// being tokenized; large one per request with a large body until its prompt is
	// encoded (largeActive of them).
	inFlight, tokenizing, large chan struct{}
	largeActive                 atomic.Int64
	// largeReleased counts the bytes of large bodies released since the heap was last
	// handed back; frees counts the hand-backs (for tests); freeWanted asks freeLoop
	// (running while freeing) for one more, freeNow for it without waiting.
	largeReleased, frees atomic.Int64
	freeing, freeWanted  atomic.Bool
	freeNow              chan struct{}
	lastFree             time.Time // guarded by freeing
	kvm                  *kvMetrics
}

// DefaultMaxBodyBytes is the largest request body accepted (vLLM has no bound).
const DefaultMaxBodyBytes = 32 << 20

// bytesPerTokener is the optional Tokenizer method that sizes MaxBodyBytes.
type bytesPerTokener interface{ BytesPerToken() int }

// maxBodyBytes is MaxBodyBytes with 0 resolved (see Config).
func (cfg *Config) maxBodyBytes() int64 {
	if cfg.MaxBodyBytes > 0 {
		return cfg.MaxBodyBytes
	}
	if b, ok := cfg.Tokenizer.(bytesPerTokener); ok && b.BytesPerToken() > 0 {
		return min(DefaultMaxBodyBytes, 1<<20+6*int64(b.BytesPerToken())*int64(cfg.MaxModelLen+1))
	}
	return DefaultMaxBodyBytes
}

// New builds a server.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil || cfg.Tokenizer == nil || cfg.ModelName == "" {
		return nil, errors.New("server: Engine, Tokenizer and ModelName are required")
	}
	if cfg.MaxModelLen <= 0 {
		cfg.MaxModelLen = cfg.Engine.Config().MaxModelLen
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	cfg.RetryAfter = max(cfg.RetryAfter, time.Second)
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxTokenizing <= 0 {
		cfg.MaxTokenizing = runtime.GOMAXPROCS(0)
	}
	if cfg.freeEvery <= 0 {
		cfg.freeEvery = defaultFreeEvery
	}
	if err := cfg.KVTransfer.resolve(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, created: time.Now().Unix(), kvBuffer: 1024, maxBody: cfg.maxBodyBytes(), kvm: newKVMetrics(cfg.Registry, cfg.ModelName)}
	if cfg.MaxInFlight > 0 {
		s.inFlight = make(chan struct{}, cfg.MaxInFlight)
	}
	s.tokenizing = make(chan struct{}, cfg.MaxTokenizing)
	s.large = make(chan struct{}, cfg.MaxTokenizing)
	s.freeNow = make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", s.limit(s.auth(method(http.MethodPost, s.completions))))
	mux.HandleFunc("/v1/chat/completions", s.limit(s.auth(method(http.MethodPost, s.chatCompletions))))
	mux.HandleFunc("/v1/models", s.limit(s.auth(method(http.MethodGet, s.models))))
	mux.HandleFunc("/v1/models/{id...}", s.limit(s.auth(method(http.MethodGet, s.model))))
	mux.HandleFunc("/v1/kv_events", s.limit(s.auth(method(http.MethodGet, s.kvEvents))))
	mux.HandleFunc("/v1/kv_transfer/pull", s.limit(s.auth(method(http.MethodPost, s.kvPull))))
	mux.HandleFunc("/v1/", s.limit(s.auth(notFound)))
	mux.HandleFunc("/health", method(http.MethodGet, s.health))
	mux.HandleFunc("/server_info", method(http.MethodGet, s.serverInfo))
	mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", notFound)
	s.handler = mux
	// No ReadTimeout or WriteTimeout: both would cut long streams (ReadTimeout cancels
	// the request's context once it passes, even with the body long read); the body's
	// read deadline is set per request instead (readBody).
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: cfg.IdleTimeout}
	return s, nil
}

// limit sheds requests over MaxInFlight with a 503, and gives each request the state
// that releases its large-body slot when it ends.
func (s *Server) limit(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.inFlight != nil {
			select {
			case s.inFlight <- struct{}{}:
				defer func() { <-s.inFlight }()
			default:
				w.Header().Set("Retry-After", s.retryAfter())
				writeError(w, &apiError{status: http.StatusServiceUnavailable, Type: "ServiceUnavailableError",
					Msg: fmt.Sprintf("the server is handling its maximum of %d requests (--max-inflight); retry later", s.cfg.MaxInFlight)})
				return
			}
		}
		st := &requestState{}
		defer st.done()
		h(w, r.WithContext(context.WithValue(r.Context(), requestStateKey{}, st)))
	}
}

// largeBody is the body size from which reading, decoding and encoding a request takes
// one of the MaxTokenizing large-body slots: a few huge prompts at once cannot take
// memory in proportion to their number.
const largeBody = 1 << 20

type requestStateKey struct{}

// requestState is what a request holds until it has encoded its prompt, and the size of
// the buffer its body was read into.
type requestState struct {
	release func()
	size    int64
}

func (st *requestState) done() {
	if st != nil && st.release != nil {
		st.release()
		st.release = nil
	}
}

func stateOf(ctx context.Context) *requestState {
	st, _ := ctx.Value(requestStateKey{}).(*requestState)
	return st
}

// errLargeBusy: every large-body slot stayed taken for BodyTimeout.
var errLargeBusy = errors.New("too many large requests are being read")

// acquireLarge takes a large-body slot for r, waiting at most BodyTimeout; the slot is
// released once the request's prompt is encoded or the request ends.
func (s *Server) acquireLarge(r *http.Request) error {
	st := stateOf(r.Context())
	if st == nil || st.release != nil {
		return nil
	}
	t := time.NewTimer(s.cfg.BodyTimeout)
	defer t.Stop()
	select {
	case s.large <- struct{}{}:
	case <-r.Context().Done():
		return r.Context().Err()
	case <-t.C:
		return errLargeBusy
	}
	s.largeActive.Add(1)
	st.release = func() {
		<-s.large
		released := s.largeReleased.Add(st.size)
		if s.largeActive.Add(-1) == 0 || released >= s.cfg.freeEvery {
			s.returnMemory(released >= s.cfg.freeEvery)
		}
	}
	return nil
}

// returnMemory hands the heap that huge bodies left behind back to the OS: once none is
// in flight (at most once a second), and at once (now) when freeEvery bytes of them were
// released; the runtime's background scavenger alone takes minutes to shrink RSS after
// hundreds of MB of request bodies, and its GC may not run for gigabytes.
func (s *Server) returnMemory(now bool) {
	s.freeWanted.Store(true)
	if now {
		select {
		case s.freeNow <- struct{}{}:
		default:
		}
	}
	if s.freeing.CompareAndSwap(false, true) {
		go s.freeLoop()
	}
}

// freeLoop hands the heap back while that is wanted; one runs at a time (freeing).
func (s *Server) freeLoop() {
	for {
		if !s.freeWanted.Swap(false) {
			s.freeing.Store(false)
			// Wanted after the Swap by a caller that saw freeing still set: go on.
			if !s.freeWanted.Load() || !s.freeing.CompareAndSwap(false, true) {
				return
			}
			continue
		}
		if wait := time.Second - time.Since(s.lastFree); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.freeNow:
			}
			t.Stop()
		}
		s.largeReleased.Store(0)
		debug.FreeOSMemory()
		s.lastFree = time.Now()
		s.frees.Add(1)
	}
}

// encodePrompt encodes a prompt (param names it in errors) with at most MaxTokenizing
// prompts being encoded at once, stopping once it is longer than the context (a 400 like
// checkPromptLen's) or when the client goes away.
func (s *Server) encodePrompt(ctx context.Context, param, text string, addSpecial bool) ([]int32, *apiError) {
	select {
	case s.tokenizing <- struct{}{}:
		defer func() { <-s.tokenizing }()
	case <-ctx.Done():
		return nil, clientGone(ctx)
	}
	if ctx.Err() != nil { // both were ready and select took the slot
		return nil, clientGone(ctx)
	}
	defer stateOf(ctx).done() // the body is decoded: its large-body slot goes
	pe, ok := s.cfg.Tokenizer.(PrefixEncoder)
	if !ok {
		return s.cfg.Tokenizer.Encode(text, addSpecial), nil
	}
	ids, truncated, err := pe.EncodePrefix(ctx, text, addSpecial, s.cfg.MaxModelLen)
	if err != nil {
		return nil, clientGone(ctx)
	}
	if truncated {
		return nil, s.overContext(param)
	}
	return ids, nil
}

// overContext is the 400 for a prompt known to encode to more than MaxModelLen tokens.
func (s *Server) overContext(param string) *apiError {
	return badRequest(param, "This model's maximum context length is %d tokens. However, your request has more than %d input tokens. Please reduce the length of the input.", s.cfg.MaxModelLen, s.cfg.MaxModelLen)
}

// maxPromptText is the most bytes of text a prompt that fits the context can have, from
// the tokenizer's BytesPerToken (a text of n bytes encodes to at least n/BytesPerToken
// ids); 0 when the tokenizer gives no such bound.
func (s *Server) maxPromptText() int64 {
	if b, ok := s.cfg.Tokenizer.(bytesPerTokener); ok && b.BytesPerToken() > 0 {
		return int64(b.BytesPerToken()) * int64(s.cfg.MaxModelLen)
	}
	return 0
}

// readBodyTimed reads the body with a read deadline of BodyTimeout, lifted once it is
// read: a deadline left on the connection would cancel a stream's context when it passed
// (net/http's background read of a finished body fails with it).
func (s *Server) readBodyTimed(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > s.maxBody { // refused unread
		w.Header().Set("Connection", "close")
		return nil, &http.MaxBytesError{Limit: s.maxBody}
	}
	fail := func(err error) ([]byte, error) {
		// The rest of the body is not wanted: close the connection after the answer
		// rather than wait for it.
		w.Header().Set("Connection", "close")
		return nil, err
	}
	if r.ContentLength > largeBody {
		if err := s.acquireLarge(r); err != nil {
			return fail(err)
		}
	}
	rc := http.NewResponseController(w)
	timed := rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout)) == nil
	// Sized from Content-Length, past 1 MiB only with a large-body slot held: clients
	// announcing 32 MiB and sending nothing get at most MaxTokenizing such buffers.
	buf := bytes.NewBuffer(make([]byte, 0, max(r.ContentLength, 0)+bytes.MinRead))
	if st := stateOf(r.Context()); st != nil {
		defer func() { st.size = int64(buf.Cap()) }()
	}
	body := http.MaxBytesReader(w, r.Body, s.maxBody)
	_, err := buf.ReadFrom(io.LimitReader(body, largeBody+1))
	if err == nil && buf.Len() > largeBody { // a large body without Content-Length
		if err = s.acquireLarge(r); err == nil {
			_, err = buf.ReadFrom(body)
		}
	}
	if err != nil {
		return fail(err)
	}
	if timed {
		rc.SetReadDeadline(time.Time{})
	}
	return buf.Bytes(), nil
}

// clientGone is the error of a request whose client left (nobody reads it; nginx's 499).
func clientGone(ctx context.Context) *apiError {
	return &apiError{status: 499, Msg: fmt.Sprintf("the client went away: %v", context.Cause(ctx)), Type: "ClientClosedRequest"}
}

// Handler is the server's HTTP handler, for callers that run their own http.Server.
func (s *Server) Handler() http.Handler { return s.handler }

// ListenAndServe serves on addr, 127.0.0.1:8000 when empty. After Shutdown it returns
// http.ErrServerClosed.
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

// Serve serves on a listener. After Shutdown it returns http.ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error { return s.http.Serve(ln) }

// drainGrace is how long Shutdown waits, after its deadline aborted the engine's requests,
// for their handlers to write the aborted ends before it closes the connections.
const drainGrace = 2 * time.Second

// Shutdown stops accepting connections and requests (/health turns 503, new requests get
// 503), lets in-flight requests finish until ctx ends, then aborts the rest in the engine
// (their streams end with finish_reason "abort"), shuts the engine down (every KV block is
// free when it returns) and closes the remaining connections. It returns ctx's error if the
// deadline cut requests short.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	engErr := make(chan error, 1)
	go func() { engErr <- s.cfg.Engine.Shutdown(ctx) }()
	err := s.http.Shutdown(ctx)
	if e := <-engErr; e != nil && err == nil {
		err = e
	}
	if err != nil {
		// The deadline passed with streams open. The engine has aborted every request, so
		// their handlers are writing the aborted ends: let each response finish (its
		// connection then goes idle and is closed), then cut what is left.
		grace, cancel := context.WithTimeout(context.Background(), drainGrace)
		defer cancel()
		if s.http.Shutdown(grace) != nil {
			s.http.Close()
		}
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
	json.NewEncoder(w).Encode(struct {
		Error *apiError `json:"error"`
	}{e})
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, &apiError{status: http.StatusNotFound, Msg: fmt.Sprintf("no such endpoint: %s", r.URL.Path), Type: "NotFoundError"})
}

func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	if s.cfg.APIKey == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.APIKey)
	return func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeError(w, &apiError{status: http.StatusUnauthorized, Msg: "Unauthorized: a valid API key is required (Authorization: Bearer <key>)", Type: "AuthenticationError"})
			return
		}
		h(w, r)
	}
}

func method(m string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m {
			w.Header().Set("Allow", m)
			writeError(w, &apiError{status: http.StatusMethodNotAllowed, Msg: fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, m), Type: "MethodNotAllowed"})
			return
		}
		h(w, r)
	}
}

func unavailable() *apiError {
	return &apiError{status: http.StatusServiceUnavailable, Msg: "the server is shutting down", Type: "ServiceUnavailableError"}
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	if s.closing.Load() {
		writeError(w, unavailable())
		return
	}
	w.WriteHeader(http.StatusOK)
}

// DeviceInfo says where an engine computes, for /server_info.
type DeviceInfo struct {
	// Device is "cpu" or "cuda" (vLLM's device_config.device).
	Device string `json:"device"`
	// Name is the GPU's name ("NVIDIA H200"), or the CPU's ("linux/amd64, 2 threads").
	Name string `json:"name"`
	// DType is the weights' compute dtype, "float32" or "bfloat16" (vLLM's model_config.dtype).
	DType string `json:"dtype"`
}

// serverInfo is GET /server_info, after vLLM's endpoint of that name
// (vllm/entrypoints/openai/api_server.py, a development endpoint there): the engine's
// configuration as JSON. "servelab_config" is the resolved configuration a simulator of
// this engine is built from (serving.EngineConfig); "device" is where it computes (when
// the server was given it); "vllm_config" has the same values under
// vLLM's config sections and field names. Only config_format=json is served (vLLM's
// default is text). Like /metrics it needs no API key.
func (s *Server) serverInfo(w http.ResponseWriter, r *http.Request) {
	if f := r.URL.Query().Get("config_format"); f != "" && f != "json" {
		writeError(w, &apiError{status: http.StatusBadRequest, Type: "BadRequestError", Param: "config_format",
			Msg: fmt.Sprintf("config_format %q is not served; use json", f)})
		return
	}
	rc := s.cfg.Engine.Resolved()
	l := s.cfg.Engine.Config().Batch.Limits()
	type (
		modelConfig struct {
			MaxModelLen int    `json:"max_model_len"`
			DType       string `json:"dtype,omitempty"`
		}
		deviceConfig struct {
			Device string `json:"device"`
		}
		cacheConfig struct {
			BlockSize           int  `json:"block_size"`
			NumGPUBlocks        int  `json:"num_gpu_blocks"`
			EnablePrefixCaching bool `json:"enable_prefix_caching"`
		}
		schedulerConfig struct {
			MaxNumBatchedTokens       int  `json:"max_num_batched_tokens"`
			MaxNumSeqs                int  `json:"max_num_seqs"`
			LongPrefillTokenThreshold int  `json:"long_prefill_token_threshold"`
			EnableChunkedPrefill      bool `json:"enable_chunked_prefill"`
		}
		vllmConfig struct {
			Device    *deviceConfig   `json:"device_config,omitempty"`
			Model     modelConfig     `json:"model_config"`
			Cache     cacheConfig     `json:"cache_config"`
			Scheduler schedulerConfig `json:"scheduler_config"`
		}
	)
	mc := modelConfig{MaxModelLen: rc.MaxModelLen}
	var dc *deviceConfig
	if d := s.cfg.Device; d != nil {
		mc.DType, dc = d.DType, &deviceConfig{d.Device}
	}
	writeJSON(w, struct {
		Servelab serving.EngineConfig `json:"servelab_config"`
		Device   *DeviceInfo          `json:"device,omitempty"`
		VLLM     vllmConfig           `json:"vllm_config"`
	}{rc, s.cfg.Device, vllmConfig{
		Device:    dc,
		Model:     mc,
		Cache:     cacheConfig{rc.BlockSize, rc.NumGPUBlocks, rc.EnablePrefixCaching},
		Scheduler: schedulerConfig{l.MaxNumBatchedTokens, l.MaxNumSeqs, l.LongPrefillTokenThreshold, l.ChunkedPrefill},
	}})
}

type modelCard struct {
	ID          string  `json:"id"`
	Object      string  `json:"object"`
	Created     int64   `json:"created"`
	OwnedBy     string  `json:"owned_by"`
	Root        string  `json:"root"`
	Parent      *string `json:"parent"`
	MaxModelLen int     `json:"max_model_len"`
}

func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, struct {
		Object string      `json:"object"`
		Data   []modelCard `json:"data"`
	}{"list", []modelCard{s.card()}})
}

func newID(prefix string) string {
	var b [16]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// kvEvent and kvBatch are /v1/kv_events' wire format.
type kvEvent struct {
	Type string
	// BlockHashes is nil for AllBlocksCleared and non-nil otherwise.
	BlockHashes []uint64
	// Medium is the tier, with KV tiers (kv.Event.Medium).
	Medium string
}

type kvBatch struct {
	Seq    uint64    `json:"seq"`
	TS     float64   `json:"ts"`
	Events []kvEvent `json:"events"`
}

func encodeKVBatch(b engine.KVEventBatch) kvBatch {
	out := kvBatch{Seq: b.Seq, TS: float64(b.Time.UnixNano()) / 1e9, Events: make([]kvEvent, len(b.Events))}
	for i, e := range b.Events {
		out.Events[i].Type, out.Events[i].Medium = e.Kind.String(), e.Medium
		if e.Kind != kv.AllBlocksCleared {
			// Present even when empty, so readers need not tell a missing list from none.
			out.Events[i].BlockHashes = e.Hashes
			if out.Events[i].BlockHashes == nil {
				out.Events[i].BlockHashes = []uint64{}
			}
		}
	}
	return out
}

// MarshalJSON keeps block_hashes on BlockStored and BlockRemoved even when empty.
func (e kvEvent) MarshalJSON() ([]byte, error) {
	if e.BlockHashes == nil {
		return json.Marshal(struct {
			Type string `json:"type"`
		}{e.Type})
	}
	return json.Marshal(struct {
		Type        string   `json:"type"`
		BlockHashes []uint64 `json:"block_hashes"`
		Medium      string   `json:"medium,omitempty"`
	}{e.Type, e.BlockHashes, e.Medium})
}

func (s *Server) kvEvents(w http.ResponseWriter, r *http.Request) {
	if s.closing.Load() {
		writeError(w, unavailable())
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, &apiError{status: http.StatusInternalServerError, Msg: "streaming is not supported by this connection", Type: "InternalServerError"})
		return
	}
	events, cancel := s.cfg.Engine.SubscribeKVEvents(s.kvBuffer)
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
				// Fell behind or the engine stopped: end the response; the client
				// reconnects for a fresh snapshot.
				return
			}
			data, err := json.Marshal(encodeKVBatch(b))
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// retryAfter renders the Retry-After header value: whole seconds, rounded up.
func (s *Server) retryAfter() string {
	return strconv.Itoa(int((s.cfg.RetryAfter + time.Second - 1) / time.Second))
}

// submitError maps engine errors to HTTP errors.
func (s *Server) submitError(w http.ResponseWriter, err error, chatMaxTokens string) {
	var inv *engine.InvalidRequestError
	switch {
	case errors.As(err, &inv):
		param := inv.Param
		if param == "max_tokens" && chatMaxTokens != "" {
			param = chatMaxTokens
		}
		writeError(w, badRequest(param, "%s", inv.Msg))
	case errors.Is(err, engine.ErrQueueFull):
		w.Header().Set("Retry-After", s.retryAfter())
		writeError(w, &apiError{status: http.StatusTooManyRequests, Msg: "too many requests are waiting; retry later", Type: "RateLimitError"})
	case errors.Is(err, engine.ErrShuttingDown):
		writeError(w, unavailable())
	case errors.Is(err, engine.ErrKVTransferUnsupported):
		writeError(w, &apiError{status: http.StatusNotImplemented, Msg: err.Error(), Type: "NotImplementedError", Param: "kv_transfer_params"})
	default:
		writeError(w, &apiError{status: http.StatusInternalServerError, Msg: err.Error(), Type: "InternalServerError"})
	}
}

// checkModel accepts the served name, or none (vLLM serves its only model then).
func (s *Server) checkModel(model string) *apiError {
	if model != "" && model != s.cfg.ModelName {
		return &apiError{status: http.StatusNotFound, Msg: fmt.Sprintf("The model `%s` does not exist.", model), Type: "NotFoundError", Param: "model"}
	}
	return nil
}
