package cluster

import (
	"context"
	"fmt"
	"math"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// expand replaces $(NAME) in s with lookup(NAME) as Kubernetes expands a container's
// command, args and env values: "$$" is a literal "$" (so "$$(NAME)" stays "$(NAME)"), a
// reference to an undefined name stays as written, and a "$" not followed by "(" or "$"
// is left alone. (Semantics of k8s.io/kubernetes third_party/forked/golang/expansion.)
func expand(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString("$(")
				i++
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// envVar is one resolved variable, in the order the container's process gets them.
type envVar struct{ name, value string }

// podFacts are the values of the downward API the node knows once it has placed a pod.
type podFacts struct {
	podIP, hostIP string
	nodeAlloc     corev1.ResourceList // for resourceFieldRef without a limit
}

// resolveEnv computes a container's environment as the kubelet does: envFrom sources
// first (ConfigMaps and Secrets, with their prefix, skipping keys that are not valid
// variable names), then env in order, each value expanded against the variables defined
// before it; valueFrom reads the downward API (fieldRef: metadata.name, .namespace,
// .uid, .labels['k'], .annotations['k'], spec.nodeName, spec.serviceAccountName,
// status.podIP(s), status.hostIP(s); resourceFieldRef), ConfigMap and Secret keys.
func resolveEnv(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, c *corev1.Container, f podFacts) ([]envVar, error) {
	var out []envVar
	index := map[string]int{}
	set := func(k, v string) {
		if i, ok := index[k]; ok {
			out[i].value = v
			return
		}
		index[k] = len(out)
		out = append(out, envVar{k, v})
	}
	lookup := func(k string) (string, bool) {
		if i, ok := index[k]; ok {
			return out[i].value, true
		}
		return "", false
	}
	// The Services of the pod's namespace, as the kubelet's service links (below
	// everything else: env and envFrom override them, and values can refer to them).
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		svcs, err := serviceEnv(ctx, cs, pod.Namespace)
		if err != nil {
			return nil, err
		}
		for _, e := range svcs {
			set(e.name, e.value)
		}
	}
	for i, src := range c.EnvFrom {
		optional := func(p *bool) bool { return p != nil && *p }
		var data map[string]string
		switch {
		case src.ConfigMapRef != nil:
			cm, err := cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(src.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom[%d]: configmap %q: %w", i, src.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case src.SecretRef != nil:
			sec, err := cs.CoreV1().Secrets(pod.Namespace).Get(ctx, src.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(src.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom[%d]: secret %q: %w", i, src.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range sec.Data {
				data[k] = string(v)
			}
		default:
			continue
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if name := src.Prefix + k; envNameRE.MatchString(name) {
				set(name, data[k])
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, lookup))
			continue
		}
		v, err := valueFrom(ctx, cs, pod, c, e.ValueFrom, f)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if v != nil {
			set(e.Name, *v)
		}
	}
	return out, nil
}

// envNameRE is what the kubelet accepts as a variable name from envFrom (C identifiers
// and the relaxed form Kubernetes allows: printable ASCII except '=').
var envNameRE = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)

// fieldPathRE matches metadata.labels['key'] and metadata.annotations['key'].
var fieldPathRE = regexp.MustCompile(`^metadata\.(labels|annotations)\['(.+)'\]$`)

func valueFrom(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, c *corev1.Container, src *corev1.EnvVarSource, f podFacts) (*string, error) {
	str := func(s string) (*string, error) { return &s, nil }
	switch {
	case src.FieldRef != nil:
		switch p := src.FieldRef.FieldPath; p {
		case "metadata.name":
			return str(pod.Name)
		case "metadata.namespace":
			return str(pod.Namespace)
		case "metadata.uid":
			return str(string(pod.UID))
		case "spec.nodeName":
			return str(pod.Spec.NodeName)
		case "spec.serviceAccountName":
			return str(pod.Spec.ServiceAccountName)
		case "status.podIP", "status.podIPs":
			return str(f.podIP)
		case "status.hostIP", "status.hostIPs":
			return str(f.hostIP)
		case "metadata.labels", "metadata.annotations":
			m := pod.Labels
			if p == "metadata.annotations" {
				m = pod.Annotations
			}
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var lines []string
			for _, k := range keys {
				lines = append(lines, k+"="+strconv.Quote(m[k]))
			}
			return str(strings.Join(lines, "\n"))
		default:
			if m := fieldPathRE.FindStringSubmatch(p); m != nil {
				if m[1] == "labels" {
					return str(pod.Labels[m[2]])
				}
				return str(pod.Annotations[m[2]])
			}
			return nil, fmt.Errorf("fieldRef %q is not a field the downward API offers", p)
		}
	case src.ResourceFieldRef != nil:
		return resourceField(c, src.ResourceFieldRef, f.nodeAlloc)
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		cm, err := cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err == nil {
			if v, ok := cm.Data[ref.Key]; ok {
				return str(v)
			}
			err = fmt.Errorf("no key %q", ref.Key)
		}
		if ref.Optional != nil && *ref.Optional {
			return nil, nil
		}
		return nil, fmt.Errorf("configmap %q: %w", ref.Name, err)
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		sec, err := cs.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err == nil {
			if v, ok := sec.Data[ref.Key]; ok {
				return str(string(v))
			}
			err = fmt.Errorf("no key %q", ref.Key)
		}
		if ref.Optional != nil && *ref.Optional {
			return nil, nil
		}
		return nil, fmt.Errorf("secret %q: %w", ref.Name, err)
	}
	return nil, fmt.Errorf("valueFrom names no source")
}

// resourceField is a resourceFieldRef's value: the container's limit (the node's
// allocatable when unset) or request, divided by the divisor (1 when unset) and rounded
// up, as the kubelet reports it.
func resourceField(c *corev1.Container, ref *corev1.ResourceFieldSelector, alloc corev1.ResourceList) (*string, error) {
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return nil, fmt.Errorf("resourceFieldRef %q: want limits.NAME or requests.NAME", ref.Resource)
	}
	rn := corev1.ResourceName(name)
	var q resource.Quantity
	var have bool
	if kind == "limits" {
		q, have = c.Resources.Limits[rn]
		if !have {
			q, have = alloc[rn]
		}
	} else {
		q, have = c.Resources.Requests[rn]
	}
	if !have {
		s := "0"
		return &s, nil
	}
	div := ref.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	v := math.Ceil(q.AsApproximateFloat64() / div.AsApproximateFloat64())
	s := strconv.FormatInt(int64(v), 10)
	return &s, nil
}

// serviceEnv is the kubelet's service-link environment for the Services of a namespace
// that have a cluster IP (k8s.io/kubernetes pkg/kubelet/envvars FromServices): for a
// Service my-svc, MY_SVC_SERVICE_HOST and MY_SVC_SERVICE_PORT (the first port),
// MY_SVC_SERVICE_PORT_<NAME> per named port, and the Docker-link variables MY_SVC_PORT,
// MY_SVC_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]. The default/kubernetes Service is left
// out: it has no endpoints here (pods reach the apiserver through their KUBECONFIG), and
// KUBERNETES_SERVICE_HOST would make client-go believe it runs in a container.
func serviceEnv(ctx context.Context, cs kubernetes.Interface, namespace string) ([]envVar, error) {
	if cs == nil {
		return nil, nil
	}
	list, err := cs.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("service links: %w", err)
	}
	svcs := list.Items
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Name < svcs[j].Name })
	var out []envVar
	for _, svc := range svcs {
		ip := svc.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(svc.Spec.Ports) == 0 || (svc.Namespace == metav1.NamespaceDefault && svc.Name == "kubernetes") {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(svc.Name, "-", "_"))
		add := func(k, v string) { out = append(out, envVar{k, v}) }
		add(name+"_SERVICE_HOST", ip)
		add(name+"_SERVICE_PORT", strconv.Itoa(int(svc.Spec.Ports[0].Port)))
		for _, p := range svc.Spec.Ports {
			if p.Name != "" {
				add(name+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port)))
			}
		}
		for i, p := range svc.Spec.Ports {
			proto := strings.ToLower(string(p.Protocol))
			if proto == "" {
				proto = "tcp"
			}
			port := strconv.Itoa(int(p.Port))
			url := proto + "://" + net.JoinHostPort(ip, port)
			if i == 0 {
				add(name+"_PORT", url)
			}
			prefix := name + "_PORT_" + port + "_" + strings.ToUpper(proto)
			add(prefix, url)
			add(prefix+"_PROTO", proto)
			add(prefix+"_PORT", port)
			add(prefix+"_ADDR", ip)
		}
	}
	return out, nil
}
