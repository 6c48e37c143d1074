//go:build !nocuda

package main

import (
	"fmt"

	"servelab/cuda/driver"
)

// cudaDeviceName is the name the CUDA driver gives device 0 ("NVIDIA H200"), for a profile
// measured on it. Only a profile whose backend loaded on cuda calls it (cuInit is never
// called on a machine without a GPU).
func cudaDeviceName() (string, error) {
	d, err := driver.Load()
	if err != nil {
		return "", err
	}
	if err := d.Init(); err != nil {
		return "", err
	}
	dev, err := d.DeviceGet(0)
	if err != nil {
		return "", err
	}
	name, err := d.DeviceName(dev)
	if err != nil {
		return "", fmt.Errorf("naming the GPU the profile ran on: %w", err)
	}
	return name, nil
}
