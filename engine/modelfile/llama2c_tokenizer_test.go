package modelfile

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"

	"servelab/engine/tokenizer"
)

const tokCorpus = "Once upon a time there was a little girl named Lily. She loved to play outside in the sun. " +
	"One day she saw a big red ball in the park. The naïve café owner smiled at her. " +
	"Lily and her friend played with the ball all day long, and then they went home happy."

// trainLlama2C trains a small SentencePiece-style BPE vocabulary on tokCorpus and lays it
// out as llama2.c's export does: <unk>, BOS, EOS, the 256 byte pieces, the merged pieces
// (score -i for the i-th merge, as SentencePiece scores BPE pieces), then the characters.
// Characters seen once are left out, so byte fallback is exercised.
func trainLlama2C(t *testing.T, merges int) *Llama2CTokenizer {
	t.Helper()
	text := "▁" + strings.ReplaceAll(tokCorpus, " ", "▁")
	counts := map[string]int{}
	for _, r := range text {
		counts[string(r)]++
	}
	var chars []string
	for c, n := range counts {
		if n > 1 {
			chars = append(chars, c)
		}
	}
	slices.Sort(chars)
	known := map[string]bool{}
	for _, c := range chars {
		known[c] = true
	}
	var seq []string
	for _, r := range text {
		seq = append(seq, string(r))
	}
	var learned []string
	for len(learned) < merges {
		pairs := map[[2]string]int{}
		for i := 0; i+1 < len(seq); i++ {
			if known[seq[i]] && known[seq[i+1]] {
				pairs[[2]string{seq[i], seq[i+1]}]++
			}
		}
		var best [2]string
		bestN := 0
		for p, n := range pairs {
			if n > bestN || n == bestN && cmp.Compare(p[0]+"\x00"+p[1], best[0]+"\x00"+best[1]) < 0 {
				best, bestN = p, n
			}
		}
		if bestN < 2 {
			break
		}
		piece := best[0] + best[1]
		if !known[piece] {
			learned = append(learned, piece)
			known[piece] = true
		}
		var next []string
		for i := 0; i < len(seq); i++ {
			if i+1 < len(seq) && seq[i] == best[0] && seq[i+1] == best[1] {
				next = append(next, piece)
				i++
			} else {
				next = append(next, seq[i])
			}
		}
		seq = next
	}
	tok := &Llama2CTokenizer{}
	add := func(p string, score float32) {
		tok.Pieces = append(tok.Pieces, strings.ReplaceAll(p, "▁", " "))
		tok.Scores = append(tok.Scores, score)
	}
	add("<unk>", 0)
	add("\n<s>\n", 0)
	add("\n</s>\n", 0)
	for b := range 256 {
		add(fmt.Sprintf("<0x%02X>", b), 0)
	}
	for i, p := range learned {
		add(p, float32(-i))
	}
	for i, c := range chars {
		add(c, float32(-len(learned)-i))
	}
	return tok
}

// runcEncode is llama2.c's run.c encode, written from its description: BOS, the dummy
// prefix " ", each UTF-8 character as its piece or its bytes as <0xNN> (id byte+3), then
// merge the adjacent pair whose concatenation is the highest-scoring piece, leftmost
// first, until none is.
func runcEncode(tok *Llama2CTokenizer, text string) []int32 {
	index := map[string]int32{}
	for i, p := range tok.Pieces {
		if _, ok := index[p]; !ok {
			index[p] = int32(i)
		}
	}
	ids := []int32{1}
	if text != "" {
		ids = append(ids, index[" "])
	}
	for _, r := range text {
		c := string(r)
		if id, ok := index[c]; ok {
			ids = append(ids, id)
			continue
		}
		for _, b := range []byte(c) {
			ids = append(ids, int32(b)+3)
		}
	}
	for {
		best, bestIdx := float32(-1e10), -1
		var bestID int32
		for i := 0; i+1 < len(ids); i++ {
			id, ok := index[tok.Pieces[ids[i]]+tok.Pieces[ids[i+1]]]
			if ok && tok.Scores[id] > best {
				best, bestIdx, bestID = tok.Scores[id], i, id
			}
		}
		if bestIdx < 0 {
			return ids
		}
		ids = slices.Replace(ids, bestIdx, bestIdx+2, bestID)
	}
}

// The converted tokenizer encodes as run.c does, decodes back to the text, and the engine's
// tokenizer loads it.
func TestLlama2CTokenizerConvertsFaithfully(t *testing.T) {
	tok := trainLlama2C(t, 150)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tok.bin")
	if err := WriteLlama2CTokenizer(bin, tok); err != nil {
		t.Fatal(err)
	}
	read, err := ReadLlama2CTokenizer(bin)
	if err != nil {
		t.Fatal(err)
	}
	if diff := gocmp.Diff(tok.Pieces, read.Pieces); diff != "" {
		t.Fatalf("pieces read back (-want +got):\n%s", diff)
	}
	out := filepath.Join(dir, "hf")
	if err := ConvertLlama2CTokenizer(bin, out, len(tok.Pieces)); err != nil {
		t.Fatal(err)
	}
	hf, err := tokenizer.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	if hf.VocabSize() != len(tok.Pieces) {
		t.Errorf("vocabulary %d, want %d", hf.VocabSize(), len(tok.Pieces))
	}
	if bos, ok := hf.BOS(); !ok || bos != 1 || !slices.Equal(hf.EOS(), []int32{2}) {
		t.Errorf("BOS %d (%v), EOS %v; want 1 and [2]", bos, ok, hf.EOS())
	}
	for _, text := range []string{
		tokCorpus,
		"Lily played with the ball.",
		"The café was naïve",                // characters seen once fall back to bytes
		"日本語 and emoji 🙂 are bytes",         // none of these are pieces
		"two  spaces,\nnew line\tand a tab", // spaces as pieces, the rest as bytes
		" leading space",
		"x",
		"",
	} {
		want := runcEncode(tok, text)
		got := hf.Encode(text, true)
		if diff := gocmp.Diff(want, got); diff != "" {
			t.Errorf("%q: ids (-run.c +converted):\n%s", text, diff)
		}
		if back := hf.Decode(got, true); back != text {
			t.Errorf("%q decodes to %q", text, back)
		}
	}
	if err := ConvertLlama2CTokenizer(bin, out, len(tok.Pieces)+1); err == nil || !strings.Contains(err.Error(), "not this model's tokenizer") {
		t.Errorf("a vocabulary-size mismatch gave %v", err)
	}
}

func TestReadLlama2CTokenizerRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.bin")
	if err := WriteLlama2CTokenizer(good, trainLlama2C(t, 10)); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(good)
	for name, data := range map[string][]byte{
		"empty":     {},
		"truncated": raw[:len(raw)-2],
		"bad max":   append([]byte{0, 0, 0, 0x80}, raw[4:]...),
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		os.WriteFile(path, data, 0o644)
		if _, err := ReadLlama2CTokenizer(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v, want one naming the file", name, err)
		}
	}
}
