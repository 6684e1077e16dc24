/* matmul.c - CPU matrix products through OpenBLAS (float and double): MATMUL and LINEAR. */
#include <cblas.h>
#include <string.h>

#include "cpu.h"

/* Products below this many multiply-adds (128^3) run one per thread in a batch: splitting each
 * small GEMM across threads costs more than it gains. */
#define LU_MATMUL_SMALL (1 << 21)

#define LU_GENERIC_FILE "matmul_generic.h"
#include "generic.h"

static lu_status matmul_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(matmul_fwd, c, c->out[0]->dtype); }
static lu_status matmul_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(matmul_bwd, c, c->in[1]->dtype); }
static lu_status linear_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(linear_fwd, c, c->out[0]->dtype); }
static lu_status linear_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(linear_bwd, c, c->in[1]->dtype); }

void lu_cpu_register_matmul(lu_backend *b)
{
    b->forward[LU_OP_MATMUL] = matmul_forward;
    b->backward[LU_OP_MATMUL] = matmul_backward;
    b->forward[LU_OP_LINEAR] = linear_forward;
    b->backward[LU_OP_LINEAR] = linear_backward;
}
