package scale

import (
	"fmt"
	"math"
	"strconv"

	"servelab/policies"
)

// KPA is Knative's Pod Autoscaler, KServe's default for serverless InferenceServices
// (knative.dev/serving pkg/autoscaler/scaling/autoscaler.go, Scale): the metric (total
// concurrency, or requests per second, over the ready replicas) is averaged over a stable
// window and over a panic window (panic-window-percentage of it);
//
//	stable = ceil(stable average / (target x utilization)), panic likewise,
//
// each bounded to [floor(ready / max-scale-down-rate), ceil(ready x max-scale-up-rate)].
// When panic/ready reaches panic-threshold-percentage the autoscaler panics: it follows the
// panic count and never scales down, until a whole stable window passes below the
// threshold. The result is the highest of the last scale-down-delay seconds, within
// [min-scale, max-scale]. No scale to zero: min-scale is at least 1.
type KPA struct {
	metric              Metric
	target, util        float64
	stableWin, panicWin float64
	panicThreshold      float64
	upRate, downRate    float64
	delay, interval     float64
	minScale, maxScale  int
	samples             []sample
	panicSince          float64 // -Inf when not panicking
	maxPanic            int
	delayed             []timed
	spec                policies.Spec
	lastTime            float64
	haveLast            bool
}

type sample struct {
	t       float64
	value   float64 // total concurrency at t
	arrived int     // requests since the previous sample
}

func init() {
	Registry.Register(policies.Entry[Policy]{
		Name: "kpa",
		Doc:  "Knative's Pod Autoscaler (KServe's serverless default): stable and panic windows over concurrency or rps, panic mode, scale rates",
		Params: []policies.Param{
			{Name: "metric", Default: "concurrency", Doc: "concurrency (waiting+running requests) or rps (requests arriving per second), per replica (autoscaling.knative.dev/metric)"},
			{Name: "target", Default: "100", Doc: "the metric's target per replica (autoscaling.knative.dev/target)"},
			{Name: "target-utilization-percentage", Default: "70", Doc: "% of target to aim at (autoscaling.knative.dev/target-utilization-percentage)"},
			{Name: "window", Default: "60", Doc: "seconds: the stable window (autoscaling.knative.dev/window)"},
			{Name: "panic-window-percentage", Default: "10", Doc: "the panic window, % of the stable window"},
			{Name: "panic-threshold-percentage", Default: "200", Doc: "panic when the panic window's desired replicas reach this % of the ready ones"},
			{Name: "max-scale-up-rate", Default: "1000", Doc: "at most ready x this replicas after one decision"},
			{Name: "max-scale-down-rate", Default: "2", Doc: "at least ready / this replicas after one decision"},
			{Name: "scale-down-delay", Default: "0", Doc: "seconds: scale down only to the highest decision of this long (autoscaling.knative.dev/scale-down-delay)"},
			{Name: "min-scale", Default: "1", Doc: "fewest replicas (autoscaling.knative.dev/min-scale; the pool starts with it)"},
			{Name: "max-scale", Default: "4", Doc: "most replicas (autoscaling.knative.dev/max-scale)"},
			{Name: "interval", Default: "2", Doc: "seconds between decisions (the autoscaler's tick-interval)"},
		},
		New: newKPA,
	})
}

func newKPA(p *policies.Params, _ policies.Env) (Policy, error) {
	k := &KPA{panicSince: math.Inf(-1)}
	k.metric = Metric(p.String("metric", string(MetricRunning)))
	p.Check(k.metric == MetricRunning || k.metric == MetricRPS, "metric", "concurrency or rps")
	k.target = p.Float("target", 100)
	k.util = p.Float("target-utilization-percentage", 70) / 100
	k.stableWin = p.Float("window", 60)
	k.panicWin = k.stableWin * p.Float("panic-window-percentage", 10) / 100
	k.panicThreshold = p.Float("panic-threshold-percentage", 200) / 100
	k.upRate = p.Float("max-scale-up-rate", 1000)
	k.downRate = p.Float("max-scale-down-rate", 2)
	k.delay = p.Float("scale-down-delay", 0)
	k.minScale = p.Int("min-scale", 1)
	k.maxScale = p.Int("max-scale", 4)
	k.interval = p.Float("interval", 2)
	p.Check(positive(k.target), "target", "a positive number")
	p.Check(k.util > 0 && k.util <= 1, "target-utilization-percentage", "in (0, 100]")
	p.Check(positive(k.stableWin), "window", "a positive number of seconds")
	p.Check(k.panicWin > 0 && k.panicWin <= k.stableWin, "panic-window-percentage", "in (0, 100]")
	p.Check(k.panicThreshold > 1, "panic-threshold-percentage", "above 100")
	p.Check(k.upRate > 1 && !math.IsInf(k.upRate, 0), "max-scale-up-rate", "above 1")
	p.Check(k.downRate > 1 && !math.IsInf(k.downRate, 0), "max-scale-down-rate", "above 1")
	p.Check(nonNegative(k.delay), "scale-down-delay", "0 or more seconds")
	p.Check(k.minScale >= 1, "min-scale", "at least 1 (scale to zero is not supported)")
	p.Check(k.maxScale >= k.minScale, "max-scale", fmt.Sprintf("at least min-scale (%d)", k.minScale))
	p.Check(positive(k.interval), "interval", "a positive number of seconds")
	k.spec = p.Resolved()
	return k, nil
}

// Interval implements Policy.
func (k *KPA) Interval() float64 { return k.interval }

// Bounds implements Policy.
func (k *KPA) Bounds() (int, int) { return k.minScale, k.maxScale }

// Spec implements Policy.
func (k *KPA) Spec() policies.Spec { return k.spec }

// average returns the metric's total over the replicas averaged over the last w seconds:
// the mean of the concurrency samples in it, or the arrivals in it over its span; false
// when the window holds too little.
func (k *KPA) average(now, w float64) (float64, bool) {
	if k.metric == MetricRunning {
		sum, n := 0.0, 0
		for _, s := range k.samples {
			if s.t > now-w {
				sum += s.value
				n++
			}
		}
		if n == 0 {
			return 0, false
		}
		return sum / float64(n), true
	}
	// rps: a sample's arrivals cover the time since the previous sample.
	arr, start := 0, math.NaN()
	for i, s := range k.samples {
		if i > 0 && s.t > now-w {
			if math.IsNaN(start) {
				start = k.samples[i-1].t
			}
			arr += s.arrived
		}
	}
	if math.IsNaN(start) || now <= start {
		return 0, false
	}
	return float64(arr) / (now - start), true
}

// Decide implements Policy.
func (k *KPA) Decide(o Observation) Decision {
	if k.haveLast && o.Time < k.lastTime {
		o.Time = k.lastTime
	}
	k.lastTime, k.haveLast = o.Time, true
	now := o.Time
	k.samples = append(k.samples, sample{t: now, value: float64(o.Waiting + o.Running), arrived: o.Arrived})
	cut := 0
	for cut < len(k.samples)-1 && k.samples[cut+1].t <= now-k.stableWin {
		cut++ // keep one sample before the window: rps needs its time
	}
	k.samples = k.samples[cut:]
	cur := o.Replicas
	ready := float64(max(o.Ready, 1))
	stableAvg, ok := k.average(now, k.stableWin)
	panicAvg, pok := k.average(now, k.panicWin)
	d := Decision{Metric: math.NaN()}
	if !ok || !pok {
		d.Replicas = clamp(cur, k.minScale, k.maxScale)
		d.Reason = fmt.Sprintf("%s: no value yet: hold %d -> %d", k.metric, cur, d.Replicas)
		return d
	}
	d.Metric = stableAvg / ready
	per := k.target * k.util
	maxUp := int(math.Ceil(k.upRate * ready))
	maxDown := int(math.Floor(ready / k.downRate))
	stable := clamp(int(math.Ceil(stableAvg/per)), maxDown, maxUp)
	panicN := clamp(int(math.Ceil(panicAvg/per)), maxDown, maxUp)
	over := float64(panicN)/ready >= k.panicThreshold
	switch {
	case over:
		if math.IsInf(k.panicSince, -1) {
			k.maxPanic = 0
		}
		k.panicSince = now
	case !math.IsInf(k.panicSince, -1) && now >= k.panicSince+k.stableWin:
		k.panicSince, k.maxPanic = math.Inf(-1), 0
	}
	desired := stable
	mode := "stable"
	if !math.IsInf(k.panicSince, -1) {
		mode = "panic"
		// No scaling down while panicking; and the stable count if it is the larger.
		k.maxPanic = max(k.maxPanic, panicN, stable, cur)
		desired = k.maxPanic
	}
	if k.delay > 0 {
		k.delayed = append(k.delayed, timed{now, desired})
		c := 0
		for c < len(k.delayed) && k.delayed[c].t <= now-k.delay {
			c++
		}
		k.delayed = k.delayed[c:]
		for _, x := range k.delayed {
			desired = max(desired, x.n)
		}
	}
	d.Replicas = clamp(desired, k.minScale, k.maxScale)
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
	d.Reason = fmt.Sprintf("%s %s (stable %s, panic %s over %s ready) vs target %s x %s: %s %d, panic %d: %d -> %d",
		k.metric, f(d.Metric), f(stableAvg), f(panicAvg), f(ready), f(k.target), f(k.util), mode, stable, panicN, cur, d.Replicas)
	return d
}
