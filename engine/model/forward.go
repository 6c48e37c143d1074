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
	// Greedy, with Logits, says the caller wants only the argmax of that row (its request
	// decodes greedily): [ForwardTokens] on a [TokenKernels] backend returns the token
	// instead of the row. Runner.Forward and Forward ignore it and return the row.
	Greedy bool
}

// Runner computes forward steps over one KV cache with the CPU kernels (engine/cpu). It
// owns the activation buffers, which it reuses from step to step. It is not safe for
// concurrent use.
type Runner struct {
	step Step
	k    cpuKernels
}

// cpuKernels is the CPU backend of the forward pass ([Kernels]): engine/cpu's kernels on
// the model's pool, over a KVCache in host memory.
type cpuKernels struct {
	m *Model
	c *KVCache

	st    *Step // the current step
	rope  *ropeTable
	layer int
	normW []float32 // the norm weight normRows applies

	x, xn, qkv, att, proj, gu, act []float32
	scratch                        []float32 // Linear's output before a non-X accumulate

	next   atomic.Int64
	scores [][]float32 // one per pool thread

	xl     []float32
	logits []float32
	out    [][]float32

	// Method values bound once, so that parallel stages do not allocate closures.
	normFn, ropeFn, attnFn, actFn func(lo, hi int)
}

var _ Kernels = (*cpuKernels)(nil)

// NewRunner returns a runner computing with the model over cache, which must come from the
// model's NewKVCache (or one of the same shape).
func (m *Model) NewRunner(cache *KVCache) *Runner {
	if cache.layers != m.Config.Layers || cache.kvDim != m.Config.KVDim() {
		panic(fmt.Sprintf("model: KV cache of %d layers x %d kv dims does not fit a model of %d layers x %d",
			cache.layers, cache.kvDim, m.Config.Layers, m.Config.KVDim()))
	}
	r := &Runner{}
	k := &r.k
	k.m, k.c = m, cache
	k.scores = make([][]float32, max(1, m.pool.Threads()))
	k.normFn = k.normRows
	k.ropeFn = k.ropeRows
	k.attnFn = k.attnWorker
	k.actFn = k.actRows
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
	if err := r.step.Build(batch, &r.k.m.Config, r.k.c.numBlocks, r.k.c.blockSize); err != nil {
		panic(err.Error())
	}
	out, err := Forward(&r.k, &r.step, r.k.m.Config.Layers)
	r.step.Batch = nil // do not keep the caller's slices
	if err != nil {
		panic(err.Error()) // the CPU kernels return no errors
	}
	return out
}

func (k *cpuKernels) Begin(st *Step) error {
	c := &k.m.Config
	k.st = st
	k.out = k.out[:0]
	T := st.T()
	if T == 0 {
		return nil
	}
	k.rope = k.m.ropeFor(st.MaxCtx)
	for i := range k.scores {
		k.scores[i] = grow(k.scores[i], st.MaxCtx)
	}
	d, qd, kvd, h := c.Dim, c.QDim(), c.KVDim(), c.Hidden
	k.x = grow(k.x, T*d)
	k.xn = grow(k.xn, T*d)
	k.qkv = grow(k.qkv, T*(qd+2*kvd))
	k.att = grow(k.att, T*qd)
	k.proj = grow(k.proj, T*d)
	k.gu = grow(k.gu, T*2*h)
	k.act = grow(k.act, T*h)
	return nil
}

func (k *cpuKernels) Embed() error {
	d := k.m.Config.Dim
	for t, tok := range k.st.Tokens {
		copy(k.x[t*d:(t+1)*d], k.m.embed[int(tok)*d:(int(tok)+1)*d])
	}
	return nil
}

func (k *cpuKernels) RMSNorm(layer int, w Norm) error {
	k.layer = layer
	k.normW = k.m.layers[layer].attnNorm
	if w == NormFFN {
		k.normW = k.m.layers[layer].ffnNorm
	}
	k.m.pool.Parallel(k.st.T(), 16, k.normFn)
	return nil
}

// buf is activation a's buffer.
func (k *cpuKernels) buf(a Act) []float32 {
	switch a {
	case ActX:
		return k.x
	case ActXN:
		return k.xn
	case ActQKV:
		return k.qkv
	case ActAtt:
		return k.att
	case ActGU:
		return k.gu
	case ActAct:
		return k.act
	}
	panic(fmt.Sprintf("model: activation %d", a))
}

func (k *cpuKernels) Linear(layer int, w Matrix, in, out Act, accumulate bool) error {
	c := &k.m.Config
	l := &k.m.layers[layer]
	var wt []float32
	var n, kk int
	switch w {
	case MatQKV:
		wt, n, kk = l.wqkv, c.QDim()+2*c.KVDim(), c.Dim
	case MatO:
		wt, n, kk = l.wo, c.Dim, c.QDim()
	case MatGU:
		wt, n, kk = l.wgu, 2*c.Hidden, c.Dim
	case MatDown:
		wt, n, kk = l.wdown, c.Dim, c.Hidden
	default:
		return fmt.Errorf("model: matrix %d", w)
	}
	T := k.st.T()
	dst := k.buf(out)[:T*n]
	if !accumulate {
		k.m.pool.MatMul(dst, k.buf(in), wt, T, kk, n)
		return nil
	}
	tmp := k.proj
	if len(tmp) < T*n {
		k.scratch = grow(k.scratch, T*n)
		tmp = k.scratch
	}
	tmp = tmp[:T*n]
	k.m.pool.MatMul(tmp, k.buf(in), wt, T, kk, n)
	cpu.Axpy(1, tmp, dst)
	return nil
}

func (k *cpuKernels) RopeStore(layer int) error {
	k.layer = layer
	k.m.pool.Parallel(k.st.T(), 4, k.ropeFn)
	return nil
}

func (k *cpuKernels) Attention(layer int) error {
	k.layer = layer
	k.next.Store(0)
	k.m.pool.Parallel(min(len(k.scores), len(k.st.Items)), 1, k.attnFn)
	return nil
}

func (k *cpuKernels) SwiGLU() error {
	k.m.pool.Parallel(k.st.T(), 4, k.actFn)
	return nil
}

func (k *cpuKernels) Logits() ([][]float32, error) {
	c := &k.m.Config
	n := len(k.st.LogitRows)
	if n == 0 {
		return k.out, nil
	}
	d := c.Dim
	k.xl = grow(k.xl, n*d)
	k.logits = grow(k.logits, n*c.Vocab)
	eps := float32(c.NormEps)
	for i, t := range k.st.LogitRows {
		cpu.RMSNorm(k.xl[i*d:(i+1)*d], k.x[int(t)*d:(int(t)+1)*d], k.m.norm, eps)
	}
	k.m.pool.MatMul(k.logits, k.xl, k.m.lmHead, n, d, c.Vocab)
	for i := range n {
		k.out = append(k.out, k.logits[i*c.Vocab:(i+1)*c.Vocab:(i+1)*c.Vocab])
	}
	return k.out, nil
}

// normRows writes RMSNorm(x, normW) to xn for rows [lo, hi).
func (k *cpuKernels) normRows(lo, hi int) {
	d := k.m.Config.Dim
	eps := float32(k.m.Config.NormEps)
	for t := lo; t < hi; t++ {
		cpu.RMSNorm(k.xn[t*d:(t+1)*d], k.x[t*d:(t+1)*d], k.normW, eps)
	}
}

// ropeRows finishes the q/k/v projections of rows [lo, hi): biases, rotary embedding of
// queries and keys, the attention scale folded into the queries, and keys and values
// stored in the cache.
func (k *cpuKernels) ropeRows(lo, hi int) {
	c := &k.m.Config
	hd, qd, kvd := c.HeadDim, c.QDim(), c.KVDim()
	width := qd + 2*kvd
	bias := k.m.layers[k.layer].bqkv
	kc, vc := k.c.k[k.layer], k.c.v[k.layer]
	scale := float32(1 / math.Sqrt(float64(hd)))
	for t := lo; t < hi; t++ {
		row := k.qkv[t*width : (t+1)*width]
		if bias != nil {
			cpu.Axpy(1, bias, row)
		}
		cos, sin := k.rope.row(int(k.st.Pos[t]))
		for h := range c.Heads {
			q := row[h*hd : (h+1)*hd]
			cpu.RotateHalf(q, cos, sin)
			for i := range q {
				q[i] *= scale
			}
		}
		key := row[qd : qd+kvd]
		for h := range c.KVHeads {
			cpu.RotateHalf(key[h*hd:(h+1)*hd], cos, sin)
		}
		off := int(k.st.Slot[t]) * kvd
		copy(kc[off:off+kvd], key)
		copy(vc[off:off+kvd], row[qd+kvd:width])
	}
}

// attnWorker is one attention worker: it takes work items off the shared counter until
// none is left. Each concurrent call gets a distinct lo, so scores[lo] is its own.
func (k *cpuKernels) attnWorker(lo, _ int) {
	buf := k.scores[lo]
	items := k.st.Items
	for {
		i := int(k.next.Add(1)) - 1
		if i >= len(items) {
			return
		}
		k.attend(items[i], buf)
	}
}

// attend computes one work item: for each of its queries, softmax of the (pre-scaled)
// query against the sequence's keys at positions [0, p], then the weighted sum of values.
func (k *cpuKernels) attend(it AttnItem, buf []float32) {
	c := &k.m.Config
	hd, qd, kvd := c.HeadDim, c.QDim(), c.KVDim()
	width := qd + 2*kvd
	bs := k.c.blockSize
	kvOff := int(it.Head) / (c.Heads / c.KVHeads) * hd
	kc, vc := k.c.k[k.layer], k.c.v[k.layer]
	s := &k.st.Batch[it.Seq]
	start := int(k.st.SeqStart[it.Seq])
	for i := int(it.Q0); i < int(it.Q1); i++ {
		t := start + i
		q := k.qkv[t*width+int(it.Head)*hd:][:hd]
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
		out := k.att[t*qd+int(it.Head)*hd:][:hd]
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
func (k *cpuKernels) actRows(lo, hi int) {
	h := k.m.Config.Hidden
	for t := lo; t < hi; t++ {
		row := k.gu[t*2*h : (t+1)*2*h]
		cpu.SiLUMul(row[:h], row[h:])
		copy(k.act[t*h:(t+1)*h], row[:h])
	}
}
