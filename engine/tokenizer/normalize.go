package tokenizer

import (
	"regexp"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer rewrites one piece of input text before pre-tokenization (HF
// "normalizer"). Offsets are not tracked: the tokenizer only produces ids.
type normalizer interface {
	normalize(s string) string
}

type normSequence []normalizer

func (q normSequence) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

// normPrepend prepends a string to every non-empty piece (Llama-2 prepends "▁").
type normPrepend string

func (p normPrepend) normalize(s string) string {
	if s == "" {
		return s
	}
	return string(p) + s
}

// normReplace replaces every match of a literal string or a regexp.
type normReplace struct {
	literal string
	re      *regexp.Regexp
	content string
}

func (r normReplace) normalize(s string) string {
	if r.re != nil {
		return r.re.ReplaceAllLiteralString(s, r.content)
	}
	if r.literal == "" {
		return s
	}
	return strings.ReplaceAll(s, r.literal, r.content)
}

type normForm struct{ f norm.Form }

func (n normForm) normalize(s string) string { return n.f.String(s) }

type normLowercase struct{}

func (normLowercase) normalize(s string) string { return strings.ToLower(s) }

type normStrip struct{ left, right bool }

func (n normStrip) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, isWhiteSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, isWhiteSpace)
	}
	return s
}

// normStripAccents removes combining marks (apply after NFD, as HF expects).
type normStripAccents struct{}

func (normStripAccents) normalize(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, s)
}

func isWhiteSpace(r rune) bool { return unicode.Is(unicode.White_Space, r) }

func parseNormalizer(v jval) (normalizer, error) {
	o, typ, err := component(v)
	if err != nil || typ == "" {
		return nil, err
	}
	switch typ {
	case "Sequence":
		seq, err := parseSequence(o, "normalizers", parseNormalizer)
		return normSequence(seq), err
	case "Prepend":
		p, err := o.get("prepend").str()
		if err != nil {
			return nil, err
		}
		return normPrepend(p), nil
	case "Replace":
		literal, re, err := parsePattern(o.get("pattern"))
		if err != nil {
			return nil, err
		}
		content, err := o.get("content").str()
		if err != nil {
			return nil, err
		}
		return normReplace{literal: literal, re: re, content: content}, nil
	case "NFC":
		return normForm{norm.NFC}, nil
	case "NFD":
		return normForm{norm.NFD}, nil
	case "NFKC":
		return normForm{norm.NFKC}, nil
	case "NFKD":
		return normForm{norm.NFKD}, nil
	case "Lowercase":
		return normLowercase{}, nil
	case "Strip":
		left, err := o.boolean("strip_left", true)
		if err != nil {
			return nil, err
		}
		right, err := o.boolean("strip_right", true)
		if err != nil {
			return nil, err
		}
		return normStrip{left, right}, nil
	case "StripAccents":
		return normStripAccents{}, nil
	}
	return nil, o.get("type").errf("unsupported normalizer %q (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents)", typ)
}

// parsePattern reads an HF pattern, {"String": "..."} or {"Regex": "..."}: a literal
// string, or a compiled regexp (see compileRegex).
func parsePattern(v jval) (string, *regexp.Regexp, error) {
	o, err := v.object()
	if err != nil {
		return "", nil, err
	}
	if o.has("String") {
		s, err := o.get("String").str()
		return s, nil, err
	}
	if o.has("Regex") {
		src, err := o.get("Regex").str()
		if err != nil {
			return "", nil, err
		}
		re, err := compileRegex(src)
		if err != nil {
			return "", nil, o.get("Regex").errf("%v", err)
		}
		return "", re, nil
	}
	return "", nil, v.errf("want {\"String\": ...} or {\"Regex\": ...}")
}
