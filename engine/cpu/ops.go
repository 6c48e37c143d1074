package cpu

import "math"

// MatMul computes y = x * wᵀ for n rows: x is n×in, w is out×in (the row-major layout of
// a Hugging Face linear layer's weight), y is n×out. Rows of w are split across the pool;
// each thread streams its rows of w once, computing them against every row of x, so a
// batch of n tokens costs little more memory traffic than one.
func (p *Pool) MatMul(y, x, w []float32, n, in, out int) {
	if len(x) < n*in || len(w) < out*in || len(y) < n*out {
		panic("cpu: MatMul operand too short")
	}
	if n == 0 || out == 0 {
		return
	}
	// Chunks of 12 weight rows keep the kernels' 3- and 4-row blocks whole.
	p.Parallel((out+11)/12, 1, func(lo, hi int) {
		matmulRange(y, x, w, n, in, out, lo*12, min(hi*12, out))
	})
}

func matmulRange(y, x, w []float32, n, in, out, lo, hi int) {
	if !useAVX2 || in < 8 {
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
					y[r*out+o+j] = Dot(x[r*in:r*in+vec], w[(o+j)*in:(o+j)*in+vec])
				}
			}
		}
	}
	// Fewer than four rows of x (decode at small batch) is bound by reading w: one
	// sequential stream per weight row lets the hardware prefetcher run at full bandwidth
	// (interleaving four rows measured 40% slower); x stays in L1.
	for ; o < hi; o++ {
		for r := range n {
			y[r*out+o] = Dot(x[r*in:r*in+vec], w[o*in:o*in+vec])
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
	if useAVX2 && len(a) >= 8 {
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

// Axpy adds alpha*x to y.
func Axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	if useAVX2 && len(x) >= 8 {
		vec := len(x) &^ 7
		axpyAVX(alpha, &x[0], &y[0], vec)
		x, y = x[vec:], y[vec:]
	}
	for i, v := range x {
		y[i] += alpha * v
	}
}

// RMSNorm writes x / rms(x) * weight to dst.
func RMSNorm(dst, x, weight []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	scale := float32(1 / math.Sqrt(ss/float64(len(x))+float64(eps)))
	dst = dst[:len(x)]
	weight = weight[:len(x)]
	for i, v := range x {
		dst[i] = v * scale * weight[i]
	}
}

// Softmax normalises x in place.
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	var sum float32
	for i, v := range x {
		e := float32(math.Exp(float64(v - m)))
		x[i] = e
		sum += e
	}
	inv := 1 / sum
	for i := range x {
		x[i] *= inv
	}
}

// SiLUMul computes gate = silu(gate) * up, the SwiGLU activation.
func SiLUMul(gate, up []float32) {
	up = up[:len(gate)]
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
