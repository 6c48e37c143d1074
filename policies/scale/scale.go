// Package scale holds autoscaling policies: how many replicas (engine instances) a pool
// should run, given what its engines report. The simulator asks a policy every Interval
// simulated seconds and adds or drains simulated instances; the real path (servelab up
// --autoscale) asks the same policy object every Interval wall seconds with the metrics the
// engines' /metrics report, and starts or drains engine processes. The policy is pure: the
// caller passes the time in, and the same observations give the same decisions.
//
// The policies follow Kubernetes' HorizontalPodAutoscaler (the algorithm KEDA's
// ScaledObjects and KServe's "hpa"/"keda" autoscaler classes run) and Knative's KPA
// (KServe's serverless default), under their names.
package scale

import (
	"fmt"
	"math"

	"servelab/policies"
)

// Observation is what a pool reports at one instant: what the HPA reads from the metrics
// API (or KEDA from Prometheus), summed over the pool's ready replicas.
type Observation struct {
	// Time is when the observation was taken, in seconds on any clock that does not run
	// backwards (simulated seconds, or wall seconds since the cluster started).
	Time float64
	// Replicas is the replicas the pool is asked to run now: ready, plus those started but
	// not yet ready (loading the model). Draining replicas are not counted. The HPA's
	// currentReplicas (the scale subresource's spec.replicas).
	Replicas int
	// Ready is the replicas that serve (routable); Replicas-Ready are still starting.
	Ready int
	// Waiting and Running are vllm:num_requests_waiting and vllm:num_requests_running
	// summed over the ready replicas.
	Waiting, Running int
	// KVUsage is vllm:kv_cache_usage_perc averaged over the ready replicas, in [0, 1].
	KVUsage float64
	// Finished and MetSLO count the requests that finished since the previous observation,
	// and those of them that met every SLO (metrics.SLO.Met).
	Finished, MetSLO int
	// Arrived counts the requests that reached the router since the previous observation.
	Arrived int
}

// Decision is a policy's answer to one observation.
type Decision struct {
	// Replicas is the desired replicas, within the policy's min and max.
	Replicas int
	// Metric is the metric's value the decision read (per ready replica, or the SLO
	// attainment); NaN when it had none (no ready replica, no finished request).
	Metric float64
	// Reason says why, for logs and reports ("queue 6.5/replica > target 4: 3 -> 5").
	Reason string
}

// Policy decides a pool's replicas. It keeps state across calls (recommendation history,
// windows) and is not safe for concurrent use; a caller serialises its calls and passes
// nondecreasing times.
type Policy interface {
	// Decide returns the desired replicas after observing o.
	Decide(o Observation) Decision
	// Interval is how often, in seconds, the policy wants to be asked (the HPA's sync
	// period, Knative's tick interval).
	Interval() float64
	// Bounds returns the policy's minimum and maximum replicas; a pool starts at min.
	Bounds() (minReplicas, maxReplicas int)
	// Spec returns the policy's resolved spec.
	Spec() policies.Spec
}

// Registry holds every scaling policy by name.
var Registry = policies.NewRegistry[Policy]("scale")

// Parse builds the scaling policy a compact spec names.
func Parse(text string, env policies.Env) (Policy, error) {
	p, _, err := Registry.Parse(text, env)
	return p, err
}

// Metric names the quantity a policy scales on.
type Metric string

// The metrics: vLLM's gauges as KEDA's vLLM examples and llm-d's workload-variant
// autoscaler read them, and the fraction of requests meeting their SLOs.
const (
	// MetricQueue is vllm:num_requests_waiting per ready replica.
	MetricQueue Metric = "queue"
	// MetricRunning is waiting plus running requests per ready replica: Knative's
	// concurrency.
	MetricRunning Metric = "concurrency"
	// MetricKV is vllm:kv_cache_usage_perc averaged over ready replicas, in [0, 1].
	MetricKV Metric = "kv"
	// MetricSLO is the fraction of requests finished in the window that met their SLO.
	MetricSLO Metric = "slo"
	// MetricRPS is requests arriving per second (over the window) per ready replica:
	// Knative's "rps" metric, KEDA's Prometheus scaler on the gateway's request rate.
	MetricRPS Metric = "rps"
)

func parseMetric(p *policies.Params, def Metric) Metric {
	m := Metric(p.String("metric", string(def)))
	switch m {
	case MetricQueue, MetricRunning, MetricKV, MetricSLO, MetricRPS:
	default:
		p.Check(false, "metric", "queue, concurrency, kv, rps or slo")
	}
	return m
}

// perReplica returns the metric's value per ready replica (or attainment for slo), and
// false when there is none to read; w holds the window's rates.
func perReplica(m Metric, o Observation, w windowed) (float64, bool) {
	switch m {
	case MetricSLO:
		return w.attainment, w.attOK
	}
	if o.Ready <= 0 {
		return math.NaN(), false
	}
	switch m {
	case MetricRPS:
		if !w.rateOK {
			return math.NaN(), false
		}
		return w.rate / float64(o.Ready), true
	case MetricQueue:
		return float64(o.Waiting) / float64(o.Ready), true
	case MetricRunning:
		return float64(o.Waiting+o.Running) / float64(o.Ready), true
	default:
		return o.KVUsage, true
	}
}

// window keeps the observations of the last window seconds, for the metrics that are
// rates over a window (as a Prometheus rate() over a range): SLO attainment and rps.
type window struct {
	window float64
	obs    []Observation
	// prev is the time of the newest observation dropped from the window (the start of
	// the interval the oldest kept one's counts cover), valid when dropped is set.
	prev    float64
	dropped bool
}

type windowed struct {
	attainment, rate float64
	attOK, rateOK    bool
}

// add records o and returns the window's attainment (requests finished in the window
// that met the SLO over those finished) and arrival rate, each with whether it exists.
func (w *window) add(o Observation) windowed {
	w.obs = append(w.obs, o)
	cut := 0
	for cut < len(w.obs) && w.obs[cut].Time <= o.Time-w.window {
		w.prev, w.dropped = w.obs[cut].Time, true
		cut++
	}
	w.obs = w.obs[cut:]
	var r windowed
	fin, met, arr := 0, 0, 0
	for _, x := range w.obs {
		fin += x.Finished
		met += x.MetSLO
		arr += x.Arrived
	}
	if fin > 0 {
		r.attainment, r.attOK = float64(met)/float64(fin), true
	}
	// The counts of an observation cover the time since the one before it; the first
	// observation ever has none before it, so its counts are left out of the rate.
	start := w.prev
	if !w.dropped {
		start = w.obs[0].Time
		arr -= w.obs[0].Arrived
	}
	if span := o.Time - start; span > 0 {
		r.rate, r.rateOK = float64(arr)/span, true
	}
	return r
}

// bounds reads and checks min-replicas and max-replicas.
func bounds(p *policies.Params, defMin, defMax int) (int, int) {
	lo := p.Int("min-replicas", defMin)
	hi := p.Int("max-replicas", defMax)
	p.Check(lo >= 1, "min-replicas", "at least 1 (scale to zero is not supported)")
	p.Check(hi >= lo, "max-replicas", fmt.Sprintf("at least min-replicas (%d)", lo))
	return lo, hi
}

func clamp(n, lo, hi int) int { return max(lo, min(hi, n)) }

func positive(v float64) bool { return v > 0 && !math.IsInf(v, 0) }

func nonNegative(v float64) bool { return v >= 0 && !math.IsInf(v, 0) }
