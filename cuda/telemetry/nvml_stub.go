//go:build !cgo || nocuda

package telemetry

// Open: this binary was built without cgo or with -tags nocuda, so without go-nvml.
func Open(cfg Config) (*Sampler, error) {
	return nil, ErrNotBuilt
}
