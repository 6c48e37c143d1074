package experiments

import (
	"slices"

	"servelab/metrics"
)

// scaledResults fills a policy's SLO attainment and mean instances where its cluster is
// autoscaled; withAutoscale then fills them for every other policy of an experiment that
// has one, so fixed clusters compare with it.
func scaledResults(p *PolicyResult, ss []*metrics.Summary, stat func(func(*metrics.Summary) float64) Stat) {
	if len(ss) == 0 {
		return
	}
	att := stat(attainment)
	p.SLOAttainment = &att
	if !slices.ContainsFunc(ss, func(s *metrics.Summary) bool { return s.Autoscale == nil }) {
		mean := stat(func(s *metrics.Summary) float64 { return s.Autoscale.MeanInstances })
		p.MeanInstances = &mean
		// Slots the policy never started got no requests; they are not idle instances.
		p.Starved = nil
	}
}

// attainment is the fraction of a run's requests that met the SLO.
func attainment(s *metrics.Summary) float64 {
	if n := s.Completed + s.Failed; n > 0 {
		return s.RequestGoodput * s.Duration / float64(n)
	}
	return 0
}

// withAutoscale keeps SLO attainment only in experiments with an autoscaled cluster (the
// others' reports stay as they were).
func withAutoscale(out []PolicyResult) {
	if slices.ContainsFunc(out, func(p PolicyResult) bool { return p.MeanInstances != nil }) {
		return
	}
	for i := range out {
		out[i].SLOAttainment = nil
	}
}
