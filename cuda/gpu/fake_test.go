package gpu

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"unsafe"

	"servelab/cuda/driver"
	"servelab/cuda/kernels"
	"servelab/engine/cpu"
	"servelab/engine/safetensors"
)

// fakeDevice is device memory in host memory: pointers are offsets in a flat address
// space, each allocation its own byte slice. Any access outside an allocation panics
// (the test fails), as a GPU would fault. failAt > 0 makes the failAt-th call of
// countFrom's kind fail, for error-path tests.
type fakeDevice struct {
	total  uint64
	next   uint64
	allocs map[uint64][]byte
	bases  []uint64 // sorted
	used   uint64
	other  uint64 // memory some other user holds

	calls    int
	failAt   int
	failCall string

	host testHost
	// pinnedDtoH and pageableDtoH count MemcpyDtoH calls into a host allocation and
	// into other memory.
	pinnedDtoH, pageableDtoH int
}

// testHost is page-locked host memory as the test devices give it (MemAllocHost,
// MemFreeHost): Go memory, with the allocations and frees counted. A free overwrites the
// memory with 0xff bytes (NaN as float32), so a reader of a freed buffer sees NaN logits
// instead of the last step's.
type testHost struct {
	mu            sync.Mutex
	live          map[unsafe.Pointer][]byte
	allocs, frees int
}

func (h *testHost) alloc(n uintptr) unsafe.Pointer {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.live == nil {
		h.live = map[unsafe.Pointer][]byte{}
	}
	b := make([]byte, n)
	p := unsafe.Pointer(&b[0])
	h.live[p] = b
	h.allocs++
	return p
}

func (h *testHost) free(p unsafe.Pointer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, ok := h.live[p]
	if !ok {
		return fmt.Errorf("cuda: cuMemFreeHost of %p, not a host allocation: CUDA_ERROR_INVALID_VALUE (1)", p)
	}
	for i := range b {
		b[i] = 0xff
	}
	delete(h.live, p)
	h.frees++
	return nil
}

// holds reports whether dst lies inside one host allocation.
func (h *testHost) holds(dst []byte) bool {
	if len(dst) == 0 {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	lo := uintptr(unsafe.Pointer(&dst[0]))
	for p, b := range h.live {
		if base := uintptr(p); lo >= base && lo+uintptr(len(dst)) <= base+uintptr(len(b)) {
			return true
		}
	}
	return false
}

// counts is (allocations, frees, live allocations).
func (h *testHost) counts() (allocs, frees, live int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.allocs, h.frees, len(h.live)
}

func newFakeDevice(total uint64) *fakeDevice {
	return &fakeDevice{total: total, next: 1 << 20, allocs: map[uint64][]byte{}}
}

var errFake = errors.New("cuda: fake: CUDA_ERROR_ILLEGAL_ADDRESS (700)")

func (f *fakeDevice) fail(call string) error {
	if f.failCall != call {
		return nil
	}
	f.calls++
	if f.calls == f.failAt {
		return fmt.Errorf("%s: %w", call, errFake)
	}
	return nil
}

// mem returns n bytes of device memory at p.
func (f *fakeDevice) mem(p driver.DevicePtr, n uintptr) []byte {
	addr := uint64(p)
	i := sort.Search(len(f.bases), func(i int) bool { return f.bases[i] > addr }) - 1
	if i >= 0 {
		base := f.bases[i]
		b := f.allocs[base]
		if addr < base+uint64(len(b)) {
			off := addr - base
			if off+uint64(n) > uint64(len(b)) {
				panic(fmt.Sprintf("fake device: access [%#x, +%d) overruns the allocation at %#x of %d bytes", addr, n, base, len(b)))
			}
			return b[off : off+uint64(n)]
		}
	}
	if n == 0 {
		return nil
	}
	panic(fmt.Sprintf("fake device: %#x is not allocated", addr))
}

func (f *fakeDevice) f32(p driver.DevicePtr, n int) []float32 {
	if n == 0 {
		return nil
	}
	b := f.mem(p, uintptr(n*4))
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
}

func (f *fakeDevice) i32(p driver.DevicePtr, n int) []int32 {
	if n == 0 {
		return nil
	}
	b := f.mem(p, uintptr(n*4))
	return unsafe.Slice((*int32)(unsafe.Pointer(&b[0])), n)
}

func (f *fakeDevice) u16(p driver.DevicePtr, n int) []uint16 {
	b := f.mem(p, uintptr(n*2))
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
}

func (f *fakeDevice) MemAlloc(n uintptr) (driver.DevicePtr, error) {
	if err := f.fail("MemAlloc"); err != nil {
		return 0, err
	}
	if f.used+f.other+uint64(n) > f.total {
		return 0, errors.New("cuda: cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)")
	}
	p := f.next
	f.allocs[p] = make([]byte, n)
	f.bases = append(f.bases, p)
	f.used += uint64(n)
	f.next += (uint64(n) + 511) &^ 255
	return driver.DevicePtr(p), nil
}

func (f *fakeDevice) MemFree(p driver.DevicePtr) error {
	b, ok := f.allocs[uint64(p)]
	if !ok {
		return fmt.Errorf("fake device: free of %#x, not an allocation", uint64(p))
	}
	f.used -= uint64(len(b))
	delete(f.allocs, uint64(p))
	i := sort.Search(len(f.bases), func(i int) bool { return f.bases[i] >= uint64(p) })
	f.bases = append(f.bases[:i], f.bases[i+1:]...)
	return nil
}

func (f *fakeDevice) MemAllocHost(n uintptr) (unsafe.Pointer, error) {
	if err := f.fail("MemAllocHost"); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("cuda: cuMemAllocHost_v2 of 0 bytes: CUDA_ERROR_INVALID_VALUE (1)")
	}
	return f.host.alloc(n), nil
}

func (f *fakeDevice) MemFreeHost(p unsafe.Pointer) error { return f.host.free(p) }

func (f *fakeDevice) MemcpyHtoD(dst driver.DevicePtr, src []byte) error {
	if err := f.fail("MemcpyHtoD"); err != nil {
		return err
	}
	copy(f.mem(dst, uintptr(len(src))), src)
	return nil
}

func (f *fakeDevice) MemcpyDtoH(dst []byte, src driver.DevicePtr) error {
	if err := f.fail("MemcpyDtoH"); err != nil {
		return err
	}
	if f.host.holds(dst) {
		f.pinnedDtoH++
	} else {
		f.pageableDtoH++
	}
	copy(dst, f.mem(src, uintptr(len(dst))))
	return nil
}

func (f *fakeDevice) MemsetD8(dst driver.DevicePtr, v uint8, n uintptr) error {
	b := f.mem(dst, n)
	for i := range b {
		b[i] = v
	}
	return nil
}

func (f *fakeDevice) CtxSynchronize() error { return f.fail("CtxSynchronize") }

func (f *fakeDevice) MemGetInfo() (free, total uint64, err error) {
	return f.total - f.used - f.other, f.total, nil
}

// liveAllocs lists the device and host allocations' sizes, for leak checks.
func (f *fakeDevice) liveAllocs() []int {
	var n []int
	for _, b := range f.allocs {
		n = append(n, len(b))
	}
	f.host.mu.Lock()
	for _, b := range f.host.live {
		n = append(n, len(b))
	}
	f.host.mu.Unlock()
	sort.Ints(n)
	return n
}

// fakeOps implements cuda/kernels' launch contract (ops.go's comments) in plain Go over
// the fake device: a reference for what the backend asks of the kernels, not a copy of
// the CPU engine's code (sums run in a different order, so logits match the CPU's within
// float32 rounding, not bit for bit).
type fakeOps struct {
	d        *fakeDevice
	launches map[string]int // by kernel (Linear's by "linear_" and dtype)
}

func (o *fakeOps) count(name string) error {
	if o.launches == nil {
		o.launches = map[string]int{}
	}
	o.launches[name]++
	return o.d.fail("launch")
}

func (o *fakeOps) EmbedF32(_ driver.Stream, x, table, tokens driver.DevicePtr, rows, dim int) error {
	toks := o.d.i32(tokens, rows)
	out := o.d.f32(x, rows*dim)
	for r, t := range toks {
		copy(out[r*dim:(r+1)*dim], o.d.f32(table+driver.DevicePtr(int(t)*dim*4), dim))
	}
	return o.count("sl_embed_f32")
}

func (o *fakeOps) EmbedBF16(_ driver.Stream, x, table, tokens driver.DevicePtr, rows, dim int) error {
	toks := o.d.i32(tokens, rows)
	out := o.d.f32(x, rows*dim)
	for r, t := range toks {
		for i, b := range o.d.u16(table+driver.DevicePtr(int(t)*dim*2), dim) {
			out[r*dim+i] = safetensors.BF16ToFloat32(b)
		}
	}
	return o.count("sl_embed_bf16")
}

func (o *fakeOps) RMSNorm(_ driver.Stream, out, x, rowIdx, w driver.DevicePtr, rows, dim int, eps float32) error {
	var idx []int32
	if rowIdx != 0 {
		idx = o.d.i32(rowIdx, rows)
	}
	wt := o.d.f32(w, dim)
	dst := o.d.f32(out, rows*dim)
	for r := range rows {
		src := r
		if idx != nil {
			src = int(idx[r])
		}
		cpu.RMSNorm(dst[r*dim:(r+1)*dim], o.d.f32(x+driver.DevicePtr(src*dim*4), dim), wt, eps)
	}
	return o.count("sl_rmsnorm")
}

func (o *fakeOps) RopeStore(_ driver.Stream, qkv, bias, cos, sin, tokPos, tokSlot, kcache, vcache driver.DevicePtr, rows, heads, kvHeads, headDim int, scale float32) error {
	width := (heads + 2*kvHeads) * headDim
	qd, kvd, half := heads*headDim, kvHeads*headDim, headDim/2
	pos, slot := o.d.i32(tokPos, rows), o.d.i32(tokSlot, rows)
	all := o.d.f32(qkv, rows*width)
	for r := range rows {
		row := all[r*width : (r+1)*width]
		if bias != 0 {
			for i, b := range o.d.f32(bias, width) {
				row[i] += b
			}
		}
		c := o.d.f32(cos+driver.DevicePtr(int(pos[r])*half*4), half)
		s := o.d.f32(sin+driver.DevicePtr(int(pos[r])*half*4), half)
		for h := range heads + kvHeads {
			cpu.RotateHalf(row[h*headDim:(h+1)*headDim], c, s)
		}
		for i := range qd {
			row[i] *= scale
		}
		copy(o.d.f32(kcache+driver.DevicePtr(int(slot[r])*kvd*4), kvd), row[qd:qd+kvd])
		copy(o.d.f32(vcache+driver.DevicePtr(int(slot[r])*kvd*4), kvd), row[qd+kvd:])
	}
	return o.count("sl_rope_store")
}

// attendOne is one query's attention over positions [0, ctx) of sequence seq.
func (o *fakeOps) attendOne(out, qkv, kcache, vcache, tables driver.DevicePtr, seq, row, head, ctx, maxBlocks, heads, kvHeads, headDim, blockSize int) {
	width := (heads + 2*kvHeads) * headDim
	kvd := kvHeads * headDim
	kvh := head / (heads / kvHeads)
	q := o.d.f32(qkv+driver.DevicePtr((row*width+head*headDim)*4), headDim)
	tbl := o.d.i32(tables+driver.DevicePtr(seq*maxBlocks*4), maxBlocks)
	sc := make([]float64, ctx)
	mx := math.Inf(-1)
	for j := range ctx {
		slot := int(tbl[j/blockSize])*blockSize + j%blockSize
		k := o.d.f32(kcache+driver.DevicePtr((slot*kvd+kvh*headDim)*4), headDim)
		var s float32
		for i := range q {
			s += q[i] * k[i]
		}
		sc[j] = float64(s)
		mx = max(mx, sc[j])
	}
	var sum float64
	for j := range sc {
		sc[j] = math.Exp(sc[j] - mx)
		sum += sc[j]
	}
	dst := o.d.f32(out+driver.DevicePtr((row*heads*headDim+head*headDim)*4), headDim)
	clear(dst)
	for j := range ctx {
		slot := int(tbl[j/blockSize])*blockSize + j%blockSize
		v := o.d.f32(vcache+driver.DevicePtr((slot*kvd+kvh*headDim)*4), headDim)
		p := float32(sc[j] / sum)
		for i := range dst {
			dst[i] += p * v[i]
		}
	}
}

func (o *fakeOps) AttnDecode(_ driver.Stream, out, qkv, kcache, vcache, seqs, seqStart, seqPos, blockTables driver.DevicePtr, nSeqs, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	for _, q := range o.d.i32(seqs, nSeqs) {
		row := int(o.d.i32(seqStart+driver.DevicePtr(q*4), 1)[0])
		pos := int(o.d.i32(seqPos+driver.DevicePtr(q*4), 1)[0])
		for h := range heads {
			o.attendOne(out, qkv, kcache, vcache, blockTables, int(q), row, h, pos+1, maxBlocks, heads, kvHeads, headDim, blockSize)
		}
	}
	return o.count("sl_attn_decode")
}

func (o *fakeOps) AttnPrefill(_ driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	if err := o.prefill(out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables, nItems, maxBlocks, heads, kvHeads, headDim, blockSize); err != nil {
		return err
	}
	return o.count("sl_attn_prefill")
}

// prefill computes AttnPrefill's items.
func (o *fakeOps) prefill(out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	it := o.d.i32(items, 4*nItems)
	for n := range nItems {
		seq, head, q0, q1 := int(it[4*n]), int(it[4*n+1]), int(it[4*n+2]), int(it[4*n+3])
		if q1-q0 <= 0 || q1-q0 > 16 {
			return fmt.Errorf("fake: item %d covers %d queries", n, q1-q0)
		}
		start := int(o.d.i32(seqStart+driver.DevicePtr(seq*4), 1)[0])
		pos := int(o.d.i32(seqPos+driver.DevicePtr(seq*4), 1)[0])
		for i := q0; i < q1; i++ {
			o.attendOne(out, qkv, kcache, vcache, blockTables, seq, start+i, head, pos+i+1, maxBlocks, heads, kvHeads, headDim, blockSize)
		}
	}
	return nil
}

// AttnPrefillBF16 is AttnPrefill's contract (the fake does not model the kernel's bf16
// rounding of q, k, v and p; the bf16 comparisons' 1% covers it) with its head-dim limit.
func (o *fakeOps) AttnPrefillBF16(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	if headDim > kernels.FlashMaxHeadDim {
		return fmt.Errorf("fake: sl_attn_prefill_bf16: head dim %d above %d", headDim, kernels.FlashMaxHeadDim)
	}
	if err := o.prefill(out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables, nItems, maxBlocks, heads, kvHeads, headDim, blockSize); err != nil {
		return err
	}
	return o.count("sl_attn_prefill_bf16")
}

// AttnPrefillBF16GQA is AttnPrefillBF16's contract over items {seq, kvHead, q0, q1},
// each for the query heads kvHead·G .. kvHead·G+G-1, with kernels.FlashGQA's limits.
func (o *fakeOps) AttnPrefillBF16GQA(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	if !kernels.FlashGQA(heads, kvHeads, headDim) {
		return fmt.Errorf("fake: sl_attn_prefill_bf16_gqa: %d heads over %d kv heads, head dim %d", heads, kvHeads, headDim)
	}
	group := heads / kvHeads
	it := o.d.i32(items, 4*nItems)
	for n := range nItems {
		seq, kvh, q0, q1 := int(it[4*n]), int(it[4*n+1]), int(it[4*n+2]), int(it[4*n+3])
		if q1-q0 <= 0 || q1-q0 > 16 || kvh >= kvHeads {
			return fmt.Errorf("fake: item %d: kv head %d, %d queries", n, kvh, q1-q0)
		}
		start := int(o.d.i32(seqStart+driver.DevicePtr(seq*4), 1)[0])
		pos := int(o.d.i32(seqPos+driver.DevicePtr(seq*4), 1)[0])
		for h := kvh * group; h < (kvh+1)*group; h++ {
			for i := q0; i < q1; i++ {
				o.attendOne(out, qkv, kcache, vcache, blockTables, seq, start+i, h, pos+i+1, maxBlocks, heads, kvHeads, headDim, blockSize)
			}
		}
	}
	return o.count("sl_attn_prefill_bf16_gqa")
}

func (o *fakeOps) SiLUMul(_ driver.Stream, act, gu driver.DevicePtr, rows, hidden int) error {
	a, g := o.d.f32(act, rows*hidden), o.d.f32(gu, rows*2*hidden)
	for r := range rows {
		row := append([]float32(nil), g[r*2*hidden:(r+1)*2*hidden]...)
		cpu.SiLUMul(row[:hidden], row[hidden:])
		copy(a[r*hidden:(r+1)*hidden], row[:hidden])
	}
	return o.count("sl_silu_mul")
}

func (o *fakeOps) Linear(_ driver.Stream, y, x, w driver.DevicePtr, rows, n, k int, dtype string, accumulate bool) error {
	xs, ys := o.d.f32(x, rows*k), o.d.f32(y, rows*n)
	var wf []float32
	switch dtype {
	case Float32:
		wf = o.d.f32(w, n*k)
	case BFloat16:
		if k%8 != 0 {
			return fmt.Errorf("kernels: k = %d: want a multiple of 8", k)
		}
		wf = make([]float32, n*k)
		for i, b := range o.d.u16(w, n*k) {
			wf[i] = safetensors.BF16ToFloat32(b)
		}
	default:
		return fmt.Errorf("kernels: weight dtype %q", dtype)
	}
	if dtype == BFloat16 && rows > 8 {
		// The tensor-core GEMMs (sl_gemm_bf16_skinny to 64 rows, sl_gemm_bf16 above) round x to
		// bfloat16 as they load it (GemvBF16, at most 8 rows, does not).
		xr := make([]float32, len(xs))
		for i, v := range xs {
			xr[i] = safetensors.BF16ToFloat32(safetensors.Float32ToBF16(v))
		}
		xs = xr
	}
	for r := range rows {
		for j := range n {
			var s float32
			xr, wr := xs[r*k:(r+1)*k], wf[j*k:(j+1)*k]
			for i := range xr {
				s += xr[i] * wr[i]
			}
			if accumulate {
				ys[r*n+j] += s
			} else {
				ys[r*n+j] = s
			}
		}
	}
	return o.count("linear_" + dtype)
}

// Argmax is sl_argmax's contract: per row, the index of the largest value, the lowest
// among equals, NaN never chosen (0 when every value is NaN).
func (o *fakeOps) Argmax(_ driver.Stream, idx, logits driver.DevicePtr, rows, vocab int) error {
	out, all := o.d.i32(idx, rows), o.d.f32(logits, rows*vocab)
	for r := range rows {
		best := -1
		for i, v := range all[r*vocab : (r+1)*vocab] {
			if !math.IsNaN(float64(v)) && (best < 0 || v > all[r*vocab+best]) {
				best = i
			}
		}
		out[r] = int32(max(best, 0))
	}
	return o.count("sl_argmax")
}

// fakeOpener opens the fake device, as openCUDA opens a GPU.
func fakeOpener(d *fakeDevice, o *fakeOps, closed *int) opener {
	return func(int) (*opened, error) {
		return &opened{dev: d, ops: o, name: "Fake GPU", image: "fake", close: func() error { *closed++; return nil }}, nil
	}
}
