package main

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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

func TestUpAutoscaleRejectsConflictingFlags(t *testing.T) {
	dir := synthTiny(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--autoscale", "hpa:metric=slo,target=0.9"}, "metric=slo needs"},
		{[]string{"--autoscale", "hpa", "--engines", "3"}, "--engines and --autoscale"},
		{[]string{"--autoscale", "hpa:target=-1"}, `--autoscale: policy "hpa": parameter "target"`},
	} {
		_, err := run(t, append([]string{"up", "--port", "0", "--model", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
