package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
)

// DType is a safetensors element type name as it appears in the header ("F32", "BF16", ...).
type DType string

// The element types of the safetensors format. Every one of them can be read, written and
// validated; only F32, F16 and BF16 can be converted to float32 by [Tensor.Float32].
const (
	BOOL   DType = "BOOL"
	U8     DType = "U8"
	I8     DType = "I8"
	F8E5M2 DType = "F8_E5M2"
	F8E4M3 DType = "F8_E4M3"
	F8E8M0 DType = "F8_E8M0"
	I16    DType = "I16"
	U16    DType = "U16"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I32    DType = "I32"
	U32    DType = "U32"
	F32    DType = "F32"
	F64    DType = "F64"
	I64    DType = "I64"
	U64    DType = "U64"
	C64    DType = "C64"
	F4     DType = "F4"
	F6E2M3 DType = "F6_E2M3"
	F6E3M2 DType = "F6_E3M2"
)

// dtypeBits is the size of one element of each known dtype, in bits.
var dtypeBits = map[DType]int{
	BOOL: 8, U8: 8, I8: 8, F8E5M2: 8, F8E4M3: 8, F8E8M0: 8,
	I16: 16, U16: 16, F16: 16, BF16: 16,
	I32: 32, U32: 32, F32: 32,
	F64: 64, I64: 64, U64: 64, C64: 64,
	F4: 4, F6E2M3: 6, F6E3M2: 6,
}

// Bits is the size of one element in bits, or 0 for an unknown dtype.
func (d DType) Bits() int { return dtypeBits[d] }

// Known reports whether d is one of the format's dtypes.
func (d DType) Known() bool { return dtypeBits[d] != 0 }

// ByteSize is the number of bytes n elements of d occupy, and false when d is unknown,
// n is negative, the size overflows, or n elements of a sub-byte dtype do not fill whole bytes.
func (d DType) ByteSize(n int) (int, bool) {
	bits := dtypeBits[d]
	if bits == 0 || n < 0 {
		return 0, false
	}
	if n > math.MaxInt/bits {
		return 0, false
	}
	total := n * bits
	if total%8 != 0 {
		return 0, false
	}
	return total / 8, true
}

// F16ToFloat32 converts an IEEE 754 binary16 bit pattern to float32. The conversion is exact:
// subnormals become normal float32 values, infinities stay infinities and NaNs keep their
// sign and payload.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0:
		// Zero or subnormal: mant * 2^-24, exact in float32.
		v := float32(mant) * (1.0 / (1 << 24))
		return math.Float32frombits(math.Float32bits(v) | sign)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}

// Float32ToF16 converts a float32 to the nearest binary16 bit pattern, rounding ties to even.
// Values beyond the binary16 range become infinities, values below half the smallest
// subnormal become signed zeros, and NaNs become quiet NaNs keeping the sign and the top
// payload bits.
func Float32ToF16(f float32) uint16 {
	bits := math.Float32bits(f)
	sign := uint16(bits>>16) & 0x8000
	exp := int(bits>>23) & 0xff
	mant := bits & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>13)
		}
		return sign | 0x7c00
	}
	if exp == 0 {
		// float32 zero or subnormal: far below binary16's smallest subnormal (2^-24).
		return sign
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	m := mant | 0x800000 // 24-bit significand with the implicit bit
	var shift uint
	var h uint32
	if e >= 1 {
		// Normal binary16: keep 10 mantissa bits; a carry out of the mantissa correctly
		// bumps the exponent (and 0x7bff rounds up to infinity).
		shift = 13
		h = uint32(e)<<10 | mant>>13
	} else {
		// Subnormal binary16: value = m * 2^(exp-150) = h * 2^-24.
		shift = uint(14 - e)
		if shift > 25 {
			return sign
		}
		h = m >> shift
	}
	rem := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || (rem == half && h&1 == 1) {
		h++
	}
	return sign | uint16(h)
}

// BF16ToFloat32 converts a bfloat16 bit pattern to float32 (exact).
func BF16ToFloat32(b uint16) float32 {
	return math.Float32frombits(uint32(b) << 16)
}

// Float32ToBF16 converts a float32 to the nearest bfloat16 bit pattern, rounding ties to
// even; NaNs become quiet NaNs keeping the sign and top payload bits.
func Float32ToBF16(f float32) uint16 {
	bits := math.Float32bits(f)
	if bits&0x7f800000 == 0x7f800000 && bits&0x7fffff != 0 {
		return uint16(bits>>16) | 0x0040
	}
	bits += 0x7fff + (bits>>16)&1
	return uint16(bits >> 16)
}

// EncodeF32 returns v as little-endian F32 bytes.
func EncodeF32(v []float32) []byte {
	out := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
	}
	return out
}

// EncodeF16 returns v as little-endian F16 bytes, rounding to nearest even.
func EncodeF16(v []float32) []byte {
	out := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(out[2*i:], Float32ToF16(x))
	}
	return out
}

// EncodeBF16 returns v as little-endian BF16 bytes, rounding to nearest even.
func EncodeBF16(v []float32) []byte {
	out := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(out[2*i:], Float32ToBF16(x))
	}
	return out
}

// Encode returns v encoded as dtype d, which must be F32, F16 or BF16.
func Encode(d DType, v []float32) ([]byte, error) {
	switch d {
	case F32:
		return EncodeF32(v), nil
	case F16:
		return EncodeF16(v), nil
	case BF16:
		return EncodeBF16(v), nil
	}
	return nil, fmt.Errorf("safetensors: cannot encode float32 values as dtype %q (only F32, F16, BF16)", string(d))
}

// decodeFloat32 converts little-endian data of dtype d to float32.
func decodeFloat32(d DType, data []byte) ([]float32, bool) {
	switch d {
	case F32:
		out := make([]float32, len(data)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
		return out, true
	case F16:
		out := make([]float32, len(data)/2)
		for i := range out {
			out[i] = F16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		}
		return out, true
	case BF16:
		out := make([]float32, len(data)/2)
		for i := range out {
			out[i] = BF16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		}
		return out, true
	}
	return nil, false
}
