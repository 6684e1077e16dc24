/* reduce.c - CPU kernels of the reductions (sum, mean, max), softmax and log-softmax along a
 * dim, and the fused softmax cross-entropy. Each views its contiguous input as
 * [outer, n, inner] with n the reduced dim; results never depend on the thread count (every
 * output is summed by one thread, in a fixed order). The loops are in reduce_generic.h. */
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
static lu_status xent_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(xent_fwd, c, c->in[0]->dtype); }
static lu_status xent_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(xent_bwd, c, c->in[3]->dtype); }

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
