package local

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// AllowedCPUs are the CPUs this process may run on (sched_getaffinity), in order.
func AllowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("local: sched_getaffinity: %w", err)
	}
	return cpusOf(&set), nil
}

func cpusOf(set *unix.CPUSet) []int {
	var cpus []int
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

func cpuSet(cpus []int) *unix.CPUSet {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	return &set
}

// startPinned starts cmd with its affinity set to cpus before its first instruction: the
// child of clone inherits the affinity of the thread that forks it, so the fork runs on a
// locked OS thread given that affinity first, and given its old one back after. Every
// thread the child creates inherits the affinity too, and a Go child sizes GOMAXPROCS by
// it. (Setting the affinity of a pid after the start would reach only the one thread with
// that id.) The forking thread must outlive the child: the kernel sends the child its
// parent-death signal (Pdeathsig) when that thread exits, so it goes back to the Go
// scheduler rather than ending with its goroutine.
func startPinned(cmd *exec.Cmd, cpus []int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var old unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("sched_getaffinity: %w", err)
			return
		}
		if err := unix.SchedSetaffinity(0, cpuSet(cpus)); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("sched_setaffinity(CPUs %s): %w", FormatCPUList(cpus), err)
			return
		}
		errc <- cmd.Start()
		if unix.SchedSetaffinity(0, &old) != nil {
			// This thread cannot run the process's other goroutines on their CPUs, and
			// ending it would signal the child: keep it, parked.
			select {}
		}
		runtime.UnlockOSThread()
	}()
	return <-errc
}

// PinProcess sets the affinity of every thread of this process to cpus (threads the Go
// runtime starts later are cloned from these and inherit it) and returns a function that
// sets them back to the affinity the calling thread had.
func PinProcess(cpus []int) (restore func() error, err error) {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, fmt.Errorf("local: sched_getaffinity: %w", err)
	}
	if err := setProcessAffinity(cpuSet(cpus)); err != nil {
		setProcessAffinity(&old)
		return nil, fmt.Errorf("local: pinning this process to CPUs %s: %w", FormatCPUList(cpus), err)
	}
	return func() error { return setProcessAffinity(&old) }, nil
}

// setProcessAffinity sets set on every thread in /proc/self/task, again until a pass finds
// no thread it had not set (one the runtime started meanwhile).
func setProcessAffinity(set *unix.CPUSet) error {
	done := map[int]bool{}
	for pass := 0; pass < 10; pass++ {
		entries, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		fresh := 0
		for _, e := range entries {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("sched_setaffinity(thread %d): %w", tid, err)
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
	return nil
}

// clockTick is USER_HZ, the unit of /proc's CPU times: 100 on every architecture Go runs
// Linux on.
const clockTick = time.Second / 100

// ProcessCPUTime is the user+system CPU time process pid has used so far, all its threads
// together (/proc/PID/stat utime+stime; 10 ms resolution).
func ProcessCPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces; the fields after it are fixed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')' in %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name, want at least 13", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: utime/stime %q: %w", pid, s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, nil
}

// ProcessCPUWait is how long the threads of process pid have waited, runnable, for a CPU so
// far (the kernel's run_delay, /proc/PID/task/*/schedstat; nanoseconds): the time CPU
// contention took from it. Threads that have exited are not counted.
func ProcessCPUWait(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var wait time.Duration
	for _, e := range entries {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return 0, fmt.Errorf("%s/%s/schedstat: %q", dir, e.Name(), b)
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: run_delay %q: %w", dir, e.Name(), f[1], err)
		}
		wait += time.Duration(ns)
	}
	return wait, nil
}

// SelfCPUTime is the user+system CPU time this process has used so far, all its threads
// together (getrusage RUSAGE_SELF; microseconds).
func SelfCPUTime() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// HostBusyTime is the CPU time the host's CPUs among cpus have spent on any process so far
// (user, nice, system, irq, softirq and steal in /proc/stat; idle and iowait are not busy).
// nil cpus: every CPU.
func HostBusyTime(cpus []int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	want := map[int]bool{}
	for _, c := range cpus {
		want[c] = true
	}
	var ticks int64
	found := 0
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		id, err := strconv.Atoi(f[0][3:])
		if err != nil || (cpus != nil && !want[id]) {
			continue
		}
		found++
		// user nice system idle iowait irq softirq steal
		for _, k := range []int{1, 2, 3, 6, 7, 8} {
			v, err := strconv.ParseInt(f[k], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat: %s: %w", f[0], err)
			}
			ticks += v
		}
	}
	if cpus != nil && found != len(want) {
		return 0, fmt.Errorf("/proc/stat lists %d of CPUs %s", found, FormatCPUList(cpus))
	}
	return time.Duration(ticks) * clockTick, nil
}

// LoadAverage is the host's 1-minute load average (/proc/loadavg): the runnable and
// uninterruptible tasks, averaged with a 1-minute time constant.
func LoadAverage() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/loadavg: empty")
	}
	return strconv.ParseFloat(f[0], 64)
}
