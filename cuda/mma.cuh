/* mma.cuh - the warp-wide tensor-core instructions of sm_80 that several kernels use: ldmatrix
 * (four 8 x 8 matrices of 16-bit elements from shared memory) and mma.sync m16n8k16 with bf16 or
 * f16 operands and fp32 accumulators (the attention kernels of attention_mma.cu and the depthwise
 * convolution's forward of conv.cu). On the CPU emulator (tests/cuda_emu) the same calls carry out
 * the same instructions, with the PTX ISA's fragment layouts. */
#ifndef LU_CUDA_MMA_CUH
#define LU_CUDA_MMA_CUH

#include <cuda_bf16.h>
#include <string.h>

#include "async.cuh"

#ifdef LU_CUDA_EMU
static inline void lu_ldsm(uint32_t r[4], const uint16_t *p) { lu_emu::ldmatrix_x4(r, p, false); }
static inline void lu_ldsm_t(uint32_t r[4], const uint16_t *p) { lu_emu::ldmatrix_x4(r, p, true); }
template <bool BF16> static inline void lu_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    lu_emu::mma_m16n8k16(c, a, b0, b1, BF16);
}
#else
/* Four 8 x 8 matrices of 16-bit elements; lane l gives the address of row l % 8 of matrix l / 8
 * (16-byte aligned), and r[i] holds matrix i, each lane two elements of row lane / 4 (columns
 * 2 (lane % 4) and the next); the _t form transposes each matrix. */
static __device__ __forceinline__ void lu_ldsm(uint32_t r[4], const uint16_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(lu_saddr(p)));
}

static __device__ __forceinline__ void lu_ldsm_t(uint32_t r[4], const uint16_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(lu_saddr(p)));
}

/* c (16 x 8) += a (16 x 16) b (16 x 8): a[0..3] the A matrix's (rows 0-7, 8-15) x (columns 0-7,
 * 8-15) in ldmatrix's order, b0 and b1 B's rows 0-7 and 8-15 (lane l: rows 2 (l % 4) and the next
 * of column l / 4), c[0..1] row l / 4 and c[2..3] row l / 4 + 8 at columns 2 (l % 4) and the next. */
template <bool BF16>
static __device__ __forceinline__ void lu_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    if (BF16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

/* Two floats rounded to nearest even as a bf16 pair, lo in the low half (one cvt.rn.bf16x2.f32 on
 * the GPU): core/dtype.c's conversion for every value but NaN, which comes out as the canonical
 * 0x7fff where dtype.c keeps the sign and the payload's top bits. For sums that are finite or
 * infinite, as the tensor cores' are from finite inputs. */
static __device__ __forceinline__ uint32_t lu_bf16x2_rn(float lo, float hi)
{
    const __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &x, sizeof r);
    return r;
}

#endif
