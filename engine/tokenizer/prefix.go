package tokenizer

import (
	"context"
	"math"
	"strings"
	"unicode/utf8"
)

// EncodePrefix is Encode bounded by a token budget and a context, for input that may be
// hostile (a server's prompt): it stops as soon as the text is known to encode to more
// than maxTokens ids, and returns ctx.Err() when ctx ends first (checked between words).
//
// When the text encodes to at most maxTokens ids, ids equals Encode(text, addSpecial)
// and truncated is false. Otherwise truncated is true and ids is a prefix of Encode's
// ids of at most maxTokens+1 ids: the first maxTokens+1 when the encoder got that far,
// fewer (possibly none) when the text's length alone proves the budget exceeded. That
// proof comes from the longest text a single token can stand for (BytesPerToken): for
// tokenizers where it exists, a text longer than maxTokens tokens of it is refused
// without being encoded, and the text encoded is never longer than maxTokens+1 tokens of
// it, so work and memory are bounded by maxTokens, not by the text. Tokenizers that can
// drop unbounded text (Strip, StripAccents, regex Replace, a Whitespace pre-tokenizer,
// unknown characters without an unk token, added tokens with lstrip/rstrip) have no such
// bound: they still stop after maxTokens+1 ids, but only between the segments and words
// of their pipeline.
func (t *Tokenizer) EncodePrefix(ctx context.Context, text string, addSpecial bool, maxTokens int) (ids []int32, truncated bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	// No context is near 2^31 tokens; the clamp keeps maxTokens+1 and the byte bound from overflowing.
	maxTokens = min(max(maxTokens, 0), math.MaxInt32)
	var before, after []int32 // what the post-processor puts around the sequence
	if addSpecial && t.post != nil {
		var ok bool
		if before, after, ok = t.specialAround(); !ok {
			// A post-processor that is not "specials, sequence, specials": encode it all.
			ids := t.Encode(text, addSpecial)
			if len(ids) > maxTokens {
				return ids[:maxTokens+1], true, nil
			}
			return ids, false, nil
		}
	}
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	specials := len(before) + len(after)
	if specials > maxTokens {
		return append([]int32(nil), before[:min(len(before), maxTokens+1)]...), true, nil
	}
	if b := t.bytesPerToken; b > 0 && int64(len(text)) > int64(maxTokens-specials)*int64(b) {
		// Even at b bytes a token the text needs more than maxTokens ids.
		return append([]int32(nil), before...), true, nil
	}
	ids = make([]int32, 0, min(len(text)/3+4, maxTokens+1)+specials)
	ids = append(ids, before...)
	full := func() bool { return len(ids) > maxTokens }
	ids, err = t.encodeText(ctx, text, ids, maxTokens)
	if err != nil {
		return nil, false, err
	}
	if !full() {
		ids = append(ids, after...)
	}
	if full() {
		return ids[:maxTokens+1], true, nil
	}
	return ids, false, nil
}

// testWordHook, when set by a test, sees every word the encoder hands the model.
var testWordHook func(word string)

// encodeText appends the ids of text (valid UTF-8) to ids through the pipeline (added
// tokens, normalizer, pre-tokenizer, model) without the post-processor, stopping once ids
// holds more than maxTokens or when ctx ends (checked between segments and every 256
// words). Encode and EncodePrefix both walk the text here.
func (t *Tokenizer) encodeText(ctx context.Context, text string, ids []int32, maxTokens int) (_ []int32, err error) {
	full := func() bool { return len(ids) > maxTokens }
	words := 0
	var subs []segment
	var pieces []piece
	t.rawAdded.each(text, true, func(seg segment) bool {
		if err = ctx.Err(); err != nil {
			return false
		}
		if seg.tok >= 0 {
			ids = append(ids, seg.tok)
			return !full()
		}
		s := seg.text
		if t.normalizer != nil {
			s = t.normalizer.normalize(s)
		}
		subs = t.normAdded.split(subs[:0], s, seg.first)
		for _, sub := range subs {
			if sub.tok >= 0 {
				ids = append(ids, sub.tok)
				if full() {
					return false
				}
				continue
			}
			if t.pre == nil {
				pieces = append(pieces[:0], piece{sub.text, sub.first})
			} else {
				pieces = t.pre.split(pieces[:0], piece{sub.text, sub.first})
			}
			for _, p := range pieces {
				if words++; words%256 == 0 {
					if err = ctx.Err(); err != nil {
						return false
					}
				}
				ids = t.model.tokenize(p.s, ids)
				if testWordHook != nil {
					testWordHook(p.s)
				}
				if full() {
					return false
				}
			}
		}
		return true
	})
	return ids, err
}

// specialAround returns the ids the post-processor puts before and after a sequence,
// and false when it does something else to it.
func (t *Tokenizer) specialAround() (before, after []int32, ok bool) {
	const mark = math.MinInt32
	out := t.post.process([]int32{mark})
	at := -1
	for i, id := range out {
		if id == mark {
			if at >= 0 {
				return nil, nil, false
			}
			at = i
		}
	}
	if at < 0 {
		return nil, nil, false
	}
	return out[:at], out[at+1:], true
}

// BytesPerToken is the most bytes of input text one id of Encode can stand for, so that
// a text of n bytes encodes to at least n/BytesPerToken ids; 0 when the pipeline can
// drop unbounded text and there is no such bound (see EncodePrefix).
func (t *Tokenizer) BytesPerToken() int { return t.bytesPerToken }

// computeBytesPerToken bounds the input bytes one id covers: the longest token (in input
// bytes: a byte-level token's runes are one byte each; an unknown character is at most 4
// bytes) times how much the normalizer can shrink text.
func (t *Tokenizer) computeBytesPerToken(added []addedToken) int {
	shrink := normShrink(t.normalizer)
	if shrink == 0 || preDrops(t.pre) {
		return 0
	}
	m := t.model
	byteLevel := preHasByteLevel(t.pre)
	allBytes := byteLevel // every byte-level symbol is in the vocabulary: none is unknown
	for b := 0; b < 256 && allBytes; b++ {
		_, allBytes = m.vocab[byteLevelString(string([]byte{byte(b)}))]
	}
	if !allBytes && !m.byteFallback && (m.unk < 0 || m.fuseUnk) {
		return 0 // unknown characters vanish, or any run of them is one id
	}
	longest := 4
	for tok := range m.vocab {
		n := len(tok)
		if byteLevel {
			n = utf8.RuneCountInString(tok)
		}
		longest = max(longest, n)
	}
	for _, a := range added {
		if a.lstrip || a.rstrip {
			return 0 // they swallow any run of whitespace
		}
		longest = max(longest, len(a.content))
	}
	if t.normAdded != nil {
		for _, p := range t.normAdded.pattern {
			longest = max(longest, len(p))
		}
	}
	return longest * shrink
}

// normShrink is the most a normalizer divides the length of text by (0: unbounded).
func normShrink(n normalizer) int {
	switch n := n.(type) {
	case nil, normPrepend:
		return 1
	case normSequence:
		f := 1
		for _, c := range n {
			g := normShrink(c)
			if g == 0 {
				return 0
			}
			f *= g
		}
		return f
	case normReplace:
		switch {
		case n.re != nil:
			return 0
		case n.literal == "" || len(n.content) >= len(n.literal):
			return 1
		case n.content == "":
			return 0
		}
		return (len(n.literal) + len(n.content) - 1) / len(n.content)
	case normForm, normLowercase:
		// A rune is at most 4 bytes and becomes at least one byte (𝐀 -> A under NFKC, K
		// -> k); compositions shrink less (3 Hangul jamo, 9 bytes -> one syllable, 3).
		return 4
	}
	return 0 // Strip, StripAccents: any run of whitespace or marks may vanish
}

func preDrops(p preTokenizer) bool {
	switch p := p.(type) {
	case preSequence:
		for _, c := range p {
			if preDrops(c) {
				return true
			}
		}
	case preSplit:
		return p.behavior == removed
	}
	return false
}

func preHasByteLevel(p preTokenizer) bool {
	switch p := p.(type) {
	case preSequence:
		for _, c := range p {
			if preHasByteLevel(c) {
				return true
			}
		}
	case preByteLevel:
		return true
	}
	return false
}
