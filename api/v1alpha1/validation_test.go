package v1alpha1_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/json"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
)

// TestAPIServerAppliesTheSchema creates LLMServices on a real kube-apiserver: a minimal one
// gets the CRD's defaults, and bad ones are refused by the schema or its CEL rules with a
// message naming the field.
func TestAPIServerAppliesTheSchema(t *testing.T) {
	env := k8stest.Start(t)
	ctx := context.Background()

	minimal := map[string]any{"model": map[string]any{"name": "tiny", "uri": "file:///models/tiny"}}
	if err := create(t, env, "minimal", minimal); err != nil {
		t.Fatalf("a minimal LLMService was refused: %v", err)
	}
	var got v1alpha1.LLMService
	if err := env.Client.Get(ctx, keyOf("minimal"), &got); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	want := v1alpha1.LLMServiceSpec{
		Model:        v1alpha1.ModelSpec{Name: "tiny", URI: "file:///models/tiny"},
		WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: &one, Template: v1alpha1.EngineTemplate{Image: "servelab:latest"}},
		Router:       v1alpha1.RouterSpec{Replicas: &one, ScrapeInterval: &metav1.Duration{Duration: 50e6}},
		Batch:        "vllm",
		Evict:        "lru",
	}
	if diff := cmp.Diff(want, got.Spec); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name  string
		spec  map[string]any
		field string // a part of the API server's message
	}{
		{"missing model", map[string]any{"replicas": 1}, "spec.model"},
		{"model without uri", map[string]any{"model": map[string]any{"name": "m"}}, "spec.model.uri"},
		{"model uri without a scheme", map[string]any{"model": map[string]any{"name": "m", "uri": "/models/m"}}, "spec.model.uri"},
		{"negative replicas", with(minimal, "replicas", -1), "spec.replicas"},
		{"negative router replicas", with(minimal, "router", map[string]any{"replicas": -2}), "spec.router.replicas"},
		{"unknown router name", with(minimal, "router", map[string]any{"policy": "fastest"}), "spec.router.policy"},
		{"unknown batch policy", with(minimal, "batch", "fcfs"), "spec.batch"},
		{"unknown evict policy", with(minimal, "evict", "random"), "spec.evict"},
		{"unknown scaling policy", with(minimal, "autoscale", "keda:metric=queue"), "spec.autoscale"},
		{"two routing policies", with(minimal, "router", map[string]any{"policy": "least-request", "endpointPickerConfig": "kind: EndpointPickerConfig"}), "at most one of policy"},
		{"args set the model", with(minimal, "template", map[string]any{"args": []any{"--max-num-seqs=8", "--model=/elsewhere"}}), "args may not set --model"},
		{"prefill args set the port", with(minimal, "prefill", map[string]any{"template": map[string]any{"args": []any{"--port", "9"}}}), "args may not set"},
		{"prefill args set the role", with(minimal, "prefill", map[string]any{"template": map[string]any{"args": []any{"--role=decode"}}}), "or --role"},
		{"bad scrape interval", with(minimal, "router", map[string]any{"scrapeInterval": "often"}), "spec.router.scrapeInterval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := create(t, env, "bad", tc.spec)
			if err == nil {
				t.Fatalf("accepted; want a refusal naming %q", tc.field)
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("refused with %v; want an Invalid error naming %q", err, tc.field)
			}
		})
	}
}

// TestAPIServerRefusesNamesTheControllerCannotUse: the controller names a Service
// NAME-router, and a Service's name is a DNS label (a letter first, at most 63 characters).
func TestAPIServerRefusesNamesTheControllerCannotUse(t *testing.T) {
	env := k8stest.Start(t)
	minimal := map[string]any{"model": map[string]any{"name": "tiny", "uri": "file:///models/tiny"}}
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{strings.Repeat("a", 56), true},
		{strings.Repeat("a", 57), false},
		{"9lives", false},
		{"a.b", false},
		{"tiny-2", true},
	} {
		err := create(t, env, tc.name, minimal)
		switch {
		case tc.ok && err != nil:
			t.Errorf("name %q refused: %v", tc.name, err)
		case !tc.ok && (err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "metadata.name must be a DNS label")):
			t.Errorf("name %q: got %v, want an Invalid error explaining the name", tc.name, err)
		}
	}
}

func keyOf(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: "default", Name: name}
}

// create posts an LLMService with the given spec as unstructured JSON, so that the API
// server, not Go's types, sees what a client typed.
func create(t *testing.T, env *k8stest.Env, name string, spec map[string]any) error {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       "LLMService",
		"metadata":   map[string]any{"name": name, "namespace": "default"},
		"spec":       roundTrip(t, spec),
	}}
	return env.Client.Create(context.Background(), obj)
}

// roundTrip normalises Go ints to JSON numbers.
func roundTrip(t *testing.T, v map[string]any) map[string]any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func with(base map[string]any, key string, value any) map[string]any {
	out := map[string]any{}
	for k, v := range base {
		out[k] = v
	}
	out[key] = value
	return out
}
