package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// checkStream feeds ids one by one to a Decoder and checks that the pieces are valid
// UTF-8 and concatenate to Decode(ids).
func checkStream(t *testing.T, tok *Tokenizer, ids []int32) {
	t.Helper()
	for _, skip := range []bool{false, true} {
		d := tok.NewDecoder(skip)
		var b strings.Builder
		for _, id := range ids {
			piece := d.Add(id)
			if !utf8.ValidString(piece) {
				t.Errorf("Add(%d) = %q: invalid UTF-8", id, piece)
			}
			b.WriteString(piece)
		}
		b.WriteString(d.Flush())
		if want := tok.Decode(ids, skip); b.String() != want {
			t.Errorf("streamed %v (skipSpecial %v) = %q, want %q", ids, skip, b.String(), want)
		}
	}
}

// randomIDs mixes arbitrary ids, encodings of random text, lone bytes (<0xXX> or
// byte-level) that split UTF-8 sequences, and special tokens.
func randomIDs(r *rand.Rand, tok *Tokenizer) []int32 {
	var special []int32
	for id := range tok.VocabSize() {
		if tok.IsSpecial(int32(id)) {
			special = append(special, int32(id))
		}
	}
	n := 1 + r.IntN(30)
	var out []int32
	for len(out) < n {
		switch r.IntN(5) {
		case 0:
			out = append(out, int32(r.IntN(tok.VocabSize())))
		case 1, 2:
			out = append(out, tok.Encode(randomText(r, 1+r.IntN(4)), false)...)
		case 3:
			b := byte(r.IntN(256))
			if id, ok := tok.TokenID(byteTokenName(b)); ok {
				out = append(out, id)
			} else if id, ok := tok.TokenID(string(byteRune[b])); ok {
				out = append(out, id)
			}
		case 4:
			if len(special) > 0 {
				out = append(out, special[r.IntN(len(special))])
			}
		}
	}
	return out
}

func TestStreamTrained(t *testing.T) {
	for _, kind := range []string{KindByteLevel, KindSentencePiece} {
		t.Run(kind, func(t *testing.T) {
			tok := trained(t, kind)
			r := rand.New(rand.NewPCG(5, 6))
			for range 500 {
				checkStream(t, tok, randomIDs(r, tok))
			}
			for _, s := range strings.Split(DefaultCorpus()[:5000], "\n") {
				checkStream(t, tok, tok.Encode(s, true))
			}
		})
	}
}

// TestStreamHoldsPartialRunes: a rune split over byte tokens comes out whole, once.
func TestStreamHoldsPartialRunes(t *testing.T) {
	for _, kind := range []string{KindByteLevel, KindSentencePiece} {
		t.Run(kind, func(t *testing.T) {
			tok := trained(t, kind)
			ids := tok.Encode("a 😀 b", false)
			d := tok.NewDecoder(false)
			var pieces []string
			for _, id := range ids {
				if p := d.Add(id); p != "" {
					pieces = append(pieces, p)
				}
			}
			if p := d.Flush(); p != "" {
				pieces = append(pieces, p)
			}
			if strings.Join(pieces, "") != "a 😀 b" {
				t.Fatalf("pieces %q", pieces)
			}
			for _, p := range pieces {
				if strings.Contains(p, "\uFFFD") {
					t.Errorf("piece %q has U+FFFD", p)
				}
			}
			// An unfinished rune at the end comes out as U+FFFD on Flush.
			d = tok.NewDecoder(false)
			emoji := tok.Encode("😀", false)
			if len(emoji) < 2 {
				t.Skipf("😀 is one token")
			}
			var got string
			for _, id := range emoji[:len(emoji)-1] {
				got += d.Add(id)
			}
			if got != "" {
				t.Errorf("partial rune emitted %q", got)
			}
			if f := d.Flush(); !strings.Contains(f, "\uFFFD") {
				t.Errorf("Flush() = %q, want U+FFFD", f)
			}
		})
	}
}

// TestStreamSentencePieceSpaces: the leading space SentencePiece decoding strips is
// stripped once, at the start, and kept between words.
func TestStreamSentencePieceSpaces(t *testing.T) {
	tok, _ := loadReal(t, "mistral")
	ids := tok.Encode("Hello world, how are you?", true)
	d := tok.NewDecoder(true)
	var pieces []string
	for _, id := range ids {
		pieces = append(pieces, d.Add(id))
	}
	pieces = append(pieces, d.Flush())
	if got := strings.Join(pieces, ""); got != "Hello world, how are you?" {
		t.Errorf("streamed %q (pieces %q)", got, pieces)
	}
	if pieces[1] != "Hello" || pieces[2] != " world" {
		t.Errorf("pieces %q, want \"Hello\", \" world\" after BOS", pieces)
	}
}
