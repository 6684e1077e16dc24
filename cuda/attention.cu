/* attention.cu - fused scaled dot-product attention (ATTENTION) on CUDA, forward and backward,
 * FlashAttention-2 style (arXiv 2307.08691): tiles of 32 queries x 32 keys in shared memory, an
 * online softmax, and no Tq x Tk matrix in global memory unless the weights are asked for.
 * Semantics are core/cpu/attention.c's: grouped-query heads, causal masking that aligns the last
 * query with the last key, key-padding masks, packed sequences (cu_seqlens), rows that see no key
 * giving o = 0, lse = -inf and zero gradients. q/k/v may be f32, bf16 or f16 (f32 math); lse is
 * f32 (or q's dtype). Head dims up to 256; 64 and 128 select register tiles of their size. bf16
 * and f16 with D == Dv in {64, 128} go to the tensor-core kernels of attention_mma.cu instead
 * (unless the weights or their gradient are involved); these kernels take every other case.
 *
 * Backward (Alg. 2 of the paper, made deterministic): Dsum_i = rowsum(dO_i * O_i) (+ rowsum(W_i *
 * dW_i) when the weights were returned), then one kernel per key tile accumulates dK and dV over
 * every query (and every query head of its GQA group) in a fixed order, and a second kernel per
 * query tile accumulates dQ over the keys. P is recomputed in both from q, k and lse; there are no
 * atomics, so two runs give the same bits.
 *
 * Thread layout of every kernel: 8 warps; in the "pair" phase a thread computes the dot products
 * of row `lane` of one tile with rows warp + 8r (r < 4) of the other; in the accumulation phase
 * it owns row `lane` and the columns warp + 8r (r < NC). Shared rows have an odd stride, so lanes
 * reading 32 different rows hit 32 different banks. */
#include <math.h>

#include "attention.cuh"

#define ATT_TILE 32                           /* queries and keys per tile: one per lane */
#define ATT_WARPS 8
#define ATT_THREADS (ATT_TILE * ATT_WARPS)
#define ATT_PAIRS (ATT_TILE / ATT_WARPS)      /* rows of the other tile per thread in the pair phase */
#define ATT_PLD (ATT_TILE + 1)                /* row stride of the 32 x 32 score tiles */
#define ATT_MAX_HEAD_DIM 256

/* ---- device helpers ---- */

static __device__ __forceinline__ bool att_visible(const att_args *a, int64_t b, int64_t j, int64_t lo, int64_t hi)
{
    return j >= lo && j < hi && !(a->mask && a->mask[b * a->rg.tk + j]);
}

/* Keys [klo, khi) of a tile of queries: the union of the rows' ranges (empty: klo >= khi). */
static __device__ void att_key_union(const int64_t *row_lo, const int64_t *row_hi, int64_t tk, int64_t *klo, int64_t *khi)
{
    int64_t lo = tk, hi = 0;
    for (int r = 0; r < ATT_TILE; r++)
        if (row_hi[r] > row_lo[r]) {
            lo = row_lo[r] < lo ? row_lo[r] : lo;
            hi = row_hi[r] > hi ? row_hi[r] : hi;
        }
    *klo = lo;
    *khi = hi;
}

/* Rows r0 .. r0+31 of one head of x (row r at base + r * rstride, n elements) into the shared
 * tile s [32][ld] as f32; rows past t, and every row when x is NULL, are zero. */
static __device__ void att_load_tile(float *s, int ld, const void *x, int dt, int64_t base, int64_t rstride, int64_t r0,
                                     int64_t t, int n)
{
    for (int e = threadIdx.x; e < ATT_TILE * n; e += ATT_THREADS) {
        int r = e / n, c = e % n;
        s[r * ld + c] = x && r0 + r < t ? att_load(x, dt, base + (r0 + r) * rstride + c) : 0.0f;
    }
}

/* out[r] = sum_c X[lane][c] * Y[warp + 8r][c], c < n: the pair phase. */
static __device__ __forceinline__ void att_dots(const float *X, int ldx, const float *Y, int ldy, int n,
                                                float out[ATT_PAIRS])
{
    const int lane = threadIdx.x % LU_CUDA_WARP, w = threadIdx.x / LU_CUDA_WARP;
    const float *x = X + lane * ldx, *y = Y + w * ldy;
#pragma unroll
    for (int r = 0; r < ATT_PAIRS; r++) out[r] = 0.0f;
    for (int c = 0; c < n; c++) {
        float xc = x[c];
#pragma unroll
        for (int r = 0; r < ATT_PAIRS; r++) out[r] += xc * y[r * ATT_WARPS * ldy + c];
    }
}

/* acc[r] += sum over the tile's keys jj of w[jj] * X[jj][warp + 8r], columns below n: the
 * accumulation phase (w this lane's row of P or dS, X the V or K tile). */
template <int NC>
static __device__ __forceinline__ void att_accumulate(float acc[NC], const float *w, const float *X, int ldx, int64_t n)
{
    const int wp = threadIdx.x / LU_CUDA_WARP;
    for (int jj = 0; jj < ATT_TILE; jj++) {
        float p = w[jj];
        const float *xr = X + jj * ldx + wp;
#pragma unroll
        for (int r = 0; r < NC; r++)
            if (wp + r * ATT_WARPS < n) acc[r] += p * xr[r * ATT_WARPS];
    }
}

/* Shared memory of a kernel: the key ranges of 32 query rows (int64 lo, hi), then `floats` floats. */
static size_t att_smem_bytes(int64_t floats) { return 2 * ATT_TILE * sizeof(int64_t) + (size_t)floats * sizeof(float); }

extern __shared__ __align__(16) unsigned char att_smem[];

/* ---- forward ---- */

/* One block per (query tile, query head, batch). o [B,Tq,Hq,Dv], lse [B,Hq,Tq]; w [B,Hq,Tq,Tk]
 * or NULL. NC >= ceil(Dv / 8) output columns per thread. */
template <int NC>
static __global__ void __launch_bounds__(ATT_THREADS) att_forward_kernel(att_args a, void *o, void *lse, void *w)
{
    const int lane = threadIdx.x % LU_CUDA_WARP, wp = threadIdx.x / LU_CUDA_WARP;
    const int ldq = (int)a.d | 1, ldv = (int)a.dv | 1;
    int64_t *row_lo = (int64_t *)att_smem, *row_hi = row_lo + ATT_TILE;
    float *Qs = (float *)(row_hi + ATT_TILE), *Ks = Qs + ATT_TILE * ldq, *Vs = Ks + ATT_TILE * ldq;
    float *Ps = Vs + ATT_TILE * ldv, *row_m = Ps + ATT_TILE * ATT_PLD, *row_l = row_m + ATT_TILE, *row_a = row_l + ATT_TILE;

    const int64_t nqt = (a.rg.tq + ATT_TILE - 1) / ATT_TILE, bid = blockIdx.x;
    const int64_t i0 = bid % nqt * ATT_TILE, h = bid / nqt % a.hq, b = bid / (nqt * a.hq), g = h / (a.hq / a.hkv);
    const int64_t kbase = (b * a.rg.tk * a.hkv + g) * a.d, vbase = (b * a.rg.tk * a.hkv + g) * a.dv;
    if (threadIdx.x < ATT_TILE) {
        lu_att_key_range(&a.rg, i0 + lane, &row_lo[lane], &row_hi[lane]);
        row_m[lane] = -INFINITY;
        row_l[lane] = 0.0f;
    }
    att_load_tile(Qs, ldq, a.q, a.dt, (b * a.rg.tq * a.hq + h) * a.d, a.hq * a.d, i0, a.rg.tq, (int)a.d);
    __syncthreads();
    int64_t klo, khi;
    att_key_union(row_lo, row_hi, a.rg.tk, &klo, &khi);

    float acc[NC];
#pragma unroll
    for (int r = 0; r < NC; r++) acc[r] = 0.0f;
    for (int64_t j0 = klo; j0 < khi; j0 += ATT_TILE) {
        att_load_tile(Ks, ldq, a.k, a.dt, kbase, a.hkv * a.d, j0, a.rg.tk, (int)a.d);
        att_load_tile(Vs, ldv, a.v, a.dt, vbase, a.hkv * a.dv, j0, a.rg.tk, (int)a.dv);
        __syncthreads();
        float s[ATT_PAIRS];
        att_dots(Qs, ldq, Ks, ldq, (int)a.d, s);
#pragma unroll
        for (int r = 0; r < ATT_PAIRS; r++) {
            int jj = wp + r * ATT_WARPS;
            Ps[lane * ATT_PLD + jj] = att_visible(&a, b, j0 + jj, row_lo[lane], row_hi[lane]) ? s[r] * a.scale : -INFINITY;
        }
        __syncthreads();
        /* Online softmax: warp wp updates rows 4 wp .. 4 wp + 3, one key per lane. */
        for (int rr = 0; rr < ATT_PAIRS; rr++) {
            int i = wp * ATT_PAIRS + rr;
            float x = Ps[i * ATT_PLD + lane], mo = row_m[i];
            float mn = fmaxf(mo, lu_dev_warp_max(x));
            float p = x == -INFINITY ? 0.0f : expf(x - mn);
            float sum = lu_dev_warp_sum(p);
            Ps[i * ATT_PLD + lane] = p;
            __syncwarp(); /* every lane has read row_m[i] (shuffles do not order memory) */
            if (lane == 0) {
                float alpha = mo == -INFINITY ? 0.0f : expf(mo - mn);
                row_a[i] = alpha;
                row_m[i] = mn;
                row_l[i] = row_l[i] * alpha + sum;
            }
        }
        __syncthreads();
        float alpha = row_a[lane];
#pragma unroll
        for (int r = 0; r < NC; r++) acc[r] *= alpha;
        att_accumulate<NC>(acc, Ps + lane * ATT_PLD, Vs, ldv, a.dv);
        __syncthreads();
    }

    const int64_t i = i0 + lane;
    const float l = row_l[lane], m = row_m[lane], lse_i = l > 0.0f ? m + logf(l) : -INFINITY;
    if (i < a.rg.tq) {
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int r = 0; r < NC; r++) {
            int c = wp + r * ATT_WARPS;
            if (c < a.dv) att_store(o, a.dt, ((b * a.rg.tq + i) * a.hq + h) * a.dv + c, acc[r] * inv);
        }
        if (wp == 0) att_store(lse, a.lse_dt, (b * a.hq + h) * a.rg.tq + i, lse_i);
    }
    if (!w) return;
    /* The weights P = exp(s - lse) of every key (0 where not visible), row by row through Ps so
     * that each warp stores along rows. */
    if (threadIdx.x < ATT_TILE) row_a[lane] = lse_i;
    for (int64_t j0 = 0; j0 < a.rg.tk; j0 += ATT_TILE) {
        att_load_tile(Ks, ldq, a.k, a.dt, kbase, a.hkv * a.d, j0, a.rg.tk, (int)a.d);
        __syncthreads();
        float s[ATT_PAIRS];
        att_dots(Qs, ldq, Ks, ldq, (int)a.d, s);
#pragma unroll
        for (int r = 0; r < ATT_PAIRS; r++) {
            int jj = wp + r * ATT_WARPS;
            bool vis = att_visible(&a, b, j0 + jj, row_lo[lane], row_hi[lane]);
            Ps[lane * ATT_PLD + jj] = vis ? expf(s[r] * a.scale - row_a[lane]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ATT_PAIRS; r++) {
            int ii = wp + r * ATT_WARPS;
            if (i0 + ii < a.rg.tq && j0 + lane < a.rg.tk)
                att_store(w, a.dt, ((b * a.hq + h) * a.rg.tq + i0 + ii) * a.rg.tk + j0 + lane, Ps[ii * ATT_PLD + lane]);
        }
        __syncthreads();
    }
}

/* ---- backward ---- */

/* Dsum [B,Hq,Tq] (lse's layout) = rowsum(dO * O) + rowsum(W * dW): rowsum(P * dP) of the CPU
 * kernel, as sum_j P_ij (dO_i . v_j) = dO_i . O_i. One warp per row; dO or dW may be NULL. */
static __global__ void att_dsum_kernel(att_args a, const void *dO, const void *o, const void *dW, const void *w,
                                       float *dsum)
{
    const int lane = threadIdx.x % LU_CUDA_WARP;
    const int64_t rows = a.b * a.hq * a.rg.tq;
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / LU_CUDA_WARP; row < rows;
         row += (int64_t)gridDim.x * blockDim.x / LU_CUDA_WARP) {
        int64_t i = row % a.rg.tq, h = row / a.rg.tq % a.hq, b = row / (a.rg.tq * a.hq);
        int64_t obase = ((b * a.rg.tq + i) * a.hq + h) * a.dv;
        float acc = 0.0f;
        if (dO)
            for (int64_t c = lane; c < a.dv; c += LU_CUDA_WARP)
                acc += att_load(dO, a.dt, obase + c) * att_load(o, a.dt, obase + c);
        if (dW)
            for (int64_t j = lane; j < a.rg.tk; j += LU_CUDA_WARP)
                acc += att_load(w, a.dt, row * a.rg.tk + j) * att_load(dW, a.dt, row * a.rg.tk + j);
        acc = lu_dev_warp_sum(acc);
        if (lane == 0) dsum[row] = acc;
    }
}

/* The backward's query tile i0 of head h in batch b: its Q and dO rows into Qs, dOs, and each
 * row's key range, lse and Dsum (the first ATT_TILE threads, a row each). */
static __device__ void att_load_query_tile(const att_args *a, const void *dO, const void *lse, const float *dsum,
                                           int64_t b, int64_t h, int64_t i0, int ldq, int ldv, float *Qs, float *dOs,
                                           int64_t *row_lo, int64_t *row_hi, float *row_lse, float *row_dsum)
{
    const int64_t tq = a->rg.tq;
    att_load_tile(Qs, ldq, a->q, a->dt, (b * tq * a->hq + h) * a->d, a->hq * a->d, i0, tq, (int)a->d);
    att_load_tile(dOs, ldv, dO, a->dt, (b * tq * a->hq + h) * a->dv, a->hq * a->dv, i0, tq, (int)a->dv);
    const int t = (int)threadIdx.x;
    if (t < ATT_TILE) {
        int64_t i = i0 + t, row = (b * a->hq + h) * tq + i;
        lu_att_key_range(&a->rg, i, &row_lo[t], &row_hi[t]);
        row_lse[t] = i < tq ? att_load(lse, a->lse_dt, row) : -INFINITY;
        row_dsum[t] = i < tq ? dsum[row] : 0.0f;
    }
}

/* P and dS = P * (dP - Dsum) of one pair (query row ii of the tile's row state, key j), with dP =
 * dO . v (+ dW). lse and Dsum are the row's. */
static __device__ __forceinline__ void att_pair_grad(const att_args *a, int64_t b, int64_t j, int64_t lo, int64_t hi,
                                                     float s, float dp, float lse, float dsum, const void *dW,
                                                     int64_t dw_row, float *p_out, float *ds_out)
{
    bool vis = att_visible(a, b, j, lo, hi);
    float p = vis ? expf(s * a->scale - lse) : 0.0f;
    if (dW && vis) dp += att_load(dW, a->dt, dw_row * a->rg.tk + j);
    *p_out = p;
    *ds_out = p * (dp - dsum);
}

/* One block per (key tile, kv head, batch): dK = scale dS^T Q and dV = P^T dO over every query
 * of the kv head's query heads. dk or dv may be NULL. NC >= ceil(max(D, Dv) / 8). */
template <int NC>
static __global__ void __launch_bounds__(ATT_THREADS)
    att_backward_dkdv_kernel(att_args a, const void *dO, const void *dW, const void *lse, const float *dsum, void *dk,
                             void *dv)
{
    const int lane = threadIdx.x % LU_CUDA_WARP, wp = threadIdx.x / LU_CUDA_WARP;
    const int ldq = (int)a.d | 1, ldv = (int)a.dv | 1;
    int64_t *row_lo = (int64_t *)att_smem, *row_hi = row_lo + ATT_TILE;
    float *Ks = (float *)(row_hi + ATT_TILE), *Vs = Ks + ATT_TILE * ldq, *Qs = Vs + ATT_TILE * ldv;
    float *dOs = Qs + ATT_TILE * ldq, *Ps = dOs + ATT_TILE * ldv, *dSs = Ps + ATT_TILE * ATT_PLD;
    float *row_lse = dSs + ATT_TILE * ATT_PLD, *row_dsum = row_lse + ATT_TILE;

    const int64_t nkt = (a.rg.tk + ATT_TILE - 1) / ATT_TILE, bid = blockIdx.x, rep = a.hq / a.hkv;
    const int64_t j0 = bid % nkt * ATT_TILE, g = bid / nkt % a.hkv, b = bid / (nkt * a.hkv);
    att_load_tile(Ks, ldq, a.k, a.dt, (b * a.rg.tk * a.hkv + g) * a.d, a.hkv * a.d, j0, a.rg.tk, (int)a.d);
    att_load_tile(Vs, ldv, a.v, a.dt, (b * a.rg.tk * a.hkv + g) * a.dv, a.hkv * a.dv, j0, a.rg.tk, (int)a.dv);
    int64_t qlo, qhi;
    lu_att_query_range(&a.rg, j0, j0 + ATT_TILE < a.rg.tk ? j0 + ATT_TILE : a.rg.tk, &qlo, &qhi);

    float acc_k[NC], acc_v[NC];
#pragma unroll
    for (int r = 0; r < NC; r++) acc_k[r] = acc_v[r] = 0.0f;
    for (int64_t h = g * rep; h < (g + 1) * rep; h++) {
        for (int64_t i0 = qlo; i0 < qhi; i0 += ATT_TILE) {
            __syncthreads(); /* the previous tile's readers are done */
            att_load_query_tile(&a, dO, lse, dsum, b, h, i0, ldq, ldv, Qs, dOs, row_lo, row_hi, row_lse, row_dsum);
            __syncthreads();
            /* Pairs: key `lane` against queries wp + 8r. */
            float s[ATT_PAIRS], dp[ATT_PAIRS];
            att_dots(Ks, ldq, Qs, ldq, (int)a.d, s);
            att_dots(Vs, ldv, dOs, ldv, (int)a.dv, dp);
#pragma unroll
            for (int r = 0; r < ATT_PAIRS; r++) {
                int ii = wp + r * ATT_WARPS;
                att_pair_grad(&a, b, j0 + lane, row_lo[ii], row_hi[ii], s[r], dp[r], row_lse[ii], row_dsum[ii], dW,
                              (b * a.hq + h) * a.rg.tq + i0 + ii, &Ps[ii * ATT_PLD + lane], &dSs[ii * ATT_PLD + lane]);
            }
            __syncthreads();
            /* Accumulation: key `lane`, columns wp + 8r. */
            for (int ii = 0; ii < ATT_TILE; ii++) {
                float p = Ps[ii * ATT_PLD + lane], ds = dSs[ii * ATT_PLD + lane];
                const float *qr = Qs + ii * ldq + wp, *dor = dOs + ii * ldv + wp;
#pragma unroll
                for (int r = 0; r < NC; r++) {
                    int c = wp + r * ATT_WARPS;
                    if (c < a.d) acc_k[r] += ds * qr[r * ATT_WARPS];
                    if (c < a.dv) acc_v[r] += p * dor[r * ATT_WARPS];
                }
            }
        }
    }
    const int64_t j = j0 + lane;
    if (j >= a.rg.tk) return;
#pragma unroll
    for (int r = 0; r < NC; r++) {
        int c = wp + r * ATT_WARPS;
        if (dk && c < a.d) att_store(dk, a.dt, ((b * a.rg.tk + j) * a.hkv + g) * a.d + c, acc_k[r] * a.scale);
        if (dv && c < a.dv) att_store(dv, a.dt, ((b * a.rg.tk + j) * a.hkv + g) * a.dv + c, acc_v[r]);
    }
}

/* One block per (query tile, query head, batch): dQ = scale dS K over the keys the tile sees.
 * NC >= ceil(D / 8). */
template <int NC>
static __global__ void __launch_bounds__(ATT_THREADS)
    att_backward_dq_kernel(att_args a, const void *dO, const void *dW, const void *lse, const float *dsum, void *dq)
{
    const int lane = threadIdx.x % LU_CUDA_WARP, wp = threadIdx.x / LU_CUDA_WARP;
    const int ldq = (int)a.d | 1, ldv = (int)a.dv | 1;
    int64_t *row_lo = (int64_t *)att_smem, *row_hi = row_lo + ATT_TILE;
    float *Qs = (float *)(row_hi + ATT_TILE), *dOs = Qs + ATT_TILE * ldq, *Ks = dOs + ATT_TILE * ldv;
    float *Vs = Ks + ATT_TILE * ldq, *dSs = Vs + ATT_TILE * ldv, *row_lse = dSs + ATT_TILE * ATT_PLD;
    float *row_dsum = row_lse + ATT_TILE;

    const int64_t nqt = (a.rg.tq + ATT_TILE - 1) / ATT_TILE, bid = blockIdx.x;
    const int64_t i0 = bid % nqt * ATT_TILE, h = bid / nqt % a.hq, b = bid / (nqt * a.hq), g = h / (a.hq / a.hkv);
    const int64_t kbase = (b * a.rg.tk * a.hkv + g) * a.d, vbase = (b * a.rg.tk * a.hkv + g) * a.dv;
    att_load_query_tile(&a, dO, lse, dsum, b, h, i0, ldq, ldv, Qs, dOs, row_lo, row_hi, row_lse, row_dsum);
    __syncthreads();
    int64_t klo, khi;
    att_key_union(row_lo, row_hi, a.rg.tk, &klo, &khi);

    float acc[NC];
#pragma unroll
    for (int r = 0; r < NC; r++) acc[r] = 0.0f;
    const int64_t row = (b * a.hq + h) * a.rg.tq + i0 + lane;
    for (int64_t j0 = klo; j0 < khi; j0 += ATT_TILE) {
        att_load_tile(Ks, ldq, a.k, a.dt, kbase, a.hkv * a.d, j0, a.rg.tk, (int)a.d);
        att_load_tile(Vs, ldv, a.v, a.dt, vbase, a.hkv * a.dv, j0, a.rg.tk, (int)a.dv);
        __syncthreads();
        /* Pairs: query `lane` against keys wp + 8r. */
        float s[ATT_PAIRS], dp[ATT_PAIRS];
        att_dots(Qs, ldq, Ks, ldq, (int)a.d, s);
        att_dots(dOs, ldv, Vs, ldv, (int)a.dv, dp);
#pragma unroll
        for (int r = 0; r < ATT_PAIRS; r++) {
            int jj = wp + r * ATT_WARPS;
            float p;
            att_pair_grad(&a, b, j0 + jj, row_lo[lane], row_hi[lane], s[r], dp[r], row_lse[lane], row_dsum[lane], dW, row,
                          &p, &dSs[lane * ATT_PLD + jj]);
        }
        __syncthreads();
        /* Accumulation: query `lane`, columns wp + 8r. */
        att_accumulate<NC>(acc, dSs + lane * ATT_PLD, Ks, ldq, a.d);
        __syncthreads();
    }
    const int64_t i = i0 + lane;
    if (i >= a.rg.tq) return;
#pragma unroll
    for (int r = 0; r < NC; r++) {
        int c = wp + r * ATT_WARPS;
        if (c < a.d) att_store(dq, a.dt, ((b * a.rg.tq + i) * a.hq + h) * a.d + c, acc[r] * a.scale);
    }
}

/* ---- host side ---- */

static bool att_dtype_ok(lu_dtype dt) { return dt == LU_F32 || dt == LU_BF16 || dt == LU_F16; }

/* Validates what the frontend (core/ops_attention.c) guarantees plus the kernels' own limits, and
 * fills the kernel arguments. */
static lu_status att_args_of(const lu_attention_params *p, const lu_tensor *q, const lu_tensor *k, const lu_tensor *v,
                             const lu_tensor *mask, const lu_tensor *cu, const lu_tensor *lse, att_args *a)
{
    char sq[LU_SHAPE_STR_MAX], sk[LU_SHAPE_STR_MAX], sv[LU_SHAPE_STR_MAX];
    if (!att_dtype_ok(q->dtype) || k->dtype != q->dtype || v->dtype != q->dtype)
        return lu_errorf(LU_ERR_DTYPE, "attention: q %s, k %s, v %s: the cuda backend takes one of f32, bf16, f16",
                         lu_dtype_name(q->dtype), lu_dtype_name(k->dtype), lu_dtype_name(v->dtype));
    if (lse->dtype != LU_F32 && lse->dtype != q->dtype)
        return lu_errorf(LU_ERR_DTYPE, "attention: lse is %s, expected f32 or %s", lu_dtype_name(lse->dtype),
                         lu_dtype_name(q->dtype));
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] ||
        v->shape[1] != k->shape[1] || v->shape[2] != k->shape[2] || k->shape[3] != q->shape[3] || k->shape[2] == 0 ||
        q->shape[2] % k->shape[2])
        return lu_errorf(LU_ERR_SHAPE, "attention: q %s, k %s, v %s are not [B,Tq,Hq,D], [B,Tk,Hkv,D], [B,Tk,Hkv,Dv]",
                         lu_shape_str(q, sq, sizeof sq), lu_shape_str(k, sk, sizeof sk), lu_shape_str(v, sv, sizeof sv));
    if (q->shape[3] < 1 || q->shape[3] > ATT_MAX_HEAD_DIM || v->shape[3] < 1 || v->shape[3] > ATT_MAX_HEAD_DIM)
        return lu_errorf(LU_ERR_UNSUPPORTED, "attention: head dims D = %lld, Dv = %lld; the cuda kernels take 1 .. %d",
                         (long long)q->shape[3], (long long)v->shape[3], ATT_MAX_HEAD_DIM);
    if (mask && ((mask->dtype != LU_U8 && mask->dtype != LU_BOOL) || mask->ndim != 2 || mask->shape[0] != q->shape[0] ||
                 mask->shape[1] != k->shape[1]))
        return lu_errorf(LU_ERR_SHAPE, "attention: key_padding_mask %s %s must be u8/bool [B, Tk]",
                         lu_shape_str(mask, sq, sizeof sq), lu_dtype_name(mask->dtype));
    if (cu && ((cu->dtype != LU_I32 && cu->dtype != LU_I64) || cu->ndim != 1 || cu->shape[0] < 2 ||
               q->shape[0] != 1 || q->shape[1] != k->shape[1]))
        return lu_errorf(LU_ERR_SHAPE, "attention: cu_seqlens %s %s needs i32/i64 [S+1], B == 1 and Tq == Tk (q %s, k %s)",
                         lu_shape_str(cu, sv, sizeof sv), lu_dtype_name(cu->dtype), lu_shape_str(q, sq, sizeof sq),
                         lu_shape_str(k, sk, sizeof sk));
    *a = (att_args){{q->shape[1], k->shape[1], p->causal, cu ? lu_tensor_data(cu) : NULL, cu && cu->dtype == LU_I64,
                     cu ? cu->shape[0] : 0},
                    lu_tensor_data(q), lu_tensor_data(k), lu_tensor_data(v),
                    mask ? (const uint8_t *)lu_tensor_data(mask) : NULL, (int)q->dtype, (int)lse->dtype,
                    q->shape[0], q->shape[2], k->shape[2], q->shape[3], v->shape[3], (float)p->scale};
    return LU_OK;
}

/* Columns per thread of the register tiles: head dims 64 and 128 get their own, others the next
 * larger. */
static int att_nc(int64_t n) { return n <= 64 ? 8 : n <= 128 ? 16 : 32; }

template <int NC>
static lu_status att_forward_launch(const att_args &a, unsigned grid, size_t smem, void *o, void *lse, void *w)
{
    LU_TRY(att_smem_allow((const void *)att_forward_kernel<NC>, smem, &a));
    att_forward_kernel<NC><<<grid, ATT_THREADS, smem>>>(a, o, lse, w);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

template <int NC>
static lu_status att_dkdv_launch(const att_args &a, unsigned grid, size_t smem, const void *dO, const void *dW,
                                 const void *lse, const float *dsum, void *dk, void *dv)
{
    LU_TRY(att_smem_allow((const void *)att_backward_dkdv_kernel<NC>, smem, &a));
    att_backward_dkdv_kernel<NC><<<grid, ATT_THREADS, smem>>>(a, dO, dW, lse, dsum, dk, dv);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

template <int NC>
static lu_status att_dq_launch(const att_args &a, unsigned grid, size_t smem, const void *dO, const void *dW,
                               const void *lse, const float *dsum, void *dq)
{
    LU_TRY(att_smem_allow((const void *)att_backward_dq_kernel<NC>, smem, &a));
    att_backward_dq_kernel<NC><<<grid, ATT_THREADS, smem>>>(a, dO, dW, lse, dsum, dq);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [q, k, v, mask?, cu_seqlens?], out = [o, lse, weights?]. */
static lu_status attention_forward(const lu_op_call *c)
{
    const lu_attention_params *p = (const lu_attention_params *)c->params;
    att_args a;
    LU_TRY(att_args_of(p, c->in[0], c->in[1], c->in[2], c->in[3], c->in[4], c->out[1], &a));
    lu_tensor *o = c->out[0], *w = p->return_weights && c->n_out > 2 ? c->out[2] : NULL;
    if (o->dtype != a.dt || (w && w->dtype != a.dt))
        return lu_errorf(LU_ERR_DTYPE, "attention: outputs must be %s like q", lu_dtype_name(c->in[0]->dtype));
    unsigned grid = 0;
    int64_t blocks = a.b * a.hq * ((a.rg.tq + ATT_TILE - 1) / ATT_TILE);
    if (blocks == 0) return LU_OK;
    LU_TRY(att_grid(blocks, "the forward", &grid));
    size_t smem = att_smem_bytes(ATT_TILE * (2 * ((int)a.d | 1) + ((int)a.dv | 1) + ATT_PLD + 3));
    void *od = lu_tensor_data(o), *lsed = lu_tensor_data(c->out[1]), *wd = w ? lu_tensor_data(w) : NULL;
    /* The returned weights need the second pass of the general kernel. */
    const void *outs[1] = {od};
    if (!w && lu_att_mma_takes(&a, outs, 1)) return lu_att_mma_forward(&a, od, lsed);
    switch (att_nc(a.dv)) {
    case 8: return att_forward_launch<8>(a, grid, smem, od, lsed, wd);
    case 16: return att_forward_launch<16>(a, grid, smem, od, lsed, wd);
    default: return att_forward_launch<32>(a, grid, smem, od, lsed, wd);
    }
}

static lu_status att_zero(lu_tensor *t)
{
    if (t && lu_tensor_nbytes(t)) LU_TRY(lu_cuda_zero(t));
    return LU_OK;
}

/* The three backward kernels once Dsum's buffer exists. */
static lu_status att_backward_run(const att_args &a, const void *dO, const void *o, const void *dW, const void *w,
                                  const void *lse, float *dsum, lu_tensor *dq, lu_tensor *dk, lu_tensor *dv)
{
    const int ldq = (int)a.d | 1, ldv = (int)a.dv | 1;
    /* The gradient of returned weights (dW) needs the general kernels. */
    void *dqd = dq ? lu_tensor_data(dq) : NULL, *dkd = dk ? lu_tensor_data(dk) : NULL;
    void *dvd = dv ? lu_tensor_data(dv) : NULL;
    const void *ptrs[5] = {dO, o, dqd, dkd, dvd};
    if (!dW && lu_att_mma_takes(&a, ptrs, 5)) return lu_att_mma_backward(&a, dO, o, lse, dsum, dqd, dkd, dvd);
    int64_t rows = a.b * a.hq * a.rg.tq;
    if (rows > 0) {
        int64_t blocks = (rows + ATT_WARPS - 1) / ATT_WARPS;
        att_dsum_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), ATT_THREADS>>>(a, dO, o, dW, w, dsum);
        LU_CUDA_CHECK_LAUNCH();
    }
    unsigned grid = 0;
    int64_t kblocks = a.b * a.hkv * ((a.rg.tk + ATT_TILE - 1) / ATT_TILE);
    if ((dk || dv) && kblocks > 0) {
        LU_TRY(att_grid(kblocks, "the dk/dv backward", &grid));
        size_t smem = att_smem_bytes(ATT_TILE * (2 * ldq + 2 * ldv + 2 * ATT_PLD + 2));
        switch (att_nc(a.d > a.dv ? a.d : a.dv)) {
        case 8: LU_TRY(att_dkdv_launch<8>(a, grid, smem, dO, dW, lse, dsum, dkd, dvd)); break;
        case 16: LU_TRY(att_dkdv_launch<16>(a, grid, smem, dO, dW, lse, dsum, dkd, dvd)); break;
        default: LU_TRY(att_dkdv_launch<32>(a, grid, smem, dO, dW, lse, dsum, dkd, dvd)); break;
        }
    }
    int64_t qblocks = a.b * a.hq * ((a.rg.tq + ATT_TILE - 1) / ATT_TILE);
    if (dq && qblocks > 0) {
        LU_TRY(att_grid(qblocks, "the dq backward", &grid));
        size_t smem = att_smem_bytes(ATT_TILE * (2 * ldq + 2 * ldv + ATT_PLD + 2));
        switch (att_nc(a.d)) {
        case 8: return att_dq_launch<8>(a, grid, smem, dO, dW, lse, dsum, dqd);
        case 16: return att_dq_launch<16>(a, grid, smem, dO, dW, lse, dsum, dqd);
        default: return att_dq_launch<32>(a, grid, smem, dO, dW, lse, dsum, dqd);
        }
    }
    return LU_OK;
}

/* in = [dO, dlse, (dweights,) q, k, v, mask, cu_seqlens, o, lse, (weights)], out = [dq, dk, dv].
 * lse has no gradient (the frontend never hands it out), as on the CPU. */
static lu_status attention_backward(const lu_op_call *c)
{
    const lu_attention_params *p = (const lu_attention_params *)c->params;
    const int m = p->return_weights ? 3 : 2;
    const lu_tensor *dO = c->in[0], *dW = m == 3 ? c->in[2] : NULL, *q = c->in[m], *o = c->in[m + 5];
    const lu_tensor *lse = c->in[m + 6], *w = m == 3 ? c->in[m + 7] : NULL;
    lu_tensor *dq = c->out[0], *dk = c->out[1], *dv = c->out[2];
    if (!lse) return lu_errorf(LU_ERR_INVALID, "attention backward: lse (input %d) is missing", m + 6);
    att_args a;
    LU_TRY(att_args_of(p, q, c->in[m + 1], c->in[m + 2], c->in[m + 3], c->in[m + 4], lse, &a));
    const lu_tensor *grads[5] = {dO, dW, dq, dk, dv};
    for (int i = 0; i < 5; i++)
        if (grads[i] && grads[i]->dtype != q->dtype)
            return lu_errorf(LU_ERR_DTYPE, "attention backward: gradient operand %d is %s, expected %s", i,
                             lu_dtype_name(grads[i]->dtype), lu_dtype_name(q->dtype));
    if (dO && (!o || o->dtype != q->dtype))
        return lu_errorf(LU_ERR_INVALID, "attention backward: the output o (input %d) is missing or not %s", m + 5,
                         lu_dtype_name(q->dtype));
    if (dW && (!w || w->dtype != q->dtype))
        return lu_errorf(LU_ERR_INVALID, "attention backward: the weights (input %d) are missing or not %s", m + 7,
                         lu_dtype_name(q->dtype));
    if (!dO && !dW) {
        LU_TRY(att_zero(dq));
        LU_TRY(att_zero(dk));
        return att_zero(dv);
    }
    int64_t rows = a.b * a.hq * a.rg.tq;
    lu_tensor *dsum = lu_tensor_empty(LU_F32, 1, &rows, LU_CUDA);
    if (!dsum) return lu_error_code();
    lu_status st = att_backward_run(a, dO ? lu_tensor_data(dO) : NULL, dO ? lu_tensor_data(o) : NULL,
                                    dW ? lu_tensor_data(dW) : NULL, dW ? lu_tensor_data(w) : NULL, lu_tensor_data(lse),
                                    (float *)lu_tensor_data(dsum), dq, dk, dv);
    lu_tensor_release(dsum);
    return st;
}

extern "C" void lu_cuda_register_attention(lu_backend *b)
{
    b->forward[LU_OP_ATTENTION] = attention_forward;
    b->backward[LU_OP_ATTENTION] = attention_backward;
}
