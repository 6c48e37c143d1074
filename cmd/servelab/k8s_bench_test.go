package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"servelab/api/v1alpha1"
	"servelab/internal/kubebin"
	"servelab/real/cluster"
)

// BenchmarkReconcile50OnLocalCluster creates 50 LLMServices (one tiny-model engine and one
// router each) at once on 'servelab cluster up' and reports how long the controller takes
// to settle them (every one's status at its generation with PolicyApplied True: all owned
// objects applied) and how long until all are Ready (100 engine and router processes
// started and passing their probes on this machine's cores). Run it with -benchtime 1x:
// each iteration is a fresh cluster.
func BenchmarkReconcile50OnLocalCluster(b *testing.B) {
	binDir := kubebin.ForTest(b, kubebin.Etcd, kubebin.APIServer, kubebin.ControllerManager, kubebin.Scheduler)
	b.Setenv("SERVELAB_RUN_MAIN", "1")
	model := synthTiny(b)
	const n = 50
	var settled, ready time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		if out, err := run(b, "cluster", "up", "--dir", dir, "--bin-dir", binDir); err != nil {
			b.Fatalf("cluster up: %v\n%s", err, out)
		}
		c := llmClient(b, cluster.KubeconfigPath(dir))
		ctx := context.Background()
		b.StartTimer()
		start := time.Now()
		for j := range n {
			one, replicas := int32(1), int32(1)
			svc := &v1alpha1.LLMService{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc%02d", j), Namespace: "default"},
				Spec: v1alpha1.LLMServiceSpec{
					Model: v1alpha1.ModelSpec{Name: "tiny", URI: "file://" + model},
					WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: &replicas, Template: v1alpha1.EngineTemplate{
						Args: []string{"--num-gpu-blocks-override=64", "--threads=1"}}},
					Router: v1alpha1.RouterSpec{Replicas: &one, Policy: "least-request"},
				},
			}
			if err := c.Create(ctx, svc); err != nil {
				b.Fatal(err)
			}
		}
		settled, ready = 0, 0
		for deadline := start.Add(10 * time.Minute); ready == 0; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("50 LLMServices not Ready within 10 minutes")
			}
			var list v1alpha1.LLMServiceList
			if err := c.List(ctx, &list); err != nil {
				continue
			}
			nSettled, nReady := 0, 0
			for _, s := range list.Items {
				if s.Status.ObservedGeneration == s.Generation && meta.IsStatusConditionTrue(s.Status.Conditions, v1alpha1.ConditionPolicyApplied) {
					nSettled++
				}
				if meta.IsStatusConditionTrue(s.Status.Conditions, v1alpha1.ConditionReady) {
					nReady++
				}
			}
			if settled == 0 && nSettled == n {
				settled = time.Since(start)
			}
			if nReady == n {
				ready = time.Since(start)
			}
		}
		b.StopTimer()
		if out, err := run(b, "cluster", "down", "--dir", dir); err != nil {
			b.Fatalf("cluster down: %v\n%s", err, out)
		}
	}
	b.ReportMetric(settled.Seconds(), "s-settled")
	b.ReportMetric(ready.Seconds(), "s-ready")
}
