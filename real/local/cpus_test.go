package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/real/router"
)

func TestPlanCPUs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allowed []int
		engines int
		want    CPUPlan
		err     string
	}{
		{"two CPUs, two engines: one each, the router shares", []int{0, 1}, 2, CPUPlan{Engines: [][]int{{0}, {1}}}, ""},
		{"two CPUs, one engine: one each", []int{0, 1}, 1, CPUPlan{Engines: [][]int{{0}}, Router: []int{1}}, ""},
		{"eight CPUs, two engines: three each, the rest to the router", []int{0, 1, 2, 3, 4, 5, 6, 7}, 2,
			CPUPlan{Engines: [][]int{{0, 1, 2}, {3, 4, 5}}, Router: []int{6, 7}}, ""},
		{"a cpuset with holes, unsorted", []int{9, 2, 4, 2}, 2, CPUPlan{Engines: [][]int{{2}, {4}}, Router: []int{9}}, ""},
		{"fewer CPUs than engines", []int{0, 1}, 3, CPUPlan{}, "cannot pin 3 engines to their own CPUs: this process may use 2 (CPUs 0-1)"},
		{"no engines", []int{0}, 0, CPUPlan{}, "engines must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanCPUs(tc.allowed, tc.engines)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCPUList(t *testing.T) {
	for _, tc := range []struct {
		cpus []int
		list string
	}{{[]int{0}, "0"}, {[]int{0, 1, 2, 3, 6}, "0-3,6"}, {[]int{1, 3, 5, 6}, "1,3,5-6"}, {nil, ""}} {
		if got := FormatCPUList(tc.cpus); got != tc.list {
			t.Errorf("FormatCPUList(%v) = %q, want %q", tc.cpus, got, tc.list)
		}
		got, err := ParseCPUList(tc.list)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.cpus, got); diff != "" {
			t.Errorf("ParseCPUList(%q) (-want +got):\n%s", tc.list, diff)
		}
	}
	for _, bad := range []string{"a", "3-1", "1-", "-1"} {
		if _, err := ParseCPUList(bad); err == nil {
			t.Errorf("ParseCPUList(%q): no error", bad)
		}
	}
}

// cpusAllowed reads Cpus_allowed_list of every thread of pid ("self" for this process).
func cpusAllowed(t *testing.T, pid string) map[string]string {
	t.Helper()
	dir := filepath.Join("/proc", pid, "task")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if err != nil {
			continue // the thread ended
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				got[e.Name()] = strings.TrimSpace(v)
			}
		}
	}
	if len(got) == 0 {
		t.Fatalf("%s: no threads", dir)
	}
	return got
}

func allThreads(got map[string]string, want string) bool {
	for _, v := range got {
		if v != want {
			return false
		}
	}
	return true
}

func TestEnginesAndRouterRunOnTheirPlannedCPUs(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("CPU pinning is Linux's")
	}
	allowed, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(allowed) < 2 {
		t.Skipf("needs 2 CPUs to tell pinned from unpinned; this process may use %v", allowed)
	}
	before := cpusAllowed(t, "self")
	// The engines swapped against the order of the allowed CPUs, and the router on the
	// first, so that no default lands on the plan by chance.
	plan := &CPUPlan{Engines: [][]int{{allowed[1]}, {allowed[0]}}, Router: []int{allowed[0]}}
	log := &lockedBuffer{}
	c, err := Start(context.Background(), Options{
		Engines: 2, Command: []string{os.Args[0]}, EngineArgs: []string{"--name", "fake"},
		Env:    []string{"FAKE_ENGINE=ok", "GOMAXPROCS=7"}, // the plan's count wins
		Router: router.Config{Policy: roundRobin(t), ScrapeInterval: 10 * time.Millisecond},
		Log:    log, StartTimeout: 20 * time.Second, CPUs: plan,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop(5 * time.Second)
	for i, pid := range c.PIDs() {
		want := FormatCPUList(plan.Engines[i])
		if got := cpusAllowed(t, fmt.Sprint(pid)); !allThreads(got, want) {
			t.Errorf("engine-%d (pid %d): Cpus_allowed_list by thread %v, want %s on every thread", i, pid, got, want)
		}
	}
	if got := strings.Count(log.String(), "] gomaxprocs 2\n"); got != 2 {
		t.Errorf("%d engines run with GOMAXPROCS 2 (their one CPU's kernel thread and one for HTTP), want 2; log:\n%s", got, log)
	}
	if got := cpusAllowed(t, "self"); !allThreads(got, FormatCPUList(plan.Router)) {
		t.Errorf("this process (the router) by thread %v, want %s on every thread", got, FormatCPUList(plan.Router))
	}
	times, err := c.CPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	if len(times) != 2 {
		t.Fatalf("CPU times %v, want one per engine", times)
	}
	waits, err := c.CPUWaits()
	if err != nil || len(waits) != 2 || waits[0] < 0 || waits[1] < 0 {
		t.Errorf("CPU waits %v, %v", waits, err)
	}
	if err := c.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	after, err := c.CPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	for i := range after {
		// Exited: its rusage, which has everything /proc had (in 10 ms ticks) and more.
		if after[i] <= 0 || after[i]+10*time.Millisecond < times[i] {
			t.Errorf("engine-%d: CPU time %v while running, %v after it exited", i, times[i], after[i])
		}
	}
	if got, want := cpusAllowed(t, "self"), FormatCPUList(allowed); !allThreads(got, want) {
		t.Errorf("after Stop this process by thread %v, want its CPUs back (%s; before Start: %v)", got, want, before)
	}
}

func TestStartRefusesAPlanForOtherEngines(t *testing.T) {
	_, err := Start(context.Background(), Options{Engines: 2, Command: []string{os.Args[0]},
		CPUs: &CPUPlan{Engines: [][]int{{0}}}})
	if err == nil || !strings.Contains(err.Error(), "CPUs for 1 engines, not 2") {
		t.Fatalf("err %v", err)
	}
}

func TestProcessCPUTimeCountsWork(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc is Linux's")
	}
	self0, err := SelfCPUTime()
	if err != nil {
		t.Fatal(err)
	}
	proc0, err := ProcessCPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	host0, err := HostBusyTime(nil)
	if err != nil {
		t.Fatal(err)
	}
	// Spin until both readers have seen 50 ms of this process's CPU time.
	x := 1.0
	deadline := time.Now().Add(30 * time.Second)
	for {
		for range 1_000_000 {
			x = x*1.0000001 + 1e-9
		}
		self, _ := SelfCPUTime()
		proc, _ := ProcessCPUTime(os.Getpid())
		if self-self0 >= 50*time.Millisecond && proc-proc0 >= 50*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: rusage %v, /proc %v of CPU (x %g)", self-self0, proc-proc0, x)
		}
	}
	host, err := HostBusyTime(nil)
	if err != nil {
		t.Fatal(err)
	}

	if host-host0 < 40*time.Millisecond {
		t.Errorf("the host's CPUs were busy %v while this process used 50 ms", host-host0)
	}
	if l, err := LoadAverage(); err != nil || l < 0 {
		t.Errorf("load average %v, %v", l, err)
	}
}

// Two threads spinning on one CPU each wait for the other: ProcessCPUWait sees it.
func TestProcessCPUWaitSeesContention(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc is Linux's")
	}
	allowed, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	restore, err := PinProcess(allowed[:1])
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // two threads, on the one CPU
	wait0, err := ProcessCPUWait(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		done := make(chan float64, 2)
		for range 2 {
			go func() {
				x := 1.0
				for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
					x = x*1.0000001 + 1e-9
				}
				done <- x
			}()
		}
		<-done
		<-done
		wait, err := ProcessCPUWait(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if wait-wait0 >= 20*time.Millisecond {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("two threads spun on one CPU for 30 s and waited %v for it", wait-wait0)
		}
	}
}
