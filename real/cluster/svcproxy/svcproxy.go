// Package svcproxy makes Kubernetes Services work on servelab's one-machine cluster,
// where there is no kube-proxy: a userspace service proxy, as kube-proxy's old userspace
// mode was (k8s.io/kubernetes pkg/proxy/userspace, removed in 1.26). For every Service
// with a cluster IP inside Options.ServiceCIDR it listens on clusterIP:port for each TCP
// port and forwards each accepted connection to one of the Service's ready endpoints,
// round-robin.
//
// # How `servelab cluster up` uses it
//
// Start kube-apiserver with --service-cluster-ip-range=127.1.0.0/16: it then allocates
// cluster IPs such as 127.1.68.203, and on Linux all of 127.0.0.0/8 routes to lo, so a
// process on the machine can listen on them without any interface setup. The node
// process (the one that runs virtual-kubelet and the pods) runs, in its own goroutine
// until it stops,
//
//	svcproxy.Run(ctx, clientset, svcproxy.Options{
//		ServiceCIDR: "127.1.0.0/16", // the same range as the API server's
//		Endpoints:   svcproxy.FromPods,
//		Logf:        logf,
//	})
//
// FromPods, because the pods' IPs are loopback addresses (127.0.0.2, .3, ...) and the API
// server refuses loopback addresses in EndpointSlices and Endpoints ("may not be in the
// loopback range", k8s.io/kubernetes pkg/apis/core/validation ValidateEndpointIP), while
// it takes them as pod IPs: kube-controller-manager's EndpointSlice controller can never
// write these pods' slices, so the proxy computes the endpoints from the Pods the way that
// controller would. Since those controllers' writes can only fail there, run
// kube-controller-manager with
// --controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller.
//
// A pod that calls http://my-svc.my-ns:port needs DNS, which this cluster does not have:
// clients use the cluster IP (kubectl get svc) or the MY_SVC_SERVICE_HOST/_PORT
// environment variables a kubelet sets (the node's provider has to set them too). The
// default/kubernetes Service gets a listener with no endpoints (it has no selector): pods
// reach the API server through the kubeconfig the node gives them. Binding ports below
// 1024 needs root or net.ipv4.ip_unprivileged_port_start; servelab's own Services use
// higher ports.
//
// # Semantics, after kube-proxy
//
//   - Services of type ClusterIP, NodePort and LoadBalancer get their cluster IPs served
//     (kube-proxy serves the cluster IP of all three); node ports and load balancers are
//     not. Headless Services (clusterIP None), ExternalName Services, cluster IPs outside
//     ServiceCIDR, and Services labelled service.kubernetes.io/service-proxy-name (meant
//     for another proxy) are skipped. Only TCP ports are proxied; UDP and SCTP ports are
//     skipped.
//   - FromEndpointSlices (the default, what a real cluster's addresses allow): endpoints
//     come from the EndpointSlices labelled kubernetes.io/service-name=<name> in the
//     Service's namespace, of the Service's IP family. An endpoint is used when
//     conditions.ready is true or unset (kube-proxy pkg/proxy/endpointslicecache.go reads
//     a nil ready as ready). Its port is the slice port whose name is the Service port's
//     name: the EndpointSlice controller has already resolved a named targetPort into
//     each pod's container port number, so a targetPort given by name works, per pod.
//   - FromPods: the endpoints are the Pods matched by the Service's selector (none
//     without one) that are not finished or being deleted, have an IP of the family and
//     are Ready (or the Service sets publishNotReadyAddresses); a targetPort name is
//     looked up in each pod's container ports (and sidecars'), with the Service port's
//     protocol, as k8s.io/endpointslice's FindPort does.
//   - Each connection goes to the next endpoint in turn; when dialing it fails, the next
//     one is tried, each endpoint once; when none is left (or there is none) the client's
//     connection is closed at once, as kube-proxy's REJECT rule makes it fail fast.
//   - Bytes are copied both ways until both sides have closed; a side that closes its
//     write half (FIN) has that half-close passed on, so request bodies ended by EOF,
//     HTTP/1.1 keep-alive, chunked streaming and server-sent events pass unchanged and
//     unbuffered.
//   - Connections already established outlive the removal of their endpoint, port or
//     Service (as conntrack entries do under kube-proxy), so a rolling update does not cut
//     requests in flight; only new connections see the change. When Run returns, every
//     listener and every connection it made is closed and its goroutines have exited.
//   - sessionAffinity: ClientIP is not implemented: connections are spread round-robin
//     regardless.
package svcproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Options configure Run.
type Options struct {
	// ServiceCIDR is kube-apiserver's --service-cluster-ip-range (e.g. 127.1.0.0/16);
	// only cluster IPs inside it are served. Required. Several ranges (dual stack) are
	// separated by commas, as the flag takes them.
	ServiceCIDR string
	// Namespace limits the proxy to one namespace; empty watches all.
	Namespace string
	// Logf receives one line per listener opened or closed, per change of a port's
	// endpoints, and per error. Nil discards them.
	Logf func(format string, args ...any)
	// DialTimeout bounds each attempt to connect to an endpoint (default 2s).
	DialTimeout time.Duration
	// ResyncPeriod is the informers' resync period (default 0: none; the watch is
	// level-triggered through the queue anyway).
	ResyncPeriod time.Duration
	// Endpoints is where a Service's endpoints come from: FromEndpointSlices (the
	// default, as kube-proxy) or FromPods (what servelab's local cluster needs: its pods'
	// loopback IPs cannot be written into EndpointSlices).
	Endpoints EndpointSource
}

// EndpointSource says where the proxy reads a Service's endpoints.
type EndpointSource string

const (
	// FromEndpointSlices reads the EndpointSlices the control plane's EndpointSlice
	// controller writes, as kube-proxy does.
	FromEndpointSlices EndpointSource = "EndpointSlices"
	// FromPods computes the endpoints from the Pods the Service's selector matches, the
	// way the EndpointSlice controller would (k8s.io/endpointslice utils.go FindPort and
	// util/controller_utils.go ShouldPodBeInEndpoints). The API server refuses loopback
	// addresses in EndpointSlices and Endpoints (pkg/apis/core/validation
	// ValidateEndpointIP) but takes them as pod IPs, so on a cluster whose pods have
	// 127.0.0.x addresses no slice can ever list them and this is the only source.
	FromPods EndpointSource = "Pods"
)

// The labels kube-proxy filters on (k8s.io/api/core/v1 and discovery/v1 well-known labels).
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	labelHeadless         = "service.kubernetes.io/headless"
)

// Run serves the cluster's Services until ctx ends, then closes every listener and
// connection it opened, waits for its goroutines, and returns nil. It returns an error
// at once when the options are invalid, and ctx's error when ctx ends before the
// informers' caches have synced.
func Run(ctx context.Context, cs kubernetes.Interface, opts Options) error {
	cidrs, err := parseCIDRs(opts.ServiceCIDR)
	if err != nil {
		return err
	}
	switch opts.Endpoints {
	case "":
		opts.Endpoints = FromEndpointSlices
	case FromEndpointSlices, FromPods:
	default:
		return fmt.Errorf("svcproxy: Options.Endpoints %q: want %q or %q", opts.Endpoints, FromEndpointSlices, FromPods)
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 2 * time.Second
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}

	factory := informers.NewSharedInformerFactoryWithOptions(cs, opts.ResyncPeriod,
		informers.WithNamespace(opts.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			// As kube-proxy: not the Services another proxy serves, nor headless ones.
			o.LabelSelector = "!" + labelServiceProxyName + ",!" + labelHeadless
		}))
	svcInformer := factory.Core().V1().Services()
	// Pods carry none of the Services' labels: their own factory, without the filter.
	podFactory := informers.NewSharedInformerFactoryWithOptions(cs, opts.ResyncPeriod,
		informers.WithNamespace(opts.Namespace))

	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "svcproxy"})

	p := &proxier{
		cidrs:       cidrs,
		logf:        logf,
		dialTimeout: opts.DialTimeout,
		services:    svcInformer.Lister(),
		ports:       map[string]map[portKey]*portProxy{},
		conns:       map[net.Conn]struct{}{},
	}
	p.ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))

	enqueueSvc := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := svcInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueSvc,
		UpdateFunc: func(_, obj any) { enqueueSvc(obj) },
		DeleteFunc: enqueueSvc,
	}); err != nil {
		return fmt.Errorf("svcproxy: watching Services: %w", err)
	}
	switch opts.Endpoints {
	case FromEndpointSlices:
		inf := factory.Discovery().V1().EndpointSlices()
		p.slices = inf.Lister()
		enqueueSlice := func(obj any) {
			if s, ok := unwrap(obj).(*discoveryv1.EndpointSlice); ok {
				if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
					queue.Add(s.Namespace + "/" + name)
				}
			}
		}
		if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    enqueueSlice,
			UpdateFunc: func(old, obj any) { enqueueSlice(old); enqueueSlice(obj) },
			DeleteFunc: enqueueSlice,
		}); err != nil {
			return fmt.Errorf("svcproxy: watching EndpointSlices: %w", err)
		}
	case FromPods:
		inf := podFactory.Core().V1().Pods()
		p.pods = inf.Lister()
		// A pod change concerns the Services whose selector matches its labels.
		enqueuePod := func(obj any) {
			pod, ok := unwrap(obj).(*corev1.Pod)
			if !ok {
				return
			}
			svcs, err := p.services.Services(pod.Namespace).List(labels.Everything())
			if err != nil {
				return
			}
			for _, svc := range svcs {
				if len(svc.Spec.Selector) > 0 && labels.SelectorFromValidatedSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
					queue.Add(svc.Namespace + "/" + svc.Name)
				}
			}
		}
		if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    enqueuePod,
			UpdateFunc: func(old, obj any) { enqueuePod(old); enqueuePod(obj) },
			DeleteFunc: enqueuePod,
		}); err != nil {
			return fmt.Errorf("svcproxy: watching Pods: %w", err)
		}
	}

	defer func() {
		queue.ShutDown()
		factory.Shutdown()
		podFactory.Shutdown()
		p.closeAll()
	}()
	factory.Start(ctx.Done())
	podFactory.Start(ctx.Done())
	for _, f := range []informers.SharedInformerFactory{factory, podFactory} {
		for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("svcproxy: the %v cache did not sync", typ)
			}
		}
	}
	logf("svcproxy: serving cluster IPs in %s, endpoints from %s", opts.ServiceCIDR, opts.Endpoints)

	// One worker: a sync only reads two caches and opens or closes a few listeners;
	// one worker also keeps a Service's listeners from being changed by two at once.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p.processNext(queue) {
		}
	}()
	<-ctx.Done()
	queue.ShutDown()
	<-done
	return nil
}

// unwrap returns the object of a deletion whose final state the informer missed.
func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

func parseCIDRs(s string) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("svcproxy: Options.ServiceCIDR is required (kube-apiserver's --service-cluster-ip-range, e.g. 127.1.0.0/16)")
	}
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("svcproxy: Options.ServiceCIDR %q: %w", s, err)
		}
		out = append(out, pfx.Masked())
	}
	return out, nil
}

// portKey is where a Service port listens.
type portKey struct {
	addr netip.AddrPort
}

// proxier holds the listeners of every served Service.
type proxier struct {
	cidrs       []netip.Prefix
	logf        func(string, ...any)
	dialTimeout time.Duration
	services    corelisters.ServiceLister
	slices      discoverylisters.EndpointSliceLister // with FromEndpointSlices
	pods        corelisters.PodLister                // with FromPods

	// ports is touched only by the single worker (and by closeAll after it stopped).
	ports map[string]map[portKey]*portProxy // by Service key namespace/name

	// ctx ends when closeAll starts; it cancels dials in progress.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // every open client and endpoint connection
	closed bool
	wg     sync.WaitGroup // accept loops and connection goroutines
}

func (p *proxier) processNext(q workqueue.TypedRateLimitingInterface[string]) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	if err := p.sync(key); err != nil {
		p.logf("svcproxy: %s: %v (retrying)", key, err)
		q.AddRateLimited(key)
		return true
	}
	q.Forget(key)
	return true
}

// wanted is one Service port to serve.
type wanted struct {
	name      string // the Service port's name
	endpoints []string
}

// sync makes the listeners of Service key match the Service and its EndpointSlices.
func (p *proxier) sync(key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // not a key this proxy made; nothing to retry
	}
	svc, err := p.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		p.setPorts(key, nil)
		return nil
	}
	if err != nil {
		return err
	}
	want, err := p.desired(svc)
	if err != nil {
		return err
	}
	return p.setPorts(key, want)
}

// desired lists the listeners Service svc should have, with their ready endpoints.
func (p *proxier) desired(svc *corev1.Service) (map[portKey]wanted, error) {
	switch svc.Spec.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer, "":
	default:
		return nil, nil // ExternalName: nothing to proxy
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var addrs []netip.Addr
	for _, s := range ips {
		if s == corev1.ClusterIPNone {
			return nil, nil
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		if p.inCIDR(ip) {
			addrs = append(addrs, ip)
		}
	}
	if len(addrs) == 0 {
		return nil, nil
	}
	var eps []*discoveryv1.EndpointSlice
	var pods []*corev1.Pod
	var err error
	switch {
	case p.slices != nil:
		sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
		eps, err = p.slices.EndpointSlices(svc.Namespace).List(sel)
	case p.pods != nil && len(svc.Spec.Selector) > 0:
		// Without a selector the Service's endpoints are managed by hand, in slices.
		pods, err = p.pods.Pods(svc.Namespace).List(labels.SelectorFromValidatedSet(svc.Spec.Selector))
	}
	if err != nil {
		return nil, err
	}
	want := map[portKey]wanted{}
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != corev1.ProtocolTCP && sp.Protocol != "" {
			continue
		}
		for _, ip := range addrs {
			w := wanted{name: sp.Name}
			if p.slices != nil {
				w.endpoints = sliceEndpoints(eps, sp.Name, ip.Is4())
			} else {
				w.endpoints = podEndpoints(pods, svc, sp, ip.Is4())
			}
			want[portKey{netip.AddrPortFrom(ip, uint16(sp.Port))}] = w
		}
	}
	return want, nil
}

func (p *proxier) inCIDR(ip netip.Addr) bool {
	for _, c := range p.cidrs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}

// setPorts opens, updates and closes Service key's listeners to match want (nil: none).
// It returns the first error opening a listener; the rest are still applied.
func (p *proxier) setPorts(key string, want map[portKey]wanted) error {
	have := p.ports[key]
	for k, pp := range have {
		if w, ok := want[k]; !ok || w.name != pp.name {
			pp.stop()
			delete(have, k)
			p.logf("svcproxy: %s port %q: stopped listening on %s", key, pp.name, k.addr)
		}
	}
	var firstErr error
	for k, w := range want {
		pp, ok := have[k]
		if !ok {
			ln, err := net.Listen("tcp", k.addr.String())
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("port %q: %w", w.name, err)
				}
				continue
			}
			pp = &portProxy{p: p, svc: key, name: w.name, ln: ln, done: make(chan struct{})}
			pp.endpoints.Store(&[]string{})
			if have == nil {
				have = map[portKey]*portProxy{}
				p.ports[key] = have
			}
			have[k] = pp
			p.logf("svcproxy: %s port %q: listening on %s", key, w.name, k.addr)
			p.wg.Add(1)
			go pp.serve()
		}
		if old := *pp.endpoints.Load(); !slices.Equal(old, w.endpoints) {
			eps := slices.Clone(w.endpoints)
			pp.endpoints.Store(&eps)
			p.logf("svcproxy: %s port %q: endpoints %v (were %v)", key, w.name, eps, old)
		}
	}
	if len(have) == 0 {
		delete(p.ports, key)
	}
	return firstErr
}

// closeAll stops every listener and closes every connection, then waits for every
// goroutine the proxier started. Called once the worker has stopped.
func (p *proxier) closeAll() {
	p.cancel()
	for key, have := range p.ports {
		for k, pp := range have {
			pp.stop()
			p.logf("svcproxy: %s port %q: stopped listening on %s", key, pp.name, k.addr)
		}
		delete(p.ports, key)
	}
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// track registers an open connection so that closeAll can close it; it returns false
// (and closes c) when the proxier is already closing.
func (p *proxier) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxier) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// portProxy serves one Service port on one cluster IP.
type portProxy struct {
	p         *proxier
	svc, name string
	ln        net.Listener
	endpoints atomic.Pointer[[]string]
	next      atomic.Uint64 // round-robin position
	done      chan struct{}
	stopOnce  sync.Once
}

// stop closes the listener; connections already accepted go on.
func (pp *portProxy) stop() {
	pp.stopOnce.Do(func() {
		close(pp.done)
		pp.ln.Close()
	})
}

func (pp *portProxy) serve() {
	defer pp.p.wg.Done()
	var backoff time.Duration
	for {
		c, err := pp.ln.Accept()
		if err != nil {
			select {
			case <-pp.done:
				return
			default:
			}
			// As net/http: back off on temporary failures such as EMFILE.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else {
				backoff = min(2*backoff, time.Second)
			}
			pp.p.logf("svcproxy: %s port %q: accept: %v; retrying in %v", pp.svc, pp.name, err, backoff)
			select {
			case <-pp.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		if !pp.p.track(c) {
			continue
		}
		pp.p.wg.Add(1)
		go pp.handle(c)
	}
}

// handle connects client c to an endpoint and copies bytes both ways.
func (pp *portProxy) handle(c net.Conn) {
	defer pp.p.wg.Done()
	defer pp.p.untrack(c)
	be := pp.dial()
	if be == nil {
		return // closing c at once tells the client there is no endpoint
	}
	if !pp.p.track(be) {
		return
	}
	defer pp.p.untrack(be)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(be, c)
	}()
	pipe(c, be)
	<-done
}

// pipe copies src to dst until src's EOF, then closes dst's write half so that the
// far side sees the EOF too, while the other direction goes on. When the copy fails
// (a reset, or closeAll closing a connection) the connection is over both ways:
// closing both ends the other direction's copy too.
func pipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			err = cw.CloseWrite()
		} else {
			err = errors.ErrUnsupported
		}
	}
	if err != nil {
		src.Close()
		dst.Close()
	}
}

// dial connects to the next ready endpoint, trying each at most once; nil when none
// answers.
func (pp *portProxy) dial() net.Conn {
	eps := *pp.endpoints.Load()
	if len(eps) == 0 {
		return nil
	}
	start := pp.next.Add(1) - 1
	d := net.Dialer{Timeout: pp.p.dialTimeout}
	for i := range eps {
		ep := eps[(start+uint64(i))%uint64(len(eps))]
		be, err := d.DialContext(pp.p.ctx, "tcp", ep)
		if err == nil {
			return be
		}
		if pp.p.ctx.Err() != nil {
			return nil
		}
		pp.p.logf("svcproxy: %s port %q: endpoint %s: %v", pp.svc, pp.name, ep, err)
	}
	return nil
}
