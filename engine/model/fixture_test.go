package model

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/engine/modelfile"
)

// fixtureDir holds a real llama2.c checkpoint (stories260K) with the greedy ids and the
// logits at positions 0-2 that llama2.c's run.c produced; see its README.md.
const fixtureDir = "../../../shared/fixtures/llama2c-260k"

// readFixture returns the fixture's greedy ids and its logits rows: per position, the
// input token and the logits.
func readFixture(t *testing.T) (ids []int, tokens []int, logits [][]float64) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(fixtureDir, "greedy_ids.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(raw)) {
		id, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("greedy_ids.txt: %v", err)
		}
		ids = append(ids, id)
	}
	file, err := os.Open(filepath.Join(fixtureDir, "logits_pos0-2.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// pos P token T logits v0 v1 ...
		if len(f) < 6 || f[0] != "pos" || f[2] != "token" || f[4] != "logits" {
			t.Fatalf("logits_pos0-2.txt: unexpected line %.60q", sc.Text())
		}
		if p, _ := strconv.Atoi(f[1]); p != len(logits) {
			t.Fatalf("logits_pos0-2.txt: position %s out of order", f[1])
		}
		tok, err := strconv.Atoi(f[3])
		if err != nil {
			t.Fatal(err)
		}
		row := make([]float64, len(f)-5)
		for i, s := range f[5:] {
			if row[i], err = strconv.ParseFloat(s, 64); err != nil {
				t.Fatal(err)
			}
		}
		tokens = append(tokens, tok)
		logits = append(logits, row)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ids, tokens, logits
}

// TestLlama2CFixture converts the llama2.c checkpoint to a Hugging Face directory, loads
// it, and generates greedily from BOS at position 0, one token per step: every id must be
// run.c's, and the logits at positions 0-2 must match its within tolerance.
func TestLlama2CFixture(t *testing.T) {
	if _, err := os.Stat(filepath.Join(fixtureDir, "model.bin")); err != nil {
		t.Skipf("llama2.c fixture not available (%v); it lives in shared/fixtures/llama2c-260k next to the repository", err)
	}
	wantIDs, tokens, logits := readFixture(t)
	dir := t.TempDir()
	if err := modelfile.ConvertLlama2C(filepath.Join(fixtureDir, "model.bin"), dir); err != nil {
		t.Fatal(err)
	}
	m, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	const bs = 16
	numBlocks := (len(wantIDs) + bs - 1) / bs
	r := m.NewRunner(m.NewKVCache(numBlocks, bs))
	// The block table runs backwards through the cache.
	var blocks []int32
	for b := numBlocks - 1; b >= 0; b-- {
		blocks = append(blocks, int32(b))
	}
	worst := 0.0
	tok := int32(1) // BOS
	var got []int
	for pos := range wantIDs {
		out := r.Forward([]SeqInput{{Tokens: []int32{tok}, Pos: pos, Blocks: blocks, Logits: true}})
		if pos < len(logits) {
			if int(tok) != tokens[pos] {
				t.Fatalf("position %d: fed token %d, the fixture's run fed %d", pos, tok, tokens[pos])
			}
			checkLogits(t, "position "+strconv.Itoa(pos), out[0], logits[pos])
			worst = max(worst, relErr(out[0], logits[pos]))
		}
		tok = int32(argmax(out[0]))
		got = append(got, int(tok))
	}
	t.Logf("%d greedy ids generated; largest logits relative error at positions 0-%d: %.3g", len(got), len(logits)-1, worst)
	if diff := cmp.Diff(wantIDs, got); diff != "" {
		t.Errorf("greedy ids differ from llama2.c's (-run.c +got):\n%s", diff)
	}
}
