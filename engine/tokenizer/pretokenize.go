package tokenizer

import (
	"strings"
	"unicode"
)

// piece is a span of (normalized) text on its way to the model.
type piece struct {
	s string
	// first: the piece starts at offset 0 of the input text, which Metaspace's
	// prepend_scheme "first" asks for.
	first bool
}

// preTokenizer splits a piece into the words that the model encodes separately
// (HF "pre_tokenizer").
type preTokenizer interface {
	split(dst []piece, p piece) []piece
}

type preSequence []preTokenizer

func (q preSequence) split(dst []piece, p piece) []piece {
	cur := []piece{p}
	var next []piece
	for _, stage := range q {
		next = next[:0]
		for _, c := range cur {
			next = stage.split(next, c)
		}
		cur, next = next, cur
	}
	return append(dst, cur...)
}

// behavior is HF's SplitDelimiterBehavior: what becomes of the matches.
type behavior int

const (
	removed            behavior = iota // matches are dropped
	isolated                           // matches are pieces of their own
	mergedWithPrevious                 // a match joins the piece before it
	mergedWithNext                     // a match joins the piece after it
	contiguous                         // consecutive matches form one piece
)

func parseBehavior(v jval) (behavior, error) {
	s, err := v.str()
	if err != nil {
		return 0, err
	}
	switch strings.ToLower(s) {
	case "removed":
		return removed, nil
	case "isolated":
		return isolated, nil
	case "mergedwithprevious":
		return mergedWithPrevious, nil
	case "mergedwithnext":
		return mergedWithNext, nil
	case "contiguous":
		return contiguous, nil
	}
	return 0, v.errf("unknown split behavior %q", s)
}

type span struct {
	start, end int
	match      bool
}

// splitSpans cuts p at the matches found in it, as HF's NormalizedString::split does.
func splitSpans(dst []piece, p piece, matches [][2]int, b behavior, invert bool) []piece {
	var spans []span
	prev := 0
	for _, m := range matches {
		if m[0] == m[1] {
			continue
		}
		if m[0] > prev {
			spans = append(spans, span{prev, m[0], false})
		}
		spans = append(spans, span{m[0], m[1], true})
		prev = m[1]
	}
	if prev < len(p.s) {
		spans = append(spans, span{prev, len(p.s), false})
	}
	if invert {
		for i := range spans {
			spans[i].match = !spans[i].match
		}
	}
	var out []span
	switch b {
	case removed:
		for _, s := range spans {
			if !s.match {
				out = append(out, s)
			}
		}
	case isolated:
		out = spans
	case mergedWithPrevious:
		prevMatch := false
		for _, s := range spans {
			if s.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].end = s.end
			} else {
				out = append(out, s)
			}
			prevMatch = s.match
		}
	case mergedWithNext:
		nextMatch := false
		for i := len(spans) - 1; i >= 0; i-- {
			s := spans[i]
			if s.match && !nextMatch && len(out) > 0 {
				out[len(out)-1].start = s.start
			} else {
				out = append(out, s)
			}
			nextMatch = s.match
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	case contiguous:
		for i, s := range spans {
			if i > 0 && s.match == spans[i-1].match {
				out[len(out)-1].end = s.end
			} else {
				out = append(out, s)
			}
		}
	}
	for _, s := range out {
		if s.end > s.start {
			dst = append(dst, piece{s: p.s[s.start:s.end], first: p.first && s.start == 0})
		}
	}
	return dst
}

// preSplit is HF's Split: a pattern, a behavior, and invert.
type preSplit struct {
	f        finder
	behavior behavior
	invert   bool
}

func (s preSplit) split(dst []piece, p piece) []piece {
	return splitSpans(dst, p, s.f.find(p.s, nil), s.behavior, s.invert)
}

// preByteLevel is HF's ByteLevel pre-tokenizer: an optional leading space, the GPT-2
// split (use_regex), then every byte mapped to its byte-level rune.
type preByteLevel struct {
	addPrefixSpace bool
	useRegex       bool
}

func (b preByteLevel) split(dst []piece, p piece) []piece {
	s := p.s
	if b.addPrefixSpace && !strings.HasPrefix(s, " ") {
		s = " " + s
	}
	if !b.useRegex {
		if s != "" {
			dst = append(dst, piece{byteLevelString(s), p.first})
		}
		return dst
	}
	for _, m := range knownPatterns[gpt2Pattern].find(s, nil) {
		dst = append(dst, piece{byteLevelString(s[m[0]:m[1]]), p.first && m[0] == 0})
	}
	return dst
}

type prependScheme int

const (
	prependAlways prependScheme = iota
	prependFirst
	prependNever
)

// preMetaspace replaces spaces with "▁", prepends one (always, or only to the start of
// the input), and splits before each "▁".
type preMetaspace struct {
	repl   string
	scheme prependScheme
	split_ bool
}

func (m preMetaspace) split(dst []piece, p piece) []piece {
	s := strings.ReplaceAll(p.s, " ", m.repl)
	if !strings.HasPrefix(s, m.repl) && (m.scheme == prependAlways || m.scheme == prependFirst && p.first) {
		s = m.repl + s
	}
	q := piece{s, p.first}
	if !m.split_ {
		if s != "" {
			dst = append(dst, q)
		}
		return dst
	}
	return splitSpans(dst, q, literalFinder(m.repl).find(s, nil), mergedWithNext, false)
}

func isPunct(r rune) bool {
	if r < 0x80 {
		return r > ' ' && r < 0x7F && !isL(r) && !isN(r)
	}
	return unicode.IsPunct(r)
}

// isWordRune approximates the Unicode \w of Rust's regex (alphabetic, marks, decimal
// digits, connector punctuation).
func isWordRune(r rune) bool {
	return isL(r) || unicode.IsDigit(r) || unicode.IsMark(r) || unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Nl, r)
}

// wordsFinder matches `\w+|[^\w\s]+`.
type wordsFinder struct{}

func (wordsFinder) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		r, size := at(s, i)
		switch {
		case isS(r):
			i += size
		case isWordRune(r):
			j := run(s, i, isWordRune, 0)
			dst = append(dst, [2]int{i, j})
			i = j
		default:
			j := run(s, i, func(r rune) bool { return !isS(r) && !isWordRune(r) }, 0)
			dst = append(dst, [2]int{i, j})
			i = j
		}
	}
	return dst
}

func parsePreTokenizer(v jval) (preTokenizer, error) {
	o, typ, err := component(v)
	if err != nil || typ == "" {
		return nil, err
	}
	switch typ {
	case "Sequence":
		seq, err := parseSequence(o, "pretokenizers", parsePreTokenizer)
		return preSequence(seq), err
	case "ByteLevel":
		prefix, err := o.boolean("add_prefix_space", true)
		if err != nil {
			return nil, err
		}
		useRegex, err := o.boolean("use_regex", true)
		if err != nil {
			return nil, err
		}
		return preByteLevel{addPrefixSpace: prefix, useRegex: useRegex}, nil
	case "Split":
		f, err := parseFinder(o.get("pattern"))
		if err != nil {
			return nil, err
		}
		b, err := parseBehavior(o.get("behavior"))
		if err != nil {
			return nil, err
		}
		invert, err := o.boolean("invert", false)
		if err != nil {
			return nil, err
		}
		return preSplit{f: f, behavior: b, invert: invert}, nil
	case "Metaspace":
		repl, err := o.str("replacement", "▁")
		if err != nil {
			return nil, err
		}
		if len([]rune(repl)) != 1 {
			return nil, o.get("replacement").errf("want one character, got %q", repl)
		}
		scheme, err := parsePrependScheme(o)
		if err != nil {
			return nil, err
		}
		split, err := o.boolean("split", true)
		if err != nil {
			return nil, err
		}
		return preMetaspace{repl: repl, scheme: scheme, split_: split}, nil
	case "Digits":
		individual, err := o.boolean("individual_digits", false)
		if err != nil {
			return nil, err
		}
		return preSplit{f: runeFinder{f: unicode.IsNumber, runs: !individual}, behavior: isolated}, nil
	case "Punctuation":
		b := isolated
		if o.has("behavior") {
			if b, err = parseBehavior(o.get("behavior")); err != nil {
				return nil, err
			}
		}
		return preSplit{f: runeFinder{f: isPunct}, behavior: b}, nil
	case "Whitespace":
		return preSplit{f: wordsFinder{}, behavior: removed, invert: true}, nil
	case "WhitespaceSplit":
		return preSplit{f: runeFinder{f: isS, runs: true}, behavior: removed}, nil
	case "BertPreTokenizer":
		return preSequence{
			preSplit{f: runeFinder{f: isS, runs: true}, behavior: removed},
			preSplit{f: runeFinder{f: isPunct}, behavior: isolated},
		}, nil
	}
	return nil, o.get("type").errf("unsupported pre_tokenizer %q (supported: Sequence, ByteLevel, Split, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit, BertPreTokenizer)", typ)
}

// parseFinder reads a split pattern, {"String": s} or {"Regex": r}.
func parseFinder(v jval) (finder, error) {
	o, err := v.object()
	if err != nil {
		return nil, err
	}
	if o.has("String") {
		s, err := o.get("String").str()
		return literalFinder(s), err
	}
	if o.has("Regex") {
		re := o.get("Regex")
		src, err := re.str()
		if err != nil {
			return nil, err
		}
		f, err := newFinder(src)
		if err != nil {
			return nil, re.errf("%v", err)
		}
		return f, nil
	}
	return nil, v.errf("want {\"String\": ...} or {\"Regex\": ...}")
}

// parsePrependScheme reads a Metaspace's prepend_scheme, honouring the older
// add_prefix_space flag.
func parsePrependScheme(o jobj) (prependScheme, error) {
	scheme := prependAlways
	if o.has("prepend_scheme") {
		s, err := o.get("prepend_scheme").str()
		if err != nil {
			return 0, err
		}
		switch s {
		case "always":
			scheme = prependAlways
		case "first":
			scheme = prependFirst
		case "never":
			scheme = prependNever
		default:
			return 0, o.get("prepend_scheme").errf("want always, first or never, got %q", s)
		}
	}
	add, err := o.boolean("add_prefix_space", true)
	if err != nil {
		return 0, err
	}
	if !add {
		scheme = prependNever
	}
	return scheme, nil
}
