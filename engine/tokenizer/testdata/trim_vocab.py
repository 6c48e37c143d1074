"""Trims a byte-level BPE tokenizer.json to the vocabulary and merges that can
occur while encoding a fixed set of texts, so a large real tokenizer can be
committed as a small test fixture.

Every token BPE can produce for a text is a substring of that text's
byte-level form, and a merge can only fire if its result is such a substring,
so keeping exactly those tokens (with their original ids) and the merges among
them (in their original order) leaves the encoding of those texts unchanged.
Usage: python3 trim_vocab.py tokenizer.json expect.json out.json
"""
import json, sys, unicodedata

def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}

tj = json.load(open(sys.argv[1]))
texts = [c["text"] for c in json.load(open(sys.argv[2]))["cases"]]
bc = byte_chars()
forms = set()
for t in texts:
    for f in (t, unicodedata.normalize("NFC", t)):
        forms.add("".join(bc[b] for b in f.encode("utf-8")))
vocab = tj["model"]["vocab"]
maxlen = max(len(k) for k in vocab)
keep = set(bc.values())
for f in forms:
    for i in range(len(f)):
        for j in range(i + 1, min(len(f), i + maxlen) + 1):
            if f[i:j] in vocab:
                keep.add(f[i:j])
tj["model"]["vocab"] = {k: v for k, v in sorted(vocab.items(), key=lambda kv: kv[1]) if k in keep}
merges = []
for m in tj["model"]["merges"]:
    a, b = m if isinstance(m, list) else m.split(" ", 1)
    if a in keep and b in keep and a + b in keep:
        merges.append(m)
tj["model"]["merges"] = merges
json.dump(tj, open(sys.argv[3], "w"), ensure_ascii=False)
print(len(tj["model"]["vocab"]), "tokens,", len(merges), "merges")
