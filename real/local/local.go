// Package local runs a serving cluster on one machine: N engine processes on loopback and
// the router in front of them. It is what `servelab up` starts and what `servelab fidelity`
// measures.
//
// Engines are separate processes, as in a real deployment, so one engine's garbage
// collection or crash does not stop the others, and each gets its own CPU threads. They
// are started in their own process group (a Ctrl-C in the terminal reaches only the parent,
// which then stops them in order) and, on Linux, with a parent-death signal, so they do not
// outlive a parent that is killed.
//
// With Options.CPUs set (see PlanCPUs) each engine runs on its own CPUs from its first
// instruction, all its threads, with --threads kernel threads and GOMAXPROCS one more (see
// startEngine), and this process (the router) on
// the CPUs the engines leave, so a measurement's engines do not fight over cores.
//
// With Options.Restart set the cluster supervises its engines the way a kubelet supervises
// containers (CrashLoopBackOff): an engine that exits on its own is restarted on the same
// port, after a back-off that doubles per consecutive crash up to a cap and resets once the
// engine has stayed healthy for a while; the router skips it meanwhile (its scrapes fail)
// and takes it back when a scrape answers again. An engine that keeps crashing is given up
// after a bound, and the cluster ends only when no engine is left. Under Cluster.Autoscale
// (Options.Autoscaled) the same supervisor restarts every ready engine, each counted as the
// replica it was while it restarts (autoscale.go).
package local

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"servelab/real/router"
)

// Options describe a local cluster.
type Options struct {
	// Engines is the number of engine processes.
	Engines int
	// Command starts one engine; its listen address is taken from a line
	// "listening on http://HOST:PORT" on its standard output. Empty: this executable's
	// `engine` subcommand.
	Command []string
	// EngineArgs are appended to Command for every engine (model, policies, limits);
	// --host 127.0.0.1 --port 0 are added by Start (a restart passes the port the engine
	// had, so its URL, which the router knows it by, stays the same).
	EngineArgs []string
	// EngineArgsFor, if set, adds flags for engine i (0-based) after EngineArgs.
	EngineArgsFor func(i int) []string
	// Env is added to each engine's environment.
	Env []string
	// Roles, if set, is engine i's llm-d role (prefill, decode, both; "" none), which the
	// router's endpoint for it carries (ROLE=URL, router.ParseEndpoint) so a P/D policy
	// tells prefill from decode engines. The engines' own --role is EngineArgsFor's.
	Roles []string
	// Router configures the router; its Endpoints are filled in by Start. A nil Policy
	// starts no router (URL is then empty).
	Router router.Config
	// RouterAddr is where the router listens; empty means 127.0.0.1:0.
	RouterAddr string
	// Log receives the engines' output, each line prefixed with its engine's name.
	Log io.Writer
	// StartTimeout bounds the wait for every engine to answer /health (and, on a restart,
	// for the restarted engine); 0 means 2 minutes.
	StartTimeout time.Duration
	// Restart, if set, restarts engines that exit on their own; nil: the first engine that
	// exits is reported on Done (what a measurement wants: a crash fails it).
	Restart *RestartPolicy
	// Autoscaled says Cluster.Autoscale will run over the cluster: with Restart, the
	// engines' supervision then starts with Autoscale rather than Start, so that from an
	// engine's first crash on the autoscaler counts it as restarting (autoscale.go).
	Autoscaled bool
	// Events receives the supervisor's messages (an engine died, restarts in N s, is
	// back, is given up), one a line; nil discards them.
	Events io.Writer
	// KVEventsZMQ, if set, has every engine publish its KV events over ZeroMQ as vLLM does
	// (--kv-events-config), on PUB and replay sockets of its own on 127.0.0.1 (free ports,
	// kept across its restarts), with topic kv@engine-I@KVEventsModel; the router follows
	// each engine at its own addresses (router.ParseEndpointKVEvents) instead of
	// /v1/kv_events, since engines that share a host cannot share llm-d's one socketPort.
	KVEventsZMQ   bool
	KVEventsModel string
	// CPUs, if set, pins engine i to CPUs.Engines[i] from its first instruction (a restart
	// too), with GOMAXPROCS one more than that (see startEngine), and this process, which runs the router, to
	// CPUs.Router from Start until Stop (Linux; see PlanCPUs). It has a set per engine;
	// with Autoscaled, a set per engine the autoscaler may run (max-replicas), of which the
	// engines started hold the first and the ones it starts take free ones (cpuPool).
	CPUs *CPUPlan
}

// RestartPolicy is how engines that exit on their own are restarted. The back-off follows
// the kubelet's container restart back-off (CrashLoopBackOff; pkg/kubelet/kubelet.go:
// backOffPeriod 10 s doubling to MaxContainerBackOff 5 min, through client-go's
// util/flowcontrol Backoff, which forgets a crash count after twice the cap without a
// failure), scaled down for a process on one machine, plus a bound on a crash loop, which
// the kubelet does not have.
type RestartPolicy struct {
	// Backoff is the wait before the first restart after a crash; it doubles with each
	// consecutive crash, up to MaxBackoff. Defaults: 1 s and 30 s.
	Backoff, MaxBackoff time.Duration
	// ResetAfter is how long a restarted engine must stay up (healthy) for its crash count
	// to start again from zero; default 1 minute.
	ResetAfter time.Duration
	// MaxRestarts is the most consecutive restarts of one engine, each crashing before
	// ResetAfter passed (a crash loop: a bad flag, a port taken by another process); the
	// engine is then left down, and the cluster serves on the others. Default 5 (with the
	// default back-offs, given up about 31 s after the first crash); negative: never restart.
	MaxRestarts int
}

func (p RestartPolicy) withDefaults() RestartPolicy {
	if p.Backoff <= 0 {
		p.Backoff = time.Second
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 30 * time.Second
	}
	p.MaxBackoff = max(p.MaxBackoff, p.Backoff)
	if p.ResetAfter <= 0 {
		p.ResetAfter = time.Minute
	}
	if p.MaxRestarts == 0 {
		p.MaxRestarts = 5
	}
	return p
}

// backoff is the wait before restart number attempt (1-based).
func (p RestartPolicy) backoff(attempt int) time.Duration {
	d := p.Backoff
	for range attempt - 1 {
		if d >= p.MaxBackoff/2 {
			return p.MaxBackoff
		}
		d *= 2
	}
	return min(d, p.MaxBackoff)
}

// Cluster is a started local cluster.
type Cluster struct {
	// Endpoints are the engines' base URLs, in start order.
	Endpoints []string
	// URL is the router's base URL.
	URL string

	Router *router.Router

	opts   Options
	logMu  sync.Mutex
	server *http.Server
	done   chan error
	once   sync.Once

	mu       sync.Mutex
	engines  []*engineProc // the running process of each engine; replaced on a restart
	stopping bool
	stopCh   chan struct{} // closed by Stop
	live     int           // engines not given up
	stopErr  error
	unpin    func() error // restores this process's affinity; nil when not pinned
	// cpus hands Options.CPUs' engine sets to the engines (nil without a plan): engine i
	// runs on the set it holds, kept across its restarts.
	cpus *cpuPool
	// retired are the engines the autoscaler stopped on purpose (autoscale.go): their
	// exits are no crash.
	retired map[*engineProc]bool
	// scaling is the autoscaler running over the cluster, nil without one: the supervisor
	// tells it of crashes, restarts and engines given up, under mu.
	scaling *autoscaler

	// kv are engine i's KV-event sockets with Options.KVEventsZMQ, as its first start
	// announced them; a restart binds the same. Guarded by kvMu.
	kvMu sync.Mutex
	kv   map[int]kvSockets
}

// kvSockets are an engine's ZeroMQ KV-event addresses: its PUB socket and replay socket.
type kvSockets struct{ pub, replay string }

// KVEvents are engine i's ZeroMQ KV-event addresses (its PUB and replay sockets) with
// Options.KVEventsZMQ; "" without.
func (c *Cluster) KVEvents(i int) (pub, replay string) {
	c.kvMu.Lock()
	defer c.kvMu.Unlock()
	k := c.kv[i]
	return k.pub, k.replay
}

// routerEndpoint is engine i at url as the router is given it: with its own KV-event
// addresses (URL#kv-events=...) when it publishes over ZeroMQ.
func (c *Cluster) routerEndpoint(i int, url string) string {
	if pub, replay := c.KVEvents(i); pub != "" {
		return url + "#" + router.KVEventsFragment(pub, replay)
	}
	return url
}

// kvEventsPrefix starts the engine's line naming its KV-event sockets
// (cmd/servelab/engine_kvevents.go, kvEventsPublisher.describe): "KV events (ZeroMQ, vLLM's
// format): publishing on tcp://H:P, topic "...", replay on tcp://H:R".
const kvEventsPrefix = "KV events (ZeroMQ"

// parseKVEventsLine reads the PUB and replay addresses from the engine's KV-events line.
func parseKVEventsLine(line string) (kvSockets, bool) {
	var k kvSockets
	_, rest, ok := strings.Cut(line, "publishing on ")
	if !ok {
		return k, false
	}
	k.pub, _, _ = strings.Cut(rest, ",")
	if _, r, ok := strings.Cut(rest, "replay on "); ok {
		k.replay = strings.TrimSpace(r)
	}
	return k, strings.HasPrefix(k.pub, "tcp://")
}

// kvEventsArgs are engine i's --kv-events-config with Options.KVEventsZMQ: free ports on
// loopback on its first start, the same ones on a restart.
func (c *Cluster) kvEventsArgs(i int) []string {
	if !c.opts.KVEventsZMQ {
		return nil
	}
	k := kvSockets{pub: "tcp://127.0.0.1:0", replay: "tcp://127.0.0.1:0"}
	c.kvMu.Lock()
	if had, ok := c.kv[i]; ok {
		k = had
	}
	c.kvMu.Unlock()
	cfg, _ := json.Marshal(map[string]any{
		"enable_kv_cache_events": true, "publisher": "zmq",
		"endpoint": k.pub, "bind": true, "replay_endpoint": k.replay,
		"topic": fmt.Sprintf("kv@engine-%d@%s", i, c.opts.KVEventsModel),
	})
	return []string{"--kv-events-config", string(cfg)}
}

type engineProc struct {
	name    string
	cmd     *exec.Cmd
	started time.Time
	exited  chan struct{}
	err     error    // set before exited closes
	tail    []string // the last lines of its output, set before exited closes
}

// Start launches the engines, waits until every one answers /health, then starts the
// router. On any failure everything started so far is stopped.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Engines <= 0 {
		return nil, fmt.Errorf("local: engines must be positive, got %d", opts.Engines)
	}
	if len(opts.Command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("local: finding this executable: %w", err)
		}
		opts.Command = []string{exe, "engine"}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	if opts.Events == nil {
		opts.Events = io.Discard
	}
	if p := opts.CPUs; p != nil {
		if len(p.Engines) != opts.Engines && !(opts.Autoscaled && len(p.Engines) > opts.Engines) {
			return nil, fmt.Errorf("local: the CPU plan has CPUs for %d engines, not %d", len(p.Engines), opts.Engines)
		}
		for i, cpus := range p.Engines {
			if len(cpus) == 0 {
				return nil, fmt.Errorf("local: the CPU plan gives engine-%d no CPUs", i)
			}
		}
	}
	c := &Cluster{done: make(chan error, 1), stopCh: make(chan struct{}), opts: opts, live: opts.Engines}
	if opts.CPUs != nil {
		c.cpus = newCPUPool(opts.CPUs.Engines, opts.Engines)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	addrs := make(chan addrOrErr, opts.Engines)
	for i := range opts.Engines {
		e, err := c.startEngine(i, "0", addrs)
		if err != nil {
			c.Stop(5 * time.Second)
			return nil, err
		}
		c.engines = append(c.engines, e)
	}
	byName := map[string]string{}
	for range opts.Engines {
		select {
		case a := <-addrs:
			if a.err != nil {
				c.Stop(5 * time.Second)
				return nil, a.err
			}
			byName[a.name] = "http://" + a.addr
		case <-ctx.Done():
			c.Stop(5 * time.Second)
			return nil, fmt.Errorf("local: engines did not report a listen address within %v: %w", opts.StartTimeout, ctx.Err())
		}
	}
	for _, e := range c.engines {
		c.Endpoints = append(c.Endpoints, byName[e.name])
	}
	for i, url := range c.Endpoints {
		if err := waitHealthy(ctx, url, c.engines[i]); err != nil {
			c.Stop(5 * time.Second)
			return nil, err
		}
	}
	if opts.CPUs != nil && len(opts.CPUs.Router) > 0 {
		unpin, err := PinProcess(opts.CPUs.Router)
		if err != nil {
			c.Stop(5 * time.Second)
			return nil, err
		}
		c.unpin = unpin
	}
	if opts.Router.Policy != nil {
		if err := c.startRouter(ctx, opts); err != nil {
			c.Stop(5 * time.Second)
			return nil, err
		}
	}
	switch {
	case opts.Restart == nil:
		go c.watch()
	case !opts.Autoscaled: // else Autoscale starts the supervisors
		p := opts.Restart.withDefaults()
		for i, url := range c.Endpoints {
			go c.supervise(i, url, p)
		}
	}
	return c, nil
}

// CPUTimes are the user+system CPU times the engines' current processes have used since
// they started, in start order: read from /proc while one runs, from its rusage once it
// has exited. After a restart, the restarted process's.
func (c *Cluster) CPUTimes() ([]time.Duration, error) {
	c.mu.Lock()
	engines := append([]*engineProc(nil), c.engines...)
	c.mu.Unlock()
	times := make([]time.Duration, len(engines))
	for i, e := range engines {
		select {
		case <-e.exited:
			if ps := e.cmd.ProcessState; ps != nil {
				times[i] = ps.UserTime() + ps.SystemTime()
			}
			continue
		default:
		}
		t, err := ProcessCPUTime(e.pid())
		if err != nil {
			select {
			case <-e.exited: // it exited between the two checks
				if ps := e.cmd.ProcessState; ps != nil {
					t, err = ps.UserTime()+ps.SystemTime(), nil
				}
			default:
			}
		}
		if err != nil {
			return nil, fmt.Errorf("local: %s: %w", e.name, err)
		}
		times[i] = t
	}
	return times, nil
}

// CPUWaits are how long the threads of the engines' current processes have waited,
// runnable, for a CPU since they started (ProcessCPUWait), in start order; 0 for one that
// has exited.
func (c *Cluster) CPUWaits() ([]time.Duration, error) {
	pids := c.PIDs()
	waits := make([]time.Duration, len(pids))
	for i, pid := range pids {
		if pid == 0 {
			continue
		}
		w, err := ProcessCPUWait(pid)
		if err != nil && c.PIDs()[i] != 0 {
			return nil, fmt.Errorf("local: engine-%d: %w", i, err)
		}
		waits[i] = w
	}
	return waits, nil
}

// PIDs are the process ids of the engines running now, in start order (0 for one down).
func (c *Cluster) PIDs() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	pids := make([]int, len(c.engines))
	for i, e := range c.engines {
		select {
		case <-e.exited:
		default:
			pids[i] = e.pid()
		}
	}
	return pids
}

func (c *Cluster) events(format string, args ...any) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	fmt.Fprintf(c.opts.Events, format+"\n", args...)
}

// supervise restarts engine i (c.engines[i], healthy at url) each time it exits on its
// own, on the port it had, until Stop or until it crashed MaxRestarts times in a row. With
// an autoscaler (c.scaling) the engine is its replica throughout: a crash makes it
// restarting (unready) there, and a scale-down of it meanwhile (retired, or no longer
// wanted) ends its supervision instead of restarting it; it is given up to the autoscaler,
// which frees its slot, rather than counted down in live.
func (c *Cluster) supervise(i int, url string, p RestartPolicy) {
	// It returns once engine i's last process has exited for good (or at Stop): its CPU
	// set, kept across the restarts, is free for another engine.
	defer c.cpus.free(i)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(url, "http://"))
	healthySince := time.Now() // it was healthy when supervision began
	crashes := 0
	for {
		c.mu.Lock()
		e := c.engines[i]
		c.mu.Unlock()
		select {
		case <-e.exited:
		case <-c.stopCh:
			return
		}
		c.mu.Lock()
		as := c.scaling
		// One critical section with the autoscaler's drains and cancels: an engine it
		// stopped, or whose slot it is draining, is not restarted.
		restart := !c.stopping && !c.retired[e] && (as == nil || as.crashedLocked(i))
		c.mu.Unlock()
		if !restart {
			return
		}
		if as != nil {
			as.setEndpoints() // out of the router until it is back
		}
		if !healthySince.IsZero() && time.Since(healthySince) >= p.ResetAfter {
			crashes = 0
		}
		crashes++
		what := fmt.Sprintf("%s (pid %d, %s) exited: %v after %v", e.name, e.pid(), url,
			exitReason(e), time.Since(e.started).Round(time.Millisecond))
		if p.MaxRestarts < 0 || crashes > p.MaxRestarts {
			why := "restarts are off"
			if p.MaxRestarts >= 0 {
				why = fmt.Sprintf("it crashed %d times in a row without staying up %v", crashes, p.ResetAfter)
			}
			if len(e.tail) > 0 {
				why += "; its last output: " + strings.Join(e.tail, " | ")
			}
			c.mu.Lock()
			var live int
			if as != nil {
				live = as.gaveUpLocked(i)
			} else {
				c.live--
				live = c.live
			}
			c.mu.Unlock()
			if as != nil {
				c.events("%s; not restarting it: %s; its replica is gone, %d left", what, why, live)
			} else {
				c.events("%s; not restarting it: %s; %d of %d engines left", what, why, live, len(c.engines))
			}
			if live == 0 {
				select {
				case c.done <- fmt.Errorf("local: every engine is down; the last: %w", e.err):
				default:
				}
			}
			return
		}
		wait := p.backoff(crashes)
		c.events("%s; restarting in %v (attempt %d of %d)", what, wait, crashes, p.MaxRestarts)
		var scaledDown <-chan struct{} // nil, never ready, without an autoscaler
		if as != nil {
			c.mu.Lock()
			scaledDown = as.unsupervisedLocked(i)
			c.mu.Unlock()
		}
		select {
		case <-time.After(wait):
		case <-scaledDown:
		case <-c.stopCh:
			return
		}
		c.mu.Lock()
		if c.stopping {
			c.mu.Unlock()
			return
		}
		if as != nil && !as.wantsLocked(i) {
			c.mu.Unlock()
			c.events("%s was scaled down while it waited to restart; not restarting it", e.name)
			return
		}
		ne, err := c.startEngine(i, port, make(chan addrOrErr, 1))
		if err != nil {
			ne = notStarted(e.name, err)
		}
		c.engines[i] = ne
		c.mu.Unlock()
		healthySince = time.Time{}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.StartTimeout)
		go func() {
			select {
			case <-c.stopCh:
				cancel()
			case <-ctx.Done():
			}
		}()
		err = waitHealthy(ctx, url, ne)
		cancel()
		if err != nil {
			select {
			case <-ne.exited: // counted as a crash above
			default:
				if c.isStopping() {
					return
				}
				c.events("%s: %v; killing it", ne.name, err)
				ne.signal(os.Kill)
			}
			continue
		}
		if as != nil {
			c.mu.Lock()
			back := as.backLocked(i, ne)
			c.mu.Unlock()
			if !back {
				// Scaled down while it started: the autoscaler retired and signalled it, and
				// the loop ends at its exit.
				continue
			}
			as.setEndpoints()
		}
		healthySince = time.Now()
		c.events("%s is back at %s (pid %d, healthy %v after its start, attempt %d)", ne.name, url,
			ne.pid(), time.Since(ne.started).Round(time.Millisecond), crashes)
	}
}

// notStarted is an engine process that never ran (its start failed with err, or it is
// about to be started): it has exited, with nothing to signal.
func notStarted(name string, err error) *engineProc {
	if err == nil {
		err = fmt.Errorf("local: %s not started", name)
	}
	e := &engineProc{name: name, cmd: &exec.Cmd{}, started: time.Now(), exited: make(chan struct{}), err: err}
	close(e.exited)
	return e
}

func (c *Cluster) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

func (e *engineProc) pid() int {
	if e.cmd.Process == nil {
		return 0 // it could not be started
	}
	return e.cmd.Process.Pid
}

// signal sends sig to the process, if one was started.
func (e *engineProc) signal(sig os.Signal) {
	if e.cmd.Process != nil {
		e.cmd.Process.Signal(sig)
	}
}

// exitReason is how a process ended: "exit status 3", "signal: killed".
func exitReason(e *engineProc) string {
	if e.cmd.ProcessState != nil {
		return e.cmd.ProcessState.String()
	}
	return e.err.Error()
}

type addrOrErr struct {
	name, addr string
	err        error
}

const listenPrefix = "listening on http://"

// startEngine starts engine i on port ("0": a free one); the address it announces, or its
// error if it exits before announcing one, goes to addrs (which must have room for it).
func (c *Cluster) startEngine(i int, port string, addrs chan<- addrOrErr) (*engineProc, error) {
	opts := &c.opts
	logMu := &c.logMu
	name := fmt.Sprintf("engine-%d", i)
	args := append(append([]string{}, opts.Command[1:]...), opts.EngineArgs...)
	if opts.EngineArgsFor != nil {
		args = append(args, opts.EngineArgsFor(i)...)
	}
	args = append(args, c.kvEventsArgs(i)...)
	args = append(args, "--host", "127.0.0.1", "--port", port)
	cmd := exec.Command(opts.Command[0], args...)
	cmd.Env = append(os.Environ(), opts.Env...)
	var cpus []int
	if opts.CPUs != nil {
		if cpus = c.cpus.of(i); cpus == nil {
			return nil, fmt.Errorf("local: %s holds no CPU set of the plan", name)
		}
		// One P more than the kernels' threads, on the same CPUs: the HTTP side (parsing
		// requests, writing SSE chunks) then runs beside the forward pass, time-sliced by the
		// kernel, as vLLM's API server runs in its own process beside EngineCore. With
		// GOMAXPROCS equal to the CPUs a pinned one-CPU engine's handlers waited for the
		// loop to be preempted (10 ms) or to block: measured on the tiny model, 2 engines,
		// Mooncake's first 200 requests, clients saw TTFT 25 ms above the engines' own
		// vllm:time_to_first_token_seconds; with one P more, 6 ms.
		cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", len(cpus)+1))
	}
	cmd.SysProcAttr = engineSysProcAttr()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout // one stream, so lines keep their order
	if cpus != nil {
		err = startPinned(cmd, cpus)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("local: starting %s (%s): %w", name, opts.Command[0], err)
	}
	e := &engineProc{name: name, cmd: cmd, started: time.Now(), exited: make(chan struct{})}
	go func() {
		reported, kvSeen := false, false
		var last []string // the tail of its output, for the error when it dies
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			fmt.Fprintf(opts.Log, "[%s] %s\n", name, line)
			logMu.Unlock()
			if opts.KVEventsZMQ && strings.HasPrefix(line, kvEventsPrefix) {
				if k, ok := parseKVEventsLine(line); ok {
					c.kvMu.Lock()
					if c.kv == nil {
						c.kv = map[int]kvSockets{}
					}
					c.kv[i] = k
					c.kvMu.Unlock()
					kvSeen = true
				}
			}
			if rest, ok := strings.CutPrefix(line, listenPrefix); ok && !reported {
				a := addrOrErr{name: name, addr: strings.TrimSpace(rest)}
				if opts.KVEventsZMQ && !kvSeen {
					a = addrOrErr{name: name, err: fmt.Errorf("local: %s announced no ZeroMQ KV-event sockets (a %q line) before listening", name, kvEventsPrefix)}
				}
				addrs <- a
				reported = true
				continue
			}
			last = append(last, line)
			if len(last) > 5 {
				last = last[1:]
			}
		}
		io.Copy(io.Discard, out)
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exited")
		}
		e.err = fmt.Errorf("local: %s %v", name, err)
		e.tail = last
		if !reported {
			if len(last) > 0 {
				e.err = fmt.Errorf("%w: %s", e.err, strings.Join(last, " | "))
			}
			addrs <- addrOrErr{name: name, err: e.err}
		}
		close(e.exited)
	}()
	return e, nil
}

// waitHealthy polls url/health until it answers 200.
func waitHealthy(ctx context.Context, url string, e *engineProc) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-e.exited:
			return e.err
		case <-ctx.Done():
			return fmt.Errorf("local: %s at %s not healthy: %w", e.name, url, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) startRouter(ctx context.Context, opts Options) error {
	cfg := opts.Router
	cfg.Endpoints = make([]string, len(c.Endpoints))
	for i, u := range c.Endpoints {
		if cfg.Endpoints[i] = c.routerEndpoint(i, u); i < len(opts.Roles) && opts.Roles[i] != "" {
			cfg.Endpoints[i] = opts.Roles[i] + "=" + cfg.Endpoints[i]
		}
	}
	r, err := router.New(cfg)
	if err != nil {
		return err
	}
	addr := opts.RouterAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.Close()
		return err
	}
	c.Router = r
	c.URL = "http://" + ln.Addr().String()
	c.server = router.NewServer(r.Handler(), 0)
	go c.server.Serve(ln)
	return r.WaitReady(ctx)
}

// watch reports the first engine that exits while the cluster runs.
func (c *Cluster) watch() {
	// The autoscaler may be adding engines already: read the list under the lock.
	c.mu.Lock()
	engines := slices.Clone(c.engines)
	c.mu.Unlock()
	for _, e := range engines {
		go c.watchEngine(e)
	}
}

// watchEngine reports e's exit on Done unless the autoscaler retired it (or another exit
// was reported first).
func (c *Cluster) watchEngine(e *engineProc) {
	<-e.exited
	c.mu.Lock()
	retired := c.retired[e]
	c.mu.Unlock()
	if !retired {
		select {
		case c.done <- e.err:
		default:
		}
	}
}

// Done delivers an error when an engine exits on its own (a crash), or after Stop. With
// Options.Restart, only when every engine has been given up.
func (c *Cluster) Done() <-chan error { return c.done }

// Stop shuts the router down, asks every engine to finish in-flight requests (SIGTERM) and
// kills those still running after grace.
func (c *Cluster) Stop(grace time.Duration) error {
	c.once.Do(func() {
		if c.server != nil {
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			c.server.Shutdown(ctx)
			cancel()
		}
		if c.Router != nil {
			c.Router.Close()
		}
		// From here no supervisor starts an engine, so these are the last processes.
		c.mu.Lock()
		c.stopping = true
		close(c.stopCh)
		engines := append([]*engineProc(nil), c.engines...)
		c.mu.Unlock()
		for _, e := range engines {
			e.signal(syscall.SIGTERM)
		}
		deadline := time.After(grace)
		for _, e := range engines {
			select {
			case <-e.exited:
			case <-deadline:
				for _, k := range engines {
					k.signal(os.Kill)
				}
				<-e.exited
				if c.stopErr == nil {
					c.stopErr = fmt.Errorf("local: %s did not stop within %v; killed", e.name, grace)
				}
			}
		}
		if c.unpin != nil {
			if err := c.unpin(); err != nil && c.stopErr == nil {
				c.stopErr = fmt.Errorf("local: restoring this process's CPU affinity: %w", err)
			}
		}
	})
	return c.stopErr
}
