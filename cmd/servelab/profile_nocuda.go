//go:build nocuda

package main

import "errors"

// cudaDeviceName: a binary built with -tags nocuda has no CUDA support.
func cudaDeviceName() (string, error) {
	return "", errors.New("this servelab binary was built with -tags nocuda: no CUDA support")
}
