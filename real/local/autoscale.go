package local

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"servelab/policies/scale"
	"servelab/real/router"
)

// AutoscaleOptions configure Cluster.Autoscale.
type AutoscaleOptions struct {
	// Policy decides the engines' count, from the router's view of the ready engines
	// (their /metrics as it scrapes them) and its request counter.
	Policy scale.Policy
	// Gatherer, if set, is the router's metrics registry (router.Config.Registry): the
	// rps metric reads servelab_router_decisions_total from it, the slo metric
	// servelab_router_slo_requests_total.
	Gatherer prometheus.Gatherer
	// Logf, if set, receives a line per decision and per engine started or stopped.
	Logf func(format string, args ...any)
	// OnDecision, if set, receives every decision with its observation and actions (slot
	// numbers are the scaler's, as in the simulator).
	OnDecision func(scale.Observation, scale.Decision, scale.Actions)
	// Observe, if set, replaces reading the router and the engines: a test feeds the
	// observations the simulator made. Replicas and Ready are filled in by the scaler.
	Observe func(t float64) scale.Observation
	// Ticks, if set, replaces the Policy.Interval() ticker: each receive is one decision.
	Ticks <-chan time.Time
}

// scaledEngine is what occupies a scaler slot: an engine process and its URL.
type scaledEngine struct {
	proc *engineProc // its current process: a restart replaces it
	idx  int         // engine-idx, its index in Cluster.engines
	url  string
	spec string // url as the router is given it (Cluster.routerEndpoint)
}

// autoscaler is the state of one Cluster.Autoscale run.
type autoscaler struct {
	c      *Cluster
	opts   AutoscaleOptions
	scaler *scale.Scaler
	slots  []scaledEngine
	start  time.Time
	// restart is the cluster's restart policy (with its defaults), nil without restarts.
	restart *RestartPolicy
	// supervised maps the index of each engine whose crashes are restarted (a ready
	// replica's, from when it became ready until it is drained, cancelled or given up) to its
	// slot. An engine not in it is not restarted: that is what makes a scale-down of a
	// restarting replica final and keeps the supervisor and the scaler from both starting
	// one.
	supervised map[int]int
	// unsupervised[idx] is closed when engine idx leaves supervised: it ends its
	// supervisor's back-off at once.
	unsupervised map[int]chan struct{}
	// counts is servelab_router_decisions_total by endpoint and
	// servelab_router_slo_requests_total by outcome at the last decision (routerCounts).
	counts map[string]float64
	// LoadTimes are how long each started engine took from the decision to being routable.
	loadTimes []time.Duration
}

// Autoscale runs the scaling policy over the cluster until ctx ends: every
// Policy.Interval() seconds it reads the router's view of the ready engines, asks the
// policy through the same scale.Scaler the simulator uses, and applies its actions. A
// started engine joins the router once it answers /health (the scale-up delay is the real
// load time, logged); a drained engine is first taken out of the router's endpoints (no
// request is routed to it from then on), then asked to stop with SIGTERM, on which the
// engine finishes the requests it has before it exits.
//
// With Options.Restart (and Options.Autoscaled, so that supervision starts here) a ready
// engine that crashes is restarted by the cluster's supervisor, with its policy, as without
// an autoscaler: it is the same replica throughout, counted as starting (unready; see
// scale.Scaler.Restarting) and out of the router until it answers /health again, then
// ready and routed to again. A scale-down that picks it meanwhile (a restarting replica is
// cancelled before a ready one is drained) stops it for good; one given up after
// MaxRestarts crashes frees its slot, and the cluster's Done reports when no replica is
// left. Without Restart, the first crash is reported on Done.
//
// With a CPU plan (Options.CPUs, a set for each of max-replicas engines) every engine runs
// on a set of its own: one it starts takes the lowest-numbered free set, a restart keeps
// its engine's, and a drained, cancelled or given-up engine frees its set only once its
// process has exited. Draining replicas are not counted against max-replicas (as in
// Kubernetes, a terminating pod does not count), so a scale-up may find every set held,
// by engines still finishing their requests: it then waits until one exits (logged; its
// load time, from the decision, includes the wait) rather than share a drained engine's
// CPUs; a scale-down meanwhile cancels the wait.
//
// The cluster must have been started with Engines equal to the policy's min-replicas, a
// router, no P/D roles, and, with a CPU plan, Options.Autoscaled and at least max-replicas
// sets. It returns the engines' load times when ctx ends.
func (c *Cluster) Autoscale(ctx context.Context, opts AutoscaleOptions) ([]time.Duration, error) {
	lo, hi := opts.Policy.Bounds()
	switch {
	case c.Router == nil:
		return nil, fmt.Errorf("local: autoscale: the cluster has no router")
	case len(c.opts.Roles) > 0:
		return nil, fmt.Errorf("local: autoscale: not with P/D roles")
	case c.opts.CPUs != nil && (len(c.opts.CPUs.Engines) < hi || !c.opts.Autoscaled):
		return nil, fmt.Errorf("local: autoscale: the CPU plan has sets for %d engines, the policy's max-replicas is %d (and the cluster must be started with Options.Autoscaled)", len(c.opts.CPUs.Engines), hi)
	case c.opts.Restart != nil && !c.opts.Autoscaled:
		return nil, fmt.Errorf("local: autoscale: a cluster that restarts its engines must be started with Options.Autoscaled")
	case len(c.Endpoints) != lo:
		return nil, fmt.Errorf("local: autoscale: the cluster started %d engines, the policy's min-replicas is %d", len(c.Endpoints), lo)
	}
	a := &autoscaler{c: c, opts: opts, start: time.Now()}
	a.scaler = scale.NewScaler(opts.Policy, 2*hi, 0)
	a.slots = make([]scaledEngine, 2*hi)
	if c.opts.Restart != nil {
		p := c.opts.Restart.withDefaults()
		a.restart = &p
	}
	c.mu.Lock()
	urls := slices.Clone(c.Endpoints)
	for i, url := range urls {
		a.slots[i] = scaledEngine{proc: c.engines[i], idx: i, url: url, spec: c.routerEndpoint(i, url)}
	}
	if c.retired == nil {
		c.retired = map[*engineProc]bool{}
	}
	if a.restart != nil {
		c.scaling = a
		for i := range urls {
			a.superviseLocked(i, i)
		}
	}
	c.mu.Unlock()
	if a.restart != nil {
		for i, url := range urls {
			go c.supervise(i, url, *a.restart)
		}
	}
	a.routerCounts()
	ticks := opts.Ticks
	if ticks == nil {
		t := time.NewTicker(time.Duration(opts.Policy.Interval() * float64(time.Second)))
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ctx.Done():
			c.mu.Lock()
			defer c.mu.Unlock()
			return slices.Clone(a.loadTimes), nil
		case <-ticks:
			a.decide(ctx)
		}
	}
}

func (a *autoscaler) logf(format string, args ...any) {
	if a.opts.Logf != nil {
		a.opts.Logf(format, args...)
	}
}

func (a *autoscaler) now() float64 { return time.Since(a.start).Seconds() }

// routerCounts is what the router counted since the last call: the requests it routed
// (the growth of servelab_router_decisions_total, per endpoint: a removed endpoint's series
// goes away with it, so the plain sum would shrink), and those it finished, which met their
// SLO or missed it (servelab_router_slo_requests_total by outcome).
func (a *autoscaler) routerCounts() (arrived, finished, met int) {
	if a.opts.Gatherer == nil {
		return 0, 0, 0
	}
	mfs, err := a.opts.Gatherer.Gather()
	if err != nil {
		a.logf("autoscale: reading the router's metrics: %v", err)
		return 0, 0, 0
	}
	seen := map[string]float64{}
	var grew [3]float64 // arrived, finished, met
	for _, mf := range mfs {
		name := mf.GetName()
		if name != "servelab_router_decisions_total" && name != "servelab_router_slo_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := name + "{"
			outcome := ""
			for _, l := range m.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + ","
				if l.GetName() == "outcome" {
					outcome = l.GetValue()
				}
			}
			v := m.GetCounter().GetValue()
			seen[key] = v
			d := max(0, v-a.counts[key])
			switch {
			case name == "servelab_router_decisions_total":
				grew[0] += d
			case outcome == router.SLOMet:
				grew[1] += d
				grew[2] += d
			case outcome == router.SLOMissed:
				grew[1] += d
			}
		}
	}
	a.counts = seen
	return int(grew[0] + 0.5), int(grew[1] + 0.5), int(grew[2] + 0.5)
}

// observe reads the router's view of the ready engines and its request counter.
func (a *autoscaler) observe(t float64) scale.Observation {
	if a.opts.Observe != nil {
		return a.opts.Observe(t)
	}
	o := scale.Observation{Time: t}
	o.Arrived, o.Finished, o.MetSLO = a.routerCounts()
	views := a.c.Router.Views()
	ready := 0
	for i, r := range a.scaler.Replicas() {
		if r.State != scale.Ready {
			continue
		}
		if v, ok := views[a.slots[i].url]; ok {
			o.Waiting += v.Waiting
			o.Running += v.Running
			o.KVUsage += v.KVUsage
			ready++
		}
	}
	if ready > 0 {
		o.KVUsage /= float64(ready)
	}
	return o
}

func (a *autoscaler) decide(ctx context.Context) {
	t := a.now()
	o := a.observe(t)
	c := a.c
	c.mu.Lock()
	o, d, act := a.scaler.Observe(o)
	c.mu.Unlock()
	a.logf("autoscale: %s", d.Reason)
	if a.opts.OnDecision != nil {
		a.opts.OnDecision(o, d, act)
	}
	for _, i := range act.Start {
		go a.startSlot(ctx, i, time.Now())
	}
	for _, i := range act.Cancel {
		a.cancelRestarting(i)
	}
	if len(act.Drain) > 0 {
		// Out of the router first: from here no request is routed to them.
		if err := a.setEndpoints(); err != nil {
			a.logf("autoscale: router endpoints: %v", err)
		}
		for _, i := range act.Drain {
			go a.drainSlot(i)
		}
	}
	// A cancelled slot's new engine is stopped when it comes up (startSlot).
}

// cancelRestarting stops for good the engine of cancelled slot i if it is a crashed
// replica being restarted (a new engine starting in the slot is startSlot's): it is no
// longer supervised, so its supervisor, woken from its back-off, starts nothing, and the
// process it may have started already is retired and sent SIGTERM, so its exit is no crash.
func (a *autoscaler) cancelRestarting(i int) {
	c := a.c
	c.mu.Lock()
	s := a.slots[i]
	if slot, ok := a.supervised[s.idx]; s.proc == nil || !ok || slot != i {
		c.mu.Unlock()
		return
	}
	a.unsuperviseLocked(s.idx)
	e := c.engines[s.idx] // the dead process, or the one restarted meanwhile
	c.retired[e] = true
	c.Endpoints = slices.DeleteFunc(c.Endpoints, func(u string) bool { return u == s.url })
	a.slots[i] = scaledEngine{}
	c.mu.Unlock()
	e.signal(syscall.SIGTERM)
	a.logf("autoscale: %s, restarting after a crash, scaled down: stopped for good (slot %d)", e.name, i)
}

// superviseLocked records that engine idx, slot i's, is restarted when it crashes.
// c.mu is held.
func (a *autoscaler) superviseLocked(idx, i int) {
	if a.supervised == nil {
		a.supervised, a.unsupervised = map[int]int{}, map[int]chan struct{}{}
	}
	a.supervised[idx] = i
	a.unsupervised[idx] = make(chan struct{})
}

// unsuperviseLocked records that engine idx is no longer restarted, and ends its
// supervisor's back-off. c.mu is held.
func (a *autoscaler) unsuperviseLocked(idx int) {
	if ch, ok := a.unsupervised[idx]; ok {
		close(ch)
		delete(a.unsupervised, idx)
	}
	delete(a.supervised, idx)
}

// unsupervisedLocked is closed once engine idx is no longer restarted (nil if it is not
// supervised). c.mu is held.
func (a *autoscaler) unsupervisedLocked(idx int) <-chan struct{} { return a.unsupervised[idx] }

// crashedLocked is the supervisor's report that supervised engine idx exited on its own:
// whether to restart it. A ready replica becomes restarting (unready: the router is given
// the ready ones only); one already restarting (a restart that did not come up) stays so;
// one being drained, or no longer supervised, is not restarted. c.mu is held.
func (a *autoscaler) crashedLocked(idx int) bool {
	i, ok := a.supervised[idx]
	if !ok {
		return false
	}
	switch a.scaler.Replicas()[i].State {
	case scale.Ready:
		a.scaler.Restarting(i, a.now())
		return true
	case scale.Starting:
		return true
	}
	return false
}

// wantsLocked is whether engine idx is still to be restarted (not scaled down during its
// back-off). c.mu is held.
func (a *autoscaler) wantsLocked(idx int) bool {
	_, ok := a.supervised[idx]
	return ok
}

// backLocked is the supervisor's report that engine idx, restarted as e, answers /health:
// its replica is ready again, unless it was scaled down meanwhile (false). c.mu is held.
func (a *autoscaler) backLocked(idx int, e *engineProc) bool {
	i, ok := a.supervised[idx]
	if !ok || !a.scaler.MarkReady(i, a.now()) {
		return false
	}
	a.slots[i].proc = e
	return true
}

// gaveUpLocked is the supervisor's report that engine idx crashed too often to be
// restarted again: its replica is gone and its slot free (the policy may start another
// engine in its place). It returns the replicas left, ready or starting. c.mu is held.
func (a *autoscaler) gaveUpLocked(idx int) int {
	if i, ok := a.supervised[idx]; ok {
		a.unsuperviseLocked(idx)
		url := a.slots[i].url
		a.c.Endpoints = slices.DeleteFunc(a.c.Endpoints, func(u string) bool { return u == url })
		a.scaler.Stopped(i, a.now())
		a.slots[i] = scaledEngine{}
	}
	return a.scaler.Count(scale.Ready) + a.scaler.Count(scale.Starting)
}

// setEndpoints gives the router the ready slots' URLs.
func (a *autoscaler) setEndpoints() error {
	c := a.c
	c.mu.Lock()
	var urls []string
	for i, r := range a.scaler.Replicas() {
		if r.State == scale.Ready {
			urls = append(urls, a.slots[i].spec)
		}
	}
	c.mu.Unlock()
	return c.Router.SetEndpoints(urls)
}

// startSlot starts an engine for slot i, waits until it answers /health, and makes it
// routable, unless the slot was cancelled meanwhile.
func (a *autoscaler) startSlot(ctx context.Context, i int, decided time.Time) {
	c := a.c
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return
	}
	// Its place in c.engines now, so that c.engines[idx] is engine-idx (its supervisor's
	// and PIDs' index) however concurrent starts interleave.
	idx := len(c.engines)
	placeholder := notStarted(fmt.Sprintf("engine-%d", idx), nil)
	c.retired[placeholder] = true // no crash, should Start's watch see it
	c.engines = append(c.engines, placeholder)
	c.mu.Unlock()
	if c.cpus != nil && !a.takeCPUs(ctx, i, idx) {
		return
	}
	addrs := make(chan addrOrErr, 1)
	e, err := c.startEngine(idx, "0", addrs)
	fail := func(err error) {
		a.logf("autoscale: starting an engine for slot %d: %v", i, err)
		c.mu.Lock()
		a.scaler.Stopped(i, a.now())
		c.mu.Unlock()
		a.freeCPUs(idx, e)
	}
	if err != nil {
		fail(err)
		return
	}
	c.mu.Lock()
	c.retired[e] = true // until it is ready, its exit is the autoscaler's to handle
	c.engines[idx] = e
	stopping := c.stopping
	c.mu.Unlock()
	if stopping { // Stop may have signalled the engines before this one joined them
		e.signal(syscall.SIGTERM)
		return
	}
	sctx, cancel := context.WithTimeout(ctx, c.opts.StartTimeout)
	defer cancel()
	var url string
	select {
	case r := <-addrs:
		if r.err != nil {
			e.signal(syscall.SIGKILL) // it may run on (no KV-event sockets announced)
			fail(r.err)
			return
		}
		url = "http://" + r.addr
	case <-sctx.Done():
		e.signal(syscall.SIGKILL)
		fail(fmt.Errorf("no listen address: %w", sctx.Err()))
		return
	}
	if err := waitHealthy(sctx, url, e); err != nil {
		e.signal(syscall.SIGKILL)
		fail(err)
		return
	}
	load := time.Since(decided)
	c.mu.Lock()
	ok := a.scaler.MarkReady(i, a.now())
	if ok {
		a.slots[i] = scaledEngine{proc: e, idx: idx, url: url, spec: c.routerEndpoint(idx, url)}
		a.loadTimes = append(a.loadTimes, load)
		c.Endpoints = append(c.Endpoints, url)
		delete(c.retired, e)
		if a.restart != nil {
			a.superviseLocked(idx, i)
		}
	}
	c.mu.Unlock()
	if !ok {
		a.logf("autoscale: %s at %s came up after its slot %d was cancelled; stopping it", e.name, url, i)
		e.signal(syscall.SIGTERM)
		a.freeCPUs(idx, e)
		return
	}
	if a.restart != nil {
		go c.supervise(idx, url, *a.restart)
	} else {
		go c.watchEngine(e)
	}
	if err := a.setEndpoints(); err != nil {
		a.logf("autoscale: router endpoints: %v", err)
	}
	where := ""
	if cpus := c.cpus.of(idx); cpus != nil {
		where = ", CPUs " + FormatCPUList(cpus)
	}
	a.logf("autoscale: %s at %s ready in %.3f s (slot %d); pid %d%s", e.name, url, load.Seconds(), i, e.pid(), where)
}

// drainSlot stops slot i's engine, already out of the router: SIGTERM, on which the
// engine finishes the requests it has, then waits for it to exit.
func (a *autoscaler) drainSlot(i int) {
	c := a.c
	c.mu.Lock()
	e, idx := a.slots[i].proc, a.slots[i].idx
	c.retired[e] = true // before its supervisor sees it exit: no restart
	a.unsuperviseLocked(idx)
	c.mu.Unlock()
	e.signal(syscall.SIGTERM)
	<-e.exited
	c.cpus.free(idx) // its supervisor, if any, frees it too as it returns: harmless
	c.mu.Lock()
	a.scaler.Stopped(i, a.now())
	c.Endpoints = slices.DeleteFunc(c.Endpoints, func(u string) bool { return u == a.slots[i].url })
	a.slots[i] = scaledEngine{}
	c.mu.Unlock()
	a.logf("autoscale: %s drained and stopped (slot %d)", e.name, i)
}

// takeCPUs gives engine idx, about to start in slot i, a CPU set of the plan, waiting for
// one to be freed if every set is held (see Autoscale). It returns false, with no set
// taken, if the slot is cancelled meanwhile or the autoscaler or the cluster stops.
func (a *autoscaler) takeCPUs(ctx context.Context, i, idx int) bool {
	c := a.c
	waited := false
	for {
		c.mu.Lock()
		cancelled := a.scaler.Replicas()[i].State != scale.Starting
		c.mu.Unlock()
		if cancelled {
			if waited {
				a.logf("autoscale: slot %d was cancelled while engine-%d waited for CPUs; not starting it", i, idx)
			}
			return false
		}
		freed, ok := c.cpus.take(idx)
		if ok {
			if waited {
				a.logf("autoscale: engine-%d (slot %d) has CPUs %s", idx, i, FormatCPUList(c.cpus.of(idx)))
			}
			return true
		}
		if !waited {
			a.logf("autoscale: engine-%d (slot %d) waits for CPUs: each of the plan's sets is held by an engine that still runs (draining)", idx, i)
			waited = true
		}
		select {
		case <-freed:
		case <-ctx.Done():
			return false
		case <-c.stopCh:
			return false
		}
	}
}

// freeCPUs frees engine idx's CPU set once its process e (nil: none was started) has
// exited; it does not block.
func (a *autoscaler) freeCPUs(idx int, e *engineProc) {
	if a.c.cpus == nil {
		return
	}
	if e == nil {
		a.c.cpus.free(idx)
		return
	}
	go func() {
		<-e.exited
		a.c.cpus.free(idx)
	}()
}
