package sampling

import (
	"math"
	"testing"
)

func TestGreedyIsArgmax(t *testing.T) {
	logits := []float32{0.1, 3, -1, 3, 2}
	for _, p := range []Params{{}, {Temperature: 0.8, TopK: 1}} {
		if got := New(p, 1).Sample(logits); got != 1 {
			t.Errorf("%+v: got %d, want 1 (first of the tied maxima)", p, got)
		}
	}
}

func TestSeededDrawsRepeat(t *testing.T) {
	logits := make([]float32, 100)
	for i := range logits {
		logits[i] = float32(math.Sin(float64(i)))
	}
	p := Params{Temperature: 1, Seed: 42, Seeded: true}
	a, b := New(p, 1), New(p, 2) // the request's seed wins over the engine's
	for i := range 50 {
		if x, y := a.Sample(logits), b.Sample(logits); x != y {
			t.Fatalf("draw %d: %d != %d with the same seed", i, x, y)
		}
	}
}

func TestFiltersRestrictSupport(t *testing.T) {
	// Probabilities at temperature 1: softmax of these logits.
	logits := []float32{4, 3, 2, 1, 0, -1}
	tests := []struct {
		name    string
		p       Params
		allowed map[int32]bool
	}{
		{"top_k=2", Params{Temperature: 1, TopK: 2}, map[int32]bool{0: true, 1: true}},
		// p0 = 0.636, p0+p1 = 0.870: top_p 0.8 keeps two tokens.
		{"top_p=0.8", Params{Temperature: 1, TopP: 0.8}, map[int32]bool{0: true, 1: true}},
		// min_p 0.3: e^-1 = 0.37 keeps token 1, e^-2 = 0.14 drops token 2.
		{"min_p=0.3", Params{Temperature: 1, MinP: 0.3}, map[int32]bool{0: true, 1: true}},
		{"top_p=0.5", Params{Temperature: 1, TopP: 0.5}, map[int32]bool{0: true}},
	}
	for _, tc := range tests {
		s := New(tc.p, 7)
		seen := map[int32]int{}
		for range 2000 {
			id := s.Sample(logits)
			if !tc.allowed[id] {
				t.Fatalf("%s: drew %d outside %v", tc.name, id, tc.allowed)
			}
			seen[id]++
		}
		if len(seen) != len(tc.allowed) {
			t.Errorf("%s: drew %v, want every token of %v", tc.name, seen, tc.allowed)
		}
	}
}

func TestTemperatureMatchesSoftmax(t *testing.T) {
	logits := []float32{1, 0, -1}
	s := New(Params{Temperature: 2}, 3)
	const n = 200000
	counts := make([]float64, 3)
	for range n {
		counts[s.Sample(logits)]++
	}
	var z float64
	for _, l := range logits {
		z += math.Exp(float64(l) / 2)
	}
	for i, l := range logits {
		want := math.Exp(float64(l)/2) / z
		if got := counts[i] / n; math.Abs(got-want) > 0.01 {
			t.Errorf("token %d: frequency %.4f, want %.4f", i, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	bad := []Params{{Temperature: -1}, {TopP: 1.5}, {TopK: -2}, {MinP: 2}, {Temperature: math.NaN()}}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if err := (Params{Temperature: 0.7, TopK: -1, TopP: 0.9}).Validate(); err != nil {
		t.Error(err)
	}
}

func BenchmarkSample32000(b *testing.B) {
	logits := make([]float32, 32000)
	for i := range logits {
		logits[i] = float32(math.Sin(float64(i) * 0.37))
	}
	for _, p := range []Params{{}, {Temperature: 0.8}, {Temperature: 0.8, TopK: 50}, {Temperature: 0.8, TopP: 0.95}} {
		s := New(p, 1)
		b.Run("", func(b *testing.B) {
			for b.Loop() {
				s.Sample(logits)
			}
		})
	}
}
