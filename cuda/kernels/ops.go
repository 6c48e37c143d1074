package kernels

import (
	"fmt"

	"servelab/cuda/driver"
)

// Launch shapes. kernels.cu is written for exactly these block sizes and tiles.
const (
	// AttnQueryTile is the most queries of one (sequence, head) an AttnPrefill item
	// covers, as the CPU engine's attention work items (engine/model/forward.go).
	AttnQueryTile = 16
	// MaxHeadDim is the largest head dimension the attention kernels support.
	MaxHeadDim = 256
	// FlashMaxHeadDim is the largest head dimension AttnPrefillBF16 supports (above 128
	// it makes one pass per 128 output columns, recomputing the scores).
	FlashMaxHeadDim = MaxHeadDim
	// GemvMaxRows is the most rows of x GemvBF16 takes (decode batches); Linear uses the
	// tensor-core GEMM above it.
	GemvMaxRows = 8
	// SkinnyMaxRows is the most rows of x GemmBF16Skinny takes; Linear uses it for
	// GemvMaxRows < rows <= SkinnyMaxRows (decode batches) and GemmBF16 above.
	SkinnyMaxRows = 64
	// MaxTopK is the largest k TopK takes.
	MaxTopK = 256

	gemmF32Tile  = 64  // sl_gemm_f32: a 64x64 tile of y per block of 256 threads
	gemmBF16Tile = 128 // sl_gemm_bf16: a 128x128 tile of y per block of 256 threads (8 warps of mma.sync.m16n8k16)
	gemvCols     = 8   // sl_gemv_bf16: 8 warps per block, one output column per warp
	skinnyCols   = 32  // sl_gemm_bf16_skinny: 32 columns of y (every row) per block of 256 threads
)

func dim1(x uint32) driver.Dim3    { return driver.Dim3{X: x, Y: 1, Z: 1} }
func dim2(x, y uint32) driver.Dim3 { return driver.Dim3{X: x, Y: y, Z: 1} }

// EmbedF32: x[r] = table[tokens[r]] for rows r in [0, rows); x is [rows, dim], table
// [vocab, dim] float32, tokens int32 (checked in range by the caller). Grid rows, block 256.
func (m *Module) EmbedF32(s driver.Stream, x, table, tokens driver.DevicePtr, rows, dim int) error {
	return m.launch("sl_embed_f32", dim1(uint32(rows)), dim1(256), 0, s, x, table, tokens, dim)
}

// EmbedBF16 is EmbedF32 over a bfloat16 table, converted exactly to float32.
func (m *Module) EmbedBF16(s driver.Stream, x, table, tokens driver.DevicePtr, rows, dim int) error {
	return m.launch("sl_embed_bf16", dim1(uint32(rows)), dim1(256), 0, s, x, table, tokens, dim)
}

// RMSNorm: out[r] = x[src]·w / sqrt(mean(x[src]²) + eps) for r in [0, rows), where src
// is rowIdx[r] when rowIdx is not 0 (the rows whose logits a step wants) and r otherwise;
// out [rows, dim], x [*, dim], w [dim], all float32, the sum of squares in float32 as
// cpu.RMSNorm. Grid rows, block 256.
func (m *Module) RMSNorm(s driver.Stream, out, x, rowIdx, w driver.DevicePtr, rows, dim int, eps float32) error {
	return m.launch("sl_rmsnorm", dim1(uint32(rows)), dim1(256), 0, s, out, x, rowIdx, w, dim, eps)
}

// RopeStore finishes the fused q/k/v projection of rows [0, rows) of qkv ([rows,
// (heads+2·kvHeads)·headDim]: q heads, then k heads, then v heads), as the CPU engine's
// ropeRows: add bias (when not 0, [width]) to the whole row; rotate each q and k head by
// Hugging Face's rotate-half (cpu.RotateHalf) with cos/sin row tokPos[r] of the rope
// tables ([positions, headDim/2] float32, the CPU engine's table); multiply q by scale;
// then store the row's k and v at slot tokSlot[r] (block·blockSize + position%blockSize)
// of kcache and vcache ([slots, kvHeads·headDim]). Grid rows, block 128.
func (m *Module) RopeStore(s driver.Stream, qkv, bias, cos, sin, tokPos, tokSlot, kcache, vcache driver.DevicePtr, rows, heads, kvHeads, headDim int, scale float32) error {
	return m.launch("sl_rope_store", dim1(uint32(rows)), dim1(128), 0, s, qkv, bias, cos, sin, tokPos, tokSlot, kcache, vcache, heads, kvHeads, headDim, scale)
}

// AttnDecode computes attention for sequences with one query token this step. For each
// sequence index q = seqs[i] (i < nSeqs) and head h: its query is row seqStart[q] of
// qkv (pre-scaled q at column h·headDim), its context positions [0, seqPos[q]] read
// through row q of blockTables ([S, maxBlocks] int32) from the layer's kcache/vcache,
// with grouped-query head h/(heads/kvHeads); out[seqStart[q], h·headDim:] (out is
// [rows, heads·headDim]) gets softmax(q·Kᵀ)·V. headDim is even and at most MaxHeadDim.
// Grid (heads, nSeqs), block 128.
func (m *Module) AttnDecode(s driver.Stream, out, qkv, kcache, vcache, seqs, seqStart, seqPos, blockTables driver.DevicePtr, nSeqs, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	if headDim > MaxHeadDim || headDim%2 != 0 {
		return fmt.Errorf("kernels: head dim %d: want even and at most %d", headDim, MaxHeadDim)
	}
	return m.launch("sl_attn_decode", dim2(uint32(heads), uint32(nSeqs)), dim1(128), 0, s,
		out, qkv, kcache, vcache, seqs, seqStart, seqPos, blockTables, maxBlocks, heads, kvHeads, headDim, blockSize)
}

// AttnPrefill computes causal attention for work items: items is [nItems][4] int32
// {seq, head, q0, q1} with 0 < q1-q0 <= AttnQueryTile, as the CPU engine's attnItem.
// Query i in [q0, q1) of sequence seq is row seqStart[seq]+i of qkv at position
// seqPos[seq]+i, and attends to positions [0, seqPos[seq]+i] (its own included) of the
// sequence's cache, read through its block table; the rest is AttnDecode's. Grid
// nItems, block 128.
func (m *Module) AttnPrefill(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	if headDim > MaxHeadDim || headDim%2 != 0 {
		return fmt.Errorf("kernels: head dim %d: want even and at most %d", headDim, MaxHeadDim)
	}
	return m.launch("sl_attn_prefill", dim1(uint32(nItems)), dim1(128), 0, s,
		out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables, maxBlocks, heads, kvHeads, headDim, blockSize)
}

// AttnPrefillBF16 is AttnPrefill (the same items, parameters and causal semantics, the
// float32 paged KV cache in the CPU layout) on tensor cores, for the bfloat16 backend:
// FlashAttention-2 over one item's 16-query tile, its pre-scaled q and the keys and
// values of 64-position tiles rounded to bfloat16 (nearest even) as they are loaded into
// shared memory, S = q·Kᵀ and O += P·V with mma.sync.m16n8k16 (bf16 inputs, float32
// sums), the online softmax in float32 with P rounded to bfloat16 for the product and
// the normaliser summed from the unrounded P. The block's 4 warps take 16 positions of
// each 64-position tile and merge their softmax states in a fixed order, so results are
// deterministic. Above 128 head dimensions it makes two passes over the context, one per
// 128 output columns (the 16 x 128 float32 accumulator is what fits in registers), so the
// scores are computed twice. kernels.cu's comment on sl_attn_prefill_bf16 has the layout.
// headDim is even and at most FlashMaxHeadDim. Grid nItems, block 128.
func (m *Module) AttnPrefillBF16(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	if headDim > FlashMaxHeadDim || headDim%2 != 0 {
		return fmt.Errorf("kernels: sl_attn_prefill_bf16: head dim %d: want even and at most %d", headDim, FlashMaxHeadDim)
	}
	return m.launch("sl_attn_prefill_bf16", dim1(uint32(nItems)), dim1(128), 0, s,
		out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables, maxBlocks, heads, kvHeads, headDim, blockSize)
}

// FlashGQAMaxGroup and FlashGQAMaxHeadDim bound AttnPrefillBF16GQA: at most 8 query
// heads per kv head (M = 16 x 8 query rows per block) and head dims up to 128 (one pass:
// the 16 x 128 float32 accumulator per warp is what fits its registers, and Qs for 8
// heads with a 16-position K/V tile is what fits 48 KiB of shared memory).
const (
	FlashGQAMaxGroup   = 8
	FlashGQAMaxHeadDim = 128
)

// FlashGQA says whether AttnPrefillBF16GQA takes a model's heads: heads/kvHeads is 1,
// 2, 4 or 8 and headDim even and at most FlashGQAMaxHeadDim. Otherwise use
// AttnPrefillBF16 (its per-query-head items).
func FlashGQA(heads, kvHeads, headDim int) bool {
	if kvHeads <= 0 || heads%kvHeads != 0 || headDim%2 != 0 || headDim <= 0 || headDim > FlashGQAMaxHeadDim {
		return false
	}
	switch heads / kvHeads {
	case 1, 2, 4, 8:
		return true
	}
	return false
}

// GroupItems turns AttnPrefill's items (flattened {seq, head, q0, q1}) into
// AttnPrefillBF16GQA's {seq, kvHead, q0, q1}: the items of each group's first query
// head (head % group == 0), with kvHead = head/group, in their order. The other heads'
// items name the same queries (the engine's items tile every head of a sequence alike),
// so the group kernel covers them. It appends to dst.
func GroupItems(dst, items []int32, group int) []int32 {
	for i := 0; i+3 < len(items); i += 4 {
		if int(items[i+1])%group == 0 {
			dst = append(dst, items[i], items[i+1]/int32(group), items[i+2], items[i+3])
		}
	}
	return dst
}

// AttnPrefillBF16GQA is AttnPrefillBF16 (the same causal semantics and rounding: q, k, v
// and P in bfloat16, float32 sums, the online softmax in float32) for all the query
// heads of a kv head in one block, so each K/V tile is loaded from the float32 cache and
// rounded to bfloat16 once per group instead of once per query head. items is
// [nItems][4] int32 {seq, kvHead, q0, q1} with 0 < q1-q0 <= AttnQueryTile (GroupItems
// makes them): query i in [q0, q1) of query heads kvHead·G .. kvHead·G+G-1, G =
// heads/kvHeads. Each of the block's warps takes one query head's 16-row m16 tile (M =
// 16·G rows through mma per block) and, when G < 4, 1/(4/G) of the context's 16-position
// sub-tiles, the splits merged in a fixed order: results are deterministic (they differ
// from AttnPrefillBF16's in float32 rounding only: the online softmax steps over other
// tiles). FlashGQA(heads, kvHeads, headDim) must hold (checked). Grid nItems, block 128
// (256 when G = 8). kernels.cu's comment on sl_attn_prefill_bf16_gqa has the layout and
// the expected bytes per FLOP.
func (m *Module) AttnPrefillBF16GQA(s driver.Stream, out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables driver.DevicePtr, nItems, maxBlocks, heads, kvHeads, headDim, blockSize int) error {
	if !FlashGQA(heads, kvHeads, headDim) {
		return fmt.Errorf("kernels: sl_attn_prefill_bf16_gqa: %d heads over %d kv heads, head dim %d: want a group of 1, 2, 4 or 8 and an even head dim of at most %d",
			heads, kvHeads, headDim, FlashGQAMaxHeadDim)
	}
	threads := uint32(128)
	if heads/kvHeads == 8 {
		threads = 256
	}
	return m.launch("sl_attn_prefill_bf16_gqa", dim1(uint32(nItems)), dim1(threads), 0, s,
		out, qkv, kcache, vcache, items, seqStart, seqPos, blockTables, maxBlocks, heads, kvHeads, headDim, blockSize)
}

// SiLUMul is SwiGLU, as cpu.SiLUMul: act[r][i] = silu(gu[r][i])·gu[r][hidden+i] for
// act [rows, hidden] and gu [rows, 2·hidden] (gate_proj outputs, then up_proj's). Grid
// ceil(rows·hidden/256), block 256.
func (m *Module) SiLUMul(s driver.Stream, act, gu driver.DevicePtr, rows, hidden int) error {
	return m.launch("sl_silu_mul", dim1(ceilDiv(rows*hidden, 256)), dim1(256), 0, s, act, gu, rows, hidden)
}

// Add: x[i] += y[i] for i in [0, n). Grid ceil(n/256), block 256.
func (m *Module) Add(s driver.Stream, x, y driver.DevicePtr, n int) error {
	return m.launch("sl_add", dim1(ceilDiv(n, 256)), dim1(256), 0, s, x, y, n)
}

// GemmF32: y = x·wᵀ (y += x·wᵀ when accumulate) for y [rows, n], x [rows, k], w [n, k],
// all float32, accumulated in float32 with FMA. Grid (ceil(n/64), ceil(rows/64)), block 256.
func (m *Module) GemmF32(s driver.Stream, y, x, w driver.DevicePtr, rows, n, k int, accumulate bool) error {
	return m.launch("sl_gemm_f32", dim2(ceilDiv(n, gemmF32Tile), ceilDiv(rows, gemmF32Tile)), dim1(256), 0, s, y, x, w, rows, n, k, boolArg(accumulate))
}

// GemmBF16 is GemmF32 with w bfloat16: x is rounded to bfloat16 (nearest even) as it is
// loaded, products run on tensor cores (mma.sync.m16n8k16 bf16) and accumulate in
// float32. k is a multiple of 8, x and w 16-byte aligned (the kernel reads them with
// 16-byte loads). Grid (ceil(n/128), ceil(rows/128)), block 256.
func (m *Module) GemmBF16(s driver.Stream, y, x, w driver.DevicePtr, rows, n, k int, accumulate bool) error {
	if k%8 != 0 {
		return fmt.Errorf("kernels: sl_gemm_bf16: k = %d: want a multiple of 8", k)
	}
	if err := aligned16("sl_gemm_bf16", x, w); err != nil {
		return err
	}
	return m.launch("sl_gemm_bf16", dim2(ceilDiv(n, gemmBF16Tile), ceilDiv(rows, gemmBF16Tile)), dim1(256), 0, s, y, x, w, rows, n, k, boolArg(accumulate))
}

// GemvBF16 is GemmBF16 for at most GemvMaxRows rows of x (decode), memory-bound: each
// warp streams one row of w with 16-byte loads and computes that output column for
// every row of x in float32 (x is not rounded to bfloat16). k is a multiple of 8, x and
// w 16-byte aligned. Grid ceil(n/8), block 256.
func (m *Module) GemvBF16(s driver.Stream, y, x, w driver.DevicePtr, rows, n, k int, accumulate bool) error {
	if rows > GemvMaxRows {
		return fmt.Errorf("kernels: sl_gemv_bf16: %d rows: want at most %d", rows, GemvMaxRows)
	}
	if k%8 != 0 {
		return fmt.Errorf("kernels: sl_gemv_bf16: k = %d: want a multiple of 8", k)
	}
	if err := aligned16("sl_gemv_bf16", x, w); err != nil {
		return err
	}
	return m.launch("sl_gemv_bf16", dim1(ceilDiv(n, gemvCols)), dim1(256), 0, s, y, x, w, rows, n, k, boolArg(accumulate))
}

// GemmBF16Skinny is GemmBF16 (x rounded to bfloat16 as it is loaded, tensor-core
// products, float32 sums) for at most SkinnyMaxRows rows of x: decode batches, where the
// product is memory-bound and what matters is every SM streaming w. Each block computes
// 32 columns of y for every row over the whole of k, so n = 4096 gives 128 blocks (one
// per SM of an H100/H200) where GemmBF16's 128x128 tiles give 32; its 8 warps split the
// columns in 2 and k in 4, the four partial sums added in a fixed order, so y is
// deterministic (no atomics, no scratch buffer); kernels.cu's comment on
// sl_gemm_bf16_skinny has the bandwidth arithmetic. k is a multiple of 8, x and w 16-byte
// aligned. Grid ceil(n/32), block 256.
func (m *Module) GemmBF16Skinny(s driver.Stream, y, x, w driver.DevicePtr, rows, n, k int, accumulate bool) error {
	if rows > SkinnyMaxRows {
		return fmt.Errorf("kernels: sl_gemm_bf16_skinny: %d rows: want at most %d", rows, SkinnyMaxRows)
	}
	if k%8 != 0 {
		return fmt.Errorf("kernels: sl_gemm_bf16_skinny: k = %d: want a multiple of 8", k)
	}
	if err := aligned16("sl_gemm_bf16_skinny", x, w); err != nil {
		return err
	}
	return m.launch("sl_gemm_bf16_skinny", dim1(ceilDiv(n, skinnyCols)), dim1(256), 0, s, y, x, w, rows, n, k, boolArg(accumulate))
}

// aligned16 checks that the matrices a kernel reads with 16-byte loads are 16-byte
// aligned (a misaligned load is a GPU fault that ends the context).
func aligned16(kernel string, x, w driver.DevicePtr) error {
	if x%16 != 0 || w%16 != 0 {
		return fmt.Errorf("kernels: %s: x %#x and w %#x must be 16-byte aligned", kernel, uint64(x), uint64(w))
	}
	return nil
}

// Linear is y = x·wᵀ (or +=) for weights of dtype "float32" or "bfloat16", choosing the
// kernel: for a bf16 matrix GemvBF16 up to GemvMaxRows rows, GemmBF16Skinny up to
// SkinnyMaxRows, GemmBF16 above; GemmF32 for float32.
func (m *Module) Linear(s driver.Stream, y, x, w driver.DevicePtr, rows, n, k int, dtype string, accumulate bool) error {
	switch dtype {
	case "float32":
		return m.GemmF32(s, y, x, w, rows, n, k, accumulate)
	case "bfloat16":
		if rows <= GemvMaxRows {
			return m.GemvBF16(s, y, x, w, rows, n, k, accumulate)
		}
		if rows <= SkinnyMaxRows {
			return m.GemmBF16Skinny(s, y, x, w, rows, n, k, accumulate)
		}
		return m.GemmBF16(s, y, x, w, rows, n, k, accumulate)
	}
	return fmt.Errorf("kernels: weight dtype %q: want float32 or bfloat16", dtype)
}

// Argmax: idx[r] = the index of the largest of logits[r] ([rows, vocab] float32), the
// lowest index among equals (as engine/sampling's greedy choice); NaN is never chosen
// unless every value is NaN (then 0). Grid rows, block 256.
func (m *Module) Argmax(s driver.Stream, idx, logits driver.DevicePtr, rows, vocab int) error {
	return m.launch("sl_argmax", dim1(uint32(rows)), dim1(256), 0, s, idx, logits, vocab)
}

// TopK: for each row r of logits ([rows, vocab]), idx[r] and val[r] ([rows, k]) get the
// k largest logits in descending order, the lower index first among equals. 1 <= k <=
// min(MaxTopK, vocab). Grid rows, block 256.
func (m *Module) TopK(s driver.Stream, idx, val, logits driver.DevicePtr, rows, vocab, k int) error {
	if k < 1 || k > MaxTopK || k > vocab {
		return fmt.Errorf("kernels: sl_topk: k = %d: want 1..%d and at most the vocabulary %d", k, MaxTopK, vocab)
	}
	return m.launch("sl_topk", dim1(uint32(rows)), dim1(256), 0, s, idx, val, logits, vocab, k)
}

// Softmax: probs[r] = softmax(logits[r]·invTemperature) over [rows, vocab], computed
// with the row's maximum subtracted (-Inf logits get probability 0). Grid rows, block 256.
func (m *Module) Softmax(s driver.Stream, probs, logits driver.DevicePtr, rows, vocab int, invTemperature float32) error {
	return m.launch("sl_softmax", dim1(uint32(rows)), dim1(256), 0, s, probs, logits, vocab, invTemperature)
}
