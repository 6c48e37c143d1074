package main

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"servelab/real/local"
)

// script is a host reader that plays back samples given as (seconds, busy CPU-s, our CPU-s,
// load), and fails the test when read more often than it has samples.
func script(t *testing.T, rows [][4]float64) (hostReader, *int) {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	return func() (hostSample, error) {
		if n >= len(rows) {
			t.Fatalf("read %d times, the script has %d samples", n+1, len(rows))
		}
		r := rows[n]
		n++
		if r[0] < 0 {
			return hostSample{}, errors.New("no /proc")
		}
		return hostSample{At: t0.Add(sec(r[0])), Busy: sec(r[1]), Self: sec(r[2]), Load: r[3]}, nil
	}, &n
}

func noSleep(context.Context, time.Duration) error { return nil }

func TestWaitIdle(t *testing.T) {
	for _, tc := range []struct {
		name      string
		rows      [][4]float64
		maxWait   time.Duration
		allowance float64
		want      idleCheck
		reads     int
		err       string
	}{
		{"idle at once", [][4]float64{{0, 0, 0, 0.1}, {1, 0.1, 0, 0.1}}, time.Minute, 0.25,
			idleCheck{Idle: true, Others: 0.1, Load: 0.1, Waited: time.Second}, 2, ""},
		{"this process's own CPU is not others'", [][4]float64{{0, 0, 0, 1}, {1, 1.9, 1.8, 1}}, time.Minute, 0.25,
			idleCheck{Idle: true, Others: 0.1, Load: 1, Waited: time.Second}, 2, ""},
		// The 1-minute load stays high after others stop (it decays over minutes); the
		// CPU time decides.
		{"busy, then idle within the wait", [][4]float64{{0, 0, 0, 2}, {1, 1.8, 0, 2}, {2, 3.6, 0, 2.1}, {3, 3.7, 0, 2}}, time.Minute, 0.25,
			idleCheck{Idle: true, Others: 0.1, Load: 2, Waited: 3 * time.Second}, 4, ""},
		{"busy throughout: given up after the wait", [][4]float64{{0, 0, 0, 3}, {1, 1.5, 0, 3}, {2, 3, 0, 3}, {3, 4.5, 0, 3}}, 3 * time.Second, 0.25,
			idleCheck{Others: 1.5, Load: 3, Waited: 3 * time.Second}, 4, ""},
		{"no wait: one window", [][4]float64{{0, 0, 0, 3}, {1, 1.5, 0, 3}}, 0, 0.25,
			idleCheck{Others: 1.5, Load: 3, Waited: time.Second}, 2, ""},
		{"what the run leaves free is allowed", [][4]float64{{0, 0, 0, 1}, {1, 1.2, 0, 1}}, 0, 1.25,
			idleCheck{Idle: true, Others: 1.2, Load: 1, Waited: time.Second}, 2, ""},
		{"a read fails", [][4]float64{{0, 0, 0, 0}, {-1, 0, 0, 0}}, time.Minute, 0.25, idleCheck{}, 2, "no /proc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			read, n := script(t, tc.rows)
			waited := 0
			got, err := waitIdle(context.Background(), read, noSleep, time.Second, tc.maxWait, tc.allowance, func(float64) { waited++ })
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
				t.Errorf("check (-want +got):\n%s", diff)
			}
			if *n != tc.reads {
				t.Errorf("%d reads, want %d", *n, tc.reads)
			}
			if wantWaiting := tc.reads > 2; wantWaiting != (waited == 1) {
				t.Errorf("said it was waiting %d times", waited)
			}
		})
	}
}

// A busy machine stops fidelity with a message naming --allow-busy; with it the run goes
// on and is marked contended.
func TestBusyMachineIsRefusedOrFlagged(t *testing.T) {
	setup := &cpuSetup{CPUs: 2, Pinned: true, Allowance: 0.25}
	busy := [][4]float64{{0, 0, 0, 2.5}, {1, 1.5, 0, 2.5}, {2, 3, 0, 2.5}}
	for _, allow := range []bool{false, true} {
		read, _ := script(t, busy)
		f := &cpuFlags{allowBusy: allow, busyWait: time.Second, read: read, sleep: noSleep,
			oursLoad: 2, lastEnd: time.Now().Add(-30 * time.Second)}
		var log strings.Builder
		err := f.waitIdle(context.Background(), setup, &log)
		if !allow {
			for _, want := range []string{"machine is busy", "1.50 of the 2 CPUs", "1-minute load 2.50, of which our earlier runs explain 1.2", "--allow-busy"} {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("err %v, want it to say %q", err, want)
				}
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log.String(), "WARNING") || !strings.Contains(log.String(), "marked contended") {
			t.Errorf("log does not warn:\n%s", log.String())
		}
		u := &runCPU{WallSeconds: 10, EngineCPUSeconds: []float64{5, 5}, SelfCPUSeconds: 2, HostBusyCPUSeconds: 12}
		judgeRun(u, setup, f.check)
		if !u.Contended || !strings.Contains(strings.Join(u.Why, ";"), "just before the run") {
			t.Errorf("run after a busy check: contended %v, why %q", u.Contended, u.Why)
		}
	}
}

func TestJudgeRun(t *testing.T) {
	pinned := &cpuSetup{CPUs: 2, Pinned: true, Allowance: 0.25}
	unpinned := &cpuSetup{CPUs: 2, Allowance: 0.25}
	idle := &idleCheck{Idle: true}
	for _, tc := range []struct {
		name   string
		u      runCPU
		s      *cpuSetup
		others float64
		why    []string
	}{
		{"ours alone", runCPU{WallSeconds: 10, EngineCPUSeconds: []float64{8, 7}, SelfCPUSeconds: 3, HostBusyCPUSeconds: 18.5}, pinned, 0.5, nil},
		{"others during the run", runCPU{WallSeconds: 10, EngineCPUSeconds: []float64{6, 6}, SelfCPUSeconds: 2, HostBusyCPUSeconds: 19}, pinned, 5,
			[]string{"other processes used 0.50 CPUs during the run (allowed 0.25)"}},
		{"more CPU than CPUs x wall", runCPU{WallSeconds: 10, EngineCPUSeconds: []float64{10, 10}, SelfCPUSeconds: 3, HostBusyCPUSeconds: 20}, pinned, 0,
			[]string{"our processes used 23.00 CPU-s in 10.00 s on 2 CPUs, more than CPUs x wall"}},
		{"three engines unpinned on two CPUs", runCPU{WallSeconds: 10, EngineCPUSeconds: []float64{5, 5, 5}, SelfCPUSeconds: 2, HostBusyCPUSeconds: 17}, unpinned, 0,
			[]string{"3 engines ran unpinned on 2 CPUs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := tc.u
			judgeRun(&u, tc.s, idle)
			if math.Abs(u.OtherCPUSeconds-tc.others) > 1e-9 {
				t.Errorf("others %.3f CPU-s, want %.3f", u.OtherCPUSeconds, tc.others)
			}
			if diff := cmp.Diff(tc.why, u.Why); diff != "" {
				t.Errorf("why (-want +got):\n%s", diff)
			}
			if u.Contended != (len(tc.why) > 0) {
				t.Errorf("contended %v with why %q", u.Contended, u.Why)
			}
		})
	}
}

func TestOneEngineRouters(t *testing.T) {
	for _, tc := range []struct {
		engines int
		routers []string
		changed bool
		want    []string
		err     string
	}{
		{1, []string{"round-robin", "prefix-affinity"}, false, []string{"round-robin"}, ""},
		{1, []string{"least-request"}, true, []string{"least-request"}, ""},
		{1, []string{"round-robin", "prefix-affinity"}, true, nil, "--engines 1 with 2 routers (round-robin, prefix-affinity)"},
		{2, []string{"round-robin", "prefix-affinity"}, false, []string{"round-robin", "prefix-affinity"}, ""},
	} {
		got, err := oneEngineRouters(tc.engines, tc.routers, tc.changed)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%+v: err %v, want %q", tc, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%+v (-want +got):\n%s", tc, diff)
		}
	}
}

// Several routers with one engine are refused before the profile, naming what to do.
func TestFidelityOneEngineRefusesSeveralRouters(t *testing.T) {
	dir := synthTiny(t)
	_, stderr, err := runSplit(t, "fidelity", "--trace", mooncakeSlice, "--model", dir, "--engines", "1",
		"--router", "round-robin", "--router", "prefix-affinity")
	if err == nil || !strings.Contains(err.Error(), "give one --router") {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(stderr, "profiling") {
		t.Errorf("profiled before refusing:\n%s", stderr)
	}
}

// fidelity --engines 1 runs end to end, pinned, and reports each process's CPU time next
// to the wall time of every measured run.
func TestFidelityOneEngineReportsCPU(t *testing.T) {
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	dir := synthTiny(t)
	out := filepath.Join(t.TempDir(), "fid")
	// --allow-busy: the test must pass on a loaded machine; such runs are marked, not refused.
	stdout, err := run(t, "fidelity", "--trace", mooncakeSlice, "--max-requests", "20", "--engines", "1", "--model", dir,
		"--quick", "--allow-busy", "--busy-wait", "0", "--repeats", "1", "--batch", "vllm", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	rep := readFidelityReport(t, out)
	if len(rep.Runs) != 1 || rep.Runs[0].Router != "round-robin" {
		t.Fatalf("%d runs %+v, want one (round-robin): one engine has nothing to route", len(rep.Runs), rep.Runs)
	}
	allowed, err := local.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	s := rep.CPUs
	if s == nil || !s.Pinned || s.CPUs != len(allowed) || s.Plan == nil || len(s.Plan.Engines) != 1 || s.ThreadsPerEngine != len(s.Plan.Engines[0]) {
		t.Fatalf("cpu setup %+v, want one pinned engine with a thread per CPU", s)
	}
	if len(rep.CalibrationCPU) != 1 {
		t.Errorf("%d calibration runs measured, want 1 (one per compared configuration)", len(rep.CalibrationCPU))
	}
	if len(rep.Runs[0].Repeats) != 1 {
		t.Fatalf("%d repeats, want 1", len(rep.Runs[0].Repeats))
	}
	for i, u := range append([]*runCPU{rep.Runs[0].Repeats[0].CPU}, rep.CalibrationCPU...) {
		if u == nil {
			t.Fatalf("run %d: no CPU accounting", i)
		}
		if u.WallSeconds <= 0 || len(u.EngineCPUSeconds) != 1 || u.EngineCPUSeconds[0] <= 0 || u.SelfCPUSeconds <= 0 ||
			len(u.EngineWaitSeconds) != 1 || u.EngineWaitSeconds[0] < 0 || u.SelfWaitSeconds < 0 ||
			u.HostBusyCPUSeconds <= 0 || u.LoadMax < u.LoadBefore {
			t.Errorf("run %d: CPU accounting %+v", i, u)
		}
		// The engine ran on its own CPUs: it cannot have used more than they give.
		if max := u.WallSeconds*float64(len(s.Plan.Engines[0])) + 0.02; u.EngineCPUSeconds[0] > max {
			t.Errorf("run %d: the engine used %.2f CPU-s in %.2f s on %d CPUs", i, u.EngineCPUSeconds[0], u.WallSeconds, len(s.Plan.Engines[0]))
		}
		t.Logf("run %d: wall %.2f s, engine %.2f CPU-s (waited %.2f), router+load generator %.2f (waited %.2f), others %.2f, load %.2f/%.2f/%.2f, contended %v %q",
			i, u.WallSeconds, u.EngineCPUSeconds[0], u.EngineWaitSeconds[0], u.SelfCPUSeconds, u.SelfWaitSeconds, u.OtherCPUSeconds,
			u.LoadBefore, u.LoadMax, u.LoadAfter, u.Contended, u.Why)
	}
	for _, want := range []string{"CPUs: ", "engine-0: CPU ", "router+load generator", "wall "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "Ranking") {
		t.Errorf("one run ranked:\n%s", stdout)
	}
}

// Our share of the 1-minute load average follows the kernel's damping: a run moves it
// towards its CPUs in use as 1-e^(-wall/60), and it decays as e^(-t/60) after.
func TestOursShareOfTheLoadAverage(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	e := math.Exp(-1)
	for _, tc := range []struct {
		name string
		runs [][3]float64 // start s, end s, CPU-s
		now  float64
		want float64
	}{
		{"nothing of ours yet", nil, 0, 0},
		{"2 CPUs for a minute, just after", [][3]float64{{0, 60, 120}}, 60, 2 * (1 - e)},
		{"and a minute later", [][3]float64{{0, 60, 120}}, 120, 2 * (1 - e) * e},
		{"a 3 s run adds little", [][3]float64{{0, 3, 6}}, 3, 2 * (1 - math.Exp(-0.05))},
		{"two runs a minute apart", [][3]float64{{0, 60, 60}, {120, 180, 60}}, 180, (1-e)*e*e + (1 - e)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f cpuFlags
			for _, r := range tc.runs {
				f.addOurs(at(r[0]), at(r[1]), r[2])
			}
			if got := f.fromOurs(at(tc.now)); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("ours %.4f, want %.4f", got, tc.want)
			}
		})
	}
}
