//go:build nocuda

package backend

import "errors"

// loadCUDA: a binary built with -tags nocuda (the static image on distroless, which has no
// libc to load libcuda.so.1 with) has no CUDA backend.
func loadCUDA(Options) (*Backend, error) {
	return nil, errors.New("backend: device cuda: this servelab binary was built with -tags nocuda (static, no libc to load libcuda.so.1 with); build without the tag for CUDA")
}
