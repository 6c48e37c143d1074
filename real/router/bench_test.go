package router

import (
	"io"
	"net/http"
	"slices"
	"strings"
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
