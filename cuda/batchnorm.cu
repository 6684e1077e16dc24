/* batchnorm.cu - CUDA kernels of BATCHNORM (torch.nn.BatchNorm1d/2d), forward and backward, f32
 * and bf16 with fp32 sums (core/cpu/conv_generic.h is the reference). x is read as [B, C, S];
 * one block per channel sums its n = B*S values with a block reduction whose order depends
 * only on the block size, so results are deterministic. The per-channel arithmetic (running
 * statistics, scale and shift) is done in double, as on the CPU. */
#include <math.h>

#include "device.cuh"

/* Index in x of value j (of the channel's n = B*S values). */
static __device__ __forceinline__ int64_t channel_at(int64_t ch, int64_t j, int64_t C, int64_t S)
{
    return (j / S * C + ch) * S + j % S;
}

/* training: mean, var = biased batch statistics, running = (1-m) running + m batch with the
 * unbiased variance; eval: mean, var = running statistics. y = (x - mean) invstd weight + bias. */
static __global__ void batchnorm_forward_kernel(int dt, const void *x, const void *w, const void *bias, void *rm,
                                                void *rv, void *y, void *mean_out, void *inv_out, int64_t B, int64_t C,
                                                int64_t S, bool training, double momentum, double eps)
{
    const int64_t n = B * S;
    for (int64_t ch = blockIdx.x; ch < C; ch += gridDim.x) {
        double mean, var;
        if (training) {
            float s = 0.0f;
            for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += lu_dev_load(x, dt, channel_at(ch, j, C, S));
            float m = lu_dev_block_sum(s) / (float)n, ss = 0.0f;
            for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
                float dv = lu_dev_load(x, dt, channel_at(ch, j, C, S)) - m;
                ss += dv * dv;
            }
            mean = m;
            var = (double)lu_dev_block_sum(ss) / (double)n;
            if (threadIdx.x == 0) {
                lu_dev_store(rm, dt, ch, (float)((1 - momentum) * lu_dev_load(rm, dt, ch) + momentum * mean));
                lu_dev_store(rv, dt, ch,
                             (float)((1 - momentum) * lu_dev_load(rv, dt, ch) +
                                     momentum * var * (double)n / (double)(n - 1)));
            }
        } else {
            mean = lu_dev_load(rm, dt, ch);
            var = lu_dev_load(rv, dt, ch);
        }
        double inv = 1 / sqrt(var + eps), scale = (w ? lu_dev_load(w, dt, ch) : 1) * inv;
        double shift = (bias ? lu_dev_load(bias, dt, ch) : 0) - mean * scale;
        if (threadIdx.x == 0) {
            lu_dev_store(mean_out, dt, ch, (float)mean);
            lu_dev_store(inv_out, dt, ch, (float)inv);
        }
        float fs = (float)scale, fb = (float)shift;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            int64_t k = channel_at(ch, j, C, S);
            lu_dev_store(y, dt, k, lu_dev_load(x, dt, k) * fs + fb);
        }
    }
}

/* With xhat = (x - mean) invstd: dweight = sum(dy xhat), dbias = sum(dy);
 * training: dx = weight invstd (dy - sum(dy)/n - xhat sum(dy xhat)/n); eval: dx = weight invstd dy. */
static __global__ void batchnorm_backward_kernel(int dt, const void *dy, const void *x, const void *w,
                                                 const void *mean_in, const void *inv_in, void *dx, void *dw, void *db,
                                                 int64_t B, int64_t C, int64_t S, bool training)
{
    const int64_t n = B * S;
    for (int64_t ch = blockIdx.x; ch < C; ch += gridDim.x) {
        float mean = lu_dev_load(mean_in, dt, ch), inv = lu_dev_load(inv_in, dt, ch), sdy = 0.0f, sdyx = 0.0f;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            int64_t k = channel_at(ch, j, C, S);
            float g = lu_dev_load(dy, dt, k);
            sdy += g;
            sdyx += g * (lu_dev_load(x, dt, k) - mean) * inv;
        }
        sdy = lu_dev_block_sum(sdy);
        sdyx = lu_dev_block_sum(sdyx);
        if (threadIdx.x == 0) {
            if (dw) lu_dev_store(dw, dt, ch, sdyx);
            if (db) lu_dev_store(db, dt, ch, sdy);
        }
        if (!dx) continue;
        float a = (float)((w ? lu_dev_load(w, dt, ch) : 1.0f) * (double)inv);
        float mdy = training ? (float)((double)sdy / (double)n) : 0.0f;
        float mdyx = training ? (float)((double)sdyx / (double)n) : 0.0f;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            int64_t k = channel_at(ch, j, C, S);
            float xh = (lu_dev_load(x, dt, k) - mean) * inv;
            lu_dev_store(dx, dt, k, a * (lu_dev_load(dy, dt, k) - mdy - xh * mdyx));
        }
    }
}

static unsigned channel_blocks(int64_t C) { return (unsigned)(C < 1 ? 1 : C > 65535 ? 65535 : C); }

/* x [B, C, ...] -> B, C, S; every per-channel operand given must have C elements. */
static lu_status batchnorm_shape(const lu_tensor *x, const lu_tensor *const *chan, int n_chan, int64_t *B, int64_t *C,
                                 int64_t *S)
{
    if (x->ndim < 2) return lu_errorf(LU_ERR_SHAPE, "batchnorm: x needs at least 2 dims [B, C, ...], got %d", x->ndim);
    *B = x->shape[0];
    *C = x->shape[1];
    *S = 1;
    for (int k = 2; k < x->ndim; k++) *S *= x->shape[k];
    for (int i = 0; i < n_chan; i++)
        if (chan[i] && lu_tensor_numel(chan[i]) != *C)
            return lu_errorf(LU_ERR_SHAPE, "batchnorm: per-channel operand %d has %lld elements, C is %lld", i,
                             (long long)lu_tensor_numel(chan[i]), (long long)*C);
    return LU_OK;
}

/* in = [x, weight?, bias?, running_mean, running_var], out = [y, mean, invstd]. */
static lu_status batchnorm_forward(const lu_op_call *c)
{
    const lu_batchnorm_params *p = (const lu_batchnorm_params *)c->params;
    const lu_tensor *x = c->in[0], *w = c->in[1], *bias = c->in[2], *rm = c->in[3], *rv = c->in[4];
    lu_tensor *y = c->out[0], *mean = c->out[1], *inv = c->out[2];
    const lu_tensor *ts[8] = {x, w, bias, rm, rv, y, mean, inv};
    LU_TRY(lu_cuda_check_float(c, ts, 8, x->dtype));
    if (!rm || !rv) return lu_errorf(LU_ERR_INVALID, "batchnorm: running_mean and running_var are required");
    int64_t B = 0, C = 0, S = 0;
    const lu_tensor *chan[6] = {w, bias, rm, rv, mean, inv};
    LU_TRY(batchnorm_shape(x, chan, 6, &B, &C, &S));
    if (C == 0) return LU_OK;
    batchnorm_forward_kernel<<<channel_blocks(C), LU_CUDA_THREADS>>>(
        x->dtype, lu_tensor_data(x), w ? lu_tensor_data(w) : NULL, bias ? lu_tensor_data(bias) : NULL,
        lu_tensor_data(rm), lu_tensor_data(rv), lu_tensor_data(y), lu_tensor_data(mean), lu_tensor_data(inv), B, C, S,
        p->training, p->momentum, p->eps);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dy, dmean, dinvstd, x, weight?, bias?, running_mean, running_var, y, mean, invstd],
 * out = [dx?, dweight?, dbias?, -, -]; the saved statistics are not differentiated (as on the
 * CPU, dmean and dinvstd are ignored). */
static lu_status batchnorm_backward(const lu_op_call *c)
{
    const lu_batchnorm_params *p = (const lu_batchnorm_params *)c->params;
    const lu_tensor *dy = c->in[0], *x = c->in[3], *w = c->in[4], *mean = c->in[9], *inv = c->in[10];
    lu_tensor *dx = c->out[0], *dw = c->out[1], *db = c->out[2];
    const lu_tensor *ts[8] = {dy, x, w, mean, inv, dx, dw, db};
    LU_TRY(lu_cuda_check_float(c, ts, 8, x->dtype));
    int64_t B = 0, C = 0, S = 0;
    const lu_tensor *chan[5] = {w, mean, inv, dw, db};
    LU_TRY(batchnorm_shape(x, chan, 5, &B, &C, &S));
    if (!dy || C == 0) {
        for (int i = 0; i < 3; i++)
            if (c->out[i]) LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(c->out[i]), 0, lu_tensor_nbytes(c->out[i]), 0));
        return LU_OK;
    }
    if (!mean || !inv) return lu_errorf(LU_ERR_INVALID, "batchnorm backward: the saved mean and invstd are required");
    batchnorm_backward_kernel<<<channel_blocks(C), LU_CUDA_THREADS>>>(
        x->dtype, lu_tensor_data(dy), lu_tensor_data(x), w ? lu_tensor_data(w) : NULL, lu_tensor_data(mean),
        lu_tensor_data(inv), dx ? lu_tensor_data(dx) : NULL, dw ? lu_tensor_data(dw) : NULL,
        db ? lu_tensor_data(db) : NULL, B, C, S, p->training);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

extern "C" void lu_cuda_register_batchnorm(lu_backend *b)
{
    b->forward[LU_OP_BATCHNORM] = batchnorm_forward;
    b->backward[LU_OP_BATCHNORM] = batchnorm_backward;
}
