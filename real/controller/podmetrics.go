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

// podCounts is what a pod reported at the previous scrape.
type podCounts struct{ finished, load float64 }

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
	m.mu.Lock()
	if m.prev == nil {
		m.prev = map[types.NamespacedName]map[types.UID]podCounts{}
	}
	m.prev[key] = now
	m.mu.Unlock()
	return o, nil
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

// scrape reads one engine's vLLM gauges and finished-request counter.
func scrape(ctx context.Context, hc *http.Client, url string) (engineSample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return engineSample{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return engineSample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return engineSample{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return engineSample{}, fmt.Errorf("GET %s: %w", url, err)
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
