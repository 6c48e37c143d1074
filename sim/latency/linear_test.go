package latency

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"servelab/serving"
)

// TestPredictMatchesFeatures keeps the written-out predict in step with features, which the
// fit uses.
func TestPredictMatchesFeatures(t *testing.T) {
	c := LinearCoefficients{Intercept: 1, PrefillToken: 2, PrefillSeq: 3, DecodeSeq: 4, ContextToken: 5, PrefillAttention: 6}
	rng := rand.New(rand.NewPCG(9, 9))
	for range 100 {
		s := serving.StepShape{PrefillTokens: rng.IntN(100), PrefillSeqs: rng.IntN(5), DecodeSeqs: rng.IntN(100),
			ContextTokens: rng.IntN(1000), DecodeContextTokens: rng.IntN(1000), PrefillAttention: float64(rng.IntN(10000))}
		f, v := features(s), c.vector()
		var dot float64
		for i := range f {
			dot += f[i] * v[i]
		}
		if got := c.predict(s); got != dot {
			t.Fatalf("%+v: predict %v, dot product %v", s, got, dot)
		}
	}
	if got := coefficientsFrom(c.vector()); got != c {
		t.Errorf("vector round trip: %+v", got)
	}
}

func TestLinearCoefficientsValidate(t *testing.T) {
	for _, tc := range []struct {
		c    LinearCoefficients
		want string
	}{
		{LinearCoefficients{Intercept: 1e-3}, ""},
		{LinearCoefficients{}, "all zero"},
		{LinearCoefficients{Intercept: 1e-3, ContextToken: -1e-9}, "per_context_token_s"},
		{LinearCoefficients{PrefillSeq: math.Inf(1)}, "per_prefill_seq_s"},
		{LinearCoefficients{DecodeSeq: math.NaN()}, "per_decode_seq_s"},
	} {
		err := tc.c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}
