/* conv.cu - CUDA kernels of CONV1D and CONV2D, forward and backward, f32 and bf16 with fp32
 * math (core/cpu/conv.c is the reference). A conv1d is a conv2d with H = KH = 1. Three paths:
 *  - fast depthwise conv1d (groups == Cin == Cout, stride 1 or 2, (K-1)*dilation <= 256: the
 *    Conformer/Zipformer convolution modules, memory-bound): a block takes LU_DW_TILE frames of
 *    one (batch, channel) row and stages the window they touch in shared memory (index
 *    arithmetic in conv_tiles.h); dx is the transposed convolution over a dy window; dw and
 *    dbias are per-block partial sums that a second kernel adds up in a fixed order;
 *  - other depthwise convolutions (Cin == groups): direct kernels, one thread per output
 *    element, per dx element, and one block per weight;
 *  - the rest, per group: y_g = w_g @ im2col(x_g) through cuBLAS (lu_cuda_gemm), the batch taken
 *    in chunks that bound the column buffer; dx = col2im(w_g^T @ dy_g) with col2im gathering
 *    (each dx element adds its taps in order); dw = sum over the batch of dy_g @ col_g^T in fp32.
 * No float atomics anywhere: results are deterministic. */
#include "conv_tiles.h"
#include "device.cuh"

/* One geometry for both ops (as core/cpu/conv.c): axis 0 height, axis 1 width (time). */
typedef struct conv_geom {
    int64_t batch, cin, cout, h, w, kh, kw, oh, ow, groups;
    int64_t stride[2], pad[2], dil[2];
} conv_geom;

/* Column buffers of the GEMM path hold at most this many elements (the batch is chunked). */
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

static bool conv_is_fast_depthwise(const lu_op_call *c, const conv_geom *g)
{
    return c->op == LU_OP_CONV1D && lu_dw_fast_ok(g->cin, g->cout, g->groups, g->kw, g->stride[1], g->dil[1]);
}

static unsigned item_blocks(int64_t items) { return (unsigned)(items < 1 ? 1 : items > 65535 ? 65535 : items); }

/* ---- fast depthwise conv1d ---- */

/* Items are (row, tile) pairs, row = b*C + c, tile of LU_DW_TILE output frames. */
static __global__ void dw_forward_kernel(int dt, const void *x, const void *w, const void *bias, void *y, conv_geom g,
                                         int64_t tiles)
{
    __shared__ float xs[LU_DW_X_WINDOW];
    __shared__ float ws[LU_DW_MAX_HALO + 1];
    const int64_t T = g.w, OT = g.ow, K = g.kw, s = g.stride[1], p = g.pad[1], d = g.dil[1];
    for (int64_t item = blockIdx.x; item < g.batch * g.cin * tiles; item += gridDim.x) {
        int64_t row = item / tiles, o0 = item % tiles * LU_DW_TILE, ch = row % g.cin;
        int64_t cnt = OT - o0 < LU_DW_TILE ? OT - o0 : LU_DW_TILE, span;
        int64_t in0 = lu_dw_x_window(o0, cnt, s, p, K, d, &span);
        __syncthreads(); /* the previous item is done with xs and ws */
        for (int64_t j = threadIdx.x; j < span; j += blockDim.x) {
            int64_t i = in0 + j;
            xs[j] = i >= 0 && i < T ? lu_dev_load(x, dt, row * T + i) : 0.0f;
        }
        for (int64_t j = threadIdx.x; j < K; j += blockDim.x) ws[j] = lu_dev_load(w, dt, ch * K + j);
        __syncthreads();
        float b0 = bias ? lu_dev_load(bias, dt, ch) : 0.0f;
        for (int64_t q = threadIdx.x; q < cnt; q += blockDim.x)
            lu_dev_store(y, dt, row * OT + o0 + q, lu_dw_fwd_point(xs, ws, b0, o0 + q, in0, T, s, p, d, K));
    }
}

/* Items are (row, tile of LU_DW_TILE input frames). */
static __global__ void dw_dx_kernel(int dt, const void *dy, const void *w, void *dx, conv_geom g, int64_t tiles)
{
    __shared__ float dys[LU_DW_DY_WINDOW];
    __shared__ float ws[LU_DW_MAX_HALO + 1];
    const int64_t T = g.w, OT = g.ow, K = g.kw, s = g.stride[1], p = g.pad[1], d = g.dil[1];
    for (int64_t item = blockIdx.x; item < g.batch * g.cin * tiles; item += gridDim.x) {
        int64_t row = item / tiles, t0 = item % tiles * LU_DW_TILE, ch = row % g.cin;
        int64_t cnt = T - t0 < LU_DW_TILE ? T - t0 : LU_DW_TILE, o_base;
        int64_t span = lu_dw_dy_window(t0, cnt, s, p, K, d, &o_base);
        __syncthreads();
        for (int64_t j = threadIdx.x; j < span; j += blockDim.x) {
            int64_t o = o_base + j;
            dys[j] = o >= 0 && o < OT ? lu_dev_load(dy, dt, row * OT + o) : 0.0f;
        }
        for (int64_t j = threadIdx.x; j < K; j += blockDim.x) ws[j] = lu_dev_load(w, dt, ch * K + j);
        __syncthreads();
        for (int64_t q = threadIdx.x; q < cnt; q += blockDim.x)
            lu_dev_store(dx, dt, row * T + t0 + q, lu_dw_dx_point(dys, ws, t0 + q, o_base, OT, s, p, d, K));
    }
}

/* First stage of dw and dbias: item (row, tile) writes partial[item*(K+1) + j] = the tile's sum
 * of dy[o] x[o*s - p + j*d] for tap j < K, and of dy[o] for j == K. Each tap is summed per thread,
 * then per warp (shuffles), then over the warps in order. */
static __global__ void dw_partial_kernel(int dt, const void *dy, const void *x, float *partial, conv_geom g,
                                         int64_t tiles)
{
    __shared__ float xs[LU_DW_X_WINDOW];
    __shared__ float dys[LU_DW_TILE];
    __shared__ float red[(LU_DW_MAX_HALO + 2) * (LU_CUDA_THREADS / LU_CUDA_WARP)];
    const int64_t T = g.w, OT = g.ow, K = g.kw, s = g.stride[1], p = g.pad[1], d = g.dil[1];
    const int nw = blockDim.x / LU_CUDA_WARP, warp = threadIdx.x / LU_CUDA_WARP, lane = threadIdx.x % LU_CUDA_WARP;
    for (int64_t item = blockIdx.x; item < g.batch * g.cin * tiles; item += gridDim.x) {
        int64_t row = item / tiles, o0 = item % tiles * LU_DW_TILE;
        int64_t cnt = OT - o0 < LU_DW_TILE ? OT - o0 : LU_DW_TILE, span;
        int64_t in0 = lu_dw_x_window(o0, cnt, s, p, K, d, &span);
        __syncthreads(); /* the previous item is done with xs, dys and red */
        for (int64_t j = threadIdx.x; j < span; j += blockDim.x) {
            int64_t i = in0 + j;
            xs[j] = i >= 0 && i < T ? lu_dev_load(x, dt, row * T + i) : 0.0f;
        }
        for (int64_t q = threadIdx.x; q < cnt; q += blockDim.x) dys[q] = lu_dev_load(dy, dt, row * OT + o0 + q);
        __syncthreads();
        for (int64_t j = 0; j <= K; j++) {
            float v = 0.0f;
            for (int64_t q = threadIdx.x; q < cnt; q += blockDim.x)
                v += j < K ? lu_dw_dw_term(xs, dys[q], o0 + q, in0, T, s, p, d, j) : dys[q];
            v = lu_dev_warp_sum(v);
            if (lane == 0) red[j * nw + warp] = v;
        }
        __syncthreads();
        for (int64_t j = threadIdx.x; j <= K; j += blockDim.x) {
            float t = 0.0f;
            for (int i = 0; i < nw; i++) t += red[j * nw + i];
            partial[item * (K + 1) + j] = t;
        }
    }
}

/* Second stage: dw[c, j] (j < K) and dbias[c] (j == K) = the partials of channel c, batch by
 * batch and tile by tile. */
static __global__ void dw_reduce_kernel(int dt, const float *partial, void *dw, void *db, conv_geom g, int64_t tiles)
{
    const int64_t K = g.kw;
    LU_CUDA_FOR(idx, g.cin * (K + 1))
    {
        int64_t ch = idx / (K + 1), j = idx % (K + 1);
        double acc = 0.0;
        for (int64_t b = 0; b < g.batch; b++)
            for (int64_t t = 0; t < tiles; t++) acc += partial[((b * g.cin + ch) * tiles + t) * (K + 1) + j];
        if (j < K && dw) lu_dev_store(dw, dt, ch * K + j, (float)acc);
        if (j == K && db) lu_dev_store(db, dt, ch, (float)acc);
    }
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

/* Batch items per column-buffer chunk. */
static int64_t col_chunk(const conv_geom *g)
{
    int64_t per = g->cin * g->kh * g->kw * g->oh * g->ow, n = per > 0 ? COL_CAP / per : g->batch;
    return n < 1 ? 1 : n > g->batch ? g->batch : n;
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
    int64_t chunk = col_chunk(g);
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
    int64_t chunk = col_chunk(g);
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
    if (g.cin == g.groups && conv_is_fast_depthwise(c, &g)) {
        int64_t tiles = (g.ow + LU_DW_TILE - 1) / LU_DW_TILE;
        dw_forward_kernel<<<item_blocks(g.batch * g.cin * tiles), LU_CUDA_THREADS>>>(x->dtype, X, W, BIAS, Y, g, tiles);
    } else if (g.cin == g.groups) {
        dwg_forward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(x->dtype, X, W, BIAS, Y, g);
    } else {
        return gemm_forward(x->dtype, &g, (const char *)X, (const char *)W, BIAS, (char *)Y);
    }
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

static lu_status fast_depthwise_backward(lu_dtype dt, const conv_geom *g, const void *dy, const void *x, const void *w,
                                         void *dx, void *dw, void *db)
{
    if (dx) {
        int64_t tiles = (g->w + LU_DW_TILE - 1) / LU_DW_TILE;
        dw_dx_kernel<<<item_blocks(g->batch * g->cin * tiles), LU_CUDA_THREADS>>>(dt, dy, w, dx, *g, tiles);
        LU_CUDA_CHECK_LAUNCH();
    }
    if (!dw && !db) return LU_OK;
    int64_t tiles = (g->ow + LU_DW_TILE - 1) / LU_DW_TILE, items = g->batch * g->cin * tiles;
    void *partial;
    LU_TRY(lu_cuda_scratch_alloc(&partial, (size_t)(items * (g->kw + 1)) * sizeof(float)));
    dw_partial_kernel<<<item_blocks(items), LU_CUDA_THREADS>>>(dt, dy, x, (float *)partial, *g, tiles);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        dw_reduce_kernel<<<lu_cuda_blocks(g->cin * (g->kw + 1)), LU_CUDA_THREADS>>>(dt, (const float *)partial, dw, db,
                                                                                  *g, tiles);
        e = cudaGetLastError();
    }
    lu_cuda_scratch_free(partial);
    if (e != cudaSuccess) return lu_cuda_fail(e, __FILE__, __LINE__, "depthwise dw kernels");
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
