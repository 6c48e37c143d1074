package tokenizer

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens: text that is cut out of the
// input before anything else and encodes to its id directly.
type addedToken struct {
	id         int32
	content    string
	special    bool
	lstrip     bool // the match takes the whitespace on its left
	rstrip     bool // ... and on its right
	normalized bool // matched in normalized text (else in the raw input)
	singleWord bool // only matches as a whole word
}

// addedMatcher finds added tokens in text, leftmost-longest, as HF's AddedVocabulary
// does with its Aho-Corasick automaton.
type addedMatcher struct {
	tokens  []addedToken
	pattern []string       // text matched for each token (content, normalized if it is)
	byFirst map[byte][]int // token indices by first byte, longest pattern first
}

func newAddedMatcher(tokens []addedToken, patterns []string) *addedMatcher {
	m := &addedMatcher{tokens: tokens, pattern: patterns, byFirst: map[byte][]int{}}
	for i, p := range patterns {
		if p == "" {
			continue
		}
		m.byFirst[p[0]] = append(m.byFirst[p[0]], i)
	}
	for _, list := range m.byFirst {
		sort.SliceStable(list, func(a, b int) bool { return len(patterns[list[a]]) > len(patterns[list[b]]) })
	}
	return m
}

// segment is a piece of input: plain text (tok < 0) or an added token.
type segment struct {
	text  string
	tok   int32 // token id, -1 for text
	first bool  // starts at offset 0 of the input
}

// split cuts s at the added tokens it contains, appending to dst.
func (m *addedMatcher) split(dst []segment, s string, first bool) []segment {
	m.each(s, first, func(seg segment) bool {
		dst = append(dst, seg)
		return true
	})
	return dst
}

// each calls yield with the segments of s in order, cut at the added tokens it
// contains, until yield returns false; it reports whether it reached the end. It holds
// no list of the segments, so scanning a huge text takes no memory.
func (m *addedMatcher) each(s string, first bool, yield func(segment) bool) bool {
	if m == nil || len(m.byFirst) == 0 {
		return yield(segment{s, -1, first})
	}
	start := 0 // end of the previous match
	for i := 0; i < len(s); {
		cands := m.byFirst[s[i]]
		k := -1
		for _, c := range cands {
			if strings.HasPrefix(s[i:], m.pattern[c]) {
				k = c
				break
			}
		}
		if k < 0 {
			i++
			continue
		}
		tok := m.tokens[k]
		mStart, mEnd := i, i+len(m.pattern[k])
		if tok.singleWord && (mStart > 0 && isWordChar(lastRune(s[:mStart])) || mEnd < len(s) && isWordChar(firstRune(s[mEnd:]))) {
			i = mEnd
			continue
		}
		if tok.lstrip {
			mStart = start + len(strings.TrimRightFunc(s[start:mStart], unicode.IsSpace))
		}
		if tok.rstrip {
			mEnd = len(s) - len(strings.TrimLeftFunc(s[mEnd:], unicode.IsSpace))
		}
		if mStart > start && !yield(segment{s[start:mStart], -1, first && start == 0}) {
			return false
		}
		if !yield(segment{s[mStart:mEnd], tok.id, first && mStart == 0}) {
			return false
		}
		start, i = mEnd, mEnd
	}
	if start < len(s) {
		return yield(segment{s[start:], -1, first && start == 0})
	}
	return true
}

func isWordChar(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) }

func firstRune(s string) rune {
	for _, r := range s {
		return r
	}
	return -1
}

func lastRune(s string) rune {
	if s == "" {
		return -1
	}
	r, _ := utf8.DecodeLastRuneInString(s)
	return r
}
