/* reduce.cu - CUDA kernels of SUM, MEAN and MAX (with its i64 argmax) along one dim or over
 * everything, forward and backward, f32 and bf16 with fp32 math (core/cpu/reduce_generic.h is the
 * reference).
 *
 * The contiguous input is viewed as [outer, n, inner] with n the reduced dim. The n axis is cut
 * into chunks whose size depends only on the shape; stage 1 reduces each (output, chunk) in a
 * fixed order (a block tree for contiguous rows, a sequential loop per thread for columns) and
 * stage 2 combines the chunks in a fixed order (sums: colsum.cuh; MAX: chunk order). No atomics:
 * the result depends only on the shape. */
#include <math.h>

#include "colsum.cuh"

/* Elements of a contiguous row reduced by one block in stage 1 (32 per thread). */
#define ROW_CHUNK (LU_CUDA_THREADS * 32)
/* Aim for at least this many threads when reducing columns (inner > 1). */
#define COL_THREADS 65536
/* No fewer rows than this per column chunk. */
#define COL_MIN_CHUNK 16

/* [outer, n, inner] view of x around `dim` (LU_ALL_DIMS: [1, numel, 1]). */
static void reduce_geom(const lu_tensor *x, int dim, int64_t *outer, int64_t *n, int64_t *inner)
{
    *outer = 1;
    *inner = 1;
    if (dim == LU_ALL_DIMS) {
        *n = lu_tensor_numel(x);
        return;
    }
    for (int i = 0; i < dim; i++) *outer *= x->shape[i];
    for (int i = dim + 1; i < x->ndim; i++) *inner *= x->shape[i];
    *n = x->shape[dim];
}

/* The chunking of the n axis: `count` chunks of `size` rows (the last may be shorter). */
typedef struct chunking {
    int64_t size, count;
} chunking;

static chunking reduce_chunks(int64_t outer, int64_t n, int64_t inner)
{
    chunking ch;
    if (inner == 1) {
        ch.size = ROW_CHUNK;
    } else {
        int64_t outputs = outer * inner, want = (COL_THREADS + outputs - 1) / outputs;
        int64_t most = (n + COL_MIN_CHUNK - 1) / COL_MIN_CHUNK;
        if (want > most) want = most;
        if (want < 1) want = 1;
        ch.size = (n + want - 1) / want;
    }
    if (ch.size < 1) ch.size = 1;
    ch.count = (n + ch.size - 1) / ch.size;
    if (ch.count < 1) ch.count = 1;
    return ch;
}

/* ---- (value, index) pairs of MAX: a NaN wins (the first NaN), else the larger value, ties to
 * the smaller index, as the CPU's first-maximum scan. The rule is associative and commutative,
 * so any tree gives the CPU's answer. Empty slots hold (-inf, INT64_MAX). ---- */

static __device__ __forceinline__ void max_combine(float *v, int64_t *i, float v2, int64_t i2)
{
    bool nan1 = isnan(*v), nan2 = isnan(v2), take;
    if (nan1 || nan2) take = nan2 && (!nan1 || i2 < *i);
    else take = v2 > *v || (v2 == *v && i2 < *i);
    if (take) {
        *v = v2;
        *i = i2;
    }
}

/* Max over the block with a fixed tree (every thread gets the result), as lu_dev_block_sum. */
static __device__ void block_max(float *v, int64_t *i)
{
    __shared__ float pv[LU_CUDA_THREADS / LU_CUDA_WARP];
    __shared__ int64_t pi[LU_CUDA_THREADS / LU_CUDA_WARP];
    int lane = threadIdx.x % LU_CUDA_WARP, warp = threadIdx.x / LU_CUDA_WARP;
    for (int o = LU_CUDA_WARP / 2; o > 0; o /= 2) {
        float v2 = __shfl_xor_sync(0xffffffffu, *v, o);
        int64_t i2 = __shfl_xor_sync(0xffffffffu, *i, o);
        max_combine(v, i, v2, i2);
    }
    __syncthreads();
    if (lane == 0) {
        pv[warp] = *v;
        pi[warp] = *i;
    }
    __syncthreads();
    *v = pv[0];
    *i = pi[0];
    for (int w = 1; w < (int)(blockDim.x / LU_CUDA_WARP); w++) max_combine(v, i, pv[w], pi[w]);
}

/* ---- stage 1 ---- */

/* inner == 1: block (chunk c, row o) reduces x[o, c*size .. c*size+size). Writes
 * part[c * outer + o], or y[o] (times scale) when there is one chunk. */
static __global__ void sum_rows_kernel(int dt, const void *x, int64_t outer, int64_t n, chunking ch, float scale,
                                       float *part, void *y)
{
    for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
        int64_t c = blockIdx.x, j0 = c * ch.size, j1 = j0 + ch.size < n ? j0 + ch.size : n;
        float s = 0.0f;
        for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) s += lu_dev_load(x, dt, o * n + j);
        s = lu_dev_block_sum(s);
        if (threadIdx.x == 0) {
            if (ch.count == 1) lu_dev_store(y, dt, o, s * scale);
            else part[c * outer + o] = s;
        }
    }
}

static __global__ void max_rows_kernel(int dt, const void *x, int64_t outer, int64_t n, chunking ch, float *part_v,
                                       int64_t *part_i, void *y, int64_t *argmax)
{
    for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
        int64_t c = blockIdx.x, j0 = c * ch.size, j1 = j0 + ch.size < n ? j0 + ch.size : n;
        float v = -INFINITY;
        int64_t at = INT64_MAX;
        for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) max_combine(&v, &at, lu_dev_load(x, dt, o * n + j), j);
        block_max(&v, &at);
        if (threadIdx.x == 0) {
            if (ch.count == 1) {
                lu_dev_store(y, dt, o, v);
                argmax[o] = at;
            } else {
                part_v[c * outer + o] = v;
                part_i[c * outer + o] = at;
            }
        }
    }
}

/* inner > 1: one thread per (chunk c, output oi = o * inner + k), walking its rows in order;
 * neighbouring threads read neighbouring columns. Writes part[c * outputs + oi] or y[oi]. */
static __global__ void sum_cols_kernel(int dt, const void *x, int64_t outer, int64_t n, int64_t inner, chunking ch,
                                       float scale, float *part, void *y)
{
    int64_t outputs = outer * inner;
    LU_CUDA_FOR(t, outputs * ch.count)
    {
        int64_t c = t / outputs, oi = t % outputs, o = oi / inner, k = oi % inner;
        int64_t j0 = c * ch.size, j1 = j0 + ch.size < n ? j0 + ch.size : n;
        float s = 0.0f;
        for (int64_t j = j0; j < j1; j++) s += lu_dev_load(x, dt, (o * n + j) * inner + k);
        if (ch.count == 1) lu_dev_store(y, dt, oi, s * scale);
        else part[t] = s;
    }
}

static __global__ void max_cols_kernel(int dt, const void *x, int64_t outer, int64_t n, int64_t inner, chunking ch,
                                       float *part_v, int64_t *part_i, void *y, int64_t *argmax)
{
    int64_t outputs = outer * inner;
    LU_CUDA_FOR(t, outputs * ch.count)
    {
        int64_t c = t / outputs, oi = t % outputs, o = oi / inner, k = oi % inner;
        int64_t j0 = c * ch.size, j1 = j0 + ch.size < n ? j0 + ch.size : n;
        float v = -INFINITY;
        int64_t at = INT64_MAX;
        for (int64_t j = j0; j < j1; j++) max_combine(&v, &at, lu_dev_load(x, dt, (o * n + j) * inner + k), j);
        if (ch.count == 1) {
            lu_dev_store(y, dt, oi, v);
            argmax[oi] = at;
        } else {
            part_v[t] = v;
            part_i[t] = at;
        }
    }
}

/* ---- stage 2: chunks combined in order (sums: colsum.cuh), one thread per output ---- */

static __global__ void max_chunks_kernel(int dt, const float *part_v, const int64_t *part_i, int64_t outputs,
                                         int64_t chunks, void *y, int64_t *argmax)
{
    LU_CUDA_FOR(oi, outputs)
    {
        float v = -INFINITY;
        int64_t at = INT64_MAX;
        for (int64_t c = 0; c < chunks; c++) max_combine(&v, &at, part_v[c * outputs + oi], part_i[c * outputs + oi]);
        lu_dev_store(y, dt, oi, v);
        argmax[oi] = at;
    }
}

/* ---- backward ---- */

/* dx[o, j, k] = dy[o, k] * scale. */
static __global__ void sum_backward_kernel(int dt, const void *dy, void *dx, int64_t total, int64_t n, int64_t inner,
                                           float scale)
{
    LU_CUDA_FOR(i, total)
    {
        int64_t o = i / (n * inner), k = i % inner;
        lu_dev_store(dx, dt, i, lu_dev_load(dy, dt, o * inner + k) * scale);
    }
}

/* dx (zeroed) at the argmax of each output gets dy. */
static __global__ void max_backward_kernel(int dt, const void *dy, const int64_t *argmax, void *dx, int64_t outputs,
                                           int64_t n, int64_t inner)
{
    LU_CUDA_FOR(oi, outputs)
    {
        int64_t o = oi / inner, k = oi % inner, j = argmax[oi];
        if (j >= 0 && j < n) lu_dev_store(dx, dt, (o * n + j) * inner + k, lu_dev_load(dy, dt, oi));
    }
}

/* ---- launchers ---- */

static dim3 rows_grid(chunking ch, int64_t outer)
{
    return dim3((unsigned)ch.count, (unsigned)(outer < 65535 ? outer : 65535));
}

static lu_status check_reduce(const lu_op_call *c, const lu_tensor *x, const lu_tensor *y, int64_t outputs)
{
    if (lu_tensor_numel(y) != outputs) {
        char sx[LU_SHAPE_STR_MAX], sy[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "%s: output %s does not fit input %s reduced along dim %d", lu_op_name(c->op),
                         lu_shape_str(y, sy, sizeof sy), lu_shape_str(x, sx, sizeof sx),
                         ((const lu_reduce_params *)c->params)->dim);
    }
    if (lu_tensor_numel(x) / (outputs ? outputs : 1) > (int64_t)ROW_CHUNK * 2147483647LL)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: reduced dim too long for the cuda backend", lu_op_name(c->op));
    return LU_OK;
}

/* in = [x], out = [y] (SUM, MEAN). */
static lu_status sum_forward(const lu_op_call *c)
{
    const lu_reduce_params *p = (const lu_reduce_params *)c->params;
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    const lu_tensor *ts[2] = {x, y};
    LU_TRY(lu_cuda_check_float(c, ts, 2, x->dtype));
    int64_t outer, n, inner;
    reduce_geom(x, p->dim, &outer, &n, &inner);
    LU_TRY(check_reduce(c, x, y, outer * inner));
    if (outer * inner == 0) return LU_OK;
    /* The mean of nothing is 0 * inf = NaN, as torch (n == 0 runs one empty chunk). */
    float scale = c->op == LU_OP_MEAN ? (float)(1.0 / (double)n) : 1.0f;
    chunking ch = reduce_chunks(outer, n, inner);
    float *part = NULL;
    if (ch.count > 1) LU_TRY(lu_cuda_scratch_alloc((void **)&part, (size_t)(ch.count * outer * inner) * sizeof *part));
    if (inner == 1)
        sum_rows_kernel<<<rows_grid(ch, outer), LU_CUDA_THREADS>>>(x->dtype, lu_tensor_data(x), outer, n, ch, scale,
                                                                    part, lu_tensor_data(y));
    else
        sum_cols_kernel<<<lu_cuda_blocks(outer * inner * ch.count), LU_CUDA_THREADS>>>(
            x->dtype, lu_tensor_data(x), outer, n, inner, ch, scale, part, lu_tensor_data(y));
    LU_CUDA_CHECK_LAUNCH();
    if (ch.count > 1) {
        lu_colsum_kernel<<<lu_colsum_grid(outer * inner), LU_COLSUM_BLOCK>>>(x->dtype, part, outer * inner, ch.count, scale,
                                                                           lu_tensor_data(y));
        LU_CUDA_CHECK_LAUNCH();
        lu_cuda_scratch_free(part);
    }
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]: dx[o, j, k] = dy[o, k] (/ n for MEAN). */
static lu_status sum_backward(const lu_op_call *c)
{
    const lu_reduce_params *p = (const lu_reduce_params *)c->params;
    const lu_tensor *dy = c->in[0], *x = c->in[1];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[3] = {dy, x, dx};
    LU_TRY(lu_cuda_check_float(c, ts, 3, x->dtype));
    int64_t outer, n, inner, total = lu_tensor_numel(x);
    reduce_geom(x, p->dim, &outer, &n, &inner);
    if (total == 0) return LU_OK;
    if (!dy) {
        LU_TRY(lu_cuda_zero(dx));
        return LU_OK;
    }
    float scale = c->op == LU_OP_MEAN ? (float)(1.0 / (double)n) : 1.0f;
    sum_backward_kernel<<<lu_cuda_blocks(total), LU_CUDA_THREADS>>>(x->dtype, lu_tensor_data(dy), lu_tensor_data(dx),
                                                                     total, n, inner, scale);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [x], out = [y, argmax (i64)]. */
static lu_status max_forward(const lu_op_call *c)
{
    const lu_reduce_params *p = (const lu_reduce_params *)c->params;
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0], *am = c->out[1];
    const lu_tensor *ts[2] = {x, y};
    LU_TRY(lu_cuda_check_float(c, ts, 2, x->dtype));
    int64_t outer, n, inner;
    reduce_geom(x, p->dim, &outer, &n, &inner);
    LU_TRY(check_reduce(c, x, y, outer * inner));
    if (am->dtype != LU_I64 || lu_tensor_numel(am) != outer * inner)
        return lu_errorf(LU_ERR_SHAPE, "max: argmax must be i64 with %lld elements, got %s with %lld",
                         (long long)(outer * inner), lu_dtype_name(am->dtype), (long long)lu_tensor_numel(am));
    if (outer * inner == 0) return LU_OK;
    if (n == 0) return lu_errorf(LU_ERR_SHAPE, "max: cannot reduce an empty dim");
    chunking ch = reduce_chunks(outer, n, inner);
    float *pv = NULL;
    int64_t *pi = NULL;
    size_t np = (size_t)(ch.count * outer * inner);
    if (ch.count > 1) {
        LU_TRY(lu_cuda_scratch_alloc((void **)&pi, np * (sizeof *pi + sizeof *pv)));
        pv = (float *)(void *)(pi + np);
    }
    int64_t *argmax = (int64_t *)lu_tensor_data(am);
    if (inner == 1)
        max_rows_kernel<<<rows_grid(ch, outer), LU_CUDA_THREADS>>>(x->dtype, lu_tensor_data(x), outer, n, ch, pv, pi,
                                                                    lu_tensor_data(y), argmax);
    else
        max_cols_kernel<<<lu_cuda_blocks(outer * inner * ch.count), LU_CUDA_THREADS>>>(
            x->dtype, lu_tensor_data(x), outer, n, inner, ch, pv, pi, lu_tensor_data(y), argmax);
    LU_CUDA_CHECK_LAUNCH();
    if (ch.count > 1) {
        max_chunks_kernel<<<lu_cuda_blocks(outer * inner), LU_CUDA_THREADS>>>(x->dtype, pv, pi, outer * inner, ch.count,
                                                                             lu_tensor_data(y), argmax);
        LU_CUDA_CHECK_LAUNCH();
        lu_cuda_scratch_free(pi);
    }
    return LU_OK;
}

/* in = [dy, dargmax, x, y, argmax], out = [dx]: the gradient goes to the first maximum. */
static lu_status max_backward(const lu_op_call *c)
{
    const lu_reduce_params *p = (const lu_reduce_params *)c->params;
    const lu_tensor *dy = c->in[0], *x = c->in[2], *am = c->in[4];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[3] = {dy, x, dx};
    LU_TRY(lu_cuda_check_float(c, ts, 3, x->dtype));
    int64_t outer, n, inner;
    reduce_geom(x, p->dim, &outer, &n, &inner);
    if (lu_tensor_numel(x) == 0) return LU_OK;
    LU_TRY(lu_cuda_zero(dx));
    if (!dy) return LU_OK;
    if (am->dtype != LU_I64 || lu_tensor_numel(am) != outer * inner)
        return lu_errorf(LU_ERR_SHAPE, "max backward: argmax must be i64 with %lld elements", (long long)(outer * inner));
    max_backward_kernel<<<lu_cuda_blocks(outer * inner), LU_CUDA_THREADS>>>(
        x->dtype, lu_tensor_data(dy), (const int64_t *)lu_tensor_data(am), lu_tensor_data(dx), outer * inner, n, inner);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

extern "C" void lu_cuda_register_reduce(lu_backend *b)
{
    b->forward[LU_OP_SUM] = sum_forward;
    b->backward[LU_OP_SUM] = sum_backward;
    b->forward[LU_OP_MEAN] = sum_forward;
    b->backward[LU_OP_MEAN] = sum_backward;
    b->forward[LU_OP_MAX] = max_forward;
    b->backward[LU_OP_MAX] = max_backward;
}
