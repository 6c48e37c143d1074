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

var levelNames = []string{levelGeneric: "generic", levelAVX2: "avx2", levelAVX512: "avx512"}

// withLevels runs f at every kernel level this CPU supports, down to the portable code.
func withLevels(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	saved := level
	defer func() { level = saved }()
	for l := bestLevel; l >= levelGeneric; l-- {
		level = l
		t.Run(levelNames[l], f)
	}
}

// close32 reports whether got is within 1e-5 of want relative to mag, the sum of the
// magnitudes of the products (float32 accumulation error grows with it), or absolutely
// for tiny sums.
func close32(got float32, want, mag float64) bool {
	return math.Abs(float64(got)-want) <= 1e-5*max(1, mag)
}

// checkMatMul runs MatMul on operands that end at a page boundary (an unmasked read past
// the end faults) and compares every output with a float64 reference; it also checks
// that nothing past y[:n*out] is written.
func checkMatMul(t *testing.T, pool *Pool, rng *rand.Rand, n, in, out int) {
	t.Helper()
	x, freeX := guarded(t, n*in)
	defer freeX()
	w, freeW := guarded(t, out*in)
	defer freeW()
	copy(x, randSlice(rng, n*in))
	copy(w, randSlice(rng, out*in))
	ybuf := make([]float32, n*out+17)
	for i := range ybuf {
		ybuf[i] = float32(math.NaN())
	}
	y := ybuf[:n*out]
	pool.MatMul(y, x, w, n, in, out)
	for r := range n {
		for o := range out {
			var want, mag float64
			for k := range in {
				p := float64(x[r*in+k]) * float64(w[o*in+k])
				want += p
				mag += math.Abs(p)
			}
			if got := y[r*out+o]; !close32(got, want, mag) {
				t.Fatalf("n=%d in=%d out=%d: y[%d][%d] = %v, want %v", n, in, out, r, o, got, want)
			}
		}
	}
	for i, v := range ybuf[n*out:] {
		if !math.IsNaN(float64(v)) {
			t.Fatalf("n=%d in=%d out=%d: wrote y[%d] past the end", n, in, out, n*out+i)
		}
	}
}

func TestMatMulSmall(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		pool := NewPool(3)
		for n := 1; n <= 9; n++ {
			for in := 1; in <= 70; in++ {
				for out := 1; out <= 40; out++ {
					if testing.Short() && (in*7+out*3+n)%5 != 0 {
						continue
					}
					checkMatMul(t, pool, rng, n, in, out)
				}
			}
		}
	})
}

func TestMatMulModelShapes(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		pool := NewPool(2)
		for _, in := range []int{288, 768, 2048} {
			for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17} {
				for _, out := range []int{1, 2, 5, 6, 7, 11, 13, 40, 768} {
					if testing.Short() && out == 768 && n > 4 {
						continue
					}
					checkMatMul(t, pool, rng, n, in, out)
				}
			}
		}
	})
}

// TestMatMulTiles covers the AVX-512 path's tiling of x rows (a tile of x is ~512 KB).
func TestMatMulTiles(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		pool := NewPool(2)
		checkMatMul(t, pool, rng, 70, 2048, 13)  // tiles of 64 rows: 64 + 6
		checkMatMul(t, pool, rng, 131, 1100, 20) // tiles of 116 rows, chunks of 560 columns
		// Short chunks of columns, so that small shapes cover chunking and its tails.
		saved := kcMax
		defer func() { kcMax = saved }()
		kcMax = 32
		for _, n := range []int{3, 4, 5, 9} {
			for _, in := range []int{31, 33, 48, 63, 64, 65, 100} {
				for _, out := range []int{6, 7, 13, 24} {
					checkMatMul(t, pool, rng, n, in, out)
				}
			}
		}
	})
}

func TestMatMulEmpty(t *testing.T) {
	pool := NewPool(2)
	y := []float32{1, 2, 3, 4}
	pool.MatMul(y, nil, nil, 2, 0, 2)
	for _, v := range y {
		if v != 0 {
			t.Fatalf("in=0: y = %v, want zeros", y)
		}
	}
	pool.MatMul(nil, nil, make([]float32, 15), 0, 5, 3)
	pool.MatMul(nil, make([]float32, 15), nil, 3, 5, 0)
}

func TestDot(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		sizes := []int{288, 768, 2048, 4096 + 5}
		for n := 0; n <= 130; n++ {
			sizes = append(sizes, n)
		}
		for _, n := range sizes {
			a, freeA := guarded(t, n)
			b, freeB := guarded(t, n)
			copy(a, randSlice(rng, n))
			copy(b, randSlice(rng, n))
			var want, mag float64
			for i := range a {
				want += float64(a[i]) * float64(b[i])
				mag += math.Abs(float64(a[i]) * float64(b[i]))
			}
			if got := Dot(a, b); !close32(got, want, mag) {
				t.Errorf("Dot n=%d: %v, want %v", n, got, want)
			}
			freeA()
			freeB()
		}
	})
}

func TestAxpy(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		for n := 0; n <= 100; n++ {
			x, free := guarded(t, n)
			copy(x, randSlice(rng, n))
			ybuf := randSlice(rng, n+16)
			y := ybuf[:n]
			want := make([]float64, n+16)
			for i := range want {
				want[i] = float64(ybuf[i])
				if i < n {
					want[i] += 0.5 * float64(x[i])
				}
			}
			Axpy(0.5, x, y)
			for i := range ybuf {
				if math.Abs(float64(ybuf[i])-want[i]) > 1e-6*max(1, math.Abs(want[i])) {
					t.Fatalf("n=%d: y[%d] = %v, want %v", n, i, ybuf[i], want[i])
				}
			}
			free()
		}
	})
}

func TestElementwise(t *testing.T) {
	withLevels(t, testElementwise)
}

func testElementwise(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	sizes := []int{288, 768, 2048}
	for n := 1; n <= 70; n++ {
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		x, wt := randSlice(rng, n), randSlice(rng, n)
		var ss float64
		for _, v := range x {
			ss += float64(v) * float64(v)
		}
		dst := make([]float32, n)
		RMSNorm(dst, x, wt, 1e-5)
		scale := 1 / math.Sqrt(ss/float64(n)+1e-5)
		for i := range dst {
			if want := float64(x[i]) * scale * float64(wt[i]); math.Abs(float64(dst[i])-want) > 1e-5*max(1, math.Abs(want)) {
				t.Fatalf("RMSNorm n=%d [%d] = %v, want %v", n, i, dst[i], want)
			}
		}

		sm := append([]float32(nil), x...)
		for i := range sm {
			sm[i] *= 10 // a wide range of exponents
		}
		ref := make([]float64, n)
		m, sum := math.Inf(-1), 0.0
		for _, v := range sm {
			m = max(m, float64(v))
		}
		for i, v := range sm {
			ref[i] = math.Exp(float64(v) - m)
			sum += ref[i]
		}
		Softmax(sm)
		for i := range sm {
			if want := ref[i] / sum; math.Abs(float64(sm[i])-want) > 1e-6*max(1e-2, want) {
				t.Fatalf("Softmax n=%d [%d] = %v, want %v", n, i, sm[i], want)
			}
		}

		gate, up := append([]float32(nil), x...), wt
		SiLUMul(gate, up)
		for i := range gate {
			g := float64(x[i])
			if want := g / (1 + math.Exp(-g)) * float64(up[i]); math.Abs(float64(gate[i])-want) > 1e-6*max(1, math.Abs(want)) {
				t.Fatalf("SiLUMul n=%d [%d] = %v, want %v", n, i, gate[i], want)
			}
		}

		if n%2 == 0 {
			h := n / 2
			rot := append([]float32(nil), x...)
			cos, sin := make([]float32, h), make([]float32, h)
			for i := range cos {
				a := rng.Float64() * 2 * math.Pi
				cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
			}
			RotateHalf(rot, cos, sin)
			for i := range h {
				a, b := float64(x[i]), float64(x[i+h])
				c, s := float64(cos[i]), float64(sin[i])
				if math.Abs(float64(rot[i])-(a*c-b*s)) > 1e-5 || math.Abs(float64(rot[i+h])-(b*c+a*s)) > 1e-5 {
					t.Fatalf("RotateHalf n=%d [%d]", n, i)
				}
			}
		}
	}
	x := []float32{1, 2, 3, 4}
	Softmax(x)
	if !(x[3] > x[2]) {
		t.Errorf("softmax %v", x)
	}
	Softmax(nil)
}

// benchShapes are the linear layers of the TinyStories 15M and 110M models (out x in).
var benchShapes = [][2]int{{288, 288}, {768, 288}, {288, 768}, {32000, 288}, {768, 768}, {2048, 768}, {768, 2048}, {32000, 768}}

// BenchmarkMatMul runs each shape on its own, so weights that fit in L3 (all but the
// 32000-row classifiers) come from cache; BenchmarkDecode* runs a whole model's worth.
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

// modelShape is the part of a Llama model's decode step that is matrix multiplication.
type modelShape struct {
	dim, hidden, layers, vocab int
}

// BenchmarkDecode15M and BenchmarkDecode110M estimate a decode step from its matrix
// multiplications alone: per layer q, k, v, o (dim x dim each, these models have no
// grouped KV heads), gate and up (hidden x dim each), down (dim x hidden), then the
// classifier (vocab x dim) once. As in the engine (engine/model), q/k/v and gate/up are
// fused into one MatMul each. Every layer has its own weights, so the step reads the
// model's whole size from memory as a real one does (15M: 61 MB, more than L3; 110M:
// 438 MB). Attention, norms and activations are left out; at n = 16 and context 128
// they add roughly a quarter in the engine. n = 16 is 16 sequences decoding one token
// each (aggregate tok/s); n = 128 is a 128-token prefill (tok/s of prompt tokens).
func BenchmarkDecode15M(b *testing.B) {
	benchDecode(b, modelShape{dim: 288, hidden: 768, layers: 6, vocab: 32000})
}

func BenchmarkDecode110M(b *testing.B) {
	benchDecode(b, modelShape{dim: 768, hidden: 2048, layers: 12, vocab: 32000})
}

func benchDecode(b *testing.B, m modelShape) {
	rng := rand.New(rand.NewPCG(1, 1))
	d, h := m.dim, m.hidden
	type layer struct{ qkv, o, gu, down []float32 }
	layers := make([]layer, m.layers)
	for i := range layers {
		layers[i] = layer{randSlice(rng, 3*d*d), randSlice(rng, d*d), randSlice(rng, 2*h*d), randSlice(rng, d*h)}
	}
	cls := randSlice(rng, m.vocab*d)
	pool := NewPool(0)
	for _, n := range []int{1, 2, 3, 4, 8, 16, 128} {
		x := randSlice(rng, n*max(d, h))
		qkv, gu, out := make([]float32, n*3*d), make([]float32, n*2*h), make([]float32, n*d)
		logits := make([]float32, min(n, 16)*m.vocab)
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for b.Loop() {
				for _, l := range layers {
					pool.MatMul(qkv, x, l.qkv, n, d, 3*d)
					pool.MatMul(out, x, l.o, n, d, d)
					pool.MatMul(gu, x, l.gu, n, d, 2*h)
					pool.MatMul(out, x, l.down, n, h, d)
				}
				// A prefill needs logits for its last token only.
				pool.MatMul(logits, x, cls, min(n, 16), d, m.vocab)
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}

func BenchmarkDot(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{48, 64, 288, 768} {
		x, y := randSlice(rng, n), randSlice(rng, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				Dot(x, y)
			}
		})
	}
}

func BenchmarkAxpy(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{48, 64, 288, 768} {
		x, y := randSlice(rng, n), randSlice(rng, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				Axpy(0.5, x, y)
			}
		})
	}
}

func BenchmarkRMSNorm(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{288, 768} {
		x, w, dst := randSlice(rng, n), randSlice(rng, n), make([]float32, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				RMSNorm(dst, x, w, 1e-5)
			}
		})
	}
}

func BenchmarkSoftmax(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{128, 1024} {
		x := randSlice(rng, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				Softmax(x)
			}
		})
	}
}

func BenchmarkSiLUMul(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{768, 2048} {
		g0, u := randSlice(rng, n), randSlice(rng, n)
		g := make([]float32, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				copy(g, g0) // the activation in place would drift towards denormals
				SiLUMul(g, u)
			}
		})
	}
}

// TestExpRange checks the exponentials of SiLUMul and Softmax over the whole float32
// range, including where exp underflows and overflows, on slices ending at a guard page.
func TestExpRange(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		var gs []float32
		for g := -120.0; g <= 120; g += 0.0371 {
			gs = append(gs, float32(g))
		}
		gs = append(gs, 0, 1e-30, -1e-30, 1e30, -1e30)
		gate, free := guarded(t, len(gs))
		defer free()
		copy(gate, gs)
		up := make([]float32, len(gs))
		for i := range up {
			up[i] = 1
		}
		SiLUMul(gate, up)
		for i, g := range gs {
			want := float64(g) / (1 + math.Exp(-float64(g)))
			if got := float64(gate[i]); !(got == want || math.Abs(got-want) <= 1e-6*math.Abs(want)+1e-30) {
				t.Fatalf("SiLUMul(%v) = %v, want %v", g, got, want)
			}
		}

		for _, spread := range []float64{1, 30, 300, 3000} {
			x, free := guarded(t, 77)
			ref := make([]float64, len(x))
			for i := range x {
				x[i] = float32(spread * math.Sin(float64(i)*0.7))
			}
			x[5] = float32(math.Inf(-1)) // a masked-out score
			in := append([]float32(nil), x...)
			m, sum := math.Inf(-1), 0.0
			for _, v := range x {
				m = max(m, float64(v))
			}
			for i, v := range x {
				ref[i] = math.Exp(float64(v) - m)
				sum += ref[i]
			}
			Softmax(x)
			for i := range x {
				// x-max is rounded to float32 first, a relative error of up to
				// |x-max|*2^-24 in exp.
				tol := 1e-6 + math.Abs(float64(in[i])-m)*0x1p-23
				if want := ref[i] / sum; math.Abs(float64(x[i])-want) > tol*want+1e-37 {
					t.Fatalf("Softmax spread %v: [%d] = %v, want %v", spread, i, x[i], want)
				}
			}
			free()
		}
	})
}

func TestDotRowsAxpyRows(t *testing.T) {
	withLevels(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(9, 10))
		hds := []int{96, 128, 130, 200}
		for hd := 0; hd <= 70; hd++ {
			hds = append(hds, hd)
		}
		for _, hd := range hds {
			for _, n := range []int{0, 1, 2, 3, 5, 16, 17} {
				for _, stride := range []int{hd, hd + 3, 2*hd + 1} {
					size := 0
					if n > 0 {
						size = (n-1)*stride + hd
					}
					k, free := guarded(t, size)
					copy(k, randSlice(rng, size))
					q := randSlice(rng, hd)
					dst := make([]float32, n+1)
					dst[n] = 42
					DotRows(dst[:n], q, k, stride)
					for j := range n {
						var want, mag float64
						for i := range hd {
							p := float64(q[i]) * float64(k[j*stride+i])
							want += p
							mag += math.Abs(p)
						}
						if !close32(dst[j], want, mag) {
							t.Fatalf("DotRows hd=%d n=%d stride=%d: [%d] = %v, want %v", hd, n, stride, j, dst[j], want)
						}
					}
					if dst[n] != 42 {
						t.Fatalf("DotRows hd=%d n=%d: wrote past dst", hd, n)
					}

					a := randSlice(rng, n)
					y0 := randSlice(rng, hd+1)
					y := append([]float32(nil), y0...)
					AxpyRows(y[:hd], a, k, stride)
					for i := range hd {
						want, mag := float64(y0[i]), math.Abs(float64(y0[i]))
						for j := range n {
							p := float64(a[j]) * float64(k[j*stride+i])
							want += p
							mag += math.Abs(p)
						}
						if !close32(y[i], want, mag) {
							t.Fatalf("AxpyRows hd=%d n=%d stride=%d: y[%d] = %v, want %v", hd, n, stride, i, y[i], want)
						}
					}
					if y[hd] != y0[hd] {
						t.Fatalf("AxpyRows hd=%d n=%d: wrote past y", hd, n)
					}
					free()
				}
			}
		}
	})
}

// BenchmarkAttention is the inner loops of one head's decode attention over 128 keys
// stored 288 floats apart (the 15M model's KV rows): per key with Dot and Axpy, against
// DotRows and AxpyRows over blocks of 16 keys.
func BenchmarkAttention(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	const keys, block, stride = 128, 16, 288
	for _, hd := range []int{48, 64} {
		kc, vc := randSlice(rng, keys*stride), randSlice(rng, keys*stride)
		q, sc, out := randSlice(rng, hd), make([]float32, keys), make([]float32, hd)
		b.Run(fmt.Sprintf("hd=%d/per-key", hd), func(b *testing.B) {
			for b.Loop() {
				for j := range keys {
					sc[j] = Dot(q, kc[j*stride:j*stride+hd])
				}
				for j := range keys {
					Axpy(sc[j]*1e-3, vc[j*stride:j*stride+hd], out)
				}
			}
		})
		b.Run(fmt.Sprintf("hd=%d/rows", hd), func(b *testing.B) {
			for b.Loop() {
				for j := 0; j < keys; j += block {
					DotRows(sc[j:j+block], q, kc[j*stride:], stride)
				}
				for j := 0; j < keys; j += block {
					AxpyRows(out, sc[j:j+block], vc[j*stride:], stride)
				}
			}
		})
	}
}
