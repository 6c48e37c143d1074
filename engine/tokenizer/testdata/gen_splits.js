// Expected pre-tokenizer splits for engine/tokenizer's hand-written scanner, computed
// with JavaScript's own RegExp engine (which has lookahead). Node 20 has no inline
// (?i:...) groups, so the case-insensitive contractions are spelled out as classes.
// Usage: node splits.js > split_expect.json
const patterns = {
  gpt2: /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu,
  llama3: /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu,
  qwen2: /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu,
};
let seed = 777;
const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
const atoms = ["a", "b", "Z", "é", "ß", "Ω", "ж", "中", "ー", "한", "ا", "\u0301", "\u0915\u093f", "0", "7", "٣", "Ⅻ", "½", "²",
  "'", "'s", "'S", "'re", "'RE", "'Ve", "'ll", "'LL", "'d", "'m", "'t", "'x", "''", "\"", ".", ",", "!", "?", "-", "—", "(", ")", "_",
  "$", "€", "+", "=", "<", ">", "@", "#", "😀", "👍🏽", "🇫🇷", "\u200d", "\u200b",
  " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u2003", "\u3000", "\v", "\f", " \n", "\n "];
const cases = [];
for (let k = 0; k < 300; k++) {
  let s = "";
  const n = 1 + rnd(14);
  for (let i = 0; i < n; i++) s += atoms[rnd(atoms.length)];
  const c = {text: s};
  for (const [name, re] of Object.entries(patterns)) c[name] = s.match(re) || [];
  cases.push(c);
}
process.stdout.write(JSON.stringify({source: `JavaScript RegExp under node ${process.version}`, cases}, null, 1));
