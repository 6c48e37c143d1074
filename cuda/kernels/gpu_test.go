package kernels

import (
	"servelab/internal/gputest"

	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"unsafe"

	"servelab/cuda/driver"
	"servelab/engine/cpu"
	"servelab/engine/sampling"
)

// tol is a comparison's tolerance: |got - want| <= Abs + Rel·scale, where scale is
// |want| for elementwise kernels and Σ|x_i·w_i| (plus |y| when accumulating) for matrix
// products, whose float32 rounding error grows with that sum, not with the result.
type tol struct{ Abs, Rel float64 }

// tolerances: what each class of kernel may differ from its CPU reference by, per dtype
// (see kernels.cu's header for why they differ at all).
var tolerances = map[string]tol{
	// Copies, bf16→f32 conversions and one rounded add: bit for bit.
	"f32 exact": {0, 0},
	// RoPE (products and sums rounded separately, as the CPU) and SwiGLU (expf within 2
	// ulp; the CPU's AVX-512 exp is a polynomial within ~1e-7).
	"f32 elementwise": {Abs: 1e-6, Rel: 2e-6},
	// Reductions in another order: RMSNorm, softmax, attention (an online softmax).
	"f32 reduction": {Abs: 2e-6, Rel: 1e-4},
	// float32 GEMM/GEMV sums, relative to Σ|x·w|.
	"f32 matmul": {Rel: 3e-5},
	// sl_gemm_bf16 against its exact semantics (x rounded to bf16, float32 sums), relative
	// to Σ|x̃·w|.
	"bf16 matmul": {Rel: 3e-5},
	// sl_gemm_bf16 against the CPU engine, which keeps x in float32: rounding x to bf16
	// moves each product by up to 2^-9 of itself.
	"bf16 matmul vs cpu": {Rel: 4e-3},
	// sl_attn_prefill_bf16 against its exact semantics (q, k and v rounded to bf16, the
	// softmax and the weighted sum in float64), relative to Σ_j w_j·|ṽ_jd| (w the softmax
	// weights): what the reference does not model is P's rounding to bf16 for P·V (each
	// term moves by at most u = 2^-8 of itself, bf16 keeping 8 significant bits; the
	// normaliser sums the unrounded P) and float32 exp and sums (~1e-6 relative).
	"bf16 attention": {Abs: 1e-6, Rel: 1.0/256 + 1e-4},
	// sl_attn_prefill_bf16 against the CPU engine (float32 throughout): the scale of each
	// output is its bound (see attnBF16Ref), so Rel is 1.
	"bf16 attention vs cpu": {Abs: 1e-6, Rel: 1},
}

// gpu is a test's CUDA context and the loaded kernels, or the CPU emulation of them
// (cuda/kernels/emu through MatchCPUEmulated: d is nil, emulated is set).
type gpu struct {
	t        testing.TB
	d        *driver.Driver
	ctx      driver.Context
	mem      memory
	m        *Module
	alloc    []driver.DevicePtr
	emulated bool
}

// memory is device memory: the GPU's through the driver, or the emulation's.
type memory interface {
	alloc(n int) (driver.DevicePtr, error)
	htod(p driver.DevicePtr, b []byte) error
	dtoh(b []byte, p driver.DevicePtr) error
	sync() error
}

type cudaMemory struct{ d *driver.Driver }

func (c cudaMemory) alloc(n int) (driver.DevicePtr, error)   { return c.d.MemAlloc(uintptr(n)) }
func (c cudaMemory) htod(p driver.DevicePtr, b []byte) error { return c.d.MemcpyHtoD(p, b) }
func (c cudaMemory) dtoh(b []byte, p driver.DevicePtr) error { return c.d.MemcpyDtoH(b, p) }
func (c cudaMemory) sync() error                             { return c.d.CtxSynchronize() }

// small says whether a case of work multiply-adds runs: all on a GPU, the smaller ones in
// the emulation (which runs a thread block as coroutines on one CPU thread).
func (g *gpu) small(work int) bool { return !g.emulated || work <= 10<<20 }

// newGPU skips without a GPU (no /dev/nvidiactl: the driver is never called, since
// cuInit on a machine without a GPU creates device nodes) unless SERVELAB_REQUIRE_GPU=1,
// which makes a missing GPU or driver a failure. It locks the test's goroutine to its OS
// thread, where the context it creates is current.
func newGPU(t testing.TB) *gpu {
	t.Helper()
	d := gputest.Require(t)
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	dev, err := d.DeviceGet(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := d.CtxCreate(0, dev)
	if err != nil {
		t.Fatal(err)
	}
	g := &gpu{t: t, d: d, ctx: ctx, mem: cudaMemory{d}}
	t.Cleanup(func() {
		for _, p := range g.alloc {
			d.MemFree(p)
		}
		d.CtxDestroy(ctx)
	})
	m, kind, err := Load(d, dev)
	if err != nil {
		t.Fatal(err)
	}
	name, _ := d.DeviceName(dev)
	major, minor, _ := d.ComputeCapability(dev)
	t.Logf("GPU %s (compute %d.%d), kernels from the %s image", name, major, minor, kind)
	g.m = m
	return g
}

// enter makes the context current for t, which runs on another goroutine than the one
// that created it (a subtest or sub-benchmark).
func (g *gpu) enter(t testing.TB) {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	g.t = t
	if err := g.d.CtxSetCurrent(g.ctx); err != nil {
		t.Fatal(err)
	}
}

func asBytes[T any](v []T) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), len(v)*int(unsafe.Sizeof(v[0])))
}

// upload copies v to a new device buffer (at least 256 bytes, so empty inputs get a
// valid pointer).
func upload[T any](g *gpu, v []T) driver.DevicePtr {
	g.t.Helper()
	b := asBytes(v)
	p, err := g.mem.alloc(max(len(b), 256))
	if err != nil {
		g.t.Fatal(err)
	}
	g.alloc = append(g.alloc, p)
	if err := g.mem.htod(p, b); err != nil {
		g.t.Fatal(err)
	}
	return p
}

// download synchronizes the context and copies n values of p back.
func download[T any](g *gpu, p driver.DevicePtr, n int) []T {
	g.t.Helper()
	if err := g.mem.sync(); err != nil {
		g.t.Fatal(err)
	}
	v := make([]T, n)
	if err := g.mem.dtoh(asBytes(v), p); err != nil {
		g.t.Fatal(err)
	}
	return v
}

func (g *gpu) check(err error) {
	g.t.Helper()
	if err != nil {
		g.t.Fatal(err)
	}
}

// compare reports elements of got farther from want than tl allows; scale[i] (nil:
// |want[i]|) is the tolerance's scale.
func compare(t *testing.T, what string, got []float32, want []float64, scale []float64, tl tol) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	bad, msgs, worst := mismatches(got, want, scale, tl)
	for _, m := range msgs {
		t.Errorf("%s%s", what, m)
	}
	if bad > len(msgs) {
		t.Errorf("%s: %d of %d values out of tolerance", what, bad, len(got))
	}
	t.Logf("%s: max |diff|/scale %.3g (tolerance %+v)", what, worst, tl)
}

// mismatches counts the values of got out of tolerance, describes the first five, and
// returns the largest |diff|/scale.
func mismatches(got []float32, want []float64, scale []float64, tl tol) (bad int, msgs []string, worst float64) {
	for i := range got {
		s := math.Abs(want[i])
		if scale != nil {
			s = scale[i]
		}
		diff := math.Abs(float64(got[i]) - want[i])
		out := got[i] != got[i] || diff > tl.Abs+tl.Rel*s
		if math.IsInf(want[i], 0) {
			out = float64(got[i]) != want[i]
		}
		if out {
			if len(msgs) < 5 {
				msgs = append(msgs, fmt.Sprintf("[%d] = %v, want %v (|diff| %.3g > %.3g + %.3g·%.3g)", i, got[i], want[i], diff, tl.Abs, tl.Rel, s))
			}
			bad++
		}
		if s > 0 && !math.IsInf(want[i], 0) {
			worst = max(worst, diff/s)
		}
	}
	return bad, msgs, worst
}

func f64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func randF32(r *rand.Rand, n int, lo, hi float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = lo + (hi-lo)*r.Float32()
	}
	return v
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// f32ToBF16 rounds to nearest even, as cvt.rn.bf16.f32 (finite inputs).
func f32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

func randBF16(r *rand.Rand, n int) []uint16 {
	v := make([]uint16, n)
	for i := range v {
		v[i] = f32ToBF16(2*r.Float32() - 1)
	}
	return v
}

// TestKernelsMatchCPU runs every kernel of the table on random inputs of several shapes,
// tails included, and compares with its CPU reference within the stated tolerances.
func TestKernelsMatchCPU(t *testing.T) {
	matchCPU(t, newGPU(t))
}

// matchCPU runs every kernel on g against its CPU reference.
func matchCPU(t *testing.T, g *gpu) {
	r := rand.New(rand.NewPCG(15, 1))
	seen := map[string]bool{}
	run := func(kernel string, f func()) {
		seen[kernel] = true
		f()
	}
	run("sl_embed_f32", func() { testEmbed(t, g, r) })
	seen["sl_embed_bf16"] = true
	run("sl_rmsnorm", func() { testRMSNorm(t, g, r) })
	run("sl_rope_store", func() { testRopeStore(t, g, r) })
	run("sl_attn_decode", func() { testAttention(t, g, r) })
	seen["sl_attn_prefill"] = true
	run("sl_attn_prefill_bf16", func() { testAttnPrefillBF16(t, g, r) })
	seen["sl_attn_prefill_bf16_gqa"] = true // in testAttnPrefillBF16
	run("sl_silu_mul", func() { testSiLUMul(t, g, r) })
	run("sl_add", func() { testAdd(t, g, r) })
	run("sl_gemm_f32", func() { testMatmul(t, g, r) })
	seen["sl_gemm_bf16"], seen["sl_gemm_bf16_skinny"], seen["sl_gemv_bf16"] = true, true, true
	run("sl_argmax", func() { testArgmax(t, g, r) })
	run("sl_topk", func() { testTopK(t, g, r) })
	run("sl_softmax", func() { testSoftmax(t, g, r) })
	for _, k := range Table {
		if !seen[k.Name] {
			t.Errorf("%s is not tested against a CPU reference", k.Name)
		}
	}
}

func testEmbed(t *testing.T, g *gpu, r *rand.Rand) {
	const vocab = 50
	for _, dim := range []int{1, 100, 4099} {
		tokens := []int32{3, 0, 49, 3, 17, 8, 21}
		rows := len(tokens)
		tf := randF32(r, vocab*dim, -1, 1)
		tb := randBF16(r, vocab*dim)
		want32, want16 := make([]float64, rows*dim), make([]float64, rows*dim)
		for i, tok := range tokens {
			for j := range dim {
				want32[i*dim+j] = float64(tf[int(tok)*dim+j])
				want16[i*dim+j] = float64(bf16ToF32(tb[int(tok)*dim+j]))
			}
		}
		tokP, x := upload(g, tokens), upload(g, make([]float32, rows*dim))
		g.check(g.m.EmbedF32(0, x, upload(g, tf), tokP, rows, dim))
		compare(t, fmt.Sprintf("sl_embed_f32 dim %d", dim), download[float32](g, x, rows*dim), want32, nil, tolerances["f32 exact"])
		g.check(g.m.EmbedBF16(0, x, upload(g, tb), tokP, rows, dim))
		compare(t, fmt.Sprintf("sl_embed_bf16 dim %d", dim), download[float32](g, x, rows*dim), want16, nil, tolerances["f32 exact"])
	}
}

func testRMSNorm(t *testing.T, g *gpu, r *rand.Rand) {
	const rows = 5
	for _, dim := range []int{1, 255, 4096} {
		for _, rowIdx := range [][]int32{nil, {4, 0, 2}} {
			x := randF32(r, rows*dim, -3, 3)
			w := randF32(r, dim, 0.5, 1.5)
			n := rows
			if rowIdx != nil {
				n = len(rowIdx)
			}
			want := make([]float32, n*dim)
			for i := range n {
				src := i
				if rowIdx != nil {
					src = int(rowIdx[i])
				}
				cpu.RMSNorm(want[i*dim:(i+1)*dim], x[src*dim:(src+1)*dim], w, 1e-5)
			}
			var idxP driver.DevicePtr
			if rowIdx != nil {
				idxP = upload(g, rowIdx)
			}
			out := upload(g, make([]float32, n*dim))
			g.check(g.m.RMSNorm(0, out, upload(g, x), idxP, upload(g, w), n, dim, 1e-5))
			compare(t, fmt.Sprintf("sl_rmsnorm dim %d rows %v", dim, rowIdx), download[float32](g, out, n*dim), f64(want), nil, tolerances["f32 reduction"])
		}
	}
}

func testRopeStore(t *testing.T, g *gpu, r *rand.Rand) {
	const rows, positions, slots = 6, 100, 40
	for _, c := range []struct{ heads, kvHeads, hd int }{{4, 2, 64}, {2, 2, 6}, {8, 1, 128}} {
		for _, withBias := range []bool{false, true} {
			half, kvd, qd := c.hd/2, c.kvHeads*c.hd, c.heads*c.hd
			width := qd + 2*kvd
			cos, sin := make([]float32, positions*half), make([]float32, positions*half)
			for p := range positions {
				for i := range half {
					s, co := math.Sincos(float64(p) * math.Pow(10000, -float64(2*i)/float64(c.hd)))
					cos[p*half+i], sin[p*half+i] = float32(co), float32(s)
				}
			}
			qkv := randF32(r, rows*width, -2, 2)
			var bias []float32
			if withBias {
				bias = randF32(r, width, -1, 1)
			}
			pos := make([]int32, rows)
			slot := make([]int32, rows)
			perm := r.Perm(slots)
			for i := range rows {
				pos[i] = int32(r.IntN(positions))
				slot[i] = int32(perm[i])
			}
			kc, vc := randF32(r, slots*kvd, -1, 1), randF32(r, slots*kvd, -1, 1)
			scale := float32(1 / math.Sqrt(float64(c.hd)))
			// The reference: engine/model's ropeRows.
			wq, wk, wv := slices.Clone(qkv), slices.Clone(kc), slices.Clone(vc)
			for i := range rows {
				row := wq[i*width : (i+1)*width]
				if bias != nil {
					cpu.Axpy(1, bias, row)
				}
				co, si := cos[int(pos[i])*half:][:half], sin[int(pos[i])*half:][:half]
				for h := range c.heads {
					q := row[h*c.hd : (h+1)*c.hd]
					cpu.RotateHalf(q, co, si)
					for j := range q {
						q[j] *= scale
					}
				}
				k := row[qd : qd+kvd]
				for h := range c.kvHeads {
					cpu.RotateHalf(k[h*c.hd:(h+1)*c.hd], co, si)
				}
				off := int(slot[i]) * kvd
				copy(wk[off:off+kvd], k)
				copy(wv[off:off+kvd], row[qd+kvd:])
			}
			var biasP driver.DevicePtr
			if bias != nil {
				biasP = upload(g, bias)
			}
			qkvP, kP, vP := upload(g, qkv), upload(g, kc), upload(g, vc)
			g.check(g.m.RopeStore(0, qkvP, biasP, upload(g, cos), upload(g, sin), upload(g, pos), upload(g, slot), kP, vP, rows, c.heads, c.kvHeads, c.hd, scale))
			name := fmt.Sprintf("sl_rope_store %+v bias %v", c, withBias)
			tl := tolerances["f32 elementwise"]
			compare(t, name+" qkv", download[float32](g, qkvP, len(qkv)), f64(wq), nil, tl)
			compare(t, name+" kcache", download[float32](g, kP, len(kc)), f64(wk), nil, tl)
			compare(t, name+" vcache", download[float32](g, vP, len(vc)), f64(wv), nil, tl)
		}
	}
}

// attnRef is engine/model's attend for one query: softmax of q against the keys of
// positions [0, n) read through the block table, then the weighted sum of values.
func attnRef(q, kc, vc []float32, blocks []int32, n, bs, kvd, kvOff, hd int) []float32 {
	sc := make([]float32, n)
	for j := range n {
		off := (int(blocks[j/bs])*bs+j%bs)*kvd + kvOff
		sc[j] = cpu.Dot(q, kc[off:off+hd])
	}
	cpu.Softmax(sc)
	out := make([]float32, hd)
	for j := range n {
		off := (int(blocks[j/bs])*bs+j%bs)*kvd + kvOff
		cpu.Axpy(sc[j], vc[off:off+hd], out)
	}
	return out
}

func testAttention(t *testing.T, g *gpu, r *rand.Rand) {
	const numBlocks = 96
	for _, c := range []struct{ heads, kvHeads, hd, bs int }{{4, 2, 64, 16}, {4, 4, 40, 5}, {8, 1, 128, 16}, {2, 1, 256, 8}} {
		kvd := c.kvHeads * c.hd
		width := (c.heads + 2*c.kvHeads) * c.hd
		group := c.heads / c.kvHeads
		kc, vc := randF32(r, numBlocks*c.bs*kvd, -1, 1), randF32(r, numBlocks*c.bs*kvd, -1, 1)
		// Three sequences: cached positions before this step and tokens this step.
		pos := []int32{0, 33, 70}
		chunk := []int32{20, 5, 1} // prefill chunks; decode uses one token each
		tables, maxBlocks := scrambledTables(r, pos, chunk, c.bs, numBlocks)
		tablesP, kP, vP := upload(g, tables), upload(g, kc), upload(g, vc)
		posP := upload(g, pos)
		name := fmt.Sprintf("%+v", c)

		// Decode: sequences 2 and 0 (1 sits out), rows 1 and 0.
		{
			seqs, start := []int32{2, 0}, []int32{0, 2, 1}
			rows := 3
			qkv := randF32(r, rows*width, -1, 1)
			out := make([]float32, rows*c.heads*c.hd)
			for i := range out {
				out[i] = 7 // row 2 (sequence 1) must keep it
			}
			want := f64(out)
			for _, s := range seqs {
				row := int(start[s])
				for h := range c.heads {
					q := qkv[row*width+h*c.hd:][:c.hd]
					o := attnRef(q, kc, vc, tables[int(s)*maxBlocks:], int(pos[s])+1, c.bs, kvd, h/group*c.hd, c.hd)
					copy(want[row*c.heads*c.hd+h*c.hd:], f64(o))
				}
			}
			outP := upload(g, out)
			g.check(g.m.AttnDecode(0, outP, upload(g, qkv), kP, vP, upload(g, seqs), upload(g, start), posP, tablesP, len(seqs), maxBlocks, c.heads, c.kvHeads, c.hd, c.bs))
			compare(t, "sl_attn_decode "+name, download[float32](g, outP, len(out)), want, nil, tolerances["f32 reduction"])
		}
		// Prefill: every sequence's chunk, items of at most AttnQueryTile queries.
		{
			start := make([]int32, len(pos))
			rows := 0
			for i := range pos {
				start[i] = int32(rows)
				rows += int(chunk[i])
			}
			qkv := randF32(r, rows*width, -1, 1)
			var items []int32
			want := make([]float64, rows*c.heads*c.hd)
			for s := range pos {
				for h := range c.heads {
					for q0 := 0; q0 < int(chunk[s]); q0 += AttnQueryTile {
						items = append(items, int32(s), int32(h), int32(q0), int32(min(int(chunk[s]), q0+AttnQueryTile)))
					}
					for i := range int(chunk[s]) {
						row := int(start[s]) + i
						q := qkv[row*width+h*c.hd:][:c.hd]
						o := attnRef(q, kc, vc, tables[s*maxBlocks:], int(pos[s])+i+1, c.bs, kvd, h/group*c.hd, c.hd)
						copy(want[row*c.heads*c.hd+h*c.hd:], f64(o))
					}
				}
			}
			outP := upload(g, make([]float32, rows*c.heads*c.hd))
			g.check(g.m.AttnPrefill(0, outP, upload(g, qkv), kP, vP, upload(g, items), upload(g, start), posP, tablesP, len(items)/4, maxBlocks, c.heads, c.kvHeads, c.hd, c.bs))
			compare(t, "sl_attn_prefill "+name, download[float32](g, outP, len(want)), want, nil, tolerances["f32 reduction"])
		}
	}
}

// bf16r is v rounded to bf16 (nearest even), as float64.
func bf16r(v float32) float64 { return float64(bf16ToF32(f32ToBF16(v))) }

// attnBF16Ref is attention for one query over positions [0, n) in float64 with q, k and
// v rounded to bf16 (sl_attn_prefill_bf16's semantics, but for P's rounding) and the
// scales of both comparisons: scale[d] = Σ_j w_j·|ṽ_jd| for "bf16 attention", and
// cpuScale[d], the bound on the distance from the float32 result: with u = 2^-8 and
// δ = max_j (2u+u²)·Σ_d |q_d·k_jd| (rounding q and k moves each score by at most δ, so
// each softmax weight by a factor within e^±2δ), and P and v rounded (a factor within
// (1±u) each), |õ_d - o_d| <= (e^2δ·(1+u)² - 1)·Σ_j w_j·|v_jd|; plus 1e-4 of it for
// float32 arithmetic on both sides.
func attnBF16Ref(q, kc, vc []float32, blocks []int32, n, bs, kvd, kvOff, hd int) (o, scale, cpuScale []float64) {
	const u = 1.0 / 256
	s := make([]float64, n)
	mx, delta := math.Inf(-1), 0.0
	for j := range n {
		off := (int(blocks[j/bs])*bs+j%bs)*kvd + kvOff
		var dot, abs float64
		for d := range hd {
			dot += bf16r(q[d]) * bf16r(kc[off+d])
			abs += math.Abs(float64(q[d]) * float64(kc[off+d]))
		}
		s[j] = dot
		mx = max(mx, dot)
		delta = max(delta, (2*u+u*u)*abs)
	}
	var sum float64
	for j := range s {
		s[j] = math.Exp(s[j] - mx)
		sum += s[j]
	}
	o, scale, cpuScale = make([]float64, hd), make([]float64, hd), make([]float64, hd)
	factor := math.Exp(2*delta)*(1+u)*(1+u) - 1 + 1e-4
	for j := range n {
		w := s[j] / sum
		off := (int(blocks[j/bs])*bs+j%bs)*kvd + kvOff
		for d := range hd {
			v := bf16r(vc[off+d])
			o[d] += w * v
			scale[d] += w * math.Abs(v)
			cpuScale[d] += factor * w * math.Abs(float64(vc[off+d]))
		}
	}
	return o, scale, cpuScale
}

// testAttnPrefillBF16 checks the tensor-core prefill attention: head dims 64, 40 (padded
// to 48 in the kernel), 128, and above 128 (two passes of output columns, two K chunks)
// 136 (padded to 144: a second chunk of 16), 192 and 256; block sizes 16, 5, 4, 8 and 1;
// grouped-query heads (1, 2, 4 and 8 query heads per kv head); prefix offsets 0, 33, 70, 150 and 48 (so contexts of 1 to
// 187 positions: one to three 64-position tiles, exactly one tile and one past it,
// sub-tiles a warp skips, the causal mask inside a tile); chunks of 20, 37 and 17 (items
// of 16 and tails of 4, 5 and 1) and 1 and 5. The cases sl_attn_prefill_bf16_gqa takes
// (head dims up to 128) run it too, on the group items, against the same references:
// groups 2 (head dims 64), 1 (40, and 128), 8 (128, and 64 over 2 kv heads) and 4 (128,
// block size 1).
// q is pre-scaled by 1/sqrt(headDim), as RopeStore leaves it. It also checks that the
// same inputs give the same bits.
func testAttnPrefillBF16(t *testing.T, g *gpu, r *rand.Rand) {
	const numBlocks = 256
	gqaTested := map[int]bool{}
	for _, c := range []struct{ heads, kvHeads, hd, bs int }{{4, 2, 64, 16}, {4, 4, 40, 5}, {8, 1, 128, 16}, {4, 1, 128, 1}, {8, 2, 64, 16}, {2, 2, 128, 16},
		{2, 2, 136, 4}, {2, 1, 192, 16}, {2, 1, 256, 8}} {
		kvd := c.kvHeads * c.hd
		width := (c.heads + 2*c.kvHeads) * c.hd
		group := c.heads / c.kvHeads
		kc, vc := randF32(r, numBlocks*c.bs*kvd, -1, 1), randF32(r, numBlocks*c.bs*kvd, -1, 1)
		// The last sequence's items end on a 64-position tile boundary (context 64) and
		// one past it (65).
		pos := []int32{0, 33, 70, 150, 48}
		chunk := []int32{20, 5, 1, 37, 17}
		tables, maxBlocks := scrambledTables(r, pos, chunk, c.bs, numBlocks)
		start := make([]int32, len(pos))
		rows := 0
		for i := range pos {
			start[i] = int32(rows)
			rows += int(chunk[i])
		}
		qkv := randF32(r, rows*width, -1, 1)
		for i := range qkv {
			qkv[i] *= float32(1 / math.Sqrt(float64(c.hd)))
		}
		var items []int32
		n := rows * c.heads * c.hd
		want, scale := make([]float64, n), make([]float64, n)
		wantCPU, scaleCPU := make([]float64, n), make([]float64, n)
		for s := range pos {
			for h := range c.heads {
				for q0 := 0; q0 < int(chunk[s]); q0 += AttnQueryTile {
					items = append(items, int32(s), int32(h), int32(q0), int32(min(int(chunk[s]), q0+AttnQueryTile)))
				}
				for i := range int(chunk[s]) {
					row := int(start[s]) + i
					q := qkv[row*width+h*c.hd:][:c.hd]
					ctx, off := int(pos[s])+i+1, row*c.heads*c.hd+h*c.hd
					o, sc, scCPU := attnBF16Ref(q, kc, vc, tables[s*maxBlocks:], ctx, c.bs, kvd, h/group*c.hd, c.hd)
					copy(want[off:], o)
					copy(scale[off:], sc)
					copy(scaleCPU[off:], scCPU)
					copy(wantCPU[off:], f64(attnRef(q, kc, vc, tables[s*maxBlocks:], ctx, c.bs, kvd, h/group*c.hd, c.hd)))
				}
			}
		}
		qkvP, kP, vP, itemsP := upload(g, qkv), upload(g, kc), upload(g, vc), upload(g, items)
		startP, posP, tablesP := upload(g, start), upload(g, pos), upload(g, tables)
		check := func(name string, launch func(out driver.DevicePtr) error) {
			outP := upload(g, make([]float32, n))
			g.check(launch(outP))
			got := download[float32](g, outP, n)
			compare(t, name, got, want, scale, tolerances["bf16 attention"])
			compare(t, name+" vs cpu (float32)", got, wantCPU, scaleCPU, tolerances["bf16 attention vs cpu"])
			// Deterministic: the warps' states merge in a fixed order.
			out2 := upload(g, make([]float32, n))
			g.check(launch(out2))
			again := download[float32](g, out2, n)
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(again[i]) {
					t.Errorf("%s: [%d] = %v, then %v on the same inputs", name, i, got[i], again[i])
					break
				}
			}
		}
		check(fmt.Sprintf("sl_attn_prefill_bf16 %+v", c), func(out driver.DevicePtr) error {
			return g.m.AttnPrefillBF16(0, out, qkvP, kP, vP, itemsP, startP, posP, tablesP, len(items)/4, maxBlocks, c.heads, c.kvHeads, c.hd, c.bs)
		})
		// sl_attn_prefill_bf16_gqa on the same inputs: one block per (sequence, kv head,
		// 16-query tile) for the group's query heads, against the same references.
		if FlashGQA(c.heads, c.kvHeads, c.hd) {
			gitems := GroupItems(nil, items, group)
			if len(gitems)*group != len(items) {
				t.Fatalf("GroupItems: %d items of %d heads from %d", len(gitems)/4, group, len(items)/4)
			}
			gitemsP := upload(g, gitems)
			check(fmt.Sprintf("sl_attn_prefill_bf16_gqa %+v", c), func(out driver.DevicePtr) error {
				return g.m.AttnPrefillBF16GQA(0, out, qkvP, kP, vP, gitemsP, startP, posP, tablesP, len(gitems)/4, maxBlocks, c.heads, c.kvHeads, c.hd, c.bs)
			})
			gqaTested[group] = true
		}
	}
	for _, group := range []int{1, 2, 4, 8} {
		if !gqaTested[group] {
			t.Errorf("sl_attn_prefill_bf16_gqa: no case with %d query heads per kv head", group)
		}
	}
}

func testSiLUMul(t *testing.T, g *gpu, r *rand.Rand) {
	const rows = 3
	for _, hidden := range []int{1, 100, 1000} {
		gu := randF32(r, rows*2*hidden, -6, 6)
		want := make([]float32, rows*hidden)
		for i := range rows {
			gate := slices.Clone(gu[i*2*hidden : i*2*hidden+hidden])
			cpu.SiLUMul(gate, gu[i*2*hidden+hidden:(i+1)*2*hidden])
			copy(want[i*hidden:], gate)
		}
		act := upload(g, make([]float32, rows*hidden))
		g.check(g.m.SiLUMul(0, act, upload(g, gu), rows, hidden))
		compare(t, fmt.Sprintf("sl_silu_mul hidden %d", hidden), download[float32](g, act, rows*hidden), f64(want), nil, tolerances["f32 elementwise"])
	}
}

func testAdd(t *testing.T, g *gpu, r *rand.Rand) {
	for _, n := range []int{1, 257, 10000} {
		x, y := randF32(r, n, -1, 1), randF32(r, n, -1, 1)
		want := make([]float64, n)
		for i := range n {
			want[i] = float64(x[i] + y[i])
		}
		xP := upload(g, x)
		g.check(g.m.Add(0, xP, upload(g, y), n))
		compare(t, fmt.Sprintf("sl_add n %d", n), download[float32](g, xP, n), want, nil, tolerances["f32 exact"])
	}
}

// matmulScale is Σ|x_i·w_i| per output (+|y| when accumulating), the scale of a
// matrix product's tolerance.
func matmulScale(x, w []float32, y0 []float32, m, n, k int, acc bool) []float64 {
	s := make([]float64, m*n)
	for i := range m {
		for j := range n {
			var a float64
			for l := range k {
				a += math.Abs(float64(x[i*k+l]) * float64(w[j*k+l]))
			}
			if acc {
				a += math.Abs(float64(y0[i*n+j]))
			}
			s[i*n+j] = a
		}
	}
	return s
}

func testMatmul(t *testing.T, g *gpu, r *rand.Rand) {
	pool := cpu.NewPool(runtime.NumCPU())
	// cpuLinear is the CPU engine's linear layer: y = x·wᵀ (+ y0 when accumulating).
	cpuLinear := func(x, w, y0 []float32, m, n, k int, acc bool) []float64 {
		y := make([]float32, m*n)
		pool.MatMul(y, x, w, m, k, n)
		out := f64(y)
		if acc {
			for i := range out {
				out[i] += float64(y0[i])
			}
		}
		return out
	}
	for _, s := range []struct{ m, n, k int }{{1, 1, 1}, {3, 100, 72}, {65, 129, 7}, {130, 64, 256}} {
		if !g.small(s.m * s.n * s.k) {
			continue
		}
		for _, acc := range []bool{false, true} {
			x, w, y0 := randF32(r, s.m*s.k, -1, 1), randF32(r, s.n*s.k, -1, 1), randF32(r, s.m*s.n, -1, 1)
			yP := upload(g, y0)
			g.check(g.m.GemmF32(0, yP, upload(g, x), upload(g, w), s.m, s.n, s.k, acc))
			compare(t, fmt.Sprintf("sl_gemm_f32 %+v acc %v", s, acc), download[float32](g, yP, s.m*s.n),
				cpuLinear(x, w, y0, s.m, s.n, s.k, acc), matmulScale(x, w, y0, s.m, s.n, s.k, acc), tolerances["f32 matmul"])
		}
	}
	type bf16Shape struct{ m, n, k int }
	// bf16Kernel runs the tensor-core GEMM kernel that rounds x to bf16 (GemmBF16 or
	// GemmBF16Skinny) over shapes and compares with both references.
	bf16Kernel := func(kernel string, launch func(y, x, w driver.DevicePtr, m, n, k int, acc bool) error, shapes []bf16Shape) {
		for _, s := range shapes {
			if !g.small(s.m * s.n * s.k) {
				continue
			}
			for _, acc := range []bool{false, true} {
				x, wb, y0 := randF32(r, s.m*s.k, -1, 1), randBF16(r, s.n*s.k), randF32(r, s.m*s.n, -1, 1)
				w := make([]float32, len(wb))
				for i, h := range wb {
					w[i] = bf16ToF32(h)
				}
				xr := make([]float32, len(x)) // x rounded to bf16, as the kernel loads it
				for i, v := range x {
					xr[i] = bf16ToF32(f32ToBF16(v))
				}
				yP := upload(g, y0)
				g.check(launch(yP, upload(g, x), upload(g, wb), s.m, s.n, s.k, acc))
				got := download[float32](g, yP, s.m*s.n)
				name := fmt.Sprintf("%s %+v acc %v", kernel, s, acc)
				compare(t, name, got, cpuLinear(xr, w, y0, s.m, s.n, s.k, acc), matmulScale(xr, w, y0, s.m, s.n, s.k, acc), tolerances["bf16 matmul"])
				compare(t, name+" vs cpu (x in float32)", got, cpuLinear(x, w, y0, s.m, s.n, s.k, acc), matmulScale(x, w, y0, s.m, s.n, s.k, acc), tolerances["bf16 matmul vs cpu"])
				if !acc {
					// Deterministic: the same inputs give the same bits (no atomics).
					y2 := upload(g, y0)
					g.check(launch(y2, upload(g, x), upload(g, wb), s.m, s.n, s.k, acc))
					again := download[float32](g, y2, s.m*s.n)
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(again[i]) {
							t.Errorf("%s: [%d] = %v, then %v on the same inputs", name, i, got[i], again[i])
							break
						}
					}
				}
			}
		}
	}
	bf16Kernel("sl_gemm_bf16", func(y, x, w driver.DevicePtr, m, n, k int, acc bool) error {
		return g.m.GemmBF16(0, y, x, w, m, n, k, acc)
	}, []bf16Shape{{9, 8, 8}, {17, 100, 72}, {130, 257, 264}, {256, 384, 4096}, {1, 16, 16}})
	// sl_gemm_bf16_skinny: rows 9..64 (one to four m16 tiles, partial ones included); n
	// with a partial 32-column tile and a partial n8 tile (40, 70, 100, 33); k below one
	// 128-wide k tile (72), with a tail (136, 1288: 11 tiles, more than the 4 the kernel
	// keeps in flight) and without (256, 512); the GPU adds Llama-3.1-8B's k (4096 and
	// down_proj's 14336) with n cut short (the float64 references cost m·n·k on the CPU).
	bf16Kernel("sl_gemm_bf16_skinny", func(y, x, w driver.DevicePtr, m, n, k int, acc bool) error {
		return g.m.GemmBF16Skinny(0, y, x, w, m, n, k, acc)
	}, []bf16Shape{{9, 40, 136}, {17, 100, 72}, {33, 70, 256}, {64, 33, 1288}, {64, 96, 512}, {48, 1000, 4096}, {64, 264, 14336}})
	for _, s := range []struct{ m, n, k int }{{1, 8, 8}, {1, 100, 72}, {3, 257, 4104}, {8, 1000, 4096}} {
		if !g.small(s.m * s.n * s.k) {
			continue
		}
		for _, acc := range []bool{false, true} {
			x, wb, y0 := randF32(r, s.m*s.k, -1, 1), randBF16(r, s.n*s.k), randF32(r, s.m*s.n, -1, 1)
			w := make([]float32, len(wb))
			for i, h := range wb {
				w[i] = bf16ToF32(h)
			}
			yP := upload(g, y0)
			g.check(g.m.GemvBF16(0, yP, upload(g, x), upload(g, wb), s.m, s.n, s.k, acc))
			compare(t, fmt.Sprintf("sl_gemv_bf16 %+v acc %v", s, acc), download[float32](g, yP, s.m*s.n),
				cpuLinear(x, w, y0, s.m, s.n, s.k, acc), matmulScale(x, w, y0, s.m, s.n, s.k, acc), tolerances["f32 matmul"])
		}
	}
}

// quantized returns n logits in [-4, 4) on a grid of 1/16, so ties are common.
func quantized(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.IntN(128)-64) / 16
	}
	return v
}

func testArgmax(t *testing.T, g *gpu, r *rand.Rand) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, vocab := range []int{1, 300, 128256} {
		rows := [][]float32{quantized(r, vocab), randF32(r, vocab, -10, 10), make([]float32, vocab)}
		for i := range rows[2] {
			rows[2][i] = -inf
		}
		if vocab > 1 {
			mixed := quantized(r, vocab)
			for i := 0; i < vocab; i += 7 {
				mixed[i] = nan // at 0 too: neither skips a leading NaN differently
			}
			rows = append(rows, mixed)
		}
		if vocab >= 4 {
			// NaN first, then -0 and +0 the largest: equal, so the lower index.
			zeros := make([]float32, vocab)
			for i := range zeros {
				zeros[i] = -1
			}
			zeros[0], zeros[1], zeros[2] = nan, float32(math.Copysign(0, -1)), 0
			// Two +Inf: the first.
			infs := quantized(r, vocab)
			infs[vocab/2], infs[vocab-1] = inf, inf
			rows = append(rows, zeros, infs)
		}
		var logits []float32
		var want []int32
		for _, row := range rows {
			logits = append(logits, row...)
			want = append(want, sampling.Argmax(row))
		}
		idx := upload(g, make([]int32, len(rows)))
		g.check(g.m.Argmax(0, idx, upload(g, logits), len(rows), vocab))
		if got := download[int32](g, idx, len(rows)); !slices.Equal(got, want) {
			t.Errorf("sl_argmax vocab %d = %v, want %v (engine/sampling.Argmax)", vocab, got, want)
		}
	}
	allNaN := []float32{nan, nan, nan}
	idx := upload(g, []int32{5})
	g.check(g.m.Argmax(0, idx, upload(g, allNaN), 1, 3))
	if got := download[int32](g, idx, 1); got[0] != 0 {
		t.Errorf("sl_argmax of all NaN = %d, want 0", got[0])
	}
}

// topkRef is the k largest of row, larger first, the lower index first among equals,
// NaN below every number.
func topkRef(row []float32, k int) []int32 {
	ids := make([]int32, len(row))
	for i := range ids {
		ids[i] = int32(i)
	}
	slices.SortStableFunc(ids, func(a, b int32) int {
		va, vb := row[a], row[b]
		an, bn := va != va, vb != vb
		switch {
		case an && bn:
			return 0
		case an:
			return 1
		case bn:
			return -1
		case va > vb:
			return -1
		case va < vb:
			return 1
		}
		return 0
	})
	return ids[:k]
}

func testTopK(t *testing.T, g *gpu, r *rand.Rand) {
	for _, vocab := range []int{300, 32000} {
		for _, k := range []int{1, 7, 256} {
			rows := [][]float32{quantized(r, vocab), randF32(r, vocab, -10, 10), quantized(r, vocab)}
			for i := 0; i < vocab; i += 11 {
				rows[2][i] = float32(math.Inf(-1))
			}
			for i := 5; i < vocab; i += 13 {
				rows[2][i] = float32(math.NaN())
			}
			var logits []float32
			var wantIdx []int32
			var wantVal []float32
			for _, row := range rows {
				logits = append(logits, row...)
				ids := topkRef(row, k)
				wantIdx = append(wantIdx, ids...)
				for _, id := range ids {
					wantVal = append(wantVal, row[id])
				}
			}
			idxP, valP := upload(g, make([]int32, len(rows)*k)), upload(g, make([]float32, len(rows)*k))
			g.check(g.m.TopK(0, idxP, valP, upload(g, logits), len(rows), vocab, k))
			gotIdx, gotVal := download[int32](g, idxP, len(rows)*k), download[float32](g, valP, len(rows)*k)
			if !slices.Equal(gotIdx, wantIdx) {
				for i := range gotIdx {
					if gotIdx[i] != wantIdx[i] {
						t.Errorf("sl_topk vocab %d k %d: row %d rank %d: index %d, want %d", vocab, k, i/k, i%k, gotIdx[i], wantIdx[i])
						break
					}
				}
			}
			for i := range gotVal {
				if math.Float32bits(gotVal[i]) != math.Float32bits(wantVal[i]) && !(gotVal[i] != gotVal[i] && wantVal[i] != wantVal[i]) {
					t.Errorf("sl_topk vocab %d k %d: value %d = %v, want %v", vocab, k, i, gotVal[i], wantVal[i])
					break
				}
			}
		}
	}
}

func testSoftmax(t *testing.T, g *gpu, r *rand.Rand) {
	for _, vocab := range []int{1, 1000, 128256} {
		for _, temp := range []float64{1, 0.7} {
			rows := [][]float32{randF32(r, vocab, -10, 10), quantized(r, vocab)}
			for i := 0; i < vocab; i += 3 {
				rows[1][i] = float32(math.Inf(-1))
			}
			rows[1][vocab-1] = 1 // a row with a finite logit
			inv := float32(1 / temp)
			var logits []float32
			var want []float64
			for _, row := range rows {
				logits = append(logits, row...)
				mx := math.Inf(-1)
				for _, v := range row {
					mx = max(mx, float64(v))
				}
				e := make([]float64, vocab)
				var sum float64
				for i, v := range row {
					e[i] = math.Exp((float64(v) - mx) * float64(inv))
					sum += e[i]
				}
				for i := range e {
					e[i] /= sum
				}
				want = append(want, e...)
			}
			probs := upload(g, make([]float32, len(logits)))
			g.check(g.m.Softmax(0, probs, upload(g, logits), len(rows), vocab, inv))
			compare(t, fmt.Sprintf("sl_softmax vocab %d temperature %v", vocab, temp), download[float32](g, probs, len(logits)), want, nil, tolerances["f32 reduction"])
		}
	}
}

// TestCompareCatchesErrors checks the comparison itself on the CPU, so that
// TestKernelsMatchCPU cannot pass vacuously.
func TestCompareCatchesErrors(t *testing.T) {
	nan, inf := float32(math.NaN()), math.Inf(1)
	cases := []struct {
		got  []float32
		want []float64
		tl   tol
		bad  int
	}{
		{[]float32{1.0000001, 2}, []float64{1, 2}, tol{Rel: 1e-6}, 0},
		{[]float32{1.001, 2}, []float64{1, 2}, tol{Rel: 1e-6}, 1},
		{[]float32{nan}, []float64{1}, tol{Abs: 1}, 1},
		{[]float32{1, 0}, []float64{1, 0}, tol{}, 0},
		{[]float32{float32(inf), 3}, []float64{inf, 3}, tol{}, 0},
		{[]float32{1e30}, []float64{inf}, tol{Rel: 1}, 1},
	}
	for i, c := range cases {
		if bad, _, _ := mismatches(c.got, c.want, nil, c.tl); bad != c.bad {
			t.Errorf("case %d: %d mismatches, want %d", i, bad, c.bad)
		}
	}
}

// scrambledTables gives each sequence (cached positions pos[i], chunk[i] tokens this step)
// a block table of maxBlocks blocks drawn from a permutation of the cache's numBlocks, so
// a kernel that reads blocks in table order rather than through the table fails.
func scrambledTables(r *rand.Rand, pos, chunk []int32, bs, numBlocks int) (tables []int32, maxBlocks int) {
	for i := range pos {
		maxBlocks = max(maxBlocks, (int(pos[i]+chunk[i])+bs-1)/bs)
	}
	perm := r.Perm(numBlocks)
	tables = make([]int32, len(pos)*maxBlocks)
	for i := range tables {
		tables[i] = int32(perm[i%numBlocks])
	}
	return tables, maxBlocks
}
