package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/yaml"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
	"servelab/policies/route"
)

const ns = "default"

func newReconciler(env *k8stest.Env) (*Reconciler, *events.FakeRecorder) {
	rec := &events.FakeRecorder{Events: make(chan string, 256)}
	return &Reconciler{Client: env.Client, Recorder: rec, RESTMapper: env.Client.RESTMapper()}, rec
}

// drain returns the events recorded so far.
func drain(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func newService(name string, mutate func(*v1alpha1.LLMService)) *v1alpha1.LLMService {
	two := int32(2)
	svc := &v1alpha1.LLMService{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.LLMServiceSpec{
			Model:        v1alpha1.ModelSpec{Name: "tiny", URI: "file:///models/tiny"},
			WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: &two, Template: v1alpha1.EngineTemplate{Args: []string{"--max-num-seqs=8"}}},
			Router:       v1alpha1.RouterSpec{Policy: "least-request"},
			Source:       &v1alpha1.PolicySource{Experiment: "azure-routers", Policy: "least-request"},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	return svc
}

func create(t *testing.T, env *k8stest.Env, svc *v1alpha1.LLMService) {
	t.Helper()
	if err := env.Client.Create(context.Background(), svc); err != nil {
		t.Fatalf("creating LLMService %s: %v", svc.Name, err)
	}
}

func reconcileOnce(t *testing.T, r *Reconciler, name string) {
	t.Helper()
	res, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}})
	if err != nil {
		t.Fatalf("reconcile %s: %v", name, err)
	}
	if res != (reconcile.Result{}) {
		t.Fatalf("reconcile %s: result %+v, want no requeue", name, res)
	}
}

func get[T client.Object](t *testing.T, env *k8stest.Env, name string, obj T) T {
	t.Helper()
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
		t.Fatalf("get %T %s: %v", obj, name, err)
	}
	return obj
}

func getService(t *testing.T, env *k8stest.Env, name string) *v1alpha1.LLMService {
	t.Helper()
	return get(t, env, name, &v1alpha1.LLMService{})
}

func condition(svc *v1alpha1.LLMService, typ string) metav1.Condition {
	if c := apimeta.FindStatusCondition(svc.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{Type: typ, Status: "absent"}
}

// owned lists the objects an LLMService owns, by kind/name, with their resourceVersions.
func owned(t *testing.T, env *k8stest.Env, svc string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ctx := context.Background()
	add := func(kind string, items []client.Object) {
		for _, o := range items {
			for _, ref := range o.GetOwnerReferences() {
				if ref.Kind == "LLMService" && ref.Name == svc {
					out[kind+"/"+o.GetName()] = o.GetResourceVersion()
				}
			}
		}
	}
	var deps appsv1.DeploymentList
	var svcs corev1.ServiceList
	var cms corev1.ConfigMapList
	var sas corev1.ServiceAccountList
	var roles rbacv1.RoleList
	var rbs rbacv1.RoleBindingList
	for _, l := range []client.ObjectList{&deps, &svcs, &cms, &sas, &roles, &rbs} {
		if err := env.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	objs := func(n int, at func(int) client.Object) []client.Object {
		out := make([]client.Object, n)
		for i := range out {
			out[i] = at(i)
		}
		return out
	}
	add("Deployment", objs(len(deps.Items), func(i int) client.Object { return &deps.Items[i] }))
	add("Service", objs(len(svcs.Items), func(i int) client.Object { return &svcs.Items[i] }))
	add("ConfigMap", objs(len(cms.Items), func(i int) client.Object { return &cms.Items[i] }))
	add("ServiceAccount", objs(len(sas.Items), func(i int) client.Object { return &sas.Items[i] }))
	add("Role", objs(len(roles.Items), func(i int) client.Object { return &roles.Items[i] }))
	add("RoleBinding", objs(len(rbs.Items), func(i int) client.Object { return &rbs.Items[i] }))
	return out
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return sortStrings(out)
}

func sortStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

// setReady writes a Deployment's status as its controller would once every pod is ready
// (envtest runs no kube-controller-manager).
func setReady(t *testing.T, env *k8stest.Env, name string, ready int32) {
	t.Helper()
	d := get(t, env, name, &appsv1.Deployment{})
	want := *d.Spec.Replicas
	d.Status = appsv1.DeploymentStatus{
		ObservedGeneration: d.Generation, Replicas: want, UpdatedReplicas: want,
		ReadyReplicas: ready, AvailableReplicas: ready,
	}
	if err := env.Client.Status().Update(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

func TestReconcile(t *testing.T) {
	env := k8stest.Start(t)
	ctx := context.Background()

	t.Run("creates the owned objects", func(t *testing.T) {
		r, rec := newReconciler(env)
		create(t, env, newService("basic", nil))
		reconcileOnce(t, r, "basic")
		svc := getService(t, env, "basic")

		want := []string{"Deployment/basic-engine", "Deployment/basic-router", "Role/basic-router", "RoleBinding/basic-router",
			"Service/basic-engine", "Service/basic-router", "ServiceAccount/basic-router"}
		if diff := cmp.Diff(want, keys(owned(t, env, "basic"))); diff != "" {
			t.Errorf("owned objects (-want +got):\n%s", diff)
		}
		eng := get(t, env, "basic-engine", &appsv1.Deployment{})
		ref := eng.OwnerReferences[0]
		if ref.UID != svc.UID || ref.Controller == nil || !*ref.Controller || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
			t.Errorf("owner reference %+v: want controller and blockOwnerDeletion for UID %s", ref, svc.UID)
		}
		if *eng.Spec.Replicas != 2 {
			t.Errorf("engine replicas %d, want 2", *eng.Spec.Replicas)
		}
		c := eng.Spec.Template.Spec.Containers[0]
		wantArgs := []string{"engine", "--model=/models/tiny", "--served-model-name=tiny", "--host=$(POD_IP)", "--port=8000",
			"--batch=vllm", "--evict=lru", "--max-num-seqs=8"}
		if diff := cmp.Diff(wantArgs, c.Args); diff != "" {
			t.Errorf("engine args (-want +got):\n%s", diff)
		}
		if c.Image != "servelab:latest" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.FieldRef.FieldPath != "status.podIP" {
			t.Errorf("engine container: image %q, env %+v; want servelab:latest and POD_IP from status.podIP", c.Image, c.Env)
		}
		if sc := c.SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 {
			t.Errorf("engine securityContext %+v, want no privilege escalation and capabilities dropped", sc)
		}
		if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/health" {
			t.Errorf("engine readiness probe %+v, want GET /health", p)
		}
		vol := eng.Spec.Template.Spec.Volumes[0]
		if vol.HostPath == nil || vol.HostPath.Path != "/models/tiny" || !c.VolumeMounts[0].ReadOnly || c.VolumeMounts[0].MountPath != "/models/tiny" {
			t.Errorf("model volume %+v mount %+v: want hostPath /models/tiny read-only at the same path", vol, c.VolumeMounts)
		}
		wantLabels := map[string]string{LabelName: "servelab", LabelInstance: "basic", LabelComponent: "engine", LabelService: "basic", LabelManagedBy: FieldManager}
		if diff := cmp.Diff(wantLabels, eng.Spec.Template.Labels); diff != "" {
			t.Errorf("engine pod labels (-want +got):\n%s", diff)
		}

		rt := get(t, env, "basic-router", &appsv1.Deployment{})
		rc := rt.Spec.Template.Spec.Containers[0]
		wantRouter := []string{"router", "--host=$(POD_IP)", "--port=8080", "--router=least-request", "--model=/models/tiny",
			"--scrape-interval=50ms", "--pool-namespace=default",
			"--endpoint-selector=app.kubernetes.io/component=engine,servelab.io/llmservice=basic",
			"--endpoint-target-ports=8000", "--ext-proc-port=9002"}
		if diff := cmp.Diff(wantRouter, rc.Args); diff != "" {
			t.Errorf("router args (-want +got):\n%s", diff)
		}
		if s := rt.Spec.Strategy.RollingUpdate; s == nil || s.MaxUnavailable.IntValue() != 0 || s.MaxSurge.IntValue() != 1 {
			t.Errorf("router rolling update %+v, want maxUnavailable 0, maxSurge 1", s)
		}
		if rt.Spec.Template.Spec.ServiceAccountName != "basic-router" || rt.Spec.Template.Annotations[AnnotationRouterConfigHash] == "" {
			t.Errorf("router pod: service account %q, annotations %v", rt.Spec.Template.Spec.ServiceAccountName, rt.Spec.Template.Annotations)
		}
		role := get(t, env, "basic-router", &rbacv1.Role{})
		if diff := cmp.Diff([]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}}, role.Rules); diff != "" {
			t.Errorf("router role (-want +got):\n%s", diff)
		}
		if es := get(t, env, "basic-engine", &corev1.Service{}); es.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("engine Service clusterIP %q, want headless", es.Spec.ClusterIP)
		}
		if rs := get(t, env, "basic-router", &corev1.Service{}); len(rs.Spec.Ports) != 2 || rs.Spec.Ports[0].Port != RouterPort || rs.Spec.Ports[1].Port != ExtProcPort {
			t.Errorf("router Service ports %+v, want %d and %d", rs.Spec.Ports, RouterPort, ExtProcPort)
		}

		if svc.Status.ObservedGeneration != svc.Generation || svc.Status.URL != "http://basic-router.default.svc.cluster.local:8080/v1" ||
			svc.Status.Policy != "least-request" || svc.Status.Engines != "0/2" || svc.Status.Source == nil || svc.Status.Source.Experiment != "azure-routers" {
			t.Errorf("status %+v", svc.Status)
		}
		for typ, want := range map[string]metav1.ConditionStatus{
			v1alpha1.ConditionPolicyApplied: metav1.ConditionTrue, v1alpha1.ConditionEnginesReady: metav1.ConditionFalse,
			v1alpha1.ConditionRouterReady: metav1.ConditionFalse, v1alpha1.ConditionReady: metav1.ConditionFalse,
		} {
			if c := condition(svc, typ); c.Status != want {
				t.Errorf("condition %s: %+v, want %s", typ, c, want)
			}
		}
		if ev := drain(rec); len(ev) != 1 || !strings.HasPrefix(ev[0], "Normal Deployed") {
			t.Errorf("events %q, want one Normal Deployed", ev)
		}
	})

	t.Run("a second reconcile changes nothing", func(t *testing.T) {
		r, rec := newReconciler(env)
		before := owned(t, env, "basic")
		svcRV := getService(t, env, "basic").ResourceVersion
		reconcileOnce(t, r, "basic")
		if diff := cmp.Diff(before, owned(t, env, "basic")); diff != "" {
			t.Errorf("resourceVersions changed (-before +after):\n%s", diff)
		}
		if rv := getService(t, env, "basic").ResourceVersion; rv != svcRV {
			t.Errorf("LLMService resourceVersion %s -> %s: status written without a change", svcRV, rv)
		}
		if ev := drain(rec); len(ev) != 0 {
			t.Errorf("events %q, want none", ev)
		}
	})

	t.Run("status follows the Deployments", func(t *testing.T) {
		r, _ := newReconciler(env)
		setReady(t, env, "basic-engine", 1)
		setReady(t, env, "basic-router", 1)
		reconcileOnce(t, r, "basic")
		svc := getService(t, env, "basic")
		if svc.Status.Engines != "1/2" || svc.Status.ReadyReplicas != 1 || svc.Status.Replicas != 2 || svc.Status.RouterReadyReplicas != 1 {
			t.Errorf("status %+v, want engines 1/2 and 1 router ready", svc.Status)
		}
		if c := condition(svc, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse || c.Reason != ReasonEnginesNotReady {
			t.Errorf("Ready %+v, want False with reason %s", c, ReasonEnginesNotReady)
		}
		setReady(t, env, "basic-engine", 2)
		reconcileOnce(t, r, "basic")
		svc = getService(t, env, "basic")
		for _, typ := range []string{v1alpha1.ConditionReady, v1alpha1.ConditionEnginesReady, v1alpha1.ConditionRouterReady, v1alpha1.ConditionPolicyApplied} {
			if c := condition(svc, typ); c.Status != metav1.ConditionTrue || c.ObservedGeneration != svc.Generation {
				t.Errorf("condition %s: %+v, want True at generation %d", typ, c, svc.Generation)
			}
		}
		if svc.Status.Engines != "2/2" {
			t.Errorf("engines %q, want 2/2", svc.Status.Engines)
		}
	})

	t.Run("a policy change rolls the router only", func(t *testing.T) {
		r, rec := newReconciler(env)
		before := owned(t, env, "basic")
		oldRouter := get(t, env, "basic-router", &appsv1.Deployment{})
		svc := getService(t, env, "basic")
		svc.Spec.Router.Policy = "weighted:prefix=3,queue=2,kv=2"
		if err := env.Client.Update(ctx, svc); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "basic")
		after := owned(t, env, "basic")
		for k := range before {
			if changed := before[k] != after[k]; changed != (k == "Deployment/basic-router") {
				t.Errorf("%s changed: %t", k, changed)
			}
		}
		newRouter := get(t, env, "basic-router", &appsv1.Deployment{})
		// The pod template differs in the policy (--router) and its hash, nothing else.
		oldT, newT := oldRouter.Spec.Template.DeepCopy(), newRouter.Spec.Template.DeepCopy()
		if oldT.Annotations[AnnotationRouterConfigHash] == newT.Annotations[AnnotationRouterConfigHash] {
			t.Error("the router's config hash did not change")
		}
		delete(oldT.Annotations, AnnotationRouterConfigHash)
		delete(newT.Annotations, AnnotationRouterConfigHash)
		for i, a := range oldT.Spec.Containers[0].Args {
			if a == "--router=least-request" {
				oldT.Spec.Containers[0].Args[i] = "--router=weighted:prefix=3,queue=2,kv=2"
			}
		}
		if diff := cmp.Diff(oldT, newT); diff != "" {
			t.Errorf("router pod template changed beyond the policy (-old +new):\n%s", diff)
		}
		got := getService(t, env, "basic")
		if got.Status.Policy != "weighted:prefix=3,queue=2,kv=2" {
			t.Errorf("status.policy %q", got.Status.Policy)
		}
		if ev := drain(rec); len(ev) != 1 || ev[0] != "Normal PolicyChanged routing policy weighted:prefix=3,queue=2,kv=2 (was least-request): rolling the router" {
			t.Errorf("events %q, want one Normal PolicyChanged naming both routing policies", ev)
		}
	})

	t.Run("a batch change rolls the engines only", func(t *testing.T) {
		r, rec := newReconciler(env)
		before := owned(t, env, "basic")
		svc := getService(t, env, "basic")
		svc.Spec.Batch = "static"
		if err := env.Client.Update(ctx, svc); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "basic")
		after := owned(t, env, "basic")
		for k := range before {
			if changed := before[k] != after[k]; changed != (k == "Deployment/basic-engine") {
				t.Errorf("%s changed: %t", k, changed)
			}
		}
		if a := get(t, env, "basic-engine", &appsv1.Deployment{}).Spec.Template.Spec.Containers[0].Args; !contains(a, "--batch=static") {
			t.Errorf("engine args %q, want --batch=static", a)
		}
		if ev := drain(rec); len(ev) != 1 || ev[0] != "Normal PolicyChanged batch static (was vllm): rolling the engines" {
			t.Errorf("events %q, want one Normal PolicyChanged naming the batch policies", ev)
		}
		svc = getService(t, env, "basic")
		svc.Spec.Batch = "vllm"
		if err := env.Client.Update(ctx, svc); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "basic")
		drain(rec)
	})

	t.Run("an invalid policy keeps what runs", func(t *testing.T) {
		r, rec := newReconciler(env)
		// The engine's and router's flag sets as 'servelab controller' passes them (a
		// few of their flags here).
		r.Flags = FlagSets{
			Engine: func() *pflag.FlagSet {
				fs := pflag.NewFlagSet("engine", pflag.ContinueOnError)
				fs.Int("block-size", 16, "")
				fs.Int("max-num-seqs", 0, "")
				fs.Int("max-num-batched-tokens", 0, "")
				return fs
			},
			Router: func() *pflag.FlagSet {
				fs := pflag.NewFlagSet("router", pflag.ContinueOnError)
				fs.Uint64("seed", 0, "")
				fs.Int("kv-events-socket-port", 0, "")
				fs.String("kv-events-topic-filter", "", "")
				return fs
			},
		}
		pdConfig, err := os.ReadFile("../../examples/router/llm-d-pd.yaml")
		if err != nil {
			t.Fatal(err)
		}
		twoKVCM := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "two-kvevents", Namespace: ns},
			Data: map[string]string{"epp.yaml": withTwoKVEvents(t, llmdDefault(3))}}
		if err := env.Client.Create(ctx, twoKVCM); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			mutate func(*v1alpha1.LLMService)
			reason string
			field  string
		}{
			{"router parameter", func(s *v1alpha1.LLMService) { s.Spec.Router.Policy = "weighted:prefix=-1" }, ReasonInvalidPolicy, `spec.router.policy "weighted:prefix=-1"`},
			{"router policy file", func(s *v1alpha1.LLMService) { s.Spec.Router.Policy = "least-request:x=/etc/passwd.yaml" }, ReasonInvalidPolicy, "spec.router.policy"},
			{"batch parameter", func(s *v1alpha1.LLMService) { s.Spec.Batch = "vllm:max_num_batched_tokens=abc" }, ReasonInvalidPolicy, "spec.batch"},
			{"batch limit from args", func(s *v1alpha1.LLMService) { s.Spec.Template.Args = []string{"--max-num-batched-tokens=lots"} }, ReasonInvalidArgs, "spec.template.args"},
			{"evict parameter", func(s *v1alpha1.LLMService) { s.Spec.Evict = "lru:x=1" }, ReasonInvalidPolicy, "spec.evict"},
			{"inline EndpointPickerConfig", func(s *v1alpha1.LLMService) {
				s.Spec.Router.Policy = ""
				s.Spec.Router.EndpointPickerConfig = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: no-such-scorer\n"
			}, ReasonInvalidPolicy, "spec.router.endpointPickerConfig"},
			{"prefill pool without a P/D policy", func(s *v1alpha1.LLMService) {
				s.Spec.Prefill = &v1alpha1.WorkloadSpec{}
			}, ReasonInvalidPolicy, "spec.prefill needs a prefill/decode EndpointPickerConfig"},
			// Two kvEventsConfigs: the router refuses the file at start (it subscribes once per
			// endpoint), so the controller refuses it before deploying it, inline, from a
			// ConfigMap, or as a P/D configuration (that error, not that it is not P/D).
			{"inline EndpointPickerConfig with two kvEventsConfigs", func(s *v1alpha1.LLMService) {
				s.Spec.Router.Policy = ""
				s.Spec.Router.EndpointPickerConfig = withTwoKVEvents(t, llmdDefault(3))
			}, ReasonInvalidPolicy, "spec.router.endpointPickerConfig: " + twoKVEventsErr(0)},
			{"ConfigMap EndpointPickerConfig with two kvEventsConfigs", func(s *v1alpha1.LLMService) {
				s.Spec.Router.Policy = ""
				s.Spec.Router.EndpointPickerConfigRef = &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: twoKVCM.Name}, Key: "epp.yaml"}
			}, ReasonInvalidPolicy, "spec.router.endpointPickerConfigRef (ConfigMap two-kvevents, key epp.yaml): " + twoKVEventsErr(0)},
			{"P/D EndpointPickerConfig with two kvEventsConfigs", func(s *v1alpha1.LLMService) {
				s.Spec.Prefill = &v1alpha1.WorkloadSpec{}
				s.Spec.Router.Policy = ""
				s.Spec.Router.EndpointPickerConfig = withTwoKVEvents(t, string(pdConfig))
			}, ReasonInvalidPolicy, "spec.router.endpointPickerConfig: " + twoKVEventsErr(1)},
			// Router args contradicting the EndpointPickerConfig's kvEventsConfig: the router
			// refuses them at start, so its pod would crash-loop; both flag forms are read.
			{"router --kv-events-socket-port against the kvEventsConfig", func(s *v1alpha1.LLMService) {
				s.Spec.Router.Policy = ""
				s.Spec.Router.EndpointPickerConfig = withKVEvents(t, llmdDefault(3))
				s.Spec.Router.Template = &v1alpha1.EngineTemplate{Args: []string{"--kv-events-socket-port", "5557"}}
			}, ReasonInvalidPolicy, "spec.router.template.args: --kv-events-socket-port 5557 and spec.router.endpointPickerConfig: plugins[1].parameters.kvEventsConfig.podDiscoveryConfig.socketPort 6557 disagree"},
			{"router --kv-events-topic-filter= against the kvEventsConfig", func(s *v1alpha1.LLMService) {
				s.Spec.Router.Policy = ""
				s.Spec.Router.EndpointPickerConfig = withKVEvents(t, llmdDefault(3))
				s.Spec.Router.Template = &v1alpha1.EngineTemplate{Args: []string{"--kv-events-socket-port=6557", "--kv-events-topic-filter=kv@pod"}}
			}, ReasonInvalidPolicy, `spec.router.template.args: --kv-events-topic-filter "kv@pod" and spec.router.endpointPickerConfig: plugins[1].parameters.kvEventsConfig.topicFilter "kv@" disagree`},
			{"unknown engine flag", func(s *v1alpha1.LLMService) { s.Spec.Template.Args = []string{"--max-num-seq=8"} }, ReasonInvalidArgs, "spec.template.args"},
			{"unknown router flag", func(s *v1alpha1.LLMService) {
				s.Spec.Router.Template = &v1alpha1.EngineTemplate{Args: []string{"--no-such-flag"}}
			}, ReasonInvalidArgs, "spec.router.template.args"},
			{"missing ConfigMap", func(s *v1alpha1.LLMService) {
				s.Spec.Router.Policy = ""
				s.Spec.Router.EndpointPickerConfigRef = &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nowhere"}, Key: "config.yaml"}
			}, ReasonConfigMapNotFound, "spec.router.endpointPickerConfigRef"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := owned(t, env, "basic")
				good := getService(t, env, "basic")
				bad := good.DeepCopy()
				tc.mutate(bad)
				if err := env.Client.Update(ctx, bad); err != nil {
					t.Fatalf("the API server refused the spec (the controller should be the one to): %v", err)
				}
				reconcileOnce(t, r, "basic") // no error, no requeue
				got := getService(t, env, "basic")
				c := condition(got, v1alpha1.ConditionPolicyApplied)
				if c.Status != metav1.ConditionFalse || c.Reason != tc.reason || !strings.Contains(c.Message, tc.field) || c.ObservedGeneration != got.Generation {
					t.Errorf("PolicyApplied %+v, want False, reason %s, a message naming %s, generation %d", c, tc.reason, tc.field, got.Generation)
				}
				if c := condition(got, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse || c.Reason != ReasonPolicyNotApplied {
					t.Errorf("Ready %+v, want False (%s)", c, ReasonPolicyNotApplied)
				}
				if got.Status.Policy != good.Status.Policy || got.Status.URL != good.Status.URL {
					t.Errorf("status policy/url %q %q, want the deployed %q %q", got.Status.Policy, got.Status.URL, good.Status.Policy, good.Status.URL)
				}
				if diff := cmp.Diff(before, owned(t, env, "basic")); diff != "" {
					t.Errorf("deployed objects changed (-before +after):\n%s", diff)
				}
				if ev := drain(rec); len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning "+tc.reason) {
					t.Errorf("events %q, want one Warning %s", ev, tc.reason)
				}
				// Reconciling again records no second event.
				reconcileOnce(t, r, "basic")
				if ev := drain(rec); len(ev) != 0 {
					t.Errorf("second reconcile: events %q, want none", ev)
				}
				// Back to the good spec: applied again.
				fixed := getService(t, env, "basic")
				fixed.Spec = good.Spec
				if err := env.Client.Update(ctx, fixed); err != nil {
					t.Fatal(err)
				}
				reconcileOnce(t, r, "basic")
				drain(rec)
				if c := condition(getService(t, env, "basic"), v1alpha1.ConditionPolicyApplied); c.Status != metav1.ConditionTrue {
					t.Errorf("after fixing the spec: PolicyApplied %+v", c)
				}
			})
		}
	})

	t.Run("EndpointPickerConfig from a ConfigMap", func(t *testing.T) {
		r, _ := newReconciler(env)
		create(t, env, newService("epc", func(s *v1alpha1.LLMService) {
			s.Spec.Router.Policy = ""
			s.Spec.Router.EndpointPickerConfigRef = &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "epc-config"}, Key: "epp.yaml"}
		}))
		reconcileOnce(t, r, "epc")
		if c := condition(getService(t, env, "epc"), v1alpha1.ConditionPolicyApplied); c.Reason != ReasonConfigMapNotFound {
			t.Errorf("without the ConfigMap: PolicyApplied %+v, want reason %s", c, ReasonConfigMapNotFound)
		}
		if o := owned(t, env, "epc"); len(o) != 0 {
			t.Errorf("deployed %v before the policy was valid", keys(o))
		}
		doc := llmdDefault(3)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "epc-config", Namespace: ns}, Data: map[string]string{"other": "x"}}
		if err := env.Client.Create(ctx, cm); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "epc")
		if c := condition(getService(t, env, "epc"), v1alpha1.ConditionPolicyApplied); c.Reason != ReasonConfigMapKeyNotFound || !strings.Contains(c.Message, `"epp.yaml"`) {
			t.Errorf("without the key: PolicyApplied %+v, want reason %s", c, ReasonConfigMapKeyNotFound)
		}
		cm.Data = map[string]string{"epp.yaml": doc}
		if err := env.Client.Update(ctx, cm); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "epc")
		svc := getService(t, env, "epc")
		if c := condition(svc, v1alpha1.ConditionPolicyApplied); c.Status != metav1.ConditionTrue || svc.Status.Policy != "EndpointPickerConfig" {
			t.Fatalf("PolicyApplied %+v, policy %q", c, svc.Status.Policy)
		}
		if got := get(t, env, "epc-epp", &corev1.ConfigMap{}).Data; got["config.yaml"] != doc {
			t.Errorf("router ConfigMap %v, want the referenced document under config.yaml", got)
		}
		rt := get(t, env, "epc-router", &appsv1.Deployment{})
		if !contains(rt.Spec.Template.Spec.Containers[0].Args, "--router=/etc/servelab/epp/config.yaml") || rt.Spec.Template.Spec.Volumes[1].ConfigMap.Name != "epc-epp" {
			t.Errorf("router args %q volumes %+v: want the mounted config", rt.Spec.Template.Spec.Containers[0].Args, rt.Spec.Template.Spec.Volumes)
		}
		// A new weight in the referenced ConfigMap rolls the router: same args, new hash.
		oldHash := rt.Spec.Template.Annotations[AnnotationRouterConfigHash]
		cm.Data["epp.yaml"] = llmdDefault(5)
		if err := env.Client.Update(ctx, cm); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "epc")
		rt2 := get(t, env, "epc-router", &appsv1.Deployment{})
		if rt2.Spec.Template.Annotations[AnnotationRouterConfigHash] == oldHash {
			t.Error("the router's config hash did not change with the ConfigMap")
		}
		if diff := cmp.Diff(rt.Spec.Template.Spec, rt2.Spec.Template.Spec); diff != "" {
			t.Errorf("router pod spec changed (-old +new):\n%s", diff)
		}
		// Back to a policy spec: the router's ConfigMap goes.
		svc.Spec.Router.EndpointPickerConfigRef = nil
		svc.Spec.Router.Policy = "power-of-two"
		if err := env.Client.Update(ctx, svc); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "epc")
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "epc-epp"}, &corev1.ConfigMap{}); !apierrors.IsNotFound(err) {
			t.Errorf("router ConfigMap after switching to a policy spec: %v, want NotFound", err)
		}
	})

	t.Run("prefill pool and pvc model", func(t *testing.T) {
		r, _ := newReconciler(env)
		pdConfig, err := os.ReadFile("../../examples/router/llm-d-pd.yaml")
		if err != nil {
			t.Fatal(err)
		}
		one := int32(1)
		create(t, env, newService("pd", func(s *v1alpha1.LLMService) {
			s.Spec.Model.URI = "pvc://models/llama/8b"
			s.Spec.Prefill = &v1alpha1.WorkloadSpec{Replicas: &one, Template: v1alpha1.EngineTemplate{Args: []string{"--max-num-batched-tokens=4096"}}}
			s.Spec.Router.Policy = ""
			s.Spec.Router.EndpointPickerConfig = string(pdConfig)
		}))
		reconcileOnce(t, r, "pd")
		p := get(t, env, "pd-prefill", &appsv1.Deployment{})
		if p.Spec.Template.Labels[LabelComponent] != ComponentPrefill || p.Spec.Selector.MatchLabels[LabelComponent] != ComponentPrefill {
			t.Errorf("prefill labels %v selector %v", p.Spec.Template.Labels, p.Spec.Selector.MatchLabels)
		}
		c := p.Spec.Template.Spec.Containers[0]
		if !contains(c.Args, "--model=/mnt/models") || !contains(c.Args, "--max-num-batched-tokens=4096") {
			t.Errorf("prefill args %q", c.Args)
		}
		// The pools' llm-d roles, which the engines run with and the router's discovery reads,
		// and a router selector over both pools.
		e := get(t, env, "pd-engine", &appsv1.Deployment{})
		for _, d := range []struct {
			dep  *appsv1.Deployment
			role string
		}{{p, route.RolePrefill}, {e, route.RoleDecode}} {
			if got := d.dep.Spec.Template.Labels[route.RoleLabel]; got != d.role {
				t.Errorf("%s: label %s=%q, want %q", d.dep.Name, route.RoleLabel, got, d.role)
			}
			if args := d.dep.Spec.Template.Spec.Containers[0].Args; !contains(args, "--role="+d.role) {
				t.Errorf("%s: args %q, want --role=%s", d.dep.Name, args, d.role)
			}
		}
		rd := get(t, env, "pd-router", &appsv1.Deployment{})
		if args := rd.Spec.Template.Spec.Containers[0].Args; !contains(args, "--endpoint-selector=app.kubernetes.io/component in (engine,prefill),servelab.io/llmservice=pd") {
			t.Errorf("router args %q: want a selector over both pools", args)
		}
		vol := p.Spec.Template.Spec.Volumes[0]
		if vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != "models" || c.VolumeMounts[0].SubPath != "llama/8b" {
			t.Errorf("model volume %+v mount %+v: want claim models, subPath llama/8b", vol, c.VolumeMounts[0])
		}
		if got := getService(t, env, "pd").Status.Engines; got != "0/3" {
			t.Errorf("engines %q, want 0/3 (two decode, one prefill)", got)
		}
		svc := getService(t, env, "pd")
		svc.Spec.Prefill = nil
		if err := env.Client.Update(ctx, svc); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "pd")
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "pd-prefill"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
			t.Errorf("prefill Deployment after removing spec.prefill: %v, want NotFound", err)
		}
		if e := get(t, env, "pd-engine", &appsv1.Deployment{}); e.Spec.Template.Labels[route.RoleLabel] != "" || contains(e.Spec.Template.Spec.Containers[0].Args, "--role=decode") {
			t.Errorf("engines after removing spec.prefill: labels %v args %q, want no role", e.Spec.Template.Labels, e.Spec.Template.Spec.Containers[0].Args)
		}
	})

	t.Run("deleted", func(t *testing.T) {
		r, _ := newReconciler(env)
		svc := getService(t, env, "pd")
		if err := env.Client.Delete(ctx, svc); err != nil {
			t.Fatal(err)
		}
		// Owned objects go with the API server's garbage collector (kube-controller-manager,
		// absent here; the owner references above are what it follows); the reconciler
		// only has to let go.
		reconcileOnce(t, r, "pd")
		if r.haveInferencePoolForTest() {
			t.Error("no InferencePool CRD is installed, yet the reconciler found one")
		}
	})

	t.Run("takes over nothing", func(t *testing.T) {
		r, rec := newReconciler(env)
		// Someone else's Service where the controller would put the router's.
		theirs := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "taken-router", Namespace: ns},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}
		if err := env.Client.Create(ctx, theirs); err != nil {
			t.Fatal(err)
		}
		create(t, env, newService("taken", nil))
		res, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "taken"}})
		if err != nil || res.RequeueAfter != time.Minute {
			t.Errorf("reconcile: %+v, %v; want a look again in a minute and no error", res, err)
		}
		c := condition(getService(t, env, "taken"), v1alpha1.ConditionPolicyApplied)
		if c.Status != metav1.ConditionFalse || c.Reason != ReasonResourceExists || !strings.Contains(c.Message, "Service taken-router") {
			t.Errorf("PolicyApplied %+v, want False, %s naming Service taken-router", c, ReasonResourceExists)
		}
		if o := owned(t, env, "taken"); len(o) != 0 {
			t.Errorf("applied %v though a name was taken", keys(o))
		}
		if got := get(t, env, "taken-router", &corev1.Service{}); len(got.OwnerReferences) != 0 || got.ResourceVersion != theirs.ResourceVersion {
			t.Errorf("their Service was changed: %+v", got.ObjectMeta)
		}
		if ev := drain(rec); len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning "+ReasonResourceExists) {
			t.Errorf("events %q", ev)
		}
		// Once theirs is gone, the service deploys.
		if err := env.Client.Delete(ctx, theirs); err != nil {
			t.Fatal(err)
		}
		reconcileOnce(t, r, "taken")
		if c := condition(getService(t, env, "taken"), v1alpha1.ConditionPolicyApplied); c.Status != metav1.ConditionTrue {
			t.Errorf("after the Service went: PolicyApplied %+v", c)
		}
	})

	t.Run("config/samples", func(t *testing.T) {
		r, _ := newReconciler(env)
		files, err := filepath.Glob(filepath.Join(k8stest.RepoRoot(t), "config", "samples", "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no samples: %v", err)
		}
		for _, f := range files {
			if filepath.Base(f) == "kustomization.yaml" {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var svc v1alpha1.LLMService
			if err := yaml.UnmarshalStrict(data, &svc); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			svc.Name = "sample-" + svc.Name
			create(t, env, &svc)
			reconcileOnce(t, r, svc.Name)
			if c := condition(getService(t, env, svc.Name), v1alpha1.ConditionPolicyApplied); c.Status != metav1.ConditionTrue {
				t.Errorf("%s: PolicyApplied %+v", f, c)
			}
		}
	})

	t.Run("the controller keeps reconciling past an invalid service", func(t *testing.T) {
		testManager(t, env)
	})
}

func (r *Reconciler) haveInferencePoolForTest() bool {
	ok, _ := r.haveInferencePool()
	return ok
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// llmdDefault is llm-d's default EndpointPickerConfig with the prefix scorer's weight w.
func llmdDefault(w int) string {
	return fmt.Sprintf(`apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: %d
  - pluginRef: max-score-picker
`, w)
}

// withTwoKVEvents is the EndpointPickerConfig doc with two precise-prefix-cache-scorers
// after its plugins' queue-scorer, each with a kvEventsConfig: a file the router refuses
// (it subscribes once per endpoint), with twoKVEventsErr of queue-scorer's index.
func withTwoKVEvents(t *testing.T, doc string) string {
	t.Helper()
	const queue = "- type: queue-scorer\n"
	if !strings.Contains(doc, queue) {
		t.Fatalf("no %q in %q", queue, doc)
	}
	kv := "  type: precise-prefix-cache-scorer\n  parameters: {kvEventsConfig: {topicFilter: kv@}}\n"
	return strings.Replace(doc, queue, queue+"- name: precise-a\n"+kv+"- name: precise-b\n"+kv, 1)
}

// withKVEvents is the EndpointPickerConfig doc with a precise-prefix-cache-scorer after
// its plugins' queue-scorer, whose kvEventsConfig has socketPort 6557 and topicFilter kv@.
func withKVEvents(t *testing.T, doc string) string {
	t.Helper()
	const queue = "- type: queue-scorer\n"
	if !strings.Contains(doc, queue) {
		t.Fatalf("no %q in %q", queue, doc)
	}
	return strings.Replace(doc, queue, queue+"- name: precise\n  type: precise-prefix-cache-scorer\n"+
		"  parameters: {kvEventsConfig: {topicFilter: kv@, podDiscoveryConfig: {socketPort: 6557}}}\n", 1)
}

// twoKVEventsErr is the router's error for withTwoKVEvents of a doc whose queue-scorer is
// plugins[queue].
func twoKVEventsErr(queue int) string {
	return fmt.Sprintf("plugins[%d].parameters.kvEventsConfig and plugins[%d].parameters.kvEventsConfig: two kvEventsConfigs; the router subscribes once per endpoint",
		queue+1, queue+2)
}

// TestInferencePool: with GIE's InferencePool CRD installed, each LLMService gets an
// InferencePool over its decode engines whose endpoint picker is the router's ext_proc port.
func TestInferencePool(t *testing.T) {
	env := k8stest.Start(t, k8stest.Options{ExtraCRDs: []string{filepath.Join("testdata", "gie")}})
	r, _ := newReconciler(env)
	create(t, env, newService("gie", nil))
	reconcileOnce(t, r, "gie")
	pool := &unstructured.Unstructured{}
	pool.SetGroupVersionKind(InferencePoolGVK)
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "gie"}, pool); err != nil {
		t.Fatalf("InferencePool: %v", err)
	}
	spec := pool.Object["spec"]
	want := map[string]any{
		"selector":    map[string]any{"matchLabels": map[string]any{LabelComponent: "engine", LabelService: "gie"}},
		"targetPorts": []any{map[string]any{"number": int64(8000)}},
		"endpointPickerRef": map[string]any{
			"group": "", "kind": "Service", "name": "gie-router", "failureMode": "FailClose",
			"port": map[string]any{"number": int64(9002)},
		},
	}
	if diff := cmp.Diff(want, spec); diff != "" {
		t.Errorf("InferencePool spec (-want +got):\n%s", diff)
	}
	if refs := pool.GetOwnerReferences(); len(refs) != 1 || refs[0].Name != "gie" {
		t.Errorf("owner references %+v", refs)
	}
	rv := pool.GetResourceVersion()
	reconcileOnce(t, r, "gie")
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "gie"}, pool); err != nil {
		t.Fatal(err)
	}
	if pool.GetResourceVersion() != rv {
		t.Errorf("a second reconcile changed the InferencePool (resourceVersion %s -> %s)", rv, pool.GetResourceVersion())
	}
	t.Run("the generated ClusterRole suffices", func(t *testing.T) { testRBACSuffices(t, env) })
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
