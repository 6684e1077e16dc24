/* reduce.c - CPU kernels of the reductions (sum, mean, max), softmax and log-softmax along a
 * dim, and the fused softmax cross-entropy. Each views its contiguous input as
 * [outer, n, inner] with n the reduced dim; results never depend on the thread count (every
 * output is summed by one thread, in a fixed order). The loops are in reduce_generic.h; the
 * cross-entropy also takes 16-bit logits, through its f32 kernels. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

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

#define LU_GENERIC_FILE "reduce_generic.h"
#include "generic.h"

static lu_status sum_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(sum_fwd, c, c->out[0]->dtype); }
static lu_status sum_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(sum_bwd, c, c->in[1]->dtype); }
static lu_status max_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(max_fwd, c, c->out[0]->dtype); }
static lu_status max_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(max_bwd, c, c->in[2]->dtype); }
static lu_status softmax_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(softmax_fwd, c, c->out[0]->dtype); }
static lu_status softmax_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(softmax_bwd, c, c->in[1]->dtype); }

/* 16-bit logits (the GPU's compute dtype) run the f32 kernels on an f32 copy, as the CPU computes
 * in f32: their loss, lse and count are f32 already (core/ops_reduce.c), and so is dloss; only
 * dlogits go back to the logits' dtype. */
static bool xent_16bit(lu_dtype dt) { return dt == LU_BF16 || dt == LU_F16; }

/* The f32 kernels read and write every float operand but the logits and dlogits as f32. */
static lu_status xent_check_f32(lu_dtype logits_dt, lu_tensor *const *ts, int n)
{
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->dtype != LU_F32)
            return lu_errorf(LU_ERR_DTYPE, "cross_entropy: %s logits need an f32 loss, lse, count and dloss, got %s",
                             lu_dtype_name(logits_dt), lu_dtype_name(ts[i]->dtype));
    return LU_OK;
}

/* An f32 tensor shaped as contiguous t, holding t's values when `copy`; heap memory, freed with
 * the tensor (not the step's arena: it lives for one kernel call). */
static lu_tensor *xent_f32_like(const lu_tensor *t, bool copy)
{
    size_t n = (size_t)lu_tensor_numel(t);
    float *d = malloc((n ? n : 1) * sizeof *d);
    if (!d) {
        lu_errorf(LU_ERR_NOMEM, "cross_entropy: out of memory for %zu f32 logits", n);
        return NULL;
    }
    if (copy) lu_dtype_convert(d, LU_F32, lu_tensor_data(t), t->dtype, n);
    lu_tensor *w = lu_tensor_wrap(LU_F32, t->ndim, t->shape, LU_CPU, d, free, d);
    if (!w) free(d);
    return w;
}

static lu_status xent_forward(const lu_op_call *c)
{
    lu_dtype dt = c->in[0]->dtype;
    if (!xent_16bit(dt)) LU_CPU_DISPATCH_FLOAT(xent_fwd, c, dt);
    LU_TRY(xent_check_f32(dt, c->out, 3));
    lu_op_call w = *c;
    w.in[0] = xent_f32_like(c->in[0], true);
    lu_status s = w.in[0] ? xent_fwd_f32(&w) : lu_error_code();
    lu_tensor_release(w.in[0]);
    return s;
}

/* in = [dloss, dlse, dcount, logits, target, loss, lse, count], out = [dlogits, -]. */
static lu_status xent_backward(const lu_op_call *c)
{
    lu_dtype dt = c->in[3]->dtype;
    if (!xent_16bit(dt)) LU_CPU_DISPATCH_FLOAT(xent_bwd, c, dt);
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    LU_TRY(xent_check_f32(dt, (lu_tensor *[]){c->in[0], c->in[5], c->in[6], c->in[7]}, 4));
    lu_op_call w = *c;
    w.in[3] = xent_f32_like(c->in[3], true);
    w.out[0] = w.in[3] ? xent_f32_like(dx, false) : NULL;
    lu_status s = w.out[0] ? xent_bwd_f32(&w) : lu_error_code();
    if (s == LU_OK)
        lu_dtype_convert(lu_tensor_data(dx), dt, lu_tensor_data(w.out[0]), LU_F32, (size_t)lu_tensor_numel(dx));
    lu_tensor_release(w.in[3]);
    lu_tensor_release(w.out[0]);
    return s;
}

void lu_cpu_register_reduce(lu_backend *b)
{
    b->forward[LU_OP_SUM] = sum_forward;
    b->backward[LU_OP_SUM] = sum_backward;
    b->forward[LU_OP_MEAN] = sum_forward;
    b->backward[LU_OP_MEAN] = sum_backward;
    b->forward[LU_OP_MAX] = max_forward;
    b->backward[LU_OP_MAX] = max_backward;
    b->forward[LU_OP_SOFTMAX] = softmax_forward;
    b->backward[LU_OP_SOFTMAX] = softmax_backward;
    b->forward[LU_OP_LOG_SOFTMAX] = softmax_forward;
    b->backward[LU_OP_LOG_SOFTMAX] = softmax_backward;
    b->forward[LU_OP_CROSS_ENTROPY] = xent_forward;
    b->backward[LU_OP_CROSS_ENTROPY] = xent_backward;
}
