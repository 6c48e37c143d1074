// emu.h runs kernels.cu on the CPU, for cuda/kernels/emu (the kernels' tests and the CUDA
// backend's, without a GPU): a CUDA thread block is a set of ucontext coroutines on one
// OS thread, switched at __syncthreads, __syncwarp and the warp-collective operations
// (shuffles, mma.sync), blocks run one after another. The inline PTX helpers kernels.cu
// keeps under #ifndef SL_EMULATE are given here by the PTX ISA's semantics:
// cvt.rn.bf16x2.f32, cp.async (landing at cp.async.wait_all, zero-filled past src_bytes),
// mma.sync.m16n8k16 bf16 (each lane's fragments as the ISA's figures lay them out),
// ld.global.nc.
//
// It checks kernels.cu's indexing, tails, synchronisation structure and fragment
// bookkeeping against the CPU references, and that no cp.async stage is read before it
// is waited for; it is not a GPU: no memory model, no timing, and arithmetic is the
// host's (no FMA contraction, the tensor cores' sums in float32 in k order).
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <ucontext.h>

#include <functional>
#include <vector>

#define SL_EMULATE 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct emu_dim3 {
	unsigned x, y, z;
};
struct alignas(8) float2 {
	float x, y;
};
struct alignas(16) float4 {
	float x, y, z, w;
};
struct alignas(16) uint4 {
	unsigned x, y, z, w;
};
struct alignas(8) uint2 {
	unsigned x, y;
};

enum { EMU_STACK = 256 << 10, EMU_MAX_THREADS = 1024 };

struct EmuCopy {
	void *dst;
	const void *src;
	int n;
};

// A thread's coroutine starts once per process (makecontext/setcontext) and then loops:
// it runs the kernel for the block the scheduler gives it and parks. Switches are
// _setjmp/_longjmp, which save only registers (swapcontext makes a signal-mask system
// call at every switch, which made the emulation several times slower).
struct EmuThread {
	ucontext_t uc;
	jmp_buf jb;
	bool started;
	emu_dim3 tid;
	bool done;
	std::vector<EmuCopy> pending; // cp.async copies not yet waited for
};

struct EmuState {
	int nt, cur;
	jmp_buf main;
	std::vector<EmuThread> th;
	char *stacks = nullptr;
	std::function<void()> fn;
	int blockLive, blockArrived;
	unsigned blockGen;
	int warpLive[32], warpArrived[32];
	unsigned warpGen[32];
	uint64_t xch[32][32][8]; // per warp and lane: values exchanged by collectives
};
inline EmuState emu;
inline emu_dim3 blockIdx, blockDim, gridDim;
#define threadIdx (emu.th[emu.cur].tid)

// emu_yield parks the current thread and returns to the scheduler, which resumes it later.
inline void emu_yield() {
	if (!_setjmp(emu.th[emu.cur].jb)) _longjmp(emu.main, 1);
}

inline void __syncthreads() {
	const unsigned g = emu.blockGen;
	if (++emu.blockArrived == emu.blockLive) {
		emu.blockArrived = 0;
		emu.blockGen++;
		return;
	}
	while (emu.blockGen == g) emu_yield();
}

inline void __syncwarp(unsigned = 0xffffffffu) {
	const int w = threadIdx.x / 32;
	const unsigned g = emu.warpGen[w];
	if (++emu.warpArrived[w] == emu.warpLive[w]) {
		emu.warpArrived[w] = 0;
		emu.warpGen[w]++;
		return;
	}
	while (emu.warpGen[w] == g) emu_yield();
}

inline void emu_entry() {
	for (;;) {
		emu.fn();
		EmuThread &t = emu.th[emu.cur];
		t.done = true;
		const int w = t.tid.x / 32;
		// An exited thread no longer counts at barriers (a barrier it would complete opens).
		if (--emu.blockLive > 0 && emu.blockArrived == emu.blockLive) {
			emu.blockArrived = 0;
			emu.blockGen++;
		}
		if (--emu.warpLive[w] > 0 && emu.warpArrived[w] == emu.warpLive[w]) {
			emu.warpArrived[w] = 0;
			emu.warpGen[w]++;
		}
		emu_yield(); // resumed for its next block
	}
}

// emu_launch_grid runs fn as a kernel over grid x block (1-D blocks of whole warps).
inline int emu_launch_grid(emu_dim3 grid, emu_dim3 block, std::function<void()> fn) {
	const int nt = block.x * block.y * block.z;
	if (block.y != 1 || block.z != 1 || nt % 32 != 0 || nt > EMU_MAX_THREADS) return -2;
	if (!emu.stacks) {
		emu.stacks = (char *)malloc((size_t)EMU_STACK * EMU_MAX_THREADS);
		emu.th.resize(EMU_MAX_THREADS);
	}
	emu.fn = fn;
	emu.nt = nt;
	blockDim = block;
	gridDim = grid;
	for (unsigned bz = 0; bz < grid.z; bz++)
		for (unsigned by = 0; by < grid.y; by++)
			for (unsigned bx = 0; bx < grid.x; bx++) {
				blockIdx = emu_dim3{bx, by, bz};
				emu.blockLive = nt;
				emu.blockArrived = 0;
				for (int w = 0; w < nt / 32; w++) {
					emu.warpLive[w] = 32;
					emu.warpArrived[w] = 0;
				}
				for (int i = 0; i < nt; i++) {
					EmuThread &t = emu.th[i];
					t.tid = emu_dim3{(unsigned)i, 0, 0};
					t.done = false;
					t.pending.clear();
				}
				for (bool any = true; any;) {
					any = false;
					for (int i = 0; i < nt; i++) {
						EmuThread &t = emu.th[i];
						if (t.done) continue;
						emu.cur = i;
						any = true;
						if (_setjmp(emu.main)) continue; // the thread yielded or finished
						if (t.started) _longjmp(t.jb, 1);
						t.started = true;
						getcontext(&t.uc);
						t.uc.uc_stack.ss_sp = emu.stacks + (size_t)i * EMU_STACK;
						t.uc.uc_stack.ss_size = EMU_STACK;
						t.uc.uc_link = nullptr; // emu_entry never returns
						makecontext(&t.uc, emu_entry, 0);
						setcontext(&t.uc);
					}
				}
			}
	return 0;
}

// ---- CUDA intrinsics and built-ins kernels.cu uses --------------------------------------

inline float __int_as_float(int i) {
	float f;
	memcpy(&f, &i, 4);
	return f;
}
inline float __uint_as_float(unsigned u) {
	float f;
	memcpy(&f, &u, 4);
	return f;
}
inline unsigned __float_as_uint(float f) {
	unsigned u;
	memcpy(&u, &f, 4);
	return u;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __ldg(const float *p) { return *p; }
inline float4 __ldg(const float4 *p) { return *p; }
inline unsigned atomicAdd(unsigned *p, unsigned v) { // one OS thread: nothing interleaves
	const unsigned o = *p;
	*p = o + v;
	return o;
}
inline int min(int a, int b) { return a < b ? a : b; }

template <class T> inline T __shfl_xor_sync(unsigned, T v, int o) {
	const int l = threadIdx.x & 31, w = threadIdx.x >> 5;
	uint64_t b = 0;
	memcpy(&b, &v, sizeof(T));
	emu.xch[w][l][0] = b;
	__syncwarp();
	const uint64_t r = emu.xch[w][l ^ o][0];
	__syncwarp();
	T out;
	memcpy(&out, &r, sizeof(T));
	return out;
}

// ---- the inline PTX helpers ------------------------------------------------------------

typedef uintptr_t saddr;

inline unsigned emu_bf16_rne(float f) {
	unsigned u = __float_as_uint(f);
	if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u; // NaN
	u += 0x7fffu + ((u >> 16) & 1u);
	return u >> 16;
}
// cvt.rn.bf16x2.f32 d, hi, lo: hi in the upper half.
inline unsigned pack_bf16(float lo, float hi) { return emu_bf16_rne(lo) | (emu_bf16_rne(hi) << 16); }

inline saddr smem_addr(const void *p) { return (saddr)p; }
// cp.async lands only at cp.async.wait_all: until then the destination holds NaNs, so a
// kernel reading a stage before waiting for it computes garbage here.
inline void cp_async16(saddr dst, const void *g, int src_bytes) {
	memset((void *)dst, 0xff, 16);
	emu.th[emu.cur].pending.push_back(EmuCopy{(void *)dst, g, src_bytes});
}
inline void cp_async_commit() {}
inline void cp_async_wait_all() {
	for (const EmuCopy &c : emu.th[emu.cur].pending) {
		memset(c.dst, 0, 16);
		memcpy(c.dst, c.src, c.n);
	}
	emu.th[emu.cur].pending.clear();
}
inline uint4 ldg_stream(const uint4 *p) { return *p; }

inline float emu_bf16_half(uint64_t w, int hi) { return __uint_as_float(hi ? (unsigned)w & 0xffff0000u : (unsigned)w << 16); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 over the warp, fragments as the PTX
// ISA lays them out (groupID g = lane/4, t = lane%4): A registers 0..3 hold (row g,
// columns 2t, 2t+1), (row g+8, same), (row g, columns 2t+8, 2t+9), (row g+8, same); B
// registers 0..1 hold (rows k = 2t, 2t+1; column g), (k = 2t+8, 2t+9; column g); C/D 0..3
// are (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1). The lower half of a register is the
// lower column (A) or row (B).
inline void mma_bf16(float c[4], const unsigned a[4], const unsigned b[2]) {
	const int l = threadIdx.x & 31, w = threadIdx.x >> 5;
	for (int i = 0; i < 4; i++) emu.xch[w][l][i] = a[i];
	emu.xch[w][l][4] = b[0];
	emu.xch[w][l][5] = b[1];
	__syncwarp();
	const int g = l >> 2, t = l & 3;
	float d[4];
	for (int e = 0; e < 4; e++) {
		const int row = g + (e >> 1) * 8, col = 2 * t + (e & 1);
		float s = 0.f;
		for (int k = 0; k < 16; k++) {
			const int al = (row % 8) * 4 + (k % 8) / 2, ar = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
			const int bl = col * 4 + (k % 8) / 2, br = k >= 8 ? 1 : 0;
			s += emu_bf16_half(emu.xch[w][al][ar], k & 1) * emu_bf16_half(emu.xch[w][bl][4 + br], k & 1);
		}
		d[e] = c[e] + s;
	}
	__syncwarp();
	for (int e = 0; e < 4; e++) c[e] = d[e];
}
