/* optim.cu - CUDA optimiser updates: ADAMW in place on f32 param, grad and moments, as
 * torch.optim.AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", alg. 2):
 *     p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
 *     p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * The bias corrections are computed once on the host in double, as torch does in Python.
 * SCALED_ADAM (icefall's ScaledAdam, one tensor per call with its scalars from the host) and its
 * per-tensor sums SCALED_ADAM_STATS, deterministic two-stage reductions in double. */
#include <math.h>

#include "device.cuh"

static __global__ void adamw_kernel(float *p, const float *g, float *m, float *v, int64_t n, float decay, float b1,
                                    float b2, float step_size, float bc2_sqrt, float eps)
{
    LU_CUDA_FOR(i, n)
    {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

/* in = [param, grad, m, v], all f32 with the same number of elements; no outputs. */
static lu_status adamw_forward(const lu_op_call *c)
{
    const lu_adamw_params *a = (const lu_adamw_params *)c->params;
    int64_t n = lu_tensor_numel(c->in[0]);
    static const char *names[4] = {"param", "grad", "m", "v"};
    for (int i = 0; i < 4; i++) {
        if (c->in[i]->dtype != LU_F32)
            return lu_errorf(LU_ERR_DTYPE, "adamw: %s is %s; the cuda backend updates f32 tensors only", names[i],
                             lu_dtype_name(c->in[i]->dtype));
        if (lu_tensor_numel(c->in[i]) != n)
            return lu_errorf(LU_ERR_SHAPE, "adamw: %s has %lld elements, param %lld", names[i],
                             (long long)lu_tensor_numel(c->in[i]), (long long)n);
    }
    if (a->step < 1) return lu_errorf(LU_ERR_INVALID, "adamw: step is %lld, must be >= 1", (long long)a->step);
    if (n == 0) return LU_OK;
    double bc1 = 1.0 - pow(a->beta1, (double)a->step), bc2 = 1.0 - pow(a->beta2, (double)a->step);
    adamw_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
        (float *)lu_tensor_data(c->in[0]), (const float *)lu_tensor_data(c->in[1]), (float *)lu_tensor_data(c->in[2]),
        (float *)lu_tensor_data(c->in[3]), n, (float)(1.0 - a->lr * a->weight_decay), (float)a->beta1,
        (float)a->beta2, (float)(a->lr / bc1), (float)sqrt(bc2), (float)a->eps);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* ---- ScaledAdam (formulas: lu_scaled_adam_params in core/op.h; host side: core/optim.c) ---- */

#define SA_THREADS 256
#define SA_MAX_BLOCKS 1024

/* Sum over the block of three doubles in a fixed tree order; thread 0 writes out[0..2]. */
static __device__ void sa_block_sum3(double v0, double v1, double v2, double *out)
{
    __shared__ double s[3][SA_THREADS];
    s[0][threadIdx.x] = v0;
    s[1][threadIdx.x] = v1;
    s[2][threadIdx.x] = v2;
    __syncthreads();
    for (int w = SA_THREADS / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w)
            for (int k = 0; k < 3; k++) s[k][threadIdx.x] += s[k][threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        for (int k = 0; k < 3; k++) out[k] = s[k][0];
}

/* Stage 1: block b sums p g, p p and g g (in double) over its grid-stride share into part[3b..]. */
static __global__ void __launch_bounds__(SA_THREADS) sa_stats_partial_kernel(const float *p, const float *g, int64_t n,
                                                                             double *part)
{
    double pg = 0, pp = 0, gg = 0;
    for (int64_t i = (int64_t)blockIdx.x * SA_THREADS + threadIdx.x; i < n; i += (int64_t)gridDim.x * SA_THREADS) {
        double pi = p[i], gi = g[i];
        pg += pi * gi;
        pp += pi * pi;
        gg += gi * gi;
    }
    sa_block_sum3(pg, pp, gg, part + 3 * (int64_t)blockIdx.x);
}

/* Stage 2: one block adds the `blocks` partial triples. */
static __global__ void __launch_bounds__(SA_THREADS) sa_stats_final_kernel(const double *part, int blocks, double *out)
{
    double pg = 0, pp = 0, gg = 0;
    for (int b = threadIdx.x; b < blocks; b += SA_THREADS) {
        pg += part[3 * b];
        pp += part[3 * b + 1];
        gg += part[3 * b + 2];
    }
    sa_block_sum3(pg, pp, gg, out);
}

/* f32 operands of one size: names[i] for in[i], i < n_in. */
static lu_status sa_check(const lu_op_call *c, int n_in)
{
    static const char *names[4] = {"param", "grad", "delta", "exp_avg_sq"};
    int64_t n = lu_tensor_numel(c->in[0]);
    for (int i = 0; i < n_in; i++) {
        if (c->in[i]->dtype != LU_F32)
            return lu_errorf(LU_ERR_DTYPE, "%s: %s is %s; the cuda backend updates f32 tensors only", lu_op_name(c->op),
                             names[i], lu_dtype_name(c->in[i]->dtype));
        if (lu_tensor_numel(c->in[i]) != n)
            return lu_errorf(LU_ERR_SHAPE, "%s: %s has %lld elements, param %lld", lu_op_name(c->op), names[i],
                             (long long)lu_tensor_numel(c->in[i]), (long long)n);
    }
    return LU_OK;
}

/* in = [param, grad], out = [f64 [3]]. The grid depends only on the size: the same sums give the
 * same bits on every run. */
static lu_status scaled_adam_stats_forward(const lu_op_call *c)
{
    LU_TRY(sa_check(c, 2));
    lu_tensor *out = c->out[0];
    if (out->dtype != LU_F64 || lu_tensor_numel(out) != 3)
        return lu_errorf(LU_ERR_SHAPE, "scaled_adam_stats: the output must be f64 [3]");
    int64_t n = lu_tensor_numel(c->in[0]), want = (n + 4 * SA_THREADS - 1) / (4 * SA_THREADS);
    int blocks = (int)(want < 1 ? 1 : want > SA_MAX_BLOCKS ? SA_MAX_BLOCKS : want);
    double *part = NULL;
    LU_TRY(lu_cuda_scratch_alloc((void **)&part, (size_t)(3 * blocks) * sizeof *part));
    sa_stats_partial_kernel<<<blocks, SA_THREADS>>>((const float *)lu_tensor_data(c->in[0]),
                                                    (const float *)lu_tensor_data(c->in[1]), n, part);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        sa_stats_final_kernel<<<1, SA_THREADS>>>(part, blocks, (double *)lu_tensor_data(out));
        e = cudaGetLastError();
    }
    lu_cuda_scratch_free(part);
    if (e != cudaSuccess) return lu_cuda_fail(e, __FILE__, __LINE__, "scaled_adam_stats kernels");
    return LU_OK;
}

/* The update in double per element, as the CPU kernel (core/cpu/optim_generic.h). */
static __global__ void scaled_adam_kernel(float *p, const float *g, float *delta, float *v, int64_t n,
                                          lu_scaled_adam_params a)
{
    LU_CUDA_FOR(i, n)
    {
        double gi = a.grad_scale == 0 ? 0.0 : a.grad_scale == 1 ? (double)g[i] : (double)g[i] * a.grad_scale;
        double pi = p[i];
        float vi = (float)(a.beta2 * (double)v[i] + (1 - a.beta2) * gi * gi);
        v[i] = vi;
        double d = -a.lr * gi / (sqrt((double)vi * a.inv_bc2) + a.eps) * a.factor;
        if (a.size_update) d += pi * a.scale_step;
        float di = (float)(a.beta1 * (double)delta[i] + (1 - a.beta1) * d);
        delta[i] = di;
        pi += (double)di;
        if (a.clamped) pi = fmin(fmax(pi, -a.clamp), a.clamp);
        p[i] = (float)pi;
    }
}

/* in = [param, grad, delta, exp_avg_sq], f32 of one size; no outputs. */
static lu_status scaled_adam_forward(const lu_op_call *c)
{
    LU_TRY(sa_check(c, 4));
    int64_t n = lu_tensor_numel(c->in[0]);
    if (n == 0) return LU_OK;
    scaled_adam_kernel<<<lu_cuda_blocks(n), LU_CUDA_THREADS>>>(
        (float *)lu_tensor_data(c->in[0]), (const float *)lu_tensor_data(c->in[1]), (float *)lu_tensor_data(c->in[2]),
        (float *)lu_tensor_data(c->in[3]), n, *(const lu_scaled_adam_params *)c->params);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

extern "C" void lu_cuda_register_optim(lu_backend *b)
{
    b->forward[LU_OP_ADAMW] = adamw_forward;
    b->forward[LU_OP_SCALED_ADAM_STATS] = scaled_adam_stats_forward;
    b->forward[LU_OP_SCALED_ADAM] = scaled_adam_forward;
}
