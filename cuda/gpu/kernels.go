package gpu

import (
	"fmt"
	"unsafe"

	"servelab/cuda/driver"
	"servelab/cuda/kernels"
	"servelab/engine/model"
)

// maxGridY is CUDA's limit on a grid's y (and z) dimension.
const maxGridY = 65535

// stream is the stream every kernel and copy runs on: the legacy default stream, which
// the synchronous cuMemcpy calls use too, so launches and copies run in issue order.
const defaultStream driver.Stream = 0

// devBuf is a device allocation grown on demand.
type devBuf struct {
	p    driver.DevicePtr
	size uintptr
}

// ensure makes buf hold at least n bytes, reallocating (without keeping the contents)
// with a quarter of headroom when it is short.
func (d *devBuf) ensure(dev device, n uintptr) error {
	if n <= d.size && d.p != 0 {
		return nil
	}
	if d.p != 0 {
		if err := dev.MemFree(d.p); err != nil {
			return err
		}
		d.p, d.size = 0, 0
	}
	n += n / 4
	if n == 0 {
		n = 256
	}
	p, err := dev.MemAlloc(n)
	if err != nil {
		return fmt.Errorf("allocating %d bytes: %w", n, err)
	}
	d.p, d.size = p, n
	return nil
}

// hostBuf is page-locked host memory (cuMemAllocHost) grown on demand as devBuf is. The
// device writes a copy into it by DMA directly; a copy into pageable memory the driver
// stages through its own pinned buffers, chunk by chunk, with a host memcpy of each, and
// the logits are 33 MB a step at batch 64 for Llama-3.1-8B's vocabulary of 128256 (131 MB
// at 256). cuda/driver's TestGPUMemcpyPinned logs both copies' bandwidth on a GPU.
type hostBuf struct {
	p    unsafe.Pointer
	size uintptr
}

// ensure makes h hold at least n bytes, as devBuf.ensure does: a short buffer is freed
// (its contents, and any slice over them, are gone) and reallocated with a quarter of
// headroom.
func (h *hostBuf) ensure(dev device, n uintptr) error {
	if n <= h.size && h.p != nil {
		return nil
	}
	if h.p != nil {
		if err := dev.MemFreeHost(h.p); err != nil {
			return err
		}
		h.p, h.size = nil, 0
	}
	n += n / 4
	if n == 0 {
		n = 256
	}
	p, err := dev.MemAllocHost(n)
	if err != nil {
		return fmt.Errorf("allocating %d bytes of page-locked host memory: %w", n, err)
	}
	h.p, h.size = p, n
	return nil
}

// f32 is the buffer's first n float32s (n·4 at most its size).
func (h *hostBuf) f32(n int) []float32 {
	if uintptr(n)*4 > h.size {
		panic(fmt.Sprintf("gpu: %d float32s in a host buffer of %d bytes", n, h.size))
	}
	return unsafe.Slice((*float32)(h.p), n)
}

// i32 is the n int32s of the buffer from its off-th (off+n at most its size in int32s).
func (h *hostBuf) i32(off, n int) []int32 {
	if uintptr(off+n)*4 > h.size {
		panic(fmt.Sprintf("gpu: int32s [%d, %d) in a host buffer of %d bytes", off, off+n, h.size))
	}
	return unsafe.Slice((*int32)(unsafe.Add(h.p, off*4)), n)
}

// gpuKernels is the CUDA backend of the forward pass ([model.Kernels]); its methods run on
// the backend's worker thread.
type gpuKernels struct {
	b     *Backend
	dtype string
	eps   float32
	scale float32

	st *model.Step

	// Activations, one buffer per model.Act, the logit rows and their argmax (int32).
	acts              [model.ActAct + 1]devBuf
	xl, logit, argmax devBuf
	// The step's layout, packed into one host array and one upload.
	layout devBuf
	host   []int32
	// Device pointers into layout.
	tokens, pos, slot, seqStart, seqPos, tables, decode, items, logitRows driver.DevicePtr
	nItems                                                                int // prefill items in items (grouped by kv head when prefillGQA)

	ropeN    int
	cos, sin devBuf
	// hostLogit receives the logit rows, then (LogitsTokens) their argmax: n·Vocab float32s
	// then n int32s for a step of n rows. out's rows and the tokens are slices of it, valid
	// until the next step.
	hostLogit hostBuf
	out       [][]float32
}

var _ model.TokenKernels = (*gpuKernels)(nil)

// actWidth is activation a's row width in elements.
func (k *gpuKernels) actWidth(a model.Act) int {
	c := &k.b.cfg
	switch a {
	case model.ActX, model.ActXN:
		return c.Dim
	case model.ActQKV:
		return c.QDim() + 2*c.KVDim()
	case model.ActAtt:
		return c.QDim()
	case model.ActGU:
		return 2 * c.Hidden
	case model.ActAct:
		return c.Hidden
	}
	panic(fmt.Sprintf("gpu: activation %d", a))
}

// reserve sizes the activations for rows tokens and logits and their argmax for logitRows
// rows, on the device and in page-locked host memory.
func (k *gpuKernels) reserve(rows, logitRows int) error {
	dev := k.b.dev
	for a := range k.acts {
		if err := k.acts[a].ensure(dev, uintptr(rows*k.actWidth(model.Act(a))*4)); err != nil {
			return err
		}
	}
	if err := k.xl.ensure(dev, uintptr(logitRows*k.b.cfg.Dim*4)); err != nil {
		return err
	}
	if err := k.logit.ensure(dev, uintptr(logitRows*k.b.cfg.Vocab*4)); err != nil {
		return err
	}
	if err := k.argmax.ensure(dev, uintptr(logitRows*4)); err != nil {
		return err
	}
	return k.hostLogit.ensure(dev, uintptr(logitRows*(k.b.cfg.Vocab+1)*4))
}

// ensureRope makes the rotary tables cover positions [0, n), growing them to at least
// double as the CPU's do; the values are model.RopeTables', the CPU's.
func (k *gpuKernels) ensureRope(n int) error {
	if n <= k.ropeN {
		return nil
	}
	if k.ropeN > 0 {
		n = max(n, 2*k.ropeN)
	}
	cos, sin := model.RopeTables(k.b.cfg, n)
	size := uintptr(len(cos) * 4)
	if err := k.cos.ensure(k.b.dev, size); err != nil {
		return err
	}
	if err := k.sin.ensure(k.b.dev, size); err != nil {
		return err
	}
	if err := k.b.dev.MemcpyHtoD(k.cos.p, bytesOf(cos)); err != nil {
		return err
	}
	if err := k.b.dev.MemcpyHtoD(k.sin.p, bytesOf(sin)); err != nil {
		return err
	}
	k.ropeN = n
	return nil
}

// freeAll frees the device buffers with free and the page-locked host buffer with
// freeHost.
func (k *gpuKernels) freeAll(free func(driver.DevicePtr), freeHost func(unsafe.Pointer)) {
	for i := range k.acts {
		free(k.acts[i].p)
	}
	for _, d := range []*devBuf{&k.xl, &k.logit, &k.argmax, &k.layout, &k.cos, &k.sin} {
		free(d.p)
	}
	k.acts = [model.ActAct + 1]devBuf{}
	k.xl, k.logit, k.argmax, k.layout, k.cos, k.sin = devBuf{}, devBuf{}, devBuf{}, devBuf{}, devBuf{}, devBuf{}
	k.ropeN = 0
	if k.hostLogit.p != nil {
		freeHost(k.hostLogit.p)
	}
	k.hostLogit, k.out = hostBuf{}, nil
}

// Begin uploads the step's layout in one copy and sizes the activations.
func (k *gpuKernels) Begin(st *model.Step) error {
	k.st = st
	k.out = k.out[:0]
	T := st.T()
	if T == 0 {
		return nil
	}
	if err := k.ensureRope(st.MaxCtx); err != nil {
		return err
	}
	if err := k.reserve(T, len(st.LogitRows)); err != nil {
		return err
	}
	k.host = k.host[:0]
	var offs [9]int
	sections := [9][]int32{st.Tokens, st.Pos, st.Slot, st.SeqStart, st.SeqPos, st.BlockTables, st.DecodeSeqs, nil, st.LogitRows}
	for i, s := range sections {
		// Each section starts 16-byte aligned, for kernels that load int4 vectors.
		for len(k.host)%4 != 0 {
			k.host = append(k.host, 0)
		}
		offs[i] = len(k.host)
		if i == 7 {
			// sl_attn_prefill_bf16_gqa takes one item per (sequence, kv head, query
			// tile): the items of each group's first query head, with kv head
			// head/group (the engine tiles every head of a sequence alike).
			group := int32(k.b.cfg.Heads / k.b.cfg.KVHeads)
			k.nItems = 0
			for _, it := range st.PrefillItems {
				if !k.prefillGQA() {
					k.host = append(k.host, it.Seq, it.Head, it.Q0, it.Q1)
				} else if it.Head%group == 0 {
					k.host = append(k.host, it.Seq, it.Head/group, it.Q0, it.Q1)
				} else {
					continue
				}
				k.nItems++
			}
			continue
		}
		k.host = append(k.host, s...)
	}
	// The layout is uploaded from pageable memory: it is small beside the logits (at batch
	// 64 mostly the block tables, 64 · MaxBlocks · 4 bytes: 32 KiB at 2048 tokens of
	// context, against 33 MB of Llama-3.1-8B logits), so the driver's staging copy of it
	// is a host memcpy of that size, and a page-locked array would have to be sized
	// before the sections are packed.
	if err := k.layout.ensure(k.b.dev, uintptr(len(k.host)*4)); err != nil {
		return err
	}
	base := k.layout.p
	ptr := func(i int) driver.DevicePtr { return base + driver.DevicePtr(offs[i]*4) }
	k.tokens, k.pos, k.slot, k.seqStart, k.seqPos = ptr(0), ptr(1), ptr(2), ptr(3), ptr(4)
	k.tables, k.decode, k.items, k.logitRows = ptr(5), ptr(6), ptr(7), ptr(8)
	return k.b.dev.MemcpyHtoD(base, bytesOf(k.host))
}

func (k *gpuKernels) act(a model.Act) driver.DevicePtr { return k.acts[a].p }

// prefillGQA says whether Attention runs prefill through sl_attn_prefill_bf16_gqa: bf16,
// more than one query head per kv head, and a group and head dim it takes
// (kernels.FlashGQA); otherwise sl_attn_prefill_bf16 (bf16) or sl_attn_prefill.
func (k *gpuKernels) prefillGQA() bool {
	c := &k.b.cfg
	return k.dtype == BFloat16 && c.Heads > c.KVHeads && kernels.FlashGQA(c.Heads, c.KVHeads, c.HeadDim)
}

func (k *gpuKernels) Embed() error {
	x, T, d := k.act(model.ActX), k.st.T(), k.b.cfg.Dim
	if k.dtype == BFloat16 {
		return k.b.ops.EmbedBF16(defaultStream, x, k.b.wts.embed, k.tokens, T, d)
	}
	return k.b.ops.EmbedF32(defaultStream, x, k.b.wts.embed, k.tokens, T, d)
}

func (k *gpuKernels) RMSNorm(layer int, w model.Norm) error {
	l := &k.b.wts.layers[layer]
	wt := l.attnNorm
	if w == model.NormFFN {
		wt = l.ffnNorm
	}
	return k.b.ops.RMSNorm(defaultStream, k.act(model.ActXN), k.act(model.ActX), 0, wt, k.st.T(), k.b.cfg.Dim, k.eps)
}

func (k *gpuKernels) Linear(layer int, w model.Matrix, in, out model.Act, accumulate bool) error {
	c := &k.b.cfg
	l := &k.b.wts.layers[layer]
	var wt driver.DevicePtr
	var n, kk int
	switch w {
	case model.MatQKV:
		wt, n, kk = l.wqkv, c.QDim()+2*c.KVDim(), c.Dim
	case model.MatO:
		wt, n, kk = l.wo, c.Dim, c.QDim()
	case model.MatGU:
		wt, n, kk = l.wgu, 2*c.Hidden, c.Dim
	case model.MatDown:
		wt, n, kk = l.wdown, c.Dim, c.Hidden
	default:
		return fmt.Errorf("matrix %d", w)
	}
	return k.b.ops.Linear(defaultStream, k.act(out), k.act(in), wt, k.st.T(), n, kk, k.dtype, accumulate)
}

func (k *gpuKernels) RopeStore(layer int) error {
	c := &k.b.cfg
	return k.b.ops.RopeStore(defaultStream, k.act(model.ActQKV), k.b.wts.layers[layer].bqkv, k.cos.p, k.sin.p, k.pos, k.slot,
		k.b.kcache[layer], k.b.vcache[layer], k.st.T(), c.Heads, c.KVHeads, c.HeadDim, k.scale)
}

func (k *gpuKernels) Attention(layer int) error {
	c := &k.b.cfg
	st := k.st
	// sl_attn_decode's grid is (heads, sequences), and a grid's y is at most 65535: a
	// larger decode batch launches in parts, each over its stretch of the sequence list.
	for i, n := 0, len(st.DecodeSeqs); i < n; i += maxGridY {
		seqs := k.decode + driver.DevicePtr(4*i)
		if err := k.b.ops.AttnDecode(defaultStream, k.act(model.ActAtt), k.act(model.ActQKV), k.b.kcache[layer], k.b.vcache[layer],
			seqs, k.seqStart, k.seqPos, k.tables, min(maxGridY, n-i), st.MaxBlocks, c.Heads, c.KVHeads, c.HeadDim, k.b.blockSize); err != nil {
			return err
		}
	}
	if n := k.nItems; n > 0 {
		// bfloat16: the tensor-core flash-attention kernel (q, k, v and p rounded to bf16,
		// as the bf16 GEMMs round x), with a block per kv head's group of query heads where
		// it takes the model (Begin grouped the items); float32 keeps the exact scalar kernel.
		if k.prefillGQA() {
			return k.b.ops.AttnPrefillBF16GQA(defaultStream, k.act(model.ActAtt), k.act(model.ActQKV), k.b.kcache[layer], k.b.vcache[layer],
				k.items, k.seqStart, k.seqPos, k.tables, n, st.MaxBlocks, c.Heads, c.KVHeads, c.HeadDim, k.b.blockSize)
		}
		if k.dtype == BFloat16 && c.HeadDim <= kernels.FlashMaxHeadDim {
			return k.b.ops.AttnPrefillBF16(defaultStream, k.act(model.ActAtt), k.act(model.ActQKV), k.b.kcache[layer], k.b.vcache[layer],
				k.items, k.seqStart, k.seqPos, k.tables, n, st.MaxBlocks, c.Heads, c.KVHeads, c.HeadDim, k.b.blockSize)
		}
		return k.b.ops.AttnPrefill(defaultStream, k.act(model.ActAtt), k.act(model.ActQKV), k.b.kcache[layer], k.b.vcache[layer],
			k.items, k.seqStart, k.seqPos, k.tables, n, st.MaxBlocks, c.Heads, c.KVHeads, c.HeadDim, k.b.blockSize)
	}
	return nil
}

func (k *gpuKernels) SwiGLU() error {
	return k.b.ops.SiLUMul(defaultStream, k.act(model.ActAct), k.act(model.ActGU), k.st.T(), k.b.cfg.Hidden)
}

// Logits normalises the logit rows, applies lm_head and copies the logits to the host;
// the copy waits for the step's kernels, so their errors surface here. A step without
// logits synchronises instead.
func (k *gpuKernels) Logits() ([][]float32, error) {
	out, _, err := k.logits(false)
	return out, err
}

// LogitsTokens is Logits with the argmax of the greedy rows (st.GreedyLogits) taken on the
// device: sl_argmax over every row, the n tokens copied back, and only the other rows'
// logits, each run of consecutive non-greedy rows in one copy. A greedy row is the copy the
// engine would only reduce to its argmax on the host (513 KB a sequence for a vocabulary of
// 128256), and the argmax is one read of the rows already on the device.
func (k *gpuKernels) LogitsTokens() ([][]float32, []int32, error) {
	return k.logits(true)
}

// logits is Logits, and LogitsTokens when tokens is set and the step has greedy rows.
func (k *gpuKernels) logits(tokens bool) ([][]float32, []int32, error) {
	c := &k.b.cfg
	n := len(k.st.LogitRows)
	if n == 0 {
		return k.out, nil, k.b.dev.CtxSynchronize()
	}
	if err := k.b.ops.RMSNorm(defaultStream, k.xl.p, k.act(model.ActX), k.logitRows, k.b.wts.norm, n, c.Dim, k.eps); err != nil {
		return nil, nil, err
	}
	if err := k.b.ops.Linear(defaultStream, k.logit.p, k.xl.p, k.b.wts.lmHead, n, c.Vocab, c.Dim, k.dtype, false); err != nil {
		return nil, nil, err
	}
	// Begin's reserve sized hostLogit for the step's rows and their tokens.
	host := k.hostLogit.f32(n * c.Vocab)
	greedy := k.st.GreedyLogits
	if !tokens || len(greedy) == 0 {
		if err := k.b.dev.MemcpyDtoH(bytesOf(host), k.logit.p); err != nil {
			return nil, nil, err
		}
		for i := range n {
			k.out = append(k.out, host[i*c.Vocab:(i+1)*c.Vocab:(i+1)*c.Vocab])
		}
		return k.out, nil, nil
	}
	if err := k.b.ops.Argmax(defaultStream, k.argmax.p, k.logit.p, n, c.Vocab); err != nil {
		return nil, nil, err
	}
	toks := k.hostLogit.i32(n*c.Vocab, n)
	if err := k.b.dev.MemcpyDtoH(bytesOf(toks), k.argmax.p); err != nil {
		return nil, nil, err
	}
	// The non-greedy rows keep their places in host (and so Logits' layout): row i at
	// i·Vocab. greedy is ascending, so the runs between its entries are the rows to copy.
	row := 0
	for g := 0; row < n; g++ {
		end := n
		if g < len(greedy) {
			end = int(greedy[g])
		}
		if end > row {
			run := host[row*c.Vocab : end*c.Vocab]
			if err := k.b.dev.MemcpyDtoH(bytesOf(run), k.logit.p+driver.DevicePtr(row*c.Vocab*4)); err != nil {
				return nil, nil, err
			}
			for i := row; i < end; i++ {
				k.out = append(k.out, host[i*c.Vocab:(i+1)*c.Vocab:(i+1)*c.Vocab])
			}
		}
		if end < n {
			k.out = append(k.out, nil) // greedy row end
		}
		row = end + 1
	}
	return k.out, toks, nil
}
