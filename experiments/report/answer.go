package report

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"servelab/experiments"
)

// verdict is the answer at one rate scale: the policy ranked first by goodput and by how
// much it leads the next, then the one with the lowest p99 TTFT when that is another.
type verdict struct {
	Rate float64
	Text string
}

// verdicts lead a report: per rate scale, who wins and by how much.
func (e *Experiment) verdicts() []verdict {
	groups := e.rateGroups()
	var out []verdict
	for _, g := range groups {
		var parts []string
		prefix := ""
		if len(groups) > 1 {
			prefix = "At " + rateLabel(g.Rate) + ": "
		}
		ranked := finished(g.ByGoodput)
		switch len(ranked) {
		case 0:
			out = append(out, verdict{g.Rate, prefix + "no policy finished a cell."})
			continue
		case 1:
			w := ranked[0]
			out = append(out, verdict{g.Rate, fmt.Sprintf("%s%s is the only policy that finished: goodput %s req/s.",
				prefix, w.Name(), FormatStat(w.RequestGoodput, w.Seeds, 1))})
			continue
		}
		// The winner against the next policy whose results differ; those identical to it
		// are named, not compared.
		w := ranked[0]
		var twins []string
		var r *experiments.PolicyResult
		for _, p := range ranked[1:] {
			if sameResults(w, p) {
				twins = append(twins, p.Name())
			} else if r == nil {
				r = p
			}
		}
		text := fmt.Sprintf("%s%s ranks first by goodput, %s req/s", prefix, w.Name(), FormatStat(w.RequestGoodput, w.Seeds, 1))
		if len(twins) > 0 {
			text += " (identical results to " + strings.Join(twins, ", ") + ")"
		}
		switch {
		case r == nil:
		case r.RequestGoodput.Mean > 0:
			text += fmt.Sprintf(", %s above %s (%s)", percentMore(w.RequestGoodput.Mean, r.RequestGoodput.Mean),
				r.Name(), FormatStat(r.RequestGoodput, r.Seeds, 1))
		default:
			text += fmt.Sprintf(" against %s for %s", FormatStat(r.RequestGoodput, r.Seeds, 1), r.Name())
		}
		if r != nil {
			if overlap(w.RequestGoodput, r.RequestGoodput) {
				text += "; within the 95% confidence intervals, so not a clear win"
			} else if w.Seeds > 1 && r.Seeds > 1 {
				text += "; beyond the 95% confidence intervals"
			}
		}
		parts = append(parts, text+".")
		best := finished(g.ByP99TTFT)[0]
		if best.Name() != w.Name() && !sameResults(best, w) {
			parts = append(parts, fmt.Sprintf("Lowest p99 TTFT: %s, %s ms (%s: %s ms).", best.Name(),
				FormatStat(best.P99TTFTMs, best.Seeds, 1), w.Name(), FormatStat(w.P99TTFTMs, w.Seeds, 1)))
		} else {
			parts = append(parts, fmt.Sprintf("It also has the lowest p99 TTFT, %s ms.", FormatStat(w.P99TTFTMs, w.Seeds, 1)))
		}
		if cheap := mostPerDollar(ranked); cheap != nil && w.GoodputPerDollar != nil {
			if cheap.Name() != w.Name() && !sameResults(cheap, w) {
				parts = append(parts, fmt.Sprintf("Most goodput per dollar: %s, %s requests/$ (%s: %s).", cheap.Name(),
					FormatStat(*cheap.GoodputPerDollar, cheap.Seeds, 1), w.Name(), FormatStat(*w.GoodputPerDollar, w.Seeds, 1)))
			} else {
				parts = append(parts, fmt.Sprintf("It also has the most goodput per dollar, %s requests/$.", FormatStat(*w.GoodputPerDollar, w.Seeds, 1)))
			}
		}
		parts = append(parts, autoscaleVerdicts(ranked)...)
		parts = append(parts, abVerdicts(ranked)...)
		out = append(out, verdict{g.Rate, strings.Join(parts, " ")})
	}
	return out
}

// mostPerDollar is the policy with the most goodput per dollar, or nil when none reports
// a cost or all report the same (one cluster, where it adds nothing to goodput's ranking).
func mostPerDollar(ps []*experiments.PolicyResult) *experiments.PolicyResult {
	var best *experiments.PolicyResult
	distinct := false
	for _, p := range ps {
		if p.GoodputPerDollar == nil || p.CostUSD == nil {
			continue
		}
		if best != nil && p.CostUSD.Mean != best.CostUSD.Mean {
			distinct = true
		}
		if best == nil || p.GoodputPerDollar.Mean > best.GoodputPerDollar.Mean {
			best = p
		}
	}
	if !distinct {
		return nil
	}
	return best
}

func finished(ps []*experiments.PolicyResult) []*experiments.PolicyResult {
	var out []*experiments.PolicyResult
	for _, p := range ps {
		if p.Seeds > 0 {
			out = append(out, p)
		}
	}
	return out
}

// percentMore is how much a exceeds b, as people read it: "12%", "3.2%", "0.78%" or "3.1×".
func percentMore(a, b float64) string {
	if a >= 2*b {
		return strconv.FormatFloat(a/b, 'f', 1, 64) + "×"
	}
	d := 100 * (a - b) / b
	digits := 0
	switch {
	case d < 1:
		digits = 2
	case d < 10:
		digits = 1
	}
	return strconv.FormatFloat(d, 'f', digits, 64) + "%"
}

// overlap says whether two means' 95% confidence intervals overlap (with one seed there is
// no interval, and no claim either way).
func overlap(a, b experiments.Stat) bool {
	if a.CI95 == 0 && b.CI95 == 0 {
		return false
	}
	return math.Abs(a.Mean-b.Mean) <= a.CI95+b.CI95
}

// sameResults says whether two policies' results are identical in every metric (lru and
// lfu on a trace whose prompts share no prefix, for instance).
func sameResults(a, b *experiments.PolicyResult) bool {
	if a.Seeds == 0 || b.Seeds == 0 || a.Seeds != b.Seeds || a.RateScale != b.RateScale {
		return false
	}
	x, y := *a, *b
	x.Cluster, x.Router, x.Batch, x.Evict = "", "", "", ""
	y.Cluster, y.Router, y.Batch, y.Evict = "", "", "", ""
	return reflect.DeepEqual(x, y)
}

// identicalGroups are the sets of policies whose results are identical at every rate
// scale, in matrix order: their lines in the charts lie on top of each other.
func (e *Experiment) identicalGroups() [][]string {
	byName := map[string][]*experiments.PolicyResult{}
	var names []string
	for i := range e.Results.Policies {
		p := &e.Results.Policies[i]
		if _, ok := byName[p.Name()]; !ok {
			names = append(names, p.Name())
		}
		byName[p.Name()] = append(byName[p.Name()], p)
	}
	same := func(a, b string) bool {
		pa, pb := byName[a], byName[b]
		if len(pa) != len(pb) {
			return false
		}
		for i := range pa {
			if !sameResults(pa[i], pb[i]) {
				return false
			}
		}
		return true
	}
	var groups [][]string
	placed := map[string]bool{}
	for i, a := range names {
		if placed[a] {
			continue
		}
		group := []string{a}
		for _, b := range names[i+1:] {
			if !placed[b] && same(a, b) {
				group = append(group, b)
				placed[b] = true
			}
		}
		if len(group) > 1 {
			groups = append(groups, group)
		}
	}
	return groups
}

// identicalNote says which policies gave identical results, or "" when none did.
func (e *Experiment) identicalNote() string {
	var parts []string
	for _, g := range e.identicalGroups() {
		parts = append(parts, strings.Join(g, " = "))
	}
	if len(parts) == 0 {
		return ""
	}
	return "Identical results: " + strings.Join(parts, "; ") +
		" (every metric the same at every rate; in the charts their lines lie on top of each other)."
}

// noPrefixNote says, for a workload whose requests carry no prefix hash ids, that the
// prefix cache could not hit; "" otherwise. Results of older runs do not record it: there
// the note is given when no cell had a single hit.
func (e *Experiment) noPrefixNote() string {
	if h := e.Results.PrefixHashes; h != nil {
		if *h {
			return ""
		}
		return "The workload carries no prefix information (no hash ids): every prompt has blocks of its own, so the prefix cache cannot hit under any policy; the hit-rate chart is left out."
	}
	any := false
	for _, c := range e.Results.Cells {
		if c.Summary != nil {
			any = true
			if c.Summary.PrefixCacheHitRate > 0 {
				return ""
			}
		}
	}
	if !any {
		return ""
	}
	return "No cell had a prefix-cache hit (the workload probably carries no prefix hash ids); the hit-rate chart is left out."
}

// hasPrefixHits says whether the hit-rate chart has anything to show.
func (e *Experiment) hasPrefixHits() bool { return e.noPrefixNote() == "" }

// shareTable is the requests per instance of an experiment's policies at one rate scale.
type shareTable struct {
	Rate      float64
	Instances int
	Rows      []shareRow
}

type shareRow struct {
	Policy *experiments.PolicyResult
	// Shares are the instances' shares of the requests in percent: the mean over seeds,
	// and the lowest and highest seed's where they differ, "50.0 (0–100)".
	Shares []string
	// Warning names the instances that got no request, "" when every one got some.
	Warning string
}

// shareTables are the per-instance request shares, per rate scale, policies in goodput
// order; none for results without the counts (older runs).
func (e *Experiment) shareTables() []shareTable {
	var out []shareTable
	for _, g := range e.rateGroups() {
		t := shareTable{Rate: g.Rate}
		for _, p := range g.ByGoodput {
			if len(p.InstanceShare) == 0 {
				continue
			}
			t.Instances = max(t.Instances, len(p.InstanceShare))
			row := shareRow{Policy: p}
			for _, s := range p.InstanceShare {
				row.Shares = append(row.Shares, formatShare(s))
			}
			row.Warning = starvedText(p)
			t.Rows = append(t.Rows, row)
		}
		if len(t.Rows) > 0 {
			out = append(out, t)
		}
	}
	return out
}

// formatShare shows a share in percent: "25.0", or over seeds that differ "50.0 (0–100)".
func formatShare(s experiments.Share) string {
	f := func(x float64) string { return strconv.FormatFloat(100*x, 'f', 1, 64) }
	if s.Min == s.Max {
		return f(s.Mean)
	}
	return f(s.Mean) + " (" + f(s.Min) + "–" + f(s.Max) + ")"
}

// starvedText names the instances a policy sent no request to, grouped by in how many of
// its seeds: "instances 1, 2 got no requests in 2 of 2 seeds, instances 0, 3 in 1 of 2".
func starvedText(p *experiments.PolicyResult) string {
	bySeeds := map[int][]string{}
	var counts []int
	for _, s := range p.Starved {
		if _, ok := bySeeds[s.Seeds]; !ok {
			counts = append(counts, s.Seeds)
		}
		bySeeds[s.Seeds] = append(bySeeds[s.Seeds], strconv.Itoa(s.Instance))
	}
	slices.Sort(counts)
	slices.Reverse(counts)
	var parts []string
	for i, n := range counts {
		ids := bySeeds[n]
		noun := "instance "
		if len(ids) > 1 {
			noun = "instances "
		}
		part := noun + strings.Join(ids, ", ")
		switch {
		case i == 0 && p.Seeds == 1:
			part += " got no requests"
		case i == 0:
			part += fmt.Sprintf(" got no requests in %d of %d seeds", n, p.Seeds)
		default:
			part += fmt.Sprintf(" in %d of %d", n, p.Seeds)
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, ", ")
}

// starvedWarnings are the report's warnings about idle instances: one per policy, naming
// the rate scales where the same instances sat idle.
func (e *Experiment) starvedWarnings() []string {
	type key struct{ policy, text string }
	rates := map[key][]string{}
	var order []key
	for _, t := range e.shareTables() {
		for _, r := range t.Rows {
			if r.Warning == "" {
				continue
			}
			k := key{r.Policy.Name(), r.Warning}
			if _, ok := rates[k]; !ok {
				order = append(order, k)
			}
			rates[k] = append(rates[k], rateLabel(t.Rate))
		}
	}
	sweep := len(e.RateScales()) > 1
	var out []string
	for _, k := range order {
		w := k.policy + ": " + k.text
		if sweep {
			w = "At " + strings.Join(rates[k], ", ") + ", " + w
		}
		out = append(out, w+".")
	}
	return out
}

// IdleInstances are the warnings about instances a policy sent no request to, as the report
// gives them, for a terminal: one per policy, with the rate scales where they sat idle.
func IdleInstances(res *experiments.Results) []string {
	e := &Experiment{Results: *res}
	return e.starvedWarnings()
}
