package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// servelab up --autoscale grows the cluster under load and drains it after: a second engine
// starts, joins the router (its load time printed) and takes requests; once the load stops
// it is drained and stopped; no request fails meanwhile, and the cluster stops cleanly.
func TestUpAutoscaleStartsAndDrainsEngines(t *testing.T) {
	dir := synthTiny(t)
	url, out, stop := startUpOut(t, "--model", dir, "--router", "least-request", "--num-gpu-blocks-override", "128", "--threads", "1",
		"--autoscale", "hpa:metric=rps,target=2,max-replicas=2,interval=0.5,window=1,scale-down-window=1")
	var sent, failed atomic.Int64
	load := make(chan struct{})
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for {
			select {
			case <-load:
				return
			case <-time.After(50 * time.Millisecond):
			}
			go func() {
				sent.Add(1)
				resp, err := http.Post(url+"/v1/completions", "application/json",
					strings.NewReader(`{"prompt":"Once upon a time","max_tokens":2,"temperature":0}`))
				if err != nil {
					failed.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}()
		}
	}()
	waitFor := func(what, text string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(out.String(), text) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s within 60 s; output:\n%s", what, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("second engine", "engine-1 at http://127.0.0.1:")
	waitFor("second engine ready", "(slot 1)")
	close(load)
	<-loadDone
	waitFor("drain", "drained and stopped")
	if err := stop(); err != nil {
		t.Fatalf("servelab up stopped with %v; output:\n%s", err, out)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed while the cluster scaled; output:\n%s", n, sent.Load(), out)
	}
	if !strings.Contains(out.String(), "engines took [") {
		t.Errorf("no load times printed; output:\n%s", out)
	}
}

// servelab up --autoscale restarts a killed engine as up does without it: kill -9 of one
// engine mid-load loses no request the router could retry, the engine comes back on its URL
// and gets traffic again, and the autoscaler keeps it as the replica it was: every decision
// counts two replicas and none starts, cancels or drains an engine.
func TestUpAutoscaleRestartsAKilledEngine(t *testing.T) {
	dir := synthTiny(t)
	scaleLog := filepath.Join(t.TempDir(), "scale.jsonl")
	url, out, stop := startUpOut(t, "--model", dir, "--router", "round-robin", "--num-gpu-blocks-override", "128",
		"--threads", "1", "--restart-backoff", "100ms", "--scale-log", scaleLog,
		// min-replicas 2 and a queue target never reached: the policy wants 2 throughout.
		"--autoscale", "hpa:metric=queue,target=1000,min-replicas=2,max-replicas=3,interval=0.2")
	m := regexp.MustCompile(`engine-1\s+(http://127\.0\.0\.1:\d+)\s+\(pid (\d+)\)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("servelab up does not print engine-1's URL and pid:\n%s", out)
	}
	victimURL := m[1]
	pid, _ := strconv.Atoi(m[2])

	const workers = 4
	load := startLoad(url, workers)
	defer load.stop()
	waitFor(t, "20 requests served before the kill", 120*time.Second, load.servedAtLeast(20), out)
	waitFor(t, "engine-1 running a request", 60*time.Second, func() bool {
		return metricSum(t, victimURL, "vllm:num_requests_running", "") > 0
	}, out)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "up says it restarts engine-1", 60*time.Second, func() bool {
		return regexp.MustCompile(`engine-1 .*signal: killed.*restarting in .*attempt 1`).MatchString(out.String())
	}, out)
	waitFor(t, "up says engine-1 is back at its URL", 60*time.Second, func() bool {
		return strings.Contains(out.String(), "engine-1 is back at "+victimURL)
	}, out)
	// The restarted process counts from zero: its own counter shows traffic after the restart.
	waitFor(t, "the router sends the restarted engine-1 traffic", 60*time.Second, func() bool {
		return metricSum(t, victimURL, "vllm:request_success_total", "") > 0
	}, out)
	waitFor(t, "more requests served after the restart", 60*time.Second, load.servedAtLeast(load.served()+8), out)
	counts, firstErr := load.stop()
	if err := stop(); err != nil {
		t.Fatalf("servelab up stopped with %v; output:\n%s", err, out)
	}

	t.Logf("servelab up:\n%s", out)
	t.Logf("requests: %d served, %d lost before any response byte, %d cut mid-response",
		counts[served], counts[lostUnstarted], counts[lostMidStream])
	if counts[lostUnstarted] != 0 {
		t.Errorf("%d requests failed before any response byte (the router could have retried them); first: %s\noutput:\n%s",
			counts[lostUnstarted], firstErr[lostUnstarted], out)
	}
	if counts[lostMidStream] > workers {
		t.Errorf("%d responses cut mid-way, but only %d requests are in flight at once; first: %s",
			counts[lostMidStream], workers, firstErr[lostMidStream])
	}
	if strings.Contains(out.String(), "engine-2") {
		t.Errorf("a third engine was started beside the restarted one:\n%s", out)
	}
	f, err := os.Open(scaleLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e scaleLogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("--scale-log line %q: %v", sc.Text(), err)
		}
		lines++
		if e.Replicas != 2 || len(e.Start)+len(e.Cancel)+len(e.Drain) > 0 {
			t.Errorf("decision %+v: want 2 replicas (the restarting one counted) and no action", e)
		}
	}
	if lines == 0 {
		t.Errorf("no decisions in --scale-log; output:\n%s", out)
	}
}

func TestUpAutoscaleRejectsConflictingFlags(t *testing.T) {
	dir := synthTiny(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--autoscale", "hpa", "--engines", "3"}, "--engines and --autoscale"},
		{[]string{"--autoscale", "hpa:target=-1"}, `--autoscale: policy "hpa": parameter "target"`},
		{[]string{"--autoscale", "hpa", "--prefill-engines", "1", "--router", "../../examples/router/llm-d-pd.yaml"}, "--autoscale and --prefill-engines"},
	} {
		_, err := run(t, append([]string{"up", "--port", "0", "--model", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

// servelab up --autoscale with metric=slo: the autoscaler's observations carry the requests
// the router finished since the previous one and those that met their SLO, the header's
// objective or else --slo's. The objectives are far from what the tiny engine takes: 60 s
// (met) and 1 µs (missed: no response crosses the router that fast).
func TestUpAutoscaleObservesSLOAttainment(t *testing.T) {
	dir := synthTiny(t)
	scaleLog := filepath.Join(t.TempDir(), "scale.jsonl")
	url, out, stop := startUpOut(t, "--model", dir, "--router", "round-robin", "--num-gpu-blocks-override", "128",
		"--threads", "1", "--scale-log", scaleLog, "--slo", "ttft:60000,tpot:60000",
		"--autoscale", "hpa:metric=slo,target=0.5,min-replicas=1,max-replicas=1,interval=0.2")
	post := func(stream bool, ttftMs string) {
		t.Helper()
		body := fmt.Sprintf(`{"prompt":"Once upon a time","max_tokens":3,"temperature":0,"stream":%v}`, stream)
		req, err := http.NewRequest(http.MethodPost, url+"/v1/completions", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if ttftMs != "" {
			req.Header.Set("x-slo-ttft-ms", ttftMs)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("stream=%v: %s, %v", stream, resp.Status, err)
		}
	}
	// 3 met by --slo's objectives, 2 missing their header's.
	post(true, "")
	post(false, "")
	post(true, "60000")
	post(true, "0.001")
	post(false, "0.001")
	type sums struct{ Finished, Met int }
	var got sums
	var metric bool // a decision read an attainment
	read := func() bool {
		data, err := os.ReadFile(scaleLog)
		if err != nil {
			return false
		}
		got, metric = sums{}, false
		lines := strings.Split(string(data), "\n")
		for _, line := range lines[:len(lines)-1] { // the last may be half written
			var e scaleLogEntry
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("--scale-log line %q: %v", line, err)
			}
			got.Finished += e.Finished
			got.Met += e.MetSLO
			metric = metric || e.Metric != nil
		}
		return got.Finished >= 5
	}
	waitFor(t, "5 finished requests in the autoscaler's observations", 60*time.Second, read, out)
	if err := stop(); err != nil {
		t.Fatalf("servelab up stopped with %v; output:\n%s", err, out)
	}
	read()
	if diff := cmp.Diff(sums{Finished: 5, Met: 3}, got); diff != "" {
		t.Errorf("finished and met over the observations (-want +got):\n%s\noutput:\n%s", diff, out)
	}
	if !metric {
		t.Errorf("no decision read an SLO attainment; output:\n%s", out)
	}
}
