package tokenizer

import (
	"encoding/json"
	"math"
	"strings"
	"sync"
	"unicode/utf8"

	"servelab/internal/minheap"
)

// bpe is HF's BPE model: a word is cut into characters (each a vocabulary token, else
// its bytes as <0xXX> tokens with byte_fallback, else the unknown token), then the
// adjacent pair with the lowest merge rank is merged, repeatedly, leftmost first.
type bpe struct {
	vocab        map[string]int32
	merges       map[uint64]merge
	unk          int32 // -1: none
	fuseUnk      bool
	byteFallback bool
	byteIDs      [256]int32 // <0xXX> token ids, -1 when absent
	ignoreMerges bool       // a word that is a vocabulary token is that token
	prefix       string     // continuing_subword_prefix
	suffix       string     // end_of_word_suffix
	// metaSplit: no token has "▁" after another character, so a word can be cut
	// before each "▁" that follows another character without changing its encoding
	// (Llama-2 files have no pre-tokenizer, and whole sentences reach the model).
	metaSplit bool

	mu    sync.Mutex
	cache map[string][]int32
}

type merge struct{ rank, id int32 }

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

const (
	cacheMaxEntries = 1 << 16
	cacheMaxWordLen = 256
	// smallWord: words of up to this many symbols merge by rescanning a rank array;
	// longer ones use a heap.
	smallWord = 64
)

// tokenize appends the ids of word.
func (m *bpe) tokenize(word string, dst []int32) []int32 {
	if word == "" {
		return dst
	}
	if m.metaSplit && !m.ignoreMerges {
		start := 0
		prevMeta := true
		for i, r := range word {
			isMeta := r == '▁'
			if isMeta && !prevMeta && i > start {
				dst = m.tokenizeWord(word[start:i], dst)
				start = i
			}
			prevMeta = isMeta
		}
		return m.tokenizeWord(word[start:], dst)
	}
	return m.tokenizeWord(word, dst)
}

func (m *bpe) tokenizeWord(word string, dst []int32) []int32 {
	if m.ignoreMerges {
		if id, ok := m.vocab[word]; ok {
			return append(dst, id)
		}
	}
	cacheable := len(word) <= cacheMaxWordLen
	if cacheable {
		m.mu.Lock()
		ids, ok := m.cache[word]
		m.mu.Unlock()
		if ok {
			return append(dst, ids...)
		}
	}
	ids := m.mergeWord(m.symbols(word))
	if cacheable {
		m.mu.Lock()
		if len(m.cache) >= cacheMaxEntries {
			clear(m.cache)
		}
		m.cache[strings.Clone(word)] = ids
		m.mu.Unlock()
	}
	return append(dst, ids...)
}

// symbols cuts word into its initial symbols.
func (m *bpe) symbols(word string) []int32 {
	syms := make([]int32, 0, len(word))
	unkPending := false
	for i := 0; i < len(word); {
		_, size := utf8.DecodeRuneInString(word[i:])
		end := i + size
		s := word[i:end]
		if m.prefix != "" && i > 0 {
			s = m.prefix + s
		}
		if m.suffix != "" && end == len(word) {
			s += m.suffix
		}
		i = end
		if id, ok := m.vocab[s]; ok {
			if unkPending {
				syms = append(syms, m.unk)
				unkPending = false
			}
			syms = append(syms, id)
			continue
		}
		if m.byteFallback && m.hasBytes(s) {
			if unkPending {
				syms = append(syms, m.unk)
				unkPending = false
			}
			for k := 0; k < len(s); k++ {
				syms = append(syms, m.byteIDs[s[k]])
			}
			continue
		}
		if m.unk >= 0 {
			if unkPending && !m.fuseUnk {
				syms = append(syms, m.unk)
			}
			unkPending = true
		}
	}
	if unkPending {
		syms = append(syms, m.unk)
	}
	return syms
}

func (m *bpe) hasBytes(s string) bool {
	for k := 0; k < len(s); k++ {
		if m.byteIDs[s[k]] < 0 {
			return false
		}
	}
	return true
}

func (m *bpe) mergeWord(syms []int32) []int32 {
	if len(syms) < 2 {
		return syms
	}
	if len(syms) <= smallWord {
		return m.mergeSmall(syms)
	}
	return m.mergeHeap(syms)
}

// mergeSmall keeps the merge of every adjacent pair in an array and rescans it for the
// lowest rank (leftmost on ties) after each merge.
func (m *bpe) mergeSmall(syms []int32) []int32 {
	var buf [smallWord]merge
	pairs := buf[:len(syms)-1]
	none := merge{rank: math.MaxInt32}
	for i := range pairs {
		if mg, ok := m.merges[pairKey(syms[i], syms[i+1])]; ok {
			pairs[i] = mg
		} else {
			pairs[i] = none
		}
	}
	for len(pairs) > 0 {
		best := -1
		rank := int32(math.MaxInt32)
		for i, p := range pairs {
			if p.rank < rank {
				best, rank = i, p.rank
			}
		}
		if best < 0 {
			break
		}
		syms[best] = pairs[best].id
		syms = append(syms[:best+1], syms[best+2:]...)
		pairs = append(pairs[:best], pairs[best+1:]...)
		if best > 0 {
			if mg, ok := m.merges[pairKey(syms[best-1], syms[best])]; ok {
				pairs[best-1] = mg
			} else {
				pairs[best-1] = none
			}
		}
		if best < len(pairs) {
			if mg, ok := m.merges[pairKey(syms[best], syms[best+1])]; ok {
				pairs[best] = mg
			} else {
				pairs[best] = none
			}
		}
	}
	return syms
}

// mergeHeap is the same algorithm in O(n log n): a doubly linked list of symbols and a
// heap of candidate merges ordered by (rank, position), stale entries skipped.
func (m *bpe) mergeHeap(ids []int32) []int32 {
	type sym struct{ id, prev, next int32 }
	syms := make([]sym, len(ids))
	for i, id := range ids {
		syms[i] = sym{id, int32(i - 1), int32(i + 1)}
	}
	syms[len(syms)-1].next = -1
	h := minheap.Heap[heapEntry](make([]heapEntry, 0, len(ids)))
	for i := 0; i+1 < len(ids); i++ {
		if mg, ok := m.merges[pairKey(ids[i], ids[i+1])]; ok {
			h = append(h, heapEntry{mg.rank, int32(i), mg.id})
		}
	}
	h.Init()
	for len(h) > 0 {
		top := h.Pop()
		cur := &syms[top.pos]
		if cur.id < 0 || cur.next < 0 {
			continue
		}
		right := syms[cur.next]
		if mg, ok := m.merges[pairKey(cur.id, right.id)]; !ok || mg.id != top.id || mg.rank != top.rank {
			continue
		}
		cur.id = top.id
		syms[cur.next].id = -1
		cur.next = right.next
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if mg, ok := m.merges[pairKey(syms[cur.prev].id, cur.id)]; ok {
				h.Push(heapEntry{mg.rank, cur.prev, mg.id})
			}
		}
		if cur.next >= 0 {
			if mg, ok := m.merges[pairKey(cur.id, syms[cur.next].id)]; ok {
				h.Push(heapEntry{mg.rank, top.pos, mg.id})
			}
		}
	}
	out := ids[:0]
	for i := int32(0); i >= 0; i = syms[i].next {
		out = append(out, syms[i].id)
	}
	return out
}

type heapEntry struct{ rank, pos, id int32 }

// Less orders candidate merges by rank, then position.
func (e heapEntry) Less(o heapEntry) bool {
	return e.rank < o.rank || e.rank == o.rank && e.pos < o.pos
}

// maxID bounds token ids relative to the number of tokens, so that a malformed file
// cannot make the id table huge.
func maxID(count int) int64 { return 4*int64(count) + 1<<20 }

// parseBPE reads tokenizer.json's "model".
func parseBPE(v jval) (*bpe, error) {
	o, err := v.object()
	if err != nil {
		return nil, err
	}
	typ, err := o.str("type", "BPE")
	if err != nil {
		return nil, err
	}
	if typ != "BPE" {
		return nil, o.get("type").errf("unsupported model %q: only BPE is implemented", typ)
	}
	m := &bpe{unk: -1, cache: make(map[string][]int32)}
	if m.vocab, err = parseVocab(o.get("vocab")); err != nil {
		return nil, err
	}
	if m.byteFallback, err = o.boolean("byte_fallback", false); err != nil {
		return nil, err
	}
	if m.fuseUnk, err = o.boolean("fuse_unk", false); err != nil {
		return nil, err
	}
	if m.ignoreMerges, err = o.boolean("ignore_merges", false); err != nil {
		return nil, err
	}
	if m.prefix, err = o.str("continuing_subword_prefix", ""); err != nil {
		return nil, err
	}
	if m.suffix, err = o.str("end_of_word_suffix", ""); err != nil {
		return nil, err
	}
	if d := o.get("dropout"); !d.missing() {
		var f float64
		if json.Unmarshal(d.raw, &f) != nil {
			return nil, d.errf("want a number or null")
		}
		// Dropout only applies while training; encoding is deterministic.
	}
	unk, err := o.str("unk_token", "")
	if err != nil {
		return nil, err
	}
	if id, ok := m.vocab[unk]; ok && unk != "" {
		m.unk = id
	}
	for b := range m.byteIDs {
		m.byteIDs[b] = -1
		if id, ok := m.vocab[byteTokenName(byte(b))]; ok {
			m.byteIDs[b] = id
		}
	}
	if m.merges, err = parseMerges(o.get("merges"), m.vocab, m.prefix); err != nil {
		return nil, err
	}
	m.metaSplit = m.prefix == "" && m.suffix == "" && canSplitAtMeta(m.vocab)
	return m, nil
}

func parseVocab(v jval) (map[string]int32, error) {
	if v.missing() {
		return nil, v.errf("missing")
	}
	var vocab map[string]int32
	if err := json.Unmarshal(v.raw, &vocab); err != nil || vocab == nil {
		// Find the bad entry for the error.
		o, err := v.object()
		if err != nil {
			return nil, err
		}
		for k := range o.m {
			e := o.get(k)
			n, err := e.integer()
			if err != nil {
				return nil, err
			}
			if n < 0 || n > math.MaxInt32 {
				return nil, e.errf("id %d out of range", n)
			}
		}
		return nil, v.errf("malformed vocabulary")
	}
	limit := maxID(len(vocab))
	byID := make(map[int32]string, len(vocab))
	for tok, id := range vocab {
		if id < 0 || int64(id) > limit {
			return nil, jval{file: v.file, path: v.key(tok)}.errf("id %d out of range for a vocabulary of %d", id, len(vocab))
		}
		if other, dup := byID[id]; dup {
			a, b := min(other, tok), max(other, tok)
			return nil, jval{file: v.file, path: v.key(b)}.errf("id %d is also %q's", id, a)
		}
		byID[id] = tok
	}
	return vocab, nil
}

func parseMerges(v jval, vocab map[string]int32, prefix string) (map[uint64]merge, error) {
	if v.missing() {
		return map[uint64]merge{}, nil
	}
	var pairs [][2]string
	var lines []string
	if json.Unmarshal(v.raw, &lines) == nil {
		pairs = make([][2]string, len(lines))
		for i, l := range lines {
			a, b, ok := strings.Cut(l, " ")
			if !ok {
				return nil, v.index(i).errf("want \"a b\", got %q", l)
			}
			pairs[i] = [2]string{a, b}
		}
	} else if err := json.Unmarshal(v.raw, &pairs); err != nil {
		items, err := v.array()
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			var s string
			var p [2]string
			var raw []json.RawMessage
			if json.Unmarshal(it.raw, &s) != nil && (json.Unmarshal(it.raw, &raw) != nil || len(raw) != 2 || json.Unmarshal(it.raw, &p) != nil) {
				return nil, it.errf("want \"a b\" or [\"a\", \"b\"], got %s", it.kind())
			}
		}
		return nil, v.errf("want strings \"a b\" or pairs [\"a\", \"b\"], not a mix")
	}
	merges := make(map[uint64]merge, len(pairs))
	for i, p := range pairs {
		a, ok1 := vocab[p[0]]
		b, ok2 := vocab[p[1]]
		if !ok1 || !ok2 {
			missing := p[0]
			if ok1 {
				missing = p[1]
			}
			return nil, v.index(i).errf("%q is not in the vocabulary", missing)
		}
		right := p[1]
		if prefix != "" {
			right = strings.TrimPrefix(right, prefix)
		}
		id, ok := vocab[p[0]+right]
		if !ok {
			return nil, v.index(i).errf("merged token %q is not in the vocabulary", p[0]+right)
		}
		if i > math.MaxInt32-1 {
			return nil, v.errf("too many merges")
		}
		merges[pairKey(a, b)] = merge{rank: int32(i), id: id}
	}
	return merges, nil
}

// canSplitAtMeta reports whether "▁" is a token and never follows another character
// inside a token.
func canSplitAtMeta(vocab map[string]int32) bool {
	if _, ok := vocab["▁"]; !ok {
		return false
	}
	for tok := range vocab {
		if !strings.Contains(tok, "▁") {
			continue
		}
		prevOther := false
		for _, r := range tok {
			if r == '▁' && prevOther {
				return false
			}
			prevOther = r != '▁'
		}
	}
	return true
}
