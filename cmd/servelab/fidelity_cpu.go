package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"servelab/real/local"
)

// fidelityCPUHelp is the part of fidelity's --help on CPUs.
const fidelityCPUHelp = `
CPUs. The engines are pinned to their own CPUs (--pin-cpus, on by default; see the flag): on 2
CPUs, 2 engines get one each and the router and load generator (this process) share them; 1
engine gets one CPU and this process the other. The profile is measured on one engine's CPUs.
Pinning keeps our processes off each other's CPUs, not other processes off ours (that takes a
cpuset or isolcpus), hence the check: before each measured run (the calibration runs too)
fidelity samples for 1 s the CPU time other processes use on this process's CPUs (/proc/stat
less ours) and waits up to --busy-wait for it to fall to what the run leaves free plus 0.25 CPU;
if it does not, it stops, or with --allow-busy measures anyway and marks the run contended. (The
1-minute load average is reported, with the part our own earlier runs and profile explain, but
does not decide: it lags by about a minute, decaying as e^(-t/60).) Each run reports its wall
time, each engine's CPU time and this process's (router and load generator) with the time each
waited runnable for a CPU (run_delay in /proc/PID/task/*/schedstat, summed over threads), the
other processes' CPU time and the 1-minute load before, at most during and after the run; a run
in which other processes used more than that allowance, or whose CPU times add up to more than
CPUs x wall, is marked contended.

One engine. With --engines 1 every router sends every request to the one engine, so routers
cannot differ (the first --router runs; giving several is an error): fidelity compares the
engine's batch policies instead, as it compares routers with more engines. Each --batch (and
--evict; both repeatable, with any --engines) is one compared configuration, the product of
them all (routers x batch x evict), each run --repeats times in both worlds, with the same
spreads and decided/within-noise rankings. Without --batch, --engines 1 compares the
engine's default vllm with the policies --batch names below.
Each configuration's engines are started with its --batch/--evict (and --max-num-seqs,
--max-num-batched-tokens), its simulator runs the profiled engine's configuration with those
policies resolved as such an engine resolves them, and each engine's GET /server_info must
match it. The profile and the capacity that sets the load are the first configuration's, so
every policy is offered the same load; the calibration replays the next slice under each
configuration (up to three) and fits one model to all their steps (a step's time depends on
its shape, which the model takes, not on the policy that chose it, but each policy makes
other shapes).`

// idleSlack is how many CPUs' worth of other processes a measurement tolerates beyond the
// CPUs it leaves free: an idle machine's daemons use a few hundredths.
const idleSlack = 0.25

// idleWindow is how long the busy check samples the CPUs.
const idleWindow = time.Second

// hostSample is one reading of the host's CPUs.
type hostSample struct {
	At time.Time
	// Busy is the CPU time the CPUs this process may use have spent on any process so
	// far; Self, this process's share of it.
	Busy, Self time.Duration
	// Load is the 1-minute load average.
	Load float64
}

// hostReader reads the host; tests inject one.
type hostReader func() (hostSample, error)

// procHost reads /proc for the CPUs this process may use.
func procHost(cpus []int) hostReader {
	return func() (hostSample, error) {
		s := hostSample{At: time.Now()}
		var err error
		if s.Busy, err = local.HostBusyTime(cpus); err != nil {
			return s, err
		}
		if s.Self, err = local.SelfCPUTime(); err != nil {
			return s, err
		}
		s.Load, err = local.LoadAverage()
		return s, err
	}
}

// othersCPUs is how many CPUs other processes kept busy between two samples.
func othersCPUs(a, b hostSample) float64 {
	wall := b.At.Sub(a.At).Seconds()
	if wall <= 0 {
		return 0
	}
	return math.Max(0, ((b.Busy-a.Busy)-(b.Self-a.Self)).Seconds()/wall)
}

// idleCheck is what the busy check found before a run.
type idleCheck struct {
	Idle bool
	// Others is how many CPUs other processes used over the last window.
	Others float64
	Load   float64
	Waited time.Duration
}

// waitIdle samples the CPUs over windows of window until other processes use at most
// allowance CPUs, or until maxWait has passed (at least one window is sampled).
func waitIdle(ctx context.Context, read hostReader, sleep func(context.Context, time.Duration) error,
	window, maxWait time.Duration, allowance float64, waiting func(others float64)) (idleCheck, error) {
	first, err := read()
	if err != nil {
		return idleCheck{}, err
	}
	prev := first
	for n := 0; ; n++ {
		if err := sleep(ctx, window); err != nil {
			return idleCheck{}, err
		}
		cur, err := read()
		if err != nil {
			return idleCheck{}, err
		}
		chk := idleCheck{Others: othersCPUs(prev, cur), Load: cur.Load, Waited: cur.At.Sub(first.At)}
		if chk.Others <= allowance {
			chk.Idle = true
			return chk, nil
		}
		if chk.Waited >= maxWait {
			return chk, nil
		}
		if n == 0 && waiting != nil {
			waiting(chk.Others)
		}
		prev = cur
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cpuFlags are fidelity's CPU flags and what it knows between runs.
type cpuFlags struct {
	allowBusy bool
	busyWait  time.Duration

	read    hostReader                                 // nil: procHost
	sleep   func(context.Context, time.Duration) error // nil: sleepCtx
	allowed []int                                      // the CPUs this process may use
	noProc  error                                      // why there is no CPU accounting (not Linux)
	check   *idleCheck                                 // the check before the run now measured
	// Our processes' share of the 1-minute load average when the last of them (a run,
	// the profile) ended, and when that was: it decays as e^(-t/60).
	oursLoad float64
	lastEnd  time.Time
}

func (f *cpuFlags) register(cmd *cobra.Command, c *clusterFlags) {
	c.registerPinCPUs(cmd, true)
	fl := cmd.Flags()
	fl.BoolVar(&f.allowBusy, "allow-busy", false, "measure even when other processes keep the CPUs busy (the report marks such runs contended)")
	fl.DurationVar(&f.busyWait, "busy-wait", time.Minute, "how long to wait before each run for other processes to leave the CPUs")
}

// cpuSetup is how a fidelity run used the machine's CPUs.
type cpuSetup struct {
	// CPUs is how many CPUs this process may use.
	CPUs             int            `json:"cpus"`
	Pinned           bool           `json:"pinned"`
	Plan             *local.CPUPlan `json:"plan,omitempty"`
	ThreadsPerEngine int            `json:"threads_per_engine"`
	// Allowance is how many CPUs other processes may use during a run that is not
	// contended: what the run leaves free plus idleSlack.
	Allowance float64 `json:"others_allowance_cpus"`
	Note      string  `json:"note,omitempty"`
}

// runCPU is one measured run's CPU accounting, over the replay (the cluster's start-up
// and shutdown are not in it).
type runCPU struct {
	WallSeconds      float64   `json:"wall_seconds"`
	EngineCPUSeconds []float64 `json:"engine_cpu_seconds"`
	// SelfCPUSeconds is this process's: the router and the load generator.
	SelfCPUSeconds float64 `json:"router_and_load_generator_cpu_seconds"`
	// The time the engines' threads, and this process's, waited runnable for a CPU (the
	// kernel's run_delay), summed over threads (so it can exceed the wall time): what
	// contention took from them, ours or others'.
	EngineWaitSeconds []float64 `json:"engine_cpu_wait_seconds"`
	SelfWaitSeconds   float64   `json:"router_and_load_generator_cpu_wait_seconds"`
	// HostBusyCPUSeconds is every process's on this process's CPUs; OtherCPUSeconds, the
	// part that is not ours.
	HostBusyCPUSeconds float64 `json:"host_busy_cpu_seconds"`
	OtherCPUSeconds    float64 `json:"other_processes_cpu_seconds"`
	// OthersBefore is how many CPUs other processes used just before the run (the check).
	OthersBefore float64 `json:"other_processes_cpus_before"`
	// The 1-minute load average before (and how much of it our previous runs and the
	// profile explain; see addOurs), the most sampled during (once a second) and after
	// the run.
	LoadBefore         float64  `json:"load1_before"`
	LoadBeforeFromOurs float64  `json:"load1_before_from_our_previous_run"`
	LoadMax            float64  `json:"load1_max"`
	LoadAfter          float64  `json:"load1_after"`
	Contended          bool     `json:"contended"`
	Why                []string `json:"contended_why,omitempty"`
}

func (f *cpuFlags) reader() hostReader {
	if f.read == nil {
		f.read = procHost(f.allowed)
	}
	return f.read
}

// setup resolves --pin-cpus for c and says how the run uses the CPUs; called once, before
// the profile.
func (f *cpuFlags) setup(c *clusterFlags) (*cpuSetup, error) {
	if f.busyWait < 0 {
		return nil, fmt.Errorf("--busy-wait must be 0 or more, got %v", f.busyWait)
	}
	if err := c.resolveCPUs(); err != nil {
		return nil, err
	}
	allowed, err := local.AllowedCPUs()
	if err != nil {
		// Not Linux, and not pinned (resolveCPUs would have failed): measure without.
		f.noProc = err
		return &cpuSetup{CPUs: runtime.NumCPU(), ThreadsPerEngine: c.threadsPerEngine(),
			Note: "no CPU accounting or busy check: " + err.Error()}, nil
	}
	f.allowed = allowed
	s := &cpuSetup{CPUs: len(allowed), Pinned: c.cpus != nil, Plan: c.cpus, ThreadsPerEngine: c.threadsPerEngine()}
	used := min(s.CPUs, c.total()+1)
	if c.cpus != nil {
		used = c.cpus.CPUs()
		if len(c.cpus.Router) == 0 {
			s.Note = fmt.Sprintf("%d engines on %d CPUs: the router and the load generator share the engines' CPUs", c.total(), s.CPUs)
		}
	} else if c.total() >= s.CPUs {
		s.Note = fmt.Sprintf("%d engines, the router and the load generator share %d CPUs unpinned", c.total(), s.CPUs)
	}
	s.Allowance = float64(s.CPUs-used) + idleSlack
	return s, nil
}

// profiling pins this process to one engine's CPUs while the profile is measured, and
// counts the profile's load as ours; the returned function ends both.
func (f *cpuFlags) profiling(c *clusterFlags) (func(), error) {
	start := time.Now()
	cpu0, _ := local.SelfCPUTime()
	restore := func() error { return nil }
	if c.cpus != nil {
		var err error
		if restore, err = local.PinProcess(c.cpus.Engines[0]); err != nil {
			return nil, err
		}
	}
	return func() {
		restore()
		cpu, _ := local.SelfCPUTime()
		f.addOurs(start, time.Now(), (cpu - cpu0).Seconds())
	}, nil
}

// waitIdle is the busy check before a measured run: it refuses to measure on CPUs other
// processes keep busy, unless --allow-busy.
func (f *cpuFlags) waitIdle(ctx context.Context, s *cpuSetup, log io.Writer) error {
	if f.noProc != nil {
		return nil
	}
	sleep := f.sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	chk, err := waitIdle(ctx, f.reader(), sleep, idleWindow, f.busyWait, s.Allowance, func(others float64) {
		fmt.Fprintf(log, "other processes use %.2f of the %d CPUs; waiting up to %v for them to fall to %.2f ...\n",
			others, s.CPUs, f.busyWait, s.Allowance)
	})
	if err != nil {
		return fmt.Errorf("checking the CPUs are idle: %w", err)
	}
	f.check = &chk
	if chk.Idle {
		return nil
	}
	msg := fmt.Sprintf("the machine is busy: other processes used %.2f of the %d CPUs over the last %v, more than the %.2f a measurement allows, after waiting %v (1-minute load %.2f%s)",
		chk.Others, s.CPUs, idleWindow, s.Allowance, chk.Waited.Round(time.Second), chk.Load, f.oursNote(chk.Load))
	if !f.allowBusy {
		return errors.New(msg + "; stop them, or pass --allow-busy to measure anyway (the report marks such runs contended)")
	}
	fmt.Fprintf(log, "WARNING: %s; measuring anyway (--allow-busy): the run is marked contended\n", msg)
	return nil
}

// fromOurs is how much of the 1-minute load at now our previous runs (and the profile)
// explain.
func (f *cpuFlags) fromOurs(now time.Time) float64 {
	if f.lastEnd.IsZero() {
		return 0
	}
	return f.oursLoad * math.Exp(-now.Sub(f.lastEnd).Seconds()/60)
}

// addOurs folds a stretch from start to end in which our processes used cpu CPU-seconds
// into our share of the load average. The kernel's 1-minute load is an exponentially
// damped average of the runnable tasks with a 60 s time constant, sampled every 5 s; ours
// ran cpu/wall tasks on average (at least: tasks waiting for a CPU count too), so over the
// stretch our share moves towards that as 1-e^(-wall/60). A run of a few seconds adds
// little, whatever the load average says then: the rest is other processes'.
func (f *cpuFlags) addOurs(start, end time.Time, cpu float64) {
	wall := end.Sub(start).Seconds()
	if wall <= 0 {
		return
	}
	decay := math.Exp(-wall / 60)
	f.oursLoad = f.fromOurs(start)*decay + cpu/wall*(1-decay)
	f.lastEnd = end
}

func (f *cpuFlags) oursNote(load float64) string {
	ours := f.fromOurs(time.Now())
	if ours <= 0 {
		return ""
	}
	return fmt.Sprintf(", of which our earlier runs explain %.2f", math.Min(ours, load))
}

// cpuWatch measures one run.
type cpuWatch struct {
	f       *cpuFlags
	s       *cpuSetup
	cl      *local.Cluster
	start   hostSample
	engines []time.Duration
	waits   []time.Duration
	self    time.Duration // this process's wait
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	maxLoad float64
}

// watch starts measuring a run on cl; finish ends it. Without /proc there is nothing to
// measure: nil.
func (f *cpuFlags) watch(s *cpuSetup, cl *local.Cluster) (*cpuWatch, error) {
	if f.noProc != nil {
		return nil, nil
	}
	w := &cpuWatch{f: f, s: s, cl: cl, stop: make(chan struct{})}
	var err error
	if w.engines, err = cl.CPUTimes(); err != nil {
		return nil, err
	}
	if w.waits, err = cl.CPUWaits(); err != nil {
		return nil, err
	}
	if w.self, err = local.ProcessCPUWait(os.Getpid()); err != nil {
		return nil, err
	}
	if w.start, err = f.reader()(); err != nil {
		return nil, err
	}
	w.maxLoad = w.start.Load
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				if l, err := local.LoadAverage(); err == nil {
					w.mu.Lock()
					w.maxLoad = math.Max(w.maxLoad, l)
					w.mu.Unlock()
				}
			}
		}
	}()
	return w, nil
}

// finish ends the measurement (before the cluster stops) and judges whether the run was
// contended.
func (w *cpuWatch) finish() (*runCPU, error) {
	if w == nil {
		return nil, nil
	}
	close(w.stop)
	w.wg.Wait()
	engines, err := w.cl.CPUTimes()
	if err != nil {
		return nil, err
	}
	waits, err := w.cl.CPUWaits()
	if err != nil {
		return nil, err
	}
	self, err := local.ProcessCPUWait(os.Getpid())
	if err != nil {
		return nil, err
	}
	end, err := w.f.reader()()
	if err != nil {
		return nil, err
	}
	u := &runCPU{
		WallSeconds:        end.At.Sub(w.start.At).Seconds(),
		SelfCPUSeconds:     (end.Self - w.start.Self).Seconds(),
		HostBusyCPUSeconds: (end.Busy - w.start.Busy).Seconds(),
		LoadBefore:         w.start.Load,
		LoadBeforeFromOurs: math.Min(w.start.Load, w.f.fromOurs(w.start.At)),
		LoadMax:            math.Max(w.maxLoad, end.Load),
		LoadAfter:          end.Load,
		SelfWaitSeconds:    (self - w.self).Seconds(),
	}
	for i := range engines {
		u.EngineCPUSeconds = append(u.EngineCPUSeconds, (engines[i] - w.engines[i]).Seconds())
		u.EngineWaitSeconds = append(u.EngineWaitSeconds, (waits[i] - w.waits[i]).Seconds())
	}
	if w.f.check != nil {
		u.OthersBefore = w.f.check.Others
	}
	judgeRun(u, w.s, w.f.check)
	w.f.addOurs(w.start.At, end.At, u.HostBusyCPUSeconds-u.OtherCPUSeconds)
	return u, nil
}

// judgeRun fills in OtherCPUSeconds and whether the run was contended: other processes
// were busy before it (check) or during it, beyond the allowance, or our processes' CPU
// times add up to more than the CPUs can give in the wall time (then the CPU count or the
// accounting is wrong, and so is any comparison of them).
func judgeRun(u *runCPU, s *cpuSetup, check *idleCheck) {
	ours := u.SelfCPUSeconds
	for _, e := range u.EngineCPUSeconds {
		ours += e
	}
	u.OtherCPUSeconds = math.Max(0, u.HostBusyCPUSeconds-ours)
	u.Contended, u.Why = false, nil
	if check != nil && !check.Idle {
		u.Why = append(u.Why, fmt.Sprintf("other processes used %.2f CPUs just before the run (allowed %.2f)", check.Others, s.Allowance))
	}
	if u.WallSeconds > 0 {
		if others := u.OtherCPUSeconds / u.WallSeconds; others > s.Allowance {
			u.Why = append(u.Why, fmt.Sprintf("other processes used %.2f CPUs during the run (allowed %.2f)", others, s.Allowance))
		}
		// /proc counts in 10 ms ticks: a tick per process of slack.
		if limit := float64(s.CPUs)*u.WallSeconds*1.02 + 0.01*float64(len(u.EngineCPUSeconds)+1); ours > limit {
			u.Why = append(u.Why, fmt.Sprintf("our processes used %.2f CPU-s in %.2f s on %d CPUs, more than CPUs x wall", ours, u.WallSeconds, s.CPUs))
		}
	}
	if !s.Pinned && len(u.EngineCPUSeconds) > s.CPUs {
		u.Why = append(u.Why, fmt.Sprintf("%d engines ran unpinned on %d CPUs", len(u.EngineCPUSeconds), s.CPUs))
	}
	u.Contended = len(u.Why) > 0
}

// oneEngineRouters is the routers fidelity compares with --engines 1: one, since every
// router sends every request to the one engine; changed says --router was given.
func oneEngineRouters(engines int, routers []string, changed bool) ([]string, error) {
	if engines != 1 || len(routers) <= 1 {
		return routers, nil
	}
	if changed {
		return nil, fmt.Errorf("--engines 1 with %d routers (%s): every router sends every request to the one engine, so they cannot differ; give one --router, and compare batch or evict policies instead (repeat --batch, --evict)",
			len(routers), strings.Join(routers, ", "))
	}
	return routers[:1], nil
}

// printRunCPU prints a run's CPU line: wall time, each process's CPU time, the others',
// the load, and why it was contended.
func printRunCPU(w io.Writer, u *runCPU, s *cpuSetup) {
	if u == nil {
		return
	}
	var parts []string
	for i, e := range u.EngineCPUSeconds {
		p := fmt.Sprintf("engine-%d %.2f", i, e)
		var notes []string
		if s != nil && s.Plan != nil && i < len(s.Plan.Engines) && u.WallSeconds > 0 {
			cpus := s.Plan.Engines[i]
			notes = append(notes, fmt.Sprintf("%.0f%% of CPU %s", 100*e/(u.WallSeconds*float64(len(cpus))), local.FormatCPUList(cpus)))
		}
		if i < len(u.EngineWaitSeconds) {
			notes = append(notes, fmt.Sprintf("waited %.2f", u.EngineWaitSeconds[i]))
		}
		if len(notes) > 0 {
			p += " (" + strings.Join(notes, ", ") + ")"
		}
		parts = append(parts, p)
	}
	parts = append(parts, fmt.Sprintf("router+load generator %.2f (waited %.2f)", u.SelfCPUSeconds, u.SelfWaitSeconds),
		fmt.Sprintf("others %.2f", u.OtherCPUSeconds))
	busy := ""
	if s != nil && u.WallSeconds > 0 {
		busy = fmt.Sprintf(", CPUs %.0f%% busy", 100*u.HostBusyCPUSeconds/(u.WallSeconds*float64(s.CPUs)))
	}
	fmt.Fprintf(w, "%-28s wall %.2f s; CPU s: %s%s; load %.2f before (%.2f ours), %.2f max, %.2f after\n", "CPU",
		u.WallSeconds, strings.Join(parts, ", "), busy, u.LoadBefore, u.LoadBeforeFromOurs, u.LoadMax, u.LoadAfter)
	if u.Contended {
		fmt.Fprintf(w, "%-28s %s\n", "CONTENDED", strings.Join(u.Why, "; "))
	}
}

// printCPUSetup prints how the run uses the CPUs.
func printCPUSetup(w io.Writer, s *cpuSetup) {
	if s == nil {
		return
	}
	how := "engines unpinned (--pin-cpus=false)"
	if s.Plan != nil {
		how = s.Plan.String()
	}
	fmt.Fprintf(w, "CPUs: %d; %s; %d threads per engine", s.CPUs, how, s.ThreadsPerEngine)
	if s.Note != "" {
		fmt.Fprintf(w, "; %s", s.Note)
	}
	fmt.Fprintln(w)
}
