package cpu

import "math"

// Kernel levels, from the portable Go code up.
const (
	levelGeneric = iota
	levelAVX2    // AVX2 + FMA: ymm kernels
	levelAVX512  // AVX-512 F + VL: zmm kernels with masked tails
)

// level is the kernel set in use: the best the CPU has. Tests lower it to check the
// others.
var level = bestLevel

// MatMul computes y = x * wᵀ for n rows: x is n×in, w is out×in (the row-major layout of
// a Hugging Face linear layer's weight), y is n×out. Rows of w are split across the pool;
// each thread streams its rows of w once, computing them against every row of x, so a
// batch of n tokens costs little more memory traffic than one.
//
// With AVX-512 (measured 2026-11-25 on this machine's 2 cores of an AMD EPYC, Zen 4,
// 32 MB L3; BenchmarkMatMul and BenchmarkDecode*):
//
//   - n = 1 and 2 (decode of one or two sequences) are bound by reading w: gemv1x1 and
//     gemv2x1 read its rows as one sequential stream with x in L1, 105-185 GB/s from
//     L2/L3 on two cores and 40-55 GB/s, what DRAM gives, for the 32000-row classifiers.
//   - n >= 3 runs blocks of 4 rows of x by 6 rows of w (gemm4x6: 24 zmm accumulators,
//     each loaded weight vector used for 4 rows of x and each x vector for 6 weight rows)
//     and 1..3-row kernels for the rest of x. Each kernel call prefetches the next 6 rows
//     of w into L2; without that, a batch of 16 against a weight from DRAM ran at half
//     speed. Batches of 16 and 128 run at 175-220 GFLOP/s, about the two cores' FMA peak.
//     Rows of x are taken in tiles of ~512 KB (L2), rows of w longer than 1024 in chunks.
//
// The AVX2 level (CPUs without AVX-512) is the first version's ymm kernels: 4x3 blocks
// for n >= 4, one dot product per weight row below; the portable level is plain Go.
//
// gonum's Sgemm (pure Go for float32) was 4-9x slower on every shape of BenchmarkMatMul
// (BenchmarkGonumSgemm), so it is not used.
func (p *Pool) MatMul(y, x, w []float32, n, in, out int) {
	if len(x) < n*in || len(w) < out*in || len(y) < n*out {
		panic("cpu: MatMul operand too short")
	}
	if n == 0 || out == 0 {
		return
	}
	if in == 0 {
		clear(y[:n*out])
		return
	}
	m := &p.mm
	*m = matmulJob{y: y, x: x, w: w, n: n, in: in, out: out, level: level}
	switch {
	case level == levelAVX512 && n <= 2:
		m.unit = 16
	case level == levelAVX512:
		m.unit = 6
		// Rows of x are taken in tiles of about 512 KB, so that a tile stays in L2 while
		// the blocks of w stream past it.
		m.tile = max(4, (512<<10)/(4*in)&^3)
	case level == levelAVX2:
		m.unit = 12 // whole 3- and 4-row blocks for the kernels
	default:
		m.unit = 16
	}
	if p.mmRun == nil {
		p.mmRun = m.run
	}
	// Pieces of at least 64 KB of w: below that, handing a piece to another core costs
	// more than it saves.
	grain := max(1, (64<<10)/(4*in*m.unit))
	p.Parallel((out+m.unit-1)/m.unit, grain, p.mmRun)
	m.y, m.x, m.w = nil, nil, nil
}

// matmulJob is one MatMul: its operands, and how its rows of w are cut into units for
// Parallel.
type matmulJob struct {
	y, x, w    []float32
	n, in, out int
	level      int
	unit       int // rows of w per unit
	tile       int // rows of x per tile (AVX-512, n > 1)
}

// run computes units [lo, hi).
func (m *matmulJob) run(lo, hi int) {
	lo, hi = lo*m.unit, min(hi*m.unit, m.out)
	switch {
	case m.level == levelAVX512 && m.n == 1:
		gemv1x1(&m.x[0], 0, &m.w[lo*m.in], m.in, hi-lo, &m.y[lo], 0)
	case m.level == levelAVX512 && m.n == 2:
		gemv2x1(&m.x[0], 4*m.in, &m.w[lo*m.in], m.in, hi-lo, &m.y[lo], 4*m.out)
	case m.level == levelAVX512:
		matmulRange512(m.y, m.x, m.w, m.n, m.in, m.out, lo, hi, m.tile)
	case m.level == levelAVX2:
		matmulRange256(m.y, m.x, m.w, m.n, m.in, m.out, lo, hi)
	default:
		matmulScalar(m.y, m.x, m.w, m.n, m.in, m.out, lo, hi)
	}
}

// matmulRange512 computes rows [lo, hi) of w against every row of x with the AVX-512
// kernels, in tiles of tile rows of x. Long rows (in > kcMax) are also cut into chunks of
// columns, the kernels adding each chunk's sums to y, so that a block of six weight rows
// stays in L1 while the rows of x pass it (768x2048 at n=16: 175 -> 205 GFLOP/s).
func matmulRange512(y, x, w []float32, n, in, out, lo, hi, tile int) {
	xs, ws, ys := 4*in, 4*in, 4*out // strides in bytes
	chunks := (in + kcMax - 1) / kcMax
	kc := ((in+chunks-1)/chunks + 15) &^ 15
	for r0 := 0; r0 < n; r0 += tile {
		r1 := min(r0+tile, n)
		o := lo
		for ; o+6 <= hi; o += 6 {
			next := min(o+6, out-1) * in // the next block, for the kernels to prefetch
			for k0 := 0; k0 < in; k0 += kc {
				k := min(kc, in-k0)
				wo := &w[o*in+k0]
				// Each chunk prefetches 6k floats: the chunks together cover the next block.
				pf := &w[min(next+6*k0, len(w)-1)]
				acc := k0 > 0
				r := r0
				for ; r+4 <= r1; r += 4 {
					gemm4x6(&x[r*in+k0], xs, wo, ws, k, &y[r*out+o], ys, pf, acc)
				}
				switch r1 - r {
				case 1:
					gemm1x6(&x[r*in+k0], xs, wo, ws, k, &y[r*out+o], ys, pf, acc)
				case 2:
					gemm2x6(&x[r*in+k0], xs, wo, ws, k, &y[r*out+o], ys, pf, acc)
				case 3:
					gemm3x6(&x[r*in+k0], xs, wo, ws, k, &y[r*out+o], ys, pf, acc)
				}
			}
		}
		if o < hi { // the last 1..5 rows of w
			for r := r0; r < r1; r++ {
				gemv1x1(&x[r*in], 0, &w[o*in], in, hi-o, &y[r*out+o], 0)
			}
		}
	}
}

// kcMax is the longest row the AVX-512 GEMM kernels take whole (see matmulRange512).
var kcMax = 1024

func matmulRange256(y, x, w []float32, n, in, out, lo, hi int) {
	if in < 8 {
		matmulScalar(y, x, w, n, in, out, lo, hi)
		return
	}
	vec := in &^ 7 // the kernels take multiples of 8; the tail is added below
	o := lo
	if n >= 4 {
		var acc [12]float32
		for ; o+3 <= hi; o += 3 {
			r := 0
			for ; r+4 <= n; r += 4 {
				dot4x3(&x[r*in], in, &w[o*in], in, vec, &acc)
				for i := range 4 {
					yr := y[(r+i)*out+o : (r+i)*out+o+3]
					yr[0], yr[1], yr[2] = acc[i*3], acc[i*3+1], acc[i*3+2]
				}
			}
			for ; r < n; r++ {
				for j := range 3 {
					y[r*out+o+j] = dotAVX(&x[r*in], &w[(o+j)*in], vec)
				}
			}
		}
	}
	// Fewer than four rows of x (decode at small batch) is bound by reading w: one
	// sequential stream per weight row lets the hardware prefetcher run at full bandwidth
	// (interleaving four rows measured 40% slower); x stays in L1.
	for ; o < hi; o++ {
		for r := range n {
			y[r*out+o] = dotAVX(&x[r*in], &w[o*in], vec)
		}
	}
	if vec < in {
		for r := range n {
			xr := x[r*in+vec : (r+1)*in]
			for o := lo; o < hi; o++ {
				y[r*out+o] += dotScalar(xr, w[o*in+vec:(o+1)*in])
			}
		}
	}
}

func matmulScalar(y, x, w []float32, n, in, out, lo, hi int) {
	for r := 0; r < n; r++ {
		xr := x[r*in : (r+1)*in]
		yr := y[r*out : (r+1)*out]
		for o := lo; o < hi; o++ {
			yr[o] = dotScalar(xr, w[o*in:(o+1)*in])
		}
	}
}

// Dot is the inner product of a and b (len(b) >= len(a)).
func Dot(a, b []float32) float32 {
	b = b[:len(a)]
	if len(a) == 0 {
		return 0
	}
	switch {
	case level == levelAVX512:
		return dot512(&a[0], &b[0], len(a))
	case level == levelAVX2 && len(a) >= 8:
		vec := len(a) &^ 7
		return dotAVX(&a[0], &b[0], vec) + dotScalar(a[vec:], b[vec:])
	}
	return dotScalar(a, b)
}

func dotScalar(a, b []float32) float32 {
	var s0, s1, s2, s3 float32
	b = b[:len(a)]
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// Axpy adds alpha*x to y (len(y) >= len(x)).
func Axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	if len(x) == 0 {
		return
	}
	switch {
	case level == levelAVX512:
		axpy512(alpha, &x[0], &y[0], len(x))
		return
	case level == levelAVX2 && len(x) >= 8:
		vec := len(x) &^ 7
		axpyAVX(alpha, &x[0], &y[0], vec)
		x, y = x[vec:], y[vec:]
	}
	for i, v := range x {
		y[i] += alpha * v
	}
}

// DotRows sets dst[j] = Dot(q, k[j*stride:j*stride+len(q)]) for every j < len(dst): the
// attention scores of one query against len(dst) keys stored stride floats apart (one
// block of a KV cache). With AVX-512, q stays in registers across the rows and there is
// one call per block instead of one per key: with AxpyRows, one head's decode attention
// over 128 keys took 2.6-2.9x less time than per-key Dot and Axpy (BenchmarkAttention).
func DotRows(dst, q, k []float32, stride int) {
	n, hd := len(dst), len(q)
	if n == 0 {
		return
	}
	if len(k) < (n-1)*stride+hd || stride < 0 {
		panic("cpu: DotRows: k too short")
	}
	if level == levelAVX512 && hd > 0 {
		for c := 0; c < hd; c += 64 {
			dotrows512(&dst[0], &q[c], &k[c], 4*stride, n, chunkMasks(hd-c), c > 0)
		}
		return
	}
	for j := range dst {
		dst[j] = Dot(q, k[j*stride:j*stride+hd])
	}
}

// AxpyRows adds a[j] * v[j*stride:j*stride+len(y)] to y for every j < len(a): the
// attention-weighted sum of len(a) values stored stride floats apart. With AVX-512, y
// stays in registers across the rows.
func AxpyRows(y, a, v []float32, stride int) {
	n, hd := len(a), len(y)
	if n == 0 {
		return
	}
	if len(v) < (n-1)*stride+hd || stride < 0 {
		panic("cpu: AxpyRows: v too short")
	}
	if level == levelAVX512 && hd > 0 {
		for c := 0; c < hd; c += 64 {
			axpyrows512(&y[c], &a[0], &v[c], 4*stride, n, chunkMasks(hd-c))
		}
		return
	}
	for j, aj := range a {
		Axpy(aj, v[j*stride:j*stride+hd], y)
	}
}

// chunkMasks returns the lane masks of the four 16-float vectors of a chunk of
// min(rest, 64) floats, 16 bits each from the low end.
func chunkMasks(rest int) uint64 {
	c := min(rest, 64)
	return 1<<c - 1 // c == 64 wraps to all ones
}

// RMSNorm writes x / rms(x) * weight to dst.
func RMSNorm(dst, x, weight []float32, eps float32) {
	dst = dst[:len(x)]
	weight = weight[:len(x)]
	if len(x) == 0 {
		return
	}
	if level == levelAVX512 {
		// float32 sums over 64 lanes: ample for a norm.
		ss := float64(dot512(&x[0], &x[0], len(x)))
		scale := float32(1 / math.Sqrt(ss/float64(len(x))+float64(eps)))
		scalemul512(&dst[0], &x[0], &weight[0], scale, len(x))
		return
	}
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	scale := float32(1 / math.Sqrt(ss/float64(len(x))+float64(eps)))
	for i, v := range x {
		dst[i] = v * scale * weight[i]
	}
}

// Softmax normalises x in place.
//
// With AVX-512 the exponentials are computed 16 at a time (a degree-7 polynomial after
// range reduction, relative error ~1e-7): 20-35x faster than math.Exp's loop. The
// attention of a 16-sequence decode step spends most of its time here and in Dot/Axpy.
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	if level == levelAVX512 {
		softmax512(&x[0], len(x))
		return
	}
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	// The sum is kept in float64: summed in float32 one by one, its relative error grew
	// with the length (3.2e-6 at 32768 scores, TestSoftmaxReference).
	var sum float64
	for i, v := range x {
		e := float32(math.Exp(float64(v - m)))
		x[i] = e
		sum += float64(e)
	}
	inv := float32(1 / sum)
	for i := range x {
		x[i] *= inv
	}
}

// SiLUMul computes gate = silu(gate) * up, the SwiGLU activation (with AVX-512, 16 at a
// time as in Softmax).
func SiLUMul(gate, up []float32) {
	up = up[:len(gate)]
	if len(gate) == 0 {
		return
	}
	if level == levelAVX512 {
		silumul512(&gate[0], &up[0], len(gate))
		return
	}
	for i, g := range gate {
		gate[i] = g / (1 + float32(math.Exp(float64(-g)))) * up[i]
	}
}

// RotateHalf applies rotary position embedding to one head in Hugging Face's layout:
// dimension i is rotated with dimension i+len(x)/2 by the angle whose cosine and sine
// are cos[i] and sin[i].
func RotateHalf(x, cos, sin []float32) {
	h := len(x) / 2
	lo, hi := x[:h], x[h:2*h]
	cos, sin = cos[:h], sin[:h]
	for i := range lo {
		a, b := lo[i], hi[i]
		lo[i] = a*cos[i] - b*sin[i]
		hi[i] = b*cos[i] + a*sin[i]
	}
}
