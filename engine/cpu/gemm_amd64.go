//go:build amd64

package cpu

import "golang.org/x/sys/cpu"

// useAVX2 selects the assembly kernels; tests turn it off to check the portable path.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

//go:noescape
func dot4x3(x *float32, xstride int, w *float32, wstride, n int, out *[12]float32)

//go:noescape
func dotAVX(x, y *float32, n int) float32

//go:noescape
func axpyAVX(alpha float32, x, y *float32, n int)
