package tokenizer

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

//go:embed corpus.txt
var corpus string

// DefaultCorpus is the text synthesised models' tokenizers are trained on: prose written
// for this project about serving language models, so it has no licence strings attached.
func DefaultCorpus() string { return corpus }

// TrainConfig sets up BPE training.
type TrainConfig struct {
	// VocabSize is the target number of ids, specials included; training stops earlier
	// when no pair occurs twice.
	VocabSize int
	// Kind is "byte-level" or "sentencepiece".
	Kind string
	// Special tokens get the first ids, in order. The first one that looks like a
	// beginning-of-text token ("<s>", "<|begin_of_text|>") becomes BOS, the first
	// end-of-text one ("</s>", "<|end_of_text|>") EOS, and "<unk>" the unknown token.
	Special []string
}

// Train learns a BPE vocabulary from corpus and returns tokenizer.json and
// tokenizer_config.json contents. The result depends only on its inputs.
func Train(corpus string, cfg TrainConfig) (tokenizerJSON, tokenizerConfigJSON []byte, err error) {
	kind := Kind(cfg.Kind)
	if kind != ByteLevel && kind != SentencePiece {
		return nil, nil, fmt.Errorf("tokenizer: train: kind %q, want byte-level or sentencepiece", cfg.Kind)
	}
	var tokens []string
	vocab := map[string]int32{}
	addToken := func(s string) int32 {
		if id, ok := vocab[s]; ok {
			return id
		}
		id := int32(len(tokens))
		tokens = append(tokens, s)
		vocab[s] = id
		return id
	}
	for _, s := range cfg.Special {
		if _, dup := vocab[s]; dup || s == "" {
			return nil, nil, fmt.Errorf("tokenizer: train: special token %q empty or repeated", s)
		}
		addToken(s)
	}
	// Words and their counts.
	counts := map[string]int{}
	switch kind {
	case ByteLevel:
		enc, _ := byteLevelTables()
		for b := range 256 {
			addToken(string(enc[b]))
		}
		splitWords(corpus, func(w string) {
			var sb strings.Builder
			for i := 0; i < len(w); i++ {
				sb.WriteRune(enc[w[i]])
			}
			counts[sb.String()]++
		})
	case SentencePiece:
		for b := range 256 {
			addToken(fmt.Sprintf("<0x%02X>", b))
		}
		norm := spSpace + strings.ReplaceAll(corpus, " ", spSpace)
		runeCount := map[rune]int{}
		for _, r := range norm {
			runeCount[r]++
		}
		runes := make([]rune, 0, len(runeCount))
		for r := range runeCount {
			runes = append(runes, r)
		}
		slices.SortFunc(runes, func(a, b rune) int {
			if runeCount[a] != runeCount[b] {
				return runeCount[b] - runeCount[a]
			}
			return int(a - b)
		})
		for _, r := range runes {
			addToken(string(r))
		}
		splitSentencePiece(norm, func(w string) { counts[w]++ })
	}
	if cfg.VocabSize < len(tokens) {
		return nil, nil, fmt.Errorf("tokenizer: train: vocab size %d is below the %d base and special tokens", cfg.VocabSize, len(tokens))
	}
	type word struct {
		syms  []int32
		count int
	}
	keys := make([]string, 0, len(counts))
	for w := range counts {
		keys = append(keys, w)
	}
	slices.Sort(keys)
	words := make([]word, 0, len(keys))
	for _, k := range keys {
		var syms []int32
		for _, r := range k {
			syms = append(syms, vocab[string(r)])
		}
		words = append(words, word{syms, counts[k]})
	}
	var merges []string
	for len(tokens) < cfg.VocabSize {
		pairs := map[[2]int32]int{}
		for _, w := range words {
			for i := 0; i+1 < len(w.syms); i++ {
				pairs[[2]int32{w.syms[i], w.syms[i+1]}] += w.count
			}
		}
		var best [2]int32
		bestCount := 1
		for p, c := range pairs {
			if c > bestCount || c == bestCount && bestCount > 1 && (p[0] < best[0] || p[0] == best[0] && p[1] < best[1]) {
				best, bestCount = p, c
			}
		}
		if bestCount < 2 {
			break
		}
		a, b := tokens[best[0]], tokens[best[1]]
		// addToken reuses the id when another pair already spelled this token.
		id := addToken(a + b)
		merges = append(merges, a+" "+b)
		for wi := range words {
			s := words[wi].syms
			out := s[:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, id)
					i++
					continue
				}
				out = append(out, s[i])
			}
			words[wi].syms = out
		}
	}
	return encodeTrained(kind, tokens, merges, cfg.Special)
}

func encodeTrained(kind Kind, tokens, merges, special []string) ([]byte, []byte, error) {
	var bos, eos, unk string
	for _, s := range special {
		l := strings.ToLower(s)
		switch {
		case bos == "" && (s == "<s>" || strings.Contains(l, "begin_of_text") || strings.Contains(l, "bos")):
			bos = s
		case eos == "" && (s == "</s>" || strings.Contains(l, "end_of_text") || strings.Contains(l, "eos")):
			eos = s
		case s == "<unk>":
			unk = s
		}
	}
	vocab := make(map[string]int32, len(tokens))
	for i, s := range tokens {
		vocab[s] = int32(i)
	}
	var added []map[string]any
	for i, s := range special {
		added = append(added, map[string]any{
			"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true,
		})
	}
	model := map[string]any{
		"type": "BPE", "dropout": nil, "continuing_subword_prefix": nil, "end_of_word_suffix": nil,
		"fuse_unk": false, "byte_fallback": kind == SentencePiece, "ignore_merges": false,
		"vocab": vocab, "merges": merges, "unk_token": nil,
	}
	if unk != "" {
		model["unk_token"] = unk
	}
	doc := map[string]any{"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": added, "model": model}
	var post any
	if bos != "" {
		post = map[string]any{
			"type":           "TemplateProcessing",
			"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": bos, "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair":           []any{map[string]any{"SpecialToken": map[string]any{"id": bos, "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{bos: map[string]any{"id": bos, "ids": []int32{vocab[bos]}, "tokens": []string{bos}}},
		}
	}
	doc["post_processor"] = post
	switch kind {
	case ByteLevel:
		doc["normalizer"] = nil
		doc["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": gpt4Pattern}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		}}
		doc["decoder"] = map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}
	case SentencePiece:
		doc["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": spSpace},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": spSpace},
		}}
		doc["pre_tokenizer"] = nil
		doc["decoder"] = map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": spSpace}, "content": " "},
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
			map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0},
		}}
	}
	tj, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	cfg := map[string]any{"model_max_length": 1 << 20, "clean_up_tokenization_spaces": false, "tokenizer_class": "PreTrainedTokenizerFast"}
	if bos != "" {
		cfg["bos_token"] = bos
		if kind == SentencePiece {
			// Llama-2 style configs say so; byte-level ones rely on the post-processor.
			cfg["add_bos_token"] = true
		}
	}
	if eos != "" {
		cfg["eos_token"] = eos
	}
	if unk != "" {
		cfg["unk_token"] = unk
	}
	cj, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	return append(tj, '\n'), append(cj, '\n'), nil
}

// gpt4Pattern is the pre-tokenizer regex Llama-3 and Qwen2 ship, which splitWords implements.
const gpt4Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
