/* optim.c - CPU optimiser kernels: the in-place AdamW update (float and double). */
#include "cpu.h"

#define LU_GENERIC_FILE "optim_generic.h"
#include "generic.h"

/* in = [param, grad, m, v], all contiguous with the same shape and dtype; no outputs. */
static lu_status adamw_forward(const lu_op_call *c)
{
    for (int i = 1; i < 4; i++) {
        if (c->in[i]->dtype != c->in[0]->dtype || lu_tensor_numel(c->in[i]) != lu_tensor_numel(c->in[0]))
            return lu_errorf(LU_ERR_SHAPE, "adamw: tensor %d (%s, %lld elements) does not match the parameter "
                             "(%s, %lld elements)", i, lu_dtype_name(c->in[i]->dtype),
                             (long long)lu_tensor_numel(c->in[i]), lu_dtype_name(c->in[0]->dtype),
                             (long long)lu_tensor_numel(c->in[0]));
    }
    const lu_adamw_params *a = c->params;
    if (a->step < 1) return lu_errorf(LU_ERR_INVALID, "adamw: step must be >= 1 (1-based), got %lld", (long long)a->step);
    LU_CPU_DISPATCH_FLOAT(adamw_fwd, c, c->in[0]->dtype);
}

void lu_cpu_register_optim(lu_backend *b) { b->forward[LU_OP_ADAMW] = adamw_forward; }
