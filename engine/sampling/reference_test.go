package sampling

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// These tests are the CPU reference for the CUDA sampling kernels (argmax, top-k, softmax
// and top-p over logits): Sample is checked against a float64 reference written plainly
// here, which draws with the same uniform numbers, so that every draw must pick the same
// token (draws within 1e-9 of the reference's cumulative-probability boundaries, where
// float32 logits differences can legitimately tip the choice, are not compared).
//
// Sample's probabilities (float64) are within probBound of the reference's: a relative
// 2^-24·(|l_i - max| + the largest |l_j - max| with a non-zero probability)/T + 1e-12,
// the float32 rounding of the logits' differences (checkProbs).
//
// Semantics (vLLM's SamplingParams; the GPU kernels must match):
//   - Argmax: the largest logit, the lowest index on ties; NaN logits are never chosen
//     (index 0 when all are NaN); +Inf wins.
//   - Sampling drops NaN and -Inf logits; a +Inf logit is certain (the +Inf logits share
//     the probability); then top-k keeps the k largest (ties by lower index), softmax at
//     the temperature in float64, top-p keeps the shortest most-likely head whose mass
//     reaches p, min-p drops tokens below min_p times the top probability.

// refArgmax is Argmax's specification.
func refArgmax(logits []float32) int32 {
	best := int32(-1)
	for i, v := range logits {
		if math.IsNaN(float64(v)) {
			continue
		}
		if best < 0 || float64(v) > float64(logits[best]) {
			best = int32(i)
		}
	}
	return max(best, 0)
}

// refCandidates returns the tokens Sample may draw and their probabilities (normalised,
// float64), in the order Sample's draw walks them, or nil when Sample falls back to
// Argmax.
func refCandidates(logits []float32, p Params) ([]int32, []float64) {
	var ids []int32
	for i, v := range logits {
		if !math.IsNaN(float64(v)) && !math.IsInf(float64(v), -1) {
			ids = append(ids, int32(i))
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	// Sample walks the candidates in id order unless a filter needs them sorted; the
	// distribution is the same, the token a given uniform number picks is not.
	filter := p.TopK > 0 && p.TopK < len(ids) || p.TopP > 0 && p.TopP < 1 || p.MinP > 0
	if filter {
		slices.SortStableFunc(ids, func(a, b int32) int { return cmp.Compare(logits[b], logits[a]) })
	}
	if p.TopK > 0 && p.TopK < len(ids) {
		ids = ids[:p.TopK]
	}
	top := math.Inf(-1)
	for _, id := range ids {
		top = max(top, float64(logits[id]))
	}
	probs := make([]float64, len(ids))
	var sum float64
	for i, id := range ids {
		l := float64(logits[id])
		switch {
		case math.IsInf(top, 1) && math.IsInf(l, 1):
			probs[i] = 1
		case math.IsInf(top, 1):
			probs[i] = 0
		default:
			probs[i] = math.Exp((l - top) / p.Temperature)
		}
		sum += probs[i]
	}
	for i := range probs {
		probs[i] /= sum
	}
	n := len(ids)
	if p.TopP > 0 && p.TopP < 1 {
		var acc float64
		for i, q := range probs {
			acc += q
			if acc >= p.TopP {
				n = i + 1
				break
			}
		}
	}
	if p.MinP > 0 {
		for n > 1 && probs[n-1] < p.MinP*probs[0] {
			n--
		}
	}
	return ids[:n], probs[:n]
}

func TestArgmaxReference(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	rng := rand.New(rand.NewPCG(1, 1))
	random := make([]float32, 32000)
	for i := range random {
		random[i] = float32(rng.NormFloat64())
	}
	tests := []struct {
		name   string
		logits []float32
		want   int32
	}{
		{"ties: the lowest index", []float32{0.1, 3, -1, 3, 2}, 1},
		{"all equal", []float32{2, 2, 2, 2}, 0},
		{"-Inf logits", []float32{-inf, -inf, -5, -inf}, 2},
		{"all -Inf", []float32{-inf, -inf, -inf}, 0},
		{"+Inf wins", []float32{1e38, inf, 3e38, inf}, 1},
		{"NaN first", []float32{nan, 1, 2, 0}, 2},
		{"NaN after the maximum", []float32{1, 5, nan, 2}, 1},
		{"all NaN", []float32{nan, nan}, 0},
		{"largest float32", []float32{-math.MaxFloat32, math.MaxFloat32, 0}, 1},
		{"one logit", []float32{-7}, 0},
		{"random 32000", random, -1},
	}
	for _, tc := range tests {
		want := refArgmax(tc.logits)
		if tc.want >= 0 && want != tc.want {
			t.Fatalf("%s: the reference says %d, the table %d", tc.name, want, tc.want)
		}
		if got := Argmax(tc.logits); got != want {
			t.Errorf("%s: Argmax = %d, want %d", tc.name, got, want)
		}
		for _, p := range []Params{{}, {Temperature: 0.7, TopK: 1}} {
			if got := New(p, 1).Sample(tc.logits); got != want {
				t.Errorf("%s: greedy Sample(%+v) = %d, want %d", tc.name, p, got, want)
			}
		}
	}
}

func TestSampleReference(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	rng := rand.New(rand.NewPCG(2, 2))
	gen := func(n int, f func(i int) float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = f(i)
		}
		return v
	}
	normal := func(s float64) func(int) float32 {
		return func(int) float32 { return float32(rng.NormFloat64() * s) }
	}
	logitSets := []struct {
		name   string
		logits []float32
	}{
		{"normal*3/1000", gen(1000, normal(3))},
		{"normal*1/37", gen(37, normal(1))},
		{"all equal", gen(50, func(int) float32 { return 1.25 })},
		{"masked", gen(200, func(i int) float32 {
			switch i % 5 {
			case 0:
				return -inf
			case 1:
				return nan
			}
			return float32(rng.NormFloat64() * 2)
		})},
		{"large values", gen(300, func(int) float32 { return 1e6 + float32(rng.NormFloat64()*4) })},
		{"huge spread", gen(64, func(i int) float32 { return float32(math.Ldexp(float64(i%5-2), 126)) })},
		{"one +Inf", gen(40, func(i int) float32 {
			if i == 17 {
				return inf
			}
			return float32(rng.NormFloat64())
		})},
		{"two +Inf", gen(40, func(i int) float32 {
			if i == 9 || i == 33 {
				return inf
			}
			return 100
		})},
		{"all masked", gen(10, func(i int) float32 { return -inf })},
	}
	params := []Params{
		{Temperature: 1},
		{Temperature: 0.05},
		{Temperature: 7},
		{Temperature: 1, TopK: 5},
		{Temperature: 0.8, TopK: 50},
		{Temperature: 1, TopK: 100000},
		{Temperature: 1, TopP: 0.5},
		{Temperature: 0.6, TopP: 0.9},
		{Temperature: 1.3, TopP: 0.999},
		{Temperature: 1, MinP: 0.1},
		{Temperature: 0.9, TopK: 40, TopP: 0.95, MinP: 0.02},
	}
	for _, ls := range logitSets {
		for _, p := range params {
			t.Run(fmt.Sprintf("%s/%+v", ls.name, p), func(t *testing.T) {
				ids, probs := refCandidates(ls.logits, p)
				// The sampler and the reference draw from twin generators.
				s := &Sampler{p: p, rng: rand.New(rand.NewPCG(5, 6))}
				u := rand.New(rand.NewPCG(5, 6))
				skipped := 0
				const draws = 400
				for d := range draws {
					got := s.Sample(ls.logits)
					if d == 0 && ids != nil {
						checkProbs(t, s, ls.logits, p, ids, probs)
					}
					if ids == nil {
						if want := refArgmax(ls.logits); got != want {
							t.Fatalf("draw %d: %d, want the argmax %d", d, got, want)
						}
						continue
					}
					var mass float64
					for _, q := range probs {
						mass += q
					}
					r := u.Float64() * mass
					want, near := ids[len(ids)-1], false
					var acc float64
					for i, q := range probs {
						acc += q
						near = near || math.Abs(r-acc) < 1e-9
						if r < acc {
							want = ids[i]
							break
						}
					}
					if near {
						skipped++
						continue
					}
					if got != want {
						t.Fatalf("draw %d: token %d, want %d (candidates %v, probabilities %.4g)", d, got, want, ids[:min(8, len(ids))], probs[:min(8, len(probs))])
					}
				}
				if skipped > draws/100 {
					t.Errorf("%d of %d draws too close to a boundary to compare", skipped, draws)
				}
			})
		}
	}
}

// probBound is the bound on the relative error of Sample's probabilities (float64, from
// float32 logits): exp((l_i - max)/T) with l_i - max rounded to float32 is off by up to
// 2^-24·|l_i - max|/T relative, and the normalising sum by as much as its largest term's.
func probBound(logits []float32, ids []int32, i int, p Params) float64 {
	top := math.Inf(-1)
	for _, id := range ids {
		top = max(top, float64(logits[id]))
	}
	var d float64 // over every candidate: a bound for the sum over those top-k kept
	for _, v := range logits {
		if l := float64(v); !math.IsNaN(l) && math.Exp((l-top)/p.Temperature) > 0 {
			d = max(d, top-l)
		}
	}
	return 0x1p-24*(top-float64(logits[ids[i]])+d)/p.Temperature + 1e-12
}

// checkProbs compares the candidates and probabilities of Sample's last draw (its scratch
// space) with the reference's: the softmax over logits at the temperature, after top-k.
func checkProbs(t *testing.T, s *Sampler, logits []float32, p Params, ids []int32, probs []float64) {
	t.Helper()
	if math.IsInf(float64(logits[ids[0]]), 1) {
		return // probabilities 1 and 0: the draws check them
	}
	var sum float64
	for _, q := range s.probs {
		sum += q
	}
	for i, id := range ids {
		if s.cand[i].id != id {
			t.Fatalf("candidate %d is token %d, want %d", i, s.cand[i].id, id)
		}
		got := s.probs[i] / sum
		if bound := probBound(logits, ids, i, p) * probs[i]; math.Abs(got-probs[i]) > bound {
			t.Fatalf("token %d: probability %v, want %v (bound %.3g)", id, got, probs[i], bound)
		}
	}
}

// TestTopKTies: with equal logits top-k keeps the k lowest ids, and draws them uniformly.
func TestTopKTies(t *testing.T) {
	logits := make([]float32, 100)
	for i := range logits {
		logits[i] = 0.5
	}
	s := New(Params{Temperature: 1, TopK: 4}, 9)
	counts := make([]int, len(logits))
	const n = 40000
	for range n {
		counts[s.Sample(logits)]++
	}
	for i, c := range counts {
		if i >= 4 && c != 0 {
			t.Fatalf("token %d drawn %d times outside the top 4", i, c)
		}
		// Binomial(40000, 1/4): sd 87, so ±600 is 7 sd.
		if i < 4 && math.Abs(float64(c)-n/4) > 600 {
			t.Errorf("token %d drawn %d times, want about %d", i, c, n/4)
		}
	}
}
