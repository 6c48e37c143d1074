package svcproxy

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// sliceEndpoints returns, sorted and without duplicates, host:port of the ready
// endpoints of the given family in eps, with the port of the slice port named portName
// (the Service port's name: the EndpointSlice controller has resolved the targetPort).
func sliceEndpoints(eps []*discoveryv1.EndpointSlice, portName string, ipv4 bool) []string {
	family := discoveryv1.AddressTypeIPv6
	if ipv4 {
		family = discoveryv1.AddressTypeIPv4
	}
	var out []string
	for _, s := range eps {
		if s.AddressType != family {
			continue
		}
		port := int32(-1)
		for _, sp := range s.Ports {
			name := ""
			if sp.Name != nil {
				name = *sp.Name
			}
			if name != portName || sp.Port == nil {
				continue
			}
			if sp.Protocol != nil && *sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			port = *sp.Port
			break
		}
		if port < 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			// kube-proxy (pkg/proxy/endpointslicecache.go) reads an unset ready as ready.
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if len(ep.Addresses) == 0 {
				continue
			}
			ip, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue
			}
			out = append(out, netip.AddrPortFrom(ip, uint16(port)).String())
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// podEndpoints returns, sorted, host:port of the pods (already matched by svc's
// selector) that serve Service port sp, as the EndpointSlice controller would list them
// ready: not terminal, not being deleted, with an IP of the family, Ready (or the
// Service publishes not-ready addresses), and a port for sp's targetPort.
func podEndpoints(pods []*corev1.Pod, svc *corev1.Service, sp corev1.ServicePort, ipv4 bool) []string {
	var out []string
	for _, pod := range pods {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil {
			continue
		}
		if !svc.Spec.PublishNotReadyAddresses && !podReady(pod) {
			continue
		}
		ip, ok := podIP(pod, ipv4)
		if !ok {
			continue
		}
		port, ok := findPort(pod, sp)
		if !ok {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, port).String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podIP is the pod's IP of the family.
func podIP(pod *corev1.Pod, ipv4 bool) (netip.Addr, bool) {
	ips := []string{pod.Status.PodIP}
	for _, pip := range pod.Status.PodIPs {
		ips = append(ips, pip.IP)
	}
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() == ipv4 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// findPort resolves sp's targetPort on pod, as k8s.io/endpointslice's FindPort: a name
// is looked up in the containers' ports (and restartable init containers', i.e.
// sidecars) with the Service port's protocol; a number is taken as it is; an unset
// targetPort (the API server defaults it to the port) is the port.
func findPort(pod *corev1.Pod, sp corev1.ServicePort) (uint16, bool) {
	proto := sp.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	tp := sp.TargetPort
	if tp.Type == intstr.String {
		find := func(cs []corev1.Container, sidecarsOnly bool) (uint16, bool) {
			for _, c := range cs {
				if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
					continue
				}
				for _, cp := range c.Ports {
					cpProto := cp.Protocol
					if cpProto == "" {
						cpProto = corev1.ProtocolTCP
					}
					if cp.Name == tp.StrVal && cpProto == proto {
						return uint16(cp.ContainerPort), true
					}
				}
			}
			return 0, false
		}
		if port, ok := find(pod.Spec.Containers, false); ok {
			return port, true
		}
		return find(pod.Spec.InitContainers, true)
	}
	if tp.IntVal == 0 {
		return uint16(sp.Port), true
	}
	return uint16(tp.IntVal), true
}
