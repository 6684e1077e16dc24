/* dropout.cu - CUDA kernel of DROPOUT, forward and backward, f32 and bf16 (core/cpu/conv_generic.h
 * is the reference). Element i is dropped when the unit value of word i % 4 of Philox block i / 4
 * of stream (seed, step, op_id) is below p (philox.h, the CPU's generator word for word), kept
 * ones are scaled by 1/(1-p): the mask is the CPU's, bit for bit. The backward regenerates it. */
#include "device.cuh"
#include "philox.h"

/* dst = src * mask / (1-p); one thread per Philox block of 4 elements. */
static __global__ void dropout_kernel(int dt, const void *src, void *dst, int64_t n, double p, float scale,
                                      uint64_t seed, uint64_t step, uint32_t op)
{
    LU_CUDA_FOR(blk, (n + 3) / 4)
    {
        uint32_t w[4];
        lu_philox_block(seed, step, op, (uint64_t)blk, w);
        for (int k = 0; k < 4 && 4 * blk + k < n; k++) {
            int64_t i = 4 * blk + k;
            lu_dev_store(dst, dt, i, (double)lu_philox_unit(w[k]) < p ? 0.0f : lu_dev_load(src, dt, i) * scale);
        }
    }
}

static lu_status dropout_run(const lu_op_call *c, const lu_tensor *src, lu_tensor *dst)
{
    const lu_dropout_params *p = (const lu_dropout_params *)c->params;
    int64_t n = lu_tensor_numel(dst);
    if (lu_tensor_numel(src) != n)
        return lu_errorf(LU_ERR_SHAPE, "dropout: %lld elements in, %lld out", (long long)lu_tensor_numel(src),
                         (long long)n);
    if (!(p->p >= 0 && p->p < 1)) return lu_errorf(LU_ERR_INVALID, "dropout: p = %g must be in [0, 1)", p->p);
    if (n == 0) return LU_OK;
    dropout_kernel<<<lu_cuda_blocks((n + 3) / 4), LU_CUDA_THREADS>>>(src->dtype, lu_tensor_data(src),
                                                                     lu_tensor_data(dst), n, p->p,
                                                                     (float)(1 / (1 - p->p)), p->seed, p->step,
                                                                     p->op_id);
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [x], out = [y]. */
static lu_status dropout_forward(const lu_op_call *c)
{
    const lu_tensor *ts[2] = {c->in[0], c->out[0]};
    LU_TRY(lu_cuda_check_float(c, ts, 2, c->in[0]->dtype));
    return dropout_run(c, c->in[0], c->out[0]);
}

/* in = [dy, x, y], out = [dx]: dx = dy * mask / (1-p). */
static lu_status dropout_backward(const lu_op_call *c)
{
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    const lu_tensor *ts[3] = {c->in[0], c->in[1], dx};
    LU_TRY(lu_cuda_check_float(c, ts, 3, dx->dtype));
    if (!c->in[0]) {
        LU_TRY(lu_cuda_zero(dx));
        return LU_OK;
    }
    return dropout_run(c, c->in[0], dx);
}

extern "C" void lu_cuda_register_dropout(lu_backend *b)
{
    b->forward[LU_OP_DROPOUT] = dropout_forward;
    b->backward[LU_OP_DROPOUT] = dropout_backward;
}
