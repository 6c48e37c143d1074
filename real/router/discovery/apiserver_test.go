package discovery_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"servelab/internal/k8stest"
	"servelab/policies"
	"servelab/policies/route"
	"servelab/real/router"
	"servelab/real/router/discovery"
	"servelab/serving"
)

// engine is a stub engine on loopback: vLLM's gauges on /metrics (waiting settable) and a
// completion naming it.
type engine struct {
	*httptest.Server
	name    string
	port    int
	mu      sync.Mutex
	waiting int
}

func newEngine(t *testing.T, name string) *engine {
	t.Helper()
	e := &engine{name: name}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		e.mu.Lock()
		defer e.mu.Unlock()
		fmt.Fprintf(w, "vllm:num_requests_waiting{model_name=\"m\"} %d\nvllm:num_requests_running{model_name=\"m\"} 0\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.1\n", e.waiting)
	})
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"from":%q}`, name)
	})
	e.Server = httptest.NewServer(mux)
	t.Cleanup(e.Close)
	e.port = e.Listener.Addr().(*net.TCPAddr).Port
	return e
}

func (e *engine) setWaiting(n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.waiting = n
}

// cluster is a namespace for engine pods on an API server.
type cluster struct {
	t      *testing.T
	config *rest.Config
	cs     *kubernetes.Clientset
	ns     string
}

func newCluster(t *testing.T, env *k8stest.Env, ns string) *cluster {
	t.Helper()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, config: env.Config, cs: cs, ns: ns}
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No controller-manager runs to make the namespace's default service account, which
	// the ServiceAccount admission plugin wants before it admits a pod.
	if _, err := cs.CoreV1().ServiceAccounts(c.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return c
}

// createPod creates an engine pod bound to a (nonexistent) node, so that deleting it is
// graceful, as on a real cluster: it stays, terminating, until deleted with no grace.
// No kubelet runs, so the test sets its status: IP 127.0.0.1, Ready as given.
func (c *cluster) createPod(name string, labels map[string]string, port int, ready bool) {
	c.t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels,
			Annotations: map[string]string{discovery.ActivePortsAnnotation: strconv.Itoa(port)}},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{
			Name: "engine", Image: "servelab:latest", Ports: []corev1.ContainerPort{{ContainerPort: int32(port)}},
		}}},
	}
	if _, err := c.cs.CoreV1().Pods(c.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
	c.setReady(name, ready)
}

func (c *cluster) setReady(name string, ready bool) {
	c.t.Helper()
	ctx := context.Background()
	p, err := c.cs.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP, p.Status.PodIPs = "127.0.0.1", []corev1.PodIP{{IP: "127.0.0.1"}}
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()},
		{Type: corev1.PodReady, Status: status, LastTransitionTime: metav1.Now()},
	}
	if _, err := c.cs.CoreV1().Pods(c.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) relabel(name string, labels map[string]string) {
	c.t.Helper()
	ctx := context.Background()
	p, err := c.cs.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	p.Labels = labels
	if _, err := c.cs.CoreV1().Pods(c.ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) deletePod(name string, grace int64) {
	c.t.Helper()
	if err := c.cs.CoreV1().Pods(c.ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		c.t.Fatal(err)
	}
}

// eventually polls cond until it holds or 30 s pass (an API server on a loaded machine).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// served posts a completion through the router and says which engine answered, checked
// against the endpoint header.
func served(t *testing.T, url string, engines ...*engine) string {
	t.Helper()
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hello"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.Status
	}
	var from struct{ From string }
	if err := json.Unmarshal(body, &from); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	for _, e := range engines {
		if e.name == from.From && resp.Header.Get(serving.ServedEndpointHeader) != e.Listener.Addr().String() {
			t.Errorf("%s answered, header %s names %q", e.name, serving.ServedEndpointHeader, resp.Header.Get(serving.ServedEndpointHeader))
		}
	}
	return from.From
}

func url(e *engine) string { return fmt.Sprintf("http://127.0.0.1:%d", e.port) }

// TestOnAPIServer runs the discovery tests on one API server (starting one takes seconds),
// each in a namespace of its own.
func TestOnAPIServer(t *testing.T) {
	env := k8stest.Start(t)
	t.Run("RouterFollowsPods", func(t *testing.T) { testRouterFollowsPods(t, env) })
	t.Run("StartNeedsRBAC", func(t *testing.T) { testStartNeedsRBAC(t, env) })
}

// testRouterFollowsPods runs the router over pods on a real API server: it routes to the
// ready pods its selector picks, with the same policy over the views it scrapes, drops a
// pod that becomes unready, terminates, is deleted or stops matching, and picks up new
// ones.
func testRouterFollowsPods(t *testing.T, env *k8stest.Env) {
	c := newCluster(t, env, "follow")
	a, b, d := newEngine(t, "a"), newEngine(t, "b"), newEngine(t, "d")
	other := newEngine(t, "other")
	engineLabels := map[string]string{"app": "engine", "pool": "p1"}

	p, err := route.Parse("least-request", policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := router.New(router.Config{Policy: p, ScrapeInterval: 5 * time.Millisecond, Registry: reg, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)

	// a is ready before the router starts; b is not ready yet; "other" is ready but not
	// selected.
	c.createPod("a", engineLabels, a.port, true)
	c.createPod("b", engineLabels, b.port, false)
	c.createPod("other", map[string]string{"app": "engine", "pool": "p2"}, other.port, true)

	sel, err := discovery.ParseSelector("app=engine,pool in (p1)")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := discovery.Start(ctx, discovery.Config{
		Client: c.cs, Namespace: c.ns, Selector: sel,
		TargetPorts: []int{a.port, b.port, d.port, other.port}, Logf: t.Logf,
	}, r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)

	// Start returns with the first list applied.
	if diff := cmp.Diff([]string{url(a)}, r.Endpoints()); diff != "" {
		t.Fatalf("endpoints after Start (-want +got):\n%s", diff)
	}
	healthy := func(n int) func() bool {
		return func() bool { return testutilGauge(t, reg, "servelab_router_healthy_endpoints") == float64(n) }
	}
	eventually(t, "a healthy", healthy(1))
	if got := served(t, srv.URL, a, b, d); got != "a" {
		t.Errorf("with only a ready, %s answered", got)
	}

	steps := []struct {
		name   string
		change func()
		want   []string // the router's endpoints
		// loads (waiting) to scrape, and who least-request must then pick
		loads map[*engine]int
		pick  string
	}{
		{"b becomes ready", func() { c.setReady("b", true) }, []string{url(a), url(b)},
			map[*engine]int{a: 3, b: 0}, "b"},
		{"the scraped loads turn", func() {}, []string{url(a), url(b)},
			map[*engine]int{a: 0, b: 4}, "a"},
		{"a becomes unready", func() { c.setReady("a", false) }, []string{url(b)},
			map[*engine]int{b: 4}, "b"},
		{"d is created ready", func() { c.createPod("d", engineLabels, d.port, true) }, []string{url(d), url(b)},
			map[*engine]int{b: 4, d: 1}, "d"},
		{"b is terminating", func() { c.deletePod("b", 30) }, []string{url(d)},
			map[*engine]int{d: 1}, "d"},
		{"a is ready again", func() { c.setReady("a", true) }, []string{url(d), url(a)},
			map[*engine]int{a: 0, d: 1}, "a"},
		{"a is deleted", func() { c.deletePod("a", 0) }, []string{url(d)},
			map[*engine]int{d: 1}, "d"},
		{"d leaves the pool", func() { c.relabel("d", map[string]string{"app": "engine", "pool": "p2"}) }, []string{},
			nil, "503 Service Unavailable"},
	}
	for _, step := range steps {
		step.change()
		eventually(t, step.name+": endpoints "+strings.Join(step.want, " "), func() bool {
			return cmp.Equal(step.want, r.Endpoints())
		})
		for e, n := range step.loads {
			e.setWaiting(n)
		}
		eventually(t, step.name+": the loads scraped", func() bool { return routerSees(r, step.loads) })
		for range 3 {
			if got := served(t, srv.URL, a, b, d); got != step.pick {
				t.Errorf("%s: %s answered, want %s (least-request over the scraped loads)", step.name, got, step.pick)
			}
		}
	}
	// The router's own /metrics: decisions counted by endpoint, for the endpoints it has.
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "servelab_router_healthy_endpoints 0") {
		t.Errorf("router /metrics after every pod left:\n%s", metrics)
	}
}

// routerSees reports whether the router's views are of exactly the engines in loads, each
// healthy with the waiting count given, scraped from its /metrics.
func routerSees(r *router.Router, loads map[*engine]int) bool {
	views := r.Views()
	if len(views) != len(loads) {
		return false
	}
	for e, n := range loads {
		v, ok := views[url(e)]
		if !ok || v.Waiting != n {
			return false
		}
	}
	return true
}

func testutilGauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// testStartNeedsRBAC: as a service account without access to pods, Start fails naming
// the permission; with a Role granting get, list and watch on pods (the README's), it
// works.
func testStartNeedsRBAC(t *testing.T, env *k8stest.Env) {
	c := newCluster(t, env, "rbac")
	as := rest.CopyConfig(c.config)
	as.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + c.ns + ":router"}
	cs, err := kubernetes.NewForConfig(as)
	if err != nil {
		t.Fatal(err)
	}
	sel, _ := discovery.ParseSelector("app=engine")
	cfg := discovery.Config{Client: cs, Namespace: c.ns, Selector: sel, TargetPorts: []int{8000}, Logf: t.Logf}
	r, err := router.New(router.Config{Policy: &route.RoundRobin{}, Registry: prometheus.NewRegistry(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if w, err := discovery.Start(ctx, cfg, r); err == nil {
		w.Stop()
		t.Fatal("Start without access to pods succeeded")
	} else if !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "get, list and watch on pods") {
		t.Errorf("Start without access to pods: %v; want the API server's refusal and the permission needed", err)
	}

	bg := context.Background()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "servelab-router"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
	}}
	if _, err := c.cs.RbacV1().Roles(c.ns).Create(bg, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "servelab-router"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "servelab-router"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "router", Namespace: c.ns}},
	}
	if _, err := c.cs.RbacV1().RoleBindings(c.ns).Create(bg, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.createPod("e", map[string]string{"app": "engine"}, 8000, true)
	ctx2, cancel2 := context.WithTimeout(bg, time.Minute)
	defer cancel2()
	w, err := discovery.Start(ctx2, cfg, r)
	if err != nil {
		t.Fatalf("Start with the Role: %v", err)
	}
	defer w.Stop()
	if diff := cmp.Diff([]string{"http://127.0.0.1:8000"}, r.Endpoints()); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
}
