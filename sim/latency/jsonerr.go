package latency

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// describeJSONError rewrites an encoding/json error so that it names the source (a file
// path), and the field or line and column at fault.
func describeJSONError(source string, raw []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read, the offending one included.
		line, col := lineCol(raw, syn.Offset-1)
		return fmt.Errorf("%s:%d:%d: %s", source, line, col, syn.Error())
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return fmt.Errorf("%s: got JSON %s, want %s", source, typ.Value, typ.Type)
		}
		return fmt.Errorf("%s: field %q: got JSON %s, want %s", source, field, typ.Value, typ.Type)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%s: empty, want a JSON object", source)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: unexpected end of JSON", source)
	}
	// DisallowUnknownFields reports `json: unknown field "name"`.
	return fmt.Errorf("%s: %s", source, strings.TrimPrefix(err.Error(), "json: "))
}

// lineCol turns a byte offset into a 1-based line and column.
func lineCol(raw []byte, offset int64) (line, col int) {
	offset = min(max(offset, 0), int64(len(raw)))
	before := raw[:offset]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = int(offset) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// decodeStrict decodes exactly one JSON value into v, rejecting unknown fields and
// trailing data.
func decodeStrict(source string, raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describeJSONError(source, raw, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		rest := dec.InputOffset() - int64(len(bytes.TrimLeft(raw[dec.InputOffset():], " \t\r\n")))
		line, col := lineCol(raw, rest)
		return fmt.Errorf("%s:%d:%d: data after the JSON value", source, line, col)
	}
	return nil
}
