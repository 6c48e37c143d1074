package tokenizer

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// tokJSON builds a tokenizer.json: a BPE model with the vocabulary (ids in order),
// merges, extra model members (raw JSON, each starting with a comma), and extra
// top-level members (raw JSON, such as `"normalizer": {...}`).
func tokJSON(vocab, merges []string, model string, top ...string) []byte {
	v := map[string]int{}
	for i, tok := range vocab {
		v[tok] = i
	}
	vb, _ := json.Marshal(v)
	if merges == nil {
		merges = []string{}
	}
	mb, _ := json.Marshal(merges)
	s := fmt.Sprintf(`{"model": {"type": "BPE", "vocab": %s, "merges": %s%s}`, vb, mb, model)
	for _, t := range top {
		s += ", " + t
	}
	return []byte(s + "}")
}

func mustParse(t *testing.T, tj []byte, cfg string) *Tokenizer {
	t.Helper()
	var c []byte
	if cfg != "" {
		c = []byte(cfg)
	}
	tok, err := Parse(tj, c)
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, tj)
	}
	return tok
}

func splitWith(t *testing.T, js, s string, first bool) []string {
	t.Helper()
	p, err := parsePreTokenizer(jval{file: "test", raw: json.RawMessage(js)})
	if err != nil {
		t.Fatalf("parsePreTokenizer(%s): %v", js, err)
	}
	var out []string
	for _, pc := range p.split(nil, piece{s, first}) {
		out = append(out, pc.s)
	}
	return out
}

func TestPreTokenizers(t *testing.T) {
	split := func(behavior string) string {
		return `{"type": "Split", "pattern": {"String": "-"}, "behavior": "` + behavior + `", "invert": false}`
	}
	for _, tc := range []struct {
		name, js, in string
		notFirst     bool
		want         []string
	}{
		// The split behaviors, on the example of HF's documentation.
		{"removed", split("Removed"), "the-final--countdown", false, []string{"the", "final", "countdown"}},
		{"isolated", split("Isolated"), "the-final--countdown", false, []string{"the", "-", "final", "-", "-", "countdown"}},
		{"merged-prev", split("MergedWithPrevious"), "the-final--countdown", false, []string{"the-", "final-", "-", "countdown"}},
		{"merged-next", split("MergedWithNext"), "the-final--countdown", false, []string{"the", "-final", "-", "-countdown"}},
		{"contiguous", split("Contiguous"), "the-final--countdown", false, []string{"the", "-", "final", "--", "countdown"}},
		{"invert", `{"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Removed", "invert": true}`, "ab12cd345", false, []string{"12", "345"}},
		{"regex-unicode", `{"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed"}`, "a\u3000b c", false, []string{"a", "b", "c"}},
		{"digits", `{"type": "Digits", "individual_digits": true}`, "a123b", false, []string{"a", "1", "2", "3", "b"}},
		{"digits-runs", `{"type": "Digits", "individual_digits": false}`, "a123b", false, []string{"a", "123", "b"}},
		{"punctuation", `{"type": "Punctuation"}`, "Hey, friend!", false, []string{"Hey", ",", " friend", "!"}},
		{"whitespace", `{"type": "Whitespace"}`, "Hey friend!  x", false, []string{"Hey", "friend", "!", "x"}},
		{"whitespace-split", `{"type": "WhitespaceSplit"}`, "Hey friend!\tx", false, []string{"Hey", "friend!", "x"}},
		{"bert", `{"type": "BertPreTokenizer"}`, "Hey, you!", false, []string{"Hey", ",", "you", "!"}},
		{"metaspace", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}`, "Hey   friend!", false, []string{"▁Hey", "▁", "▁", "▁friend!"}},
		{"metaspace-nosplit", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false}`, "Hey friend!", false, []string{"▁Hey▁friend!"}},
		{"metaspace-first", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}`, "Hey you", false, []string{"▁Hey", "▁you"}},
		{"metaspace-first-later", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}`, "Hey you", true, []string{"Hey", "▁you"}},
		{"metaspace-never", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"}`, "Hey you", false, []string{"Hey", "▁you"}},
		{"metaspace-legacy", `{"type": "Metaspace", "replacement": "▁", "add_prefix_space": false}`, "Hey you", false, []string{"Hey", "▁you"}},
		{"bytelevel-prefix", `{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}`, "Hello  world's", false, []string{"ĠHello", "Ġ", "Ġworld", "'s"}},
		{"bytelevel", `{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}`, "Hello world", false, []string{"Hello", "Ġworld"}},
		{"bytelevel-noregex", `{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}`, "Hello world", false, []string{"HelloĠworld"}},
		{"sequence", `{"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": false}]}`, "ab12 c3", false, []string{"ab", "12", "c", "3"}},
		{"llama3-split", `{"type": "Split", "pattern": {"Regex": ` + q(llama3Pattern) + `}, "behavior": "Isolated"}`, "I'M 12345 ok!\n\n", false, []string{"I", "'M", " ", "123", "45", " ok", "!\n\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := splitWith(t, tc.js, tc.in, !tc.notFirst)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("split %q -want +got:\n%s", tc.in, diff)
			}
		})
	}
}

func TestNormalizers(t *testing.T) {
	for _, tc := range []struct{ js, in, want string }{
		{`{"type": "NFKC"}`, "ﬁ①", "fi1"},
		{`{"type": "NFC"}`, "e\u0301", "é"},
		{`{"type": "NFD"}`, "é", "e\u0301"},
		{`{"type": "NFKD"}`, "ﬁ", "fi"},
		{`{"type": "Lowercase"}`, "ÀB", "àb"},
		{`{"type": "Strip", "strip_left": true, "strip_right": false}`, "  a  ", "a  "},
		{`{"type": "StripAccents"}`, "e\u0301a", "ea"},
		{`{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}`, "a   b  c", "a b c"},
		{`{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}`, "a b", "a▁b"},
		{`{"type": "Prepend", "prepend": "▁"}`, "", ""},
		{`{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}`, "Hi you", "▁Hi▁you"},
	} {
		n, err := parseNormalizer(jval{file: "test", raw: json.RawMessage(tc.js)})
		if err != nil {
			t.Fatalf("%s: %v", tc.js, err)
		}
		if got := n.normalize(tc.in); got != tc.want {
			t.Errorf("%s on %q = %q, want %q", tc.js, tc.in, got, tc.want)
		}
	}
}

func TestModelOptions(t *testing.T) {
	abc := []string{"a", "b", "c", "ab", "abc"}
	for _, tc := range []struct {
		name string
		tj   []byte
		in   string
		want []int32
	}{
		{"merges", tokJSON(abc, []string{"a b"}, ""), "abc", []int32{3, 2}},
		{"ignore_merges", tokJSON(abc, []string{"a b"}, `, "ignore_merges": true`), "abc", []int32{4}},
		{"merge-order", tokJSON([]string{"a", "b", "c", "ab", "bc", "abc"}, []string{"b c", "a b", "a bc"}, ""), "abc", []int32{5}},
		{"leftmost", tokJSON([]string{"a", "aa"}, []string{"a a"}, ""), "aaa", []int32{1, 0}},
		{"pairs", []byte(`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}}`), "abab", []int32{2, 2}},
		{"unk-fuse", tokJSON([]string{"<unk>", "a", "b"}, nil, `, "unk_token": "<unk>", "fuse_unk": true`), "axyb", []int32{1, 0, 2}},
		{"unk", tokJSON([]string{"<unk>", "a", "b"}, nil, `, "unk_token": "<unk>"`), "axyb", []int32{1, 0, 0, 2}},
		{"no-unk", tokJSON([]string{"a", "b"}, nil, ""), "axyb", []int32{0, 1}},
		{"byte-fallback", tokJSON([]string{"<unk>", "a", "<0xC3>", "<0xA9>"}, nil, `, "unk_token": "<unk>", "byte_fallback": true`), "aéè", []int32{1, 2, 3, 0}},
		{"subword-prefix", tokJSON([]string{"h", "##e", "##y", "##ey"}, []string{"##e ##y"}, `, "continuing_subword_prefix": "##"`), "hey", []int32{0, 3}},
		{"word-suffix", tokJSON([]string{"a", "b</w>", "ab</w>"}, []string{"a b</w>"}, `, "end_of_word_suffix": "</w>"`), "ab", []int32{2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := mustParse(t, tc.tj, "")
			if diff := cmp.Diff(tc.want, tok.Encode(tc.in, false), ids); diff != "" {
				t.Errorf("Encode(%q) -want +got:\n%s", tc.in, diff)
			}
		})
	}
}

func TestAddedTokens(t *testing.T) {
	vocab := []string{"a", "b", " ", "x", "H", "E", "L", "O", "h", "e", "l", "o"}
	added := func(extra string) string {
		return `"added_tokens": [{"id": 20, "content": "<mask>", "special": true` + extra + `}, {"id": 21, "content": "<m>", "special": false, "normalized": false}]`
	}
	for _, tc := range []struct {
		name  string
		extra string
		in    string
		want  []int32
	}{
		{"plain", "", "a <mask> b", []int32{0, 2, 20, 2, 1}},
		{"longest", "", "a<mask><m>", []int32{0, 20, 21}},
		{"lstrip", `, "lstrip": true`, "a  <mask> b", []int32{0, 20, 2, 1}},
		{"rstrip", `, "rstrip": true`, "a <mask>  b", []int32{0, 2, 20, 1}},
		// "x<mask>" is no word of its own: its characters stay text, and all but the
		// "a" of "mask" are outside the vocabulary (no unk): dropped.
		{"single-word", `, "single_word": true`, "<mask> x<mask> <mask>", []int32{20, 2, 3, 0, 2, 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := mustParse(t, tokJSON(vocab, nil, "", added(tc.extra)), "")
			got := tok.Encode(tc.in, false)
			if diff := cmp.Diff(tc.want, got, ids); diff != "" {
				t.Errorf("Encode(%q) -want +got:\n%s", tc.in, diff)
			}
		})
	}
	// A normalized added token matches the normalized text.
	tj := tokJSON(vocab, nil, "", `"normalizer": {"type": "Lowercase"}`,
		`"added_tokens": [{"id": 30, "content": "HELLO", "special": false, "normalized": true}, {"id": 31, "content": "OLE", "special": false, "normalized": false}]`)
	tok := mustParse(t, tj, "")
	if diff := cmp.Diff([]int32{30, 2, 31, 2, 11, 10, 9}, tok.Encode("HeLLo OLE ole", false), ids); diff != "" {
		t.Errorf("normalized added tokens -want +got:\n%s", diff)
	}
	if got := tok.Decode([]int32{30, 2, 31}, true); got != "HELLO   OLE" {
		t.Errorf("Decode = %q (non-special added tokens are kept; no decoder joins with spaces)", got)
	}
}

func TestPostProcessors(t *testing.T) {
	vocab := []string{"<s>", "</s>", "a"}
	tmpl := `"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}}`
	bosOnly := `"post_processor": {"type": "Sequence", "processors": [{"type": "ByteLevel"}, {"type": "TemplateProcessing", "single": ["<s>", "$A"], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}]}`
	for _, tc := range []struct {
		name, post, cfg string
		want            []int32
		bos             int32
	}{
		{"template", tmpl, "", []int32{0, 2, 1}, 0},
		{"compact", bosOnly, "", []int32{0, 2}, 0},
		{"add_eos", bosOnly, `{"bos_token": "<s>", "eos_token": "</s>", "add_eos_token": true}`, []int32{0, 2, 1}, 0},
		{"no_bos", tmpl, `{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": false}`, []int32{2, 1}, 0},
		{"both", `"post_processor": null`, `{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true, "add_eos_token": true}`, []int32{0, 2, 1}, 0},
		{"bert", `"post_processor": {"type": "BertProcessing", "cls": ["<s>", 0], "sep": ["</s>", 1]}`, "", []int32{0, 2, 1}, 0},
		{"none", `"post_processor": {"type": "ByteLevel"}`, "", []int32{2}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := mustParse(t, tokJSON(vocab, nil, "", tc.post), tc.cfg)
			if diff := cmp.Diff(tc.want, tok.Encode("a", true), ids); diff != "" {
				t.Errorf("Encode(a, true) -want +got:\n%s", diff)
			}
			if diff := cmp.Diff([]int32{2}, tok.Encode("a", false), ids); diff != "" {
				t.Errorf("Encode(a, false) -want +got:\n%s", diff)
			}
			if bos, _ := tok.BOS(); bos != tc.bos {
				t.Errorf("BOS = %d, want %d", bos, tc.bos)
			}
		})
	}
}

func TestDecoders(t *testing.T) {
	for _, tc := range []struct {
		name, dec string
		vocab     []string
		ids       []int32
		want      string
	}{
		{"metaspace", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}`, []string{"▁▁a", "▁b"}, []int32{0, 1, 0}, "a b  a"},
		{"metaspace-never", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"}`, []string{"▁a", "▁b"}, []int32{0, 1}, " a b"},
		{"strip", `{"type": "Sequence", "decoders": [{"type": "Fuse"}, {"type": "Strip", "content": "x", "start": 2, "stop": 1}]}`, []string{"x", "a"}, []int32{0, 0, 0, 1, 0, 0}, "xax"},
		{"wordpiece", `{"type": "WordPiece", "prefix": "##", "cleanup": true}`, []string{"hel", "##lo", "world", "."}, []int32{0, 1, 2, 3}, "hello world."},
		{"bpe-suffix", `{"type": "BPEDecoder", "suffix": "</w>"}`, []string{"a</w>", "b", "c</w>"}, []int32{0, 1, 2}, "a bc"},
		{"byte-fallback", `{"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}`, []string{"<0xE2>", "<0x82>", "<0xAC>", "a"}, []int32{0, 1, 2, 3, 0, 1, 3}, "€a��a"},
		{"bytelevel", `{"type": "ByteLevel"}`, []string{"Ġhi", "âĤ", "¬", "<x y>"}, []int32{0, 1, 2, 3, 1}, " hi€<x y>\uFFFD"},
		{"none", `null`, []string{"a", "b"}, []int32{0, 1}, "a b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := mustParse(t, tokJSON(tc.vocab, nil, "", `"decoder": `+tc.dec), "")
			if got := tok.Decode(tc.ids, false); got != tc.want {
				t.Errorf("Decode(%v) = %q, want %q", tc.ids, got, tc.want)
			}
			checkStream(t, tok, tc.ids)
		})
	}
}

func TestParseErrors(t *testing.T) {
	okModel := `"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}`
	for _, tc := range []struct{ tj, cfg, want string }{
		{`not json`, "", "tokenizer.json: (top level): want an object"},
		{`{}`, "", "tokenizer.json: model: want an object, got nothing"},
		{`{"model": {"type": "Unigram", "vocab": []}}`, "", `tokenizer.json: model.type: unsupported model "Unigram"`},
		{`{"model": {"vocab": {"a": "x"}, "merges": []}}`, "", "tokenizer.json: model.vocab.a: want an integer, got a string"},
		{`{"model": {"vocab": {"a b": -1}, "merges": []}}`, "", `tokenizer.json: model.vocab["a b"]: id -1 out of range`},
		{`{"model": {"vocab": {"a": 0, "b": 0}, "merges": []}}`, "", `tokenizer.json: model.vocab.b: id 0 is also "a"'s`},
		{`{"model": {"vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", "a c"]}}`, "", `tokenizer.json: model.merges[1]: "c" is not in the vocabulary`},
		{`{"model": {"vocab": {"a": 0}, "merges": ["a"]}}`, "", `tokenizer.json: model.merges[0]: want "a b", got "a"`},
		{`{"model": {"vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"], 3]}}`, "", `tokenizer.json: model.merges[1]: want "a b" or ["a", "b"], got a number`},
		{`{"model": {"vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}`, "", `tokenizer.json: model.merges[0]: merged token "ab" is not in the vocabulary`},
		{`{"model": {"vocab": {"a": 0}, "merges": {}}}`, "", `tokenizer.json: model.merges: want an array, got an object`},
		{`{` + okModel + `, "normalizer": {"type": "Precompiled"}}`, "", `tokenizer.json: normalizer.type: unsupported normalizer "Precompiled"`},
		{`{` + okModel + `, "normalizer": {"type": "Replace", "pattern": {"Regex": "("}, "content": ""}}`, "", `tokenizer.json: normalizer.pattern.Regex: regex "(" is not supported`},
		{`{` + okModel + `, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "UnicodeScripts"}]}}`, "", `tokenizer.json: pre_tokenizer.pretokenizers[1].type: unsupported pre_tokenizer "UnicodeScripts"`},
		{`{` + okModel + `, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+(?!\\S)"}, "behavior": "Isolated"}}`, "", `tokenizer.json: pre_tokenizer.pattern.Regex: regex "\\s+(?!\\S)" is not supported`},
		{`{` + okModel + `, "pre_tokenizer": {"type": "Split", "pattern": {"String": "x"}, "behavior": "Sideways"}}`, "", `tokenizer.json: pre_tokenizer.behavior: unknown split behavior "Sideways"`},
		{`{` + okModel + `, "decoder": {"type": "Strip", "content": "ab", "start": 1}}`, "", `tokenizer.json: decoder.content: want one character, got "ab"`},
		{`{` + okModel + `, "decoder": {"type": "CTC"}}`, "", `tokenizer.json: decoder.type: unsupported decoder "CTC"`},
		{`{` + okModel + `, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}], "special_tokens": {}}}`, "", `tokenizer.json: post_processor.single[0]: special token "<s>" is not in special_tokens`},
		{`{` + okModel + `, "added_tokens": [{"content": "x"}]}`, "", "tokenizer.json: added_tokens[0].id: want an integer, got nothing"},
		{`{` + okModel + `, "added_tokens": [{"id": 3, "content": "x", "special": "yes"}]}`, "", "tokenizer.json: added_tokens[0].special: want a boolean, got a string"},
		{`{` + okModel + `}`, `[1]`, "tokenizer_config.json: (top level): want an object"},
		{`{` + okModel + `}`, `{"chat_template": 5}`, "tokenizer_config.json: chat_template: want a string or a list"},
		{`{` + okModel + `}`, `{"chat_template": [{"name": "default"}]}`, "tokenizer_config.json: chat_template[0].template: want a string, got nothing"},
		{`{` + okModel + `}`, `{"bos_token": 3}`, `tokenizer_config.json: bos_token: want a string or {"content": ...}, got a number`},
		{`{` + okModel + `}`, `{"add_bos_token": "yes"}`, "tokenizer_config.json: add_bos_token: want a boolean"},
	} {
		_, err := Parse([]byte(tc.tj), []byte(tc.cfg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s, %s) = %v\nwant an error containing %s", tc.tj, tc.cfg, err, tc.want)
		}
	}
}

func TestChatTemplates(t *testing.T) {
	// Templates resembling those of real models' tokenizer_config.json.
	const (
		mistral = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
		llama2  = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
		llama3  = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
		qwen2   = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
		blocks  = "{% for message in messages %}\n  {% if loop.last %}\n    [{{ message.role }}] {{ message.content }}\n  {% endif %}\n{% endfor %}"
	)
	user := []Message{{"user", " Hi "}}
	conv := []Message{{"user", "Hi"}, {"assistant", " Hello "}, {"user", "Bye"}}
	sys := []Message{{"system", "Be brief."}, {"user", " Hi "}, {"assistant", "Hello "}}
	for _, tc := range []struct {
		name, tpl string
		msgs      []Message
		gen       bool
		want      string
		err       string
	}{
		{"mistral", mistral, conv, false, "<s>[INST] Hi [/INST] Hello </s>[INST] Bye [/INST]", ""},
		{"mistral-roles", mistral, []Message{{"assistant", "x"}}, false, "", "Conversation roles must alternate user/assistant/user/assistant/..."},
		{"mistral-system", mistral, sys, false, "", "Conversation roles must alternate"},
		{"llama2", llama2, sys, false, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST] Hello </s>", ""},
		{"llama2-plain", llama2, conv, false, "<s>[INST] Hi [/INST] Hello </s><s>[INST] Bye [/INST]", ""},
		{"llama3", llama3, user, true, "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", ""},
		{"llama3-nogen", llama3, conv, false, "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>", ""},
		{"qwen2", qwen2, user, true, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n", ""},
		{"qwen2-system", qwen2, sys[:1], false, "<|im_start|>system\nBe brief.<|im_end|>\n", ""},
		{"trim-lstrip-blocks", blocks, conv, false, "    [user] Bye\n", ""},
		{"bad-template", "{% for %}", user, false, "", "chat template"},
		{"no-include", "{% include 'x' %}", user, false, "", "chat template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := json.Marshal(map[string]any{"chat_template": tc.tpl, "bos_token": "<s>", "eos_token": "</s>"})
			tok := mustParse(t, tokJSON([]string{"<s>", "</s>"}, nil, ""), string(cfg))
			got, err := tok.ApplyChatTemplate(tc.msgs, tc.gen)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestChatTemplateFallbackAndList(t *testing.T) {
	tok := mustParse(t, tokJSON([]string{"a"}, nil, ""), "")
	if tok.HasChatTemplate() {
		t.Fatal("HasChatTemplate without a template")
	}
	got, err := tok.ApplyChatTemplate([]Message{{"system", "S"}, {"user", "U"}}, true)
	if err != nil || got != "system: S\nuser: U\nassistant:" {
		t.Errorf("fallback = %q, %v", got, err)
	}
	got, _ = tok.ApplyChatTemplate([]Message{{"user", "U"}}, false)
	if got != "user: U\n" {
		t.Errorf("fallback = %q", got)
	}
	cfg := `{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages[0].content }}!"}]}`
	tok = mustParse(t, tokJSON([]string{"a"}, nil, ""), cfg)
	if got, err := tok.ApplyChatTemplate([]Message{{"user", "hi"}}, false); err != nil || got != "hi!" {
		t.Errorf("list template = %q, %v", got, err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tokJSON([]string{"<s>", "a"}, nil, ""), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tok.BOS(); ok || len(tok.EOS()) != 0 || tok.HasChatTemplate() {
		t.Errorf("no config: BOS/EOS/chat template set")
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"bos_token": "<s>", "eos_token": {"content": "<s>"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if tok, err = Load(dir); err != nil {
		t.Fatal(err)
	}
	if bos, ok := tok.BOS(); !ok || bos != 0 || len(tok.EOS()) != 1 {
		t.Errorf("BOS %d %v EOS %v", bos, ok, tok.EOS())
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "tokenizer.json") {
		t.Errorf("Load(empty dir) = %v", err)
	}
}

// TestMergeSmallHeap: the array and heap merge loops agree.
func TestMergeSmallHeap(t *testing.T) {
	tok, _ := loadReal(t, "qwen3")
	m := tok.model
	r := rand.New(rand.NewPCG(9, 10))
	for range 2000 {
		word := byteLevelString(randomText(r, 1+r.IntN(12)))
		syms := m.symbols(word)
		if len(syms) < 2 || len(syms) > smallWord {
			continue
		}
		a := m.mergeSmall(append([]int32(nil), syms...))
		b := m.mergeHeap(append([]int32(nil), syms...))
		if diff := cmp.Diff(a, b); diff != "" {
			t.Fatalf("%q: small vs heap -+:\n%s", word, diff)
		}
	}
}

func TestConcurrentEncode(t *testing.T) {
	tok := trained(t, KindByteLevel)
	text := DefaultCorpus()[:4000]
	want := tok.Encode(text, true)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				s := text[(g*97+i*13)%1000:]
				got := tok.Encode(s, false)
				if tok.Decode(got, false) != s {
					t.Errorf("round trip failed")
					return
				}
			}
			if !cmp.Equal(tok.Encode(text, true), want) {
				t.Errorf("concurrent Encode differs")
			}
		}()
	}
	wg.Wait()
}
