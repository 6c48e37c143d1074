package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode"

	"servelab/internal/minheap"
)

// TrainConfig describes a BPE vocabulary to train.
type TrainConfig struct {
	// VocabSize is the exact number of token ids, special tokens included.
	VocabSize int
	// Kind is "byte-level" (Llama-3 style: Llama-3's split pattern, GPT-2 byte
	// alphabet, ignore_merges) or "sentencepiece" (Llama-2 style: "▁" for spaces,
	// <0x00>..<0xFF> byte-fallback tokens, digits split, BOS added by
	// add_bos_token).
	Kind string
	// Special tokens, such as "<unk>", "<s>", "</s>" or "<|begin_of_text|>",
	// "<|end_of_text|>". "<unk>" is the unknown token; of the others, the first is BOS
	// and the second EOS. Sentencepiece puts them first (ids 0, 1, ...), byte-level
	// last, as Llama-2 and Llama-3 do.
	Special []string
}

const (
	KindByteLevel     = "byte-level"
	KindSentencePiece = "sentencepiece"
)

// llama3Pattern is Llama-3's pre-tokenizer split.
const llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Train learns a BPE vocabulary of cfg.VocabSize tokens from corpus and returns the
// contents of tokenizer.json and tokenizer_config.json, in the format HF writes, for
// Parse or Load. Merges are learned greedily from pair counts kept up to date
// incrementally (ties go to the pair of lower ids), so the output is deterministic. It
// fails when the corpus cannot fill the vocabulary.
func Train(corpus string, cfg TrainConfig) (tokenizerJSON, tokenizerConfigJSON []byte, err error) {
	seen := map[string]bool{}
	var unk string
	var named []string // specials other than <unk>
	for i, s := range cfg.Special {
		if s == "" || seen[s] {
			return nil, nil, fmt.Errorf("tokenizer: TrainConfig.Special[%d]: empty or repeated token %q", i, s)
		}
		seen[s] = true
		if s == "<unk>" {
			unk = s
		} else {
			named = append(named, s)
		}
	}
	var bos, eos string
	if len(named) > 0 {
		bos = named[0]
	}
	if len(named) > 1 {
		eos = named[1]
	}
	tr := &trainer{ids: map[string]int32{}}
	var target int
	switch cfg.Kind {
	case KindByteLevel:
		for b := 0; b < 256; b++ {
			tr.add(string(byteRune[b]))
		}
		target = cfg.VocabSize - len(cfg.Special)
		counts := map[string]int{}
		sc := knownPatterns[llama3Pattern]
		for _, m := range sc.find(corpus, nil) {
			counts[byteLevelString(corpus[m[0]:m[1]])]++
		}
		tr.setWords(counts)
	case KindSentencePiece:
		for _, s := range cfg.Special {
			tr.add(s)
		}
		for b := 0; b < 256; b++ {
			tr.add(byteTokenName(byte(b)))
		}
		target = cfg.VocabSize
		counts := spWords(corpus)
		chars := map[rune]int{}
		for w, c := range counts {
			for _, r := range w {
				chars[r] += c
			}
		}
		alphabet := make([]rune, 0, len(chars))
		for r := range chars {
			alphabet = append(alphabet, r)
		}
		sort.Slice(alphabet, func(i, j int) bool {
			a, b := alphabet[i], alphabet[j]
			return chars[a] > chars[b] || chars[a] == chars[b] && a < b
		})
		if len(tr.tokens)+len(alphabet) > target {
			return nil, nil, fmt.Errorf("tokenizer: VocabSize %d is too small for %d special, 256 byte and %d character tokens", cfg.VocabSize, len(cfg.Special), len(alphabet))
		}
		for _, r := range alphabet {
			tr.add(string(r))
		}
		tr.setWords(counts)
	default:
		return nil, nil, fmt.Errorf("tokenizer: TrainConfig.Kind %q: want %q or %q", cfg.Kind, KindByteLevel, KindSentencePiece)
	}
	extra := cfg.VocabSize - target // special tokens outside the trained vocabulary
	if len(tr.tokens) > target {
		return nil, nil, fmt.Errorf("tokenizer: VocabSize %d is too small: the base alphabet and special tokens need %d", cfg.VocabSize, len(tr.tokens)+extra)
	}
	if !tr.train(target) {
		return nil, nil, fmt.Errorf("tokenizer: VocabSize %d: the corpus supports at most %d tokens", cfg.VocabSize, len(tr.tokens)+extra)
	}
	if cfg.Kind == KindByteLevel {
		return tr.byteLevelJSON(cfg.Special, bos, eos)
	}
	return tr.sentencePieceJSON(cfg.Special, unk, bos, eos)
}

// spWords cuts the corpus into SentencePiece-style training words: spaces become "▁"
// and start words, digits stand alone, and other whitespace is left to byte fallback.
func spWords(corpus string) map[string]int {
	counts := map[string]int{}
	text := "▁" + strings.ReplaceAll(corpus, " ", "▁")
	start := 0
	flush := func(end int) {
		if end > start {
			counts[text[start:end]]++
		}
		start = end
	}
	prevOther := false // the previous rune is part of a word and not "▁"
	for i, r := range text {
		switch {
		case r == '▁':
			if prevOther {
				flush(i)
			}
			prevOther = false
		case isS(r) || unicode.IsControl(r):
			flush(i)
			start = i + len(string(r))
			prevOther = false
		case isN(r):
			flush(i)
			flush(i + len(string(r)))
			prevOther = false
		default:
			prevOther = true
		}
	}
	flush(len(text))
	return counts
}

type trainer struct {
	tokens []string
	ids    map[string]int32
	merges [][2]int32
	words  [][]int32
	counts []int
	pairs  map[uint64]int
	where  map[uint64][]int32
	heap   minheap.Heap[pairCount]
}

func (tr *trainer) add(s string) int32 {
	if id, ok := tr.ids[s]; ok {
		return id
	}
	id := int32(len(tr.tokens))
	tr.tokens = append(tr.tokens, s)
	tr.ids[s] = id
	return id
}

// setWords loads the word counts (in sorted order, for determinism) as symbol lists.
func (tr *trainer) setWords(counts map[string]int) {
	words := make([]string, 0, len(counts))
	for w := range counts {
		words = append(words, w)
	}
	sort.Strings(words)
	tr.pairs = map[uint64]int{}
	tr.where = map[uint64][]int32{}
	for wi, w := range words {
		var syms []int32
		for _, r := range w {
			id, ok := tr.ids[string(r)]
			if !ok {
				panic("tokenizer: training word outside the alphabet")
			}
			syms = append(syms, id)
		}
		tr.words = append(tr.words, syms)
		tr.counts = append(tr.counts, counts[w])
		for i := 0; i+1 < len(syms); i++ {
			k := pairKey(syms[i], syms[i+1])
			tr.pairs[k] += counts[w]
			tr.addWhere(k, int32(wi))
		}
	}
	for k, c := range tr.pairs {
		tr.heap = append(tr.heap, pairCount{c, k})
	}
	tr.heap.Init()
}

func (tr *trainer) addWhere(k uint64, w int32) {
	l := tr.where[k]
	if len(l) == 0 || l[len(l)-1] != w {
		tr.where[k] = append(l, w)
	}
}

// train merges the most frequent pair until the vocabulary has target tokens; false
// when no pair is left before that.
func (tr *trainer) train(target int) bool {
	touched := map[uint64]bool{}
	for len(tr.tokens) < target {
		if len(tr.heap) == 0 {
			return false
		}
		top := tr.heap.Pop()
		cur := tr.pairs[top.key]
		if cur != top.count {
			if cur > 0 {
				tr.heap.Push(pairCount{cur, top.key})
			}
			continue
		}
		a, b := int32(top.key>>32), int32(uint32(top.key))
		id := tr.add(tr.tokens[a] + tr.tokens[b])
		tr.merges = append(tr.merges, [2]int32{a, b})
		list := tr.where[top.key]
		delete(tr.where, top.key)
		clear(touched)
		for _, w := range list {
			tr.apply(w, a, b, id, touched)
		}
		delete(tr.pairs, top.key)
		keys := make([]uint64, 0, len(touched))
		for k := range touched {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
		for _, k := range keys {
			if c := tr.pairs[k]; c > 0 {
				tr.heap.Push(pairCount{c, k})
			}
		}
	}
	return true
}

// apply merges (a, b) into id in word w, updating the pair counts.
func (tr *trainer) apply(w int32, a, b, id int32, touched map[uint64]bool) {
	syms := tr.words[w]
	c := tr.counts[w]
	found := false
	for i := 0; i+1 < len(syms); i++ {
		if syms[i] == a && syms[i+1] == b {
			found = true
			break
		}
	}
	if !found {
		return
	}
	for i := 0; i+1 < len(syms); i++ {
		tr.pairs[pairKey(syms[i], syms[i+1])] -= c
	}
	j := 0
	for i := 0; i < len(syms); j++ {
		if i+1 < len(syms) && syms[i] == a && syms[i+1] == b {
			syms[j] = id
			i += 2
		} else {
			syms[j] = syms[i]
			i++
		}
	}
	syms = syms[:j]
	tr.words[w] = syms
	for i := 0; i+1 < len(syms); i++ {
		k := pairKey(syms[i], syms[i+1])
		tr.pairs[k] += c
		if syms[i] == id || syms[i+1] == id {
			tr.addWhere(k, w)
			touched[k] = true
		}
	}
}

type pairCount struct {
	count int
	key   uint64
}

// Less pops the highest count first, then the lowest pair.
func (p pairCount) Less(o pairCount) bool {
	return p.count > o.count || p.count == o.count && p.key < o.key
}

// q is s as a JSON string, without HTML escaping ("<s>" stays readable).
func q(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func (tr *trainer) vocabJSON(b *bytes.Buffer, tokens []string) {
	b.WriteString("{")
	for id, tok := range tokens {
		if id > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(b, "\n      %s: %d", q(tok), id)
	}
	b.WriteString("\n    }")
}

func (tr *trainer) mergesJSON(b *bytes.Buffer) {
	b.WriteString("[")
	for i, m := range tr.merges {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(b, "\n      %s", q(tr.tokens[m[0]]+" "+tr.tokens[m[1]]))
	}
	b.WriteString("\n    ]")
}

func addedTokensJSON(b *bytes.Buffer, special []string, id func(string) int) {
	b.WriteString("[")
	for i, s := range special {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(b, "\n    {\"id\": %d, \"content\": %s, \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}", id(s), q(s))
	}
	b.WriteString("\n  ]")
}

// bosTemplate is a TemplateProcessing that puts bos before the sequence.
func bosTemplate(bos string, id int) string {
	return fmt.Sprintf(`{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": %[1]s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"SpecialToken": {"id": %[1]s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": %[1]s, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {%[1]s: {"id": %[1]s, "ids": [%[2]d], "tokens": [%[1]s]}}}`, q(bos), id)
}

func nullOr(s string) string {
	if s == "" {
		return "null"
	}
	return q(s)
}

func (tr *trainer) byteLevelJSON(special []string, bos, eos string) ([]byte, []byte, error) {
	base := len(tr.tokens)
	specialID := func(s string) int { return base + indexOf(special, s) }
	post := `{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}`
	if bos != "" {
		post = `{"type": "Sequence", "processors": [` + post + `, ` + bosTemplate(bos, specialID(bos)) + `]}`
	}
	var b bytes.Buffer
	b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": ")
	addedTokensJSON(&b, special, specialID)
	b.WriteString(",\n  \"normalizer\": null,\n  \"pre_tokenizer\": ")
	fmt.Fprintf(&b, `{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": %s}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}`, q(llama3Pattern))
	b.WriteString(",\n  \"post_processor\": " + post)
	b.WriteString(",\n  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true}")
	b.WriteString(",\n  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": true,\n    \"vocab\": ")
	tr.vocabJSON(&b, tr.tokens)
	b.WriteString(",\n    \"merges\": ")
	tr.mergesJSON(&b)
	b.WriteString("\n  }\n}\n")
	cfg := fmt.Sprintf("{\n  \"bos_token\": %s,\n  \"eos_token\": %s,\n  \"clean_up_tokenization_spaces\": false,\n  \"model_input_names\": [\"input_ids\", \"attention_mask\"],\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n", nullOr(bos), nullOr(eos))
	return b.Bytes(), []byte(cfg), nil
}

func (tr *trainer) sentencePieceJSON(special []string, unk, bos, eos string) ([]byte, []byte, error) {
	specialID := func(s string) int { return indexOf(special, s) }
	post := "null"
	if bos != "" {
		post = bosTemplate(bos, specialID(bos))
	}
	var b bytes.Buffer
	b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": ")
	addedTokensJSON(&b, special, specialID)
	b.WriteString(",\n  \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"▁\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"▁\"}]}")
	b.WriteString(",\n  \"pre_tokenizer\": null")
	b.WriteString(",\n  \"post_processor\": " + post)
	b.WriteString(",\n  \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"▁\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}")
	fmt.Fprintf(&b, ",\n  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": %s,\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": true,\n    \"byte_fallback\": true,\n    \"ignore_merges\": false,\n    \"vocab\": ", nullOr(unk))
	tr.vocabJSON(&b, tr.tokens)
	b.WriteString(",\n    \"merges\": ")
	tr.mergesJSON(&b)
	b.WriteString("\n  }\n}\n")
	cfg := fmt.Sprintf("{\n  \"add_bos_token\": %t,\n  \"add_eos_token\": false,\n  \"bos_token\": %s,\n  \"eos_token\": %s,\n  \"unk_token\": %s,\n  \"clean_up_tokenization_spaces\": false,\n  \"legacy\": true,\n  \"tokenizer_class\": \"LlamaTokenizer\"\n}\n", bos != "", nullOr(bos), nullOr(eos), nullOr(unk))
	return b.Bytes(), []byte(cfg), nil
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}
