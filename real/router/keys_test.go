package router

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/route"
)

// logBuf collects a router's log lines.
type logBuf struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuf) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// matching returns the lines containing every one of subs.
func (l *logBuf) matching(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range l.lines {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

// startRouter builds a router over urls from cfg (policy round-robin) and serves it.
func startRouter(t *testing.T, cfg Config, urls ...string) (*Router, string) {
	t.Helper()
	p, err := route.Parse("round-robin", policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints, cfg.Policy = urls, p
	if cfg.ScrapeInterval == 0 {
		cfg.ScrapeInterval = 5 * time.Millisecond
	}
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, serve(t, r.Handler())
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hasIndex(e *endpoint) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cached != nil && e.cached.CachedPrefixBlocks([]uint64{7}) == 1
}

func TestEngineKeyReachesKeyedEndpoints(t *testing.T) {
	up := newStub(t, "a")
	close(up.release)
	up.mu.Lock()
	up.key = "engine-secret"
	up.mu.Unlock()
	r, url := startRouter(t, Config{KVEvents: true, EngineAPIKey: "engine-secret"}, up.URL)
	eventually(t, "the KV-event snapshot", func() bool { return hasIndex(r.endpoints[0]) })
	// The snapshot may come before the first scrape of /metrics, which makes the endpoint
	// routable.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	// The engine key replaces whatever the client sent.
	for _, clientAuth := range []string{"", "Bearer client-key"} {
		req, _ := http.NewRequest("POST", url+"/v1/completions", strings.NewReader(`{"prompt":"x"}`))
		if clientAuth != "" {
			req.Header.Set("Authorization", clientAuth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("client Authorization %q: status %d", clientAuth, resp.StatusCode)
		}
	}
	resp, err := http.Get(url + "/v1/models/m")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/v1/models/m: status %d", resp.StatusCode)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	for _, a := range up.auths {
		if a != "Bearer engine-secret" {
			t.Errorf("the endpoint saw Authorization %q", a)
		}
	}
}

func TestUnavailableKVEventsLoggedOnce(t *testing.T) {
	keyed, plain := newStub(t, "keyed"), newStub(t, "plain")
	keyed.mu.Lock()
	keyed.key = "engine-secret"
	keyed.mu.Unlock()
	var logs logBuf
	startRouter(t, Config{KVEvents: true, Logf: logs.logf}, keyed.URL, plain.URL)
	eventually(t, "three subscription attempts", func() bool {
		keyed.mu.Lock()
		defer keyed.mu.Unlock()
		return keyed.events == 0 && len(keyed.auths) >= 3
	})
	got := logs.matching(keyed.URL, "KV events unavailable", "401", "--engine-api-key")
	if len(got) != 1 {
		t.Errorf("logged %d times why the keyed endpoint's KV events are unavailable, want once:\n%s", len(got), strings.Join(logs.lines, "\n"))
	}
	if got := logs.matching(plain.URL, "KV events"); len(got) != 0 {
		t.Errorf("logged about the open endpoint's KV events: %q", got)
	}
}

func TestRouterKey(t *testing.T) {
	up := newStub(t, "a")
	close(up.release)
	r, url := startRouter(t, Config{APIKey: "router-secret"}, up.URL)
	// Until its first scrape the router has no healthy endpoint and answers 503.
	eventually(t, "the endpoint", r.endpoints[0].healthy)
	for _, tc := range []struct {
		method, path, auth string
		status             int
	}{
		{"POST", "/v1/completions", "", 401},
		{"POST", "/v1/completions", "Bearer wrong", 401},
		{"POST", "/v1/completions", "router-secret", 401},
		{"GET", "/v1/models", "", 401},
		{"GET", "/v1/models/m", "", 401},
		{"POST", "/v1/completions", "Bearer router-secret", 200},
		{"GET", "/v1/models", "Bearer router-secret", 200},
		{"GET", "/health", "", 200},
		{"GET", "/metrics", "", 200},
	} {
		req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader(`{"prompt":"x"}`))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s with %q: status %d, want %d", tc.method, tc.path, tc.auth, resp.StatusCode, tc.status)
		}
		if resp.StatusCode == 401 {
			if typ := decodeError(t, resp); typ != "AuthenticationError" || resp.Header.Get("WWW-Authenticate") != "Bearer" {
				t.Errorf("%s %s: type %q, WWW-Authenticate %q", tc.method, tc.path, typ, resp.Header.Get("WWW-Authenticate"))
			}
		}
		resp.Body.Close()
	}
	// Without an engine key the client's header goes through unchanged (llm-d, GIE).
	up.mu.Lock()
	defer up.mu.Unlock()
	if d := cmp.Diff([]string{"Bearer router-secret", "Bearer router-secret"}, up.auths); d != "" {
		t.Errorf("Authorization at the endpoint (-want +got):\n%s", d)
	}
}

func TestEndpointTransitionsLoggedOnce(t *testing.T) {
	up := newStub(t, "a")
	var logs logBuf
	r, _ := startRouter(t, Config{Logf: logs.logf}, up.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		up.mu.Lock()
		up.sick = true
		up.mu.Unlock()
		eventually(t, "the endpoint to go down", func() bool { return !r.endpoints[0].healthy() })
		time.Sleep(50 * time.Millisecond) // about ten more failing scrapes
		up.mu.Lock()
		up.sick = false
		up.mu.Unlock()
		eventually(t, "the endpoint to come back", func() bool { return r.endpoints[0].healthy() })
	}
	if n := len(logs.matching(up.URL, "is down", "500")); n != 2 {
		t.Errorf("logged %d downs, want 2:\n%s", n, strings.Join(logs.lines, "\n"))
	}
	if n := len(logs.matching(up.URL, "back up")); n != 2 {
		t.Errorf("logged %d returns, want 2:\n%s", n, strings.Join(logs.lines, "\n"))
	}
}
