/* matmul.c - CPU matrix products through OpenBLAS (float and double). */
#include <cblas.h>
#include <string.h>

#include "cpu.h"

#define LU_GENERIC_FILE "matmul_generic.h"
#include "generic.h"

static lu_status matmul_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(matmul_fwd, c, c->out[0]->dtype); }
static lu_status matmul_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(matmul_bwd, c, c->in[1]->dtype); }

void lu_cpu_register_matmul(lu_backend *b)
{
    b->forward[LU_OP_MATMUL] = matmul_forward;
    b->backward[LU_OP_MATMUL] = matmul_backward;
}
