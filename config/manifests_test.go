// Package config_test keeps the install manifests under config/ valid: every YAML file
// parses strictly into its Kubernetes type, config/default builds with kustomize into the
// objects an install needs, and a real kube-apiserver accepts them.
package config_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	kustypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
)

const namespace = "servelab-system"

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

var kustomizationGVK = schema.GroupVersionKind{Group: "kustomize.config.k8s.io", Version: "v1beta1", Kind: "Kustomization"}

// decode parses one YAML document strictly into the Go type of its apiVersion and kind.
func decode(doc []byte) (runtime.Object, schema.GroupVersionKind, error) {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return nil, schema.GroupVersionKind{}, err
	}
	gv, err := schema.ParseGroupVersion(head.APIVersion)
	if err != nil {
		return nil, schema.GroupVersionKind{}, err
	}
	gvk := gv.WithKind(head.Kind)
	if gvk == kustomizationGVK {
		var k kustypes.Kustomization
		return nil, gvk, yaml.UnmarshalStrict(doc, &k)
	}
	obj, err := scheme.New(gvk)
	if err != nil {
		return nil, gvk, err
	}
	return obj, gvk, yaml.UnmarshalStrict(doc, obj)
}

// documents splits a multi-document YAML file, dropping empty documents.
func documents(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(data, []byte("\n---")) {
		d = bytes.TrimPrefix(bytes.TrimSpace(d), []byte("---"))
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func stripComments(d []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(d, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func TestEveryManifestParsesStrictly(t *testing.T) {
	var files []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"crd/kustomization.yaml", "rbac/kustomization.yaml", "rbac/role.yaml", "manager/manager.yaml", "default/kustomization.yaml", "samples/servelab_v1alpha1_llmservice.yaml"} {
		if !slices.Contains(files, want) {
			t.Errorf("config/%s is missing", want)
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs := documents(data)
		if len(docs) == 0 {
			t.Errorf("config/%s: no document", f)
		}
		for i, d := range docs {
			if _, gvk, err := decode(d); err != nil {
				t.Errorf("config/%s, document %d (%s): %v", f, i+1, gvk.Kind, err)
			}
		}
	}
}

// A field the type does not have fails the strict parse: the test above would catch a typo.
func TestStrictParseCatchesAnUnknownField(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 1}\n",
		"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresource: [a.yaml]\n",
		"apiVersion: servelab.io/v1alpha1\nkind: LLMService\nmetadata: {name: x}\nspec: {model: {name: m, uri: file:///m}, routr: {}}\n",
		"apiVersion: example.com/v1\nkind: Widget\n",
	} {
		if _, _, err := decode([]byte(doc)); err == nil {
			t.Errorf("accepted:\n%s", doc)
		}
	}
}

// build runs kustomize on config/default and parses its output strictly, in its order.
func build(t *testing.T) []runtime.Object {
	t.Helper()
	fsys := filesys.MakeFsOnDisk()
	// In the order 'kustomize build' and 'kubectl apply -k' emit: namespaces and CRDs first.
	opts := krusty.MakeDefaultOptions()
	opts.Reorder = krusty.ReorderOptionLegacy
	k := krusty.MakeKustomizer(opts)
	m, err := k.Run(fsys, "default")
	if err != nil {
		t.Fatalf("kustomize build config/default: %v", err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	for i, d := range documents(out) {
		obj, gvk, err := decode(d)
		if err != nil {
			t.Fatalf("kustomize output, document %d (%s): %v\n%s", i+1, gvk.Kind, err, d)
		}
		objs = append(objs, obj)
	}
	return objs
}

func TestDefaultBuildsTheInstall(t *testing.T) {
	objs := build(t)
	var got []string
	var dep *appsv1.Deployment
	var crb *rbacv1.ClusterRoleBinding
	var rb *rbacv1.RoleBinding
	for _, o := range objs {
		u := o.(client.Object)
		kind := o.GetObjectKind().GroupVersionKind().Kind
		got = append(got, kind+" "+u.GetNamespace()+"/"+u.GetName())
		switch x := o.(type) {
		case *appsv1.Deployment:
			dep = x
		case *rbacv1.ClusterRoleBinding:
			crb = x
		case *rbacv1.RoleBinding:
			rb = x
		}
		if u.GetLabels()["app.kubernetes.io/part-of"] != "servelab" {
			t.Errorf("%s %s: no part-of label", kind, u.GetName())
		}
	}
	slices.Sort(got)
	want := []string{
		"ClusterRole /servelab-controller",
		"ClusterRole /servelab-llmservice-editor",
		"ClusterRole /servelab-llmservice-viewer",
		"ClusterRoleBinding /servelab-controller",
		"CustomResourceDefinition /llmservices.servelab.io",
		"Deployment servelab-system/servelab-controller",
		"Namespace /servelab-system",
		"Role servelab-system/servelab-leader-election",
		"RoleBinding servelab-system/servelab-leader-election",
		"Service servelab-system/servelab-controller-metrics",
		"ServiceAccount servelab-system/servelab-controller",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("objects (-want +got):\n%s", diff)
	}
	// The bindings name the generated ClusterRole and the controller's service account.
	sa := rbacv1.Subject{Kind: "ServiceAccount", Name: "servelab-controller", Namespace: namespace}
	if diff := cmp.Diff([]rbacv1.Subject{sa}, crb.Subjects); diff != "" || crb.RoleRef.Name != "servelab-controller" {
		t.Errorf("ClusterRoleBinding: roleRef %s, subjects (-want +got):\n%s", crb.RoleRef.Name, diff)
	}
	if diff := cmp.Diff([]rbacv1.Subject{sa}, rb.Subjects); diff != "" || rb.RoleRef.Name != "servelab-leader-election" {
		t.Errorf("RoleBinding: roleRef %s, subjects (-want +got):\n%s", rb.RoleRef.Name, diff)
	}
	pod := dep.Spec.Template.Spec
	if pod.ServiceAccountName != "servelab-controller" {
		t.Errorf("the controller runs as %q", pod.ServiceAccountName)
	}
	c := pod.Containers[0]
	if len(c.Args) < 2 || c.Args[0] != "controller" || !slices.Contains(c.Args, "--leader-elect") || c.Image != "servelab:latest" {
		t.Errorf("the controller container: image %s, args %q", c.Image, c.Args)
	}
	if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("pod security context %+v", sc)
	}
	if sc := c.SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, corev1.Capability("ALL")) {
		t.Errorf("container security context %+v", sc)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probes: liveness %+v, readiness %+v", c.LivenessProbe, c.ReadinessProbe)
	}
}

// The install and the sample, applied to a real kube-apiserver: it validates every object
// (the Deployment's probes and ports, the RBAC rules, the sample against the CRD's schema).
func TestInstallOnAPIServer(t *testing.T) {
	env := k8stest.Start(t)
	ctx := context.Background()
	apply := func(obj runtime.Object) {
		t.Helper()
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: m}
		delete(u.Object, "status")
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		if err := env.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("config-test"), client.ForceOwnership); err != nil {
			t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	for _, o := range build(t) {
		apply(o)
	}
	data, err := os.ReadFile(filepath.Join("samples", "servelab_v1alpha1_llmservice.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := decode(data)
	if err != nil {
		t.Fatal(err)
	}
	obj.(client.Object).SetNamespace("default")
	apply(obj)
	var svc v1alpha1.LLMService
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "tiny"}, &svc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(svc.Spec.Router.EndpointPickerConfig, "kind: EndpointPickerConfig") {
		t.Errorf("sample stored as %+v", svc.Spec.Router)
	}
	var dep appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "servelab-controller"}, &dep); err != nil {
		t.Fatal(err)
	}
}
