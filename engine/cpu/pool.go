// Package cpu holds the CPU backend's kernels: parallel matrix multiplication over
// goroutines and the element-wise operations of a Llama-family forward pass.
package cpu

import (
	"runtime"
	"sync"
)

// Pool splits work across a fixed number of goroutines. One Pool serves one forward pass
// at a time; its methods must not be called concurrently.
type Pool struct {
	threads int
	wg      sync.WaitGroup
}

// NewPool returns a pool of the given number of threads (GOMAXPROCS when <= 0).
func NewPool(threads int) *Pool {
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	return &Pool{threads: threads}
}

// Threads is the pool's parallelism.
func (p *Pool) Threads() int { return p.threads }

// Parallel calls fn over contiguous sub-ranges of [0, n), each at least grain long,
// and returns when all are done.
func (p *Pool) Parallel(n, grain int, fn func(lo, hi int)) {
	if grain < 1 {
		grain = 1
	}
	parts := min(p.threads, (n+grain-1)/grain)
	if parts <= 1 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	chunk := (n + parts - 1) / parts
	p.wg.Add((n+chunk-1)/chunk - 1)
	for lo := chunk; lo < n; lo += chunk {
		go func(lo, hi int) {
			defer p.wg.Done()
			fn(lo, hi)
		}(lo, min(lo+chunk, n))
	}
	fn(0, min(chunk, n))
	p.wg.Wait()
}
