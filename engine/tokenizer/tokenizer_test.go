package tokenizer

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func trained(t testing.TB, kind string, vocab int) *Tokenizer {
	t.Helper()
	special := []string{"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"}
	if kind == "sentencepiece" {
		special = []string{"<unk>", "<s>", "</s>"}
	}
	tj, tc, err := Train(DefaultCorpus(), TrainConfig{VocabSize: vocab, Kind: kind, Special: special})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Parse(tj, tc)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var samples = []string{
	"Hello, world!",
	"  leading spaces and trailing  ",
	"The cache is split into blocks of sixteen tokens.",
	"numbers 1234567 and 3.14159, 1e-5",
	"don't WON'T they'll I'm we've",
	"émigré naïve café — “quotes”",
	"日本語のテキスト and 中文",
	"emoji 🙂🚀 mixed",
	"tabs\tand\nnew\r\nlines\n\n\nend",
	"",
	" ",
	"<|im_start|>user\nhi<|im_end|>",
}

func TestRoundTrip(t *testing.T) {
	for _, kind := range []string{"byte-level", "sentencepiece"} {
		tok := trained(t, kind, 1024)
		for _, s := range samples {
			ids := tok.Encode(s, false)
			if got := tok.Decode(ids, false); got != s {
				t.Errorf("%s: Decode(Encode(%q)) = %q (ids %v)", kind, s, got, ids)
			}
		}
	}
}

func TestTrainingCompresses(t *testing.T) {
	for _, kind := range []string{"byte-level", "sentencepiece"} {
		tok := trained(t, kind, 640)
		if tok.VocabSize() != 640 {
			t.Errorf("%s: vocab %d, want 640", kind, tok.VocabSize())
		}
		text := "The engine answers one token at a time, and the cache keeps keys and values."
		if ids := tok.Encode(text, false); len(ids)*3 > len(text) {
			t.Errorf("%s: %d tokens for %d bytes of in-domain text", kind, len(ids), len(text))
		}
		bos, ok := tok.BOS()
		if !ok {
			t.Fatalf("%s: no BOS", kind)
		}
		if ids := tok.Encode("hi", true); ids[0] != bos {
			t.Errorf("%s: Encode with specials gave %v, want BOS %d first", kind, ids, bos)
		}
		if len(tok.EOS()) != 1 || !tok.IsSpecial(tok.EOS()[0]) {
			t.Errorf("%s: EOS %v", kind, tok.EOS())
		}
	}
}

func TestTrainIsDeterministic(t *testing.T) {
	a, _, err := Train(DefaultCorpus(), TrainConfig{VocabSize: 700, Kind: "byte-level"})
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := Train(DefaultCorpus(), TrainConfig{VocabSize: 700, Kind: "byte-level"})
	if !bytes.Equal(a, b) {
		t.Error("two trainings differ")
	}
}

func TestSpecialTokensSplitText(t *testing.T) {
	tok := trained(t, "byte-level", 600)
	start, _ := tok.TokenID("<|im_start|>")
	end, _ := tok.TokenID("<|im_end|>")
	ids := tok.Encode("<|im_start|>user\nhi<|im_end|>", false)
	if ids[0] != start || ids[len(ids)-1] != end {
		t.Errorf("ids %v, want %d first and %d last", ids, start, end)
	}
	if got := tok.Decode(ids, true); got != "user\nhi" {
		t.Errorf("skipping specials gave %q", got)
	}
}

func TestIncrementalDecoderMatchesDecode(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, kind := range []string{"byte-level", "sentencepiece"} {
		tok := trained(t, kind, 800)
		for trial := range 200 {
			var ids []int32
			if trial%2 == 0 {
				ids = tok.Encode(samples[trial%len(samples)]+samples[(trial+3)%len(samples)], false)
			} else {
				for range 1 + rng.IntN(20) {
					ids = append(ids, int32(rng.IntN(tok.VocabSize())))
				}
			}
			d := tok.NewDecoder(false)
			var b strings.Builder
			for _, id := range ids {
				b.WriteString(d.Add(id))
			}
			b.WriteString(d.Flush())
			if want := tok.Decode(ids, false); b.String() != want {
				t.Fatalf("%s: pieces %q, Decode %q (ids %v)", kind, b.String(), want, ids)
			}
		}
	}
}

func TestChatTemplate(t *testing.T) {
	tj, tc, err := Train(DefaultCorpus(), TrainConfig{VocabSize: 600, Kind: "byte-level", Special: []string{"<|begin_of_text|>", "<|end_of_text|>"}})
	if err != nil {
		t.Fatal(err)
	}
	msgs := []Message{{"system", "Be brief."}, {"user", "Hi!"}}
	plain, _ := Parse(tj, tc)
	got, err := plain.ApplyChatTemplate(msgs, true)
	if err != nil || got != "system: Be brief.\nuser: Hi!\nassistant:" {
		t.Errorf("fallback: %q, %v", got, err)
	}
	// A Llama-3-like template: bos_token, loop.first, strip, raise_exception.
	tpl := `{{ bos_token }}{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + message['role']) }}{% endif %}{% if loop.first %}[first]{% endif %}<|start|>{{ message['role'] }}` + "\n\n" + `{{ message['content'] | trim }}<|eot|>{% endfor %}{% if add_generation_prompt %}<|start|>assistant` + "\n\n" + `{% endif %}`
	tc2 := []byte(`{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": ` + quote(tpl) + `}`)
	tok, err := Parse(tj, tc2)
	if err != nil {
		t.Fatal(err)
	}
	got, err = tok.ApplyChatTemplate(msgs, true)
	want := "<|begin_of_text|>[first]<|start|>system\n\nBe brief.<|eot|><|start|>user\n\nHi!<|eot|><|start|>assistant\n\n"
	if err != nil || got != want {
		t.Errorf("template: %v\n%s", err, cmp.Diff(want, got))
	}
	if _, err := tok.ApplyChatTemplate([]Message{{"robot", "x"}}, false); err == nil || !strings.Contains(err.Error(), "bad role robot") {
		t.Errorf("raise_exception: %v", err)
	}
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func TestParseErrorsNameTheField(t *testing.T) {
	tests := []struct{ json, want string }{
		{`{`, "tokenizer.json"},
		{`{"model": {"type": "WordPiece", "vocab": {"a": 0}}}`, "model.type"},
		{`{"model": {"type": "BPE", "vocab": {}}}`, "model.vocab"},
		{`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}, "pre_tokenizer": {"type": "ByteLevel"}}`, "model.merges[0]"},
		{`{"model": {"type": "BPE", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Mystery"}]}}`, "pre_tokenizer.pretokenizers[0]"},
		{`{"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": -1, "content": "x"}]}`, "added_tokens[0]"},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(tc.json), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.json, err, tc.want)
		}
	}
}

func FuzzEncodeDecode(f *testing.F) {
	bl := trained(f, "byte-level", 600)
	sp := trained(f, "sentencepiece", 600)
	for _, s := range samples {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8Valid(s) {
			return
		}
		for _, tok := range []*Tokenizer{bl, sp} {
			if got := tok.Decode(tok.Encode(s, false), false); got != s {
				t.Errorf("%s: round trip of %q gave %q", tok.Kind(), s, got)
			}
		}
	})
}

func utf8Valid(s string) bool {
	return strings.ToValidUTF8(s, "\uFFFD") == s && !strings.Contains(s, "\uFFFD")
}

func FuzzParse(f *testing.F) {
	tj, tc, _ := Train(DefaultCorpus(), TrainConfig{VocabSize: 300, Kind: "sentencepiece", Special: []string{"<unk>", "<s>", "</s>"}})
	f.Add(tj, tc)
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0}},"pre_tokenizer":{"type":"ByteLevel"}}`), []byte(`{}`))
	f.Fuzz(func(t *testing.T, tj, tc []byte) {
		tok, err := Parse(tj, tc)
		if err != nil {
			return
		}
		tok.Decode(tok.Encode("some text 123", true), false)
	})
}

func BenchmarkEncode(b *testing.B) {
	tok := trained(b, "byte-level", 2048)
	text := strings.Repeat(DefaultCorpus(), 2)[:10000]
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		tok.Encode(text, false)
	}
}
