// Package safetensors reads and writes the safetensors tensor file format used by Hugging Face
// model repositories.
//
// A file is an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON header,
// then the byte buffer. The header maps each tensor name to
// {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} (offsets relative to the start
// of the buffer) and may hold "__metadata__", a string-to-string map. Data is little-endian,
// row-major. As the format requires, the tensors must index the whole buffer: no holes,
// no overlaps, no trailing bytes.
//
// Reading loads a file with one read; every [Tensor.Data] is a slice of that one buffer
// (callers must not modify it). [Write] produces what the reference (Rust) writer does: the
// header padded with spaces to a multiple of 8 bytes, tensors ordered by decreasing element
// size then by name, so every tensor starts at a file offset aligned to its element size.
package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// Tensor is one named tensor. Data is the raw little-endian bytes, row-major.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// File is one parsed safetensors file.
type File struct {
	// Path is the file's path as given to Open (or the name given to Parse).
	Path string
	// Metadata is the header's "__metadata__" map (nil when absent).
	Metadata map[string]string
	// Tensors maps names to tensors; their Data slices alias the file's buffer.
	Tensors map[string]*Tensor
	// HeaderSize is N, the JSON header's length in bytes (padding included).
	HeaderSize int
	// raw is the whole file.
	raw []byte
}

// Error is a malformed-file or invalid-tensor error.
type Error struct {
	Path   string // the file (or "" when not from a file)
	Tensor string // the tensor concerned, or ""
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("safetensors: ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	if e.Tensor != "" {
		fmt.Fprintf(&b, "tensor %q: ", e.Tensor)
	}
	b.WriteString(e.Reason)
	return b.String()
}

func errorf(path, tensor, format string, args ...any) *Error {
	return &Error{Path: path, Tensor: tensor, Reason: fmt.Sprintf(format, args...)}
}

// NumElements is the product of the shape (1 for a scalar, shape []).
func (t *Tensor) NumElements() int {
	n, _ := numElements(t.Shape)
	return n
}

// numElements is the product of shape, with false on a negative dimension or on overflow.
func numElements(shape []int) (int, bool) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		if d == 0 {
			n = 0
		}
	}
	if n == 0 {
		return 0, true
	}
	for _, d := range shape {
		if n > math.MaxInt/d {
			return 0, false
		}
		n *= d
	}
	return n, true
}

// Float32 converts the tensor's elements to float32. F32, F16 and BF16 are supported
// (F16 and BF16 exactly, subnormals, infinities and NaNs included); any other dtype is an error.
func (t *Tensor) Float32() ([]float32, error) {
	n, ok := numElements(t.Shape)
	if !ok {
		return nil, errorf("", t.Name, "invalid shape %v", t.Shape)
	}
	size, ok := t.DType.ByteSize(n)
	if !ok {
		if !t.DType.Known() {
			return nil, errorf("", t.Name, "unknown dtype %q", string(t.DType))
		}
		return nil, errorf("", t.Name, "shape %v of dtype %s has no whole byte size", t.Shape, t.DType)
	}
	if size != len(t.Data) {
		return nil, errorf("", t.Name, "has %d data bytes, want %d for dtype %s shape %v", len(t.Data), size, t.DType, t.Shape)
	}
	out, ok := decodeFloat32(t.DType, t.Data)
	if !ok {
		return nil, errorf("", t.Name, "cannot convert dtype %s to float32 (supported: F32, F16, BF16)", t.DType)
	}
	return out, nil
}

// Open reads and validates one .safetensors file.
func Open(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	return Parse(path, data)
}

// Names returns the file's tensor names, sorted.
func (f *File) Names() []string {
	names := make([]string, 0, len(f.Tensors))
	for n := range f.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Tensor returns the named tensor.
func (f *File) Tensor(name string) (*Tensor, bool) {
	t, ok := f.Tensors[name]
	return t, ok
}

type headerEntry struct {
	DType       *string  `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

const metadataKey = "__metadata__"

// Parse validates data as a safetensors file; name is used in errors and as File.Path.
// The returned tensors alias data.
func Parse(name string, data []byte) (*File, error) {
	if len(data) < 8 {
		return nil, errorf(name, "", "file is %d bytes, shorter than the 8-byte header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > uint64(len(data)-8) {
		return nil, errorf(name, "", "header length %d goes beyond the end of the file (%d bytes after the length)", n, len(data)-8)
	}
	hdr := data[8 : 8+n]
	buf := data[8+n:]
	if len(hdr) == 0 || hdr[0] != '{' {
		return nil, errorf(name, "", "header does not begin with '{'")
	}
	if !utf8.Valid(hdr) {
		return nil, errorf(name, "", "header is not valid UTF-8")
	}
	f := &File{Path: name, Tensors: map[string]*Tensor{}, HeaderSize: int(n), raw: data}
	offsets := map[string][2]uint64{}

	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // '{'
		return nil, errorf(name, "", "bad JSON header: %v", err)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errorf(name, "", "bad JSON header: %v", err)
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errorf(name, "", "bad JSON header: unexpected %v", tok)
		}
		if seen[key] {
			return nil, errorf(name, key, "appears twice in the header")
		}
		seen[key] = true
		if key == metadataKey {
			var md map[string]string
			if err := dec.Decode(&md); err != nil {
				return nil, errorf(name, "", "bad JSON header: __metadata__ must map strings to strings: %v", err)
			}
			f.Metadata = md
			continue
		}
		var e headerEntry
		if err := dec.Decode(&e); err != nil {
			return nil, errorf(name, key, "bad JSON header entry: %v", err)
		}
		if e.DType == nil {
			return nil, errorf(name, key, "missing dtype")
		}
		if e.Shape == nil {
			return nil, errorf(name, key, "missing shape")
		}
		if len(e.DataOffsets) != 2 {
			return nil, errorf(name, key, "data_offsets must be [begin, end], got %d numbers", len(e.DataOffsets))
		}
		dt := DType(*e.DType)
		if !dt.Known() {
			return nil, errorf(name, key, "unknown dtype %q", *e.DType)
		}
		ne, ok := numElements(e.Shape)
		if !ok {
			return nil, errorf(name, key, "invalid shape %v", e.Shape)
		}
		size, ok := dt.ByteSize(ne)
		if !ok {
			return nil, errorf(name, key, "shape %v of dtype %s has no whole byte size", e.Shape, dt)
		}
		b, end := e.DataOffsets[0], e.DataOffsets[1]
		if end < b {
			return nil, errorf(name, key, "data_offsets [%d, %d] end before they begin", b, end)
		}
		if end > uint64(len(buf)) {
			return nil, errorf(name, key, "data_offsets [%d, %d] lie outside the %d-byte buffer", b, end, len(buf))
		}
		if end-b != uint64(size) {
			return nil, errorf(name, key, "data_offsets [%d, %d] span %d bytes, but dtype %s shape %v needs %d", b, end, end-b, dt, e.Shape, size)
		}
		offsets[key] = [2]uint64{b, end}
		f.Tensors[key] = &Tensor{Name: key, DType: dt, Shape: e.Shape, Data: buf[b:end:end]}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, errorf(name, "", "bad JSON header: %v", err)
	}
	if rest := hdr[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, errorf(name, "", "bad JSON header: unexpected data after the header object")
	}

	// The tensors must tile the buffer exactly.
	names := f.Names()
	sort.SliceStable(names, func(i, j int) bool {
		a, b := offsets[names[i]], offsets[names[j]]
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		return a[1] < b[1]
	})
	var pos uint64
	prev := ""
	for _, nm := range names {
		o := offsets[nm]
		if o[0] < pos {
			return nil, errorf(name, nm, "data_offsets [%d, %d] overlap tensor %q (which ends at %d)", o[0], o[1], prev, pos)
		}
		if o[0] > pos {
			return nil, errorf(name, nm, "data_offsets [%d, %d] leave a hole of %d bytes after offset %d", o[0], o[1], o[0]-pos, pos)
		}
		pos = o[1]
		prev = nm
	}
	if pos != uint64(len(buf)) {
		return nil, errorf(name, "", "buffer has %d bytes not covered by any tensor (tensors end at %d, buffer is %d bytes)", uint64(len(buf))-pos, pos, len(buf))
	}
	return f, nil
}

// Write writes tensors and metadata to path as one safetensors file. The output is
// deterministic: the header lists "__metadata__" first (omitted when metadata is empty) then the
// tensors in buffer order, which is by decreasing element size, then by name (a single-dtype
// file is simply sorted by name); the header is padded with spaces to a multiple of 8 bytes.
// The file is written to a temporary file in the same directory and renamed into place.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	infos := make([]TensorInfo, len(tensors))
	for i, t := range tensors {
		infos[i] = TensorInfo{Name: t.Name, DType: t.DType, Shape: t.Shape}
	}
	return WriteStream(path, infos, metadata, func(i int) ([]byte, error) { return tensors[i].Data, nil })
}

// TensorInfo is a tensor's name, dtype and shape: a header entry without its data.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int
}

// ByteSize is the size of the tensor's data, and false for an invalid shape or dtype.
func (t TensorInfo) ByteSize() (int, bool) {
	n, ok := numElements(t.Shape)
	if !ok {
		return 0, false
	}
	return t.DType.ByteSize(n)
}

// WriteStream writes the file Write writes for tensors described by infos, asking data
// for each tensor's bytes (infos[i]'s) one at a time, in the file's buffer order, and
// writing them before asking for the next: a file of any size is written holding one
// tensor in memory. data's slice is not kept; a slice of the wrong length, or an error
// from data, stops the write and leaves no file at path.
func WriteStream(path string, infos []TensorInfo, metadata map[string]string, data func(i int) ([]byte, error)) error {
	hdr, order, err := encodeHeader(path, infos, metadata)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	var lenb [8]byte
	binary.LittleEndian.PutUint64(lenb[:], uint64(len(hdr)))
	if err := writeAll(bw, lenb[:], hdr); err != nil {
		return fmt.Errorf("safetensors: writing %s: %w", path, err)
	}
	for _, i := range order {
		b, err := data(i)
		if err != nil {
			return fmt.Errorf("safetensors: writing %s: tensor %q: %w", path, infos[i].Name, err)
		}
		if want, _ := infos[i].ByteSize(); len(b) != want {
			return errorf(path, infos[i].Name, "has %d data bytes, want %d for dtype %s shape %v", len(b), want, infos[i].DType, infos[i].Shape)
		}
		if err := writeAll(bw, b); err != nil {
			return fmt.Errorf("safetensors: writing %s: %w", path, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("safetensors: writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("safetensors: writing %s: %w", path, err)
	}
	// CreateTemp makes the file private; a model file is as readable as any other output.
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	ok = true
	return nil
}

func writeAll(w io.Writer, bufs ...[]byte) error {
	for _, b := range bufs {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// encodeHeader validates tensors and returns the padded JSON header and the buffer order.
func encodeHeader(path string, tensors []TensorInfo, metadata map[string]string) ([]byte, []int, error) {
	sizes := make([]int, len(tensors))
	seen := map[string]bool{}
	for i := range tensors {
		t := &tensors[i]
		if t.Name == "" {
			return nil, nil, errorf(path, "", "tensor %d has an empty name", i)
		}
		if !utf8.ValidString(t.Name) {
			return nil, nil, errorf(path, t.Name, "name is not valid UTF-8")
		}
		if t.Name == metadataKey {
			return nil, nil, errorf(path, t.Name, "name is reserved")
		}
		if seen[t.Name] {
			return nil, nil, errorf(path, t.Name, "given twice")
		}
		seen[t.Name] = true
		if !t.DType.Known() {
			return nil, nil, errorf(path, t.Name, "unknown dtype %q", string(t.DType))
		}
		ne, ok := numElements(t.Shape)
		if !ok {
			return nil, nil, errorf(path, t.Name, "invalid shape %v", t.Shape)
		}
		size, ok := t.DType.ByteSize(ne)
		if !ok {
			return nil, nil, errorf(path, t.Name, "shape %v of dtype %s has no whole byte size", t.Shape, t.DType)
		}
		sizes[i] = size
	}
	order := make([]int, len(tensors))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		ta, tb := &tensors[a], &tensors[b]
		if ba, bb := ta.DType.Bits(), tb.DType.Bits(); ba != bb {
			return bb - ba
		}
		return strings.Compare(ta.Name, tb.Name)
	})

	var h bytes.Buffer
	h.WriteByte('{')
	first := true
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, nil, errorf(path, "", "metadata entry %q is not valid UTF-8", k)
		}
	}
	if len(metadata) > 0 {
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		h.WriteString(`"__metadata__":{`)
		for i, k := range keys {
			if i > 0 {
				h.WriteByte(',')
			}
			writeJSONString(&h, k)
			h.WriteByte(':')
			writeJSONString(&h, metadata[k])
		}
		h.WriteByte('}')
		first = false
	}
	var off uint64
	for _, i := range order {
		t := &tensors[i]
		if !first {
			h.WriteByte(',')
		}
		first = false
		writeJSONString(&h, t.Name)
		h.WriteString(`:{"dtype":`)
		writeJSONString(&h, string(t.DType))
		h.WriteString(`,"shape":[`)
		for j, d := range t.Shape {
			if j > 0 {
				h.WriteByte(',')
			}
			fmt.Fprintf(&h, "%d", d)
		}
		end := off + uint64(sizes[i])
		fmt.Fprintf(&h, `],"data_offsets":[%d,%d]}`, off, end)
		off = end
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	return h.Bytes(), order, nil
}

func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // strings always encode
	b.Truncate(b.Len() - 1) // Encode appends '\n'
}
