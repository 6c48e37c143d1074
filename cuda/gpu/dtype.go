package gpu

import (
	"encoding/binary"
	"fmt"
	"math"

	"servelab/engine/model"
	"servelab/engine/safetensors"
)

// The weight dtypes the kernels compute with (cuda/kernels' Linear).
const (
	Float32  = "float32"
	BFloat16 = "bfloat16"
)

// ResolveDType is vLLM's --dtype for this backend: "float32" and "bfloat16" as asked
// ("fp32", "float", "bf16" are accepted spellings); "" or "auto" follows config.json's
// torch_dtype: bfloat16 and float16 checkpoints compute in bfloat16 (the kernels have no
// float16 path), float32 ones (or none said) in float32. vLLM's auto would run a float32
// checkpoint in float16; here it stays float32, which is what the CPU engine computes.
func ResolveDType(flag, torchDType string) (string, error) {
	switch flag {
	case "float32", "fp32", "float":
		return Float32, nil
	case "bfloat16", "bf16":
		return BFloat16, nil
	case "", "auto":
	default:
		return "", fmt.Errorf("dtype %q: want auto, float32 or bfloat16", flag)
	}
	switch torchDType {
	case "bfloat16", "float16", "half":
		return BFloat16, nil
	case "", "float32", "float":
		return Float32, nil
	}
	return "", fmt.Errorf("dtype auto: config.json's torch_dtype %q is not float32, float16 or bfloat16; pass --dtype float32 or bfloat16", torchDType)
}

// isMatrix reports whether weight w is a matrix the linear kernels (or the embedding
// lookup) read in the compute dtype; norms and biases stay float32.
func isMatrix(w model.Weight) bool {
	switch w {
	case model.WEmbed, model.WQKV, model.WO, model.WGU, model.WDown, model.WLMHead:
		return true
	}
	return false
}

// elemSize is the bytes per element weight w takes on the device in dtype.
func elemSize(w model.Weight, dtype string) int {
	if dtype == BFloat16 && isMatrix(w) {
		return 2
	}
	return 4
}

// checkBF16 refuses a model whose matrices' inner dimension (Hugging Face's shape[1],
// what y = x·Wᵀ sums over) is not a multiple of 8: the bfloat16 GEMM and GEMV kernels
// load 8 elements at a time. It names the first tensor that fails.
func checkBF16(cfg model.Config) error {
	for _, s := range model.TensorSpecs(cfg) {
		if !isMatrix(s.Weight) || len(s.Shape) != 2 {
			continue
		}
		if k := s.Shape[1]; k%8 != 0 {
			return fmt.Errorf("tensor %s: shape %v: inner dimension %d is not a multiple of 8, which the bfloat16 kernels need; use --dtype float32", s.Name, s.Shape, k)
		}
	}
	return nil
}

// convert writes elements [lo, lo+n) of tensor t into dst in the device format of dtype
// out (Float32: little-endian float32; BFloat16: bfloat16 bits, float32 rounded to
// nearest even as safetensors.Float32ToBF16 does, BF16 copied, F16 converted exactly to
// float32 first). dst is n·4 or n·2 bytes.
func convert(dst []byte, t *safetensors.Tensor, lo, n int, out string) error {
	src := t.Data
	switch out {
	case Float32:
		switch t.DType {
		case safetensors.F32:
			copy(dst, src[4*lo:4*(lo+n)])
		case safetensors.BF16:
			for i := range n {
				binary.LittleEndian.PutUint32(dst[4*i:], uint32(binary.LittleEndian.Uint16(src[2*(lo+i):]))<<16)
			}
		case safetensors.F16:
			for i := range n {
				f := safetensors.F16ToFloat32(binary.LittleEndian.Uint16(src[2*(lo+i):]))
				binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
			}
		default:
			return fmt.Errorf("tensor %s: dtype %s: want F32, F16 or BF16", t.Name, t.DType)
		}
	case BFloat16:
		switch t.DType {
		case safetensors.BF16:
			copy(dst, src[2*lo:2*(lo+n)])
		case safetensors.F32:
			for i := range n {
				f := math.Float32frombits(binary.LittleEndian.Uint32(src[4*(lo+i):]))
				binary.LittleEndian.PutUint16(dst[2*i:], safetensors.Float32ToBF16(f))
			}
		case safetensors.F16:
			for i := range n {
				f := safetensors.F16ToFloat32(binary.LittleEndian.Uint16(src[2*(lo+i):]))
				binary.LittleEndian.PutUint16(dst[2*i:], safetensors.Float32ToBF16(f))
			}
		default:
			return fmt.Errorf("tensor %s: dtype %s: want F32, F16 or BF16", t.Name, t.DType)
		}
	default:
		return fmt.Errorf("dtype %q", out)
	}
	return nil
}

// streamChunk is how many elements a tensor is converted in at a time, so that loading
// never holds more than one chunk of converted weights in host memory.
const streamChunk = 4 << 20

// stream converts tensor t to dtype out chunk by chunk through buf (grown to one chunk)
// and hands each chunk to put with its element offset in the tensor. It checks the
// tensor's byte size against its dtype and shape first.
func stream(t *safetensors.Tensor, out string, buf *[]byte, put func(elemOff int, b []byte) error) error {
	n := t.NumElements()
	size, ok := t.DType.ByteSize(n)
	if !ok || size != len(t.Data) {
		return fmt.Errorf("tensor %s: %d data bytes for dtype %s shape %v", t.Name, len(t.Data), t.DType, t.Shape)
	}
	es := 4
	if out == BFloat16 {
		es = 2
	}
	for lo := 0; lo < n; lo += streamChunk {
		m := min(streamChunk, n-lo)
		if cap(*buf) < m*es {
			*buf = make([]byte, min(streamChunk, n)*es)
		}
		b := (*buf)[:m*es]
		if err := convert(b, t, lo, m, out); err != nil {
			return err
		}
		if err := put(lo, b); err != nil {
			return err
		}
	}
	return nil
}
