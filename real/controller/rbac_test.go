package controller

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
)

const roleFile = "config/rbac/role.yaml"

// TestGeneratedRBACIsCurrent regenerates the controller's ClusterRole from its
// +kubebuilder:rbac markers with the pinned controller-gen and fails when the committed
// config/rbac/role.yaml differs: run 'make generate' after changing the markers.
func TestGeneratedRBACIsCurrent(t *testing.T) {
	k8stest.CheckGenerated(t, []string{"rbac:roleName=servelab-controller", "paths=./real/controller/..."},
		map[string]string{roleFile: "role.yaml"})
}

// testRBACSuffices runs the controller as a user holding only the generated ClusterRole
// (impersonated) and checks it deploys everything, the router's Role (which Kubernetes lets
// it grant only when it holds those permissions) and the InferencePool included, writes
// status and records events.
func testRBACSuffices(t *testing.T, env *k8stest.Env) {
	ctx := context.Background()
	data, err := os.ReadFile(filepath.Join(k8stest.RepoRoot(t), roleFile))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(data, &role); err != nil {
		t.Fatal(err)
	}
	const user = "system:serviceaccount:servelab-system:servelab-controller"
	if err := env.Client.Create(ctx, &role); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "servelab-controller"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: user}},
	}); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	startManager(t, &k8stest.Env{Config: cfg, Client: env.Client, Scheme: env.Scheme})

	if err := env.Client.Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "rbac-config", Namespace: ns}, Data: map[string]string{"config.yaml": llmdDefault(3)},
	}); err != nil {
		t.Fatal(err)
	}
	create(t, env, newService("rbac", func(s *v1alpha1.LLMService) {
		s.Spec.Router.Policy = ""
		s.Spec.Router.EndpointPickerConfigRef = &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "rbac-config"}, Key: "config.yaml"}
	}))
	waitFor(t, "rbac: PolicyApplied", time.Minute, conditionIs(env, "rbac", v1alpha1.ConditionPolicyApplied, metav1.ConditionTrue, ReasonApplied))
	want := []string{"ConfigMap/rbac-epp", "Deployment/rbac-engine", "Deployment/rbac-router", "Role/rbac-router", "RoleBinding/rbac-router",
		"Service/rbac-engine", "Service/rbac-router", "ServiceAccount/rbac-router"}
	if diff := cmp.Diff(want, keys(owned(t, env, "rbac"))); diff != "" {
		t.Errorf("owned objects (-want +got):\n%s", diff)
	}
	pool := &unstructured.Unstructured{}
	pool.SetGroupVersionKind(InferencePoolGVK)
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rbac"}, pool); err != nil {
		t.Errorf("InferencePool: %v", err)
	}
	waitFor(t, "a Deployed event on rbac", time.Minute, func() (bool, error) {
		var list eventsv1.EventList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, err
		}
		for _, e := range list.Items {
			if e.Regarding.Name == "rbac" && e.Reason == EventDeployed && e.ReportingController == FieldManager {
				return true, nil
			}
		}
		return false, nil
	})
}
