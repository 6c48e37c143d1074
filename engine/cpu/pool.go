// Package cpu holds the CPU backend's kernels: parallel matrix multiplication over
// goroutines and the element-wise operations of a Llama-family forward pass.
package cpu

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Pool splits work across a fixed number of goroutines. One Pool serves one forward pass
// at a time; its methods must not be called concurrently. (A call from inside a function
// that Parallel is running runs on the calling thread alone.)
//
// The pool keeps threads-1 persistent worker goroutines, started by the first parallel
// call and stopped when the Pool is garbage collected. A finished worker polls for the
// next call for spinFor before it parks: a forward pass issues dozens of parallel calls
// a few microseconds long, and waking a parked thread costs as much as one of them
// (about 10µs under KVM here). The first version started goroutines per call: a 288x288
// matrix-vector product took 8µs on two threads that way, and takes 2-3.5µs now; an
// empty call costs ~0.3µs.
type Pool struct {
	threads int
	once    sync.Once
	s       *shared

	mm    matmulJob        // MatMul's arguments, for mmRun
	mmRun func(lo, hi int) // p.mm.run, bound once so that MatMul does not allocate
}

// spinFor is how long an idle worker, or a caller waiting for its workers, polls before
// blocking.
const spinFor = 200 * time.Microsecond

// NewPool returns a pool of the given number of threads (GOMAXPROCS when <= 0).
func NewPool(threads int) *Pool {
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	return &Pool{threads: threads}
}

// Threads is the pool's parallelism.
func (p *Pool) Threads() int { return p.threads }

// Parallel calls fn over contiguous sub-ranges of [0, n), each at least grain long
// (except possibly the last), and returns when all are done.
//
// [0, n) is cut into up to four pieces per thread. Each thread first takes the pieces of
// its own share in order, so a thread streams one contiguous part of, say, a weight
// matrix and repeated calls of the same shape touch the same data on the same core; a
// thread that runs out then takes pieces left in the others' shares, so a core slowed
// by other work on the machine does not hold up the call.
func (p *Pool) Parallel(n, grain int, fn func(lo, hi int)) {
	if grain < 1 {
		grain = 1
	}
	pieces := min(n/grain, 4*p.threads)
	if p.threads <= 1 || pieces <= 1 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	p.once.Do(p.start)
	if !p.s.busy.CompareAndSwap(false, true) {
		// A call from inside fn (or a concurrent one, which the contract forbids): the
		// workers are taken, so run it here rather than deadlock.
		fn(0, n)
		return
	}
	p.s.run(n, pieces, fn)
	p.s.busy.Store(false)
}

// shared is the pool's state that its workers hold. It does not reference the Pool, so
// an abandoned Pool can be collected and its cleanup stop the workers.
//
// The current job's fields are written by the caller only while no worker is inside the
// job: gen is odd while they are written and even once published, and a worker counts
// itself in refs, then checks gen again, before reading them (a seqlock with a reader
// count).
type shared struct {
	busy atomic.Bool // a job is running
	gen  atomic.Uint64
	refs atomic.Int32

	// The job: plain fields, guarded as above.
	fn      func(lo, hi int)
	n       int
	chunk   int
	pieces  int64
	threads int
	seg     []segment // per thread: its share of the pieces

	done   atomic.Int64  // pieces finished
	waiter atomic.Uint64 // the gen of the job the caller is blocked on, or 0
	wake   chan struct{}

	spin    bool // threads <= GOMAXPROCS: idle workers poll before parking
	closed  atomic.Bool
	workers []*worker
}

// segment is one thread's share of a job's pieces, on its own cache line.
type segment struct {
	next atomic.Int64
	end  int64
	_    [48]byte
}

type worker struct {
	id     int
	parked atomic.Bool
	wake   chan struct{}
}

func (p *Pool) start() {
	s := &shared{
		wake:    make(chan struct{}, 1),
		spin:    p.threads <= runtime.GOMAXPROCS(0),
		threads: p.threads,
		seg:     make([]segment, p.threads),
	}
	for i := 1; i < p.threads; i++ {
		w := &worker{id: i, wake: make(chan struct{}, 1)}
		s.workers = append(s.workers, w)
		go s.loop(w)
	}
	p.s = s
	runtime.AddCleanup(p, func(s *shared) { s.close() }, s)
}

// run publishes a job, takes part in it as thread 0 and returns when it is done.
func (s *shared) run(n, pieces int, fn func(lo, hi int)) {
	g := s.gen.Add(1) // odd: writing
	for s.refs.Load() != 0 {
		// A worker is still leaving the previous job (or backing off from this one).
		runtime.Gosched()
	}
	s.fn, s.n = fn, n
	s.chunk = (n + pieces - 1) / pieces
	s.pieces = int64((n + s.chunk - 1) / s.chunk)
	t := int64(s.threads)
	for i := range s.seg {
		s.seg[i].next.Store(int64(i) * s.pieces / t)
		s.seg[i].end = int64(i+1) * s.pieces / t
	}
	s.done.Store(0)
	g++
	s.gen.Store(g) // even: published
	for _, w := range s.workers {
		if w.parked.Load() && w.parked.CompareAndSwap(true, false) {
			w.wake <- struct{}{}
		}
	}
	if !s.work(0, g) {
		s.wait(g)
	}
	s.fn = nil // all pieces are done, so nothing reads fn; the pool must not keep it alive
}

// work runs pieces of the current job, its own share first, until none is left; it
// reports whether it finished the job's last piece. The caller is counted in refs or is
// thread 0.
func (s *shared) work(id int, g uint64) (last bool) {
	for k := range s.threads {
		sg := &s.seg[(id+k)%s.threads]
		for {
			i := sg.next.Add(1) - 1
			if i >= sg.end {
				break
			}
			lo := int(i) * s.chunk
			s.fn(lo, min(lo+s.chunk, s.n))
			if s.done.Add(1) == s.pieces {
				if s.waiter.Load() == g && s.waiter.CompareAndSwap(g, 0) {
					s.wake <- struct{}{}
				}
				return true
			}
		}
	}
	return false
}

// wait returns once every piece of job g is done.
func (s *shared) wait(g uint64) {
	deadline := time.Now().Add(spinFor)
	for i := 0; s.done.Load() != s.pieces; i++ {
		if i&255 == 255 {
			if time.Now().After(deadline) {
				break
			}
			runtime.Gosched()
		}
	}
	if s.done.Load() == s.pieces {
		return
	}
	// Block until the worker finishing the last piece signals. Whoever clears waiter
	// owns the token: the finisher sends it, or the caller takes its request back.
	s.waiter.Store(g)
	if s.done.Load() == s.pieces && s.waiter.CompareAndSwap(g, 0) {
		return
	}
	<-s.wake
}

func (s *shared) loop(w *worker) {
	var seen uint64 // the first job is gen 2
	for {
		g, ok := s.next(w, seen)
		if !ok {
			return
		}
		seen = g
		s.refs.Add(1)
		if s.gen.Load() == g {
			s.work(w.id, g)
		}
		s.refs.Add(-1)
	}
}

// next returns the generation of a published job newer than seen, polling for spinFor
// and then parking; false once the pool is closed.
func (s *shared) next(w *worker, seen uint64) (uint64, bool) {
	fresh := func() (uint64, bool) {
		g := s.gen.Load()
		return g, g != seen && g&1 == 0
	}
	deadline := time.Now().Add(spinFor)
	for i := 0; s.spin; i++ {
		if g, ok := fresh(); ok {
			return g, true
		}
		if s.closed.Load() {
			return 0, false
		}
		if i&255 == 255 {
			if time.Now().After(deadline) {
				break
			}
			runtime.Gosched()
		}
	}
	for {
		w.parked.Store(true)
		g, ok := fresh()
		if ok || s.closed.Load() || g&1 == 1 {
			// Something is (being) published: stay awake. If a caller saw us parked it
			// has sent or will send a token; take it.
			if !w.parked.CompareAndSwap(true, false) {
				<-w.wake
			}
		} else {
			<-w.wake
		}
		if s.closed.Load() {
			return 0, false
		}
		if g, ok := fresh(); ok {
			return g, true
		}
		if g&1 == 1 {
			runtime.Gosched() // the caller is writing the job
		}
	}
}

func (s *shared) close() {
	s.closed.Store(true)
	for _, w := range s.workers {
		if w.parked.CompareAndSwap(true, false) {
			w.wake <- struct{}{}
		}
	}
}
