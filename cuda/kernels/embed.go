package kernels

import _ "embed"

//go:generate go run ./gen

//go:embed kernels_sm90.cubin
var embeddedCubin []byte

//go:embed kernels.ptx
var embeddedPTX []byte

func init() {
	cubinImage, ptxImage = embeddedCubin, embeddedPTX
}
