package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// BenchmarkGonumSgemm is gonum's pure-Go BLAS on the same products as BenchmarkMatMul
// (y = x * wᵀ), so make bench shows per shape whether gonum's BLAS would be the faster
// choice (docs/BENCHMARKS.md). On 2026-11-25, with the AVX-512 kernels on 2 Zen 4 cores,
// MatMul won every shape: at batch 1 4-9x (gonum 4.5-15 GFLOP/s, MatMul 21-92), at
// batch 16 and 128 7-9x (gonum 20-28 GFLOP/s, MatMul 174-219). MatMul never calls Sgemm.
func BenchmarkGonumSgemm(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	var impl gonum.Implementation
	for _, n := range []int{1, 16, 128} {
		for _, s := range benchShapes {
			out, in := s[0], s[1]
			x, w, y := randSlice(rng, n*in), randSlice(rng, out*in), make([]float32, n*out)
			b.Run(fmt.Sprintf("n=%d/%dx%d", n, out, in), func(b *testing.B) {
				for b.Loop() {
					impl.Sgemm(blas.NoTrans, blas.Trans, n, out, in, 1, x, in, w, in, 0, y, out)
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(2*float64(n*in*out)/sec/1e9, "GFLOP/s")
			})
		}
	}
}

func TestGonumAgrees(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	var impl gonum.Implementation
	n, in, out := 5, 37, 11
	x, w := randSlice(rng, n*in), randSlice(rng, out*in)
	want, got := make([]float32, n*out), make([]float32, n*out)
	impl.Sgemm(blas.NoTrans, blas.Trans, n, out, in, 1, x, in, w, in, 0, want, out)
	NewPool(2).MatMul(got, x, w, n, in, out)
	for i := range want {
		if d := want[i] - got[i]; d > 1e-4 || d < -1e-4 {
			t.Fatalf("y[%d]: MatMul %v, gonum %v", i, got[i], want[i])
		}
	}
}
