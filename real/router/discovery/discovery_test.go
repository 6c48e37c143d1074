package discovery

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func pod(mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "engine-0", Namespace: "ns"},
		Status: corev1.PodStatus{PodIP: "10.0.0.7", Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func TestEndpoints(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name   string
		pod    *corev1.Pod
		scheme string
		ports  []int
		want   []string
	}{
		{"ready", pod(), "", []int{8000}, []string{"http://10.0.0.7:8000"}},
		{"a port per data-parallel rank", pod(), "", []int{8000, 8001}, []string{"http://10.0.0.7:8000", "http://10.0.0.7:8001"}},
		{"https", pod(), "https", []int{8443}, []string{"https://10.0.0.7:8443"}},
		{"IPv6", pod(func(p *corev1.Pod) { p.Status.PodIP = "fd00::7" }), "", []int{8000}, []string{"http://[fd00::7]:8000"}},
		{"not ready", pod(func(p *corev1.Pod) { p.Status.Conditions[1].Status = corev1.ConditionFalse }), "", []int{8000}, nil},
		{"readiness unknown", pod(func(p *corev1.Pod) { p.Status.Conditions[1].Status = corev1.ConditionUnknown }), "", []int{8000}, nil},
		{"no Ready condition", pod(func(p *corev1.Pod) { p.Status.Conditions = p.Status.Conditions[:1] }), "", []int{8000}, nil},
		{"terminating", pod(func(p *corev1.Pod) { p.DeletionTimestamp = &now }), "", []int{8000}, nil},
		{"no IP yet", pod(func(p *corev1.Pod) { p.Status.PodIP = "" }), "", []int{8000}, nil},
		{"active ports", pod(func(p *corev1.Pod) { p.Annotations = map[string]string{ActivePortsAnnotation: "8001, 9000"} }),
			"", []int{8000, 8001, 8002}, []string{"http://10.0.0.7:8001"}},
		{"prefill role", pod(func(p *corev1.Pod) { p.Labels = map[string]string{"llm-d.ai/role": "prefill"} }), "", []int{8000, 8001},
			[]string{"prefill=http://10.0.0.7:8000", "prefill=http://10.0.0.7:8001"}},
		{"decode role", pod(func(p *corev1.Pod) { p.Labels = map[string]string{"llm-d.ai/role": "decode", "app": "x"} }), "", []int{8000},
			[]string{"decode=http://10.0.0.7:8000"}},
		{"prefill-decode role", pod(func(p *corev1.Pod) { p.Labels = map[string]string{"llm-d.ai/role": "prefill-decode"} }), "", []int{8000},
			[]string{"prefill-decode=http://10.0.0.7:8000"}},
		{"encode role is not routed to", pod(func(p *corev1.Pod) { p.Labels = map[string]string{"llm-d.ai/role": "encode"} }), "", []int{8000}, nil},
		{"no active port is a target", pod(func(p *corev1.Pod) { p.Annotations = map[string]string{ActivePortsAnnotation: "9000"} }),
			"", []int{8000}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Endpoints(tc.pod, tc.scheme, tc.ports)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
			if d := describe(tc.pod, got); d == "" {
				t.Error("no description")
			}
		})
	}
}

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{in: "app=vllm", want: "app=vllm"},
		{in: "app=vllm,env!=dev", want: "app=vllm,env!=dev"},
		{in: "tier in (a,b),!deprecated", want: "!deprecated,tier in (a,b)"},
		{in: "", err: "selects every pod"},
		{in: "=vllm", err: `endpoint selector "=vllm"`},
		{in: "app in", err: `endpoint selector "app in"`},
	}
	for _, tc := range tests {
		sel, err := ParseSelector(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSelector(%q) = %v, %v; want an error containing %q", tc.in, sel, err, tc.err)
			}
		case err != nil:
			t.Errorf("ParseSelector(%q): %v", tc.in, err)
		case sel.String() != tc.want:
			t.Errorf("ParseSelector(%q) = %q, want %q", tc.in, sel, tc.want)
		}
	}
}

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		err  string
	}{
		{in: "8000", want: []int{8000}},
		{in: "8000,8001, 8002", want: []int{8000, 8001, 8002}},
		{in: "", err: `"" is not a port number`},
		{in: "http", err: `"http" is not a port number`},
		{in: "0", err: `"0" is not a port number`},
		{in: "65536", err: `"65536" is not a port number`},
		{in: "8000,", err: `"" is not a port number`},
		{in: "8000,8000", err: "port 8000 given twice"},
	}
	for _, tc := range tests {
		got, err := ParsePorts(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePorts(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePorts(%q): %v", tc.in, err)
		} else if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParsePorts(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}
