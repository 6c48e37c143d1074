package tokenizer

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// decoder turns token strings back into text (HF "decoder"); each stage maps the list
// of strings to a new list, and the final list is concatenated.
type decoder interface {
	decodeChain(toks []string) []string
}

type decSequence []decoder

func (q decSequence) decodeChain(toks []string) []string {
	for _, d := range q {
		toks = d.decodeChain(toks)
	}
	return toks
}

// decByteLevel maps byte-level runes back to bytes (a token with a rune outside the
// alphabet, such as an added token, stands for its own UTF-8) and decodes the whole as
// UTF-8, one U+FFFD per ill-formed sequence.
type decByteLevel struct{}

func (decByteLevel) decodeChain(toks []string) []string {
	var buf []byte
	for _, t := range toks {
		var ok bool
		if buf, ok = byteLevelBytes(buf, t); !ok {
			buf = append(buf, t...)
		}
	}
	return []string{lossyUTF8(buf)}
}

type decReplace struct {
	literal string
	re      *regexp.Regexp
	content string
}

func (d decReplace) decodeChain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		out[i] = normReplace(d).normalize(t)
	}
	return out
}

// decByteFallback turns runs of <0xXX> tokens into their bytes: the text they spell
// when it is valid UTF-8, else one U+FFFD per byte.
type decByteFallback struct{}

func (decByteFallback) decodeChain(toks []string) []string {
	out := make([]string, 0, len(toks))
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, t := range toks {
		if b, ok := byteToken(t); ok {
			pending = append(pending, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

type decFuse struct{}

func (decFuse) decodeChain(toks []string) []string { return []string{strings.Join(toks, "")} }

// decStrip removes up to start leading and stop trailing content runes of each string.
type decStrip struct {
	content     rune
	start, stop int
}

func (d decStrip) decodeChain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		for n := 0; n < d.start; n++ {
			r, size := utf8.DecodeRuneInString(t)
			if size == 0 || r != d.content {
				break
			}
			t = t[size:]
		}
		for n := 0; n < d.stop; n++ {
			r, size := utf8.DecodeLastRuneInString(t)
			if size == 0 || r != d.content {
				break
			}
			t = t[:len(t)-size]
		}
		out[i] = t
	}
	return out
}

// decMetaspace turns "▁" back into spaces; with a prepend scheme other than never, the
// first token loses its "▁"s instead (as HF does: all of them, not only a leading one).
type decMetaspace struct {
	repl    rune
	prepend bool
}

func (d decMetaspace) decodeChain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		out[i] = strings.Map(func(r rune) rune {
			switch {
			case r != d.repl:
				return r
			case i == 0 && d.prepend:
				return -1
			default:
				return ' '
			}
		}, t)
	}
	return out
}

// decWordPiece joins word pieces: a token starting with the prefix ("##") continues
// the previous word, any other starts a new one after a space.
type decWordPiece struct {
	prefix  string
	cleanup bool
}

var cleanupReplacer = strings.NewReplacer(" .", ".", " ?", "?", " !", "!", " ,", ",", " ' ", "'", " n't", "n't", " 'm", "'m", " do not", " don't", " 's", "'s", " 've", "'ve", " 're", "'re")

func (d decWordPiece) decodeChain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		if i > 0 {
			if strings.HasPrefix(t, d.prefix) {
				t = strings.Replace(t, d.prefix, "", 1)
			} else {
				t = " " + t
			}
		}
		if d.cleanup {
			t = cleanupReplacer.Replace(t)
		}
		out[i] = t
	}
	return out
}

// decBPESuffix replaces the end-of-word suffix with a space (nothing on the last token).
type decBPESuffix struct{ suffix string }

func (d decBPESuffix) decodeChain(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		sep := " "
		if i == len(toks)-1 {
			sep = ""
		}
		out[i] = strings.ReplaceAll(t, d.suffix, sep)
	}
	return out
}

func parseDecoder(v jval) (decoder, error) {
	o, typ, err := component(v)
	if err != nil || typ == "" {
		return nil, err
	}
	switch typ {
	case "Sequence":
		seq, err := parseSequence(o, "decoders", parseDecoder)
		return decSequence(seq), err
	case "ByteLevel":
		return decByteLevel{}, nil
	case "Replace":
		literal, re, err := parsePattern(o.get("pattern"))
		if err != nil {
			return nil, err
		}
		content, err := o.get("content").str()
		if err != nil {
			return nil, err
		}
		return decReplace{literal: literal, re: re, content: content}, nil
	case "ByteFallback":
		return decByteFallback{}, nil
	case "Fuse":
		return decFuse{}, nil
	case "Strip":
		content, err := o.get("content").str()
		if err != nil {
			return nil, err
		}
		if utf8.RuneCountInString(content) != 1 {
			return nil, o.get("content").errf("want one character, got %q", content)
		}
		start, err := o.integer("start", 0)
		if err != nil {
			return nil, err
		}
		stop, err := o.integer("stop", 0)
		if err != nil {
			return nil, err
		}
		if start < 0 || stop < 0 || start > 1<<20 || stop > 1<<20 {
			return nil, o.errf("start and stop must be small non-negative integers")
		}
		r, _ := utf8.DecodeRuneInString(content)
		return decStrip{content: r, start: int(start), stop: int(stop)}, nil
	case "Metaspace":
		repl, err := o.str("replacement", "▁")
		if err != nil {
			return nil, err
		}
		if utf8.RuneCountInString(repl) != 1 {
			return nil, o.get("replacement").errf("want one character, got %q", repl)
		}
		scheme, err := parsePrependScheme(o)
		if err != nil {
			return nil, err
		}
		r, _ := utf8.DecodeRuneInString(repl)
		return decMetaspace{repl: r, prepend: scheme != prependNever}, nil
	case "WordPiece":
		prefix, err := o.str("prefix", "##")
		if err != nil {
			return nil, err
		}
		cleanup, err := o.boolean("cleanup", true)
		if err != nil {
			return nil, err
		}
		return decWordPiece{prefix: prefix, cleanup: cleanup}, nil
	case "BPEDecoder":
		suffix, err := o.str("suffix", "</w>")
		if err != nil {
			return nil, err
		}
		return decBPESuffix{suffix: suffix}, nil
	}
	return nil, o.get("type").errf("unsupported decoder %q (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, WordPiece, BPEDecoder)", typ)
}

// hasByteFallback reports whether a decoder chain contains ByteFallback.
func hasByteFallback(d decoder) bool {
	switch d := d.(type) {
	case decByteFallback:
		return true
	case decSequence:
		for _, s := range d {
			if hasByteFallback(s) {
				return true
			}
		}
	}
	return false
}
