/* layout.c - CPU kernels that move data: strided -> contiguous copies, dtype casts, and the
 * in-place accumulation autograd uses to add up gradients. */
#include <string.h>

#include "cpu.h"

static lu_status contiguous_forward(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0];
    lu_tensor *y = c->out[0];
    size_t es = lu_dtype_size(x->dtype);
    int64_t n = lu_tensor_numel(x);
    if (n == 0) return LU_OK;
    int nd = x->ndim;
    /* Copy rows of the innermost dim; iterate the outer index like an odometer. */
    int64_t inner = nd ? x->shape[nd - 1] : 1, inner_stride = nd ? x->stride[nd - 1] : 1;
    int64_t rows = n / inner;
    const char *src = lu_tensor_data(x);
    char *dst = lu_tensor_data(y);
#pragma omp parallel for if (n > 65536)
    for (int64_t r = 0; r < rows; r++) {
        int64_t rem = r, off = 0;
        for (int k = nd - 2; k >= 0; k--) {
            off += (rem % x->shape[k]) * x->stride[k];
            rem /= x->shape[k];
        }
        char *d = dst + (size_t)(r * inner) * es;
        if (inner_stride == 1) {
            memcpy(d, src + (size_t)off * es, (size_t)inner * es);
        } else {
            for (int64_t i = 0; i < inner; i++) memcpy(d + (size_t)i * es, src + (size_t)(off + i * inner_stride) * es, es);
        }
    }
    return LU_OK;
}

static lu_status cast_forward(const lu_op_call *c)
{
    lu_dtype_convert(lu_tensor_data(c->out[0]), c->out[0]->dtype, lu_tensor_data(c->in[0]), c->in[0]->dtype,
                     (size_t)lu_tensor_numel(c->in[0]));
    return LU_OK;
}

static lu_status accumulate_forward(const lu_op_call *c)
{
    int64_t n = lu_tensor_numel(c->in[0]);
    if (c->in[0]->dtype != c->out[0]->dtype || n != lu_tensor_numel(c->out[0]))
        return lu_errorf(LU_ERR_SHAPE, "accumulate: %s[%lld] into %s[%lld]", lu_dtype_name(c->in[0]->dtype),
                         (long long)n, lu_dtype_name(c->out[0]->dtype), (long long)lu_tensor_numel(c->out[0]));
    if (c->in[0]->dtype == LU_F32) {
        const float *g = lu_tensor_data(c->in[0]);
        float *d = lu_tensor_data(c->out[0]);
#pragma omp parallel for simd if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] += g[i];
    } else if (c->in[0]->dtype == LU_F64) {
        const double *g = lu_tensor_data(c->in[0]);
        double *d = lu_tensor_data(c->out[0]);
#pragma omp parallel for simd if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] += g[i];
    } else {
        return lu_errorf(LU_ERR_DTYPE, "accumulate: dtype %s not supported on cpu", lu_dtype_name(c->in[0]->dtype));
    }
    return LU_OK;
}

void lu_cpu_register_layout(lu_backend *b)
{
    b->forward[LU_OP_CONTIGUOUS] = contiguous_forward;
    b->forward[LU_OP_CAST] = cast_forward;
    b->forward[LU_OP_ACCUMULATE] = accumulate_forward;
}
