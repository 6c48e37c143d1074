package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"servelab/internal/kubebin"
)

// probeUserAgent is the kubelet's: kube-probe/MAJOR.MINOR.
var probeUserAgent = "kube-probe/" + strings.Join(strings.SplitN(strings.TrimPrefix(kubebin.Version, "v"), ".", 3)[:2], ".")

// probe runs c's startup, readiness and liveness probes while its current process runs
// (until ctx ends or exited closes), with the kubelet's semantics: the startup probe
// first (readiness and liveness wait for it), initialDelaySeconds, periodSeconds (10),
// timeoutSeconds (1), successThreshold (1), failureThreshold (3). A failed liveness or
// startup probe kills the process (the supervisor then restarts it per restartPolicy).
func (pr *podRun) probe(ctx context.Context, c *ctr, exited <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	spec := c.spec
	if p := spec.StartupProbe; p != nil {
		if !pr.probeLoop(ctx, c, "Startup", p, func(ok bool) bool {
			if ok {
				pr.mu.Lock()
				c.startedOK = true
				pr.mu.Unlock()
				pr.update()
			}
			return !ok // stop probing once started
		}) {
			return
		}
	}
	if p := spec.ReadinessProbe; p != nil {
		go pr.probeLoop(ctx, c, "Readiness", p, func(ok bool) bool {
			pr.mu.Lock()
			changed := c.ready != ok
			c.ready = ok
			pr.mu.Unlock()
			if changed {
				pr.update()
			}
			return true
		})
	}
	if p := spec.LivenessProbe; p != nil {
		go pr.probeLoop(ctx, c, "Liveness", p, func(ok bool) bool { return true })
	}
	<-ctx.Done()
}

// probeLoop probes until ctx ends or onResult returns false; results pass the success
// and failure thresholds before onResult hears them. A startup or liveness probe that
// reaches its failure threshold kills the container and ends the loop (returning false).
func (pr *podRun) probeLoop(ctx context.Context, c *ctr, kind string, p *corev1.Probe, onResult func(bool) bool) bool {
	period := time.Duration(p.PeriodSeconds) * time.Second
	if period <= 0 {
		period = 10 * time.Second
	}
	timeout := time.Duration(p.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = time.Second
	}
	succThr, failThr := int(p.SuccessThreshold), int(p.FailureThreshold)
	if succThr <= 0 {
		succThr = 1
	}
	if failThr <= 0 {
		failThr = 3
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	}
	var succ, fail int
	for {
		err := pr.probeOnce(ctx, c, p, timeout)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			succ, fail = succ+1, 0
			if succ >= succThr && !onResult(true) {
				return true
			}
		} else {
			succ, fail = 0, fail+1
			pr.event(corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", kind, err)
			if fail >= failThr {
				if kind == "Liveness" || kind == "Startup" {
					pr.killContainer(c, fmt.Sprintf("Container %s failed %s probe, will be restarted", c.spec.Name, strings.ToLower(kind)))
					return false
				}
				if !onResult(false) {
					return true
				}
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(period):
		}
	}
}

// killContainer stops c's current process (SIGTERM, SIGKILL after the pod's
// terminationGracePeriodSeconds) because a probe failed.
func (pr *podRun) killContainer(c *ctr, why string) {
	pr.mu.Lock()
	pid, exited := c.pid, c.exited
	c.killedBy = "Error"
	grace := 30 * time.Second
	if g := pr.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	pr.mu.Unlock()
	pr.event(corev1.EventTypeNormal, "Killing", "%s", why)
	killGroupWait(pid, grace, exited)
}

// killGroupWait is killGroup for a process whose wait happens elsewhere: exited closes
// when it is gone.
func killGroupWait(pid int, grace time.Duration, exited <-chan struct{}) {
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(grace):
	}
	syscall.Kill(-pid, syscall.SIGKILL)
}

// probeOnce runs one probe: nil when it succeeds.
func (pr *podRun) probeOnce(ctx context.Context, c *ctr, p *corev1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if p.GRPC != nil {
		return fmt.Errorf("grpc probes are not supported on node %s; use httpGet or tcpSocket", NodeName)
	}
	return pr.handle(ctx, c, handler{exec: p.Exec, httpGet: p.HTTPGet, tcp: p.TCPSocket})
}

// handler is what a probe or a lifecycle hook does.
type handler struct {
	exec    *corev1.ExecAction
	httpGet *corev1.HTTPGetAction
	tcp     *corev1.TCPSocketAction
	sleep   *corev1.SleepAction
}

// handle runs a probe's or hook's action against c until ctx ends: nil when it succeeds.
func (pr *podRun) handle(ctx context.Context, c *ctr, h handler) error {
	p := h
	switch {
	case h.sleep != nil:
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(h.sleep.Seconds) * time.Second):
			return nil
		}
	case p.httpGet != nil:
		g := p.httpGet
		host := g.Host
		if host == "" {
			host = pr.ip
		}
		port, err := resolvePort(g.Port, &c.spec)
		if err != nil {
			return err
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		path := g.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		url := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", probeUserAgent)
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		// As the kubelet: HTTPS probes do not verify the certificate.
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true} //nolint:gosec
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.tcp != nil:
		host := p.tcp.Host
		if host == "" {
			host = pr.ip
		}
		port, err := resolvePort(p.tcp.Port, &c.spec)
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.exec != nil:
		probeCtr := corev1.Container{Name: c.spec.Name, Command: p.exec.Command}
		argv, err := pr.p.argv(&probeCtr, nil)
		if err != nil {
			return fmt.Errorf("exec: %w", err)
		}
		pr.mu.Lock()
		env, dir := c.env, c.workDir
		ms := mountsOf(&c.spec, pr.volDirs)
		pr.mu.Unlock()
		for i := 1; i < len(argv); i++ {
			argv[i] = rewritePaths(argv[i], ms)
		}
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env, cmd.Dir = env, dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	return fmt.Errorf("no action (exec, httpGet, tcpSocket or sleep) given")
}

// resolvePort is a probe's port: a number, or the name of one of the container's ports.
func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %q has no port named %q", c.Name, p.StrVal)
}

// lifecycleHandler turns a hook into a handler.
func lifecycleHandler(h *corev1.LifecycleHandler) handler {
	return handler{exec: h.Exec, httpGet: h.HTTPGet, tcp: h.TCPSocket, sleep: h.Sleep}
}
