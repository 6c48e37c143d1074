package traces

import (
	"bytes"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// csvRows reads a CSV trace with a header line, locating the columns it needs by name.
// Trace CSVs are one record a line, so it splits lines itself (RFC 4180 quoting within a
// line; a quoted field may not span lines) instead of using encoding/csv, which spent
// half the time of reading the Azure trace.
type csvRows struct {
	lines  *lineReader
	want   []string
	cols   []int
	header bool
	fields [][]byte
	out    [][]byte
}

func newCSVRows(r io.Reader, name string, columns ...string) *csvRows {
	return &csvRows{lines: newLineReader(r, name), want: columns, out: make([][]byte, len(columns))}
}

// next returns the wanted columns of the next data row, in the order asked for, trimmed
// of spaces; the slices are valid until the following call.
func (c *csvRows) next() ([][]byte, error) {
	for {
		line, err := c.lines.next()
		if err == io.EOF && !c.header {
			return nil, &Error{File: c.lines.name, Line: max(c.lines.line, 1), Msg: "empty trace: no header line"}
		}
		if err != nil {
			return nil, err
		}
		if c.fields, err = c.split(line, c.fields[:0]); err != nil {
			return nil, err
		}
		if !c.header {
			if err := c.readHeader(); err != nil {
				return nil, err
			}
			continue
		}
		for i, col := range c.cols {
			if col >= len(c.fields) {
				return nil, c.lines.errorf(c.want[i], "missing: the row has %d fields", len(c.fields))
			}
			c.out[i] = c.fields[col]
		}
		return c.out, nil
	}
}

func (c *csvRows) readHeader() error {
	names := make([]string, len(c.fields))
	for i, h := range c.fields {
		names[i] = string(h)
	}
	for _, w := range c.want {
		i := slices.Index(names, w)
		if i < 0 {
			return c.lines.errorf("", "header lacks column %q (has %s)", w, strings.Join(names, ","))
		}
		c.cols = append(c.cols, i)
	}
	c.header = true
	return nil
}

// split appends line's fields to out, each trimmed of surrounding spaces.
func (c *csvRows) split(line []byte, out [][]byte) ([][]byte, error) {
	for {
		// Quoting follows encoding/csv with TrimLeadingSpace, which the fuzz tests check.
		if trimmed := bytes.TrimLeftFunc(line, unicode.IsSpace); len(trimmed) > 0 && trimmed[0] == '"' {
			field, rest, err := c.quoted(trimmed[1:])
			if err != nil {
				return out, err
			}
			out = append(out, field)
			if len(rest) == 0 {
				return out, nil
			}
			if rest[0] != ',' {
				return out, c.lines.errorf("", "text after the closing quote of field %d", len(out))
			}
			line = rest[1:]
			continue
		}
		field, rest, more := bytes.Cut(line, []byte{','})
		if bytes.IndexByte(field, '"') >= 0 {
			return out, c.lines.errorf("", "stray quote in unquoted field %d", len(out)+1)
		}
		out = append(out, bytes.TrimSpace(field))
		if !more {
			return out, nil
		}
		line = rest
	}
}

// quoted reads a quoted field's content after its opening quote; "" is a quote.
func (c *csvRows) quoted(b []byte) (field, rest []byte, err error) {
	var unescaped []byte
	for {
		i := bytes.IndexByte(b, '"')
		if i < 0 {
			return nil, nil, c.lines.errorf("", "unterminated quoted field (fields may not span lines)")
		}
		if i+1 < len(b) && b[i+1] == '"' {
			unescaped = append(unescaped, b[:i+1]...)
			b = b[i+2:]
			continue
		}
		if unescaped == nil {
			return bytes.TrimSpace(b[:i]), b[i+1:], nil
		}
		return bytes.TrimSpace(append(unescaped, b[:i]...)), b[i+1:], nil
	}
}

// azureReader reads Azure LLM inference traces, 2023 (TIMESTAMP like
// "2023-11-16 18:15:46.6805900") and 2024 ("2024-05-10 00:00:00.009930+00:00"), with
// ContextTokens and GeneratedTokens.
type azureReader struct {
	rows  *csvRows
	start int64
	last  int64
	first bool
}

// NewAzureReader reads an Azure LLM inference trace (2023 or 2024); name appears in errors.
// Arrivals are exact to the nanosecond relative to the first row; a row earlier than the
// one before it is an error.
func NewAzureReader(r io.Reader, name string) Reader {
	return &azureReader{rows: newCSVRows(r, name, "TIMESTAMP", "ContextTokens", "GeneratedTokens"), first: true}
}

func (a *azureReader) Next() (Row, error) {
	cols, err := a.rows.next()
	if err != nil {
		return Row{}, err
	}
	l := a.rows.lines
	ns, ok := parseAzureTime(cols[0])
	if !ok {
		return Row{}, l.errorf("TIMESTAMP", "%q is not a time like 2023-11-16 18:15:46.6805900 or 2024-05-10 00:00:00.009930+00:00", cols[0])
	}
	if a.first {
		a.start, a.last, a.first = ns, ns, false
	}
	if ns < a.last {
		return Row{}, l.errorf("TIMESTAMP", "%s is before the previous row's time: the trace must be sorted by arrival", cols[0])
	}
	a.last = ns
	in, err := l.count("ContextTokens", cols[1], 1)
	if err != nil {
		return Row{}, err
	}
	out, err := l.count("GeneratedTokens", cols[2], 1)
	if err != nil {
		return Row{}, err
	}
	return Row{Arrival: float64(ns-a.start) / 1e9, InputTokens: in, OutputTokens: out, Line: l.line}, nil
}

// burstGPTReader reads BurstGPT (HPMLL/BurstGPT): Timestamp (s), Model, Request tokens,
// Response tokens, Total tokens, Log Type.
type burstGPTReader struct {
	rows    *csvRows
	order   order
	model   string
	skipped int
}

// NewBurstGPTReader reads a BurstGPT trace; name appears in errors. The dataset's README
// says rows whose Response tokens are 0 are failed requests (BurstGPT_without_fails_*.csv
// drops them); they are skipped, as are rows with 0 Request tokens (an empty prompt
// cannot be served), and counted: the reader implements Skipper. Arrivals count from the
// first row returned. Total tokens and Log Type are not read; Model goes to Row.Model.
func NewBurstGPTReader(r io.Reader, name string) Reader {
	return &burstGPTReader{rows: newCSVRows(r, name, "Timestamp", "Model", "Request tokens", "Response tokens")}
}

// Skipped is the number of failed requests left out so far.
func (b *burstGPTReader) Skipped() int { return b.skipped }

func (b *burstGPTReader) Next() (Row, error) {
	for {
		cols, err := b.rows.next()
		if err != nil {
			return Row{}, err
		}
		l := b.rows.lines
		ts, ok := parseSeconds(cols[0])
		if !ok {
			return Row{}, l.errorf("Timestamp", "%q is not a non-negative number of seconds", cols[0])
		}
		if err := b.order.check(l, "Timestamp", ts, "s"); err != nil {
			return Row{}, err
		}
		in, err := l.count("Request tokens", cols[2], 0)
		if err != nil {
			return Row{}, err
		}
		out, err := l.count("Response tokens", cols[3], 0)
		if err != nil {
			return Row{}, err
		}
		if out == 0 || in == 0 {
			b.skipped++
			continue
		}
		return Row{Arrival: b.order.since(ts), InputTokens: in, OutputTokens: out, Model: interned(&b.model, cols[1]), Line: l.line}, nil
	}
}

// parseSeconds reads a finite, non-negative number.
func parseSeconds(b []byte) (float64, bool) {
	if n, ok := parseDigits(b); ok {
		return float64(n), true
	}
	v, err := strconv.ParseFloat(string(b), 64)
	return v, err == nil && v >= 0 && v <= 1e15
}
