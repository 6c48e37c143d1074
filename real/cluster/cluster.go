// Package cluster runs a Kubernetes cluster on one machine for servelab: etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1, and one node
// made with virtual-kubelet whose provider runs each pod's servelab container as a local
// process with its own loopback address. It is not a container runtime: a pod whose
// image is not servelab's fails with a reason saying so. A real cluster runs the same
// objects with the servelab image instead.
package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"servelab/internal/kubebin"
)

// NodeName is the name of the cluster's one node.
const NodeName = "servelab"

// ContextName is the kubeconfig context (and cluster and user) that `up` writes.
const ContextName = "servelab"

// Components are the processes `up` starts, in order: the control plane, the node, and
// servelab's LLMService controller (its CRDs installed first).
var Components = []string{kubebin.Etcd, kubebin.APIServer, kubebin.ControllerManager, kubebin.Scheduler, "node", ControllerComponent}

// ServiceCIDR is the cluster's --service-cluster-ip-range: loopback addresses (all of
// 127.0.0.0/8 routes to lo on Linux), so a userspace service proxy on this machine can
// listen on every Service's cluster IP without touching the network configuration.
const ServiceCIDR = "127.1.0.0/16"

// ErrRunning is returned by Up when the directory already holds a running cluster.
var ErrRunning = errors.New("cluster already running")

// State is what `up` records in Dir/cluster.json: where everything listens. The node
// reads it.
type State struct {
	Dir         string `json:"dir"`
	Server      string `json:"server"` // https://127.0.0.1:PORT, the apiserver
	EtcdPort    int    `json:"etcd_port"`
	KubeletPort int    `json:"kubelet_port"` // the node's kubelet API (logs, port-forward)
	ServelabBin string `json:"servelab_bin"` // what a pod's servelab container runs
	BinDir      string `json:"bin_dir"`
	// PodNet is the third byte of the pods' addresses, 127.0.PodNet.2 and up: the lowest
	// that no other cluster running on this machine uses, so two clusters' pods do not
	// meet on the same address and port.
	PodNet int `json:"pod_net"`
}

// Options configure Up.
type Options struct {
	Dir         string // the cluster's directory (created); made absolute
	BinDir      string // etcd, kube-apiserver, kube-controller-manager, kube-scheduler
	ServelabBin string // the servelab binary: runs the node and every pod's servelab container
	Timeout     time.Duration
	Log         io.Writer // progress lines; nil for none
}

// Paths under the cluster's directory.
func kubeconfigPath(dir string) string { return filepath.Join(dir, "kubeconfig") }
func statePath(dir string) string      { return filepath.Join(dir, "cluster.json") }
func pkiDir(dir string) string         { return filepath.Join(dir, "pki") }
func logPath(dir, name string) string  { return filepath.Join(dir, "logs", name+".log") }
func pidPath(dir, name string) string  { return filepath.Join(dir, "run", name+".pid") }
func podsDir(dir string) string        { return filepath.Join(dir, "pods") }
func etcdDataDir(dir string) string    { return filepath.Join(dir, "etcd") }
func pkiFile(dir, name string) string  { return filepath.Join(pkiDir(dir), name) }

// KubeconfigPath is the admin kubeconfig `up` writes in dir (context ContextName).
func KubeconfigPath(dir string) string { return kubeconfigPath(dir) }

// LogPath is the log of a component (one of Components) of the cluster in dir.
func LogPath(dir, name string) string { return logPath(dir, name) }

func readState(dir string) (State, error) {
	var s State
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", statePath(dir), err)
	}
	return s, nil
}

// Up starts the cluster in o.Dir and returns once the apiserver is ready, the node is
// Ready and the default namespace's service account exists (so pods can be created at
// once). On failure it stops whatever it started and returns an error holding the end of
// the failing component's log.
func Up(ctx context.Context, o Options) (State, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return State{}, err
	}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	if pids := Processes(dir); len(pids) > 0 {
		return State{}, fmt.Errorf("%w in %s (%d processes; kubeconfig %s): stop it with `servelab cluster down --dir %s`", ErrRunning, dir, len(pids), kubeconfigPath(dir), dir)
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	for _, name := range []string{kubebin.Etcd, kubebin.APIServer, kubebin.ControllerManager, kubebin.Scheduler} {
		if fi, err := os.Stat(filepath.Join(o.BinDir, name)); err != nil || fi.IsDir() {
			return State{}, fmt.Errorf("--bin-dir %s: no %s there: %s", o.BinDir, name, kubebin.BuildHint)
		}
	}
	if fi, err := os.Stat(o.ServelabBin); err != nil || fi.IsDir() {
		return State{}, fmt.Errorf("--servelab-bin %q: not a file", o.ServelabBin)
	}
	for _, d := range []string{dir, filepath.Join(dir, "logs"), filepath.Join(dir, "run"), podsDir(dir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return State{}, err
		}
	}
	if err := writePKI(pkiDir(dir)); err != nil {
		return State{}, fmt.Errorf("pki: %w", err)
	}
	ports, err := freePorts(6)
	if err != nil {
		return State{}, err
	}
	st := State{
		Dir:         dir,
		Server:      "https://127.0.0.1:" + strconv.Itoa(ports[0]),
		EtcdPort:    ports[1],
		KubeletPort: ports[3],
		ServelabBin: o.ServelabBin,
		BinDir:      o.BinDir,
	}
	st.PodNet = freePodNet(dir)
	etcdPeerPort, kcmPort, schedPort := ports[2], ports[4], ports[5]
	if err := writeKubeconfig(dir, st.Server); err != nil {
		return State{}, err
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(statePath(dir), append(b, '\n'), 0o644); err != nil {
		return State{}, err
	}

	env := withMarker(os.Environ(), dir)
	started := false
	defer func() {
		if !started {
			Down(dir, 5*time.Second)
		}
	}()
	start := func(name, bin string, args ...string) error {
		os.Remove(logPath(dir, name)) // a fresh log per run: errors below quote its tail
		_, err := startDetached(bin, args, env, logPath(dir, name), pidPath(dir, name))
		return err
	}
	pki := func(name string) string { return pkiFile(dir, name) }
	kc := kubeconfigPath(dir)
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(st.EtcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeerPort)
	logf("starting etcd on %s", etcdURL)
	if err := start(kubebin.Etcd, filepath.Join(o.BinDir, kubebin.Etcd),
		"--name=servelab", "--data-dir="+etcdDataDir(dir),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=servelab="+peerURL,
		// As envtest runs it: a local cluster's state is disposable, and fsync on a
		// loaded laptop is what makes the apiserver slow to start.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	); err != nil {
		return st, err
	}
	logf("starting kube-apiserver on %s", st.Server)
	if err := start(kubebin.APIServer, filepath.Join(o.BinDir, kubebin.APIServer),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(ports[0]),
		// On loopback the default reconciler would publish 127.0.0.1 as the `kubernetes`
		// Service's endpoint, which the apiserver refuses.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file="+pki(apiserverCert), "--tls-private-key-file="+pki(apiserverKey),
		"--client-ca-file="+pki(caCert),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki(saPub),
		"--service-account-signing-key-file="+pki(saKey),
		"--service-cluster-ip-range="+ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--kubelet-client-certificate="+pki(kubeletClientCert), "--kubelet-client-key="+pki(kubeletClientKey),
		"--kubelet-certificate-authority="+pki(caCert),
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
	); err != nil {
		return st, err
	}
	if err := waitReadyz(ctx, dir, st.Server); err != nil {
		return st, componentError(dir, kubebin.APIServer, fmt.Errorf("apiserver not ready: %w", err), kubebin.Etcd)
	}
	logf("kube-apiserver ready; starting kube-controller-manager, kube-scheduler and the node")
	if err := start(kubebin.ControllerManager, filepath.Join(o.BinDir, kubebin.ControllerManager),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(kcmPort),
		"--leader-elect=false",
		"--service-account-private-key-file="+pki(saKey),
		"--root-ca-file="+pki(caCert),
		"--cluster-signing-cert-file="+pki(caCert), "--cluster-signing-key-file="+pki(caKey),
		"--use-service-account-credentials=false",
		"--service-cluster-ip-range="+ServiceCIDR,
		// The apiserver refuses loopback addresses in Endpoints and EndpointSlices
		// (ValidateEndpointIP) while it takes them as pod IPs, so these controllers could
		// only fail for this node's pods: clients find pods by their Pod objects.
		"--controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller",
	); err != nil {
		return st, err
	}
	if err := start(kubebin.Scheduler, filepath.Join(o.BinDir, kubebin.Scheduler),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort),
		"--leader-elect=false",
	); err != nil {
		return st, err
	}
	if err := start("node", o.ServelabBin, "cluster", "node", "--dir", dir); err != nil {
		return st, err
	}
	cs, err := Client(dir)
	if err != nil {
		return st, err
	}
	if err := waitNodeReady(ctx, cs); err != nil {
		return st, componentError(dir, "node", fmt.Errorf("node %s not Ready: %w", NodeName, err))
	}
	logf("node %s Ready", NodeName)
	if err := waitServiceAccount(ctx, cs); err != nil {
		return st, componentError(dir, kubebin.ControllerManager, fmt.Errorf("no default service account and kube-root-ca.crt: %w", err))
	}
	crds, err := installCRDs(ctx, dir)
	if err != nil {
		return st, err
	}
	logf("installed %s; starting servelab's LLMService controller", strings.Join(crds, ", "))
	if err := start(ControllerComponent, o.ServelabBin, controllerArgs(dir)...); err != nil {
		return st, err
	}
	started = true
	return st, nil
}

// Down stops every process of the cluster in dir: SIGTERM, then SIGKILL for what is left
// after grace. Pods' processes go with the node (which stops them on SIGTERM) and, should
// the node be gone, by the marker they carry. It returns how many processes it stopped.
func Down(dir string, grace time.Duration) (int, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return 0, err
	}
	seen := map[int]bool{}
	note := func(pids []int) []int {
		for _, p := range pids {
			seen[p] = true
		}
		return pids
	}
	note(Processes(abs))
	pidOf := func(name string) int {
		if pid, err := readPid(pidPath(abs, name)); err == nil && seen[pid] {
			return pid
		}
		return 0
	}
	apiserver, etcd := pidOf(kubebin.APIServer), pidOf(kubebin.Etcd)
	// In stages, each from SIGTERM to its end: the node first, so its pods get their
	// termination grace period while the apiserver still takes their final status; then
	// the controllers and whatever else carries the marker; then the apiserver while
	// etcd still answers it (the other way round, each waits on the other and the
	// apiserver takes its full grace period); then etcd; then anything started since.
	var left []int
	stage := func(pids ...int) {
		var live []int
		for _, p := range pids {
			if p > 0 {
				live = append(live, p)
			}
		}
		left = append(left, terminate(live, grace)...)
	}
	stage(pidOf("node"))
	var rest []int
	for _, p := range note(Processes(abs)) {
		if p != apiserver && p != etcd {
			rest = append(rest, p)
		}
	}
	stage(rest...)
	stage(apiserver)
	stage(etcd)
	for _, name := range Components {
		os.Remove(pidPath(abs, name))
	}
	if len(left) > 0 {
		return len(seen), fmt.Errorf("processes %v survived SIGKILL", left)
	}
	if again := note(Processes(abs)); len(again) > 0 {
		terminate(again, 0)
		if still := Processes(abs); len(still) > 0 {
			return len(seen), fmt.Errorf("processes %v still running", still)
		}
	}
	return len(seen), nil
}

// Client returns a clientset for the cluster in dir, from its kubeconfig.
func Client(dir string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfigPath(dir))
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func writeKubeconfig(dir, server string) error {
	ca, err := readPEM(pkiFile(dir, caCert))
	if err != nil {
		return err
	}
	cert, err := readPEM(pkiFile(dir, adminCert))
	if err != nil {
		return err
	}
	key, err := readPEM(pkiFile(dir, adminKey))
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[ContextName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[ContextName] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[ContextName] = &clientcmdapi.Context{Cluster: ContextName, AuthInfo: ContextName, Namespace: "default"}
	cfg.CurrentContext = ContextName
	return clientcmd.WriteToFile(*cfg, kubeconfigPath(dir))
}

// freePodNet is the lowest pod network (see State.PodNet) no other running cluster uses.
func freePodNet(dir string) int {
	used := map[int]bool{}
	for _, other := range otherClusters(dir) {
		if st, err := readState(other); err == nil {
			used[st.PodNet] = true
		}
	}
	n := 0
	for used[n] && n < 254 {
		n++
	}
	return n
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 (free when asked: a component
// that loses the race fails to bind and `up` reports its log).
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// adminTLS is the admin identity's TLS config, for probing /readyz before a clientset is
// useful.
func adminTLS(dir string) (*tls.Config, error) {
	cert, pool, err := loadIdentity(dir, adminCert, adminKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func waitReadyz(ctx context.Context, dir, server string) error {
	tc, err := adminTLS(dir)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	last := errors.New("no answer yet")
	for {
		if pid, err := readPid(pidPath(dir, kubebin.APIServer)); err == nil && !Alive(pid) {
			return errors.New("kube-apiserver exited")
		}
		if pid, err := readPid(pidPath(dir, kubebin.Etcd)); err == nil && !Alive(pid) {
			return errors.New("etcd exited")
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("/readyz: %s: %s", resp.Status, lastLines(string(body), 3))
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func waitNodeReady(ctx context.Context, cs kubernetes.Interface) error {
	last := errors.New("not registered yet")
	for {
		n, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil {
			last = errors.New("Ready condition not True")
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					return nil
				}
			}
		} else if !apierrors.IsNotFound(err) {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitServiceAccount waits for what the controller-manager gives every namespace and
// every pod's service-account volume needs: the default service account and the
// kube-root-ca.crt ConfigMap.
func waitServiceAccount(ctx context.Context, cs kubernetes.Interface) error {
	for {
		_, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			_, err = cs.CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		}
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// componentError adds the last lines of the named components' logs to err.
func componentError(dir, name string, err error, more ...string) error {
	var b strings.Builder
	b.WriteString(err.Error())
	for _, n := range append([]string{name}, more...) {
		data, rerr := os.ReadFile(logPath(dir, n))
		if rerr != nil {
			continue
		}
		fmt.Fprintf(&b, "\n--- last lines of %s:\n%s", logPath(dir, n), lastLines(string(data), 15))
	}
	return errors.New(b.String())
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
