package traces

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
)

// MooncakeBlockSize is the tokens each Mooncake hash id covers.
const MooncakeBlockSize = 512

// mooncakeFields is one Mooncake row as read, before validation.
type mooncakeFields struct {
	ts, in, out          float64
	hasTS, hasIn, hasOut bool
	ids                  []int64
}

// mooncakeReader reads Mooncake traces (kvcache-ai/Mooncake FAST25-release/traces): JSON
// lines with timestamp (ms from the trace's start), input_length, output_length and
// hash_ids (prefix block ids for blocks of 512 tokens). Arrivals count from the first
// row, whose timestamp is 0 in Mooncake's own traces. The first three are required;
// hash_ids may be absent. Fields it does not know are ignored, since Mooncake's other
// traces may add some (such lines take the slower encoding/json path).
type mooncakeReader struct {
	lines   *lineReader
	order   order
	slab    idSlab
	scratch []int64
}

// NewMooncakeReader reads a Mooncake trace; name appears in errors.
func NewMooncakeReader(r io.Reader, name string) Reader {
	return &mooncakeReader{lines: newLineReader(r, name)}
}

func (m *mooncakeReader) Next() (Row, error) {
	line, err := m.lines.next()
	if err != nil {
		return Row{}, err
	}
	f := mooncakeFields{ids: m.scratch[:0]}
	if !parseMooncakeFast(line, &f) {
		if f, err = m.decode(line); err != nil {
			return Row{}, err
		}
	}
	m.scratch = f.ids[:0]
	l := m.lines
	if err := l.seconds("timestamp", f.ts, f.hasTS, "milliseconds"); err != nil {
		return Row{}, err
	}
	if err := m.order.check(l, "timestamp", f.ts, "ms"); err != nil {
		return Row{}, err
	}
	in, err := l.jsonCount("input_length", f.in, f.hasIn, 1)
	if err != nil {
		return Row{}, err
	}
	out, err := l.jsonCount("output_length", f.out, f.hasOut, 1)
	if err != nil {
		return Row{}, err
	}
	if most := (in + MooncakeBlockSize - 1) / MooncakeBlockSize; len(f.ids) > most {
		return Row{}, l.errorf("hash_ids", "%d ids for %d input tokens (at most %d blocks of %d)", len(f.ids), in, most, MooncakeBlockSize)
	}
	row := Row{Arrival: m.order.since(f.ts) / 1000, InputTokens: in, OutputTokens: out, HashIDs: m.slab.copy(f.ids), Line: l.line}
	if row.HashIDs != nil {
		row.HashBlockSize = MooncakeBlockSize
	}
	return row, nil
}

// parseMooncakeFast reads a row of the four known fields; false leaves it to encoding/json.
func parseMooncakeFast(line []byte, f *mooncakeFields) bool {
	p := objScanner{b: line}
	for p.next() {
		ok := false
		switch string(p.key) {
		case "timestamp":
			f.ts, ok = p.float()
			f.hasTS = true
		case "input_length":
			f.in, ok = p.float()
			f.hasIn = true
		case "output_length":
			f.out, ok = p.float()
			f.hasOut = true
		case "hash_ids":
			f.ids, ok = p.ints(f.ids[:0])
		}
		if !ok {
			return false
		}
	}
	return p.ok()
}

// mooncakeJSON is the encoding/json view of a Mooncake row.
type mooncakeJSON struct {
	Timestamp    *float64 `json:"timestamp"`
	InputLength  *float64 `json:"input_length"`
	OutputLength *float64 `json:"output_length"`
	HashIDs      []int64  `json:"hash_ids"`
}

func (m *mooncakeReader) decode(line []byte) (mooncakeFields, error) {
	var raw mooncakeJSON
	if err := decodeLine(m.lines, line, &raw, false); err != nil {
		return mooncakeFields{}, err
	}
	f := mooncakeFields{ids: raw.HashIDs}
	f.ts, f.hasTS = deref(raw.Timestamp)
	f.in, f.hasIn = deref(raw.InputLength)
	f.out, f.hasOut = deref(raw.OutputLength)
	return f, nil
}

func deref(v *float64) (float64, bool) {
	if v == nil {
		return 0, false
	}
	return *v, true
}

// decodeLine decodes one JSON object with encoding/json, turning its errors into ones
// that name the line and, where it can tell, the field.
func decodeLine(l *lineReader, line []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		const unknown = "json: unknown field "
		if msg := err.Error(); strict && strings.HasPrefix(msg, unknown) {
			field, _ := strconv.Unquote(msg[len(unknown):])
			return l.errorf(field, "unknown field")
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field == "" {
				return l.errorf("", "the line is a JSON %s, not an object", te.Value)
			}
			return l.errorf(te.Field, "%s is not %s", te.Value, te.Type)
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return l.errorf("", "malformed JSON at byte %d: %v", se.Offset, se)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return l.errorf("", "truncated JSON object")
		}
		return l.errorf("", "%v", err)
	}
	if rest := bytes.Trim(line[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return l.errorf("", "text after the JSON object: %q", truncate(string(rest), 20))
	}
	return nil
}
