package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRouterDrainsOnShutdown: a router told to stop (SIGTERM, or its context ending)
// finishes the requests it is proxying before it exits, so the controller's rolling update
// of the router (a policy change) drops none. The engine here holds a request until the
// router has begun shutting down.
func TestRouterDrainsOnShutdown(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/completions" {
			w.WriteHeader(http.StatusOK) // /metrics and the rest: an engine with no gauges
			return
		}
		close(arrived)
		<-release
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"done","finish_reason":"stop"}]}`)
	}))
	defer engine.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	var out syncBuffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetArgs([]string{"router", "--endpoints", engine.URL, "--router", "round-robin", "--port", "0", "--kv-events=false", "--scrape-interval", "10ms"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	addr := regexp.MustCompile(`listening on (http://\S+)`)
	var base string
	deadline := time.Now().Add(30 * time.Second)
	for base == "" {
		if m := addr.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router did not start: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	type result struct {
		status int
		body   string
		err    error
	}
	resc := make(chan result, 1)
	go func() {
		resp, err := http.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"hi","max_tokens":1}`))
		if err != nil {
			resc <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		resc <- result{resp.StatusCode, string(body), err}
	}()
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the request did not reach the engine")
	}
	cancel() // as SIGTERM does
	// The router stops taking connections, and keeps the one in flight.
	deadline = time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/health")
		if err != nil {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("the router still accepts connections 30 s after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the router exited (%v) with a request in flight", err)
	default:
	}
	close(release)
	r := <-resc
	if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"done"`) {
		t.Errorf("in-flight request: status %d, body %q, err %v; want the engine's 200", r.status, r.body, r.err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("router: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the router did not exit after its last request")
	}
}
