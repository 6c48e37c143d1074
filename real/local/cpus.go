package local

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// CPUPlan assigns CPUs (Linux CPU ids) to a cluster's processes so that they do not fight
// over cores: each engine runs on its own set, and this process, which runs the router
// (and, in `servelab fidelity`, the load generator), on Router.
type CPUPlan struct {
	// Engines[i] are the CPUs engine i may run on; every engine gets as many.
	Engines [][]int `json:"engines"`
	// Router are the CPUs this process (router, load generator) is pinned to while the
	// cluster runs; empty: it is not pinned and shares the engines' CPUs.
	Router []int `json:"router,omitempty"`
}

// PlanCPUs splits the CPUs this process may use (allowed, as sched_getaffinity gives them)
// among n engines and the router's process:
//
//   - more CPUs than engines: one CPU for the router's process (router and load
//     generator), the rest split evenly among the engines; CPUs left over by the split
//     go to the router's process too (8 CPUs, 2 engines: 3 each, router 2);
//   - as many CPUs as engines: one each, and the router's process is not pinned: it
//     shares the engines' CPUs (2 CPUs, 2 engines);
//   - fewer CPUs than engines: an error; two engines are never pinned to one CPU.
func PlanCPUs(allowed []int, n int) (CPUPlan, error) {
	if n <= 0 {
		return CPUPlan{}, fmt.Errorf("local: engines must be positive, got %d", n)
	}
	cpus := slices.Clone(allowed)
	slices.Sort(cpus)
	cpus = slices.Compact(cpus)
	if len(cpus) < n {
		return CPUPlan{}, fmt.Errorf("local: cannot pin %d engines to their own CPUs: this process may use %d (CPUs %s)",
			n, len(cpus), FormatCPUList(cpus))
	}
	var plan CPUPlan
	router := 0
	if len(cpus) > n {
		router = 1
	}
	per := (len(cpus) - router) / n
	for i := range n {
		plan.Engines = append(plan.Engines, cpus[i*per:(i+1)*per])
	}
	if router > 0 {
		plan.Router = cpus[n*per:]
	}
	return plan, nil
}

// CPUs is the number of CPUs the plan uses.
func (p CPUPlan) CPUs() int {
	n := len(p.Router)
	for _, e := range p.Engines {
		n += len(e)
	}
	return n
}

// String is the plan as one line: "engine-0: 0, engine-1: 1, router: shares".
func (p CPUPlan) String() string {
	var parts []string
	for i, e := range p.Engines {
		parts = append(parts, fmt.Sprintf("engine-%d: CPU %s", i, FormatCPUList(e)))
	}
	if len(p.Router) > 0 {
		parts = append(parts, "router and load generator: CPU "+FormatCPUList(p.Router))
	} else {
		parts = append(parts, "router and load generator: unpinned, sharing the engines' CPUs")
	}
	return strings.Join(parts, ", ")
}

// FormatCPUList writes CPU ids as the kernel's cpu lists do (Cpus_allowed_list, taskset
// -c): "0-3,6".
func FormatCPUList(cpus []int) string {
	cpus = slices.Clone(cpus)
	slices.Sort(cpus)
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(cpus[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(cpus[j]))
		}
		i = j + 1
	}
	return b.String()
}

// ParseCPUList reads a kernel cpu list ("0-3,6").
func ParseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("cpu list %q: bad CPU %q", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// cpuPool hands a CPU plan's engine sets to engines: engine idx holds at most one set, from
// when it is started until its last process has exited for good (a restart keeps the set:
// it is the same engine), and no two engines hold the same set, so no two live engine
// processes share CPUs. Under Cluster.Autoscale engines come and go, and more processes
// than sets may exist for a while (a drained engine finishes its requests while the
// engine that replaces it starts, as the scaler does not count draining replicas); an
// engine that finds no set free waits for one (cpuPool.take's channel). Safe for
// concurrent use; a nil pool (no plan) holds nothing.
type cpuPool struct {
	mu    sync.Mutex
	sets  [][]int
	owner []int         // owner[s] is the engine index holding set s, -1 when it is free
	freed chan struct{} // closed, and replaced, when a set is freed
}

// newCPUPool is a pool of sets whose first n are held by engines 0..n-1 (a cluster's
// engines at its start).
func newCPUPool(sets [][]int, n int) *cpuPool {
	p := &cpuPool{sets: sets, owner: make([]int, len(sets)), freed: make(chan struct{})}
	for s := range p.owner {
		p.owner[s] = -1
		if s < n {
			p.owner[s] = s
		}
	}
	return p
}

// of is the set engine idx holds, nil if none.
func (p *cpuPool) of(idx int) []int {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := slices.Index(p.owner, idx); s >= 0 {
		return p.sets[s]
	}
	return nil
}

// take gives engine idx the lowest-numbered free set (the one it holds, if it holds one)
// and returns true; with none free it returns false and a channel closed when one is
// freed, on which the caller may wait and try again.
func (p *cpuPool) take(idx int) (<-chan struct{}, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.Contains(p.owner, idx) {
		return nil, true
	}
	if s := slices.Index(p.owner, -1); s >= 0 {
		p.owner[s] = idx
		return nil, true
	}
	return p.freed, false
}

// free returns engine idx's set, if it holds one, to the pool: the caller knows its last
// process has exited and will not be restarted. Freeing twice is harmless (engine indices
// are never reused, so the set is not another engine's meanwhile).
func (p *cpuPool) free(idx int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := slices.Index(p.owner, idx); s >= 0 {
		p.owner[s] = -1
		close(p.freed)
		p.freed = make(chan struct{})
	}
}
