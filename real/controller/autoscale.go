package controller

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"servelab/api/v1alpha1"
	"servelab/policies"
	"servelab/policies/scale"
)

// Event reasons and condition reasons of autoscaling, the HorizontalPodAutoscaler's.
const (
	// EventSuccessfulRescale: the policy changed the engine Deployment's replicas.
	EventSuccessfulRescale = "SuccessfulRescale"
	// ReasonValidMetricFound: ScalingActive is True, the policy decided from the metrics.
	ReasonValidMetricFound = "ValidMetricFound"
	// ReasonFailedGetMetrics: ScalingActive is False, the engines' metrics (with metric=slo,
	// the routers' too) could not be read; the replicas stay as they are.
	ReasonFailedGetMetrics = "FailedGetMetrics"
)

// Metrics reads what a scaling policy needs from an LLMService's engine pool.
type Metrics interface {
	// Observe returns the engine pool's Waiting and Running (vllm:num_requests_waiting
	// and vllm:num_requests_running summed over the ready engines), KVUsage (the mean of
	// their vllm:kv_cache_usage_perc) and Arrived (the requests that reached them since the
	// previous call for svc); with metric=slo also Finished and MetSLO (the requests the
	// routers finished since the previous call, and those that met their SLO). Time,
	// Replicas and Ready are filled in by the caller.
	Observe(ctx context.Context, svc *v1alpha1.LLMService) (scale.Observation, error)
}

// autoscaled is one LLMService's scaler, kept across reconciles.
type autoscaled struct {
	// spec and uid identify what the scaler was built for; a change rebuilds it.
	spec string
	uid  types.UID
	// start is the scaler's time zero; next is when the next decision is due.
	start, next time.Time
	scaler      *scale.Scaler
}

// autoscalers holds the scalers of the LLMServices with spec.autoscale, by namespace/name.
type autoscalers struct {
	mu sync.Mutex
	m  map[types.NamespacedName]*autoscaled
}

// forgetScaler drops an LLMService's scaler (and what its metrics source kept of it),
// when it is deleted or no longer autoscaled.
func (r *Reconciler) forgetScaler(key types.NamespacedName) {
	r.scalers.mu.Lock()
	_, had := r.scalers.m[key]
	delete(r.scalers.m, key)
	r.scalers.mu.Unlock()
	if !had {
		return
	}
	if f, ok := r.metrics().(interface{ Forget(types.NamespacedName) }); ok {
		f.Forget(key)
	}
}

// parseAutoscale builds spec.autoscale's policy as the simulator and 'servelab up' build
// it. Every metric runs here: metric=slo reads the router pods (PodMetrics).
func parseAutoscale(spec string) (scale.Policy, *policyError) {
	p, err := scale.Parse(spec, policies.Env{})
	if err != nil {
		return nil, &policyError{ReasonInvalidPolicy, fmt.Sprintf("spec.autoscale %q: %v", spec, err)}
	}
	return p, nil
}

func (r *Reconciler) now() time.Time {
	if r.Clock != nil {
		return r.Clock()
	}
	return time.Now()
}

// autoscale runs svc's scaling policy when a decision is due and returns the engine
// replicas to deploy and how long until the next decision. cur is the engine Deployment as
// it is (nil before the first deployment). It records the decision in status.
func (r *Reconciler) autoscale(ctx context.Context, svc *v1alpha1.LLMService, cur *v1alpha1.LLMServiceStatus, engineReady, engineReplicas int32, deployed bool) (int32, time.Duration) {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	now := r.now()
	r.scalers.mu.Lock()
	if r.scalers.m == nil {
		r.scalers.m = map[types.NamespacedName]*autoscaled{}
	}
	st := r.scalers.m[key]
	if st == nil || st.spec != svc.Spec.Autoscale || st.uid != svc.UID {
		pol, perr := parseAutoscale(svc.Spec.Autoscale) // resolvePolicy checked it
		if perr != nil {
			r.scalers.mu.Unlock()
			return *replicas(svc.Spec.Replicas), 0
		}
		lo, hi := pol.Bounds()
		st = &autoscaled{spec: svc.Spec.Autoscale, uid: svc.UID, start: now, scaler: scale.NewScaler(pol, hi, 0)}
		st.next = now.Add(interval(pol))
		// A pool already running (the controller restarted, or spec.autoscale was just
		// added) keeps its replicas within the policy's bounds, all taken as ready.
		if deployed {
			n := min(max(int(engineReplicas), lo), hi)
			for i := lo; i < n; i++ {
				st.scaler.Replicas()[i] = scale.Replica{State: scale.Ready}
			}
		}
		r.scalers.m[key] = st
	}
	r.scalers.mu.Unlock()

	s := st.scaler
	// Pods the Deployment reports ready: the oldest starting slots became ready.
	for s.Count(scale.Ready) < int(engineReady) && s.Count(scale.Starting) > 0 {
		oldest := -1
		for i, rep := range s.Replicas() {
			if rep.State == scale.Starting && (oldest < 0 || rep.Since < s.Replicas()[oldest].Since) {
				oldest = i
			}
		}
		s.MarkReady(oldest, now.Sub(st.start).Seconds())
	}
	pool := func() int32 { return int32(s.Count(scale.Ready) + s.Count(scale.Starting)) }
	if now.Before(st.next) {
		if cur.Autoscale == nil {
			cur.Autoscale = &v1alpha1.AutoscaleStatus{}
		}
		cur.Autoscale.DesiredReplicas = pool()
		return pool(), st.next.Sub(now)
	}
	for !st.next.After(now) {
		st.next = st.next.Add(interval(s.Policy()))
	}
	o, err := r.metrics().Observe(ctx, svc)
	if err != nil {
		if cur.Autoscale == nil {
			cur.Autoscale = &v1alpha1.AutoscaleStatus{}
		}
		cur.Autoscale.DesiredReplicas = pool()
		setCond(cur, v1alpha1.ConditionScalingActive, false, ReasonFailedGetMetrics,
			fmt.Sprintf("reading the pods' metrics: %v; the replicas stay at %d", err, pool()), svc.Generation)
		return pool(), st.next.Sub(now)
	}
	o.Time = now.Sub(st.start).Seconds()
	before := pool()
	o, d, act := s.Observe(o)
	// The ReplicaSet deletes the pods (unready first, then the newest: as Plan drains);
	// a deleted pod leaves the Deployment's count at once, SIGTERM drains it.
	for _, i := range act.Drain {
		s.Stopped(i, o.Time)
	}
	after := pool()
	metric := s.Policy().Spec().Params["metric"]
	stamp := metav1.NewTime(now)
	as := &v1alpha1.AutoscaleStatus{
		DesiredReplicas:  after,
		Metric:           metric + "=" + formatMetric(d.Metric),
		Reason:           d.Reason,
		LastDecisionTime: &stamp,
	}
	if cur.Autoscale != nil {
		as.LastScaleTime = cur.Autoscale.LastScaleTime
	}
	if after != before {
		as.LastScaleTime = &stamp
		r.event(svc, corev1.EventTypeNormal, EventSuccessfulRescale, "Scale",
			fmt.Sprintf("New size: %d; reason: %s %s (%s)", after, metric, formatMetric(d.Metric), d.Reason))
	}
	cur.Autoscale = as
	setCond(cur, v1alpha1.ConditionScalingActive, true, ReasonValidMetricFound,
		fmt.Sprintf("the policy decided %d replicas from %s=%s", after, metric, formatMetric(d.Metric)), svc.Generation)
	return after, st.next.Sub(now)
}

func interval(p scale.Policy) time.Duration {
	return time.Duration(p.Interval() * float64(time.Second))
}

func formatMetric(v float64) string {
	if math.IsNaN(v) {
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}
