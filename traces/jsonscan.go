package traces

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// objScanner reads one flat JSON object (keys without escapes; values that are numbers,
// plain strings or arrays of integers) without reflection or allocation: encoding/json
// costs more per row than simulating the request. Readers use it as a fast path and
// decode with encoding/json whenever it gives up (ok() false), so it only has to be
// right about what it accepts, and the fuzz tests check that it agrees with encoding/json
// there.
//
//	p := objScanner{b: line}
//	for p.next() {
//		switch string(p.key) { case "x": v, ok := p.float() ... }
//	}
//	if !p.ok() { fall back }
type objScanner struct {
	b       []byte
	i       int
	key     []byte
	started bool
	closed  bool
	bad     bool
}

// next advances to the next key, leaving the scanner at its value; false at the end of
// the object or on a syntax error.
func (p *objScanner) next() bool {
	if p.bad || p.closed {
		return false
	}
	p.space()
	if !p.started {
		p.started = true
		if !p.byte('{') {
			return p.fail()
		}
		p.space()
		if p.byte('}') {
			p.closed = true
			return false
		}
	} else {
		if p.byte('}') {
			p.closed = true
			return false
		}
		if !p.byte(',') {
			return p.fail()
		}
		p.space()
	}
	if !p.byte('"') {
		return p.fail()
	}
	start := p.i
	for p.i < len(p.b) && p.b[p.i] != '"' {
		if c := p.b[p.i]; c == '\\' || c < 0x20 || c >= 0x80 {
			return p.fail()
		}
		p.i++
	}
	if p.i == len(p.b) {
		return p.fail()
	}
	p.key = p.b[start:p.i]
	p.i++
	p.space()
	if !p.byte(':') {
		return p.fail()
	}
	p.space()
	return true
}

// ok reports whether the whole line was one well-formed object.
func (p *objScanner) ok() bool {
	if p.bad || !p.closed {
		return false
	}
	p.space()
	return p.i == len(p.b)
}

func (p *objScanner) fail() bool {
	p.bad = true
	return false
}

func (p *objScanner) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\r', '\n':
			p.i++
		default:
			return
		}
	}
}

func (p *objScanner) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// number consumes a JSON number and reports whether it is an integer (no fraction or
// exponent).
func (p *objScanner) number() (tok []byte, integer, ok bool) {
	start := p.i
	p.byte('-')
	switch {
	case p.byte('0'):
	case p.i < len(p.b) && p.b[p.i] >= '1' && p.b[p.i] <= '9':
		p.digits()
	default:
		return nil, false, false
	}
	integer = true
	if p.byte('.') {
		integer = false
		if p.digits() == 0 {
			return nil, false, false
		}
	}
	if p.byte('e') || p.byte('E') {
		integer = false
		if !p.byte('+') {
			p.byte('-')
		}
		if p.digits() == 0 {
			return nil, false, false
		}
	}
	return p.b[start:p.i], integer, true
}

func (p *objScanner) digits() int {
	start := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	return p.i - start
}

// float reads a number as encoding/json reads it into a float64.
func (p *objScanner) float() (float64, bool) {
	tok, integer, ok := p.number()
	if !ok {
		return 0, false
	}
	if integer && len(tok) <= 18 && tok[0] != '-' {
		// The integer is exact in an int64 and converting it rounds correctly, as
		// ParseFloat does, without the string ParseFloat needs.
		v, ok := parseInt64(tok)
		return float64(v), ok
	}
	v, err := strconv.ParseFloat(string(tok), 64)
	if err != nil || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

// int reads a number as encoding/json reads it into an int64: integers only. One pass,
// as hash-id arrays are most of a Mooncake trace's bytes.
func (p *objScanner) int() (int64, bool) {
	neg := p.byte('-')
	start := p.i
	var u uint64
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		if u > math.MaxUint64/10-1 {
			return 0, false
		}
		u = u*10 + uint64(p.b[p.i]-'0')
		p.i++
	}
	switch n := p.i - start; {
	case n == 0, n > 1 && p.b[start] == '0': // JSON has no leading zeros
		return 0, false
	case p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E'):
		return 0, false
	case neg && u <= 1<<63:
		return int64(-u), true
	case !neg && u <= math.MaxInt64:
		return int64(u), true
	}
	return 0, false
}

// ints appends an array of integers to out.
func (p *objScanner) ints(out []int64) ([]int64, bool) {
	if !p.byte('[') {
		return out, false
	}
	p.space()
	if p.byte(']') {
		return out, true
	}
	for {
		v, ok := p.int()
		if !ok {
			return out, false
		}
		out = append(out, v)
		p.space()
		if p.byte(']') {
			return out, true
		}
		if !p.byte(',') {
			return out, false
		}
		p.space()
	}
}

// str reads a string without escapes; the bytes alias the line.
func (p *objScanner) str() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	start := p.i
	ascii := true
	for p.i < len(p.b) && p.b[p.i] != '"' {
		c := p.b[p.i]
		if c == '\\' || c < 0x20 {
			return nil, false
		}
		ascii = ascii && c < 0x80
		p.i++
	}
	if p.i == len(p.b) {
		return nil, false
	}
	s := p.b[start:p.i]
	p.i++
	// encoding/json replaces invalid UTF-8; leave those strings to it.
	return s, ascii || utf8.Valid(s)
}

// parseInt64 parses an optionally negative decimal integer, failing on overflow.
func parseInt64(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if u > math.MaxUint64/10-1 {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	switch {
	case neg && u <= 1<<63:
		return int64(-u), true
	case !neg && u <= math.MaxInt64:
		return int64(u), true
	}
	return 0, false
}

// idSlab hands out hash-id slices carved from shared chunks: a row keeps its ids, but the
// readers allocate once per few thousand ids instead of once per row.
type idSlab struct{ buf []int64 }

const idSlabChunk = 8192

// copy returns a capacity-limited copy of ids (nil for none), so appending to one row's
// ids never overwrites the next row's.
func (s *idSlab) copy(ids []int64) []int64 {
	if len(ids) == 0 {
		return nil
	}
	if len(ids) > cap(s.buf)-len(s.buf) {
		s.buf = make([]int64, 0, max(idSlabChunk, len(ids)))
	}
	start := len(s.buf)
	s.buf = append(s.buf, ids...)
	return s.buf[start:len(s.buf):len(s.buf)]
}

// interned returns b as a string, reusing the previous one when equal: a model column
// repeats a handful of names.
func interned(prev *string, b []byte) string {
	if string(b) != *prev {
		*prev = string(b)
	}
	return *prev
}
