//go:build nocuda

package main

import "errors"

// loadCUDADriver: a binary built with -tags nocuda (the static image on distroless, which
// has no libc to load libcuda.so.1 with) has no CUDA support.
func loadCUDADriver() error {
	return errors.New("this servelab binary was built with -tags nocuda (static, no libc to load libcuda.so.1 with); build without the tag for CUDA")
}
