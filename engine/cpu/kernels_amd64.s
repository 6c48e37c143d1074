//go:build amd64

#include "textflag.h"

// AVX2/FMA kernels (ymm): the middle level, for CPUs without AVX-512.

// func dot4x3(x *float32, xstride int, w *float32, wstride, n int, out *[12]float32)
// out[r*3+j] = sum_k x[r*xstride+k] * w[j*wstride+k] for r < 4, j < 3; n is a multiple
// of 8, strides in floats. Each loaded weight vector serves four rows of x.
TEXT ·dot4x3(SB), NOSPLIT, $0-48
	MOVQ x+0(FP), SI
	MOVQ xstride+8(FP), BX
	MOVQ w+16(FP), DI
	MOVQ wstride+24(FP), DX
	MOVQ n+32(FP), CX
	SHLQ $2, BX
	SHLQ $2, DX
	SHLQ $2, CX
	LEAQ (SI)(BX*1), R8
	LEAQ (R8)(BX*1), R9
	LEAQ (R9)(BX*1), R10
	LEAQ (DI)(DX*1), R11
	LEAQ (R11)(DX*1), R12
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	XORQ AX, AX

loop:
	CMPQ AX, CX
	JGE  reduce
	VMOVUPS (DI)(AX*1), Y12
	VMOVUPS (R11)(AX*1), Y13
	VMOVUPS (R12)(AX*1), Y14
	VMOVUPS (SI)(AX*1), Y15
	VFMADD231PS Y12, Y15, Y0
	VFMADD231PS Y13, Y15, Y1
	VFMADD231PS Y14, Y15, Y2
	VMOVUPS (R8)(AX*1), Y15
	VFMADD231PS Y12, Y15, Y3
	VFMADD231PS Y13, Y15, Y4
	VFMADD231PS Y14, Y15, Y5
	VMOVUPS (R9)(AX*1), Y15
	VFMADD231PS Y12, Y15, Y6
	VFMADD231PS Y13, Y15, Y7
	VFMADD231PS Y14, Y15, Y8
	VMOVUPS (R10)(AX*1), Y15
	VFMADD231PS Y12, Y15, Y9
	VFMADD231PS Y13, Y15, Y10
	VFMADD231PS Y14, Y15, Y11
	ADDQ $32, AX
	JMP  loop

reduce:
	MOVQ out+40(FP), DX
	VHADDPS Y1, Y0, Y0
	VHADDPS Y3, Y2, Y2
	VHADDPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VMOVUPS X0, (DX)
	VHADDPS Y5, Y4, Y4
	VHADDPS Y7, Y6, Y6
	VHADDPS Y6, Y4, Y4
	VEXTRACTF128 $1, Y4, X5
	VADDPS X5, X4, X4
	VMOVUPS X4, 16(DX)
	VHADDPS Y9, Y8, Y8
	VHADDPS Y11, Y10, Y10
	VHADDPS Y10, Y8, Y8
	VEXTRACTF128 $1, Y8, X9
	VADDPS X9, X8, X8
	VMOVUPS X8, 32(DX)
	VZEROUPPER
	RET

// func dotAVX(x, y *float32, n int) float32
// n is a multiple of 8.
TEXT ·dotAVX(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ y+8(FP), DI
	MOVQ n+16(FP), CX
	SHLQ $2, CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	XORQ AX, AX
	MOVQ CX, R11
	SUBQ $32, R11

dloop16:
	CMPQ AX, R11
	JGE  dtail8
	VMOVUPS (SI)(AX*1), Y2
	VMOVUPS 32(SI)(AX*1), Y3
	VFMADD231PS (DI)(AX*1), Y2, Y0
	VFMADD231PS 32(DI)(AX*1), Y3, Y1
	ADDQ $64, AX
	JMP  dloop16

dtail8:
	CMPQ AX, CX
	JGE  dreduce
	VMOVUPS (SI)(AX*1), Y2
	VFMADD231PS (DI)(AX*1), Y2, Y0
	ADDQ $32, AX

dreduce:
	VADDPS Y1, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VHADDPS X0, X0, X0
	VHADDPS X0, X0, X0
	VMOVSS X0, ret+24(FP)
	VZEROUPPER
	RET

// func axpyAVX(alpha float32, x, y *float32, n int)
// y[i] += alpha * x[i]; n is a multiple of 8.
TEXT ·axpyAVX(SB), NOSPLIT, $0-32
	VBROADCASTSS alpha+0(FP), Y0
	MOVQ x+8(FP), SI
	MOVQ y+16(FP), DI
	MOVQ n+24(FP), CX
	SHLQ $2, CX
	XORQ AX, AX

aloop:
	CMPQ AX, CX
	JGE  adone
	VMOVUPS (DI)(AX*1), Y1
	VFMADD231PS (SI)(AX*1), Y0, Y1
	VMOVUPS Y1, (DI)(AX*1)
	ADDQ $32, AX
	JMP  aloop

adone:
	VZEROUPPER
	RET

// AVX-512 kernels (zmm). Lengths are in floats. Every kernel takes any length: the
// last partial vector is loaded under the mask K1 (lanes past the end read as zero and
// do not fault).

// TAILMASK sets K1 to the low (CX mod 16) bits, clobbering CX and R15.
#define TAILMASK \
	ANDQ  $15, CX; \
	MOVL  $1, R15; \
	SHLL  CX, R15; \
	DECL  R15; \
	KMOVW R15, K1

// HSUM folds Z0 to its lane sum in X0 (lane 0), using Y1/X1.
#define HSUM \
	VEXTRACTF64X4 $1, Z0, Y1; \
	VADDPS        Y1, Y0, Y0; \
	VEXTRACTF128  $1, Y0, X1; \
	VADDPS        X1, X0, X0; \
	VPERMILPS     $0x4E, X0, X1; \
	VADDPS        X1, X0, X0; \
	VPERMILPS     $0xB1, X0, X1; \
	VADDPS        X1, X0, X0

// func dot512(x, y *float32, n int) float32
TEXT ·dot512(SB), NOSPLIT, $0-28
	MOVQ   x+0(FP), SI
	MOVQ   y+8(FP), DI
	MOVQ   n+16(FP), CX
	VXORPS Z0, Z0, Z0
	VXORPS Z1, Z1, Z1
	VXORPS Z2, Z2, Z2
	VXORPS Z3, Z3, Z3
	XORQ   AX, AX
	MOVQ   CX, DX
	SUBQ   $64, DX

dot4:
	CMPQ        AX, DX
	JGT         dot1pre
	VMOVUPS     (SI)(AX*4), Z4
	VMOVUPS     64(SI)(AX*4), Z5
	VMOVUPS     128(SI)(AX*4), Z6
	VMOVUPS     192(SI)(AX*4), Z7
	VFMADD231PS (DI)(AX*4), Z4, Z0
	VFMADD231PS 64(DI)(AX*4), Z5, Z1
	VFMADD231PS 128(DI)(AX*4), Z6, Z2
	VFMADD231PS 192(DI)(AX*4), Z7, Z3
	ADDQ        $64, AX
	JMP         dot4

dot1pre:
	ADDQ $48, DX

dot1:
	CMPQ        AX, DX
	JGT         dottail
	VMOVUPS     (SI)(AX*4), Z4
	VFMADD231PS (DI)(AX*4), Z4, Z0
	ADDQ        $16, AX
	JMP         dot1

dottail:
	SUBQ        AX, CX
	JZ          dotsum
	TAILMASK
	VMOVUPS.Z   (SI)(AX*4), K1, Z4
	VFMADD231PS (DI)(AX*4), Z4, K1, Z1

dotsum:
	VADDPS  Z1, Z0, Z0
	VADDPS  Z3, Z2, Z2
	VADDPS  Z2, Z0, Z0
	HSUM
	VMOVSS  X0, ret+24(FP)
	VZEROUPPER
	RET

// func axpy512(alpha float32, x, y *float32, n int)
TEXT ·axpy512(SB), NOSPLIT, $0-32
	VBROADCASTSS alpha+0(FP), Z0
	MOVQ         x+8(FP), SI
	MOVQ         y+16(FP), DI
	MOVQ         n+24(FP), CX
	XORQ         AX, AX
	MOVQ         CX, DX
	SUBQ         $32, DX

axpy2:
	CMPQ        AX, DX
	JGT         axpy1pre
	VMOVUPS     (DI)(AX*4), Z1
	VMOVUPS     64(DI)(AX*4), Z2
	VFMADD231PS (SI)(AX*4), Z0, Z1
	VFMADD231PS 64(SI)(AX*4), Z0, Z2
	VMOVUPS     Z1, (DI)(AX*4)
	VMOVUPS     Z2, 64(DI)(AX*4)
	ADDQ        $32, AX
	JMP         axpy2

axpy1pre:
	ADDQ $16, DX

axpy1:
	CMPQ        AX, DX
	JGT         axpytail
	VMOVUPS     (DI)(AX*4), Z1
	VFMADD231PS (SI)(AX*4), Z0, Z1
	VMOVUPS     Z1, (DI)(AX*4)
	ADDQ        $16, AX
	JMP         axpy1

axpytail:
	SUBQ        AX, CX
	JZ          axpydone
	TAILMASK
	VMOVUPS.Z   (DI)(AX*4), K1, Z1
	VFMADD231PS (SI)(AX*4), Z0, K1, Z1
	VMOVUPS     Z1, K1, (DI)(AX*4)

axpydone:
	VZEROUPPER
	RET

// EXPCONST loads the constants of EXP into Z16..Z27 (clobbers AX).
#define EXPCONST \
	MOVL         $0x42b17218, AX; \
	VPBROADCASTD AX, Z16; \
	MOVL         $0xc2cff0a4, AX; \
	VPBROADCASTD AX, Z17; \
	MOVL         $0x3fb8aa3b, AX; \
	VPBROADCASTD AX, Z18; \
	MOVL         $0x3f318000, AX; \
	VPBROADCASTD AX, Z19; \
	MOVL         $0xb95e8083, AX; \
	VPBROADCASTD AX, Z20; \
	MOVL         $0x39506967, AX; \
	VPBROADCASTD AX, Z21; \
	MOVL         $0x3ab743ce, AX; \
	VPBROADCASTD AX, Z22; \
	MOVL         $0x3c088908, AX; \
	VPBROADCASTD AX, Z23; \
	MOVL         $0x3d2aa9c1, AX; \
	VPBROADCASTD AX, Z24; \
	MOVL         $0x3e2aaaaa, AX; \
	VPBROADCASTD AX, Z25; \
	MOVL         $0x3f000000, AX; \
	VPBROADCASTD AX, Z26; \
	MOVL         $0x3f800000, AX; \
	VPBROADCASTD AX, Z27

// EXP sets z to exp(z) in 16 lanes (scratch k, r, t; constants from EXPCONST): z is
// clamped to [-103.97, 88.72] (beyond, exp is 0 or +Inf in float32), split as
// z = k*ln2 + r with integral k and |r| <= ln2/2 (ln2 in two parts), exp(r) from the
// degree-7 polynomial of Cephes' expf (relative error about 1e-7), times 2^k by VSCALEFPS.
#define EXP(z, k, r, t) \
	VMINPS        Z16, z, z; \
	VMAXPS        Z17, z, z; \
	VMULPS        Z18, z, k; \
	VRNDSCALEPS   $0, k, k; \
	VMOVAPS       z, r; \
	VFNMADD231PS  Z19, k, r; \
	VFNMADD231PS  Z20, k, r; \
	VMOVAPS       Z21, t; \
	VFMADD213PS   Z22, r, t; \
	VFMADD213PS   Z23, r, t; \
	VFMADD213PS   Z24, r, t; \
	VFMADD213PS   Z25, r, t; \
	VFMADD213PS   Z26, r, t; \
	VMULPS        r, r, z; \
	VFMADD213PS   r, z, t; \
	VADDPS        Z27, t, t; \
	VSCALEFPS     k, t, z

// func softmax512(x *float32, n int)
// x[:n] = exp(x - max(x)) / sum, n >= 1.
TEXT ·softmax512(SB), NOSPLIT, $0-16
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), DX
	MOVQ DX, CX
	TAILMASK                 // K1: the lanes of the last, partial vector
	MOVQ DX, BX
	ANDQ $-16, BX            // floats in whole vectors
	MOVL $0xff800000, AX
	VPBROADCASTD AX, Z0      // running max, from -Inf
	XORQ AX, AX

smmax:
	CMPQ   AX, BX
	JGE    smmaxtail
	VMAXPS (SI)(AX*4), Z0, Z0
	ADDQ   $16, AX
	JMP    smmax

smmaxtail:
	CMPQ          AX, DX
	JGE           smmaxsum
	VMAXPS        (SI)(AX*4), Z0, K1, Z0

smmaxsum:
	VEXTRACTF64X4 $1, Z0, Y1
	VMAXPS        Y1, Y0, Y0
	VEXTRACTF128  $1, Y0, X1
	VMAXPS        X1, X0, X0
	VPERMILPS     $0x4E, X0, X1
	VMAXPS        X1, X0, X0
	VPERMILPS     $0xB1, X0, X1
	VMAXPS        X1, X0, X0
	VBROADCASTSS  X0, Z28    // max
	EXPCONST
	VXORPS        Z29, Z29, Z29 // sum
	XORQ          AX, AX

smexp:
	CMPQ    AX, BX
	JGE     smexptail
	VMOVUPS (SI)(AX*4), Z0
	VSUBPS  Z28, Z0, Z0
	EXP(Z0, Z1, Z2, Z3)
	VMOVUPS Z0, (SI)(AX*4)
	VADDPS  Z0, Z29, Z29
	ADDQ    $16, AX
	JMP     smexp

smexptail:
	CMPQ      AX, DX
	JGE       smsum
	VMOVUPS.Z (SI)(AX*4), K1, Z0
	VSUBPS    Z28, Z0, Z0
	EXP(Z0, Z1, Z2, Z3)
	VMOVUPS   Z0, K1, (SI)(AX*4)
	VADDPS    Z0, Z29, K1, Z29

smsum:
	VEXTRACTF64X4 $1, Z29, Y1
	VADDPS        Y1, Y29, Y0
	VEXTRACTF128  $1, Y0, X1
	VADDPS        X1, X0, X0
	VPERMILPS     $0x4E, X0, X1
	VADDPS        X1, X0, X0
	VPERMILPS     $0xB1, X0, X1
	VADDPS        X1, X0, X0
	VDIVSS        X0, X27, X0   // 1/sum
	VBROADCASTSS  X0, Z28
	XORQ          AX, AX

smscale:
	CMPQ    AX, BX
	JGE     smscaletail
	VMULPS  (SI)(AX*4), Z28, Z0
	VMOVUPS Z0, (SI)(AX*4)
	ADDQ    $16, AX
	JMP     smscale

smscaletail:
	CMPQ      AX, DX
	JGE       smdone
	VMULPS.Z  (SI)(AX*4), Z28, K1, Z0
	VMOVUPS   Z0, K1, (SI)(AX*4)

smdone:
	VZEROUPPER
	RET

// func silumul512(gate, up *float32, n int)
// gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for i < n.
TEXT ·silumul512(SB), NOSPLIT, $0-24
	MOVQ gate+0(FP), DI
	MOVQ up+8(FP), SI
	MOVQ n+16(FP), DX
	MOVQ DX, CX
	TAILMASK
	MOVQ DX, BX
	ANDQ $-16, BX
	EXPCONST
	XORQ AX, AX

siloop:
	CMPQ    AX, BX
	JGE     sitail
	VMOVUPS (DI)(AX*4), Z4
	VXORPS  Z0, Z0, Z0
	VSUBPS  Z4, Z0, Z0       // -g
	EXP(Z0, Z1, Z2, Z3)
	VADDPS  Z27, Z0, Z0      // 1 + exp(-g)
	VDIVPS  Z0, Z4, Z4       // g / (1 + exp(-g))
	VMULPS  (SI)(AX*4), Z4, Z4
	VMOVUPS Z4, (DI)(AX*4)
	ADDQ    $16, AX
	JMP     siloop

sitail:
	CMPQ      AX, DX
	JGE       sidone
	VMOVUPS.Z (DI)(AX*4), K1, Z4
	VXORPS    Z0, Z0, Z0
	VSUBPS    Z4, Z0, Z0
	EXP(Z0, Z1, Z2, Z3)
	VADDPS    Z27, Z0, Z0
	VDIVPS    Z0, Z4, Z4
	VMULPS.Z  (SI)(AX*4), Z4, K1, Z4
	VMOVUPS   Z4, K1, (DI)(AX*4)

sidone:
	VZEROUPPER
	RET

// func scalemul512(dst, x, w *float32, scale float32, n int)
// dst[i] = x[i] * scale * w[i] for i < n.
TEXT ·scalemul512(SB), NOSPLIT, $0-40
	MOVQ         dst+0(FP), DI
	MOVQ         x+8(FP), SI
	MOVQ         w+16(FP), R8
	VBROADCASTSS scale+24(FP), Z0
	MOVQ         n+32(FP), DX
	MOVQ         DX, CX
	TAILMASK
	MOVQ         DX, BX
	ANDQ         $-16, BX
	XORQ         AX, AX

smloop:
	CMPQ    AX, BX
	JGE     smtail
	VMULPS  (SI)(AX*4), Z0, Z1
	VMULPS  (R8)(AX*4), Z1, Z1
	VMOVUPS Z1, (DI)(AX*4)
	ADDQ    $16, AX
	JMP     smloop

smtail:
	CMPQ     AX, DX
	JGE      smfin
	VMULPS.Z (SI)(AX*4), Z0, K1, Z1
	VMULPS.Z (R8)(AX*4), Z1, K1, Z1
	VMOVUPS  Z1, K1, (DI)(AX*4)

smfin:
	VZEROUPPER
	RET

// CHUNKMASKS sets K1..K4 from the four 16-bit masks in AX (clobbered): the lanes of the
// four vectors of a chunk of up to 64 floats.
#define CHUNKMASKS \
	KMOVW AX, K1; \
	SHRQ  $16, AX; \
	KMOVW AX, K2; \
	SHRQ  $16, AX; \
	KMOVW AX, K3; \
	SHRQ  $16, AX; \
	KMOVW AX, K4

// func dotrows512(dst, q, k *float32, stride, n int, masks uint64, acc bool)
// dst[j] = (or +=, with acc) dot(q, k[j*stride:]) over the up to 64 floats that masks
// selects, for j < n (stride in bytes). q stays in Z8..Z11.
TEXT ·dotrows512(SB), NOSPLIT, $0-49
	MOVQ      dst+0(FP), DI
	MOVQ      q+8(FP), SI
	MOVQ      k+16(FP), DX
	MOVQ      stride+24(FP), BX
	MOVQ      n+32(FP), CX
	MOVQ      masks+40(FP), AX
	MOVBLZX   acc+48(FP), R8
	CHUNKMASKS
	VMOVUPS.Z (SI), K1, Z8
	VMOVUPS.Z 64(SI), K2, Z9
	VMOVUPS.Z 128(SI), K3, Z10
	VMOVUPS.Z 192(SI), K4, Z11

drloop:
	TESTQ       CX, CX
	JZ          drdone
	VMULPS.Z    (DX), Z8, K1, Z0
	VMULPS.Z    64(DX), Z9, K2, Z1
	VFMADD231PS 128(DX), Z10, K3, Z0
	VFMADD231PS 192(DX), Z11, K4, Z1
	VADDPS      Z1, Z0, Z0
	HSUM
	TESTL       R8, R8
	JZ          drstore
	VADDSS      (DI), X0, X0

drstore:
	VMOVSS X0, (DI)
	ADDQ   $4, DI
	ADDQ   BX, DX
	DECQ   CX
	JMP    drloop

drdone:
	VZEROUPPER
	RET

// func axpyrows512(y, a, v *float32, stride, n int, masks uint64)
// y += sum over j < n of a[j] * v[j*stride:] over the up to 64 floats that masks selects
// (stride in bytes). y is held in two sets of accumulators, for even and odd j.
TEXT ·axpyrows512(SB), NOSPLIT, $0-48
	MOVQ      y+0(FP), DI
	MOVQ      a+8(FP), SI
	MOVQ      v+16(FP), DX
	MOVQ      stride+24(FP), BX
	MOVQ      n+32(FP), CX
	MOVQ      masks+40(FP), AX
	CHUNKMASKS
	VMOVUPS.Z (DI), K1, Z8
	VMOVUPS.Z 64(DI), K2, Z9
	VMOVUPS.Z 128(DI), K3, Z10
	VMOVUPS.Z 192(DI), K4, Z11
	VXORPS    Z12, Z12, Z12
	VXORPS    Z13, Z13, Z13
	VXORPS    Z14, Z14, Z14
	VXORPS    Z15, Z15, Z15

arloop2:
	CMPQ         CX, $2
	JLT          arloop1
	VBROADCASTSS (SI), Z0
	VBROADCASTSS 4(SI), Z1
	LEAQ         (DX)(BX*1), R8
	VFMADD231PS  (DX), Z0, K1, Z8
	VFMADD231PS  64(DX), Z0, K2, Z9
	VFMADD231PS  128(DX), Z0, K3, Z10
	VFMADD231PS  192(DX), Z0, K4, Z11
	VFMADD231PS  (R8), Z1, K1, Z12
	VFMADD231PS  64(R8), Z1, K2, Z13
	VFMADD231PS  128(R8), Z1, K3, Z14
	VFMADD231PS  192(R8), Z1, K4, Z15
	ADDQ         $8, SI
	LEAQ         (DX)(BX*2), DX
	SUBQ         $2, CX
	JMP          arloop2

arloop1:
	TESTQ        CX, CX
	JZ           ardone
	VBROADCASTSS (SI), Z0
	VFMADD231PS  (DX), Z0, K1, Z8
	VFMADD231PS  64(DX), Z0, K2, Z9
	VFMADD231PS  128(DX), Z0, K3, Z10
	VFMADD231PS  192(DX), Z0, K4, Z11

ardone:
	VADDPS  Z12, Z8, Z8
	VADDPS  Z13, Z9, Z9
	VADDPS  Z14, Z10, Z10
	VADDPS  Z15, Z11, Z11
	VMOVUPS Z8, K1, (DI)
	VMOVUPS Z9, K2, 64(DI)
	VMOVUPS Z10, K3, 128(DI)
	VMOVUPS Z11, K4, 192(DI)
	VZEROUPPER
	RET
