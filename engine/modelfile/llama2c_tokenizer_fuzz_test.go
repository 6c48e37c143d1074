package modelfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzReadLlama2CTokenizer: any file is read or refused with an error, never a panic or an
// allocation beyond the file; what is read writes back to a file that reads the same.
func FuzzReadLlama2CTokenizer(f *testing.F) {
	valid := &Llama2CTokenizer{MaxTokenLength: 4, Pieces: []string{"<unk>", "a", "ab", "<0x0A>"}, Scores: []float32{0, -1, -2, 0}}
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed.bin")
	if err := WriteLlama2CTokenizer(seed, valid); err != nil {
		f.Fatal(err)
	}
	raw, err := os.ReadFile(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:len(raw)-1])
	f.Add([]byte{})
	f.Add([]byte{4, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "tokenizer.bin")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		tok, err := ReadLlama2CTokenizer(path)
		if err != nil {
			return
		}
		again := filepath.Join(t.TempDir(), "again.bin")
		if err := WriteLlama2CTokenizer(again, tok); err != nil {
			t.Fatalf("read but not written back: %v", err)
		}
		back, err := ReadLlama2CTokenizer(again)
		if err != nil {
			t.Fatalf("written back but not read: %v", err)
		}
		if d := cmp.Diff(tok, back); d != "" {
			t.Errorf("round trip (-read +again):\n%s", d)
		}
	})
}
