package latency

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"gonum.org/v1/gonum/mat"

	"servelab/serving"
)

// syntheticSamples draws step shapes like a chunked-prefill engine's (decode batches with
// the odd prefill chunk) and times them with truth, with multiplicative noise.
func syntheticSamples(truth LinearCoefficients, n int, noise float64, seed uint64) []Sample {
	rng := rand.New(rand.NewPCG(seed, 1))
	samples := make([]Sample, 0, n)
	for range n {
		var s serving.StepShape
		s.DecodeSeqs = rng.IntN(128)
		s.DecodeContextTokens = s.DecodeSeqs * (1 + rng.IntN(4000))
		s.ContextTokens = s.DecodeContextTokens
		if rng.IntN(2) == 0 || s.DecodeSeqs == 0 {
			s.PrefillSeqs = 1 + rng.IntN(3)
			for range s.PrefillSeqs {
				chunk, ctx := 1+rng.IntN(2048), rng.IntN(8192)
				s.PrefillTokens += chunk
				s.ContextTokens += ctx + chunk
				s.PrefillAttention += float64(chunk) * (float64(ctx) + float64(chunk)/2)
			}
		}
		seconds := truth.predict(s) * (1 + noise*rng.NormFloat64())
		samples = append(samples, Sample{Shape: s, Seconds: seconds})
	}
	return samples
}

func TestFitRecoversCoefficients(t *testing.T) {
	// About what the roofline gives Llama-3.1-8B on an H100 (attention 8e-10 s per
	// query-key pair, linear layers 2.2e-5 s per prefill token, 5e-8 s per KV token read).
	want := LinearCoefficients{Intercept: 2e-3, PrefillToken: 2.2e-5, PrefillSeq: 3e-4, DecodeSeq: 3e-5, ContextToken: 5e-8, PrefillAttention: 8e-10}
	samples := syntheticSamples(want, 600, 0.01, 3)
	got, r2, err := FitLinear(samples)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0.05, 5)); diff != "" {
		t.Errorf("fitted coefficients (-want +got):\n%s", diff)
	}
	if r2 < 0.99 {
		t.Errorf("R² = %.4f, want > 0.99", r2)
	}
	if _, rel := Evaluate(got, samples); rel > 0.012 {
		t.Errorf("mean relative error %.4f, want about the 1%% noise", rel)
	}
}

// TestFitIsNonNegativeLeastSquares checks the Karush-Kuhn-Tucker conditions of FitLinear's
// problem (minimise |a x - b|² subject to c·x = d, x ≥ 0) on data where the solution
// without the bounds goes negative: at the optimum, for one multiplier μ of the equality,
// the gradient a'(a x - b) + μ c vanishes on positive coefficients and is not negative on
// zero ones; and the predicted total is the measured one.
func TestFitIsNonNegativeLeastSquares(t *testing.T) {
	// No cost per prefill sequence or per context token: with noise, least squares makes
	// them slightly negative about as often as not; seed 5 gives a negative one.
	truth := LinearCoefficients{Intercept: 5e-3, PrefillToken: 4e-6, DecodeSeq: 2e-5, PrefillAttention: 2e-11}
	samples := syntheticSamples(truth, 300, 0.05, 5)
	got, _, err := FitLinear(samples)
	if err != nil {
		t.Fatal(err)
	}
	// The final pass's system, weighted by the first pass's predictions.
	firstX, ok := solveFit(newFitSystem(samples, nil))
	if !ok {
		t.Fatal("first pass failed")
	}
	first := coefficientsFrom(firstX)
	sys := newFitSystem(samples, &first)
	if free := unboundedSolution(t, sys); mat.Min(free) >= 0 {
		t.Fatalf("test data no longer make the fit without bounds negative: %v", mat.Formatted(free.T()))
	}
	x := got.vector()
	var residual, grad mat.VecDense
	residual.MulVec(sys.a, mat.NewVecDense(numCoefficients, x[:]))
	residual.SubVec(&residual, sys.b)
	grad.MulVec(sys.a.T(), &residual)
	// In FitLinear's scaled units (columns of a at unit maximum), so one tolerance fits all
	// six; μ from the positive coefficients.
	var g, c [numCoefficients]float64
	var num, den float64
	for j := range numCoefficients {
		scale := columnMax(sys.a, j)
		g[j], c[j] = grad.AtVec(j)/scale, sys.c[j]/scale
		if x[j] > 0 {
			num -= g[j] * c[j]
			den += c[j] * c[j]
		}
	}
	mu := num / den
	for j := range numCoefficients {
		lg := g[j] + mu*c[j]
		switch {
		case x[j] < 0:
			t.Errorf("%s = %g is negative", coefficientNames[j], x[j])
		case x[j] > 0 && math.Abs(lg) > 1e-6:
			t.Errorf("%s = %g is positive but the Lagrangian's gradient is %g", coefficientNames[j], x[j], lg)
		case x[j] == 0 && lg < -1e-6:
			t.Errorf("%s = 0 but the Lagrangian's gradient %g says increasing it improves the fit", coefficientNames[j], lg)
		}
	}
	if r := Fit(got, samples); !within(r.PredictedSeconds, r.MeasuredSeconds, 1e-9) {
		t.Errorf("predicted total %v s, measured %v s", r.PredictedSeconds, r.MeasuredSeconds)
	}
}

// unboundedSolution solves sys without the bounds x ≥ 0, through its KKT equations (with
// columns scaled to unit maximum; the signs are what matters).
func unboundedSolution(t *testing.T, sys fitSystem) *mat.VecDense {
	t.Helper()
	const k = numCoefficients
	a := mat.DenseCopyOf(sys.a)
	c := sys.c
	for j := range k {
		scale := columnMax(a, j)
		col := mat.Col(nil, j, a)
		for i := range col {
			col[i] /= scale
		}
		a.SetCol(j, col)
		c[j] /= scale
	}
	var ata mat.Dense
	ata.Mul(a.T(), a)
	var atb mat.VecDense
	atb.MulVec(a.T(), sys.b)
	m := mat.NewDense(k+1, k+1, nil)
	rhs := mat.NewVecDense(k+1, nil)
	for i := range k {
		for j := range k {
			m.Set(i, j, ata.At(i, j))
		}
		m.Set(i, k, c[i])
		m.Set(k, i, c[i])
		rhs.SetVec(i, atb.AtVec(i))
	}
	rhs.SetVec(k, sys.d)
	var sol mat.VecDense
	if err := sol.SolveVec(m, rhs); err != nil {
		t.Fatal(err)
	}
	return mat.VecDenseCopyOf(sol.SliceVec(0, k))
}

func columnMax(a *mat.Dense, j int) float64 {
	n, _ := a.Dims()
	var m float64
	for i := range n {
		m = math.Max(m, math.Abs(a.At(i, j)))
	}
	return m
}

func TestFitLeavesUnexercisedFeaturesAtZero(t *testing.T) {
	truth := LinearCoefficients{Intercept: 6e-3, DecodeSeq: 2.5e-5, ContextToken: 1.5e-8}
	var decodeOnly []Sample
	for _, s := range syntheticSamples(truth, 400, 0.01, 7) {
		if s.Shape.PrefillSeqs == 0 {
			decodeOnly = append(decodeOnly, s)
		}
	}
	got, _, err := FitLinear(decodeOnly)
	if err != nil {
		t.Fatal(err)
	}
	if got.PrefillToken != 0 || got.PrefillSeq != 0 || got.PrefillAttention != 0 {
		t.Errorf("prefill coefficients %+v fitted from decode-only steps", got)
	}
	if diff := cmp.Diff(truth, got, cmpopts.EquateApprox(0.05, 5)); diff != "" {
		t.Errorf("fitted coefficients (-want +got):\n%s", diff)
	}
}

func TestFitRejectsBadSamples(t *testing.T) {
	good := syntheticSamples(LinearCoefficients{Intercept: 1e-3, DecodeSeq: 1e-5}, 20, 0, 1)
	for name, tc := range map[string]struct {
		samples []Sample
		want    string
	}{
		"too few":       {good[:3], "need at least"},
		"zero duration": {append([]Sample{{Shape: good[0].Shape}}, good...), "sample 0"},
		"NaN duration":  {append(append([]Sample{}, good...), Sample{Seconds: math.NaN()}), "sample 20"},
		"negative":      {append([]Sample{{Shape: serving.StepShape{DecodeSeqs: -1}, Seconds: 1}}, good...), "negative"},
	} {
		_, _, err := FitLinear(tc.samples)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, tc.want)
		}
	}
}

func TestEvaluate(t *testing.T) {
	c := LinearCoefficients{Intercept: 1e-3, DecodeSeq: 1e-5}
	exact := syntheticSamples(c, 50, 0, 2)
	if r2, rel := Evaluate(c, exact); !within(r2, 1, 1e-12) || rel > 1e-12 {
		t.Errorf("exact samples: R² %v, relative error %v", r2, rel)
	}
	double := LinearCoefficients{Intercept: 2e-3, DecodeSeq: 2e-5}
	if _, rel := Evaluate(double, exact); !within(rel, 1, 1e-9) {
		t.Errorf("predictions twice the truth: relative error %v, want 1", rel)
	}
}
