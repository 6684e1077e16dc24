/* attention_mma.cuh - what the tensor-core attention kernels share: the mma.sync kernels of
 * attention_mma.cu and the wgmma forward of attention_wgmma.cu (tile sizes, the PTX wrappers that
 * the CPU emulator carries out too, 16-bit packing, the rows' key ranges, the masking of scores,
 * the online softmax of a warp's 16 rows and the store of their outputs). */
#ifndef LU_CUDA_ATTENTION_MMA_CUH
#define LU_CUDA_ATTENTION_MMA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <float.h>
#include <limits.h>
#include <math.h>

#include "attention.cuh"

#define ATT_BK 64                       /* keys per tile of the forward and of dQ; per block of dK, dV */
#define ATT_BWD_WARPS 4                 /* warps of the backward kernels */
#define ATT_FULL 0xffffffffu            /* every lane of a warp */
#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2 0.6931471805599453f
#define ATT_SLACK 8.0f                  /* log2 of how far p may exceed 1 before the forward rescales */

/* ---- PTX wrappers ---- */

#ifdef LU_CUDA_EMU
/* The CPU emulator (tests/cuda_emu) carries out the same instructions. */
static inline uint32_t att_saddr(const void *p) { return lu_emu::shared_address(p); }
static inline void att_cp16(void *dst, const void *src, bool in) { lu_emu::cp_async(dst, src, 16, in); }
static inline void att_cp4(void *dst, const void *src, bool in) { lu_emu::cp_async(dst, src, 4, in); }
static inline void att_cp_commit() { lu_emu::cp_async_commit(); }
template <int N> static inline void att_cp_wait() { lu_emu::cp_async_wait(N); }
static inline void att_ldsm(uint32_t r[4], const uint16_t *p) { lu_emu::ldmatrix_x4(r, p, false); }
static inline void att_ldsm_t(uint32_t r[4], const uint16_t *p) { lu_emu::ldmatrix_x4(r, p, true); }
template <bool BF16> static inline void att_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    lu_emu::mma_m16n8k16(c, a, b0, b1, BF16);
}
static inline float att_exp2(float x)
{
    const float r = exp2f(x);
    return r < FLT_MIN ? 0.0f : r; /* ex2.approx.ftz flushes subnormal results to zero */
}
#else
static __device__ __forceinline__ uint32_t att_saddr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes from global to shared memory, or 16 zero bytes when !in (src is then not read). */
static __device__ __forceinline__ void att_cp16(void *dst, const void *src, bool in)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(att_saddr(dst)), "l"(src), "r"(in ? 16 : 0));
}

/* The same for 4 bytes (through L1: .cg takes 16-byte copies only). */
static __device__ __forceinline__ void att_cp4(void *dst, const void *src, bool in)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(att_saddr(dst)), "l"(src), "r"(in ? 4 : 0));
}

static __device__ __forceinline__ void att_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }

/* Waits until at most N committed groups of this thread are in flight. */
template <int N> static __device__ __forceinline__ void att_cp_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Four 8 x 8 matrices of 16-bit elements; lane l gives the address of row l % 8 of matrix l / 8. */
static __device__ __forceinline__ void att_ldsm(uint32_t r[4], const uint16_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(att_saddr(p)));
}

static __device__ __forceinline__ void att_ldsm_t(uint32_t r[4], const uint16_t *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(att_saddr(p)));
}

/* c (16 x 8) += a (16 x 16) b (16 x 8). */
template <bool BF16>
static __device__ __forceinline__ void att_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
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

/* 2^x by the MUFU unit alone, subnormal results flushed to zero: exp2f adds a range check and two
 * multiplications around the same instruction to keep them, which matter nowhere here (P and the
 * rescaling factors are rounded to 16 bits or multiply sums of them) and cost three issue slots
 * an element in loops that are bound by issue. */
static __device__ __forceinline__ float att_exp2(float x)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
    return r;
}
#endif

/* Two floats rounded to nearest even as one 16-bit pair, lo in the low half (the lower column). */
template <bool BF16> static __device__ __forceinline__ uint32_t att_pack(float lo, float hi)
{
    uint32_t r;
    if (BF16) {
        __nv_bfloat162 x = __floats2bfloat162_rn(lo, hi);
        memcpy(&r, &x, sizeof r);
    } else {
        __half2 x = __floats2half2_rn(lo, hi);
        memcpy(&r, &x, sizeof r);
    }
    return r;
}

/* The same through core/dtype.c's conversions, for the values that leave the kernels. */
template <bool BF16> static __device__ __forceinline__ uint32_t att_pack_out(float lo, float hi)
{
    if (BF16) return (uint32_t)lu_dev_f32_to_bf16(lo) | (uint32_t)lu_dev_f32_to_bf16(hi) << 16;
    return (uint32_t)lu_dev_f32_to_f16(lo) | (uint32_t)lu_dev_f32_to_f16(hi) << 16;
}

/* ---- key ranges and scores ---- */

/* Is key j past Tk, or padded by the mask in batch b? */
static __device__ __forceinline__ bool att_padded(const att_args *a, int64_t b, int j, int tk)
{
    return j >= tk || (a->mask && a->mask[b * tk + j]);
}

/* The key ranges [lo, hi) of a lane's rows g and g + 8 of its warp's 16 queries. */
typedef struct att_rows {
    int lo[2], hi[2];
} att_rows;

/* Rows r and r + 8 of a block's row ranges lo, hi. */
static __device__ __forceinline__ att_rows att_rows_of(const int *lo, const int *hi, int r)
{
    return {{lo[r], lo[r + 8]}, {hi[r], hi[r + 8]}};
}

/* Does any row of the warp see a key of [j0, j0 + BK)? */
template <int BK = ATT_BK> static __device__ __forceinline__ bool att_rows_see(const att_rows *r, int j0)
{
    bool see = false;
#pragma unroll
    for (int x = 0; x < 2; x++) see |= max(r->lo[x], j0) < min(r->hi[x], j0 + BK);
    return __any_sync(ATT_FULL, see);
}

/* Does every row of the warp see every key of [j0, j0 + BK), with no padding mask? */
template <int BK = ATT_BK>
static __device__ __forceinline__ bool att_rows_full(const att_rows *r, int j0, const att_args *a)
{
    bool full = !a->mask;
#pragma unroll
    for (int x = 0; x < 2; x++) full &= r->lo[x] <= j0 && j0 + BK <= r->hi[x];
    return __all_sync(ATT_FULL, full);
}

/* Sets to -inf the score fragments s (16 x BK, keys from j0) that rows r may not see. */
template <int BK = ATT_BK>
static __device__ __forceinline__ void att_mask_scores(float s[BK / 8][4], const att_rows *r, int j0, const att_args *a,
                                                       int64_t b, int tk)
{
    const int t = threadIdx.x % 4;
#pragma unroll
    for (int nb = 0; nb < BK / 8; nb++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
            int j = j0 + nb * 8 + 2 * t + c;
            bool pad = att_padded(a, b, j, tk);
#pragma unroll
            for (int x = 0; x < 2; x++)
                if (pad || j < r->lo[x] || j >= r->hi[x]) s[nb][2 * x + c] = -INFINITY;
        }
}

/* The key ranges of rows i0 .. i0 + n - 1 into lo, hi (shared), by the block's first n threads. */
static __device__ __forceinline__ void att_ranges(const att_args *a, int i0, int n, int *lo, int *hi)
{
    if ((int)threadIdx.x < n) {
        int64_t l, h;
        lu_att_key_range(&a->rg, i0 + (int)threadIdx.x, &l, &h);
        lo[threadIdx.x] = (int)l;
        hi[threadIdx.x] = (int)h;
    }
}

/* The union [klo, khi) of n rows' key ranges (empty: khi <= klo): each lane takes every 32nd row,
 * then a butterfly of min and max across the warp (every warp computes it; called by whole warps). */
static __device__ __forceinline__ void att_union(const int *lo, const int *hi, int n, int tk, int *klo, int *khi)
{
    int l = tk, h = 0;
    for (int r = (int)threadIdx.x % LU_CUDA_WARP; r < n; r += LU_CUDA_WARP)
        if (hi[r] > lo[r]) {
            l = min(l, lo[r]);
            h = max(h, hi[r]);
        }
#pragma unroll
    for (int m = LU_CUDA_WARP / 2; m > 0; m /= 2) {
        l = min(l, __shfl_xor_sync(ATT_FULL, l, m));
        h = max(h, __shfl_xor_sync(ATT_FULL, h, m));
    }
    *klo = l;
    *khi = h;
}


/* ---- the forward ---- */

/* Where a forward block of bq queries works (blockIdx.x): the first query i0, the tiles with the
 * most keys (causal: the last) first; query head h of batch b; the offsets of its query rows in q
 * and of its kv head's key rows in k and v, for head dim d. */
typedef struct att_fwd_block {
    int i0;
    int64_t h, b, qbase, kbase;
} att_fwd_block;

static __device__ __forceinline__ att_fwd_block att_fwd_block_of(const att_args *a, int bq, int d)
{
    const int64_t tq = a->rg.tq, nqt = (tq + bq - 1) / bq, bid = blockIdx.x;
    att_fwd_block r;
    r.i0 = (int)(nqt - 1 - bid % nqt) * bq;
    r.h = bid / nqt % a->hq;
    r.b = bid / (nqt * a->hq);
    r.qbase = (r.b * tq * a->hq + r.h) * d;
    r.kbase = (r.b * a->rg.tk * a->hkv + r.h / (a->hq / a->hkv)) * d;
    return r;
}

/* One key tile (keys j0 .. j0 + ATT_BK - 1) of the online softmax of a warp's 16 rows, whose
 * scores s (accumulator fragments, unscaled) become p = exp2(s sl2 - m) in place: the rows' state
 * m (running maximum in base-2 units, s * scale * log2 e) and l (this lane's columns' sum) of rows
 * g and g + 8, as every lane of the row's quad holds them, and their output accumulators acc. */
template <int D>
static __device__ __forceinline__ void att_softmax_tile(float s[ATT_BK / 8][4], float m[2], float l[2],
                                                        float acc[D / 8][4], const att_rows *rows, int j0,
                                                        const att_args *a, int64_t b, int tk, float sl2)
{
    /* The tile's maximum of the unscaled scores: the scale being positive (lu_att_mma_takes),
     * max(s) sl2 is the maximum of s sl2, and one FFMA an element scales and shifts. */
    float mx[2] = {-INFINITY, -INFINITY};
    if (!att_rows_full(rows, j0, a)) att_mask_scores(s, rows, j0, a, b, tk);
#pragma unroll
    for (int n = 0; n < ATT_BK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
    /* The running maximum m moves only when a row of the warp would exceed it by more than
     * ATT_SLACK, and then for every row of the warp; until then p is up to 2^ATT_SLACK, and the
     * warp skips rescaling its accumulators. o and lse are those of any m. */
    bool grow = false;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        mx[x] = fmaxf(mx[x], __shfl_xor_sync(ATT_FULL, mx[x], 1));
        mx[x] = fmaxf(mx[x], __shfl_xor_sync(ATT_FULL, mx[x], 2));
        mx[x] *= sl2;
        grow |= mx[x] > m[x] + ATT_SLACK; /* m = -inf: any visible key */
    }
    if (__any_sync(ATT_FULL, grow)) {
        float alpha[2];
#pragma unroll
        for (int x = 0; x < 2; x++) {
            const float mn = fmaxf(m[x], mx[x]);
            /* exp2(-inf - 0) = 0 rescales a row that had no visible key (its sums are 0). */
            alpha[x] = att_exp2(m[x] - (mn == -INFINITY ? 0.0f : mn));
            m[x] = mn;
            l[x] *= alpha[x];
        }
#pragma unroll
        for (int n = 0; n < D / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[n][e] *= alpha[e / 2];
    }
    /* A row with no visible key yet keeps m = -inf; exp2(-inf - 0) gives its p = 0. */
    float mb[2];
#pragma unroll
    for (int x = 0; x < 2; x++) mb[x] = m[x] == -INFINITY ? 0.0f : m[x];
#pragma unroll
    for (int n = 0; n < ATT_BK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[n][e] = att_exp2(fmaf(s[n][e], sl2, -mb[e / 2]));
            l[e / 2] += s[n][e];
        }
}

/* The outputs of a warp's 16 rows r0 .. r0 + 15 (query head h, batch b) from their softmax state:
 * o [B,Tq,Hq,D] = acc / l, lse [B,Hq,Tq] = m ln 2 + ln l (-inf, o = 0, for a row that saw no key). */
template <bool BF16, int D>
static __device__ __forceinline__ void att_store_rows(const float acc[D / 8][4], const float m[2], const float l[2],
                                                      const att_args *a, void *o, void *lse, int64_t b, int64_t h,
                                                      int r0)
{
    const int lane = threadIdx.x % LU_CUDA_WARP, g = lane / 4, t = lane % 4, tq = (int)a->rg.tq;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int i = r0 + g + 8 * x;
        float lx = l[x];
        lx += __shfl_xor_sync(ATT_FULL, lx, 1);
        lx += __shfl_xor_sync(ATT_FULL, lx, 2);
        if (i >= tq) continue;
        const float inv = lx > 0.0f ? 1.0f / lx : 0.0f;
        uint32_t *orow = (uint32_t *)((uint16_t *)o + ((b * tq + i) * a->hq + h) * D);
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            orow[n * 4 + t] = att_pack_out<BF16>(acc[n][2 * x] * inv, acc[n][2 * x + 1] * inv);
        if (t == 0)
            att_store(lse, a->lse_dt, (b * a->hq + h) * tq + i, lx > 0.0f ? m[x] * ATT_LN2 + logf(lx) : -INFINITY);
    }
}

#endif
