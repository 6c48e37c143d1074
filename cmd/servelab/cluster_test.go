package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"servelab/internal/kubebin"
	"servelab/real/cluster"
)

// TestClusterUpRunsPodsAsProcesses starts the whole local cluster (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and the process node), runs a Deployment of two
// servelab engines on the tiny model, reaches each on its own pod IP, reads its logs
// through the apiserver, deletes one pod (its process goes, the Deployment replaces it),
// and checks that `cluster down` leaves no process behind.
func TestClusterUpRunsPodsAsProcesses(t *testing.T) {
	binDir := kubebin.ForTest(t, kubebin.Etcd, kubebin.APIServer, kubebin.ControllerManager, kubebin.Scheduler)
	t.Setenv("SERVELAB_RUN_MAIN", "1") // the node and the pods run this test binary as servelab
	model := synthTiny(t)
	dir := t.TempDir()
	t0 := time.Now()
	var everyPid []int // every process of the cluster seen during the test
	t.Cleanup(func() {
		if _, err := run(t, "cluster", "down", "--dir", dir); err != nil {
			t.Errorf("cluster down: %v", err)
		}
		everyPid = append(everyPid, cluster.Processes(dir)...)
		sort.Ints(everyPid)
		for i, pid := range everyPid {
			if i > 0 && everyPid[i-1] == pid {
				continue
			}
			if cluster.Alive(pid) {
				t.Errorf("process %d of the cluster survived cluster down", pid)
			}
		}
	})
	out, err := run(t, "cluster", "up", "--dir", dir, "--bin-dir", binDir)
	if err != nil {
		t.Fatalf("cluster up: %v\n%s", err, out)
	}
	t.Logf("cluster up in %.1f s", time.Since(t0).Seconds())
	if !strings.Contains(out, "export KUBECONFIG="+dir+"/kubeconfig") {
		t.Errorf("up does not say how to use the cluster:\n%s", out)
	}
	if again, err := run(t, "cluster", "up", "--dir", dir, "--bin-dir", binDir); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second up on the same dir: %v\n%s; want an error saying it is already running", err, again)
	}
	cs, err := cluster.Client(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The model comes in through a hostPath volume mounted elsewhere, a ConfigMap through
	// a configMap volume: the node gives a process its volumes as host directories and
	// rewrites the paths in its arguments.
	if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "engine-config"}, Data: map[string]string{"note": "hello"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "engine"}
	// A Service before the pods: they get its service-link variables, and its cluster IP
	// is a loopback address (a proxy on this machine can listen there).
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "engine"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 8000, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(svc.Spec.ClusterIP, "127.1.") {
		t.Errorf("Service cluster IP %s; want one in %s", svc.Spec.ClusterIP, cluster.ServiceCIDR)
	}
	replicas := int32(2)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "engine", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:  "engine",
					Image: "ghcr.io/servelab/servelab:test",
					Args: []string{"engine", "--model", "/models/tiny", "--host", "$(POD_IP)", "--port", "8000",
						"--served-model-name", "$(POD_NAME)", "--num-gpu-blocks-override", "64", "--threads", "1"},
					VolumeMounts: []corev1.VolumeMount{{Name: "model", MountPath: "/models/tiny"}, {Name: "cfg", MountPath: "/etc/servelab"}},
					Env: []corev1.EnvVar{
						{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
						{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					},
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8000}},
					ReadinessProbe: &corev1.Probe{
						ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromString("http")}},
						PeriodSeconds: 1,
					},
				}},
					Volumes: []corev1.Volume{
						{Name: "model", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: model}}},
						{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "engine-config"}}}},
					},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitReadyPods(ctx, t, cs, 2, nil)
	t.Logf("2 pods Ready %.1f s after up began", time.Since(t0).Seconds())
	ips := map[string]bool{}
	// 127.0.0.x, or 127.0.N.x when other clusters run on this machine.
	ipRE := regexp.MustCompile(`^127\.0\.\d+\.(\d+)$`)
	for i, p := range pods {
		if m := ipRE.FindStringSubmatch(p.Status.PodIP); m == nil || m[1] == "1" || p.Status.PodIP == p.Status.HostIP {
			t.Errorf("pod %s has IP %q; want its own loopback address 127.0.N.x (x > 1)", p.Name, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = true
		resp, err := http.Get("http://" + p.Status.PodIP + ":8000/v1/models")
		if err != nil {
			t.Fatalf("pod %s: %v", p.Name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":"`+p.Name+`"`) {
			t.Errorf("pod %s /v1/models: %s %s", p.Name, resp.Status, body)
		}
		logs, err := cs.CoreV1().Pods("default").GetLogs(p.Name, &corev1.PodLogOptions{Container: "engine"}).DoRaw(ctx)
		if err != nil {
			t.Fatalf("logs of %s through the apiserver: %v", p.Name, err)
		}
		if want := "listening on http://" + p.Status.PodIP + ":8000"; !strings.Contains(string(logs), want) {
			t.Errorf("logs of %s lack %q:\n%s", p.Name, want, logs)
		}
		pid := podPid(t, p)
		everyPid = append(everyPid, pid)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmdline), "\x00--model\x00"+model+"\x00") {
			t.Errorf("pod %s's process runs %q; want --model rewritten from /models/tiny to the hostPath %s", p.Name, cmdline, model)
		}
		note, err := os.ReadFile(filepath.Join(dir, "pods", "default_"+p.Name+"_"+string(p.UID), "volumes", "cfg", "note"))
		if string(note) != "hello" {
			t.Errorf("pod %s's configMap volume: note = %q, %v; want hello", p.Name, note, err)
		}
		// The pod reaches the apiserver as its service account, through the kubeconfig
		// the node gives it in KUBECONFIG.
		if i == 0 {
			environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			for _, want := range []string{"ENGINE_SERVICE_HOST=" + svc.Spec.ClusterIP, "ENGINE_SERVICE_PORT=8000", "ENGINE_SERVICE_PORT_HTTP=8000"} {
				if !strings.Contains("\x00"+string(environ)+"\x00", "\x00"+want+"\x00") {
					t.Errorf("pod %s's environment lacks %s", p.Name, want)
				}
			}
			var kc string
			for _, kv := range strings.Split(string(environ), "\x00") {
				if v, ok := strings.CutPrefix(kv, "KUBECONFIG="); ok {
					kc = v
				}
			}
			cfg, err := clientcmd.BuildConfigFromFlags("", kc)
			if err != nil {
				t.Fatalf("pod %s's KUBECONFIG %q: %v", p.Name, kc, err)
			}
			podCS, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			who, err := podCS.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("pod %s as its service account: %v", p.Name, err)
			}
			if got := who.Status.UserInfo.Username; got != "system:serviceaccount:default:default" {
				t.Errorf("pod %s reaches the apiserver as %q; want its service account", p.Name, got)
			}
		}
	}
	if len(ips) != 2 {
		t.Errorf("pods share an IP: %v", ips)
	}
	// The Service answers on its cluster IP from this machine (the node's service proxy),
	// spreading connections over both pods (each serves the model under its pod's name).
	served := map[string]bool{}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // the proxy balances connections
	for deadline := time.Now().Add(30 * time.Second); len(served) < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("Service %s:8000 reached pods %v within 30 s; want both", svc.Spec.ClusterIP, served)
		}
		resp, err := fresh.Get("http://" + svc.Spec.ClusterIP + ":8000/v1/models")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, p := range pods {
				if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"id":"`+p.Name+`"`) {
					served[p.Name] = true
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	everyPid = append(everyPid, cluster.Processes(dir)...)

	victim := pods[0]
	victimPid := podPid(t, victim)
	if err := cs.CoreV1().Pods("default").Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for cluster.Alive(victimPid) {
		if ctx.Err() != nil {
			t.Fatalf("deleted pod %s's process %d still runs", victim.Name, victimPid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := waitReadyPods(ctx, t, cs, 2, func(ps []corev1.Pod) bool {
		for _, p := range ps {
			if p.Name == victim.Name {
				return false
			}
		}
		return true
	})
	for _, p := range after {
		everyPid = append(everyPid, podPid(t, p))
	}
	t.Logf("replacement Ready %.1f s after up began", time.Since(t0).Seconds())
}

// waitReadyPods waits until the engine Deployment has exactly n pods, all Ready, that
// also pass ok (nil: any), and returns them sorted by name.
func waitReadyPods(ctx context.Context, t *testing.T, cs kubernetes.Interface, n int, ok func([]corev1.Pod) bool) []corev1.Pod {
	t.Helper()
	var last string
	for {
		list, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=engine"})
		if err == nil {
			var ready []corev1.Pod
			var states []string
			for _, p := range list.Items {
				states = append(states, fmt.Sprintf("%s %s %s ready=%t", p.Name, p.Status.Phase, p.Status.PodIP, podReady(p)))
				if podReady(p) && p.DeletionTimestamp == nil {
					ready = append(ready, p)
				}
			}
			last = strings.Join(states, "; ")
			if len(ready) == n && len(list.Items) == n && (ok == nil || ok(ready)) {
				sort.Slice(ready, func(i, j int) bool { return ready[i].Name < ready[j].Name })
				return ready
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("not %d Ready engine pods in time; last: %s", n, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podPid is the pid of a pod's running container (its containerID is servelab://PID).
func podPid(t *testing.T, p corev1.Pod) int {
	t.Helper()
	if len(p.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s has no container status", p.Name)
	}
	pid, err := strconv.Atoi(strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "servelab://"))
	if err != nil {
		t.Fatalf("pod %s: containerID %q is not servelab://PID", p.Name, p.Status.ContainerStatuses[0].ContainerID)
	}
	return pid
}

// Without the control-plane binaries, up says how to get them and starts nothing.
func TestClusterUpWithoutBinaries(t *testing.T) {
	dir := t.TempDir()
	_, err := run(t, "cluster", "up", "--dir", dir, "--bin-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "hack/k8s/build.sh") {
		t.Fatalf("up with an empty --bin-dir: %v; want an error naming hack/k8s/build.sh", err)
	}
	if pids := cluster.Processes(dir); len(pids) > 0 {
		t.Errorf("processes %v started", pids)
	}
}
