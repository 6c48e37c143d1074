package kernels

import _ "embed"

//go:embed kernels.cu
var source string

// Source is kernels.cu's text, for cuda/kernels/emu, which compiles it for the CPU. The
// GPU path never compiles it at run time: it loads the embedded cubin or PTX.
func Source() string { return source }
