package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// WriteStream asks for each tensor once, in buffer order (decreasing element size, then
// name), and writes the bytes Write writes for the same tensors.
func TestWriteStreamMatchesWrite(t *testing.T) {
	dir := t.TempDir()
	vals := testValues(24)
	tensors := []Tensor{
		{Name: "b.f16", DType: F16, Shape: []int{4, 3}, Data: EncodeF16(vals[:12])},
		{Name: "a.f32", DType: F32, Shape: []int{2, 3, 4}, Data: EncodeF32(vals)},
		{Name: "c.bf16", DType: BF16, Shape: []int{5}, Data: EncodeBF16(vals[:5])},
		{Name: "a.bf16", DType: BF16, Shape: []int{2}, Data: EncodeBF16(vals[:2])},
	}
	md := map[string]string{"format": "pt"}
	whole, streamed := filepath.Join(dir, "whole.safetensors"), filepath.Join(dir, "streamed.safetensors")
	if err := Write(whole, tensors, md); err != nil {
		t.Fatal(err)
	}
	infos := make([]TensorInfo, len(tensors))
	for i, tt := range tensors {
		infos[i] = TensorInfo{Name: tt.Name, DType: tt.DType, Shape: tt.Shape}
	}
	var asked []string
	if err := WriteStream(streamed, infos, md, func(i int) ([]byte, error) {
		asked = append(asked, tensors[i].Name)
		return tensors[i].Data, nil
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a.f32", "a.bf16", "b.f16", "c.bf16"}, asked); diff != "" {
		t.Errorf("order asked (-want +got):\n%s", diff)
	}
	a, _ := os.ReadFile(whole)
	b, _ := os.ReadFile(streamed)
	if !bytes.Equal(a, b) {
		t.Errorf("WriteStream wrote %d bytes that differ from Write's %d", len(b), len(a))
	}
}

// A failing or short tensor stops the write and leaves no file behind.
func TestWriteStreamErrorsLeaveNoFile(t *testing.T) {
	infos := []TensorInfo{{Name: "x", DType: F32, Shape: []int{2}}, {Name: "y", DType: F32, Shape: []int{3}}}
	tests := []struct {
		name string
		data func(i int) ([]byte, error)
		want string
	}{
		{"error", func(i int) ([]byte, error) {
			if i == 1 {
				return nil, errors.New("disk on fire")
			}
			return make([]byte, 8), nil
		}, `tensor "y": disk on fire`},
		{"short", func(i int) ([]byte, error) { return make([]byte, 8), nil }, `tensor "y": has 8 data bytes, want 12`},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		path := filepath.Join(dir, "m.safetensors")
		err := WriteStream(path, infos, nil, tt.data)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Errorf("%s: left %v in the directory", tt.name, left)
		}
	}
}
