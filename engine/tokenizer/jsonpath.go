package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// jval is one JSON value of a file being parsed, with the file's name and the path of
// the value inside it, so that every error can say where the bad field is, as in
// `tokenizer.json: model.merges[12]: want "a b" or ["a", "b"]`.
type jval struct {
	file string
	path string
	raw  json.RawMessage
}

func (v jval) errf(format string, a ...any) error {
	where := v.path
	if where == "" {
		where = "(top level)"
	}
	return fmt.Errorf("%s: %s: %s", v.file, where, fmt.Sprintf(format, a...))
}

// missing reports an absent or null value.
func (v jval) missing() bool {
	r := bytes.TrimSpace(v.raw)
	return len(r) == 0 || string(r) == "null"
}

func (v jval) kind() string {
	r := bytes.TrimSpace(v.raw)
	if len(r) == 0 {
		return "nothing"
	}
	switch r[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

func (v jval) key(k string) string {
	if isIdent(k) {
		if v.path == "" {
			return k
		}
		return v.path + "." + k
	}
	return v.path + "[" + strconv.Quote(k) + "]"
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

func (v jval) index(i int) jval {
	return jval{file: v.file, path: fmt.Sprintf("%s[%d]", v.path, i)}
}

// jobj is a decoded JSON object.
type jobj struct {
	jval
	m map[string]json.RawMessage
}

func (v jval) object() (jobj, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(v.raw, &m); err != nil || m == nil {
		return jobj{}, v.errf("want an object, got %s", v.kind())
	}
	return jobj{jval: v, m: m}, nil
}

func (v jval) array() ([]jval, error) {
	var a []json.RawMessage
	if err := json.Unmarshal(v.raw, &a); err != nil || a == nil {
		return nil, v.errf("want an array, got %s", v.kind())
	}
	out := make([]jval, len(a))
	for i, r := range a {
		out[i] = v.index(i)
		out[i].raw = r
	}
	return out, nil
}

func (v jval) str() (string, error) {
	var s string
	if err := json.Unmarshal(v.raw, &s); err != nil {
		return "", v.errf("want a string, got %s", v.kind())
	}
	return s, nil
}

func (v jval) boolean() (bool, error) {
	var b bool
	if err := json.Unmarshal(v.raw, &b); err != nil {
		return false, v.errf("want a boolean, got %s", v.kind())
	}
	return b, nil
}

func (v jval) integer() (int64, error) {
	var f json.Number
	if err := json.Unmarshal(v.raw, &f); err != nil {
		return 0, v.errf("want an integer, got %s", v.kind())
	}
	n, err := f.Int64()
	if err != nil {
		// model_max_length is often a float such as 1e30: saturate rather than fail.
		x, ferr := f.Float64()
		if ferr != nil {
			return 0, v.errf("want an integer, got %s", f)
		}
		if x >= 1<<62 {
			return 1 << 62, nil
		}
		if x != float64(int64(x)) {
			return 0, v.errf("want an integer, got %s", f)
		}
		n = int64(x)
	}
	return n, nil
}

// get returns the member k (missing() when absent).
func (o jobj) get(k string) jval {
	return jval{file: o.file, path: o.key(k), raw: o.m[k]}
}

func (o jobj) has(k string) bool {
	return !o.get(k).missing()
}

// str returns member k as a string, or def when absent or null.
func (o jobj) str(k, def string) (string, error) {
	v := o.get(k)
	if v.missing() {
		return def, nil
	}
	return v.str()
}

// boolean returns member k as a boolean, or def when absent or null.
func (o jobj) boolean(k string, def bool) (bool, error) {
	v := o.get(k)
	if v.missing() {
		return def, nil
	}
	return v.boolean()
}

// integer returns member k as an integer, or def when absent or null.
func (o jobj) integer(k string, def int64) (int64, error) {
	v := o.get(k)
	if v.missing() {
		return def, nil
	}
	return v.integer()
}

// typ returns the "type" member that every normalizer, pre-tokenizer, model, decoder and
// post-processor carries.
func (o jobj) typ() (string, error) {
	v := o.get("type")
	if v.missing() {
		return "", o.errf("no \"type\"")
	}
	return v.str()
}

// component opens a tokenizer.json component (normalizer, pre_tokenizer, post_processor,
// decoder): an object with a "type". A missing or null component gives typ "".
func component(v jval) (jobj, string, error) {
	if v.missing() {
		return jobj{}, "", nil
	}
	o, err := v.object()
	if err != nil {
		return jobj{}, "", err
	}
	typ, err := o.typ()
	return o, typ, err
}

// parseSequence parses the list under key of a "Sequence" component with parse, leaving
// out missing items.
func parseSequence[T any](o jobj, key string, parse func(jval) (T, error)) ([]T, error) {
	list, err := o.get(key).array()
	if err != nil {
		return nil, err
	}
	var seq []T
	for _, item := range list {
		c, err := parse(item)
		if err != nil {
			return nil, err
		}
		if any(c) != nil {
			seq = append(seq, c)
		}
	}
	return seq, nil
}
