// Package tokenizer reads Hugging Face tokenizer files (tokenizer.json as written by
// the `tokenizers` library, plus tokenizer_config.json) for BPE models — byte-level ones
// such as GPT-2, Llama-3 and Qwen2, and SentencePiece-style ones with byte fallback such
// as Llama-2 and Mistral — and encodes, decodes, detokenises incrementally for
// streaming, applies chat templates, and trains small BPE vocabularies for synthesised
// test models.
//
// The encoding pipeline is HF's: added tokens are cut out of the input first (longest
// match), the rest is normalized, pre-tokenized into words, and each word is encoded by
// the BPE model; the post-processor then adds special tokens such as BOS. Supported
// components:
//
//   - model: BPE (vocab, merges as "a b" strings or ["a","b"] pairs, byte_fallback,
//     unk_token, fuse_unk, ignore_merges, continuing_subword_prefix,
//     end_of_word_suffix)
//   - normalizer: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip,
//     StripAccents
//   - pre_tokenizer: Sequence, ByteLevel, Split, Metaspace, Digits, Punctuation,
//     Whitespace, WhitespaceSplit, BertPreTokenizer. Split's well-known GPT-2, Llama-3
//     and Qwen2 patterns run on a hand-written scanner (Go's regexp has no lookahead);
//     other patterns must compile with Go's regexp.
//   - post_processor: TemplateProcessing, ByteLevel, BertProcessing,
//     RobertaProcessing, Sequence
//   - decoder: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, WordPiece,
//     BPEDecoder, Sequence
//
// Not supported: the WordPiece, WordLevel and Unigram models, the Precompiled and
// BertNormalizer normalizers, and the CTC decoder; Parse fails naming them. Decode does
// not apply transformers' clean_up_tokenization_spaces, so that Decode(Encode(s)) == s.
package tokenizer

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Tokenizer is a loaded tokenizer. It is safe for concurrent use.
type Tokenizer struct {
	normalizer normalizer
	pre        preTokenizer
	model      *bpe
	post       postProcessor
	dec        decoder

	rawAdded  *addedMatcher // added tokens matched in the raw input
	normAdded *addedMatcher // added tokens matched in normalized text

	tokens  []string // by id
	known   []bool   // by id: the id has a token
	special []bool   // by id: an added token marked special
	added   map[string]int32

	bos          int32 // -1: none
	eos          []int32
	bosToken     string
	eosToken     string
	unkToken     string
	padToken     string
	chatTemplate string
	maxLength    int64

	byteFallbackDecoder bool
	bytesPerToken       int // see BytesPerToken
}

// Load reads dir/tokenizer.json and, if present, dir/tokenizer_config.json (either may
// also be gzip-compressed, as tokenizer.json.gz).
func Load(dir string) (*Tokenizer, error) {
	tj, err := readMaybeGzip(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	tc, err := readMaybeGzip(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return Parse(tj, tc)
}

func readMaybeGzip(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return b, err
	}
	f, gzErr := os.Open(path + ".gz")
	if gzErr != nil {
		return nil, err
	}
	defer f.Close()
	zr, gzErr := gzip.NewReader(f)
	if gzErr != nil {
		return nil, fmt.Errorf("%s.gz: %w", path, gzErr)
	}
	b, gzErr = io.ReadAll(zr)
	if gzErr != nil {
		return nil, fmt.Errorf("%s.gz: %w", path, gzErr)
	}
	return b, nil
}

// Parse builds a tokenizer from the contents of tokenizer.json and tokenizer_config.json
// (nil or empty when there is none). Errors name the file and the JSON path of the bad
// field, as in `tokenizer.json: model.merges[12]: "xy" is not in the vocabulary`.
func Parse(tokenizerJSON, tokenizerConfigJSON []byte) (*Tokenizer, error) {
	root, err := jval{file: "tokenizer.json", raw: tokenizerJSON}.object()
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{bos: -1}
	if t.model, err = parseBPE(root.get("model")); err != nil {
		return nil, err
	}
	if t.normalizer, err = parseNormalizer(root.get("normalizer")); err != nil {
		return nil, err
	}
	if t.pre, err = parsePreTokenizer(root.get("pre_tokenizer")); err != nil {
		return nil, err
	}
	if t.post, err = parsePostProcessor(root.get("post_processor")); err != nil {
		return nil, err
	}
	if t.dec, err = parseDecoder(root.get("decoder")); err != nil {
		return nil, err
	}
	t.byteFallbackDecoder = hasByteFallback(t.dec)
	added, err := parseAddedTokens(root.get("added_tokens"), len(t.model.vocab))
	if err != nil {
		return nil, err
	}
	t.buildTables(added)
	t.bytesPerToken = t.computeBytesPerToken(added)
	if err := t.parseConfig(jval{file: "tokenizer_config.json", raw: tokenizerConfigJSON}); err != nil {
		return nil, err
	}
	return t, nil
}

func parseAddedTokens(v jval, vocabSize int) ([]addedToken, error) {
	if v.missing() {
		return nil, nil
	}
	list, err := v.array()
	if err != nil {
		return nil, err
	}
	limit := maxID(vocabSize + len(list))
	out := make([]addedToken, 0, len(list))
	for _, it := range list {
		o, err := it.object()
		if err != nil {
			return nil, err
		}
		id, err := o.get("id").integer()
		if err != nil {
			return nil, err
		}
		if id < 0 || id > limit {
			return nil, o.get("id").errf("id %d out of range", id)
		}
		a := addedToken{id: int32(id)}
		if a.content, err = o.get("content").str(); err != nil {
			return nil, err
		}
		if a.content == "" {
			return nil, o.get("content").errf("empty token")
		}
		if a.special, err = o.boolean("special", false); err != nil {
			return nil, err
		}
		if a.lstrip, err = o.boolean("lstrip", false); err != nil {
			return nil, err
		}
		if a.rstrip, err = o.boolean("rstrip", false); err != nil {
			return nil, err
		}
		if a.singleWord, err = o.boolean("single_word", false); err != nil {
			return nil, err
		}
		if a.normalized, err = o.boolean("normalized", !a.special); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (t *Tokenizer) buildTables(added []addedToken) {
	n := 0
	for _, id := range t.model.vocab {
		n = max(n, int(id)+1)
	}
	for _, a := range added {
		n = max(n, int(a.id)+1)
	}
	t.tokens = make([]string, n)
	t.known = make([]bool, n)
	t.special = make([]bool, n)
	for tok, id := range t.model.vocab {
		t.tokens[id], t.known[id] = tok, true
	}
	t.added = make(map[string]int32, len(added))
	var raw, norm []addedToken
	var rawPat, normPat []string
	for _, a := range added {
		t.tokens[a.id], t.known[a.id] = a.content, true
		t.special[a.id] = a.special
		t.added[a.content] = a.id
		if a.normalized && t.normalizer != nil {
			norm = append(norm, a)
			normPat = append(normPat, t.normalizer.normalize(a.content))
		} else {
			raw = append(raw, a)
			rawPat = append(rawPat, a.content)
		}
	}
	t.rawAdded = newAddedMatcher(raw, rawPat)
	t.normAdded = newAddedMatcher(norm, normPat)
}

// tokenContent reads a special token setting of tokenizer_config.json: a string, an
// AddedToken object {"content": ...}, or null.
func tokenContent(v jval) (string, error) {
	if v.missing() {
		return "", nil
	}
	if s, err := v.str(); err == nil {
		return s, nil
	}
	o, err := v.object()
	if err != nil {
		return "", v.errf("want a string or {\"content\": ...}, got %s", v.kind())
	}
	return o.get("content").str()
}

func (t *Tokenizer) parseConfig(v jval) error {
	var o jobj
	if !v.missing() {
		var err error
		if o, err = v.object(); err != nil {
			return err
		}
	}
	var err error
	for _, f := range []struct {
		key string
		dst *string
	}{{"bos_token", &t.bosToken}, {"eos_token", &t.eosToken}, {"unk_token", &t.unkToken}, {"pad_token", &t.padToken}} {
		if o.m == nil {
			break
		}
		if *f.dst, err = tokenContent(o.get(f.key)); err != nil {
			return err
		}
	}
	if o.m != nil {
		if t.chatTemplate, err = parseChatTemplate(o.get("chat_template")); err != nil {
			return err
		}
		if t.maxLength, err = o.integer("model_max_length", 0); err != nil {
			return err
		}
	}
	if id, ok := t.TokenID(t.bosToken); ok && t.bosToken != "" {
		t.bos = id
	}
	if id, ok := t.TokenID(t.eosToken); ok && t.eosToken != "" {
		t.eos = []int32{id}
	}
	if o.m == nil || (!o.has("add_bos_token") && !o.has("add_eos_token")) {
		if t.bos < 0 && t.post != nil {
			// No configured BOS: the special token the template puts first.
			if probe := t.post.process(nil); len(probe) > 0 {
				t.bos = probe[0]
				t.bosToken = t.tokens[probe[0]]
			}
		}
		return nil
	}
	// add_bos_token / add_eos_token decide (transformers rebuilds the post-processor
	// of Llama-style tokenizers from them); a missing one keeps what the template did.
	var probe []int32
	if t.post != nil {
		probe = t.post.process(nil)
	}
	addBOS, err := o.boolean("add_bos_token", len(probe) > 0 && probe[0] == t.bos)
	if err != nil {
		return err
	}
	addEOS, err := o.boolean("add_eos_token", len(probe) > 0 && len(t.eos) > 0 && probe[len(probe)-1] == t.eos[0])
	if err != nil {
		return err
	}
	var p postTemplate
	if addBOS && t.bos >= 0 {
		p.items = append(p.items, postItem{ids: []int32{t.bos}})
	}
	p.items = append(p.items, postItem{seq: true})
	if addEOS && len(t.eos) > 0 {
		p.items = append(p.items, postItem{ids: []int32{t.eos[0]}})
	}
	t.post = p
	return nil
}

func parseChatTemplate(v jval) (string, error) {
	if v.missing() {
		return "", nil
	}
	if s, err := v.str(); err == nil {
		return s, nil
	}
	list, err := v.array()
	if err != nil {
		return "", v.errf("want a string or a list of {\"name\", \"template\"}, got %s", v.kind())
	}
	for _, it := range list {
		o, err := it.object()
		if err != nil {
			return "", err
		}
		name, err := o.get("name").str()
		if err != nil {
			return "", err
		}
		tpl, err := o.get("template").str()
		if err != nil {
			return "", err
		}
		if name == "default" {
			return tpl, nil
		}
	}
	return "", nil
}

// Encode returns the ids of text. With addSpecial the post-processor adds the special
// tokens it declares (BOS for Llama), or those tokenizer_config.json's add_bos_token
// and add_eos_token ask for. Added tokens in the text (special ones included) encode
// to their ids. Invalid UTF-8 is encoded as U+FFFD.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int32 {
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	// Without a budget or a deadline the walk cannot stop early.
	ids, _ := t.encodeText(context.Background(), text, make([]int32, 0, len(text)/3+4), math.MaxInt)
	if addSpecial && t.post != nil {
		ids = t.post.process(ids)
	}
	return ids
}

// Decode returns the text of ids; with skipSpecial, added tokens marked special (BOS,
// EOS, chat markers) are left out. Unknown ids are ignored.
func (t *Tokenizer) Decode(ids []int32, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.tokens) || !t.known[id] || skipSpecial && t.special[id] {
			continue
		}
		toks = append(toks, t.tokens[id])
	}
	if t.dec == nil {
		return strings.Join(toks, " ")
	}
	return strings.Join(t.dec.decodeChain(toks), "")
}

// VocabSize is the number of token ids: one more than the largest id of the vocabulary
// and the added tokens.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a token (an added token or a vocabulary entry, in its
// vocabulary spelling: "▁the", "Ġthe").
func (t *Tokenizer) TokenID(token string) (int32, bool) {
	if id, ok := t.added[token]; ok {
		return id, true
	}
	id, ok := t.model.vocab[token]
	return id, ok
}

// Token returns the vocabulary spelling of id.
func (t *Tokenizer) Token(id int32) (string, bool) {
	if id < 0 || int(id) >= len(t.tokens) || !t.known[id] {
		return "", false
	}
	return t.tokens[id], true
}

// BOS returns the beginning-of-sequence id: tokenizer_config.json's bos_token, else the
// special token the post-processor puts first.
func (t *Tokenizer) BOS() (int32, bool) { return t.bos, t.bos >= 0 }

// EOS returns the end-of-sequence ids from tokenizer_config.json's eos_token (a string
// or {"content": ...}); none without it.
func (t *Tokenizer) EOS() []int32 { return append([]int32(nil), t.eos...) }

// IsSpecial reports whether id is an added token marked special.
func (t *Tokenizer) IsSpecial(id int32) bool {
	return id >= 0 && int(id) < len(t.special) && t.special[id]
}

// ModelMaxLength is tokenizer_config.json's model_max_length (0 when absent; huge
// placeholder values are kept as they are, capped at 2^62).
func (t *Tokenizer) ModelMaxLength() int64 { return t.maxLength }
