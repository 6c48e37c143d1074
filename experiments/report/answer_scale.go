package report

import (
	"fmt"

	"servelab/experiments"
)

// autoscaleVerdicts compare each autoscaled cluster with the smallest fixed cluster (by
// GPU-hours) whose SLO attainment is at least its own: issue 14's measure of what
// autoscaling saves. None where the experiment has no autoscaled cluster.
func autoscaleVerdicts(ps []*experiments.PolicyResult) []string {
	var out []string
	for _, a := range ps {
		if a.MeanInstances == nil || a.SLOAttainment == nil || a.GPUHours == nil {
			continue
		}
		var fixed *experiments.PolicyResult
		for _, f := range ps {
			if f.MeanInstances != nil || f.SLOAttainment == nil || f.GPUHours == nil || f.SLOAttainment.Mean < a.SLOAttainment.Mean {
				continue
			}
			if fixed == nil || f.GPUHours.Mean < fixed.GPUHours.Mean {
				fixed = f
			}
		}
		text := fmt.Sprintf("Autoscaled %s meets the SLO for %.2f%% of requests on %s instances on average, %s GPU-hours",
			a.Name(), 100*a.SLOAttainment.Mean, FormatStat(*a.MeanInstances, a.Seeds, 1), FormatStat(*a.GPUHours, a.Seeds, 1))
		if fixed == nil {
			text += "; no fixed cluster attains as much."
		} else {
			text += fmt.Sprintf(": %.0f%% of the GPU-hours of %s (%s GPU-hours, %.2f%%), the smallest fixed cluster attaining as much.",
				100*a.GPUHours.Mean/fixed.GPUHours.Mean, fixed.Name(), FormatStat(*fixed.GPUHours, fixed.Seeds, 1), 100*fixed.SLOAttainment.Mean)
		}
		out = append(out, text)
	}
	return out
}
