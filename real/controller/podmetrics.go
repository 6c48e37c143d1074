package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"servelab/api/v1alpha1"
	"servelab/policies/scale"
)

// PodMetrics reads an LLMService's engine pods' /metrics directly, as the
// HorizontalPodAutoscaler reads its pods' metrics: every ready engine pod of the decode
// pool is scraped once per decision. The engines rather than the router: the router may
// run several replicas (each with its own view and counters) or none, and each engine's
// gauges are what the router's view is made of anyway.
//
// Arrived is counted from the engines' own series, since vLLM exports no counter of
// requests received: a request that arrived since the last scrape either finished
// (vllm:request_success_total, every finished_reason, aborts included) or is still waiting
// or running, so arrivals = Δ request_success_total + Δ (waiting + running), per pod; a pod
// not seen at the previous scrape counts all it has had.
//
// With metric=slo (and only then, so that the other metrics gain no way to fail) it also
// scrapes the LLMService's ready router pods, since only the router knows requests'
// objectives: Finished and MetSLO are the growth, summed per router pod, of
// servelab_router_slo_requests_total{outcome="met"|"missed"} (Finished = Δmet + Δmissed,
// MetSLO = Δmet), as 'servelab up --autoscale' reads its router. Each router counts the
// requests it proxied, so the sum over routers counts each request once. As for the
// engines' Arrived, a router pod not seen at the previous scrape counts all it has had:
// a router that just became ready has finished few requests, and dropping them would lose
// its first interval's outcomes. A counter that went down (the router's container
// restarted, keeping its pod UID) counts its current value, never a negative growth.
type PodMetrics struct {
	// Client lists the engine pods.
	Client client.Reader
	// HTTP scrapes them (default: a client with a 2 s timeout).
	HTTP *http.Client
	// URL is a pod's /metrics URL (default http://POD_IP:8000/metrics).
	URL func(pod *corev1.Pod) string

	mu   sync.Mutex
	prev map[types.NamespacedName]map[types.UID]podCounts
}

// podCounts is what a pod reported at the previous scrape: an engine its finished
// requests and load, a router its met and missed SLO counts.
type podCounts struct{ finished, load, met, missed float64 }

// growth is how much a counter grew from was to now; one that went down was reset (its
// container restarted) and has counted now since.
func growth(was, now float64) float64 {
	if now < was {
		return now
	}
	return now - was
}

// Observe implements Metrics.
func (m *PodMetrics) Observe(ctx context.Context, svc *v1alpha1.LLMService) (scale.Observation, error) {
	var pods corev1.PodList
	if err := m.Client.List(ctx, &pods, client.InNamespace(svc.Namespace), client.MatchingLabels(selectorLabels(svc.Name, ComponentEngine))); err != nil {
		return scale.Observation{}, fmt.Errorf("listing the engine pods: %w", err)
	}
	hc := m.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 2 * time.Second}
	}
	var o scale.Observation
	now := map[types.UID]podCounts{}
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	m.mu.Lock()
	prev := m.prev[key]
	m.mu.Unlock()
	arrived, ready := 0.0, 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if !podReady(p) {
			continue
		}
		url := "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(EnginePort)) + "/metrics"
		if m.URL != nil {
			url = m.URL(p)
		}
		s, err := scrape(ctx, hc, url)
		if err != nil {
			return scale.Observation{}, fmt.Errorf("pod %s: %w", p.Name, err)
		}
		o.Waiting += int(s.waiting)
		o.Running += int(s.running)
		o.KVUsage += s.kv
		ready++
		c := podCounts{finished: s.finished, load: s.waiting + s.running}
		now[p.UID] = c
		was := prev[p.UID]
		arrived += max(0, c.finished-was.finished+c.load-was.load)
	}
	if ready > 0 {
		o.KVUsage /= float64(ready)
	}
	o.Arrived = int(arrived + 0.5)
	if p, perr := parseAutoscale(svc.Spec.Autoscale); perr == nil && p.Spec().Params["metric"] == string(scale.MetricSLO) {
		finished, met, err := m.routers(ctx, hc, svc, prev, now)
		if err != nil {
			return scale.Observation{}, err
		}
		o.Finished, o.MetSLO = int(finished+0.5), int(met+0.5)
	}
	m.mu.Lock()
	if m.prev == nil {
		m.prev = map[types.NamespacedName]map[types.UID]podCounts{}
	}
	m.prev[key] = now
	m.mu.Unlock()
	return o, nil
}

// routers reads the SLO outcomes of svc's ready router pods: the growth since prev of the
// requests finished and of those that met their SLO, summed over the pods, whose counts it
// records in now. No ready router is an error: the policy would see no request finish.
func (m *PodMetrics) routers(ctx context.Context, hc *http.Client, svc *v1alpha1.LLMService, prev, now map[types.UID]podCounts) (finished, met float64, err error) {
	var pods corev1.PodList
	if err := m.Client.List(ctx, &pods, client.InNamespace(svc.Namespace), client.MatchingLabels(selectorLabels(svc.Name, ComponentRouter))); err != nil {
		return 0, 0, fmt.Errorf("listing the router pods: %w", err)
	}
	ready := 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if !podReady(p) {
			continue
		}
		url := "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(RouterPort)) + "/metrics"
		if m.URL != nil {
			url = m.URL(p)
		}
		c, err := scrapeRouter(ctx, hc, url)
		if err != nil {
			return 0, 0, fmt.Errorf("router pod %s: %w", p.Name, err)
		}
		ready++
		now[p.UID] = c
		was := prev[p.UID]
		dm, dx := growth(was.met, c.met), growth(was.missed, c.missed)
		finished += dm + dx
		met += dm
	}
	if ready == 0 {
		return 0, 0, fmt.Errorf("metric=slo: no ready router pod (%s) to read servelab_router_slo_requests_total from", routerName(svc.Name))
	}
	return finished, met, nil
}

// Forget drops the counts kept of an LLMService's pods.
func (m *PodMetrics) Forget(key types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.prev, key)
}

// podReady: running, Ready, not terminating, with an IP.
func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.PodIP == "" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

type engineSample struct{ waiting, running, kv, finished float64 }

// maxMetricsPage bounds a pod's /metrics page.
const maxMetricsPage = 16 << 20

// getMetrics reads the metric families a pod's /metrics serves.
func getMetrics(ctx context.Context, hc *http.Client, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	// The parser keeps every family it reads: a page past maxMetricsPage (an engine's is
	// tens of KB) is refused rather than held.
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(http.MaxBytesReader(nil, resp.Body, maxMetricsPage))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return mfs, nil
}

// scrapeRouter reads one router's servelab_router_slo_requests_total by outcome. The router
// registers both outcomes from zero, so a router without the series is not one that meters
// SLOs: an error rather than a pool that seems to finish nothing.
func scrapeRouter(ctx context.Context, hc *http.Client, url string) (podCounts, error) {
	mfs, err := getMetrics(ctx, hc, url)
	if err != nil {
		return podCounts{}, err
	}
	mf, ok := mfs["servelab_router_slo_requests_total"]
	if !ok {
		return podCounts{}, errors.New("GET " + url + ": no servelab_router_slo_requests_total")
	}
	var c podCounts
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() != "outcome" {
				continue
			}
			switch l.GetValue() {
			case "met":
				c.met += value(m)
			case "missed":
				c.missed += value(m)
			}
		}
	}
	return c, nil
}

// scrape reads one engine's vLLM gauges and finished-request counter.
func scrape(ctx context.Context, hc *http.Client, url string) (engineSample, error) {
	mfs, err := getMetrics(ctx, hc, url)
	if err != nil {
		return engineSample{}, err
	}
	// Summed over label sets (the engines of a data-parallel pod), but the KV usage is
	// their highest, as the router reads it.
	agg := func(name string, f func(a, b float64) float64) (float64, bool) {
		mf, ok := mfs[name]
		if !ok {
			return 0, false
		}
		v := 0.0
		for _, m := range mf.GetMetric() {
			v = f(v, value(m))
		}
		return v, true
	}
	add := func(a, b float64) float64 { return a + b }
	sum := func(name string) (float64, bool) { return agg(name, add) }
	highest := func(name string) (float64, bool) { return agg(name, func(a, b float64) float64 { return max(a, b) }) }
	var s engineSample
	var ok [3]bool
	s.waiting, ok[0] = sum("vllm:num_requests_waiting")
	s.running, ok[1] = sum("vllm:num_requests_running")
	s.finished, _ = sum("vllm:request_success_total")
	if s.kv, ok[2] = highest("vllm:kv_cache_usage_perc"); !ok[2] {
		s.kv, ok[2] = highest("vllm:gpu_cache_usage_perc") // older vLLM releases
	}
	if !ok[0] || !ok[1] || !ok[2] {
		return engineSample{}, errors.New("GET " + url + ": no vllm:num_requests_waiting, vllm:num_requests_running or vllm:kv_cache_usage_perc")
	}
	return s, nil
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}
