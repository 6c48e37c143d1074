package tokenizer

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// finder returns the spans [start, end) of the matches of a pattern in s, in order and
// non-overlapping, appended to dst.
type finder interface {
	find(s string, dst [][2]int) [][2]int
}

// Well-known split patterns use Perl features that Go's RE2 engine lacks: the lookahead
// in `\s+(?!\S)` (whitespace up to, not including, the last space before a word). They
// are recognised by their exact text and run by scanner, a hand-written matcher with the
// same leftmost-first semantics over the Unicode classes \p{L}, \p{N} and \s
// (White_Space).
//
//	GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//	Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//	         ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//	Qwen2:   as Llama-3 with \p{N} for \p{N}{1,3}
//
// Variants (case-sensitive or not, digits one at a time, up to three, or unbounded) are
// recognised too.
type scanner struct {
	llama     bool // the Llama-3/Qwen2 alternation (else GPT-2's)
	fold      bool // contractions are case-insensitive, (?i:...)
	maxDigits int  // digits per piece; 0 for unbounded
}

var knownPatterns = map[string]scanner{}

// gpt2Pattern is the split that a ByteLevel pre-tokenizer with use_regex applies.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

func init() {
	digits := map[int]string{0: `\p{N}+`, 1: `\p{N}`, 3: `\p{N}{1,3}`}
	for _, fold := range []bool{false, true} {
		contractions := `'s|'t|'re|'ve|'m|'ll|'d`
		if fold {
			contractions = `(?i:` + contractions + `)`
		}
		for max, n := range digits {
			knownPatterns[contractions+`| ?\p{L}+| ?`+n+`| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`] = scanner{fold: fold, maxDigits: max}
			knownPatterns[contractions+`|[^\r\n\p{L}\p{N}]?\p{L}+|`+n+`| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`] = scanner{llama: true, fold: fold, maxDigits: max}
		}
	}
	if _, ok := knownPatterns[gpt2Pattern]; !ok {
		panic("tokenizer: GPT-2 pattern not among the known patterns")
	}
}

func isL(r rune) bool {
	if r < 0x80 {
		return 'a' <= r|0x20 && r|0x20 <= 'z'
	}
	return unicode.IsLetter(r)
}

func isN(r rune) bool {
	if r < 0x80 {
		return '0' <= r && r <= '9'
	}
	return unicode.IsNumber(r)
}

func isS(r rune) bool {
	if r < 0x80 {
		return r == ' ' || '\t' <= r && r <= '\r'
	}
	return unicode.Is(unicode.White_Space, r)
}

// isO is [^\s\p{L}\p{N}].
func isO(r rune) bool { return r >= 0 && !isS(r) && !isL(r) && !isN(r) }

func isCRLF(r rune) bool { return r == '\r' || r == '\n' }

// at decodes the rune at s[i:], or (-1, 0) at the end.
func at(s string, i int) (rune, int) {
	if i >= len(s) {
		return -1, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

// run returns the end of the run of runes satisfying f that starts at i, taking at most
// max runes (0: no limit).
func run(s string, i int, f func(rune) bool, max int) int {
	for n := 0; max == 0 || n < max; n++ {
		r, size := at(s, i)
		if size == 0 || !f(r) {
			break
		}
		i += size
	}
	return i
}

func (sc scanner) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		j := sc.match(s, i)
		dst = append(dst, [2]int{i, j})
		i = j
	}
	return dst
}

// foldEq reports whether r equals the lower-case ASCII letter c under Unicode simple
// case folding (so 's' matches 'S' and 'ſ').
func foldEq(r rune, c rune) bool {
	if r == c {
		return true
	}
	for f := unicode.SimpleFold(c); f != c; f = unicode.SimpleFold(f) {
		if f == r {
			return true
		}
	}
	return false
}

var contractions = [...]string{"s", "t", "re", "ve", "m", "ll", "d"}

// contraction matches 's|'t|... at s[i] == '\”, returning the end or -1.
func (sc scanner) contraction(s string, i int) int {
next:
	for _, c := range contractions {
		j := i + 1
		for _, want := range c {
			r, size := at(s, j)
			if size == 0 || !(r == want || sc.fold && foldEq(r, want)) {
				continue next
			}
			j += size
		}
		return j
	}
	return -1
}

// match returns the end of the match that starts at i (every position matches one of
// the alternatives, so the matches tile the string).
func (sc scanner) match(s string, i int) int {
	r, size := at(s, i)
	if r == '\'' {
		if j := sc.contraction(s, i); j > 0 {
			return j
		}
	}
	if sc.llama {
		// [^\r\n\p{L}\p{N}]?\p{L}+
		if isL(r) {
			return run(s, i, isL, 0)
		}
		if !isCRLF(r) && !isN(r) {
			if r2, _ := at(s, i+size); isL(r2) {
				return run(s, i+size, isL, 0)
			}
		}
		// \p{N}{1,3}
		if isN(r) {
			return run(s, i, isN, sc.maxDigits)
		}
		// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
		j := i
		if r == ' ' {
			if r2, _ := at(s, i+1); isO(r2) {
				j = i + 1
			}
		}
		if r2, _ := at(s, j); isO(r2) {
			return run(s, run(s, j, isO, 0), isCRLF, 0)
		}
		// \s*[\r\n]+: the whitespace run up to its last line break.
		e := run(s, i, isS, 0)
		if k := strings.LastIndexAny(s[i:e], "\r\n"); k >= 0 {
			return i + k + 1
		}
		return spaceEnd(s, i, e)
	}
	// ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
	j := i
	if r == ' ' {
		if r2, _ := at(s, i+1); r2 >= 0 && !isS(r2) {
			j, r = i+1, r2
		}
	}
	switch {
	case isL(r):
		return run(s, j, isL, 0)
	case isN(r):
		return run(s, j, isN, sc.maxDigits)
	case isO(r):
		return run(s, j, isO, 0)
	}
	return spaceEnd(s, i, run(s, i, isS, 0))
}

// spaceEnd is `\s+(?!\S)|\s+` for the whitespace run s[i:e]: all of it at the end of the
// text, else all but its last rune (which then starts the next word), unless that would
// leave nothing.
func spaceEnd(s string, i, e int) int {
	if e >= len(s) {
		return e
	}
	_, size := utf8.DecodeLastRuneInString(s[i:e])
	if e-size > i {
		return e - size
	}
	return e
}

// reFinder runs a Go regexp.
type reFinder struct{ re *regexp.Regexp }

func (f reFinder) find(s string, dst [][2]int) [][2]int {
	for _, m := range f.re.FindAllStringIndex(s, -1) {
		dst = append(dst, [2]int{m[0], m[1]})
	}
	return dst
}

// literalFinder finds a literal string.
type literalFinder string

func (f literalFinder) find(s string, dst [][2]int) [][2]int {
	if f == "" {
		return dst
	}
	for off := 0; ; {
		k := strings.Index(s[off:], string(f))
		if k < 0 {
			return dst
		}
		dst = append(dst, [2]int{off + k, off + k + len(f)})
		off += k + len(f)
	}
}

// runeFinder matches single runes (each its own match) or, with runs, maximal runs of
// them.
type runeFinder struct {
	f    func(rune) bool
	runs bool
}

func (f runeFinder) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		r, size := at(s, i)
		if !f.f(r) {
			i += size
			continue
		}
		j := i + size
		if f.runs {
			j = run(s, j, f.f, 0)
		}
		dst = append(dst, [2]int{i, j})
		i = j
	}
	return dst
}

// newFinder compiles an HF split pattern: a well-known one runs on the scanner, any
// other on Go's regexp.
func newFinder(src string) (finder, error) {
	if sc, ok := knownPatterns[src]; ok {
		return sc, nil
	}
	re, err := compileRegex(src)
	if err != nil {
		return nil, err
	}
	return reFinder{re}, nil
}

// Unicode versions of the Perl classes, which are ASCII-only in Go's regexp but Unicode
// in the Rust regex crate (and Oniguruma) that HF tokenizers use.
const (
	wsChars   = `\t\n\v\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}`
	wordChars = `\p{L}\p{M}\p{Nd}\p{Pc}`
)

// compileRegex compiles an HF regex with Go's regexp after making \s, \d and \w
// Unicode-aware; a pattern Go cannot run (lookaround, backreferences, possessive
// quantifiers) fails with an error naming it.
func compileRegex(src string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(unicodeClasses(src))
	if err != nil {
		return nil, fmt.Errorf("regex %q is not supported: Go's regexp cannot compile it (%v) and it is not one of the well-known split patterns", src, err)
	}
	return re, nil
}

func unicodeClasses(src string) string {
	var b strings.Builder
	inClass := false
	for i := 0; i < len(src); i++ {
		c := src[i]
		if c == '\\' && i+1 < len(src) {
			n := src[i+1]
			i++
			switch {
			case n == 's' && inClass:
				b.WriteString(wsChars)
			case n == 's':
				b.WriteString("[" + wsChars + "]")
			case n == 'S' && !inClass:
				b.WriteString("[^" + wsChars + "]")
			case n == 'd':
				b.WriteString(`\p{Nd}`)
			case n == 'D' && !inClass:
				b.WriteString(`\P{Nd}`)
			case n == 'w' && inClass:
				b.WriteString(wordChars)
			case n == 'w':
				b.WriteString("[" + wordChars + "]")
			case n == 'W' && !inClass:
				b.WriteString("[^" + wordChars + "]")
			default:
				b.WriteByte(c)
				b.WriteByte(n)
			}
			continue
		}
		switch {
		case !inClass && c == '[':
			inClass = true
			b.WriteByte(c)
			if i+1 < len(src) && src[i+1] == '^' {
				b.WriteByte('^')
				i++
			}
			if i+1 < len(src) && src[i+1] == ']' {
				b.WriteByte(']')
				i++
			}
			continue
		case inClass && c == '[' && i+1 < len(src) && src[i+1] == ':':
			// [:alpha:] inside a class: copy through its ":]".
			if k := strings.Index(src[i:], ":]"); k > 0 {
				b.WriteString(src[i : i+k+2])
				i += k + 1
				continue
			}
		case inClass && c == ']':
			inClass = false
		}
		b.WriteByte(c)
	}
	return b.String()
}
