package router

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
)

// objectivesRecorder routes to the first endpoint and keeps the requests it saw.
type objectivesRecorder struct {
	mu   sync.Mutex
	seen []serving.Request
}

func (p *objectivesRecorder) Route(req *serving.Request, _ []serving.InstanceView) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, *req)
	return 0
}

// TestSLOHeadersReachThePolicy: llm-d's x-slo-ttft-ms and x-slo-tpot-ms headers and the
// body's max_tokens become the routed request's objectives and length; a malformed header
// is a 400 naming it.
func TestSLOHeadersReachThePolicy(t *testing.T) {
	a := newStub(t, "a")
	close(a.release)
	pol := &objectivesRecorder{}
	r := readyRouter(t, Config{Endpoints: []string{a.URL}, Policy: pol, ScrapeInterval: time.Hour, Logf: t.Logf})
	url := serve(t, r.Handler())
	post := func(headers map[string]string, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, url+"/v1/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	type got struct {
		TTFT, TPOT float64
		MaxTokens  int
	}
	var want []got
	for _, tc := range []struct {
		headers map[string]string
		body    string
		want    got
	}{
		{map[string]string{"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "20"}, `{"prompt":"x","max_tokens":64}`, got{0.5, 0.02, 64}},
		{map[string]string{"X-Slo-Ttft-Ms": "1500"}, `{"prompt":"x","max_completion_tokens":8}`, got{1.5, 0, 8}},
		{nil, `{"prompt":"x"}`, got{}},
	} {
		if code, body := post(tc.headers, tc.body); code != http.StatusOK {
			t.Fatalf("%v: %d %s", tc.headers, code, body)
		}
		want = append(want, tc.want)
	}
	for _, bad := range []string{"soon", "-1", "NaN"} {
		code, body := post(map[string]string{"x-slo-tpot-ms": bad}, `{"prompt":"x"}`)
		if code != http.StatusBadRequest || !strings.Contains(body, "x-slo-tpot-ms") {
			t.Errorf("x-slo-tpot-ms: %s: %d %s, want 400 naming the header", bad, code, body)
		}
	}
	pol.mu.Lock()
	defer pol.mu.Unlock()
	var seen []got
	for i, req := range pol.seen {
		seen = append(seen, got{req.TTFTSLO, req.AvgTPOTSLO, req.MaxTokens})
		if i > 0 && req.Arrival < pol.seen[i-1].Arrival {
			t.Errorf("arrival %d (%v) before arrival %d (%v)", i, req.Arrival, i-1, pol.seen[i-1].Arrival)
		}
	}
	if diff := cmp.Diff(want, seen); diff != "" {
		t.Errorf("requests the policy saw (-want +got):\n%s", diff)
	}
}

// TestExtProcReadsSLOHeaders: behind a gateway (GIE's ext_proc) the same headers reach the
// policy, and a malformed one is an immediate 400 naming it.
func TestExtProcReadsSLOHeaders(t *testing.T) {
	up := newStub(t, "a")
	close(up.release)
	rr, err := route.Parse("round-robin", policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	pol := &recordingPolicy{Policy: rr}
	r := epRouter(t, Config{Policy: pol}, "", true, up.URL)
	conn := extProcClient(t, r, ExtProcConfig{})

	g := openStream(t, conn)
	g.send(requestHeaders("/v1/completions", false, nil, "x-slo-ttft-ms", "750", "x-slo-tpot-ms", "30"),
		requestBody(`{"prompt":"x","max_tokens":12}`, true))
	if resp := g.recv(); destination(t, resp, resp.GetRequestHeaders().GetResponse()) != host(up) {
		t.Fatalf("not routed to the endpoint: %v", resp)
	}
	pol.mu.Lock()
	got := pol.reqs[0]
	pol.mu.Unlock()
	if diff := cmp.Diff([]float64{0.75, 0.03, 12}, []float64{got.TTFTSLO, got.AvgTPOTSLO, float64(got.MaxTokens)}); diff != "" {
		t.Errorf("TTFT SLO, TPOT SLO, max tokens the policy saw (-want +got):\n%s", diff)
	}

	g = openStream(t, conn)
	g.send(requestHeaders("/v1/completions", false, nil, "x-slo-ttft-ms", "fast"), requestBody(`{"prompt":"x"}`, true))
	if code, msg := immediateStatus(t, g); code != http.StatusBadRequest || !strings.Contains(msg, "x-slo-ttft-ms") {
		t.Errorf("a malformed x-slo-ttft-ms: %d %q, want 400 naming it", code, msg)
	}
}
