package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
)

// BenchmarkReconcile50 times a running controller settling 50 new LLMServices on a real
// kube-apiserver: from the first create until every one has its eight objects applied and
// its status written for its generation (PolicyApplied True). envtest runs no
// kube-controller-manager, so no pod starts and Ready stays False; this is the
// controller's own work. One op is 50 services, in a namespace of their own.
//
//	go test -run '^$' -bench Reconcile50 -benchtime 3x ./real/controller/
func BenchmarkReconcile50(b *testing.B) {
	const n = 50
	env := k8stest.Start(b)
	mgr, err := NewManager(env.Config, Options{MetricsBindAddress: "0", HealthProbeBindAddress: "0", SkipNameValidation: true})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			b.Error(err)
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		nsName := fmt.Sprintf("bench-%d", i)
		if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName}}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for j := 0; j < n; j++ {
			svc := newService(fmt.Sprintf("svc-%d", j), nil)
			svc.Namespace = nsName
			if err := env.Client.Create(ctx, svc); err != nil {
				b.Fatal(err)
			}
		}
		waitFor(b, "50 LLMServices settled", 5*time.Minute, func() (bool, error) {
			var list v1alpha1.LLMServiceList
			if err := env.Client.List(ctx, &list, client.InNamespace(nsName)); err != nil {
				return false, err
			}
			for _, s := range list.Items {
				c := apimeta.FindStatusCondition(s.Status.Conditions, v1alpha1.ConditionPolicyApplied)
				if s.Status.ObservedGeneration != s.Generation || c == nil || c.Status != metav1.ConditionTrue || s.Status.Engines == "" {
					return false, nil
				}
			}
			if len(list.Items) != n {
				return false, nil
			}
			var deps appsv1.DeploymentList
			if err := env.Client.List(ctx, &deps, client.InNamespace(nsName)); err != nil {
				return false, err
			}
			return len(deps.Items) == 2*n, nil
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N*n), "ms/service")
}
