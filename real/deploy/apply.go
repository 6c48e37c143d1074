package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"servelab/api/v1alpha1"
)

// FieldManager is the field manager of servelab deploy's server-side applies: the fields
// it sets are servelab's, and a second deploy takes them back (force) from whoever
// edited them since.
const FieldManager = "servelab"

// KubeOptions find the cluster as kubectl does: --kubeconfig, else $KUBECONFIG (a list of
// files, merged), else ~/.kube/config; --context, else the current context; -n, else the
// context's namespace, else "default".
type KubeOptions struct {
	Kubeconfig string
	Context    string
	Namespace  string
}

// Kube is a cluster to deploy to.
type Kube struct {
	Config *rest.Config
	// Namespace is the namespace the options and the kubeconfig name.
	Namespace string
	// Context names the kubeconfig context used, for messages.
	Context string
}

// LoadKube reads the kubeconfig with client-go's loading rules and the overrides kubectl's
// flags set. It contacts no server.
func LoadKube(o KubeOptions) (*Kube, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.Context}
	overrides.Context.Namespace = o.Namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, errors.New("no cluster configured: give --kubeconfig or set KUBECONFIG (or ~/.kube/config); 'servelab cluster up' writes one for a local cluster")
		}
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	raw, err := cc.RawConfig()
	ctxName := o.Context
	if err == nil && ctxName == "" {
		ctxName = raw.CurrentContext
	}
	cfg.UserAgent = "servelab-deploy"
	return &Kube{Config: cfg, Namespace: ns, Context: ctxName}, nil
}

// ApplyObject is the LLMService as servelab applies it: the fields it sets and nothing
// else (no status, no empty objects), so that it owns only those.
func ApplyObject(svc *v1alpha1.LLMService) (*unstructured.Unstructured, error) {
	js, err := json.Marshal(svc)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	delete(m, "status")
	prune(m)
	return &unstructured.Unstructured{Object: m}, nil
}

// YAML is the LLMService as 'kubectl apply -f' takes it.
func YAML(svc *v1alpha1.LLMService) ([]byte, error) {
	u, err := ApplyObject(svc)
	if err != nil {
		return nil, err
	}
	return yaml.Marshal(u.Object)
}

// prune removes null values and empty objects, which Go's JSON writes for zero structs.
func prune(m map[string]any) bool {
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			if prune(x) {
				delete(m, k)
			}
		case []any:
			for _, item := range x {
				if im, ok := item.(map[string]any); ok {
					prune(im)
				}
			}
		}
	}
	return len(m) == 0
}

// Applied is the result of an apply: the service before (nil when it did not exist) and
// after.
type Applied struct {
	Before, After *v1alpha1.LLMService
}

// Changes lists the spec fields the apply changed, one line each ("spec.router.policy:
// round-robin → least-request"); empty for a new service or when nothing changed.
func (a *Applied) Changes() []string {
	if a.Before == nil {
		return nil
	}
	return DiffSpecs(&a.Before.Spec, &a.After.Spec)
}

// Apply server-side applies svc with field manager servelab, forcing ownership of its
// fields. With dryRun the server runs the apply (defaults, validation, the merge with the
// object there) and stores nothing: After is what it would store.
func Apply(ctx context.Context, c client.Client, svc *v1alpha1.LLMService, dryRun bool) (*Applied, error) {
	key := client.ObjectKey{Namespace: svc.Namespace, Name: svc.Name}
	res := &Applied{}
	var before v1alpha1.LLMService
	switch err := c.Get(ctx, key, &before); {
	case err == nil:
		res.Before = &before
	case apierrors.IsNotFound(err):
	case meta.IsNoMatchError(err) || discoveryNotFound(err):
		return nil, fmt.Errorf("the cluster has no LLMService API (servelab.io/v1alpha1): install the CRD first (kubectl apply -k config/default, or -k config/crd): %w", err)
	default:
		return nil, fmt.Errorf("reading LLMService %s: %w", key, err)
	}
	u, err := ApplyObject(svc)
	if err != nil {
		return nil, err
	}
	opts := []client.ApplyOption{client.FieldOwner(FieldManager), client.ForceOwnership}
	if dryRun {
		opts = append(opts, client.DryRunAll)
	}
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), opts...); err != nil {
		return nil, fmt.Errorf("applying LLMService %s: %w", key, err)
	}
	var after v1alpha1.LLMService
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &after); err != nil {
		return nil, fmt.Errorf("reading the applied LLMService %s: %w", key, err)
	}
	res.After = &after
	return res, nil
}

func discoveryNotFound(err error) bool {
	return apierrors.IsNotFound(err) && strings.Contains(err.Error(), "the server could not find the requested resource")
}

// DiffSpecs lists the fields that differ between two specs, by JSON path, in path order.
// A multi-line string (an EndpointPickerConfig) shows its changed lines.
func DiffSpecs(a, b *v1alpha1.LLMServiceSpec) []string {
	fa, fb := flatten(a), flatten(b)
	keys := map[string]bool{}
	for k := range fa {
		keys[k] = true
	}
	for k := range fb {
		keys[k] = true
	}
	var paths []string
	for k := range keys {
		if !reflect.DeepEqual(fa[k], fb[k]) {
			paths = append(paths, k)
		}
	}
	sort.Strings(paths)
	var out []string
	for _, p := range paths {
		x, okA := fa[p]
		y, okB := fb[p]
		sx, _ := x.(string)
		sy, _ := y.(string)
		switch {
		case !okA:
			out = append(out, fmt.Sprintf("+ %s: %s", p, show(y)))
		case !okB:
			out = append(out, fmt.Sprintf("- %s: %s", p, show(x)))
		case strings.Contains(sx, "\n") || strings.Contains(sy, "\n"):
			out = append(out, "~ "+p+":")
			for _, l := range lineDiff(sx, sy) {
				out = append(out, "    "+l)
			}
		default:
			out = append(out, fmt.Sprintf("~ %s: %s → %s", p, show(x), show(y)))
		}
	}
	return out
}

// flatten maps each leaf of v's JSON to its path, "spec.template.args[0]".
func flatten(spec *v1alpha1.LLMServiceSpec) map[string]any {
	js, _ := json.Marshal(spec)
	var v any
	json.Unmarshal(js, &v)
	out := map[string]any{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range x {
				walk(path+"["+strconv.Itoa(i)+"]", e)
			}
		case nil:
		default:
			out[path] = x
		}
	}
	walk("spec", v)
	return out
}

func show(v any) string {
	if s, ok := v.(string); ok {
		if n := strings.Count(strings.TrimRight(s, "\n"), "\n") + 1; n > 1 {
			return fmt.Sprintf("(%d lines)", n)
		}
		return strconv.Quote(s)
	}
	js, _ := json.Marshal(v)
	return string(js)
}

// lineDiff is a minimal line diff of a and b (longest common subsequence), "- " and "+ "
// for removed and added lines, without the lines they share.
func lineDiff(a, b string) []string {
	x, y := strings.Split(strings.TrimRight(a, "\n"), "\n"), strings.Split(strings.TrimRight(b, "\n"), "\n")
	if a == "" {
		x = nil
	}
	if b == "" {
		y = nil
	}
	n, m := len(x), len(y)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && x[i] == y[j]:
			i, j = i+1, j+1
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, "- "+x[i])
			i++
		default:
			out = append(out, "+ "+y[j])
			j++
		}
	}
	return out
}

// WaitOptions control Wait.
type WaitOptions struct {
	// Timeout bounds the wait; 0 means 5 minutes.
	Timeout time.Duration
	// Interval is how often the status is read; 0 means 500 ms.
	Interval time.Duration
	// Progress receives a line each time the status changes; nil discards them.
	Progress io.Writer
}

// ErrRefused is wrapped by Wait's error when the controller refused the service's spec:
// PolicyApplied is False with one of RefusedReasons. Waiting cannot help; a new spec can.
var ErrRefused = errors.New("the controller refused the spec")

// RefusedReasons are PolicyApplied's reasons for a spec the controller will not deploy
// until it changes (real/controller's): a policy spec or EndpointPickerConfig that does not
// build, template args that are not the engine's or router's flags, a model URI that cannot
// be mounted. Others (a ConfigMap not there yet, a name taken) may resolve while waiting.
var RefusedReasons = []string{"InvalidPolicy", "InvalidArgs", "InvalidModel"}

// Wait polls the LLMService until the controller reports it Ready for the given
// generation (or later), printing a progress line whenever the status changes: engines
// ready of desired, router pods ready, and PolicyApplied's reason while it is not True. It
// fails at once when PolicyApplied is False with one of RefusedReasons (InvalidPolicy...),
// and after the timeout with the last status.
func Wait(ctx context.Context, c client.Client, key client.ObjectKey, generation int64, o WaitOptions) (*v1alpha1.LLMService, error) {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.Interval <= 0 {
		o.Interval = 500 * time.Millisecond
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	start := time.Now()
	deadline := start.Add(o.Timeout)
	last := ""
	report := func(line string) {
		if line != last {
			fmt.Fprintf(o.Progress, "[%5.1fs] %s\n", time.Since(start).Seconds(), line)
			last = line
		}
	}
	for {
		// Each read has its own deadline, not the wait's: a read cut short by the wait's
		// end (or the client's rate limiter refusing to wait past it) is not an error of
		// the service's. A failed read is reported and retried until the wait ends.
		var svc v1alpha1.LLMService
		rctx, cancel := context.WithTimeout(ctx, readTimeout)
		err := c.Get(rctx, key, &svc)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case apierrors.IsNotFound(err):
			return nil, fmt.Errorf("LLMService %s was deleted while waiting for it", key)
		case err != nil:
			report("reading the service: " + err.Error())
		default:
			line, ready, err := progress(&svc, generation)
			report(line)
			if err != nil {
				return &svc, err
			}
			if ready {
				return &svc, nil
			}
		}
		wait := min(o.Interval, time.Until(deadline))
		if wait <= 0 {
			return nil, timeoutError(key, o.Timeout, last)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// readTimeout bounds one read of the service while waiting.
const readTimeout = 30 * time.Second

func timeoutError(key client.ObjectKey, timeout time.Duration, last string) error {
	if last == "" {
		last = "no status read"
	}
	return fmt.Errorf("LLMService %s not Ready after %s (last: %s); 'kubectl describe llmservice -n %s %s' shows its conditions and events",
		key, timeout, last, key.Namespace, key.Name)
}

// progress describes the service's status, says whether it is Ready for the generation,
// and returns an error when it never will be (RefusedReasons).
func progress(svc *v1alpha1.LLMService, generation int64) (string, bool, error) {
	st := &svc.Status
	if st.ObservedGeneration < generation {
		return fmt.Sprintf("waiting for the controller to observe generation %d (status is of %d)", generation, st.ObservedGeneration), false, nil
	}
	fresh := func(t string) *metav1.Condition {
		c := meta.FindStatusCondition(st.Conditions, t)
		if c == nil || c.ObservedGeneration != 0 && c.ObservedGeneration < generation {
			return nil
		}
		return c
	}
	routers := int32(1)
	if r := svc.Spec.Router.Replicas; r != nil {
		routers = *r
	}
	desired := st.Replicas
	if desired == 0 && svc.Spec.Replicas != nil {
		desired = *svc.Spec.Replicas
	}
	parts := []string{
		fmt.Sprintf("engines %d/%d ready", st.ReadyReplicas, desired),
		fmt.Sprintf("router %d/%d ready", st.RouterReadyReplicas, routers),
	}
	pa := fresh(v1alpha1.ConditionPolicyApplied)
	switch {
	case pa == nil:
		parts = append(parts, "policy not yet applied")
	case pa.Status == metav1.ConditionTrue:
		parts = append(parts, "policy applied")
	default:
		parts = append(parts, fmt.Sprintf("PolicyApplied=%s %s: %s", pa.Status, pa.Reason, pa.Message))
	}
	r := fresh(v1alpha1.ConditionReady)
	if r != nil && r.Status != metav1.ConditionTrue && r.Reason != "" {
		parts = append(parts, "Ready="+string(r.Status)+" "+r.Reason)
	}
	line := strings.Join(parts, ", ")
	if pa != nil && pa.Status == metav1.ConditionFalse && slices.Contains(RefusedReasons, pa.Reason) {
		return line, false, fmt.Errorf("LLMService %s/%s: %w (PolicyApplied=False, reason %s): %s", svc.Namespace, svc.Name, ErrRefused, pa.Reason, pa.Message)
	}
	return line, r != nil && r.Status == metav1.ConditionTrue, nil
}

// Summary is a few lines saying what the service runs, for the command's output.
func Summary(svc *v1alpha1.LLMService) []string {
	s := &svc.Spec
	router := s.Router.Policy
	if s.Router.EndpointPickerConfig != "" {
		router = "EndpointPickerConfig (inline, " + strconv.Itoa(strings.Count(strings.TrimRight(s.Router.EndpointPickerConfig, "\n"), "\n")+1) + " lines)"
	}
	if router == "" {
		router = "round-robin (the router's default)"
	}
	replicas := "default"
	if s.Replicas != nil {
		replicas = strconv.Itoa(int(*s.Replicas))
	}
	lines := []string{
		fmt.Sprintf("model %s from %s, %s engines", s.Model.Name, s.Model.URI, replicas),
		fmt.Sprintf("router %s; batch %s; evict %s", router, orDefault(s.Batch, "vllm"), orDefault(s.Evict, "lru")),
	}
	if len(s.Template.Args) > 0 {
		lines = append(lines, "engine flags "+strings.Join(s.Template.Args, " "))
	}
	return slices.Clip(lines)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
