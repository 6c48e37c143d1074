package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"servelab/engine/modelfile"
	"servelab/engine/tokenizer"
)

// tok512 is a 512-token vocabulary laid out as llama2.c's export writes one: <unk>, BOS,
// EOS, the 256 byte pieces, printable ASCII, then two-character pieces (scores falling).
func tok512() *modelfile.Llama2CTokenizer {
	t := &modelfile.Llama2CTokenizer{}
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] && len(t.Pieces) < 512 {
			seen[p] = true
			t.Pieces = append(t.Pieces, p)
			t.Scores = append(t.Scores, float32(-len(t.Pieces)))
		}
	}
	for _, p := range []string{"<unk>", "\n<s>\n", "\n</s>\n"} {
		add(p)
	}
	for b := range 256 {
		add(fmt.Sprintf("<0x%02X>", b))
	}
	for c := byte(' '); c <= '~'; c++ {
		add(string(c))
	}
	const common = " etaoinshrdlu"
	for _, a := range common {
		for _, b := range common {
			add(string(a) + string(b))
		}
	}
	for _, w := range []string{" the", " a", " and", " was", " she", " he", " it", "ing", "ed"} {
		add(w)
	}
	return t
}

// model convert --from llama2c --tokenizer writes a directory the engine serves; without
// --tokenizer it says exactly what to pass.
func TestModelConvertLlama2CWithTokenizer(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "tiny.bin")
	if _, err := run(t, "model", "synth", "--preset", "tiny", "--out", filepath.Join(dir, "synth"), "--llama2c", ckpt); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "tok512.bin")
	if err := modelfile.WriteLlama2CTokenizer(bin, tok512()); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "converted")
	_, err := run(t, "model", "convert", "--from", "llama2c", ckpt, "--out", out)
	if err == nil || !strings.Contains(err.Error(), "give --tokenizer FILE: the llama2.c tokenizer.bin") {
		t.Fatalf("without --tokenizer: err = %v", err)
	}
	stdout, err := run(t, "model", "convert", "--from", "llama2c", ckpt, "--tokenizer", bin, "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	tok, err := tokenizer.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	const text = "the tea ate\nhis dinner, 42 times: é"
	if back := tok.Decode(tok.Encode(text, true), true); back != text {
		t.Errorf("%q decodes to %q", text, back)
	}
	url := startEngine(t, out)
	resp, err := http.Post(url+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"converted","prompt":"the tea ate","max_tokens":5,"temperature":0,"ignore_eos":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 || body.Usage.CompletionTokens != 5 {
		t.Fatalf("HTTP %d, %+v, %v", resp.StatusCode, body, err)
	}
	if want := len(tok.Encode("the tea ate", true)); body.Usage.PromptTokens != want {
		t.Errorf("the engine counted %d prompt tokens, the tokenizer %d", body.Usage.PromptTokens, want)
	}
	// A tokenizer of another vocabulary size is refused, naming the sizes.
	small := tok512()
	small.Pieces, small.Scores = small.Pieces[:300], small.Scores[:300]
	if err := modelfile.WriteLlama2CTokenizer(bin, small); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "model", "convert", "--from", "llama2c", ckpt, "--tokenizer", bin, "--out", out); err == nil ||
		!strings.Contains(err.Error(), "has 300 tokens, the checkpoint's vocabulary 512") {
		t.Errorf("a 300-token tokenizer for a 512-token model: err = %v", err)
	}
}
