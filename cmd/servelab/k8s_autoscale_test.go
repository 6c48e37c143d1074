package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"servelab/api/v1alpha1"
	"servelab/internal/kubebin"
	"servelab/real/cluster"
	"servelab/real/controller"
)

// TestAutoscaleOnLocalCluster runs an LLMService with spec.autoscale on 'servelab cluster
// up': the controller reads the real engine pods' /metrics, and load on the engine makes it
// start a second engine pod; when the load stops it scales back to one.
func TestAutoscaleOnLocalCluster(t *testing.T) {
	binDir := kubebin.ForTest(t, kubebin.Etcd, kubebin.APIServer, kubebin.ControllerManager, kubebin.Scheduler)
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	model := synthTiny(t)
	dir := t.TempDir()
	startLocalCluster(t, dir, binDir)
	c := llmClient(t, cluster.KubeconfigPath(dir))
	ctx := context.Background()

	const name = "elastic"
	// rps per ready engine, decided every 2 s over a 6 s window; the cooldown 6 s.
	spec := "hpa:metric=rps,target=2,min-replicas=1,max-replicas=2,interval=2,window=6,scale-down-window=6"
	svc := &v1alpha1.LLMService{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1alpha1.LLMServiceSpec{
			Model:     v1alpha1.ModelSpec{Name: "tiny", URI: "file://" + model},
			Autoscale: spec,
			WorkloadSpec: v1alpha1.WorkloadSpec{Template: v1alpha1.EngineTemplate{
				Args: []string{"--num-gpu-blocks-override=256"},
			}},
		},
	}
	if err := c.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	readyPods := func() []corev1.Pod {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace("default"), client.MatchingLabels{"servelab.io/llmservice": name, "app.kubernetes.io/component": "engine"}); err != nil {
			t.Fatal(err)
		}
		var out []corev1.Pod
		for _, p := range pods.Items {
			for _, cd := range p.Status.Conditions {
				if cd.Type == corev1.PodReady && cd.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
					out = append(out, p)
				}
			}
		}
		return out
	}
	engineReplicas := func() int32 {
		var d appsv1.Deployment
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: name + "-engine"}, &d); err != nil {
			return -1
		}
		return *d.Spec.Replicas
	}
	waitUntil := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !cond() {
			if time.Now().After(deadline) {
				var got v1alpha1.LLMService
				_ = c.Get(ctx, types.NamespacedName{Namespace: "default", Name: name}, &got)
				t.Fatalf("%s: not within %v (engine replicas %d, status.autoscale %+v, conditions %+v)", what, timeout, engineReplicas(), got.Status.Autoscale, got.Status.Conditions)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t0 := time.Now()
	var first corev1.Pod
	waitUntil("one engine pod ready", 3*time.Minute, func() bool {
		p := readyPods()
		if len(p) == 1 && engineReplicas() == 1 {
			first = p[0]
			return true
		}
		return false
	})
	t.Logf("one engine ready after %.1f s", time.Since(t0).Seconds())

	// About 10 requests a second on the one engine: 5x the target.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent, failed := 0, 0
	url := "http://" + first.Status.PodIP + ":8000/v1/completions"
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
				resp, err := http.Post(url, "application/json", strings.NewReader(`{"model":"tiny","prompt":"hello there","max_tokens":2}`))
				mu.Lock()
				sent++
				if err != nil || resp.StatusCode != http.StatusOK {
					failed++
				}
				mu.Unlock()
				if err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	t1 := time.Now()
	waitUntil("scaled up to 2 engines under load", 2*time.Minute, func() bool { return engineReplicas() == 2 })
	t.Logf("scaled up after %.1f s of load", time.Since(t1).Seconds())
	waitUntil("the second engine pod ready", 3*time.Minute, func() bool { return len(readyPods()) == 2 })
	t.Logf("second engine ready %.1f s after the load began", time.Since(t1).Seconds())
	close(stop)
	wg.Wait()
	mu.Lock()
	if failed > 0 {
		t.Errorf("%d of %d requests to the engine failed", failed, sent)
	}
	mu.Unlock()
	t2 := time.Now()
	// The controller scales the Deployment before it writes status.autoscale: wait for both.
	var got v1alpha1.LLMService
	waitUntil("scaled back to 1 engine, and status.autoscale says so", 2*time.Minute, func() bool {
		if engineReplicas() != 1 || len(readyPods()) != 1 {
			return false
		}
		if err := c.Get(ctx, types.NamespacedName{Namespace: "default", Name: name}, &got); err != nil {
			return false
		}
		a := got.Status.Autoscale
		return a != nil && a.DesiredReplicas == 1
	})
	t.Logf("scaled down %.1f s after the load stopped", time.Since(t2).Seconds())
	if a := got.Status.Autoscale; a == nil || a.DesiredReplicas != 1 || !strings.HasPrefix(a.Metric, "rps=") || a.LastScaleTime == nil {
		t.Errorf("status.autoscale %+v; want 1 replica, an rps metric and a scale time", a)
	}
	var evs eventsv1.EventList
	if err := c.List(ctx, &evs, client.InNamespace("default")); err != nil {
		t.Fatal(err)
	}
	var rescales []string
	for _, e := range evs.Items {
		if e.Reason == controller.EventSuccessfulRescale && e.Regarding.Name == name {
			rescales = append(rescales, e.Note)
		}
	}
	if len(rescales) < 2 || !strings.Contains(fmt.Sprint(rescales), "New size: 2") || !strings.Contains(fmt.Sprint(rescales), "New size: 1") {
		t.Errorf("%s events %q; want a scale to 2 and one back to 1", controller.EventSuccessfulRescale, rescales)
	}
}
