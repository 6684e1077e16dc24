/* optim.cu - CUDA optimiser updates: ADAMW in place on f32 param, grad and moments, as
 * torch.optim.AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", alg. 2):
 *     p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
 *     p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * The bias corrections are computed once on the host in double, as torch does in Python. */
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

extern "C" void lu_cuda_register_optim(lu_backend *b) { b->forward[LU_OP_ADAMW] = adamw_forward; }
