/* loss.cu - the fused softmax cross-entropy (CROSS_ENTROPY) on the GPU, f32 and bf16 logits with
 * fp32 math (core/cpu/reduce_generic.h is the reference). The loss (and dloss) and the saved lse
 * and count may be f32 or bf16 whatever the logits' dtype; core/ops_reduce.c makes them f32 for
 * bf16 logits.
 *
 * Forward: one block per row reads the logits once (8 an access when the rows allow), keeping a
 * running (max, sum of exp(x - max)) per thread, merged by a fixed tree; the row's lse and loss
 * follow, and one small block reduces the row losses in order. No probability matrix is written.
 * Backward: dlogits = g * (exp(x - lse) - onehot(target)) straight from the logits and the saved
 * lse, one pass, 8 elements an access when the rows allow. Targets outside [0, V) that are not
 * ignore_index fail with their position, as on the CPU. */
#include <math.h>

#include "device.cuh"

static __device__ __forceinline__ int64_t load_target(const void *p, bool i64, int64_t i)
{
    return i64 ? ((const int64_t *)p)[i] : ((const int32_t *)p)[i];
}

/* Merges a running (max m, sum s of exp(x - m)) with another. A side whose max equals the new
 * max is not rescaled, so that -inf/-inf and +inf/+inf give no NaN; the sum of an all -inf side
 * may then count spurious ones, but it is rescaled by exp(-inf) = 0 as soon as a finite max
 * appears, and an infinite final max discards the sum (as the CPU). NaNs propagate through s. */
static __device__ __forceinline__ void lse_merge(float *m, float *s, float m2, float s2)
{
    float mm = fmaxf(*m, m2);
    float a = *m == mm ? *s : *s * expf(*m - mm);
    float b = m2 == mm ? s2 : s2 * expf(m2 - mm);
    *m = mm;
    *s = a + b;
}

/* Per row: lse[row], the row loss (0 for ignored rows) into rows[row] (f32) or, for reduction
 * none, into loss[row] (dtype ldt); an invalid target records its row in *bad (the smallest one). */
static __device__ __forceinline__ void lse_add(float *m, float *s, float v)
{
    if (v > *m) {
        *s = *s * expf(*m - v) + 1.0f;
        *m = v;
    } else {
        *s += v == *m ? 1.0f : expf(v - *m);
    }
}

/* VEC8: a thread reads 8 consecutive logits at a time (V a multiple of 8, aligned rows). */
template <bool VEC8>
static __global__ void xent_rows_kernel(int dt, const void *logits, const void *target, bool i64, int64_t N, int64_t V,
                                        int64_t ignore, int sdt, void *lse, float *rows, int ldt, void *loss, bool none,
                                        unsigned long long *bad)
{
    __shared__ float wm[LU_CUDA_THREADS / LU_CUDA_WARP], ws[LU_CUDA_THREADS / LU_CUDA_WARP];
    int lane = threadIdx.x % LU_CUDA_WARP, warp = threadIdx.x / LU_CUDA_WARP;
    for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
        int64_t base = row * V;
        float m = -INFINITY, s = 0.0f;
        if (VEC8) {
            for (int64_t j = (int64_t)threadIdx.x * LU_VEC8; j < V; j += (int64_t)blockDim.x * LU_VEC8) {
                float v[LU_VEC8];
                lu_dev_load8(logits, dt, base + j, v);
#pragma unroll
                for (int e = 0; e < LU_VEC8; e++) lse_add(&m, &s, v[e]);
            }
        } else {
            for (int64_t j = threadIdx.x; j < V; j += blockDim.x) lse_add(&m, &s, lu_dev_load(logits, dt, base + j));
        }
        for (int o = LU_CUDA_WARP / 2; o > 0; o /= 2) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
            lse_merge(&m, &s, m2, s2);
        }
        __syncthreads(); /* wm/ws may still be read for the previous row */
        if (lane == 0) {
            wm[warp] = m;
            ws[warp] = s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            m = wm[0];
            s = ws[0];
            for (int w = 1; w < (int)(blockDim.x / LU_CUDA_WARP); w++) lse_merge(&m, &s, wm[w], ws[w]);
            float ls = isinf(m) ? 0.0f : logf(s), r = 0.0f;
            int64_t t = load_target(target, i64, row);
            if (t != ignore) {
                if (t < 0 || t >= V) {
                    atomicMin(bad, (unsigned long long)row);
                    r = NAN;
                } else {
                    r = ls - (lu_dev_load(logits, dt, base + t) - m);
                }
            }
            lu_dev_store(lse, sdt, row, ls + m);
            if (none) lu_dev_store(loss, ldt, row, r);
            else rows[row] = r;
        }
    }
}

/* One block: count = targets != ignore; loss = sum (or mean over count) of the row losses, each
 * thread a strided run in order, then a fixed tree. */
static __global__ void xent_total_kernel(const float *rows, const void *target, bool i64, int64_t N, int64_t ignore,
                                         int reduction, int ldt, void *loss, int sdt, void *count)
{
    __shared__ double ps[LU_CUDA_THREADS];
    __shared__ int64_t pc[LU_CUDA_THREADS];
    double s = 0.0;
    int64_t n = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        if (rows) s += rows[i];
        n += load_target(target, i64, i) != ignore;
    }
    ps[threadIdx.x] = s;
    pc[threadIdx.x] = n;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) {
            ps[threadIdx.x] += ps[threadIdx.x + half];
            pc[threadIdx.x] += pc[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        /* torch: the mean over zero counted targets is 0/0 = NaN. */
        if (reduction == LU_REDUCE_SUM) lu_dev_store(loss, ldt, 0, (float)ps[0]);
        if (reduction == LU_REDUCE_MEAN) lu_dev_store(loss, ldt, 0, (float)(ps[0] / (double)pc[0]));
        lu_dev_store(count, sdt, 0, (float)pc[0]);
    }
}

/* The gradient g_i of row i's loss: dloss_i, dloss, or dloss / count by the reduction. */
static __device__ __forceinline__ float xent_row_grad(int reduction, int ddt, const void *dloss, int sdt,
                                                      const void *count, int64_t row)
{
    if (reduction == LU_REDUCE_NONE) return lu_dev_load(dloss, ddt, row);
    if (reduction == LU_REDUCE_SUM) return lu_dev_load(dloss, ddt, 0);
    return lu_dev_load(dloss, ddt, 0) / lu_dev_load(count, sdt, 0);
}

/* dlogits[i, j] = g_i (exp(x_ij - lse_i) - [j == t_i]), g_i = 0 for ignored rows; rows over
 * blockIdx.y, columns over blockIdx.x, 8 a thread with VEC8 (V a multiple of 8, 16-byte aligned
 * logits and dlogits). logits and dlogits are of dtype dt, dloss of ddt. */
template <bool VEC8>
static __global__ void xent_backward_kernel(int dt, const void *logits, const void *target, bool i64, int64_t N,
                                            int64_t V, int64_t ignore, int reduction, int ddt, const void *dloss,
                                            int sdt, const void *lse, const void *count, void *dlogits)
{
    constexpr int E = VEC8 ? LU_VEC8 : 1;
    for (int64_t row = blockIdx.y; row < N; row += gridDim.y) {
        int64_t t = load_target(target, i64, row), base = row * V;
        const float g = t == ignore ? 0.0f : xent_row_grad(reduction, ddt, dloss, sdt, count, row),
                    l = lu_dev_load(lse, sdt, row);
        for (int64_t j = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * E; j < V;
             j += (int64_t)gridDim.x * blockDim.x * E) {
            float d[E] = {0.0f};
            if (t != ignore) {
                if (VEC8) lu_dev_load8(logits, dt, base + j, d);
                else d[0] = lu_dev_load(logits, dt, base + j);
#pragma unroll
                for (int e = 0; e < E; e++) {
                    d[e] = g * expf(d[e] - l);
                    if (j + e == t) d[e] -= g;
                }
            }
            if (VEC8) lu_dev_store8(dlogits, dt, base + j, d);
            else lu_dev_store(dlogits, dt, base + j, d[0]);
        }
    }
}

/* Checks shapes and dtypes: logits [N, V] f32/bf16, target [N] i32/i64, loss ([] or [N]) f32 or
 * bf16, lse [N] and count [1] f32 or bf16 (the same). */
static lu_status xent_check(const lu_op_call *c, const lu_tensor *logits, const lu_tensor *target,
                            const lu_tensor *loss, const lu_tensor *lse, const lu_tensor *count)
{
    const lu_cross_entropy_params *p = (const lu_cross_entropy_params *)c->params;
    LU_TRY(lu_cuda_check_float(c, &logits, 1, logits->dtype));
    LU_TRY(lu_cuda_check_float(c, &loss, 1, loss->dtype));
    char sl[LU_SHAPE_STR_MAX], st[LU_SHAPE_STR_MAX];
    if (logits->ndim != 2 || target->ndim != 1 || target->shape[0] != logits->shape[0] ||
        (target->dtype != LU_I32 && target->dtype != LU_I64))
        return lu_errorf(LU_ERR_SHAPE, "cross_entropy: logits %s and target %s %s must be [N, V] and i32/i64 [N]",
                         lu_shape_str(logits, sl, sizeof sl), lu_shape_str(target, st, sizeof st),
                         lu_dtype_name(target->dtype));
    int64_t N = logits->shape[0];
    if (!lu_cuda_is_float(lse->dtype) || lse->dtype != count->dtype || lu_tensor_numel(lse) != N ||
        lu_tensor_numel(count) != 1)
        return lu_errorf(LU_ERR_SHAPE, "cross_entropy: lse (%s, %lld elements) and count (%s, %lld) must be f32 or "
                         "bf16 with %lld and 1 elements", lu_dtype_name(lse->dtype), (long long)lu_tensor_numel(lse),
                         lu_dtype_name(count->dtype), (long long)lu_tensor_numel(count), (long long)N);
    if (lu_tensor_numel(loss) != (p->reduction == LU_REDUCE_NONE ? N : 1))
        return lu_errorf(LU_ERR_SHAPE, "cross_entropy: loss has %lld elements for %lld rows",
                         (long long)lu_tensor_numel(loss), (long long)N);
    return LU_OK;
}

/* in = [logits [N,V], target [N]], out = [loss ([] or [N]), lse [N], count [1]]. */
static lu_status xent_forward(const lu_op_call *c)
{
    const lu_cross_entropy_params *p = (const lu_cross_entropy_params *)c->params;
    const lu_tensor *logits = c->in[0], *target = c->in[1];
    lu_tensor *loss = c->out[0], *lse = c->out[1], *count = c->out[2];
    LU_TRY(xent_check(c, logits, target, loss, lse, count));
    int64_t N = logits->shape[0], V = logits->shape[1];
    if (V < 1) return lu_errorf(LU_ERR_SHAPE, "cross_entropy: logits need at least one class");
    bool none = p->reduction == LU_REDUCE_NONE, i64 = target->dtype == LU_I64;
    /* scratch: the first invalid row, then the row losses */
    unsigned long long *bad, found;
    LU_TRY(lu_cuda_scratch_alloc((void **)&bad, sizeof *bad + (size_t)N * sizeof(float)));
    float *rows = none ? NULL : (float *)(void *)(bad + 1);
    LU_CUDA_CHECK(cudaMemsetAsync(bad, 0xff, sizeof *bad, 0));
    if (N > 0) {
        unsigned grid = (unsigned)(N < 1048576 ? N : 1048576);
        const void *lp = lu_tensor_data(logits);
        if (lu_cuda_vec8_ok(V, &lp, 1))
            xent_rows_kernel<true><<<grid, LU_CUDA_THREADS>>>(logits->dtype, lp, lu_tensor_data(target), i64, N, V,
                                                              p->ignore_index, lse->dtype, lu_tensor_data(lse), rows,
                                                              loss->dtype, lu_tensor_data(loss), none, bad);
        else
            xent_rows_kernel<false><<<grid, LU_CUDA_THREADS>>>(logits->dtype, lp, lu_tensor_data(target), i64, N, V,
                                                               p->ignore_index, lse->dtype, lu_tensor_data(lse), rows,
                                                               loss->dtype, lu_tensor_data(loss), none, bad);
        LU_CUDA_CHECK_LAUNCH();
    }
    xent_total_kernel<<<1, LU_CUDA_THREADS>>>(rows, lu_tensor_data(target), i64, N, p->ignore_index, (int)p->reduction,
                                              loss->dtype, lu_tensor_data(loss), count->dtype, lu_tensor_data(count));
    LU_CUDA_CHECK_LAUNCH();
    LU_CUDA_CHECK(cudaMemcpy(&found, bad, sizeof found, cudaMemcpyDeviceToHost));
    lu_cuda_scratch_free(bad);
    if (found != ~0ULL) {
        int64_t t = 0;
        LU_TRY(lu_cuda_index_at(target, (int64_t)found, &t));
        return lu_errorf(LU_ERR_INVALID, "cross_entropy: target %lld at position %lld is outside [0, %lld) and is "
                         "not ignore_index %lld", (long long)t, (long long)found, (long long)V,
                         (long long)p->ignore_index);
    }
    return LU_OK;
}

/* in = [dloss, dlse, dcount, logits, target, loss, lse, count], out = [dlogits, -]: dlogits in
 * the logits' dtype, dloss f32 or bf16. The gradients of the saved lse and count are ignored, as
 * on the CPU. */
static lu_status xent_backward(const lu_op_call *c)
{
    const lu_cross_entropy_params *p = (const lu_cross_entropy_params *)c->params;
    const lu_tensor *dloss = c->in[0], *logits = c->in[3], *target = c->in[4], *loss = c->in[5], *lse = c->in[6],
                    *count = c->in[7];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    LU_TRY(xent_check(c, logits, target, loss, lse, count));
    const lu_tensor *ts[2] = {logits, dx};
    LU_TRY(lu_cuda_check_float(c, ts, 2, logits->dtype));
    int64_t N = logits->shape[0], V = logits->shape[1];
    if (N == 0 || V == 0) return LU_OK;
    if (!dloss) {
        LU_TRY(lu_cuda_zero(dx));
        return LU_OK;
    }
    LU_TRY(lu_cuda_check_float(c, &dloss, 1, dloss->dtype));
    const void *ptrs[2] = {lu_tensor_data(logits), lu_tensor_data(dx)};
    const bool vec8 = lu_cuda_vec8_ok(V, ptrs, 2);
    const int64_t per = vec8 ? LU_VEC8 * LU_CUDA_THREADS : 4 * LU_CUDA_THREADS, gx = (V + per - 1) / per;
    dim3 grid((unsigned)(gx < 1024 ? gx : 1024), (unsigned)(N < 65535 ? N : 65535));
#define XENT_BWD_ARGS                                                                                           \
    logits->dtype, lu_tensor_data(logits), lu_tensor_data(target), target->dtype == LU_I64, N, V, p->ignore_index, \
        (int)p->reduction, dloss->dtype, lu_tensor_data(dloss), lse->dtype, lu_tensor_data(lse),                   \
        lu_tensor_data(count), lu_tensor_data(dx)
    if (vec8) xent_backward_kernel<true><<<grid, LU_CUDA_THREADS>>>(XENT_BWD_ARGS);
    else xent_backward_kernel<false><<<grid, LU_CUDA_THREADS>>>(XENT_BWD_ARGS);
#undef XENT_BWD_ARGS
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

extern "C" void lu_cuda_register_loss(lu_backend *b)
{
    b->forward[LU_OP_CROSS_ENTROPY] = xent_forward;
    b->backward[LU_OP_CROSS_ENTROPY] = xent_backward;
}
