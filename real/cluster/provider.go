package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
)

// Reasons the node gives in pod status and events. The kubelet's own where it has one.
const (
	// ReasonUnsupportedImage: a container's image is not servelab's; this node runs
	// processes, not containers.
	ReasonUnsupportedImage = "UnsupportedImage"
	// ReasonUnsupportedCommand: a container's command is not the servelab binary.
	ReasonUnsupportedCommand = "UnsupportedCommand"
	// ReasonUnsupportedVolume: a volume of a kind a process cannot be given (a PVC, ...).
	ReasonUnsupportedVolume = "UnsupportedVolume"
	reasonFailedMount       = "FailedMount"                // the kubelet's event
	reasonConfigError       = "CreateContainerConfigError" // the kubelet's
	reasonRunError          = "RunContainerError"          // the kubelet's
	reasonCrashLoop         = "CrashLoopBackOff"           // the kubelet's
	reasonInitFailed        = "InitContainerFailed"
)

// restartBackoff is the kubelet's crash-loop back-off: 10 s doubling to 5 min, reset
// after a container ran 10 min.
const (
	backoffInitial = 10 * time.Second
	backoffMax     = 5 * time.Minute
	backoffReset   = 10 * time.Minute
)

type providerConfig struct {
	servelabBin string
	podsDir     string
	hostIP      string
	recorder    record.EventRecorder
	client      kubernetes.Interface
	baseEnv     []string
	nodeAlloc   corev1.ResourceList
	backoff     time.Duration // first crash-loop back-off (backoffInitial when 0)
	apiServer   string        // the apiserver's URL, for pods' kubeconfigs
	podNet      byte          // pod addresses start at 127.0.podNet.2 (0 for a cluster)
}

// provider is virtual-kubelet's PodLifecycleHandler (and PodNotifier) for this node: it
// runs each pod's containers as local processes of the servelab binary, each pod on its
// own loopback address.
type provider struct {
	cfg providerConfig
	ips *ipPool

	mu     sync.Mutex
	pods   map[string]*podRun // namespace/name
	notify func(*corev1.Pod)
	closed bool
}

func newProvider(cfg providerConfig) (*provider, error) {
	if err := os.MkdirAll(cfg.podsDir, 0o755); err != nil {
		return nil, err
	}
	return &provider{cfg: cfg, ips: newIPPool(cfg.podNet), pods: map[string]*podRun{}}, nil
}

func podKey(namespace, name string) string { return namespace + "/" + name }

// NotifyPods implements node.PodNotifier.
func (p *provider) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = f
	p.mu.Unlock()
}

func (p *provider) send(pod *corev1.Pod) {
	p.mu.Lock()
	f := p.notify
	p.mu.Unlock()
	if f != nil {
		f(pod)
	}
}

// CreatePod implements node.PodLifecycleHandler: it gives the pod an address and starts
// its containers in the background.
func (p *provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errdefs.InvalidInput("node is shutting down")
	}
	if old, ok := p.pods[key]; ok && old.pod.UID == pod.UID {
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()

	ip := p.cfg.hostIP
	if !pod.Spec.HostNetwork {
		var err error
		if ip, err = p.ips.get(); err != nil {
			return err
		}
	}
	dir := filepath.Join(p.cfg.podsDir, podDirName(pod))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.releaseIP(pod, ip)
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	now := metav1.Now()
	pr := &podRun{
		p:       p,
		pod:     pod.DeepCopy(),
		ip:      ip,
		dir:     dir,
		ctx:     runCtx,
		cancel:  cancel,
		done:    make(chan struct{}),
		started: now,
		conds:   map[corev1.PodConditionType]corev1.PodCondition{},
	}
	for _, c := range pod.Spec.InitContainers {
		pr.inits = append(pr.inits, &ctr{spec: c, state: waiting("PodInitializing", "")})
	}
	for _, c := range pod.Spec.Containers {
		pr.ctrs = append(pr.ctrs, &ctr{spec: c, state: waiting("ContainerCreating", "")})
	}
	p.mu.Lock()
	p.pods[key] = pr
	p.mu.Unlock()

	if reason, msg := pr.unsupported(); reason != "" {
		pr.mu.Lock()
		pr.failReason, pr.failMessage = reason, msg
		for _, c := range append(append([]*ctr{}, pr.inits...), pr.ctrs...) {
			c.state = waiting(reason, msg)
		}
		pr.mu.Unlock()
		p.cfg.recorder.Event(pod, corev1.EventTypeWarning, "Failed", msg)
		close(pr.done)
		pr.update()
		return nil
	}
	pr.update()
	go pr.run()
	return nil
}

// UpdatePod implements node.PodLifecycleHandler. A pod's spec is immutable apart from
// images and a few scheduling fields; labels and annotations (the downward API) follow.
func (p *provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr == nil {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	pr.mu.Lock()
	pr.pod.Labels, pr.pod.Annotations = pod.Labels, pod.Annotations
	pr.mu.Unlock()
	return nil
}

// DeletePod implements node.PodLifecycleHandler: it stops the pod's processes (SIGTERM
// to each process group, SIGKILL after the pod's grace period) in the background and
// reports the terminal status when they are gone.
func (p *provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr == nil || pr.pod.UID != pod.UID {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	pr.stop(grace)
	go func() {
		<-pr.done
		pr.update()
		// As the kubelet's status manager: once every process is gone, remove the pod
		// from the apiserver at once (grace 0, this pod's UID only), rather than when
		// its grace period ends; its controller replaces it sooner.
		if p.cfg.client != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			zero := int64(0)
			err := p.cfg.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
				GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
			})
			cancel()
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				pr.event(corev1.EventTypeWarning, "FailedDelete", "removing the stopped pod from the apiserver: %v", err)
			}
		}
		p.mu.Lock()
		if p.pods[podKey(pod.Namespace, pod.Name)] == pr {
			delete(p.pods, podKey(pod.Namespace, pod.Name))
		}
		p.mu.Unlock()
		p.releaseIP(pod, pr.ip)
	}()
	return nil
}

func (p *provider) releaseIP(pod *corev1.Pod, ip string) {
	if !pod.Spec.HostNetwork {
		p.ips.put(ip)
	}
}

// shutdown stops every pod (its grace period, at most 10 s: the node is going away) and
// waits for their processes to exit.
func (p *provider) shutdown() {
	p.mu.Lock()
	p.closed = true
	var all []*podRun
	for _, pr := range p.pods {
		all = append(all, pr)
	}
	p.mu.Unlock()
	for _, pr := range all {
		grace := 10 * time.Second
		if g := pr.pod.Spec.TerminationGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < grace {
			grace = time.Duration(*g) * time.Second
		}
		pr.stop(grace)
	}
	for _, pr := range all {
		<-pr.done
		pr.update()
	}
}

func (p *provider) lookup(namespace, name string) *podRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[podKey(namespace, name)]
}

// GetPod implements node.PodLifecycleHandler.
func (p *provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	return pr.snapshot(), nil
}

// GetPodStatus implements node.PodLifecycleHandler.
func (p *provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods implements node.PodLifecycleHandler.
func (p *provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	all := make([]*podRun, 0, len(p.pods))
	for _, pr := range p.pods {
		all = append(all, pr)
	}
	p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(all))
	for _, pr := range all {
		out = append(out, pr.snapshot())
	}
	return out, nil
}

// RunInContainer is the kubelet API's exec: a process has no container to enter.
func (p *provider) RunInContainer(context.Context, string, string, string, []string, api.AttachIO) error {
	return errdefs.InvalidInput("exec is not supported: pods on node " + NodeName + " are local processes, not containers")
}

// AttachToContainer is the kubelet API's attach: not supported either.
func (p *provider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported: pods on node " + NodeName + " are local processes, not containers")
}

// PortForward connects the stream to the pod's address and port (`kubectl port-forward`).
func (p *provider) PortForward(ctx context.Context, namespace, name string, port int32, stream io.ReadWriteCloser) error {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(pr.ip, strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(conn, stream); errc <- err }()
	go func() { _, err := io.Copy(stream, conn); errc <- err }()
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	return err
}

// isServelabImage reports whether an image reference names servelab's image: its last
// path component, without tag or digest, is "servelab" (servelab, servelab:dev,
// ghcr.io/org/servelab:v1, localhost:5000/servelab@sha256:...).
func isServelabImage(image string) bool {
	ref, _, _ := strings.Cut(image, "@")
	name := path.Base(ref)
	name, _, _ = strings.Cut(name, ":")
	return name == "servelab"
}

// argv is the process a container runs: the servelab binary with the container's
// command (whose first word must be servelab, the image's entrypoint) and args, $(VAR)
// expanded against the container's environment.
func (p *provider) argv(c *corev1.Container, env []envVar) ([]string, error) {
	lookup := func(k string) (string, bool) {
		for i := len(env) - 1; i >= 0; i-- {
			if env[i].name == k {
				return env[i].value, true
			}
		}
		return "", false
	}
	var words []string
	if len(c.Command) > 0 {
		if path.Base(c.Command[0]) != "servelab" {
			return nil, fmt.Errorf("container %q: command %q: node %s runs the servelab binary only (the servelab image's entrypoint); leave command empty or start it with servelab", c.Name, c.Command[0], NodeName)
		}
		words = append(words, c.Command[1:]...)
	}
	words = append(words, c.Args...)
	out := []string{p.cfg.servelabBin}
	for _, w := range words {
		out = append(out, expand(w, lookup))
	}
	return out, nil
}

// ipPool hands out pod addresses 127.0.0.2, 127.0.0.3, ... (all of 127.0.0.0/8 routes to
// lo on Linux), the lowest free one first, so freed addresses are reused.
type ipPool struct {
	mu    sync.Mutex
	first uint32 // the lowest address, as the last three bytes
	used  map[uint32]bool
}

// newIPPool starts at 127.0.net.2 (the provider's tests use their own net, so that their
// pods' ports do not meet a cluster's started by tests running beside them).
func newIPPool(net byte) *ipPool {
	return &ipPool{first: uint32(net)<<8 | 2, used: map[uint32]bool{}}
}

func (p *ipPool) get() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Up to 127.0.255.254, skipping each /24's .0 and .255 (127.1.0.0/16 is the
	// Services' range).
	for n := p.first; n < 1<<16-1; n++ {
		if b := n & 0xff; b == 0 || b == 0xff {
			continue
		}
		if !p.used[n] {
			p.used[n] = true
			return fmt.Sprintf("127.%d.%d.%d", n>>16, (n>>8)&0xff, n&0xff), nil
		}
	}
	return "", errors.New("no free loopback address")
}

func (p *ipPool) put(ip string) {
	a := net.ParseIP(ip).To4()
	if a == nil || a[0] != 127 {
		return
	}
	p.mu.Lock()
	delete(p.used, uint32(a[1])<<16|uint32(a[2])<<8|uint32(a[3]))
	p.mu.Unlock()
}

func waiting(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

// startProcess starts argv in its own process group, stdout and stderr to logPath.
func startProcess(argv, env []string, dir, logPath string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// diskTotal is the size of the filesystem holding dir, in bytes (0 when unknown).
func diskTotal(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Blocks) * st.Bsize
}
