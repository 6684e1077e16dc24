/* norm.cu - CUDA kernels that normalise rows: SOFTMAX and LOG_SOFTMAX along the last dim, and
 * RMSNORM, forward and backward, f32 and bf16 with fp32 math (core/cpu/reduce.c and
 * core/cpu/norm.c are the references). One warp per row: the row's reductions are warp
 * shuffles, and the order of additions depends only on the row length. */
#include <math.h>

#include "device.cuh"

#define ROWS_PER_BLOCK (LU_CUDA_THREADS / LU_CUDA_WARP)

static unsigned row_blocks(int64_t rows)
{
    int64_t b = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

/* Grid-stride loop of one warp over rows; `lane` is the thread's index in its warp. */
#define ROWS_FOR(row, lane, rows)                                                               \
    const int lane = threadIdx.x % LU_CUDA_WARP;                                                \
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / LU_CUDA_WARP; row < (rows); \
         row += (int64_t)gridDim.x * blockDim.x / LU_CUDA_WARP)

/* ---- softmax, log_softmax ---- */

/* softmax: y = exp(x - max) / sum exp(x - max); log_softmax: y = x - max - log(sum exp(x - max)). */
static __global__ void softmax_forward_kernel(bool log, int dt, const void *x, void *y, int64_t rows, int64_t d)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float m = -INFINITY;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) m = fmaxf(m, lu_dev_load(x, dt, base + j));
        m = lu_dev_warp_max(m);
        float s = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) s += expf(lu_dev_load(x, dt, base + j) - m);
        s = lu_dev_warp_sum(s);
        float log_s = logf(s), inv_s = 1.0f / s;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float v = lu_dev_load(x, dt, base + j) - m;
            lu_dev_store(y, dt, base + j, log ? v - log_s : expf(v) * inv_s);
        }
    }
}

/* softmax: dx = y * (dy - sum(dy * y)); log_softmax: dx = dy - exp(y) * sum(dy). */
static __global__ void softmax_backward_kernel(bool log, int dt, const void *dy, const void *y, void *dx, int64_t rows,
                                               int64_t d)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float s = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = lu_dev_load(dy, dt, base + j);
            s += log ? g : g * lu_dev_load(y, dt, base + j);
        }
        s = lu_dev_warp_sum(s);
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = lu_dev_load(dy, dt, base + j), v = lu_dev_load(y, dt, base + j);
            lu_dev_store(dx, dt, base + j, log ? g - expf(v) * s : v * (g - s));
        }
    }
}

static lu_status check_last_dim(const lu_op_call *c, const lu_tensor *x)
{
    const lu_dim_params *p = (const lu_dim_params *)c->params;
    if (x->ndim == 0 || p->dim != x->ndim - 1)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: the cuda backend supports only the last dim (got dim %d of %d dims)",
                         lu_op_name(c->op), p->dim, x->ndim);
    return LU_OK;
}

static lu_status softmax_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    const lu_tensor *ts[2] = {x, y};
    LU_TRY(lu_cuda_check_float(c, ts, 2, x->dtype));
    LU_TRY(check_last_dim(c, x));
    int64_t d = x->shape[x->ndim - 1], n = lu_tensor_numel(x);
    if (n == 0) return LU_OK;
    softmax_forward_kernel<<<row_blocks(n / d), LU_CUDA_THREADS>>>(c->op == LU_OP_LOG_SOFTMAX, x->dtype,
                                                                   lu_tensor_data(x), lu_tensor_data(y), n / d, d);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]. */
static lu_status softmax_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *y = c->in[2];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[4] = {dy, x, y, dx};
    LU_TRY(lu_cuda_check_float(c, ts, 4, x->dtype));
    LU_TRY(check_last_dim(c, x));
    int64_t d = x->shape[x->ndim - 1], n = lu_tensor_numel(x);
    if (n == 0) return LU_OK;
    if (!dy) {
        LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(dx), 0, lu_tensor_nbytes(dx), 0));
        return LU_OK;
    }
    softmax_backward_kernel<<<row_blocks(n / d), LU_CUDA_THREADS>>>(c->op == LU_OP_LOG_SOFTMAX, x->dtype,
                                                                    lu_tensor_data(dy), lu_tensor_data(y),
                                                                    lu_tensor_data(dx), n / d, d);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- rmsnorm ---- */

/* rstd = 1 / sqrt(mean(x^2) + eps); y = x * rstd * weight (weight may be NULL: 1). x, weight
 * and y share dt; rstd has its own dtype rdt. */
static __global__ void rmsnorm_forward_kernel(int dt, const void *x, const void *w, void *y, int rdt, void *rstd,
                                              int64_t rows, int64_t d, float eps)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float ss = 0.0f;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float v = lu_dev_load(x, dt, base + j);
            ss += v * v;
        }
        ss = lu_dev_warp_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float v = lu_dev_load(x, dt, base + j) * r;
            lu_dev_store(y, dt, base + j, w ? v * lu_dev_load(w, dt, j) : v);
        }
        if (lane == 0) lu_dev_store(rstd, rdt, row, r);
    }
}

/* With g = dy * w and r = rstd: dx = r g - x r^3 / D * (sum(g x) + drstd), the last term being
 * the gradient through the aux output rstd (d r / d x_j = -r^3 x_j / D). dy or drstd may be
 * NULL (zero). */
static __global__ void rmsnorm_backward_dx_kernel(int dt, const void *dy, int rdt, const void *drstd, const void *x,
                                                  const void *w, const void *rstd, void *dx, int64_t rows, int64_t d)
{
    ROWS_FOR(row, lane, rows)
    {
        int64_t base = row * d;
        float r = lu_dev_load(rstd, rdt, row), dot = 0.0f;
        if (dy) {
            for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
                float g = lu_dev_load(dy, dt, base + j) * (w ? lu_dev_load(w, dt, j) : 1.0f);
                dot += g * lu_dev_load(x, dt, base + j);
            }
            dot = lu_dev_warp_sum(dot);
        }
        if (drstd) dot += lu_dev_load(drstd, rdt, row);
        float coef = r * r * r / (float)d * dot;
        for (int64_t j = lane; j < d; j += LU_CUDA_WARP) {
            float g = dy ? lu_dev_load(dy, dt, base + j) * (w ? lu_dev_load(w, dt, j) : 1.0f) : 0.0f;
            lu_dev_store(dx, dt, base + j, r * g - lu_dev_load(x, dt, base + j) * coef);
        }
    }
}

/* dw[j] = sum over rows of dy * x * rstd: one thread per column, rows in order. */
static __global__ void rmsnorm_backward_dw_kernel(int dt, const void *dy, const void *x, int rdt, const void *rstd,
                                                  void *dw, int64_t rows, int64_t d)
{
    LU_CUDA_FOR(j, d)
    {
        float acc = 0.0f;
        for (int64_t row = 0; row < rows; row++)
            acc += lu_dev_load(dy, dt, row * d + j) * lu_dev_load(x, dt, row * d + j) * lu_dev_load(rstd, rdt, row);
        lu_dev_store(dw, dt, j, acc);
    }
}

/* rows: the product of x's dims but the last (d); rstd has one element per row, f32 or bf16. */
static lu_status rmsnorm_shapes(const lu_tensor *x, const lu_tensor *w, const lu_tensor *rstd, int64_t *rows, int64_t *d)
{
    *d = x->ndim ? x->shape[x->ndim - 1] : 1;
    *rows = 1;
    for (int k = 0; k + 1 < x->ndim; k++) *rows *= x->shape[k];
    if (!lu_cuda_is_float(rstd->dtype))
        return lu_errorf(LU_ERR_DTYPE, "rmsnorm: rstd is %s, expected f32 or bf16", lu_dtype_name(rstd->dtype));
    if ((w && lu_tensor_numel(w) != *d) || lu_tensor_numel(rstd) != *rows) {
        char sx[LU_SHAPE_STR_MAX], sr[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "rmsnorm: x %s, weight of %lld elements and rstd %s do not fit",
                         lu_shape_str(x, sx, sizeof sx), (long long)(w ? lu_tensor_numel(w) : 0),
                         lu_shape_str(rstd, sr, sizeof sr));
    }
    return LU_OK;
}

/* in = [x, weight?], out = [y, rstd]. */
static lu_status rmsnorm_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *w = c->in[1];
    lu_tensor *y = c->out[0], *rstd = c->out[1];
    const lu_tensor *ts[3] = {x, w, y};
    LU_TRY(lu_cuda_check_float(c, ts, 3, x->dtype));
    int64_t rows, d;
    LU_TRY(rmsnorm_shapes(x, w, rstd, &rows, &d));
    if (rows == 0) return LU_OK;
    const lu_norm_params *p = (const lu_norm_params *)c->params;
    rmsnorm_forward_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(x->dtype, lu_tensor_data(x),
                                                                  w ? lu_tensor_data(w) : NULL, lu_tensor_data(y),
                                                                  rstd->dtype, lu_tensor_data(rstd), rows, d,
                                                                  (float)p->eps);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, drstd, x, weight, y, rstd], out = [dx, dweight]. */
static lu_status rmsnorm_backward(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *drstd = c->in[1], *x = c->in[2], *w = c->in[3], *rstd = c->in[5];
    lu_tensor *dx = c->out[0], *dw = c->out[1];
    const lu_tensor *ts[5] = {dy, x, w, dx, dw};
    LU_TRY(lu_cuda_check_float(c, ts, 5, x->dtype));
    int64_t rows, d;
    LU_TRY(rmsnorm_shapes(x, w, rstd, &rows, &d));
    if (drstd && drstd->dtype != rstd->dtype)
        return lu_errorf(LU_ERR_DTYPE, "rmsnorm backward: drstd is %s, rstd %s", lu_dtype_name(drstd->dtype),
                         lu_dtype_name(rstd->dtype));
    if (dx && lu_tensor_numel(dx)) {
        if (!dy && !drstd) {
            LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(dx), 0, lu_tensor_nbytes(dx), 0));
        } else {
            rmsnorm_backward_dx_kernel<<<row_blocks(rows), LU_CUDA_THREADS>>>(
                x->dtype, dy ? lu_tensor_data(dy) : NULL, rstd->dtype, drstd ? lu_tensor_data(drstd) : NULL,
                lu_tensor_data(x), w ? lu_tensor_data(w) : NULL, lu_tensor_data(rstd), lu_tensor_data(dx), rows, d);
            LU_CUDA_CHECK_LAUNCH();
        }
    }
    if (dw && lu_tensor_numel(dw)) {
        if (!dy) {
            LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(dw), 0, lu_tensor_nbytes(dw), 0));
        } else {
            rmsnorm_backward_dw_kernel<<<lu_cuda_blocks(d), LU_CUDA_THREADS>>>(
                x->dtype, lu_tensor_data(dy), lu_tensor_data(x), rstd->dtype, lu_tensor_data(rstd), lu_tensor_data(dw),
                rows, d);
            LU_CUDA_CHECK_LAUNCH();
        }
    }
    return LU_OK;
}

extern "C" void lu_cuda_register_norm(lu_backend *b)
{
    b->forward[LU_OP_SOFTMAX] = softmax_forward;
    b->backward[LU_OP_SOFTMAX] = softmax_backward;
    b->forward[LU_OP_LOG_SOFTMAX] = softmax_forward;
    b->backward[LU_OP_LOG_SOFTMAX] = softmax_backward;
    b->forward[LU_OP_RMSNORM] = rmsnorm_forward;
    b->backward[LU_OP_RMSNORM] = rmsnorm_backward;
}
