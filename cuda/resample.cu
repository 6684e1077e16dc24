/* resample.cu - CUDA kernels of the frame-rate changes (core/cpu/resample.c is the reference):
 * DECIMATE (keep every factor-th frame), UPSAMPLE (repeat each frame factor times, cut to
 * out_len) and DOWNSAMPLE (icefall's SimpleDownsample: softmax(bias)-weighted frames, the last
 * frame repeated as padding), forward and backward.
 *
 * A tensor is read as [outer, T, inner] around the resampled dim. Decimate and upsample forward,
 * and decimate backward, only move elements: they take every dtype, as the CPU does. The sums
 * (upsample backward, downsample) are f32 or bf16 with fp32 math, adding in the CPU's order.
 * Downsample moves 8 (bf16) or 4 channels per item with vector accesses when C allows it and
 * f <= 8 (its backward one pass over dy writing dx and per-block partial sums of the bias
 * gradient), one element per thread otherwise; the partials are added up by one block in a fixed
 * order. */
#include <math.h>

#include "rows.cuh"

typedef struct frames {
    int64_t outer, t, inner; /* x viewed as [outer, t, inner] */
    int64_t t_out;           /* frames of y */
} frames;

/* x and y agree outside dim, which holds t and t_out frames. */
static lu_status frames_of(const lu_op_call *c, const lu_tensor *x, const lu_tensor *y, int dim, frames *f)
{
    bool ok = dim >= 0 && dim < x->ndim && x->ndim == y->ndim;
    for (int i = 0; ok && i < x->ndim; i++) ok = i == dim || x->shape[i] == y->shape[i];
    if (!ok) {
        char sx[LU_SHAPE_STR_MAX], sy[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "%s: x %s and y %s differ outside dim %d", lu_op_name(c->op),
                         lu_shape_str(x, sx, sizeof sx), lu_shape_str(y, sy, sizeof sy), dim);
    }
    f->outer = f->inner = 1;
    for (int i = 0; i < dim; i++) f->outer *= x->shape[i];
    for (int i = dim + 1; i < x->ndim; i++) f->inner *= x->shape[i];
    f->t = x->shape[dim];
    f->t_out = y->shape[dim];
    return LU_OK;
}

/* The frames y reads must exist: decimate reads frame (t_out-1)*factor, upsample (t_out-1)/factor. */
static lu_status check_frames(const lu_op_call *c, const frames *f, int factor)
{
    const lu_resample_params *p = (const lu_resample_params *)c->params;
    bool up = c->op == LU_OP_UPSAMPLE;
    if (factor < 1 || (f->t_out > 0 && (up ? (f->t_out - 1) / factor : (f->t_out - 1) * factor) >= f->t))
        return lu_errorf(LU_ERR_SHAPE, "%s: %lld output frames with factor %d do not fit %lld input frames (dim %d)",
                         lu_op_name(c->op), (long long)f->t_out, factor, (long long)f->t, p->dim);
    return LU_OK;
}

static __device__ __forceinline__ void copy_elem(int es, void *dst, int64_t di, const void *src, int64_t si)
{
    switch (es) {
    case 1: ((uint8_t *)dst)[di] = ((const uint8_t *)src)[si]; break;
    case 2: ((uint16_t *)dst)[di] = ((const uint16_t *)src)[si]; break;
    case 4: ((uint32_t *)dst)[di] = ((const uint32_t *)src)[si]; break;
    default: ((uint64_t *)dst)[di] = ((const uint64_t *)src)[si]; break;
    }
}

/* y[o, t] = x[o, t*factor] (decimate) or x[o, t/factor] (upsample). */
static __global__ void frames_gather_kernel(int es, const void *x, void *y, frames f, int factor, bool up)
{
    LU_CUDA_FOR(idx, f.outer * f.t_out * f.inner)
    {
        int64_t i = idx % f.inner, t = idx / f.inner % f.t_out, o = idx / (f.inner * f.t_out);
        copy_elem(es, y, idx, x, (o * f.t + (up ? t / factor : t * factor)) * f.inner + i);
    }
}

/* Decimate backward: dx[o, s] = dy[o, s/factor] where factor divides s, zero elsewhere. */
static __global__ void decimate_backward_kernel(int es, const void *dy, void *dx, frames f, int factor)
{
    const uint64_t zero = 0;
    LU_CUDA_FOR(idx, f.outer * f.t * f.inner)
    {
        int64_t i = idx % f.inner, s = idx / f.inner % f.t, o = idx / (f.inner * f.t);
        if (s % factor == 0 && s / factor < f.t_out)
            copy_elem(es, dx, idx, dy, (o * f.t_out + s / factor) * f.inner + i);
        else
            copy_elem(es, dx, idx, &zero, 0);
    }
}

/* Upsample backward: dx[o, s] = sum of dy[o, t] over t in [s*f, min((s+1)*f, t_out)). */
static __global__ void upsample_backward_kernel(int dt, const void *dy, void *dx, frames f, int factor)
{
    LU_CUDA_FOR(idx, f.outer * f.t * f.inner)
    {
        int64_t i = idx % f.inner, s = idx / f.inner % f.t, o = idx / (f.inner * f.t);
        int64_t t1 = (s + 1) * factor < f.t_out ? (s + 1) * factor : f.t_out;
        float acc = 0.0f;
        for (int64_t t = s * factor; t < t1; t++) acc += lu_dev_load(dy, dt, (o * f.t_out + t) * f.inner + i);
        lu_dev_store(dx, dt, idx, acc);
    }
}

static lu_status resample_params(const lu_op_call *c, const lu_tensor *x, const lu_tensor *y, frames *f)
{
    const lu_resample_params *p = (const lu_resample_params *)c->params;
    LU_TRY(frames_of(c, x, y, p->dim, f));
    return check_frames(c, f, p->factor);
}

/* in = [x], out = [y] (decimate and upsample). */
static lu_status gather_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    if (x->dtype != y->dtype)
        return lu_errorf(LU_ERR_DTYPE, "%s: x is %s, y %s", lu_op_name(c->op), lu_dtype_name(x->dtype),
                         lu_dtype_name(y->dtype));
    frames f;
    LU_TRY(resample_params(c, x, y, &f));
    int64_t n = lu_tensor_numel(y);
    if (n == 0) return LU_OK;
    const lu_resample_params *p = (const lu_resample_params *)c->params;
    frames_gather_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>((int)lu_dtype_size(x->dtype), lu_tensor_data(x),
                                                                 lu_tensor_data(y), f, p->factor,
                                                                 c->op == LU_OP_UPSAMPLE);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]. */
static lu_status gather_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *y = c->in[2] ? c->in[2] : dy;
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    if (!y) return lu_errorf(LU_ERR_INVALID, "%s backward: neither dy nor y given", lu_op_name(c->op));
    bool up = c->op == LU_OP_UPSAMPLE;
    if (up) {
        const lu_tensor *ts[3] = {dy, x, dx};
        LU_TRY(lu_cuda_check_float(c, ts, 3, x->dtype));
    } else if ((dy && dy->dtype != x->dtype) || dx->dtype != x->dtype) {
        return lu_errorf(LU_ERR_DTYPE, "decimate backward: dy, x and dx need one dtype");
    }
    frames f;
    LU_TRY(resample_params(c, x, y, &f));
    if (dy && lu_tensor_numel(dy) != lu_tensor_numel(y))
        return lu_errorf(LU_ERR_SHAPE, "%s backward: dy and y differ in size", lu_op_name(c->op));
    int64_t n = lu_tensor_numel(dx);
    if (n == 0) return LU_OK;
    if (!dy) {
        LU_TRY(lu_cuda_zero(dx));
        return LU_OK;
    }
    const lu_resample_params *p = (const lu_resample_params *)c->params;
    if (up)
        upsample_backward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(x->dtype, lu_tensor_data(dy),
                                                                         lu_tensor_data(dx), f, p->factor);
    else
        decimate_backward_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>((int)lu_dtype_size(x->dtype),
                                                                         lu_tensor_data(dy), lu_tensor_data(dx), f,
                                                                         p->factor);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- downsample ---- */

/* Factors of the vector kernels (Zipformer's are 2, 4 and 8); larger ones take the general
 * kernels. */
#define DS_MAX_F 8
/* Blocks of the vector backward, each leaving one partial sum per tap for dbias. */
#define DS_BLOCKS 1024
/* Blocks of the vector forward that a multiprocessor holds at once: 8 would cap the kernel at 32
 * registers, which spills on sm_90 (ptxas -v); 6 leave it 40. */
#define DS_FWD_BLOCKS_PER_SM 6

/* w = softmax(bias) in double, as core/cpu/resample_generic.h. */
static __device__ void downsample_softmax(int dt, const void *bias, int64_t f, double *w)
{
    double mx = lu_dev_load(bias, dt, 0), s = 0;
    for (int64_t j = 1; j < f; j++) mx = fmax(mx, (double)lu_dev_load(bias, dt, j));
    for (int64_t j = 0; j < f; j++) s += w[j] = exp((double)lu_dev_load(bias, dt, j) - mx);
    for (int64_t j = 0; j < f; j++) w[j] /= s;
}

/* One thread (factor is small). */
static __global__ void downsample_weights_kernel(int dt, const void *bias, double *w, int64_t f)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    downsample_softmax(dt, bias, f, w);
}

/* y[b, t] = sum_j w_j x[b, min(f*t + j, T-1)]. */
static __global__ void downsample_forward_kernel(int dt, const void *x, const double *w, void *y, int64_t B, int64_t T,
                                                 int64_t C, int64_t To, int64_t f)
{
    LU_CUDA_FOR(idx, B * To * C)
    {
        int64_t i = idx % C, t = idx / C % To, b = idx / (C * To);
        float acc = 0.0f;
        for (int64_t j = 0; j < f; j++) {
            int64_t s = f * t + j < T ? f * t + j : T - 1;
            acc += (float)w[j] * lu_dev_load(x, dt, (b * T + s) * C + i);
        }
        lu_dev_store(y, dt, idx, acc);
    }
}

/* w[j] = (float)softmax(bias)_j, j < f <= 32, by the lanes of one warp: downsample_softmax's
 * double arithmetic (the max and the sum over j in order) with the exps and divisions in parallel. */
static __device__ __forceinline__ void downsample_softmax_lanes(int dt, const void *bias, int f, float *w)
{
    const int lane = threadIdx.x % LU_CUDA_WARP;
    double mx = lu_dev_load(bias, dt, 0), s = 0;
    for (int j = 1; j < f; j++) mx = fmax(mx, (double)lu_dev_load(bias, dt, j));
    const double e = lane < f ? exp((double)lu_dev_load(bias, dt, lane) - mx) : 0.0;
    for (int j = 0; j < f; j++) s += __shfl_sync(0xffffffffu, e, j);
    if (lane < f) w[lane] = (float)(e / s);
}

/* The same for C % V == 0, f <= DS_MAX_F and fewer than 2^31 elements: items (output frame
 * b*To + t, group of V channels), one V-element vector access per frame (V = 8 for bf16 and 4
 * for f32 take 16 bytes). A grid of a few blocks per SM (downsample_grid) whose threads each take
 * several items: the first warp of a block computes the weights once. */
template <typename T, int V>
static __global__ void __launch_bounds__(LU_CUDA_THREADS, DS_FWD_BLOCKS_PER_SM)
    downsample_forward_vec_kernel(int dt, const T *x, const void *bias, T *y, int T_, int CV, int To, int f, int n)
{
    __shared__ float w[DS_MAX_F];
    if (threadIdx.x < LU_CUDA_WARP) downsample_softmax_lanes(dt, bias, f, w);
    __syncthreads();
    const int pad = f * To - T_; /* frames past the end of each item's row: its last frame repeated */
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        const int bt = idx / CV, c = idx - bt * CV;
        /* frames f*bt - b*pad + j of x, at most the row's last (b*T_ + T_ - 1) */
        const int b = pad ? bt / To : 0, s0 = f * bt - b * pad, last = pad ? b * T_ + T_ - 1 : s0 + f - 1;
        float acc[V] = {0.0f};
        for (int j = 0; j < f; j++) {
            const int s = s0 + j < last ? s0 + j : last;
            float v[V];
            const float wj = w[j];
            lu_ldv(x + ((int64_t)s * CV + c) * V, v);
            for (int e = 0; e < V; e++) acc[e] += wj * v[e];
        }
        lu_stv(y + (int64_t)idx * V, acc);
    }
}

/* dx[b, s] = w_{s mod f} dy[b, s/f]; the last frame also collects the pad taps j > (T-1) mod f. */
static __global__ void downsample_dx_kernel(int dt, const void *dy, const double *w, void *dx, int64_t B, int64_t T,
                                            int64_t C, int64_t To, int64_t f)
{
    LU_CUDA_FOR(idx, B * T * C)
    {
        int64_t i = idx % C, s = idx / C % T, b = idx / (C * T);
        double ws = w[s % f];
        if (s == T - 1)
            for (int64_t j = s % f + 1; j < f; j++) ws += w[j];
        lu_dev_store(dx, dt, idx, (float)ws * lu_dev_load(dy, dt, (b * To + s / f) * C + i));
    }
}

/* Items (j, chunk): partial[chunk*f + j] = sum over the chunk's elements e of dy (as [B, To, C])
 * of dy[e] x[b, min(f*t + j, T-1), c]. */
static __global__ void downsample_partial_kernel(int dt, const void *dy, const void *x, double *partial, int64_t B,
                                                 int64_t T, int64_t C, int64_t To, int64_t f, int64_t chunks,
                                                 int64_t chunk_len)
{
    const int64_t n = B * To * C;
    for (int64_t item = blockIdx.x; item < f * chunks; item += gridDim.x) {
        int64_t j = item / chunks, e0 = item % chunks * chunk_len, e1 = e0 + chunk_len < n ? e0 + chunk_len : n;
        /* In double, as the CPU and the vector path: dbias = w_k (G_k - sum_j w_j G_j) cancels. */
        double v = 0.0;
        for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
            int64_t i = e % C, t = e / C % To, b = e / (C * To), s = f * t + j < T ? f * t + j : T - 1;
            v += (double)lu_dev_load(dy, dt, e) * (double)lu_dev_load(x, dt, (b * T + s) * C + i);
        }
        v = lu_dev_block_sum(v);
        if (threadIdx.x == 0) partial[item % chunks * f + j] = v;
    }
}


/* The vector backward (the conditions of downsample_forward_vec_kernel with V = 4), one pass over
 * dy: dx as downsample_dx_kernel, and when partial is given, partial[block*f + j] = the block's
 * sum of dy[b, t] . x[b, min(f*t + j, T-1)] (in fp64, as the CPU). */
template <typename T>
static __global__ void __launch_bounds__(LU_CUDA_THREADS, 4)
    downsample_backward4_kernel(int dt, const T *dy, const T *x, const void *bias, T *dx, double *partial, int T_,
                                int C4, int To, int f, int n)
{
    __shared__ double w[DS_MAX_F];
    if (threadIdx.x == 0) downsample_softmax(dt, bias, f, w);
    __syncthreads();
    double g[DS_MAX_F] = {0};
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += blockDim.x * gridDim.x) {
        int c4 = idx % C4, bt = idx / C4, t = bt % To, b = bt / To;
        float d[4];
        lu_ld4(dy + (int64_t)idx * 4, d);
#pragma unroll
        for (int j = 0; j < DS_MAX_F; j++) {
            if (j >= f) break;
            int s = f * t + j;
            if (partial) {
                float v[4];
                lu_ld4(x + ((int64_t)(b * T_ + (s < T_ ? s : T_ - 1)) * C4 + c4) * 4, v);
                for (int e = 0; e < 4; e++) g[j] += (double)d[e] * v[e];
            }
            if (dx && s < T_) {
                double ws = w[j];
                if (s == T_ - 1)
                    for (int k = j + 1; k < f; k++) ws += w[k];
                float wr = (float)ws, o[4] = {wr * d[0], wr * d[1], wr * d[2], wr * d[3]};
                lu_st4(dx + ((int64_t)(b * T_ + s) * C4 + c4) * 4, o);
            }
        }
    }
    if (!partial) return;
#pragma unroll
    for (int j = 0; j < DS_MAX_F; j++) {
        if (j >= f) break;
        double s = lu_dev_block_sum(g[j]);
        if (threadIdx.x == 0) partial[blockIdx.x * f + j] = s;
    }
}

/* dbias_k = w_k (G_k - sum_j w_j G_j), G_j = the sum over k < parts of partial[k*f + j], added in
 * a fixed order by one block. partial has room for 2f more doubles: G, then w. */
static __global__ void downsample_dbias_kernel(int dt, double *partial, const void *bias, void *db, int64_t f,
                                               int64_t parts)
{
    double *G = partial + parts * f, *w = G + f;
    for (int64_t j = 0; j < f; j++) {
        double v = 0;
        for (int64_t k = threadIdx.x; k < parts; k += blockDim.x) v += partial[k * f + j];
        v = lu_dev_block_sum(v);
        if (threadIdx.x == 0) G[j] = v;
    }
    if (threadIdx.x != 0) return;
    downsample_softmax(dt, bias, f, w);
    double wg = 0;
    for (int64_t j = 0; j < f; j++) wg += w[j] * G[j];
    for (int64_t j = 0; j < f; j++) lu_dev_store(db, dt, j, (float)(w[j] * (G[j] - wg)));
}

/* x [B, T, C], bias [f], y (or dy) [B, ceil(T/f), C]. */
static lu_status downsample_shapes(const lu_tensor *x, const lu_tensor *bias, const lu_tensor *y)
{
    bool ok = x->ndim == 3 && y->ndim == 3 && bias->ndim == 1 && bias->shape[0] >= 1 && y->shape[0] == x->shape[0] &&
              y->shape[2] == x->shape[2] && y->shape[1] == (x->shape[1] + bias->shape[0] - 1) / bias->shape[0];
    if (!ok) {
        char sx[LU_SHAPE_STR_MAX], sb[LU_SHAPE_STR_MAX], sy[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "downsample: x %s, bias %s and y %s are not [B, T, C], [f], [B, ceil(T/f), C]",
                         lu_shape_str(x, sx, sizeof sx), lu_shape_str(bias, sb, sizeof sb),
                         lu_shape_str(y, sy, sizeof sy));
    }
    return LU_OK;
}

/* Whether the vector kernels, V channels an access, take x [B, T, C] with factor f and the frame
 * tensors a, b (NULL slots skipped). */
static bool downsample_vec_ok(const lu_tensor *x, int64_t f, const lu_tensor *a, const lu_tensor *b, int V)
{
    const lu_tensor *ts[3] = {x, a, b};
    bool ok = f <= DS_MAX_F && x->shape[2] % V == 0 && lu_tensor_numel(x) < INT32_MAX;
    for (int i = 0; i < 3 && ok; i++)
        ok = !ts[i] || (uintptr_t)lu_tensor_data(ts[i]) % ((size_t)V * lu_dtype_size(x->dtype)) == 0;
    return ok;
}

/* Blocks of the vector forward for n items: DS_FWD_BLOCKS_PER_SM a multiprocessor at most (all
 * resident at once), fewer when there are not enough items. */
static unsigned downsample_grid(int64_t n)
{
    int64_t need = (n + LU_CUDA_THREADS - 1) / LU_CUDA_THREADS;
    int64_t most = (int64_t)lu_cuda_sm_count() * DS_FWD_BLOCKS_PER_SM;
    return (unsigned)(need < 1 ? 1 : need < most ? need : most);
}

template <typename E, int V>
static void downsample_forward_vec(lu_dtype dt, const void *x, const void *bias, void *y, int64_t B, int64_t T,
                                   int64_t C, int64_t To, int64_t f)
{
    int n = (int)(B * To * C / V);
    downsample_forward_vec_kernel<E, V><<<downsample_grid(n), LU_CUDA_THREADS>>>(
        dt, (const E *)x, bias, (E *)y, (int)T, (int)(C / V), (int)To, (int)f, n);
}

/* in = [x, bias], out = [y]. */
static lu_status downsample_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *bias = c->in[1];
    lu_tensor *y = c->out[0];
    const lu_tensor *ts[3] = {x, bias, y};
    LU_TRY(lu_cuda_check_float(c, ts, 3, x->dtype));
    LU_TRY(downsample_shapes(x, bias, y));
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2], To = y->shape[1], f = bias->shape[0];
    if (lu_tensor_numel(y) == 0) return LU_OK;
    lu_dtype dt = x->dtype;
    const void *X = lu_tensor_data(x), *BIAS = lu_tensor_data(bias);
    void *Y = lu_tensor_data(y);
    if (downsample_vec_ok(x, f, y, NULL, 4)) {
        if (dt == LU_BF16 && downsample_vec_ok(x, f, y, NULL, 8))
            downsample_forward_vec<uint16_t, 8>(dt, X, BIAS, Y, B, T, C, To, f);
        else if (dt == LU_BF16)
            downsample_forward_vec<uint16_t, 4>(dt, X, BIAS, Y, B, T, C, To, f);
        else
            downsample_forward_vec<float, 4>(dt, X, BIAS, Y, B, T, C, To, f);
        LU_CUDA_CHECK_LAUNCH();
        return LU_OK;
    }
    void *w;
    LU_TRY(lu_cuda_scratch_alloc(&w, (size_t)f * sizeof(double)));
    downsample_weights_kernel<<<1, 1>>>(dt, BIAS, (double *)w, f);
    downsample_forward_kernel<<<lu_cuda_blocks(B * To * C), LU_CUDA_THREADS>>>(dt, X, (const double *)w, Y, B, T, C,
                                                                               To, f);
    cudaError_t e = cudaGetLastError();
    lu_cuda_scratch_free(w);
    if (e != cudaSuccess) return lu_cuda_fail(e, __FILE__, __LINE__, "downsample kernels");
    return LU_OK;
}

/* The general backward: the weights, dx when given, and when partial is given, one partial per
 * tap of each chunk of chunk_len elements of dy. */
static void downsample_backward_general(lu_dtype dt, const void *dy, const void *x, const void *bias, void *dx,
                                        double *w, double *partial, int64_t B, int64_t T, int64_t C, int64_t To,
                                        int64_t f, int64_t chunk_len, int64_t chunks)
{
    downsample_weights_kernel<<<1, 1>>>(dt, bias, w, f);
    if (dx)
        downsample_dx_kernel<<<lu_cuda_blocks(B * T * C), LU_CUDA_THREADS>>>(dt, dy, w, dx, B, T, C, To, f);
    if (partial) {
        int64_t items = f * chunks;
        downsample_partial_kernel<<<(unsigned)(items > 65535 ? 65535 : items), LU_CUDA_THREADS>>>(
            dt, dy, x, partial, B, T, C, To, f, chunks, chunk_len);
    }
}

/* in = [dy, x, bias, y], out = [dx?, dbias?]. */
static lu_status downsample_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *bias = c->in[2], *y = c->in[3];
    lu_tensor *dx = c->out[0], *db = c->out[1];
    const lu_tensor *ts[5] = {dy, x, bias, dx, db};
    LU_TRY(lu_cuda_check_float(c, ts, 5, x->dtype));
    int64_t n = dy ? lu_tensor_numel(dy) : 0;
    if (n == 0) {
        for (int i = 0; i < 2; i++)
            if (c->out[i]) LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(c->out[i]), 0, lu_tensor_nbytes(c->out[i]), 0));
        return LU_OK;
    }
    LU_TRY(downsample_shapes(x, bias, dy));
    if (y && !lu_tensor_same_shape(y, dy))
        return lu_errorf(LU_ERR_SHAPE, "downsample backward: dy and y differ in shape");
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2], f = bias->shape[0], To = dy->shape[1];
    lu_dtype dt = x->dtype;
    const void *DY = lu_tensor_data(dy), *X = lu_tensor_data(x), *BIAS = lu_tensor_data(bias);
    void *DX = dx ? lu_tensor_data(dx) : NULL;
    bool vec = downsample_vec_ok(x, f, dy, dx, 4);
    /* General path: chunks of at least 4096 elements, at most 256 per tap. */
    int64_t chunk_len = (n + 255) / 256 > 4096 ? (n + 255) / 256 : 4096, chunks = (n + chunk_len - 1) / chunk_len;
    int blocks = (int)lu_cuda_blocks(n / 4), parts = vec ? (blocks < DS_BLOCKS ? blocks : DS_BLOCKS) : (int)chunks;
    void *w = NULL, *partial = NULL;
    lu_status st = vec ? LU_OK : lu_cuda_scratch_alloc(&w, (size_t)f * sizeof(double));
    if (st == LU_OK && db) st = lu_cuda_scratch_alloc(&partial, (size_t)(f * (parts + 2)) * sizeof(double));
    if (st == LU_OK) {
        int nv = (int)(n / 4);
        if (vec && dt == LU_BF16)
            downsample_backward4_kernel<<<parts, LU_CUDA_THREADS>>>(dt, (const uint16_t *)DY, (const uint16_t *)X, BIAS,
                                                                   (uint16_t *)DX, (double *)partial, (int)T,
                                                                   (int)(C / 4), (int)To, (int)f, nv);
        else if (vec)
            downsample_backward4_kernel<<<parts, LU_CUDA_THREADS>>>(dt, (const float *)DY, (const float *)X, BIAS,
                                                                   (float *)DX, (double *)partial, (int)T, (int)(C / 4),
                                                                   (int)To, (int)f, nv);
        else
            downsample_backward_general(dt, DY, X, BIAS, DX, (double *)w, (double *)partial, B, T, C, To, f, chunk_len,
                                        chunks);
        if (db)
            downsample_dbias_kernel<<<1, LU_CUDA_THREADS>>>(dt, (double *)partial, BIAS, lu_tensor_data(db), f, parts);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) st = lu_cuda_fail(e, __FILE__, __LINE__, "downsample backward kernels");
    }
    lu_cuda_scratch_free(w);
    lu_cuda_scratch_free(partial);
    return st;
}

extern "C" void lu_cuda_register_resample(lu_backend *b)
{
    b->forward[LU_OP_DECIMATE] = gather_forward;
    b->backward[LU_OP_DECIMATE] = gather_backward;
    b->forward[LU_OP_UPSAMPLE] = gather_forward;
    b->backward[LU_OP_UPSAMPLE] = gather_backward;
    b->forward[LU_OP_DOWNSAMPLE] = downsample_forward;
    b->backward[LU_OP_DOWNSAMPLE] = downsample_backward;
}
