// servelab's CUDA kernels: self-contained CUDA C for NVRTC (no headers: bf16 conversion,
// tensor-core mma.sync and cp.async are inline PTX). Compiled by `go generate
// ./cuda/kernels` (gen/main.go) to an sm_90 cubin and compute_80 PTX, both embedded.
//
// Every kernel, its parameters, grid and block are those of the launch table (table.go)
// and the launch functions (ops.go); the conventions are table.go's (float32 activations
// and KV cache in the CPU engine's layout, int32 sizes, 64-bit offsets, 0 for an absent
// pointer). All arithmetic accumulates in float32; no fast-math flags are used (expf,
// sqrt and division are IEEE-accurate).
//
// What differs from the CPU kernels (engine/cpu, engine/model/forward.go,
// engine/sampling), which the GPU test TestKernelsMatchCPU compares against with the
// tolerances it states:
//   - Reductions (RMSNorm's sum of squares, dot products, GEMM/GEMV sums, softmax sums)
//     run in a different order (warp shuffles, tiles), so float32 results differ in the
//     last bits.
//   - sl_gemm_bf16 and sl_gemm_bf16_skinny round x to bfloat16 (nearest even) as it is
//     loaded, as ops.go says; the CPU engine converts bf16 weights to float32 at load
//     time and keeps x in float32. sl_gemv_bf16 keeps x in float32.
//   - Attention uses an online (streaming) softmax: scores are not normalised before the
//     weighted sum of values but rescaled as the running maximum grows, then divided by
//     the sum once; the CPU normalises the scores first.
//   - sl_rope_store matches the CPU bit for bit: its products and sums are rounded
//     separately (__fmul_rn/__fadd_rn), never fused into FMAs.
//   - sl_argmax does not differ: as engine/sampling's Argmax, it never picks NaN (0 when
//     every value is NaN) and takes the lowest index among equals (-0 equal to +0).
//     sl_topk orders NaN below every number and -0 equal to +0; sl_softmax gives NaN
//     logits probability 0 (engine/sampling drops NaN candidates).
//
// Alignment: sl_gemm_bf16, sl_gemm_bf16_skinny and sl_gemv_bf16 read x and w with
// 16-byte loads, so x and w must be 16-byte aligned (cuMemAlloc's are; k % 8 == 0 keeps
// every row aligned), which their launch functions check.

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

#define NEG_INF __int_as_float(0xff800000)

// ---- helpers ----------------------------------------------------------------------

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ float bf16_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }

// ---- inline PTX -----------------------------------------------------------------------
// Every asm statement is here. The CPU emulation (cuda/kernels/emu, for tests without a
// GPU) compiles this file with SL_EMULATE defined and emu/emu.h supplying these helpers
// (and saddr) with the PTX instructions' documented semantics.
#ifndef SL_EMULATE
typedef u32 saddr; // a shared-memory address

// pack_bf16 rounds lo and hi to bfloat16 (nearest even) and packs them, lo in the low
// half (the lower-addressed element in memory).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
	u32 r;
	asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
	return r;
}

__device__ __forceinline__ saddr smem_addr(const void *p) {
	u32 r;
	asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
	return r;
}

// cp_async16 copies 16 bytes from global to shared memory asynchronously; src_bytes 0
// writes zeros without reading g.
__device__ __forceinline__ void cp_async16(saddr dst, const void *g, int src_bytes) {
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(g), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

__device__ __forceinline__ void mma_bf16(float c[4], const u32 a[4], const u32 b[2]) {
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
	             "{%0,%1,%2,%3};"
	             : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
	             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ldg_stream loads 16 bytes of a weight row that is read once: non-coherent, not kept
// in L1 (so x, which every warp rereads, stays there).
__device__ __forceinline__ uint4 ldg_stream(const uint4 *p) {
	uint4 v;
	asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
	             : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
	             : "l"(p));
	return v;
}
#endif // SL_EMULATE

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

// block_sum returns the sum of v over the block (blockDim.x a multiple of 32, at most
// 1024) to every thread, adding the warps' sums in a fixed order. sh holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float *sh) {
	const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = warp_sum(v);
	__syncthreads(); // sh may still be read by a previous reduction
	if (lane == 0) sh[w] = v;
	__syncthreads();
	float t = 0.f;
	for (int i = 0; i < nw; i++) t += sh[i];
	return t;
}

// block_max is block_sum's maximum (fmaxf: NaN is ignored unless all are NaN).
__device__ __forceinline__ float block_max(float v, float *sh) {
	const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = warp_max(v);
	__syncthreads();
	if (lane == 0) sh[w] = v;
	__syncthreads();
	float t = sh[0];
	for (int i = 1; i < nw; i++) t = fmaxf(t, sh[i]);
	return t;
}

// ---- embedding, norms, elementwise ---------------------------------------------------

extern "C" __global__ void __launch_bounds__(256)
sl_embed_f32(float *x, const float *table, const int *tokens, int dim) {
	const i64 r = blockIdx.x;
	const float *src = table + (i64)tokens[r] * dim;
	float *dst = x + r * dim;
	for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void __launch_bounds__(256)
sl_embed_bf16(float *x, const u16 *table, const int *tokens, int dim) {
	const i64 r = blockIdx.x;
	const u16 *src = table + (i64)tokens[r] * dim;
	float *dst = x + r * dim;
	for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = bf16_to_f32(src[i]);
}

// sl_rmsnorm: out[r] = x[src]·w / sqrt(mean(x[src]²) + eps), src = rows[r] or r. out may
// be x (rows 0): every element is read before any is written.
extern "C" __global__ void __launch_bounds__(256)
sl_rmsnorm(float *out, const float *x, const int *rows, const float *w, int dim, float eps) {
	__shared__ float sh[32];
	const i64 r = blockIdx.x;
	const i64 src = rows ? (i64)rows[r] : r;
	const float *xr = x + src * dim;
	float ss = 0.f;
	for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
	ss = block_sum(ss, sh);
	// As cpu.RMSNorm: the scale in float64 from the float32 sum.
	const float scale = (float)(1.0 / sqrt((double)ss / (double)dim + (double)eps));
	float *o = out + r * dim;
	for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

// sl_rope_store: see RopeStore in ops.go. One block per row; each thread rotates pairs
// (i, i+half) of q and k heads, then copies v; the bias is added as the values are read.
extern "C" __global__ void __launch_bounds__(128)
sl_rope_store(float *qkv, const float *bias, const float *cos, const float *sin, const int *tok_pos,
              const int *tok_slot, float *kcache, float *vcache, int heads, int kv_heads, int head_dim, float scale) {
	const i64 r = blockIdx.x;
	const int half = head_dim / 2, kvd = kv_heads * head_dim, qd = heads * head_dim;
	const int width = qd + 2 * kvd;
	float *row = qkv + r * width;
	const i64 pos = tok_pos[r];
	const i64 slot = tok_slot[r];
	const float *c = cos + pos * half, *s = sin + pos * half;
	const int pairs = (heads + kv_heads) * half;
	for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
		const int h = p / half, i = p - h * half;
		const int ia = h * head_dim + i, ib = ia + half;
		float a = row[ia], b = row[ib];
		if (bias) {
			a = __fadd_rn(a, bias[ia]);
			b = __fadd_rn(b, bias[ib]);
		}
		float lo = __fsub_rn(__fmul_rn(a, c[i]), __fmul_rn(b, s[i]));
		float hi = __fadd_rn(__fmul_rn(b, c[i]), __fmul_rn(a, s[i]));
		if (h < heads) {
			lo = __fmul_rn(lo, scale);
			hi = __fmul_rn(hi, scale);
		} else {
			float *kc = kcache + slot * kvd + (ia - qd);
			kc[0] = lo;
			kc[half] = hi;
		}
		row[ia] = lo;
		row[ib] = hi;
	}
	for (int j = threadIdx.x; j < kvd; j += blockDim.x) {
		float v = row[qd + kvd + j];
		if (bias) {
			v = __fadd_rn(v, bias[qd + kvd + j]);
			row[qd + kvd + j] = v;
		}
		vcache[slot * kvd + j] = v;
	}
}

// sl_silu_mul: act[r][i] = silu(gu[r][i])·gu[r][hidden+i].
extern "C" __global__ void __launch_bounds__(256)
sl_silu_mul(float *act, const float *gu, int rows, int hidden) {
	const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (i64)rows * hidden) return;
	const i64 r = i / hidden, c = i - r * hidden;
	const float g = gu[r * 2 * hidden + c], u = gu[r * 2 * hidden + hidden + c];
	act[i] = g / (1.f + expf(-g)) * u;
}

extern "C" __global__ void __launch_bounds__(256)
sl_add(float *x, const float *y, int n) {
	const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) x[i] += y[i];
}

// ---- attention ------------------------------------------------------------------------

#define ATTN_MAX_PER_LANE 8 // MaxHeadDim / 32
#define ATTN_UNROLL 4

// attend_warp adds positions j0, j0+jstep, ... < j1 of one query (q: head_dim floats in
// shared memory, pre-scaled) to a warp's online-softmax state (m: running max, l: sum of
// exp(score - m), acc: sum of exp(score - m)·v over dimensions lane + 32t). bt is the
// sequence's block table; kvOff the kv head's first column.
__device__ __forceinline__ void attend_warp(const float *q, const float *kcache, const float *vcache, const int *bt,
                                            i64 kvOff, int kvd, int bs, int hd, int j0, int j1, int jstep,
                                            float &m, float &l, float acc[ATTN_MAX_PER_LANE]) {
	const int lane = threadIdx.x & 31;
	float qr[ATTN_MAX_PER_LANE];
#pragma unroll
	for (int t = 0; t < ATTN_MAX_PER_LANE; t++) {
		const int d = lane + 32 * t;
		qr[t] = d < hd ? q[d] : 0.f;
	}
	// ATTN_UNROLL positions per iteration: their keys load together and their dot
	// products reduce together, so a warp has that many loads and shuffle chains in
	// flight instead of one.
	for (int j = j0; j < j1; j += ATTN_UNROLL * jstep) {
		float s[ATTN_UNROLL];
		const float *vp[ATTN_UNROLL];
#pragma unroll
		for (int u = 0; u < ATTN_UNROLL; u++) {
			const int jj = j + u * jstep;
			s[u] = 0.f;
			vp[u] = 0;
			if (jj < j1) {
				const int blk = jj / bs;
				const i64 base = ((i64)bt[blk] * bs + (jj - blk * bs)) * kvd + kvOff;
				const float *kp = kcache + base;
				vp[u] = vcache + base;
#pragma unroll
				for (int t = 0; t < ATTN_MAX_PER_LANE; t++) {
					const int d = lane + 32 * t;
					if (d < hd) s[u] = fmaf(qr[t], kp[d], s[u]);
				}
			}
		}
#pragma unroll
		for (int u = 0; u < ATTN_UNROLL; u++) s[u] = warp_sum(s[u]);
		float mn = m;
#pragma unroll
		for (int u = 0; u < ATTN_UNROLL; u++)
			if (vp[u]) mn = fmaxf(mn, s[u]);
		const float corr = m == NEG_INF ? 0.f : expf(m - mn);
		float p[ATTN_UNROLL];
		l *= corr;
#pragma unroll
		for (int u = 0; u < ATTN_UNROLL; u++) {
			p[u] = vp[u] ? expf(s[u] - mn) : 0.f;
			l += p[u];
		}
#pragma unroll
		for (int t = 0; t < ATTN_MAX_PER_LANE; t++) {
			const int d = lane + 32 * t;
			if (d < hd) {
				float a = acc[t] * corr;
#pragma unroll
				for (int u = 0; u < ATTN_UNROLL; u++)
					if (vp[u]) a = fmaf(p[u], vp[u][d], a);
				acc[t] = a;
			}
		}
		m = mn;
	}
}

// sl_attn_decode: block (head, i) for sequence seqs[i]; its 4 warps take every 4th
// context position, then merge their softmax states through shared memory.
extern "C" __global__ void __launch_bounds__(128)
sl_attn_decode(float *out, const float *qkv, const float *kcache, const float *vcache, const int *seqs,
               const int *seq_start, const int *seq_pos, const int *block_tables, int max_blocks, int heads,
               int kv_heads, int head_dim, int block_size) {
	__shared__ float qs[256];
	__shared__ float sacc[4][256];
	__shared__ float sm[4], sl[4];
	const int h = blockIdx.x, seq = seqs[blockIdx.y];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const i64 row = seq_start[seq];
	const int n = seq_pos[seq] + 1;
	const int hd = head_dim, kvd = kv_heads * hd, width = (heads + 2 * kv_heads) * hd;
	const i64 kvOff = (i64)(h / (heads / kv_heads)) * hd;
	const float *q = qkv + row * width + (i64)h * hd;
	for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[d];
	__syncthreads();
	float m = NEG_INF, l = 0.f, acc[ATTN_MAX_PER_LANE];
#pragma unroll
	for (int t = 0; t < ATTN_MAX_PER_LANE; t++) acc[t] = 0.f;
	attend_warp(qs, kcache, vcache, block_tables + (i64)seq * max_blocks, kvOff, kvd, block_size, hd, warp, n, 4,
	            m, l, acc);
#pragma unroll
	for (int t = 0; t < ATTN_MAX_PER_LANE; t++) {
		const int d = lane + 32 * t;
		if (d < hd) sacc[warp][d] = acc[t];
	}
	if (lane == 0) {
		sm[warp] = m;
		sl[warp] = l;
	}
	__syncthreads();
	const float M = fmaxf(fmaxf(sm[0], sm[1]), fmaxf(sm[2], sm[3])); // finite: warp 0 has position 0
	float f[4], L = 0.f;
#pragma unroll
	for (int w = 0; w < 4; w++) {
		f[w] = sm[w] == NEG_INF ? 0.f : expf(sm[w] - M);
		L = fmaf(sl[w], f[w], L);
	}
	float *o = out + row * (i64)heads * hd + (i64)h * hd;
	for (int d = threadIdx.x; d < hd; d += blockDim.x) {
		float v = 0.f;
#pragma unroll
		for (int w = 0; w < 4; w++) v = fmaf(sacc[w][d], f[w], v);
		o[d] = v / L;
	}
}

// sl_attn_prefill: block per item {seq, head, q0, q1}; warp w computes queries q0+w,
// q0+w+4, ... alone over all their context positions.
extern "C" __global__ void __launch_bounds__(128)
sl_attn_prefill(float *out, const float *qkv, const float *kcache, const float *vcache, const int *items,
                const int *seq_start, const int *seq_pos, const int *block_tables, int max_blocks, int heads,
                int kv_heads, int head_dim, int block_size) {
	__shared__ float qs[4][256];
	const int *it = items + (i64)blockIdx.x * 4;
	const int seq = it[0], h = it[1], q0 = it[2], q1 = it[3];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int hd = head_dim, kvd = kv_heads * hd, width = (heads + 2 * kv_heads) * hd;
	const i64 kvOff = (i64)(h / (heads / kv_heads)) * hd;
	const int *bt = block_tables + (i64)seq * max_blocks;
	const i64 start = seq_start[seq];
	const int pos0 = seq_pos[seq];
	for (int i = q0 + warp; i < q1; i += 4) {
		const i64 row = start + i;
		const float *q = qkv + row * width + (i64)h * hd;
		__syncwarp();
		for (int d = lane; d < hd; d += 32) qs[warp][d] = q[d];
		__syncwarp();
		float m = NEG_INF, l = 0.f, acc[ATTN_MAX_PER_LANE];
#pragma unroll
		for (int t = 0; t < ATTN_MAX_PER_LANE; t++) acc[t] = 0.f;
		attend_warp(qs[warp], kcache, vcache, bt, kvOff, kvd, block_size, hd, 0, pos0 + i + 1, 1, m, l, acc);
		float *o = out + row * (i64)heads * hd + (i64)h * hd;
#pragma unroll
		for (int t = 0; t < ATTN_MAX_PER_LANE; t++) {
			const int d = lane + 32 * t;
			if (d < hd) o[d] = acc[t] / l;
		}
	}
}

// sl_attn_prefill_bf16: sl_attn_prefill's items on tensor cores (FlashAttention-2's
// online softmax over bf16 mma.sync.m16n8k16, float32 accumulation). Block per item
// {seq, head, q0, q1}: its (at most 16) queries are one m16 tile, pre-scaled q rounded to
// bf16 in Qs (rows past q1 and dimensions past head_dim, up to a multiple of 16, zero). The block walks the
// context [0, seq_pos+q1) in tiles of FA_BK = 64 positions: its 128 threads load the
// tile's keys and values from the float32 paged cache (through the block table, two
// floats per load), round them to bf16 (nearest even) into Ks/Vs (positions past the
// context and dimensions past head_dim zero), and warp w takes the tile's positions
// 16w..16w+15:
//   - S = Q·Kᵀ (16 x 16: two n8 tiles, k over the head dimension in steps of 16; Qs and
//     Ks are row-major, so every A and B fragment register is one aligned 32-bit
//     shared load, and the 136- and 264-element row strides put a warp's 32 loads in 32 banks);
//   - the causal mask (position > seq_pos+q0+row is -inf) where the sub-tile reaches
//     past the first query's position;
//   - the online softmax per row in float32: m the running maximum, l each lane's
//     partial sum of exp(s - m) over its columns (unrounded), acc rescaled by
//     exp(m_old - m_new) when the maximum grows (no rescaling term when m was -inf);
//   - O += P·V: S's accumulator layout is the A fragment layout of P (rows g/g+8,
//     columns 2t..2t+1 and 8+2t..), so P is rounded to bf16 and packed in registers; V's
//     B fragments (positions 2t, 2t+1 of a column) are two 16-bit shared loads each.
// After the last tile the four warps' states (m, l, acc) are merged in a fixed order
// (warp 0, 1, 2, 3) through shared memory (acc in the K/V buffers), so a result does not
// depend on timing: out = Σ_w acc_w·e^(m_w-M) / Σ_w l_w·e^(m_w-M), M = max_w m_w (finite:
// warp 0 sees position 0, which every query attends to).
// head_dim is even and at most FA_MAXHD = 256 (AttnPrefillBF16 checks). A thread's share
// of a 16 x 128 float32 accumulator is 64 registers (__launch_bounds__(128, 4) keeps the
// kernel at 128, no spills), so above 128 dimensions the block makes one pass over the
// context per 128 output columns, recomputing the scores, and loads a tile's keys in
// 128-dimension chunks (a barrier between them) into the same Ks: at 256 the scores cost
// twice and the keys are read twice (1.5x the FLOPs of one pass).
// Shared memory: Qs 8.25 KiB (16 x 264 bf16) + Ks/Vs 2 x 17 KiB (64 x 136 bf16 each) =
// 42.75 KiB, so five blocks fit an SM by shared memory, four by registers.
// Compared with sl_attn_prefill (float32 throughout), q, k, v and p are rounded to bf16:
// TestKernelsMatchCPU states the bound.
// Expected speed (arithmetic, not measured: no GPU has run this yet): per 64-position
// tile a block reads 64 x head_dim x 8 bytes of float32 keys and values (64 KiB at 128),
// from L2 after the first item of a (sequence, kv head) (its cache is 2 MiB at 2048
// tokens), for 4 x 16 x 64 x head_dim = 0.5 MFLOP of mma: 0.125 bytes per FLOP, since each
// item's 16 queries reread the context. At ~64 bytes per clock per SM from L2 (an
// assumption; ~127 GB/s at 1.98 GHz) that caps an SM near 1 TFLOP/s, ~130 TFLOP/s over
// 132 SMs (13% of the H200's dense bf16 peak; the scalar kernel does ~2 float32 FLOP per
// loaded float). A block does not overlap its loads with its mma (four blocks per SM
// overlap each other's). sl_attn_prefill_bf16_gqa (below) serves all the query heads
// that share a kv head (GQA: 4 on Llama-3.1-8B) in one block, loading each K/V tile once
// for their 16·G query rows; this kernel remains for head dims above 128 and other groups.
#define FA_BK 64
#define FA_HC 128            // head dimensions per pass / per K or V chunk in shared memory
#define FA_MAXHD 256
#define FA_LD (FA_HC + 8)    // Ks/Vs row stride
#define FA_QLD (FA_MAXHD + 8) // Qs row stride
#define FA_RLD (FA_HC + 4)   // merge buffer row stride

// fa_step is one warp's FlashAttention-2 step over 16 context positions, shared by both
// flash prefill kernels: s[j][e] holds the scores of rows g + 8(e>>1) at positions j0 + 8j
// + 2t4 + (e&1); those past a row's causal bound (lim0 + row) or the context (nctx) are
// masked; the running max m, sum l and output acc (columns below ocols, n-th 8 in acc[n])
// are rescaled, and P (rounded to bf16) times the V rows at v0 (stride FA_LD, the tile's
// first of these 16 positions, column g) is added to acc.
__device__ __forceinline__ void fa_step(float s[2][4], float m[2], float l[2], float acc[FA_HC / 8][4], int j0,
                                        int lim0, int nctx, const u16 *v0, int ocols) {
	const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	if (j0 + 15 > lim0) {
#pragma unroll
		for (int j = 0; j < 2; j++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				const int row = g + 8 * (e >> 1), pos = j0 + 8 * j + 2 * t4 + (e & 1);
				if (pos > lim0 + row || pos >= nctx) s[j][e] = NEG_INF;
			}
	}
	float mx[2] = {fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1])),
	               fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3]))};
	float corr[2];
#pragma unroll
	for (int r = 0; r < 2; r++) {
		mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
		mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
		const float mn = fmaxf(m[r], mx[r]);
		corr[r] = m[r] == NEG_INF ? 0.f : expf(m[r] - mn);
		m[r] = mn;
		l[r] *= corr[r];
	}
#pragma unroll
	for (int j = 0; j < 2; j++)
#pragma unroll
		for (int e = 0; e < 4; e++) {
			const int r = e >> 1;
			const float p = s[j][e] == NEG_INF ? 0.f : expf(s[j][e] - m[r]);
			l[r] += p;
			s[j][e] = p;
		}
	const u32 pa[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]), pack_bf16(s[1][0], s[1][1]),
	                   pack_bf16(s[1][2], s[1][3])};
#pragma unroll
	for (int n = 0; n < FA_HC / 8; n++) {
		if (n * 8 < ocols) {
			acc[n][0] *= corr[0];
			acc[n][1] *= corr[0];
			acc[n][2] *= corr[1];
			acc[n][3] *= corr[1];
			const u16 *vp = v0 + n * 8;
			const u32 b[2] = {(u32)vp[0] | ((u32)vp[FA_LD] << 16), (u32)vp[8 * FA_LD] | ((u32)vp[9 * FA_LD] << 16)};
			mma_bf16(acc[n], pa, b);
		}
	}
}

// fa_load_tile loads rows rp, rp+2, ... < FA_BK of a 64-position tile (positions kt0 +
// row) of this thread's dimension pair: keys' dimensions dk, dk+1 into Ks (when dk <
// hdp) and, when withV, values' dv, dv+1 into Vs (when dv < hdp), rounded to bf16; zeros
// past the context (nctx) and past head_dim. Four rows' loads are issued before the first
// is converted and stored, so a thread has up to 8 loads in flight.
__device__ __forceinline__ void fa_load_tile(u16 *Ks, u16 *Vs, const float *kcache, const float *vcache, const int *bt,
                                             i64 kvOff, int kvd, int bs, int kt0, int nctx, int rp, int col, int dk,
                                             int dv, bool withV, int hd, int hdp) {
	const bool kIn = dk < hdp, vIn = withV && dv < hdp;
	if (!kIn && !vIn) return;
	for (int p0 = rp; p0 < FA_BK; p0 += 8) {
		float2 kf[4], vf[4];
#pragma unroll
		for (int u = 0; u < 4; u++) {
			const int j = kt0 + p0 + 2 * u;
			kf[u].x = kf[u].y = vf[u].x = vf[u].y = 0.f;
			if (j < nctx) {
				const int blk = j / bs;
				const i64 base = ((i64)bt[blk] * bs + (j - blk * bs)) * kvd + kvOff;
				if (dk < hd) kf[u] = *(const float2 *)(kcache + base + dk);
				if (withV && dv < hd) vf[u] = *(const float2 *)(vcache + base + dv);
			}
		}
#pragma unroll
		for (int u = 0; u < 4; u++) {
			const int p = p0 + 2 * u;
			if (kIn) *(u32 *)&Ks[p * FA_LD + col] = pack_bf16(kf[u].x, kf[u].y);
			if (vIn) *(u32 *)&Vs[p * FA_LD + col] = pack_bf16(vf[u].x, vf[u].y);
		}
	}
}

extern "C" __global__ void __launch_bounds__(128, 4)
sl_attn_prefill_bf16(float *out, const float *qkv, const float *kcache, const float *vcache, const int *items,
                     const int *seq_start, const int *seq_pos, const int *block_tables, int max_blocks, int heads,
                     int kv_heads, int head_dim, int block_size) {
	__shared__ __align__(16) u16 Qs[16 * FA_QLD];
	__shared__ __align__(16) u16 KV[2 * FA_BK * FA_LD];
	__shared__ float sm[4][16], sl[4][16];
	u16 *Ks = KV, *Vs = KV + FA_BK * FA_LD;
	const int *it = items + (i64)blockIdx.x * 4;
	const int seq = it[0], h = it[1], q0 = it[2], q1 = it[3];
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int g = lane >> 2, t4 = lane & 3;
	const int hd = head_dim, hdp = (hd + 15) & ~15, kvd = kv_heads * hd, width = (heads + 2 * kv_heads) * hd;
	const i64 kvOff = (i64)(h / (heads / kv_heads)) * hd;
	const int *bt = block_tables + (i64)seq * max_blocks;
	const i64 start = seq_start[seq];
	const int pos0 = seq_pos[seq], nq = q1 - q0;
	const int nctx = pos0 + q1; // positions [0, nctx): the last query's context
	const int lim0 = pos0 + q0; // query row r attends positions <= lim0 + r
	const int nkh = (hdp + FA_HC - 1) / FA_HC; // K chunks of 128 dimensions: 1, or 2 above 128

	// Thread tid moves dimension pair cp (columns 2cp, 2cp+1 of a chunk) of rows rp, rp+2, ...
	const int cp = tid & 63, rp = tid >> 6, d2 = 2 * cp;
	for (int c = d2; c < hdp; c += FA_HC) {
		for (int r = rp; r < 16; r += 2) {
			u32 v = 0u;
			if (r < nq && c < hd) {
				const float2 f = *(const float2 *)(qkv + (start + q0 + r) * width + (i64)h * hd + c);
				v = pack_bf16(f.x, f.y);
			}
			*(u32 *)&Qs[r * FA_QLD + c] = v;
		}
	}

	// One pass per 128 output columns (two above 128: the second recomputes the scores).
	for (int oc = 0; oc < hdp; oc += FA_HC) {
		const int ocp = min(hdp - oc, FA_HC); // columns of this pass, padded
		float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
		float acc[FA_HC / 8][4];
#pragma unroll
		for (int n = 0; n < FA_HC / 8; n++)
#pragma unroll
			for (int e = 0; e < 4; e++) acc[n][e] = 0.f;

		for (int kt0 = 0; kt0 < nctx; kt0 += FA_BK) {
			const int w0 = warp * 16, j0 = kt0 + w0; // this warp's sub-tile
			float s[2][4];
#pragma unroll
			for (int j = 0; j < 2; j++)
#pragma unroll
				for (int e = 0; e < 4; e++) s[j][e] = 0.f;
			for (int kh = 0; kh < nkh; kh++) {
				const bool last = kh == nkh - 1;
				if (kh > 0) __syncthreads(); // every warp is done with the previous K chunk
				fa_load_tile(Ks, Vs, kcache, vcache, bt, kvOff, kvd, block_size, kt0, nctx, rp, d2, kh * FA_HC + d2,
				             oc + d2, last, hd, hdp);
				__syncthreads();
				if (j0 < nctx) { // uniform over the warp
					const int kn = min(hdp - kh * FA_HC, FA_HC);
					for (int kk = 0; kk < kn; kk += 16) {
						const u16 *qa = Qs + g * FA_QLD + kh * FA_HC + kk + 2 * t4;
						const u32 a[4] = {*(const u32 *)qa, *(const u32 *)(qa + 8 * FA_QLD), *(const u32 *)(qa + 8),
						                  *(const u32 *)(qa + 8 * FA_QLD + 8)};
#pragma unroll
						for (int j = 0; j < 2; j++) {
							const u16 *kb = Ks + (w0 + j * 8 + g) * FA_LD + kk + 2 * t4;
							const u32 b[2] = {*(const u32 *)kb, *(const u32 *)(kb + 8)};
							mma_bf16(s[j], a, b);
						}
					}
				}
			}
			if (j0 < nctx) {
				// s[j][e] is row g + 8(e>>1), position j0 + 8j + 2t4 + (e&1).
				fa_step(s, m, l, acc, j0, lim0, nctx, Vs + (w0 + 2 * t4) * FA_LD + g, ocp);
			}
			__syncthreads(); // Ks/Vs are rewritten by the next tile
		}

		// Merge the warps' states: red[w][row][col] in KV (4 x 16 rows of FA_RLD floats,
		// 33 KiB of its 34; the loop's last barrier has passed). The row stride of 132
		// (not 128) makes a warp's stores (rows g, columns 2t4) at most 2-way bank
		// conflicts, not 8-way.
		float *red = (float *)KV;
#pragma unroll
		for (int r = 0; r < 2; r++) {
			l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
			l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
		}
		if (t4 == 0) {
			sm[warp][g] = m[0];
			sm[warp][g + 8] = m[1];
			sl[warp][g] = l[0];
			sl[warp][g + 8] = l[1];
		}
#pragma unroll
		for (int n = 0; n < FA_HC / 8; n++) {
			if (n * 8 < ocp) {
#pragma unroll
				for (int e = 0; e < 4; e++) {
					const int row = g + 8 * (e >> 1), col = n * 8 + 2 * t4 + (e & 1);
					red[(warp * 16 + row) * FA_RLD + col] = acc[n][e];
				}
			}
		}
		__syncthreads();
		const int ocw = min(hd - oc, FA_HC); // output columns of this pass
		for (int i = tid; i < nq * ocw; i += 128) {
			const int row = i / ocw, col = i - row * ocw;
			const float M = fmaxf(fmaxf(sm[0][row], sm[1][row]), fmaxf(sm[2][row], sm[3][row]));
			float L = 0.f, v = 0.f;
#pragma unroll
			for (int w = 0; w < 4; w++) {
				const float f = sm[w][row] == NEG_INF ? 0.f : expf(sm[w][row] - M);
				L = fmaf(sl[w][row], f, L);
				v = fmaf(red[(w * 16 + row) * FA_RLD + col], f, v);
			}
			out[(start + q0 + row) * (i64)heads * hd + (i64)h * hd + oc + col] = v / L;
		}
		__syncthreads(); // red and sm/sl are reused by the next pass
	}
}

// sl_attn_prefill_bf16_gqa: sl_attn_prefill_bf16 for all the query heads of a kv head
// (grouped-query attention) in one block, so each K/V tile is read from the float32
// cache and rounded to bf16 once for the group instead of once per query head. Block per
// item {seq, kv_head, q0, q1} (at most 16 queries); group G = heads/kv_heads is 1, 2, 4
// or 8 and head_dim at most 128 (AttnPrefillBF16GQA checks). The block's M = 16·G query
// rows (query head kv_head·G + i in rows 16i..16i+15, pre-scaled q rounded to bf16) are
// in Qs; warp w serves query head i = w % G (its own m16 tile: the A fragments and
// the mask are sl_attn_prefill_bf16's) and split s = w / G of the S = NW/G warps that share
// that head, NW = 4 warps (8 when G = 8). The context is walked in tiles of BK = 16·TS
// positions, TS = 4, 4, 2, 1 sub-tiles of 16 for G = 1, 2, 4, 8 (what fits 48 KiB of
// static shared memory next to Qs); all NW·32 threads load and round a tile's keys and
// values once, then warp (i, s) takes sub-tiles s, s+S, ... of it for head i, each one
// as sl_attn_prefill_bf16's warp takes its 16 positions (S = Q·Kᵀ, mask, online softmax,
// O += P·V). With S > 1 (G = 1, 2) the splits of a head merge their states in a fixed
// order (split 0, 1, ...) through shared memory as sl_attn_prefill_bf16's warps do; with
// S = 1 (G = 4, 8) a warp has the whole context of its head and writes acc/l itself. So
// results are deterministic.
// Shared memory: Qs 16·G x 136 bf16 (4.25 KiB per head) + Ks/Vs 2 x BK x 136 bf16:
// 38.25, 42.5, 34 and 42.5 KiB for G = 1, 2, 4, 8 (the merge buffer, 4 x 16 x 132
// float32 = 33 KiB, reuses it after the last tile). __launch_bounds__(256, 2): 128 registers.
// Expected bytes and FLOPs (arithmetic, not measured): per 16 context positions a block
// reads 16 x head_dim x 8 bytes of float32 keys and values (16 KiB at 128) and rounds them
// once, for G x 2 x (2 x 16 x 16 x head_dim) = G x 131 kFLOP of mma (sl_attn_prefill_bf16:
// the same bytes for one head's 131 kFLOP). At head_dim 128 and G = 4 (Llama-3.1-8B: 32
// query heads over 8 kv heads) that is 0.031 bytes per FLOP instead of 0.125: at the ~64
// bytes per clock per SM from L2 assumed there, ~2,000 FLOP per clock per SM, ~540 TFLOP/s
// over 132 SMs at 1.98 GHz (54% of the dense bf16 peak, from 13%), so other limits (the
// float32 exp of the online softmax, two barriers per tile, mma.sync's issue rate, loads
// not overlapped with mma within a block) decide the speed; the cache's HBM bytes are
// unchanged (each kv head's context once per 16-query tile, mostly from L2). The float32
// to bf16 conversions of K and V drop by G as well. The blocks are a quarter as many (G =
// 4): 8 kv heads x ceil(T/16) items, 1,024 for one 2048-token chunk (about two waves of
// four 128-thread blocks per SM), but only 256 for 512 tokens, which fills half the
// H200's block slots: short prefills may gain less, or lose.
#define GQ_LD FA_LD            // Qs, Ks and Vs row stride (head_dim <= 128)
#define GQ_SMEM_ELEMS (16 * 8 * GQ_LD + 2 * 16 * GQ_LD) // G = 8, BK = 16: the largest layout (43520 bytes)

extern "C" __global__ void __launch_bounds__(256, 2)
sl_attn_prefill_bf16_gqa(float *out, const float *qkv, const float *kcache, const float *vcache, const int *items,
                         const int *seq_start, const int *seq_pos, const int *block_tables, int max_blocks, int heads,
                         int kv_heads, int head_dim, int block_size) {
	__shared__ __align__(16) u16 smem[GQ_SMEM_ELEMS];
	__shared__ float sm[4][16], sl[4][16];
	const int *it = items + (i64)blockIdx.x * 4;
	const int seq = it[0], kvh = it[1], q0 = it[2], q1 = it[3];
	const int G = heads / kv_heads, NW = blockDim.x >> 5, S = NW / G;
	const int TS = G >= 8 ? 1 : G == 4 ? 2 : 4, BK = 16 * TS;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int g = lane >> 2, t4 = lane & 3;
	const int hi = warp % G, sp = warp / G;
	const int hd = head_dim, hdp = (hd + 15) & ~15, kvd = kv_heads * hd, width = (heads + 2 * kv_heads) * hd;
	const i64 kvOff = (i64)kvh * hd;
	const int *bt = block_tables + (i64)seq * max_blocks;
	const i64 start = seq_start[seq];
	const int pos0 = seq_pos[seq], nq = q1 - q0;
	const int nctx = pos0 + q1, lim0 = pos0 + q0;
	u16 *Qs = smem, *Ks = smem + 16 * G * GQ_LD, *Vs = Ks + BK * GQ_LD;

	// Thread tid moves dimension pair cp (columns 2cp, 2cp+1) of rows rp, rp+RS, ...
	const int cp = tid & 63, rp = tid >> 6, RS = NW >> 1, d2 = 2 * cp;
	if (d2 < hdp) {
		for (int r = rp; r < 16 * G; r += RS) {
			const int qr = r & 15;
			u32 v = 0u;
			if (qr < nq && d2 < hd) {
				const float2 f =
				    *(const float2 *)(qkv + (start + q0 + qr) * width + (i64)(kvh * G + (r >> 4)) * hd + d2);
				v = pack_bf16(f.x, f.y);
			}
			*(u32 *)&Qs[r * GQ_LD + d2] = v;
		}
	}

	float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
	float acc[FA_HC / 8][4];
#pragma unroll
	for (int n = 0; n < FA_HC / 8; n++)
#pragma unroll
		for (int e = 0; e < 4; e++) acc[n][e] = 0.f;
	const u16 *qrow = Qs + (16 * hi + g) * GQ_LD + 2 * t4;

	for (int kt0 = 0; kt0 < nctx; kt0 += BK) {
		// Load and round the tile's keys and values, four rows' loads in flight per thread.
		if (d2 < hdp) {
			for (int p0 = rp; p0 < BK; p0 += 4 * RS) {
				float2 kf[4], vf[4];
#pragma unroll
				for (int u = 0; u < 4; u++) {
					const int p = p0 + u * RS, j = kt0 + p;
					kf[u].x = kf[u].y = vf[u].x = vf[u].y = 0.f;
					if (p < BK && j < nctx && d2 < hd) {
						const int blk = j / block_size;
						const i64 base = ((i64)bt[blk] * block_size + (j - blk * block_size)) * kvd + kvOff + d2;
						kf[u] = *(const float2 *)(kcache + base);
						vf[u] = *(const float2 *)(vcache + base);
					}
				}
#pragma unroll
				for (int u = 0; u < 4; u++) {
					const int p = p0 + u * RS;
					if (p < BK) {
						*(u32 *)&Ks[p * GQ_LD + d2] = pack_bf16(kf[u].x, kf[u].y);
						*(u32 *)&Vs[p * GQ_LD + d2] = pack_bf16(vf[u].x, vf[u].y);
					}
				}
			}
		}
		__syncthreads();
		for (int st = sp; st < TS; st += S) {
			const int w0 = 16 * st, j0 = kt0 + w0;
			if (j0 >= nctx) break; // uniform over the warp
			float s[2][4];
#pragma unroll
			for (int j = 0; j < 2; j++)
#pragma unroll
				for (int e = 0; e < 4; e++) s[j][e] = 0.f;
			for (int kk = 0; kk < hdp; kk += 16) {
				const u16 *qa = qrow + kk;
				const u32 a[4] = {*(const u32 *)qa, *(const u32 *)(qa + 8 * GQ_LD), *(const u32 *)(qa + 8),
				                  *(const u32 *)(qa + 8 * GQ_LD + 8)};
#pragma unroll
				for (int j = 0; j < 2; j++) {
					const u16 *kb = Ks + (w0 + j * 8 + g) * GQ_LD + kk + 2 * t4;
					const u32 b[2] = {*(const u32 *)kb, *(const u32 *)(kb + 8)};
					mma_bf16(s[j], a, b);
				}
			}
			// s[j][e] is row g + 8(e>>1), position j0 + 8j + 2t4 + (e&1).
			fa_step(s, m, l, acc, j0, lim0, nctx, Vs + (w0 + 2 * t4) * GQ_LD + g, hdp);
		}
		__syncthreads(); // Ks/Vs are rewritten by the next tile
	}

#pragma unroll
	for (int r = 0; r < 2; r++) {
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
	}
	float *o = out + (start + q0) * (i64)heads * hd + (i64)(kvh * G + hi) * hd;
	if (S == 1) {
		// The warp saw its head's whole context: l > 0 (position 0 is in every row's).
#pragma unroll
		for (int n = 0; n < FA_HC / 8; n++) {
#pragma unroll
			for (int e = 0; e < 4; e++) {
				const int row = g + 8 * (e >> 1), col = n * 8 + 2 * t4 + (e & 1);
				if (row < nq && col < hd) o[(i64)row * heads * hd + col] = acc[n][e] / l[e >> 1];
			}
		}
		return;
	}
	// Merge the S splits of each head: red[w][row][col] over smem (the last barrier has passed).
	float *red = (float *)smem;
	if (t4 == 0) {
		sm[warp][g] = m[0];
		sm[warp][g + 8] = m[1];
		sl[warp][g] = l[0];
		sl[warp][g + 8] = l[1];
	}
#pragma unroll
	for (int n = 0; n < FA_HC / 8; n++) {
		if (n * 8 < hdp) {
#pragma unroll
			for (int e = 0; e < 4; e++) {
				const int row = g + 8 * (e >> 1), col = n * 8 + 2 * t4 + (e & 1);
				red[(warp * 16 + row) * FA_RLD + col] = acc[n][e];
			}
		}
	}
	__syncthreads();
	for (int i = tid; i < G * nq * hd; i += blockDim.x) {
		const int h = i / (nq * hd), rc = i - h * nq * hd, row = rc / hd, col = rc - row * hd;
		float M = NEG_INF;
		for (int s = 0; s < S; s++) M = fmaxf(M, sm[h + G * s][row]);
		float L = 0.f, v = 0.f;
		for (int s = 0; s < S; s++) {
			const int w = h + G * s;
			const float f = sm[w][row] == NEG_INF ? 0.f : expf(sm[w][row] - M);
			L = fmaf(sl[w][row], f, L);
			v = fmaf(red[(w * 16 + row) * FA_RLD + col], f, v);
		}
		out[(start + q0 + row) * (i64)heads * hd + (i64)(kvh * G + h) * hd + col] = v / L;
	}
}

// ---- matrix products ----------------------------------------------------------------

// sl_gemm_f32: y = x·wᵀ (+= when accumulate); a 64x64 tile of y per block, 16 of k at a
// time through shared memory, each thread 4x4 outputs (rows ty+16i, columns tx+16j).
extern "C" __global__ void __launch_bounds__(256)
sl_gemm_f32(float *y, const float *x, const float *w, int m, int n, int k, int accumulate) {
	__shared__ float As[16][64 + 4];
	__shared__ float Bs[16][64 + 4];
	const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
	const int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
	const int lr = tid >> 2, lk = (tid & 3) * 4;
	float acc[4][4];
#pragma unroll
	for (int i = 0; i < 4; i++)
#pragma unroll
		for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
	const bool arow = m0 + lr < m, brow = n0 + lr < n;
	const float *xr = x + (i64)(m0 + lr) * k, *wr = w + (i64)(n0 + lr) * k;
	for (int k0 = 0; k0 < k; k0 += 16) {
#pragma unroll
		for (int i = 0; i < 4; i++) {
			const int kk = k0 + lk + i;
			As[lk + i][lr] = arow && kk < k ? xr[kk] : 0.f;
			Bs[lk + i][lr] = brow && kk < k ? wr[kk] : 0.f;
		}
		__syncthreads();
#pragma unroll
		for (int kk = 0; kk < 16; kk++) {
			float a[4], b[4];
#pragma unroll
			for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
			for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
			for (int i = 0; i < 4; i++)
#pragma unroll
				for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
		}
		__syncthreads();
	}
#pragma unroll
	for (int i = 0; i < 4; i++) {
		const int r = m0 + ty + 16 * i;
		if (r >= m) continue;
#pragma unroll
		for (int j = 0; j < 4; j++) {
			const int c = n0 + tx + 16 * j;
			if (c >= n) continue;
			const i64 o = (i64)r * n + c;
			y[o] = accumulate ? y[o] + acc[i][j] : acc[i][j];
		}
	}
}

// sl_gemm_bf16 tiles: 128x128 of y per block, 32 of k per stage, two stages. Shared rows
// are padded to 40 bf16 (80 bytes: 16-byte aligned for cp.async, and the 8 rows x 4
// words a fragment load touches fall in 32 distinct banks).
#define GB_BM 128
#define GB_BN 128
#define GB_BK 32
#define GB_LD 40

// sl_gemm_bf16: y = x·wᵀ (+= when accumulate) on tensor cores. 8 warps as 2 (rows) x 4
// (columns), each 64x32 of the tile: 4x4 mma.m16n8k16 per 16 of k. w's tile goes to
// shared memory by cp.async, x's through registers (float32 loaded, rounded to bf16,
// stored); the next stage loads while this one computes.
extern "C" __global__ void __launch_bounds__(256)
sl_gemm_bf16(float *y, const float *x, const u16 *w, int m, int n, int k, int accumulate) {
	__shared__ __align__(16) u16 As[2][GB_BM * GB_LD];
	__shared__ __align__(16) u16 Bs[2][GB_BN * GB_LD];
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int g = lane >> 2, t4 = lane & 3;
	const int wm = warp >> 2, wn = warp & 3;
	const int m0 = blockIdx.y * GB_BM, n0 = blockIdx.x * GB_BN;
	const int KT = (k + GB_BK - 1) / GB_BK;

	float acc[4][4][4];
#pragma unroll
	for (int i = 0; i < 4; i++)
#pragma unroll
		for (int j = 0; j < 4; j++)
#pragma unroll
			for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

	float4 xa[4]; // x's next stage: chunk c = tid + 256i is row c/8, columns (c%8)*4..+4
	saddr sB[2];  // w's chunks: c = tid + 256i is row c/4, columns (c%4)*8..+8
#pragma unroll
	for (int i = 0; i < 2; i++) {
		const int c = tid + 256 * i;
		sB[i] = smem_addr(&Bs[0][(c >> 2) * GB_LD + (c & 3) * 8]);
	}
	const u32 bufBytes = GB_BN * GB_LD * 2;

#define GB_LOAD_A(kt)                                                                     \
	_Pragma("unroll") for (int i = 0; i < 4; i++) {                                       \
		const int c = tid + 256 * i, r = m0 + (c >> 3), kk = (kt) * GB_BK + (c & 7) * 4; \
		if (r < m && kk < k) {                                                            \
			xa[i] = *(const float4 *)(x + (i64)r * k + kk);                               \
		} else {                                                                          \
			xa[i].x = xa[i].y = xa[i].z = xa[i].w = 0.f;                                  \
		}                                                                                 \
	}
#define GB_STORE_A(buf)                                                                   \
	_Pragma("unroll") for (int i = 0; i < 4; i++) {                                       \
		const int c = tid + 256 * i;                                                      \
		uint2 v;                                                                          \
		v.x = pack_bf16(xa[i].x, xa[i].y);                                                \
		v.y = pack_bf16(xa[i].z, xa[i].w);                                                \
		*(uint2 *)&As[buf][(c >> 3) * GB_LD + (c & 7) * 4] = v;                           \
	}
#define GB_LOAD_B(kt, buf)                                                                \
	_Pragma("unroll") for (int i = 0; i < 2; i++) {                                       \
		const int c = tid + 256 * i, r = n0 + (c >> 2), kk = (kt) * GB_BK + (c & 3) * 8; \
		const bool ok = r < n && kk < k;                                                  \
		cp_async16(sB[i] + (buf) * bufBytes, ok ? (const void *)(w + (i64)r * k + kk) : (const void *)w, \
		           ok ? 16 : 0);                                                          \
	}

	GB_LOAD_B(0, 0)
	cp_async_commit();
	GB_LOAD_A(0)
	GB_STORE_A(0)
	cp_async_wait_all();
	__syncthreads();

	for (int kt = 0; kt < KT; kt++) {
		const int buf = kt & 1;
		const bool more = kt + 1 < KT;
		if (more) {
			GB_LOAD_B(kt + 1, buf ^ 1)
			cp_async_commit();
			GB_LOAD_A(kt + 1)
		}
		const u16 *as = As[buf], *bs = Bs[buf];
#pragma unroll
		for (int ks = 0; ks < GB_BK; ks += 16) {
			u32 af[4][4], bf[4][2];
#pragma unroll
			for (int mt = 0; mt < 4; mt++) {
				const int r = wm * 64 + mt * 16 + g;
				af[mt][0] = *(const u32 *)&as[r * GB_LD + ks + t4 * 2];
				af[mt][1] = *(const u32 *)&as[(r + 8) * GB_LD + ks + t4 * 2];
				af[mt][2] = *(const u32 *)&as[r * GB_LD + ks + 8 + t4 * 2];
				af[mt][3] = *(const u32 *)&as[(r + 8) * GB_LD + ks + 8 + t4 * 2];
			}
#pragma unroll
			for (int nt = 0; nt < 4; nt++) {
				const int c = wn * 32 + nt * 8 + g;
				bf[nt][0] = *(const u32 *)&bs[c * GB_LD + ks + t4 * 2];
				bf[nt][1] = *(const u32 *)&bs[c * GB_LD + ks + 8 + t4 * 2];
			}
#pragma unroll
			for (int mt = 0; mt < 4; mt++)
#pragma unroll
				for (int nt = 0; nt < 4; nt++) mma_bf16(acc[mt][nt], af[mt], bf[nt]);
		}
		if (more) {
			GB_STORE_A(buf ^ 1)
		}
		cp_async_wait_all();
		__syncthreads();
	}
#undef GB_LOAD_A
#undef GB_STORE_A
#undef GB_LOAD_B

#pragma unroll
	for (int mt = 0; mt < 4; mt++) {
#pragma unroll
		for (int nt = 0; nt < 4; nt++) {
			const int r = m0 + wm * 64 + mt * 16 + g, c = n0 + wn * 32 + nt * 8 + t4 * 2;
#pragma unroll
			for (int e = 0; e < 4; e++) {
				const int rr = r + (e >> 1) * 8, cc = c + (e & 1);
				if (rr < m && cc < n) {
					const i64 o = (i64)rr * n + cc;
					y[o] = accumulate ? y[o] + acc[mt][nt][e] : acc[mt][nt][e];
				}
			}
		}
	}
}

// ---- skinny products: GemvMaxRows < m <= 64 rows (decode batches) -------------------------
//
// Why a kernel of its own: at decode a linear layer reads its weights once per step, so
// the time is w's bytes over the bandwidth the grid sustains. sl_gemm_bf16 gives n = 4096
// (o_proj, down_proj) 32 blocks of 128 columns and n = 6144 (qkv) 48: a quarter to a third
// of an H200's 132 SMs, each with about 8 KiB of w in flight per stage, far below HBM
// bandwidth (4.8 TB/s needs ~4-5 MB in flight GPU-wide at ~1 us of loaded latency).
//
// sl_gemm_bf16_skinny: a block owns 32 columns of y (SK_BN) for every row (m <= 64: up to
// four m16 tiles, the ones past m skipped) over the whole of k, so n = 4096 gives 128
// blocks, 6144 gives 192 and 28672 gives 896, and no scratch buffer or cross-block
// reduction is needed. Its 8 warps are 2 (16 columns each) x 4 (k-ways: of each 128-wide
// k tile, warp kw takes k [32kw, 32kw+32)); the four k-ways' sums are added through shared
// memory at the end in a fixed order (kw 0+1+2+3), so results are deterministic.
//
//   - w goes straight from global memory to registers (ld.global.nc, no L1 allocation),
//     16 bytes per lane per n8 tile: lane (g, t) loads w[col g][8t..8t+8) of its warp's
//     32-wide k chunk, which is the B fragment of two m16n8k16 MMAs once k is permuted
//     (logical k 2t,2t+1 | 2t+8,2t+9 of MMA 1 are physical 8t..8t+3, of MMA 2 8t+4..8t+7;
//     A is read with the same permutation, so each product pairs the same x and w
//     elements). Each lane keeps SK_DEPTH = 4 tiles of w in flight (8 x uint4, 32
//     registers): 4 KiB per warp, 32 KiB per block.
//   - x (float32) is loaded a tile ahead into registers, rounded to bf16 (as sl_gemm_bf16
//     does) and stored to shared memory, two buffers of 64 rows x 128 k padded to 160
//     (a 320-byte row stride: the 8 lanes of a quarter-warp's 16-byte reads, rows g and
//     g+1 x t 0..3, fall in distinct banks); 40 KiB, reused for the final reduction.
//   - Registers: 32 accumulators (4 m16 tiles x 2 n8 tiles x 4) + 32 of w in flight + 32
//     of x prefetch + 8 of A fragments + indices, under __launch_bounds__(256, 2)'s 128 (no
//     spills: TestRegisterBudgets), so two blocks fit an SM (2 x 32K registers, 2 x 40 KiB
//     shared): qkv's 192 blocks are all resident at once on 132 SMs.
//   - Bytes and expected bandwidth (arithmetic, not measured: no GPU has run this yet). A
//     block streams 32 x k x 2 bytes of w from HBM (256 KiB at k = 4096) and reads x,
//     m x k x 4 bytes, from L2 (x is 1 MiB at 64 rows and k = 4096, 3.5 MiB at k =
//     14336: it stays in L2): x's bytes are 2m/32 of w's (1x at 16 rows, 2x at 32, 4x at 64). The loop
//     advances one 128-wide k tile (8 KiB of w per block) per iteration; w is issued 4
//     tiles ahead (32 KiB in flight per block: ~32 GB/s per SM at ~1 us of loaded HBM
//     latency), x one tile ahead from L2 (an iteration waits ~0.3 us for it: ~27 GB/s of
//     w per SM). With one block on each of 128 SMs (n = 4096) that is ~3.5-4 TB/s of w
//     against 4.8 TB/s peak, where sl_gemm_bf16's 32 blocks with one 8 KiB stage in
//     flight each reach a fraction of it. At 64 rows an SM also takes in 4x w's bytes of
//     x: if an SM takes in ~120 GB/s from L2 (64 bytes per clock, an assumption), w + x
//     caps w near 24 GB/s per SM, ~3 TB/s. Block counts: 128 (o_proj, down_proj), 192 (qkv: all
//     resident at two per SM), 896 (gate_up), 4008 (lm_head).
//   - Not done: split-k across blocks with 128-column tiles would cut x's share to 1x
//     (and so lift the 64-row cap) but needs a scratch buffer for the partial sums and a
//     second pass to add them in a fixed order (float atomics would make y differ run to
//     run); that would change cuda/gpu's Linear to pass the scratch.
#define SK_BM 64
#define SK_BN 32
#define SK_BK 128
#define SK_LD 160
#define SK_DEPTH 4

// sk_load_w loads tile kt's w for this lane: n8 tiles j = 0, 1 of the warp's 16 columns,
// 8 k each; zeros past n or k (k % 8 == 0: a 16-byte chunk is all in or all out).
__device__ __forceinline__ void sk_load_w(uint4 q[2], const u16 *w, int n, int k, int col0, int kt, int kw, int t4) {
	const int kk = kt * SK_BK + kw * 32 + t4 * 8;
#pragma unroll
	for (int j = 0; j < 2; j++) {
		const int c = col0 + j * 8;
		if (c < n && kk < k) {
			q[j] = ldg_stream((const uint4 *)(w + (i64)c * k + kk));
		} else {
			q[j].x = q[j].y = q[j].z = q[j].w = 0u;
		}
	}
}

extern "C" __global__ void __launch_bounds__(256, 2)
sl_gemm_bf16_skinny(float *y, const float *x, const u16 *w, int m, int n, int k, int accumulate) {
	__shared__ __align__(16) u16 Xs[2][SK_BM * SK_LD];
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int g = lane >> 2, t4 = lane & 3;
	const int wn = warp & 1, kw = warp >> 1;
	const int n0 = blockIdx.x * SK_BN;
	const int col0 = n0 + wn * 16 + g; // this lane's w row for n8 tile 0 (tile 1: +8)
	const int KT = (k + SK_BK - 1) / SK_BK;
	const int mtiles = (m + 15) >> 4, mrows = mtiles * 16;

	float acc[4][2][4];
#pragma unroll
	for (int i = 0; i < 4; i++)
#pragma unroll
		for (int j = 0; j < 2; j++)
#pragma unroll
			for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

	uint4 wq[SK_DEPTH][2];
#pragma unroll
	for (int d = 0; d < SK_DEPTH; d++) sk_load_w(wq[d], w, n, k, col0, d, kw, t4);

	// x's tile: chunk c = tid + 256i is row c/32, columns (c%32)*4..+4; rows past mrows
	// are neither loaded nor stored (no warp reads them).
	float4 xa[8];
#define SK_LOAD_X(kt)                                                                     \
	_Pragma("unroll") for (int i = 0; i < 8; i++) {                                       \
		const int c = tid + 256 * i, r = c >> 5, kk = (kt) * SK_BK + (c & 31) * 4;       \
		if (r < m && kk < k) {                                                            \
			xa[i] = __ldg((const float4 *)(x + (i64)r * k + kk));                         \
		} else {                                                                          \
			xa[i].x = xa[i].y = xa[i].z = xa[i].w = 0.f;                                  \
		}                                                                                 \
	}
#define SK_STORE_X(buf)                                                                   \
	_Pragma("unroll") for (int i = 0; i < 8; i++) {                                       \
		const int c = tid + 256 * i, r = c >> 5;                                          \
		if (r < mrows) {                                                                  \
			uint2 v;                                                                      \
			v.x = pack_bf16(xa[i].x, xa[i].y);                                            \
			v.y = pack_bf16(xa[i].z, xa[i].w);                                            \
			*(uint2 *)&Xs[buf][r * SK_LD + (c & 31) * 4] = v;                             \
		}                                                                                 \
	}

	SK_LOAD_X(0)
	SK_STORE_X(0)
	__syncthreads();

	for (int kt0 = 0; kt0 < KT; kt0 += SK_DEPTH) {
#pragma unroll
		for (int d = 0; d < SK_DEPTH; d++) {
			const int kt = kt0 + d;
			if (kt < KT) { // uniform over the block
				const bool more = kt + 1 < KT;
				if (more) {
					SK_LOAD_X(kt + 1)
				}
				const u16 *xs = Xs[kt & 1] + kw * 32 + t4 * 8;
#pragma unroll
				for (int mt = 0; mt < 4; mt++) {
					if (mt < mtiles) {
						const int r = mt * 16 + g;
						const uint4 a0 = *(const uint4 *)&xs[r * SK_LD];
						const uint4 a1 = *(const uint4 *)&xs[(r + 8) * SK_LD];
						const u32 fa[4] = {a0.x, a1.x, a0.y, a1.y}; // physical k 8t..8t+3
						const u32 fb[4] = {a0.z, a1.z, a0.w, a1.w}; // physical k 8t+4..8t+7
#pragma unroll
						for (int j = 0; j < 2; j++) {
							const u32 ba[2] = {wq[d][j].x, wq[d][j].y};
							const u32 bb[2] = {wq[d][j].z, wq[d][j].w};
							mma_bf16(acc[mt][j], fa, ba);
							mma_bf16(acc[mt][j], fb, bb);
						}
					}
				}
				sk_load_w(wq[d], w, n, k, col0, kt + SK_DEPTH, kw, t4);
				if (more) {
					SK_STORE_X((kt + 1) & 1)
				}
				__syncthreads();
			}
		}
	}
#undef SK_LOAD_X
#undef SK_STORE_X

	// The k-ways' sums, added in a fixed order: red[kw][wn][i][lane] for accumulator i =
	// (mt*2 + j)*4 + e, in Xs (32 KiB of its 40; the loop's last barrier has passed).
	float *red = (float *)&Xs[0][0];
#pragma unroll
	for (int mt = 0; mt < 4; mt++)
#pragma unroll
		for (int j = 0; j < 2; j++)
#pragma unroll
			for (int e = 0; e < 4; e++) red[((kw * 2 + wn) * 32 + (mt * 2 + j) * 4 + e) * 32 + lane] = acc[mt][j][e];
	__syncthreads();
#pragma unroll
	for (int q = 0; q < 8; q++) {
		const int idx = tid + 256 * q; // (wn*32 + i)*32 + lane
		const int l = idx & 31, i = (idx >> 5) & 31, cn = idx >> 10;
		const int mt = i >> 3, j = (i >> 2) & 1, e = i & 3;
		const int r = mt * 16 + (l >> 2) + (e >> 1) * 8;
		const int c = n0 + cn * 16 + j * 8 + (l & 3) * 2 + (e & 1);
		if (r < m && c < n) {
			float s = red[((0 * 2 + cn) * 32 + i) * 32 + l];
#pragma unroll
			for (int kk = 1; kk < 4; kk++) s += red[((kk * 2 + cn) * 32 + i) * 32 + l];
			const i64 o = (i64)r * n + c;
			y[o] = accumulate ? y[o] + s : s;
		}
	}
}

// gemv_chunk adds 8 weights (q) times x[r][8c..8c+8] to acc[r] for rows r < m.
__device__ __forceinline__ void gemv_chunk(float acc[8], const float *x, int k, int m, int c, uint4 q) {
#pragma unroll
	for (int r = 0; r < 8; r++) {
		if (r < m) {
			const float4 *xp = (const float4 *)(x + (i64)r * k + (i64)c * 8);
			const float4 a = __ldg(xp), b = __ldg(xp + 1);
			float s = acc[r];
			s = fmaf(bf16_lo(q.x), a.x, s);
			s = fmaf(bf16_hi(q.x), a.y, s);
			s = fmaf(bf16_lo(q.y), a.z, s);
			s = fmaf(bf16_hi(q.y), a.w, s);
			s = fmaf(bf16_lo(q.z), b.x, s);
			s = fmaf(bf16_hi(q.z), b.y, s);
			s = fmaf(bf16_lo(q.w), b.z, s);
			s = fmaf(bf16_hi(q.w), b.w, s);
			acc[r] = s;
		}
	}
}

// sl_gemv_bf16: warp w of block b computes column b*8+w of y for every row of x (m <=
// 8): its lanes stream the column's weight row in 16-byte chunks, four chunks in flight
// per lane, then reduce by shuffles.
extern "C" __global__ void __launch_bounds__(256)
sl_gemv_bf16(float *y, const float *x, const u16 *w, int m, int n, int k, int accumulate) {
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int col = blockIdx.x * 8 + warp;
	if (col >= n) return;
	const uint4 *wr = (const uint4 *)(w + (i64)col * k);
	const int chunks = k >> 3;
	float acc[8];
#pragma unroll
	for (int r = 0; r < 8; r++) acc[r] = 0.f;
	int c = lane;
	for (; c + 96 < chunks; c += 128) {
		const uint4 q0 = ldg_stream(wr + c), q1 = ldg_stream(wr + c + 32);
		const uint4 q2 = ldg_stream(wr + c + 64), q3 = ldg_stream(wr + c + 96);
		gemv_chunk(acc, x, k, m, c, q0);
		gemv_chunk(acc, x, k, m, c + 32, q1);
		gemv_chunk(acc, x, k, m, c + 64, q2);
		gemv_chunk(acc, x, k, m, c + 96, q3);
	}
	for (; c < chunks; c += 32) gemv_chunk(acc, x, k, m, c, ldg_stream(wr + c));
#pragma unroll
	for (int r = 0; r < 8; r++) {
		if (r < m) {
			const float v = warp_sum(acc[r]);
			if (lane == 0) {
				const i64 o = (i64)r * n + col;
				y[o] = accumulate ? y[o] + v : v;
			}
		}
	}
}

// ---- sampling support ---------------------------------------------------------------

// better: (va, ia) comes before (vb, ib): larger value, lower index among equals; index
// -1 is "none" and NaN never gets an index.
__device__ __forceinline__ bool better(float va, int ia, float vb, int ib) {
	if (ia < 0) return false;
	if (ib < 0) return true;
	return va > vb || (va == vb && ia < ib);
}

extern "C" __global__ void __launch_bounds__(256)
sl_argmax(int *idx, const float *logits, int vocab) {
	__shared__ float sv[8];
	__shared__ int si[8];
	const float *lg = logits + (i64)blockIdx.x * vocab;
	float bv = 0.f;
	int bi = -1;
	for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
		const float v = lg[i];
		if (v == v && better(v, i, bv, bi)) {
			bv = v;
			bi = i;
		}
	}
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
		const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
		if (better(ov, oi, bv, bi)) {
			bv = ov;
			bi = oi;
		}
	}
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	if (lane == 0) {
		sv[warp] = bv;
		si[warp] = bi;
	}
	__syncthreads();
	if (threadIdx.x == 0) {
		for (int i = 1; i < 8; i++)
			if (better(sv[i], si[i], bv, bi)) {
				bv = sv[i];
				bi = si[i];
			}
		idx[blockIdx.x] = bi < 0 ? 0 : bi;
	}
}

// order_key maps a float to a uint32 whose unsigned order is the float's: NaN lowest
// (0), -0 as +0.
__device__ __forceinline__ u32 order_key(float v) {
	if (v != v) return 0u;
	if (v == 0.f) v = 0.f;
	const u32 u = __float_as_uint(v);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// sl_topk: a radix select finds the k-th largest key T (4 passes of 8 bits over the
// row), then the keys above T and the lowest-indexed keys equal to T fill k slots, which
// a bitonic sort of 256 puts in order (larger first, lower index first among equals).
extern "C" __global__ void __launch_bounds__(256)
sl_topk(int *idx, float *val, const float *logits, int vocab, int k) {
	__shared__ u32 hist[256];
	__shared__ u32 skey[256];
	__shared__ int sidx[256];
	__shared__ u32 eqBase[256];
	__shared__ u32 sPrefix, sRemaining, sCount;
	const int tid = threadIdx.x;
	const float *lg = logits + (i64)blockIdx.x * vocab;
	u32 prefix = 0, mask = 0;
	if (tid == 0) sRemaining = (u32)k;
	for (int shift = 24; shift >= 0; shift -= 8) {
		hist[tid] = 0;
		__syncthreads();
		for (int i = tid; i < vocab; i += 256) {
			const u32 key = order_key(lg[i]);
			if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
		}
		__syncthreads();
		if (tid == 0) {
			u32 rem = sRemaining, p = prefix;
			for (int d = 255; d >= 0; d--) {
				if (hist[d] >= rem) {
					p |= (u32)d << shift;
					break;
				}
				rem -= hist[d];
			}
			sPrefix = p;
			sRemaining = rem;
		}
		__syncthreads();
		prefix = sPrefix;
		mask |= 255u << shift;
	}
	const u32 T = prefix, take = sRemaining; // take >= 1 keys equal to T
	const u32 above = (u32)k - take;
	if (tid == 0) sCount = 0;
	__syncthreads();
	for (int i = tid; i < vocab; i += 256) {
		const u32 key = order_key(lg[i]);
		if (key > T) {
			const u32 s = atomicAdd(&sCount, 1u);
			skey[s] = key;
			sidx[s] = i;
		}
	}
	// Keys equal to T, lowest indices first: each thread counts them in its contiguous
	// range, an exclusive scan gives its first rank.
	const int per = (vocab + 255) / 256, lo = min(vocab, tid * per), hi = min(vocab, lo + per);
	u32 cnt = 0;
	for (int i = lo; i < hi; i++) cnt += order_key(lg[i]) == T;
	eqBase[tid] = cnt;
	__syncthreads();
	if (tid == 0) {
		u32 run = 0;
		for (int i = 0; i < 256; i++) {
			const u32 c = eqBase[i];
			eqBase[i] = run;
			run += c;
		}
	}
	__syncthreads();
	u32 rank = eqBase[tid];
	for (int i = lo; i < hi && rank < take; i++) {
		if (order_key(lg[i]) == T) {
			skey[above + rank] = T;
			sidx[above + rank] = i;
			rank++;
		}
	}
	__syncthreads();
	if (tid >= k) {
		skey[tid] = 0u;
		sidx[tid] = 0x7fffffff;
	}
	for (u32 size = 2; size <= 256; size <<= 1) {
		for (u32 stride = size >> 1; stride > 0; stride >>= 1) {
			__syncthreads();
			const u32 j = tid ^ stride;
			if (j > (u32)tid) {
				const u32 ka = skey[tid], kb = skey[j];
				const int ia = sidx[tid], ib = sidx[j];
				const bool jFirst = kb > ka || (kb == ka && ib < ia);
				if (jFirst == ((tid & size) == 0)) {
					skey[tid] = kb;
					skey[j] = ka;
					sidx[tid] = ib;
					sidx[j] = ia;
				}
			}
		}
	}
	__syncthreads();
	if (tid < k) {
		const i64 o = (i64)blockIdx.x * k + tid;
		idx[o] = sidx[tid];
		val[o] = lg[sidx[tid]];
	}
}

// sl_softmax: probs = softmax(logits·inv_temperature) over the row, computed as
// exp((v - max)·inv_temperature) / sum; NaN logits get 0, a row without a number gets
// all zeros.
extern "C" __global__ void __launch_bounds__(256)
sl_softmax(float *probs, const float *logits, int vocab, float inv_temperature) {
	__shared__ float sh[32];
	const float *lg = logits + (i64)blockIdx.x * vocab;
	float *pr = probs + (i64)blockIdx.x * vocab;
	float mx = NEG_INF;
	for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, lg[i]);
	mx = block_max(mx, sh);
	float sum = 0.f;
	if (mx != NEG_INF && mx == mx) {
		for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
			const float v = lg[i];
			const float e = v == v ? expf((v - mx) * inv_temperature) : 0.f;
			pr[i] = e;
			sum += e;
		}
	}
	sum = block_sum(sum, sh);
	const float inv = sum > 0.f ? 1.f / sum : 0.f;
	for (int i = threadIdx.x; i < vocab; i += blockDim.x) pr[i] = sum > 0.f ? pr[i] * inv : 0.f;
}
