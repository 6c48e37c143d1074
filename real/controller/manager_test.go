package controller

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
)

// startManager runs the controller as 'servelab controller' does, until the test ends.
func startManager(t testing.TB, env *k8stest.Env) <-chan error {
	t.Helper()
	mgr, err := NewManager(env.Config, Options{
		Namespace: ns, MetricsBindAddress: "0", HealthProbeBindAddress: "0", SkipNameValidation: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("the manager did not stop within a minute")
		}
	})
	return errc
}

func conditionIs(env *k8stest.Env, name, typ string, want metav1.ConditionStatus, reason string) func() (bool, error) {
	return func() (bool, error) {
		var svc v1alpha1.LLMService
		if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &svc); err != nil {
			return false, err
		}
		c := condition(&svc, typ)
		return c.Status == want && (reason == "" || c.Reason == reason) && c.ObservedGeneration == svc.Generation, nil
	}
}

// testManager: a running controller reconciles a valid service while another waits on a
// missing ConfigMap, picks the second up when the ConfigMap appears (the ConfigMap watch),
// follows spec changes and Deployment status, and never stops.
func testManager(t *testing.T, env *k8stest.Env) {
	ctx := context.Background()
	errc := startManager(t, env)
	const timeout = time.Minute
	create(t, env, newService("waits", func(s *v1alpha1.LLMService) {
		s.Spec.Router.Policy = ""
		s.Spec.Router.EndpointPickerConfigRef = &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "late-config"}, Key: "config.yaml"}
	}))
	create(t, env, newService("good", nil))
	waitFor(t, "good: PolicyApplied", timeout, conditionIs(env, "good", v1alpha1.ConditionPolicyApplied, metav1.ConditionTrue, ReasonApplied))
	waitFor(t, "waits: ConfigMapNotFound", timeout, conditionIs(env, "waits", v1alpha1.ConditionPolicyApplied, metav1.ConditionFalse, ReasonConfigMapNotFound))

	if err := env.Client.Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "late-config", Namespace: ns}, Data: map[string]string{"config.yaml": llmdDefault(3)},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "waits: applied once its ConfigMap exists", timeout, conditionIs(env, "waits", v1alpha1.ConditionPolicyApplied, metav1.ConditionTrue, ReasonApplied))

	svc := getService(t, env, "good")
	two := int32(2)
	svc.Spec.Router.Replicas = &two
	if err := env.Client.Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "good: router scaled to 2", timeout, func() (bool, error) {
		var d appsv1.Deployment
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "good-router"}, &d)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil && *d.Spec.Replicas == 2, err
	})
	// Level-triggered: a hand edit of an owned object is undone.
	d := get(t, env, "good-engine", &appsv1.Deployment{})
	want := d.Spec.Template.Spec.Containers[0].Args
	d.Spec.Template.Spec.Containers[0].Args = append([]string{}, want[:len(want)-1]...)
	if err := env.Client.Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "good-engine's args restored", timeout, func() (bool, error) {
		var d appsv1.Deployment
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "good-engine"}, &d); err != nil {
			return false, err
		}
		return slices.Equal(d.Spec.Template.Spec.Containers[0].Args, want), nil
	})
	setReady(t, env, "good-engine", 2)
	setReady(t, env, "good-router", 2)
	waitFor(t, "good: Ready from the Deployments' status", timeout, conditionIs(env, "good", v1alpha1.ConditionReady, metav1.ConditionTrue, ReasonReady))

	select {
	case err := <-errc:
		t.Fatalf("the manager stopped: %v", errors.Join(err, errors.New("(nil: returned without an error)")))
	default:
	}
}
