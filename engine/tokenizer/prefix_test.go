package tokenizer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// prefixTokenizers are the trained and real tokenizers EncodePrefix is checked on, plus
// one without a length bound (a Whitespace pre-tokenizer drops text).
func prefixTokenizers(t *testing.T) map[string]*Tokenizer {
	t.Helper()
	toks := map[string]*Tokenizer{}
	for _, kind := range []string{KindByteLevel, KindSentencePiece} {
		toks["trained-"+kind] = trained(t, kind)
	}
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			tok, _ := loadReal(t, e.Name())
			toks[e.Name()] = tok
		}
	}
	toks["whitespace"] = mustParse(t, tokJSON([]string{"<unk>", "the", "a", "b", "t", "h", "e", "th"}, []string{"t h", "th e"}, `, "unk_token": "<unk>"`,
		`"pre_tokenizer": {"type": "Whitespace"}`,
		`"added_tokens": [{"id": 0, "content": "<unk>", "special": true}]`,
		`"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<unk>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<unk>", "type_id": 0}}], "special_tokens": {"<unk>": {"id": "<unk>", "ids": [0], "tokens": ["<unk>"]}}}`), "")
	return toks
}

// TestEncodePrefixMatchesEncode: within the budget EncodePrefix is Encode; over it, a
// prefix of Encode's ids, at most maxTokens+1 of them, and the first maxTokens+1 when the
// text was not refused on its length alone.
func TestEncodePrefixMatchesEncode(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 2))
	for name, tok := range prefixTokenizers(t) {
		t.Run(name, func(t *testing.T) {
			if name != "whitespace" && tok.BytesPerToken() == 0 {
				t.Errorf("BytesPerToken() = 0, want a bound")
			}
			texts := []string{"", "the", "  ", "a\xffb\xfe\xfd", strings.Repeat("the ", 50)}
			for content := range tok.added {
				texts = append(texts, content+"the "+content)
			}
			for range 60 {
				texts = append(texts, randomText(r, r.IntN(80)))
			}
			for _, text := range texts {
				for _, addSpecial := range []bool{false, true} {
					want := tok.Encode(text, addSpecial)
					specials := len(tok.Encode("", addSpecial))
					for _, max := range []int{0, 1, 2, len(want) / 2, len(want) - 1, len(want), len(want) + 1, r.IntN(len(want) + 2)} {
						if max < 0 {
							continue
						}
						got, truncated, err := tok.EncodePrefix(context.Background(), text, addSpecial, max)
						if err != nil {
							t.Fatal(err)
						}
						if truncated != (len(want) > max) {
							t.Fatalf("EncodePrefix(%q, %v, %d): truncated = %v, Encode has %d ids", text, addSpecial, max, truncated, len(want))
						}
						wantPrefix := want[:min(len(want), max+1)]
						if len(got) > len(wantPrefix) || !cmp.Equal(got, wantPrefix[:len(got)], ids) {
							t.Fatalf("EncodePrefix(%q, %v, %d) = %v, not a prefix of %v", text, addSpecial, max, got, wantPrefix)
						}
						bound := tok.BytesPerToken()
						refusedOnLength := specials > max || bound > 0 && len(text) > (max-specials)*bound
						if !refusedOnLength && len(got) != len(wantPrefix) {
							t.Fatalf("EncodePrefix(%q, %v, %d) = %d ids, want %d", text, addSpecial, max, len(got), len(wantPrefix))
						}
					}
				}
			}
		})
	}
}

func FuzzEncodePrefix(f *testing.F) {
	f.Add("Hello, world! <|im_start|>x", 3)
	f.Add("naïve 中文 😀 \xff", 1)
	toks := map[string]*Tokenizer{}
	for _, kind := range []string{KindByteLevel, KindSentencePiece} {
		toks[kind] = trained(f, kind)
	}
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 1<<20 {
			return
		}
		for kind, tok := range toks {
			want := tok.Encode(s, true)
			got, truncated, err := tok.EncodePrefix(context.Background(), s, true, max)
			if err != nil || truncated != (len(want) > max) || len(got) > max+1 || !cmp.Equal(got, want[:len(got)], ids) {
				t.Fatalf("%s: EncodePrefix(%q, %d) = %v, %v, %v; Encode = %v", kind, s, max, got, truncated, err, want)
			}
		}
	})
}

// TestEncodePrefixBoundedWork: a huge text over the budget is refused after encoding at
// most the words of about maxTokens ids, with memory that does not grow with the text.
func TestEncodePrefixBoundedWork(t *testing.T) {
	const max = 512
	huge := strings.Repeat(DefaultCorpus()[:1<<14], 512) // 8 MiB
	for name, tok := range prefixTokenizers(t) {
		t.Run(name, func(t *testing.T) {
			var words, bytes int
			testWordHook = func(w string) { words++; bytes += len(w) }
			defer func() { testWordHook = nil }()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			got, truncated, err := tok.EncodePrefix(context.Background(), huge, true, max)
			runtime.ReadMemStats(&after)
			if err != nil || !truncated || len(got) > max+1 {
				t.Fatalf("EncodePrefix(8 MiB) = %d ids, truncated %v, %v", len(got), truncated, err)
			}
			if words > max+1 {
				t.Errorf("encoded %d words (%d bytes) for a budget of %d ids", words, bytes, max)
			}
			// Without a length bound (see EncodePrefix) the pipeline's stages see the text.
			if alloc := after.TotalAlloc - before.TotalAlloc; tok.BytesPerToken() > 0 && alloc > 4<<20 {
				t.Errorf("allocated %d bytes for an 8 MiB text and a budget of %d ids", alloc, max)
			}
		})
	}
}

// TestEncodePrefixCancel: a cancelled context stops the encoder between words.
func TestEncodePrefixCancel(t *testing.T) {
	tok := prefixTokenizers(t)["whitespace"] // no length bound: it has to encode
	text := strings.Repeat("a b the ", 1<<16)
	ctx, cancel := context.WithCancel(context.Background())
	words := 0
	testWordHook = func(string) {
		if words++; words == 100 {
			cancel()
		}
	}
	defer func() { testWordHook = nil }()
	_, _, err := tok.EncodePrefix(ctx, text, false, 1<<30)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if words > 100+256 {
		t.Errorf("encoded %d words after cancelling at 100", words)
	}
	if _, _, err := tok.EncodePrefix(ctx, "the", false, 10); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled before: err = %v", err)
	}
}

func ExampleTokenizer_EncodePrefix() {
	tj, tc, _ := Train(DefaultCorpus(), TrainConfig{VocabSize: 512, Kind: KindByteLevel})
	tok, _ := Parse(tj, tc)
	_, truncated, _ := tok.EncodePrefix(context.Background(), strings.Repeat("hello world ", 1<<20), true, 2048)
	fmt.Println(truncated)
	// Output: true
}

// TestEncodePrefixHugeBudget: a budget past any context (math.MaxInt) is no budget, not an
// overflow in maxTokens+1 or the byte bound.
func TestEncodePrefixHugeBudget(t *testing.T) {
	for _, kind := range []string{"byte-level", "sentencepiece"} {
		tok := trained(t, kind)
		text := "a budget past any context is no budget at all"
		ids, truncated, err := tok.EncodePrefix(context.Background(), text, true, math.MaxInt)
		if err != nil || truncated {
			t.Fatalf("%s: truncated %v, err %v", kind, truncated, err)
		}
		if d := cmp.Diff(tok.Encode(text, true), ids); d != "" {
			t.Errorf("%s: EncodePrefix != Encode (-want +got):\n%s", kind, d)
		}
	}
}
