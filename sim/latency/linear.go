package latency

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	"gonum.org/v1/gonum/mat"

	"servelab/serving"
)

// LinearCoefficients define step time = intercept + sum of coefficient x feature, with
// the features of a step's shape. Seconds throughout.
type LinearCoefficients struct {
	Intercept        float64 `json:"intercept_s"`
	PrefillToken     float64 `json:"per_prefill_token_s"`
	DecodeSeq        float64 `json:"per_decode_seq_s"`
	ContextToken     float64 `json:"per_context_token_s"`
	PrefillAttention float64 `json:"per_prefill_attention_pair_s"`
}

// features are a step's regressors in the order of LinearCoefficients after the intercept.
func features(s serving.StepShape) [4]float64 {
	return [4]float64{float64(s.PrefillTokens), float64(s.DecodeSeqs), float64(s.ContextTokens), s.PrefillAttention}
}

func (c LinearCoefficients) slice() []float64 {
	return []float64{c.Intercept, c.PrefillToken, c.DecodeSeq, c.ContextToken, c.PrefillAttention}
}

func coefficientsFrom(v []float64) LinearCoefficients {
	return LinearCoefficients{Intercept: v[0], PrefillToken: v[1], DecodeSeq: v[2], ContextToken: v[3], PrefillAttention: v[4]}
}

// Linear is a step-time model fitted to measurements.
type Linear struct {
	C    LinearCoefficients
	name string
	// blocks and maxLen come from the profile; 0 when unknown.
	blocks, blockSize, maxLen int
}

// NewLinear wraps coefficients as a model.
func NewLinear(c LinearCoefficients) *Linear { return &Linear{C: c, name: "linear"} }

// Name implements Model.
func (l *Linear) Name() string { return l.name }

// StepTime implements Model.
func (l *Linear) StepTime(s serving.StepShape) float64 {
	if s.Tokens() == 0 {
		return 0
	}
	f := features(s)
	return l.C.Intercept + l.C.PrefillToken*f[0] + l.C.DecodeSeq*f[1] + l.C.ContextToken*f[2] + l.C.PrefillAttention*f[3]
}

// KVCacheBlocks implements Capacity with the profiled engine's block count, rescaled when
// the simulation uses another block size.
func (l *Linear) KVCacheBlocks(blockSize int, _ float64) (int, error) {
	if l.blocks <= 0 {
		return 0, fmt.Errorf("latency model %s does not record the KV cache size: give --num-gpu-blocks-override", l.name)
	}
	return l.blocks * l.blockSize / blockSize, nil
}

// MaxModelLen implements Capacity.
func (l *Linear) MaxModelLen() int { return l.maxLen }

// Profile is the file `servelab profile` writes after measuring the real engine, and
// `--latency profile:FILE` reads.
type Profile struct {
	// Model and Machine say what was measured, for people.
	Model   string `json:"model"`
	Machine string `json:"machine"`
	// BlockSize and NumGPUBlocks describe the profiled engine's KV cache.
	BlockSize    int `json:"block_size"`
	NumGPUBlocks int `json:"num_gpu_blocks"`
	// MaxModelLen is the engine's context limit (0: unknown).
	MaxModelLen  int                `json:"max_model_len,omitempty"`
	Coefficients LinearCoefficients `json:"coefficients"`
	// Samples and R2 describe the fit.
	Samples int     `json:"samples"`
	R2      float64 `json:"r2"`
}

// LoadProfile reads a profile file; unknown fields are errors.
func LoadProfile(path string) (*Profile, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var p Profile
	if err := dec.Decode(&p); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("%s: field %q: %s is not %s", path, te.Field, te.Value, te.Type)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &p, nil
}

func (p *Profile) validate() error {
	if p.BlockSize < 0 || p.NumGPUBlocks < 0 || p.MaxModelLen < 0 {
		return fmt.Errorf("field \"block_size\", \"num_gpu_blocks\" or \"max_model_len\" is negative")
	}
	if p.NumGPUBlocks > 0 && p.BlockSize == 0 {
		return fmt.Errorf("field \"block_size\": needed with num_gpu_blocks")
	}
	names := []string{"intercept_s", "per_prefill_token_s", "per_decode_seq_s", "per_context_token_s", "per_prefill_attention_pair_s"}
	for i, v := range p.Coefficients.slice() {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("field \"coefficients.%s\": %v is not a non-negative number", names[i], v)
		}
	}
	if p.Coefficients == (LinearCoefficients{}) {
		return fmt.Errorf("field \"coefficients\": all zero")
	}
	return nil
}

// Write writes the profile as indented JSON.
func (p *Profile) Write(path string) error {
	raw, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}

// StepModel returns the profile's step-time model.
func (p *Profile) StepModel() *Linear {
	name := "linear"
	if p.Model != "" {
		name = "linear(" + strings.TrimSpace(p.Model) + ")"
	}
	return &Linear{C: p.Coefficients, name: name, blocks: p.NumGPUBlocks, blockSize: p.BlockSize, maxLen: p.MaxModelLen}
}

// Sample is one measured step.
type Sample struct {
	Shape   serving.StepShape
	Seconds float64
}

// FitLinear fits coefficients to measured steps by least squares. Step costs cannot be
// negative, so a feature whose coefficient comes out negative (noise on a feature that
// barely matters) is dropped and the rest refitted.
func FitLinear(samples []Sample) (LinearCoefficients, float64, error) {
	const k = 5
	if len(samples) < k {
		return LinearCoefficients{}, 0, fmt.Errorf("fit: %d samples, need at least %d", len(samples), k)
	}
	active := []int{0, 1, 2, 3, 4}
	for {
		coef, err := leastSquares(samples, active)
		if err != nil {
			return LinearCoefficients{}, 0, err
		}
		worst := -1
		for i, c := range coef {
			if c < 0 && (worst < 0 || c < coef[worst]) {
				worst = i
			}
		}
		if worst < 0 {
			full := make([]float64, k)
			for i, col := range active {
				full[col] = coef[i]
			}
			c := coefficientsFrom(full)
			return c, rSquared(samples, c), nil
		}
		active = append(active[:worst], active[worst+1:]...)
		if len(active) == 0 {
			return LinearCoefficients{}, 0, fmt.Errorf("fit: no feature explains the step times")
		}
	}
}

func row(s serving.StepShape) [5]float64 {
	f := features(s)
	return [5]float64{1, f[0], f[1], f[2], f[3]}
}

func leastSquares(samples []Sample, cols []int) ([]float64, error) {
	a := mat.NewDense(len(samples), len(cols), nil)
	b := mat.NewVecDense(len(samples), nil)
	// Scale columns to unit maximum so QR is well conditioned across features that differ
	// by orders of magnitude (tokens versus query-key pairs).
	scale := make([]float64, len(cols))
	for i, s := range samples {
		r := row(s.Shape)
		for j, c := range cols {
			scale[j] = math.Max(scale[j], math.Abs(r[c]))
		}
		_ = i
	}
	for i, s := range samples {
		r := row(s.Shape)
		for j, c := range cols {
			if scale[j] > 0 {
				a.Set(i, j, r[c]/scale[j])
			}
		}
		b.SetVec(i, s.Seconds)
	}
	var x mat.VecDense
	if err := x.SolveVec(a, b); err != nil {
		return nil, fmt.Errorf("fit: %w (vary the profiled batch shapes more)", err)
	}
	out := make([]float64, len(cols))
	for j := range cols {
		if scale[j] > 0 {
			out[j] = x.AtVec(j) / scale[j]
		}
	}
	return out, nil
}

func rSquared(samples []Sample, c LinearCoefficients) float64 {
	var mean float64
	for _, s := range samples {
		mean += s.Seconds
	}
	mean /= float64(len(samples))
	m := NewLinear(c)
	var ssRes, ssTot float64
	for _, s := range samples {
		d := s.Seconds - m.StepTime(s.Shape)
		ssRes += d * d
		ssTot += (s.Seconds - mean) * (s.Seconds - mean)
	}
	if ssTot == 0 {
		return 1
	}
	return 1 - ssRes/ssTot
}
