package route

import (
	"strings"

	"servelab/serving"
)

// Scorer type names, as llm-d's EndpointPickerConfig spells them.
const (
	PrefixCacheScorerType        = "prefix-cache-scorer"
	QueueScorerType              = "queue-scorer"
	KVCacheUtilizationScorerType = "kv-cache-utilization-scorer"
	LoadAwareScorerType          = "load-aware-scorer"
	ActiveRequestScorerType      = "active-request-scorer"
	PrecisePrefixCacheScorerType = "precise-prefix-cache-scorer"
)

// scorerTypes lists the scorers in the fixed order the weighted policy sums them in, so
// that a compact spec and an EndpointPickerConfig naming the same scorers in any order
// add the same floating-point terms in the same order and decide identically.
var scorerTypes = []string{
	PrefixCacheScorerType,
	QueueScorerType,
	KVCacheUtilizationScorerType,
	LoadAwareScorerType,
	ActiveRequestScorerType,
	PrecisePrefixCacheScorerType,
	PredictedLatencyScorerType,
}

// DefaultLoadAwareThreshold is llm-d's load-aware-scorer default queue threshold.
const DefaultLoadAwareThreshold = 128

// The scorers below follow GIE's code, which llm-d's EPP runs (kubernetes-sigs/
// gateway-api-inference-extension, pkg/epp/scheduling/framework/plugins/...):
//   - prefixcachescorer/plugin.go @a172f54a01a5: matched leading blocks / the prompt's
//     blocks, with the model name folded into the first block's hash (no extra block);
//   - scorer/queue.go @02308be307b2: min-max over the candidates' waiting queues, 1.0 for
//     every candidate when all queues are equal;
//   - scorer/kvcache_utilization.go @02308be307b2: 1 - KV-cache usage.
//
// When every prompt shares its first block and nothing waits (vLLM admits requests straight
// into its running batch while blocks last), the queue scores tie at 1, equal KV usage ties
// too, and the endpoints that were already sent a request lead by 3/T (T the prompt's
// blocks): llm-d keeps sending everything to them and an endpoint that has had nothing gets
// nothing. servelab keeps that behaviour (TestWeightedSharedFirstBlock).

// scorer is one of llm-d's scorers: a score in [0, 1] per endpoint, higher is better.
type scorer interface {
	// score writes each view's score into out, which has one element per view.
	score(req *serving.Request, views []serving.InstanceView, out []float64)
	// picked tells the scorer where the request went (GIE's PreRequest hook).
	picked(req *serving.Request, v *serving.InstanceView)
}

// prefixCacheScorer is GIE's prefix-cache-scorer (llm-d's approximate prefix routing):
// the fraction of the prompt's index blocks that lead the blocks recorded for the
// endpoint. A prompt shorter than one index block scores 0 everywhere.
type prefixCacheScorer struct{ index *PrefixIndex }

func (s *prefixCacheScorer) score(req *serving.Request, views []serving.InstanceView, out []float64) {
	total := s.index.Blocks(req.BlockHashes)
	for i := range views {
		if total == 0 {
			out[i] = 0
			continue
		}
		out[i] = float64(s.index.Match(views[i].Index, req.BlockHashes)) / float64(total)
	}
}

func (s *prefixCacheScorer) picked(req *serving.Request, v *serving.InstanceView) {
	s.index.Record(v.Index, req.BlockHashes)
}

// queueScorer is GIE's queue-scorer: min-max normalised waiting queue,
// (maxQ - q) / (maxQ - minQ), and 1 for every endpoint when all queues are equal.
type queueScorer struct{}

func (queueScorer) score(_ *serving.Request, views []serving.InstanceView, out []float64) {
	if len(views) == 0 {
		return
	}
	lo, hi := views[0].Waiting, views[0].Waiting
	for i := range views {
		lo, hi = min(lo, views[i].Waiting), max(hi, views[i].Waiting)
	}
	for i := range views {
		if hi == lo {
			out[i] = 1
		} else {
			out[i] = float64(hi-views[i].Waiting) / float64(hi-lo)
		}
	}
}

func (queueScorer) picked(*serving.Request, *serving.InstanceView) {}

// kvCacheUtilizationScorer is GIE's kv-cache-utilization-scorer: 1 - KV-cache usage.
type kvCacheUtilizationScorer struct{}

func (kvCacheUtilizationScorer) score(_ *serving.Request, views []serving.InstanceView, out []float64) {
	for i := range views {
		out[i] = 1 - views[i].KVUsage
	}
}

func (kvCacheUtilizationScorer) picked(*serving.Request, *serving.InstanceView) {}

// loadAwareScorer is llm-d's load-aware-scorer: 0.5 for an empty waiting queue, else
// 0.5 * (1 - min(q, threshold) / threshold), reaching 0 at the threshold. (llm-d keeps
// scores above 0.5 for a future notion of spare capacity.)
type loadAwareScorer struct{ threshold float64 }

func (s *loadAwareScorer) score(_ *serving.Request, views []serving.InstanceView, out []float64) {
	for i := range views {
		q := float64(views[i].Waiting)
		if q == 0 {
			out[i] = 0.5
			continue
		}
		out[i] = 0.5 * (1 - min(q, s.threshold)/s.threshold)
	}
}

func (*loadAwareScorer) picked(*serving.Request, *serving.InstanceView) {}

// activeRequestScorer is llm-d's active-request-scorer: with c the endpoint's active
// requests and m the largest count, (m - c) / m, and 1 when c or m is 0. llm-d counts
// the requests it dispatched until their responses complete (or a timeout); a pure
// policy hears of no completions, so the count is the engine's own waiting+running,
// which is the same set of requests minus those still in flight on the network.
type activeRequestScorer struct{}

func (activeRequestScorer) score(_ *serving.Request, views []serving.InstanceView, out []float64) {
	m := 0
	for i := range views {
		m = max(m, views[i].Load())
	}
	for i := range views {
		c := views[i].Load()
		if c == 0 || m == 0 {
			out[i] = 1
			continue
		}
		out[i] = float64(m-c) / float64(m)
	}
}

func (activeRequestScorer) picked(*serving.Request, *serving.InstanceView) {}

// precisePrefixCacheScorer is llm-d's precise-prefix-cache-scorer over the exact caches
// the views expose: each endpoint's leading cached blocks (llm-d-kv-cache's
// LongestPrefixScorer), then min-max normalised over the endpoints with at least one hit
// (llm-d's indexedScoresToNormalizedScoredPods): (c - min) / (max - min), 1 for all of them
// when their counts are equal, and 0 for endpoints with no hit or no cache view.
//
// Where a cache knows its tiers (serving.TieredPrefixCache), each block counts by the
// weight of the medium holding it, as LongestPrefixScorer weighs by its BackendConfigs:
// llm-d-kv-cache's defaults (pkg/kvcache/backend.go) are gpu 1.0 and cpu 0.8, and a medium
// it does not list (disk) weighs 1.0 (getMaxWeight's default). Without tiers every block
// weighs 1 and the count is CachedPrefixBlocks's.
type precisePrefixCacheScorer struct{}

// mediumWeight is llm-d-kv-cache's default weight of a block on medium (vLLM's medium
// names, which llm-d lowercases).
func mediumWeight(medium string) float64 {
	if strings.EqualFold(medium, "cpu") {
		return 0.8
	}
	return 1
}

func (precisePrefixCacheScorer) score(req *serving.Request, views []serving.InstanceView, out []float64) {
	lo, hi := 0.0, 0.0
	for i := range views {
		c := 0.0
		if views[i].Cache != nil && len(req.BlockHashes) > 0 {
			if tc, ok := views[i].Cache.(serving.TieredPrefixCache); ok {
				c = tc.CachedPrefixWeight(req.BlockHashes, mediumWeight)
			} else {
				c = float64(views[i].Cache.CachedPrefixBlocks(req.BlockHashes))
			}
		}
		out[i] = c
		if c > 0 {
			if hi == 0 {
				lo, hi = c, c
			}
			lo, hi = min(lo, c), max(hi, c)
		}
	}
	for i := range views {
		switch c := out[i]; {
		case c == 0:
			out[i] = 0
		case hi == lo:
			out[i] = 1
		default:
			out[i] = (c - lo) / (hi - lo)
		}
	}
}

func (precisePrefixCacheScorer) picked(*serving.Request, *serving.InstanceView) {}
