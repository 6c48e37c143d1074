package scale

import (
	"fmt"
	"math"
	"strconv"

	"servelab/policies"
)

// HPA is Kubernetes' HorizontalPodAutoscaler algorithm with an AverageValue target, as
// KEDA's ScaledObjects and KServe's "hpa" and "keda" autoscaler classes run it
// (k8s.io/kubernetes pkg/controller/podautoscaler: replica_calculator.go for the
// desired count, horizontal.go stabilizeRecommendationWithBehaviors and
// convertDesiredReplicasWithBehaviorRate for the behavior fields):
//
//	ratio = metric / target          (slo: (1 - attainment) / (1 - target))
//	desired = ceil(ratio * ready)    unless |ratio - 1| <= tolerance (then unchanged)
//
// A ratio above 1 never shrinks a pool whose starting replicas are not ready yet, nor one
// below 1 grows it (the HPA does not reverse direction because of unready pods). The
// recommendation is then stabilised: it is at least the lowest recommendation of the last
// scale-up-window seconds and at most the highest of the last scale-down-window seconds
// (behavior.scaleUp/scaleDown.stabilizationWindowSeconds; the HPA's defaults 0 and 300);
// then rate-limited as the HPA's default behavior policies do (up: at most
// max(scale-up-pods, scale-up-percent% of the replicas) added per period; down: at most
// scale-down-percent% removed per period); then clamped to [min-replicas, max-replicas].
type HPA struct {
	metric                Metric
	target, tolerance     float64
	minReplicas, maxRepl  int
	upWindow, downWindow  float64
	interval, period      float64
	upPods                int
	upPercent, downPct    float64
	win                   window
	recs                  []timed // recommendations before stabilisation
	events                []timed // replica changes (signed) the policy made
	spec                  policies.Spec
	lastTime              float64
	haveLast, haveDecided bool
}

type timed struct {
	t float64
	n int
}

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "hpa",
		Doc:  "Kubernetes' HorizontalPodAutoscaler (as KEDA and KServe's hpa/keda classes run it): desired = ceil(ready x metric/target), tolerance, stabilization windows, rate limits",
		Params: []policies.Param{
			{Name: "metric", Default: "queue", Doc: "queue (vllm:num_requests_waiting per replica), concurrency (waiting+running per replica), kv (mean vllm:kv_cache_usage_perc, 0-1), rps (requests arriving per second per replica over window: Knative's rps) or slo (fraction of requests meeting the SLO over window)"},
			{Name: "target", Default: "4", Doc: "the metric's target value per replica (slo: the attainment to hold, e.g. 0.95; kv: a fraction, e.g. 0.7)"},
			{Name: "tolerance", Default: "0.1", Doc: "no change while |metric/target - 1| is within it (--horizontal-pod-autoscaler-tolerance)"},
			{Name: "min-replicas", Default: "1", Doc: "fewest replicas (minReplicas; the pool starts with it)"},
			{Name: "max-replicas", Default: "4", Doc: "most replicas (maxReplicas)"},
			{Name: "scale-up-window", Default: "0", Doc: "seconds: behavior.scaleUp.stabilizationWindowSeconds"},
			{Name: "scale-down-window", Default: "300", Doc: "seconds: behavior.scaleDown.stabilizationWindowSeconds (the cooldown before shrinking)"},
			{Name: "scale-up-pods", Default: "4", Doc: "behavior.scaleUp policy Pods: replicas that may be added per period"},
			{Name: "scale-up-percent", Default: "100", Doc: "behavior.scaleUp policy Percent: % of replicas that may be added per period (the larger of the two applies)"},
			{Name: "scale-down-percent", Default: "100", Doc: "behavior.scaleDown policy Percent: % of replicas that may be removed per period"},
			{Name: "period", Default: "15", Doc: "seconds: the behavior policies' periodSeconds"},
			{Name: "interval", Default: "15", Doc: "seconds between decisions (--horizontal-pod-autoscaler-sync-period; KEDA's pollingInterval)"},
			{Name: "window", Default: "60", Doc: "seconds metric=slo and metric=rps average over (a Prometheus rate's range)"},
		},
		New: newHPA,
	})
}

func newHPA(p *policies.Params, _ policies.Env) (Policy, error) {
	h := &HPA{metric: parseMetric(p, MetricQueue)}
	h.target = p.Float("target", 4)
	h.tolerance = p.Float("tolerance", 0.1)
	h.minReplicas, h.maxRepl = bounds(p, 1, 4)
	h.upWindow = p.Float("scale-up-window", 0)
	h.downWindow = p.Float("scale-down-window", 300)
	h.upPods = p.Int("scale-up-pods", 4)
	h.upPercent = p.Float("scale-up-percent", 100)
	h.downPct = p.Float("scale-down-percent", 100)
	h.period = p.Float("period", 15)
	h.interval = p.Float("interval", 15)
	h.win.window = p.Float("window", 60)
	if h.metric == MetricSLO {
		p.Check(h.target > 0 && h.target < 1, "target", "an attainment between 0 and 1 (exclusive) for metric=slo")
	} else {
		p.Check(positive(h.target), "target", "a positive number")
	}
	if h.metric == MetricKV {
		p.Check(h.target <= 1, "target", "a fraction of the KV cache, at most 1, for metric=kv")
	}
	p.Check(h.tolerance >= 0 && h.tolerance < 1, "tolerance", "between 0 and 1")
	p.Check(nonNegative(h.upWindow), "scale-up-window", "0 or more seconds")
	p.Check(nonNegative(h.downWindow), "scale-down-window", "0 or more seconds")
	p.Check(h.upPods >= 0, "scale-up-pods", "0 or more")
	p.Check(nonNegative(h.upPercent), "scale-up-percent", "0 or more")
	p.Check(h.upPods > 0 || h.upPercent > 0, "scale-up-pods", "positive, or scale-up-percent positive (else the pool never grows)")
	p.Check(h.downPct >= 0 && h.downPct <= 100, "scale-down-percent", "between 0 and 100")
	p.Check(positive(h.period), "period", "a positive number of seconds")
	p.Check(positive(h.interval), "interval", "a positive number of seconds")
	p.Check(positive(h.win.window), "window", "a positive number of seconds")
	h.spec = p.Resolved()
	return h, nil
}

// Interval implements Policy.
func (h *HPA) Interval() float64 { return h.interval }

// Bounds implements Policy.
func (h *HPA) Bounds() (int, int) { return h.minReplicas, h.maxRepl }

// Spec implements Policy.
func (h *HPA) Spec() policies.Spec { return h.spec }

// Decide implements Policy.
func (h *HPA) Decide(o Observation) Decision {
	if h.haveLast && o.Time < h.lastTime {
		o.Time = h.lastTime // a clock must not run backwards; hold it
	}
	h.lastTime, h.haveLast = o.Time, true
	cur := o.Replicas
	value, ok := perReplica(h.metric, o, h.win.add(o))
	d := Decision{Metric: value}
	raw := cur
	var ratio float64
	if ok {
		if h.metric == MetricSLO {
			ratio = (1 - value) / (1 - h.target)
		} else {
			ratio = value / h.target
		}
		if math.Abs(ratio-1) > h.tolerance {
			raw = int(math.Ceil(ratio * float64(o.Ready)))
			if ratio > 1 && raw < cur || ratio < 1 && raw > cur {
				raw = cur // unready replicas would reverse the direction: hold
			}
		}
	}
	// stabilizeRecommendationWithBehaviors.
	up, down := raw, raw
	for _, r := range h.recs {
		if r.t > o.Time-h.upWindow {
			up = min(up, r.n)
		}
		if r.t > o.Time-h.downWindow {
			down = max(down, r.n)
		}
	}
	h.recs = append(h.recs, timed{o.Time, raw})
	keep := max(h.upWindow, h.downWindow)
	cut := 0
	for cut < len(h.recs) && h.recs[cut].t <= o.Time-keep {
		cut++
	}
	h.recs = h.recs[cut:]
	stab := cur
	if stab < up {
		stab = up
	}
	if stab > down {
		stab = down
	}
	// convertDesiredReplicasWithBehaviorRate: limits from the replicas at the start of
	// the period, before the changes this policy made within it.
	added, removed := 0, 0
	cut = 0
	for cut < len(h.events) && h.events[cut].t <= o.Time-h.period {
		cut++
	}
	h.events = h.events[cut:]
	for _, e := range h.events {
		if e.n > 0 {
			added += e.n
		} else {
			removed -= e.n
		}
	}
	upStart := cur - added
	upLimit := max(upStart+h.upPods, int(math.Ceil(float64(upStart)*(1+h.upPercent/100))))
	downStart := cur + removed
	downLimit := int(math.Ceil(float64(downStart) * (1 - h.downPct/100)))
	desired := stab
	if desired > upLimit {
		desired = upLimit
	}
	if desired < downLimit {
		desired = downLimit
	}
	desired = clamp(desired, h.minReplicas, h.maxRepl)
	if desired != cur {
		h.events = append(h.events, timed{o.Time, desired - cur})
	}
	d.Replicas = desired
	d.Reason = h.reason(value, ok, ratio, raw, stab, cur, desired)
	return d
}

func (h *HPA) reason(value float64, ok bool, ratio float64, raw, stab, cur, desired int) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
	if !ok {
		return fmt.Sprintf("%s: no value (no ready replica or finished request): hold %d -> %d", h.metric, cur, desired)
	}
	s := fmt.Sprintf("%s %s vs target %s (ratio %s): recommend %d", h.metric, f(value), f(h.target), f(ratio), raw)
	if stab != raw {
		s += fmt.Sprintf(", stabilized %d", stab)
	}
	return s + fmt.Sprintf(": %d -> %d", cur, desired)
}
