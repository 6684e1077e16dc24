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
#include "mma.cuh"

#define ATT_BK 64                       /* keys per tile of the forward and of dQ; per block of dK, dV */
#define ATT_BWD_WARPS 4                 /* warps of the backward kernels */
#define ATT_FULL 0xffffffffu            /* every lane of a warp */
#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2 0.6931471805599453f
#define ATT_SLACK 8.0f                  /* log2 of how far p may exceed 1 before the forward rescales */

/* ---- PTX wrappers ---- */

#ifdef LU_CUDA_EMU
/* The CPU emulator (tests/cuda_emu) carries out the same instructions. */
static inline void att_fence_proxy_async() {}
static inline float att_exp2(float x)
{
    const float r = exp2f(x);
    return r < FLT_MIN ? 0.0f : r; /* ex2.approx.ftz flushes subnormal results to zero */
}
#else
/* Makes this thread's writes to shared memory (cp.async) visible to wgmma's reads (the async
 * proxy, sm_90); a barrier then orders them for the other threads. */
static __device__ __forceinline__ void att_fence_proxy_async()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
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

/* ---- tiles ---- */

/* Rows r0 .. r0 + ROWS - 1 of D 16-bit elements (row r at x + base + r * rstride) into the shared
 * tile s, by NT threads; rows from t on are zero. The tile: rows of D + 8 elements (mma.sync's
 * ldmatrix), or where SW the 128-byte swizzled [D / 64][ROWS][64] of the wgmma kernels
 * (attention_wgmma.cu), whose 16-byte piece c of row r sits at piece c ^ (r % 8) of its row. */
template <int D, int ROWS, int NT, bool SW = false>
static __device__ __forceinline__ void att_load_rows(uint16_t *s, const uint16_t *x, int64_t base, int64_t rstride,
                                                     int r0, int t)
{
    constexpr int CH = D / 8;                    /* 16-byte pieces per row */
    constexpr int STEP = NT / CH;                /* rows between a thread's pieces */
    constexpr int N = ROWS / STEP;               /* pieces per thread */
    constexpr int LD = SW ? 64 : D + 8;          /* elements between rows (of a column block) */
    static_assert(NT % CH == 0 && ROWS % STEP == 0, "every thread copies the same number of pieces");
    static_assert(!SW || STEP % 8 == 0, "swizzled: a thread's piece lands at the same place of each of its rows");
    /* Thread i copies piece c = i % CH of rows i / CH, i / CH + STEP, ...: one row address and one
     * step, so that a piece costs an addition, not a 64-bit product. */
    const int r = (int)threadIdx.x / CH, c = (int)threadIdx.x % CH;
    const int64_t step = STEP * rstride;
    const uint16_t *p = x + base + (int64_t)(r0 + r) * rstride + c * 8;
    uint16_t *d = SW ? s + (c / 8) * ROWS * 64 + r * 64 + ((c % 8) ^ (r % 8)) * 8 : s + r * LD + c * 8;
    if (r0 + ROWS <= t) {
#pragma unroll
        for (int n = 0; n < N; n++, p += step) lu_cp_async<16>(d + n * STEP * LD, p);
    } else {
#pragma unroll
        for (int n = 0; n < N; n++, p += step) {
            const bool in = r0 + r + n * STEP < t;
            lu_cp_async_zfill<16>(d + n * STEP * LD, in ? p : x, in);
        }
    }
}

/* Where the copies just issued are the next step's (more): commits them and waits for every
 * earlier copy group, else waits for every group; then (SW) makes the copies visible to wgmma and
 * passes the block barrier, after which the block sees what landed. */
template <bool SW> static __device__ __forceinline__ void att_land(bool more)
{
    if (more) {
        lu_cp_commit();
        lu_cp_wait<1>();
    } else {
        lu_cp_wait<0>();
    }
    if (SW) att_fence_proxy_async();
    __syncthreads();
}

/* Key tile `it` of `ntiles` (keys j0 .. j0 + BK - 1) double-buffered in Ks/Vs: starts the copy
 * of tile it + 1 into the other buffer, then waits until tile it has landed (every earlier copy
 * group when it is the last) and the block sees it. Tiles as att_load_rows<SW> lays them, LD
 * elements a row (D where SW). */
template <int D, int NT, int LD, int BK = ATT_BK, bool SW = false>
static __device__ __forceinline__ void att_prefetch_kv(uint16_t *Ks, uint16_t *Vs, const uint16_t *k, const uint16_t *v,
                                                       int64_t kbase, int64_t rstride, int it, int ntiles, int j0, int tk)
{
    if (it + 1 < ntiles) {
        uint16_t *Kn = Ks + ((it + 1) & 1) * BK * LD, *Vn = Vs + ((it + 1) & 1) * BK * LD;
        att_load_rows<D, BK, NT, SW>(Kn, k, kbase, rstride, j0 + BK, tk);
        att_load_rows<D, BK, NT, SW>(Vn, v, kbase, rstride, j0 + BK, tk);
    }
    att_land<SW>(it + 1 < ntiles);
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

/* ---- the dK/dV backward's query steps ---- */

/* P^T and dS^T = P^T (dP^T - Dsum) in place of S^T and dP^T (16 keys x 8 NB queries as
 * att_gemm_abt leaves them): element (key kr[e / 2], query c = c0 + 8 n + 2 t + (e & 1)), with
 * P = 2^(s scale log2 e - lse[c] log2 e) and Dsum dsm[c]. CHECK: each element's visibility is
 * tested (a key padded, or outside the query's range [lo, hi), gives 0); otherwise every key is
 * visible to every query. The exponential is taken either way and then selected, so that the loop
 * has no branch. */
template <bool CHECK, int NB>
static __device__ __forceinline__ void att_probs_t(float (&s)[NB][4], float (&dp)[NB][4], const int kr[2],
                                                   const bool kpad[2], const int *lo, const int *hi, const float *lse,
                                                   const float *dsm, float sl2, int c0)
{
    const int t = threadIdx.x % 4;
#pragma unroll
    for (int n = 0; n < NB; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int c = c0 + n * 8 + 2 * t + (e & 1), x = e / 2;
            float p = att_exp2(fmaf(s[n][e], sl2, -(lse[c] * ATT_LOG2E)));
            if (CHECK) p = !kpad[x] & (kr[x] >= lo[c]) & (kr[x] < hi[c]) ? p : 0.0f;
            s[n][e] = p;
            dp[n][e] = p * (dp[n][e] - dsm[c]);
        }
}

/* The query side of the dK/dV kernels: steps of QC queries of one query head, every query head of
 * kv head hk's group in turn over the queries [qlo, qlo + nch QC) that may see the block's keys,
 * each staged (Q and dO rows, the rows' key ranges, lse and Dsum) into one of NB buffers while the
 * block works on another. Step st is query head hk rep + st / nch, queries qlo + (st % nch) QC on,
 * in buffer st % NB; steps are staged in order, so the head and chunk are counted, not divided
 * for. begin(st) stages step st + 1 into the buffer step st + 1 - NB used: with NB = 2 the block
 * must pass a barrier after each step before the next begin; with NB = 3 the barrier of begin(st - 1)
 * already held every warp until step st - 2 was done. Shared memory: lo, hi [NB][QC] int and lse,
 * Dsum [NB][QC] f32 at mem (ATT_QSTEP_BYTES), Q and dO [NB][QC][D + 8] (SW: [NB][QC x D], swizzled,
 * att_load_rows, for wgmma) where the kernel puts them. */
#define ATT_QSTEP_BYTES(qc, nb) ((size_t)(nb) * (qc) * 16)
template <int D, int QC, int NT, int NB, bool SW = false> struct att_qsteps {
    static constexpr int LDQ = SW ? D : D + 8; /* elements a buffer's row takes */
    const att_args *a;
    const uint16_t *dO;
    const float *lse, *dsum;
    int *lo_s, *hi_s;
    float *lse_s, *ds_s;
    uint16_t *Qs, *dOs;
    int64_t b, h0;
    int qlo, nch, steps, next_h = 0, next_c = 0;

    /* For the keys [j0, j1) of batch b and kv head hk. */
    __device__ __forceinline__ att_qsteps(unsigned char *mem, const att_args *a_, const void *dO_, const void *lse_,
                                          const float *dsum_, int64_t b_, int64_t hk, int j0, int j1, uint16_t *Qs_)
        : a(a_), dO((const uint16_t *)dO_), lse((const float *)lse_), dsum(dsum_), b(b_)
    {
        lo_s = (int *)mem;
        hi_s = lo_s + NB * QC;
        lse_s = (float *)(hi_s + NB * QC);
        ds_s = lse_s + NB * QC;
        Qs = Qs_;
        dOs = Qs_ + NB * QC * LDQ;
        const int64_t rep = a->hq / a->hkv;
        h0 = hk * rep;
        int64_t ql, qh;
        lu_att_query_range(&a->rg, j0, j1, &ql, &qh);
        qlo = (int)ql;
        nch = qh > ql ? (int)((qh - ql + QC - 1) / QC) : 0;
        steps = (int)rep * nch;
    }

    /* Starts the copies of step st, the next one in order (not committed). */
    __device__ __forceinline__ void stage(int st)
    {
        const int buf = st % NB, i0 = qlo + next_c * QC, tq = (int)a->rg.tq;
        const int64_t h = h0 + next_h, qbase = (b * tq * a->hq + h) * D;
        if (++next_c == nch) {
            next_c = 0;
            next_h++;
        }
        att_load_rows<D, QC, NT, SW>(Qs + buf * QC * LDQ, (const uint16_t *)a->q, qbase, a->hq * D, i0, tq);
        att_load_rows<D, QC, NT, SW>(dOs + buf * QC * LDQ, dO, qbase, a->hq * D, i0, tq);
        att_ranges(a, i0, QC, lo_s + buf * QC, hi_s + buf * QC);
        if ((int)threadIdx.x < QC) {
            /* Copied like the tiles, so that no thread waits for them here (0 past Tq). */
            const int i = i0 + (int)threadIdx.x;
            const int64_t row = (b * a->hq + h) * tq + i;
            lu_cp_async_zfill<4>(lse_s + buf * QC + threadIdx.x, i < tq ? lse + row : lse, i < tq);
            lu_cp_async_zfill<4>(ds_s + buf * QC + threadIdx.x, i < tq ? dsum + row : dsum, i < tq);
        }
    }

    /* Step st's staged rows: the queries' key ranges, lse and Dsum, and the Q and dO tiles. */
    struct view {
        const int *lo, *hi;
        const float *lse, *dsum;
        const uint16_t *q, *dO;
    };
    __device__ __forceinline__ view at(int st) const
    {
        const int buf = st % NB;
        return {lo_s + buf * QC, hi_s + buf * QC, lse_s + buf * QC, ds_s + buf * QC, Qs + buf * QC * LDQ,
                dOs + buf * QC * LDQ};
    }

    /* Whether a query of step view q sees a key of [klo, khi) (the warp's answer), and into *full
     * whether every query sees every key of [wj0, wj0 + 16) with no padding mask. */
    __device__ __forceinline__ bool sees(const view &q, int klo, int khi, int wj0, bool *full) const
    {
        bool see = false, f = !a->mask;
        for (int c = (int)threadIdx.x % LU_CUDA_WARP; c < QC; c += LU_CUDA_WARP) {
            see |= max(q.lo[c], klo) < min(q.hi[c], khi);
            f &= q.lo[c] <= wj0 && wj0 + 16 <= q.hi[c];
        }
        *full = __all_sync(ATT_FULL, f);
        return __any_sync(ATT_FULL, see);
    }

    /* Before step st: stages step st + 1, if any, and waits until step st has landed and the
     * block sees it. */
    __device__ __forceinline__ void begin(int st)
    {
        if (st + 1 < steps) stage(st + 1);
        att_land<SW>(st + 1 < steps);
    }
};

/* Queries per step of the dK/dV kernel: fewer for d 128, whose two 16 x 128 accumulators leave
 * fewer registers for the scores. */
#define ATT_QC(d) ((d) == 128 ? 32 : 64)

/* Query buffers of the dK/dV kernel: three, so that a step needs no barrier at its end. */
#define ATT_DKDV_NB 3


/* Where a dK/dV block of ATT_BK keys works (blockIdx.x): keys j0 .. j0 + ATT_BK - 1 of kv head hk
 * of batch b, whose rows start at kbase in k and v (head dim d); of its warp's 16 from wj0 on, this
 * lane's keys kr[0] = wj0 + g and kr[1] = kr[0] + 8, and whether each is padded. */
typedef struct att_dkdv_block {
    int j0, wj0, kr[2];
    bool kpad[2];
    int64_t hk, b, kbase;
} att_dkdv_block;

static __device__ __forceinline__ att_dkdv_block att_dkdv_block_of(const att_args *a, int d)
{
    const int tk = (int)a->rg.tk, lane = threadIdx.x % LU_CUDA_WARP;
    const int64_t nkt = (tk + ATT_BK - 1) / ATT_BK, bid = blockIdx.x;
    att_dkdv_block r;
    r.j0 = (int)(bid % nkt) * ATT_BK;
    r.hk = bid / nkt % a->hkv;
    r.b = bid / (nkt * a->hkv);
    r.kbase = (r.b * tk * a->hkv + r.hk) * d;
    r.wj0 = r.j0 + (int)threadIdx.x / LU_CUDA_WARP * 16;
    r.kr[0] = r.wj0 + lane / 4;
    r.kr[1] = r.kr[0] + 8;
    for (int x = 0; x < 2; x++) r.kpad[x] = att_padded(a, r.b, r.kr[x], tk);
    return r;
}

/* dK = scale acc_k and dV = acc_v of a warp's 16 keys (this lane's rows kr[0], kr[1]; either
 * output may be NULL), batch b, kv head hk. */
template <bool BF16, int D>
static __device__ __forceinline__ void att_store_dkdv(const float (&acc_k)[D / 8][4], const float (&acc_v)[D / 8][4],
                                                      const int kr[2], const att_args *a, int64_t b, int64_t hk,
                                                      void *dk, void *dv)
{
    const int t = threadIdx.x % 4, tk = (int)a->rg.tk;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        if (kr[x] >= tk) continue;
        const int64_t off = ((b * tk + kr[x]) * a->hkv + hk) * D;
        if (dk) {
            uint32_t *row = (uint32_t *)((uint16_t *)dk + off);
#pragma unroll
            for (int n = 0; n < D / 8; n++)
                row[n * 4 + t] = att_pack_out<BF16>(acc_k[n][2 * x] * a->scale, acc_k[n][2 * x + 1] * a->scale);
        }
        if (dv) {
            uint32_t *row = (uint32_t *)((uint16_t *)dv + off);
#pragma unroll
            for (int n = 0; n < D / 8; n++) row[n * 4 + t] = att_pack_out<BF16>(acc_v[n][2 * x], acc_v[n][2 * x + 1]);
        }
    }
}

/* ---- the dQ backward ---- */

/* lse in base-2 units and Dsum of rows g and g + 8 of a warp's 16 from r0 (query head h, batch
 * b); rows past Tq see nothing. */
static __device__ __forceinline__ void att_dq_rows_state(const att_args *a, const void *lse, const float *dsum,
                                                         int64_t b, int64_t h, int r0, float lse2[2], float ds[2])
{
    const int g = (int)threadIdx.x % LU_CUDA_WARP / 4, tq = (int)a->rg.tq;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int i = r0 + g + 8 * x;
        const int64_t row = (b * a->hq + h) * tq + i;
        lse2[x] = i < tq ? att_load(lse, a->lse_dt, row) * ATT_LOG2E : 0.0f;
        ds[x] = i < tq ? dsum[row] : 0.0f;
    }
}

/* dS = P (dP - Dsum) in place of the scores s (a warp's 16 rows x BK keys from j0, unscaled, as
 * accumulator fragments), P = 2^(s scale log2 e - lse log2 e) and 0 where rows may not see a key. */
template <int BK>
static __device__ __forceinline__ void att_dscores(float (&s)[BK / 8][4], const float (&dp)[BK / 8][4],
                                                   const float lse2[2], const float ds[2], const att_rows *rows, int j0,
                                                   const att_args *a, int64_t b, int tk, float sl2)
{
#pragma unroll
    for (int n = 0; n < BK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[n][e] = fmaf(s[n][e], sl2, -lse2[e / 2]);
    if (!att_rows_full<BK>(rows, j0, a)) att_mask_scores<BK>(s, rows, j0, a, b, tk);
#pragma unroll
    for (int n = 0; n < BK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float p = att_exp2(s[n][e]);
            s[n][e] = p * (dp[n][e] - ds[e / 2]);
        }
}

/* dQ = scale acc of a warp's 16 rows from r0 (query head h, batch b). */
template <bool BF16, int D>
static __device__ __forceinline__ void att_store_dq(const float (&acc)[D / 8][4], const att_args *a, void *dq,
                                                    int64_t b, int64_t h, int r0)
{
    const int lane = (int)threadIdx.x % LU_CUDA_WARP, g = lane / 4, t = lane % 4, tq = (int)a->rg.tq;
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int i = r0 + g + 8 * x;
        if (i >= tq) continue;
        uint32_t *row = (uint32_t *)((uint16_t *)dq + ((b * tq + i) * a->hq + h) * D);
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            row[n * 4 + t] = att_pack_out<BF16>(acc[n][2 * x] * a->scale, acc[n][2 * x + 1] * a->scale);
    }
}

#endif
