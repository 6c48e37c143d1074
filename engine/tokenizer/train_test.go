package tokenizer

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

var specialFor = map[string][]string{
	KindByteLevel:     {"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"},
	KindSentencePiece: {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"},
}

var (
	trainedMu    sync.Mutex
	trainedCache = map[string]*Tokenizer{}
)

// trained returns a 2048-token tokenizer of the kind trained on DefaultCorpus.
func trained(t testing.TB, kind string) *Tokenizer {
	t.Helper()
	trainedMu.Lock()
	defer trainedMu.Unlock()
	if tok := trainedCache[kind]; tok != nil {
		return tok
	}
	tj, tc, err := Train(DefaultCorpus(), TrainConfig{VocabSize: 2048, Kind: kind, Special: specialFor[kind]})
	if err != nil {
		t.Fatalf("Train(%s): %v", kind, err)
	}
	tok, err := Parse(tj, tc)
	if err != nil {
		t.Fatalf("Parse(Train(%s)): %v", kind, err)
	}
	trainedCache[kind] = tok
	return tok
}

func TestTrain(t *testing.T) {
	for _, tc := range []struct {
		kind       string
		bos        int32
		eos        int32
		firstIDs   []int32 // Encode("The Light", true) starts with
		unk        bool
		specialIDs []int32
	}{
		{kind: KindByteLevel, bos: 2044, eos: 2045, firstIDs: []int32{2044}, specialIDs: []int32{2044, 2045, 2046, 2047}},
		{kind: KindSentencePiece, bos: 1, eos: 2, firstIDs: []int32{1}, unk: true, specialIDs: []int32{0, 1, 2, 3, 4}},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			cfg := TrainConfig{VocabSize: 2048, Kind: tc.kind, Special: specialFor[tc.kind]}
			// How long Train takes is BenchmarkTrain's to measure: a bound here fails on a
			// loaded machine, not on a slow Train.
			tj, tcfg, err := Train(DefaultCorpus(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			tj2, tcfg2, err := Train(DefaultCorpus(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tj, tj2) || !bytes.Equal(tcfg, tcfg2) {
				t.Errorf("Train is not deterministic")
			}
			for _, b := range [][]byte{tj, tcfg} {
				if !json.Valid(b) {
					t.Fatalf("invalid JSON:\n%.500s", b)
				}
			}
			tok, err := Parse(tj, tcfg)
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.VocabSize(); got != 2048 {
				t.Errorf("VocabSize = %d, want 2048", got)
			}
			if bos, ok := tok.BOS(); !ok || bos != tc.bos {
				t.Errorf("BOS = %d, %v, want %d", bos, ok, tc.bos)
			}
			if eos := tok.EOS(); len(eos) != 1 || eos[0] != tc.eos {
				t.Errorf("EOS = %v, want [%d]", eos, tc.eos)
			}
			for i, id := range tc.specialIDs {
				if !tok.IsSpecial(id) {
					t.Errorf("IsSpecial(%d) = false", id)
				}
				if got, ok := tok.TokenID(cfg.Special[i]); !ok || got != id {
					t.Errorf("TokenID(%q) = %d, %v, want %d", cfg.Special[i], got, ok, id)
				}
			}
			got := tok.Encode("The Light", true)
			if len(got) < 2 || got[0] != tc.firstIDs[0] {
				t.Errorf("Encode(\"The Light\", true) = %v, want BOS first", got)
			}
			// Frequent words of the corpus are single tokens.
			for _, w := range []string{" Light", " the", " Colours"} {
				if n := len(tok.Encode(w, false)); n != 1 && !(tc.kind == KindSentencePiece && n == 2) {
					t.Errorf("Encode(%q) has %d tokens", w, n)
				}
			}
			// Special tokens in text encode to their ids.
			im := tok.Encode("<|im_start|>user\nhi<|im_end|>", false)
			if id, _ := tok.TokenID("<|im_start|>"); im[0] != id {
				t.Errorf("Encode(<|im_start|>...) = %v", im)
			}
			// Round trips, non-ASCII included (byte-level bytes or byte fallback).
			r := rand.New(rand.NewPCG(7, 8))
			texts := append(strings.Split(DefaultCorpus(), "\n\n")[:50],
				"", " ", "  leading", "trailing  ", "naïve café — “quotes”", "中文测试 日本語 한국어", "😀👍🏽🇫🇷", "tab\tnew\nline\r\n",
				"Numbers 1234567890 3.14159", "I'm sure they'll say it's fine", "<s> not special here?")
			for range 300 {
				texts = append(texts, randomText(r, 1+r.IntN(30)))
			}
			_, metaspace := tok.TokenID("▁")
			for _, s := range texts {
				if metaspace && strings.Contains(s, "▁") || strings.Contains(s, "<s>") || strings.Contains(s, "</s>") {
					continue
				}
				ids := tok.Encode(s, false)
				for _, id := range ids {
					if id < 0 || int(id) >= 2048 {
						t.Fatalf("Encode(%q) has id %d", s, id)
					}
				}
				if got := tok.Decode(ids, false); got != s {
					t.Errorf("Decode(Encode(%q)) = %q", s, got)
				}
				if got := tok.Decode(tok.Encode(s, true), true); got != s {
					t.Errorf("Decode(Encode(%q, true), true) = %q", s, got)
				}
			}
		})
	}
}

func TestTrainSizes(t *testing.T) {
	// The synthesised models of cmd/servelab train up to 4096 tokens.
	for _, kind := range []string{KindByteLevel, KindSentencePiece} {
		for _, n := range []int{300, 1000, 4096} {
			if kind == KindSentencePiece && n == 300 {
				continue
			}
			tj, tc, err := Train(DefaultCorpus(), TrainConfig{VocabSize: n, Kind: kind, Special: specialFor[kind]})
			if err != nil {
				t.Errorf("Train(%s, %d): %v", kind, n, err)
				continue
			}
			tok, err := Parse(tj, tc)
			if err != nil {
				t.Fatal(err)
			}
			if tok.VocabSize() != n {
				t.Errorf("Train(%s, %d): VocabSize %d", kind, n, tok.VocabSize())
			}
			s := "Of the Reflexions and Inflexions of Light, 1704."
			if got := tok.Decode(tok.Encode(s, false), false); got != s {
				t.Errorf("Train(%s, %d): round trip %q", kind, n, got)
			}
		}
	}
}

func TestTrainErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  TrainConfig
		want string
	}{
		{TrainConfig{VocabSize: 1000, Kind: "wordpiece"}, `Kind "wordpiece"`},
		{TrainConfig{VocabSize: 100, Kind: KindByteLevel}, "too small"},
		{TrainConfig{VocabSize: 200, Kind: KindSentencePiece, Special: []string{"<s>"}}, "too small"},
		{TrainConfig{VocabSize: 1000, Kind: KindByteLevel, Special: []string{"<s>", "<s>"}}, "repeated"},
		{TrainConfig{VocabSize: 100000, Kind: KindByteLevel}, "supports at most"},
	} {
		_, _, err := Train(DefaultCorpus(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Train(%+v) = %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
}

func TestDefaultCorpus(t *testing.T) {
	c := DefaultCorpus()
	if len(c) < 50_000 || len(c) > 120_000 {
		t.Errorf("DefaultCorpus is %d bytes", len(c))
	}
	if !strings.Contains(c, "Light") || strings.Contains(strings.ToLower(c), "gutenberg") {
		t.Errorf("unexpected corpus text")
	}
}
