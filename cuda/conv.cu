/* conv.cu - CUDA kernels of CONV1D and CONV2D, forward and backward, f32 and bf16 with fp32
 * math (core/cpu/conv.c is the reference). A conv1d is a conv2d with H = KH = 1. Three paths:
 *  - fast depthwise conv1d (groups == Cin == Cout, stride 1 or 2, dilation 1, K <= 257: the
 *    Conformer/Zipformer convolution modules, memory-bound): a block stages a tile of a few
 *    rows of one channel in shared memory with vector loads and runs them as stride-1
 *    correlations, 4 outputs per thread with the inputs sliding through registers (geometry in
 *    conv_tiles.h); for K <= 82 (75 at stride 2) the forward runs on the tensor cores instead
 *    (f32 as three bf16 parts a value), a warp a row, each 128 outputs a few products of the
 *    staged inputs' rows with a band matrix of the taps, and so does dx at stride 1 (a
 *    correlation of dy with the reversed taps); dx is otherwise the transposed convolution of a
 *    dy tile; dw and dbias are per-block partial sums over several rows of a channel that a
 *    second kernel adds up in a fixed order;
 *  - other depthwise convolutions (Cin == groups): direct kernels, one thread per output
 *    element, per dx element, and one block per weight;
 *  - the rest, per group: y_g = w_g @ im2col(x_g) through cuBLAS (lu_cuda_gemm), the batch taken
 *    in chunks that bound the column buffer; dx = col2im(w_g^T @ dy_g) with col2im gathering
 *    (each dx element adds its taps in order); dw = sum over the batch of dy_g @ col_g^T in fp32.
 * No float atomics anywhere: results are deterministic. */
#include <errno.h>
#include <stdlib.h>

#include "conv_tiles.h"
#include "mma.cuh"
#include "rows.cuh"

/* One geometry for both ops (as core/cpu/conv.c): axis 0 height, axis 1 width (time). */
typedef struct conv_geom {
    int64_t batch, cin, cout, h, w, kh, kw, oh, ow, groups;
    int64_t stride[2], pad[2], dil[2];
} conv_geom;

/* Column buffers of the GEMM path hold at most this many elements (the batch is chunked), or
 * LUTHIER_CONV_COLUMNS (col_chunk). */
#define COL_CAP ((int64_t)1 << 25)

/* ---- geometry and checks ---- */

/* Fills g from x [B,Cin,(H,)W], w [Cout,Cin/g,(KH,)KW] and y (or dy) [B,Cout,(OH,)OW], and checks
 * that they fit the params (the frontend did; a direct kernel call may not have). */
static lu_status conv_geom_of(const lu_op_call *c, const lu_tensor *x, const lu_tensor *w, const lu_tensor *y,
                              conv_geom *g)
{
    int nsp = c->op == LU_OP_CONV1D ? 1 : 2;
    const char *name = lu_op_name(c->op);
    if (x->ndim != nsp + 2 || w->ndim != nsp + 2 || y->ndim != nsp + 2)
        return lu_errorf(LU_ERR_SHAPE, "%s: x, w and y need %d dims (got %d, %d, %d)", name, nsp + 2, x->ndim, w->ndim,
                         y->ndim);
    memset(g, 0, sizeof *g);
    g->batch = x->shape[0];
    g->cin = x->shape[1];
    g->cout = w->shape[0];
    if (nsp == 1) {
        const lu_conv1d_params *p = (const lu_conv1d_params *)c->params;
        g->h = g->kh = g->oh = 1;
        g->w = x->shape[2];
        g->kw = w->shape[2];
        g->ow = y->shape[2];
        g->groups = p->groups;
        g->stride[0] = g->dil[0] = 1;
        g->stride[1] = p->stride;
        g->pad[1] = p->padding;
        g->dil[1] = p->dilation;
    } else {
        const lu_conv2d_params *p = (const lu_conv2d_params *)c->params;
        g->h = x->shape[2];
        g->w = x->shape[3];
        g->kh = w->shape[2];
        g->kw = w->shape[3];
        g->oh = y->shape[2];
        g->ow = y->shape[3];
        g->groups = p->groups;
        for (int a = 0; a < 2; a++) {
            g->stride[a] = p->stride[a];
            g->pad[a] = p->padding[a];
            g->dil[a] = p->dilation[a];
        }
    }
    bool ok = g->groups >= 1 && g->cin % g->groups == 0 && g->cout % g->groups == 0 &&
              w->shape[1] * g->groups == g->cin && y->shape[0] == g->batch && y->shape[1] == g->cout;
    const int64_t n[2] = {g->h, g->w}, k[2] = {g->kh, g->kw}, o[2] = {g->oh, g->ow};
    for (int a = 0; a < 2 && ok; a++) {
        int64_t span = n[a] + 2 * g->pad[a] - g->dil[a] * (k[a] - 1) - 1;
        ok = g->stride[a] >= 1 && g->dil[a] >= 1 && g->pad[a] >= 0 && k[a] >= 1 && span >= 0 &&
             o[a] == span / g->stride[a] + 1;
    }
    if (!ok) {
        char sx[LU_SHAPE_STR_MAX], sw[LU_SHAPE_STR_MAX], sy[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "%s: x %s, w %s and y %s do not fit groups %lld, stride %lldx%lld, padding "
                         "%lldx%lld, dilation %lldx%lld", name, lu_shape_str(x, sx, sizeof sx),
                         lu_shape_str(w, sw, sizeof sw), lu_shape_str(y, sy, sizeof sy), (long long)g->groups,
                         (long long)g->stride[0], (long long)g->stride[1], (long long)g->pad[0], (long long)g->pad[1],
                         (long long)g->dil[0], (long long)g->dil[1]);
    }
    return LU_OK;
}

static bool conv_is_pointwise(const conv_geom *g)
{
    return g->kh == 1 && g->kw == 1 && g->stride[0] == 1 && g->stride[1] == 1 && g->pad[0] == 0 && g->pad[1] == 0;
}


static unsigned item_blocks(int64_t items) { return (unsigned)(items < 1 ? 1 : items > 65535 ? 65535 : items); }

/* ---- fast depthwise conv1d (geometry in conv_tiles.h) ---- */

/* Rows of one channel (consecutive batch items) that a block stages together: the weights are
 * loaded once for them and twice the bytes are in flight per load (dx and dw). */
#define DW_ROWS 2
/* The same for the forward, which has each thread compute several groups of 4 outputs between
 * the block's one barrier and its end: the block's setup and its weights are paid once for them. */
#define DW_FWD_ROWS 4
/* Consecutive outputs of a row that a thread of the FMA kernels (forward, dx) computes at a time. */
#define DW_RUN 4

/* Group gi of dw_corr: taps 4gi..4gi+3 on the window win = xw[4gi, 4gi + DW_RUN + 4), which then
 * slides by 4 (the moves vanish where the groups are unrolled). */
static __device__ __forceinline__ void dw_corr_group(float (&acc)[DW_RUN], float (&win)[DW_RUN + 4], const float *xw,
                                                     const float *wt, int gi)
{
    const float4 c = *(const float4 *)(xw + 4 * gi + DW_RUN), wv = *(const float4 *)(wt + 4 * gi);
    win[DW_RUN] = c.x;
    win[DW_RUN + 1] = c.y;
    win[DW_RUN + 2] = c.z;
    win[DW_RUN + 3] = c.w;
    const float w[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
        for (int v = 0; v < DW_RUN; v++) acc[v] = fmaf(w[t], win[v + t], acc[v]);
#pragma unroll
    for (int i = 0; i < DW_RUN; i++) win[i] = win[i + 4];
}

/* acc[v] += sum over i < 4*groups of wt[i] xw[v + i], v < DW_RUN: xw and wt 16-byte aligned,
 * the inputs sliding through registers, one 16-byte shared load of inputs and one of weights per 4
 * taps; each acc[v] adds its taps in ascending order. G > 0 groups are unrolled: the loads are at
 * fixed offsets, and the weights, the same for every run of a block, may stay in registers from
 * one run to the next. G == 0 takes `groups` at run time. */
template <int G>
static __device__ __forceinline__ void dw_corr(float (&acc)[DW_RUN], const float *xw, const float *wt, int groups)
{
    float win[DW_RUN + 4];
#pragma unroll
    for (int i = 0; i < DW_RUN; i += 4) {
        const float4 a = *(const float4 *)(xw + i);
        win[i] = a.x;
        win[i + 1] = a.y;
        win[i + 2] = a.z;
        win[i + 3] = a.w;
    }
    if (G > 0) {
#pragma unroll
        for (int gi = 0; gi < G; gi++) dw_corr_group(acc, win, xw, wt, gi);
    } else {
        for (int gi = 0; gi < groups; gi++) dw_corr_group(acc, win, xw, wt, gi);
    }
}

/* The finiteness check of the staged values: chk + v*0 stays 0 while every v is finite and is NaN
 * once one is Inf or NaN, one instruction per value. */
static __device__ __forceinline__ float dw_check(float chk, float v) { return fmaf(v, 0.0f, chk); }

/* Weights a thread holds between dw_load_weights and dw_store_weights, per phase (blocks of
 * LU_DW_THREADS threads, as every depthwise launch has). */
#define DW_WPER ((LU_DW_WLEN + LU_DW_THREADS - 1) / LU_DW_THREADS)

/* Weight phases of the channel's taps wc[0, K), zero-padded to groups of 4: ws[r][i] = wc[S*i + r]
 * (forward), or the reversed ws[c][i] = wc[S*(kc-1-i) + c] (dx), in two halves: dw_load_weights
 * reads this thread's taps (i = threadIdx.x + j LU_DW_THREADS) into registers, dw_store_weights
 * stores them, so that a kernel issues its other global loads between the two and waits for
 * memory once, not first for the weights. */
template <typename T, int S>
static __device__ __forceinline__ void dw_load_weights(const T *wc, int K, bool reversed, float (&v)[S][DW_WPER])
{
#pragma unroll
    for (int r = 0; r < S; r++) {
        const int kr = (int)lu_dw_phase_taps(K, S, r);
#pragma unroll
        for (int j = 0; j < DW_WPER; j++) {
            const int i = (int)threadIdx.x + j * LU_DW_THREADS;
            v[r][j] = i < kr ? lu_ld(wc, S * (reversed ? kr - 1 - i : i) + r) : 0.0f;
        }
    }
}

/* Returns whether this thread's weights are finite. */
template <int S>
static __device__ __forceinline__ bool dw_store_weights(const float (&v)[S][DW_WPER], int K, float (*ws)[LU_DW_WLEN])
{
    const int n = (int)lu_dw_ceil4(lu_dw_phase_taps(K, S, 0));
    float chk = 0.0f;
#pragma unroll
    for (int r = 0; r < S; r++)
#pragma unroll
        for (int j = 0; j < DW_WPER; j++) {
            const int i = (int)threadIdx.x + j * LU_DW_THREADS;
            if (i < n) {
                ws[r][i] = v[r][j];
                chk = dw_check(chk, v[r][j]);
            }
        }
    return chk == 0.0f;
}

/* Four elements as loaded by the forward's staging (16 bytes of f32, 8 of bf16), and as floats. */
template <typename T> struct dw_raw4 {
    typedef uint4 type;
};
template <> struct dw_raw4<uint16_t> {
    typedef uint2 type;
};

static __device__ __forceinline__ void dw_unpack(uint4 u, float (&v)[4])
{
    v[0] = __uint_as_float(u.x);
    v[1] = __uint_as_float(u.y);
    v[2] = __uint_as_float(u.z);
    v[3] = __uint_as_float(u.w);
}

static __device__ __forceinline__ void dw_unpack(uint2 u, float (&v)[4])
{
    v[0] = __uint_as_float(u.x << 16);
    v[1] = __uint_as_float(u.x & 0xffff0000u);
    v[2] = __uint_as_float(u.y << 16);
    v[3] = __uint_as_float(u.y & 0xffff0000u);
}

/* Stores one lane's VP (4 or 2) values pv of a phase array, positions idx0 + [0, VP) with dst =
 * that array + idx0 and idx0 + SH a multiple of VP: the VP positions from idx0 + SH take pv[SH, VP)
 * and the next lane's first SH values nb in one 16-byte (8-byte) store, the lanes of a warp on
 * consecutive addresses. A lane without a next lane (the warp's last, or the row's) stores its own
 * values past SH alone; with head (the warp's lane 0, which no lane before covers) it also stores
 * pv[0, SH). */
template <int VP, int SH>
static __device__ __forceinline__ void dw_store_phase(float *dst, const float (&pv)[VP], const float (&nb)[3],
                                                      bool head, bool next)
{
    if (head)
#pragma unroll
        for (int e = 0; e < SH; e++) dst[e] = pv[e];
    if (SH == 0 || next) {
        float o[VP];
#pragma unroll
        for (int j = 0; j < VP; j++) o[j] = j + SH < VP ? pv[j + SH] : nb[j + SH < VP ? 0 : j + SH - VP];
        if (VP == 2)
            *(float2 *)(dst + SH) = make_float2(o[0], o[1]);
        else
            *(float4 *)(dst + SH) = make_float4(o[0], o[1], o[2], o[3 % VP]);
    } else {
#pragma unroll
        for (int e = SH; e < VP; e++) dst[e] = pv[e];
    }
}

/* The input window of a tile of outputs [o0, o0 + cnt) of `rows` rows (row r at xr + r*xstride,
 * n frames): input frames [in0, in0 + span), [lo, hi) of them inside the row, and [a[r], b[r])
 * the part of [lo, hi) that aligned 4-element vectors of row r cover, `most` the longest. Frames
 * fit in 32 bits (dw_fits_grid). */
template <int R> struct dw_window {
    int in0, lo, hi, a[R], b[R], most;
};

template <typename T, int S, int R>
static __device__ __forceinline__ dw_window<R> dw_window_of(const T *xr, int64_t xstride, int rows, int n, int o0,
                                                            int cnt, int p, int K)
{
    dw_window<R> w;
    int64_t span;
    w.in0 = (int)lu_dw_x_window(o0, cnt, S, p, K, &span);
    w.lo = w.in0 > 0 ? w.in0 : 0;
    w.hi = w.in0 + span < n ? w.in0 + (int)span : n;
    w.most = 0;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int mis = (int)(((uintptr_t)xr / sizeof(T) + (uint64_t)(r * xstride)) % 4);
        w.a[r] = w.lo + (-(w.lo + mis) & 3);
        w.a[r] = w.a[r] < w.hi ? w.a[r] : w.hi;
        w.b[r] = w.a[r] + ((w.hi - w.a[r]) & ~3);
        w.most = r < rows && w.b[r] - w.a[r] > w.most ? w.b[r] - w.a[r] : w.most;
    }
    return w;
}

/* The at most 3 + 3 elements of each row around its aligned middle: edge[r][0] = element lo + t
 * of [lo, a[r]) and edge[r][1] = element b[r] + t of [b[r], hi), t = threadIdx.x, 0 where none. */
template <typename T, int R>
static __device__ __forceinline__ void dw_load_edges(const dw_window<R> &w, const T *xr, int64_t xstride, int rows,
                                                     float (&edge)[R][2])
{
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int end = 0; end < 2; end++) {
            const int i = (end ? w.b[r] : w.lo) + threadIdx.x;
            edge[r][end] = r < rows && i < (end ? w.hi : w.a[r]) ? lu_ld(xr + r * xstride, i) : 0.0f;
        }
}

/* Stores a tile's window for the forward and dw: row r at xs + r*rstride as S phases of `fill`
 * floats, plen floats apart (xs, plen and rstride 16-byte aligned), window position k in phase
 * k % S at k / S, zero outside the input and past the window. The middle comes from row r at
 * xr + r*xstride, its 4 elements a[r] + m.. as a raw vector, every row's read before the first
 * store (so that a block waits for memory once); the edges from dw_load_edges. Returns whether
 * this thread's inputs are finite.
 * A lane's 4 elements are 4/S consecutive positions of each phase, the next lane's the 4/S after
 * them, but the padding shifts those positions off the grid of the vector stores (K 31, padding
 * 15: by 3 floats): so each lane hands its first values to the lane before (shuffles) and stores
 * one aligned vector a phase (dw_store_phase). A warp's 512 bytes of stores then take 4
 * shared-memory wavefronts (S 1; 4-byte stores 16 bytes apart took 16) or 4 (S 2; took 8). */
template <typename T, int S, int R>
static __device__ __forceinline__ bool dw_store_window(const dw_window<R> &w, const T *xr, int64_t xstride, int rows,
                                                       int fill, float *xs, int plen, int rstride,
                                                       const float (&edge)[R][2])
{
    constexpr int VP = 4 / S;
    typedef typename dw_raw4<T>::type raw_t;
    const int lane = (int)(threadIdx.x & 31);
    /* window positions [0, k_lo) and [k_hi, S*fill) are padding */
    const int k_lo = w.lo - w.in0 < S * fill ? w.lo - w.in0 : S * fill;
    const int k_hi = w.hi - w.in0 > k_lo ? w.hi - w.in0 : k_lo;
    for (int r = 0; r < rows; r++) {
        for (int k = threadIdx.x; k < k_lo; k += blockDim.x) xs[r * rstride + k % S * plen + k / S] = 0.0f;
        for (int k = k_hi + threadIdx.x; k < S * fill; k += blockDim.x) xs[r * rstride + k % S * plen + k / S] = 0.0f;
    }
    float chk = 0.0f;
    /* the loop and the skips below are the same for a warp's lanes (blockDim.x is a multiple of
     * 32), which all take part in the shuffles; a row's loaded lanes are the first of the warp */
    for (int m = 4 * (int)threadIdx.x; m - 4 * lane < w.most; m += 4 * blockDim.x) {
        raw_t raw[R]; /* unpacked as they are stored */
#pragma unroll
        for (int r = 0; r < R; r++) raw[r] = r < rows && w.a[r] + m < w.b[r] ? *(const raw_t *)(xr + r * xstride + w.a[r] + m) : raw_t{};
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= rows || w.a[r] + m - 4 * lane >= w.b[r]) continue;
            const bool mine = w.a[r] + m < w.b[r], next = lane < 31 && w.a[r] + m + 4 < w.b[r];
            const int k = w.a[r] + m - w.in0;
            float v[4];
            dw_unpack(raw[r], v);
#pragma unroll
            for (int e = 0; e < 4; e++) chk = dw_check(chk, v[e]);
#pragma unroll
            for (int ph = 0; ph < S; ph++) {
                const bool odd = S == 2 && ((ph - k) & 1); /* the lane's first value in phase ph is v[odd] */
                const int idx0 = (k + odd) / S;
                float pv[VP], nb[3];
#pragma unroll
                for (int j = 0; j < VP; j++) pv[j] = odd ? v[S * j + (S - 1)] : v[S * j];
#pragma unroll
                for (int j = 0; j < 3; j++) nb[j] = j < VP - 1 ? __shfl_down_sync(0xffffffffu, pv[j], 1) : 0.0f;
                float *dst = xs + r * rstride + ph * plen + idx0;
                if (!mine) continue;
                switch (-idx0 & (VP - 1)) {
                case 0: dw_store_phase<VP, 0>(dst, pv, nb, false, next); break;
                case 1: dw_store_phase<VP, 1>(dst, pv, nb, lane == 0, next); break;
                case 2: dw_store_phase<VP, VP == 4 ? 2 : 0>(dst, pv, nb, lane == 0, next); break;
                default: dw_store_phase<VP, VP == 4 ? 3 : 0>(dst, pv, nb, lane == 0, next); break;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
        for (int end = 0; end < 2; end++) {
            const int i = (end ? w.b[r] : w.lo) + threadIdx.x;
            if (r < rows && i < (end ? w.hi : w.a[r])) {
                const int k = i - w.in0;
                xs[r * rstride + k % S * plen + k / S] = edge[r][end];
                chk = dw_check(chk, edge[r][end]);
            }
        }
    return chk == 0.0f;
}

/* Loads and stores (dw_store_window) the window of the tile of outputs [o0, o0 + cnt) of `rows` <=
 * R rows from global memory. */
template <typename T, int S, int R>
static __device__ __forceinline__ bool dw_stage_rows(const T *xr, int64_t xstride, int rows, int n, int o0, int cnt,
                                                     int p, int K, int fill, float *xs, int plen, int rstride)
{
    const dw_window<R> w = dw_window_of<T, S, R>(xr, xstride, rows, n, o0, cnt, p, K);
    float edge[R][2];
    dw_load_edges<T, R>(w, xr, xstride, rows, edge);
    return dw_store_window<T, S, R>(w, xr, xstride, rows, fill, xs, plen, rstride, edge);
}

/* The rows of a block: blockIdx.x = channel + C * (batch / rows_per_block), gridDim.x = C *
 * ceil(B / rows_per_block); the tile is blockIdx.y. Sets *ch and returns the number of rows, whose
 * first is (*b0)*C + *ch. */
static __device__ __forceinline__ int dw_block_rows(const conv_geom *g, int rows_per_block, int64_t *ch, int64_t *b0)
{
    *ch = blockIdx.x % (uint32_t)g->cin;
    *b0 = (int64_t)(blockIdx.x / (uint32_t)g->cin) * rows_per_block;
    return (int)(g->batch - *b0 < rows_per_block ? g->batch - *b0 : rows_per_block);
}

/* Bytes of the widest store of a run of DW_RUN outputs: the run, up to 16. */
template <typename T> struct dw_run_vec {
    static constexpr size_t bytes = DW_RUN * sizeof(T) < 16 ? DW_RUN * sizeof(T) : 16;
};

/* p[0, m) = v[0, m), m <= DW_RUN: a whole run as one vector store where p is aligned
 * for them (known where vec: the caller's whole tile is), else as pairs where it is aligned for
 * those, else (and the short run at a tile's end) one element at a time. Every index into v is
 * known at compile time: v stays in registers. */
template <typename T>
static __device__ __forceinline__ void dw_store_run(T *p, const float (&v)[DW_RUN], int m, bool vec)
{
    constexpr size_t VEC = dw_run_vec<T>::bytes;
    if (m == DW_RUN && (vec || (uintptr_t)p % VEC == 0)) {
        lu_stv(p, v);
    } else if (m == DW_RUN && (uintptr_t)p % (2 * sizeof(T)) == 0) {
#pragma unroll
        for (int e = 0; e < DW_RUN; e += 2) lu_st2(p + e, v + e);
    } else {
#pragma unroll
        for (int e = 0; e < DW_RUN; e++)
            if (e < m) lu_st(p, e, v[e]);
    }
}

/* Floats from one row's phases to the next in the forward's shared memory: an odd number of
 * 16-byte units, so that consecutive rows start in different banks. */
static __host__ __device__ __forceinline__ int dw_fwd_row_stride(int s, int fill) { return s * fill | 4; }

/* The outputs of a forward tile from its staged rows xs (row r at r*rstride, its S phases `fill`
 * floats apart) and weights ws, whose staging this thread found finite where ok: the block's
 * threads take runs of DW_RUN outputs and store them straight from registers, an 8-lane group 32
 * consecutive outputs of one row. Phase 0 has G groups of 4 taps (0: not known at compile time),
 * phase 1 G or G - 1. A tile whose staged values are not all finite takes the exact path. Starts
 * with a barrier. */
template <typename T, int S, int G>
static __device__ __forceinline__ void dw_forward_outputs(const float *xs, const float (*ws)[LU_DW_WLEN], bool ok,
                                                          const conv_geom &g, T *yr, int rows, int o0, int cnt,
                                                          int fill, float b)
{
    const int rstride = dw_fwd_row_stride(S, fill), K = (int)g.kw;
    /* From one batch item to the next; the tile's outputs lie within 2^31 elements (dw_fits_grid). */
    const int ystride = (int)(g.cin * g.ow);
    /* Runs start at multiples of DW_RUN in their rows: with yr and the row stride aligned, every
     * whole run takes the vector store without a check of its own. */
    constexpr int VEL = (int)(dw_run_vec<T>::bytes / sizeof(T));
    const bool vec = (uintptr_t)yr % dw_run_vec<T>::bytes == 0 && ystride % VEL == 0;
    if (__syncthreads_and(ok)) {
        const int g0 = G > 0 ? G : (int)lu_dw_ceil4(lu_dw_phase_taps(K, S, 0)) / 4;
        const int g1 = S == 2 ? (int)lu_dw_ceil4(lu_dw_phase_taps(K, S, 1)) / 4 : 0;
        const int chunks = (cnt + 31) / 32, lane_q = (threadIdx.x & 7) * DW_RUN;
        for (int r = 0, c = threadIdx.x >> 3;; c += blockDim.x >> 3) {
            while (r < rows && c >= chunks) {
                c -= chunks;
                r++;
            }
            if (r == rows) break;
            const int q = 32 * c + lane_q;
            if (q >= cnt) continue;
            float acc[DW_RUN];
#pragma unroll
            for (int v = 0; v < DW_RUN; v++) acc[v] = b;
            const float *xw = xs + r * rstride + q;
            dw_corr<G>(acc, xw, ws[0], g0);
            if (S == 2) {
                if (G == 0 || g1 == G) dw_corr<G>(acc, xw + fill, ws[1], g1);
                else if (G > 1) dw_corr<(G > 1 ? G - 1 : 1)>(acc, xw + fill, ws[1], g1);
            }
            dw_store_run(yr + (r * ystride + q), acc, cnt - q < DW_RUN ? cnt - q : DW_RUN, vec);
        }
    } else {
        for (int r = 0; r < rows; r++)
            for (int q = threadIdx.x; q < cnt; q += blockDim.x)
                lu_st(yr + r * ystride, q,
                      lu_dw_fwd_exact(xs + r * rstride, fill, &ws[0][0], b, q, o0, (int)g.w, S, (int)g.pad[1], K));
    }
}

/* The depthwise forward, a block per (DW_FWD_ROWS rows of one channel, tile of LU_DW_TILE
 * outputs): stages its rows (dynamic shared memory: row r at r * dw_fwd_row_stride, its S phases
 * `fill` floats apart, fill = lu_dw_fwd_fill_upto of the longest tile) and computes their outputs
 * (dw_forward_outputs). */
template <typename T, int S, int G>
static __global__ void __launch_bounds__(LU_DW_THREADS) dw_forward_kernel(const T *x, const T *w, const T *bias, T *y,
                                                                          conv_geom g, int fill)
{
    extern __shared__ __align__(16) float dw_fwd_xs[];
    __shared__ __align__(16) float ws[S][LU_DW_WLEN];
    const int OT = (int)g.ow, K = (int)g.kw, o0 = blockIdx.y * LU_DW_TILE;
    const int cnt = OT - o0 < LU_DW_TILE ? OT - o0 : LU_DW_TILE;
    int64_t ch, b0;
    const int rows = dw_block_rows(&g, DW_FWD_ROWS, &ch, &b0);
    float wv[S][DW_WPER];
    dw_load_weights<T, S>(w + ch * K, K, false, wv);
    bool ok = dw_stage_rows<T, S, DW_FWD_ROWS>(x + (b0 * g.cin + ch) * g.w, g.cin * g.w, rows, (int)g.w, o0, cnt,
                                               (int)g.pad[1], K, fill, dw_fwd_xs, fill, dw_fwd_row_stride(S, fill));
    ok = dw_store_weights<S>(wv, K, ws) && ok;
    dw_forward_outputs<T, S, G>(dw_fwd_xs, ws, ok, g, y + (b0 * g.cin + ch) * g.ow + o0, rows, o0, cnt, fill,
                                bias ? lu_ld(bias, ch) : 0.0f);
}

/* ---- the tensor-core forward and stride-1 dx (LUTHIER_DW_MMA) ---- */

/* A row's outputs in units of 128, each a product of matrices on the tensor cores (mma.sync
 * m16n8k16, bf16 operands, fp32 sums): output 8m + n of the unit (m < 16, n < 8) is the sum
 * over steps s < NKS of A_s[m][k] B_s[k][n], k < 16, where A_s[m][k] = xs[8Sm + 16s + k] is row
 * m of the unit's staged inputs (rows 8S elements apart, read by ldmatrix), and B_s[k][n] =
 * w[16s + k - off - Sn] (0 outside [0, K)) a band of the taps, held in registers. xs holds the
 * row from `off` elements before the tile's first input, so that its chunks of 8 are aligned in
 * global memory as ldmatrix needs them aligned in shared memory: the shift moves into B. A step
 * is one ldmatrix and one mma for 128 outputs, where the FMA kernels issue 64 warp instructions
 * (128 x 16 FMAs), and the outputs land as pairs of consecutive elements, a warp's stores on
 * consecutive bytes. f32 takes each value as three bf16 parts (dw_mma_parts). A warp stages,
 * checks and computes its row alone: no block barrier. */
#define DW_MMA_WARPS 4 /* rows of a block (batch items of one channel): a warp a row */
#define DW_MMA_UNITS 4 /* units of 128 outputs a row of a tile: a tile of 512 (LU_DW_TILE) */

/* Steps of 16 columns of B a unit takes: every k = off + Sn + j with off, n < 8, j < K. */
static int dw_mma_steps(int64_t k, int s) { return (int)((7 + 7 * s + k + 15) / 16); }

/* Elements a staged row holds (what the last unit's last step reads), in chunks of 8. */
template <int S, int NKS> struct dw_mma_shape {
    static constexpr int LEN = S * 128 * (DW_MMA_UNITS - 1) + 8 * S * 15 + 16 * NKS;
    static constexpr int CHUNKS = LEN / 8;
    static constexpr int ITER = (CHUNKS + 31) / 32;
};

/* The bf16 parts of the staged values: a bf16 value is its own part. An f32 value x is three,
 * x0 = bf16(x), x1 = bf16(x - x0), x2 = bf16(x - x0 - x1) (rounded to nearest; the differences
 * exact), which hold its 24 bits; a product w x is the six products of parts w_i x_j with i + j
 * <= 2, the three left out below 2^-24 of it. `bad` sets bit 15 or 31 of acc where a value is
 * Inf or NaN, or (f32) of a magnitude from 2^127 on, whose first part could round to Inf: the
 * row then takes the exact path. */
template <typename T> struct dw_mma_parts;

template <> struct dw_mma_parts<uint16_t> {
    static constexpr int P = 1;
    typedef uint4 raw; /* 8 elements */
    static __device__ __forceinline__ uint32_t bad(uint32_t acc, uint32_t pair)
    {
        return acc | ((pair & 0x7f807f80u) + 0x00800080u); /* the halves' sums do not carry */
    }
    static __device__ __forceinline__ uint32_t bad(uint32_t acc, const raw &v)
    {
        return bad(bad(bad(bad(acc, v.x), v.y), v.z), v.w);
    }
    static __device__ __forceinline__ raw load(const uint16_t *base, int k0, int klo, int khi)
    {
        if (k0 >= klo && k0 + 8 <= khi) return *(const uint4 *)(base + k0);
        uint32_t w[4] = {0, 0, 0, 0};
        if (k0 + 8 > klo && k0 < khi)
#pragma unroll
            for (int e = 0; e < 8; e++)
                if (k0 + e >= klo && k0 + e < khi) w[e / 2] |= (uint32_t)base[k0 + e] << (16 * (e % 2));
        return make_uint4(w[0], w[1], w[2], w[3]);
    }
    static __device__ __forceinline__ void split(const raw &v, uint4 (&out)[P]) { out[0] = v; }
    static __device__ __forceinline__ void split(uint16_t w, uint16_t (&out)[P]) { out[0] = w; }
    static __device__ __forceinline__ uint16_t zero() { return 0; }
};

template <> struct dw_mma_parts<float> {
    static constexpr int P = 3;
    struct raw {
        float4 a, b;
    };
    static __device__ __forceinline__ uint32_t bad(uint32_t acc, float x)
    {
        return acc | ((__float_as_uint(x) & 0x7f800000u) + 0x01000000u); /* exponent 254 or 255 */
    }
    static __device__ __forceinline__ uint32_t bad(uint32_t acc, const raw &v)
    {
        return bad(bad(bad(bad(bad(bad(bad(bad(acc, v.a.x), v.a.y), v.a.z), v.a.w), v.b.x), v.b.y), v.b.z), v.b.w);
    }
    static __device__ __forceinline__ raw load(const float *base, int k0, int klo, int khi)
    {
        if (k0 >= klo && k0 + 8 <= khi) return raw{*(const float4 *)(base + k0), *(const float4 *)(base + k0 + 4)};
        float e8[8];
#pragma unroll
        for (int e = 0; e < 8; e++) e8[e] = k0 + e >= klo && k0 + e < khi ? base[k0 + e] : 0.0f;
        return raw{make_float4(e8[0], e8[1], e8[2], e8[3]), make_float4(e8[4], e8[5], e8[6], e8[7])};
    }
    /* the parts of lo and hi as three bf16 pairs */
    static __device__ __forceinline__ void split2(float lo, float hi, uint32_t (&p)[3])
    {
#pragma unroll
        for (int i = 0; i < 3; i++) {
            p[i] = lu_bf16x2_rn(lo, hi);
            lo -= __uint_as_float(p[i] << 16);
            hi -= __uint_as_float(p[i] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ void split(const raw &v, uint4 (&out)[P])
    {
        const float x[8] = {v.a.x, v.a.y, v.a.z, v.a.w, v.b.x, v.b.y, v.b.z, v.b.w};
        uint32_t q[4][3];
#pragma unroll
        for (int i = 0; i < 4; i++) split2(x[2 * i], x[2 * i + 1], q[i]);
#pragma unroll
        for (int p = 0; p < P; p++) out[p] = make_uint4(q[0][p], q[1][p], q[2][p], q[3][p]);
    }
    static __device__ __forceinline__ void split(float w, uint16_t (&out)[P])
    {
        uint32_t q[3];
        split2(w, 0.0f, q);
#pragma unroll
        for (int p = 0; p < P; p++) out[p] = (uint16_t)q[p];
    }
    static __device__ __forceinline__ float zero() { return 0.0f; }
};

/* y[0], y[1] = lo, hi: one store where y is aligned for the pair (vec). */
static __device__ __forceinline__ void dw_mma_store2(uint16_t *y, float lo, float hi, bool vec)
{
    if (vec) *(uint32_t *)y = lu_bf16x2_rn(lo, hi); /* finite or infinite sums: dtype.c's rounding */
    else {
        lu_st(y, 0, lo);
        lu_st(y, 1, hi);
    }
}

static __device__ __forceinline__ void dw_mma_store2(float *y, float lo, float hi, bool vec)
{
    if (vec) *(float2 *)y = make_float2(lo, hi);
    else {
        y[0] = lo;
        y[1] = hi;
    }
}

/* Warp r of block (channel blockIdx.x, tile blockIdx.y, batch items DW_MMA_WARPS blockIdx.z on)
 * takes row r. A row whose staged window or taps hold an Inf or a NaN takes the exact path (the
 * CPU's sums from global memory): a NaN or an Inf times B's zeros would reach outputs that do not
 * read it. With rev, the taps are taken in reverse, w[K - 1 - j] for tap j: dx of a stride-1
 * convolution is such a correlation of dy (dw_backward), whose exact path adds the taps of w in
 * order as the CPU's backward does. */
template <typename T, int S, int NKS>
static __global__ void __launch_bounds__(LU_DW_THREADS) dw_forward_mma_kernel(const T *x, const T *w, const T *bias,
                                                                              T *y, conv_geom g, bool rev)
{
    typedef dw_mma_shape<S, NKS> sh;
    typedef dw_mma_parts<T> pt;
    constexpr int P = pt::P, PADL = 7 + 7 * S, WZ = 16 * NKS + PADL + 1; /* wz[PADL + j]: tap j, 0 around */
    __shared__ __align__(16) uint32_t xs_all[DW_MMA_WARPS][P][sh::LEN / 2]; /* bf16 pairs */
    __shared__ uint16_t wz_all[DW_MMA_WARPS][P][WZ];
    const int K = (int)g.kw, o0 = blockIdx.y * LU_DW_TILE, warp = (int)(threadIdx.x >> 5);
    const int lane = (int)(threadIdx.x & 31);
    const int cnt = (int)(g.ow - o0 < LU_DW_TILE ? g.ow - o0 : LU_DW_TILE);
    const int64_t ch = blockIdx.x, b = (int64_t)blockIdx.z * DW_MMA_WARPS + warp;
    if (b >= g.batch) return;
    const int64_t row = b * g.cin + ch;
    const T *rowp = x + row * g.w, *wc = w + ch * K;
    /* rowp + a0 is aligned to 8 elements: a0 = in0 - off, in0 the tile's first input (below 0 in
     * the padding); the window [off, wend) within the row [-a0, T - a0) */
    const int64_t in0 = (int64_t)S * o0 - g.pad[1];
    const int off = (int)(((uintptr_t)rowp / sizeof(T) + (uintptr_t)in0) & 7u);
    const int64_t a0 = in0 - off, wend = off + (int64_t)S * (cnt - 1) + K, rend = g.w - a0;
    const int klo = (int)(-a0 > off ? -a0 : off), khi = (int)(wend < rend ? wend : rend);
    /* the taps and the window's chunks: every load of the warp in flight before the first use */
    T wv[(WZ + 31) / 32];
#pragma unroll
    for (int it = 0; it < (WZ + 31) / 32; it++) {
        const int j = 32 * it + lane - PADL;
        wv[it] = j >= 0 && j < K ? wc[rev ? K - 1 - j : j] : pt::zero();
    }
    typename pt::raw v[sh::ITER];
#pragma unroll
    for (int it = 0; it < sh::ITER; it++)
        if (32 * it + lane < sh::CHUNKS) v[it] = pt::load(rowp + a0, 8 * (32 * it + lane), klo, khi);
    const float bv = bias ? lu_ld(bias, ch) : 0.0f;
    uint32_t(*xs)[sh::LEN / 2] = xs_all[warp], bad = 0;
    uint16_t(*wz)[WZ] = wz_all[warp];
#pragma unroll
    for (int it = 0; it < (WZ + 31) / 32; it++)
        if (32 * it + lane < WZ) {
            uint16_t part[P];
            pt::split(wv[it], part);
#pragma unroll
            for (int p = 0; p < P; p++) wz[p][32 * it + lane] = part[p];
            bad = pt::bad(bad, wv[it]);
        }
#pragma unroll
    for (int it = 0; it < sh::ITER; it++)
        if (32 * it + lane < sh::CHUNKS) {
            uint4 part[P];
            pt::split(v[it], part);
#pragma unroll
            for (int p = 0; p < P; p++) *(uint4 *)&xs[p][4 * (32 * it + lane)] = part[p];
            bad = pt::bad(bad, v[it]);
        }
    T *yr = y + row * g.ow + o0;
    __syncwarp(); /* the lanes' stores to xs and wz before the others read them */
    if (!__any_sync(0xffffffffu, bad & 0x80008000u)) {
        /* B_s[k][n] of part p for this lane: k = 2 (l % 4) + {0, 1} (+ 8), n = l / 4 */
        uint32_t bf[P][NKS][2];
#pragma unroll
        for (int p = 0; p < P; p++) {
            const uint16_t *wl = wz[p] + 2 * (lane & 3) - off - S * (lane >> 2) + PADL;
#pragma unroll
            for (int s = 0; s < NKS; s++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    bf[p][s][h] = (uint32_t)wl[16 * s + 8 * h] | (uint32_t)wl[16 * s + 8 * h + 1] << 16;
        }
        const bool vec = (uintptr_t)yr % (2 * sizeof(T)) == 0;
        /* lane l gives row l % 8 of matrix l / 8: A's row (l & 7) + (l & 8), columns 8 (l / 16) on */
        const int arow = 8 * S * ((lane & 7) + (lane & 8)) + 8 * (lane >> 4);
        for (int u = 0; u < DW_MMA_UNITS && 128 * u < cnt; u++) {
            float acc[4] = {bv, bv, bv, bv};
#pragma unroll
            for (int s = 0; s < NKS; s++) {
                uint32_t a[P][4];
#pragma unroll
                for (int p = 0; p < P; p++) lu_ldsm(a[p], (const uint16_t *)xs[p] + arow + S * 128 * u + 16 * s);
                /* the parts' products, the smallest first: w_i x_j with i + j = 2, 1, 0 */
#pragma unroll
                for (int d = P - 1; d >= 0; d--)
#pragma unroll
                    for (int i = 0; i <= d; i++) lu_mma<true>(acc, a[d - i], bf[i][s][0], bf[i][s][1]);
            }
            /* acc[0..1]: outputs 8 (l / 4) + 2 (l % 4) and the next = 2l, 2l + 1; acc[2..3]: 64 on */
            const int q = 128 * u + 2 * lane;
            if (128 * u + 128 <= cnt) {
                dw_mma_store2(yr + q, acc[0], acc[1], vec);
                dw_mma_store2(yr + q + 64, acc[2], acc[3], vec);
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (q + 64 * (e / 2) + e % 2 < cnt) lu_st(yr, q + 64 * (e / 2) + e % 2, acc[e]);
            }
        }
    } else {
        /* the CPU's sums: the bias, then the taps inside the input in order */
        for (int q = lane; q < cnt; q += 32) {
            int64_t lo, hi;
            lu_conv_taps(o0 + q, S, g.pad[1], 1, K, g.w, &lo, &hi);
            float acc = bv;
            if (rev)
                for (int64_t j = hi - 1; j >= lo; j--) acc += lu_ld(wc, K - 1 - j) * lu_ld(rowp, in0 + S * q + j);
            else
                for (int64_t j = lo; j < hi; j++) acc += lu_ld(wc, j) * lu_ld(rowp, in0 + S * q + j);
            lu_st(yr, q, acc);
        }
    }
}

/* A block per (DW_ROWS rows of one channel, tile of LU_DW_TILE inputs); class c of the tile
 * (lu_dw_dx_class) takes the threads [c, c + 1) * LU_DW_THREADS/S, 4 members each. */
template <typename T, int S>
static __global__ void __launch_bounds__(LU_DW_THREADS) dw_dx_kernel(const T *dy, const T *w, T *dx, conv_geom g)
{
    __shared__ __align__(16) float dys[DW_ROWS][S][LU_DW_PHASE_LEN];
    __shared__ __align__(16) float ws[S][LU_DW_WLEN];
    __shared__ __align__(16) float xo[DW_ROWS][LU_DW_TILE];
    const int64_t T_ = g.w, OT = g.ow, p = g.pad[1], t0 = (int64_t)blockIdx.y * LU_DW_TILE;
    const int K = (int)g.kw, fill = (int)lu_dw_dx_fill(K, S);
    const int mine = threadIdx.x / (LU_DW_THREADS / S), q0 = 4 * (threadIdx.x % (LU_DW_THREADS / S));
    const int64_t cnt = T_ - t0 < LU_DW_TILE ? T_ - t0 : LU_DW_TILE;
    int64_t first[S], members[S], ob[S], need[S], lo = OT, hi = 0, ch, b0;
    int kc[S], za[S], zb[S];
    for (int c = 0; c < S; c++) {
        kc[c] = (int)lu_dw_dx_class(t0, cnt, S, p, K, c, &first[c], &members[c], &ob[c]);
        need[c] = members[c] > 0 && kc[c] > 0 ? members[c] + kc[c] - 1 : 0; /* dy entries with taps */
        if (need[c] > 0) {
            lo = ob[c] < lo ? ob[c] : lo;
            hi = ob[c] + need[c] > hi ? ob[c] + need[c] : hi;
        }
        /* entries [za, zb) hold dy[ob + m]; the others of [0, fill) are zero */
        int64_t a = ob[c] < 0 ? -ob[c] : 0, e = need[c] < OT - ob[c] ? need[c] : OT - ob[c];
        a = a < fill ? a : fill;
        za[c] = (int)a;
        zb[c] = (int)(e < a ? a : e > fill ? fill : e);
    }
    lo = lo > 0 ? lo : 0;
    hi = hi < OT ? hi : OT;
    const int rows = dw_block_rows(&g, DW_ROWS, &ch, &b0);
    float wv[S][DW_WPER];
    dw_load_weights<T, S>(w + ch * K, K, true, wv);
    bool ok = true;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < S; c++) {
            for (int m = threadIdx.x; m < za[c]; m += blockDim.x) dys[r][c][m] = 0.0f;
            for (int m = zb[c] + threadIdx.x; m < fill; m += blockDim.x) dys[r][c][m] = 0.0f;
        }
        lu_row_load(dy + ((b0 + r) * g.cin + ch) * OT, lo, hi, [&](int64_t o, float v) {
            for (int c = 0; c < S; c++)
                if (o - ob[c] >= 0 && o - ob[c] < need[c]) dys[r][c][o - ob[c]] = v;
            ok = ok && isfinite(v);
        });
    }
    ok = dw_store_weights<S>(wv, K, ws) && ok;
    if (__syncthreads_and(ok)) {
        for (int r = 0; r < rows && q0 < members[mine]; r++) {
            float acc[DW_RUN] = {0.0f, 0.0f, 0.0f, 0.0f};
            dw_corr<0>(acc, &dys[r][mine][q0], ws[mine], (int)lu_dw_ceil4(kc[mine]) / 4);
            if (S == 1) /* first == t0: the members are the tile's inputs */
                *(float4 *)&xo[r][q0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
            else
                for (int v = 0; v < 4; v++)
                    if (q0 + v < members[mine]) xo[r][first[mine] - t0 + S * (q0 + v)] = acc[v];
        }
    } else {
        for (int r = 0; r < rows; r++)
            for (int q = threadIdx.x; q < cnt; q += blockDim.x) {
                int c = (int)((t0 + q + p) % S);
                xo[r][q] = lu_dw_dx_exact(dys[r][c], ws[c], t0 + q, ob[c], OT, S, p, kc[c], c);
            }
    }
    __syncthreads();
    for (int r = 0; r < rows; r++)
        lu_row_store(dx + ((b0 + r) * g.cin + ch) * T_ + t0, cnt, [&](int64_t q) { return xo[r][q]; });
}

/* First stage of dw and dbias. Items are (channel, chunk of `per` consecutive units), a unit the
 * DW_ROWS rows from batch item 2*(u / tiles) in tile u % tiles. A thread holds LU_DW_WTAPS taps of
 * one phase (its combo: phase 0's groups, then phase 1's) for every unit of the item, summing
 * over the segments lane, lane + per_combo, ... of the unit's rows; the threads of combo 0 also
 * sum dy. Then partial[item*(K+1) + j] = tap j's sum over the combo's threads in order (j == K:
 * dbias). */
template <typename T, int S>
static __global__ void __launch_bounds__(LU_DW_THREADS) dw_partial_kernel(const T *dy, const T *x, float *partial,
                                                                          conv_geom g, int tiles, int per, int chunks)
{
    __shared__ __align__(16) float xs[DW_ROWS][S][LU_DW_PHASE_LEN];
    __shared__ __align__(16) float dys[DW_ROWS][LU_DW_DY_LEN];
    __shared__ float red[LU_DW_WTAPS + 1][LU_DW_THREADS];
    const int64_t T_ = g.w, OT = g.ow, p = g.pad[1];
    const int units = (int)((g.batch + DW_ROWS - 1) / DW_ROWS) * tiles;
    const int K = (int)g.kw, fill = (int)lu_dw_dw_fill(K, S), g0 = (int)lu_dw_dw_groups(K, S, 0);
    const int combos = g0 + (S == 2 ? (int)lu_dw_dw_groups(K, S, 1) : 0), per_combo = LU_DW_THREADS / combos;
    const int combo = threadIdx.x / per_combo, lane = threadIdx.x % per_combo;
    const int ph = combo < g0 ? 0 : 1, gi = combo - ph * g0, kr = (int)lu_dw_phase_taps(K, S, ph);
    const int64_t ch = blockIdx.x / chunks;
    const int chunk = blockIdx.x % chunks, u1 = (chunk + 1) * per < units ? (chunk + 1) * per : units;
    float acc[LU_DW_WTAPS] = {0.0f}, accb = 0.0f;
    for (int u = chunk * per; u < u1; u++) {
        const int64_t b0 = (int64_t)(u / tiles) * DW_ROWS, o0 = (int64_t)(u % tiles) * LU_DW_TILE;
        const int rows = (int)(g.batch - b0 < DW_ROWS ? g.batch - b0 : DW_ROWS);
        const int cnt = (int)(OT - o0 < LU_DW_TILE ? OT - o0 : LU_DW_TILE), nseg = (cnt + LU_DW_SEG - 1) / LU_DW_SEG;
        __syncthreads(); /* the previous unit is done with xs and dys */
        bool ok = true;
        for (int r = 0; r < rows; r++) {
            int64_t row = (b0 + r) * g.cin + ch;
            ok = dw_stage_rows<T, S, 1>(x + row * T_, 0, 1, (int)T_, (int)o0, cnt, (int)p, K, fill, &xs[r][0][0],
                                        LU_DW_PHASE_LEN, 0) && ok;
            for (int q = cnt + threadIdx.x; q < LU_DW_DY_LEN; q += blockDim.x) dys[r][q] = 0.0f;
            lu_row_load(dy + row * OT, o0, o0 + cnt, [&](int64_t o, float v) {
                dys[r][o - o0] = v;
                ok = ok && isfinite(v);
            });
        }
        ok = __syncthreads_and(ok);
        if (combo >= combos) continue;
        for (int si = lane; si < rows * nseg; si += per_combo) {
            const int r = si / nseg, qs = si % nseg * LU_DW_SEG;
            if (ok) {
                /* outputs qs.. in steps of 4: x_ph[q + 8gi .. q + 8gi + 11] in registers */
                const float *xw = &xs[r][ph][qs + LU_DW_WTAPS * gi], *dw = &dys[r][qs];
                float4 x0 = *(const float4 *)xw, x1 = *(const float4 *)(xw + 4);
                for (int q = 0; q < LU_DW_SEG; q += 4) {
                    float4 x2 = *(const float4 *)(xw + q + 8), d = *(const float4 *)(dw + q);
                    const float xv[12] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w, x2.x, x2.y, x2.z, x2.w};
                    const float dv[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
                    for (int v = 0; v < 4; v++)
#pragma unroll
                        for (int t = 0; t < LU_DW_WTAPS; t++) acc[t] = fmaf(dv[v], xv[v + t], acc[t]);
                    if (combo == 0) accb += dv[0] + dv[1] + dv[2] + dv[3];
                    x0 = x1;
                    x1 = x2;
                }
            } else {
                int qe = qs + LU_DW_SEG < cnt ? qs + LU_DW_SEG : cnt;
                for (int q = qs; q < qe; q++) {
#pragma unroll
                    for (int t = 0; t < LU_DW_WTAPS; t++)
                        if (LU_DW_WTAPS * gi + t < kr)
                            acc[t] += lu_dw_dw_term(xs[r][ph], dys[r][q], q, o0, T_, S, p, ph, LU_DW_WTAPS * gi + t);
                    if (combo == 0) accb += dys[r][q];
                }
            }
        }
    }
    for (int t = 0; t < LU_DW_WTAPS; t++) red[t][threadIdx.x] = acc[t];
    red[LU_DW_WTAPS][threadIdx.x] = accb;
    __syncthreads();
    for (int j = threadIdx.x; j <= K; j += blockDim.x) {
        int src = 0, t = LU_DW_WTAPS; /* dbias: combo 0's accb */
        if (j < K) {
            src = (j % S ? g0 : 0) + j / S / LU_DW_WTAPS;
            t = j / S % LU_DW_WTAPS;
        }
        /* tap j starts at lane j % per_combo: the threads of a warp read distinct banks */
        float v = 0.0f;
        for (int n = 0, l = j % per_combo; n < per_combo; n++, l = l + 1 < per_combo ? l + 1 : 0)
            v += red[t][src * per_combo + l];
        partial[(int64_t)blockIdx.x * (K + 1) + j] = v;
    }
}

/* Second stage: dw[c, j] (j < K) and dbias[c] (j == K) = the partials of channel c, chunk by
 * chunk. */
template <typename T>
static __global__ void dw_reduce_kernel(const float *partial, T *dw, T *db, int64_t C, int64_t K, int64_t chunks)
{
    LU_CUDA_FOR(idx, C * (K + 1))
    {
        int64_t ch = idx / (K + 1), j = idx % (K + 1);
        double acc = 0.0;
        for (int64_t k = 0; k < chunks; k++) acc += partial[(ch * chunks + k) * (K + 1) + j];
        if (j < K && dw) lu_st(dw, ch * K + j, (float)acc);
        if (j == K && db) lu_st(db, ch, (float)acc);
    }
}

/* Blocks of dw_partial_kernel: about DW_PARTIAL_PER_SM a multiprocessor (4224 on an H100), each
 * over whole units. */
#define DW_PARTIAL_PER_SM 32

/* The fast kernels index a block's rows and units in 32 bits, and a forward tile's outputs from
 * its first (DW_FWD_ROWS rows of C * OT apart), and the grid's second dimension holds the tiles. */
static bool dw_fits_grid(const conv_geom *g)
{
    int64_t tiles = ((g->w > g->ow ? g->w : g->ow) + LU_DW_TILE - 1) / LU_DW_TILE;
    return tiles <= 65535 && g->cin * ((g->batch + DW_ROWS - 1) / DW_ROWS) * tiles < INT32_MAX &&
           g->cin * g->ow * DW_FWD_ROWS < INT32_MAX;
}

/* The FMA forward (K > 82, or 75 at stride 2, and under LUTHIER_DW_MMA=0), a block per tile of
 * DW_FWD_ROWS rows; compiled for the group counts of K <= 32 (stride 1) and K <= 64 (stride 2),
 * G 0 counting the others' groups at run time. */
template <typename T, int S, int G>
static void dw_forward_run(const conv_geom *g, const void *x, const void *w, const void *bias, void *y, int fill)
{
    const int64_t groups = g->cin * ((g->batch + DW_FWD_ROWS - 1) / DW_FWD_ROWS);
    const int64_t nt = (g->ow + LU_DW_TILE - 1) / LU_DW_TILE;
    dw_forward_kernel<T, S, G><<<dim3((unsigned)groups, (unsigned)nt), LU_DW_THREADS,
                                 (size_t)DW_FWD_ROWS * dw_fwd_row_stride(S, fill) * sizeof(float)>>>(
        (const T *)x, (const T *)w, (const T *)bias, (T *)y, *g, fill);
}

template <typename T, int S>
static lu_status dw_forward(const conv_geom *g, const void *x, const void *w, const void *bias, void *y)
{
    const int fill = (int)lu_dw_fwd_fill_upto(g->kw, S, g->ow < LU_DW_TILE ? g->ow : LU_DW_TILE);
    switch (lu_dw_ceil4(lu_dw_phase_taps(g->kw, S, 0)) / 4) {
    case 1: dw_forward_run<T, S, 1>(g, x, w, bias, y, fill); break;
    case 2: dw_forward_run<T, S, 2>(g, x, w, bias, y, fill); break;
    case 3: dw_forward_run<T, S, 3>(g, x, w, bias, y, fill); break;
    case 4: dw_forward_run<T, S, 4>(g, x, w, bias, y, fill); break;
    case 5: dw_forward_run<T, S, 5>(g, x, w, bias, y, fill); break;
    case 6: dw_forward_run<T, S, 6>(g, x, w, bias, y, fill); break;
    case 7: dw_forward_run<T, S, 7>(g, x, w, bias, y, fill); break;
    case 8: dw_forward_run<T, S, 8>(g, x, w, bias, y, fill); break;
    default: dw_forward_run<T, S, 0>(g, x, w, bias, y, fill); break;
    }
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* Whether the forward and the stride-1 dx take the tensor cores (dw_forward_mma_kernel; f32 at
 * stride 2 does not: there the FMA kernel was the faster on an H200, 22.1 against 24.9 us,
 * benchmarks/gpu/2026-11-27-h200.md): not under LUTHIER_DW_MMA=0, the FMA kernels that
 * `luthier bench gpu` times against them. */
static bool dw_mma(void)
{
    const char *e = getenv("LUTHIER_DW_MMA");
    return !e || strcmp(e, "0");
}

template <typename T, int S, int NKS>
static void dw_forward_mma_launch(const conv_geom *g, const void *x, const void *w, const void *bias, void *y,
                                  bool rev)
{
    const dim3 grid((unsigned)g->cin, (unsigned)((g->ow + LU_DW_TILE - 1) / LU_DW_TILE),
                    (unsigned)((g->batch + DW_MMA_WARPS - 1) / DW_MMA_WARPS));
    dw_forward_mma_kernel<T, S, NKS>
        <<<grid, LU_DW_THREADS>>>((const T *)x, (const T *)w, (const T *)bias, (T *)y, *g, rev);
}

/* The tensor-core correlation where its steps fit (K <= 82 at stride 1, 75 at stride 2); false
 * where they do not. */
template <typename T, int S>
static bool dw_forward_mma(const conv_geom *g, const void *x, const void *w, const void *bias, void *y,
                           bool rev = false)
{
    if (g->cin > INT32_MAX || (g->batch + DW_MMA_WARPS - 1) / DW_MMA_WARPS > 65535) return false; /* the grid */
    switch (dw_mma_steps(g->kw, S)) {
    case 1: dw_forward_mma_launch<T, S, S == 1 ? 1 : 2>(g, x, w, bias, y, rev); return true; /* at stride 1 alone */
    case 2: dw_forward_mma_launch<T, S, 2>(g, x, w, bias, y, rev); return true;
    case 3: dw_forward_mma_launch<T, S, 3>(g, x, w, bias, y, rev); return true;
    case 4: dw_forward_mma_launch<T, S, 4>(g, x, w, bias, y, rev); return true;
    case 5: dw_forward_mma_launch<T, S, 5>(g, x, w, bias, y, rev); return true;
    case 6: dw_forward_mma_launch<T, S, 6>(g, x, w, bias, y, rev); return true;
    default: return false;
    }
}

/* dx of a stride-1 depthwise convolution on the tensor cores: dx[t] = sum over j of w[j]
 * dy[t + p - j], the correlation of dy (OT frames a row) with the reversed taps at padding
 * K - 1 - p, T outputs. */
template <typename T>
static bool dw_dx_mma(const conv_geom *g, const void *dy, const void *w, void *dx)
{
    conv_geom c = *g;
    c.w = g->ow;
    c.ow = g->w;
    c.pad[1] = g->kw - 1 - g->pad[1];
    return dw_forward_mma<T, 1>(&c, dy, w, NULL, dx, true);
}

template <typename T, int S>
static lu_status dw_backward(const conv_geom *g, const void *dy, const void *x, const void *w, void *dx, void *dw,
                             void *db)
{
    const int64_t pairs = (g->batch + DW_ROWS - 1) / DW_ROWS;
    if (dx && S == 1 && dw_mma() && dw_dx_mma<T>(g, dy, w, dx)) {
        LU_CUDA_CHECK_LAUNCH();
    } else if (dx) {
        dim3 grid((unsigned)(g->cin * pairs), (unsigned)((g->w + LU_DW_TILE - 1) / LU_DW_TILE));
        dw_dx_kernel<T, S><<<grid, LU_DW_THREADS>>>((const T *)dy, (const T *)w, (T *)dx, *g);
        LU_CUDA_CHECK_LAUNCH();
    }
    if (!dw && !db) return LU_OK;
    int64_t tiles = (g->ow + LU_DW_TILE - 1) / LU_DW_TILE, units = pairs * tiles;
    int64_t per = units * g->cin / ((int64_t)lu_cuda_sm_count() * DW_PARTIAL_PER_SM), chunks;
    per = per < 1 ? 1 : per;
    chunks = (units + per - 1) / per;
    void *partial;
    LU_TRY(lu_cuda_scratch_alloc(&partial, (size_t)(g->cin * chunks * (g->kw + 1)) * sizeof(float)));
    dw_partial_kernel<T, S><<<(unsigned)(g->cin * chunks), LU_DW_THREADS>>>(
        (const T *)dy, (const T *)x, (float *)partial, *g, (int)tiles, (int)per, (int)chunks);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        dw_reduce_kernel<T><<<lu_cuda_blocks(g->cin * (g->kw + 1)), LU_CUDA_THREADS>>>((const float *)partial, (T *)dw,
                                                                                      (T *)db, g->cin, g->kw, chunks);
        e = cudaGetLastError();
    }
    lu_cuda_scratch_free(partial);
    if (e != cudaSuccess) return lu_cuda_fail(e, __FILE__, __LINE__, "depthwise dw kernels");
    return LU_OK;
}

static bool conv_is_fast_depthwise(const lu_op_call *c, const conv_geom *g)
{
    return c->op == LU_OP_CONV1D && lu_dw_fast_ok(g->cin, g->cout, g->groups, g->kw, g->stride[1], g->dil[1]) &&
           dw_fits_grid(g);
}

static lu_status fast_depthwise_forward(lu_dtype dt, const conv_geom *g, const void *x, const void *w,
                                        const void *bias, void *y)
{
    if (dw_mma()) {
        bool ran;
        if (dt == LU_BF16)
            ran = g->stride[1] == 1 ? dw_forward_mma<uint16_t, 1>(g, x, w, bias, y)
                                    : dw_forward_mma<uint16_t, 2>(g, x, w, bias, y);
        else
            ran = g->stride[1] == 1 && dw_forward_mma<float, 1>(g, x, w, bias, y);
        if (ran) {
            LU_CUDA_CHECK_LAUNCH();
            return LU_OK;
        }
    }
    if (dt == LU_BF16)
        return g->stride[1] == 1 ? dw_forward<uint16_t, 1>(g, x, w, bias, y)
                                 : dw_forward<uint16_t, 2>(g, x, w, bias, y);
    return g->stride[1] == 1 ? dw_forward<float, 1>(g, x, w, bias, y) : dw_forward<float, 2>(g, x, w, bias, y);
}

static lu_status fast_depthwise_backward(lu_dtype dt, const conv_geom *g, const void *dy, const void *x, const void *w,
                                         void *dx, void *dw, void *db)
{
    if (dt == LU_BF16)
        return g->stride[1] == 1 ? dw_backward<uint16_t, 1>(g, dy, x, w, dx, dw, db)
                                 : dw_backward<uint16_t, 2>(g, dy, x, w, dx, dw, db);
    return g->stride[1] == 1 ? dw_backward<float, 1>(g, dy, x, w, dx, dw, db)
                             : dw_backward<float, 2>(g, dy, x, w, dx, dw, db);
}

/* ---- other depthwise convolutions (Cin == groups): output channel oc reads input channel
 * oc / (Cout/groups) ---- */

static __global__ void dwg_forward_kernel(int dt, const void *x, const void *w, const void *bias, void *y, conv_geom g)
{
    const int64_t og = g.cout / g.groups, L = g.oh * g.ow;
    LU_CUDA_FOR(idx, g.batch * g.cout * L)
    {
        int64_t ox = idx % g.ow, oy = idx / g.ow % g.oh, oc = idx / L % g.cout, b = idx / (L * g.cout);
        int64_t ilo, ihi, jlo, jhi;
        lu_conv_taps(oy, g.stride[0], g.pad[0], g.dil[0], g.kh, g.h, &ilo, &ihi);
        lu_conv_taps(ox, g.stride[1], g.pad[1], g.dil[1], g.kw, g.w, &jlo, &jhi);
        int64_t xc = (b * g.cin + oc / og) * g.h * g.w;
        float acc = bias ? lu_dev_load(bias, dt, oc) : 0.0f;
        for (int64_t i = ilo; i < ihi; i++) {
            int64_t xr = xc + (oy * g.stride[0] - g.pad[0] + i * g.dil[0]) * g.w + ox * g.stride[1] - g.pad[1];
            for (int64_t j = jlo; j < jhi; j++)
                acc += lu_dev_load(x, dt, xr + j * g.dil[1]) * lu_dev_load(w, dt, (oc * g.kh + i) * g.kw + j);
        }
        lu_dev_store(y, dt, idx, acc);
    }
}

/* dx[b, ic, iy, ix] = sum over the Cout/g output channels of ic and the taps reaching (iy, ix). */
static __global__ void dwg_dx_kernel(int dt, const void *dy, const void *w, void *dx, conv_geom g)
{
    const int64_t og = g.cout / g.groups, HW = g.h * g.w;
    LU_CUDA_FOR(idx, g.batch * g.cin * HW)
    {
        int64_t ix = idx % g.w, iy = idx / g.w % g.h, ic = idx / HW % g.cin, b = idx / (HW * g.cin);
        float acc = 0.0f;
        for (int64_t oc = ic * og; oc < (ic + 1) * og; oc++)
            for (int64_t i = 0; i < g.kh; i++) {
                int64_t oy = lu_conv_out_of(iy, i, g.stride[0], g.pad[0], g.dil[0], g.oh);
                if (oy < 0) continue;
                for (int64_t j = 0; j < g.kw; j++) {
                    int64_t ox = lu_conv_out_of(ix, j, g.stride[1], g.pad[1], g.dil[1], g.ow);
                    if (ox < 0) continue;
                    acc += lu_dev_load(dy, dt, ((b * g.cout + oc) * g.oh + oy) * g.ow + ox) *
                           lu_dev_load(w, dt, (oc * g.kh + i) * g.kw + j);
                }
            }
        lu_dev_store(dx, dt, idx, acc);
    }
}

/* One block per weight (oc, i, j): the sum over the batch and output positions of dy * x. */
static __global__ void dwg_dw_kernel(int dt, const void *dy, const void *x, void *dw, conv_geom g)
{
    const int64_t og = g.cout / g.groups, L = g.oh * g.ow, KK = g.kh * g.kw;
    for (int64_t wi = blockIdx.x; wi < g.cout * KK; wi += gridDim.x) {
        int64_t oc = wi / KK, i = wi % KK / g.kw, j = wi % g.kw;
        float v = 0.0f;
        for (int64_t e = threadIdx.x; e < g.batch * L; e += blockDim.x) {
            int64_t b = e / L, oy = e % L / g.ow, ox = e % g.ow;
            int64_t iy = oy * g.stride[0] - g.pad[0] + i * g.dil[0], ix = ox * g.stride[1] - g.pad[1] + j * g.dil[1];
            if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
                v += lu_dev_load(dy, dt, (b * g.cout + oc) * L + oy * g.ow + ox) *
                     lu_dev_load(x, dt, ((b * g.cin + oc / og) * g.h + iy) * g.w + ix);
        }
        v = lu_dev_block_sum(v);
        if (threadIdx.x == 0) lu_dev_store(dw, dt, wi, v);
    }
}

/* One block per output channel: dbias[oc] = sum of dy[b, oc, :] over the batch. */
static __global__ void bias_grad_kernel(int dt, const void *dy, void *db, int64_t batch, int64_t cout, int64_t L)
{
    for (int64_t oc = blockIdx.x; oc < cout; oc += gridDim.x) {
        float v = 0.0f;
        for (int64_t e = threadIdx.x; e < batch * L; e += blockDim.x)
            v += lu_dev_load(dy, dt, (e / L * cout + oc) * L + e % L);
        v = lu_dev_block_sum(v);
        if (threadIdx.x == 0) lu_dev_store(db, dt, oc, v);
    }
}

/* ---- GEMM path ---- */

/* col [bb, (c*KH + i)*KW + j, oy*OW + ox] = x [b0 + bb, c, oy*sh - ph + i*dh, ox*sw - pw + j*dw]
 * (0 outside), all Cin channels, for the nb batch items from b0. */
static __global__ void im2col_kernel(int dt, const void *x, void *col, conv_geom g, int64_t b0, int64_t nb)
{
    const int64_t L = g.oh * g.ow, R = g.cin * g.kh * g.kw;
    LU_CUDA_FOR(idx, nb * R * L)
    {
        int64_t l = idx % L, r = idx / L % R, bb = idx / (L * R);
        int64_t ch = r / (g.kh * g.kw), i = r / g.kw % g.kh, j = r % g.kw;
        int64_t iy = l / g.ow * g.stride[0] - g.pad[0] + i * g.dil[0];
        int64_t ix = l % g.ow * g.stride[1] - g.pad[1] + j * g.dil[1];
        float v = 0.0f;
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
            v = lu_dev_load(x, dt, (((b0 + bb) * g.cin + ch) * g.h + iy) * g.w + ix);
        lu_dev_store(col, dt, idx, v);
    }
}

/* dx [b0 + bb, c, iy, ix] = sum over the taps (i, j) reaching it of dcol [bb, (c*KH + i)*KW + j,
 * oy*OW + ox], in the order of core/cpu/conv_generic.h's col2im. dcol is f32. */
static __global__ void col2im_kernel(int dt, const float *dcol, void *dx, conv_geom g, int64_t b0, int64_t nb)
{
    const int64_t L = g.oh * g.ow, HW = g.h * g.w;
    LU_CUDA_FOR(idx, nb * g.cin * HW)
    {
        int64_t ix = idx % g.w, iy = idx / g.w % g.h, cb = idx / HW; /* cb = bb*Cin + c */
        float acc = 0.0f;
        for (int64_t i = 0; i < g.kh; i++) {
            int64_t oy = lu_conv_out_of(iy, i, g.stride[0], g.pad[0], g.dil[0], g.oh);
            if (oy < 0) continue;
            for (int64_t j = 0; j < g.kw; j++) {
                int64_t ox = lu_conv_out_of(ix, j, g.stride[1], g.pad[1], g.dil[1], g.ow);
                if (ox >= 0) acc += dcol[((cb * g.kh + i) * g.kw + j) * L + oy * g.ow + ox];
            }
        }
        lu_dev_store(dx, dt, b0 * g.cin * HW + idx, acc);
    }
}

/* y [b, oc, l] = bias [oc]: the GEMMs then add into it (beta = 1), rounding bf16 once. */
static __global__ void bias_fill_kernel(int dt, const void *bias, void *y, int64_t n, int64_t cout, int64_t L)
{
    LU_CUDA_FOR(idx, n) lu_dev_store(y, dt, idx, lu_dev_load(bias, dt, idx / L % cout));
}

/* Into *chunk, the batch items per column-buffer chunk: as many as COL_CAP elements hold, or
 * LUTHIER_CONV_COLUMNS (a positive count of elements; less memory for a GPU short of it), at
 * least one. */
static lu_status col_chunk(const conv_geom *g, int64_t *chunk)
{
    int64_t cap = COL_CAP;
    const char *e = getenv("LUTHIER_CONV_COLUMNS");
    if (e && *e) {
        char *end;
        errno = 0;
        const long long v = strtoll(e, &end, 10);
        if (*end || errno || v < 1)
            return lu_errorf(LU_ERR_INVALID, "LUTHIER_CONV_COLUMNS=%s: expected a positive number of elements", e);
        cap = v;
    }
    const int64_t per = g->cin * g->kh * g->kw * g->oh * g->ow, n = per > 0 ? cap / per : g->batch;
    *chunk = n < 1 ? 1 : n > g->batch ? g->batch : n;
    return LU_OK;
}

static lu_status gemm_forward(lu_dtype dt, const conv_geom *g, const char *x, const char *w, const void *bias, char *y)
{
    const int64_t cg = g->cin / g->groups, og = g->cout / g->groups, ck = cg * g->kh * g->kw, L = g->oh * g->ow,
                  R = g->cin * g->kh * g->kw;
    const size_t es = lu_dtype_size(dt);
    float beta = 0.0f;
    if (bias) {
        int64_t n = g->batch * g->cout * L;
        bias_fill_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(dt, bias, y, n, g->cout, L);
        LU_CUDA_CHECK_LAUNCH();
        beta = 1.0f;
    }
    if (conv_is_pointwise(g)) {
        for (int64_t grp = 0; grp < g->groups; grp++)
            LU_TRY(lu_cuda_gemm(dt, dt, g->batch, false, false, og, L, ck, w + grp * og * ck * es, 0,
                                x + grp * cg * L * es, g->cin * L, beta, y + grp * og * L * es, g->cout * L));
        return LU_OK;
    }
    int64_t chunk;
    LU_TRY(col_chunk(g, &chunk));
    void *colp;
    LU_TRY(lu_cuda_scratch_alloc(&colp, (size_t)(chunk * R * L) * es));
    char *col = (char *)colp;
    lu_status st = LU_OK;
    for (int64_t b0 = 0; b0 < g->batch && st == LU_OK; b0 += chunk) {
        int64_t nb = g->batch - b0 < chunk ? g->batch - b0 : chunk;
        im2col_kernel<<<lu_cuda_blocks(nb * R * L), LU_CUDA_THREADS>>>(dt, x, col, *g, b0, nb);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) st = lu_cuda_fail(e, __FILE__, __LINE__, "im2col_kernel");
        for (int64_t grp = 0; grp < g->groups && st == LU_OK; grp++)
            st = lu_cuda_gemm(dt, dt, nb, false, false, og, L, ck, w + grp * og * ck * es, 0, col + grp * ck * L * es,
                              R * L, beta, y + (b0 * g->cout + grp * og) * L * es, g->cout * L);
    }
    lu_cuda_scratch_free(colp);
    return st;
}

/* dw_g += dy_bg @ col_bg^T for every batch item, into the fp32 accumulator acc [Cout, ck];
 * dx_g = col2im(w_g^T @ dy_g). dx or acc may be NULL. */
static lu_status gemm_backward(lu_dtype dt, const conv_geom *g, const char *dy, const char *x, const char *w, char *dx,
                               float *acc)
{
    const int64_t cg = g->cin / g->groups, og = g->cout / g->groups, ck = cg * g->kh * g->kw, L = g->oh * g->ow,
                  R = g->cin * g->kh * g->kw;
    const size_t es = lu_dtype_size(dt);
    if (conv_is_pointwise(g)) {
        for (int64_t grp = 0; dx && grp < g->groups; grp++)
            LU_TRY(lu_cuda_gemm(dt, dt, g->batch, true, false, ck, L, og, w + grp * og * ck * es, 0,
                                dy + grp * og * L * es, g->cout * L, 0.0f, dx + grp * cg * L * es, g->cin * L));
        for (int64_t b = 0; acc && b < g->batch; b++)
            LU_TRY(lu_cuda_gemm(dt, LU_F32, g->groups, false, true, og, ck, L, dy + b * g->cout * L * es, og * L,
                                x + b * g->cin * L * es, cg * L, 1.0f, acc, og * ck));
        return LU_OK;
    }
    int64_t chunk;
    LU_TRY(col_chunk(g, &chunk));
    void *colp = NULL, *dcolp = NULL;
    lu_status st = LU_OK;
    if (acc) st = lu_cuda_scratch_alloc(&colp, (size_t)(chunk * R * L) * es);
    if (st == LU_OK && dx) st = lu_cuda_scratch_alloc(&dcolp, (size_t)(chunk * R * L) * sizeof(float));
    char *col = (char *)colp;
    float *dcol = (float *)dcolp;
    for (int64_t b0 = 0; b0 < g->batch && st == LU_OK; b0 += chunk) {
        int64_t nb = g->batch - b0 < chunk ? g->batch - b0 : chunk;
        if (acc) {
            im2col_kernel<<<lu_cuda_blocks(nb * R * L), LU_CUDA_THREADS>>>(dt, x, col, *g, b0, nb);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) st = lu_cuda_fail(e, __FILE__, __LINE__, "im2col_kernel");
            for (int64_t bb = 0; bb < nb && st == LU_OK; bb++)
                st = lu_cuda_gemm(dt, LU_F32, g->groups, false, true, og, ck, L, dy + (b0 + bb) * g->cout * L * es,
                                  og * L, col + bb * R * L * es, ck * L, 1.0f, acc, og * ck);
        }
        if (dx) {
            for (int64_t grp = 0; grp < g->groups && st == LU_OK; grp++)
                st = lu_cuda_gemm(dt, LU_F32, nb, true, false, ck, L, og, w + grp * og * ck * es, 0,
                                  dy + (b0 * g->cout + grp * og) * L * es, g->cout * L, 0.0f, dcol + grp * ck * L,
                                  R * L);
            if (st == LU_OK) {
                col2im_kernel<<<lu_cuda_blocks(nb * g->cin * g->h * g->w), LU_CUDA_THREADS>>>(dt, dcol, dx, *g, b0,
                                                                                              nb);
                cudaError_t e = cudaGetLastError();
                if (e != cudaSuccess) st = lu_cuda_fail(e, __FILE__, __LINE__, "col2im_kernel");
            }
        }
    }
    lu_cuda_scratch_free(colp);
    lu_cuda_scratch_free(dcolp);
    return st;
}

/* ---- entry points ---- */

/* in = [x, w, bias?], out = [y]. */
static lu_status conv_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *w = c->in[1], *bias = c->in[2];
    lu_tensor *y = c->out[0];
    const lu_tensor *ts[4] = {x, w, bias, y};
    LU_TRY(lu_cuda_check_float(c, ts, 4, x->dtype));
    conv_geom g;
    LU_TRY(conv_geom_of(c, x, w, y, &g));
    if (bias && lu_tensor_numel(bias) != g.cout)
        return lu_errorf(LU_ERR_SHAPE, "%s: bias has %lld elements, Cout is %lld", lu_op_name(c->op),
                         (long long)lu_tensor_numel(bias), (long long)g.cout);
    int64_t n = lu_tensor_numel(y);
    if (n == 0) return LU_OK;
    const void *X = lu_tensor_data(x), *W = lu_tensor_data(w), *BIAS = bias ? lu_tensor_data(bias) : NULL;
    void *Y = lu_tensor_data(y);
    if (g.cin == g.groups && conv_is_fast_depthwise(c, &g)) return fast_depthwise_forward(x->dtype, &g, X, W, BIAS, Y);
    if (g.cin != g.groups) return gemm_forward(x->dtype, &g, (const char *)X, (const char *)W, BIAS, (char *)Y);
    dwg_forward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(x->dtype, X, W, BIAS, Y, g);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, x, w, bias?, y], out = [dx?, dw?, dbias?]. */
static lu_status conv_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *w = c->in[2], *bias = c->in[3];
    lu_tensor *dx = c->out[0], *dw = c->out[1], *db = c->out[2];
    const lu_tensor *ts[6] = {dy, x, w, dx, dw, db};
    LU_TRY(lu_cuda_check_float(c, ts, 6, x->dtype));
    const lu_tensor *y = c->in[4] ? c->in[4] : dy;
    if (!y) return lu_errorf(LU_ERR_INVALID, "%s backward: neither dy nor y given", lu_op_name(c->op));
    conv_geom g;
    LU_TRY(conv_geom_of(c, x, w, y, &g));
    if (dy && !lu_tensor_same_shape(dy, y))
        return lu_errorf(LU_ERR_SHAPE, "%s backward: dy and y differ in shape", lu_op_name(c->op));
    if (db && (lu_tensor_numel(db) != g.cout || (bias && lu_tensor_numel(bias) != g.cout)))
        return lu_errorf(LU_ERR_SHAPE, "%s backward: dbias must have Cout = %lld elements", lu_op_name(c->op),
                         (long long)g.cout);
    /* Without dy, or with nothing to sum over, every gradient is zero. */
    bool empty = !dy || lu_tensor_numel(dy) == 0 || lu_tensor_numel(x) == 0;
    if (empty) {
        for (int i = 0; i < 3; i++)
            if (c->out[i]) LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(c->out[i]), 0, lu_tensor_nbytes(c->out[i]), 0));
        return LU_OK;
    }
    lu_dtype dt = x->dtype;
    const void *DY = lu_tensor_data(dy), *X = lu_tensor_data(x), *W = lu_tensor_data(w);
    void *DX = dx ? lu_tensor_data(dx) : NULL, *DW = dw ? lu_tensor_data(dw) : NULL;
    void *DB = db ? lu_tensor_data(db) : NULL;
    if (g.cin == g.groups && conv_is_fast_depthwise(c, &g))
        return fast_depthwise_backward(dt, &g, DY, X, W, DX, DW, DB);
    if (g.cin == g.groups) {
        if (DX) {
            dwg_dx_kernel<<<lu_cuda_blocks(lu_tensor_numel(x)), LU_CUDA_THREADS>>>(dt, DY, W, DX, g);
            LU_CUDA_CHECK_LAUNCH();
        }
        if (DW) {
            dwg_dw_kernel<<<item_blocks(lu_tensor_numel(w)), LU_CUDA_THREADS>>>(dt, DY, X, DW, g);
            LU_CUDA_CHECK_LAUNCH();
        }
    } else if (DX || DW) {
        float *acc = NULL;
        void *tmp = NULL;
        if (DW && dt == LU_F32) acc = (float *)DW;
        else if (DW) LU_TRY(lu_cuda_scratch_alloc(&tmp, (size_t)lu_tensor_numel(w) * sizeof(float)));
        if (tmp) acc = (float *)tmp;
        lu_status st = LU_OK;
        if (acc) {
            cudaError_t e = cudaMemsetAsync(acc, 0, (size_t)lu_tensor_numel(w) * sizeof(float), 0);
            if (e != cudaSuccess) st = lu_cuda_fail(e, __FILE__, __LINE__, "cudaMemsetAsync(acc)");
        }
        if (st == LU_OK)
            st = gemm_backward(dt, &g, (const char *)DY, (const char *)X, (const char *)W, (char *)DX, acc);
        if (st == LU_OK && tmp) st = lu_cuda_convert(DW, dt, tmp, LU_F32, (size_t)lu_tensor_numel(w));
        lu_cuda_scratch_free(tmp);
        LU_TRY(st);
    }
    if (DB) {
        bias_grad_kernel<<<item_blocks(g.cout), LU_CUDA_THREADS>>>(dt, DY, DB, g.batch, g.cout, g.oh * g.ow);
        LU_CUDA_CHECK_LAUNCH();
    }
    return LU_OK;
}

extern "C" void lu_cuda_register_conv(lu_backend *b)
{
    b->forward[LU_OP_CONV1D] = conv_forward;
    b->backward[LU_OP_CONV1D] = conv_backward;
    b->forward[LU_OP_CONV2D] = conv_forward;
    b->backward[LU_OP_CONV2D] = conv_backward;
}
