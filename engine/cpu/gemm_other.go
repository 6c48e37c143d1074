//go:build !amd64

package cpu

var useAVX2 = false

func dot4x3(x *float32, xstride int, w *float32, wstride, n int, out *[12]float32) {
	panic("unreachable")
}

func dotAVX(x, y *float32, n int) float32 { panic("unreachable") }

func axpyAVX(alpha float32, x, y *float32, n int) { panic("unreachable") }
