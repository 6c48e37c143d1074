package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podRun is one pod on the node: its containers' processes, their states and probes.
type podRun struct {
	p      *provider
	ip     string
	dir    string
	ctx    context.Context // ends when the pod is to stop
	cancel context.CancelFunc
	done   chan struct{} // closed when every process of the pod has exited for good

	mu          sync.Mutex
	pod         *corev1.Pod // as created (labels and annotations updated)
	inits, ctrs []*ctr
	initialized bool
	stopping    bool
	grace       time.Duration
	failReason  string // the pod cannot run here (UnsupportedImage, ...)
	failMessage string
	started     metav1.Time
	conds       map[corev1.PodConditionType]corev1.PodCondition
	volDirs     map[string]string // volume name -> host directory
}

// ctr is one container of a pod. Its fields are guarded by the pod's mu.
type ctr struct {
	spec      corev1.Container
	state     corev1.ContainerState
	lastState corev1.ContainerState
	restarts  int32
	crashes   int  // consecutive short runs: the back-off doubles with each
	ready     bool // the readiness probe's verdict (true without a probe)
	startedOK bool // the startup probe succeeded (true without one)
	pid       int
	env       []string // the current process's environment and directory (exec probes run with them)
	workDir   string
	exited    chan struct{} // closed when the current process exits
	killedBy  string        // why the node killed the current process ("" if it did not)
}

// unsupported says why the pod cannot run on this node ("" when it can).
func (pr *podRun) unsupported() (reason, msg string) {
	for _, c := range append(append([]corev1.Container{}, pr.pod.Spec.InitContainers...), pr.pod.Spec.Containers...) {
		if !isServelabImage(c.Image) {
			return ReasonUnsupportedImage, fmt.Sprintf("container %q: image %q is not servelab's: node %s runs each pod's servelab container as a local process of the servelab binary, not containers; use an image named servelab (servelab:TAG, REGISTRY/ORG/servelab:TAG), or a real cluster for other images", c.Name, c.Image, NodeName)
		}
		if _, err := pr.p.argv(&c, nil); err != nil {
			return ReasonUnsupportedCommand, err.Error()
		}
	}
	if msg := unsupportedVolume(pr.pod); msg != "" {
		return ReasonUnsupportedVolume, msg
	}
	return "", ""
}

// stop ends the pod: SIGTERM to each running container's process group now, SIGKILL
// after grace.
func (pr *podRun) stop(grace time.Duration) {
	pr.mu.Lock()
	if pr.stopping {
		if grace < pr.grace {
			pr.grace = grace
		}
		pr.mu.Unlock()
		return
	}
	pr.stopping = true
	pr.grace = grace
	pr.mu.Unlock()
	pr.cancel()
}

func (pr *podRun) event(typ, reason, format string, args ...any) {
	pr.mu.Lock()
	pod := pr.pod.DeepCopy()
	pr.mu.Unlock()
	pr.p.cfg.recorder.Eventf(pod, typ, reason, format, args...)
}

// run runs the init containers in order, then every container under its own supervisor,
// until the pod stops.
func (pr *podRun) run() {
	defer close(pr.done)
	for {
		dirs, err := pr.prepareVolumes(pr.ctx)
		if err == nil {
			pr.mu.Lock()
			pr.volDirs = dirs
			pr.mu.Unlock()
			break
		}
		if pr.ctx.Err() != nil {
			return
		}
		pr.event(corev1.EventTypeWarning, reasonFailedMount, "MountVolume failed: %v", err)
		select {
		case <-pr.ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	for _, c := range pr.inits {
		for {
			code, ok := pr.runOnce(c, true)
			if !ok {
				return // stopping
			}
			if code == 0 {
				break
			}
			if pr.pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
				pr.mu.Lock()
				pr.failReason, pr.failMessage = reasonInitFailed, fmt.Sprintf("init container %q exited with code %d", c.spec.Name, code)
				pr.mu.Unlock()
				pr.update()
				<-pr.ctx.Done()
				return
			}
			if !pr.backoff(c) {
				return
			}
		}
	}
	pr.mu.Lock()
	pr.initialized = true
	pr.mu.Unlock()
	pr.update()
	var wg sync.WaitGroup
	for _, c := range pr.ctrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pr.supervise(c)
		}()
	}
	wg.Wait()
}

// supervise runs a container and restarts it as the pod's restartPolicy says.
func (pr *podRun) supervise(c *ctr) {
	for {
		code, ok := pr.runOnce(c, false)
		if !ok {
			return
		}
		switch pr.pod.Spec.RestartPolicy {
		case corev1.RestartPolicyNever:
			<-pr.ctx.Done()
			return
		case corev1.RestartPolicyOnFailure:
			if code == 0 {
				<-pr.ctx.Done()
				return
			}
		}
		if !pr.backoff(c) {
			return
		}
	}
}

// backoff waits the crash-loop back-off before the next restart of c (the container in
// state Waiting CrashLoopBackOff meanwhile): the kubelet's 10 s, doubling with each
// consecutive crash up to 5 min, starting over after a run of 10 min. It returns false
// when the pod stops.
func (pr *podRun) backoff(c *ctr) bool {
	pr.mu.Lock()
	d := backoffInitial
	if pr.p.cfg.backoff > 0 {
		d = pr.p.cfg.backoff
	}
	// A run of backoffReset or more ends the crash loop: the delay starts over.
	if t := c.lastState.Terminated; t != nil && t.FinishedAt.Sub(t.StartedAt.Time) >= backoffReset {
		c.crashes = 0
	}
	for i := 0; i < c.crashes && d < backoffMax; i++ {
		d *= 2
	}
	d = min(d, backoffMax)
	c.crashes++
	c.state = waiting(reasonCrashLoop, fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", d, c.spec.Name, pr.pod.Name, pr.pod.Namespace, pr.pod.UID))
	pr.mu.Unlock()
	pr.update()
	pr.event(corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s", c.spec.Name, pr.pod.Name)
	select {
	case <-pr.ctx.Done():
		return false
	case <-time.After(d):
	}
	pr.mu.Lock()
	c.restarts++
	pr.mu.Unlock()
	return true
}

// logPath is the log file of a container's n-th run (0 for the first).
func (pr *podRun) logPath(name string, n int32) string {
	return filepath.Join(pr.dir, name, strconv.Itoa(int(n))+".log")
}

// runOnce runs one process of c to its end. ok is false when the pod was stopped before
// or while it ran (its final state is recorded either way).
func (pr *podRun) runOnce(c *ctr, isInit bool) (code int, ok bool) {
	if pr.ctx.Err() != nil {
		return 0, false
	}
	pr.mu.Lock()
	pod := pr.pod.DeepCopy()
	n := c.restarts
	pr.mu.Unlock()
	fail := func(reason string, err error) (int, bool) {
		pr.mu.Lock()
		c.state = waiting(reason, err.Error())
		pr.mu.Unlock()
		pr.update()
		pr.event(corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return 128, pr.ctx.Err() == nil
	}
	env, err := resolveEnv(pr.ctx, pr.p.cfg.client, pod, &c.spec, podFacts{podIP: pr.ip, hostIP: pr.p.cfg.hostIP, nodeAlloc: pr.p.cfg.nodeAlloc})
	if err != nil {
		return fail(reasonConfigError, err)
	}
	argv, err := pr.p.argv(&c.spec, env)
	if err != nil {
		return fail(reasonConfigError, err)
	}
	pr.mu.Lock()
	ms := mountsOf(&c.spec, pr.volDirs)
	pr.mu.Unlock()
	for i := 1; i < len(argv); i++ {
		argv[i] = rewritePaths(argv[i], ms)
	}
	procEnv := append([]string{}, pr.p.cfg.baseEnv...)
	procEnv = append(procEnv, "HOSTNAME="+pod.Name)
	hasKubeconfig := false
	for _, e := range env {
		procEnv = append(procEnv, e.name+"="+rewritePaths(e.value, ms))
		hasKubeconfig = hasKubeconfig || e.name == "KUBECONFIG"
	}
	for _, m := range ms {
		if m.mountPath == saMountPath && !hasKubeconfig && pr.p.cfg.apiServer != "" {
			kc, err := pr.writePodKubeconfig(m.hostPath)
			if err != nil {
				return fail(reasonRunError, err)
			}
			procEnv = append(procEnv, "KUBECONFIG="+kc)
		}
	}
	workDir := rewritePaths(c.spec.WorkingDir, ms)
	if workDir == "" {
		workDir = pr.dir
	}
	lp := pr.logPath(c.spec.Name, n)
	if err := os.MkdirAll(filepath.Dir(lp), 0o755); err != nil {
		return fail(reasonRunError, err)
	}
	cmd, err := startProcess(argv, procEnv, workDir, lp)
	if err != nil {
		return fail(reasonRunError, err)
	}
	startedAt := metav1.Now()
	exited := make(chan struct{})
	pr.mu.Lock()
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}}
	c.pid = cmd.Process.Pid
	c.env, c.workDir = procEnv, workDir
	c.exited = exited
	c.killedBy = ""
	c.ready = c.spec.ReadinessProbe == nil
	c.startedOK = c.spec.StartupProbe == nil
	pr.mu.Unlock()
	pr.update()
	pr.event(corev1.EventTypeNormal, "Started", "Started container %s (pid %d, %s)", c.spec.Name, cmd.Process.Pid, pr.ip)

	probeCtx, stopProbes := context.WithCancel(pr.ctx)
	if !isInit {
		go pr.probe(probeCtx, c, exited)
		if lc := c.spec.Lifecycle; lc != nil && lc.PostStart != nil {
			// The postStart hook runs beside the process; when it fails the kubelet
			// kills the container.
			go func() {
				if err := pr.handle(probeCtx, c, lifecycleHandler(lc.PostStart)); err != nil && probeCtx.Err() == nil {
					pr.event(corev1.EventTypeWarning, "FailedPostStartHook", "PostStartHook failed: %v", err)
					pr.killContainer(c, fmt.Sprintf("FailedPostStartHook: container %s", c.spec.Name))
				}
			}()
		}
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waitErr:
	case <-pr.ctx.Done():
		pr.mu.Lock()
		deadline := time.Now().Add(pr.grace)
		pr.mu.Unlock()
		pr.event(corev1.EventTypeNormal, "Killing", "Stopping container %s", c.spec.Name)
		exitedEarly := false
		if lc := c.spec.Lifecycle; lc != nil && lc.PreStop != nil {
			// The preStop hook runs first, within the grace period, as the kubelet's.
			hookCtx, cancel := context.WithDeadline(context.Background(), deadline)
			hookErr := make(chan error, 1)
			go func() { hookErr <- pr.handle(hookCtx, c, lifecycleHandler(lc.PreStop)) }()
			select {
			case werr = <-waitErr:
				exitedEarly = true
			case err := <-hookErr:
				if err != nil {
					pr.event(corev1.EventTypeWarning, "FailedPreStopHook", "PreStopHook failed: %v", err)
				}
			}
			cancel()
		}
		if !exitedEarly {
			// What the hook left of the grace period, and at least 2 s, as the kubelet.
			werr = killGroup(cmd.Process.Pid, max(time.Until(deadline), 2*time.Second), waitErr)
		}
	}
	stopProbes()
	close(exited)
	code = exitCode(werr)
	finished := metav1.Now()
	pr.mu.Lock()
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	if c.killedBy != "" {
		reason = c.killedBy
	}
	c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Reason: reason, StartedAt: startedAt, FinishedAt: finished,
		ContainerID: containerID(c.pid),
	}}
	c.lastState = c.state
	c.ready = false
	pr.mu.Unlock()
	pr.update()
	return code, pr.ctx.Err() == nil
}

// killGroup stops a container's process group: SIGTERM, then SIGKILL after grace. It
// returns the process's wait error.
func killGroup(pid int, grace time.Duration, waitErr <-chan error) error {
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case err := <-waitErr:
		syscall.Kill(-pid, syscall.SIGKILL) // what the process left in its group
		return err
	case <-time.After(grace):
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	return <-waitErr
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 128
}

func containerID(pid int) string { return "servelab://" + strconv.Itoa(pid) }

// snapshot is the pod with its current status.
func (pr *podRun) snapshot() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pod := pr.pod.DeepCopy()
	pod.Status = pr.statusLocked()
	return pod
}

// update sends the pod's current status to virtual-kubelet (which drops unchanged ones).
func (pr *podRun) update() { pr.p.send(pr.snapshot()) }

func (pr *podRun) cond(t corev1.PodConditionType, ok bool, reason, msg string) corev1.PodCondition {
	s := corev1.ConditionFalse
	if ok {
		s = corev1.ConditionTrue
		reason, msg = "", ""
	}
	c, have := pr.conds[t]
	if !have || c.Status != s {
		c = corev1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
	}
	c.Reason, c.Message = reason, msg
	pr.conds[t] = c
	return c
}

// statusLocked computes the pod's status as the kubelet would (pod phase from the
// containers' states and the restart policy, the conditions, the container statuses).
func (pr *podRun) statusLocked() corev1.PodStatus {
	st := *pr.pod.Status.DeepCopy() // keeps qosClass and the scheduler's PodScheduled
	st.HostIP = pr.p.cfg.hostIP
	st.HostIPs = []corev1.HostIP{{IP: pr.p.cfg.hostIP}}
	st.PodIP = pr.ip
	st.PodIPs = []corev1.PodIP{{IP: pr.ip}}
	st.StartTime = &pr.started
	st.Reason, st.Message = "", ""
	statuses := func(cs []*ctr) []corev1.ContainerStatus {
		var out []corev1.ContainerStatus
		for _, c := range cs {
			started := c.state.Running != nil && c.startedOK
			s := corev1.ContainerStatus{
				Name:    c.spec.Name,
				Image:   c.spec.Image,
				ImageID: c.spec.Image,
				State:   c.state,
				LastTerminationState: func() corev1.ContainerState {
					if c.state.Terminated != nil {
						return corev1.ContainerState{}
					}
					return c.lastState
				}(),
				Ready:        c.ready && c.state.Running != nil && c.startedOK,
				RestartCount: c.restarts,
				Started:      &started,
			}
			if c.state.Running != nil {
				s.ContainerID = containerID(c.pid)
			} else if c.state.Terminated != nil {
				s.ContainerID = c.state.Terminated.ContainerID
			}
			out = append(out, s)
		}
		return out
	}
	st.InitContainerStatuses = statuses(pr.inits)
	st.ContainerStatuses = statuses(pr.ctrs)

	allReady := len(pr.ctrs) > 0
	var running, restarting, waitingFirst, failed int
	for i, c := range pr.ctrs {
		if !st.ContainerStatuses[i].Ready {
			allReady = false
		}
		switch {
		case c.state.Running != nil:
			running++
		case c.state.Terminated != nil:
			if c.state.Terminated.ExitCode != 0 {
				failed++
			}
		case c.lastState.Terminated != nil:
			restarting++ // the kubelet counts it as running
			if c.lastState.Terminated.ExitCode != 0 {
				failed++
			}
		default:
			waitingFirst++
		}
	}
	if pr.stopping && running == 0 {
		// Deleted, and no process left: the pod has ended (a container in back-off will
		// not be restarted).
		restarting, waitingFirst = 0, 0
	}
	policy := pr.pod.Spec.RestartPolicy
	switch {
	case pr.failReason != "":
		st.Phase = corev1.PodPending
		if policy == corev1.RestartPolicyNever {
			st.Phase = corev1.PodFailed
		}
		st.Reason, st.Message = pr.failReason, pr.failMessage
	case !pr.initialized:
		st.Phase = corev1.PodPending
	case waitingFirst > 0:
		st.Phase = corev1.PodPending
	case running > 0 || restarting > 0:
		st.Phase = corev1.PodRunning
	case pr.stopping || policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && failed == 0):
		// Every container has terminated for good.
		st.Phase = corev1.PodSucceeded
		if failed > 0 {
			st.Phase = corev1.PodFailed
		}
	default:
		st.Phase = corev1.PodRunning // about to restart
	}
	notReady := "containers with unready status: "
	first := true
	for i, c := range pr.ctrs {
		if !st.ContainerStatuses[i].Ready {
			if !first {
				notReady += ", "
			}
			notReady += c.spec.Name
			first = false
		}
	}
	conds := []corev1.PodCondition{
		// The pod's "sandbox" (its address and directory) is ready unless the pod was
		// refused outright.
		pr.cond(corev1.PodReadyToStartContainers, pr.failReason == "" || pr.failReason == reasonInitFailed, pr.failReason, pr.failMessage),
		pr.cond(corev1.PodInitialized, pr.initialized, "ContainersNotInitialized", "containers with incomplete status: init containers"),
		pr.cond(corev1.ContainersReady, allReady, "ContainersNotReady", notReady),
		pr.cond(corev1.PodReady, allReady, "ContainersNotReady", notReady),
	}
	keep := st.Conditions[:0:0]
	for _, c := range st.Conditions {
		switch c.Type {
		case corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady:
		default:
			keep = append(keep, c) // PodScheduled, readiness gates' conditions
		}
	}
	st.Conditions = append(keep, conds...)
	return st
}
