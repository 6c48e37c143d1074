//go:build amd64

package cpu

import "golang.org/x/sys/cpu"

//go:generate go run gen_gemm.go

// bestLevel is the fastest kernel set this CPU (and OS) supports.
var bestLevel = func() int {
	switch {
	case cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL:
		return levelAVX512
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		return levelAVX2
	}
	return levelGeneric
}()

// AVX2/FMA kernels (kernels_amd64.s).

//go:noescape
func dot4x3(x *float32, xstride int, w *float32, wstride, n int, out *[12]float32)

//go:noescape
func dotAVX(x, y *float32, n int) float32

//go:noescape
func axpyAVX(alpha float32, x, y *float32, n int)

// AVX-512 kernels (kernels_amd64.s, gemm512_amd64.s).

//go:noescape
func dot512(x, y *float32, n int) float32

//go:noescape
func axpy512(alpha float32, x, y *float32, n int)

//go:noescape
func gemv1x1(x *float32, xstride int, w *float32, in, nw int, y *float32, ystride int)

//go:noescape
func gemm1x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool)

//go:noescape
func gemm2x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool)

//go:noescape
func gemm3x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool)

//go:noescape
func gemm4x6(x *float32, xstride int, w *float32, wstride int, in int, y *float32, ystride int, pf *float32, acc bool)

//go:noescape
func gemv2x1(x *float32, xstride int, w *float32, in, nw int, y *float32, ystride int)

//go:noescape
func softmax512(x *float32, n int)

//go:noescape
func silumul512(gate, up *float32, n int)

//go:noescape
func scalemul512(dst, x, w *float32, scale float32, n int)

//go:noescape
func dotrows512(dst, q, k *float32, stride, n int, masks uint64, acc bool)

//go:noescape
func axpyrows512(y, a, v *float32, stride, n int, masks uint64)
