package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// testNet is the third byte of the test pods' addresses (127.0.77.2, ...): apart from
// the 127.0.0.x of a cluster that cmd/servelab's tests may run at the same time.
const testNet = 77

// helperEnv makes the test binary play a pod's servelab process (see helperMain).
const helperEnv = "SERVELAB_CLUSTER_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// helperMain is the process the provider tests' pods run:
//
//	serve ADDR         print "serving ADDR", answer /healthz (200 until /sick is hit) and
//	                   /env (the environment), exit 0 on SIGTERM
//	exit CODE          print "exiting CODE" and exit with CODE
//	stubborn           ignore SIGTERM, sleep (the node must SIGKILL it)
func helperMain(args []string) int {
	if len(args) == 0 {
		fmt.Println("no command")
		return 2
	}
	switch args[0] {
	case "serve":
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Println("serving", ln.Addr())
		var mu sync.Mutex
		sick := false
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			if sick {
				http.Error(w, "sick", http.StatusServiceUnavailable)
			}
		})
		mux.HandleFunc("/sick", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			sick = true
			mu.Unlock()
		})
		mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, strings.Join(os.Environ(), "\n"))
		})
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		go http.Serve(ln, mux)
		<-sig
		fmt.Println("terminating")
		return 0
	case "exit":
		code, _ := strconv.Atoi(args[1])
		fmt.Println("exiting", code)
		return code
	case "stubborn":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		time.Sleep(time.Hour)
		return 0
	}
	fmt.Println("unknown command", args[0])
	return 2
}

type eventLog struct {
	mu     sync.Mutex
	events []string // "TYPE REASON message"
}

func (e *eventLog) Event(_ runtime.Object, typ, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, typ+" "+reason+" "+msg)
}
func (e *eventLog) Eventf(o runtime.Object, typ, reason, format string, args ...any) {
	e.Event(o, typ, reason, fmt.Sprintf(format, args...))
}
func (e *eventLog) AnnotatedEventf(o runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	e.Eventf(o, typ, reason, format, args...)
}
func (e *eventLog) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.events, "\n")
}

func (e *eventLog) find(sub string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.events {
		if strings.Contains(ev, sub) {
			return true
		}
	}
	return false
}

// testProvider is a provider whose pods run this test binary, with the latest status
// it reported per pod.
type testProvider struct {
	*provider
	events *eventLog
	mu     sync.Mutex
	last   map[string]*corev1.Pod
}

func newTestProvider(t *testing.T) *testProvider {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ev := &eventLog{}
	p, err := newProvider(providerConfig{
		servelabBin: exe,
		podsDir:     t.TempDir(),
		hostIP:      "127.0.0.1",
		recorder:    ev,
		baseEnv:     []string{helperEnv + "=1"},
		backoff:     50 * time.Millisecond,
		podNet:      testNet,
	})
	if err != nil {
		t.Fatal(err)
	}
	tp := &testProvider{provider: p, events: ev, last: map[string]*corev1.Pod{}}
	p.NotifyPods(context.Background(), func(pod *corev1.Pod) {
		tp.mu.Lock()
		tp.last[podKey(pod.Namespace, pod.Name)] = pod
		tp.mu.Unlock()
	})
	t.Cleanup(p.shutdown)
	return tp
}

// waitFor polls the pod's last reported status until cond holds.
func (tp *testProvider) waitFor(t *testing.T, name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		tp.mu.Lock()
		pod := tp.last[podKey("default", name)]
		tp.mu.Unlock()
		if pod != nil && cond(pod) {
			return pod
		}
		if time.Now().After(deadline) {
			var st any
			if pod != nil {
				st = pod.Status
			}
			t.Fatalf("pod %s: %s: not within 30 s; last status %+v; events %v", name, what, st, tp.events)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ready(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func testPod(name string, policy corev1.RestartPolicy, containers ...corev1.Container) *corev1.Pod {
	grace := int64(2)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name), Labels: map[string]string{"app": "t"}},
		Spec:       corev1.PodSpec{NodeName: NodeName, RestartPolicy: policy, Containers: containers, TerminationGracePeriodSeconds: &grace},
		Status: corev1.PodStatus{
			QOSClass:   corev1.PodQOSBestEffort,
			Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
		},
	}
}

func serveContainer() corev1.Container {
	return corev1.Container{
		Name:  "engine",
		Image: "ghcr.io/example/servelab:dev",
		Args:  []string{"serve", "$(POD_IP):8000"},
		Env: []corev1.EnvVar{
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "URL", Value: "http://$(POD_IP):8000/$(POD_NAME)/$(UNDEFINED)"},
		},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8000}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
			PeriodSeconds: 1,
		},
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Two pods get their own loopback addresses, bind their port there, pass their
// readiness probes, see the downward API in their environment; deleting one stops its
// process and frees its address for the next pod.
func TestProviderRunsPodsOnTheirOwnLoopbackAddresses(t *testing.T) {
	tp := newTestProvider(t)
	ctx := context.Background()
	a, b := testPod("a", corev1.RestartPolicyAlways, serveContainer()), testPod("b", corev1.RestartPolicyAlways, serveContainer())
	for _, p := range []*corev1.Pod{a, b} {
		if err := tp.CreatePod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	ra := tp.waitFor(t, "a", "Ready", ready)
	rb := tp.waitFor(t, "b", "Ready", ready)
	if diff := cmp.Diff([]string{"127.0.77.2", "127.0.77.3"}, []string{ra.Status.PodIP, rb.Status.PodIP}); diff != "" {
		t.Fatalf("pod IPs (-want +got):\n%s", diff)
	}
	if ra.Status.Phase != corev1.PodRunning || ra.Status.QOSClass != corev1.PodQOSBestEffort {
		t.Errorf("pod a: phase %s, qosClass %q; want Running, BestEffort kept", ra.Status.Phase, ra.Status.QOSClass)
	}
	var types []corev1.PodConditionType
	for _, c := range ra.Status.Conditions {
		types = append(types, c.Type)
	}
	if diff := cmp.Diff([]corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady}, types); diff != "" {
		t.Errorf("conditions (-want +got):\n%s", diff)
	}
	env := get(t, "http://127.0.77.3:8000/env")
	for _, want := range []string{"POD_IP=127.0.77.3", "POD_NAME=b", "URL=http://127.0.77.3:8000/b/$(UNDEFINED)", "HOSTNAME=b"} {
		if !strings.Contains("\n"+env+"\n", "\n"+want+"\n") {
			t.Errorf("pod b's environment lacks %q:\n%s", want, env)
		}
	}

	pid := ra.Status.ContainerStatuses[0].ContainerID
	if err := tp.DeletePod(ctx, a); err != nil {
		t.Fatal(err)
	}
	done := tp.waitFor(t, "a", "terminated", func(p *corev1.Pod) bool {
		s := p.Status.ContainerStatuses[0].State.Terminated
		return s != nil
	})
	if got := done.Status.ContainerStatuses[0].State.Terminated; got.ExitCode != 0 || done.Status.Phase != corev1.PodSucceeded {
		t.Errorf("deleted pod: exit %d, phase %s; want 0 (SIGTERM handled), Succeeded", got.ExitCode, done.Status.Phase)
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(pid, "servelab://"))
	if Alive(n) {
		t.Errorf("pod a's process %d still alive after delete", n)
	}
	waitGone(t, tp, "a")
	c := testPod("c", corev1.RestartPolicyAlways, serveContainer())
	if err := tp.CreatePod(ctx, c); err != nil {
		t.Fatal(err)
	}
	if rc := tp.waitFor(t, "c", "Ready", ready); rc.Status.PodIP != "127.0.77.2" {
		t.Errorf("pod c got %s; want a's freed 127.0.77.2", rc.Status.PodIP)
	}
}

func waitGone(t *testing.T, tp *testProvider, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for tp.lookup("default", name) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("pod %s still known to the provider", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A pod whose image is not servelab's, or whose command is not the servelab binary, does
// not run: its status and an event say why (Failed under restartPolicy Never, Pending
// otherwise, as virtual-kubelet treats a provider's refusal).
func TestProviderRefusesOtherImages(t *testing.T) {
	tests := []struct {
		name, image string
		command     []string
		policy      corev1.RestartPolicy
		phase       corev1.PodPhase
		reason      string
	}{
		{"nginx", "nginx:1.27", nil, corev1.RestartPolicyAlways, corev1.PodPending, ReasonUnsupportedImage},
		{"vllm", "vllm/vllm-openai:latest", nil, corev1.RestartPolicyNever, corev1.PodFailed, ReasonUnsupportedImage},
		{"shell", "servelab:dev", []string{"/bin/sh", "-c", "servelab engine"}, corev1.RestartPolicyNever, corev1.PodFailed, ReasonUnsupportedCommand},
	}
	tp := newTestProvider(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod(tc.name, tc.policy, corev1.Container{Name: "c", Image: tc.image, Command: tc.command})
			if err := tp.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			got := tp.waitFor(t, tc.name, "refused", func(p *corev1.Pod) bool { return p.Status.Reason != "" })
			if got.Status.Phase != tc.phase || got.Status.Reason != tc.reason || !strings.Contains(got.Status.Message, "not containers") && tc.reason == ReasonUnsupportedImage {
				t.Errorf("status phase %s reason %s message %q; want %s %s", got.Status.Phase, got.Status.Reason, got.Status.Message, tc.phase, tc.reason)
			}
			if w := got.Status.ContainerStatuses[0].State.Waiting; w == nil || w.Reason != tc.reason {
				t.Errorf("container state %+v; want waiting with reason %s", got.Status.ContainerStatuses[0].State, tc.reason)
			}
			if !tp.events.find("Warning Failed container \"c\"") {
				t.Errorf("no Warning Failed event naming the container: %v", tp.events)
			}
		})
	}
	if isServelabImage("servelab-extras:1") || !isServelabImage("localhost:5000/servelab@sha256:abcd") || !isServelabImage("servelab") {
		t.Error("isServelabImage misjudges an image reference")
	}
}

// A container that exits is restarted under restartPolicy Always with the back-off
// showing as CrashLoopBackOff; its previous run's logs stay readable. A pod under Never
// ends Failed with the exit code.
func TestProviderRestartsPerRestartPolicy(t *testing.T) {
	tp := newTestProvider(t)
	ctx := context.Background()
	crash := corev1.Container{Name: "crash", Image: "servelab", Command: []string{"servelab"}, Args: []string{"exit", "3"}}
	if err := tp.CreatePod(ctx, testPod("always", corev1.RestartPolicyAlways, crash)); err != nil {
		t.Fatal(err)
	}
	if err := tp.CreatePod(ctx, testPod("never", corev1.RestartPolicyNever, crash)); err != nil {
		t.Fatal(err)
	}
	got := tp.waitFor(t, "always", "restarted twice", func(p *corev1.Pod) bool { return p.Status.ContainerStatuses[0].RestartCount >= 2 })
	if last := got.Status.ContainerStatuses[0].LastTerminationState.Terminated; last == nil || last.ExitCode != 3 || last.Reason != "Error" {
		t.Errorf("lastState %+v; want terminated with exit code 3, reason Error", got.Status.ContainerStatuses[0].LastTerminationState)
	}
	if got.Status.Phase != corev1.PodRunning {
		t.Errorf("crash-looping pod phase %s; want Running (as the kubelet reports it)", got.Status.Phase)
	}
	if !tp.events.find("Warning BackOff Back-off restarting failed container crash") {
		t.Errorf("no BackOff event: %v", tp.events)
	}
	rc, err := tp.GetContainerLogs(ctx, "default", "always", "crash", api.ContainerLogOpts{Previous: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "exiting 3\n" {
		t.Errorf("previous logs %q; want %q", b, "exiting 3\n")
	}
	never := tp.waitFor(t, "never", "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if s := never.Status.ContainerStatuses[0]; s.RestartCount != 0 || s.State.Terminated == nil || s.State.Terminated.ExitCode != 3 {
		t.Errorf("never-restart pod's container %+v; want terminated with 3, no restart", s)
	}
}

// A failing liveness probe (checked once the startup probe passed) kills the process and
// the container restarts; a process that
// ignores SIGTERM is SIGKILLed after the grace period when its pod is deleted.
func TestProviderLivenessAndGrace(t *testing.T) {
	tp := newTestProvider(t)
	ctx := context.Background()
	live := serveContainer()
	// Liveness waits for the startup probe, as the kubelet's does: without it, a
	// threshold of 1 would kill the process before it listens.
	live.StartupProbe = &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8000)}},
		PeriodSeconds:    1,
		FailureThreshold: 30,
	}
	live.LivenessProbe = &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8000)}},
		PeriodSeconds:    1,
		FailureThreshold: 1,
	}
	if err := tp.CreatePod(ctx, testPod("live", corev1.RestartPolicyAlways, live)); err != nil {
		t.Fatal(err)
	}
	p := tp.waitFor(t, "live", "Ready", ready)
	get(t, "http://"+p.Status.PodIP+":8000/sick")
	tp.waitFor(t, "live", "restarted after liveness failure", func(p *corev1.Pod) bool {
		return p.Status.ContainerStatuses[0].RestartCount == 1 && ready(p)
	})
	if !tp.events.find("Container engine failed liveness probe, will be restarted") {
		t.Errorf("no Killing event for the liveness failure: %v", tp.events)
	}

	stub := testPod("stubborn", corev1.RestartPolicyAlways, corev1.Container{Name: "s", Image: "servelab", Args: []string{"stubborn"}})
	one := int64(1)
	stub.Spec.TerminationGracePeriodSeconds = &one
	if err := tp.CreatePod(ctx, stub); err != nil {
		t.Fatal(err)
	}
	sp := tp.waitFor(t, "stubborn", "Running", func(p *corev1.Pod) bool { return ready(p) })
	// Delete only once the process ignores SIGTERM (it says so in its log).
	for deadline := time.Now().Add(30 * time.Second); ; {
		rc, err := tp.GetContainerLogs(ctx, "default", "stubborn", "s", api.ContainerLogOpts{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if strings.Contains(string(b), "ignoring SIGTERM") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stubborn process did not start; log %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t0 := time.Now()
	if err := tp.DeletePod(ctx, stub); err != nil {
		t.Fatal(err)
	}
	end := tp.waitFor(t, "stubborn", "killed", func(p *corev1.Pod) bool { return p.Status.ContainerStatuses[0].State.Terminated != nil })
	if code := end.Status.ContainerStatuses[0].State.Terminated.ExitCode; code != 128+int32(syscall.SIGKILL) {
		t.Errorf("exit code %d; want %d (SIGKILL after the grace period)", code, 128+int(syscall.SIGKILL))
	}
	if el := time.Since(t0); el < time.Second {
		t.Errorf("killed after %v; want the 1 s grace period first", el)
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(sp.Status.ContainerStatuses[0].ContainerID, "servelab://"))
	if Alive(n) {
		t.Errorf("process %d alive after SIGKILL", n)
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "POD_IP": "127.0.0.2", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"$(A)", "1"},
		{"--host=$(POD_IP):$(A)", "--host=127.0.0.2:1"},
		{"$(MISSING)", "$(MISSING)"},
		{"$$(A)", "$(A)"},
		{"$$$(A)", "$1"},
		{"$(EMPTY)x", "x"},
		{"$A", "$A"},
		{"$", "$"},
		{"a$", "a$"},
		{"$(A", "$(A"},
		{"$()", "$()"},
	}
	for _, tc := range tests {
		if got := expand(tc.in, lookup); got != tc.want {
			t.Errorf("expand(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestSeekTail(t *testing.T) {
	tests := []struct {
		content string
		n       int
		want    string
	}{
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc\n", 5, "a\nb\nc\n"},
		{"a\nb\nc\n", 1, "c\n"},
		{"", 3, ""},
	}
	for _, tc := range tests {
		path := t.TempDir() + "/log"
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := seekTail(f, tc.n); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if string(b) != tc.want {
			t.Errorf("tail %d of %q = %q; want %q", tc.n, tc.content, b, tc.want)
		}
	}
}

func TestRewritePaths(t *testing.T) {
	c := &corev1.Container{VolumeMounts: []corev1.VolumeMount{
		{Name: "cfg", MountPath: "/etc/servelab"},
		{Name: "cfg-sub", MountPath: "/etc/servelab/epp"},
		{Name: "model", MountPath: "/models/tiny/"},
		{Name: "same", MountPath: "/data"},
		{Name: "sub", MountPath: "/sub", SubPath: "a/b"},
		{Name: "missing", MountPath: "/nowhere"},
	}}
	dirs := map[string]string{"cfg": "/node/pods/p/volumes/cfg", "cfg-sub": "/node/pods/p/volumes/epp", "model": "/host/tiny", "same": "/data", "sub": "/node/sub"}
	ms := mountsOf(c, dirs)
	tests := []struct{ in, want string }{
		{"/etc/servelab/config.yaml", "/node/pods/p/volumes/cfg/config.yaml"},
		{"--config=/etc/servelab/config.yaml", "--config=/node/pods/p/volumes/cfg/config.yaml"},
		{"/etc/servelab/epp/epp.yaml", "/node/pods/p/volumes/epp/epp.yaml"}, // the longer mountPath wins
		{"/etc/servelab", "/node/pods/p/volumes/cfg"},
		{"/etc/servelabx/a", "/etc/servelabx/a"}, // not under the mount
		{"/models/tiny", "/host/tiny"},
		{"/data/x", "/data/x"},
		{"/sub/f", "/node/sub/a/b/f"},
		{"/nowhere/f", "/nowhere/f"},
		{"engine", "engine"},
		{"a=b=/etc/servelab/x", "a=b=/etc/servelab/x"}, // only what follows the first '='
	}
	for _, tc := range tests {
		if got := rewritePaths(tc.in, ms); got != tc.want {
			t.Errorf("rewritePaths(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
	pvc := &corev1.Pod{Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "weights", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "w"}}}}}}
	if msg := unsupportedVolume(pvc); !strings.Contains(msg, `volume "weights"`) {
		t.Errorf("a PVC volume: %q; want it refused, naming the volume", msg)
	}
}

// The environment is resolved in order, each value expanded against what came before,
// with the downward API's fields and resources.
func TestResolveEnv(t *testing.T) {
	pod := testPod("p", corev1.RestartPolicyAlways)
	pod.Annotations = map[string]string{"servelab.io/policy": "prefix-affinity"}
	pod.Spec.ServiceAccountName = "engine"
	c := &corev1.Container{
		Name: "engine",
		Resources: corev1.ResourceRequirements{
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resourceMustParse("1Gi")},
			Requests: corev1.ResourceList{corev1.ResourceCPU: resourceMustParse("500m")},
		},
		Env: []corev1.EnvVar{
			{Name: "URL", Value: "http://$(POD_IP):8000"}, // POD_IP comes later: stays as written
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "URL2", Value: "http://$(POD_IP):8000"},
			{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
			{Name: "POLICY", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['servelab.io/policy']"}}},
			{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
			{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resourceMustParse("1Mi")}}},
			{Name: "CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
			{Name: "CPU_REQ_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu", Divisor: resourceMustParse("1m")}}},
			{Name: "POD_IP", Value: "overridden $(POD_IP)"},
		},
	}
	got, err := resolveEnv(context.Background(), nil, pod, c, podFacts{podIP: "127.0.0.7", hostIP: "127.0.0.1",
		nodeAlloc: corev1.ResourceList{corev1.ResourceCPU: resourceMustParse("16")}})
	if err != nil {
		t.Fatal(err)
	}
	want := []envVar{
		{"URL", "http://$(POD_IP):8000"},
		{"POD_IP", "overridden 127.0.0.7"},
		{"URL2", "http://127.0.0.7:8000"},
		{"NS", "default"},
		{"APP", "t"},
		{"POLICY", "prefix-affinity"},
		{"SA", "engine"},
		{"NODE", NodeName},
		{"HOST_IP", "127.0.0.1"},
		{"MEM_MI", "1024"},
		{"CPU_LIMIT", "16"}, // no limit: the node's allocatable, as the kubelet
		{"CPU_REQ_M", "500"},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(envVar{})); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	bad := &corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.phase"}}}}}
	if _, err := resolveEnv(context.Background(), nil, pod, bad, podFacts{}); err == nil || !strings.Contains(err.Error(), "env X") {
		t.Errorf("an unsupported fieldRef: %v; want an error naming the variable", err)
	}
}

func resourceMustParse(s string) resource.Quantity { return resource.MustParse(s) }

// Init containers run to completion, in order, before the containers start; a failing one
// under restartPolicy Never fails the pod.
func TestProviderInitContainers(t *testing.T) {
	tp := newTestProvider(t)
	ctx := context.Background()
	ok := testPod("init-ok", corev1.RestartPolicyAlways, serveContainer())
	ok.Spec.InitContainers = []corev1.Container{
		{Name: "first", Image: "servelab", Args: []string{"exit", "0"}},
		{Name: "second", Image: "servelab", Args: []string{"exit", "0"}},
	}
	bad := testPod("init-bad", corev1.RestartPolicyNever, serveContainer())
	bad.Spec.InitContainers = []corev1.Container{{Name: "fails", Image: "servelab", Args: []string{"exit", "7"}}}
	for _, p := range []*corev1.Pod{ok, bad} {
		if err := tp.CreatePod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	got := tp.waitFor(t, "init-ok", "Ready", ready)
	for _, s := range got.Status.InitContainerStatuses {
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 || s.State.Terminated.Reason != "Completed" {
			t.Errorf("init container %s: %+v; want terminated, Completed", s.Name, s.State)
		}
	}
	failed := tp.waitFor(t, "init-bad", "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if w := failed.Status.ContainerStatuses[0].State.Waiting; w == nil || failed.Status.Reason != "InitContainerFailed" {
		t.Errorf("pod with a failed init container: reason %q, container %+v; want InitContainerFailed and the container never started", failed.Status.Reason, failed.Status.ContainerStatuses[0].State)
	}
}

// An exec probe runs the servelab binary with the probe's arguments: exit 0 is ready, a
// failure keeps the pod unready with an Unhealthy event.
func TestProviderExecProbe(t *testing.T) {
	tp := newTestProvider(t)
	ctx := context.Background()
	probe := func(code string) *corev1.Probe {
		// A generous timeout: the probe starts this test binary, slow under -race.
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"servelab", "exit", code}}}, PeriodSeconds: 1, TimeoutSeconds: 20}
	}
	good, bad := serveContainer(), serveContainer()
	good.ReadinessProbe, bad.ReadinessProbe = probe("0"), probe("1")
	if err := tp.CreatePod(ctx, testPod("exec-good", corev1.RestartPolicyAlways, good)); err != nil {
		t.Fatal(err)
	}
	if err := tp.CreatePod(ctx, testPod("exec-bad", corev1.RestartPolicyAlways, bad)); err != nil {
		t.Fatal(err)
	}
	tp.waitFor(t, "exec-good", "Ready", ready)
	for deadline := time.Now().Add(30 * time.Second); !tp.events.find("Readiness probe failed: exit status 1: exiting 1"); {
		if time.Now().After(deadline) {
			t.Fatalf("no Unhealthy event for the failing exec probe: %v", tp.events)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p := tp.snapshotOf("exec-bad"); ready(p) {
		t.Error("pod with a failing exec readiness probe is Ready")
	}
}

func (tp *testProvider) snapshotOf(name string) *corev1.Pod {
	p, _ := tp.GetPod(context.Background(), "default", name)
	return p
}

// A preStop hook runs before SIGTERM, the process serving meanwhile (the controller's
// routers sleep so proxies stop sending first); a failing postStart hook kills the
// container, which restarts.
func TestProviderLifecycleHooks(t *testing.T) {
	tp := newTestProvider(t)
	ctx := context.Background()
	c := serveContainer()
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 1}}}
	pod := testPod("prestop", corev1.RestartPolicyAlways, c)
	if err := tp.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	p := tp.waitFor(t, "prestop", "Ready", ready)
	t0 := time.Now()
	if err := tp.DeletePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if body := get(t, "http://"+p.Status.PodIP+":8000/env"); !strings.Contains(body, "POD_NAME=prestop") {
		t.Errorf("during preStop the process does not serve: %q", body)
	}
	end := tp.waitFor(t, "prestop", "terminated", func(p *corev1.Pod) bool { return p.Status.ContainerStatuses[0].State.Terminated != nil })
	if el := time.Since(t0); el < time.Second {
		t.Errorf("terminated %v after delete; want the 1 s preStop sleep first", el)
	}
	if code := end.Status.ContainerStatuses[0].State.Terminated.ExitCode; code != 0 {
		t.Errorf("exit code %d; want 0 (SIGTERM after the hook, handled)", code)
	}

	bad := serveContainer()
	bad.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"servelab", "exit", "2"}}}}
	if err := tp.CreatePod(ctx, testPod("poststart", corev1.RestartPolicyAlways, bad)); err != nil {
		t.Fatal(err)
	}
	tp.waitFor(t, "poststart", "restarted", func(p *corev1.Pod) bool { return p.Status.ContainerStatuses[0].RestartCount >= 1 })
	if !tp.events.find("Warning FailedPostStartHook PostStartHook failed: exit status 2: exiting 2") {
		t.Errorf("no FailedPostStartHook event: %v", tp.events)
	}
}

func TestCheckHostPath(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/f"
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	typ := func(v corev1.HostPathType) *corev1.HostPathType { return &v }
	tests := []struct {
		path    string
		typ     *corev1.HostPathType
		wantErr bool
	}{
		{dir, typ(corev1.HostPathDirectory), false},
		{file, typ(corev1.HostPathDirectory), true},
		{dir + "/missing", typ(corev1.HostPathDirectory), true},
		{file, typ(corev1.HostPathFile), false},
		{dir, typ(corev1.HostPathFile), true},
		{dir + "/new/dir", typ(corev1.HostPathDirectoryOrCreate), false},
		{dir + "/new/file", typ(corev1.HostPathFileOrCreate), false},
		{dir + "/anything", nil, false},
	}
	for _, tc := range tests {
		err := checkHostPath(&corev1.HostPathVolumeSource{Path: tc.path, Type: tc.typ})
		if (err != nil) != tc.wantErr {
			t.Errorf("checkHostPath(%s, %v) = %v; want error %t", tc.path, tc.typ, err, tc.wantErr)
		}
	}
	if fi, err := os.Stat(dir + "/new/dir"); err != nil || !fi.IsDir() {
		t.Errorf("DirectoryOrCreate did not create the directory: %v", err)
	}
	if fi, err := os.Stat(dir + "/new/file"); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("FileOrCreate did not create the file: %v", err)
	}
}

// `kubectl port-forward` reaches the pod's port; `kubectl logs -f` streams the output
// until the process exits; tailLines and limitBytes cut it.
func TestProviderPortForwardAndFollowLogs(t *testing.T) {
	tp := newTestProvider(t)
	ctx := context.Background()
	pod := testPod("pf", corev1.RestartPolicyAlways, serveContainer())
	if err := tp.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	tp.waitFor(t, "pf", "Ready", ready)

	client, server := net.Pipe()
	errc := make(chan error, 1)
	go func() { errc <- tp.PortForward(ctx, "default", "pf", 8000, server) }()
	fmt.Fprint(client, "GET /env HTTP/1.0\r\nHost: pf\r\n\r\n")
	resp, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(resp), "HTTP/1.0 200") || !strings.Contains(string(resp), "POD_NAME=pf") {
		t.Errorf("through port-forward: %q", resp)
	}
	client.Close()
	if err := <-errc; err != nil && !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("PortForward: %v", err)
	}

	for _, tc := range []struct {
		opts api.ContainerLogOpts
		want string
	}{
		{api.ContainerLogOpts{Tail: 1}, "serving 127.0.77.2:8000\n"},
		{api.ContainerLogOpts{LimitBytes: 7}, "serving"},
	} {
		rc, err := tp.GetContainerLogs(ctx, "default", "pf", "engine", tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if string(b) != tc.want {
			t.Errorf("logs %+v = %q; want %q", tc.opts, b, tc.want)
		}
	}

	logs, err := tp.GetContainerLogs(ctx, "default", "pf", "engine", api.ContainerLogOpts{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	followed := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(logs) // ends only when the process has exited
		followed <- string(b)
	}()
	if err := tp.DeletePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-followed:
		if want := "serving 127.0.77.2:8000\nterminating\n"; got != want {
			t.Errorf("followed logs %q; want %q", got, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("following the logs did not end when the process exited")
	}
}

func TestIPPool(t *testing.T) {
	p := newIPPool(0)
	var got []string
	for range 254 {
		ip, err := p.get()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ip)
	}
	// .2 to .254 of 127.0.0.0/24, then the next /24 from .1 (no .0, no .255).
	if got[0] != "127.0.0.2" || got[252] != "127.0.0.254" || got[253] != "127.0.1.1" {
		t.Errorf("addresses %s ... %s, %s; want 127.0.0.2 ... 127.0.0.254, 127.0.1.1", got[0], got[252], got[253])
	}
	p.put("127.0.0.9")
	if ip, _ := p.get(); ip != "127.0.0.9" {
		t.Errorf("after freeing 127.0.0.9 got %s; want it reused", ip)
	}
}
