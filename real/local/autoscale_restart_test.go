package local

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/policies/scale"
	"servelab/real/router"
)

// fixedPolicy wants as many replicas as the test sets: the decisions are the test's, so
// what is checked is the bookkeeping around them.
type fixedPolicy struct {
	lo, hi int
	want   atomic.Int64
}

func newFixedPolicy(lo, hi, want int) *fixedPolicy {
	p := &fixedPolicy{lo: lo, hi: hi}
	p.want.Store(int64(want))
	return p
}

func (p *fixedPolicy) Decide(o scale.Observation) scale.Decision {
	n := int(p.want.Load())
	return scale.Decision{Replicas: n, Metric: math.NaN(), Reason: fmt.Sprintf("fixed: %d -> %d", o.Replicas, n)}
}
func (p *fixedPolicy) Interval() float64   { return 1 }
func (p *fixedPolicy) Bounds() (int, int)  { return p.lo, p.hi }
func (p *fixedPolicy) Spec() policies.Spec { return policies.Spec{Name: "fixed"} }
func (p *fixedPolicy) set(n int)           { p.want.Store(int64(n)) }

// states are the scaler's slots as "slot:state", the off ones left out.
func states(s *scale.Scaler) string {
	var out []string
	for i, r := range s.Replicas() {
		if r.State != scale.Off {
			out = append(out, fmt.Sprintf("%d:%s", i, r.State))
		}
	}
	return strings.Join(out, " ")
}

// The supervisor and the autoscaler meet in four hooks (crashedLocked, wantsLocked,
// backLocked, gaveUpLocked) and two scale-down paths (cancelRestarting, drainSlot); each
// case runs one interleaving of a crash, its restart and a scale-down, as the supervisor
// and decide would call them, and checks what each step answered and the states it left.
func TestAutoscaleRestartBookkeeping(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []string
		want []string
	}{{
		name: "a crashed replica restarts as itself: counted, not ready, nothing started in its place",
		ops:  []string{"crash 1", "decide 2", "wants 1", "restart 1", "back 1", "decide 2"},
		want: []string{
			"crash 1: restart=true [0:ready 1:starting]",
			"decide 2: replicas=2 ready=1 start=[] cancel=[] drain=[] [0:ready 1:starting] endpoints=2",
			"wants 1: true",
			"restart 1: [0:ready 1:starting]",
			"back 1: true [0:ready 1:ready] slot 1 runs the new process: true",
			"decide 2: replicas=2 ready=2 start=[] cancel=[] drain=[] [0:ready 1:ready] endpoints=2",
		},
	}, {
		name: "a scale-down during the back-off cancels the restarting replica, not a ready one, and no restart follows",
		ops:  []string{"crash 1", "decide 1", "wants 1", "back 1", "crash 1"},
		want: []string{
			"crash 1: restart=true [0:ready 1:starting]",
			"decide 1: replicas=2 ready=1 start=[] cancel=[1] drain=[] [0:ready] endpoints=1 retired=true",
			"wants 1: false (its back-off cut short)",
			"back 1: false [0:ready]",
			"crash 1: restart=false [0:ready]",
		},
	}, {
		name: "a scale-down after the restart began retires the new process, which is not made ready",
		ops:  []string{"crash 1", "restart 1", "decide 1", "back 1", "crash 1"},
		want: []string{
			"crash 1: restart=true [0:ready 1:starting]",
			"restart 1: [0:ready 1:starting]",
			"decide 1: replicas=2 ready=1 start=[] cancel=[1] drain=[] [0:ready] endpoints=1 retired=true",
			"back 1: false [0:ready]",
			"crash 1: restart=false [0:ready]",
		},
	}, {
		name: "a crash reported after a drain was decided is the drain's, not restarted",
		ops:  []string{"decide 1", "crash 1", "drain 1", "wants 1"},
		want: []string{
			"decide 1: replicas=2 ready=2 start=[] cancel=[] drain=[1] [0:ready 1:draining] endpoints=2",
			"crash 1: restart=false [0:ready 1:draining]",
			"drain 1: [0:ready] endpoints=1",
			"wants 1: false (its back-off cut short)",
		},
	}, {
		name: "a restart that does not come up stays the same restarting replica",
		ops:  []string{"crash 1", "restart 1", "crash 1", "decide 2", "restart 1", "back 1"},
		want: []string{
			"crash 1: restart=true [0:ready 1:starting]",
			"restart 1: [0:ready 1:starting]",
			"crash 1: restart=true [0:ready 1:starting]",
			"decide 2: replicas=2 ready=1 start=[] cancel=[] drain=[] [0:ready 1:starting] endpoints=2",
			"restart 1: [0:ready 1:starting]",
			"back 1: true [0:ready 1:ready] slot 1 runs the new process: true",
		},
	}, {
		name: "a replica given up frees its slot, which the policy fills anew",
		ops:  []string{"crash 1", "gaveup 1", "wants 1", "decide 2", "crash 0", "gaveup 0"},
		want: []string{
			"crash 1: restart=true [0:ready 1:starting]",
			"gaveup 1: 1 left [0:ready] endpoints=1",
			"wants 1: false (its back-off cut short)",
			"decide 2: replicas=1 ready=1 start=[1] cancel=[] drain=[] [0:ready 1:starting] endpoints=1",
			"crash 0: restart=true [0:starting 1:starting]",
			"gaveup 0: 1 left [1:starting] endpoints=0",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			pol := newFixedPolicy(2, 3, 2)
			c := &Cluster{retired: map[*engineProc]bool{}}
			a := &autoscaler{c: c, opts: AutoscaleOptions{Policy: pol}, start: time.Now(),
				restart: &RestartPolicy{},
				scaler:  scale.NewScaler(pol, 6, 0), slots: make([]scaledEngine, 6)}
			for i := range 2 {
				e := notStarted(fmt.Sprintf("engine-%d", i), nil)
				url := fmt.Sprintf("http://127.0.0.1:%d", 9000+i)
				c.engines = append(c.engines, e)
				c.Endpoints = append(c.Endpoints, url)
				a.slots[i] = scaledEngine{proc: e, idx: i, url: url, spec: url}
				a.superviseLocked(i, i)
			}
			c.scaling = a
			// What each supervisor waits on during its back-off.
			backoffs := map[int]<-chan struct{}{0: a.unsupervisedLocked(0), 1: a.unsupervisedLocked(1)}
			var got []string
			for _, op := range tc.ops {
				var verb string
				var n int
				if _, err := fmt.Sscanf(op, "%s %d", &verb, &n); err != nil {
					t.Fatalf("op %q: %v", op, err)
				}
				line := op + ": "
				switch verb {
				case "crash": // the supervisor saw engine n exit
					c.mu.Lock()
					e := c.engines[n]
					restart := !c.retired[e] && a.crashedLocked(n)
					c.mu.Unlock()
					line += fmt.Sprintf("restart=%v [%s]", restart, states(a.scaler))
				case "wants": // the supervisor, its back-off over or cut short
					c.mu.Lock()
					line += fmt.Sprint(a.wantsLocked(n))
					select {
					case <-backoffs[n]:
						line += " (its back-off cut short)"
					default:
					}
					c.mu.Unlock()
				case "restart": // the supervisor started a new process for engine n
					c.mu.Lock()
					c.engines[n] = notStarted(fmt.Sprintf("engine-%d", n), nil)
					line += "[" + states(a.scaler) + "]"
					c.mu.Unlock()
				case "back": // engine n's new process answers /health
					c.mu.Lock()
					e := c.engines[n]
					back := a.backLocked(n, e)
					line += fmt.Sprintf("%v [%s]", back, states(a.scaler))
					if back {
						line += fmt.Sprintf(" slot %d runs the new process: %v", a.supervised[n], a.slots[a.supervised[n]].proc == e)
					}
					c.mu.Unlock()
				case "gaveup":
					c.mu.Lock()
					line += fmt.Sprintf("%d left [%s] endpoints=%d", a.gaveUpLocked(n), states(a.scaler), len(c.Endpoints))
					c.mu.Unlock()
				case "decide": // decide's bookkeeping, the policy wanting n replicas
					// (A drain's drainSlot runs apart, as its goroutine would: "drain n".)
					pol.set(n)
					c.mu.Lock()
					o, _, act := a.scaler.Observe(scale.Observation{Time: a.now()})
					c.mu.Unlock()
					for _, i := range act.Cancel {
						a.cancelRestarting(i)
					}
					c.mu.Lock()
					line += fmt.Sprintf("replicas=%d ready=%d start=%v cancel=%v drain=%v [%s] endpoints=%d",
						o.Replicas, o.Ready, fmtInts(act.Start), fmtInts(act.Cancel), fmtInts(act.Drain), states(a.scaler), len(c.Endpoints))
					if len(act.Cancel) > 0 {
						line += fmt.Sprintf(" retired=%v", c.retired[c.engines[1]])
					}
					c.mu.Unlock()
				case "drain": // drainSlot (the process has exited already)
					a.drainSlot(n)
					c.mu.Lock()
					line += fmt.Sprintf("[%s] endpoints=%d", states(a.scaler), len(c.Endpoints))
					c.mu.Unlock()
				default:
					t.Fatalf("op %q", op)
				}
				got = append(got, line)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("steps (-want +got):\n%s", diff)
			}
		})
	}
}

func fmtInts(v []int) string { return fmt.Sprint(append([]int{}, v...)) }

// scaled is a cluster of fake engines supervised with a restart policy and an autoscaler
// over them that decides once per tick, on an idle observation.
type scaled struct {
	c       *Cluster
	events  *lockedBuffer // the supervisor's and the autoscaler's lines
	ticks   chan time.Time
	decided chan decision
	gate    string // FAKE_GATE: restarts of gated-restart engines listen once it exists
}

func startScaled(t *testing.T, mode string, engines int, restart RestartPolicy, pol scale.Policy) *scaled {
	t.Helper()
	return startScaledPinned(t, mode, engines, restart, pol, nil)
}

// startScaledPinned is startScaled with the engines pinned by cpus (nil: unpinned).
func startScaledPinned(t *testing.T, mode string, engines int, restart RestartPolicy, pol scale.Policy, cpus *CPUPlan) *scaled {
	t.Helper()
	s := &scaled{events: &lockedBuffer{}, ticks: make(chan time.Time), decided: make(chan decision, 1),
		gate: filepath.Join(t.TempDir(), "gate")}
	c, err := Start(context.Background(), Options{
		Restart:       &restart,
		Autoscaled:    true,
		Events:        s.events,
		Engines:       engines,
		Command:       []string{os.Args[0]},
		EngineArgs:    []string{"--name", "fake"},
		EngineArgsFor: func(i int) []string { return []string{"--index", fmt.Sprint(i)} },
		Env:           []string{"FAKE_ENGINE=" + mode, "FAKE_GATE=" + s.gate},
		Router:        router.Config{Policy: roundRobin(t), ScrapeInterval: 10 * time.Millisecond},
		Log:           io.Discard,
		StartTimeout:  60 * time.Second,
		CPUs:          cpus,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := c.Autoscale(ctx, AutoscaleOptions{
			Policy:     pol,
			Ticks:      s.ticks,
			Observe:    func(float64) scale.Observation { return scale.Observation{} },
			OnDecision: func(o scale.Observation, d scale.Decision, a scale.Actions) { s.decided <- record(o, d, a) },
			Logf:       func(format string, args ...any) { fmt.Fprintf(s.events, format+"\n", args...) },
		})
		if err != nil {
			t.Errorf("Autoscale: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		c.Stop(5 * time.Second)
	})
	return s
}

// tick has the autoscaler decide once and returns its decision.
func (s *scaled) tick(t *testing.T) decision {
	t.Helper()
	select {
	case s.ticks <- time.Now():
	case <-time.After(60 * time.Second):
		t.Fatal("the autoscaler took no tick within 60 s")
	}
	select {
	case d := <-s.decided:
		return d
	case <-time.After(60 * time.Second):
		t.Fatal("no decision within 60 s of a tick")
	}
	return decision{}
}

func (s *scaled) openGate(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(s.gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// poll waits, generously, until cond holds.
func (s *scaled) poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60 s; events:\n%s", what, s.events)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// servedBy sends n requests through the router and returns the engines that answered.
func servedBy(t *testing.T, c *Cluster, n int) map[string]int {
	t.Helper()
	by := map[string]int{}
	re := regexp.MustCompile(`"served_by":"(fake-\d+)"`)
	for range n {
		resp, err := http.Post(c.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hi","max_tokens":1}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := re.FindStringSubmatch(string(body))
		if resp.StatusCode != http.StatusOK || m == nil {
			t.Fatalf("through the router: %d %s", resp.StatusCode, body)
		}
		by[m[1]]++
	}
	return by
}

// A replica whose engine is killed is restarted by the supervisor on its port and stays
// the same replica: while it restarts the autoscaler counts it (replicas 2) but not as
// ready, starts nothing in its place, and the router routes around it; once it answers
// /health it is ready and routed to again.
func TestAutoscaleRestartsACrashedReplica(t *testing.T) {
	pol := newFixedPolicy(2, 3, 2)
	st := startScaled(t, "gated-restart", 2,
		RestartPolicy{Backoff: 10 * time.Millisecond, ResetAfter: time.Hour}, pol)
	c := st.c
	var got []decision
	got = append(got, st.tick(t)) // the autoscaler runs: its supervisors too
	url0, url1 := c.Endpoints[0], c.Endpoints[1]
	victim := c.PIDs()[0]
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitLog(t, st.events, `engine-0 \(pid \d+, `+regexp.QuoteMeta(url0)+`\) exited: signal: killed .*restarting in 10ms \(attempt 1 of 5\)`)
	// The restart runs, held before listening by the gate.
	st.poll(t, "engine-0's restart running", func() bool { pid := c.PIDs()[0]; return pid != 0 && pid != victim })
	got = append(got, st.tick(t))
	if diff := cmp.Diff([]string{url1}, c.Router.Endpoints()); diff != "" {
		t.Errorf("router endpoints while engine-0 restarts (-want +got):\n%s", diff)
	}
	if by := servedBy(t, c, 4); by["fake-1"] != 4 {
		t.Errorf("while engine-0 restarts the router sent requests to %v, want all to fake-1", by)
	}
	st.openGate(t)
	waitLog(t, st.events, `engine-0 is back at `+regexp.QuoteMeta(url0))
	st.poll(t, "the router routing to engine-0 again", func() bool { return servedBy(t, c, 2)["fake-0"] > 0 })
	got = append(got, st.tick(t))
	want := []decision{
		{Replicas: 2, Ready: 2, Desired: 2, Reason: "fixed: 2 -> 2"},
		{Replicas: 2, Ready: 1, Desired: 2, Reason: "fixed: 2 -> 2"},
		{Replicas: 2, Ready: 2, Desired: 2, Reason: "fixed: 2 -> 2"},
	}
	if diff := cmp.Diff(want, got, cmpIgnoreTime); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
	c.mu.Lock()
	n, eps := len(c.engines), slices.Clone(c.Endpoints)
	c.mu.Unlock()
	if n != 2 || !slices.Equal(eps, []string{url0, url1}) {
		t.Errorf("after the restart: %d engine processes started, endpoints %v; want 2 (no second start) and %v", n, eps, []string{url0, url1})
	}
	select {
	case err := <-c.Done():
		t.Fatalf("Done reported %v though the engine was restarted", err)
	default:
	}
}

var cmpIgnoreTime = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Time" }, cmp.Ignore())

// A scale-down that picks a replica being restarted stops it for good, whether it comes
// during the restart's back-off or after the new process started: nothing is restarted
// after it, the ready replica is kept, and the cluster goes on.
func TestAutoscaleRestartScaledDownStopsForGood(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backoff time.Duration
		started bool // scale down once the new process runs (held by the gate)
	}{
		{name: "during the back-off", backoff: time.Hour},
		{name: "while the new process starts", backoff: 10 * time.Millisecond, started: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol := newFixedPolicy(1, 2, 2)
			st := startScaled(t, "gated-restart", 1,
				RestartPolicy{Backoff: tc.backoff, ResetAfter: time.Hour}, pol)
			c := st.c
			if d := st.tick(t); d.Start != 1 {
				t.Fatalf("decision %+v: want one engine started", d)
			}
			waitLog(t, st.events, `engine-1 at \S+ ready`)
			c.mu.Lock()
			url0, url1 := c.Endpoints[0], c.Endpoints[1]
			c.mu.Unlock()
			st.poll(t, "engine-1 in the router", func() bool { return len(c.Router.Endpoints()) == 2 })
			victim := c.PIDs()[1]
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitLog(t, st.events, `engine-1 \(pid \d+, `+regexp.QuoteMeta(url1)+`\) exited: signal: killed .*restarting in`)
			if tc.started {
				st.poll(t, "engine-1's restart running", func() bool { pid := c.PIDs()[1]; return pid != 0 && pid != victim })
			}
			pol.set(1)
			if d := st.tick(t); d.Replicas != 2 || d.Ready != 1 || d.Cancel != 1 || d.Drain != 0 {
				t.Fatalf("decision %+v: want the restarting replica cancelled, the ready one kept", d)
			}
			waitLog(t, st.events, `engine-1, restarting after a crash, scaled down: stopped for good \(slot 1\)`)
			st.poll(t, "engine-1 stopped", func() bool { return c.PIDs()[1] == 0 })
			st.openGate(t) // a restart begun after the scale-down would now come up
			if !tc.started {
				// The scale-down cut the hour's back-off short, and the supervisor ended.
				waitLog(t, st.events, `engine-1 was scaled down while it waited to restart; not restarting it`)
			} else {
				time.Sleep(300 * time.Millisecond) // 30 back-offs: a real interval in which a wrong restart would start
			}
			if pid := c.PIDs()[1]; pid != 0 {
				t.Errorf("engine-1 runs again (pid %d) after it was scaled down", pid)
			}
			if strings.Contains(st.events.String(), "engine-1 is back") {
				t.Errorf("engine-1 came back after it was scaled down:\n%s", st.events)
			}
			c.mu.Lock()
			eps := slices.Clone(c.Endpoints)
			c.mu.Unlock()
			if !slices.Equal(eps, []string{url0}) || !slices.Equal(c.Router.Endpoints(), []string{url0}) {
				t.Errorf("endpoints %v, router %v; want only %s", eps, c.Router.Endpoints(), url0)
			}
			if d := st.tick(t); d.Replicas != 1 || d.Ready != 1 || d.Start+d.Cancel+d.Drain != 0 {
				t.Errorf("decision after the scale-down %+v: want 1 ready replica, no action", d)
			}
			if by := servedBy(t, c, 3); by["fake-0"] != 3 {
				t.Errorf("requests served by %v, want all by fake-0", by)
			}
			select {
			case err := <-c.Done():
				t.Fatalf("Done reported %v", err)
			default:
			}
		})
	}
}

// An engine that keeps crashing is given up as without an autoscaler, and its replica with
// it: the slot is freed, the policy starts a new engine in it, and the cluster's Done
// reports only when no replica is left.
func TestAutoscaleRestartGivenUpFreesTheReplica(t *testing.T) {
	pol := newFixedPolicy(2, 3, 2)
	st := startScaled(t, "crash-loop", 2,
		RestartPolicy{Backoff: 5 * time.Millisecond, MaxRestarts: 2}, pol)
	c := st.c
	st.tick(t)
	if err := syscall.Kill(c.PIDs()[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitLog(t, st.events, `engine-0 .* exited: exit status 3 .*not restarting it: it crashed 3 times in a row .*; its replica is gone, 1 left`)
	if d := st.tick(t); d.Replicas != 1 || d.Ready != 1 || d.Start != 1 {
		t.Fatalf("decision after engine-0 was given up %+v: want its replica gone and one started", d)
	}
	waitLog(t, st.events, `engine-2 at \S+ ready in \S+ s \(slot 0\)`)
	select {
	case err := <-c.Done():
		t.Fatalf("Done reported %v while replicas are left", err)
	default:
	}
	for _, pid := range c.PIDs() {
		if pid != 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	select {
	case err := <-c.Done():
		if err == nil || !strings.Contains(err.Error(), "every engine is down") {
			t.Fatalf("Done: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("Done did not report that no replica is left; events:\n%s", st.events)
	}
}
