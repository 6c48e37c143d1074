package deploy

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"servelab/api/v1alpha1"
	"servelab/internal/k8stest"
)

// kubeconfig writes a kubeconfig for the test's API server with two contexts: "main"
// (the current one, namespace default) and "team" (namespace team-a).
func kubeconfig(t *testing.T, env *k8stest.Env) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["envtest"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: env.Config.CertData, ClientKeyData: env.Config.KeyData, Token: env.Config.BearerToken}
	cfg.Contexts["main"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	cfg.Contexts["team"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin", Namespace: "team-a"}
	cfg.CurrentContext = "main"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// lines is an io.Writer that keeps the lines written and signals each.
type lines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	news chan struct{}
}

func newLines() *lines { return &lines{news: make(chan struct{}, 1)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.buf.Write(p)
	select {
	case l.news <- struct{}{}:
	default:
	}
	return n, err
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// await waits until the text holds want.
func (l *lines) await(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(time.Minute)
	for !strings.Contains(l.String(), want) {
		select {
		case <-l.news:
		case <-deadline:
			t.Fatalf("no %q in:\n%s", want, l.String())
		}
	}
}

// setStatus writes the service's status as the controller would.
func setStatus(t *testing.T, c client.Client, key client.ObjectKey, f func(*v1alpha1.LLMService)) {
	t.Helper()
	var svc v1alpha1.LLMService
	if err := c.Get(context.Background(), key, &svc); err != nil {
		t.Fatal(err)
	}
	f(&svc)
	if err := c.Status().Update(context.Background(), &svc); err != nil {
		t.Fatal(err)
	}
}

func condition(typ string, status metav1.ConditionStatus, reason, msg string, gen int64) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen, LastTransitionTime: metav1.Now()}
}

// TestOnAPIServer runs the deploy against a real kube-apiserver: creation with field
// manager servelab, a second deploy's diff and update, and the wait for Ready.
func TestOnAPIServer(t *testing.T) {
	env := k8stest.Start(t)
	dir, specDir := experiment(t)
	kcfg := kubeconfig(t, env)
	ctx := context.Background()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	opts := func(label string) Options {
		return Options{From: dir, Choose: ChooseOptions{Policy: label},
			Service: ServiceOptions{Name: "chat", ModelURI: "pvc://models/llama", Dir: specDir},
			Kube:    KubeOptions{Kubeconfig: kcfg, Context: "team"}, Timeout: time.Minute, PollInterval: 20 * time.Millisecond}
	}
	key := client.ObjectKey{Namespace: "team-a", Name: "chat"}

	t.Run("apply creates it with field manager servelab", func(t *testing.T) {
		var out, log bytes.Buffer
		o := opts("least-request / lru")
		o.Out, o.Log = &out, &log
		if err := Run(ctx, o); err != nil {
			t.Fatalf("%v\n%s", err, log.String())
		}
		var svc v1alpha1.LLMService
		if err := env.Client.Get(ctx, key, &svc); err != nil {
			t.Fatal(err)
		}
		if svc.Spec.Router.Policy != "least-request" || svc.Spec.Evict != "lru" || svc.Spec.Source == nil || svc.Spec.Source.Policy != "least-request / lru" {
			t.Errorf("stored spec %+v", svc.Spec)
		}
		var managers []string
		for _, m := range svc.ManagedFields {
			managers = append(managers, m.Manager+"/"+string(m.Operation))
		}
		if diff := cmp.Diff([]string{"servelab/Apply"}, managers); diff != "" {
			t.Errorf("managers (-want +got):\n%s", diff)
		}
		for _, want := range []string{"in namespace team-a (context team): new", "llmservice.servelab.io/chat created (server-side apply, field manager servelab)"} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("no %q in:\n%s", want, log.String())
			}
		}
	})

	t.Run("dry run shows the changes and stores nothing", func(t *testing.T) {
		var out, log bytes.Buffer
		o := opts("router/llm-d.yaml / lfu")
		o.DryRun, o.Output, o.Out, o.Log = DryRunServer, "yaml", &out, &log
		if err := Run(ctx, o); err != nil {
			t.Fatalf("%v\n%s", err, log.String())
		}
		for _, want := range []string{
			"llmservice.servelab.io/chat in namespace team-a (context team): 4 spec changes",
			"  ~ spec.evict: \"lru\" → \"lfu\"",
			"  + spec.router.endpointPickerConfig: (24 lines)",
			"  - spec.router.policy: \"least-request\"",
			"  ~ spec.source.policy: \"least-request / lru\" → \"router/llm-d.yaml / lfu\"",
			"dry run: nothing applied",
		} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("no %q in:\n%s", want, log.String())
			}
		}
		var printed v1alpha1.LLMService
		if err := yaml.UnmarshalStrict(out.Bytes(), &printed); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		if printed.Spec.Router.EndpointPickerConfig == "" || printed.Spec.Template.Image != "servelab:latest" {
			t.Errorf("the server's dry run: %+v", printed.Spec)
		}
		var svc v1alpha1.LLMService
		if err := env.Client.Get(ctx, key, &svc); err != nil {
			t.Fatal(err)
		}
		if svc.Spec.Router.Policy != "least-request" || svc.Generation != 1 {
			t.Errorf("a dry run changed the service: generation %d, %+v", svc.Generation, svc.Spec.Router)
		}
	})

	t.Run("a second apply shows the diff, updates it and waits for Ready", func(t *testing.T) {
		var out bytes.Buffer
		log := newLines()
		o := opts("router/llm-d.yaml / lfu")
		o.Wait, o.Out, o.Log = true, &out, log
		errc := make(chan error, 1)
		go func() { errc <- Run(ctx, o) }()
		log.await(t, "waiting for the controller to observe generation 2")
		var svc v1alpha1.LLMService
		if err := env.Client.Get(ctx, key, &svc); err != nil {
			t.Fatal(err)
		}
		if svc.Spec.Router.Policy != "" || !strings.Contains(svc.Spec.Router.EndpointPickerConfig, "kind: EndpointPickerConfig") || svc.Generation != 2 {
			t.Fatalf("not updated: generation %d, %+v", svc.Generation, svc.Spec.Router)
		}
		// A status of the old generation, Ready, does not end the wait.
		setStatus(t, env.Client, key, func(s *v1alpha1.LLMService) {
			s.Status = v1alpha1.LLMServiceStatus{ObservedGeneration: 1, Replicas: 3, ReadyReplicas: 3,
				Conditions: []metav1.Condition{condition(v1alpha1.ConditionReady, metav1.ConditionTrue, "Ready", "", 1)}}
		})
		setStatus(t, env.Client, key, func(s *v1alpha1.LLMService) {
			s.Status = v1alpha1.LLMServiceStatus{ObservedGeneration: 2, Replicas: 3, ReadyReplicas: 1, RouterReadyReplicas: 0,
				Conditions: []metav1.Condition{
					condition(v1alpha1.ConditionPolicyApplied, metav1.ConditionTrue, "Applied", "", 2),
					condition(v1alpha1.ConditionReady, metav1.ConditionFalse, "EnginesNotReady", "1 of 3 engines ready", 2)}}
		})
		log.await(t, "engines 1/3 ready, router 0/1 ready, policy applied, Ready=False EnginesNotReady")
		select {
		case err := <-errc:
			t.Fatalf("the wait ended before Ready: %v\n%s", err, log.String())
		default:
		}
		setStatus(t, env.Client, key, func(s *v1alpha1.LLMService) {
			s.Status.ReadyReplicas, s.Status.RouterReadyReplicas, s.Status.URL = 3, 1, "http://chat-router.team-a.svc:8000"
			meta.SetStatusCondition(&s.Status.Conditions, condition(v1alpha1.ConditionReady, metav1.ConditionTrue, "Ready", "", 2))
		})
		if err := <-errc; err != nil {
			t.Fatalf("%v\n%s", err, log.String())
		}
		for _, want := range []string{"4 spec changes", "llmservice.servelab.io/chat configured", "engines 3/3 ready, router 1/1 ready, policy applied"} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("no %q in:\n%s", want, log.String())
			}
		}
		if strings.Contains(log.String(), "engines 3/3 ready, router 0/1") {
			t.Errorf("the old generation's status was reported:\n%s", log.String())
		}
		if out.String() != "http://chat-router.team-a.svc:8000\n" {
			t.Errorf("stdout %q, want the URL", out.String())
		}
	})

	t.Run("the same deploy again changes nothing", func(t *testing.T) {
		var out, log bytes.Buffer
		o := opts("router/llm-d.yaml / lfu")
		o.Wait, o.Out, o.Log = true, &out, &log
		if err := Run(ctx, o); err != nil {
			t.Fatalf("%v\n%s", err, log.String())
		}
		for _, want := range []string{"spec unchanged", "chat unchanged"} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("no %q in:\n%s", want, log.String())
			}
		}
	})

	t.Run("the wait fails fast when the controller refuses the spec", func(t *testing.T) {
		log := newLines()
		o := opts("round-robin / lru")
		o.Wait, o.Timeout, o.Out, o.Log = true, 10*time.Minute, &bytes.Buffer{}, log
		errc := make(chan error, 1)
		go func() { errc <- Run(ctx, o) }()
		log.await(t, "waiting for the controller to observe generation 3")
		setStatus(t, env.Client, key, func(s *v1alpha1.LLMService) {
			s.Status.ObservedGeneration = 3
			s.Status.Conditions = []metav1.Condition{
				condition(v1alpha1.ConditionPolicyApplied, metav1.ConditionFalse, "InvalidPolicy", "spec.router.policy: round-robin takes no parameters", 3),
				condition(v1alpha1.ConditionReady, metav1.ConditionFalse, "PolicyNotApplied", "", 3)}
		})
		select {
		case err := <-errc:
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "team-a/chat: the controller refused the spec (PolicyApplied=False, reason InvalidPolicy): spec.router.policy: round-robin takes no parameters") {
				t.Fatalf("error %v", err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("no failure a minute after InvalidPolicy:\n%s", log.String())
		}
		if !strings.Contains(log.String(), "PolicyApplied=False InvalidPolicy: spec.router.policy: round-robin takes no parameters") {
			t.Errorf("progress:\n%s", log.String())
		}
	})

	t.Run("the wait times out with the last status", func(t *testing.T) {
		var log bytes.Buffer
		_, err := Wait(ctx, env.Client, key, 4, WaitOptions{Timeout: 300 * time.Millisecond, Interval: 20 * time.Millisecond, Progress: &log})
		if err == nil || !strings.Contains(err.Error(), "team-a/chat not Ready after 300ms (last: waiting for the controller to observe generation 4") {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("kubeconfig from KUBECONFIG, context and namespace overrides", func(t *testing.T) {
		t.Setenv("KUBECONFIG", kcfg)
		for _, tc := range []struct {
			o      KubeOptions
			ns, cx string
		}{
			{KubeOptions{}, "default", "main"},
			{KubeOptions{Context: "team"}, "team-a", "team"},
			{KubeOptions{Context: "team", Namespace: "other"}, "other", "team"},
			{KubeOptions{Kubeconfig: kcfg, Namespace: "x"}, "x", "main"},
		} {
			k, err := LoadKube(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if k.Namespace != tc.ns || k.Context != tc.cx || k.Config.Host != env.Config.Host {
				t.Errorf("%+v: namespace %q context %q host %q", tc.o, k.Namespace, k.Context, k.Config.Host)
			}
		}
		if _, err := LoadKube(KubeOptions{Context: "nope"}); err == nil || !strings.Contains(err.Error(), `context "nope" does not exist`) {
			t.Errorf("unknown context: %v", err)
		}
	})
}

// Without a kubeconfig, an apply says how to get one; -o yaml needs none.
func TestNoCluster(t *testing.T) {
	dir, specDir := experiment(t)
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	t.Setenv("HOME", t.TempDir())
	o := Options{From: dir, Choose: ChooseOptions{Best: true}, Service: ServiceOptions{ModelURI: "file:///m", Dir: specDir},
		Out: &bytes.Buffer{}, Log: &bytes.Buffer{}}
	if err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "no cluster configured: give --kubeconfig or set KUBECONFIG") {
		t.Fatalf("error %v", err)
	}
	for _, mode := range []Options{{Output: "yaml"}, {DryRun: DryRunClient}} {
		var out bytes.Buffer
		o.Output, o.DryRun, o.Out = mode.Output, mode.DryRun, &out
		if err := Run(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		var svc v1alpha1.LLMService
		if err := yaml.UnmarshalStrict(out.Bytes(), &svc); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		if svc.Name != "deploy-test-1" || svc.Namespace != "" || svc.Spec.Source == nil || strings.Contains(out.String(), "status") {
			t.Errorf("printed:\n%s", out.String())
		}
	}
}

// What the wait makes of a status: the progress line, Ready, and the reasons that end it.
func TestProgress(t *testing.T) {
	svc := func(gen int64, conds ...metav1.Condition) *v1alpha1.LLMService {
		s := &v1alpha1.LLMService{}
		s.Name, s.Namespace = "chat", "ml"
		s.Spec.Replicas = ptr.To[int32](2)
		s.Status = v1alpha1.LLMServiceStatus{ObservedGeneration: gen, ReadyReplicas: 1, Conditions: conds}
		return s
	}
	pa := func(status metav1.ConditionStatus, reason string, gen int64) metav1.Condition {
		return condition(v1alpha1.ConditionPolicyApplied, status, reason, "because", gen)
	}
	ready := condition(v1alpha1.ConditionReady, metav1.ConditionTrue, "Ready", "", 2)
	for _, tc := range []struct {
		name    string
		svc     *v1alpha1.LLMService
		line    string
		ready   bool
		refused bool
	}{
		{"not observed yet", svc(1, ready), "waiting for the controller to observe generation 2 (status is of 1)", false, false},
		{"ready", svc(2, pa(metav1.ConditionTrue, "Applied", 2), ready), "engines 1/2 ready, router 0/1 ready, policy applied", true, false},
		{"a stale Ready condition", svc(2, condition(v1alpha1.ConditionReady, metav1.ConditionTrue, "Ready", "", 1)), "engines 1/2 ready, router 0/1 ready, policy not yet applied", false, false},
		{"InvalidPolicy", svc(2, pa(metav1.ConditionFalse, "InvalidPolicy", 2)), "engines 1/2 ready, router 0/1 ready, PolicyApplied=False InvalidPolicy: because", false, true},
		{"InvalidArgs", svc(2, pa(metav1.ConditionFalse, "InvalidArgs", 2)), "engines 1/2 ready, router 0/1 ready, PolicyApplied=False InvalidArgs: because", false, true},
		{"InvalidModel", svc(2, pa(metav1.ConditionFalse, "InvalidModel", 2)), "engines 1/2 ready, router 0/1 ready, PolicyApplied=False InvalidModel: because", false, true},
		{"a ConfigMap not there yet", svc(2, pa(metav1.ConditionFalse, "ConfigMapNotFound", 2)), "engines 1/2 ready, router 0/1 ready, PolicyApplied=False ConfigMapNotFound: because", false, false},
		{"a refusal of the old generation", svc(2, pa(metav1.ConditionFalse, "InvalidPolicy", 1)), "engines 1/2 ready, router 0/1 ready, policy not yet applied", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line, ready, err := progress(tc.svc, 2)
			if line != tc.line || ready != tc.ready || errors.Is(err, ErrRefused) != tc.refused {
				t.Errorf("got %q, ready %v, error %v", line, ready, err)
			}
		})
	}
}

// A changed multi-line value (an EndpointPickerConfig) shows its changed lines.
func TestDiffSpecs(t *testing.T) {
	a := v1alpha1.LLMServiceSpec{Router: v1alpha1.RouterSpec{EndpointPickerConfig: "kind: EndpointPickerConfig\nweight: 2\nname: x\n"},
		WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: ptr.To[int32](2), Template: v1alpha1.EngineTemplate{Args: []string{"--block-size=32"}}}}
	b := v1alpha1.LLMServiceSpec{WorkloadSpec: v1alpha1.WorkloadSpec{Replicas: ptr.To[int32](3)}, Router: v1alpha1.RouterSpec{EndpointPickerConfig: "kind: EndpointPickerConfig\nweight: 3\nname: x\n"}}
	want := []string{
		"~ spec.replicas: 2 → 3",
		"~ spec.router.endpointPickerConfig:",
		"    - weight: 2",
		"    + weight: 3",
		`- spec.template.args[0]: "--block-size=32"`,
	}
	if diff := cmp.Diff(want, DiffSpecs(&a, &b)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := DiffSpecs(&a, &a); len(got) != 0 {
		t.Errorf("a spec against itself: %q", got)
	}
}
