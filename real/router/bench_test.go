package router

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkOverhead measures the latency the router adds to a small non-streamed request
// against a stub upstream on loopback: direct and routed requests alternate, and the
// reported figures are the differences of their medians and 99th percentiles. Requests
// are sent one after another (closed loop), not at a fixed rate.
func BenchmarkOverhead(b *testing.B) {
	up := newStub(b, "a")
	close(up.release)
	_, url, _ := newRouter(b, "least-request", 50*time.Millisecond, up.URL)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	do := func(base string) time.Duration {
		start := time.Now()
		resp, err := client.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hello world","max_tokens":1}`))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start)
	}
	var direct, routed []time.Duration
	for b.Loop() {
		direct = append(direct, do(up.URL))
		routed = append(routed, do(url))
	}
	slices.Sort(direct)
	slices.Sort(routed)
	q := func(d []time.Duration, p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(q(routed, 0.5)-q(direct, 0.5), "added-p50-µs")
	b.ReportMetric(q(routed, 0.99)-q(direct, 0.99), "added-p99-µs")
}

// BenchmarkOverheadAt500RPS measures the router's added latency under load, as the
// router's target is stated: requests arrive at 500 per second (open loop, each sent on
// its own goroutine at its tick) through the router, interleaved with as many sent
// straight to the stub upstream; the figures are the differences of the two latency
// distributions' medians and 99th percentiles. Each iteration is one routed and one direct
// request, 2 ms apart from the next pair: run it with -benchtime 2500x for five seconds.
func BenchmarkOverheadAt500RPS(b *testing.B) {
	up := newStub(b, "a")
	close(up.release)
	_, url, _ := newRouter(b, "least-request", 50*time.Millisecond, up.URL)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024, MaxIdleConns: 1024}}
	var mu sync.Mutex
	var direct, routed []time.Duration
	var wg sync.WaitGroup
	send := func(base string, into *[]time.Duration) {
		defer wg.Done()
		start := time.Now()
		resp, err := client.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hello world","max_tokens":1}`))
		if err != nil {
			b.Error(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		mu.Lock()
		*into = append(*into, d)
		mu.Unlock()
	}
	const period = 2 * time.Millisecond // 500 routed requests per second
	start := time.Now()
	i := 0
	for b.Loop() {
		time.Sleep(time.Until(start.Add(time.Duration(i) * period)))
		wg.Add(2)
		go send(url, &routed)
		time.Sleep(time.Until(start.Add(time.Duration(i)*period + period/2)))
		go send(up.URL, &direct)
		i++
	}
	elapsed := time.Since(start)
	wg.Wait()
	if len(direct) == 0 || len(routed) == 0 {
		b.Fatal("no requests completed")
	}
	slices.Sort(direct)
	slices.Sort(routed)
	q := func(d []time.Duration, p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(float64(len(routed))/elapsed.Seconds(), "routed-req/s")
	b.ReportMetric(q(routed, 0.5)-q(direct, 0.5), "added-p50-µs")
	b.ReportMetric(q(routed, 0.99)-q(direct, 0.99), "added-p99-µs")
}
