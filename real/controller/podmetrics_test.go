package controller

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"servelab/api/v1alpha1"
)

// routerPod is one router pod at one scrape: its UID, whether it is ready, and its
// servelab_router_slo_requests_total by outcome (serves false: no such series).
type routerPod struct {
	uid         types.UID
	ready       bool
	met, missed float64
	noSeries    bool
	// huge pads the page past maxMetricsPage.
	huge bool
}

// TestPodMetricsSLOFromRouters: with metric=slo, Finished and MetSLO are the growth of the
// ready router pods' met and missed counters since the previous scrape, summed per pod UID
// (a pod seen first counts all it has, a counter that went down counts its current value);
// no ready router is an error naming it, and other metrics never read the routers.
func TestPodMetricsSLOFromRouters(t *testing.T) {
	const slo = "hpa:metric=slo,target=0.9"
	type want struct {
		Finished, MetSLO int
		err              string
	}
	for _, tc := range []struct {
		name  string
		spec  string
		steps []map[string]routerPod // per scrape, by pod name
		want  []want
	}{
		{
			name: "growth since the previous scrape; first sight counts all",
			spec: slo,
			steps: []map[string]routerPod{
				{"r1": {uid: "u1", ready: true, met: 10, missed: 2}},
				{"r1": {uid: "u1", ready: true, met: 15, missed: 3}},
				{"r1": {uid: "u1", ready: true, met: 15, missed: 3}},
			},
			want: []want{{Finished: 12, MetSLO: 10}, {Finished: 6, MetSLO: 5}, {}},
		},
		{
			name: "summed over the ready routers; an unready one is skipped",
			spec: slo,
			steps: []map[string]routerPod{
				{"r1": {uid: "u1", ready: true, met: 4, missed: 1}, "r2": {uid: "u2", ready: true, met: 3}, "r3": {uid: "u3", met: 100, missed: 100}},
				{"r1": {uid: "u1", ready: true, met: 6, missed: 2}, "r2": {uid: "u2", ready: true, met: 3, missed: 4}, "r3": {uid: "u3", met: 200, missed: 200}},
			},
			want: []want{{Finished: 8, MetSLO: 7}, {Finished: 7, MetSLO: 2}},
		},
		{
			name: "a restarted container (same UID, counters went down) counts its current value",
			spec: slo,
			steps: []map[string]routerPod{
				{"r1": {uid: "u1", ready: true, met: 10, missed: 2}},
				{"r1": {uid: "u1", ready: true, met: 3, missed: 1}},
				{"r1": {uid: "u1", ready: true, met: 5, missed: 1}},
			},
			want: []want{{Finished: 12, MetSLO: 10}, {Finished: 4, MetSLO: 3}, {Finished: 2, MetSLO: 2}},
		},
		{
			name: "a replaced pod (new UID) counts all it has",
			spec: slo,
			steps: []map[string]routerPod{
				{"r1": {uid: "u1", ready: true, met: 10, missed: 2}},
				{"r2": {uid: "u2", ready: true, met: 4, missed: 1}},
			},
			want: []want{{Finished: 12, MetSLO: 10}, {Finished: 5, MetSLO: 4}},
		},
		{
			name: "no ready router fails, naming the router",
			spec: slo,
			steps: []map[string]routerPod{
				{"r1": {uid: "u1", met: 10, missed: 2}},
				{},
			},
			want: []want{{err: "no ready router pod (slosvc-router)"}, {err: "no ready router pod (slosvc-router)"}},
		},
		{
			name:  "a router without the series fails, naming the pod",
			spec:  slo,
			steps: []map[string]routerPod{{"r1": {uid: "u1", ready: true, noSeries: true}}},
			want:  []want{{err: "router pod slosvc-router-r1"}},
		},
		{
			name:  "a page past maxMetricsPage fails, naming the pod, and is not held",
			spec:  slo,
			steps: []map[string]routerPod{{"r1": {uid: "u1", ready: true, met: 1, huge: true}}},
			want:  []want{{err: "router pod slosvc-router-r1"}},
		},
		{
			name: "other metrics never read the routers",
			spec: "hpa:metric=queue,target=4",
			steps: []map[string]routerPod{
				{"r1": {uid: "u1", ready: true, met: 10, missed: 2}},
				{},
			},
			want: []want{{}, {}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var cur map[string]routerPod
			scraped := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				scraped++
				p, ok := cur[strings.TrimPrefix(req.URL.Path, "/")]
				if !ok {
					http.NotFound(w, req)
					return
				}
				fmt.Fprintf(w, "# TYPE servelab_router_decisions_total counter\nservelab_router_decisions_total{endpoint=\"e0\"} 7\n")
				if p.huge {
					line := "# " + strings.Repeat("x", 1<<10) + "\n"
					for range maxMetricsPage/len(line) + 1 {
						io.WriteString(w, line)
					}
				}
				if !p.noSeries {
					fmt.Fprintf(w, "# TYPE servelab_router_slo_requests_total counter\nservelab_router_slo_requests_total{outcome=\"met\"} %g\nservelab_router_slo_requests_total{outcome=\"missed\"} %g\n", p.met, p.missed)
				}
			}))
			defer srv.Close()
			s := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(s); err != nil {
				t.Fatal(err)
			}
			svc := newService("slosvc", func(s *v1alpha1.LLMService) { s.Spec.Autoscale = tc.spec })
			m := &PodMetrics{URL: func(p *corev1.Pod) string { return srv.URL + "/" + p.Annotations["key"] }}
			for i, step := range tc.steps {
				b := fake.NewClientBuilder().WithScheme(s)
				for name, p := range step {
					st := corev1.ConditionFalse
					if p.ready {
						st = corev1.ConditionTrue
					}
					b = b.WithObjects(&corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Name: "slosvc-router-" + name, Namespace: ns, UID: p.uid, Labels: selectorLabels("slosvc", ComponentRouter), Annotations: map[string]string{"key": name}},
						Status:     corev1.PodStatus{PodIP: "10.0.0.1", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}},
					})
				}
				m.Client = b.Build()
				mu.Lock()
				cur = step
				mu.Unlock()
				o, err := m.Observe(context.Background(), svc)
				var got want
				if err != nil {
					got.err = err.Error()
				}
				got.Finished, got.MetSLO = o.Finished, o.MetSLO
				w := tc.want[i]
				if w.err != "" {
					if !strings.Contains(got.err, w.err) {
						t.Errorf("scrape %d: err %q, want one containing %q", i+1, got.err, w.err)
					}
					continue
				}
				if diff := cmp.Diff(w, got, cmp.AllowUnexported(want{})); diff != "" {
					t.Errorf("scrape %d (-want +got):\n%s", i+1, diff)
				}
			}
			if tc.spec != slo && scraped != 0 {
				t.Errorf("metric %s scraped the routers %d times; want none", tc.spec, scraped)
			}
		})
	}
}
