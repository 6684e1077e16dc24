/* attention_mma.cu - ATTENTION on tensor cores for bf16 and f16 with D == Dv in {64, 128}:
 * FlashAttention-2 (arXiv 2307.08691, Alg. 1 and 2) on mma.sync m16n8k16 (16-bit operands, f32
 * accumulation), with the semantics of the general kernels in attention.cu (grouped-query heads,
 * causal alignment of the last query with the last key, key-padding masks, packed sequences,
 * o = 0 and lse = -inf for rows that see no key) and their determinism: no atomics, every sum in
 * a fixed order.
 *
 * On a Hopper GPU the wgmma kernels of attention_wgmma.cu take the forward, dK/dV and dQ
 * (lu_att_wgmma_usable); Dsum stays here. Forward: a warp owns 32 query rows (16, its Q fragments
 * then in registers, where LUTHIER_ATT_ROWS_PER_WARP=16: att_rows_per_warp); tiles of 64 keys and
 * values come through shared memory by cp.async, double-buffered; S = Q K^T and the online softmax
 * stay in registers, and P, rounded to the input dtype as FlashAttention-2 does, is the A operand
 * of O += P V; a warp rescales its accumulators only when a row's maximum grows by more than
 * ATT_SLACK (FlashAttention-4's conditional rescaling), so p may reach 2^ATT_SLACK. Backward: one
 * block per 64 keys (a warp per 16) accumulates dK = scale dS^T Q and dV = P^T dO over every query
 * of the kv head's query heads, P^T recomputed from lse; one block per 64 queries accumulates dQ =
 * scale dS K. dS = P (dP - Dsum) is rounded like P. Variants with wider warp tiles (128 keys a
 * block for dK/dV, 32 queries a warp for dQ) are picked by environment variables until a GPU that
 * runs these kernels by default ranks them (att_dkdv_keys, att_dq_rows_per_warp). Tiles that no
 * row of a warp can see are skipped; partly visible ones are masked per element, and rows or keys
 * past the ends are zero-filled on load and never stored.
 *
 * The loops are bound by instruction issue as much as by the tensor cores (an m16n8k16 MMA keeps a
 * sub-partition's tensor unit a few cycles; SASS of the d 128 forward had about 5.5 instructions
 * an MMA): exponentials are MUFU.EX2 alone (att_exp2), the scale is folded into their FFMA, tile
 * copies step a pointer, visibility is selected rather than branched on.
 *
 * Fragments (PTX ISA, "mma.m16n8k16"): lane 4 g + t holds of the 16 x 8 f32 accumulator the
 * elements (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1), in that order; of the 16 x 16 A
 * operand the pairs at (g, 2t), (g + 8, 2t), (g, 2t + 8), (g + 8, 2t + 8); of the 16 x 8 B operand
 * (k x n) the pairs (2t, g) and (2t + 8, g) along k. So an accumulator pair of key blocks 2kk and
 * 2kk + 1 is the A operand of keys 16kk .. 16kk + 15 as it stands. ldmatrix gives A from a
 * row-major tile, B from a tile stored [n][k] (K for S = Q K^T), and with .trans B from a tile
 * stored [k][n] (V for P V). Tile rows are padded by 8 elements (16 bytes), so that the 8 rows of
 * an 8 x 8 matrix fall in 8 different 16-byte bank groups. */
#include "attention_mma.cuh"

extern __shared__ __align__(16) unsigned char att_mma_smem[];

/* ---- tiles and fragments ---- */

/* The A operand of rows 0 .. 15 and columns c0 .. c0 + 15 of a row-major tile (row stride LD). */
template <int LD> static __device__ __forceinline__ void att_frag_a(uint32_t r[4], const uint16_t *s, int c0)
{
    const int lane = threadIdx.x % LU_CUDA_WARP;
    lu_ldsm(r, s + (lane & 15) * LD + c0 + (lane >> 4) * 8);
}

/* B operands of n blocks n0 .. n0 + 7 (r[0], r[1]) and n0 + 8 .. n0 + 15 (r[2], r[3]), k = k0 ..
 * k0 + 15, from a tile stored [n][k]. */
template <int LD> static __device__ __forceinline__ void att_frag_b(uint32_t r[4], const uint16_t *s, int n0, int k0)
{
    const int lane = threadIdx.x % LU_CUDA_WARP;
    lu_ldsm(r, s + (n0 + (lane & 7) + (lane >> 4) * 8) * LD + k0 + ((lane >> 3) & 1) * 8);
}

/* The same from a tile stored [k][n]. */
template <int LD> static __device__ __forceinline__ void att_frag_bt(uint32_t r[4], const uint16_t *s, int n0, int k0)
{
    const int lane = threadIdx.x % LU_CUDA_WARP;
    lu_ldsm_t(r, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8);
}

/* acc[mt] (16 x 8 NB) += A_mt B^T over K = 16 KB columns for MT row tiles: A_mt rows 16 mt ..
 * 16 mt + 15 of a [16 MT+][LD] tile, B rows 0 .. 8 NB - 1 of a [n][k] tile. Each B fragment read
 * from shared memory serves the MT tiles. */
template <bool BF16, int LD, int MT, int NB, int KB>
static __device__ __forceinline__ void att_gemm_abt_mt(float (*acc)[NB][4], const uint16_t *A, const uint16_t *B)
{
#pragma unroll
    for (int kk = 0; kk < KB; kk++) {
        uint32_t fa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) att_frag_a<LD>(fa[mt], A + mt * 16 * LD, kk * 16);
#pragma unroll
        for (int np = 0; np < NB / 2; np++) {
            uint32_t fb[4];
            att_frag_b<LD>(fb, B, np * 16, kk * 16);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                lu_mma<BF16>(acc[mt][2 * np], fa[mt], fb[0], fb[1]);
                lu_mma<BF16>(acc[mt][2 * np + 1], fa[mt], fb[2], fb[3]);
            }
        }
    }
}

/* The same for one row tile: acc (16 x 8 NB) += A B^T. */
template <bool BF16, int LD, int NB, int KB>
static __device__ __forceinline__ void att_gemm_abt(float acc[][4], const uint16_t *A, const uint16_t *B)
{
    att_gemm_abt_mt<BF16, LD, 1, NB, KB>(reinterpret_cast<float (*)[NB][4]>(acc), A, B);
}

/* The backward's two score products from zero for MT row tiles: s = A B^T and dp = C E^T (16 MT
 * x 8 NB each over D columns, operands as att_gemm_abt_mt takes them). */
template <bool BF16, int LD, int MT, int NB, int D>
static __device__ __forceinline__ void att_gemm_pair_mt(float (*s)[NB][4], float (*dp)[NB][4], const uint16_t *A,
                                                        const uint16_t *B, const uint16_t *C, const uint16_t *E)
{
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[mt][n][e] = dp[mt][n][e] = 0.0f;
    att_gemm_abt_mt<BF16, LD, MT, NB, D / 16>(s, A, B);
    att_gemm_abt_mt<BF16, LD, MT, NB, D / 16>(dp, C, E);
}

/* The same for one row tile. */
template <bool BF16, int LD, int NB, int D>
static __device__ __forceinline__ void att_gemm_pair(float s[][4], float dp[][4], const uint16_t *A, const uint16_t *B,
                                                     const uint16_t *C, const uint16_t *E)
{
    att_gemm_pair_mt<BF16, LD, 1, NB, D>(reinterpret_cast<float (*)[NB][4]>(s), reinterpret_cast<float (*)[NB][4]>(dp),
                                         A, B, C, E);
}

/* acc[mt] (16 x D) += X[mt] B for MT row tiles: X[mt] the 16 x 16 KB matrix whose accumulator
 * fragments are x[mt] (as att_gemm_abt leaves them), rounded to 16 bits; B rows 0 .. 16 KB - 1 of
 * a [k][n] tile. Each B fragment read from shared memory serves the MT tiles. */
template <bool BF16, int LD, int D, int KB, int MT>
static __device__ __forceinline__ void att_gemm_xb(float (*acc)[D / 8][4], float (*x)[2 * KB][4], const uint16_t *B)
{
#pragma unroll
    for (int kk = 0; kk < KB; kk++) {
        uint32_t fa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            fa[mt][0] = att_pack<BF16>(x[mt][2 * kk][0], x[mt][2 * kk][1]);
            fa[mt][1] = att_pack<BF16>(x[mt][2 * kk][2], x[mt][2 * kk][3]);
            fa[mt][2] = att_pack<BF16>(x[mt][2 * kk + 1][0], x[mt][2 * kk + 1][1]);
            fa[mt][3] = att_pack<BF16>(x[mt][2 * kk + 1][2], x[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            uint32_t fb[4];
            att_frag_bt<LD>(fb, B, dp * 16, kk * 16);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                lu_mma<BF16>(acc[mt][2 * dp], fa[mt], fb[0], fb[1]);
                lu_mma<BF16>(acc[mt][2 * dp + 1], fa[mt], fb[2], fb[3]);
            }
        }
    }
}

/* acc[mt] (16 x 8 NB) += A_mt B over k = k0 .. k0 + 15 for MT row tiles: A_mt rows 16 mt .. 16 mt
 * + 15 of a row-major [16 MT+][LDA] tile, B a [k][n] tile (row stride LDB) from column n0 on. */
template <bool BF16, int LDA, int LDB, int MT, int NB>
static __device__ __forceinline__ void att_gemm_ab_k16(float (*acc)[NB][4], const uint16_t *A, const uint16_t *B,
                                                       int k0, int n0)
{
    uint32_t fa[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) att_frag_a<LDA>(fa[mt], A + mt * 16 * LDA, k0);
#pragma unroll
    for (int np = 0; np < NB / 2; np++) {
        uint32_t fb[4];
        att_frag_bt<LDB>(fb, B, n0 + np * 16, k0);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            lu_mma<BF16>(acc[mt][2 * np], fa[mt], fb[0], fb[1]);
            lu_mma<BF16>(acc[mt][2 * np + 1], fa[mt], fb[2], fb[3]);
        }
    }
}

/* ---- forward ---- */

/* Shared memory: row_lo, row_hi [BQ] int; Q [BQ][D + 8]; K, V [2][ATT_BK][D + 8] (16-bit), with
 * BQ = warps * 16 * mt queries. */
static size_t att_fwd_smem(int d, int warps, int mt)
{
    const int bq = warps * 16 * mt;
    return (size_t)bq * 2 * sizeof(int) + (size_t)(bq + 4 * ATT_BK) * (d + 8) * 2;
}

/* One block of WARPS warps per (WARPS * 16 * MT queries, query head, batch), the tiles with the
 * most keys (causal: the last) first. A warp owns MT tiles of 16 queries. MT = 1 keeps the warp's
 * Q fragments in registers; MT = 2 (FlashAttention-2's tiling) uses each K and V fragment it
 * reads from shared memory for two MMAs, halving that traffic per MMA, and reads its Q fragments
 * again for every key tile, since registers cannot hold them beside two accumulators. Either way
 * every row's arithmetic is the same, in the same order. o [B,Tq,Hq,D], lse [B,Hq,Tq]. */
template <bool BF16, int D, int WARPS, int MT>
static __global__ void __launch_bounds__(WARPS * LU_CUDA_WARP) att_forward_mma_kernel(att_args a, void *o, void *lse)
{
    constexpr int BQ = WARPS * 16 * MT, LD = D + 8, NT = WARPS * LU_CUDA_WARP;
    static_assert(BQ <= NT, "att_ranges gives a thread each row");
    const int lane = threadIdx.x % LU_CUDA_WARP, wp = threadIdx.x / LU_CUDA_WARP, g = lane / 4;
    int *row_lo = (int *)att_mma_smem, *row_hi = row_lo + BQ;
    uint16_t *Qs = (uint16_t *)(row_hi + BQ), *Ks = Qs + BQ * LD, *Vs = Ks + 2 * ATT_BK * LD;

    const int tk = (int)a.rg.tk;
    const att_fwd_block fb = att_fwd_block_of(&a, BQ, D);
    const int i0 = fb.i0;
    const int64_t kbase = fb.kbase;
    const uint16_t *k = (const uint16_t *)a.k, *v = (const uint16_t *)a.v;

    att_ranges(&a, i0, BQ, row_lo, row_hi);
    att_load_rows<D, BQ, NT>(Qs, (const uint16_t *)a.q, fb.qbase, a.hq * D, i0, (int)a.rg.tq);
    __syncthreads();
    int klo, khi;
    att_union(row_lo, row_hi, BQ, tk, &klo, &khi);
    const int ntiles = khi > klo ? (khi - klo + ATT_BK - 1) / ATT_BK : 0;
    if (ntiles > 0) {
        att_load_rows<D, ATT_BK, NT>(Ks, k, kbase, a.hkv * D, klo, tk);
        att_load_rows<D, ATT_BK, NT>(Vs, v, kbase, a.hkv * D, klo, tk);
    }
    lu_cp_commit();

    /* Softmax state of rows g and g + 8 of each tile in base-2 units (s * scale * log2 e), as every
     * lane of the row's quad holds it; l sums this lane's columns only until the end. */
    const float sl2 = a.scale * ATT_LOG2E;
    float m[MT][2], l[MT][2], acc[MT][D / 8][4];
    uint32_t qf[MT == 1 ? D / 16 : 1][4]; /* MT == 1: the warp's Q fragments, loaded once */
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < D / 8; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
    }
    for (int it = 0; it < ntiles; it++) {
        const int j0 = klo + it * ATT_BK;
        att_prefetch_kv<D, NT, LD>(Ks, Vs, k, v, kbase, a.hkv * D, it, ntiles, j0, tk);
        if (MT == 1 && it == 0)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) att_frag_a<LD>(qf[MT == 1 ? kk : 0], Qs + wp * 16 * LD, kk * 16);
        const uint16_t *Kt = Ks + (it & 1) * ATT_BK * LD, *Vt = Vs + (it & 1) * ATT_BK * LD;
        /* The rows' key ranges, read again each tile (from shared memory) rather than held. */
        att_rows rows[MT];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) rows[mt] = att_rows_of(row_lo, row_hi, (wp * MT + mt) * 16 + g);
        bool see = false;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) see |= att_rows_see(&rows[mt], j0);
        if (see) {
            float s[MT][ATT_BK / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int n = 0; n < ATT_BK / 8; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t qa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    if (MT == 1)
#pragma unroll
                        for (int r = 0; r < 4; r++) qa[mt][r] = qf[MT == 1 ? kk : 0][r];
                    else
                        att_frag_a<LD>(qa[mt], Qs + (wp * MT + mt) * 16 * LD, kk * 16);
                }
#pragma unroll
                for (int np = 0; np < ATT_BK / 16; np++) {
                    uint32_t fb[4];
                    att_frag_b<LD>(fb, Kt, np * 16, kk * 16);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        lu_mma<BF16>(s[mt][2 * np], qa[mt], fb[0], fb[1]);
                        lu_mma<BF16>(s[mt][2 * np + 1], qa[mt], fb[2], fb[3]);
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                att_softmax_tile<D>(s[mt], m[mt], l[mt], acc[mt], &rows[mt], j0, &a, fb.b, tk, sl2);
            att_gemm_xb<BF16, LD, D, ATT_BK / 16, MT>(acc, s, Vt);
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }
    lu_cp_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
        att_store_rows<BF16, D>(acc[mt], m[mt], l[mt], &a, o, lse, fb.b, fb.h, i0 + (wp * MT + mt) * 16);
}

/* ---- backward: Dsum ---- */

#define ATT_DSUM_THREADS 128

/* Eight 16-bit values from p (16-byte aligned) as floats. */
template <bool BF16> static __device__ __forceinline__ void att_ld8(const uint16_t *p, float v[8])
{
    const uint4 a = *(const uint4 *)p;
    const uint32_t u[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        v[2 * k] = BF16 ? lu_dev_bf16_to_f32((uint16_t)u[k]) : lu_dev_f16_to_f32((uint16_t)u[k]);
        v[2 * k + 1] = BF16 ? lu_dev_bf16_to_f32((uint16_t)(u[k] >> 16)) : lu_dev_f16_to_f32((uint16_t)(u[k] >> 16));
    }
}

/* Dsum [B,Hq,Tq] = rowsum(dO * O) for rows of D 16-bit elements: a block per (batch, query head)
 * in x and per ATT_DSUM_THREADS / (D / 8) queries in y (striding on where Tq needs more), a row
 * taking D / 8 lanes that load 8 elements of each by one 16-byte access and sum their products in
 * order, then a butterfly over the row's lanes. No 64-bit division, unlike the general kernel's
 * row-per-warp loop (attention.cu), whose 2-byte loads and index arithmetic outweighed the bytes. */
template <bool BF16, int D>
static __global__ void __launch_bounds__(ATT_DSUM_THREADS)
    att_dsum_mma_kernel(att_args a, const void *dO, const void *o, float *dsum)
{
    constexpr int L = D / 8, RPB = ATT_DSUM_THREADS / L; /* lanes a row, rows a block */
    const int64_t h = blockIdx.x % (unsigned)a.hq, b = blockIdx.x / (unsigned)a.hq, tq = a.rg.tq;
    const int r = (int)threadIdx.x / L, li = (int)threadIdx.x % L;
    for (int64_t i0 = (int64_t)blockIdx.y * RPB; i0 < tq; i0 += (int64_t)gridDim.y * RPB) {
        const int64_t i = i0 + r;
        float acc = 0.0f;
        if (i < tq) {
            const int64_t off = ((b * tq + i) * a.hq + h) * D + li * 8;
            float x[8], y[8];
            att_ld8<BF16>((const uint16_t *)dO + off, x);
            att_ld8<BF16>((const uint16_t *)o + off, y);
#pragma unroll
            for (int e = 0; e < 8; e++) acc = fmaf(x[e], y[e], acc);
        }
#pragma unroll
        for (int m = L / 2; m > 0; m /= 2) acc += __shfl_xor_sync(ATT_FULL, acc, m);
        if (li == 0 && i < tq) dsum[(b * a.hq + h) * tq + i] = acc;
    }
}

template <bool BF16, int D> static lu_status att_dsum_launch(const att_args &a, const void *dO, const void *o, float *dsum)
{
    constexpr int RPB = ATT_DSUM_THREADS / (D / 8);
    const int64_t bh = a.b * a.hq, ty = (a.rg.tq + RPB - 1) / RPB;
    if (bh == 0 || ty == 0) return LU_OK;
    unsigned grid = 0;
    LU_TRY(att_grid(bh, "the Dsum pass", &grid));
    att_dsum_mma_kernel<BF16, D><<<dim3(grid, (unsigned)(ty < 65535 ? ty : 65535)), ATT_DSUM_THREADS>>>(a, dO, o, dsum);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- backward: dQ ---- */

/* Shared memory: row_lo, row_hi [BQ] int; Q, dO [BQ][D + 8]; K, V [2][BK][D + 8] (16-bit), with
 * BQ = ATT_BWD_WARPS * 16 * mt queries a block and bk keys a tile. */
static size_t att_dq_smem(int d, int mt, int bk)
{
    const int bq = ATT_BWD_WARPS * 16 * mt;
    return (size_t)bq * 2 * sizeof(int) + (size_t)(2 * bq + 4 * bk) * (d + 8) * 2;
}

/* One block of 4 warps per (ATT_BWD_WARPS * 16 * MT queries, query head, batch): dQ = scale sum_j
 * dS_ij k_j with dS = P (dP - Dsum), P = exp(s scale - lse), dP = dO V^T, over the keys the
 * queries see, BK keys a tile. A warp owns MT tiles of 16 queries: MT = 1 with tiles of 64 keys,
 * or MT = 2 (the forward's wider tiling) with tiles of 32, where each K, V fragment read from
 * shared memory serves both tiles' MMAs and the score fragments need no more registers. */
template <bool BF16, int D, int MT, int BK>
static __global__ void __launch_bounds__(ATT_BWD_WARPS * LU_CUDA_WARP)
    att_backward_dq_mma_kernel(att_args a, const void *dO, const void *lse, const float *dsum, void *dq)
{
    constexpr int BQ = ATT_BWD_WARPS * 16 * MT, LD = D + 8, NT = ATT_BWD_WARPS * LU_CUDA_WARP;
    static_assert(BQ <= NT, "att_ranges gives a thread each row");
    const int lane = threadIdx.x % LU_CUDA_WARP, wp = threadIdx.x / LU_CUDA_WARP, g = lane / 4;
    int *row_lo = (int *)att_mma_smem, *row_hi = row_lo + BQ;
    uint16_t *Qs = (uint16_t *)(row_hi + BQ), *dOs = Qs + BQ * LD, *Ks = dOs + BQ * LD, *Vs = Ks + 2 * BK * LD;

    const int tq = (int)a.rg.tq, tk = (int)a.rg.tk;
    const att_fwd_block fb = att_fwd_block_of(&a, BQ, D);
    const int i0 = fb.i0;
    const int64_t h = fb.h, b = fb.b, kbase = fb.kbase;
    const uint16_t *k = (const uint16_t *)a.k, *v = (const uint16_t *)a.v;

    att_ranges(&a, i0, BQ, row_lo, row_hi);
    att_load_rows<D, BQ, NT>(Qs, (const uint16_t *)a.q, fb.qbase, a.hq * D, i0, tq);
    att_load_rows<D, BQ, NT>(dOs, (const uint16_t *)dO, fb.qbase, a.hq * D, i0, tq);
    __syncthreads();
    int klo, khi;
    att_union(row_lo, row_hi, BQ, tk, &klo, &khi);
    const int ntiles = khi > klo ? (khi - klo + BK - 1) / BK : 0;
    att_rows rows[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) rows[mt] = att_rows_of(row_lo, row_hi, (wp * MT + mt) * 16 + g);
    if (ntiles > 0) {
        att_load_rows<D, BK, NT>(Ks, k, kbase, a.hkv * D, klo, tk);
        att_load_rows<D, BK, NT>(Vs, v, kbase, a.hkv * D, klo, tk);
    }
    lu_cp_commit();

    const float sl2 = a.scale * ATT_LOG2E;
    float lse2[MT][2], ds[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) att_dq_rows_state(&a, lse, dsum, b, h, i0 + (wp * MT + mt) * 16, lse2[mt], ds[mt]);
    float acc[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < D / 8; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
    for (int it = 0; it < ntiles; it++) {
        const int j0 = klo + it * BK;
        att_prefetch_kv<D, NT, LD, BK>(Ks, Vs, k, v, kbase, a.hkv * D, it, ntiles, j0, tk);
        const uint16_t *Kt = Ks + (it & 1) * BK * LD, *Vt = Vs + (it & 1) * BK * LD;
        bool see = false;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) see |= att_rows_see<BK>(&rows[mt], j0);
        if (see) {
            float s[MT][BK / 8][4], dp[MT][BK / 8][4];
            att_gemm_pair_mt<BF16, LD, MT, BK / 8, D>(s, dp, Qs + wp * MT * 16 * LD, Kt, dOs + wp * MT * 16 * LD, Vt);
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                att_dscores<BK>(s[mt], dp[mt], lse2[mt], ds[mt], &rows[mt], j0, &a, b, tk, sl2);
            att_gemm_xb<BF16, LD, D, BK / 16, MT>(acc, s, Kt);
        }
        __syncthreads();
    }
    lu_cp_wait<0>();
#pragma unroll
    for (int mt = 0; mt < MT; mt++) att_store_dq<BF16, D>(acc[mt], &a, dq, b, h, i0 + (wp * MT + mt) * 16);
}

/* ---- backward: dK, dV ---- */

/* Shared memory: att_qsteps' ranges, lse and Dsum; K, V [ATT_BK][D + 8]; Q, dO [NB][QC][D + 8]
 * (16-bit). */
static size_t att_dkdv_smem(int d)
{
    return ATT_QSTEP_BYTES(ATT_QC(d), ATT_DKDV_NB) + (size_t)(2 * ATT_BK + 2 * ATT_DKDV_NB * ATT_QC(d)) * (d + 8) * 2;
}

/* One block of 4 warps per (ATT_BK keys, kv head, batch), a warp per 16 keys: dV = P^T dO and
 * dK = scale dS^T Q over every query that may see the keys, of each query head of the group in
 * turn, QC queries a step. */
template <bool BF16, int D>
static __global__ void __launch_bounds__(ATT_BWD_WARPS * LU_CUDA_WARP)
    att_backward_dkdv_mma_kernel(att_args a, const void *dO, const void *lse, const float *dsum, void *dk, void *dv)
{
    constexpr int QC = ATT_QC(D), LD = D + 8, NT = ATT_BWD_WARPS * LU_CUDA_WARP;
    const int wp = threadIdx.x / LU_CUDA_WARP;
    uint16_t *Ks = (uint16_t *)(att_mma_smem + ATT_QSTEP_BYTES(QC, ATT_DKDV_NB)), *Vs = Ks + ATT_BK * LD;

    const int tk = (int)a.rg.tk;
    const att_dkdv_block kb = att_dkdv_block_of(&a, D);
    att_qsteps<D, QC, NT, ATT_DKDV_NB> qs(att_mma_smem, &a, dO, lse, dsum, kb.b, kb.hk, kb.j0,
                                          min(kb.j0 + ATT_BK, tk), Vs + ATT_BK * LD);
    att_load_rows<D, ATT_BK, NT>(Ks, (const uint16_t *)a.k, kb.kbase, a.hkv * D, kb.j0, tk);
    att_load_rows<D, ATT_BK, NT>(Vs, (const uint16_t *)a.v, kb.kbase, a.hkv * D, kb.j0, tk);
    if (qs.steps > 0) qs.stage(0);
    lu_cp_commit();

    const float sl2 = a.scale * ATT_LOG2E;
    float acc_k[D / 8][4] = {}, acc_v[D / 8][4] = {};
    for (int st = 0; st < qs.steps; st++) {
        qs.begin(st);
        const auto q = qs.at(st);
        bool full;
        if (qs.sees(q, kb.wj0, kb.wj0 + 16, kb.wj0, &full)) {
            /* S^T and dP^T (16 keys x QC queries) = K_w Q^T and V_w dO^T. */
            float s[QC / 8][4], dp[QC / 8][4];
            att_gemm_pair<BF16, LD, QC / 8, D>(s, dp, Ks + wp * 16 * LD, q.q, Vs + wp * 16 * LD, q.dO);
            if (full) att_probs_t<false>(s, dp, kb.kr, kb.kpad, q.lo, q.hi, q.lse, q.dsum, sl2, 0);
            else att_probs_t<true>(s, dp, kb.kr, kb.kpad, q.lo, q.hi, q.lse, q.dsum, sl2, 0);
            att_gemm_xb<BF16, LD, D, QC / 16, 1>(&acc_v, &s, q.dO);
            att_gemm_xb<BF16, LD, D, QC / 16, 1>(&acc_k, &dp, q.q);
        }
        /* No barrier: this buffer is refilled at begin(st + 2), after the barrier of begin(st + 1). */
    }
    lu_cp_wait<0>();
    att_store_dkdv<BF16, D>(acc_k, acc_v, kb.kr, &a, kb.b, kb.hk, dk, dv);
}

/* ---- backward: dK, dV over 128 keys a block ----
 *
 * The kernel above gives each warp 16 keys, so every Q or dO fragment it reads from shared memory
 * serves two MMAs. Here a block of 8 warps takes 128 keys and 64 queries a step, in two phases:
 * for the scores, warp (kg, h) computes S^T and dP^T of keys 32 kg .. 32 kg + 31 and queries
 * 32 h .. 32 h + 31, and writes P^T and dS^T (rounded to 16 bits, as the kernel above rounds its
 * A operands) to shared memory; for the products, warp (kg, h) accumulates dV = P^T dO and dK =
 * dS^T Q of the same 32 keys over columns D/2 h .. D/2 h + D/2 - 1 from them. Each fragment read
 * then serves four MMAs or more in both phases, and the block reads its query tiles from global
 * memory once per 128 keys. Every (key, query) term and each accumulator's order over the queries
 * are those of the kernel above; a warp's query half that sees none of its keys is skipped. */
#define ATT_WIDE_BN 128   /* keys per block */
#define ATT_WIDE_QC 64    /* queries per step */
#define ATT_WIDE_WARPS 8

/* Shared memory: att_qsteps' ranges, lse and Dsum; visibility [4][2] int; K, V [BN][D + 8];
 * Q, dO [2][QC][D + 8]; P^T, dS^T [BN][QC + 8] (16-bit). */
static size_t att_dkdv_wide_smem(int d)
{
    return ATT_QSTEP_BYTES(ATT_WIDE_QC, 2) + 8 * sizeof(int) +
           (size_t)(2 * ATT_WIDE_BN + 4 * ATT_WIDE_QC) * (d + 8) * 2 + (size_t)2 * ATT_WIDE_BN * (ATT_WIDE_QC + 8) * 2;
}

/* One block per (BN keys, kv head, batch), the blocks of the first keys (which, causal, the most
 * queries see) launched first; otherwise as att_backward_dkdv_mma_kernel. */
template <bool BF16, int D>
static __global__ void __launch_bounds__(ATT_WIDE_WARPS * LU_CUDA_WARP, 1)
    att_backward_dkdv_wide_kernel(att_args a, const void *dO, const void *lse, const float *dsum, void *dk, void *dv)
{
    constexpr int QC = ATT_WIDE_QC, BN = ATT_WIDE_BN, LD = D + 8, LP = QC + 8, NT = ATT_WIDE_WARPS * LU_CUDA_WARP;
    constexpr int DH = D / 2; /* columns of dK and dV a warp accumulates */
    const int lane = threadIdx.x % LU_CUDA_WARP, wp = threadIdx.x / LU_CUDA_WARP, g = lane / 4, t = lane % 4;
    const int kg = wp % 4, half = wp / 4;
    int *vis = (int *)(att_mma_smem + ATT_QSTEP_BYTES(QC, 2));
    uint16_t *Ks = (uint16_t *)(vis + 8), *Vs = Ks + BN * LD, *Qs = Vs + BN * LD, *dOs = Qs + 2 * QC * LD;
    uint16_t *Ps = dOs + 2 * QC * LD, *dSs = Ps + BN * LP;

    const int tk = (int)a.rg.tk;
    const int64_t bid = blockIdx.x, bh = a.b * a.hkv;
    const int j0 = (int)(bid / bh) * BN;
    const int64_t hk = bid % bh % a.hkv, b = bid % bh / a.hkv, kbase = (b * tk * a.hkv + hk) * D;
    att_qsteps<D, QC, NT, 2> qs(att_mma_smem, &a, dO, lse, dsum, b, hk, j0, min(j0 + BN, tk), Qs);
    att_load_rows<D, BN, NT>(Ks, (const uint16_t *)a.k, kbase, a.hkv * D, j0, tk);
    att_load_rows<D, BN, NT>(Vs, (const uint16_t *)a.v, kbase, a.hkv * D, j0, tk);
    if (qs.steps > 0) qs.stage(0);
    lu_cp_commit();

    /* The warp's keys [wj0, wj0 + 32); this lane's kr[mt][x] = wj0 + 16 mt + g + 8 x. */
    const int wj0 = j0 + 32 * kg;
    int kr[2][2];
    bool kpad[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int x = 0; x < 2; x++) {
            kr[mt][x] = wj0 + 16 * mt + g + 8 * x;
            kpad[mt][x] = att_padded(&a, b, kr[mt][x], tk);
        }
    const float sl2 = a.scale * ATT_LOG2E;
    float acc_k[2][DH / 8][4], acc_v[2][DH / 8][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int n = 0; n < DH / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc_k[mt][n][e] = acc_v[mt][n][e] = 0.0f;
    /* The warp's 32 x 32 blocks of P^T and dS^T as 32-bit pairs, LP / 2 words a row. */
    uint32_t *Pw = (uint32_t *)(Ps + 32 * kg * LP + 32 * half), *dSw = (uint32_t *)(dSs + 32 * kg * LP + 32 * half);
    for (int st = 0; st < qs.steps; st++) {
        qs.begin(st);
        const int buf = st & 1;
        const int *lo = qs.lo_s + buf * QC, *hi = qs.hi_s + buf * QC;
        const float *lse_c = qs.lse_s + buf * QC, *dsm = qs.ds_s + buf * QC;
        const uint16_t *Qt = Qs + buf * QC * LD, *dOt = dOs + buf * QC * LD;
        /* Scores of the warp's keys and queries 32 half + [0, 32), lane c checking query 32 half + c. */
        const int cq = 32 * half + lane;
        const bool see = __any_sync(ATT_FULL, max(lo[cq], wj0) < min(hi[cq], wj0 + 32));
        if (see) {
            const bool full = __all_sync(ATT_FULL, !a.mask && lo[cq] <= wj0 && wj0 + 32 <= hi[cq]);
            /* S^T and dP^T (32 keys x 32 queries) = K_w Q_h^T and V_w dO_h^T. */
            float s[2][4][4], dp[2][4][4];
            att_gemm_pair_mt<BF16, LD, 2, 4, D>(s, dp, Ks + 32 * kg * LD, Qt + 32 * half * LD, Vs + 32 * kg * LD,
                                                dOt + 32 * half * LD);
            /* P^T and dS^T of each 16 keys, then stored as 16-bit pairs. */
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                if (full) att_probs_t<false>(s[mt], dp[mt], kr[mt], kpad[mt], lo, hi, lse_c, dsm, sl2, 32 * half);
                else att_probs_t<true>(s[mt], dp[mt], kr[mt], kpad[mt], lo, hi, lse_c, dsm, sl2, 32 * half);
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int x = 0; x < 2; x++) {
                        const int w = (16 * mt + g + 8 * x) * (LP / 2) + n * 4 + t;
                        Pw[w] = att_pack<BF16>(s[mt][n][2 * x], s[mt][n][2 * x + 1]);
                        dSw[w] = att_pack<BF16>(dp[mt][n][2 * x], dp[mt][n][2 * x + 1]);
                    }
            }
        }
        if (lane == 0) vis[kg * 2 + half] = see;
        __syncthreads();
        /* dV += P^T dO and dK += dS^T Q over the step's queries, 16 at a time, in order. */
        const bool seen[2] = {vis[kg * 2] != 0, vis[kg * 2 + 1] != 0};
#pragma unroll
        for (int kc = 0; kc < QC / 16; kc++) {
            if (!seen[kc / 2]) continue;
            att_gemm_ab_k16<BF16, LP, LD, 2, DH / 8>(acc_v, Ps + 32 * kg * LP, dOt, kc * 16, half * DH);
            att_gemm_ab_k16<BF16, LP, LD, 2, DH / 8>(acc_k, dSs + 32 * kg * LP, Qt, kc * 16, half * DH);
        }
        __syncthreads(); /* every warp is done with this buffer and with P^T, dS^T before they are refilled */
    }
    lu_cp_wait<0>();

#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int x = 0; x < 2; x++) {
            if (kr[mt][x] >= tk) continue;
            const int64_t off = ((b * tk + kr[mt][x]) * a.hkv + hk) * D + half * DH;
            if (dk) {
                uint32_t *row = (uint32_t *)((uint16_t *)dk + off);
#pragma unroll
                for (int n = 0; n < DH / 8; n++)
                    row[n * 4 + t] =
                        att_pack_out<BF16>(acc_k[mt][n][2 * x] * a.scale, acc_k[mt][n][2 * x + 1] * a.scale);
            }
            if (dv) {
                uint32_t *row = (uint32_t *)((uint16_t *)dv + off);
#pragma unroll
                for (int n = 0; n < DH / 8; n++)
                    row[n * 4 + t] = att_pack_out<BF16>(acc_v[mt][n][2 * x], acc_v[mt][n][2 * x + 1]);
            }
        }
}

/* ---- host side ---- */

bool lu_att_mma_takes(const att_args *a, const void *const *ptrs, int n)
{
    if ((a->dt != LU_BF16 && a->dt != LU_F16) || a->d != a->dv || (a->d != 64 && a->d != 128)) return false;
    /* The forward takes the maximum of the unscaled scores for that of the scaled ones; the dK/dV
     * kernels copy lse as f32 (what lu_attention gives 16-bit inputs). */
    if (!(a->scale > 0.0f) || a->lse_dt != LU_F32) return false;
    /* Row indices, padded to a whole tile, are ints in the kernels. */
    if (a->rg.tq > INT_MAX - 2 * ATT_BK || a->rg.tk > INT_MAX - 2 * ATT_BK) return false;
    const void *own[3] = {a->q, a->k, a->v};
    for (int i = 0; i < 3 + n; i++) {
        const void *p = i < 3 ? own[i] : ptrs[i - 3];
        if (p && (uintptr_t)p % 16) return false;
    }
    return true;
}

template <bool BF16, int D, int WARPS, int MT>
static lu_status att_forward_mma_launch(const att_args &a, void *o, void *lse)
{
    constexpr int BQ = WARPS * 16 * MT;
    unsigned grid = 0;
    LU_TRY(att_grid(a.b * a.hq * ((a.rg.tq + BQ - 1) / BQ), "the forward", &grid));
    if (grid == 0) return LU_OK;
    const size_t smem = att_fwd_smem(D, WARPS, MT);
    LU_TRY(att_smem_allow((const void *)att_forward_mma_kernel<BF16, D, WARPS, MT>, smem, &a));
    att_forward_mma_kernel<BF16, D, WARPS, MT><<<grid, WARPS * LU_CUDA_WARP, smem>>>(a, o, lse);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* Query rows per warp of the forward: 32 (the tiling of FlashAttention-2), unless
 * LUTHIER_ATT_ROWS_PER_WARP=16 (the benchmark's second column). On an H200 (benchmarks/gpu/) 32
 * was at first the faster at head dim 64 and 16 at 128, whose 32-row kernel then spilled
 * registers inside its loop; it no longer does, and it reads half the shared memory an MMA (each
 * K, V fragment serves two row tiles), which the 16-row kernel's loop is bound by: on an H200
 * under LUTHIER_ATT_WGMMA=0 (2026-11-27-h200.md) 32 rows gave 274.9 TFLOP/s against 202.9 at d 128
 * and 212.3 against 202.7 at d 64. */
static int att_rows_per_warp(void)
{
    const char *e = getenv("LUTHIER_ATT_ROWS_PER_WARP");
    return e && !strcmp(e, "16") ? 16 : 32;
}

/* 16 rows a warp: head dim 64 takes 128 queries a block (8 warps), 128 takes 64, the 16 x 128
 * output accumulator of a warp being what limits its registers. 32 rows a warp: 128 queries a
 * block of 4 warps for both. */
template <bool BF16> static lu_status att_forward_mma_dispatch(const att_args *a, void *o, void *lse)
{
    if (att_rows_per_warp() == 32)
        return a->d == 64 ? att_forward_mma_launch<BF16, 64, 4, 2>(*a, o, lse)
                          : att_forward_mma_launch<BF16, 128, 4, 2>(*a, o, lse);
    return a->d == 64 ? att_forward_mma_launch<BF16, 64, 8, 1>(*a, o, lse)
                      : att_forward_mma_launch<BF16, 128, 4, 1>(*a, o, lse);
}

lu_status lu_att_mma_forward(const att_args *a, void *o, void *lse)
{
    if (lu_att_wgmma_usable()) return lu_att_wgmma_forward(a, o, lse);
    return a->dt == LU_BF16 ? att_forward_mma_dispatch<true>(a, o, lse) : att_forward_mma_dispatch<false>(a, o, lse);
}

/* Keys per block of the dK/dV backward: 64 (att_backward_dkdv_mma_kernel) unless
 * LUTHIER_ATT_DKDV_KEYS=128 picks att_backward_dkdv_wide_kernel, where the device gives a block
 * its shared memory (an H100's 227 KB do; an A100's 163 KB do not). On an H200 under
 * LUTHIER_ATT_WGMMA=0, with dQ's 32 rows a warp (2026-11-27-h200.md), the pair gave a forward +
 * backward of 216.8 TFLOP/s against 192.0 at d 128 and 150.7 against 160.9 at d 64: the defaults
 * stay until a GPU that runs these kernels by default ranks them (`luthier bench gpu` times both). */
static int att_dkdv_keys(int d)
{
    const char *e = getenv("LUTHIER_ATT_DKDV_KEYS");
    return e && !strcmp(e, "128") && att_smem_fits(att_dkdv_wide_smem(d)) ? 128 : 64;
}

template <bool BF16, int D>
static lu_status att_dkdv_launch(const att_args &a, const void *dO, const void *lse, const float *dsum, void *dk,
                                 void *dv)
{
    unsigned grid = 0;
    if (att_dkdv_keys(D) == 128) {
        LU_TRY(att_grid(a.b * a.hkv * ((a.rg.tk + ATT_WIDE_BN - 1) / ATT_WIDE_BN), "the dk/dv backward", &grid));
        const size_t smem = att_dkdv_wide_smem(D);
        LU_TRY(att_smem_allow((const void *)att_backward_dkdv_wide_kernel<BF16, D>, smem, &a));
        if (grid > 0)
            att_backward_dkdv_wide_kernel<BF16, D>
                <<<grid, ATT_WIDE_WARPS * LU_CUDA_WARP, smem>>>(a, dO, lse, dsum, dk, dv);
    } else {
        LU_TRY(att_grid(a.b * a.hkv * ((a.rg.tk + ATT_BK - 1) / ATT_BK), "the dk/dv backward", &grid));
        const size_t smem = att_dkdv_smem(D);
        LU_TRY(att_smem_allow((const void *)att_backward_dkdv_mma_kernel<BF16, D>, smem, &a));
        if (grid > 0)
            att_backward_dkdv_mma_kernel<BF16, D>
                <<<grid, ATT_BWD_WARPS * LU_CUDA_WARP, smem>>>(a, dO, lse, dsum, dk, dv);
    }
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* Query rows a warp of the dQ backward: 16 (64 keys a tile) unless
 * LUTHIER_ATT_DQ_ROWS_PER_WARP=32 picks 32 rows a warp with 32 keys a tile (ranked with
 * att_dkdv_keys' variant, above). */
static int att_dq_rows_per_warp(void)
{
    const char *e = getenv("LUTHIER_ATT_DQ_ROWS_PER_WARP");
    return e && !strcmp(e, "32") ? 32 : 16;
}

template <bool BF16, int D, int MT, int BK>
static lu_status att_dq_launch(const att_args &a, const void *dO, const void *lse, const float *dsum, void *dq)
{
    constexpr int BQ = ATT_BWD_WARPS * 16 * MT;
    unsigned grid = 0;
    LU_TRY(att_grid(a.b * a.hq * ((a.rg.tq + BQ - 1) / BQ), "the dq backward", &grid));
    if (grid == 0) return LU_OK;
    const size_t smem = att_dq_smem(D, MT, BK);
    LU_TRY(att_smem_allow((const void *)att_backward_dq_mma_kernel<BF16, D, MT, BK>, smem, &a));
    att_backward_dq_mma_kernel<BF16, D, MT, BK><<<grid, ATT_BWD_WARPS * LU_CUDA_WARP, smem>>>(a, dO, lse, dsum, dq);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

template <bool BF16, int D>
static lu_status att_backward_mma_launch(const att_args &a, const void *dO, const void *o, const void *lse,
                                         float *dsum, void *dq, void *dk, void *dv)
{
    LU_TRY((att_dsum_launch<BF16, D>(a, dO, o, dsum)));
    if ((dk || dv) && lu_att_wgmma_usable()) LU_TRY(lu_att_wgmma_dkdv(&a, dO, lse, dsum, dk, dv));
    else if (dk || dv) LU_TRY((att_dkdv_launch<BF16, D>(a, dO, lse, dsum, dk, dv)));
    if (dq && lu_att_wgmma_usable()) LU_TRY(lu_att_wgmma_dq(&a, dO, lse, dsum, dq));
    else if (dq && att_dq_rows_per_warp() == 32) LU_TRY((att_dq_launch<BF16, D, 2, 32>(a, dO, lse, dsum, dq)));
    else if (dq) LU_TRY((att_dq_launch<BF16, D, 1, ATT_BK>(a, dO, lse, dsum, dq)));
    return LU_OK;
}

lu_status lu_att_mma_backward(const att_args *a, const void *dO, const void *o, const void *lse, float *dsum, void *dq,
                              void *dk, void *dv)
{
    if (a->dt == LU_BF16)
        return a->d == 64 ? att_backward_mma_launch<true, 64>(*a, dO, o, lse, dsum, dq, dk, dv)
                          : att_backward_mma_launch<true, 128>(*a, dO, o, lse, dsum, dq, dk, dv);
    return a->d == 64 ? att_backward_mma_launch<false, 64>(*a, dO, o, lse, dsum, dq, dk, dv)
                      : att_backward_mma_launch<false, 128>(*a, dO, o, lse, dsum, dq, dk, dv);
}
