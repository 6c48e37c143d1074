package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func randSlice(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

// withPaths runs f on the assembly kernels (where the CPU has them) and the portable code.
func withPaths(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	saved := useAVX2
	defer func() { useAVX2 = saved }()
	for _, fast := range []bool{true, false} {
		if fast && !saved {
			continue
		}
		useAVX2 = fast
		t.Run(fmt.Sprintf("simd=%v", fast), f)
	}
}

func TestMatMulMatchesFloat64(t *testing.T) {
	withPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		pool := NewPool(3)
		for _, n := range []int{1, 2, 3, 4, 5, 7, 9, 16} {
			for _, in := range []int{1, 7, 8, 9, 31, 33, 64, 70, 288} {
				for _, out := range []int{1, 2, 3, 4, 5, 11, 13, 25, 40} {
					x, w := randSlice(rng, n*in), randSlice(rng, out*in)
					y := make([]float32, n*out)
					pool.MatMul(y, x, w, n, in, out)
					for r := range n {
						for o := range out {
							var want, mag float64
							for k := range in {
								p := float64(x[r*in+k]) * float64(w[o*in+k])
								want += p
								mag += math.Abs(p)
							}
							if got := float64(y[r*out+o]); math.Abs(got-want) > 1e-5*max(1, mag) {
								t.Fatalf("n=%d in=%d out=%d y[%d][%d] = %v, want %v", n, in, out, r, o, got, want)
							}
						}
					}
				}
			}
		}
	})
}

func TestDotAndOps(t *testing.T) {
	withPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		for _, n := range []int{0, 1, 5, 8, 31, 32, 33, 64, 100, 768} {
			a, b := randSlice(rng, n), randSlice(rng, n)
			var want, mag float64
			for i := range a {
				want += float64(a[i]) * float64(b[i])
				mag += math.Abs(float64(a[i]) * float64(b[i]))
			}
			if got := float64(Dot(a, b)); math.Abs(got-want) > 1e-5*max(1, mag) {
				t.Errorf("Dot n=%d: %v, want %v", n, got, want)
			}
		}
	})
	x := []float32{1, 2, 3, 4}
	Softmax(x)
	var sum float32
	for _, v := range x {
		sum += v
	}
	if math.Abs(float64(sum)-1) > 1e-6 || !(x[3] > x[2]) {
		t.Errorf("softmax %v", x)
	}
	dst := make([]float32, 2)
	RMSNorm(dst, []float32{3, 4}, []float32{1, 2}, 0)
	if want := float32(3 / math.Sqrt(12.5)); math.Abs(float64(dst[0]-want)) > 1e-6 || math.Abs(float64(dst[1]-2*4/float32(math.Sqrt(12.5)))) > 1e-6 {
		t.Errorf("rmsnorm %v", dst)
	}
}

// benchShapes are the linear layers of the TinyStories 15M and 110M models (out x in).
var benchShapes = [][2]int{{288, 288}, {768, 288}, {288, 768}, {32000, 288}, {768, 768}, {2048, 768}, {768, 2048}, {32000, 768}}

func BenchmarkMatMul(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	pool := NewPool(0)
	for _, n := range []int{1, 16, 128} {
		for _, s := range benchShapes {
			out, in := s[0], s[1]
			x, w, y := randSlice(rng, n*in), randSlice(rng, out*in), make([]float32, n*out)
			b.Run(fmt.Sprintf("n=%d/%dx%d", n, out, in), func(b *testing.B) {
				for b.Loop() {
					pool.MatMul(y, x, w, n, in, out)
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(2*float64(n*in*out)/sec/1e9, "GFLOP/s")
				b.ReportMetric(4*float64(in*out)/sec/1e9, "weightGB/s")
			})
		}
	}
}

func BenchmarkDot(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	x, y := randSlice(rng, 64), randSlice(rng, 64)
	for b.Loop() {
		Dot(x, y)
	}
}

func TestAxpy(t *testing.T) {
	withPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		for _, n := range []int{0, 1, 7, 8, 9, 16, 33, 100} {
			x, y := randSlice(rng, n), randSlice(rng, n)
			want := make([]float64, n)
			for i := range want {
				want[i] = float64(y[i]) + 0.5*float64(x[i])
			}
			Axpy(0.5, x, y)
			for i := range y {
				if math.Abs(float64(y[i])-want[i]) > 1e-6*max(1, math.Abs(want[i])) {
					t.Fatalf("n=%d: y[%d] = %v, want %v", n, i, y[i], want[i])
				}
			}
		}
	})
}
