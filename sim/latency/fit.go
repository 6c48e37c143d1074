package latency

import (
	"errors"
	"fmt"
	"math"
	"slices"

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
// What a simulation needs from the fit is the time of runs of steps: a request's TTFT is
// the sum of the steps from its arrival to its first token, its TPOT the mean of the steps
// it decodes in. So the fit reproduces the measured steps' total time exactly, and the
// total of each class of step (prefill-only, decode-only, mixed; short and long context:
// see Fit) as closely as the linear form allows, while staying close step by step. It
// minimises
//
//	Σ_steps ((predicted - measured) / expected)² / steps
//	+ Σ_classes n/(n+20) × (Σ_class (predicted - measured) / Σ_class measured)²
//
// subject to Σ predicted = Σ measured over all steps and every coefficient non-negative (a
// negative cost would let a step get faster with more work).
//
// The first term is the mean squared relative error of the steps, each relative to its
// expected duration: in a first pass the root mean square of its class's steps, then the
// first pass's prediction (at least the class's shortest step). It is not relative to the
// step's own measured duration, as this fit once was: that weighs the steps measured fast
// (those nothing interrupted) most, so the fit follows the typical step rather than the
// mean and under-predicts the total (by 5-15% on the tiny model's steps logged on an idle
// 2-core machine, 32-56% on a busy one) and decode steps most (20-35% idle). A weight that
// depends on the step's shape only keeps the least-squares estimate of the mean step time
// unbiased.
//
// The second term is each class's relative error in total, so that every class counts,
// whatever its number of steps and their duration: thousands of 0.1 ms decode steps and a
// few 100 ms prefills alike. A class of n steps counts n/(n+20): fully once its steps are
// many, little while its total is a handful of steps' noise (Fit's report judges classes
// from 20 steps).
//
// The solution is exact: the equality-constrained least-squares problem is solved on every
// subset of the features (there are six, so 63 subsets), eliminating one coefficient with
// the constraint, and the best solution whose coefficients are all non-negative is kept;
// the intercept alone always gives one. A feature the samples never exercise (all zero)
// gets coefficient 0. Columns are scaled to unit maximum before the QR solves, as features
// differ by orders of magnitude.
func FitLinear(samples []Sample) (LinearCoefficients, float64, error) {
	if len(samples) < numCoefficients {
		return LinearCoefficients{}, 0, fmt.Errorf("fit: %d samples, need at least %d", len(samples), numCoefficients)
	}
	for i, s := range samples {
		if err := checkSample(s); err != nil {
			return LinearCoefficients{}, 0, fmt.Errorf("fit: sample %d: %w", i, err)
		}
	}
	x, ok := solveFit(newFitSystem(samples, nil))
	if ok {
		first := coefficientsFrom(x)
		x, ok = solveFit(newFitSystem(samples, &first))
	}
	if !ok {
		return LinearCoefficients{}, 0, errors.New("fit: no non-negative solution (vary the profiled batch shapes more)")
	}
	coef := coefficientsFrom(x)
	r2, _ := Evaluate(coef, samples)
	return coef, r2, nil
}

// classTotalSteps is the number of steps at which a class's total counts half in FitLinear.
const classTotalSteps = 20

// solveFit solves sys exactly (see FitLinear); false when no non-negative solution exists.
func solveFit(sys fitSystem) ([numCoefficients]float64, bool) {
	n, _ := sys.a.Dims()
	var scale [numCoefficients]float64
	for j := range numCoefficients {
		for i := range n {
			scale[j] = math.Max(scale[j], math.Abs(sys.a.At(i, j)))
		}
	}
	var usable uint
	a := mat.DenseCopyOf(sys.a)
	c := sys.c
	for j, s := range scale {
		if s > 0 {
			usable |= 1 << j
			for i := range n {
				a.Set(i, j, a.At(i, j)/s)
			}
			c[j] /= s
		}
	}
	best, bestResidual := [numCoefficients]float64{}, math.Inf(1)
	for subset := uint(1); subset < 1<<numCoefficients; subset++ {
		if subset&^usable != 0 {
			continue
		}
		x, residual, ok := constrainedLeastSquares(a, sys.b, c, sys.d, subset)
		if ok && residual < bestResidual {
			best, bestResidual = x, residual
		}
	}
	if math.IsInf(bestResidual, 1) {
		return best, false
	}
	for j := range best {
		if scale[j] > 0 {
			best[j] /= scale[j]
		}
	}
	return best, true
}

// fitSystem is FitLinear's problem: minimise |a x - b|² subject to c·x = d and x ≥ 0.
type fitSystem struct {
	a *mat.Dense
	b *mat.VecDense
	c [numCoefficients]float64
	d float64
}

// newFitSystem writes FitLinear's objective as least squares: a row per step, its features
// and duration divided by its expected duration and the root of the number of steps; then
// a row per class, the sum of its steps' features and durations divided by the class's
// total duration, times the root of its weight n/(n+20); and the constraint that the
// predicted total is the measured one. Expected durations are the root mean square of the
// step's class without first, first's prediction (at least the class's shortest step)
// with.
func newFitSystem(samples []Sample, first *LinearCoefficients) fitSystem {
	classes, class := classify(samples)
	sumSquares := make([]float64, len(classes))
	shortest := make([]float64, len(classes))
	for i, s := range samples {
		k := class[i]
		sumSquares[k] += s.Seconds * s.Seconds
		if shortest[k] == 0 || s.Seconds < shortest[k] {
			shortest[k] = s.Seconds
		}
	}
	classWeight := make([]float64, len(classes))
	for k, c := range classes {
		n := float64(c.Steps)
		classWeight[k] = math.Sqrt(n/(n+classTotalSteps)) / c.MeasuredSeconds
	}
	rows := len(samples) + len(classes)
	sys := fitSystem{a: mat.NewDense(rows, numCoefficients, nil), b: mat.NewVecDense(rows, nil)}
	root := math.Sqrt(float64(len(samples)))
	for i, s := range samples {
		k := class[i]
		expected := math.Sqrt(sumSquares[k] / float64(classes[k].Steps))
		if first != nil {
			expected = math.Max(first.predict(s.Shape), shortest[k])
		}
		w := 1 / (expected * root)
		row := len(samples) + k
		for j, x := range features(s.Shape) {
			sys.a.Set(i, j, x*w)
			sys.a.Set(row, j, sys.a.At(row, j)+x*classWeight[k])
			sys.c[j] += x
		}
		sys.b.SetVec(i, s.Seconds*w)
		sys.b.SetVec(row, sys.b.AtVec(row)+s.Seconds*classWeight[k])
		sys.d += s.Seconds
	}
	return sys
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
	if stepKind(sh) < 0 {
		return fmt.Errorf("shape %+v computes nothing (no prefill or decode sequence)", sh)
	}
	return nil
}

// constrainedLeastSquares solves min |A_S x - b| subject to c_S·x = d over the columns in
// subset, and reports the solution spread back to all columns, its squared residual, and
// whether it is non-negative and well-posed. The constraint eliminates the subset's
// coefficient with the largest |c_j|, p: x_p = (d - Σ_{j≠p} c_j x_j) / c_p, which leaves an
// unconstrained problem in the others, solved by QR.
func constrainedLeastSquares(a *mat.Dense, b *mat.VecDense, c [numCoefficients]float64, d float64, subset uint) ([numCoefficients]float64, float64, bool) {
	n, _ := a.Dims()
	var cols []int
	p := -1
	for j := range numCoefficients {
		if subset&(1<<j) == 0 {
			continue
		}
		if p < 0 || math.Abs(c[j]) > math.Abs(c[p]) {
			p = j
		}
		cols = append(cols, j)
	}
	if p < 0 || !(math.Abs(c[p]) > 0) {
		return [numCoefficients]float64{}, 0, false
	}
	rest := slices.DeleteFunc(cols, func(j int) bool { return j == p })
	k := len(rest)
	if n < k {
		return [numCoefficients]float64{}, 0, false
	}
	// A_S x - b = (A_rest - a_p c_rest / c_p) y - (b - a_p d / c_p).
	target := mat.NewVecDense(n, nil)
	sub := mat.NewDense(n, max(k, 1), nil)
	for i := range n {
		ap := a.At(i, p)
		target.SetVec(i, b.AtVec(i)-ap*d/c[p])
		for col, j := range rest {
			sub.Set(i, col, a.At(i, j)-ap*c[j]/c[p])
		}
	}
	var out [numCoefficients]float64
	xp := d / c[p]
	if k > 0 {
		var y mat.VecDense
		if err := y.SolveVec(sub, target); err != nil {
			return [numCoefficients]float64{}, 0, false // rank-deficient: a smaller subset covers it
		}
		for col, j := range rest {
			v := y.AtVec(col)
			if !(v >= 0) {
				return [numCoefficients]float64{}, 0, false
			}
			out[j] = v
			xp -= c[j] * v / c[p]
		}
	}
	if !(xp >= 0) {
		return [numCoefficients]float64{}, 0, false
	}
	out[p] = xp
	var r mat.VecDense
	r.MulVec(a, mat.NewVecDense(numCoefficients, out[:]))
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
