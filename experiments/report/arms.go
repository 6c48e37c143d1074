package report

import (
	"fmt"
	"io"
	"strings"

	"servelab/experiments"
	"servelab/serving"
)

// hasArms says whether any of the policies' cells split their requests between two
// routing policies (an online A/B test: the cluster's ab_router and ab_fraction).
func hasArms(policies []*experiments.PolicyResult) bool {
	for _, p := range policies {
		if len(p.Arms) > 0 {
			return true
		}
	}
	return false
}

func armCaption(rate float64, sweep bool) string {
	if sweep {
		return "Rate " + rateLabel(rate) + ": A/B arms side by side"
	}
	return "A/B arms side by side"
}

// armHeads are the A/B table's columns after the policy's (the cell's).
var armHeads = []string{"arm", "arm's router", "requests", "goodput req/s", "median TTFT ms", "p99 TTFT ms", "median TPOT ms", "p99 TPOT ms", "prefix hit %"}

// armCells are one arm's cells under armHeads.
func armCells(p *experiments.PolicyResult, a experiments.ArmResult) []string {
	f := func(s experiments.Stat, scale float64) string { return FormatStat(s, p.Seeds, scale) }
	return []string{a.Name, a.Router, f(a.Requests, 1), f(a.RequestGoodput, 1),
		f(a.MedianTTFTMs, 1), f(a.P99TTFTMs, 1), f(a.MedianTPOTMs, 1), f(a.P99TPOTMs, 1), f(a.PrefixCacheHitRate, 100)}
}

// writeMarkdownArms writes each A/B cell's arms, one row per arm.
func writeMarkdownArms(w io.Writer, policies []*experiments.PolicyResult) {
	fmt.Fprintf(w, "| policy | %s |\n", strings.Join(armHeads, " | "))
	fmt.Fprintf(w, "| --- | --- | --- |%s\n", strings.Repeat(" ---: |", len(armHeads)-2))
	for _, p := range policies {
		for _, a := range p.Arms {
			cells := armCells(p, a)
			for i := range cells {
				cells[i] = mdText(cells[i])
			}
			cells[1] = "`" + mdCode(a.Router) + "`"
			fmt.Fprintf(w, "| `%s` | %s |\n", mdCode(p.Name()), strings.Join(cells, " | "))
		}
	}
}

// armNote says what the arms' numbers are.
const armNote = "Each arm is the requests its router routed, on the same instances as the other arm's " +
	"(a request's arm is a hash of the seed and its trace row index, as servelab router splits by x-request-id); " +
	"both arms ran for the whole run, so their goodputs add up to the cell's. " +
	"An arm's prefix hit rate is its requests' cached prompt tokens over their prompt tokens."

// abVerdicts weigh the two arms of each A/B cell that ran both: each arm's goodput over its
// share of the requests, the goodput the cluster would have had if every request had fared
// as the arm's did (the arms' goodputs themselves scale with their shares).
func abVerdicts(ps []*experiments.PolicyResult) []string {
	var out []string
	for _, p := range ps {
		var a, b *experiments.ArmResult
		for i := range p.Arms {
			switch p.Arms[i].Name {
			case serving.ArmA:
				a = &p.Arms[i]
			case serving.ArmB:
				b = &p.Arms[i]
			}
		}
		total := 0.0
		if a != nil && b != nil {
			total = a.Requests.Mean + b.Requests.Mean
		}
		if total == 0 || a.Requests.Mean == 0 || b.Requests.Mean == 0 {
			continue
		}
		perShare := func(r *experiments.ArmResult) float64 { return r.RequestGoodput.Mean * total / r.Requests.Mean }
		ga, gb := perShare(a), perShare(b)
		lead := "arm b leads by " + percentMore(gb, ga)
		switch {
		case ga > gb:
			lead = "arm a leads by " + percentMore(ga, gb)
		case ga == gb:
			lead = "the arms are level"
		}
		out = append(out, fmt.Sprintf("A/B in %s: arm b (%s, %.0f%% of the requests) %s req/s of goodput, arm a (%s) %s; over each arm's share of the requests, %.3g against %.3g req/s: %s.",
			p.Name(), b.Router, 100*b.Requests.Mean/total, FormatStat(b.RequestGoodput, p.Seeds, 1), a.Router, FormatStat(a.RequestGoodput, p.Seeds, 1), gb, ga, lead))
	}
	return out
}
