package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// The GPT-2 byte-level alphabet: every byte gets a printable rune, so that BPE over
// byte-level strings never sees whitespace or control characters. Bytes that are
// already printable and not a space in Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') keep
// their own code point; the other 68 bytes take, in increasing byte order, the runes
// U+0100, U+0101, ... (so ' ' is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A).
var (
	byteRune [256]rune
	runeByte [0x144]int16 // rune -> byte, -1 where the rune is not in the alphabet
)

func init() {
	for i := range runeByte {
		runeByte[i] = -1
	}
	next := rune(0x100)
	for b := 0; b < 256; b++ {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			byteRune[b] = rune(b)
		} else {
			byteRune[b] = next
			next++
		}
		runeByte[byteRune[b]] = int16(b)
	}
}

// byteLevelString maps every byte of s to its byte-level rune.
func byteLevelString(s string) string {
	var b strings.Builder
	b.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		b.WriteRune(byteRune[s[i]])
	}
	return b.String()
}

// byteLevelBytes appends the bytes a byte-level token stands for; ok is false when
// some rune of the token is outside the byte-level alphabet (nothing is appended then).
func byteLevelBytes(dst []byte, tok string) ([]byte, bool) {
	n := len(dst)
	for _, r := range tok {
		if r < 0 || int(r) >= len(runeByte) || runeByte[r] < 0 {
			return dst[:n], false
		}
		dst = append(dst, byte(runeByte[r]))
	}
	return dst, true
}

// byteToken parses a SentencePiece byte-fallback token "<0xAB>".
func byteToken(tok string) (byte, bool) {
	if len(tok) != 6 || tok[:3] != "<0x" || tok[5] != '>' {
		return 0, false
	}
	hi, ok1 := hexDigit(tok[3])
	lo, ok2 := hexDigit(tok[4])
	return hi<<4 | lo, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// byteTokenName is the byte-fallback token for b, "<0x0A>" for a newline.
func byteTokenName(b byte) string {
	const hex = "0123456789ABCDEF"
	return string([]byte{'<', '0', 'x', hex[b>>4], hex[b&15], '>'})
}

// lossyUTF8 decodes b, replacing each maximal ill-formed subsequence with one U+FFFD,
// the Unicode-recommended practice that Rust's String::from_utf8_lossy and WHATWG's
// TextDecoder both follow (Go's utf8 package would give one U+FFFD per bad byte).
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var out strings.Builder
	out.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		c := b[i]
		if c < 0x80 {
			out.WriteByte(c)
			i++
			continue
		}
		if r, size := utf8.DecodeRune(b[i:]); r != utf8.RuneError || size > 1 {
			out.Write(b[i : i+size])
			i += size
			continue
		}
		// Invalid: skip the lead byte and as many continuation bytes as could still
		// have completed a valid sequence.
		n := 0 // continuation bytes the lead byte announces
		lo, hi := byte(0x80), byte(0xBF)
		switch {
		case c >= 0xC2 && c <= 0xDF:
			n = 1
		case c == 0xE0:
			n, lo = 2, 0xA0
		case c >= 0xE1 && c <= 0xEC || c == 0xEE || c == 0xEF:
			n = 2
		case c == 0xED:
			n, hi = 2, 0x9F
		case c == 0xF0:
			n, lo = 3, 0x90
		case c >= 0xF1 && c <= 0xF3:
			n = 3
		case c == 0xF4:
			n, hi = 3, 0x8F
		}
		j := i + 1
		for k := 0; k < n && j < len(b); k++ {
			if b[j] < lo || b[j] > hi {
				break
			}
			j++
			lo, hi = 0x80, 0xBF
		}
		out.WriteString("\uFFFD")
		i = j
	}
	return out.String()
}
