package route

import (
	"math/rand/v2"
	"testing"

	"servelab/policies"
	"servelab/serving"
)

var testEnv = policies.Env{Seed: 7, BlockSize: 16}

func mustParse(t testing.TB, spec string, env policies.Env) Policy {
	t.Helper()
	p, err := Parse(spec, env)
	if err != nil {
		t.Fatalf("Parse(%q): %v", spec, err)
	}
	return p
}

// prompt returns the chained block hashes of a prompt of n blocks whose first shared
// blocks come from group and the rest are unique to id.
func prompt(group, id uint64, shared, n int) []uint64 {
	out := make([]uint64, n)
	var parent uint64
	for i := range n {
		key := group<<32 | uint64(i)
		if i >= shared {
			key = 1<<63 | id<<32 | uint64(i)
		}
		parent = serving.ChainHash(parent, key)
		out[i] = parent
	}
	return out
}

func request(hashes []uint64) *serving.Request {
	return &serving.Request{PromptTokens: 16 * len(hashes), BlockHashes: hashes}
}

// loadViews returns views with the given waiting and running counts; Index is the
// position plus 10, so code that confuses the two is caught.
func loadViews(waiting ...int) []serving.InstanceView {
	v := make([]serving.InstanceView, len(waiting))
	for i, w := range waiting {
		v[i] = serving.InstanceView{Index: i + 10, Waiting: w}
	}
	return v
}

// setCache is an exact prefix cache over a set of block hashes.
type setCache map[uint64]bool

func (c setCache) CachedPrefixBlocks(hashes []uint64) int {
	for i, h := range hashes {
		if !c[h] {
			return i
		}
	}
	return len(hashes)
}

// testCluster is a cluster whose loads, KV usage and caches change with every decision,
// as a real one's would, drawing a workload of prompts in six prefix groups.
type testCluster struct {
	rng    *rand.Rand
	views  []serving.InstanceView
	caches []setCache
}

func newTestCluster(instances int, seed uint64) *testCluster {
	c := &testCluster{
		rng:    rand.New(rand.NewPCG(seed, 99)),
		views:  make([]serving.InstanceView, instances),
		caches: make([]setCache, instances),
	}
	for i := range c.views {
		c.caches[i] = setCache{}
		c.views[i] = serving.InstanceView{Index: i, Cache: c.caches[i]}
	}
	return c
}

// next draws request k.
func (c *testCluster) next(k int) *serving.Request {
	group := uint64(c.rng.IntN(6))
	return request(prompt(group, uint64(k), 4+c.rng.IntN(12), 4+c.rng.IntN(40)))
}

// apply sends req to view got and lets a random instance make progress.
func (c *testCluster) apply(req *serving.Request, got int) {
	v := &c.views[got]
	v.Waiting++
	v.KVUsage = min(1, v.KVUsage+0.01*float64(len(req.BlockHashes)))
	for _, x := range req.BlockHashes {
		c.caches[got][x] = true
	}
	// A random instance moves a request from waiting to running or finishes one.
	j := c.rng.IntN(len(c.views))
	switch w := &c.views[j]; {
	case w.Waiting > 0:
		w.Waiting--
		w.Running++
	case w.Running > 0:
		w.Running--
		w.KVUsage = max(0, w.KVUsage-0.1)
	}
}

// workload drives a policy through n requests over a testCluster and returns the
// decisions.
func workload(t testing.TB, p Policy, instances, n int, seed uint64) []int {
	t.Helper()
	c := newTestCluster(instances, seed)
	out := make([]int, n)
	for k := range n {
		req := c.next(k)
		got := p.Route(req, c.views)
		if got < 0 || got >= instances {
			t.Fatalf("request %d: Route = %d, want an index in [0, %d)", k, got, instances)
		}
		out[k] = got
		c.apply(req, got)
	}
	return out
}
