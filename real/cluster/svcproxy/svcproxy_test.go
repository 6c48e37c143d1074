package svcproxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"servelab/internal/k8stest"
	"servelab/real/cluster/svcproxy"
)

const serviceCIDR = "127.1.0.0/16"

// logs collects the proxy's log lines so that tests can wait for a change to be applied.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
}

// count is how many lines contain every one of subs.
func (l *logs) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range l.lines {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		n++
	}
	return n
}

func (l *logs) dump() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// waitFor polls cond until it returns nil, failing the test after a deadline generous
// enough for a loaded machine.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// backend is an HTTP server on its own loopback address, as a pod on the local cluster is.
type backend struct {
	name    string
	addr    netip.AddrPort
	release chan struct{} // each receive lets one /sse stream send its second event
}

func startBackend(t *testing.T, name, ip string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("listening on %s (all of 127.0.0.0/8 routes to lo on Linux): %v", ip, err)
	}
	b := &backend{name: name, addr: netip.MustParseAddrPort(ln.Addr().String()), release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	})
	// An SSE stream: one event, then a second only when the test releases it, so the
	// client can only see the first one if the proxy passes it on unbuffered.
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: %s 1\n\n", name)
		w.(http.Flusher).Flush()
		select {
		case <-b.release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(w, "data: %s 2\n\n", name)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

// startEcho serves a raw TCP port that reads until the client's EOF (its half-close)
// and then answers with the byte count: it only answers if the half-close got through.
func startEcho(t *testing.T, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "read %d bytes", n)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// refusedPort is a port on ip that nothing listens on.
func refusedPort(t *testing.T, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

// streamClient's requests last as long as the test needs: Client.Timeout would cut a
// stream's body too.
var streamClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func get(url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func ptr[T any](v T) *T { return &v }

func endpointSlice(ns, svc, name string, ports map[string]int32, ready bool, ips ...netip.Addr) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "svcproxy-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for n, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr(n), Port: ptr(p), Protocol: ptr(corev1.ProtocolTCP)})
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready)}})
	}
	return s
}

// refused reports whether dialing addr is refused, as it is once nothing listens there.
func refused(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s still accepts connections", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("dialing %s: %v, want connection refused", addr, err)
	}
	return nil
}

// proxyGoroutines lists the goroutines running this package's code or informers.
func proxyGoroutines() []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "servelab/real/cluster/svcproxy.") || strings.Contains(g, "k8s.io/client-go/tools/cache.") {
			out = append(out, g)
		}
	}
	return out
}

// handlers counts the proxy's goroutines handling a connection.
func handlers() int {
	n := 0
	for _, g := range proxyGoroutines() {
		if strings.Contains(g, "svcproxy.(*portProxy).handle(") {
			n++
		}
	}
	return n
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("counting open files: %v", err)
	}
	return len(ents)
}

// hostIP is a non-loopback IPv4 address of this machine: the API server refuses
// loopback addresses in EndpointSlices, so backends listed in slices listen there.
func hostIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address on this machine to put in an EndpointSlice")
	return ""
}

func createNamespace(t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestProxy runs the proxy against a real kube-apiserver (envtest, with cluster IPs in
// 127.1.0.0/16), with its endpoints from EndpointSlices (as on a real cluster) and from
// Pods (as on servelab's local cluster, whose pods have 127.0.0.x addresses).
func TestProxy(t *testing.T) {
	env := k8stest.Start(t, k8stest.Options{ServiceCIDR: serviceCIDR})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("EndpointSlices", func(t *testing.T) { testFromSlices(t, cs) })
	t.Run("Pods", func(t *testing.T) { testFromPods(t, cs) })
}

// testFromSlices walks a Service through its life: round-robin, half-close,
// streaming, readiness, a refusing endpoint, a port change, no endpoints, deletion, many
// connections at once, and shutdown with nothing left open.
func testFromSlices(t *testing.T, cs kubernetes.Interface) {
	ctx := context.Background()
	host := hostIP(t)
	const ns = "slices"
	createNamespace(t, cs, ns)
	a := startBackend(t, "a", host)
	b := startBackend(t, "b", host)
	echo := startEcho(t, host)

	svcs := cs.CoreV1().Services(ns)
	eps := cs.DiscoveryV1().EndpointSlices(ns)
	svc, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{
				// targetPorts by name, resolved by the slices' port names.
				{Name: "http", Port: 8080, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP},
				{Name: "echo", Port: 9090, TargetPort: intstr.FromString("echo"), Protocol: corev1.ProtocolTCP},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix(serviceCIDR).Contains(ip) {
		t.Fatalf("cluster IP %q is not in %s: the API server did not take --service-cluster-ip-range", svc.Spec.ClusterIP, serviceCIDR)
	}
	// A headless Service: nothing to listen on.
	if _, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "headless"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sliceA, err := eps.Create(ctx, endpointSlice(ns, "web", "web-a",
		map[string]int32{"http": int32(a.addr.Port()), "echo": int32(echo.Port())}, true, a.addr.Addr()), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// b's slice has no "echo" port, and a "metrics" port the proxy must not pick.
	sliceB, err := eps.Create(ctx, endpointSlice(ns, "web", "web-b",
		map[string]int32{"http": int32(b.addr.Port()), "metrics": 1}, true, b.addr.Addr()), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	fdsBefore := openFDs(t)
	l := &logs{}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- svcproxy.Run(runCtx, cs, svcproxy.Options{ServiceCIDR: serviceCIDR, Namespace: ns, Logf: l.logf})
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
			<-runErr
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", l.dump())
		}
	})

	httpAddr := netip.AddrPortFrom(ip, 8080).String()
	url := "http://" + httpAddr
	waitFor(t, "the proxy to serve both endpoints", func() error {
		if l.count("slices/web", `"http"`, "endpoints", a.addr.String(), b.addr.String()) == 0 {
			return errors.New("no log line with both endpoints yet")
		}
		return nil
	})

	t.Run("round-robin over both backends", func(t *testing.T) {
		var got []string
		for range 6 {
			body, err := get(url + "/")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, body)
		}
		for i := 1; i < len(got); i++ {
			if got[i] == got[i-1] {
				t.Fatalf("responses %v: want backends in turn", got)
			}
		}
	})

	t.Run("half-close passes through", func(t *testing.T) {
		c, err := net.Dial("tcp", netip.AddrPortFrom(ip, 9090).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "hello")
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "read 5 bytes" {
			t.Errorf("echo answered %q, want %q", got, "read 5 bytes")
		}
	})

	t.Run("server-sent events stream unbuffered", func(t *testing.T) {
		for range 2 { // one stream to each backend
			resp, err := client.Get(url + "/sse")
			if err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(resp.Body)
			first, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			name := strings.Fields(first)[1]
			backends := map[string]*backend{"a": a, "b": b}
			if backends[name] == nil {
				t.Fatalf("first event %q", first)
			}
			// The second event exists only after the first arrived.
			backends[name].release <- struct{}{}
			rest, err := io.ReadAll(r)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("\ndata: %s 2\n\n", name); string(rest) != want {
				t.Errorf("rest of the stream %q, want %q", rest, want)
			}
		}
	})

	t.Run("an endpoint marked not ready gets no new connections", func(t *testing.T) {
		sliceB.Endpoints[0].Conditions.Ready = ptr(false)
		if sliceB, err = eps.Update(ctx, sliceB, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "b to be dropped", func() error {
			if l.count("slices/web", `"http"`, "endpoints ["+a.addr.String()+"]") == 0 {
				return errors.New("no log line with a alone yet")
			}
			return nil
		})
		for range 4 {
			if body, err := get(url + "/"); err != nil || body != "a" {
				t.Fatalf("got %q, %v; want a", body, err)
			}
		}
	})

	t.Run("an endpoint that refuses connections is skipped", func(t *testing.T) {
		dead := refusedPort(t, host)
		sliceB = endpointSlice(ns, "web", "web-b", map[string]int32{"http": int32(dead.Port())}, true, dead.Addr())
		sliceB.ResourceVersion = ""
		if err := eps.Delete(ctx, "web-b", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if sliceB, err = eps.Create(ctx, sliceB, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the dead endpoint to be added", func() error {
			if l.count("slices/web", `"http"`, "endpoints [", a.addr.String(), dead.String()) == 0 {
				return errors.New("no log line with a and the dead endpoint yet")
			}
			return nil
		})
		for range 4 {
			if body, err := get(url + "/"); err != nil || body != "a" {
				t.Fatalf("got %q, %v; want a", body, err)
			}
		}
		if l.count(dead.String(), "refused") == 0 {
			t.Errorf("no log line says %s refused the connection", dead)
		}
	})

	t.Run("a changed port moves the listener", func(t *testing.T) {
		svc, err := svcs.Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.Ports[0].Port = 8081
		if _, err := svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "8080 to close", func() error { return refused(httpAddr) })
		httpAddr = netip.AddrPortFrom(ip, 8081).String()
		url = "http://" + httpAddr
		waitFor(t, "8081 to answer", func() error {
			body, err := get(url + "/")
			if err == nil && body != "a" {
				err = fmt.Errorf("got %q, want a", body)
			}
			return err
		})
	})

	t.Run("no endpoint: the connection is closed at once", func(t *testing.T) {
		for _, name := range []string{sliceA.Name, sliceB.Name} {
			if err := eps.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "the endpoints to go", func() error {
			if l.count("slices/web", `"http"`, "endpoints [] ") == 0 {
				return errors.New("no log line with no endpoints yet")
			}
			return nil
		})
		c, err := net.Dial("tcp", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("read %d bytes, %v; want EOF or reset at once", n, err)
		}
	})

	t.Run("deleting the Service closes its listeners", func(t *testing.T) {
		if err := svcs.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, addr := range []string{httpAddr, netip.AddrPortFrom(ip, 9090).String()} {
			waitFor(t, addr+" to close", func() error { return refused(addr) })
		}
	})

	t.Run("many connections at once, then shutdown leaves nothing open", func(t *testing.T) {
		svc, err := svcs.Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "many"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 8000}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := eps.Create(ctx, endpointSlice(ns, "many", "many-a", map[string]int32{"": int32(a.addr.Port())}, true, a.addr.Addr()), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := eps.Create(ctx, endpointSlice(ns, "many", "many-b", map[string]int32{"": int32(b.addr.Port())}, true, b.addr.Addr()), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		url := "http://" + netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 8000).String()
		waitFor(t, "the proxy to serve slices/many", func() error {
			if l.count("slices/many", "endpoints", a.addr.String(), b.addr.String()) == 0 {
				return errors.New("no log line with both endpoints yet")
			}
			return nil
		})

		// Streams held open through the proxy while Run stops.
		const streams = 50
		bodies := make(chan io.ReadCloser, streams)
		var wg sync.WaitGroup
		for range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := streamClient.Get(url + "/sse")
				if err != nil {
					t.Error(err)
					return
				}
				r := bufio.NewReader(resp.Body)
				if _, err := r.ReadString('\n'); err != nil {
					t.Error(err)
				}
				bodies <- struct {
					io.Reader
					io.Closer
				}{r, resp.Body}
			}()
		}
		wg.Wait()
		close(bodies)
		if t.Failed() {
			return
		}
		// Rounds of short requests next to them, now that the streams have taken their
		// turns (so that the requests' own turns split evenly). Each round's connections
		// end, both ways, leaving the streams' and no more open files than the round before.
		const requests = 200
		fdsAfter := make([]int, 0, 2)
		for round := range 2 {
			counts := map[string]int{}
			var mu sync.Mutex
			for range requests {
				wg.Add(1)
				go func() {
					defer wg.Done()
					body, err := get(url + "/")
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					counts[body]++
					mu.Unlock()
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			if diff := cmp.Diff(map[string]int{"a": requests / 2, "b": requests / 2}, counts); diff != "" {
				t.Errorf("round %d: requests per backend (-want +got):\n%s", round, diff)
			}
			waitFor(t, "the finished connections' goroutines to exit", func() error {
				if n := handlers(); n != streams {
					return fmt.Errorf("%d connections handled, want the %d streams", n, streams)
				}
				return nil
			})
			var fds int
			waitFor(t, "the finished connections' files to close", func() error {
				runtime.GC() // splice pipes: see the check after Run returns
				fds = openFDs(t)
				if round > 0 && fds > fdsAfter[0] {
					return fmt.Errorf("%d open files after round %d, %d after round 0", fds, round, fdsAfter[0])
				}
				return nil
			})
			fdsAfter = append(fdsAfter, fds)
		}

		stop()
		select {
		case err := <-runErr:
			stopped = true
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
		// Run has closed every stream it carried.
		for body := range bodies {
			if _, err := io.ReadAll(body); err == nil {
				// An SSE stream cut short ends the chunked body without its terminator.
				t.Errorf("a stream ended cleanly, want it cut")
			}
			body.Close()
		}
		if g := proxyGoroutines(); len(g) > 0 {
			t.Errorf("%d goroutines left after Run returned:\n%s", len(g), strings.Join(g, "\n\n"))
		}
		waitFor(t, "the open files to go back to before Run", func() error {
			// io.Copy between TCP connections splices through pipes that Go keeps in a
			// sync.Pool and closes when the garbage collector drops them.
			runtime.GC()
			if n := openFDs(t); n > fdsBefore {
				return fmt.Errorf("%d open files, %d before Run", n, fdsBefore)
			}
			return nil
		})
		if err := refused(url[len("http://"):]); err != nil {
			t.Error(err)
		}
	})

	if n := l.count("slices/headless"); n != 0 {
		t.Errorf("%d log lines about the headless Service, want none", n)
	}
}

// testFromPods is servelab's local cluster: pods on 127.0.0.x, which no EndpointSlice
// can list, and a proxy that takes the endpoints from the Pods.
func testFromPods(t *testing.T, cs kubernetes.Interface) {
	ctx := context.Background()
	const ns = "pods"
	createNamespace(t, cs, ns)
	a := startBackend(t, "a", "127.0.0.2")
	b := startBackend(t, "b", "127.0.0.3")
	pods := cs.CoreV1().Pods(ns)
	// setPod creates or updates a pod of app "web" whose container port "web" is the
	// backend's, with the backend's IP and the given readiness, as the node reports it.
	setPod := func(name string, be *backend, ready bool) {
		t.Helper()
		pod, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			pod, err = pods.Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{NodeName: "local", Containers: []corev1.Container{{Name: "engine", Image: "servelab",
					Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: int32(be.addr.Port())}}}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
		}
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		ip := be.addr.Addr().String()
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}}
		if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setPod("a", a, true)
	setPod("b", b, true)
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromString("web")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 8080).String()

	l := &logs{}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- svcproxy.Run(runCtx, cs, svcproxy.Options{ServiceCIDR: serviceCIDR, Namespace: ns, Endpoints: svcproxy.FromPods, Logf: l.logf})
	}()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", l.dump())
		}
	}()
	waitEndpoints := func(want ...*backend) {
		t.Helper()
		var s []string
		for _, be := range want {
			s = append(s, be.addr.String())
		}
		line := "endpoints [" + strings.Join(s, " ") + "] "
		waitFor(t, line, func() error {
			if l.count("pods/web", line) == 0 {
				return errors.New("not logged yet")
			}
			return nil
		})
	}
	responses := func(n int) []string {
		t.Helper()
		var got []string
		for range n {
			body, err := get(url + "/")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, body)
		}
		return got
	}

	waitEndpoints(a, b)
	if got := responses(4); !cmp.Equal(got, []string{"a", "b", "a", "b"}) && !cmp.Equal(got, []string{"b", "a", "b", "a"}) {
		t.Errorf("responses %v, want the backends in turn", got)
	}
	setPod("b", b, false)
	waitEndpoints(a)
	if diff := cmp.Diff([]string{"a", "a", "a"}, responses(3)); diff != "" {
		t.Errorf("with b not ready (-want +got):\n%s", diff)
	}
	setPod("b", b, true)
	if err := pods.Delete(ctx, "a", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(b)
	if diff := cmp.Diff([]string{"b", "b", "b"}, responses(3)); diff != "" {
		t.Errorf("with a deleted (-want +got):\n%s", diff)
	}
}
