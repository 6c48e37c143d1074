package safetensors

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// The bf16 and f16 conversions are the CPU reference for the CUDA kernels' (which load
// bf16 weights and embeddings): decoding must be exact and encoding must round to the
// nearest value, ties to even. These tests derive the expected results from the formats'
// definitions in float64, not from bit manipulation.

// bf16Value is the value of a bfloat16 bit pattern by definition: sign, 8 exponent bits
// (bias 127), 7 fraction bits; NaN for all-ones exponents with a non-zero fraction.
func bf16Value(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e, m := int(h>>7)&0xff, float64(h&0x7f)
	switch {
	case e == 0xff && m == 0:
		return math.Inf(int(sign))
	case e == 0xff:
		return math.NaN()
	case e == 0:
		return sign * m / 128 * math.Ldexp(1, -126)
	}
	return sign * (1 + m/128) * math.Ldexp(1, e-127)
}

// f16Value is the value of an IEEE binary16 bit pattern: 5 exponent bits (bias 15), 10
// fraction bits.
func f16Value(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e, m := int(h>>10)&0x1f, float64(h&0x3ff)
	switch {
	case e == 0x1f && m == 0:
		return math.Inf(int(sign))
	case e == 0x1f:
		return math.NaN()
	case e == 0:
		return sign * m / 1024 * math.Ldexp(1, -14)
	}
	return sign * (1 + m/1024) * math.Ldexp(1, e-15)
}

func TestBF16DecodeMatchesDefinition(t *testing.T) {
	for h := range 1 << 16 {
		got, want := float64(BF16ToFloat32(uint16(h))), bf16Value(uint16(h))
		if math.IsNaN(want) {
			if !math.IsNaN(got) {
				t.Fatalf("BF16ToFloat32(%#04x) = %v, want NaN", h, got)
			}
			continue
		}
		if got != want || math.Signbit(got) != (h&0x8000 != 0) {
			t.Fatalf("BF16ToFloat32(%#04x) = %v, want %v", h, got, want)
		}
	}
}

func TestF16DecodeMatchesDefinition(t *testing.T) {
	for h := range 1 << 16 {
		got, want := float64(F16ToFloat32(uint16(h))), f16Value(uint16(h))
		if math.IsNaN(want) {
			if !math.IsNaN(got) {
				t.Fatalf("F16ToFloat32(%#04x) = %v, want NaN", h, got)
			}
			continue
		}
		if got != want || math.Signbit(got) != (h&0x8000 != 0) {
			t.Fatalf("F16ToFloat32(%#04x) = %v, want %v", h, got, want)
		}
	}
}

// nearest returns the pattern among the sorted non-negative finite values (vals, with
// their patterns pats) nearest to v >= 0, ties to the even pattern; above the largest
// value, v rounds to inf (pattern infBits) from the midpoint between the largest value
// and the next power of the format's ulp (top + ulp), as IEEE 754 rounding does.
func nearest(v float64, vals []float64, pats []uint16, ulpTop float64, infBits uint16) uint16 {
	i, _ := slices.BinarySearch(vals, v) // vals[i-1] < v <= vals[i]
	if i == len(vals) {
		top := vals[len(vals)-1]
		if v-top < ulpTop/2 {
			return pats[len(pats)-1]
		}
		return infBits // the tie goes to inf: the largest finite value's pattern is odd
	}
	if vals[i] == v || i == 0 {
		return pats[i]
	}
	lo, hi := v-vals[i-1], vals[i]-v
	switch {
	case lo < hi:
		return pats[i-1]
	case hi < lo:
		return pats[i]
	case pats[i]&1 == 0:
		return pats[i]
	}
	return pats[i-1]
}

// finiteValues lists a 16-bit format's non-negative finite values in order with their
// patterns (positive zero first).
func finiteValues(value func(uint16) float64) ([]float64, []uint16) {
	var vals []float64
	var pats []uint16
	for h := range uint16(0x8000) {
		v := value(h)
		if math.IsInf(v, 0) || math.IsNaN(v) {
			continue
		}
		vals, pats = append(vals, v), append(pats, h)
	}
	return vals, pats
}

// encodeInputs are float32 bit patterns for the encoders: every high half with low halves
// around the bf16 rounding point (ties, just below and above), zeros, infinities,
// subnormals and NaNs among them, and random patterns.
func encodeInputs() []uint32 {
	var in []uint32
	for hi := range uint32(1 << 16) {
		for _, lo := range []uint32{0, 1, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xc000, 0xffff} {
			in = append(in, hi<<16|lo)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1 << 18 {
		in = append(in, rng.Uint32())
	}
	return in
}

func TestFloat32ToBF16MatchesNearest(t *testing.T) {
	vals, pats := finiteValues(bf16Value)
	ulpTop := math.Ldexp(1, 127-7) // the largest finite bf16 value's ulp
	for _, bits := range encodeInputs() {
		f := math.Float32frombits(bits)
		got := Float32ToBF16(f)
		if math.IsNaN(float64(f)) {
			// A quiet NaN with the input's sign and top 6 payload bits.
			if want := uint16(bits>>16) | 0x40; got != want || !math.IsNaN(bf16Value(got)) {
				t.Fatalf("Float32ToBF16(%#08x NaN) = %#04x, want %#04x", bits, got, want)
			}
			continue
		}
		want := nearest(math.Abs(float64(f)), vals, pats, ulpTop, 0x7f80) | uint16(bits>>16)&0x8000
		if got != want {
			t.Fatalf("Float32ToBF16(%g = %#08x) = %#04x (%g), want %#04x (%g)", f, bits, got, bf16Value(got), want, bf16Value(want))
		}
	}
}

func TestFloat32ToF16MatchesNearest(t *testing.T) {
	vals, pats := finiteValues(f16Value)
	ulpTop := math.Ldexp(1, 15-10)
	for _, bits := range encodeInputs() {
		f := math.Float32frombits(bits)
		got := Float32ToF16(f)
		if math.IsNaN(float64(f)) {
			if !math.IsNaN(f16Value(got)) || got&0x8000 != uint16(bits>>16)&0x8000 {
				t.Fatalf("Float32ToF16(%#08x NaN) = %#04x, want a NaN of the same sign", bits, got)
			}
			continue
		}
		want := nearest(math.Abs(float64(f)), vals, pats, ulpTop, 0x7c00) | uint16(bits>>16)&0x8000
		if got != want {
			t.Fatalf("Float32ToF16(%g = %#08x) = %#04x (%g), want %#04x (%g)", f, bits, got, f16Value(got), want, f16Value(want))
		}
	}
}
