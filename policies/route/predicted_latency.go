package route

import (
	"fmt"
	"math"
	"strconv"

	"servelab/policies"
	"servelab/serving"
)

// PredictedLatencyScorerType is llm-d's SLO-aware scorer (llm-d-inference-scheduler's
// SLOAwareRouterPluginType, "predicted-latency-scorer"; GIE's slo-aware-routing plugin,
// pkg/epp/scheduling/framework/plugins/multi/slo_aware_router).
const PredictedLatencyScorerType = "predicted-latency-scorer"

// Headroom selection strategies of llm-d's predicted-latency-scorer
// (headroomSelectionStrategy): least packs requests onto the endpoints closest to their
// SLO, keeping others free; most spreads them onto those farthest from it.
const (
	HeadroomStrategyLeast = "least"
	HeadroomStrategyMost  = "most"
)

// Header names of a request's SLOs in llm-d and GIE (milliseconds).
const (
	TTFTSLOHeader = "x-slo-ttft-ms"
	TPOTSLOHeader = "x-slo-tpot-ms"
)

// PredictedLatencyConfig holds the predicted-latency-scorer's parameters, named as llm-d's
// Config (JSON keys) names them where llm-d has them.
type PredictedLatencyConfig struct {
	// SLOBufferFactor scales the TPOT objective before comparing (llm-d's
	// sloBufferFactor, default 1).
	SLOBufferFactor float64 `json:"sloBufferFactor"`
	// HeadroomTTFTWeight and HeadroomTPOTWeight blend the normalised TTFT and TPOT headroom
	// of endpoints predicted to meet the SLO (llm-d: 0.8 and 0.2).
	HeadroomTTFTWeight float64 `json:"headroomTTFTWeight"`
	HeadroomTPOTWeight float64 `json:"headroomTPOTWeight"`
	// NegHeadroomTTFTWeight and NegHeadroomTPOTWeight blend the deficits of endpoints
	// predicted to miss it (llm-d: 0.8 and 0.2).
	NegHeadroomTTFTWeight float64 `json:"negHeadroomTTFTWeight"`
	NegHeadroomTPOTWeight float64 `json:"negHeadroomTPOTWeight"`
	// HeadroomSelectionStrategy is least (llm-d's default) or most.
	HeadroomSelectionStrategy string `json:"headroomSelectionStrategy"`
	// CompositeKVWeight, CompositeQueueWeight and CompositePrefixWeight weigh free KV,
	// relative queue and prefix hit in the fallback score used when no step-time model is
	// known (llm-d: when the predictor is unavailable; 1 each).
	CompositeKVWeight     float64 `json:"compositeKVWeight"`
	CompositeQueueWeight  float64 `json:"compositeQueueWeight"`
	CompositePrefixWeight float64 `json:"compositePrefixWeight"`
	// MaxNumBatchedTokens is the engines' step token budget (vLLM's
	// --max-num-batched-tokens), which paces the prefill queue ahead of a request. servelab's
	// own; default the engines' (policies.Env.MaxNumBatchedTokens: the simulator's batch
	// policy, or the engine a --latency-profile recorded), else the vllm batch policy's
	// default: 8192 on H100-class GPUs, else 2048.
	MaxNumBatchedTokens int `json:"maxNumBatchedTokens"`
	// TTFTSLOMs and TPOTSLOMs are the objectives of requests that carry none (servelab's
	// own; default the experiment's slo, else none).
	TTFTSLOMs float64 `json:"ttftSLOMs"`
	TPOTSLOMs float64 `json:"tpotSLOMs"`
}

// defaultPredictedLatencyConfig is llm-d's DefaultConfig for the parameters it has, and
// env's facts for servelab's own.
func defaultPredictedLatencyConfig(env policies.Env) PredictedLatencyConfig {
	budget := env.MaxNumBatchedTokens
	switch {
	case budget > 0:
	case env.GPUClass == "h100":
		budget = 8192
	default:
		budget = 2048
	}
	return PredictedLatencyConfig{
		SLOBufferFactor:    1,
		HeadroomTTFTWeight: 0.8, HeadroomTPOTWeight: 0.2,
		NegHeadroomTTFTWeight: 0.8, NegHeadroomTPOTWeight: 0.2,
		HeadroomSelectionStrategy: HeadroomStrategyLeast,
		CompositeKVWeight:         1, CompositeQueueWeight: 1, CompositePrefixWeight: 1,
		MaxNumBatchedTokens: budget,
		TTFTSLOMs:           env.TTFTSLO * 1000,
		TPOTSLOMs:           env.AvgTPOTSLO * 1000,
	}
}

// check validates c; field prefixes the names in errors.
func (c PredictedLatencyConfig) check(field string) error {
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"sloBufferFactor", c.SLOBufferFactor},
		{"headroomTTFTWeight", c.HeadroomTTFTWeight}, {"headroomTPOTWeight", c.HeadroomTPOTWeight},
		{"negHeadroomTTFTWeight", c.NegHeadroomTTFTWeight}, {"negHeadroomTPOTWeight", c.NegHeadroomTPOTWeight},
		{"compositeKVWeight", c.CompositeKVWeight}, {"compositeQueueWeight", c.CompositeQueueWeight},
		{"compositePrefixWeight", c.CompositePrefixWeight},
		{"ttftSLOMs", c.TTFTSLOMs}, {"tpotSLOMs", c.TPOTSLOMs},
	} {
		if !(f.v >= 0) || math.IsInf(f.v, 0) {
			return fmt.Errorf("%s%s: %v is not a non-negative finite number", field, f.name, f.v)
		}
	}
	if !(c.SLOBufferFactor > 0) {
		return fmt.Errorf("%ssloBufferFactor: must be positive, got %v", field, c.SLOBufferFactor)
	}
	if c.HeadroomSelectionStrategy != HeadroomStrategyLeast && c.HeadroomSelectionStrategy != HeadroomStrategyMost {
		return fmt.Errorf("%sheadroomSelectionStrategy: %q is not %s or %s", field, c.HeadroomSelectionStrategy, HeadroomStrategyLeast, HeadroomStrategyMost)
	}
	if c.MaxNumBatchedTokens <= 0 {
		return fmt.Errorf("%smaxNumBatchedTokens: must be a positive token count, got %d", field, c.MaxNumBatchedTokens)
	}
	return nil
}

// predictedLatencyScorer is llm-d's predicted-latency-scorer with the latency predictor
// replaced by the step-time model: it predicts each endpoint's TTFT and TPOT for the
// request from the endpoint's view and scores endpoints by their headroom against the
// request's SLO, as llm-d scores them (llm-d-router's latency scorer,
// pkg/epp/framework/plugins/scheduling/scorer/latency, and llm-d-inference-scheduler's
// predicted-latency-scorer):
//
//   - headroom = SLO - predicted, per objective (TPOT's SLO times sloBufferFactor);
//   - endpoints meeting both objectives (positive tier) score in (0, 1] by their blended,
//     min-max normalised |headroom| (headroomTTFTWeight / headroomTPOTWeight, a dimension
//     with no spread gives its weight to the other): highest for the least headroom with
//     strategy least, the most with strategy most; every other endpoint scores 0;
//   - when no endpoint meets both, idle endpoints (nothing waiting or running) are
//     preferred; else the best non-empty bucket of TPOT-only misses, TTFT-only misses, both
//     missed, is scored by least blended deficit (negHeadroom weights), the rest 0;
//   - a request with no SLO at all has SLO 0 (llm-d), so the lowest predicted latency wins;
//     a request with one objective is judged on that one (llm-d would count a missing TPOT
//     SLO as 0, so every endpoint misses it);
//   - with no step-time model, the composite fallback: weighted free KV, relative queue and
//     prefix hit.
//
// Scores are llm-d's integer weights over 100. llm-d's random parts (ε-exploration of
// negative-headroom endpoints, the prefix-affinity gate, weighted-random selection) are left
// out: ties go to the weighted policy's seeded picker, so decisions are reproducible.
//
// The prediction is constant-time from serving.InstanceView and what the scorer itself sent
// each endpoint: with r running and w waiting requests, B the step budget, P and O the mean
// prompt and output lengths of the requests this scorer has routed, the request's uncached
// prompt u (its prompt less the endpoint's cached prefix, where the view has a cache) waits
// behind the larger of w*P and the endpoint's backlog (the uncached prompt tokens the scorer
// sent it, drained since at its prefill rate: llm-d likewise tracks its dispatched requests
// per endpoint; the gauges count a prompt in chunked prefill as one running request), which
// steps of r decodes and up to B-r prefill tokens consume: TTFT is those steps' time; TPOT
// is a decode step of r+w+1 sequences of context P+O/2 plus the prefill the endpoint's share
// of the arrival rate brings into it.
type predictedLatencyScorer struct {
	cfg       PredictedLatencyConfig
	model     serving.StepTimeModel
	blockSize int
	// Running sums over routed requests, for the mean prompt and output lengths.
	n, promptSum, outputSum float64
	// Arrivals over the last arrivalWindow seconds, exponentially weighted, and the last
	// arrival time: the cluster's request rate, from the requests' own arrival times.
	recent, lastArrival float64
	// backlog is, per endpoint (by InstanceView.Index), the uncached prompt tokens this
	// scorer sent it that are not yet prefilled, as llm-d's scorer keeps its dispatched
	// requests per endpoint: a prompt in chunked prefill counts as running in the gauges,
	// as if it were decoding, while its remaining chunks hold the prefill queue.
	backlog map[int]*prefillBacklog
	// scratch, one element per view
	ttftH, tpotH []float64
	bucket       []int
}

func newPredictedLatencyScorer(cfg PredictedLatencyConfig, env policies.Env) *predictedLatencyScorer {
	return &predictedLatencyScorer{cfg: cfg, model: env.StepTime, blockSize: max(env.BlockSize, 1)}
}

// means returns the mean prompt and output lengths of routed requests, req's own before any.
func (s *predictedLatencyScorer) means(req *serving.Request) (prompt, output float64) {
	if s.n == 0 {
		return float64(max(req.PromptTokens, 1)), float64(max(req.MaxTokens, 1))
	}
	return s.promptSum / s.n, s.outputSum / s.n
}

// Predict returns the predicted TTFT and TPOT in seconds of req on the endpoint v.
func (s *predictedLatencyScorer) predict(req *serving.Request, v *serving.InstanceView, nViews int) (ttft, tpot float64) {
	meanPrompt, meanOutput := s.means(req)
	ctxPerSeq := meanPrompt + meanOutput/2
	cached := 0
	if v.Cache != nil && len(req.BlockHashes) > 0 {
		cached = min(v.Cache.CachedPrefixBlocks(req.BlockHashes)*s.blockSize, req.PromptTokens-1)
	}
	mine := float64(max(req.PromptTokens-cached, 1))
	r := float64(v.Running)
	chunk := float64(max(s.cfg.MaxNumBatchedTokens-v.Running, 1))
	queued := float64(v.Waiting) * meanPrompt
	if b := s.backlog[v.Index]; b != nil {
		queued = math.Max(queued, b.at(req.Arrival))
	}
	total := queued + mine
	// Query-key pairs per prefill token: each queued prompt's P²/2 and the request's own
	// u*(cached+u/2), spread over the tokens.
	attnPerToken := (float64(v.Waiting)*meanPrompt*meanPrompt/2 + mine*(float64(cached)+mine/2)) / total
	seqsPerChunk := math.Max(1, math.Min(float64(v.Waiting+1), math.Ceil(chunk/meanPrompt)))
	decodeCtx := r * ctxPerSeq
	step := func(prefill float64) float64 {
		if prefill <= 0 {
			return 0
		}
		seqs := math.Min(seqsPerChunk, math.Ceil(prefill))
		return s.model.StepTime(serving.StepShape{
			PrefillTokens:       int(math.Ceil(prefill)),
			PrefillSeqs:         int(seqs),
			DecodeSeqs:          v.Running,
			DecodeContextTokens: int(decodeCtx + r),
			ContextTokens:       int(decodeCtx + r + prefill + seqs*meanPrompt/2),
			PrefillAttention:    prefill * attnPerToken,
		})
	}
	full := math.Floor(total / chunk)
	ttft = full*step(chunk) + step(total-full*chunk)
	// TPOT: a decode step of everything ahead plus the request, into which the prompts
	// arriving meanwhile (this endpoint's share of the cluster's arrival rate) put prefill
	// tokens in proportion to the step's length: T = StepTime(d decodes + rho*T prefill),
	// solved by a few fixed-point iterations, the prefill capped at the step budget.
	d := v.Running + v.Waiting + 1
	dctx := float64(d) * ctxPerSeq
	rho := s.recent / arrivalWindow / float64(max(nViews, 1)) * meanPrompt
	budget := float64(max(s.cfg.MaxNumBatchedTokens-d, 0))
	for k := 0; k < 4; k++ {
		prefill := math.Min(rho*tpot, budget)
		shape := serving.StepShape{
			DecodeSeqs:          d,
			DecodeContextTokens: int(dctx + float64(d)),
			ContextTokens:       int(dctx + float64(d)),
		}
		if prefill >= 1 {
			shape.PrefillTokens, shape.PrefillSeqs = int(prefill), 1
			shape.ContextTokens += int(prefill + meanPrompt/2)
			shape.PrefillAttention = prefill * meanPrompt / 2
		}
		tpot = s.model.StepTime(shape)
		if rho == 0 {
			break
		}
	}
	return ttft, tpot
}

// arrivalWindow is the time constant in seconds of the arrival-rate estimate.
const arrivalWindow = 10.0

// Latency buckets of an endpoint's headroom.
const (
	bucketPositive = iota
	bucketNegTPOT  // misses only TPOT
	bucketNegTTFT  // misses only TTFT
	bucketNegBoth
)

func (s *predictedLatencyScorer) score(req *serving.Request, views []serving.InstanceView, out []float64) {
	if s.model == nil {
		s.composite(req, views, out)
		return
	}
	n := len(views)
	if cap(s.ttftH) < n {
		s.ttftH, s.tpotH, s.bucket = make([]float64, n), make([]float64, n), make([]int, n)
	}
	ttftH, tpotH, bucket := s.ttftH[:n], s.tpotH[:n], s.bucket[:n]
	ttftSLO, tpotSLO := req.TTFTSLO, req.AvgTPOTSLO
	if ttftSLO == 0 && tpotSLO == 0 {
		ttftSLO, tpotSLO = s.cfg.TTFTSLOMs/1000, s.cfg.TPOTSLOMs/1000
	}
	// With no SLO at all both objectives are 0 (llm-d): every endpoint misses and the
	// lowest predicted latency wins. With one, the other is not an objective.
	judgeTTFT := ttftSLO > 0 || tpotSLO == 0
	judgeTPOT := tpotSLO > 0 || ttftSLO == 0
	positive := 0
	for i := range views {
		ttft, tpot := s.predict(req, &views[i], len(views))
		ttftH[i], tpotH[i] = 0, 0
		if judgeTTFT {
			ttftH[i] = ttftSLO - ttft
		}
		if judgeTPOT {
			tpotH[i] = tpotSLO*s.cfg.SLOBufferFactor - tpot
		}
		switch negTTFT, negTPOT := ttftH[i] < 0 || judgeTTFT && ttftSLO == 0, tpotH[i] < 0 || judgeTPOT && tpotSLO == 0; {
		case negTTFT && negTPOT:
			bucket[i] = bucketNegBoth
		case negTTFT:
			bucket[i] = bucketNegTTFT
		case negTPOT:
			bucket[i] = bucketNegTPOT
		default:
			bucket[i] = bucketPositive
			positive++
		}
	}
	clear(out)
	if positive > 0 {
		s.scoreBucket(views, out, func(i int) bool { return bucket[i] == bucketPositive }, false)
		return
	}
	// Every endpoint misses: an idle one first (llm-d prefers endpoints with no dispatched
	// requests), then the least severe bucket by least deficit.
	idle := false
	for i := range views {
		idle = idle || views[i].Load() == 0
	}
	if idle {
		s.scoreBucket(views, out, func(i int) bool { return views[i].Load() == 0 }, true)
		return
	}
	for _, b := range []int{bucketNegTPOT, bucketNegTTFT, bucketNegBoth} {
		found := false
		for i := range views {
			found = found || bucket[i] == b
		}
		if found {
			s.scoreBucket(views, out, func(i int) bool { return bucket[i] == b }, true)
			return
		}
	}
}

// scoreBucket scores the endpoints in a bucket by blended, normalised |headroom| (llm-d's
// scoreBucket); negative (a deficit bucket) forces the least strategy and the negHeadroom
// weights.
func (s *predictedLatencyScorer) scoreBucket(views []serving.InstanceView, out []float64, in func(int) bool, negative bool) {
	const wMax, eps = 100, 1e-9
	alpha, beta := s.cfg.HeadroomTTFTWeight, s.cfg.HeadroomTPOTWeight
	if negative {
		alpha, beta = s.cfg.NegHeadroomTTFTWeight, s.cfg.NegHeadroomTPOTWeight
	}
	if sum := alpha + beta; sum > 0 {
		alpha, beta = alpha/sum, beta/sum
	} else {
		alpha, beta = 1, 0
	}
	minT, maxT := math.Inf(1), math.Inf(-1)
	minP, maxP := math.Inf(1), math.Inf(-1)
	for i := range views {
		if !in(i) {
			continue
		}
		t, p := math.Abs(s.ttftH[i]), math.Abs(s.tpotH[i])
		minT, maxT = math.Min(minT, t), math.Max(maxT, t)
		minP, maxP = math.Min(minP, p), math.Max(maxP, p)
	}
	rangeT, rangeP := maxT-minT, maxP-minP
	switch {
	case rangeT <= eps && rangeP > eps:
		alpha, beta = 0, 1
	case rangeP <= eps && rangeT > eps:
		alpha, beta = 1, 0
	}
	least := negative || s.cfg.HeadroomSelectionStrategy != HeadroomStrategyMost
	for i := range views {
		if !in(i) {
			continue
		}
		nT, nP := 0.5, 0.5
		if rangeT > eps {
			nT = (math.Abs(s.ttftH[i]) - minT) / rangeT
		}
		if rangeP > eps {
			nP = (math.Abs(s.tpotH[i]) - minP) / rangeP
		}
		combined := alpha*nT + beta*nP
		if least {
			combined = 1 - combined
		}
		out[i] = float64(int(combined*wMax)+1) / wMax
	}
}

// composite is llm-d's fallback score without predictions: weighted free KV, relative
// queue ((maxQ-q)/maxQ, 1 when no queue) and prefix hit fraction, as an integer over 100.
func (s *predictedLatencyScorer) composite(req *serving.Request, views []serving.InstanceView, out []float64) {
	wkv, wq, wp := s.cfg.CompositeKVWeight, s.cfg.CompositeQueueWeight, s.cfg.CompositePrefixWeight
	sum := wkv + wq + wp
	if sum <= 0 {
		wkv, wq, wp, sum = 1, 0, 0, 1
	}
	maxQ := 0
	for i := range views {
		maxQ = max(maxQ, views[i].Waiting)
	}
	for i := range views {
		q := 1.0
		if maxQ > 0 {
			q = float64(maxQ-views[i].Waiting) / float64(maxQ)
		}
		prefix := 0.0
		if views[i].Cache != nil && len(req.BlockHashes) > 0 {
			prefix = float64(views[i].Cache.CachedPrefixBlocks(req.BlockHashes)) / float64(len(req.BlockHashes))
		}
		c := (wkv*(1-views[i].KVUsage) + wq*q + wp*prefix) / sum
		out[i] = math.Round(100*c) / 100
	}
}

// prefillBacklog is the uncached prompt tokens sent to one endpoint and not yet prefilled,
// drained at the endpoint's prefill rate from the time of the last request sent to it.
type prefillBacklog struct {
	tokens, at0, rate float64
}

// at returns the backlog left at time t.
func (b *prefillBacklog) at(t float64) float64 {
	return math.Max(0, b.tokens-b.rate*math.Max(0, t-b.at0))
}

// picked learns the routed request's lengths for the means the prediction uses, and adds
// its uncached prompt to the endpoint's prefill backlog.
func (s *predictedLatencyScorer) picked(req *serving.Request, v *serving.InstanceView) {
	if s.model != nil {
		if s.backlog == nil {
			s.backlog = map[int]*prefillBacklog{}
		}
		b := s.backlog[v.Index]
		if b == nil {
			b = &prefillBacklog{}
			s.backlog[v.Index] = b
		}
		cached := 0
		if v.Cache != nil && len(req.BlockHashes) > 0 {
			cached = min(v.Cache.CachedPrefixBlocks(req.BlockHashes)*s.blockSize, req.PromptTokens-1)
		}
		// Prefill tokens per second: a full step's prefill chunk beside the running decodes.
		chunk := max(s.cfg.MaxNumBatchedTokens-v.Running, 1)
		if t := s.model.StepTime(serving.StepShape{PrefillTokens: chunk, PrefillSeqs: 1, DecodeSeqs: v.Running,
			ContextTokens: chunk + v.Running, DecodeContextTokens: v.Running,
			PrefillAttention: float64(chunk) * float64(chunk) / 2}); t > 0 {
			b.rate = float64(chunk) / t
		}
		b.tokens = b.at(req.Arrival) + float64(max(req.PromptTokens-cached, 1))
		b.at0 = req.Arrival
	}
	if gap := req.Arrival - s.lastArrival; s.n > 0 && gap >= 0 {
		s.recent *= math.Exp(-gap / arrivalWindow)
	}
	s.recent++
	s.lastArrival = req.Arrival
	s.n++
	s.promptSum += float64(max(req.PromptTokens, 1))
	s.outputSum += float64(max(req.MaxTokens, 1))
}

// predictedLatencyParams are the compact weighted spec's parameters of the scorer.
var predictedLatencyParams = []policies.Param{
	{Name: "headroom_strategy", Default: HeadroomStrategyLeast, Doc: "predicted-latency-scorer's headroomSelectionStrategy: least (pack) or most (spread)"},
	{Name: "slo_buffer_factor", Default: "1", Doc: "predicted-latency-scorer's sloBufferFactor, scaling the TPOT objective"},
	{Name: "ttft_slo_ms", Default: "the experiment's slo", Doc: "TTFT objective of requests without x-slo-ttft-ms / x-slo-tpot-ms (0: none)"},
	{Name: "tpot_slo_ms", Default: "the experiment's slo", Doc: "TPOT objective of requests without x-slo-ttft-ms / x-slo-tpot-ms (0: none)"},
	{Name: "max_num_batched_tokens", Default: "the engines' (else 8192 on h100/h200, 2048 otherwise)", Doc: "the engines' step token budget, pacing the predicted prefill queue"},
}

// predictedLatencyFromParams reads the compact spec's scorer parameters.
func predictedLatencyFromParams(p *policies.Params, env policies.Env) PredictedLatencyConfig {
	cfg := defaultPredictedLatencyConfig(env)
	cfg.HeadroomSelectionStrategy = p.String("headroom_strategy", cfg.HeadroomSelectionStrategy)
	p.Check(cfg.HeadroomSelectionStrategy == HeadroomStrategyLeast || cfg.HeadroomSelectionStrategy == HeadroomStrategyMost,
		"headroom_strategy", HeadroomStrategyLeast+" or "+HeadroomStrategyMost)
	cfg.SLOBufferFactor = p.Float("slo_buffer_factor", cfg.SLOBufferFactor)
	p.Check(cfg.SLOBufferFactor > 0 && !math.IsInf(cfg.SLOBufferFactor, 0), "slo_buffer_factor", "a positive finite number")
	cfg.TTFTSLOMs = p.Float("ttft_slo_ms", cfg.TTFTSLOMs)
	p.Check(cfg.TTFTSLOMs >= 0 && !math.IsInf(cfg.TTFTSLOMs, 0), "ttft_slo_ms", "a non-negative number of milliseconds")
	cfg.TPOTSLOMs = p.Float("tpot_slo_ms", cfg.TPOTSLOMs)
	p.Check(cfg.TPOTSLOMs >= 0 && !math.IsInf(cfg.TPOTSLOMs, 0), "tpot_slo_ms", "a non-negative number of milliseconds")
	cfg.MaxNumBatchedTokens = p.Int("max_num_batched_tokens", cfg.MaxNumBatchedTokens)
	p.Check(cfg.MaxNumBatchedTokens > 0, "max_num_batched_tokens", "a positive token count")
	return cfg
}

// UsesPredictedLatency reports whether p scores with the predicted-latency-scorer, which
// needs a step-time model (policies.Env.StepTime) to predict rather than fall back.
func UsesPredictedLatency(p Policy) bool {
	switch p := p.(type) {
	case *Weighted:
		for _, s := range p.scorers {
			if _, ok := s.scorer.(*predictedLatencyScorer); ok {
				return true
			}
		}
	case *PDProfileHandler:
		return UsesPredictedLatency(p.Decode) || p.Prefill != nil && UsesPredictedLatency(p.Prefill)
	}
	return false
}

// ParseSLOHeader reads an x-slo-ttft-ms or x-slo-tpot-ms value: milliseconds, a
// non-negative number; it returns seconds.
func ParseSLOHeader(name, value string) (float64, error) {
	ms, err := strconv.ParseFloat(value, 64)
	if err != nil || !(ms >= 0) || math.IsInf(ms, 0) {
		return 0, fmt.Errorf("header %s: %q is not a non-negative number of milliseconds", name, value)
	}
	return ms / 1000, nil
}

// predictedLatencyFromEPP reads a predicted-latency-scorer's parameters from an
// EndpointPickerConfig: llm-d's names (sloBufferFactor, headroomTTFTWeight, ...) and
// servelab's (maxNumBatchedTokens, ttftSLOMs, tpotSLOMs). llm-d's parameters of its
// predictor sidecars and sampling (samplingMean, maxSampledTokens, contextTTL,
// streamingMode) are accepted and have nothing to configure here; its random exploration
// and affinity gate (epsilonExploreSticky, epsilonExploreNeg, affinityGateTau,
// affinityGateTauGlobal) and selectionMode are refused unless off, since servelab's scorer
// is deterministic and leaves picking to the picker.
func predictedLatencyFromEPP(raw []byte, field string, env policies.Env) (PredictedLatencyConfig, error) {
	cfg := defaultPredictedLatencyConfig(env)
	var p struct {
		PredictedLatencyConfig
		SamplingMean          *float64 `json:"samplingMean"`
		MaxSampledTokens      *int     `json:"maxSampledTokens"`
		ContextTTL            *string  `json:"contextTTL"`
		StreamingMode         *bool    `json:"streamingMode"`
		EpsilonExploreSticky  *float64 `json:"epsilonExploreSticky"`
		EpsilonExploreNeg     *float64 `json:"epsilonExploreNeg"`
		AffinityGateTau       *float64 `json:"affinityGateTau"`
		AffinityGateTauGlobal *float64 `json:"affinityGateTauGlobal"`
		SelectionMode         *string  `json:"selectionMode"`
	}
	p.PredictedLatencyConfig = cfg
	if err := decodeParams(raw, &p, field); err != nil {
		return cfg, err
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{{"epsilonExploreSticky", p.EpsilonExploreSticky}, {"epsilonExploreNeg", p.EpsilonExploreNeg},
		{"affinityGateTau", p.AffinityGateTau}, {"affinityGateTauGlobal", p.AffinityGateTauGlobal}} {
		if f.v != nil && *f.v != 0 {
			return cfg, fmt.Errorf("%s.%s: %v; servelab's predicted-latency-scorer is deterministic (no exploration or affinity gate): give 0 or leave it out, and weigh a prefix-cache-scorer for affinity", field, f.name, *f.v)
		}
	}
	if p.SelectionMode != nil && *p.SelectionMode != "max" {
		return cfg, fmt.Errorf("%s.selectionMode: %q; servelab's scorer scores and the profile's picker picks (max-score-picker is llm-d's \"max\"): leave it out or give \"max\"", field, *p.SelectionMode)
	}
	cfg = p.PredictedLatencyConfig
	return cfg, cfg.check(field + ".")
}
