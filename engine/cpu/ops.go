package cpu

import "math"

// MatMul computes y = x * wᵀ for n rows: x is n×in, w is out×in (the row-major layout of
// a Hugging Face linear layer's weight), y is n×out. Rows of w are split across the pool.
func (p *Pool) MatMul(y, x, w []float32, n, in, out int) {
	if len(x) < n*in || len(w) < out*in || len(y) < n*out {
		panic("cpu: MatMul operand too short")
	}
	p.Parallel(out, 16, func(lo, hi int) {
		matmulRange(y, x, w, n, in, out, lo, hi)
	})
}

func matmulRange(y, x, w []float32, n, in, out, lo, hi int) {
	for r := 0; r < n; r++ {
		xr := x[r*in : (r+1)*in]
		yr := y[r*out : (r+1)*out]
		for o := lo; o < hi; o++ {
			yr[o] = Dot(xr, w[o*in:(o+1)*in])
		}
	}
}

// Dot is the inner product of a and b (len(b) >= len(a)).
func Dot(a, b []float32) float32 {
	var s float32
	b = b[:len(a)]
	for i, v := range a {
		s += v * b[i]
	}
	return s
}

// Axpy adds alpha*x to y.
func Axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
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
