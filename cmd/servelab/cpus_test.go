package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"servelab/real/local"
)

// `up --pin-cpus` starts each engine on its planned CPUs, every thread of it.
func TestUpPinsEnginesToTheirCPUs(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("CPU pinning is Linux's")
	}
	allowed, err := local.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(allowed) < 2 {
		t.Skipf("needs 2 CPUs to tell pinned from unpinned; this process may use %v", allowed)
	}
	plan, err := local.PlanCPUs(allowed, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, out, stop := startUpOut(t, "--engines", "1", "--model", synthTiny(t), "--router", "round-robin",
		"--num-gpu-blocks-override", "64", "--pin-cpus")
	defer stop()
	if want := "CPUs: " + plan.String(); !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	if want := "(1 threads each)"; len(plan.Engines[0]) == 1 && !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	m := regexp.MustCompile(`engine-0 +\S+ +\(pid (\d+)\)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no engine pid in the output:\n%s", out)
	}
	checkAffinity(t, "engine-0", m[1], local.FormatCPUList(plan.Engines[0]))
}

// checkAffinity checks that every thread of process pid may run on the CPUs want (a
// kernel cpu list) and on no others.
func checkAffinity(t *testing.T, name, pid, want string) {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%s/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("%s (pid %s) threads: %v %v", name, pid, tasks, err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue // the thread ended
		}
		got := regexp.MustCompile(`Cpus_allowed_list:\s*(\S+)`).FindSubmatch(b)
		if got == nil || string(got[1]) != want {
			t.Errorf("%s: %s: Cpus_allowed_list %q, want %s", name, task, got, want)
		}
	}
}

// `up --autoscale --pin-cpus` plans a CPU set for each of max-replicas engines: the engine
// started at first and the one a scale-up starts each run on a set of their own, every
// thread, and the scale-down drains the second as without pinning.
func TestUpAutoscalePinsEachEngine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("CPU pinning is Linux's")
	}
	allowed, err := local.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(allowed) < 2 {
		t.Skipf("needs 2 CPUs (max-replicas 2, one each); this process may use %v", allowed)
	}
	plan, err := local.PlanCPUs(allowed, 2)
	if err != nil {
		t.Fatal(err)
	}
	url, out, stop := startUpOut(t, "--model", synthTiny(t), "--router", "least-request", "--num-gpu-blocks-override", "64",
		"--pin-cpus", "--autoscale", "hpa:metric=rps,target=2,max-replicas=2,interval=0.5,window=1,scale-down-window=1")
	if want := "CPUs: " + plan.String(); !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	if want := fmt.Sprintf("starting 1 engines (%d threads each)", len(plan.Engines[0])); !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	m := regexp.MustCompile(`engine-0 +\S+ +\(pid (\d+)\)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no engine-0 pid in the output:\n%s", out)
	}
	checkAffinity(t, "engine-0", m[1], local.FormatCPUList(plan.Engines[0]))

	load := startLoad(url, 4)
	defer load.stop()
	ready := regexp.MustCompile(`autoscale: engine-1 at \S+ ready in \S+ s \(slot 1\); pid (\d+), CPUs (\S+)`)
	waitFor(t, "engine-1 started by a scale-up, pinned", 120*time.Second, func() bool { return ready.MatchString(out.String()) }, out)
	m1 := ready.FindStringSubmatch(out.String())
	if want := local.FormatCPUList(plan.Engines[1]); m1[2] != want {
		t.Errorf("engine-1 says it has CPUs %s, want the free set %s", m1[2], want)
	}
	checkAffinity(t, "engine-1", m1[1], local.FormatCPUList(plan.Engines[1]))
	checkAffinity(t, "engine-0", m[1], local.FormatCPUList(plan.Engines[0]))
	load.stop()
	waitFor(t, "engine-1 drained", 120*time.Second, func() bool { return strings.Contains(out.String(), "engine-1 drained and stopped") }, out)
	if err := stop(); err != nil {
		t.Fatalf("servelab up stopped with %v; output:\n%s", err, out)
	}
}

// More engines than CPUs are not pinned two to a CPU: an error before anything starts.
func TestUpRefusesToPinMoreEnginesThanCPUs(t *testing.T) {
	allowed, err := local.AllowedCPUs()
	if err != nil {
		t.Skip(err)
	}
	n := len(allowed) + 1
	out, err := run(t, "up", "--model", synthTiny(t), "--port", "0", "--engines", fmt.Sprint(n), "--pin-cpus")
	if want := fmt.Sprintf("cannot pin %d engines to their own CPUs", n); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--pin-cpus=false") {
		t.Fatalf("err %v, want %q and the way out", err, want)
	}
	if strings.Contains(out, "starting") {
		t.Errorf("started before refusing:\n%s", out)
	}
}

// With --autoscale the plan is for max-replicas engines: more than the CPUs is refused
// before anything starts, as --engines is without it.
func TestUpAutoscaleRefusesToPinMoreReplicasThanCPUs(t *testing.T) {
	allowed, err := local.AllowedCPUs()
	if err != nil {
		t.Skip(err)
	}
	n := len(allowed) + 1
	out, err := run(t, "up", "--model", synthTiny(t), "--port", "0", "--pin-cpus",
		"--autoscale", fmt.Sprintf("hpa:max-replicas=%d", n))
	want := fmt.Sprintf("--autoscale with max-replicas %d: --pin-cpus: local: cannot pin %d engines to their own CPUs", n, n)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--pin-cpus=false") {
		t.Fatalf("err %v, want %q and the way out", err, want)
	}
	if strings.Contains(out, "starting") {
		t.Errorf("started before refusing:\n%s", out)
	}
}
