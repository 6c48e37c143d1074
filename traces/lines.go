package traces

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"strconv"
)

// maxLine is the longest line a reader accepts; a Mooncake row of 1M prompt tokens is
// about 20 KB.
const maxLine = 16 << 20

// maxCount bounds token counts: larger values are corrupt, and they must fit an int32
// wherever the simulator packs them.
const maxCount = math.MaxInt32

// lineReader yields non-blank lines with their numbers, without CR, reusing one buffer.
type lineReader struct {
	sc   *bufio.Scanner
	name string
	line int
}

func newLineReader(r io.Reader, name string) *lineReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 16<<10), maxLine)
	return &lineReader{sc: sc, name: displayName(name)}
}

// next returns the next non-blank line; the slice is valid until the following call.
func (l *lineReader) next() ([]byte, error) {
	for l.sc.Scan() {
		l.line++
		b := bytes.TrimRight(l.sc.Bytes(), "\r")
		if l.line == 1 {
			b = bytes.TrimPrefix(b, []byte("\ufeff")) // a byte-order mark, as Excel writes
		}
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		return b, nil
	}
	if err := l.sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return nil, &Error{File: l.name, Line: l.line + 1, Msg: fmt.Sprintf("line longer than %d bytes", maxLine)}
		}
		return nil, &Error{File: l.name, Line: l.line + 1, Msg: err.Error()}
	}
	return nil, io.EOF
}

func (l *lineReader) errorf(field, format string, args ...any) error {
	return &Error{File: l.name, Line: l.line, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// count parses a CSV token count. Digits are the fast path; a whole number written as a
// float ("374.0", as pandas writes a column that once held a NaN) is accepted too.
func (l *lineReader) count(field string, raw []byte, minimum int) (int, error) {
	raw = bytes.TrimSpace(raw)
	n, ok := parseDigits(raw)
	if !ok {
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || f != math.Trunc(f) || math.IsInf(f, 0) {
			return 0, l.errorf(field, "%q is not an integer", raw)
		}
		if f < 0 || f > maxCount {
			return 0, l.errorf(field, "%s is out of range (%d to %d)", raw, minimum, maxCount)
		}
		n = int(f)
	}
	if n < minimum {
		return 0, l.errorf(field, "%d is below %d", n, minimum)
	}
	return n, nil
}

// parseDigits parses a non-negative decimal integer up to maxCount.
func parseDigits(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= maxCount
}

// jsonCount checks a JSON token count read as a float64, as encoding/json would.
func (l *lineReader) jsonCount(field string, v float64, present bool, minimum int) (int, error) {
	if !present {
		return 0, l.errorf(field, "missing")
	}
	if v != math.Trunc(v) || math.IsInf(v, 0) {
		return 0, l.errorf(field, "%v is not an integer", v)
	}
	if v < float64(minimum) || v > maxCount {
		return 0, l.errorf(field, "%v is out of range (%d to %d)", v, minimum, maxCount)
	}
	return int(v), nil
}

// seconds checks a timestamp: finite and not negative.
func (l *lineReader) seconds(field string, v float64, present bool, unit string) error {
	if !present {
		return l.errorf(field, "missing")
	}
	if !(v >= 0) || math.IsInf(v, 0) {
		return l.errorf(field, "%v is not a non-negative number of %s", v, unit)
	}
	return nil
}

// order checks that timestamps do not go back in time (a streaming reader cannot sort,
// and simulating an unsorted file as if it were sorted would be silently wrong), and
// makes them relative to the first row returned.
type order struct {
	last, start float64
	started     bool
}

func (o *order) check(l *lineReader, field string, t float64, unit string) error {
	if t < o.last {
		return l.errorf(field, "%v %s is before the previous row's %v %s: the trace must be sorted by arrival", t, unit, o.last, unit)
	}
	o.last = t
	return nil
}

// since is t relative to the first row returned, which t is when it is the first.
func (o *order) since(t float64) float64 {
	if !o.started {
		o.start, o.started = t, true
	}
	return t - o.start
}
