/* ops_matmul.c - matrix products: lu_matmul (batched, with transposes) and lu_linear (the LINEAR
 * op when it has a bias). */
#include "autograd.h"
#include "ops.h"

static lu_tensor *fail_shapes(const char *what, const lu_tensor *a, const lu_tensor *b)
{
    char sa[LU_SHAPE_STR_MAX], sb[LU_SHAPE_STR_MAX];
    lu_errorf(LU_ERR_SHAPE, "matmul: %s (a %s %s, b %s %s)", what, lu_shape_str(a, sa, sizeof sa),
              lu_dtype_name(a->dtype), lu_shape_str(b, sb, sizeof sb), lu_dtype_name(b->dtype));
    return NULL;
}

lu_tensor *lu_matmul(lu_tensor *a, lu_tensor *b, bool trans_a, bool trans_b)
{
    LU_PROPAGATE_NULL(a, b);
    if (a->ndim < 2 || b->ndim < 2) return fail_shapes("both operands need at least 2 dims", a, b);
    if (a->dtype != b->dtype) return fail_shapes("dtypes differ", a, b);
    int an = a->ndim, bn = b->ndim;
    int64_t m = trans_a ? a->shape[an - 1] : a->shape[an - 2], k = trans_a ? a->shape[an - 2] : a->shape[an - 1];
    int64_t kb = trans_b ? b->shape[bn - 1] : b->shape[bn - 2], n = trans_b ? b->shape[bn - 2] : b->shape[bn - 1];
    if (k != kb) return fail_shapes("inner dimensions differ", a, b);
    int64_t batch = 1;
    for (int i = 0; i < an - 2; i++) batch *= a->shape[i];
    if (bn > 2) {
        if (bn != an) return fail_shapes("b must be 2-D or have a's batch dims", a, b);
        for (int i = 0; i < an - 2; i++)
            if (a->shape[i] != b->shape[i]) return fail_shapes("batch dims differ", a, b);
    }
    /* A 2-D b with an untransposed a is one GEMM over all rows of a. */
    bool fold = bn == 2 && !trans_a;
    int64_t a3[3] = {fold ? 1 : batch, a->shape[an - 2] * (fold ? batch : 1), a->shape[an - 1]};
    int64_t b3[3] = {bn == 2 ? 1 : batch, b->shape[bn - 2], b->shape[bn - 1]};
    lu_tensor *ar = lu_reshape(a, 3, a3), *br = ar ? lu_reshape(b, 3, b3) : NULL, *c = NULL;
    if (br) {
        lu_tensor *c3 = lu_tensor_empty(a->dtype, 3, (int64_t[]){a3[0], fold ? batch * m : m, n}, lu_tensor_device(a));
        lu_matmul_params p = {trans_a, trans_b};
        lu_tensor *in[2] = {ar, br};
        if (c3 && lu_op_run(LU_OP_MATMUL, in, 2, &c3, 1, &p, sizeof p) == LU_OK) {
            int64_t shape[LU_MAX_DIMS];
            for (int i = 0; i < an - 2; i++) shape[i] = a->shape[i];
            shape[an - 2] = m;
            shape[an - 1] = n;
            c = lu_reshape(c3, an, shape);
        }
        lu_tensor_release(c3);
    }
    lu_tensor_release(ar);
    lu_tensor_release(br);
    return c;
}

static lu_tensor *linear_fail(lu_status code, const char *what, const lu_tensor *x, const lu_tensor *w,
                             const lu_tensor *bias)
{
    char sx[LU_SHAPE_STR_MAX], sw[LU_SHAPE_STR_MAX], sb[LU_SHAPE_STR_MAX];
    lu_errorf(code, "linear: %s (x %s %s, w %s %s, bias %s %s)", what, lu_shape_str(x, sx, sizeof sx),
              lu_dtype_name(x->dtype), lu_shape_str(w, sw, sizeof sw), lu_dtype_name(w->dtype),
              lu_shape_str(bias, sb, sizeof sb), lu_dtype_name(bias->dtype));
    return NULL;
}

/* With a bias, one LINEAR op on x's rows: a backend can add the bias in the GEMM's epilogue and
 * reduce its gradient in the weight gradient's (cuda/linear.c). Without one, a plain matmul. */
lu_tensor *lu_linear(lu_tensor *x, lu_tensor *w, lu_tensor *bias)
{
    LU_PROPAGATE_NULL(x, w);
    if (!bias) return lu_matmul(x, w, false, true);
    if (!lu_dtype_is_float(x->dtype) || w->dtype != x->dtype || bias->dtype != x->dtype)
        return linear_fail(LU_ERR_DTYPE, "x, w and bias need one float dtype", x, w, bias);
    if (x->ndim < 2 || w->ndim != 2)
        return linear_fail(LU_ERR_SHAPE, "x needs at least 2 dims and w 2 ([out, in])", x, w, bias);
    int64_t k = w->shape[1], n = w->shape[0], rows = 1;
    if (x->shape[x->ndim - 1] != k) return linear_fail(LU_ERR_SHAPE, "x's last dim differs from w's in", x, w, bias);
    if (bias->ndim != 1 || bias->shape[0] != n) return linear_fail(LU_ERR_SHAPE, "bias must be [out]", x, w, bias);
    for (int i = 0; i < x->ndim - 1; i++) rows *= x->shape[i];
    lu_tensor *x2 = lu_reshape(x, 2, (int64_t[]){rows, k}), *wc = x2 ? lu_contiguous(w) : NULL;
    lu_tensor *bc = wc ? lu_contiguous(bias) : NULL, *y2 = NULL, *y = NULL;
    if (bc) y2 = lu_tensor_empty(x->dtype, 2, (int64_t[]){rows, n}, lu_tensor_device(x));
    lu_tensor *in[3] = {x2, wc, bc};
    if (y2 && lu_op_run(LU_OP_LINEAR, in, 3, &y2, 1, NULL, 0) == LU_OK) {
        int64_t shape[LU_MAX_DIMS];
        for (int i = 0; i < x->ndim - 1; i++) shape[i] = x->shape[i];
        shape[x->ndim - 1] = n;
        y = lu_reshape(y2, x->ndim, shape);
    }
    lu_tensor_release(y2);
    lu_tensor_release(bc);
    lu_tensor_release(wc);
    lu_tensor_release(x2);
    return y;
}
