package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzEncodeDecode(f *testing.F) {
	for _, s := range []string{"", "Hello, world!", " leading", "trailing  ", "naïve 中文 😀", "a\u00a0b\r\n\tc", "I'M 12345", "<|im_start|>x"} {
		f.Add(s)
	}
	toks := map[string]*Tokenizer{}
	for _, kind := range []string{KindByteLevel, KindSentencePiece} {
		toks[kind] = trained(f, kind)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		for kind, tok := range toks {
			ids := tok.Encode(s, true)
			checkStream(t, tok, ids)
			if kind == KindSentencePiece && strings.Contains(s, "▁") {
				continue // decodes as a space
			}
			special := false
			for content := range tok.added {
				special = special || strings.Contains(s, content)
			}
			if special {
				continue
			}
			if got := tok.Decode(ids, true); got != s {
				t.Errorf("%s: Decode(Encode(%q)) = %q", kind, s, got)
			}
		}
	})
}

func FuzzParse(f *testing.F) {
	seeds := [][2]string{
		{string(tokJSON([]string{"a", "b", "ab", "<s>", "▁"}, []string{"a b"}, `, "byte_fallback": true, "unk_token": "<s>", "fuse_unk": true, "ignore_merges": true`,
			`"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}, {"type": "NFC"}]}`,
			`"decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}`,
			`"added_tokens": [{"id": 3, "content": "<s>", "special": true, "lstrip": true, "rstrip": true, "single_word": true}]`,
			`"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}}}`)),
			`{"bos_token": "<s>", "eos_token": {"content": "<s>"}, "add_bos_token": true, "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}`},
		{string(tokJSON([]string{"a", "Ġ", "Ġa"}, []string{"Ġ a"}, "",
			`"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": `+q(llama3Pattern)+`}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}`,
			`"decoder": {"type": "ByteLevel"}`, `"post_processor": {"type": "ByteLevel"}`)), `{}`},
		{string(tokJSON([]string{"x"}, nil, "", `"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}`, `"decoder": {"type": "Metaspace"}`)), ""},
		{`{"model": {"vocab": {"a": 0}, "merges": [["a", "a"]]}}`, `{"chat_template": [{"name": "default", "template": "x"}]}`},
	}
	for _, s := range seeds {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, tj, cfg []byte) {
		tok, err := Parse(tj, cfg)
		if err != nil {
			return
		}
		ids := tok.Encode("Hello  world <s> 123 naïve 😀\n", true)
		tok.Decode(ids, false)
		tok.Decode([]int32{-1, 0, 1, 2, 3, int32(tok.VocabSize()), 1 << 30}, true)
		d := tok.NewDecoder(true)
		for _, id := range ids {
			d.Add(id)
		}
		d.Flush()
		tok.BOS()
		tok.EOS()
		tok.ApplyChatTemplate([]Message{{"user", "hi"}}, true)
	})
}
