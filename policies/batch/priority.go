package batch

import (
	"servelab/policies"
	"servelab/serving"
)

// before orders sequences as vLLM's priority scheduling does: lower priority value first,
// then earlier arrival, then lower id so the order is total.
func before(a, b *serving.Seq) bool {
	if a.Req.Priority != b.Req.Priority {
		return a.Req.Priority < b.Req.Priority
	}
	if a.Req.Arrival != b.Req.Arrival {
		return a.Req.Arrival < b.Req.Arrival
	}
	return a.Req.ID < b.Req.ID
}

// mostUrgent is the waiting sequence vLLM's priority queue pops first.
func mostUrgent(waiting []*serving.Seq) int {
	best := 0
	for i := 1; i < len(waiting); i++ {
		if before(waiting[i], waiting[best]) {
			best = i
		}
	}
	return best
}

// leastUrgent is vLLM's priority preemption victim: the max of (priority, arrival).
func leastUrgent(running []*serving.Seq) int {
	worst := 0
	for i := 1; i < len(running); i++ {
		if before(running[worst], running[i]) {
			worst = i
		}
	}
	return worst
}

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "priority",
		Doc: "vLLM's priority scheduling: waiting sequences by (priority, arrival), lower first; " +
			"the preemption victim is the running sequence with the largest (priority, arrival)",
		Params: limitParams,
		New: func(p *policies.Params, env policies.Env) (Policy, error) {
			return newContinuous(p, env, continuous{nextWaiting: mostUrgent, victim: leastUrgent}), nil
		},
	})
}
