package local

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/route"
	"servelab/real/router"
)

// The test binary doubles as a fake engine: started with FAKE_ENGINE set, it serves
// /health, /metrics and /v1/completions (answering with its own name) the way
// `servelab engine` announces and serves them, and misbehaves as FAKE_ENGINE says.
func TestMain(m *testing.M) {
	if mode := os.Getenv("FAKE_ENGINE"); mode != "" {
		fakeEngine(mode, os.Args[1:])
		return
	}
	os.Exit(m.Run())
}

func fakeEngine(mode string, args []string) {
	fs := flag.NewFlagSet("engine", flag.ExitOnError)
	host := fs.String("host", "", "")
	port := fs.Int("port", -1, "")
	name := fs.String("name", "fake", "")
	index := fs.Int("index", -1, "")
	fs.Parse(args)
	if mode == "crash-at-start" {
		fmt.Println("loading model: no such file")
		os.Exit(3)
	}
	if *host != "127.0.0.1" || *port < 0 {
		fmt.Printf("want --host 127.0.0.1 --port N, got %q %d\n", *host, *port)
		os.Exit(2)
	}
	if mode == "crash-loop" && *port != 0 { // a restart
		fmt.Println("loading model: corrupt weights")
		os.Exit(3)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	if mode == "gated-restart" && *port != 0 {
		// A restart runs but does not listen until the test creates $FAKE_GATE: it stays
		// starting (not healthy) for as long as the test needs; SIGTERM ends it meanwhile.
		for {
			if _, err := os.Stat(os.Getenv("FAKE_GATE")); err == nil {
				break
			}
			select {
			case <-sigs:
				fmt.Println("shutting down before listening")
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0")
	})
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, `{"served_by":"%s-%d"}`, *name, *index)
		if mode == "crash-after-request" {
			go func() { time.Sleep(10 * time.Millisecond); os.Exit(4) }()
		}
	})
	fmt.Println("servelab engine: fake")
	fmt.Printf("gomaxprocs %d\n", runtime.GOMAXPROCS(0))
	fmt.Printf("%s%s\n", listenPrefix, ln.Addr())
	go http.Serve(ln, mux)
	for {
		<-sigs
		if mode == "gated-drain" {
			// A drain that takes as long as the test needs: it exits once $FAKE_GATE exists.
			for {
				if _, err := os.Stat(os.Getenv("FAKE_GATE")); err == nil {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		if mode != "ignore-sigterm" {
			fmt.Println("shutting down")
			return
		}
	}
}

func startFake(t *testing.T, mode string, engines int, policy route.Policy) (*Cluster, *lockedBuffer, error) {
	t.Helper()
	return startFakeRestarting(t, mode, engines, policy, nil, nil)
}

func startFakeRestarting(t *testing.T, mode string, engines int, policy route.Policy, restart *RestartPolicy, events io.Writer) (*Cluster, *lockedBuffer, error) {
	t.Helper()
	log := &lockedBuffer{}
	c, err := Start(context.Background(), Options{
		Restart:       restart,
		Events:        events,
		Engines:       engines,
		Command:       []string{os.Args[0]},
		EngineArgs:    []string{"--name", "fake"},
		EngineArgsFor: func(i int) []string { return []string{"--index", fmt.Sprint(i)} },
		Env:           []string{"FAKE_ENGINE=" + mode},
		Router:        router.Config{Policy: policy, ScrapeInterval: 10 * time.Millisecond},
		Log:           log,
		StartTimeout:  20 * time.Second,
	})
	if err == nil {
		t.Cleanup(func() { c.Stop(5 * time.Second) })
	}
	return c, log, err
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func roundRobin(t *testing.T) route.Policy {
	t.Helper()
	p, err := route.Parse("round-robin", policies.Env{BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClusterRoutesToEveryEngineAndStops(t *testing.T) {
	c, log, err := startFake(t, "ok", 3, roundRobin(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints) != 3 || c.URL == "" {
		t.Fatalf("endpoints %v, router %q", c.Endpoints, c.URL)
	}
	for i, ep := range c.Endpoints {
		resp, err := http.Post(ep+"/v1/completions", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf(`"fake-%d"`, i); !strings.Contains(string(body), want) {
			t.Errorf("endpoint %d answers %s, want %s: endpoints out of order or per-engine flags lost", i, body, want)
		}
	}
	seen := map[string]bool{}
	for _, ep := range c.Endpoints {
		if !strings.HasPrefix(ep, "http://127.0.0.1:") || seen[ep] {
			t.Fatalf("endpoint %q: want distinct loopback URLs, got %v", ep, c.Endpoints)
		}
		seen[ep] = true
	}
	for range 6 {
		resp, err := http.Post(c.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hi","max_tokens":1}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "fake") {
			t.Fatalf("through the router: %d %s", resp.StatusCode, body)
		}
	}
	if err := c.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, e := range c.engines {
		select {
		case <-e.exited:
		default:
			t.Fatalf("%s still running after Stop", e.name)
		}
		if err := e.cmd.Process.Signal(syscall.Signal(0)); err == nil {
			t.Fatalf("%s: process still exists", e.name)
		}
	}
	if got := strings.Count(log.String(), "shutting down"); got != 3 {
		t.Fatalf("%d engines shut down gracefully, want 3; log:\n%s", got, log)
	}
	if _, err := http.Get(c.Endpoints[0] + "/health"); err == nil {
		t.Fatal("engine still answers after Stop")
	}
}

func TestStartFailureNamesTheEngineAndItsOutput(t *testing.T) {
	_, _, err := startFake(t, "crash-at-start", 2, roundRobin(t))
	if err == nil {
		t.Fatal("Start succeeded with engines that exit at start")
	}
	for _, want := range []string{"engine-", "exit status 3", "no such file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDoneReportsAnEngineThatDies(t *testing.T) {
	c, _, err := startFake(t, "crash-after-request", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != "" || c.Router != nil {
		t.Fatal("a router was started without a policy")
	}
	resp, err := http.Post(c.Endpoints[0]+"/v1/completions", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case err := <-c.Done():
		if err == nil || !strings.Contains(err.Error(), "exit status 4") {
			t.Fatalf("Done: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Done did not report the engine's exit")
	}
}

func TestStopKillsEnginesThatIgnoreSIGTERM(t *testing.T) {
	c, _, err := startFake(t, "ignore-sigterm", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = c.Stop(300 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop: %v, want an error saying engines were killed", err)
	}
	// Engines that ignore SIGTERM would keep a Stop that does not kill them waiting for
	// ever; the bound is that, with room for a loaded machine, not a measure of Stop.
	if time.Since(start) > 30*time.Second {
		t.Fatal("Stop waited far past its grace period")
	}
	for _, e := range c.engines {
		<-e.exited
	}
	if err := c.Stop(time.Second); !errors.Is(err, c.stopErr) {
		t.Fatalf("a second Stop: %v", err)
	}
}

func TestRestartBackoffDoublesUpToItsCap(t *testing.T) {
	p := RestartPolicy{Backoff: time.Second, MaxBackoff: 30 * time.Second}
	var got []time.Duration
	for attempt := 1; attempt <= 8; attempt++ {
		got = append(got, p.backoff(attempt))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i := range want {
		want[i] *= time.Second
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("back-offs (-want +got):\n%s", diff)
	}
	d := RestartPolicy{}.withDefaults()
	if d.Backoff != time.Second || d.MaxBackoff != 30*time.Second || d.ResetAfter != time.Minute || d.MaxRestarts != 5 {
		t.Fatalf("defaults: %+v", d)
	}
}

// waitLog polls buf until it matches re.
func waitLog(t *testing.T, buf *lockedBuffer, re string) {
	t.Helper()
	r := regexp.MustCompile(re)
	deadline := time.Now().Add(30 * time.Second)
	for !r.MatchString(buf.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %q within 30 s; events:\n%s", re, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func healthy(url string) bool {
	resp, err := http.Get(url + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestACrashedEngineIsRestartedOnItsPort(t *testing.T) {
	events := &lockedBuffer{}
	c, _, err := startFakeRestarting(t, "crash-after-request", 2, roundRobin(t),
		&RestartPolicy{Backoff: 20 * time.Millisecond, ResetAfter: time.Hour}, events)
	if err != nil {
		t.Fatal(err)
	}
	crash := func() {
		t.Helper()
		resp, err := http.Post(c.Endpoints[0]+"/v1/completions", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	first := c.PIDs()[0]
	crash()
	waitLog(t, events, `engine-0 \(pid \d+, http://127\.0\.0\.1:\d+\) exited: exit status 4 after \S+; restarting in 20ms \(attempt 1 of 5\)`)
	waitLog(t, events, `engine-0 is back at `+regexp.QuoteMeta(c.Endpoints[0]))
	if !healthy(c.Endpoints[0]) {
		t.Fatal("engine-0 is back but its URL does not answer")
	}
	if pid := c.PIDs()[0]; pid == first || pid == 0 {
		t.Fatalf("engine-0 pid %d after the restart, %d before", pid, first)
	}
	// A second crash before ResetAfter doubles the wait.
	crash()
	waitLog(t, events, `restarting in 40ms \(attempt 2 of 5\)`)
	waitLog(t, events, `(?s)is back.*is back`)
	select {
	case err := <-c.Done():
		t.Fatalf("Done reported %v though engines restart", err)
	default:
	}
	if strings.Contains(events.String(), "engine-1") {
		t.Fatalf("engine-1 was never touched, yet:\n%s", events)
	}
}

func TestResetAfterStartsTheCrashCountAgain(t *testing.T) {
	events := &lockedBuffer{}
	c, _, err := startFakeRestarting(t, "crash-after-request", 1, nil,
		&RestartPolicy{Backoff: 10 * time.Millisecond, ResetAfter: 50 * time.Millisecond}, events)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		n := strings.Count(events.String(), "is back")
		resp, err := http.Post(c.Endpoints[0]+"/v1/completions", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		waitLog(t, events, fmt.Sprintf(`(?s)(is back.*){%d}`, n+1))
		time.Sleep(60 * time.Millisecond) // stay up past ResetAfter: a real interval, not a wait for an event
	}
	if got := strings.Count(events.String(), "(attempt 1 of 5)"); got != 2 {
		t.Fatalf("%d restarts counted as the first, want 2 (the engine stayed up past ResetAfter in between):\n%s", got, events)
	}
}

func TestACrashLoopIsGivenUpAndTheOthersServe(t *testing.T) {
	events := &lockedBuffer{}
	c, _, err := startFakeRestarting(t, "crash-loop", 2, roundRobin(t),
		&RestartPolicy{Backoff: 5 * time.Millisecond, MaxRestarts: 3}, events)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(c.PIDs()[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitLog(t, events, `engine-0 .* exited: signal: killed .*restarting in 5ms \(attempt 1 of 3\)`)
	waitLog(t, events, `engine-0 .* exited: exit status 3 .*restarting in 20ms \(attempt 3 of 3\)`)
	waitLog(t, events, `engine-0 .* exited: exit status 3 after \S+; not restarting it: it crashed 4 times in a row without staying up 1m0s; its last output: loading model: corrupt weights; 1 of 2 engines left`)
	select {
	case err := <-c.Done():
		t.Fatalf("Done reported %v while engine-1 serves", err)
	default:
	}
	for range 4 {
		resp, err := http.Post(c.URL+"/v1/completions", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "fake-1") {
			t.Fatalf("through the router with engine-0 given up: %d %s", resp.StatusCode, body)
		}
	}
	syscall.Kill(c.PIDs()[1], syscall.SIGKILL)
	select {
	case err := <-c.Done():
		if err == nil || !strings.Contains(err.Error(), "every engine is down") {
			t.Fatalf("Done: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Done did not report that no engine is left; events:\n%s", events)
	}
}

func TestStopDuringABackoffStartsNothing(t *testing.T) {
	events := &lockedBuffer{}
	c, _, err := startFakeRestarting(t, "ok", 1, nil, &RestartPolicy{Backoff: time.Hour}, events)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(c.PIDs()[0], syscall.SIGKILL)
	waitLog(t, events, `restarting in 1h0m0s`)
	start := time.Now()
	if err := c.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 30*time.Second { // the back-off is an hour; a loaded machine is slow, not that slow
		t.Fatal("Stop waited for the back-off")
	}
	if pids := c.PIDs(); pids[0] != 0 {
		t.Fatalf("an engine runs after Stop: pid %d", pids[0])
	}
}

// TestRolesReachTheRouter: Options.Roles give the router's endpoints their llm-d roles,
// so a policy without P/D keeps requests off the prefill engine.
func TestRolesReachTheRouter(t *testing.T) {
	c, err := Start(context.Background(), Options{
		Engines:       3,
		Roles:         []string{"prefill", "decode", "decode"},
		Command:       []string{os.Args[0]},
		EngineArgs:    []string{"--name", "fake"},
		EngineArgsFor: func(i int) []string { return []string{"--index", fmt.Sprint(i)} },
		Env:           []string{"FAKE_ENGINE=ok"},
		Router:        router.Config{Policy: roundRobin(t), ScrapeInterval: 10 * time.Millisecond},
		Log:           io.Discard,
		StartTimeout:  20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(5 * time.Second) })
	want := []string{"prefill=" + c.Endpoints[0], "decode=" + c.Endpoints[1], "decode=" + c.Endpoints[2]}
	if diff := cmp.Diff(want, c.Router.Endpoints()); diff != "" {
		t.Errorf("router endpoints (-want +got):\n%s", diff)
	}
	for range 4 {
		resp, err := http.Post(c.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hi","max_tokens":1}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.Contains(string(body), "fake-0") {
			t.Fatalf("through the router: %d %s; the prefill engine must not serve a request alone", resp.StatusCode, body)
		}
	}
}
