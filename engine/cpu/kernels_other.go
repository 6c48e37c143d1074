//go:build !amd64

package cpu

// Other architectures run the portable Go code; these are never called.

const bestLevel = levelGeneric

func dot4x3(x *float32, xstride int, w *float32, wstride, n int, out *[12]float32) {
	panic("unreachable")
}

func dotAVX(x, y *float32, n int) float32 { panic("unreachable") }

func axpyAVX(alpha float32, x, y *float32, n int) { panic("unreachable") }

func dot512(x, y *float32, n int) float32 { panic("unreachable") }

func axpy512(alpha float32, x, y *float32, n int) { panic("unreachable") }

func gemv1x1(x *float32, xstride int, w *float32, in, nw int, y *float32, ystride int) {
	panic("unreachable")
}

func gemv2x1(x *float32, xstride int, w *float32, in, nw int, y *float32, ystride int) {
	panic("unreachable")
}

func gemm1x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool) {
	panic("unreachable")
}

func gemm2x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool) {
	panic("unreachable")
}

func gemm3x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool) {
	panic("unreachable")
}

func gemm4x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool) {
	panic("unreachable")
}

func softmax512(x *float32, n int) { panic("unreachable") }

func silumul512(gate, up *float32, n int) { panic("unreachable") }

func scalemul512(dst, x, w *float32, scale float32, n int) { panic("unreachable") }

func dotrows512(dst, q, k *float32, stride, n int, masks uint64, acc bool) { panic("unreachable") }

func axpyrows512(y, a, v *float32, stride, n int, masks uint64) { panic("unreachable") }
