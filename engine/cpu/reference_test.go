package cpu

// Tolerances of the CPU kernels against float64 references.
//
// The CUDA kernels (cuda/) are checked on a GPU against these CPU kernels, so the CPU
// kernels are first checked here, at every kernel level this CPU has (AVX-512, AVX2,
// portable Go), against float64 references written plainly in the tests, on random N(0,1)
// inputs of odd and even sizes (the vector tails and the assembly paths) and on edge
// cases. A GPU kernel compared with a CPU kernel may differ by its own bound plus the CPU
// kernel's. u = 2^-24 (float32 unit roundoff); Σ|x·w| is the sum of the magnitudes of a
// dot product's terms; want is the float64 reference. "Measured" is the largest error
// seen, as a fraction of the bound, over all levels (go test -run 'Reference|BF16' -v
// logs it; 2026-12-04, AMD EPYC Zen 4).
//
//	kernel (CPU function)           bound on |got - want|                         measured  test
//	GEMM/GEMV f32 (Pool.MatMul,     1e-5·max(1, Σ|x·w|)                           0.007     TestMatMul*, TestDot,
//	  Dot, DotRows, AxpyRows)                                                               TestDotRowsAxpyRows
//	GEMM, bf16 weights (converted   the f32 bound against the bf16 values (the    0.007     TestMatMulBF16Weights
//	  by BF16ToFloat32 at load,       conversion is exact); against the weights
//	  then Pool.MatMul)               before rounding, plus 2^-9·Σ|x·w| (one bf16  0.51
//	                                  rounding per weight; a tensor-core kernel
//	                                  that also rounds x to bf16 adds as much)
//	residual add (Axpy, alpha 1)    2^-23·(|y| + |alpha·x|) (two roundings)       0.89      TestAxpyReference
//	RMSNorm (RMSNorm)               1e-5·|want| for dim <= 16384; a zero row      0.015     TestRMSNormReference
//	                                  gives zeros; Σx² must fit in float32 (|x| <
//	                                  ~1e17 at dim 4096: AVX-512 sums in float32)
//	softmax (Softmax)               (1e-6 + 2^-23·|x - max|)·want + 1e-37, up to  0.51      TestSoftmaxReference,
//	                                  131072 scores; -Inf scores give exactly 0             TestExpRange
//	SwiGLU (SiLUMul)                1e-6·|want| + 1e-30                           0.18      TestSiLUMulReference
//	RoPE rotate-half (RotateHalf)   2^-22·(|x_i| + |x_i+h|), given cos and sin    0.37      TestRotateHalfReference
//
// The other kernels' references are elsewhere: the embedding lookup, the rope table (with
// Llama 3.1 scaling), the attention scale and paged attention in
// engine/model/kernels_test.go; bf16 and f16 conversion in engine/safetensors; argmax,
// top-k and softmax/top-p over logits in engine/sampling.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"servelab/engine/safetensors"
)

// maxErr tracks the largest error seen relative to a test's bound, for the log.
type maxErr struct{ ratio float64 }

// check reports whether |got - want| <= bound, noting the ratio.
func (m *maxErr) check(got float32, want, bound float64) bool {
	d := math.Abs(float64(got) - want)
	if bound > 0 {
		m.ratio = max(m.ratio, d/bound)
	}
	return d <= bound || float64(got) == want
}

func (m *maxErr) log(t *testing.T) {
	t.Helper()
	t.Logf("largest error %.3g of the bound", m.ratio)
}

// refSizes are vector lengths around the kernels' 8-, 16- and 64-float steps and the
// model sizes (Llama-3.1-8B: dim 4096, hidden 14336).
var refSizes = []int{1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 288, 768, 4096, 4099, 14336 + 3}

func TestRMSNormReference(t *testing.T) {
	type tc struct {
		name string
		x    []float32
		eps  float32
	}
	rng := rand.New(rand.NewPCG(11, 12))
	var cases []tc
	for _, n := range refSizes {
		cases = append(cases, tc{fmt.Sprintf("normal/%d", n), randSlice(rng, n), 1e-5})
	}
	scaled := func(n int, s float32) []float32 {
		x := randSlice(rng, n)
		for i := range x {
			x[i] *= s
		}
		return x
	}
	constant := make([]float32, 100)
	for i := range constant {
		constant[i] = -3
	}
	cases = append(cases,
		tc{"zero row", make([]float32, 4096), 1e-5},
		tc{"zero row/odd", make([]float32, 77), 1e-6},
		tc{"constant row", constant, 1e-6},
		tc{"large values", scaled(4096, 1e15), 1e-5},
		tc{"tiny values (below eps)", scaled(300, 1e-20), 1e-5},
		tc{"one spike", func() []float32 { x := make([]float32, 1025); x[1024] = 7; return x }(), 1e-6},
		tc{"eps dominates", scaled(64, 1e-3), 1},
	)
	withLevels(t, func(t *testing.T) {
		var me maxErr
		for _, c := range cases {
			n := len(c.x)
			x, free := guarded(t, n)
			copy(x, c.x)
			w := randSlice(rng, n)
			dst := make([]float32, n+1)
			dst[n] = 42
			RMSNorm(dst[:n], x, w, c.eps)
			var ss float64
			for _, v := range x {
				ss += float64(v) * float64(v)
			}
			scale := 1 / math.Sqrt(ss/float64(n)+float64(c.eps))
			for i := range n {
				want := float64(x[i]) * scale * float64(w[i])
				if !me.check(dst[i], want, 1e-5*math.Abs(want)) {
					t.Fatalf("%s: [%d] = %v, want %v", c.name, i, dst[i], want)
				}
			}
			if dst[n] != 42 {
				t.Fatalf("%s: wrote past dst", c.name)
			}
			free()
		}
		me.log(t)
	})
}

// softmaxRef is softmax in float64.
func softmaxRef(x []float32) []float64 {
	m := math.Inf(-1)
	for _, v := range x {
		m = max(m, float64(v))
	}
	out := make([]float64, len(x))
	var sum float64
	for i, v := range x {
		out[i] = math.Exp(float64(v) - m)
		sum += out[i]
	}
	for i := range out {
		out[i] /= sum
	}
	return out
}

func TestSoftmaxReference(t *testing.T) {
	type tc struct {
		name string
		x    []float32
	}
	rng := rand.New(rand.NewPCG(13, 14))
	var cases []tc
	for _, n := range []int{1, 2, 7, 15, 16, 17, 63, 64, 65, 128, 1000, 4099, 32768, 131072} {
		for _, s := range []float32{1, 10} {
			x := randSlice(rng, n)
			for i := range x {
				x[i] *= s
			}
			cases = append(cases, tc{fmt.Sprintf("normal*%v/%d", s, n), x})
		}
	}
	fill := func(n int, f func(i int) float32) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = f(i)
		}
		return x
	}
	inf := float32(math.Inf(-1))
	cases = append(cases,
		tc{"all equal", fill(33, func(int) float32 { return 2.5 })},
		// exp(80000) overflows even float64: the maximum must be subtracted first.
		tc{"large values", fill(130, func(int) float32 { return 80000 + float32(rng.NormFloat64()*5) })},
		tc{"large negative values", fill(47, func(int) float32 { return -80000 + float32(rng.NormFloat64()*5) })},
		tc{"huge spread", fill(20, func(i int) float32 { return float32(math.Ldexp(float64(i%3-1), 120)) })},
		tc{"masked scores", fill(70, func(i int) float32 {
			if i%3 == 0 {
				return inf
			}
			return float32(rng.NormFloat64())
		})},
		tc{"all but one masked", fill(65, func(i int) float32 {
			if i == 40 {
				return 1.5
			}
			return inf
		})},
	)
	withLevels(t, func(t *testing.T) {
		var me maxErr
		for _, c := range cases {
			x, free := guarded(t, len(c.x))
			copy(x, c.x)
			ref := softmaxRef(c.x)
			m := math.Inf(-1)
			for _, v := range c.x {
				m = max(m, float64(v))
			}
			Softmax(x)
			for i, want := range ref {
				tol := 1e-6 + math.Abs(float64(c.x[i])-m)*0x1p-23
				if math.IsInf(float64(c.x[i]), -1) {
					tol = 0 // exactly zero
				}
				if !me.check(x[i], want, tol*want+1e-37) {
					t.Fatalf("%s: [%d] = %v, want %v", c.name, i, x[i], want)
				}
			}
			free()
		}
		me.log(t)
	})
}

func TestSiLUMulReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	withLevels(t, func(t *testing.T) {
		var me maxErr
		for _, n := range refSizes {
			for _, s := range []float64{1, 8} { // gate pre-activations up to ±40
				g0 := randSlice(rng, n)
				for i := range g0 {
					g0[i] *= float32(s)
				}
				gate, freeG := guarded(t, n)
				up, freeU := guarded(t, n)
				copy(gate, g0)
				copy(up, randSlice(rng, n))
				SiLUMul(gate, up)
				for i, g := range g0 {
					want := float64(g) / (1 + math.Exp(-float64(g))) * float64(up[i])
					if !me.check(gate[i], want, 1e-6*math.Abs(want)+1e-30) {
						t.Fatalf("n=%d scale %v: [%d] silu(%v)*%v = %v, want %v", n, s, i, g, up[i], gate[i], want)
					}
				}
				freeG()
				freeU()
			}
		}
		me.log(t)
	})
}

// TestAxpyReference is the residual add of the forward pass (alpha 1) and other alphas.
func TestAxpyReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	withLevels(t, func(t *testing.T) {
		var me maxErr
		for _, n := range refSizes {
			for _, alpha := range []float32{1, -0.75, 3e-3} {
				x, free := guarded(t, n)
				copy(x, randSlice(rng, n))
				y0 := randSlice(rng, n+1)
				y := append([]float32(nil), y0...)
				Axpy(alpha, x, y[:n])
				for i := range n {
					ax := float64(alpha) * float64(x[i])
					want := float64(y0[i]) + ax
					if !me.check(y[i], want, 0x1p-23*(math.Abs(float64(y0[i]))+math.Abs(ax))) {
						t.Fatalf("n=%d alpha=%v: y[%d] = %v, want %v", n, alpha, i, y[i], want)
					}
				}
				if y[n] != y0[n] {
					t.Fatalf("n=%d: wrote past y", n)
				}
				free()
			}
		}
		me.log(t)
	})
}

func TestRotateHalfReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	var me maxErr
	for _, hd := range []int{2, 12, 32, 48, 64, 96, 128, 130, 256} {
		for range 4 {
			h := hd / 2
			x0 := randSlice(rng, hd)
			cos, sin := make([]float32, h), make([]float32, h)
			for i := range cos {
				a := rng.Float64() * 1e4 // positions times frequencies: large angles
				cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
			}
			x := append([]float32(nil), x0...)
			RotateHalf(x, cos, sin)
			for i := range h {
				a, b := float64(x0[i]), float64(x0[i+h])
				c, s := float64(cos[i]), float64(sin[i])
				bound := 0x1p-22 * (math.Abs(a) + math.Abs(b))
				if !me.check(x[i], a*c-b*s, bound) || !me.check(x[i+h], b*c+a*s, bound) {
					t.Fatalf("hd=%d: pair %d = (%v, %v), want (%v, %v)", hd, i, x[i], x[i+h], a*c-b*s, b*c+a*s)
				}
			}
		}
	}
	me.log(t)
}

// TestMatMulBF16Weights is the CPU path of a bf16 model: weights are converted to float32
// at load (safetensors.BF16ToFloat32) and multiplied in float32. Against the bf16 values
// the product keeps the f32 bound (the conversion is exact); against the weights before
// rounding to bf16 it is off by at most 2^-9 of Σ|x·w|.
func TestMatMulBF16Weights(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(21, 22))
		pool := NewPool(2)
		var exact, rounded maxErr
		for _, s := range []struct{ n, in, out int }{
			{1, 4096, 37}, {2, 4096, 19}, {3, 1000, 13}, {4, 288, 40}, {5, 777, 6}, {17, 288, 23}, {9, 65, 64},
		} {
			x := randSlice(rng, s.n*s.in)
			w32 := randSlice(rng, s.out*s.in)
			raw := safetensors.EncodeBF16(w32)
			w, free := guarded(t, s.out*s.in)
			for i := range w {
				w[i] = safetensors.BF16ToFloat32(uint16(raw[2*i]) | uint16(raw[2*i+1])<<8)
			}
			y := make([]float32, s.n*s.out)
			pool.MatMul(y, x, w, s.n, s.in, s.out)
			for r := range s.n {
				for o := range s.out {
					var want, want32, mag float64
					for k := range s.in {
						xv := float64(x[r*s.in+k])
						want += xv * float64(w[o*s.in+k])
						want32 += xv * float64(w32[o*s.in+k])
						mag += math.Abs(xv * float64(w32[o*s.in+k]))
					}
					got := y[r*s.out+o]
					f32 := 1e-5 * max(1, mag)
					if !exact.check(got, want, f32) {
						t.Fatalf("%+v: y[%d][%d] = %v, want %v (bf16 weights)", s, r, o, got, want)
					}
					if !rounded.check(got, want32, 0x1p-9*mag+f32) {
						t.Fatalf("%+v: y[%d][%d] = %v, want %v (f32 weights before rounding)", s, r, o, got, want32)
					}
				}
			}
			free()
		}
		t.Logf("against the bf16 weights: %.3g of the bound; against the f32 weights: %.3g", exact.ratio, rounded.ratio)
	})
}
