package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// byteLevelTables builds GPT-2's reversible byte-to-rune map: printable Latin-1 bytes map
// to themselves, the rest to runes from U+0100 on, in byte order.
func byteLevelTables() (enc [256]rune, dec map[rune]byte) {
	dec = make(map[rune]byte, 256)
	n := 0
	for b := range 256 {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			enc[b] = rune(b)
		} else {
			enc[b] = rune(256 + n)
			n++
		}
		dec[enc[b]] = byte(b)
	}
	return enc, dec
}

// splitWords is the byte-level pre-tokenizer, the pattern Llama-3 and Qwen2 use (GPT-4's),
// written as a scanner because Go's regexp has no lookahead:
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,3} |
//	 ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
func splitWords(s string, emit func(string)) {
	isL := func(r rune) bool { return unicode.IsLetter(r) }
	isN := func(r rune) bool { return unicode.IsNumber(r) }
	isS := unicode.IsSpace
	at := func(i int) (rune, int) {
		if i >= len(s) {
			return -1, 0
		}
		return utf8.DecodeRuneInString(s[i:])
	}
	for i := 0; i < len(s); {
		r, w := at(i)
		// Contractions.
		if r == '\'' {
			rest := strings.ToLower(s[i+1 : min(len(s), i+3)])
			matched := 0
			for _, c := range []string{"re", "ve", "ll", "s", "t", "m", "d"} {
				if strings.HasPrefix(rest, c) {
					matched = 1 + len(c)
					break
				}
			}
			if matched > 0 {
				emit(s[i : i+matched])
				i += matched
				continue
			}
		}
		// [^\r\n\p{L}\p{N}]?\p{L}+
		j := i
		if !isL(r) && !isN(r) && r != '\r' && r != '\n' {
			if r2, _ := at(i + w); r2 >= 0 && isL(r2) {
				j = i + w
			}
		}
		if r2, _ := at(j); r2 >= 0 && isL(r2) {
			for {
				r3, w3 := at(j)
				if r3 < 0 || !isL(r3) {
					break
				}
				j += w3
			}
			emit(s[i:j])
			i = j
			continue
		}
		// \p{N}{1,3}
		if isN(r) {
			j, n := i, 0
			for n < 3 {
				r3, w3 := at(j)
				if r3 < 0 || !isN(r3) {
					break
				}
				j += w3
				n++
			}
			emit(s[i:j])
			i = j
			continue
		}
		//  ?[^\s\p{L}\p{N}]+[\r\n]*
		j = i
		if r == ' ' {
			j += w
		}
		k := j
		for {
			r3, w3 := at(k)
			if r3 < 0 || isS(r3) || isL(r3) || isN(r3) {
				break
			}
			k += w3
		}
		if k > j {
			for {
				r3, w3 := at(k)
				if r3 != '\r' && r3 != '\n' {
					break
				}
				k += w3
			}
			emit(s[i:k])
			i = k
			continue
		}
		// Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
		k = i
		lastNL := -1
		for {
			r3, w3 := at(k)
			if r3 < 0 || !isS(r3) {
				break
			}
			k += w3
			if r3 == '\r' || r3 == '\n' {
				lastNL = k
			}
		}
		switch {
		case lastNL > 0:
			emit(s[i:lastNL])
			i = lastNL
		case k < len(s) && k-i > 1:
			// Leave the last whitespace rune to prefix the next word.
			_, wl := utf8.DecodeLastRuneInString(s[i:k])
			emit(s[i : k-wl])
			i = k - wl
		default:
			emit(s[i:k])
			i = k
		}
	}
}

// splitSentencePiece cuts a normalised ("▁"-joined) text before each run of "▁", so BPE
// runs per word; merges in SentencePiece vocabularies do not join a word with the
// spaces before the next one.
func splitSentencePiece(s string, emit func(string)) {
	start := 0
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], spSpace) && i > start && !strings.HasSuffix(s[start:i], spSpace) {
			emit(s[start:i])
			start = i
		}
		_, w := utf8.DecodeRuneInString(s[i:])
		i += w
	}
	if start < len(s) {
		emit(s[start:])
	}
}

// Encode turns text into token ids; addSpecial adds BOS/EOS as the tokenizer's files say.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int32 {
	var out []int32
	if addSpecial && t.addBOS {
		out = append(out, t.bos)
	}
	first := true
	t.splitAdded(text, func(piece string, id int32) {
		if id >= 0 {
			out = append(out, id)
			return
		}
		out = t.encodeText(out, piece, first)
		first = false
	})
	if addSpecial && t.addEOS {
		out = append(out, t.eos)
	}
	return out
}

// splitAdded cuts text at added tokens (longest match first); plain pieces get id -1.
func (t *Tokenizer) splitAdded(text string, f func(piece string, id int32)) {
	if len(t.added) == 0 {
		f(text, -1)
		return
	}
	start := 0
	for i := 0; i < len(text); {
		matched := false
		for _, a := range t.added {
			if strings.HasPrefix(text[i:], a.content) {
				if i > start {
					f(text[start:i], -1)
				}
				f(a.content, a.id)
				i += len(a.content)
				start = i
				matched = true
				break
			}
		}
		if !matched {
			i++
		}
	}
	if start < len(text) {
		f(text[start:], -1)
	}
}

func (t *Tokenizer) encodeText(out []int32, text string, first bool) []int32 {
	switch t.kind {
	case ByteLevel:
		if t.prefixSpace && first && !strings.HasPrefix(text, " ") {
			text = " " + text
		}
		splitWords(text, func(w string) {
			var b strings.Builder
			for i := 0; i < len(w); i++ {
				b.WriteRune(t.byteEncodeTable[w[i]])
			}
			out = t.bpe(out, b.String())
		})
	default:
		norm := strings.ReplaceAll(text, " ", spSpace)
		if t.spPrepend && first {
			norm = spSpace + norm
		}
		splitSentencePiece(norm, func(w string) { out = t.bpe(out, w) })
	}
	return out
}

const cacheLimit = 1 << 16

// bpe appends the tokens of one pre-tokenized word (already in vocabulary alphabet).
func (t *Tokenizer) bpe(out []int32, word string) []int32 {
	if id, ok := t.vocab[word]; ok && (t.ignoreMerges || utf8.RuneCountInString(word) == 1) {
		return append(out, id)
	}
	t.cacheMu.Lock()
	cached, ok := t.cache[word]
	t.cacheMu.Unlock()
	if ok {
		return append(out, cached...)
	}
	var syms []int32
	for _, r := range word {
		s := string(r)
		if id, ok := t.vocab[s]; ok {
			syms = append(syms, id)
			continue
		}
		if t.byteFallback {
			for i := 0; i < len(s); i++ {
				if id := t.byteTokens[s[i]]; id >= 0 {
					syms = append(syms, id)
				} else if t.unk >= 0 {
					syms = append(syms, t.unk)
				}
			}
		} else if t.unk >= 0 {
			syms = append(syms, t.unk)
		}
	}
	for len(syms) > 1 {
		best, bestRank := -1, int32(1<<31-1)
		for i := 0; i+1 < len(syms); i++ {
			if r, ok := t.ranks[[2]int32{syms[i], syms[i+1]}]; ok && r < bestRank {
				best, bestRank = i, r
			}
		}
		if best < 0 {
			break
		}
		syms[best] = t.merged[[2]int32{syms[best], syms[best+1]}]
		syms = append(syms[:best+1], syms[best+2:]...)
	}
	t.cacheMu.Lock()
	if len(t.cache) >= cacheLimit {
		clear(t.cache)
	}
	t.cache[word] = syms
	t.cacheMu.Unlock()
	return append(out, syms...)
}

// tokenBytes is the raw text of one token.
func (t *Tokenizer) tokenBytes(dst []byte, id int32) []byte {
	if id < 0 || int(id) >= len(t.tokens) {
		return dst
	}
	s := t.tokens[id]
	if t.special[id] {
		return append(dst, s...)
	}
	switch t.kind {
	case ByteLevel:
		for _, r := range s {
			if b, ok := t.byteDecodeTable[r]; ok {
				dst = append(dst, b)
			} else {
				dst = utf8.AppendRune(dst, r)
			}
		}
	default:
		if len(s) == 6 && strings.HasPrefix(s, "<0x") && s[5] == '>' {
			var b byte
			for _, c := range s[3:5] {
				b <<= 4
				switch {
				case c >= '0' && c <= '9':
					b |= byte(c - '0')
				case c >= 'A' && c <= 'F':
					b |= byte(c - 'A' + 10)
				case c >= 'a' && c <= 'f':
					b |= byte(c - 'a' + 10)
				}
			}
			return append(dst, b)
		}
		dst = append(dst, strings.ReplaceAll(s, spSpace, " ")...)
	}
	return dst
}

// Decode turns ids back into text; invalid UTF-8 becomes U+FFFD.
func (t *Tokenizer) Decode(ids []int32, skipSpecial bool) string {
	d := t.NewDecoder(skipSpecial)
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(d.Add(id))
	}
	b.WriteString(d.Flush())
	return b.String()
}

// Decoder detokenises incrementally: each Add returns the text that is complete so far,
// never half a UTF-8 sequence, and the pieces concatenate to Decode's result.
type Decoder struct {
	t           *Tokenizer
	skipSpecial bool
	pending     []byte
	started     bool
}

// NewDecoder starts incremental detokenisation.
func (t *Tokenizer) NewDecoder(skipSpecial bool) *Decoder {
	return &Decoder{t: t, skipSpecial: skipSpecial}
}

// Add feeds one id and returns the newly complete text.
func (d *Decoder) Add(id int32) string {
	if d.skipSpecial && d.t.special[id] {
		return ""
	}
	d.pending = d.t.tokenBytes(d.pending, id)
	if !d.started && len(d.pending) > 0 {
		d.started = true
		if d.t.kind == SentencePiece && d.t.stripLeading && d.pending[0] == ' ' {
			d.pending = d.pending[1:]
		}
	}
	// Emit up to the last complete rune.
	n := len(d.pending)
	for i := max(0, n-utf8.UTFMax); i < n; i++ {
		if utf8.RuneStart(d.pending[i]) && !utf8.FullRune(d.pending[i:]) {
			n = i
			break
		}
	}
	out := strings.ToValidUTF8(string(d.pending[:n]), "\uFFFD")
	d.pending = append(d.pending[:0], d.pending[n:]...)
	return out
}

// Flush returns what is left (an incomplete rune becomes U+FFFD).
func (d *Decoder) Flush() string {
	out := strings.ToValidUTF8(string(d.pending), "\uFFFD")
	d.pending = d.pending[:0]
	return out
}
