package controller

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
	"servelab/policies"
	"servelab/policies/scale"
)

// fakeMetrics hands out a fixed sequence of observations, one per call.
type fakeMetrics struct {
	mu    sync.Mutex
	obs   []scale.Observation
	calls int
}

func (f *fakeMetrics) Observe(context.Context, *v1alpha1.LLMService) (scale.Observation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls >= len(f.obs) {
		return scale.Observation{}, fmt.Errorf("observation %d asked for; the test has %d", f.calls+1, len(f.obs))
	}
	o := f.obs[f.calls]
	f.calls++
	return o, nil
}

// step is one decision as the test records it: the replicas and the policy's reason.
type step struct {
	Replicas int32
	Reason   string
}

// TestAutoscaleFollowsTheScalersDecisions drives the controller through a burst of load
// (observations from a fake metrics source, a fake clock one interval per step, engine
// pods that become ready two intervals after they are asked for) and checks that the
// engine Deployment's replicas after every step are exactly what scale.Scaler, the code the
// simulator and 'servelab up --autoscale' run, decides for the same sequence.
func TestAutoscaleFollowsTheScalersDecisions(t *testing.T) {
	env := k8stest.Start(t)
	ctx := context.Background()
	// Waiting, running and arrived per interval: quiet, a burst, quiet again.
	load := [][3]int{{0, 1, 3}, {6, 4, 30}, {30, 8, 90}, {40, 16, 120}, {24, 16, 100}, {6, 12, 60}, {0, 4, 20}, {0, 2, 10}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}}
	for i, tc := range []struct{ name, spec string }{
		{"hpa queue", "hpa:metric=queue,target=4,min-replicas=1,max-replicas=6,scale-down-window=45,interval=15"},
		{"hpa rps", "hpa:metric=rps,target=1,min-replicas=2,max-replicas=5,scale-down-window=30,window=30,interval=10"},
		{"kpa concurrency", "kpa:metric=concurrency,target=6,target-utilization-percentage=100,min-scale=1,max-scale=6,window=8,interval=2"},
		{"hpa slo", "hpa:metric=slo,target=0.9,min-replicas=1,max-replicas=6,scale-down-window=30,window=30,interval=10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("scaled-%d", i)
			var obs []scale.Observation
			for _, l := range load {
				// As many finish as arrive; those that waited missed their SLO.
				obs = append(obs, scale.Observation{Waiting: l[0], Running: l[1], Arrived: l[2], KVUsage: 0.1, Finished: l[2], MetSLO: max(0, l[2]-l[0])})
			}
			fake := &fakeMetrics{obs: obs}
			t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
			now := t0
			r, rec := newReconciler(env)
			r.Metrics, r.Clock = fake, func() time.Time { return now }
			create(t, env, newService(name, func(s *v1alpha1.LLMService) { s.Spec.Autoscale = tc.spec }))

			pol, err := scale.Parse(tc.spec, policies.Env{})
			if err != nil {
				t.Fatal(err)
			}
			lo, hi := pol.Bounds()
			ref := scale.NewScaler(pol, hi, 0)
			every := time.Duration(pol.Interval() * float64(time.Second))

			reconcileAt := func() reconcile.Result {
				t.Helper()
				res, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}})
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			engineReplicas := func() int32 {
				return *get(t, env, engineName(name), &appsv1.Deployment{}).Spec.Replicas
			}
			if res := reconcileAt(); res.RequeueAfter != every {
				t.Fatalf("first reconcile: requeue after %v, want the policy's interval %v", res.RequeueAfter, every)
			}
			if got := engineReplicas(); got != int32(lo) {
				t.Fatalf("the pool starts at %d replicas, want the policy's minimum %d (spec.replicas is 2 and ignored)", got, lo)
			}
			// A reconcile between decisions (a Deployment's status changed) decides nothing.
			now = t0.Add(every / 2)
			if res := reconcileAt(); res.RequeueAfter != every-every/2 {
				t.Fatalf("mid-interval reconcile: requeue after %v, want %v", res.RequeueAfter, every-every/2)
			}
			if fake.calls != 0 {
				t.Fatalf("mid-interval reconcile read the metrics")
			}

			var want, got []step
			asked := []int32{int32(lo), int32(lo)} // replicas two decisions back: those are ready
			for k := 1; k <= len(obs); k++ {
				cur := engineReplicas()
				ready := min(asked[len(asked)-2], cur)
				setReady(t, env, engineName(name), ready)
				now = t0.Add(time.Duration(k) * every)
				reconcileAt()
				svc := getService(t, env, name)
				got = append(got, step{engineReplicas(), svc.Status.Autoscale.Reason})

				// The reference: the same scaler code fed the same observation.
				tk := float64(k) * pol.Interval()
				for ref.Count(scale.Ready) < int(ready) && ref.Count(scale.Starting) > 0 {
					oldest := -1
					for i, rp := range ref.Replicas() {
						if rp.State == scale.Starting && (oldest < 0 || rp.Since < ref.Replicas()[oldest].Since) {
							oldest = i
						}
					}
					ref.MarkReady(oldest, tk)
				}
				o := obs[k-1]
				o.Time = tk
				_, d, a := ref.Observe(o)
				for _, i := range a.Drain {
					ref.Stopped(i, tk)
				}
				want = append(want, step{int32(ref.Count(scale.Ready) + ref.Count(scale.Starting)), d.Reason})
				asked = append(asked, got[len(got)-1].Replicas)

				if c := condition(svc, v1alpha1.ConditionScalingActive); c.Status != metav1.ConditionTrue || c.Reason != ReasonValidMetricFound {
					t.Errorf("step %d: ScalingActive %s/%s %q", k, c.Status, c.Reason, c.Message)
				}
				if svc.Status.Replicas != got[len(got)-1].Replicas {
					t.Errorf("step %d: status.replicas %d, Deployment %d", k, svc.Status.Replicas, got[len(got)-1].Replicas)
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("the Deployment's replicas and reasons differ from scale.Scaler's decisions (-scaler +controller):\n%s", diff)
			}
			ups, downs := 0, 0
			prev := int32(lo)
			for _, s := range got {
				switch {
				case s.Replicas > prev:
					ups++
				case s.Replicas < prev:
					downs++
				}
				prev = s.Replicas
			}
			t.Logf("replicas: %v", got)
			if ups == 0 || downs == 0 {
				t.Errorf("the sequence scaled up %d and down %d times; the test wants both: %+v", ups, downs, got)
			}
			var rescales int
			for _, e := range drain(rec) {
				if strings.Contains(e, EventSuccessfulRescale) {
					rescales++
				}
			}
			if rescales != ups+downs {
				t.Errorf("%d %s events for %d replica changes", rescales, EventSuccessfulRescale, ups+downs)
			}

			// Without spec.autoscale the pool is spec.replicas again.
			svc := getService(t, env, name)
			svc.Spec.Autoscale = ""
			if err := env.Client.Update(ctx, svc); err != nil {
				t.Fatal(err)
			}
			if res := reconcileAt(); res.RequeueAfter != 0 {
				t.Errorf("not autoscaled: requeue after %v", res.RequeueAfter)
			}
			svc = getService(t, env, name)
			if got := engineReplicas(); got != 2 || svc.Status.Autoscale != nil || condition(svc, v1alpha1.ConditionScalingActive).Status != "absent" {
				t.Errorf("spec.autoscale removed: %d replicas (want spec.replicas 2), status.autoscale %+v, ScalingActive %+v", got, svc.Status.Autoscale, condition(svc, v1alpha1.ConditionScalingActive))
			}
		})
	}
}

// TestAutoscaleRefusesBadSpecs: a spec.autoscale that does not build, or that the
// controller cannot run, leaves what runs untouched and names the field.
func TestAutoscaleRefusesBadSpecs(t *testing.T) {
	env := k8stest.Start(t)
	for i, tc := range []struct{ spec, want string }{
		{"hpa:target=-1", "target"},
		{"hpa:min-replicas=4,max-replicas=2", "max-replicas"},
		{"kpa:metric=queue", "metric"},
		{"hpa:speed=3", "speed"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			name := fmt.Sprintf("badscale-%d", i)
			r, rec := newReconciler(env)
			r.Metrics = &fakeMetrics{}
			create(t, env, newService(name, func(s *v1alpha1.LLMService) { s.Spec.Autoscale = tc.spec }))
			reconcileOnce(t, r, name)
			c := condition(getService(t, env, name), v1alpha1.ConditionPolicyApplied)
			if c.Status != metav1.ConditionFalse || c.Reason != ReasonInvalidPolicy || !strings.Contains(c.Message, "spec.autoscale") || !strings.Contains(c.Message, tc.want) {
				t.Errorf("PolicyApplied %s/%s %q; want False/%s naming spec.autoscale and %q", c.Status, c.Reason, c.Message, ReasonInvalidPolicy, tc.want)
			}
			if ev := drain(rec); len(ev) != 1 || !strings.Contains(ev[0], "spec.autoscale") {
				t.Errorf("events %q; want one warning naming spec.autoscale", ev)
			}
			if o := owned(t, env, name); len(o) != 0 {
				t.Errorf("deployed %v for an invalid spec", keys(o))
			}
		})
	}
}

// TestPodMetricsScrapesTheReadyEngines reads the engine pods' /metrics as vLLM writes them:
// sums over the ready pods, skips unready ones, and counts arrivals from finished requests
// and the change in waiting+running.
func TestPodMetricsScrapesTheReadyEngines(t *testing.T) {
	env := k8stest.Start(t)
	ctx := context.Background()
	var mu sync.Mutex
	// Per pod: waiting, running, kv, finished.
	vals := map[string][4]float64{"a": {3, 2, 0.5, 10}, "b": {1, 4, 0.25, 5}, "c": {100, 100, 1, 100}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		v, ok := vals[strings.TrimPrefix(req.URL.Path, "/")]
		mu.Unlock()
		if !ok {
			http.NotFound(w, req)
			return
		}
		fmt.Fprintf(w, "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"tiny\"} %g\n", v[0])
		fmt.Fprintf(w, "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=\"tiny\"} %g\n", v[1])
		fmt.Fprintf(w, "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"tiny\"} %g\n", v[2])
		fmt.Fprintf(w, "# TYPE vllm:request_success_total counter\nvllm:request_success_total{finished_reason=\"stop\",model_name=\"tiny\"} %g\nvllm:request_success_total{finished_reason=\"length\",model_name=\"tiny\"} 0\n", v[3])
	}))
	defer srv.Close()
	svc := newService("scraped", nil)
	svc.UID = "u1"
	for _, p := range []struct {
		name  string
		ready bool
	}{{"a", true}, {"b", true}, {"c", false}} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "scraped-engine-" + p.name, Namespace: ns, Labels: selectorLabels("scraped", ComponentEngine), Annotations: map[string]string{"key": p.name}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "engine", Image: "servelab"}}},
		}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		st := corev1.ConditionFalse
		if p.ready {
			st = corev1.ConditionTrue
		}
		pod.Status = corev1.PodStatus{PodIP: "10.0.0.1", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}}
		if err := env.Client.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	m := &PodMetrics{Client: env.Client, URL: func(p *corev1.Pod) string { return srv.URL + "/" + p.Annotations["key"] }}
	got, err := m.Observe(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	// First scrape: everything the pods ever had arrived (10+5 finished, 5+5 in flight).
	if diff := cmp.Diff(scale.Observation{Waiting: 4, Running: 6, KVUsage: 0.375, Arrived: 25}, got); diff != "" {
		t.Errorf("first scrape (-want +got):\n%s", diff)
	}
	mu.Lock()
	vals["a"] = [4]float64{0, 1, 0.1, 16} // 6 finished, in flight 5 -> 1: 2 arrived
	vals["b"] = [4]float64{2, 4, 0.3, 8}  // 3 finished, in flight 5 -> 6: 4 arrived
	mu.Unlock()
	if got, err = m.Observe(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(scale.Observation{Waiting: 2, Running: 5, KVUsage: 0.2, Arrived: 6}, got, cmpApprox); diff != "" {
		t.Errorf("second scrape (-want +got):\n%s", diff)
	}
	mu.Lock()
	delete(vals, "a")
	mu.Unlock()
	if _, err := m.Observe(ctx, svc); err == nil || !strings.Contains(err.Error(), "scraped-engine-a") {
		t.Errorf("a pod without the metrics: err %v, want one naming the pod", err)
	}
}

var cmpApprox = cmp.Comparer(func(x, y float64) bool { return x-y < 1e-9 && y-x < 1e-9 })
