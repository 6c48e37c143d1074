package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"servelab/internal/kubebin"
	"servelab/real/cluster/svcproxy"
)

// MaxPods is the node's pods capacity, the kubelet's default.
const MaxPods = 110

// RunNode runs the cluster's node until ctx ends: it registers the node (with a lease),
// runs pods as processes through the process provider, and serves the kubelet API
// (logs, port-forward) on 127.0.0.1:KubeletPort over TLS, accepting only clients with a
// certificate from the cluster's CA (the apiserver's kubelet client). When ctx ends it
// stops every pod's processes (their termination grace, then SIGKILL) before returning.
func RunNode(ctx context.Context, dir string) error {
	st, err := readState(dir)
	if err != nil {
		return err
	}
	cs, err := Client(dir)
	if err != nil {
		return err
	}
	nodeSpec, err := nodeObject(st)
	if err != nil {
		return err
	}

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: cs.CoreV1().Events(corev1.NamespaceAll)})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: NodeName})

	prov, err := newProvider(providerConfig{
		servelabBin: st.ServelabBin,
		podsDir:     podsDir(dir),
		hostIP:      "127.0.0.1",
		recorder:    recorder,
		client:      cs,
		baseEnv:     containerBaseEnv(os.Environ()),
		nodeAlloc:   nodeSpec.Status.Allocatable,
		apiServer:   st.Server,
		podNet:      byte(st.PodNet),
	})
	if err != nil {
		return err
	}
	defer prov.shutdown()

	podInformers := informers.NewSharedInformerFactoryWithOptions(cs, time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", NodeName).String()
		}))
	others := informers.NewSharedInformerFactory(cs, time.Minute)
	podInformer := podInformers.Core().V1().Pods()
	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:         cs.CoreV1(),
		PodInformer:       podInformer,
		EventRecorder:     recorder,
		Provider:          prov,
		ConfigMapInformer: others.Core().V1().ConfigMaps(),
		SecretInformer:    others.Core().V1().Secrets(),
		ServiceInformer:   others.Core().V1().Services(),
		// The provider resolves env itself: status.podIP is known only once it has
		// given the pod its address, after virtual-kubelet would have resolved it.
		SkipDownwardAPIResolution: true,
	})
	if err != nil {
		return err
	}
	nc, err := node.NewNodeController(node.NaiveNodeProvider{}, nodeSpec, cs.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(cs.CoordinationV1().Leases(corev1.NamespaceNodeLease), 40),
		node.WithNodeStatusUpdateInterval(10*time.Second),
	)
	if err != nil {
		return err
	}

	srv, err := kubeletServer(dir, st, prov, podInformer.Lister())
	if err != nil {
		return err
	}
	defer srv.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	podInformers.Start(ctx.Done())
	others.Start(ctx.Done())
	go pc.Run(ctx, 4) //nolint:errcheck // its error shows through Done/Err below
	select {
	case <-pc.Ready():
	case <-pc.Done():
		return fmt.Errorf("pod controller: %w", pc.Err())
	case <-ctx.Done():
		return nil
	}
	go nc.Run(ctx) //nolint:errcheck
	// Services: no kube-proxy here; the userspace proxy listens on each cluster IP
	// (ServiceCIDR is on loopback) and forwards to the ready pods, found from the Pods
	// since their loopback addresses cannot be written into EndpointSlices.
	proxyErr := make(chan error, 1)
	go func() {
		proxyErr <- svcproxy.Run(ctx, cs, svcproxy.Options{
			ServiceCIDR: ServiceCIDR,
			Endpoints:   svcproxy.FromPods,
			Logf:        func(format string, args ...any) { vklog.G(ctx).Infof(format, args...) },
		})
	}()
	select {
	case <-ctx.Done():
	case <-pc.Done():
		err = fmt.Errorf("pod controller: %w", pc.Err())
	case <-nc.Done():
		err = fmt.Errorf("node controller: %w", nc.Err())
	case perr := <-proxyErr:
		err = fmt.Errorf("service proxy: %w", perr)
		proxyErr <- nil
	}
	// Stop the pods while the apiserver may still take their final status.
	prov.shutdown()
	cancel()
	<-pc.Done()
	<-proxyErr
	return err
}

// containerBaseEnv is the part of the node's environment a pod's process starts with,
// before the container's own env: what a process needs to run on this machine (a
// container image would bring its own), and servelab's SERVELAB_* settings (the
// cluster's marker among them, so `down` finds every pod's process).
func containerBaseEnv(env []string) []string {
	keep := map[string]bool{"PATH": true, "HOME": true, "TMPDIR": true, "LANG": true, "TZ": true, "USER": true, "GOCOVERDIR": true}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if keep[k] || strings.HasPrefix(k, "SERVELAB_") {
			out = append(out, kv)
		}
	}
	return out
}

func nodeObject(st State) (*corev1.Node, error) {
	mem, err := memTotal()
	if err != nil {
		return nil, err
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory:           *resource.NewQuantity(mem, resource.BinarySI),
		corev1.ResourcePods:             *resource.NewQuantity(MaxPods, resource.DecimalSI),
		corev1.ResourceEphemeralStorage: *resource.NewQuantity(diskTotal(st.Dir), resource.BinarySI),
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	hostname, _ := os.Hostname()
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: NodeName,
			Labels: map[string]string{
				"type":                   "virtual-kubelet",
				"kubernetes.io/role":     "agent",
				"kubernetes.io/hostname": NodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     runtime.GOARCH,
				"servelab.io/node":       "processes",
			},
			Annotations: map[string]string{
				"servelab.io/runtime": "pods run as local servelab processes, each on its own loopback address; not containers",
			},
		},
		Spec: corev1.NodeSpec{},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity.DeepCopy(),
			Phase:       corev1.NodeRunning,
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "servelab's process node is ready"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
				cond(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated", "pods get loopback addresses"),
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
				{Type: corev1.NodeHostName, Address: hostname},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(st.KubeletPort)}},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem:         "linux",
				Architecture:            runtime.GOARCH,
				KubeletVersion:          kubebin.Version,
				ContainerRuntimeVersion: "servelab-processes://" + kubebin.Version,
			},
		},
	}, nil
}

// memTotal is the machine's memory in bytes, from /proc/meminfo.
func memTotal() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb * 1024, nil
				}
			}
		}
	}
	return 0, errors.New("/proc/meminfo: no MemTotal line")
}

// kubeletServer serves virtual-kubelet's kubelet API routes (containerLogs, portForward,
// pods) on 127.0.0.1:KubeletPort with the node's serving certificate, requiring a client
// certificate signed by the cluster's CA (the apiserver's kubelet client).
func kubeletServer(dir string, st State, p *provider, pods interface {
	List(labels.Selector) ([]*corev1.Pod, error)
}) (*http.Server, error) {
	cert, pool, err := loadIdentity(dir, nodeServingCert, nodeServingKey)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	api.AttachPodRoutes(api.PodHandlerConfig{
		RunInContainer:    p.RunInContainer,
		AttachToContainer: p.AttachToContainer,
		PortForward:       p.PortForward,
		GetContainerLogs:  p.GetContainerLogs,
		GetPods:           p.GetPods,
		GetPodsFromKubernetes: func(context.Context) ([]*corev1.Pod, error) {
			return pods.List(labels.Everything())
		},
		StreamIdleTimeout:     4 * time.Hour,
		StreamCreationTimeout: 30 * time.Second,
	}, mux, false)
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(st.KubeletPort)))
	if err != nil {
		return nil, fmt.Errorf("kubelet API: %w", err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		},
	}
	go srv.ServeTLS(ln, "", "") //nolint:errcheck // ends with Close
	return srv, nil
}

// podDirName names a pod's directory under Dir/pods.
func podDirName(pod *corev1.Pod) string {
	return path.Clean(pod.Namespace + "_" + pod.Name + "_" + string(pod.UID))
}
