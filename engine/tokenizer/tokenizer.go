// Package tokenizer reads Hugging Face tokenizer.json files with a BPE model — byte-level
// (GPT-2, Llama-3, Qwen2) and SentencePiece-style with byte fallback (Llama-2, Mistral) —
// encodes and decodes text, detokenises incrementally for streaming, applies chat
// templates, and trains small BPE vocabularies for synthesised test models.
package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Kind is the BPE flavour.
type Kind string

const (
	// ByteLevel maps every byte to a printable rune before BPE (GPT-2, Llama-3, Qwen2).
	ByteLevel Kind = "byte-level"
	// SentencePiece replaces spaces with "▁", prepends one, and falls back to <0xXX> byte
	// tokens for runes outside the vocabulary (Llama-2, Mistral).
	SentencePiece Kind = "sentencepiece"
)

const spSpace = "▁"

// Tokenizer is a loaded tokenizer; it is safe for concurrent use.
type Tokenizer struct {
	kind         Kind
	vocab        map[string]int32
	tokens       []string // by id
	ranks        map[[2]int32]int32
	merged       map[[2]int32]int32
	byteFallback bool
	ignoreMerges bool
	unk          int32
	byteTokens   [256]int32 // SentencePiece <0xXX> ids, -1 when absent
	added        []addedToken
	special      map[int32]bool
	prefixSpace  bool // byte-level add_prefix_space
	spPrepend    bool // SentencePiece: prepend "▁" to the input
	stripLeading bool // SentencePiece decoder strips the space the normaliser added

	bos, eos         int32
	hasBOS           bool
	addBOS, addEOS   bool
	eosIDs           []int32
	chatTemplate     string
	modelMaxLength   int
	cacheMu          sync.Mutex
	cache            map[string][]int32
	byteDecodeTable  map[rune]byte
	byteEncodeTable  [256]rune
	maxAddedTokenLen int
}

type addedToken struct {
	content string
	id      int32
	special bool
}

// Load reads dir/tokenizer.json and, if present, dir/tokenizer_config.json.
func Load(dir string) (*Tokenizer, error) {
	tj, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	tc, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return Parse(tj, tc)
}

type fileJSON struct {
	AddedTokens []struct {
		ID      int32  `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         struct {
		Type         string           `json:"type"`
		Vocab        map[string]int32 `json:"vocab"`
		Merges       json.RawMessage  `json:"merges"`
		UnkToken     *string          `json:"unk_token"`
		ByteFallback bool             `json:"byte_fallback"`
		IgnoreMerges bool             `json:"ignore_merges"`
	} `json:"model"`
}

// component is any normalizer, pre-tokenizer, decoder or post-processor node.
type component struct {
	Type           string            `json:"type"`
	AddPrefixSpace *bool             `json:"add_prefix_space"`
	Prepend        string            `json:"prepend"`
	PrependScheme  string            `json:"prepend_scheme"`
	Replacement    string            `json:"replacement"`
	Pattern        json.RawMessage   `json:"pattern"`
	Content        string            `json:"content"`
	Start          int               `json:"start"`
	Normalizers    []json.RawMessage `json:"normalizers"`
	PreTokenizers  []json.RawMessage `json:"pretokenizers"`
	Decoders       []json.RawMessage `json:"decoders"`
	Processors     []json.RawMessage `json:"processors"`
	Single         []struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
	} `json:"single"`
}

// walk visits a component tree (Sequence nodes included).
func walk(raw json.RawMessage, path string, visit func(c component, path string) error) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: %s: %v", path, err)
	}
	if err := visit(c, path); err != nil {
		return err
	}
	for name, kids := range map[string][]json.RawMessage{"normalizers": c.Normalizers, "pretokenizers": c.PreTokenizers, "decoders": c.Decoders, "processors": c.Processors} {
		for i, k := range kids {
			if err := walk(k, fmt.Sprintf("%s.%s[%d]", path, name, i), visit); err != nil {
				return err
			}
		}
	}
	return nil
}

type configJSON struct {
	ChatTemplate   json.RawMessage `json:"chat_template"`
	BOSToken       json.RawMessage `json:"bos_token"`
	EOSToken       json.RawMessage `json:"eos_token"`
	AddBOSToken    *bool           `json:"add_bos_token"`
	AddEOSToken    *bool           `json:"add_eos_token"`
	ModelMaxLength float64         `json:"model_max_length"`
}

// tokenString reads a special token given as "text" or {"content": "text"}.
func tokenString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var obj struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Content != "" {
		return obj.Content, true
	}
	return "", false
}

// Parse builds a tokenizer from the contents of tokenizer.json and tokenizer_config.json
// (which may be nil).
func Parse(tokenizerJSON, tokenizerConfigJSON []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(tokenizerJSON, &f); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %v", err)
	}
	if f.Model.Type != "BPE" {
		return nil, fmt.Errorf("tokenizer.json: model.type: unsupported %q (only BPE)", f.Model.Type)
	}
	if len(f.Model.Vocab) == 0 {
		return nil, fmt.Errorf("tokenizer.json: model.vocab: empty")
	}
	t := &Tokenizer{
		vocab:   f.Model.Vocab,
		ranks:   map[[2]int32]int32{},
		merged:  map[[2]int32]int32{},
		special: map[int32]bool{},
		unk:     -1,
		bos:     -1,
		eos:     -1,
		cache:   map[string][]int32{},
	}
	t.byteFallback, t.ignoreMerges = f.Model.ByteFallback, f.Model.IgnoreMerges
	size := 0
	for tok, id := range f.Model.Vocab {
		if id < 0 {
			return nil, fmt.Errorf("tokenizer.json: model.vocab[%q]: negative id %d", tok, id)
		}
		size = max(size, int(id)+1)
	}
	for i, a := range f.AddedTokens {
		if a.ID < 0 || a.Content == "" {
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d]: bad id %d or empty content", i, a.ID)
		}
		size = max(size, int(a.ID)+1)
	}
	if size > 1<<24 {
		return nil, fmt.Errorf("tokenizer.json: model.vocab: id %d too large", size-1)
	}
	t.tokens = make([]string, size)
	for tok, id := range f.Model.Vocab {
		t.tokens[id] = tok
	}
	for _, a := range f.AddedTokens {
		t.tokens[a.ID] = a.Content
		if _, ok := t.vocab[a.Content]; !ok {
			t.vocab[a.Content] = a.ID
		}
		t.added = append(t.added, addedToken{a.Content, a.ID, a.Special})
		if a.Special {
			t.special[a.ID] = true
		}
		t.maxAddedTokenLen = max(t.maxAddedTokenLen, len(a.Content))
	}
	slices.SortStableFunc(t.added, func(a, b addedToken) int { return len(b.content) - len(a.content) })
	if f.Model.UnkToken != nil {
		if id, ok := t.vocab[*f.Model.UnkToken]; ok {
			t.unk = id
		}
	}
	if err := t.parseMerges(f.Model.Merges); err != nil {
		return nil, err
	}
	if err := t.readPipeline(&f); err != nil {
		return nil, err
	}
	if t.kind == ByteLevel {
		t.byteEncodeTable, t.byteDecodeTable = byteLevelTables()
	}
	for b := range t.byteTokens {
		t.byteTokens[b] = -1
		if id, ok := t.vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			t.byteTokens[b] = id
		}
	}
	if err := t.readConfig(tokenizerConfigJSON); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tokenizer) parseMerges(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return fmt.Errorf("tokenizer.json: model.merges: %v", err)
	}
	for i, it := range items {
		var a, b string
		var s string
		var pair []string
		switch {
		case json.Unmarshal(it, &s) == nil:
			var ok bool
			a, b, ok = strings.Cut(s, " ")
			if !ok {
				return fmt.Errorf("tokenizer.json: model.merges[%d]: %q is not two tokens separated by a space", i, s)
			}
		case json.Unmarshal(it, &pair) == nil && len(pair) == 2:
			a, b = pair[0], pair[1]
		default:
			return fmt.Errorf("tokenizer.json: model.merges[%d]: want \"a b\" or [\"a\", \"b\"]", i)
		}
		ia, oka := t.vocab[a]
		ib, okb := t.vocab[b]
		im, okm := t.vocab[a+b]
		if !oka || !okb || !okm {
			return fmt.Errorf("tokenizer.json: model.merges[%d]: %q + %q: token not in the vocabulary", i, a, b)
		}
		key := [2]int32{ia, ib}
		if _, dup := t.ranks[key]; !dup {
			t.ranks[key] = int32(i)
			t.merged[key] = im
		}
	}
	return nil
}

// readPipeline decides the flavour from the normalizer, pre-tokenizer and decoder, and
// which token the post-processor adds.
func (t *Tokenizer) readPipeline(f *fileJSON) error {
	var byteLevel, metaspace, replaceSpace, prepend bool
	check := func(c component, path string) error {
		switch c.Type {
		case "ByteLevel":
			byteLevel = true
			if c.AddPrefixSpace != nil && *c.AddPrefixSpace && strings.HasPrefix(path, "pre_tokenizer") {
				t.prefixSpace = true
			}
		case "Metaspace":
			metaspace = true
			if strings.HasPrefix(path, "pre_tokenizer") && c.PrependScheme != "never" {
				prepend = true
			}
		case "Prepend":
			if c.Prepend == spSpace {
				prepend = true
			}
		case "Replace":
			var pat struct {
				String string `json:"String"`
			}
			_ = json.Unmarshal(c.Pattern, &pat)
			if pat.String == " " && c.Content == spSpace {
				replaceSpace = true
			}
		case "Strip":
			if c.Content == " " && c.Start > 0 {
				t.stripLeading = true
			}
		case "Sequence", "Split", "Digits", "Punctuation", "NFC", "NFKC", "Fuse", "ByteFallback",
			"TemplateProcessing", "RobertaProcessing", "BertProcessing", "Whitespace", "WhitespaceSplit", "":
		default:
			return fmt.Errorf("tokenizer.json: %s: unsupported component type %q", path, c.Type)
		}
		return nil
	}
	for _, part := range []struct {
		name string
		raw  json.RawMessage
	}{{"normalizer", f.Normalizer}, {"pre_tokenizer", f.PreTokenizer}, {"decoder", f.Decoder}, {"post_processor", f.PostProcessor}} {
		if err := walk(part.raw, part.name, check); err != nil {
			return err
		}
	}
	switch {
	case byteLevel:
		t.kind = ByteLevel
	case metaspace || replaceSpace || t.byteFallback:
		t.kind = SentencePiece
		t.spPrepend = prepend
		if metaspace {
			t.stripLeading = t.stripLeading || prepend
		}
	default:
		return fmt.Errorf("tokenizer.json: neither a ByteLevel nor a SentencePiece-style (Metaspace, or Replace \" \" -> \"▁\") pipeline")
	}
	// A TemplateProcessing post-processor names the BOS it adds.
	return walk(f.PostProcessor, "post_processor", func(c component, _ string) error {
		if c.Type != "TemplateProcessing" {
			return nil
		}
		for _, p := range c.Single {
			if p.SpecialToken == nil {
				continue
			}
			id, ok := t.vocab[p.SpecialToken.ID]
			if !ok {
				return fmt.Errorf("tokenizer.json: post_processor: special token %q not in the vocabulary", p.SpecialToken.ID)
			}
			if !t.hasBOS {
				t.bos, t.hasBOS, t.addBOS = id, true, true
			}
		}
		return nil
	})
}

func (t *Tokenizer) readConfig(raw []byte) error {
	if len(raw) == 0 {
		return nil
	}
	var c configJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer_config.json: %v", err)
	}
	if len(c.ChatTemplate) > 0 && string(c.ChatTemplate) != "null" {
		if json.Unmarshal(c.ChatTemplate, &t.chatTemplate) != nil {
			var named []struct{ Name, Template string }
			if err := json.Unmarshal(c.ChatTemplate, &named); err != nil {
				return fmt.Errorf("tokenizer_config.json: chat_template: want a string or a list of {name, template}")
			}
			for _, n := range named {
				if n.Name == "default" {
					t.chatTemplate = n.Template
				}
			}
		}
	}
	if s, ok := tokenString(c.BOSToken); ok {
		id, found := t.vocab[s]
		if !found {
			return fmt.Errorf("tokenizer_config.json: bos_token: %q not in the vocabulary", s)
		}
		t.bos, t.hasBOS = id, true
	}
	if s, ok := tokenString(c.EOSToken); ok {
		id, found := t.vocab[s]
		if !found {
			return fmt.Errorf("tokenizer_config.json: eos_token: %q not in the vocabulary", s)
		}
		t.eos = id
		t.eosIDs = []int32{id}
	}
	if c.AddBOSToken != nil {
		t.addBOS = *c.AddBOSToken && t.hasBOS
	}
	if c.AddEOSToken != nil {
		t.addEOS = *c.AddEOSToken && t.eos >= 0
	}
	t.modelMaxLength = int(min(c.ModelMaxLength, 1<<30))
	return nil
}

// Kind is the tokenizer's BPE flavour.
func (t *Tokenizer) Kind() Kind { return t.kind }

// VocabSize is the number of token ids.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID looks a token's string up.
func (t *Tokenizer) TokenID(token string) (int32, bool) {
	id, ok := t.vocab[token]
	return id, ok
}

// BOS is the beginning-of-sequence id, if the tokenizer has one.
func (t *Tokenizer) BOS() (int32, bool) { return t.bos, t.hasBOS }

// EOS are the end-of-sequence ids named by tokenizer_config.json.
func (t *Tokenizer) EOS() []int32 { return slices.Clone(t.eosIDs) }

// IsSpecial reports whether id is a special added token.
func (t *Tokenizer) IsSpecial(id int32) bool { return t.special[id] }
