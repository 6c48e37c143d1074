package latency

import (
	"errors"
	"fmt"
	"math"
	"math/bits"

	"gonum.org/v1/gonum/mat"

	"servelab/serving"
)

// Sample is one measured engine step.
type Sample struct {
	Shape   serving.StepShape `json:"shape"`
	Seconds float64           `json:"seconds"`
}

// FitLinear fits LinearCoefficients to measured steps and returns them with the fit's R²
// over the samples' durations.
//
// The fit is non-negative least squares on relative error: each sample's equation is
// divided by its measured duration, so a 7 ms decode step counts as much as a 300 ms
// prefill and the small steps that dominate a simulation are fitted as well as the large
// ones. Coefficients are constrained to be non-negative, because a negative cost would let
// a step get faster with more work; the solution is exact, found by solving the ordinary
// least-squares problem on every subset of the features (there are six, so 63 subsets)
// and keeping the best one whose coefficients are all non-negative. A feature the samples
// never exercise (all zero) gets coefficient 0. Columns are scaled to unit maximum before
// the QR solves, as features differ by orders of magnitude.
func FitLinear(samples []Sample) (LinearCoefficients, float64, error) {
	if len(samples) < numCoefficients {
		return LinearCoefficients{}, 0, fmt.Errorf("fit: %d samples, need at least %d", len(samples), numCoefficients)
	}
	n := len(samples)
	a := mat.NewDense(n, numCoefficients, nil)
	b := mat.NewVecDense(n, nil)
	var scale [numCoefficients]float64
	for i, s := range samples {
		if err := checkSample(s); err != nil {
			return LinearCoefficients{}, 0, fmt.Errorf("fit: sample %d: %w", i, err)
		}
		f := features(s.Shape)
		for j := range f {
			f[j] /= s.Seconds
			scale[j] = math.Max(scale[j], f[j])
			a.Set(i, j, f[j])
		}
		b.SetVec(i, 1)
	}
	var usable uint
	for j, s := range scale {
		if s > 0 {
			usable |= 1 << j
			for i := range n {
				a.Set(i, j, a.At(i, j)/s)
			}
		}
	}
	best, bestResidual := [numCoefficients]float64{}, math.Inf(1)
	for subset := uint(1); subset < 1<<numCoefficients; subset++ {
		if subset&^usable != 0 {
			continue
		}
		x, residual, ok := nonNegativeLeastSquares(a, b, subset)
		if ok && residual < bestResidual {
			best, bestResidual = x, residual
		}
	}
	if math.IsInf(bestResidual, 1) {
		return LinearCoefficients{}, 0, errors.New("fit: no non-negative solution (vary the profiled batch shapes more)")
	}
	for j := range best {
		if scale[j] > 0 {
			best[j] /= scale[j]
		}
	}
	c := coefficientsFrom(best)
	r2, _ := Evaluate(c, samples)
	return c, r2, nil
}

func checkSample(s Sample) error {
	if !(s.Seconds > 0) || math.IsInf(s.Seconds, 0) {
		return fmt.Errorf("duration %v s is not a positive number", s.Seconds)
	}
	sh := s.Shape
	if sh.PrefillTokens < 0 || sh.PrefillSeqs < 0 || sh.DecodeSeqs < 0 || sh.ContextTokens < 0 ||
		!(sh.PrefillAttention >= 0) || math.IsInf(sh.PrefillAttention, 0) {
		return fmt.Errorf("shape %+v has a negative or non-finite field", sh)
	}
	return nil
}

// nonNegativeLeastSquares solves min |A_S x - b| over the columns in subset and reports
// the solution spread back to all columns, its squared residual, and whether it is
// non-negative and well-posed.
func nonNegativeLeastSquares(a *mat.Dense, b *mat.VecDense, subset uint) ([numCoefficients]float64, float64, bool) {
	n, _ := a.Dims()
	k := bits.OnesCount(subset)
	if n < k {
		return [numCoefficients]float64{}, 0, false
	}
	cols := make([]int, 0, k)
	for j := range numCoefficients {
		if subset&(1<<j) != 0 {
			cols = append(cols, j)
		}
	}
	sub := mat.NewDense(n, k, nil)
	for i := range n {
		for c, j := range cols {
			sub.Set(i, c, a.At(i, j))
		}
	}
	var x mat.VecDense
	if err := x.SolveVec(sub, b); err != nil {
		return [numCoefficients]float64{}, 0, false // rank-deficient: a smaller subset covers it
	}
	var out [numCoefficients]float64
	for c, j := range cols {
		v := x.AtVec(c)
		if !(v >= 0) {
			return [numCoefficients]float64{}, 0, false
		}
		out[j] = v
	}
	var r mat.VecDense
	r.MulVec(sub, &x)
	r.SubVec(&r, b)
	return out, mat.Dot(&r, &r), true
}

// Evaluate measures coefficients against samples: the coefficient of determination R² of
// the predicted durations, and the mean relative error |predicted - measured| / measured.
func Evaluate(c LinearCoefficients, samples []Sample) (r2, meanRelativeError float64) {
	if len(samples) == 0 {
		return 0, 0
	}
	var mean float64
	for _, s := range samples {
		mean += s.Seconds
	}
	mean /= float64(len(samples))
	var ssRes, ssTot, rel float64
	for _, s := range samples {
		d := c.predict(s.Shape) - s.Seconds
		ssRes += d * d
		ssTot += (s.Seconds - mean) * (s.Seconds - mean)
		rel += math.Abs(d) / s.Seconds
	}
	rel /= float64(len(samples))
	if ssTot == 0 {
		if ssRes == 0 {
			return 1, rel
		}
		return 0, rel
	}
	return 1 - ssRes/ssTot, rel
}
