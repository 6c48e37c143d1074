package cpu

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestParallelCoversRangeOnce(t *testing.T) {
	for _, threads := range []int{1, 2, 3, 4, 7} {
		p := NewPool(threads)
		for n := 0; n <= 40; n++ {
			for _, grain := range []int{0, 1, 2, 5} {
				hits := make([]atomic.Int32, n)
				p.Parallel(n, grain, func(lo, hi int) {
					if hi-lo < max(grain, 1) && hi != n {
						t.Errorf("threads=%d n=%d grain=%d: range [%d, %d) shorter than the grain", threads, n, grain, lo, hi)
					}
					for i := lo; i < hi; i++ {
						hits[i].Add(1)
					}
				})
				for i := range hits {
					if h := hits[i].Load(); h != 1 {
						t.Fatalf("threads=%d n=%d grain=%d: index %d done %d times", threads, n, grain, i, h)
					}
				}
			}
		}
	}
}

// TestParallelParkAndWake runs calls back to back (workers spinning) and after pauses
// longer than spinFor (workers parked), with pieces that sometimes sleep, so that the
// caller also blocks waiting for a worker.
func TestParallelParkAndWake(t *testing.T) {
	p := NewPool(2)
	var total atomic.Int64
	want := int64(0)
	for i := range 300 {
		n := 1 + i%50
		want += int64(n * (n - 1) / 2)
		p.Parallel(n, 1, func(lo, hi int) {
			if i%7 == 0 && lo == 0 {
				time.Sleep(300 * time.Microsecond)
			}
			for k := lo; k < hi; k++ {
				total.Add(int64(k))
			}
		})
		if i%50 == 49 {
			time.Sleep(2 * spinFor)
		}
	}
	if got := total.Load(); got != want {
		t.Fatalf("sum %d, want %d", got, want)
	}
}

func TestParallelNested(t *testing.T) {
	p := NewPool(2)
	var count atomic.Int32
	p.Parallel(4, 1, func(lo, hi int) {
		p.Parallel(10, 1, func(lo, hi int) { count.Add(int32(hi - lo)) })
	})
	if c := count.Load(); c != 40 {
		t.Fatalf("nested calls covered %d, want 40", c)
	}
}

func TestPoolDoesNotAllocate(t *testing.T) {
	p := NewPool(2)
	fn := func(lo, hi int) {}
	p.Parallel(100, 1, fn)
	if a := testing.AllocsPerRun(100, func() { p.Parallel(100, 1, fn) }); a != 0 {
		t.Errorf("Parallel: %v allocations per call", a)
	}
	x, w, y := make([]float32, 4*64), make([]float32, 100*64), make([]float32, 4*100)
	for _, n := range []int{1, 2, 4} {
		p.MatMul(y, x, w, n, 64, 100)
		if a := testing.AllocsPerRun(100, func() { p.MatMul(y, x, w, n, 64, 100) }); a != 0 {
			t.Errorf("MatMul n=%d: %v allocations per call", n, a)
		}
	}
}

// TestPoolWorkersStop checks that an abandoned pool's workers exit.
func TestPoolWorkersStop(t *testing.T) {
	before := runtime.NumGoroutine()
	p := NewPool(4)
	p.Parallel(100, 1, func(lo, hi int) {})
	if runtime.NumGoroutine() < before+3 {
		t.Fatalf("%d goroutines after starting a pool of 4, %d before", runtime.NumGoroutine(), before)
	}
	p = nil
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines remain, %d before the pool", runtime.NumGoroutine(), before)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
