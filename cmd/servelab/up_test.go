package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	url, _, stop = startUpOut(t, args...)
	return url, stop
}

// startUpOut is startUp that also returns the command's output (stdout and stderr).
func startUpOut(t *testing.T, args ...string) (url string, output *syncBuffer, stop func() error) {
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
			return m[1], out, stop
		}
		select {
		case err := <-errc:
			errc <- err // for stop
			t.Fatalf("servelab up exited: %v\n%s", err, out)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("servelab up did not print its endpoint; output:\n%s", out)
	return "", nil, nil
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

func TestUpRejectsBadFlagsBeforeStarting(t *testing.T) {
	dir := synthTiny(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--engines", "0"}, "--engines must be at least 1, got 0"},
		{[]string{"--engines", "-2"}, "--engines must be at least 1, got -2"},
		{[]string{"--restart-backoff", "0s"}, "--restart-backoff must be positive"},
		{[]string{"--max-restarts", "-1"}, "--max-restarts must be 0 (never restart) or more"},
	} {
		out, err := run(t, append([]string{"up", "--model", dir, "--port", "0"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
		if strings.Contains(out, "starting") {
			t.Errorf("%v printed %q before failing", tc.args, out)
		}
	}
}

// outcome is what one replayed request saw.
type outcome int

const (
	served        outcome = iota
	lostUnstarted         // refused, reset or an error status before any response byte: the router could have retried it
	lostMidStream         // a stream that had started (status 200, tokens out) and was cut: cannot be retried
)

// replayRequest sends one completion through the router and classifies how it ended.
func replayRequest(url string, stream bool) (outcome, string) {
	body := fmt.Sprintf(`{"prompt":"Once upon a time","max_tokens":32,"temperature":0,"ignore_eos":true,"stream":%v}`, stream)
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		return lostUnstarted, err.Error()
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return lostUnstarted, fmt.Sprintf("HTTP %d: %s", resp.StatusCode, got)
	}
	if stream {
		if err != nil || !strings.Contains(string(got), "data: [DONE]") {
			return lostMidStream, fmt.Sprintf("stream cut after %d bytes: %v", len(got), err)
		}
		return served, ""
	}
	if err != nil || !strings.Contains(string(got), `"completion_tokens":32`) {
		// A non-streaming answer is written whole at the end: a cut body means the
		// engine died after answering, which the router cannot retry either.
		return lostMidStream, fmt.Sprintf("body cut: %v %s", err, got)
	}
	return served, ""
}

// metricSum adds up the samples of metric (every label set) in a Prometheus text page.
func metricSum(t *testing.T, url, metric string, labels string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(page), "\n") {
		name, rest, ok := strings.Cut(line, " ")
		if !ok || !(name == metric || strings.HasPrefix(name, metric+"{")) || !strings.Contains(name, labels) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", url, line, err)
		}
		sum += v
	}
	return sum
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool, out fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; output:\n%s", what, timeout, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUpSurvivesAKilledEngine is issue 10 item 5: kill -9 of one engine mid-replay must
// lose no request that could be retried, and the engine must come back and get traffic.
func TestUpSurvivesAKilledEngine(t *testing.T) {
	dir := synthTiny(t)
	url, out, stop := startUpOut(t, "--engines", "3", "--model", dir, "--router", "round-robin",
		"--num-gpu-blocks-override", "128", "--threads", "1", "--restart-backoff", "100ms")
	m := regexp.MustCompile(`engine-1\s+(http://127\.0\.0\.1:\d+)\s+\(pid (\d+)\)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("servelab up does not print engine-1's URL and pid:\n%s", out)
	}
	victimURL, victimPID := m[1], m[2]
	pid, _ := strconv.Atoi(victimPID)

	load := startLoad(url, 6)
	defer load.stop()
	waitFor(t, "30 requests served before the kill", 60*time.Second, load.servedAtLeast(30), out)
	// Kill it while it is working on requests, so that some die with it.
	waitFor(t, "engine-1 running a request", 60*time.Second, func() bool {
		return metricSum(t, victimURL, "vllm:num_requests_running", "") > 0
	}, out)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "up says it restarts engine-1", 30*time.Second, func() bool {
		return regexp.MustCompile(`engine-1 .*signal: killed.*restart(ing)? in .*attempt 1`).MatchString(out.String())
	}, out)
	waitFor(t, "engine-1 answers /health again at the same URL", 60*time.Second, func() bool {
		resp, err := http.Get(victimURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, out)
	waitFor(t, "up says engine-1 is back", 30*time.Second, func() bool {
		return regexp.MustCompile(`engine-1 .*back`).MatchString(out.String())
	}, out)
	// The restarted process counts from zero: its own counter shows traffic after the restart.
	waitFor(t, "the router sends the restarted engine-1 traffic", 60*time.Second, func() bool {
		return metricSum(t, victimURL, "vllm:request_success_total", "") > 0
	}, out)
	waitFor(t, "more requests served after the restart", 60*time.Second, load.servedAtLeast(load.served()+12), out)
	counts, firstErr := load.stop()

	if d := metricSum(t, url, "servelab_router_decisions_total", victimURL); d <= 0 {
		t.Errorf("router decisions for %s: %v", victimURL, d)
	}
	t.Logf("servelab up:\n%s", out)
	t.Logf("requests: %d served, %d lost before any response byte, %d cut mid-response (%d streamed, %d not); router retries %v",
		counts[served], counts[lostUnstarted], counts[lostMidStream], load.streamed, load.unstreamed,
		metricSum(t, url, "servelab_router_retries_total", ""))
	if counts[lostUnstarted] != 0 {
		t.Errorf("%d requests failed before any response byte (the router could have retried them); first: %s",
			counts[lostUnstarted], firstErr[lostUnstarted])
	}
	if counts[lostMidStream] > 6 {
		t.Errorf("%d responses cut mid-way, but only 6 requests are in flight at once; first: %s",
			counts[lostMidStream], firstErr[lostMidStream])
	}
	if err := stop(); err != nil {
		t.Fatalf("servelab up stopped with %v; output:\n%s", err, out)
	}
}

// TestEnginesDieWithUp: engines, the restarted one included, do not outlive a killed `up`.
func TestEnginesDieWithUp(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux's")
	}
	dir := synthTiny(t)
	cmd := exec.Command(os.Args[0], "up", "--engines", "2", "--model", dir, "--port", "0",
		"--num-gpu-blocks-override", "64", "--threads", "1", "--restart-backoff", "10ms")
	cmd.Env = append(os.Environ(), "SERVELAB_RUN_MAIN=1")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pidOf := func(re string) int {
		t.Helper()
		var m []string
		waitFor(t, "output matching "+re, 60*time.Second, func() bool {
			m = regexp.MustCompile(re).FindStringSubmatch(out.String())
			return m != nil
		}, out)
		pid, _ := strconv.Atoi(m[1])
		return pid
	}
	first, second := pidOf(`engine-0 .*\(pid (\d+)\)`), pidOf(`engine-1 .*\(pid (\d+)\)`)
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	restarted := pidOf(`engine-0 is back at .*\(pid (\d+),`)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for _, pid := range []int{second, restarted} {
		waitFor(t, fmt.Sprintf("engine pid %d exits after up was killed", pid), 60*time.Second, func() bool {
			return syscall.Kill(pid, 0) != nil
		}, out)
	}
}

// loadGen sends requests through up's router from workers goroutines, each alternating
// streamed and unstreamed, until stopped, counting how each ended.
type loadGen struct {
	mu                   sync.Mutex
	counts               map[outcome]int
	firstErr             map[outcome]string
	streamed, unstreamed int
	done                 chan struct{}
	stopped              bool
	wg                   sync.WaitGroup
}

func startLoad(url string, workers int) *loadGen {
	g := &loadGen{counts: map[outcome]int{}, firstErr: map[outcome]string{}, done: make(chan struct{})}
	for w := range workers {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-g.done:
					return
				default:
				}
				stream := (w+i)%2 == 0
				o, msg := replayRequest(url, stream)
				g.mu.Lock()
				g.counts[o]++
				if stream {
					g.streamed++
				} else {
					g.unstreamed++
				}
				if o != served && g.firstErr[o] == "" {
					g.firstErr[o] = fmt.Sprintf("stream=%v: %s", stream, msg)
				}
				g.mu.Unlock()
			}
		}()
	}
	return g
}

// served is how many requests were served so far.
func (g *loadGen) served() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.counts[served]
}

// servedAtLeast is a waitFor condition: n requests served.
func (g *loadGen) servedAtLeast(n int) func() bool {
	return func() bool { return g.served() >= n }
}

// stop stops the workers (again is a no-op) and returns the outcomes' counts and each
// failed outcome's first message.
func (g *loadGen) stop() (map[outcome]int, map[outcome]string) {
	g.mu.Lock()
	if !g.stopped {
		g.stopped = true
		close(g.done)
	}
	g.mu.Unlock()
	g.wg.Wait()
	return g.counts, g.firstErr
}
