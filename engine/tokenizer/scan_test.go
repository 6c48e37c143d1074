package tokenizer

import (
	"encoding/json"
	"os"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// TestScannerMatchesJS compares the hand-written scanner with JavaScript's RegExp
// engine running the GPT-2, Llama-3 and Qwen2 patterns (testdata/split_expect.json,
// made by testdata/gen_splits.js) on 300 random strings.
func TestScannerMatchesJS(t *testing.T) {
	b, err := os.ReadFile("testdata/split_expect.json")
	if err != nil {
		t.Fatal(err)
	}
	var exp struct {
		Cases []struct {
			Text   string   `json:"text"`
			GPT2   []string `json:"gpt2"`
			Llama3 []string `json:"llama3"`
			Qwen2  []string `json:"qwen2"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &exp); err != nil {
		t.Fatal(err)
	}
	qwen2 := `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	for _, c := range exp.Cases {
		for _, p := range []struct {
			pattern string
			want    []string
		}{{gpt2Pattern, c.GPT2}, {llama3Pattern, c.Llama3}, {qwen2, c.Qwen2}} {
			f, err := newFinder(p.pattern)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := f.(scanner); !ok {
				t.Fatalf("%s: not recognised", p.pattern)
			}
			var got []string
			for _, m := range f.find(c.Text, nil) {
				got = append(got, c.Text[m[0]:m[1]])
			}
			if diff := cmp.Diff(p.want, got); diff != "" {
				t.Errorf("split %q by %.20s... -js +go:\n%s", c.Text, p.pattern, diff)
			}
		}
	}
}

func TestScannerCaseFolding(t *testing.T) {
	sc := knownPatterns[llama3Pattern]
	var got []string
	s := "HE'S we'Re it'ſ x'T"
	for _, m := range sc.find(s, nil) {
		got = append(got, s[m[0]:m[1]])
	}
	want := []string{"HE", "'S", " we", "'Re", " it", "'ſ", " x", "'T"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("-want +got:\n%s", diff)
	}
}

func TestUnicodeClasses(t *testing.T) {
	for _, tc := range []struct{ in, text string }{
		{`\s+`, "a\u3000\u00a0b"},
		{`[^\s\d]+`, "ab\u2003١٢"},
		{`\w+`, "naïve_中文"},
	} {
		re, err := compileRegex(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindString(tc.text)
		switch tc.in {
		case `\s+`:
			if m != "\u3000\u00a0" {
				t.Errorf("%s on %q = %q", tc.in, tc.text, m)
			}
		case `[^\s\d]+`:
			if m != "ab" {
				t.Errorf("%s on %q = %q", tc.in, tc.text, m)
			}
		case `\w+`:
			if m != tc.text {
				t.Errorf("%s on %q = %q", tc.in, tc.text, m)
			}
		}
	}
	if _, err := compileRegex(`\s+(?!\S)|foo`); err == nil {
		t.Errorf("lookahead compiled")
	}
}

func TestByteLevelAlphabet(t *testing.T) {
	seen := map[rune]bool{}
	for b := 0; b < 256; b++ {
		r := byteRune[b]
		if seen[r] {
			t.Fatalf("byte %d: rune %q repeated", b, r)
		}
		seen[r] = true
		if int(runeByte[r]) != b {
			t.Fatalf("rune %q maps back to %d, want %d", r, runeByte[r], b)
		}
	}
	for b, want := range map[byte]rune{' ': 'Ġ', '\n': 'Ċ', '\t': 'ĉ', 'a': 'a', 0: 'Ā', 0x7F: 'ġ', 0xAD: 'Ń', 0xFF: 'ÿ'} {
		if byteRune[b] != want {
			t.Errorf("byteRune[%#x] = %q, want %q", b, byteRune[b], want)
		}
	}
	if got := byteLevelString("a é\n"); got != "aĠÃ©Ċ" {
		t.Errorf("byteLevelString = %q", got)
	}
}

func TestLossyUTF8(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"abc", "abc"},
		{"\xe2\x82\xac", "€"},
		{"\xe2\x82A", "\uFFFDA"},                         // truncated sequence: one U+FFFD
		{"\xf0\x9f\x98", "\uFFFD"},                       // truncated 4-byte sequence
		{"\xf0\x9f\x98\x80\xf0", "😀\uFFFD"},              // complete then truncated
		{"\xc0\xaf", "\uFFFD\uFFFD"},                     // overlong lead: each byte
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"},           // surrogate
		{"\x80\x80", "\uFFFD\uFFFD"},                     // stray continuations
		{"\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"}, // above U+10FFFF
		{"a\xffb", "a\uFFFDb"},
	} {
		got := lossyUTF8([]byte(tc.in))
		if got != tc.want {
			t.Errorf("lossyUTF8(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !utf8.ValidString(got) {
			t.Errorf("lossyUTF8(%q) invalid", tc.in)
		}
	}
}

func TestByteToken(t *testing.T) {
	for b := 0; b < 256; b++ {
		name := byteTokenName(byte(b))
		got, ok := byteToken(name)
		if !ok || int(got) != b {
			t.Fatalf("byteToken(%q) = %d, %v", name, got, ok)
		}
	}
	if byteTokenName('\n') != "<0x0A>" {
		t.Errorf("byteTokenName('\\n') = %q", byteTokenName('\n'))
	}
	for _, s := range []string{"<0x0G>", "<0x0A", "0x0A>", "<0X0A>", "<0x0AB>"} {
		if _, ok := byteToken(s); ok {
			t.Errorf("byteToken(%q) ok", s)
		}
	}
}
