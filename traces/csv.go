package traces

import (
	"encoding/csv"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// csvRows reads a CSV trace with a header, locating the columns it needs by name.
type csvRows struct {
	r      *csv.Reader
	name   string
	cols   []int
	header bool
	want   []string
	line   int
}

func newCSVRows(r io.Reader, name string, columns ...string) *csvRows {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	return &csvRows{r: cr, name: base(name), want: columns}
}

func (c *csvRows) errorf(field, msg string) error {
	return &Error{File: c.name, Line: c.line, Field: field, Msg: msg}
}

// next returns the wanted columns of the next data row, in the order asked for.
func (c *csvRows) next(out []string) error {
	for {
		rec, err := c.r.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if !c.header {
					return &Error{File: c.name, Line: 1, Msg: "empty trace: no header"}
				}
				return io.EOF
			}
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return &Error{File: c.name, Line: pe.Line, Msg: pe.Err.Error()}
			}
			return &Error{File: c.name, Line: c.line + 1, Msg: err.Error()}
		}
		c.line, _ = c.r.FieldPos(0)
		if !c.header {
			if err := c.readHeader(rec); err != nil {
				return err
			}
			continue
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		for i, col := range c.cols {
			if col >= len(rec) {
				return c.errorf(c.want[i], "missing: the row has "+strconv.Itoa(len(rec))+" fields")
			}
			out[i] = strings.TrimSpace(rec[col])
		}
		return nil
	}
}

func (c *csvRows) readHeader(rec []string) error {
	names := make([]string, len(rec))
	for i, h := range rec {
		names[i] = strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))
	}
	for _, w := range c.want {
		i := slices.Index(names, w)
		if i < 0 {
			return &Error{File: c.name, Line: c.line, Msg: "header lacks column " + strconv.Quote(w) + " (has " + strings.Join(names, ",") + ")"}
		}
		c.cols = append(c.cols, i)
	}
	c.header = true
	return nil
}

func (c *csvRows) tokens(field, raw string, minimum int) (int, error) {
	n, err := strconv.Atoi(raw)
	if err != nil {
		f, ferr := strconv.ParseFloat(raw, 64)
		if ferr != nil || f != float64(int64(f)) {
			return 0, c.errorf(field, strconv.Quote(raw)+" is not an integer")
		}
		n = int(f)
	}
	if n < minimum {
		return 0, c.errorf(field, strconv.Itoa(n)+" is below "+strconv.Itoa(minimum))
	}
	return n, nil
}

func (c *csvRows) ordered(last *float64, field string, t float64) error {
	if t < *last {
		return c.errorf(field, "arrival "+strconv.FormatFloat(t, 'f', 6, 64)+" s is before the previous row's "+
			strconv.FormatFloat(*last, 'f', 6, 64)+" s: the trace must be sorted by arrival")
	}
	*last = t
	return nil
}

// azureReader reads Azure LLM inference traces (2023 and 2024): TIMESTAMP as wall-clock
// time with up to 7 fractional digits, ContextTokens, GeneratedTokens.
type azureReader struct {
	rows  *csvRows
	cols  [3]string
	start time.Time
	first bool
	last  float64
}

// NewAzureReader reads an Azure LLM trace; name appears in errors.
func NewAzureReader(r io.Reader, name string) Reader {
	return &azureReader{rows: newCSVRows(r, name, "TIMESTAMP", "ContextTokens", "GeneratedTokens"), first: true}
}

const azureLayout = "2006-01-02 15:04:05.999999999"

func (a *azureReader) Next() (Row, error) {
	if err := a.rows.next(a.cols[:]); err != nil {
		return Row{}, err
	}
	t, err := time.Parse(azureLayout, a.cols[0])
	if err != nil {
		return Row{}, a.rows.errorf("TIMESTAMP", strconv.Quote(a.cols[0])+" is not a time like 2023-11-16 18:15:46.6805900")
	}
	if a.first {
		a.start, a.first = t, false
	}
	// Nanoseconds as an integer first, so the arrival carries no rounding of the wall clock.
	arrival := float64(t.Sub(a.start).Nanoseconds()) / 1e9
	if err := a.rows.ordered(&a.last, "TIMESTAMP", arrival); err != nil {
		return Row{}, err
	}
	in, err := a.rows.tokens("ContextTokens", a.cols[1], 1)
	if err != nil {
		return Row{}, err
	}
	out, err := a.rows.tokens("GeneratedTokens", a.cols[2], 1)
	if err != nil {
		return Row{}, err
	}
	return Row{Arrival: arrival, InputTokens: in, OutputTokens: out, Line: a.rows.line}, nil
}

// burstGPTReader reads BurstGPT: Timestamp (s), Model, Request tokens, Response tokens,
// Total tokens, Log Type. BurstGPT marks failed requests with 0 response tokens; they never
// produced output, so they are skipped and counted.
type burstGPTReader struct {
	rows    *csvRows
	cols    [3]string
	start   float64
	first   bool
	last    float64
	skipped int
}

// NewBurstGPTReader reads a BurstGPT trace; name appears in errors.
func NewBurstGPTReader(r io.Reader, name string) Reader {
	return &burstGPTReader{rows: newCSVRows(r, name, "Timestamp", "Request tokens", "Response tokens"), first: true}
}

// Skipped is the number of failed requests (0 response tokens) left out so far.
func (b *burstGPTReader) Skipped() int { return b.skipped }

func (b *burstGPTReader) Next() (Row, error) {
	for {
		if err := b.rows.next(b.cols[:]); err != nil {
			return Row{}, err
		}
		ts, err := strconv.ParseFloat(b.cols[0], 64)
		if err != nil || ts < 0 || ts != ts {
			return Row{}, b.rows.errorf("Timestamp", strconv.Quote(b.cols[0])+" is not a non-negative number of seconds")
		}
		if b.first {
			b.start, b.first = ts, false
		}
		arrival := ts - b.start
		if err := b.rows.ordered(&b.last, "Timestamp", arrival); err != nil {
			return Row{}, err
		}
		in, err := b.rows.tokens("Request tokens", b.cols[1], 0)
		if err != nil {
			return Row{}, err
		}
		out, err := b.rows.tokens("Response tokens", b.cols[2], 0)
		if err != nil {
			return Row{}, err
		}
		if out == 0 || in == 0 {
			b.skipped++
			continue
		}
		return Row{Arrival: arrival, InputTokens: in, OutputTokens: out, Line: b.rows.line}, nil
	}
}
