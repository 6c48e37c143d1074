package engine

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the engine's Prometheus metrics, with vLLM's names, help texts' meaning,
// labels (model_name, engine) and histogram buckets, so dashboards and routers written for
// vLLM read them unchanged.
type Metrics struct {
	labels prometheus.Labels

	ttft, itl, e2e, queueTime, prefillTime, decodeTime      prometheus.Observer
	promptTokensHist, generationTokensHist, iterationTokens prometheus.Observer
	promptTokens, generationTokens                          prometheus.Counter
	success                                                 *prometheus.CounterVec
	kvLoad                                                  *prometheus.HistogramVec // tiers.go

	reg  prometheus.Registerer
	once sync.Once
}

// vLLM's buckets (vllm/v1/metrics/loggers.py).
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}
	itlBuckets  = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}
	e2eBuckets  = []float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}
)

// tokenBuckets is vLLM's 1-2-5 series up to the model length.
func tokenBuckets(maxLen int) []float64 {
	var out []float64
	for m := 1; ; m *= 10 {
		for _, f := range []int{1, 2, 5} {
			if f*m > maxLen {
				return out
			}
			out = append(out, float64(f*m))
		}
	}
}

// NewMetrics registers the engine's metrics with reg for the served model name.
func NewMetrics(reg prometheus.Registerer, modelName string, maxModelLen int) *Metrics {
	m := &Metrics{labels: prometheus.Labels{"model_name": modelName, "engine": "0"}, reg: reg}
	hist := func(name, help string, buckets []float64) prometheus.Observer {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets, ConstLabels: m.labels})
		reg.MustRegister(h)
		return h
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: m.labels})
		reg.MustRegister(c)
		return c
	}
	m.ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets)
	m.itl = hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets)
	m.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", e2eBuckets)
	m.queueTime = hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", e2eBuckets)
	m.prefillTime = hist("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", e2eBuckets)
	m.decodeTime = hist("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", e2eBuckets)
	m.promptTokensHist = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokenBuckets(maxModelLen))
	m.generationTokensHist = hist("vllm:request_generation_tokens", "Number of generation tokens processed.", tokenBuckets(maxModelLen))
	m.iterationTokens = hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
		[]float64{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384})
	m.promptTokens = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.")
	m.generationTokens = counter("vllm:generation_tokens_total", "Number of generation tokens processed.")
	m.success = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vllm:request_success_total", Help: "Count of successfully processed requests.", ConstLabels: m.labels,
	}, []string{"finished_reason"})
	reg.MustRegister(m.success)
	for _, r := range []string{"stop", "length", "abort"} {
		m.success.WithLabelValues(r)
	}
	return m
}

// bind adds the metrics read from the engine's state snapshot.
func (m *Metrics) bind(e *Engine) {
	m.once.Do(func() {
		gauge := func(name, help string, f func(Stats) float64) {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: m.labels},
				func() float64 { return f(e.Stats()) }))
		}
		counter := func(name, help string, f func(Stats) float64) {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: m.labels},
				func() float64 { return f(e.Stats()) }))
		}
		gauge("vllm:num_requests_running", "Number of requests in model execution batches.", func(s Stats) float64 { return float64(s.Running) })
		gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", func(s Stats) float64 { return float64(s.Waiting) })
		gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", func(s Stats) float64 { return s.KVCacheUsage })
		gauge("servelab:kv_transfer_held_blocks", "KV blocks held for decode engines to pull (prefill/decode disaggregation).", func(s Stats) float64 { return float64(s.KVHeldBlocks) })
		counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.", func(s Stats) float64 { return float64(s.PrefixCacheQueries) })
		counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.", func(s Stats) float64 { return float64(s.PrefixCacheHits) })
		counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", func(s Stats) float64 { return float64(s.Preemptions) })
		m.bindTiers(e)
		// vLLM's CacheConfig.metrics_info (vllm/config/cache.py) writes each field with
		// Python's str(), so booleans read "True"/"False" there and here.
		rc := e.Resolved()
		info := func(name, help string, labels prometheus.Labels) {
			labels["engine"] = "0"
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels})
			g.Set(1)
			m.reg.MustRegister(g)
		}
		info("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", prometheus.Labels{
			"block_size":            strconv.Itoa(rc.BlockSize),
			"num_gpu_blocks":        strconv.Itoa(rc.NumGPUBlocks),
			"enable_prefix_caching": pythonBool(rc.EnablePrefixCaching),
		})
		// The rest of the resolved configuration (GET /server_info has it as JSON).
		info("servelab:engine_config_info", "The engine's resolved scheduling configuration: batch and evict policy specs with every parameter, KV cache and context", prometheus.Labels{
			"batch":                 rc.Batch,
			"evict":                 rc.Evict,
			"block_size":            strconv.Itoa(rc.BlockSize),
			"num_gpu_blocks":        strconv.Itoa(rc.NumGPUBlocks),
			"max_model_len":         strconv.Itoa(rc.MaxModelLen),
			"enable_prefix_caching": pythonBool(rc.EnablePrefixCaching),
		})
	})
}

// pythonBool writes b as Python's str(bool) does.
func pythonBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// observeFinished records a finished request's latencies and counts.
func (m *Metrics) observeFinished(r *request, reason string, now time.Time) {
	m.success.WithLabelValues(reason).Inc()
	if reason == "abort" {
		return
	}
	s := r.seq
	m.e2e.Observe(now.Sub(r.arrival).Seconds())
	m.promptTokens.Add(float64(len(r.Prompt)))
	m.promptTokensHist.Observe(float64(len(r.Prompt)))
	m.generationTokensHist.Observe(float64(s.NumOutput))
	if s.NumOutput > 0 && s.FirstScheduled >= 0 {
		m.prefillTime.Observe(s.FirstToken - s.FirstScheduled)
		m.decodeTime.Observe(max(0, s.Finish-s.FirstToken))
	}
}
