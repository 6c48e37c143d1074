package local

import (
	"fmt"
	"regexp"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// held is which set each engine holds in p, by engine index.
func held(p *cpuPool) map[int]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := map[int]string{}
	for s, idx := range p.owner {
		if idx >= 0 {
			m[idx] = FormatCPUList(p.sets[s])
		}
	}
	return m
}

func TestAutoscaleCPUPoolHandsOutSets(t *testing.T) {
	type op struct {
		take   bool // else free
		idx    int
		ok     bool           // take: a set was free (or idx held one)
		holds  map[int]string // after the op
		wakeUp bool           // free: wakes a take that found none
	}
	sets := [][]int{{0, 1}, {2, 3}, {4, 5}}
	for _, tc := range []struct {
		name    string
		started int
		ops     []op
	}{
		{"the started engines hold the first sets; a new engine takes the free one", 2, []op{
			{take: true, idx: 2, ok: true, holds: map[int]string{0: "0-1", 1: "2-3", 2: "4-5"}},
		}},
		{"no set free: the take fails until an engine frees its set, which the new one gets", 3, []op{
			{take: true, idx: 3, ok: false, holds: map[int]string{0: "0-1", 1: "2-3", 2: "4-5"}},
			{idx: 1, wakeUp: true, holds: map[int]string{0: "0-1", 2: "4-5"}},
			{take: true, idx: 3, ok: true, holds: map[int]string{0: "0-1", 2: "4-5", 3: "2-3"}},
		}},
		{"a restart (a take by an engine that holds a set) keeps its set", 2, []op{
			{take: true, idx: 1, ok: true, holds: map[int]string{0: "0-1", 1: "2-3"}},
		}},
		{"freeing twice, or an engine without a set, frees nothing of another's", 1, []op{
			{idx: 0, wakeUp: true, holds: map[int]string{}},
			{take: true, idx: 1, ok: true, holds: map[int]string{1: "0-1"}},
			{idx: 0, holds: map[int]string{1: "0-1"}},
			{idx: 7, holds: map[int]string{1: "0-1"}},
		}},
		{"the lowest-numbered free set", 3, []op{
			{idx: 2, wakeUp: true, holds: map[int]string{0: "0-1", 1: "2-3"}},
			{idx: 0, wakeUp: true, holds: map[int]string{1: "2-3"}},
			{take: true, idx: 3, ok: true, holds: map[int]string{1: "2-3", 3: "0-1"}},
			{take: true, idx: 4, ok: true, holds: map[int]string{1: "2-3", 3: "0-1", 4: "4-5"}},
			{take: true, idx: 5, ok: false, holds: map[int]string{1: "2-3", 3: "0-1", 4: "4-5"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newCPUPool(sets, tc.started)
			for k, o := range tc.ops {
				p.mu.Lock()
				freed := p.freed
				p.mu.Unlock()
				if o.take {
					ch, ok := p.take(o.idx)
					if ok != o.ok || (ok != (ch == nil)) {
						t.Fatalf("op %d: take(%d) = %v, %v; want ok %v, a channel only when not ok", k, o.idx, ch, ok, o.ok)
					}
				} else {
					p.free(o.idx)
					select {
					case <-freed:
						if !o.wakeUp {
							t.Errorf("op %d: free(%d) woke the waiters though it freed nothing", k, o.idx)
						}
					default:
						if o.wakeUp {
							t.Errorf("op %d: free(%d) did not wake the waiters", k, o.idx)
						}
					}
				}
				if diff := cmp.Diff(o.holds, held(p)); diff != "" {
					t.Fatalf("op %d: sets held (-want +got):\n%s", k, diff)
				}
				for idx, set := range held(p) {
					if got := FormatCPUList(p.of(idx)); got != set {
						t.Errorf("op %d: of(%d) = %s, want %s", k, idx, got, set)
					}
				}
			}
		})
	}
}

// An autoscaled, pinned cluster over real processes: each engine the autoscaler starts
// runs on a set of its own from its first instruction, a restarted engine on the set it
// had, and an engine started while every set is held by a running one (a replica draining)
// waits until that one exits and then runs on its set: no two live engines share CPUs.
func TestAutoscalePinnedEnginesTakeFreeCPUSets(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("CPU pinning is Linux's")
	}
	allowed, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(allowed) < 2 {
		t.Skipf("needs 2 CPUs (max-replicas 2, one each); this process may use %v", allowed)
	}
	// The sets swapped against the order of the allowed CPUs, so that no default lands on
	// the plan by chance.
	a, b := FormatCPUList(allowed[1:2]), FormatCPUList(allowed[0:1])
	plan := &CPUPlan{Engines: [][]int{allowed[1:2], allowed[0:1]}}
	pol := newFixedPolicy(1, 2, 1)
	st := startScaledPinned(t, "gated-drain", 1,
		RestartPolicy{Backoff: 10 * time.Millisecond, ResetAfter: time.Hour}, pol, plan)
	c := st.c
	// affinities are the live engines' CPUs, by engine index; every thread must agree.
	affinities := func() map[int]string {
		t.Helper()
		got := map[int]string{}
		seen := map[string]int{}
		for i, pid := range c.PIDs() {
			if pid == 0 {
				continue
			}
			by := cpusAllowed(t, fmt.Sprint(pid))
			var one string
			for _, v := range by {
				one = v
				break
			}
			if !allThreads(by, one) {
				t.Errorf("engine-%d (pid %d): threads on different CPUs: %v", i, pid, by)
			}
			if j, ok := seen[one]; ok {
				t.Errorf("engine-%d and engine-%d both run on CPUs %s", j, i, one)
			}
			seen[one] = i
			got[i] = one
		}
		return got
	}
	ready := func(n int) func() bool {
		return func() bool { return len(c.Router.Endpoints()) == n }
	}
	st.tick(t)
	if diff := cmp.Diff(map[int]string{0: a}, affinities()); diff != "" {
		t.Fatalf("at start (-want +got):\n%s", diff)
	}

	pol.set(2)
	st.tick(t)
	st.poll(t, "engine-1 ready", ready(2))
	if diff := cmp.Diff(map[int]string{0: a, 1: b}, affinities()); diff != "" {
		t.Fatalf("after the scale-up (-want +got):\n%s", diff)
	}

	victim := c.PIDs()[1]
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitLog(t, st.events, `engine-1 is back at`)
	st.poll(t, "engine-1 routed to again", ready(2))
	if diff := cmp.Diff(map[int]string{0: a, 1: b}, affinities()); diff != "" {
		t.Fatalf("after engine-1's restart (-want +got):\n%s", diff)
	}

	// engine-1 (the latest ready) drains, and runs until the gate opens; the engine
	// started meanwhile finds both sets held and waits.
	pol.set(1)
	st.tick(t)
	pol.set(2)
	st.tick(t)
	waitLog(t, st.events, `engine-2 \(slot 2\) waits for CPUs`)
	time.Sleep(100 * time.Millisecond) // it would have started by now, were it not waiting
	if diff := cmp.Diff(map[int]string{0: a, 1: b}, affinities()); diff != "" {
		t.Fatalf("while engine-1 drains (-want +got):\n%s", diff)
	}
	st.openGate(t)
	waitLog(t, st.events, `engine-1 drained and stopped`)
	waitLog(t, st.events, regexp.QuoteMeta("engine-2 (slot 2) has CPUs "+b))
	st.poll(t, "engine-2 ready", ready(2))
	if diff := cmp.Diff(map[int]string{0: a, 2: b}, affinities()); diff != "" {
		t.Fatalf("after engine-1 drained (-want +got):\n%s", diff)
	}
}
