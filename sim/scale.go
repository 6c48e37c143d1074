package sim

import (
	"fmt"
	"math"

	"servelab/engine/core"
	"servelab/engine/kv"
	"servelab/metrics"
	"servelab/policies/evict"
	"servelab/policies/route"
	"servelab/policies/scale"
	"servelab/serving"
)

// Autoscale makes a cluster elastic: a scaling policy (policies/scale) decides every
// Policy.Interval() simulated seconds how many instances the cluster runs, from the ready
// instances' gauges and the SLO attainment of finished requests. Config.Instances are then
// the slots instances can occupy (at least the policy's max-replicas; a draining instance
// keeps its slot until it stops); the cluster starts with min-replicas ready.
//
// A started instance is billed at once and routable ScaleUpDelay seconds later (the model
// load time), with an empty KV cache; a drained one receives no new requests, finishes
// those it has and stops, then costs nothing. The router's per-instance state of a
// stopped instance is dropped (route.InstanceRemover), as the real router does when an
// endpoint leaves.
type Autoscale struct {
	Policy scale.Policy
	// ScaleUpDelay is the seconds from a scale-up decision until the new instance takes
	// requests (servelab up measures a real engine's: README, "Autoscaling").
	ScaleUpDelay float64
	// OnDecision, if set, receives every decision with the observation it was made on and
	// its actions (slot numbers are instance indices).
	OnDecision func(scale.Observation, scale.Decision, scale.Actions) error
}

type scaleState struct {
	cfg     Autoscale
	scaler  *scale.Scaler
	readyAt []float64
	next    float64
	// finished and met count requests finished since the last decision, arrived those
	// that arrived.
	finished, met, arrived int
	// billing: instance-seconds of started (starting, ready, draining) instances.
	billed     int
	billedAt   float64
	instSecs   float64
	maxBilled  int
	ups, downs int
	routable   []serving.InstanceView
}

func (s *simulation) initScale() error {
	a := s.cfg.Autoscale
	switch {
	case a.Policy == nil:
		return fmt.Errorf("sim: autoscale: no policy")
	case !(a.ScaleUpDelay >= 0) || math.IsInf(a.ScaleUpDelay, 0):
		return fmt.Errorf("sim: autoscale: scale-up delay must be 0 or positive seconds, got %v", a.ScaleUpDelay)
	case len(s.cfg.Pools) > 1 || s.cfg.Disagg != nil:
		return fmt.Errorf("sim: autoscale: one pool of instances only (got %d pools)", len(s.cfg.Pools))
	case len(s.cfg.KVTiers) > 0:
		return fmt.Errorf("sim: autoscale: KV-cache tiers are not supported with autoscaling yet")
	}
	if _, hi := a.Policy.Bounds(); hi > len(s.instances) {
		return fmt.Errorf("sim: autoscale: %s allows %d replicas, the cluster has %d instance slots", a.Policy.Spec(), hi, len(s.instances))
	}
	st := &scaleState{cfg: *a, scaler: scale.NewScaler(a.Policy, len(s.instances), 0), readyAt: make([]float64, len(s.instances))}
	st.billed = st.scaler.Count(scale.Ready)
	st.maxBilled = st.billed
	s.scale = st
	return nil
}

// scaleNext is when the next decision is due, +Inf without autoscaling.
func (s *simulation) scaleNext() float64 {
	if s.scale == nil {
		return math.Inf(1)
	}
	return s.scale.next
}

// account bills the started instances up to t.
func (st *scaleState) account(t float64) {
	if t > st.billedAt {
		st.instSecs += float64(st.billed) * (t - st.billedAt)
		st.billedAt = t
	}
}

// promote makes the starting instances whose delay has passed by t ready.
func (s *simulation) promote(t float64) {
	st := s.scale
	for i, r := range st.scaler.Replicas() {
		if r.State == scale.Starting && st.readyAt[i] <= t {
			st.scaler.MarkReady(i, st.readyAt[i])
		}
	}
}

// decide asks the policy at t and applies its decision.
func (s *simulation) decide(t float64) {
	st := s.scale
	st.next = t + st.cfg.Policy.Interval()
	s.promote(t)
	o := scale.Observation{Time: t, Finished: st.finished, MetSLO: st.met, Arrived: st.arrived}
	st.finished, st.met, st.arrived = 0, 0, 0
	ready := 0
	for i, r := range st.scaler.Replicas() {
		if r.State != scale.Ready {
			continue
		}
		v := s.instances[i].core.View()
		o.Waiting += v.Waiting
		o.Running += v.Running
		o.KVUsage += v.KVUsage
		ready++
	}
	if ready > 0 {
		o.KVUsage /= float64(ready)
	}
	o, d, act := st.scaler.Observe(o)
	st.account(t)
	for _, i := range act.Start {
		if err := s.restart(i); err != nil {
			s.fail(err)
			return
		}
		st.readyAt[i] = t + st.cfg.ScaleUpDelay
		st.billed++
		st.ups++
	}
	if st.cfg.ScaleUpDelay == 0 {
		s.promote(t)
	}
	for range act.Cancel {
		st.billed--
		st.downs++
	}
	for _, i := range act.Drain {
		st.downs++
		if in := &s.instances[i]; !in.busy && in.core.Idle() {
			s.stop(i, t)
		}
	}
	st.maxBilled = max(st.maxBilled, st.billed)
	if st.cfg.OnDecision != nil && s.err == nil {
		s.err = st.cfg.OnDecision(o, d, act)
	}
}

// stop ends draining instance i at t: it leaves the bill and the router forgets it.
func (s *simulation) stop(i int, t float64) {
	st := s.scale
	st.account(t)
	st.scaler.Stopped(i, t)
	st.billed--
	if r, ok := s.cfg.Router.(route.InstanceRemover); ok {
		r.RemoveInstance(i)
	}
}

// idle is called when instance i has nothing left to run at t: a draining one stops.
func (s *simulation) idle(i int, t float64) {
	if s.scale != nil && s.scale.scaler.Replicas()[i].State == scale.Draining && s.instances[i].core.Idle() {
		s.stop(i, t)
	}
}

// restart gives slot i a fresh engine: a started instance loads the model with an empty
// KV cache, whatever the slot held before.
func (s *simulation) restart(i int) error {
	in := &s.instances[i]
	if in.busy || !in.core.Idle() {
		return fmt.Errorf("sim: autoscale: slot %d restarted while it still has requests", i)
	}
	b, err := s.cfg.NewBatch(i)
	if err != nil {
		return err
	}
	var e evict.Policy
	if s.cfg.NewEvict != nil {
		if e, err = s.cfg.NewEvict(i); err != nil {
			return err
		}
	}
	kc := kv.Config{NumBlocks: in.blocks, BlockSize: s.cfg.BlockSize, EnablePrefixCaching: s.cfg.PrefixCaching, Evict: e}
	if in.kv != nil {
		in.kv = newKVIndex(in.blocks)
		kc.Events = in.kv.collect
	}
	c, err := core.New(core.Config{Index: i, Batch: b, KV: kc})
	if err != nil {
		return err
	}
	in.core = c
	// A new engine reports an empty queue, also to a router that read the slot's old one.
	in.gauges = serving.InstanceView{}
	s.scraped[i] = serving.InstanceView{}
	return nil
}

// countArrival feeds the arrival rate of the next decision.
func (s *simulation) countArrival() {
	if s.scale != nil {
		s.scale.arrived++
	}
}

// routable returns the views of the instances that take requests: all of them, or with
// autoscaling the ready ones (those whose scale-up delay has passed by t).
func (s *simulation) routable(t float64) []serving.InstanceView {
	if s.scale == nil {
		return s.views
	}
	s.promote(t)
	out := s.scale.routable[:0]
	for i, r := range s.scale.scaler.Replicas() {
		if r.State == scale.Ready {
			out = append(out, s.views[i])
		}
	}
	s.scale.routable = out
	return out
}

// countFinished feeds the SLO attainment of the next decision.
func (s *simulation) countFinished(r *serving.Record) {
	if s.scale == nil {
		return
	}
	s.scale.finished++
	if !r.Failed && s.cfg.SLO.Met(r) {
		s.scale.met++
	}
}

// scaleSummary closes the bill at end and reports the cluster's size over the run.
func (s *simulation) scaleSummary(end float64) *metrics.Autoscale {
	st := s.scale
	st.account(end)
	a := &metrics.Autoscale{
		Policy:        st.cfg.Policy.Spec().String(),
		ScaleUpDelayS: st.cfg.ScaleUpDelay,
		InstanceHours: st.instSecs / 3600,
		MaxInstances:  st.maxBilled,
		ScaleUps:      st.ups,
		ScaleDowns:    st.downs,
	}
	a.MinReplicas, a.MaxReplicas = st.cfg.Policy.Bounds()
	if end > 0 {
		a.MeanInstances = st.instSecs / end
	}
	return a
}

// instanceCounts returns the started (billed) and ready instances now.
func (s *simulation) instanceCounts() (started, ready int) {
	if s.scale == nil {
		return len(s.instances), len(s.instances)
	}
	return s.scale.billed, s.scale.scaler.Count(scale.Ready)
}

// scaledCost bills the pool's GPUs only while instances were started.
func (s *simulation) scaledCost(a *metrics.Autoscale) *metrics.Cost {
	if len(s.cfg.Pools) == 0 || s.cfg.Pools[0].GPUs == 0 {
		return nil
	}
	p := s.cfg.Pools[0]
	c := &metrics.Cost{GPUHours: a.InstanceHours * float64(p.GPUs)}
	c.USD = c.GPUHours * p.PricePerGPUHour
	if c.USD > 0 {
		c.GoodputPerDollar = float64(s.collector.Good()) / c.USD
	}
	return c
}
