/* elementwise.c - CPU kernels of the elementwise ops: add/sub/mul/div with numpy broadcasting,
 * affine, and the unary activations (exp ... sqrt).
 *
 * Binary ops receive a and b with their own shapes (right-aligned, size-1 dims broadcast) and any
 * strides; y has the broadcast shape. Their backward reduces each gradient onto its input's own
 * shape. The geometry shared by the f32 and f64 instances lives here; the loops are in
 * elementwise_generic.h. */
#include <string.h>

#include "cpu.h"

/* y's shape and contiguous strides, with the strides of a and b read through y's dims
 * (0 where an operand is broadcast or lacks the dim). */
typedef struct bcast {
    int ndim;
    int64_t shape[LU_MAX_DIMS];
    int64_t sy[LU_MAX_DIMS], sa[LU_MAX_DIMS], sb[LU_MAX_DIMS];
    int64_t xs[2][LU_MAX_DIMS]; /* shapes of a and b padded with leading 1s to y's rank */
} bcast;

static void bcast_init(bcast *g, const lu_tensor *y, const lu_tensor *a, const lu_tensor *b)
{
    g->ndim = y->ndim;
    int64_t s = 1;
    for (int i = y->ndim - 1; i >= 0; i--) {
        g->shape[i] = y->shape[i];
        g->sy[i] = s;
        s *= y->shape[i];
    }
    const lu_tensor *ops[2] = {a, b};
    int64_t *st[2] = {g->sa, g->sb};
    for (int k = 0; k < 2; k++) {
        int lead = y->ndim - ops[k]->ndim;
        for (int i = 0; i < y->ndim; i++) {
            int xi = i - lead;
            g->xs[k][i] = xi >= 0 ? ops[k]->shape[xi] : 1;
            st[k][i] = (xi >= 0 && ops[k]->shape[xi] != 1) ? ops[k]->stride[xi] : 0;
        }
    }
}

/* Offsets in a and b of the start of row r of y, a row being y's innermost dim. */
static void bcast_row(const bcast *g, int64_t r, int64_t *oa, int64_t *ob)
{
    int64_t a = 0, b = 0;
    for (int k = g->ndim - 2; k >= 0; k--) {
        int64_t c = r % g->shape[k];
        r /= g->shape[k];
        a += c * g->sa[k];
        b += c * g->sb[k];
    }
    *oa = a;
    *ob = b;
}

/* Number of trailing elements x covers when it is contiguous and its padded shape is 1s followed
 * by y's trailing dims (a bias over the last dims, or a scalar: 1); 0 otherwise. */
static int64_t trailing_extent(const bcast *g, const lu_tensor *x, int k)
{
    if (!lu_tensor_is_contiguous(x)) return 0;
    int p = 0;
    while (p < g->ndim && g->xs[k][p] == 1) p++;
    int64_t n = 1;
    for (int i = p; i < g->ndim; i++) {
        if (g->xs[k][i] != g->shape[i]) return 0;
        n *= g->shape[i];
    }
    return n;
}

/* GELU's two forms share one op; the flavour comes from its params. The two pseudo ops let
 * the unary list in elementwise_generic.h name each form like an op (case LU_OP_##OP). */
#define LU_OP_GELU_ERF (-1)
#define LU_OP_GELU_TANH (-2)
static int unary_which(const lu_op_call *c)
{
    if (c->op != LU_OP_GELU) return (int)c->op;
    const lu_gelu_params *p = c->params;
    return p && p->tanh_approx ? LU_OP_GELU_TANH : LU_OP_GELU_ERF;
}

/* How the forward loops read the operands. */
typedef enum bin_kind {
    BIN_SAME,     /* both contiguous with y's shape */
    BIN_ROWS_B,   /* a full, b repeats every K elements (K == 1: a scalar) */
    BIN_ROWS_A,   /* b full, a repeats every K elements */
    BIN_STRIDED   /* anything else */
} bin_kind;

/* Backward terms: d y / d a and d y / d b times dy, per op. */
typedef enum bin_term { TERM_DY, TERM_NEG_DY, TERM_DY_B, TERM_DY_A, TERM_DY_OVER_B, TERM_DIV_DB } bin_term;

static const bin_term term_a[4] = {TERM_DY, TERM_DY, TERM_DY_B, TERM_DY_OVER_B};   /* add sub mul div */
static const bin_term term_b[4] = {TERM_DY, TERM_NEG_DY, TERM_DY_A, TERM_DIV_DB};

#define LU_GENERIC_FILE "elementwise_generic.h"
#include "generic.h"

static lu_status binary_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(binary_fwd, c, c->out[0]->dtype); }
static lu_status binary_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(binary_bwd, c, c->in[1]->dtype); }
static lu_status affine_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(affine_fwd, c, c->out[0]->dtype); }
static lu_status affine_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(affine_bwd, c, c->in[1]->dtype); }
static lu_status unary_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(unary_fwd, c, c->out[0]->dtype); }
static lu_status unary_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(unary_bwd, c, c->in[1]->dtype); }
static lu_status swiglu_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(swiglu_fwd, c, c->out[0]->dtype); }
static lu_status swiglu_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(swiglu_bwd, c, c->in[1]->dtype); }

void lu_cpu_register_elementwise(lu_backend *b)
{
    static const lu_op binary[] = {LU_OP_ADD, LU_OP_SUB, LU_OP_MUL, LU_OP_DIV};
    static const lu_op unary[] = {LU_OP_EXP,  LU_OP_LOG,      LU_OP_TANH,     LU_OP_SIGMOID, LU_OP_RELU, LU_OP_SILU,
                                  LU_OP_GELU, LU_OP_SWOOSH_L, LU_OP_SWOOSH_R, LU_OP_SQUARE,  LU_OP_SQRT};
    for (size_t i = 0; i < sizeof binary / sizeof *binary; i++) {
        b->forward[binary[i]] = binary_forward;
        b->backward[binary[i]] = binary_backward;
    }
    for (size_t i = 0; i < sizeof unary / sizeof *unary; i++) {
        b->forward[unary[i]] = unary_forward;
        b->backward[unary[i]] = unary_backward;
    }
    b->forward[LU_OP_AFFINE] = affine_forward;
    b->backward[LU_OP_AFFINE] = affine_backward;
    b->forward[LU_OP_SWIGLU] = swiglu_forward;
    b->backward[LU_OP_SWIGLU] = swiglu_backward;
}
