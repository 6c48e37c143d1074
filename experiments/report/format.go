package report

import (
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"servelab/experiments"
	"servelab/sim"
)

// rateGroup is an experiment's policies at one rate scale, ranked two ways.
type rateGroup struct {
	Rate float64
	// ByGoodput is results.json's order: goodput, then p99 TTFT.
	ByGoodput []*experiments.PolicyResult
	// ByP99TTFT is by p99 TTFT, lowest first; policies with no finished cell go last.
	ByP99TTFT []*experiments.PolicyResult
}

func (e *Experiment) rateGroups() []rateGroup {
	var groups []rateGroup
	for _, rate := range e.RateScales() {
		g := rateGroup{Rate: rate}
		for i := range e.Results.Policies {
			if p := &e.Results.Policies[i]; p.RateScale == rate {
				g.ByGoodput = append(g.ByGoodput, p)
			}
		}
		g.ByP99TTFT = slices.Clone(g.ByGoodput)
		slices.SortStableFunc(g.ByP99TTFT, func(a, b *experiments.PolicyResult) int {
			if (a.Seeds == 0) != (b.Seeds == 0) {
				if a.Seeds == 0 {
					return 1
				}
				return -1
			}
			switch {
			case a.P99TTFTMs.Mean < b.P99TTFTMs.Mean:
				return -1
			case a.P99TTFTMs.Mean > b.P99TTFTMs.Mean:
				return 1
			}
			return 0
		})
		groups = append(groups, g)
	}
	return groups
}

// rankedCaption heads a ranked table: "Ranked by goodput", or in a sweep "Rate ×2: ranked
// by goodput".
func rankedCaption(rate float64, sweep bool, by string) string {
	if sweep {
		return "Rate " + rateLabel(rate) + ": ranked by " + by
	}
	return "Ranked by " + by
}

// shareCaption heads a table of requests per instance.
func shareCaption(rate float64, sweep bool) string {
	if sweep {
		return "Rate " + rateLabel(rate) + ": requests per instance"
	}
	return "Requests per instance"
}

// failedCells are the cells that did not finish, in results.json's order.
func (e *Experiment) failedCells() []experiments.CellResult {
	var out []experiments.CellResult
	for _, c := range e.Results.Cells {
		if c.Status != "done" {
			out = append(out, c)
		}
	}
	return out
}

// fact is one line of an experiment's description.
type fact struct{ Label, Value string }

// facts describe what the experiment ran, from its spec.
func (e *Experiment) facts() []fact {
	s := &e.Spec
	w := s.Workload
	var workload string
	switch {
	case w.Synthetic != nil:
		workload = "synthetic"
	default:
		workload = filepath.Base(w.Trace)
		if w.Format != "" {
			workload += " (" + w.Format + ")"
		}
	}
	if win := w.Window; win != nil {
		if win.EndS > 0 {
			workload += fmt.Sprintf(", arrivals in [%g s, %g s)", win.StartS, win.EndS)
		} else {
			workload += fmt.Sprintf(", arrivals from %g s", win.StartS)
		}
	}
	if w.MaxRequests > 0 {
		workload += fmt.Sprintf(", first %d requests", w.MaxRequests)
	}
	switch {
	case w.OutputTokenScale > 0:
		workload += fmt.Sprintf(", prompts ×%g, outputs ×%g", or1(w.TokenScale), w.OutputTokenScale)
	case w.TokenScale > 0 && w.TokenScale != 1:
		workload += fmt.Sprintf(", tokens ×%g", w.TokenScale)
	}
	rates := make([]string, len(w.RateScale))
	for i, r := range w.RateScale {
		rates[i] = rateLabel(r)
	}
	workload += ", rate " + strings.Join(rates, ", ")

	var clusters []fact
	for _, k := range s.Clusters {
		clusters = append(clusters, fact{"cluster " + k.Name, clusterText(k, s.World)})
	}
	if len(clusters) == 0 {
		clusters = []fact{{"cluster", clusterText(s.Cluster, s.World)}}
	}

	p := s.Policies
	policies := "routers " + strings.Join(p.Routers, ", ") + "; batch " + strings.Join(p.Batch, ", ") + "; evict " + strings.Join(p.Evict, ", ")

	seeds := make([]string, len(s.Seeds))
	for i, seed := range s.Seeds {
		seeds[i] = strconv.FormatUint(seed, 10)
	}

	var slo []string
	for _, t := range []struct {
		name string
		ms   float64
	}{{"TTFT", s.SLO.TTFTMs}, {"TPOT", s.SLO.TPOTMs}, {"E2EL", s.SLO.E2ELMs}} {
		if t.ms > 0 {
			slo = append(slo, fmt.Sprintf("%s ≤ %g ms", t.name, t.ms))
		}
	}
	sloText := strings.Join(slo, ", ")
	if sloText == "" {
		sloText = "none (goodput counts every finished request)"
	}

	cells := fmt.Sprintf("%d, all finished", len(e.Results.Cells))
	if n := len(e.failedCells()); n > 0 {
		cells = fmt.Sprintf("%d, %d failed", len(e.Results.Cells), n)
	}
	facts := append([]fact{{"workload", workload}}, clusters...)
	return append(facts, []fact{
		{"policies", policies},
		{"seeds", strings.Join(seeds, ", ")},
		{"SLO", sloText},
		{"cells", cells},
	}...)
}

// clusterText describes a cluster of the spec as spec.yaml gives it (in the world named).
func clusterText(k experiments.Cluster, world string) string {
	def := sim.DefaultClusterSpec()
	cluster := fmt.Sprintf("%d × %s on %s", or(k.Instances, def.Instances), orStr(k.Model, def.Model), orStr(k.GPU, def.GPU))
	if k.Autoscale != "" {
		cluster = fmt.Sprintf("%s on %s autoscaled by %s, scale-up delay %gs", orStr(k.Model, def.Model), orStr(k.GPU, def.GPU), k.Autoscale, k.ScaleUpDelay)
	}
	if tp := or(k.TP, def.TP); tp != 1 {
		cluster += fmt.Sprintf(", TP %d", tp)
	}
	if len(k.Pools) > 0 {
		var pools []string
		for _, p := range k.Pools {
			pool := fmt.Sprintf("%s: %d × %s", p.Name, p.Instances, p.GPU)
			if p.GPU == "" { // the real world's engine processes
				pool = fmt.Sprintf("%s: %d engines", p.Name, p.Instances)
			}
			if p.TP > 1 {
				pool += fmt.Sprintf(" TP %d", p.TP)
			}
			if p.Role != "" && p.Role != sim.RoleBoth {
				pool += " (" + p.Role + ")"
			}
			pools = append(pools, pool)
		}
		cluster = orStr(k.Model, def.Model) + " in pools " + strings.Join(pools, ", ")
	}
	if len(k.GPUPricePerHour) > 0 {
		var prices []string
		for _, name := range slices.Sorted(maps.Keys(k.GPUPricePerHour)) {
			prices = append(prices, fmt.Sprintf("%s $%g", name, k.GPUPricePerHour[name]))
		}
		cluster += ", GPU-hour prices " + strings.Join(prices, ", ")
	}
	if k.Latency != "" {
		cluster += ", latency " + k.Latency
	}
	if k.EnablePrefixCaching != nil && !*k.EnablePrefixCaching {
		cluster += ", prefix caching off"
	}
	if views := routerViews(k, def); views != "" && world != "real" {
		cluster += ", " + views
	}

	if k.PrefillRouter != "" || k.KVLink != "" || k.NonCachedTokens != nil {
		var pd []string
		if k.PrefillRouter != "" {
			pd = append(pd, "prefill router "+k.PrefillRouter)
		}
		if k.NonCachedTokens != nil {
			pd = append(pd, fmt.Sprintf("non_cached_tokens %d", *k.NonCachedTokens))
		}
		if k.KVLink != "" {
			pd = append(pd, "KV over "+k.KVLink)
		}
		cluster += ", " + strings.Join(pd, ", ")
	}
	if k.ABRouter != "" && k.ABFraction != nil {
		cluster += fmt.Sprintf(", A/B: %g%% of requests routed by %s (arm b), the rest by the cell's router (arm a)", 100**k.ABFraction, k.ABRouter)
	}
	for _, t := range k.KVTiers {
		tier := fmt.Sprintf(", %s tier of %d blocks", t.Medium, t.Blocks)
		if t.Evict != "" {
			tier += " (" + t.Evict + ")"
		}
		cluster += tier
	}
	return cluster
}

// routerViews says how stale the simulated router's views were, for a spec that says
// (spec.yaml has said since the simulator modelled it); "" for one that does not.
func routerViews(k experiments.Cluster, def sim.ClusterSpec) string {
	if k.ScrapeInterval == nil && k.KVEventDelay == nil {
		return ""
	}
	scrape, delay := def.ScrapeInterval, def.KVEventDelay
	if k.ScrapeInterval != nil {
		scrape = *k.ScrapeInterval
	}
	if k.KVEventDelay != nil {
		delay = *k.KVEventDelay
	}
	if scrape == 0 && delay == 0 {
		return "router on exact views"
	}
	d := func(s float64) string { return time.Duration(math.Round(s * 1e9)).String() }
	return fmt.Sprintf("router on gauges scraped every %s and KV events %s late", d(scrape), d(delay))
}

func or(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// or1 is a scale factor a spec may leave out (0): 1.
func or1(v float64) float64 {
	if v == 0 {
		return 1
	}
	return v
}

func orStr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func rateLabel(r float64) string { return "×" + strconv.FormatFloat(r, 'g', -1, 64) }

// decimals is how many decimals show v to about three significant digits.
func decimals(v float64) int {
	switch a := math.Abs(v); {
	case a == 0 || a >= 100:
		return 0
	case a >= 10:
		return 1
	case a >= 1:
		return 2
	}
	return 3
}

// FormatStat shows a mean over seeds with its 95% confidence half-width when there are seeds
// enough to have one; scale multiplies both (100 for percentages).
func FormatStat(s experiments.Stat, seeds int, scale float64) string {
	if seeds == 0 {
		return "–"
	}
	mean, ci := s.Mean*scale, s.CI95*scale
	d := decimals(mean)
	if seeds < 2 {
		return strconv.FormatFloat(mean, 'f', d, 64)
	}
	return strconv.FormatFloat(mean, 'f', d, 64) + " ± " + strconv.FormatFloat(ci, 'f', d, 64)
}

// SeedsText is a policy's finished seeds, flagging failed cells.
func SeedsText(p *experiments.PolicyResult) string {
	if p.FailedCells > 0 {
		return fmt.Sprintf("%d ⚠ %d failed", p.Seeds, p.FailedCells)
	}
	return strconv.Itoa(p.Seeds)
}

// column is one column of the ranked tables.
type column struct {
	Head string
	// Markdown columns also go into the PR summary; the HTML tables have them all.
	Markdown bool
	Value    func(p *experiments.PolicyResult) string
	// cost marks the columns of metrics.Cost, left out where no policy has one.
	cost bool
}

func statColumn(head string, md bool, scale float64, f func(p *experiments.PolicyResult) experiments.Stat) column {
	return column{Head: head, Markdown: md, Value: func(p *experiments.PolicyResult) string { return FormatStat(f(p), p.Seeds, scale) }}
}

// tableColumns is columns less the cost ones when no policy reports a cost (a real run,
// a cluster of GPUs without a price), with each KV-cache tier's hit rate after the prefix
// hit rate where a policy's cluster has tiers below the GPU, and the share of requests
// disaggregated and their KV transfer where one is disaggregated.
func tableColumns(policies []*experiments.PolicyResult) []column {
	out := slices.Clone(columns)
	if !slices.ContainsFunc(policies, func(p *experiments.PolicyResult) bool { return p.CostUSD != nil }) {
		out = slices.DeleteFunc(out, func(c column) bool { return c.cost })
	}
	var extra []column
	var media []string
	for _, p := range policies {
		for _, t := range p.KVTiers {
			if !slices.Contains(media, t.Medium) {
				media = append(media, t.Medium)
			}
		}
	}
	for _, m := range media {
		extra = append(extra, column{Head: m + " hit %", Markdown: true, Value: func(p *experiments.PolicyResult) string {
			for _, t := range p.KVTiers {
				if t.Medium == m {
					return FormatStat(t.PrefixCacheHitRate, p.Seeds, 100)
				}
			}
			if m == "GPU" && len(p.KVTiers) == 0 {
				// No tier below the accelerator: every hit is the GPU's.
				return FormatStat(p.PrefixCacheHitRate, p.Seeds, 100)
			}
			return "–"
		}})
	}
	if slices.ContainsFunc(policies, func(p *experiments.PolicyResult) bool { return p.MeanInstances != nil || p.SLOAttainment != nil }) {
		// An autoscaled cluster: its size and GPU-hours next to the SLO attainment.
		extra = append(extra,
			column{Head: "SLO attained %", Markdown: true, Value: func(p *experiments.PolicyResult) string { return optStat(p.SLOAttainment, p.Seeds, 100) }},
			column{Head: "mean instances", Markdown: true, Value: func(p *experiments.PolicyResult) string { return optStat(p.MeanInstances, p.Seeds, 1) }},
			column{Head: "GPU-hours", Markdown: true, Value: func(p *experiments.PolicyResult) string { return optStat(p.GPUHours, p.Seeds, 1) }})
	}
	if slices.ContainsFunc(policies, func(p *experiments.PolicyResult) bool { return p.DisaggregatedShare != nil }) {
		optional := func(head string, md bool, scale float64, f func(p *experiments.PolicyResult) *experiments.Stat) column {
			return column{Head: head, Markdown: md, Value: func(p *experiments.PolicyResult) string {
				if s := f(p); s != nil {
					return FormatStat(*s, p.Seeds, scale)
				}
				return "–"
			}}
		}
		extra = append(extra,
			optional("disaggregated %", true, 100, func(p *experiments.PolicyResult) *experiments.Stat { return p.DisaggregatedShare }),
			optional("KV transfer ms", false, 1, func(p *experiments.PolicyResult) *experiments.Stat { return p.MeanKVTransferMs }))
	}
	if i := slices.IndexFunc(out, func(c column) bool { return c.Head == "prefix hit %" }); i >= 0 {
		out = slices.Insert(out, i+1, extra...)
	}
	return out
}

// optStat formats a statistic a policy may not have, "–" where it has none.
func optStat(s *experiments.Stat, seeds int, scale float64) string {
	if s == nil {
		return "–"
	}
	return FormatStat(*s, seeds, scale)
}

// costColumn is a column of the cost a policy's cells report, "–" where they report none.
func costColumn(head string, md bool, f func(p *experiments.PolicyResult) *experiments.Stat) column {
	return column{Head: head, Markdown: md, cost: true, Value: func(p *experiments.PolicyResult) string {
		if s := f(p); s != nil {
			return FormatStat(*s, p.Seeds, 1)
		}
		return "–"
	}}
}

var columns = []column{
	statColumn("goodput req/s", true, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.RequestGoodput }),
	statColumn("p99 TTFT ms", true, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.P99TTFTMs }),
	statColumn("median TTFT ms", true, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.MedianTTFTMs }),
	statColumn("mean TTFT ms", false, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.MeanTTFTMs }),
	statColumn("median TPOT ms", false, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.MedianTPOTMs }),
	statColumn("p99 TPOT ms", true, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.P99TPOTMs }),
	statColumn("req/s", false, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.RequestThroughput }),
	statColumn("output tok/s", false, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.OutputThroughput }),
	statColumn("prefix hit %", true, 100, func(p *experiments.PolicyResult) experiments.Stat { return p.PrefixCacheHitRate }),
	statColumn("preemptions", false, 1, func(p *experiments.PolicyResult) experiments.Stat { return p.Preemptions }),
	costColumn("goodput/$", true, func(p *experiments.PolicyResult) *experiments.Stat { return p.GoodputPerDollar }),
	costColumn("cost $", true, func(p *experiments.PolicyResult) *experiments.Stat { return p.CostUSD }),
	{Head: "seeds", Markdown: true, Value: SeedsText},
}

// firstLine is an error's first line, cut to a readable length.
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}
