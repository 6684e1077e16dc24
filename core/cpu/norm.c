/* norm.c - CPU kernels of RMSNorm, LayerNorm, BiasNorm and RoPE (float and double). */
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

#define LU_GENERIC_FILE "norm_generic.h"
#include "generic.h"

static lu_status rmsnorm_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(rmsnorm_fwd, c, c->in[0]->dtype); }
static lu_status rmsnorm_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(rmsnorm_bwd, c, c->in[2]->dtype); }
static lu_status layernorm_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(layernorm_fwd, c, c->in[0]->dtype); }
static lu_status layernorm_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(layernorm_bwd, c, c->in[3]->dtype); }
static lu_status biasnorm_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(biasnorm_fwd, c, c->in[0]->dtype); }
static lu_status biasnorm_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(biasnorm_bwd, c, c->in[2]->dtype); }
static lu_status rope_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(rope_fwd, c, c->in[0]->dtype); }
static lu_status rope_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(rope_bwd, c, c->in[1]->dtype); }

void lu_cpu_register_norm(lu_backend *b)
{
    b->forward[LU_OP_RMSNORM] = rmsnorm_forward;
    b->backward[LU_OP_RMSNORM] = rmsnorm_backward;
    b->forward[LU_OP_LAYERNORM] = layernorm_forward;
    b->backward[LU_OP_LAYERNORM] = layernorm_backward;
    b->forward[LU_OP_BIASNORM] = biasnorm_forward;
    b->backward[LU_OP_BIASNORM] = biasnorm_backward;
    b->forward[LU_OP_ROPE] = rope_forward;
    b->backward[LU_OP_ROPE] = rope_backward;
}
