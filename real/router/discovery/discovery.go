// Package discovery keeps a router's endpoints to the ready pods that a label selector
// picks in a namespace, as the Gateway API Inference Extension's endpoint picker does in
// its standalone mode (flags --pool-namespace, --endpoint-selector and
// --endpoint-target-ports, GIE cmd/epp/runner/options.go): a pod informer, list and watch
// filtered by the selector on the API server, and on every change the set of ready pods'
// podIP:targetPort endpoints handed to the router, which adds and removes endpoints
// (router.SetEndpoints). It needs get, list and watch on pods in the namespace.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"servelab/policies/route"
)

// ActivePortsAnnotation on a pod names which of the target ports it serves (comma
// separated); without it a pod serves them all. GIE's annotation of the same name and
// meaning (pkg/epp/util/pod/pod.go).
const ActivePortsAnnotation = "inference.networking.k8s.io/active-ports"

// Target receives the endpoint set; *router.Router is one. An endpoint of a pod with
// llm-d's role label (route.RoleLabel, llm-d.ai/role) is ROLE=URL, as router.ParseEndpoint
// reads it.
type Target interface {
	SetEndpoints(urls []string) error
}

// Config says which pods to route to.
type Config struct {
	Client kubernetes.Interface
	// Namespace is the pods' namespace (GIE's --pool-namespace).
	Namespace string
	// Selector picks the engine pods (GIE's --endpoint-selector); it must select something
	// narrower than every pod.
	Selector labels.Selector
	// TargetPorts are the ports the engines serve on each pod (GIE's
	// --endpoint-target-ports); each ready pod is an endpoint per port, as GIE's data-parallel
	// ranks are.
	TargetPorts []int
	// Scheme of the endpoints' URLs; "" means http.
	Scheme string
	// Logf receives pods becoming endpoints and ceasing to be, and list/watch errors (once
	// per cause); nil discards them.
	Logf func(format string, args ...any)
}

// Watcher follows the pods until Stop.
type Watcher struct {
	cfg    Config
	target Target
	lister listerscorev1.PodNamespaceLister
	kick   chan struct{} // a change to sync; one pending kick covers any number of events
	stop   context.CancelFunc
	done   sync.WaitGroup

	mu       sync.Mutex
	last     []string          // the endpoint set last given to the target
	podState map[string]string // pod name -> its endpoints, or why it has none, as last logged
	watchErr string            // the last list/watch error logged
}

// ParseSelector parses a label selector in kubectl's syntax (equality-based "app=vllm,
// env!=dev", set-based "tier in (a,b)", existence "key,!key"); an empty or
// everything-selecting one is refused, as it would route to every pod in the namespace.
func ParseSelector(s string) (labels.Selector, error) {
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("endpoint selector %q: %w", s, err)
	}
	if sel.Empty() {
		return nil, fmt.Errorf("endpoint selector %q selects every pod in the namespace; give the engine pods' labels, e.g. app=vllm", s)
	}
	return sel, nil
}

// ParsePorts parses GIE's --endpoint-target-ports: a comma-separated list of ports.
func ParsePorts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("endpoint target ports %q: %q is not a port number in [1, 65535]", s, f)
		}
		if slices.Contains(out, p) {
			return nil, fmt.Errorf("endpoint target ports %q: port %d given twice", s, p)
		}
		out = append(out, p)
	}
	return out, nil
}

// Ready reports whether the pod should receive requests: its Ready condition is true and
// it is not being deleted (GIE's IsPodReady, pkg/epp/util/pod/pod.go), and it has an IP.
func Ready(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || pod.Status.PodIP == "" {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Endpoints are the pod's endpoint URLs: one per target port it serves (all of them, or
// those ActivePortsAnnotation names), in TargetPorts order; none unless Ready. A pod
// labelled with an llm-d role (llm-d.ai/role: prefill, decode, both or prefill-decode)
// gives ROLE=URL, as llm-d's role filters read the label; a pod whose role is none of
// those (an encode pod) gives none.
func Endpoints(pod *corev1.Pod, scheme string, targetPorts []int) []string {
	if !Ready(pod) {
		return nil
	}
	role, labelled := pod.Labels[route.RoleLabel]
	if labelled && !slices.Contains(route.Roles, role) {
		return nil
	}
	prefix := ""
	if labelled {
		prefix = role + "="
	}
	if scheme == "" {
		scheme = "http"
	}
	active, annotated := pod.Annotations[ActivePortsAnnotation]
	var out []string
	for _, p := range targetPorts {
		if annotated && !portListed(active, p) {
			continue
		}
		out = append(out, prefix+scheme+"://"+net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(p)))
	}
	return out
}

func portListed(list string, port int) bool {
	for f := range strings.SplitSeq(list, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n == port {
			return true
		}
	}
	return false
}

// Start lists the pods, gives the target the ready ones' endpoints, and follows changes
// until Stop. ctx bounds only the first list: Start fails if the pods cannot be listed
// before it ends (naming the last error, e.g. a missing RBAC permission).
func Start(ctx context.Context, cfg Config, target Target) (*Watcher, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("discovery: no Kubernetes client")
	case cfg.Namespace == "":
		return nil, errors.New("discovery: no namespace")
	case cfg.Selector == nil || cfg.Selector.Empty():
		return nil, errors.New("discovery: the endpoint selector selects every pod; give the engine pods' labels")
	case len(cfg.TargetPorts) == 0:
		return nil, errors.New("discovery: no target ports")
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	selector := cfg.Selector.String()
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	pods := factory.Core().V1().Pods()
	informer := pods.Informer()
	runCtx, stop := context.WithCancel(context.Background())
	w := &Watcher{
		cfg: cfg, target: target, lister: pods.Lister().Pods(cfg.Namespace),
		kick: make(chan struct{}, 1), stop: stop, podState: map[string]string{},
	}
	if err := informer.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		w.watchError(err)
	}); err != nil {
		stop()
		return nil, err
	}
	kick := func() {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { kick() },
		UpdateFunc: func(any, any) { kick() },
		DeleteFunc: func(any) { kick() },
	}); err != nil {
		stop()
		return nil, err
	}
	factory.Start(runCtx.Done())
	w.done.Add(1)
	go func() { defer w.done.Done(); factory.Shutdown() }() // returns once runCtx ends and the informer stopped
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		w.Stop()
		w.mu.Lock()
		last := w.watchErr
		w.mu.Unlock()
		if last == "" {
			last = ctx.Err().Error()
		}
		return nil, fmt.Errorf("discovery: listing pods %q in namespace %s: %s (the router needs get, list and watch on pods there)", selector, cfg.Namespace, last)
	}
	w.sync()
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-w.kick:
				w.sync()
			}
		}
	}()
	return w, nil
}

// Stop stops following the pods; the target keeps the endpoints it has.
func (w *Watcher) Stop() {
	w.stop()
	w.done.Wait()
}

// watchError logs a list/watch failure once per cause.
func (w *Watcher) watchError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if msg := err.Error(); msg != w.watchErr {
		w.watchErr = msg
		w.cfg.Logf("discovery: watching pods %q in namespace %s: %s", w.cfg.Selector, w.cfg.Namespace, msg)
	}
}

// sync gives the target the ready pods' endpoints; pods are taken in name order, so the
// endpoints of pods ready together get indexes in that order.
func (w *Watcher) sync() {
	pods, err := w.lister.List(w.cfg.Selector)
	if err != nil {
		w.cfg.Logf("discovery: listing pods from the informer's cache: %v", err)
		return
	}
	slices.SortFunc(pods, func(a, b *corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	var urls []string
	state := make(map[string]string, len(pods))
	for _, p := range pods {
		eps := Endpoints(p, w.cfg.Scheme, w.cfg.TargetPorts)
		urls = append(urls, eps...)
		state[p.Name] = describe(p, eps)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range pods {
		if s := state[p.Name]; w.podState[p.Name] != s {
			w.cfg.Logf("discovery: pod %s/%s: %s", w.cfg.Namespace, p.Name, s)
		}
	}
	var gone []string
	for name := range w.podState {
		if _, ok := state[name]; !ok {
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	for _, name := range gone {
		w.cfg.Logf("discovery: pod %s/%s: deleted or no longer selected", w.cfg.Namespace, name)
	}
	w.podState = state
	if slices.Equal(urls, w.last) && w.last != nil {
		return
	}
	if err := w.target.SetEndpoints(urls); err != nil {
		w.cfg.Logf("discovery: %v", err)
		return
	}
	w.last = append([]string{}, urls...)
}

// describe says why a pod is or is not routed to, for the log.
func describe(p *corev1.Pod, eps []string) string {
	switch {
	case len(eps) > 0:
		return "ready, routing to " + strings.Join(eps, ", ")
	case p.DeletionTimestamp != nil:
		return "terminating, no longer routed to"
	case p.Status.PodIP == "":
		return "not routed to: no pod IP yet"
	case !Ready(p):
		return "not routed to: not ready"
	case p.Labels[route.RoleLabel] != "" && !slices.Contains(route.Roles, p.Labels[route.RoleLabel]):
		return fmt.Sprintf("not routed to: its %s %q is none of %s", route.RoleLabel, p.Labels[route.RoleLabel], strings.Join(route.Roles, ", "))
	}
	return fmt.Sprintf("not routed to: none of its %s ports %q is a target port", ActivePortsAnnotation, p.Annotations[ActivePortsAnnotation])
}

// Current returns the endpoint set last given to the target.
func (w *Watcher) Current() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.last...)
}

// Namespace is the namespace whose pods are followed.
func (w *Watcher) Namespace() string { return w.cfg.Namespace }
