package route

import (
	"math"
	"math/rand/v2"

	"servelab/policies"
	"servelab/serving"
)

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "round-robin",
		Doc:  "each request to the next instance in turn",
		New: func(_ *policies.Params, _ policies.Env) (Policy, error) {
			return &RoundRobin{}, nil
		},
	})
	Registry.Register(policies.Entry[Policy]{
		Name: "random",
		Doc:  "each request to an instance drawn uniformly from the seeded source",
		New: func(_ *policies.Params, env policies.Env) (Policy, error) {
			return &Random{rng: newRand(env.Seed, "random")}, nil
		},
	})
	Registry.Register(policies.Entry[Policy]{
		Name: "least-request",
		Doc:  "fewest waiting+running requests; ties drawn uniformly from the seeded source",
		New: func(_ *policies.Params, env policies.Env) (Policy, error) {
			return &LeastRequest{rng: newRand(env.Seed, "least-request")}, nil
		},
	})
	Registry.Register(policies.Entry[Policy]{
		Name: "least-kv",
		Doc:  "lowest KV-cache usage; ties drawn uniformly from the seeded source",
		New: func(_ *policies.Params, env policies.Env) (Policy, error) {
			return &LeastKV{rng: newRand(env.Seed, "least-kv")}, nil
		},
	})
	Registry.Register(policies.Entry[Policy]{
		Name: "power-of-two",
		Doc:  "two distinct instances drawn from the seeded source, the one with fewer waiting+running requests",
		New: func(_ *policies.Params, env policies.Env) (Policy, error) {
			return &PowerOfTwo{rng: newRand(env.Seed, "power-of-two")}, nil
		},
	})
}

// RoundRobin sends each request to the next position in views.
type RoundRobin struct{ next int }

// Route implements Policy.
func (p *RoundRobin) Route(_ *serving.Request, views []serving.InstanceView) int {
	if len(views) == 0 {
		return -1
	}
	// Modulo each call keeps the cursor valid when the number of views changes.
	i := p.next % len(views)
	p.next = i + 1
	return i
}

// Random sends each request to a uniformly drawn instance.
type Random struct{ rng *rand.Rand }

// Route implements Policy.
func (p *Random) Route(_ *serving.Request, views []serving.InstanceView) int {
	if len(views) == 0 {
		return -1
	}
	return p.rng.IntN(len(views))
}

// LeastRequest sends each request to the instance with the fewest waiting plus running
// requests (Envoy's and GIE's least-request idea on vLLM's two queue gauges).
type LeastRequest struct{ rng *rand.Rand }

// Route implements Policy.
func (p *LeastRequest) Route(_ *serving.Request, views []serving.InstanceView) int {
	return leastBy(views, p.rng, (*serving.InstanceView).Load)
}

// LeastKV sends each request to the instance with the lowest kv_cache_usage_perc.
type LeastKV struct{ rng *rand.Rand }

// Route implements Policy.
func (p *LeastKV) Route(_ *serving.Request, views []serving.InstanceView) int {
	return leastBy(views, p.rng, kvKey)
}

// kvKey ranks a NaN usage (a failed scrape) last instead of letting it break comparisons.
func kvKey(v *serving.InstanceView) float64 {
	if v.KVUsage != v.KVUsage {
		return math.Inf(1)
	}
	return v.KVUsage
}

// PowerOfTwo samples two distinct instances and keeps the less loaded one (Mitzenmacher's
// power of two choices); on equal load it keeps the first drawn, itself a uniform draw.
type PowerOfTwo struct{ rng *rand.Rand }

// Route implements Policy.
func (p *PowerOfTwo) Route(_ *serving.Request, views []serving.InstanceView) int {
	n := len(views)
	if n <= 1 {
		return n - 1
	}
	a := p.rng.IntN(n)
	b := p.rng.IntN(n - 1)
	if b >= a {
		b++
	}
	if views[b].Load() < views[a].Load() {
		return b
	}
	return a
}
