// Package deploy turns an experiment's chosen policy into the LLMService
// (servelab.io/v1alpha1) that runs it on a Kubernetes cluster, applies it with server-side
// apply (field manager "servelab"), shows what changes on an existing service, and waits
// for it to become Ready: what 'servelab deploy' does.
package deploy

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"servelab/experiments"
	"servelab/experiments/report"
)

// ranking says how 'servelab report' ranks an experiment's policies, which --pick best
// follows: results.json's order, by request goodput (requests per second meeting the SLO),
// ties broken by the lower p99 TTFT, means over seeds.
const ranking = "request goodput (then lower p99 TTFT), as 'servelab report' ranks"

// ChooseOptions say which of an experiment's policies to deploy: Best, or the one whose
// label (as the report shows it, e.g. "least-request / lru") is Policy.
type ChooseOptions struct {
	Best   bool
	Policy string
	// RateScale, when not 0, picks the results at that rate scale of a spec that sweeps
	// rate_scale; --pick best needs it there, since each rate has its own winner.
	RateScale float64
}

// Choice is the policy chosen from an experiment.
type Choice struct {
	// Experiment is the experiment directory read.
	Experiment *report.Experiment
	// Result is the policy's aggregate at the rate scale chosen.
	Result *experiments.PolicyResult
	// Label is the policy's label as the report shows it.
	Label string
	// Why says why this policy: its rank and metric, for the command to print.
	Why string
	// Warnings are things to beware of: failed cells, a win within the confidence
	// intervals.
	Warnings []string
}

// Choose reads an experiment directory (what 'servelab run' writes) and picks a policy.
func Choose(dir string, o ChooseOptions) (*Choice, error) {
	if o.Best == (o.Policy != "") {
		return nil, errors.New("give one of --pick best and --policy LABEL")
	}
	if st, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--from %s: no such experiment directory ('servelab run SPEC' writes runs/NAME)", dir)
	} else if err != nil {
		return nil, fmt.Errorf("--from %s: %w", dir, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("--from %s: not a directory (give the experiment directory, runs/NAME)", dir)
	}
	exp, err := report.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("--from %w", err)
	}
	rates := exp.RateScales()
	if len(rates) == 0 {
		return nil, fmt.Errorf("--from %s: results.json lists no policies", dir)
	}
	if o.RateScale != 0 && !slices.Contains(rates, o.RateScale) {
		return nil, fmt.Errorf("--rate-scale %v: the experiment ran at %s", o.RateScale, rateList(rates))
	}
	if o.Best {
		return chooseBest(exp, rates, o.RateScale)
	}
	return choosePolicy(exp, rates, o)
}

func chooseBest(exp *report.Experiment, rates []float64, rate float64) (*Choice, error) {
	if rate == 0 {
		if len(rates) > 1 {
			return nil, fmt.Errorf("--pick best: experiment %s sweeps rate_scale (%s) and each rate has its own winner; give --rate-scale",
				exp.Name(), rateList(rates))
		}
		rate = rates[0]
	}
	// results.json holds each rate's policies ranked as the report ranks them.
	var ranked []*experiments.PolicyResult
	failed := 0
	for i := range exp.Results.Policies {
		p := &exp.Results.Policies[i]
		if p.RateScale != rate {
			continue
		}
		if p.Seeds == 0 {
			failed++
			continue
		}
		ranked = append(ranked, p)
	}
	if len(ranked) == 0 {
		return nil, fmt.Errorf("--from %s: no policy finished a cell%s (%d policies, all cells failed: see results.json's errors, rerun with 'servelab run')",
			exp.Dir, atRate(rates, rate), failed)
	}
	w := ranked[0]
	c := &Choice{Experiment: exp, Result: w, Label: w.Name()}
	c.Why = fmt.Sprintf("ranked 1st of %d by %s%s: goodput %s req/s, p99 TTFT %s ms over %s",
		len(ranked), ranking, atRate(rates, rate), report.FormatStat(w.RequestGoodput, w.Seeds, 1),
		report.FormatStat(w.P99TTFTMs, w.Seeds, 1), seedsText(w.Seeds))
	if len(ranked) > 1 {
		r := ranked[1]
		d := math.Abs(w.RequestGoodput.Mean - r.RequestGoodput.Mean)
		switch {
		case d == 0:
			c.Warnings = append(c.Warnings, fmt.Sprintf("tied on goodput with the runner-up %s; the lower p99 TTFT decided (%s against %s ms)",
				r.Name(), report.FormatStat(w.P99TTFTMs, w.Seeds, 1), report.FormatStat(r.P99TTFTMs, r.Seeds, 1)))
		case (w.RequestGoodput.CI95 > 0 || r.RequestGoodput.CI95 > 0) && d <= w.RequestGoodput.CI95+r.RequestGoodput.CI95:
			c.Warnings = append(c.Warnings, fmt.Sprintf("the runner-up %s (goodput %s req/s) is within the 95%% confidence intervals: not a clear win",
				r.Name(), report.FormatStat(r.RequestGoodput, r.Seeds, 1)))
		}
	}
	if failed > 0 {
		c.Warnings = append(c.Warnings, fmt.Sprintf("%d other policies finished no cell and were not ranked", failed))
	}
	c.Warnings = append(c.Warnings, failedWarning(w)...)
	return c, nil
}

func choosePolicy(exp *report.Experiment, rates []float64, o ChooseOptions) (*Choice, error) {
	want := normLabel(o.Policy)
	var labels []string
	var found []*experiments.PolicyResult
	for i := range exp.Results.Policies {
		p := &exp.Results.Policies[i]
		if !slices.Contains(labels, p.Name()) {
			labels = append(labels, p.Name())
		}
		if normLabel(p.Name()) == want && (o.RateScale == 0 || p.RateScale == o.RateScale) {
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("--policy %q: experiment %s has no such policy; its policies are: %s", o.Policy, exp.Name(), quoteList(labels))
	}
	// Without --rate-scale, the results at the highest rate where it finished.
	var p *experiments.PolicyResult
	for _, q := range found {
		if q.Seeds > 0 && (p == nil || q.RateScale > p.RateScale) {
			p = q
		}
	}
	if p == nil {
		return nil, fmt.Errorf("--policy %q: no cell of it finished%s (%d failed); see results.json's errors", o.Policy,
			atRate(rates, found[0].RateScale), found[0].FailedCells)
	}
	rank, n := 0, 0
	for i := range exp.Results.Policies {
		q := &exp.Results.Policies[i]
		if q.RateScale == p.RateScale && q.Seeds > 0 {
			n++
			if q == p {
				rank = n
			}
		}
	}
	c := &Choice{Experiment: exp, Result: p, Label: p.Name()}
	c.Why = fmt.Sprintf("ranked %s of %d by %s%s: goodput %s req/s, p99 TTFT %s ms over %s", ordinal(rank), n, ranking,
		atRate(rates, p.RateScale), report.FormatStat(p.RequestGoodput, p.Seeds, 1), report.FormatStat(p.P99TTFTMs, p.Seeds, 1), seedsText(p.Seeds))
	c.Warnings = failedWarning(p)
	return c, nil
}

func failedWarning(p *experiments.PolicyResult) []string {
	if p.FailedCells == 0 {
		return nil
	}
	return []string{fmt.Sprintf("%d of its cells failed; its figures are over the %d that finished", p.FailedCells, p.Seeds)}
}

// normLabel compares labels without their spaces: "least-request/lru" names
// "least-request / lru".
func normLabel(s string) string { return strings.Join(strings.Fields(s), "") }

func atRate(rates []float64, rate float64) string {
	if len(rates) < 2 {
		return ""
	}
	return " at rate ×" + strconv.FormatFloat(rate, 'g', -1, 64)
}

func rateList(rates []float64) string {
	var s []string
	for _, r := range rates {
		s = append(s, "×"+strconv.FormatFloat(r, 'g', -1, 64))
	}
	return strings.Join(s, ", ")
}

func quoteList(labels []string) string {
	q := make([]string, len(labels))
	for i, l := range labels {
		q[i] = strconv.Quote(l)
	}
	return strings.Join(q, ", ")
}

func seedsText(n int) string {
	if n == 1 {
		return "1 seed"
	}
	return strconv.Itoa(n) + " seeds"
}

func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return strconv.Itoa(n) + suffix
}
