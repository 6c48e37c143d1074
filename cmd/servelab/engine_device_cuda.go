//go:build !nocuda

package main

import "servelab/cuda/driver"

// loadCUDADriver loads libcuda.so.1 through purego (cuda/driver); it does not call cuInit.
// Importing purego makes the binary dynamically linked against libc even with
// CGO_ENABLED=0; the static image builds with -tags nocuda instead.
func loadCUDADriver() error {
	_, err := driver.Load()
	return err
}
