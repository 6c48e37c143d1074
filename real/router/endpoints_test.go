package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies"
	"servelab/policies/route"
	"servelab/serving"
)

// indexes maps the router's endpoint URLs to their policy indexes.
func indexes(r *Router) map[string]int {
	out := map[string]int{}
	for _, e := range r.snapshot() {
		out[e.url] = e.index
	}
	return out
}

// removals records RemoveInstance calls around a real policy, and the views it routes over.
type removals struct {
	route.Policy
	mu      sync.Mutex
	removed []int
	views   [][]int // the Index fields of each Route call's views
}

func (p *removals) Route(req *serving.Request, views []serving.InstanceView) int {
	p.mu.Lock()
	var idx []int
	for _, v := range views {
		idx = append(idx, v.Index)
	}
	p.views = append(p.views, idx)
	p.mu.Unlock()
	return p.Policy.Route(req, views)
}

func (p *removals) RemoveInstance(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removed = append(p.removed, i)
	if rm, ok := p.Policy.(route.InstanceRemover); ok {
		rm.RemoveInstance(i)
	}
}

func (p *removals) got() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.removed...)
}

// newDynamicRouter is a router with no endpoints yet, following KV events, served on loopback.
func newDynamicRouter(t *testing.T, spec string) (*Router, string, *removals, *logBuf) {
	t.Helper()
	p, err := route.Parse(spec, policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	rec := &removals{Policy: p}
	logs := &logBuf{}
	r, err := New(Config{Policy: rec, ScrapeInterval: 5 * time.Millisecond, KVEvents: true,
		Registry: prometheus.NewRegistry(), Logf: logs.logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, serve(t, r.Handler()), rec, logs
}

// TestSetEndpoints walks an endpoint set through additions and removals: indexes are kept
// while an endpoint stays, the lowest free one is reused only after the policy forgot it,
// removed endpoints' loops have ended when SetEndpoints returns, and the router's
// healthy-endpoints gauge and decision counters follow the set.
func TestSetEndpoints(t *testing.T) {
	a, b, c := newStub(t, "a"), newStub(t, "b"), newStub(t, "c")
	for _, s := range []*stub{a, b, c} {
		close(s.release)
	}
	r, url, rec, logs := newDynamicRouter(t, "round-robin")
	steps := []struct {
		set         []string
		want        map[string]int
		wantRemoved []int // every RemoveInstance call so far
	}{
		{[]string{a.URL, b.URL}, map[string]int{a.URL: 0, b.URL: 1}, nil},
		{[]string{b.URL}, map[string]int{b.URL: 1}, []int{0}},
		// c takes the freed index 0; b keeps 1; a trailing slash and a repeat are one URL.
		{[]string{b.URL, c.URL + "/", c.URL}, map[string]int{b.URL: 1, c.URL: 0}, []int{0}},
		{[]string{a.URL, c.URL, b.URL}, map[string]int{a.URL: 2, b.URL: 1, c.URL: 0}, []int{0}},
		{[]string{a.URL}, map[string]int{a.URL: 2}, []int{0, 0, 1}},
		{nil, map[string]int{}, []int{0, 0, 1, 2}},
		{[]string{c.URL, a.URL}, map[string]int{c.URL: 0, a.URL: 1}, []int{0, 0, 1, 2}},
	}
	for n, step := range steps {
		before := r.snapshot()
		if err := r.SetEndpoints(step.set); err != nil {
			t.Fatalf("step %d: %v", n, err)
		}
		if diff := cmp.Diff(step.want, indexes(r)); diff != "" {
			t.Fatalf("step %d: endpoint indexes (-want +got):\n%s", n, diff)
		}
		if diff := cmp.Diff(step.wantRemoved, rec.got()); diff != "" {
			t.Errorf("step %d: RemoveInstance calls (-want +got):\n%s", n, diff)
		}
		for _, e := range before {
			if _, kept := step.want[e.url]; kept {
				if !containsEndpoint(r.snapshot(), e) {
					t.Errorf("step %d: %s was replaced though it stayed in the set", n, e.url)
				}
				continue
			}
			done := make(chan struct{})
			go func() { e.loops.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Second):
				t.Errorf("step %d: removed endpoint %s still runs its loops after SetEndpoints returned", n, e.url)
			}
		}
		// Every endpoint in the set gets healthy and is routed to.
		eventually(t, fmt.Sprintf("step %d: %d healthy endpoints", n, len(step.want)), func() bool {
			return gauge(t, r.cfg.Registry, "servelab_router_healthy_endpoints") == float64(len(step.want))
		})
		served := map[string]bool{}
		for range 2 * len(step.want) {
			resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if len(step.want) == 0 {
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Errorf("step %d: no endpoints, answered %s", n, resp.Status)
				}
				continue
			}
			served["http://"+resp.Header.Get(serving.ServedEndpointHeader)] = true
		}
		for u := range step.want {
			if !served[u] {
				t.Errorf("step %d: round-robin never reached %s (served %v)", n, u, served)
			}
		}
		// The decision counters name exactly the set's endpoints.
		if diff := cmp.Diff(keys(step.want), decisionLabels(t, r.cfg.Registry)); diff != "" {
			t.Errorf("step %d: servelab_router_decisions_total endpoints (-want +got):\n%s", n, diff)
		}
	}
	if got := logs.matching("endpoint " + a.URL + " removed"); len(got) != 2 {
		t.Errorf("log lines of a's removals: %q", got)
	}
}

func containsEndpoint(set []*endpoint, e *endpoint) bool {
	for _, x := range set {
		if x == e {
			return true
		}
	}
	return false
}

func keys(m map[string]int) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	return sortedStrings(out)
}

func sortedStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func decisionLabels(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, mf := range mfs {
		if mf.GetName() != "servelab_router_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out = append(out, m.GetLabel()[0].GetValue())
		}
	}
	return sortedStrings(out)
}

// TestRemovedEndpointFinishesInFlight: a stream already sent to an endpoint completes
// after the endpoint is removed; new requests go to the rest.
func TestRemovedEndpointFinishesInFlight(t *testing.T) {
	a, b := newStub(t, "a"), newStub(t, "b")
	close(b.release)
	r, url, _, _ := newDynamicRouter(t, "round-robin")
	if err := r.SetEndpoints([]string{a.URL}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a healthy", func() bool { return len(r.snapshot()) == 1 && r.snapshot()[0].healthy() })
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, `"from":"a"`) {
		t.Fatalf("first chunk %q, %v", line, err)
	}
	if err := r.SetEndpoints([]string{b.URL}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b healthy", func() bool { return len(r.snapshot()) == 1 && r.snapshot()[0].healthy() })
	next, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"y"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(next.Body)
	next.Body.Close()
	if !strings.Contains(string(body), `"from":"b"`) {
		t.Errorf("a request after a's removal got %q", body)
	}
	close(a.release)
	rest, err := io.ReadAll(br)
	if err != nil || !strings.Contains(string(rest), "[DONE]") {
		t.Errorf("the stream on the removed endpoint ended with %q, %v", rest, err)
	}
}

// TestReusedIndexForgotten: the policy is told to forget an index before a new endpoint
// is given it, and no decision sees the removed endpoint after that.
func TestReusedIndexForgotten(t *testing.T) {
	a, b, c := newStub(t, "a"), newStub(t, "b"), newStub(t, "c")
	for _, s := range []*stub{a, b, c} {
		close(s.release)
	}
	c.mu.Lock()
	c.waiting = 5
	c.mu.Unlock()
	r, url, rec, _ := newDynamicRouter(t, "prefix-affinity")
	if err := r.SetEndpoints([]string{a.URL, b.URL}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a and b healthy", func() bool { return gauge(t, r.cfg.Registry, "servelab_router_healthy_endpoints") == 2 })
	post := func() string {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"`+strings.Repeat("a long shared prefix ", 20)+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return "http://" + resp.Header.Get(serving.ServedEndpointHeader)
	}
	first := post()
	gone := indexes(r)[first]
	var keep string
	for _, u := range []string{a.URL, b.URL} {
		if u != first {
			keep = u
		}
	}
	if err := r.SetEndpoints([]string{keep, c.URL}); err != nil {
		t.Fatal(err)
	}
	if got := indexes(r)[c.URL]; got != gone {
		t.Fatalf("c got index %d, want the freed %d", got, gone)
	}
	if diff := cmp.Diff([]int{gone}, rec.got()); diff != "" {
		t.Errorf("RemoveInstance calls (-want +got):\n%s", diff)
	}
	// c is busier than keep: with a's entries forgotten the prompt matches nothing on
	// either and goes to the less loaded keep; had c inherited them, it would go to c.
	eventually(t, "c's load scraped", func() bool {
		for _, e := range r.snapshot() {
			if e.url == c.URL {
				v := e.view()
				return e.healthy() && v.Waiting == 5
			}
		}
		return false
	})
	if got := post(); got != keep {
		t.Errorf("the prompt once routed to index %d went to %s, want the less loaded %s: the new endpoint at that index inherited the old one's prefixes", gone, got, keep)
	}
}

// TestSetEndpointsUnderLoad changes the set while requests flow, under -race: every
// request is answered 200 (each change keeps one healthy endpoint), and the loops of every
// endpoint ever removed end.
func TestSetEndpointsUnderLoad(t *testing.T) {
	stubs := []*stub{newStub(t, "a"), newStub(t, "b"), newStub(t, "c")}
	for _, s := range stubs {
		close(s.release)
	}
	u := func(i int) string { return stubs[i%3].URL }
	r, url, _, _ := newDynamicRouter(t, "weighted")
	if err := r.SetEndpoints([]string{u(0), u(1)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two healthy", func() bool { return gauge(t, r.cfg.Registry, "servelab_router_healthy_endpoints") == 2 })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(fmt.Sprintf(`{"prompt":"worker %d request %d"}`, w, n)))
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("worker %d request %d: %s", w, n, resp.Status)
					return
				}
			}
		}()
	}
	var removed []*endpoint
	for i := 1; i <= 30; i++ {
		// {i, i+1} keeps i from the previous {i-1, i}; wait for the new one to be healthy so
		// the next change still leaves a healthy endpoint.
		before := r.snapshot()
		if err := r.SetEndpoints([]string{u(i), u(i + 1)}); err != nil {
			t.Fatal(err)
		}
		for _, e := range before {
			if !containsEndpoint(r.snapshot(), e) {
				removed = append(removed, e)
			}
		}
		eventually(t, "the new endpoint healthy", func() bool {
			return gauge(t, r.cfg.Registry, "servelab_router_healthy_endpoints") == 2
		})
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(removed) != 30 {
		t.Errorf("%d endpoints removed over 30 changes", len(removed))
	}
	for _, e := range removed {
		e.loops.Wait() // returns at once: SetEndpoints waited; hangs the test otherwise
	}
	r.Close()
	if err := r.SetEndpoints([]string{u(0)}); err == nil {
		t.Error("SetEndpoints after Close succeeded")
	}
}

// TestSetEndpointsBadURL: a bad URL is refused, naming it, and the set is unchanged.
func TestSetEndpointsBadURL(t *testing.T) {
	a := newStub(t, "a")
	close(a.release)
	r, _, _, _ := newDynamicRouter(t, "round-robin")
	if err := r.SetEndpoints([]string{a.URL}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"localhost:8000", "http://", "ftp://x"} {
		err := r.SetEndpoints([]string{a.URL, bad})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", strings.TrimRight(bad, "/"))) {
			t.Errorf("SetEndpoints(%q) = %v, want an error naming it", bad, err)
		}
		if diff := cmp.Diff([]string{a.URL}, r.Endpoints()); diff != "" {
			t.Errorf("after %q the set changed (-want +got):\n%s", bad, diff)
		}
	}
}

// TestRemovedEndpointLeavesNoSeries: a request picked for an endpoint that is removed
// before the engine answers still completes, and counting it does not bring the removed
// endpoint's servelab_router_decisions_total series back.
func TestRemovedEndpointLeavesNoSeries(t *testing.T) {
	arrived, gate := make(chan struct{}), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1/completions" {
			fmt.Fprint(w, "vllm:num_requests_waiting 0\n") // /metrics; 404 elsewhere is fine
			return
		}
		close(arrived)
		<-gate
		fmt.Fprint(w, `{"from":"slow"}`)
	}))
	defer slow.Close()
	b := newStub(t, "b")
	close(b.release)
	r, url, _, _ := newDynamicRouter(t, "round-robin")
	if err := r.SetEndpoints([]string{slow.URL}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slow healthy", func() bool { return gauge(t, r.cfg.Registry, "servelab_router_healthy_endpoints") == 1 })
	type result struct {
		code int
		body string
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x"}`))
		if err != nil {
			done <- result{body: err.Error()}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(body)}
	}()
	<-arrived
	if err := r.SetEndpoints([]string{b.URL}); err != nil {
		t.Fatal(err)
	}
	close(gate)
	if res := <-done; res.code != http.StatusOK || !strings.Contains(res.body, "slow") {
		t.Fatalf("the request in flight on the removed endpoint: %d %q", res.code, res.body)
	}
	if diff := cmp.Diff([]string{b.URL}, decisionLabels(t, r.cfg.Registry)); diff != "" {
		t.Errorf("servelab_router_decisions_total endpoints (-want +got):\n%s", diff)
	}
}
