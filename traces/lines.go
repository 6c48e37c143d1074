package traces

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
)

// lineReader yields non-blank lines with their numbers, without CR, reusing one buffer.
type lineReader struct {
	sc   *bufio.Scanner
	name string
	line int
}

func newLineReader(r io.Reader, name string) *lineReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	return &lineReader{sc: sc, name: base(name)}
}

// next returns the next non-blank line; the slice is valid until the following call.
func (l *lineReader) next() ([]byte, error) {
	for l.sc.Scan() {
		l.line++
		b := bytes.TrimRight(l.sc.Bytes(), "\r")
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		return b, nil
	}
	if err := l.sc.Err(); err != nil {
		return nil, &Error{File: l.name, Line: l.line + 1, Msg: err.Error()}
	}
	return nil, io.EOF
}

func (l *lineReader) errorf(field, format string, args ...any) error {
	return &Error{File: l.name, Line: l.line, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// tokens parses a token count: a non-negative integer, positive when min is 1.
func (l *lineReader) tokens(field string, raw []byte, minimum int) (int, error) {
	raw = bytes.TrimSpace(raw)
	n, err := strconv.Atoi(string(raw))
	if err != nil {
		// Some exports write counts as floats ("374.0"); accept whole numbers only.
		f, ferr := strconv.ParseFloat(string(raw), 64)
		if ferr != nil || f != float64(int(f)) {
			return 0, l.errorf(field, "%q is not an integer", raw)
		}
		n = int(f)
	}
	if n < minimum {
		return 0, l.errorf(field, "%d is below %d", n, minimum)
	}
	return n, nil
}

// order checks arrivals do not go back in time; a streaming reader cannot sort, and
// simulating an unsorted file silently would be wrong.
type order struct{ last float64 }

func (o *order) check(l *lineReader, field string, t float64) error {
	if t < o.last {
		return l.errorf(field, "arrival %.6f s is before the previous row's %.6f s: the trace must be sorted by arrival", t, o.last)
	}
	o.last = t
	return nil
}
