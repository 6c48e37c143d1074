package latency

import (
	"testing"

	"servelab/serving"
)

var benchShape = serving.StepShape{PrefillTokens: 512, PrefillSeqs: 1, DecodeSeqs: 64, ContextTokens: 64 * 1500, DecodeContextTokens: 64 * 1400, PrefillAttention: 512 * 600}

func benchmarkStepTime(b *testing.B, m Model) {
	b.ReportAllocs()
	var sum float64
	for i := range b.N {
		s := benchShape
		s.DecodeSeqs += i & 63 // vary the input so the call is not hoisted
		sum += m.StepTime(s)
	}
	if sum < 0 {
		b.Fatal(sum)
	}
}

func BenchmarkRooflineStepTime(b *testing.B) {
	benchmarkStepTime(b, roofline(b, "h100", "llama-3.1-8b", 1))
}

func BenchmarkLinearStepTime(b *testing.B) {
	benchmarkStepTime(b, NewLinear(LinearCoefficients{Intercept: 1e-3, PrefillToken: 4e-6, PrefillSeq: 2e-4, DecodeSeq: 3e-5, ContextToken: 1e-8, PrefillAttention: 5e-12}))
}
