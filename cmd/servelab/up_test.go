package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary doubles as the servelab executable for the engine processes that
// `servelab up` starts: with SERVELAB_RUN_MAIN set it runs main on its arguments.
func TestMain(m *testing.M) {
	if os.Getenv("SERVELAB_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startUp runs `servelab up` with args until the test ends and returns the router's URL
// and a function that stops it (as Ctrl-C does) and returns the command's error.
func startUp(t *testing.T, args ...string) (url string, stop func() error) {
	t.Helper()
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCmd()
	out := &syncBuffer{}
	cmd.SetOut(out)
	cmd.SetErr(out)
	cmd.SetArgs(append([]string{"up", "--port", "0"}, args...))
	errc := make(chan error, 1)
	go func() { errc <- cmd.ExecuteContext(ctx) }()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-errc:
			case <-time.After(30 * time.Second):
				t.Errorf("servelab up did not stop within 30 s; output:\n%s", out)
			}
		})
		return stopErr
	}
	t.Cleanup(func() { stop() })
	listening := regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)`)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if m := listening.FindStringSubmatch(out.String()); m != nil {
			return m[1], stop
		}
		select {
		case err := <-errc:
			t.Fatalf("servelab up exited: %v\n%s", err, out)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("servelab up did not print its endpoint; output:\n%s", out)
	return "", nil
}

func TestUpServesThroughTheRouterAndStops(t *testing.T) {
	dir := synthTiny(t)
	url, stop := startUp(t, "--engines", "2", "--model", dir, "--router", "round-robin",
		"--num-gpu-blocks-override", "128", "--threads", "1")
	engines := map[string]bool{}
	for range 4 {
		resp, err := http.Post(url+"/v1/completions", "application/json",
			strings.NewReader(`{"prompt":"Once upon a time","max_tokens":3,"temperature":0}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"completion_tokens":3`) {
			t.Fatalf("completion through servelab up: %d %s", resp.StatusCode, body)
		}
	}
	metrics, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "servelab_router_decisions_total{") {
			engines[line] = true
		}
	}
	if len(engines) != 2 {
		t.Fatalf("round-robin decisions went to %d engines, want 2:\n%s", len(engines), body)
	}
	if err := stop(); err != nil {
		t.Fatalf("servelab up stopped with %v", err)
	}
	if _, err := http.Get(url + "/health"); err == nil {
		t.Fatal("the router still answers after the cluster stopped")
	}
}
