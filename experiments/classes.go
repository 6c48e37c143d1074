package experiments

import (
	"slices"

	"servelab/metrics"
)

// ClassResult is one request class (objective) of a policy combination over seeds: the
// summaries' classes (metrics.Summary.Classes).
type ClassResult struct {
	Name string `json:"name"`
	// Requests counts the class's requests (finished and failed) and RefusedShare the
	// fraction of them that failed (flow control's 429s and 503s among them).
	Requests          Stat `json:"requests"`
	RefusedShare      Stat `json:"refused_share"`
	RequestGoodput    Stat `json:"request_goodput"`
	RequestThroughput Stat `json:"request_throughput"`
	MedianTTFTMs      Stat `json:"median_ttft_ms"`
	P99TTFTMs         Stat `json:"p99_ttft_ms"`
	P99TPOTMs         Stat `json:"p99_tpot_ms"`
	P99E2ELMs         Stat `json:"p99_e2el_ms"`
}

// classResults is each class's metrics over the seeds' summaries, by name; nil when no
// seed has classes. A seed without a class counts zeros for it.
func classResults(ss []*metrics.Summary, stat func(func(*metrics.Summary) float64) Stat) []ClassResult {
	var names []string
	for _, s := range ss {
		for n := range s.Classes {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	out := make([]ClassResult, 0, len(names))
	for _, n := range names {
		of := func(f func(*metrics.Summary) float64) Stat {
			return stat(func(s *metrics.Summary) float64 {
				c, ok := s.Classes[n]
				if !ok {
					return 0
				}
				return f(&c)
			})
		}
		out = append(out, ClassResult{
			Name:     n,
			Requests: of(func(c *metrics.Summary) float64 { return float64(c.Completed + c.Failed) }),
			RefusedShare: of(func(c *metrics.Summary) float64 {
				if n := c.Completed + c.Failed; n > 0 {
					return float64(c.Failed) / float64(n)
				}
				return 0
			}),
			RequestGoodput:    of(func(c *metrics.Summary) float64 { return c.RequestGoodput }),
			RequestThroughput: of(func(c *metrics.Summary) float64 { return c.RequestThroughput }),
			MedianTTFTMs:      of(func(c *metrics.Summary) float64 { return c.MedianTTFTMs }),
			P99TTFTMs:         of(func(c *metrics.Summary) float64 { return c.P99TTFTMs }),
			P99TPOTMs:         of(func(c *metrics.Summary) float64 { return c.P99TPOTMs }),
			P99E2ELMs:         of(func(c *metrics.Summary) float64 { return c.P99E2ELMs }),
		})
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
