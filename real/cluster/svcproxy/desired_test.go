package svcproxy

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

func ptr[T any](v T) *T { return &v }

func svc(name, ip string, mut func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  ip,
			ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080, TargetPort: intstr.FromString("web")},
			},
		},
	}
	if mut != nil {
		mut(s)
	}
	return s
}

type ep struct {
	ip    string
	ready *bool
}

func slice(svcName, name string, family discoveryv1.AddressType, ports map[string]int32, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: family,
	}
	for n, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr(n), Port: ptr(p), Protocol: ptr(corev1.ProtocolTCP)})
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.ip}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready}})
	}
	return s
}

// pod is a pod of app "web" whose container port "web" is port.
func pod(name, ip string, ready bool, port int32, mut func(*corev1.Pod)) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "engine",
			Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: port, Protocol: corev1.ProtocolTCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

// TestDesired checks which listeners and endpoints a Service gets, without an API server.
func TestDesired(t *testing.T) {
	cidr := []netip.Prefix{netip.MustParsePrefix("127.1.0.0/16")}
	key := func(s string) portKey { return portKey{netip.MustParseAddrPort(s)} }
	tests := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		pods   []*corev1.Pod // non-nil: endpoints FromPods
		want   map[portKey]wanted
	}{
		{
			name: "named targetPort resolved per slice through the Service port's name; not-ready skipped, unset ready used",
			svc:  svc("web", "127.1.0.10", nil),
			slices: []*discoveryv1.EndpointSlice{
				slice("web", "web-a", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8001, "metrics": 9000},
					ep{"127.0.0.2", ptr(true)}, ep{"127.0.0.3", ptr(false)}, ep{"127.0.0.4", nil}),
				slice("web", "web-b", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8002},
					ep{"127.0.0.5", ptr(true)}),
				// A duplicate of an endpoint, as slices may briefly hold during moves.
				slice("web", "web-c", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8001},
					ep{"127.0.0.2", ptr(true)}),
				slice("web", "web-v6", discoveryv1.AddressTypeIPv6, map[string]int32{"http": 8001},
					ep{"::1", ptr(true)}),
				slice("other", "other-a", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8001},
					ep{"127.0.0.9", ptr(true)}),
			},
			want: map[portKey]wanted{key("127.1.0.10:8080"): {name: "http",
				endpoints: []string{"127.0.0.2:8001", "127.0.0.4:8001", "127.0.0.5:8002"}}},
		},
		{
			name: "no slices: a listener with no endpoints",
			svc:  svc("web", "127.1.0.10", nil),
			want: map[portKey]wanted{key("127.1.0.10:8080"): {name: "http"}},
		},
		{
			name: "unnamed single port and UDP port",
			svc: svc("dns", "127.1.0.11", func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{
					{Port: 5353, Protocol: corev1.ProtocolTCP},
					{Name: "udp", Port: 5353, Protocol: corev1.ProtocolUDP},
				}
			}),
			slices: []*discoveryv1.EndpointSlice{
				slice("dns", "dns-a", discoveryv1.AddressTypeIPv4, map[string]int32{"": 53}, ep{"127.0.0.2", ptr(true)}),
			},
			want: map[portKey]wanted{key("127.1.0.11:5353"): {name: "", endpoints: []string{"127.0.0.2:53"}}},
		},
		{
			name: "NodePort Service: its cluster IP is served",
			svc:  svc("np", "127.1.0.12", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }),
			want: map[portKey]wanted{key("127.1.0.12:8080"): {name: "http"}},
		},
		{
			name: "from pods: named targetPort resolved per pod by container port name; not ready, deleting, finished, IP-less and portless pods skipped",
			svc:  svc("web", "127.1.0.10", func(s *corev1.Service) { s.Spec.Selector = map[string]string{"app": "web"} }),
			pods: []*corev1.Pod{
				pod("a", "127.0.0.2", true, 8001, nil),
				pod("b", "127.0.0.3", true, 8002, nil),
				pod("notready", "127.0.0.4", false, 8001, nil),
				pod("deleting", "127.0.0.5", true, 8001, func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }),
				pod("done", "127.0.0.6", true, 8001, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
				pod("noip", "", true, 8001, nil),
				pod("noport", "127.0.0.7", true, 8001, func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].Name = "other" }),
				pod("udpport", "127.0.0.8", true, 8001, func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].Protocol = corev1.ProtocolUDP }),
				pod("sidecar", "127.0.0.9", true, 8009, func(p *corev1.Pod) {
					p.Spec.InitContainers = p.Spec.Containers
					p.Spec.InitContainers[0].RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
					p.Spec.Containers = nil
				}),
				pod("elsewhere", "127.0.0.10", true, 8001, func(p *corev1.Pod) { p.Labels["app"] = "other" }),
			},
			want: map[portKey]wanted{key("127.1.0.10:8080"): {name: "http",
				endpoints: []string{"127.0.0.2:8001", "127.0.0.3:8002", "127.0.0.9:8009"}}},
		},
		{
			name: "from pods: publishNotReadyAddresses and a numeric targetPort",
			svc: svc("web", "127.1.0.10", func(s *corev1.Service) {
				s.Spec.Selector = map[string]string{"app": "web"}
				s.Spec.PublishNotReadyAddresses = true
				s.Spec.Ports[0].TargetPort = intstr.FromInt32(7000)
			}),
			pods: []*corev1.Pod{pod("notready", "127.0.0.4", false, 8001, nil)},
			want: map[portKey]wanted{key("127.1.0.10:8080"): {name: "http", endpoints: []string{"127.0.0.4:7000"}}},
		},
		{
			name: "from pods: a Service without a selector has no endpoints",
			svc:  svc("web", "127.1.0.10", nil),
			pods: []*corev1.Pod{pod("a", "127.0.0.2", true, 8001, nil)},
			want: map[portKey]wanted{key("127.1.0.10:8080"): {name: "http"}},
		},
		{
			name: "headless",
			svc:  svc("h", corev1.ClusterIPNone, nil),
		},
		{
			name: "ExternalName",
			svc: svc("x", "", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeExternalName
				s.Spec.ClusterIPs = nil
			}),
		},
		{
			name: "cluster IP outside the CIDR",
			svc:  svc("far", "10.0.0.7", nil),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svcs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
			sls := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
			if err := svcs.Add(tt.svc); err != nil {
				t.Fatal(err)
			}
			for _, s := range tt.slices {
				if err := sls.Add(s); err != nil {
					t.Fatal(err)
				}
			}
			p := &proxier{cidrs: cidr, services: corelisters.NewServiceLister(svcs), slices: discoverylisters.NewEndpointSliceLister(sls)}
			if tt.pods != nil {
				pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
				for _, p := range tt.pods {
					if err := pods.Add(p); err != nil {
						t.Fatal(err)
					}
				}
				p.slices, p.pods = nil, corelisters.NewPodLister(pods)
			}
			got, err := p.desired(tt.svc)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 {
				got = nil
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(wanted{}, portKey{}), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("desired (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseCIDRs(t *testing.T) {
	tests := []struct {
		in      string
		want    []netip.Prefix
		wantErr bool
	}{
		{in: "127.1.0.0/16", want: []netip.Prefix{netip.MustParsePrefix("127.1.0.0/16")}},
		{in: "127.1.0.0/16, fd00::/108", want: []netip.Prefix{netip.MustParsePrefix("127.1.0.0/16"), netip.MustParsePrefix("fd00::/108")}},
		{in: "", wantErr: true},
		{in: "127.1.0.0", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseCIDRs(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseCIDRs(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("parseCIDRs(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}
