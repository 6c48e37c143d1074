package tokenizer

import "strings"

// Decoder detokenises incrementally for streaming: Add takes ids one at a time and
// returns the text that is safe to emit, and the pieces returned by Add and Flush
// concatenate to Decode(all ids, skipSpecial).
//
// It decodes a short window of recent ids twice — with and without the newest ones —
// and emits the difference, so every decoder rule (SentencePiece's stripped leading
// space, Metaspace, byte-level, byte fallback) behaves exactly as in Decode. Text is
// held back while it ends in U+FFFD (a multi-byte rune split across tokens), after an
// id that decodes to nothing (a skipped special token), and, for byte-fallback decoders,
// while the newest token is a <0xXX> byte (HF decodes a run of byte tokens as a whole,
// and an invalid run becomes one U+FFFD per byte).
type Decoder struct {
	t      *Tokenizer
	skip   bool
	ids    []int32
	prefix int // window start: ids before it are done
	read   int // ids[prefix:read] have been emitted
}

// NewDecoder starts incremental detokenisation.
func (t *Tokenizer) NewDecoder(skipSpecial bool) *Decoder {
	return &Decoder{t: t, skip: skipSpecial}
}

// Add appends id and returns the new text it completes (possibly empty).
func (d *Decoder) Add(id int32) string {
	d.ids = append(d.ids, id)
	tok, ok := d.t.Token(id)
	if !ok || d.skip && d.t.special[id] {
		// Decode ignores it; emitting now could end a byte-fallback run that the
		// next id continues.
		return ""
	}
	if d.t.byteFallbackDecoder {
		if _, isByte := byteToken(tok); isByte {
			return ""
		}
	}
	return d.emit(false)
}

// Flush returns whatever is still held at the end (an incomplete UTF-8 sequence comes
// out as U+FFFD) and resets the decoder.
func (d *Decoder) Flush() string {
	out := d.emit(true)
	d.ids, d.prefix, d.read = d.ids[:0], 0, 0
	return out
}

func (d *Decoder) emit(final bool) string {
	before := d.t.Decode(d.ids[d.prefix:d.read], d.skip)
	after := d.t.Decode(d.ids[d.prefix:], d.skip)
	if len(after) <= len(before) || !final && strings.HasSuffix(after, "\uFFFD") {
		return ""
	}
	out := after[len(before):]
	if !strings.HasPrefix(after, before) {
		// Not expected for HF decoders; emit what differs after the common prefix.
		n := 0
		for n < len(before) && before[n] == after[n] {
			n++
		}
		out = after[n:]
	}
	d.prefix, d.read = d.read, len(d.ids)
	if d.prefix > 256 {
		n := copy(d.ids, d.ids[d.prefix:])
		d.ids = d.ids[:n]
		d.read -= d.prefix
		d.prefix = 0
	}
	return out
}
