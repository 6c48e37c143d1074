package traces

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
)

// jsonError names the field a JSON decoding error is about, where encoding/json says.
func (l *lineReader) jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return l.errorf(te.Field, "%s is not %s", te.Value, te.Type)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return l.errorf("", "malformed JSON at byte %d: %v", se.Offset, se)
	}
	return l.errorf("", "%v", err)
}

func (l *lineReader) decode(line []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		if msg := err.Error(); strict && len(msg) > 20 && msg[:20] == "json: unknown field " {
			field, _ := strconv.Unquote(msg[20:])
			return l.errorf(field, "unknown field")
		}
		return l.jsonError(err)
	}
	if dec.More() {
		return l.errorf("", "more than one JSON value on the line")
	}
	return nil
}

func (l *lineReader) required(field string, present bool) error {
	if !present {
		return l.errorf(field, "missing")
	}
	return nil
}

func (l *lineReader) count(field string, v *float64, minimum int) (int, error) {
	if err := l.required(field, v != nil); err != nil {
		return 0, err
	}
	if *v != math.Trunc(*v) || math.IsInf(*v, 0) {
		return 0, l.errorf(field, "%v is not an integer", *v)
	}
	if *v < float64(minimum) || *v > math.MaxInt32 {
		return 0, l.errorf(field, "%v is out of range (at least %d)", *v, minimum)
	}
	return int(*v), nil
}

// mooncakeReader reads Mooncake traces: JSON lines with timestamp (ms from the trace's
// start), input_length, output_length and hash_ids (prefix block ids for blocks of 512
// tokens). Fields it does not know are ignored, as Mooncake releases add some.
type mooncakeReader struct {
	lines *lineReader
	order order
}

// MooncakeBlockSize is the tokens each Mooncake hash id covers.
const MooncakeBlockSize = 512

// NewMooncakeReader reads a Mooncake trace; name appears in errors.
func NewMooncakeReader(r io.Reader, name string) Reader {
	return &mooncakeReader{lines: newLineReader(r, name)}
}

type mooncakeRow struct {
	Timestamp    *float64 `json:"timestamp"`
	InputLength  *float64 `json:"input_length"`
	OutputLength *float64 `json:"output_length"`
	HashIDs      []int64  `json:"hash_ids"`
}

func (m *mooncakeReader) Next() (Row, error) {
	line, err := m.lines.next()
	if err != nil {
		return Row{}, err
	}
	var raw mooncakeRow
	if err := m.lines.decode(line, &raw, false); err != nil {
		return Row{}, err
	}
	l := m.lines
	if err := l.required("timestamp", raw.Timestamp != nil); err != nil {
		return Row{}, err
	}
	ts := *raw.Timestamp
	if ts < 0 || math.IsNaN(ts) || math.IsInf(ts, 0) {
		return Row{}, l.errorf("timestamp", "%v is not a non-negative number of milliseconds", ts)
	}
	arrival := ts / 1000
	if err := m.order.check(l, "timestamp", arrival); err != nil {
		return Row{}, err
	}
	in, err := l.count("input_length", raw.InputLength, 1)
	if err != nil {
		return Row{}, err
	}
	out, err := l.count("output_length", raw.OutputLength, 1)
	if err != nil {
		return Row{}, err
	}
	if max := (in + MooncakeBlockSize - 1) / MooncakeBlockSize; len(raw.HashIDs) > max {
		return Row{}, l.errorf("hash_ids", "%d ids for %d input tokens (at most %d blocks of %d)", len(raw.HashIDs), in, max, MooncakeBlockSize)
	}
	return Row{Arrival: arrival, InputTokens: in, OutputTokens: out, HashIDs: raw.HashIDs, HashBlockSize: MooncakeBlockSize, Line: l.line}, nil
}

// nativeRow is servelab's own trace format, one JSON object a line.
type nativeRow struct {
	ArrivalS      *float64 `json:"arrival_s"`
	InputTokens   *float64 `json:"input_tokens"`
	OutputTokens  *float64 `json:"output_tokens"`
	HashIDs       []int64  `json:"hash_ids,omitempty"`
	HashBlockSize int      `json:"hash_block_size,omitempty"`
	SessionID     uint64   `json:"session_id,omitempty"`
	Priority      int      `json:"priority,omitempty"`
}

type nativeReader struct {
	lines *lineReader
	order order
}

// NewNativeReader reads servelab's JSONL format: arrival_s, input_tokens, output_tokens,
// and optionally hash_ids with hash_block_size, session_id and priority. Unknown fields
// are errors.
func NewNativeReader(r io.Reader, name string) Reader {
	return &nativeReader{lines: newLineReader(r, name)}
}

func (n *nativeReader) Next() (Row, error) {
	line, err := n.lines.next()
	if err != nil {
		return Row{}, err
	}
	var raw nativeRow
	if !parseNativeFast(line, &raw) {
		raw = nativeRow{}
		if err := n.lines.decode(line, &raw, true); err != nil {
			return Row{}, err
		}
	}
	l := n.lines
	if err := l.required("arrival_s", raw.ArrivalS != nil); err != nil {
		return Row{}, err
	}
	arrival := *raw.ArrivalS
	if arrival < 0 || math.IsNaN(arrival) || math.IsInf(arrival, 0) {
		return Row{}, l.errorf("arrival_s", "%v is not a non-negative number of seconds", arrival)
	}
	if err := n.order.check(l, "arrival_s", arrival); err != nil {
		return Row{}, err
	}
	in, err := l.count("input_tokens", raw.InputTokens, 1)
	if err != nil {
		return Row{}, err
	}
	out, err := l.count("output_tokens", raw.OutputTokens, 1)
	if err != nil {
		return Row{}, err
	}
	if len(raw.HashIDs) > 0 && raw.HashBlockSize <= 0 {
		return Row{}, l.errorf("hash_block_size", "must be positive when hash_ids are given")
	}
	if raw.HashBlockSize < 0 {
		return Row{}, l.errorf("hash_block_size", "%d is negative", raw.HashBlockSize)
	}
	return Row{
		Arrival: arrival, InputTokens: in, OutputTokens: out,
		HashIDs: raw.HashIDs, HashBlockSize: raw.HashBlockSize,
		Session: raw.SessionID, Priority: raw.Priority, Line: l.line,
	}, nil
}

// NativeWriter writes rows in servelab's JSONL format.
type NativeWriter struct {
	w   *bufio.Writer
	buf []byte
}

// NewNativeWriter writes to w; call Flush at the end.
func NewNativeWriter(w io.Writer) *NativeWriter {
	return &NativeWriter{w: bufio.NewWriterSize(w, 1<<16)}
}

// Write writes one row.
func (n *NativeWriter) Write(r Row) error {
	b := n.buf[:0]
	b = append(b, `{"arrival_s":`...)
	b = strconv.AppendFloat(b, r.Arrival, 'f', -1, 64)
	b = append(b, `,"input_tokens":`...)
	b = strconv.AppendInt(b, int64(r.InputTokens), 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, int64(r.OutputTokens), 10)
	if len(r.HashIDs) > 0 {
		b = append(b, `,"hash_ids":[`...)
		for i, h := range r.HashIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, h, 10)
		}
		b = append(b, `],"hash_block_size":`...)
		b = strconv.AppendInt(b, int64(r.HashBlockSize), 10)
	}
	if r.Session != 0 {
		b = append(b, `,"session_id":`...)
		b = strconv.AppendUint(b, r.Session, 10)
	}
	if r.Priority != 0 {
		b = append(b, `,"priority":`...)
		b = strconv.AppendInt(b, int64(r.Priority), 10)
	}
	b = append(b, "}\n"...)
	n.buf = b
	_, err := n.w.Write(b)
	return err
}

// Flush writes out buffered rows.
func (n *NativeWriter) Flush() error { return n.w.Flush() }
