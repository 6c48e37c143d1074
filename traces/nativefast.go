package traces

import (
	"strconv"
)

// parseNativeFast reads a native row written the way NativeWriter writes it (a flat
// object of numbers and arrays of integers, plain keys) without reflection; encoding/json
// costs more than the whole simulation of a row. It reports ok=false for anything else —
// unknown keys, escapes, strings, nesting, malformed input — and the caller then decodes
// the line with encoding/json, which accepts what is valid and explains what is not.
func parseNativeFast(line []byte, raw *nativeRow) bool {
	p := fastParser{b: line}
	p.space()
	if !p.byte('{') {
		return false
	}
	p.space()
	if p.byte('}') {
		return p.end()
	}
	for {
		key, ok := p.key()
		if !ok {
			return false
		}
		p.space()
		if !p.byte(':') {
			return false
		}
		p.space()
		switch key {
		case "arrival_s":
			raw.ArrivalS = p.number()
			ok = raw.ArrivalS != nil
		case "input_tokens":
			raw.InputTokens = p.number()
			ok = raw.InputTokens != nil
		case "output_tokens":
			raw.OutputTokens = p.number()
			ok = raw.OutputTokens != nil
		case "hash_ids":
			raw.HashIDs, ok = p.ints(raw.HashIDs[:0])
		case "hash_block_size":
			var v int64
			v, ok = p.integer()
			raw.HashBlockSize = int(v)
			ok = ok && int64(raw.HashBlockSize) == v
		case "session_id":
			var v int64
			v, ok = p.integer()
			raw.SessionID = uint64(v)
			ok = ok && v >= 0
		case "priority":
			var v int64
			v, ok = p.integer()
			raw.Priority = int(v)
			ok = ok && int64(raw.Priority) == v
		default:
			return false
		}
		if !ok {
			return false
		}
		p.space()
		if p.byte('}') {
			return p.end()
		}
		if !p.byte(',') {
			return false
		}
		p.space()
	}
}

type fastParser struct {
	b []byte
	i int
}

func (p *fastParser) space() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\r' || p.b[p.i] == '\n') {
		p.i++
	}
}

func (p *fastParser) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *fastParser) end() bool {
	p.space()
	return p.i == len(p.b)
}

// key reads a quoted key without escapes.
func (p *fastParser) key() (string, bool) {
	if !p.byte('"') {
		return "", false
	}
	start := p.i
	for p.i < len(p.b) && p.b[p.i] != '"' {
		if p.b[p.i] == '\\' || p.b[p.i] < 0x20 {
			return "", false
		}
		p.i++
	}
	if p.i == len(p.b) {
		return "", false
	}
	key := string(p.b[start:p.i])
	p.i++
	return key, true
}

// token is the bytes of a JSON number.
func (p *fastParser) token() []byte {
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			p.i++
			continue
		}
		break
	}
	return p.b[start:p.i]
}

func (p *fastParser) number() *float64 {
	tok := p.token()
	if !validJSONNumber(tok) {
		return nil
	}
	v, err := strconv.ParseFloat(string(tok), 64)
	if err != nil {
		return nil
	}
	return &v
}

func (p *fastParser) integer() (int64, bool) {
	tok := p.token()
	if !validJSONNumber(tok) {
		return 0, false
	}
	v, err := strconv.ParseInt(string(tok), 10, 64)
	return v, err == nil
}

func (p *fastParser) ints(out []int64) ([]int64, bool) {
	if !p.byte('[') {
		return nil, false
	}
	p.space()
	if p.byte(']') {
		return out, true
	}
	for {
		v, ok := p.integer()
		if !ok {
			return nil, false
		}
		out = append(out, v)
		p.space()
		if p.byte(']') {
			return out, true
		}
		if !p.byte(',') {
			return nil, false
		}
		p.space()
	}
}

// validJSONNumber checks JSON's number grammar, which is stricter than strconv's (no
// leading '+', no leading zeros, digits on both sides of a point).
func validJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i == len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i == len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	return i == len(b)
}
