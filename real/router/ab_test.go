package router

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies/route"
	"servelab/serving"
)

// fixedPolicy always picks the candidate at pick (clamped), whatever the load.
type fixedPolicy struct{ pick int }

func (p fixedPolicy) Route(_ *serving.Request, views []serving.InstanceView) int {
	return min(p.pick, len(views)-1)
}

// newABRouter serves an A/B test whose arm a always picks the first endpoint and arm b
// the last, with fraction of the requests in b.
func newABRouter(t *testing.T, fraction float64, urls ...string) (string, *prometheus.Registry, route.Split) {
	t.Helper()
	ab, err := route.NewAB(fixedPolicy{0}, fixedPolicy{1 << 30}, fraction)
	if err != nil {
		t.Fatal(err)
	}
	ab.Split.Seed = 5
	reg := prometheus.NewRegistry()
	r := readyRouter(t, Config{Endpoints: urls, Policy: ab, ScrapeInterval: time.Hour, Registry: reg, Logf: t.Logf})
	return serve(t, r.Handler()), reg, ab.Split
}

func postArm(t *testing.T, url string, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/completions", strings.NewReader(`{"prompt":"hello","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// armCounts reads servelab_router_arm_requests_total as "arm endpoint code" -> count.
func armCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "servelab_router_arm_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			out[l["arm"]+" "+l["endpoint"]+" "+l["code"]] = m.GetCounter().GetValue()
		}
	}
	return out
}

func histCount(t *testing.T, reg *prometheus.Registry, name, arm string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == arm {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// TestABSplitsByRequestID: each request goes to the arm route.Split gives its
// x-request-id (the simulator's assignment), is routed by that arm's policy, says its arm
// in x-servelab-arm, and counts in its arm's metrics.
func TestABSplitsByRequestID(t *testing.T) {
	a, b := newStub(t, "a"), newStub(t, "b")
	close(a.release)
	close(b.release)
	url, reg, split := newABRouter(t, 0.3, a.URL, b.URL)
	hostOf := map[string]string{serving.ArmA: strings.TrimPrefix(a.URL, "http://"), serving.ArmB: strings.TrimPrefix(b.URL, "http://")}
	want := map[string]float64{}
	const n = 60
	for id := range uint64(n) {
		resp, body := postArm(t, url, map[string]string{"x-request-id": strconv.FormatUint(id, 10)})
		arm := split.Arm(id)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %s %s", id, resp.Status, body)
		}
		if got := resp.Header.Get(serving.ArmHeader); got != arm {
			t.Errorf("request %d: %s %q, want %q", id, serving.ArmHeader, got, arm)
		}
		if got := resp.Header.Get(serving.ServedEndpointHeader); got != hostOf[arm] {
			t.Errorf("request %d in arm %s: served by %s, want %s (that arm's policy's pick)", id, arm, got, hostOf[arm])
		}
		want[arm+" "+hostOf[arm]+" 200"]++
	}
	if len(want) != 2 {
		t.Fatalf("%d requests all in one arm: %v", n, want)
	}
	if diff := cmp.Diff(want, armCounts(t, reg)); diff != "" {
		t.Errorf("servelab_router_arm_requests_total (-want +got):\n%s", diff)
	}
	for _, arm := range []string{serving.ArmA, serving.ArmB} {
		k := want[arm+" "+hostOf[arm]+" 200"]
		for _, name := range []string{"servelab_router_arm_request_duration_seconds", "servelab_router_arm_time_to_first_byte_seconds", "servelab_router_arm_scoring_seconds"} {
			if got := histCount(t, reg, name, arm); float64(got) != k {
				t.Errorf("%s{arm=%q}: %d observations, want %v", name, arm, got, k)
			}
		}
	}
}

// TestABHeaderChoosesArm: x-servelab-arm overrides the split; a request without an
// x-request-id still gets an arm; an arm that does not exist is a 400 naming the header.
func TestABHeaderChoosesArm(t *testing.T) {
	a, b := newStub(t, "a"), newStub(t, "b")
	close(a.release)
	close(b.release)
	url, reg, split := newABRouter(t, 0.5, a.URL, b.URL)
	// Ids the split puts in the other arm than the header asks for.
	var inA, inB string
	for id := uint64(0); inA == "" || inB == ""; id++ {
		if split.Arm(id) == serving.ArmA {
			inA = strconv.FormatUint(id, 10)
		} else {
			inB = strconv.FormatUint(id, 10)
		}
	}
	for _, tc := range []struct{ header, id, want, from string }{
		{"b", inA, serving.ArmB, `"from":"b"`},
		{"B", inA, serving.ArmB, `"from":"b"`},
		{"a", inB, serving.ArmA, `"from":"a"`},
	} {
		resp, body := postArm(t, url, map[string]string{serving.ArmHeader: tc.header, "x-request-id": tc.id})
		if resp.StatusCode != 200 || resp.Header.Get(serving.ArmHeader) != tc.want || !strings.Contains(body, tc.from) {
			t.Errorf("%s: %s, request %s: %s, arm %q, body %q; want arm %s served %s", serving.ArmHeader, tc.header, tc.id, resp.Status, resp.Header.Get(serving.ArmHeader), body, tc.want, tc.from)
		}
	}
	resp, _ := postArm(t, url, nil)
	if arm := resp.Header.Get(serving.ArmHeader); arm != serving.ArmA && arm != serving.ArmB {
		t.Errorf("a request without x-request-id: arm %q", arm)
	}
	resp, body := postArm(t, url, map[string]string{serving.ArmHeader: "c"})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, serving.ArmHeader) || !strings.Contains(body, `"param":"x-servelab-arm"`) {
		t.Errorf("arm c: %s %s, want 400 naming %s", resp.Status, body, serving.ArmHeader)
	}
	total := 0.0
	for _, v := range armCounts(t, reg) {
		total += v
	}
	if total != 4 {
		t.Errorf("%v requests counted in arms, want 4 (the refused one in none)", total)
	}
}

// A router without an A/B test exports no arm metrics and tags no arm.
func TestNoABNoArm(t *testing.T) {
	a := newStub(t, "a")
	close(a.release)
	_, url, reg := newRouter(t, "round-robin", time.Hour, a.URL)
	resp, _ := postArm(t, url, map[string]string{serving.ArmHeader: "b"})
	if resp.StatusCode != 200 || resp.Header.Get(serving.ArmHeader) != "" {
		t.Errorf("%s, arm %q; want 200 and no arm", resp.Status, resp.Header.Get(serving.ArmHeader))
	}
	if got := armCounts(t, reg); len(got) != 0 {
		t.Errorf("arm metrics without an A/B test: %v", got)
	}
}

// forgetful is a fixed policy that records the instances it was told to forget.
type forgetful struct {
	fixedPolicy
	removed []int
}

func (p *forgetful) RemoveInstance(i int) { p.removed = append(p.removed, i) }

// An endpoint leaving (Kubernetes discovery) is forgotten by both arms' state.
func TestABRemovedEndpointReachesBothArms(t *testing.T) {
	e0, e1 := newStub(t, "0"), newStub(t, "1")
	a, b := &forgetful{}, &forgetful{}
	ab, err := route.NewAB(a, b, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Endpoints: []string{e0.URL, e1.URL}, Policy: ab, ScrapeInterval: time.Hour, Registry: prometheus.NewRegistry(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	if err := r.SetEndpoints([]string{e1.URL}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]int{{0}, {0}}, [][]int{a.removed, b.removed}); diff != "" {
		t.Errorf("RemoveInstance calls of arms a and b (-want +got):\n%s", diff)
	}
}
