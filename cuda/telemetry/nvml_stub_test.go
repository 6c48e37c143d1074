//go:build !cgo || nocuda

package telemetry

import (
	"errors"
	"testing"
)

// TestOpenNotBuilt: without cgo (or with -tags nocuda) Open says telemetry is not built in.
func TestOpenNotBuilt(t *testing.T) {
	s, err := Open(Config{})
	if s != nil || !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("Open: %v, %v; want ErrNotBuilt", s, err)
	}
}
