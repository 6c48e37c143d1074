package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestF16BitPatterns(t *testing.T) {
	tests := []struct {
		name string
		f    float32
		bits uint16
	}{
		{"one", 1.0, 0x3c00},
		{"minus 2.5", -2.5, 0xc100},
		{"max", 65504, 0x7bff},
		{"smallest subnormal", float32(math.Ldexp(1, -24)), 0x0001},
		{"largest subnormal", float32(math.Ldexp(1023, -24)), 0x03ff},
		{"smallest normal", float32(math.Ldexp(1, -14)), 0x0400},
		{"zero", 0, 0x0000},
		{"minus zero", float32(math.Copysign(0, -1)), 0x8000},
		{"inf", float32(math.Inf(1)), 0x7c00},
		{"minus inf", float32(math.Inf(-1)), 0xfc00},
		{"third", 1.0 / 3, 0x3555},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Float32ToF16(tt.f); got != tt.bits {
				t.Errorf("Float32ToF16(%g) = %#04x, want %#04x", tt.f, got, tt.bits)
			}
			if tt.name == "third" {
				return // inexact
			}
			if got := F16ToFloat32(tt.bits); math.Float32bits(got) != math.Float32bits(tt.f) {
				t.Errorf("F16ToFloat32(%#04x) = %g, want %g", tt.bits, got, tt.f)
			}
		})
	}
	nan := F16ToFloat32(0x7e00)
	if !math.IsNaN(float64(nan)) {
		t.Errorf("F16ToFloat32(0x7e00) = %g, want NaN", nan)
	}
	if got := Float32ToF16(float32(math.NaN())); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("Float32ToF16(NaN) = %#04x, not a NaN", got)
	}
	if got := Float32ToF16(float32(math.NaN())); got != 0x7e00 {
		t.Errorf("Float32ToF16(NaN) = %#04x, want 0x7e00", got)
	}
}

func TestF16Rounding(t *testing.T) {
	tests := []struct {
		name string
		f    float64
		bits uint16
	}{
		{"tie to even down", 1 + math.Ldexp(1, -11), 0x3c00},
		{"tie to even up", 1 + 3*math.Ldexp(1, -11), 0x3c02},
		{"above tie", 1 + math.Ldexp(1, -11) + math.Ldexp(1, -20), 0x3c01},
		{"overflow to inf", 65520, 0x7c00},
		{"just below overflow", 65519, 0x7bff},
		{"half smallest subnormal ties to zero", math.Ldexp(1, -25), 0x0000},
		{"above half smallest subnormal", math.Ldexp(1.5, -25), 0x0001},
		{"subnormal tie to even up", math.Ldexp(3, -25), 0x0002},
		{"subnormal rounds into normal", math.Ldexp(2047, -25), 0x0400},
		{"tiny", 1e-30, 0x0000},
		{"negative tiny", -1e-30, 0x8000},
		{"float32 subnormal", math.Ldexp(1, -140), 0x0000},
	}
	for _, tt := range tests {
		if got := Float32ToF16(float32(tt.f)); got != tt.bits {
			t.Errorf("%s: Float32ToF16(%g) = %#04x, want %#04x", tt.name, tt.f, got, tt.bits)
		}
	}
	// Every finite binary16 value round-trips exactly.
	for h := 0; h < 1<<16; h++ {
		f := F16ToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			if h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
				t.Fatalf("F16ToFloat32(%#04x) is NaN", h)
			}
			continue
		}
		if got := Float32ToF16(f); got != uint16(h) {
			t.Fatalf("round trip %#04x -> %g -> %#04x", h, f, got)
		}
	}
}

func TestBF16BitPatterns(t *testing.T) {
	tests := []struct {
		name string
		f    float32
		bits uint16
		back float32 // the exact value of bits
	}{
		{"one", 1.0, 0x3f80, 1},
		{"minus 2.5", -2.5, 0xc020, -2.5},
		{"65504 rounds to 65536", 65504, 0x4780, 65536},
		{"smallest subnormal", float32(math.Ldexp(1, -133)), 0x0001, float32(math.Ldexp(1, -133))},
		{"inf", float32(math.Inf(1)), 0x7f80, float32(math.Inf(1))},
		{"minus inf", float32(math.Inf(-1)), 0xff80, float32(math.Inf(-1))},
		{"tie to even down", 1 + float32(math.Ldexp(1, -8)), 0x3f80, 1},
		{"tie to even up", 1 + float32(math.Ldexp(3, -8)), 0x3f82, 1 + float32(math.Ldexp(1, -6))},
		{"max float32 overflows", math.MaxFloat32, 0x7f80, float32(math.Inf(1))},
	}
	for _, tt := range tests {
		if got := Float32ToBF16(tt.f); got != tt.bits {
			t.Errorf("%s: Float32ToBF16(%g) = %#04x, want %#04x", tt.name, tt.f, got, tt.bits)
		}
		if got := BF16ToFloat32(tt.bits); got != tt.back {
			t.Errorf("%s: BF16ToFloat32(%#04x) = %g, want %g", tt.name, tt.bits, got, tt.back)
		}
	}
	if got := Float32ToBF16(float32(math.NaN())); got != 0x7fc0 {
		t.Errorf("Float32ToBF16(NaN) = %#04x, want 0x7fc0", got)
	}
	// A NaN whose payload is only in the low bits must stay a NaN, not round to inf.
	if got := Float32ToBF16(math.Float32frombits(0x7f800001)); got&0x7f80 != 0x7f80 || got&0x7f == 0 {
		t.Errorf("Float32ToBF16(signalling NaN) = %#04x, not a NaN", got)
	}
	if !math.IsNaN(float64(BF16ToFloat32(0x7fc0))) {
		t.Errorf("BF16ToFloat32(0x7fc0) is not NaN")
	}
}

func testValues(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i%17-8) * 0.125 // exact in all three dtypes
	}
	return v
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	vals := testValues(24)
	tensors := []Tensor{
		{Name: "b.f16", DType: F16, Shape: []int{4, 3}, Data: EncodeF16(vals[:12])},
		{Name: "a.f32", DType: F32, Shape: []int{2, 3, 4}, Data: EncodeF32(vals)},
		{Name: "c.bf16", DType: BF16, Shape: []int{5}, Data: EncodeBF16(vals[:5])},
		{Name: "scalar", DType: F32, Shape: []int{}, Data: EncodeF32([]float32{7})},
		{Name: "empty", DType: F16, Shape: []int{0, 3}, Data: []byte{}},
		{Name: "ids", DType: I64, Shape: []int{2}, Data: make([]byte, 16)},
	}
	md := map[string]string{"format": "pt", "note": "<&>"}
	if err := Write(path, tensors, md); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(md, f.Metadata); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
	want := map[string]*Tensor{}
	for i := range tensors {
		want[tensors[i].Name] = &tensors[i]
	}
	if diff := cmp.Diff(want, f.Tensors, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("tensors (-want +got):\n%s", diff)
	}
	wantF := map[string][]float32{
		"a.f32": vals, "b.f16": vals[:12], "c.bf16": vals[:5], "scalar": {7}, "empty": {},
	}
	for name, w := range wantF {
		got, err := f.Tensors[name].Float32()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(w, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s values (-want +got):\n%s", name, diff)
		}
	}
	if _, err := f.Tensors["ids"].Float32(); err == nil || !strings.Contains(err.Error(), "cannot convert dtype I64") {
		t.Errorf("Float32 of I64: err = %v, want a conversion error", err)
	}
	if got, want := f.Tensors["a.f32"].NumElements(), 24; got != want {
		t.Errorf("NumElements = %d, want %d", got, want)
	}
	if got := f.Tensors["scalar"].NumElements(); got != 1 {
		t.Errorf("scalar NumElements = %d, want 1", got)
	}

	// Layout: header padded to a multiple of 8, 8-byte types first, then by name.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(raw)
	if n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	hdr := string(raw[8 : 8+n])
	if !strings.HasPrefix(hdr, `{"__metadata__":{"format":"pt","note":"<&>"},"ids":`) {
		t.Errorf("header starts %.60q", hdr)
	}
	order := []string{`"ids"`, `"a.f32"`, `"scalar"`, `"b.f16"`, `"c.bf16"`, `"empty"`}
	last := -1
	for _, k := range order {
		i := strings.Index(hdr, k)
		if i < last {
			t.Errorf("tensor %s out of order in header %s", k, hdr)
		}
		last = i
	}
	// Deterministic: writing again gives identical bytes.
	path2 := filepath.Join(dir, "m2.safetensors")
	if err := Write(path2, []Tensor{tensors[5], tensors[4], tensors[3], tensors[2], tensors[1], tensors[0]}, md); err != nil {
		t.Fatal(err)
	}
	raw2, _ := os.ReadFile(path2)
	if !bytes.Equal(raw, raw2) {
		t.Errorf("writing the same tensors in another order gave different bytes")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*tmp")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		tensors []Tensor
		want    Error
	}{
		{"size mismatch", []Tensor{{Name: "x", DType: F32, Shape: []int{3}, Data: make([]byte, 8)}}, Error{Tensor: "x", Reason: "has 8 data bytes, want 12 for dtype F32 shape [3]"}},
		{"unknown dtype", []Tensor{{Name: "x", DType: "F12", Shape: []int{1}, Data: make([]byte, 2)}}, Error{Tensor: "x", Reason: `unknown dtype "F12"`}},
		{"duplicate", []Tensor{{Name: "x", DType: U8, Shape: []int{1}, Data: []byte{1}}, {Name: "x", DType: U8, Shape: []int{1}, Data: []byte{1}}}, Error{Tensor: "x", Reason: "given twice"}},
		{"reserved", []Tensor{{Name: "__metadata__", DType: U8, Shape: []int{1}, Data: []byte{1}}}, Error{Tensor: "__metadata__", Reason: "name is reserved"}},
		{"negative shape", []Tensor{{Name: "x", DType: U8, Shape: []int{-1}}}, Error{Tensor: "x", Reason: "invalid shape [-1]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "w.safetensors")
			err := Write(path, tt.tensors, nil)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want *Error", err)
			}
			tt.want.Path = path
			if diff := cmp.Diff(tt.want, *e); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			if _, err := os.Stat(path); err == nil {
				t.Errorf("file written despite the error")
			}
		})
	}
}

// build assembles a file from a header string and a buffer.
func build(header string, buf []byte) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	out = append(out, header...)
	return append(out, buf...)
}

func TestParseMalformed(t *testing.T) {
	buf16 := make([]byte, 16)
	tests := []struct {
		name string
		data []byte
		want Error // Path is filled in
	}{
		{"short", []byte{1, 2, 3}, Error{Reason: "file is 3 bytes, shorter than the 8-byte header length"}},
		{"header beyond file", append(binary.LittleEndian.AppendUint64(nil, 100), "{}"...), Error{Reason: "header length 100 goes beyond the end of the file (2 bytes after the length)"}},
		{"huge header length", append(binary.LittleEndian.AppendUint64(nil, math.MaxUint64), "{}"...), Error{Reason: "header length 18446744073709551615 goes beyond the end of the file (2 bytes after the length)"}},
		{"not an object", build(`[1]`, nil), Error{Reason: "header does not begin with '{'"}},
		{"bad JSON", build(`{"a":`, nil), Error{Tensor: "a", Reason: "bad JSON header entry: EOF"}},
		{"bad JSON value", build(`{"a":{"dtype":1}}`, nil), Error{Tensor: "a", Reason: "bad JSON header entry: json: cannot unmarshal number into Go struct field headerEntry.dtype of type string"}},
		{"bad JSON trailing", build(`{} x`, nil), Error{Reason: "bad JSON header: unexpected data after the header object"}},
		{"invalid UTF-8", build("{\"\xff\":1}", nil), Error{Reason: "header is not valid UTF-8"}},
		{"metadata not strings", build(`{"__metadata__":{"a":1}}`, nil), Error{Reason: "bad JSON header: __metadata__ must map strings to strings: json: cannot unmarshal number into Go value of type string"}},
		{"duplicate tensor", build(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{1}), Error{Tensor: "a", Reason: "appears twice in the header"}},
		{"missing dtype", build(`{"a":{"shape":[1],"data_offsets":[0,1]}}`, []byte{1}), Error{Tensor: "a", Reason: "missing dtype"}},
		{"missing shape", build(`{"a":{"dtype":"U8","data_offsets":[0,1]}}`, []byte{1}), Error{Tensor: "a", Reason: "missing shape"}},
		{"offsets not a pair", build(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, []byte{1}), Error{Tensor: "a", Reason: "data_offsets must be [begin, end], got 1 numbers"}},
		{"negative offset", build(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, []byte{1}), Error{Tensor: "a", Reason: "bad JSON header entry: json: cannot unmarshal number -1 into Go struct field headerEntry.data_offsets of type uint64"}},
		{"unknown dtype", build(`{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,1]}}`, []byte{1}), Error{Tensor: "a", Reason: `unknown dtype "F12"`}},
		{"negative dim", build(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}`, []byte{1}), Error{Tensor: "a", Reason: "invalid shape [-1]"}},
		{"shape overflow", build(`{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,1]}}`, []byte{1}), Error{Tensor: "a", Reason: "invalid shape [4294967296 4294967296]"}},
		{"byte size overflow", build(`{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,1]}}`, []byte{1}), Error{Tensor: "a", Reason: "shape [2305843009213693952] of dtype F64 has no whole byte size"}},
		{"offsets reversed", build(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}}`, buf16), Error{Tensor: "a", Reason: "data_offsets [8, 0] end before they begin"}},
		{"outside buffer", build(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}`, buf16), Error{Tensor: "a", Reason: "data_offsets [8, 24] lie outside the 16-byte buffer"}},
		{"size mismatch", build(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}`, buf16), Error{Tensor: "a", Reason: "data_offsets [0, 16] span 16 bytes, but dtype F32 shape [3] needs 12"}},
		{"overlap", build(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, buf16), Error{Tensor: "b", Reason: `data_offsets [8, 16] overlap tensor "a" (which ends at 12)`}},
		{"hole", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, buf16), Error{Tensor: "b", Reason: "data_offsets [8, 16] leave a hole of 4 bytes after offset 4"}},
		{"trailing bytes", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, buf16), Error{Reason: "buffer has 8 bytes not covered by any tensor (tensors end at 8, buffer is 16 bytes)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("bad.safetensors", tt.data)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse = %v, %v; want *Error", f, err)
			}
			tt.want.Path = "bad.safetensors"
			if diff := cmp.Diff(tt.want, *e); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			if !strings.Contains(err.Error(), "bad.safetensors") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestParseAcceptsVariants(t *testing.T) {
	// Whitespace padding, no metadata, null metadata, zero-size tensors sharing an offset.
	data := build(`{"__metadata__":null, "z":{"dtype":"F16","shape":[0],"data_offsets":[4,4]},`+
		`"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"y":{"dtype":"BOOL","shape":[0],"data_offsets":[4,4]}}   `,
		EncodeF16([]float32{1, -2}))
	f, err := Parse("ok", data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a", "y", "z"}, f.Names()); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	v, err := f.Tensors["a"].Float32()
	if err != nil || !cmp.Equal(v, []float32{1, -2}) {
		t.Errorf("a = %v, %v", v, err)
	}
}

func TestFloat32Errors(t *testing.T) {
	tests := []struct {
		t    Tensor
		want string
	}{
		{Tensor{Name: "x", DType: "Q4", Shape: []int{2}, Data: make([]byte, 1)}, `tensor "x": unknown dtype "Q4"`},
		{Tensor{Name: "x", DType: F64, Shape: []int{1}, Data: make([]byte, 8)}, `tensor "x": cannot convert dtype F64 to float32 (supported: F32, F16, BF16)`},
		{Tensor{Name: "x", DType: F32, Shape: []int{2}, Data: make([]byte, 4)}, `tensor "x": has 4 data bytes, want 8 for dtype F32 shape [2]`},
	}
	for _, tt := range tests {
		_, err := tt.t.Float32()
		if err == nil || !strings.HasSuffix(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want suffix %q", tt.t.DType, err, tt.want)
		}
	}
}

func writeIndex(t *testing.T, dir string, weightMap map[string]string) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 123}, "weight_map": weightMap})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, IndexFileName), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestOpenDirSharded(t *testing.T) {
	dir := t.TempDir()
	v := testValues(6)
	s1 := []Tensor{
		{Name: "model.embed_tokens.weight", DType: BF16, Shape: []int{2, 3}, Data: EncodeBF16(v)},
		{Name: "model.norm.weight", DType: BF16, Shape: []int{3}, Data: EncodeBF16(v[:3])},
	}
	s2 := []Tensor{{Name: "lm_head.weight", DType: BF16, Shape: []int{2, 3}, Data: EncodeBF16(v)}}
	sh1, sh2 := "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
	if err := Write(filepath.Join(dir, sh1), s1, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, sh2), s2, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	wm := map[string]string{"model.embed_tokens.weight": sh1, "model.norm.weight": sh1, "lm_head.weight": sh2}
	writeIndex(t, dir, wm)

	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}, s.Names()); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if len(s.Files) != 2 {
		t.Errorf("%d files, want 2", len(s.Files))
	}
	got, err := s.Float32("lm_head.weight", []int{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v, got); diff != "" {
		t.Errorf("lm_head (-want +got):\n%s", diff)
	}
	if _, err := s.Float32("lm_head.weight", []int{3, 2}); err == nil || !strings.Contains(err.Error(), sh2) {
		t.Errorf("shape mismatch error = %v, want one naming %s", err, sh2)
	}
	if _, ok := s.Tensor("nope"); ok {
		t.Errorf("Tensor(nope) found")
	}

	// Broken indexes.
	bad := []struct {
		name string
		wm   map[string]string
		want string
	}{
		{"missing tensor", map[string]string{"model.embed_tokens.weight": sh1, "extra": sh1}, `tensor "extra": weight_map says shard ` + sh1 + `, which has no such tensor`},
		{"wrong shard", map[string]string{"lm_head.weight": sh1, "model.norm.weight": sh2}, `tensor "lm_head.weight": weight_map says shard ` + sh1 + `, but it is in shard ` + sh2},
		{"path escape", map[string]string{"x": "../x.safetensors"}, `tensor "x": shard "../x.safetensors" is not a plain file name in the directory`},
		{"missing shard", map[string]string{"x": "nope.safetensors"}, "nope.safetensors: no such file or directory"},
		{"empty", map[string]string{}, "weight_map is missing or empty"},
	}
	for _, tt := range bad {
		writeIndex(t, dir, tt.wm)
		_, err := OpenDir(dir)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to contain %q", tt.name, err, tt.want)
		}
	}

	// A duplicate across shards.
	if err := Write(filepath.Join(dir, sh2), append(s2, s1[1]), nil); err != nil {
		t.Fatal(err)
	}
	writeIndex(t, dir, wm)
	if _, err := OpenDir(dir); err == nil || !strings.Contains(err.Error(), "is in both shard") {
		t.Errorf("duplicate across shards: err = %v", err)
	}

	// model.safetensors takes precedence over the index.
	if err := Write(filepath.Join(dir, SingleFileName), s2, nil); err != nil {
		t.Fatal(err)
	}
	s, err = OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"lm_head.weight"}, s.Names()); diff != "" {
		t.Errorf("single-file names (-want +got):\n%s", diff)
	}

	if _, err := OpenDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "has neither") {
		t.Errorf("empty dir: err = %v", err)
	}
}

func FuzzOpen(f *testing.F) {
	f.Add(build(`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}`, EncodeF16([]float32{1, 2})))
	f.Add(build(`{"__metadata__":{"k":"v"},"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[0,2]}}`, []byte{0x80, 0x3f}))
	f.Add(build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F4","shape":[2],"data_offsets":[4,5]}}`, make([]byte, 5)))
	f.Add([]byte{})
	f.Add(build(`{}`, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz", data)
		if err != nil {
			if file != nil {
				t.Fatalf("non-nil file with error %v", err)
			}
			return
		}
		total := 0
		for _, name := range file.Names() {
			tn := file.Tensors[name]
			total += len(tn.Data)
			v, err := tn.Float32()
			if err == nil && len(v) != tn.NumElements() {
				t.Fatalf("%s: %d values for %d elements", name, len(v), tn.NumElements())
			}
		}
		if total != len(data)-8-file.HeaderSize {
			t.Fatalf("tensors cover %d bytes of a %d-byte buffer", total, len(data)-8-file.HeaderSize)
		}
	})
}
