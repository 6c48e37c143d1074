package latency

import (
	"errors"
	"fmt"
	"math"

	"servelab/serving"
)

// LinearCoefficients define a step's duration as an intercept plus a non-negative cost per
// unit of each of the step shape's features, in seconds:
//
//	t = intercept_s
//	  + per_prefill_token_s × PrefillTokens     (linear layers of prefill chunks)
//	  + per_prefill_seq_s × PrefillSeqs         (per-request work: logits, sampling, metadata)
//	  + per_decode_seq_s × DecodeSeqs           (a decode token's linear layers, logits, sampling)
//	  + per_context_token_s × ContextTokens     (reading the KV cache)
//	  + per_prefill_attention_pair_s × PrefillAttention  (causal attention of prefill chunks)
type LinearCoefficients struct {
	Intercept        float64 `json:"intercept_s"`
	PrefillToken     float64 `json:"per_prefill_token_s"`
	PrefillSeq       float64 `json:"per_prefill_seq_s"`
	DecodeSeq        float64 `json:"per_decode_seq_s"`
	ContextToken     float64 `json:"per_context_token_s"`
	PrefillAttention float64 `json:"per_prefill_attention_pair_s"`
}

// numCoefficients counts LinearCoefficients' fields, the intercept included.
const numCoefficients = 6

// coefficientNames are the JSON keys of LinearCoefficients in the order of features.
var coefficientNames = [numCoefficients]string{
	"intercept_s", "per_prefill_token_s", "per_prefill_seq_s", "per_decode_seq_s",
	"per_context_token_s", "per_prefill_attention_pair_s",
}

// features are a step's regressors in the order of LinearCoefficients, 1 for the
// intercept first.
func features(s serving.StepShape) [numCoefficients]float64 {
	return [numCoefficients]float64{
		1, float64(s.PrefillTokens), float64(s.PrefillSeqs), float64(s.DecodeSeqs),
		float64(s.ContextTokens), s.PrefillAttention,
	}
}

func (c LinearCoefficients) vector() [numCoefficients]float64 {
	return [numCoefficients]float64{c.Intercept, c.PrefillToken, c.PrefillSeq, c.DecodeSeq, c.ContextToken, c.PrefillAttention}
}

func coefficientsFrom(v [numCoefficients]float64) LinearCoefficients {
	return LinearCoefficients{Intercept: v[0], PrefillToken: v[1], PrefillSeq: v[2], DecodeSeq: v[3], ContextToken: v[4], PrefillAttention: v[5]}
}

// Validate reports a coefficient that is negative or not finite (a step could then take
// negative time), or all of them zero. Errors name the JSON key.
func (c LinearCoefficients) Validate() error {
	v := c.vector()
	for i, x := range v {
		if !(x >= 0) || math.IsInf(x, 0) {
			return fmt.Errorf("field %q: %v is not a non-negative number", coefficientNames[i], x)
		}
	}
	if v == ([numCoefficients]float64{}) {
		return errors.New("coefficients are all zero")
	}
	return nil
}

// predict is the linear model's step time, without the empty-step rule. It is written
// out rather than a dot product of features and vector, which the compiler does not
// flatten, because StepTime runs once per simulated step.
func (c *LinearCoefficients) predict(s serving.StepShape) float64 {
	return c.Intercept +
		c.PrefillToken*float64(s.PrefillTokens) +
		c.PrefillSeq*float64(s.PrefillSeqs) +
		c.DecodeSeq*float64(s.DecodeSeqs) +
		c.ContextToken*float64(s.ContextTokens) +
		c.PrefillAttention*s.PrefillAttention
}

// Linear is a step-time model with fitted coefficients. With a profile it also knows the
// profiled engine's KV cache size and context limit.
type Linear struct {
	Coefficients LinearCoefficients
	name         string
	// blocks, blockSize and maxLen come from a profile; 0 when unknown.
	blocks, blockSize, maxLen int
	// kvBytesPerToken comes from a profile; 0 when unknown.
	kvBytesPerToken float64
}

// KVBytesPerToken is the KV one token takes in the profiled engine (Profile.KVBytesPerToken),
// what a simulated KV transfer or tier load moves; 0 when the profile does not record it.
func (l *Linear) KVBytesPerToken() float64 { return l.kvBytesPerToken }

// NewLinear wraps coefficients as a model.
func NewLinear(c LinearCoefficients) *Linear { return &Linear{Coefficients: c, name: "linear"} }

// Name implements Model.
func (l *Linear) Name() string { return l.name }

// StepTime implements Model: 0 for an empty step, the linear form otherwise.
func (l *Linear) StepTime(s serving.StepShape) float64 {
	if s.PrefillTokens+s.DecodeSeqs == 0 {
		return 0
	}
	return l.Coefficients.predict(s)
}

// KVCacheBlocks implements Capacity with the profiled engine's block count, converted to
// blockSize (the same tokens in bigger or smaller blocks). gpuMemoryUtilization is ignored:
// the profile measured one setting.
func (l *Linear) KVCacheBlocks(blockSize int, _ float64) (int, error) {
	if blockSize <= 0 {
		return 0, fmt.Errorf("block size must be positive, got %d", blockSize)
	}
	if l.blocks <= 0 {
		return 0, fmt.Errorf("latency model %s does not record the KV cache size: give --num-gpu-blocks-override", l.name)
	}
	return l.blocks * l.blockSize / blockSize, nil
}

// MaxModelLen implements Capacity; 0 when the profile does not say.
func (l *Linear) MaxModelLen() int { return l.maxLen }
