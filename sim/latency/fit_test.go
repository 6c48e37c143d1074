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
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0.05, 0)); diff != "" {
		t.Errorf("fitted coefficients (-want +got):\n%s", diff)
	}
	if r2 < 0.99 {
		t.Errorf("R² = %.4f, want > 0.99", r2)
	}
	if _, rel := Evaluate(got, samples); rel > 0.012 {
		t.Errorf("mean relative error %.4f, want about the 1%% noise", rel)
	}
}

// TestFitIsNonNegativeLeastSquares checks the Karush-Kuhn-Tucker conditions of the
// relative-error problem on data where ordinary least squares goes negative: at the
// optimum, the gradient vanishes on positive coefficients and points up on zero ones.
func TestFitIsNonNegativeLeastSquares(t *testing.T) {
	// No cost per prefill sequence or per context token: with noise, OLS makes them
	// slightly negative about as often as not; seed 5 gives a negative one.
	truth := LinearCoefficients{Intercept: 5e-3, PrefillToken: 4e-6, DecodeSeq: 2e-5, PrefillAttention: 2e-11}
	samples := syntheticSamples(truth, 300, 0.05, 5)
	a, b := weightedSystem(samples)
	var ols mat.VecDense
	if err := ols.SolveVec(a, b); err != nil {
		t.Fatal(err)
	}
	if mat.Min(&ols) >= 0 {
		t.Fatalf("test data no longer make ordinary least squares negative: %v", mat.Formatted(ols.T()))
	}
	got, _, err := FitLinear(samples)
	if err != nil {
		t.Fatal(err)
	}
	x := got.vector()
	var xv mat.VecDense
	xv.CloneFromVec(mat.NewVecDense(numCoefficients, x[:]))
	var residual, grad mat.VecDense
	residual.MulVec(a, &xv)
	residual.SubVec(&residual, b)
	grad.MulVec(a.T(), &residual)
	for j := range numCoefficients {
		// The gradient with respect to the coefficient in FitLinear's scaled units, so one
		// tolerance fits all six.
		g := grad.AtVec(j) / columnMax(a, j)
		switch {
		case x[j] < 0:
			t.Errorf("%s = %g is negative", coefficientNames[j], x[j])
		case x[j] > 0 && math.Abs(g) > 1e-6:
			t.Errorf("%s = %g is positive but the gradient is %g", coefficientNames[j], x[j], g)
		case x[j] == 0 && g < -1e-6:
			t.Errorf("%s = 0 but the gradient %g says increasing it improves the fit", coefficientNames[j], g)
		}
	}
}

// weightedSystem is FitLinear's problem without column scaling: rows divided by seconds.
func weightedSystem(samples []Sample) (*mat.Dense, *mat.VecDense) {
	a := mat.NewDense(len(samples), numCoefficients, nil)
	b := mat.NewVecDense(len(samples), nil)
	for i, s := range samples {
		f := features(s.Shape)
		for j := range f {
			a.Set(i, j, f[j]/s.Seconds)
		}
		b.SetVec(i, 1)
	}
	return a, b
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
	if diff := cmp.Diff(truth, got, cmpopts.EquateApprox(0.05, 0)); diff != "" {
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
