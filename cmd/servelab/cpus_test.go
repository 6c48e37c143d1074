package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

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
	want := local.FormatCPUList(plan.Engines[0])
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%s/task/*/status", m[1]))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("engine threads: %v %v", tasks, err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue // the thread ended
		}
		got := regexp.MustCompile(`Cpus_allowed_list:\s*(\S+)`).FindSubmatch(b)
		if got == nil || string(got[1]) != want {
			t.Errorf("%s: Cpus_allowed_list %q, want %s", task, got, want)
		}
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
