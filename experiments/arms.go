package experiments

import (
	"maps"
	"slices"

	"servelab/metrics"
	"servelab/serving"
)

// ArmResult is one arm of an online A/B test of routing policies (a cluster's ab_router
// and ab_fraction) over seeds: the summaries' arms (metrics.Summary.Arms), each arm's
// requests routed by its own policy over the same instances, side by side.
type ArmResult struct {
	// Name is the arm, serving.ArmA (the cell's router) or serving.ArmB (the cluster's
	// ab_router), and Router that arm's routing policy spec.
	Name   string `json:"name"`
	Router string `json:"router"`
	// Requests counts the arm's requests (finished and failed).
	Requests          Stat `json:"requests"`
	RequestGoodput    Stat `json:"request_goodput"`
	RequestThroughput Stat `json:"request_throughput"`
	MedianTTFTMs      Stat `json:"median_ttft_ms"`
	P99TTFTMs         Stat `json:"p99_ttft_ms"`
	MedianTPOTMs      Stat `json:"median_tpot_ms"`
	P99TPOTMs         Stat `json:"p99_tpot_ms"`
	// PrefixCacheHitRate is the arm's cached prompt tokens over its prompt tokens, from its
	// requests' records (an engine's counters serve both arms).
	PrefixCacheHitRate Stat `json:"prefix_cache_hit_rate"`
}

// armResults is each arm's metrics over the seeds' summaries, a before b; nil when no seed
// split its requests. A seed without an arm (no request fell in it) counts zeros for it.
func armResults(ss []*metrics.Summary, stat func(func(*metrics.Summary) float64) Stat) []ArmResult {
	names := map[string]bool{}
	for _, s := range ss {
		for n := range s.Arms {
			names[n] = true
		}
	}
	if len(names) == 0 {
		return nil
	}
	out := make([]ArmResult, 0, len(names))
	for _, n := range slices.Sorted(maps.Keys(names)) {
		of := func(f func(*metrics.Summary) float64) Stat {
			return stat(func(s *metrics.Summary) float64 {
				a, ok := s.Arms[n]
				if !ok {
					return 0
				}
				return f(a)
			})
		}
		out = append(out, ArmResult{
			Name:               n,
			Requests:           of(func(a *metrics.Summary) float64 { return float64(a.Completed + a.Failed) }),
			RequestGoodput:     of(func(a *metrics.Summary) float64 { return a.RequestGoodput }),
			RequestThroughput:  of(func(a *metrics.Summary) float64 { return a.RequestThroughput }),
			MedianTTFTMs:       of(func(a *metrics.Summary) float64 { return a.MedianTTFTMs }),
			P99TTFTMs:          of(func(a *metrics.Summary) float64 { return a.P99TTFTMs }),
			MedianTPOTMs:       of(func(a *metrics.Summary) float64 { return a.MedianTPOTMs }),
			P99TPOTMs:          of(func(a *metrics.Summary) float64 { return a.P99TPOTMs }),
			PrefixCacheHitRate: of(func(a *metrics.Summary) float64 { return a.PrefixCacheHitRate }),
		})
	}
	return out
}

// nameArms gives each arm of the results its routing policy: arm a the cell's router, arm
// b its cluster's ab_router.
func nameArms(spec *Spec, out []PolicyResult) {
	for i := range out {
		p := &out[i]
		for j := range p.Arms {
			switch p.Arms[j].Name {
			case serving.ArmA:
				p.Arms[j].Router = p.Router
			case serving.ArmB:
				p.Arms[j].Router = spec.cluster(p.Cluster).ABRouter
			}
		}
	}
}
