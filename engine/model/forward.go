package model

import (
	"fmt"
	"math"
	"sync/atomic"

	"servelab/engine/cpu"
)

// SeqInput is one sequence's share of a step. Its field list matches engine.Input's.
type SeqInput struct {
	// Tokens are the tokens to compute this step.
	Tokens []int32
	// Pos is the position of Tokens[0]: how many tokens of the sequence the KV cache
	// already holds (prefix-cache hits included).
	Pos int
	// Blocks is the block table: position p lives in block Blocks[p/blockSize], slot
	// p%blockSize. It must cover positions [0, Pos+len(Tokens)).
	Blocks []int32
	// Logits asks for the logits of the last of Tokens.
	Logits bool
}

// attnQueryBlock is how many query tokens of one (sequence, head) an attention work item
// covers, so a long prefill chunk splits across threads.
const attnQueryBlock = 16

// attnItem is one unit of attention work: queries [q0, q1) of head head of sequence seq.
type attnItem struct {
	seq, head, q0, q1 int32
}

// Runner computes forward steps over one KV cache. It owns the activation buffers, which
// it reuses from step to step. It is not safe for concurrent use.
type Runner struct {
	m *Model
	c *KVCache

	// The current step.
	batch  []SeqInput
	start  []int   // start[i] is the row of batch[i]'s first token; start[len] = T
	tokSeq []int32 // per row: its sequence
	tokPos []int32 // per row: its position
	rope   *ropeTable
	layer  int
	normW  []float32 // the norm weight normRows applies

	x, xn, qkv, att, proj, gu, act []float32

	items  []attnItem
	next   atomic.Int64
	scores [][]float32 // one per pool thread

	logitRows []int
	xl        []float32
	logits    []float32
	out       [][]float32

	// Method values bound once, so that parallel stages do not allocate closures.
	normFn, ropeFn, attnFn, actFn func(lo, hi int)
}

// NewRunner returns a runner computing with the model over cache, which must come from the
// model's NewKVCache (or one of the same shape).
func (m *Model) NewRunner(cache *KVCache) *Runner {
	if cache.layers != m.Config.Layers || cache.kvDim != m.Config.KVDim() {
		panic(fmt.Sprintf("model: KV cache of %d layers x %d kv dims does not fit a model of %d layers x %d",
			cache.layers, cache.kvDim, m.Config.Layers, m.Config.KVDim()))
	}
	r := &Runner{m: m, c: cache, scores: make([][]float32, max(1, m.pool.Threads()))}
	r.normFn = r.normRows
	r.ropeFn = r.ropeRows
	r.attnFn = r.attnWorker
	r.actFn = r.actRows
	return r
}

// grow returns buf resized to n, reallocating only when its capacity is short.
func grow(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return make([]float32, n, n+n/4)
	}
	return buf[:n]
}

// Forward computes one step: every sequence's Tokens at positions Pos, Pos+1, ..., writing
// their keys and values into the cache slots their block tables name, with causal
// attention over positions [0, Pos+i] of the same sequence. It returns one row of Vocab
// logits per sequence with Logits set, in batch order; the rows are the runner's and stay
// valid until the next Forward. It panics on inconsistent input (a token outside the
// vocabulary, a block table too short for the positions, a block id outside the cache)
// before it writes anything. Positions past Config.MaxPos are computed (the rotary table
// extends), though the model was not trained for them; the engine caps contexts.
func (r *Runner) Forward(batch []SeqInput) [][]float32 {
	m, c := r.m, &r.m.Config
	r.batch = batch
	r.start = r.start[:0]
	r.tokSeq, r.tokPos = r.tokSeq[:0], r.tokPos[:0]
	r.logitRows = r.logitRows[:0]
	maxCtx := 0
	for i := range batch {
		s := &batch[i]
		r.start = append(r.start, len(r.tokSeq))
		r.check(i, s)
		for j := range s.Tokens {
			r.tokSeq = append(r.tokSeq, int32(i))
			r.tokPos = append(r.tokPos, int32(s.Pos+j))
		}
		if s.Logits {
			r.logitRows = append(r.logitRows, len(r.tokSeq)-1)
		}
		maxCtx = max(maxCtx, s.Pos+len(s.Tokens))
	}
	r.start = append(r.start, len(r.tokSeq))
	T := len(r.tokSeq)
	r.out = r.out[:0]
	if T == 0 {
		r.batch = nil
		return r.out
	}
	r.rope = m.ropeFor(maxCtx)
	for i := range r.scores {
		r.scores[i] = grow(r.scores[i], maxCtx)
	}

	d, qd, kvd, h := c.Dim, c.QDim(), c.KVDim(), c.Hidden
	r.x = grow(r.x, T*d)
	r.xn = grow(r.xn, T*d)
	r.qkv = grow(r.qkv, T*(qd+2*kvd))
	r.att = grow(r.att, T*qd)
	r.proj = grow(r.proj, T*d)
	r.gu = grow(r.gu, T*2*h)
	r.act = grow(r.act, T*h)
	r.buildItems()

	for i := range batch {
		for j, tok := range batch[i].Tokens {
			t := r.start[i] + j
			copy(r.x[t*d:(t+1)*d], m.embed[int(tok)*d:(int(tok)+1)*d])
		}
	}
	pool := m.pool
	for l := range m.layers {
		w := &m.layers[l]
		r.layer = l
		r.normW = w.attnNorm
		pool.Parallel(T, 16, r.normFn)
		pool.MatMul(r.qkv, r.xn, w.wqkv, T, d, qd+2*kvd)
		pool.Parallel(T, 4, r.ropeFn)
		r.next.Store(0)
		pool.Parallel(min(len(r.scores), len(r.items)), 1, r.attnFn)
		pool.MatMul(r.proj, r.att, w.wo, T, qd, d)
		cpu.Axpy(1, r.proj[:T*d], r.x[:T*d])

		r.normW = w.ffnNorm
		pool.Parallel(T, 16, r.normFn)
		pool.MatMul(r.gu, r.xn, w.wgu, T, d, 2*h)
		pool.Parallel(T, 4, r.actFn)
		pool.MatMul(r.proj, r.act, w.wdown, T, h, d)
		cpu.Axpy(1, r.proj[:T*d], r.x[:T*d])
	}
	r.batch = nil // do not keep the caller's slices

	n := len(r.logitRows)
	if n == 0 {
		return r.out
	}
	r.xl = grow(r.xl, n*d)
	r.logits = grow(r.logits, n*c.Vocab)
	eps := float32(c.NormEps)
	for k, t := range r.logitRows {
		cpu.RMSNorm(r.xl[k*d:(k+1)*d], r.x[t*d:(t+1)*d], m.norm, eps)
	}
	pool.MatMul(r.logits, r.xl, m.lmHead, n, d, c.Vocab)
	for k := range n {
		r.out = append(r.out, r.logits[k*c.Vocab:(k+1)*c.Vocab:(k+1)*c.Vocab])
	}
	return r.out
}

// check panics unless batch entry i is consistent with the model and the cache.
func (r *Runner) check(i int, s *SeqInput) {
	if s.Pos < 0 {
		panic(fmt.Sprintf("model: Forward: sequence %d: negative position %d", i, s.Pos))
	}
	if len(s.Tokens) == 0 {
		if s.Logits {
			panic(fmt.Sprintf("model: Forward: sequence %d asks for logits but has no tokens", i))
		}
		return
	}
	for _, tok := range s.Tokens {
		if tok < 0 || int(tok) >= r.m.Config.Vocab {
			panic(fmt.Sprintf("model: Forward: sequence %d: token %d outside the vocabulary [0, %d)", i, tok, r.m.Config.Vocab))
		}
	}
	end := s.Pos + len(s.Tokens)
	need := (end + r.c.blockSize - 1) / r.c.blockSize
	if len(s.Blocks) < need {
		panic(fmt.Sprintf("model: Forward: sequence %d: %d blocks of %d tokens cannot hold positions [0, %d)", i, len(s.Blocks), r.c.blockSize, end))
	}
	for _, b := range s.Blocks[:need] {
		if b < 0 || int(b) >= r.c.numBlocks {
			panic(fmt.Sprintf("model: Forward: sequence %d: block %d outside the cache's %d blocks", i, b, r.c.numBlocks))
		}
	}
}

// buildItems lists the step's attention work: per sequence and query head, blocks of
// attnQueryBlock query tokens.
func (r *Runner) buildItems() {
	r.items = r.items[:0]
	for i := range r.batch {
		n := len(r.batch[i].Tokens)
		for h := range r.m.Config.Heads {
			for q0 := 0; q0 < n; q0 += attnQueryBlock {
				r.items = append(r.items, attnItem{seq: int32(i), head: int32(h), q0: int32(q0), q1: int32(min(n, q0+attnQueryBlock))})
			}
		}
	}
}

// normRows writes RMSNorm(x, normW) to xn for rows [lo, hi).
func (r *Runner) normRows(lo, hi int) {
	d := r.m.Config.Dim
	eps := float32(r.m.Config.NormEps)
	for t := lo; t < hi; t++ {
		cpu.RMSNorm(r.xn[t*d:(t+1)*d], r.x[t*d:(t+1)*d], r.normW, eps)
	}
}

// ropeRows finishes the q/k/v projections of rows [lo, hi): biases, rotary embedding of
// queries and keys, the attention scale folded into the queries, and keys and values
// stored in the cache.
func (r *Runner) ropeRows(lo, hi int) {
	c := &r.m.Config
	hd, qd, kvd := c.HeadDim, c.QDim(), c.KVDim()
	width := qd + 2*kvd
	bias := r.m.layers[r.layer].bqkv
	kc, vc := r.c.k[r.layer], r.c.v[r.layer]
	scale := float32(1 / math.Sqrt(float64(hd)))
	for t := lo; t < hi; t++ {
		row := r.qkv[t*width : (t+1)*width]
		if bias != nil {
			cpu.Axpy(1, bias, row)
		}
		p := int(r.tokPos[t])
		cos, sin := r.rope.row(p)
		for h := range c.Heads {
			q := row[h*hd : (h+1)*hd]
			cpu.RotateHalf(q, cos, sin)
			for i := range q {
				q[i] *= scale
			}
		}
		k := row[qd : qd+kvd]
		for h := range c.KVHeads {
			cpu.RotateHalf(k[h*hd:(h+1)*hd], cos, sin)
		}
		off := r.c.slot(r.batch[r.tokSeq[t]].Blocks, p)
		copy(kc[off:off+kvd], k)
		copy(vc[off:off+kvd], row[qd+kvd:width])
	}
}

// attnWorker is one attention worker: it takes work items off the shared counter until
// none is left. Each concurrent call gets a distinct lo, so scores[lo] is its own.
func (r *Runner) attnWorker(lo, _ int) {
	buf := r.scores[lo]
	for {
		i := int(r.next.Add(1)) - 1
		if i >= len(r.items) {
			return
		}
		r.attend(r.items[i], buf)
	}
}

// attend computes one work item: for each of its queries, softmax of the (pre-scaled)
// query against the sequence's keys at positions [0, p], then the weighted sum of values.
func (r *Runner) attend(it attnItem, buf []float32) {
	c := &r.m.Config
	hd, qd, kvd := c.HeadDim, c.QDim(), c.KVDim()
	width := qd + 2*kvd
	bs := r.c.blockSize
	kvOff := int(it.head) / (c.Heads / c.KVHeads) * hd
	kc, vc := r.c.k[r.layer], r.c.v[r.layer]
	s := &r.batch[it.seq]
	for i := int(it.q0); i < int(it.q1); i++ {
		t := r.start[it.seq] + i
		q := r.qkv[t*width+int(it.head)*hd:][:hd]
		n := s.Pos + i + 1
		sc := buf[:n]
		for j := 0; j < n; {
			base := int(s.Blocks[j/bs])*bs*kvd + kvOff
			end := min(n, (j/bs+1)*bs)
			for ; j < end; j++ {
				off := base + (j%bs)*kvd
				sc[j] = cpu.Dot(q, kc[off:off+hd])
			}
		}
		cpu.Softmax(sc)
		out := r.att[t*qd+int(it.head)*hd:][:hd]
		clear(out)
		for j := 0; j < n; {
			base := int(s.Blocks[j/bs])*bs*kvd + kvOff
			end := min(n, (j/bs+1)*bs)
			for ; j < end; j++ {
				off := base + (j%bs)*kvd
				cpu.Axpy(sc[j], vc[off:off+hd], out)
			}
		}
	}
}

// actRows applies SwiGLU to rows [lo, hi) of the fused gate/up output and packs the
// result into act, down_proj's input.
func (r *Runner) actRows(lo, hi int) {
	h := r.m.Config.Hidden
	for t := lo; t < hi; t++ {
		row := r.gu[t*2*h : (t+1)*2*h]
		cpu.SiLUMul(row[:h], row[h:])
		copy(r.act[t*h:(t+1)*h], row[:h])
	}
}
