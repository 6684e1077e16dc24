/* ops_elementwise.c - elementwise ops: add/sub/mul/div with numpy broadcasting, affine/scale and
 * the unary activations.
 *
 * Binary ops pass a and b to the kernel unchanged (their own shapes and strides); the kernel
 * reads them through the broadcast shape of y. The tape therefore records the original operands
 * and the backward kernel sums each gradient back onto its operand's shape. */
#include "autograd.h"
#include "ops.h"

static lu_tensor *fail_pair(lu_status code, const char *op, const char *what, const lu_tensor *a,
                            const lu_tensor *b)
{
    char sa[LU_SHAPE_STR_MAX], sb[LU_SHAPE_STR_MAX];
    lu_errorf(code, "%s: %s (a %s %s, b %s %s)", op, what,
              lu_shape_str(a, sa, sizeof sa), lu_dtype_name(a->dtype), lu_shape_str(b, sb, sizeof sb),
              lu_dtype_name(b->dtype));
    return NULL;
}

static bool check_float(const char *op, const lu_tensor *x)
{
    if (lu_dtype_is_float(x->dtype)) return true;
    char s[LU_SHAPE_STR_MAX];
    lu_errorf(LU_ERR_DTYPE, "%s: needs a float tensor, got %s %s", op, lu_shape_str(x, s, sizeof s),
              lu_dtype_name(x->dtype));
    return false;
}

/* Runs a single-output op and returns its output, or NULL. */
static lu_tensor *run1(lu_op op, lu_tensor **in, int n_in, lu_tensor *y, const void *params, size_t size)
{
    if (!y) return NULL;
    if (lu_op_run(op, in, n_in, &y, 1, params, size)) {
        lu_tensor_release(y);
        return NULL;
    }
    return y;
}

static lu_tensor *binary(lu_op op, lu_tensor *a, lu_tensor *b)
{
    LU_PROPAGATE_NULL(a, b);
    const char *name = lu_op_name(op);
    if (a->dtype != b->dtype) return fail_pair(LU_ERR_DTYPE, name, "dtypes differ", a, b);
    if (!check_float(name, a)) return NULL;
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t shape[LU_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1) return fail_pair(LU_ERR_SHAPE, name, "shapes do not broadcast", a, b);
        shape[i] = sa == 1 ? sb : sa;
    }
    lu_tensor *in[2] = {a, b};
    return run1(op, in, 2, lu_tensor_empty(a->dtype, nd, shape, lu_tensor_device(a)), NULL, 0);
}

lu_tensor *lu_add(lu_tensor *a, lu_tensor *b) { return binary(LU_OP_ADD, a, b); }
lu_tensor *lu_sub(lu_tensor *a, lu_tensor *b) { return binary(LU_OP_SUB, a, b); }
lu_tensor *lu_mul(lu_tensor *a, lu_tensor *b) { return binary(LU_OP_MUL, a, b); }
lu_tensor *lu_div(lu_tensor *a, lu_tensor *b) { return binary(LU_OP_DIV, a, b); }

/* Unary kernels read contiguous inputs. */
static lu_tensor *unary(lu_op op, lu_tensor *x, const void *params, size_t size)
{
    LU_PROPAGATE_NULL(x);
    if (!check_float(lu_op_name(op), x)) return NULL;
    lu_tensor *c = lu_contiguous(x);
    if (!c) return NULL;
    lu_tensor *y = run1(op, &c, 1, lu_tensor_empty_like(c), params, size);
    lu_tensor_release(c);
    return y;
}

lu_tensor *lu_affine(lu_tensor *x, double alpha, double beta)
{
    LU_PROPAGATE_NULL(x);
    lu_affine_params p = {alpha, beta};
    return unary(LU_OP_AFFINE, x, &p, sizeof p);
}

lu_tensor *lu_scale(lu_tensor *x, double alpha) { return lu_affine(x, alpha, 0.0); }

lu_tensor *lu_exp(lu_tensor *x) { return unary(LU_OP_EXP, x, NULL, 0); }
lu_tensor *lu_log(lu_tensor *x) { return unary(LU_OP_LOG, x, NULL, 0); }
lu_tensor *lu_tanh(lu_tensor *x) { return unary(LU_OP_TANH, x, NULL, 0); }
lu_tensor *lu_sigmoid(lu_tensor *x) { return unary(LU_OP_SIGMOID, x, NULL, 0); }
lu_tensor *lu_relu(lu_tensor *x) { return unary(LU_OP_RELU, x, NULL, 0); }
lu_tensor *lu_silu(lu_tensor *x) { return unary(LU_OP_SILU, x, NULL, 0); }
lu_tensor *lu_swiglu(lu_tensor *gate, lu_tensor *up)
{
    LU_PROPAGATE_NULL(gate, up);
    if (gate->dtype != up->dtype) return fail_pair(LU_ERR_DTYPE, "swiglu", "dtypes differ", gate, up);
    if (!lu_tensor_same_shape(gate, up)) return fail_pair(LU_ERR_SHAPE, "swiglu", "shapes differ", gate, up);
    if (!check_float("swiglu", gate)) return NULL;
    lu_tensor *in[2] = {lu_contiguous(gate), lu_contiguous(up)}, *y = NULL;
    if (in[0] && in[1]) y = run1(LU_OP_SWIGLU, in, 2, lu_tensor_empty_like(in[0]), NULL, 0);
    lu_tensor_release(in[0]);
    lu_tensor_release(in[1]);
    return y;
}

lu_tensor *lu_swoosh_l(lu_tensor *x) { return unary(LU_OP_SWOOSH_L, x, NULL, 0); }
lu_tensor *lu_swoosh_r(lu_tensor *x) { return unary(LU_OP_SWOOSH_R, x, NULL, 0); }
lu_tensor *lu_square(lu_tensor *x) { return unary(LU_OP_SQUARE, x, NULL, 0); }
lu_tensor *lu_sqrt(lu_tensor *x) { return unary(LU_OP_SQRT, x, NULL, 0); }

lu_tensor *lu_gelu(lu_tensor *x, bool tanh_approx)
{
    lu_gelu_params p = {tanh_approx};
    return unary(LU_OP_GELU, x, &p, sizeof p);
}
