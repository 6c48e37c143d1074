package modelfile

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"servelab/internal/atomicfile"
)

// Llama2CTokenizer is a llama2.c tokenizer.bin (karpathy/llama2.c's tokenizer.py export,
// read by run.c's build_tokenizer): a SentencePiece vocabulary with each piece's score.
// The file is an int32 max_token_length, then per token a float32 score, an int32 length
// and that many bytes, little-endian. The export writes SentencePiece's "▁" as a space and
// BOS and EOS as "\n<s>\n" and "\n</s>\n"; Pieces keeps the file's strings.
type Llama2CTokenizer struct {
	MaxTokenLength int
	Pieces         []string
	Scores         []float32
}

// ReadLlama2CTokenizer reads a tokenizer.bin.
func ReadLlama2CTokenizer(path string) (*Llama2CTokenizer, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(raw)
	var maxLen int32
	if err := binary.Read(r, binary.LittleEndian, &maxLen); err != nil {
		return nil, fmt.Errorf("%s: max_token_length: %w", path, err)
	}
	if maxLen <= 0 || maxLen > 1<<16 {
		return nil, fmt.Errorf("%s: max_token_length %d: not a llama2.c tokenizer.bin", path, maxLen)
	}
	t := &Llama2CTokenizer{MaxTokenLength: int(maxLen)}
	for i := 0; r.Len() > 0; i++ {
		var head struct {
			Score float32
			Len   int32
		}
		if err := binary.Read(r, binary.LittleEndian, &head); err != nil {
			return nil, fmt.Errorf("%s: token %d: score and length: %w", path, i, err)
		}
		if head.Len < 0 || head.Len > maxLen || int(head.Len) > r.Len() {
			return nil, fmt.Errorf("%s: token %d: length %d (max_token_length %d, %d bytes left)", path, i, head.Len, maxLen, r.Len())
		}
		piece := make([]byte, head.Len)
		io.ReadFull(r, piece)
		if !utf8.Valid(piece) {
			return nil, fmt.Errorf("%s: token %d: %q is not UTF-8", path, i, piece)
		}
		if math.IsNaN(float64(head.Score)) {
			return nil, fmt.Errorf("%s: token %d: score is NaN", path, i)
		}
		t.Pieces = append(t.Pieces, string(piece))
		t.Scores = append(t.Scores, head.Score)
	}
	if len(t.Pieces) == 0 {
		return nil, fmt.Errorf("%s: no tokens", path)
	}
	return t, nil
}

// WriteLlama2CTokenizer writes t as a tokenizer.bin run.c reads.
func WriteLlama2CTokenizer(path string, t *Llama2CTokenizer) error {
	if len(t.Pieces) != len(t.Scores) {
		return fmt.Errorf("llama2.c tokenizer: %d pieces, %d scores", len(t.Pieces), len(t.Scores))
	}
	var b bytes.Buffer
	maxLen := t.MaxTokenLength
	for _, p := range t.Pieces {
		maxLen = max(maxLen, len(p))
	}
	binary.Write(&b, binary.LittleEndian, int32(maxLen))
	for i, p := range t.Pieces {
		binary.Write(&b, binary.LittleEndian, t.Scores[i])
		binary.Write(&b, binary.LittleEndian, int32(len(p)))
		b.WriteString(p)
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// The special pieces as llama2.c's export writes them.
const (
	llama2cUnk = "<unk>"
	llama2cBOS = "\n<s>\n"
	llama2cEOS = "\n</s>\n"
)

// HFTokenizer turns t into the tokenizer.json and tokenizer_config.json of a Hugging Face
// Llama-2 tokenizer (SentencePiece-style BPE with byte fallback, as transformers'
// LlamaConverter writes one) that encodes as run.c's encode does. run.c starts from the
// text's characters (its bytes as <0xNN> pieces where a character is not a piece), puts a
// " " piece first (SentencePiece's dummy prefix), then repeatedly merges the adjacent pair
// whose concatenation is a piece of the highest score. BPE with a merge for every split of
// every piece into two pieces, ranked by the merged piece's score (higher first), does the
// same merges in the same order; the dummy prefix is the normalizer's Prepend("▁").
// Where two merges make pieces of equal score, run.c takes the leftmost pair and BPE the
// lower rank (ranked here by piece id); SentencePiece vocabularies give every merged piece
// its own score, so the two agree on them.
func (t *Llama2CTokenizer) HFTokenizer() (tokenizerJSON, configJSON []byte, err error) {
	n := len(t.Pieces)
	pieces := make([]string, n)
	special := map[int]string{}
	index := make(map[string]int, n)
	for i, p := range t.Pieces {
		switch {
		case p == llama2cBOS:
			p = "<s>"
			special[i] = p
		case p == llama2cEOS:
			p = "</s>"
			special[i] = p
		case i == 0 && p == llama2cUnk:
			special[i] = p
		default:
			p = strings.ReplaceAll(p, " ", "▁")
		}
		if j, dup := index[p]; dup {
			return nil, nil, fmt.Errorf("llama2.c tokenizer: tokens %d and %d are both %q", j, i, p)
		}
		index[p] = i
		pieces[i] = p
	}
	mergeable := func(i int) bool { _, sp := special[i]; return !sp && !isBytePiece(pieces[i]) }
	type merge struct{ left, right, result int }
	var merges []merge
	for id, p := range pieces {
		if !mergeable(id) {
			continue
		}
		for k := 1; k < len(p); k++ {
			if !utf8.RuneStart(p[k]) {
				continue
			}
			l, lok := index[p[:k]]
			r, rok := index[p[k:]]
			if lok && rok && mergeable(l) && mergeable(r) {
				merges = append(merges, merge{l, r, id})
			}
		}
	}
	slices.SortFunc(merges, func(a, b merge) int {
		if c := cmp.Compare(t.Scores[b.result], t.Scores[a.result]); c != 0 {
			return c
		}
		if c := cmp.Compare(a.result, b.result); c != 0 {
			return c
		}
		return cmp.Compare(a.left, b.left)
	})

	str := func(s string) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.Encode(s)
		return strings.TrimSuffix(b.String(), "\n")
	}
	var b bytes.Buffer
	b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [")
	ids := make([]int, 0, len(special))
	for id := range special {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for i, id := range ids {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n    {\"id\": %d, \"content\": %s, \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}", id, str(pieces[id]))
	}
	b.WriteString("\n  ],\n")
	b.WriteString(`  "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},` + "\n")
	b.WriteString("  \"pre_tokenizer\": null,\n")
	bos, hasBOS := index["<s>"]
	if hasBOS {
		fmt.Fprintf(&b, `  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [%d], "tokens": ["<s>"]}}},`+"\n", bos)
	} else {
		b.WriteString("  \"post_processor\": null,\n")
	}
	b.WriteString(`  "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},` + "\n")
	unk := "null"
	if _, ok := index[llama2cUnk]; ok {
		unk = str(llama2cUnk)
	}
	fmt.Fprintf(&b, "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": %s,\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": true,\n    \"byte_fallback\": true,\n    \"ignore_merges\": false,\n    \"vocab\": {", unk)
	for id, p := range pieces {
		if id > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n      %s: %d", str(p), id)
	}
	b.WriteString("\n    },\n    \"merges\": [")
	for i, m := range merges {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n      [%s, %s]", str(pieces[m.left]), str(pieces[m.right]))
	}
	b.WriteString("\n    ]\n  }\n}\n")

	opt := func(s string) string {
		if _, ok := index[s]; ok {
			return str(s)
		}
		return "null"
	}
	cfg := fmt.Sprintf("{\n  \"add_bos_token\": %t,\n  \"add_eos_token\": false,\n  \"bos_token\": %s,\n  \"eos_token\": %s,\n  \"unk_token\": %s,\n  \"clean_up_tokenization_spaces\": false,\n  \"legacy\": true,\n  \"tokenizer_class\": \"LlamaTokenizer\"\n}\n",
		hasBOS, opt("<s>"), opt("</s>"), opt(llama2cUnk))
	return b.Bytes(), []byte(cfg), nil
}

func isBytePiece(p string) bool {
	return len(p) == 6 && strings.HasPrefix(p, "<0x") && p[5] == '>'
}

// ConvertLlama2CTokenizer writes the tokenizer.bin at path into dir as tokenizer.json and
// tokenizer_config.json (see [Llama2CTokenizer.HFTokenizer]); vocab is the checkpoint's
// vocabulary size, which the file must match as run.c assumes.
func ConvertLlama2CTokenizer(path, dir string, vocab int) error {
	t, err := ReadLlama2CTokenizer(path)
	if err != nil {
		return err
	}
	if len(t.Pieces) != vocab {
		return fmt.Errorf("%s has %d tokens, the checkpoint's vocabulary %d: not this model's tokenizer", path, len(t.Pieces), vocab)
	}
	tok, cfg, err := t.HFTokenizer()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, "tokenizer.json"), tok, 0o644); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644)
}
