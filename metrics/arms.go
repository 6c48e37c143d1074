package metrics

import "servelab/serving"

// Arms summarises the arms of an A/B test apart: each record goes to its arm's collector
// (Record.Arm), so each arm gets every field of Summary under vLLM's names. Both arms ran
// side by side for the whole run, so each arm's throughputs are over the run's duration:
// the arms' request throughputs add up to the run's. Engine counters cannot be told apart
// by arm (an engine serves both), so each arm's prefix-cache hit rate and preemptions come
// from its records: cached over prompt tokens, as the responses' cached_tokens report them,
// and the records' preemptions; both worlds count them alike.
type Arms struct {
	slo SLO
	by  map[string]*armAcc
}

type armAcc struct {
	c   *Collector
	eng EngineCounters
}

// NewArms returns an empty set of arms judged against slo.
func NewArms(slo SLO) *Arms { return &Arms{slo: slo, by: map[string]*armAcc{}} }

func (a *Arms) arm(name string) *armAcc {
	acc := a.by[name]
	if acc == nil {
		acc = &armAcc{c: NewCollector(a.slo)}
		a.by[name] = acc
	}
	return acc
}

// Add takes one record; a record without an arm is not in the test and is left out. The
// methods of a nil *Arms do nothing, so a run without an A/B test may call them.
func (a *Arms) Add(r *serving.Record) {
	if a == nil || r.Arm == "" {
		return
	}
	acc := a.arm(r.Arm)
	acc.c.Add(r)
	if !r.Failed {
		acc.eng.PrefixCacheQueries += int64(r.PromptTokens)
		acc.eng.PrefixCacheHits += int64(r.CachedTokens)
		acc.eng.Preemptions += int64(r.Preemptions)
	}
}

// AddITL takes one inter-token latency, in seconds, of a request in arm.
func (a *Arms) AddITL(arm string, seconds float64) {
	if a != nil && arm != "" {
		a.arm(arm).c.AddITL(seconds)
	}
}

// Summaries returns each arm's summary over a run of duration seconds, or nil when no
// record had an arm.
func (a *Arms) Summaries(duration float64) map[string]*Summary {
	if a == nil || len(a.by) == 0 {
		return nil
	}
	out := make(map[string]*Summary, len(a.by))
	for name, acc := range a.by {
		s := acc.c.Summary(duration, acc.eng)
		out[name] = &s
	}
	return out
}
