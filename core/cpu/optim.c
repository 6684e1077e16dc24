/* optim.c - CPU optimiser kernels: the in-place AdamW and ScaledAdam updates and ScaledAdam's
 * per-tensor sums (float and double). */
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

/* in = [param, grad, delta, exp_avg_sq] of one dtype and size (scaled_adam), or [param, grad]
 * with out = [f64 [3]] (scaled_adam_stats). */
static lu_status scaled_adam_check(const lu_op_call *c, int n_in)
{
    for (int i = 1; i < n_in; i++)
        if (c->in[i]->dtype != c->in[0]->dtype || lu_tensor_numel(c->in[i]) != lu_tensor_numel(c->in[0]))
            return lu_errorf(LU_ERR_SHAPE, "%s: tensor %d (%s, %lld elements) does not match the parameter (%s, %lld "
                             "elements)", lu_op_name(c->op), i, lu_dtype_name(c->in[i]->dtype),
                             (long long)lu_tensor_numel(c->in[i]), lu_dtype_name(c->in[0]->dtype),
                             (long long)lu_tensor_numel(c->in[0]));
    return LU_OK;
}

static lu_status scaled_adam_stats_forward(const lu_op_call *c)
{
    LU_TRY(scaled_adam_check(c, 2));
    if (c->out[0]->dtype != LU_F64 || lu_tensor_numel(c->out[0]) != 3)
        return lu_errorf(LU_ERR_SHAPE, "scaled_adam_stats: the output must be f64 [3]");
    LU_CPU_DISPATCH_FLOAT(scaled_adam_stats_fwd, c, c->in[0]->dtype);
}

static lu_status scaled_adam_forward(const lu_op_call *c)
{
    LU_TRY(scaled_adam_check(c, 4));
    LU_CPU_DISPATCH_FLOAT(scaled_adam_fwd, c, c->in[0]->dtype);
}

void lu_cpu_register_optim(lu_backend *b)
{
    b->forward[LU_OP_ADAMW] = adamw_forward;
    b->forward[LU_OP_SCALED_ADAM_STATS] = scaled_adam_stats_forward;
    b->forward[LU_OP_SCALED_ADAM] = scaled_adam_forward;
}
