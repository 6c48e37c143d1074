package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"servelab/cuda/driver"
)

// timeLaunches runs launch b.N times on the default stream between two events and
// reports the mean time per launch in seconds.
func timeLaunches(b *testing.B, g *gpu, launch func() error) float64 {
	b.Helper()
	start, err := g.d.EventCreate(0)
	g.check(err)
	end, err := g.d.EventCreate(0)
	g.check(err)
	defer g.d.EventDestroy(start)
	defer g.d.EventDestroy(end)
	g.check(launch()) // warm up
	g.check(g.d.CtxSynchronize())
	b.ResetTimer()
	g.check(g.d.EventRecord(start, 0))
	for range b.N {
		g.check(launch())
	}
	g.check(g.d.EventRecord(end, 0))
	g.check(g.d.EventSynchronize(end))
	b.StopTimer()
	ms, err := g.d.EventElapsedTime(start, end)
	g.check(err)
	return float64(ms) / 1e3 / float64(b.N)
}

// Llama-3.1-8B's linear layers (out x in): the fused q/k/v projection, o_proj, the
// fused gate/up projection, down_proj, and the LM head.
var llama8BLinears = []struct {
	name string
	n, k int
}{
	{"qkv_6144x4096", 6144, 4096},
	{"o_4096x4096", 4096, 4096},
	{"gate_up_28672x4096", 28672, 4096},
	{"down_4096x14336", 4096, 14336},
	{"lm_head_128256x4096", 128256, 4096},
}

// BenchmarkGemvBF16 is decode's weight streaming on Llama-3.1-8B's shapes, through the
// kernel Linear picks for each batch: sl_gemv_bf16 at 1 and 8 rows, sl_gemm_bf16_skinny
// at 16, 32 and 64, with sl_gemm_bf16 (what Linear used above 8 rows before the skinny
// kernel) at those rows for comparison. It reports GB/s of weights read (compare with the
// GPU's HBM bandwidth; H200: 4.8 TB/s): at decode a layer's weights are read once per
// step, so this is the step's time for its linear layers.
func BenchmarkGemvBF16(b *testing.B) {
	g := newGPU(b)
	r := rand.New(rand.NewPCG(1, 2))
	type kernel struct {
		name   string // "" for the sub-benchmark rows=M, else rows=M/name
		launch func(y, x, w driver.DevicePtr, m, n, k int) error
	}
	gemv := kernel{"", func(y, x, w driver.DevicePtr, m, n, k int) error { return g.m.GemvBF16(0, y, x, w, m, n, k, false) }}
	skinny := kernel{"sl_gemm_bf16_skinny", func(y, x, w driver.DevicePtr, m, n, k int) error {
		return g.m.GemmBF16Skinny(0, y, x, w, m, n, k, false)
	}}
	gemm := kernel{"sl_gemm_bf16", func(y, x, w driver.DevicePtr, m, n, k int) error { return g.m.GemmBF16(0, y, x, w, m, n, k, false) }}
	runs := []struct {
		rows    int
		kernels []kernel
	}{{1, []kernel{gemv}}, {8, []kernel{gemv}}, {16, []kernel{skinny, gemm}}, {32, []kernel{skinny, gemm}}, {64, []kernel{skinny, gemm}}}
	for _, l := range llama8BLinears {
		// Enough copies of the weight that launches in turn read 256 MB, so that none
		// finds its weight in L2 (50 MB on an H100/H200) from the launch before.
		bytes := l.n * l.k * 2
		ws := make([]driver.DevicePtr, (256<<20+bytes-1)/bytes)
		for i := range ws {
			ws[i] = g.filled(bytes, 0x3c) // bf16 0x3c3c ≈ 0.0115: the values do not change the speed
		}
		for _, run := range runs {
			m := run.rows
			x := upload(g, randF32(r, m*l.k, -1, 1))
			y := upload(g, make([]float32, m*l.n))
			for _, kern := range run.kernels {
				name := fmt.Sprintf("%s/rows=%d", l.name, m)
				if kern.name != "" {
					name += "/" + kern.name
				}
				b.Run(name, func(b *testing.B) {
					g.enter(b)
					i := 0
					sec := timeLaunches(b, g, func() error {
						i++
						return kern.launch(y, x, ws[i%len(ws)], m, l.n, l.k)
					})
					b.ReportMetric(float64(l.n*l.k*2)/sec/1e9, "weight-GB/s")
					b.ReportMetric(sec*1e6, "us/launch")
				})
			}
			g.t = b
			g.free(x, y)
		}
		g.free(ws...)
	}
}

// BenchmarkGemmBF16 is prefill's GEMM on Llama-3.1-8B's shapes for a 2048-token chunk:
// TFLOP/s (compare with the GPU's dense bf16 tensor-core peak; H200: 989 TFLOP/s).
func BenchmarkGemmBF16(b *testing.B) {
	g := newGPU(b)
	r := rand.New(rand.NewPCG(3, 4))
	const m = 2048
	for _, l := range llama8BLinears[:4] {
		w := g.filled(l.n*l.k*2, 0x3c)
		x := upload(g, randF32(r, m*l.k, -1, 1))
		y := upload(g, make([]float32, m*l.n))
		b.Run(fmt.Sprintf("%s/rows=%d", l.name, m), func(b *testing.B) {
			g.enter(b)
			sec := timeLaunches(b, g, func() error { return g.m.GemmBF16(0, y, x, w, m, l.n, l.k, false) })
			b.ReportMetric(2*float64(m)*float64(l.n)*float64(l.k)/sec/1e12, "TFLOP/s")
			b.ReportMetric(sec*1e6, "us/launch")
		})
		g.t = b
		g.free(w, x, y)
	}
}

// BenchmarkAttnPrefill is prefill attention on Llama-3.1-8B's shapes (32 query heads, 8
// KV heads, head dim 128, KV blocks of 16) for one sequence's first chunk of 2048 and
// 8192 tokens, in AttnQueryTile-query items as the engine makes them: TFLOP/s counts the
// causal half, 4·headDim·heads·T(T+1)/2 (compare with the GPU's dense bf16 tensor-core
// peak; H200: 989 TFLOP/s). sl_attn_prefill_bf16 and sl_attn_prefill_bf16_gqa (the
// same items grouped by kv head, GroupItems: a quarter as many blocks, each K/V tile read
// once per group of 4) at both lengths; the float32 scalar sl_attn_prefill at 2048 for
// comparison (at 8192 it takes seconds a launch).
func BenchmarkAttnPrefill(b *testing.B) {
	g := newGPU(b)
	r := rand.New(rand.NewPCG(5, 6))
	const heads, kvHeads, hd, bs = 32, 8, 128, 16
	const width, kvd = (heads + 2*kvHeads) * hd, kvHeads * hd
	type kernel struct {
		name    string
		grouped bool // takes GroupItems' items
		launch  func(out, qkv, kc, vc, items, start, pos, tables driver.DevicePtr, nItems, maxBlocks int) error
	}
	flash := kernel{"sl_attn_prefill_bf16", false, func(out, qkv, kc, vc, items, start, pos, tables driver.DevicePtr, nItems, maxBlocks int) error {
		return g.m.AttnPrefillBF16(0, out, qkv, kc, vc, items, start, pos, tables, nItems, maxBlocks, heads, kvHeads, hd, bs)
	}}
	gqa := kernel{"sl_attn_prefill_bf16_gqa", true, func(out, qkv, kc, vc, items, start, pos, tables driver.DevicePtr, nItems, maxBlocks int) error {
		return g.m.AttnPrefillBF16GQA(0, out, qkv, kc, vc, items, start, pos, tables, nItems, maxBlocks, heads, kvHeads, hd, bs)
	}}
	scalar := kernel{"sl_attn_prefill", false, func(out, qkv, kc, vc, items, start, pos, tables driver.DevicePtr, nItems, maxBlocks int) error {
		return g.m.AttnPrefill(0, out, qkv, kc, vc, items, start, pos, tables, nItems, maxBlocks, heads, kvHeads, hd, bs)
	}}
	for _, run := range []struct {
		tokens  int
		kernels []kernel
	}{{2048, []kernel{flash, gqa, scalar}}, {8192, []kernel{flash, gqa}}} {
		T := run.tokens
		maxBlocks := T / bs
		tables := make([]int32, maxBlocks)
		for i := range tables {
			tables[i] = int32(i)
		}
		var items []int32
		for h := range heads {
			for q0 := 0; q0 < T; q0 += AttnQueryTile {
				items = append(items, 0, int32(h), int32(q0), int32(q0+AttnQueryTile))
			}
		}
		q := randF32(r, T*width, -1, 1)
		for i := range q {
			q[i] *= 1 / float32(11.3137085) // pre-scaled by 1/sqrt(128), as RopeStore leaves it
		}
		qkv, kc, vc := upload(g, q), upload(g, randF32(r, T*kvd, -1, 1)), upload(g, randF32(r, T*kvd, -1, 1))
		gitems := GroupItems(nil, items, heads/kvHeads)
		itemsP, gitemsP := upload(g, items), upload(g, gitems)
		start, pos, tablesP := upload(g, []int32{0}), upload(g, []int32{0}), upload(g, tables)
		out := upload(g, make([]float32, T*heads*hd))
		flops := 4 * float64(hd) * heads * float64(T) * float64(T+1) / 2
		for _, kern := range run.kernels {
			b.Run(fmt.Sprintf("tokens=%d/%s", T, kern.name), func(b *testing.B) {
				g.enter(b)
				it, n := itemsP, len(items)/4
				if kern.grouped {
					it, n = gitemsP, len(gitems)/4
				}
				sec := timeLaunches(b, g, func() error {
					return kern.launch(out, qkv, kc, vc, it, start, pos, tablesP, n, maxBlocks)
				})
				b.ReportMetric(flops/sec/1e12, "TFLOP/s")
				b.ReportMetric(sec*1e3, "ms/launch")
			})
		}
		g.t = b
		g.free(qkv, kc, vc, itemsP, gitemsP, start, pos, tablesP, out)
	}
}

// filled allocates n bytes set to v.
func (g *gpu) filled(n int, v uint8) driver.DevicePtr {
	g.t.Helper()
	p, err := g.d.MemAlloc(uintptr(n))
	g.check(err)
	g.alloc = append(g.alloc, p)
	g.check(g.d.MemsetD8(p, v, uintptr(n)))
	return p
}

// free releases buffers before the test's end (benchmarks allocate gigabytes).
func (g *gpu) free(ps ...driver.DevicePtr) {
	for _, p := range ps {
		for i, a := range g.alloc {
			if a == p {
				g.d.MemFree(p)
				g.alloc = append(g.alloc[:i], g.alloc[i+1:]...)
				break
			}
		}
	}
}
