package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"servelab/internal/k8stest"
	"servelab/real/router/discovery"
)

func TestRouterDiscoveryFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"neither", nil, "no engines: give --endpoints"},
		{"both", []string{"--endpoints", "http://127.0.0.1:1", "--endpoint-selector", "app=vllm", "--endpoint-target-ports", "8000"},
			"--endpoints and --endpoint-selector are mutually exclusive"},
		{"no ports", []string{"--endpoint-selector", "app=vllm"}, "--endpoint-selector needs --endpoint-target-ports"},
		{"namespace without a selector", []string{"--endpoints", "http://127.0.0.1:1", "--pool-namespace", "ns"},
			"--pool-namespace is for discovery and needs --endpoint-selector"},
		{"ports without a selector", []string{"--endpoints", "http://127.0.0.1:1", "--endpoint-target-ports", "8000"},
			"--endpoint-target-ports is for discovery and needs --endpoint-selector"},
		{"bad selector", []string{"--endpoint-selector", "app in", "--endpoint-target-ports", "8000"}, `--endpoint-selector: endpoint selector "app in"`},
		{"empty selector", []string{"--endpoint-selector", " ", "--endpoint-target-ports", "8000"}, "selects every pod"},
		{"bad port", []string{"--endpoint-selector", "app=vllm", "--endpoint-target-ports", "8000,http"}, `--endpoint-target-ports: endpoint target ports "8000,http": "http" is not a port number`},
		{"missing kubeconfig", []string{"--endpoint-selector", "app=vllm", "--endpoint-target-ports", "8000", "--kubeconfig", "/nonexistent/kubeconfig"},
			"/nonexistent/kubeconfig"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, append([]string{"router", "--port", "0"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("servelab router %s: %v; want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
			}
		})
	}
}

// writeKubeconfig writes a kubeconfig for the API server cfg reaches, its context's
// namespace ns.
func routerTestKubeconfig(t *testing.T, cfg *rest.Config, ns string) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test", Namespace: ns}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRouterDiscoversEnginePods runs `servelab router --endpoint-selector` against a real
// API server whose pods are two real engines on loopback: the router finds them from the
// kubeconfig (its context's namespace), follows their KV events so that repeats of a long
// prompt stay on the engine that cached it (the precise prefix-cache scorer, as over
// --endpoints), and stops routing to a pod that becomes unready.
func TestRouterDiscoversEnginePods(t *testing.T) {
	env := k8stest.Start(t)
	t.Setenv("NAMESPACE", "")
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const ns = "engines"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := synthTiny(t)
	urls := []string{startEngine(t, dir), startEngine(t, dir)}
	var ports []string
	for i, u := range urls {
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
		ports = append(ports, port)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "engine-" + strconv.Itoa(i), Labels: map[string]string{"app": "servelab-engine"},
				Annotations: map[string]string{discovery.ActivePortsAnnotation: port}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "engine", Image: "servelab:latest"}}},
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		setEnginePodReady(t, cs, ns, pod.Name, true)
	}

	cmdCtx, stop := context.WithCancel(ctx)
	var out syncBuffer
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"router", "--port", "0", "--kubeconfig", routerTestKubeconfig(t, env.Config, ns),
		"--endpoint-selector", "app=servelab-engine", "--endpoint-target-ports", strings.Join(ports, ","),
		"--router", "weighted:precise-prefix=10,queue=1,kv=1,prefix=0", "--scrape-interval", "10ms", "--model", dir})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(cmdCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("servelab router: %v", err)
		}
	}()

	listening := regexp.MustCompile(`servelab router: 2 endpoints from ready pods "app=servelab-engine" in namespace engines, .* listening on (http://\S+)`)
	var url string
	waitFor(t, "the router to listen", 30*time.Second, func() bool {
		select {
		case err := <-done:
			t.Fatalf("servelab router ended: %v\n%s", err, out.String())
		default:
		}
		m := listening.FindStringSubmatch(out.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	}, &out)
	waitFor(t, "both engines healthy", 30*time.Second, func() bool {
		return strings.Contains(routerTestGet(t, url+"/metrics"), "servelab_router_healthy_endpoints 2")
	}, &out)

	prompt := strings.Repeat("The engine answers one token at a time and keeps its cache. ", 6)
	body := `{"prompt":"` + prompt + `","max_tokens":2,"temperature":0}`
	post := func() (int, string) {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("x-gateway-destination-endpoint-served")
	}
	// The repeats are routed on the engines' KV events: rather than sleep a guessed while
	// for them, the test follows them through the router's count of the batches it has
	// applied (its lag histogram's). A batch counts there only when it reaches a live
	// subscription, not in a snapshot, so first each engine is sent prompts of its own
	// until one of their batches is counted: then both subscriptions are live.
	for j, u := range urls {
		for i, deadline := 0, time.Now().Add(30*time.Second); ; i++ {
			n := kvBatches(t, url)
			warm := fmt.Sprintf(`{"prompt":"Warm-up %d of engine %d: %s","max_tokens":1}`, i, j, strings.Repeat("a prompt of its own, several blocks long, before the test begins. ", 4))
			resp, err := http.Post(u+"/v1/completions", "application/json", strings.NewReader(warm))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if waitUntil(time.Second, func() bool { return kvBatches(t, url) > n }) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no KV-event batch of engine %s reached the router within 30 s:\n%s", u, out.String())
			}
		}
	}
	served := map[string]int{}
	for i := range 6 {
		n := kvBatches(t, url)
		code, host := post()
		if code != http.StatusOK {
			t.Fatalf("request %d: %d", i, code)
		}
		served[host]++
		if i == 0 { // the prompt's blocks are new: the engine publishes them, the router applies them
			waitFor(t, "the first request's KV events at the router", 30*time.Second, func() bool { return kvBatches(t, url) > n }, &out)
		}
	}
	if len(served) != 1 {
		t.Errorf("repeats of a cached prompt were split between the engines: %v", served)
	}

	// The engine that served them becomes unready: the rest go to the other.
	var hot string
	for h := range served {
		hot = h
	}
	other := strings.TrimPrefix(urls[0], "http://")
	hotPod := "engine-1"
	if other == hot {
		other, hotPod = strings.TrimPrefix(urls[1], "http://"), "engine-0"
	}
	setEnginePodReady(t, cs, ns, hotPod, false)
	waitFor(t, "the unready pod dropped", 30*time.Second, func() bool {
		return strings.Contains(routerTestGet(t, url+"/metrics"), "servelab_router_healthy_endpoints 1")
	}, &out)
	for i := range 3 {
		if code, host := post(); code != http.StatusOK || host != other {
			t.Errorf("request %d after %s became unready: %d from %q, want %s", i, hotPod, code, host, other)
		}
	}
	if !strings.Contains(out.String(), "discovery: pod engines/"+hotPod+": not routed to: not ready") {
		t.Errorf("no log line on %s becoming unready:\n%s", hotPod, out.String())
	}
}

func setEnginePodReady(t *testing.T, cs kubernetes.Interface, ns, name string, ready bool) {
	t.Helper()
	ctx := context.Background()
	p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP, p.Status.PodIPs = "127.0.0.1", []corev1.PodIP{{IP: "127.0.0.1"}}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status, LastTransitionTime: metav1.Now()}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// kvBatches is how many KV-event batches, snapshots aside, the router at url has applied.
func kvBatches(t *testing.T, url string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^servelab_router_kv_event_lag_seconds_count (\d+)$`).FindStringSubmatch(routerTestGet(t, url+"/metrics"))
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// waitUntil polls cond for up to d and says whether it came to hold.
func waitUntil(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func routerTestGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
