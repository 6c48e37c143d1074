package router

import (
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// guard wraps the router's routes with what every request passes first: the in-flight cap
// (Config.MaxInFlight), the router's own key on /v1/* (Config.APIKey) and the body-read
// deadline (Config.BodyTimeout).
func (r *Router) guard(h http.Handler) http.Handler {
	want := []byte("Bearer " + r.cfg.APIKey)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		// First, so that the body of a request refused below cannot trickle either: net/http
		// reads what is left of it after the handler.
		if r.cfg.BodyTimeout > 0 {
			limitBody(w, req, r.cfg.BodyTimeout)
		}
		if r.inflight != nil && req.URL.Path != "/health" && req.URL.Path != "/metrics" {
			select {
			case r.inflight <- struct{}{}:
				defer func() { <-r.inflight }()
			default:
				r.shed.Inc()
				w.Header().Set("Retry-After", "1")
				writeError(w, http.StatusTooManyRequests, "RateLimitError",
					fmt.Sprintf("the router is serving its limit of %d requests at once; retry later", cap(r.inflight)))
				return
			}
		}
		// As vLLM's --api-key: /v1 paths only, so probes and scrapes need no key.
		if r.cfg.APIKey != "" && strings.HasPrefix(req.URL.Path, "/v1") &&
			subtle.ConstantTimeCompare([]byte(req.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeError(w, http.StatusUnauthorized, "AuthenticationError", "Unauthorized: a valid API key is required (Authorization: Bearer <key>)")
			return
		}
		h.ServeHTTP(w, req)
	})
}

// limitBody gives req's body d to arrive, by the connection's read deadline, which it
// clears once the body is read so that a response streamed for longer (SSE) is not cut.
// (net/http clears it too when it starts its background read of the connection after the
// body, in Go 1.26's server.go startBackgroundRead; clearing it here does not depend on
// that.) Unlike http.Server.ReadTimeout this answers a late body with 408 in OpenAI's shape
// and holds wherever the handler is served (servelab up serves it too). Requests without
// a body need no deadline: ReadHeaderTimeout bounds their headers.
func limitBody(w http.ResponseWriter, req *http.Request, d time.Duration) {
	if req.Body == nil || req.Body == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(d)) != nil {
		return // not a net/http connection (a test recorder)
	}
	req.Body = &deadlineBody{ReadCloser: req.Body, rc: rc}
}

// deadlineBody clears the connection's read deadline when its body is done.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	once sync.Once
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.clear()
	}
	return n, err
}

func (b *deadlineBody) Close() error {
	b.clear()
	return b.ReadCloser.Close()
}

func (b *deadlineBody) clear() { b.once.Do(func() { b.rc.SetReadDeadline(time.Time{}) }) }

// DefaultIdleTimeout is how long NewServer keeps an idle keep-alive connection.
const DefaultIdleTimeout = 2 * time.Minute

// NewServer is the http.Server a router (h, its Handler) is served with: headers must arrive
// within 10 s and idle keep-alive connections close after idle (0: DefaultIdleTimeout).
// It sets no ReadTimeout or WriteTimeout, which would cut long streamed responses; the
// handler bounds request bodies itself (Config.BodyTimeout).
func NewServer(h http.Handler, idle time.Duration) *http.Server {
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle}
}
