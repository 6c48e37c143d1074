// Package route holds routing policies: given a request and a view of every instance, pick
// the instance that serves it. The same policy objects route simulated arrivals and real
// HTTP requests.
package route

import (
	"servelab/policies"
	"servelab/serving"
)

// Policy picks an instance for a request. Route returns an index into views (the views'
// own Index fields need not equal their positions). A policy may keep state across calls
// (a round-robin cursor, a prefix index, a seeded random source); it is not safe for
// concurrent use, and callers serialise calls.
type Policy interface {
	Route(req *serving.Request, views []serving.InstanceView) int
}

// Registry holds every routing policy by name.
var Registry = policies.NewRegistry[Policy]("route")

// ReadsCaches reports whether p may read InstanceView.Cache, the instances' exact prefix
// caches (the real router keeps them from KV events): of this package's policies only
// weighted with llm-d's precise-prefix-cache-scorer or predicted-latency-scorer does. A policy of another type is
// assumed to. The simulator keeps a KV-event index for the router only when it does.
func ReadsCaches(p Policy) bool {
	switch p := p.(type) {
	case *RoundRobin, *Random, *LeastRequest, *LeastKV, *PowerOfTwo, *PrefixAffinity:
		return false
	case *Weighted:
		for _, s := range p.scorers {
			switch s.scorer.(type) {
			case precisePrefixCacheScorer, *predictedLatencyScorer:
				return true // the predicted-latency-scorer discounts a prompt's cached prefix
			}
		}
		return false
	case *PDProfileHandler:
		return true // its prefix-based decider reads the decode endpoint's cache
	case *AB:
		return ReadsCaches(p.A) || ReadsCaches(p.B)
	}
	return true
}
