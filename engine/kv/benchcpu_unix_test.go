//go:build unix

package kv

import (
	"syscall"
	"testing"
	"time"
)

// cpuClock reports a benchmark's CPU time per operation (user plus system, the process's,
// GC included) beside ns/op, which is wall time: on a loaded machine wall time mostly
// measures the other processes.
type cpuClock struct{ start time.Duration }

func cpuNow(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU(b *testing.B) cpuClock { return cpuClock{cpuNow(b)} }

func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(cpuNow(b)-c.start)/float64(b.N), "cpu-ns/op")
}
