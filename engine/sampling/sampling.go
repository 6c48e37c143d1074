// Package sampling turns a step's logits into the next token: greedy, temperature, top-k,
// top-p and min-p, with a per-request seed, following vLLM's SamplingParams semantics.
package sampling

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Params are one request's sampling parameters, named after vLLM's SamplingParams.
type Params struct {
	// Temperature 0 is greedy decoding.
	Temperature float64
	// TopK keeps the k most likely tokens; 0 or -1 keeps all.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability reaches p; 0 or 1
	// keeps all.
	TopP float64
	// MinP drops tokens less likely than MinP times the most likely one; 0 keeps all.
	MinP float64
	// Seed, when Seeded, makes the request's draws reproducible whatever else runs in the
	// batch.
	Seed   uint64
	Seeded bool
}

// Validate reports the first parameter out of range, named as in the OpenAI API.
func (p Params) Validate() error {
	switch {
	case p.Temperature < 0 || math.IsNaN(p.Temperature):
		return fmt.Errorf("temperature must be non-negative, got %v", p.Temperature)
	case p.TopK < -1:
		return fmt.Errorf("top_k must be -1 (disable) or at least 1, got %d", p.TopK)
	case p.TopP < 0 || p.TopP > 1 || math.IsNaN(p.TopP):
		return fmt.Errorf("top_p must be in (0, 1], got %v", p.TopP)
	case p.MinP < 0 || p.MinP > 1 || math.IsNaN(p.MinP):
		return fmt.Errorf("min_p must be in [0, 1], got %v", p.MinP)
	}
	return nil
}

// Greedy reports whether the parameters pick the argmax.
func (p Params) Greedy() bool { return p.Temperature == 0 || p.TopK == 1 }

// Sampler draws tokens for one request. It keeps scratch space, so it allocates only on
// its first draw.
type Sampler struct {
	p     Params
	rng   *rand.Rand
	cand  []candidate
	probs []float64
}

type candidate struct {
	id    int32
	logit float32
}

// New returns a sampler; seed is used unless the parameters carry their own.
func New(p Params, seed uint64) *Sampler {
	if p.Seeded {
		seed = p.Seed
	}
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(seed, 0x5851f42d4c957f2d))}
}

// Greedy reports whether the sampler picks the argmax (its parameters' Greedy): then
// Sample is Argmax and draws nothing from the random stream, so a caller may take the
// argmax elsewhere (the engine has a GPU backend take it on the device) and skip Sample.
func (s *Sampler) Greedy() bool { return s.p.Greedy() }

// Argmax is the index of the largest logit, the lowest index on ties. NaN logits are
// never chosen (0 when every logit is NaN). (A NaN at index 0 used to win: nothing
// compares greater than it.)
func Argmax(logits []float32) int32 {
	best := 0
	for best < len(logits) && logits[best] != logits[best] { // NaN
		best++
	}
	if best == len(logits) {
		return 0
	}
	m := logits[best]
	for i := best + 1; i < len(logits); i++ {
		if v := logits[i]; v > m { // false for NaN
			best, m = i, v
		}
	}
	return int32(best)
}

// Sample picks the next token from logits, which it does not modify. NaN and -Inf logits
// are never drawn (Argmax decides when every logit is one); +Inf logits share all the
// probability.
func (s *Sampler) Sample(logits []float32) int32 {
	if s.p.Greedy() {
		return Argmax(logits)
	}
	cand := s.cand[:0]
	for i, v := range logits {
		if !math.IsNaN(float64(v)) && !math.IsInf(float64(v), -1) {
			cand = append(cand, candidate{int32(i), v})
		}
	}
	s.cand = cand
	if len(cand) == 0 {
		return Argmax(logits)
	}
	// Most likely first, ties by id, so the outcome depends only on the logits and the seed.
	k := len(cand)
	if s.p.TopK > 0 && s.p.TopK < k {
		k = s.p.TopK
	}
	if k < len(cand) || s.p.TopP > 0 && s.p.TopP < 1 || s.p.MinP > 0 {
		slices.SortFunc(cand, func(a, b candidate) int {
			if a.logit != b.logit {
				if a.logit > b.logit {
					return -1
				}
				return 1
			}
			return int(a.id - b.id)
		})
		cand = cand[:k]
	}
	maxLogit := cand[0].logit
	for _, c := range cand {
		maxLogit = max(maxLogit, c.logit)
	}
	probs := s.probs[:0]
	var sum float64
	inf := math.IsInf(float64(maxLogit), 1)
	for _, c := range cand {
		var e float64
		if !inf {
			e = math.Exp(float64(c.logit-maxLogit) / s.p.Temperature)
		} else if math.IsInf(float64(c.logit), 1) {
			// A +Inf logit is certain. (Inf-Inf made every probability NaN, and the draw
			// fell through to the last candidate: the least likely one.)
			e = 1
		}
		probs = append(probs, e)
		sum += e
	}
	s.probs = probs
	n := len(cand)
	if s.p.TopP > 0 && s.p.TopP < 1 {
		// cand is sorted here: keep the shortest head whose mass reaches top_p.
		var acc float64
		for i, p := range probs {
			acc += p / sum
			if acc >= s.p.TopP {
				n = i + 1
				break
			}
		}
	}
	if s.p.MinP > 0 {
		floor := s.p.MinP * probs[0]
		for n > 1 && probs[n-1] < floor {
			n--
		}
	}
	var mass float64
	for _, p := range probs[:n] {
		mass += p
	}
	u := s.rng.Float64() * mass
	for i, p := range probs[:n] {
		u -= p
		if u < 0 {
			return cand[i].id
		}
	}
	return cand[n-1].id
}
