package main

import (
	"fmt"
	"io"
	"math"
	"reflect"

	"servelab/metrics"
	"servelab/serving"
)

// fidelityRepeat is one repeat of a router's comparison: one run of the real cluster and
// the simulator's predictions of it, all with the repeat's seed (the router's draws, the
// batch and evict policies' and the prompts' contents).
type fidelityRepeat struct {
	Seed uint64 `json:"seed"`
	// Scheduled is the simulator's prediction on the slice's scheduled arrivals, what
	// `servelab sim` predicts before anything is measured; Predicted is its prediction on
	// the arrivals the load generator measured (when it actually sent each request), the
	// like-for-like comparison with Measured.
	Scheduled metrics.Summary  `json:"predicted_scheduled"`
	Predicted metrics.Summary  `json:"predicted"`
	Measured  metrics.Summary  `json:"measured"`
	Failures  metrics.Failures `json:"failures,omitempty"`
	// SendLag is how late the load generator sent the requests.
	SendLag sendLag `json:"send_lag"`
	// StepTimeRatio is the engines' measured step time over what the simulator's latency
	// model gives for the same steps.
	StepTimeRatio float64 `json:"measured_over_modelled_step_time"`
	Steps         int     `json:"engine_steps"`
	// Explain is --explain's comparison of the two worlds' schedules.
	Explain *explainReport `json:"explain,omitempty"`
	// CPU is the repeat's wall and CPU time per process and the host's load (fidelity_cpu.go).
	CPU *runCPU `json:"cpu,omitempty"`
	// PredictedPerEngine and MeasuredPerEngine count the requests each engine served in
	// each world (measured: from the router's serving.ServedEndpointHeader).
	PredictedPerEngine []int `json:"predicted_requests_per_engine,omitempty"`
	MeasuredPerEngine  []int `json:"measured_requests_per_engine,omitempty"`
	// SameEngine is the fraction of requests routed to the same engine in both worlds; -1
	// when the router did not say.
	SameEngine float64 `json:"same_engine_fraction"`
	// ServerInfo is each engine's resolved configuration as it reported it (GET
	// /server_info) before the repeat; the run stops unless each equals the run's Engine.
	ServerInfo []serving.EngineConfig `json:"server_info,omitempty"`
}

// addRepeat appends a repeat to the report's run of cfg, starting one when the last run
// is another configuration's.
func (rep *fidelityReport) addRepeat(cfg *fidelityConfig, r fidelityRepeat) {
	if n := len(rep.Runs); n == 0 || rep.Runs[n-1].Label != cfg.Label {
		rep.Runs = append(rep.Runs, fidelityRun{Router: cfg.Router, Batch: cfg.Batch, Evict: cfg.Evict, Label: cfg.Label, Engine: cfg.Engine})
	}
	run := &rep.Runs[len(rep.Runs)-1]
	run.Repeats = append(run.Repeats, r)
	run.summarize()
}

// summarize sets the run's summaries from its repeats: the mean of every metric over the
// repeats (percentiles too: the mean of each repeat's percentile), except Completed, the
// fewest any repeat completed, and Failed, the most that failed; failures are added up.
func (run *fidelityRun) summarize() {
	pick := func(get func(*fidelityRepeat) metrics.Summary) metrics.Summary {
		s := make([]metrics.Summary, len(run.Repeats))
		for i := range run.Repeats {
			s[i] = get(&run.Repeats[i])
		}
		return meanSummary(s)
	}
	run.Scheduled = pick(func(r *fidelityRepeat) metrics.Summary { return r.Scheduled })
	run.Predicted = pick(func(r *fidelityRepeat) metrics.Summary { return r.Predicted })
	run.Measured = pick(func(r *fidelityRepeat) metrics.Summary { return r.Measured })
	run.Failures, run.Steps, run.StepTimeRatio = nil, 0, 0
	for _, r := range run.Repeats {
		for kind, f := range r.Failures {
			if run.Failures == nil {
				run.Failures = metrics.Failures{}
			}
			c := run.Failures[kind]
			if c.Count == 0 {
				c.FirstError = f.FirstError
			}
			c.Count += f.Count
			run.Failures[kind] = c
		}
		run.Steps += r.Steps
		run.StepTimeRatio += r.StepTimeRatio / float64(len(run.Repeats))
	}
}

// meanSummary is the field-by-field mean of summaries (see fidelityRun.summarize).
func meanSummary(s []metrics.Summary) metrics.Summary {
	var out metrics.Summary
	if len(s) == 0 {
		return out
	}
	ov := reflect.ValueOf(&out).Elem()
	for f := range ov.NumField() {
		field := ov.Type().Field(f).Name
		var sum float64
		lo, hi := math.Inf(1), math.Inf(-1)
		for i := range s {
			v := reflect.ValueOf(s[i]).Field(f)
			var x float64
			switch v.Kind() {
			case reflect.Float64:
				x = v.Float()
			case reflect.Int, reflect.Int64:
				x = float64(v.Int())
			default:
				continue
			}
			sum += x
			lo, hi = min(lo, x), max(hi, x)
		}
		mean := sum / float64(len(s))
		switch o := ov.Field(f); o.Kind() {
		case reflect.Float64:
			o.SetFloat(mean)
		case reflect.Int, reflect.Int64:
			switch field {
			case "Completed":
				o.SetInt(int64(lo))
			case "Failed":
				o.SetInt(int64(hi))
			default:
				o.SetInt(int64(math.Round(mean)))
			}
		}
	}
	return out
}

// spread is the values' range relative to their mean: (max - min) / mean; 0 for fewer
// than two values or a zero mean.
func spread(values []float64) float64 {
	if len(values) < 2 {
		return 0
	}
	lo, hi, sum := values[0], values[0], 0.0
	for _, v := range values {
		lo, hi, sum = min(lo, v), max(hi, v), sum+v
	}
	mean := sum / float64(len(values))
	if mean == 0 {
		return 0
	}
	return (hi - lo) / math.Abs(mean)
}

// worldValues returns a metric's value in each repeat of a run, predicted or measured.
func worldValues(run *fidelityRun, predicted bool, get func(*metrics.Summary) float64) []float64 {
	v := make([]float64, len(run.Repeats))
	for i := range run.Repeats {
		if predicted {
			v[i] = get(&run.Repeats[i].Predicted)
		} else {
			v[i] = get(&run.Repeats[i].Measured)
		}
	}
	return v
}

// Verdicts of a ranking of two routers by one metric.
const (
	verdictAgrees      = "agrees"       // decided, and measured beyond noise in the same order
	verdictDisagrees   = "DISAGREES"    // decided, and measured beyond noise in the other order
	verdictUnconfirmed = "unconfirmed"  // decided, but the measured gap is within noise
	verdictWithinNoise = "within noise" // neither world's gap exceeds the noise
	verdictMissed      = "missed"       // the measured gap exceeds the noise, the predicted does not
)

// pairRanking compares two routers by one metric in both worlds.
type pairRanking struct {
	A      string `json:"a"`
	B      string `json:"b"`
	Metric string `json:"metric"`
	// PredictedGap and MeasuredGap are (A - B) over the pair's mean, of the means over
	// repeats; negative when A's value is lower.
	PredictedGap float64 `json:"predicted_gap"`
	MeasuredGap  float64 `json:"measured_gap"`
	// Noise is the largest run-to-run spread (range over mean, spread) of A's or B's
	// value, in either world.
	Noise float64 `json:"noise"`
	// Decided is set when the predicted gap exceeds the noise: the simulator ranks the
	// pair by more than a rerun could move either router.
	Decided bool   `json:"decided"`
	Verdict string `json:"verdict"`
}

// rankPair judges the ranking of A and B by one metric from their values in each repeat.
func rankPair(predA, predB, measA, measB []float64) pairRanking {
	gap := func(a, b []float64) float64 {
		ma, mb := mean(a), mean(b)
		if ma+mb == 0 {
			return 0
		}
		return (ma - mb) / (math.Abs(ma+mb) / 2)
	}
	r := pairRanking{PredictedGap: gap(predA, predB), MeasuredGap: gap(measA, measB),
		Noise: max(spread(predA), spread(predB), spread(measA), spread(measB))}
	r.Decided = math.Abs(r.PredictedGap) > r.Noise
	measuredDecided := math.Abs(r.MeasuredGap) > r.Noise
	switch {
	case r.Decided && !measuredDecided:
		r.Verdict = verdictUnconfirmed
	case r.Decided && (r.PredictedGap > 0) == (r.MeasuredGap > 0):
		r.Verdict = verdictAgrees
	case r.Decided:
		r.Verdict = verdictDisagrees
	case measuredDecided:
		r.Verdict = verdictMissed
	default:
		r.Verdict = verdictWithinNoise
	}
	return r
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// rankedMetrics are the metrics routers are ranked by: lower is better for each.
var rankedMetrics = []struct {
	name string
	get  func(*metrics.Summary) float64
}{
	{"mean TTFT", func(s *metrics.Summary) float64 { return s.MeanTTFTMs }},
	{"mean TPOT", func(s *metrics.Summary) float64 { return s.MeanTPOTMs }},
	{"mean E2EL", func(s *metrics.Summary) float64 { return s.MeanE2ELMs }},
}

// rankings judges every pair of routers by each ranked metric.
func rankings(runs []fidelityRun) []pairRanking {
	var out []pairRanking
	for i := range runs {
		for j := i + 1; j < len(runs); j++ {
			a, b := &runs[i], &runs[j]
			for _, m := range rankedMetrics {
				r := rankPair(worldValues(a, true, m.get), worldValues(b, true, m.get),
					worldValues(a, false, m.get), worldValues(b, false, m.get))
				r.A, r.B, r.Metric = a.Label, b.Label, m.name
				out = append(out, r)
			}
		}
	}
	return out
}

// printRankings prints the pairwise rankings and which are decided.
func printRankings(w io.Writer, rep *fidelityReport) {
	rs := rep.Rankings
	if len(rs) == 0 {
		return
	}
	repeats := 0
	if len(rep.Runs) > 0 {
		repeats = len(rep.Runs[0].Repeats)
	}
	fmt.Fprintf(w, "\nRankings: gap = (A - B) / their mean (negative: A lower, better); noise = the largest run-to-run\n")
	fmt.Fprintf(w, "spread of A's or B's value in either world over %d repeats; decided = predicted gap beyond noise.\n", repeats)
	if repeats < 2 {
		fmt.Fprintf(w, "With one repeat there is no noise estimate: every nonzero gap counts as decided.\n")
	}
	width := len("A vs B")
	for _, r := range rs {
		width = max(width, len(r.A)+len(r.B)+4)
	}
	fmt.Fprintf(w, "%-*s  %-9s %10s %10s %8s  %s\n", width, "A vs B", "metric", "predicted", "measured", "noise", "verdict")
	counts := map[string]int{}
	for _, r := range rs {
		fmt.Fprintf(w, "%-*s  %-9s %+9.1f%% %+9.1f%% %7.1f%%  %s\n", width, r.A+" vs "+r.B, r.Metric,
			100*r.PredictedGap, 100*r.MeasuredGap, 100*r.Noise, r.Verdict)
		counts[r.Verdict]++
	}
	decided := counts[verdictAgrees] + counts[verdictUnconfirmed] + counts[verdictDisagrees]
	fmt.Fprintf(w, "Decided: %d of %d rankings: %d agree, %d unconfirmed (measured within noise), %d disagree.\n",
		decided, len(rs), counts[verdictAgrees], counts[verdictUnconfirmed], counts[verdictDisagrees])
	fmt.Fprintf(w, "Within noise: %d", len(rs)-decided)
	if n := counts[verdictMissed]; n > 0 {
		fmt.Fprintf(w, ", of which the measurement separates %d beyond noise (missed)", n)
	}
	fmt.Fprintln(w, ".")
}

// fidelityJob is one repeat of one compared configuration (an index into them).
type fidelityJob struct {
	config int
	repeat int
}

// fidelityJobs lists each configuration's repeats in turn, in the order given.
func fidelityJobs(configs []fidelityConfig, repeats int) []fidelityJob {
	var jobs []fidelityJob
	for i := range configs {
		for k := range repeats {
			jobs = append(jobs, fidelityJob{i, k})
		}
	}
	return jobs
}

// scheduledValues returns a metric's value in each repeat's prediction on the scheduled
// arrivals.
func scheduledValues(run *fidelityRun, get func(*metrics.Summary) float64) []float64 {
	v := make([]float64, len(run.Repeats))
	for i := range run.Repeats {
		v[i] = get(&run.Repeats[i].Scheduled)
	}
	return v
}
