/* ops_reduce.c - reductions (sum, mean, max), softmax / log-softmax along a dim, and the fused
 * softmax cross-entropy loss.
 *
 * The kernels keep a reduced dim with size 1; without keepdim the frontend reshapes the result
 * (reducing every dim then gives a 0-dim tensor, as torch). Inputs are made contiguous first, so
 * any view may be reduced (core/view.c sums expanded gradients with lu_sum). */
#include "autograd.h"
#include "ops.h"

static bool check_float(const char *op, const lu_tensor *x)
{
    if (lu_dtype_is_float(x->dtype)) return true;
    char s[LU_SHAPE_STR_MAX];
    lu_errorf(LU_ERR_DTYPE, "%s: needs a float tensor, got %s %s", op, lu_shape_str(x, s, sizeof s),
              lu_dtype_name(x->dtype));
    return false;
}

/* Runs op on c; with keepdim false, returns out[0] reshaped to `shape` (nd dims). */
static lu_tensor *run_reduce(lu_op op, lu_tensor *c, lu_tensor **out, int n_out, const void *params, size_t size,
                             bool keepdim, int nd, const int64_t *shape)
{
    lu_tensor *y = NULL;
    bool ok = true;
    for (int i = 0; i < n_out; i++) ok = ok && out[i];
    if (ok && lu_op_run(op, &c, 1, out, n_out, params, size) == LU_OK)
        y = keepdim ? lu_tensor_retain(out[0]) : lu_reshape(out[0], nd, shape);
    for (int i = 0; i < n_out; i++) lu_tensor_release(out[i]);
    return y;
}

/* dim LU_ALL_DIMS reduces everything; other negative dims count from the end. */
static lu_tensor *reduce(lu_op op, lu_tensor *x, int dim, bool keepdim)
{
    LU_PROPAGATE_NULL(x);
    const char *name = lu_op_name(op);
    if (!check_float(name, x)) return NULL;
    int d = LU_ALL_DIMS;
    if (dim != LU_ALL_DIMS && lu_dim_normalize(name, x, dim, &d)) return NULL;
    int64_t kept[LU_MAX_DIMS], squeezed[LU_MAX_DIMS];
    int nsq = 0;
    for (int i = 0; i < x->ndim; i++) {
        bool reduced = d == LU_ALL_DIMS || i == d;
        kept[i] = reduced ? 1 : x->shape[i];
        if (!reduced) squeezed[nsq++] = x->shape[i];
    }
    if (op == LU_OP_MAX && (d == LU_ALL_DIMS ? lu_tensor_numel(x) : x->shape[d]) == 0) {
        char s[LU_SHAPE_STR_MAX];
        lu_errorf(LU_ERR_SHAPE, "max: cannot reduce an empty dim of a tensor of shape %s", lu_shape_str(x, s, sizeof s));
        return NULL;
    }
    lu_tensor *c = lu_contiguous(x);
    if (!c) return NULL;
    lu_reduce_params p = {d};
    lu_tensor *out[2] = {lu_tensor_empty(x->dtype, x->ndim, kept, lu_tensor_device(x)), NULL};
    int n_out = 1;
    if (op == LU_OP_MAX) {
        out[1] = lu_tensor_empty(LU_I64, x->ndim, kept, lu_tensor_device(x));
        n_out = 2;
    }
    lu_tensor *y = run_reduce(op, c, out, n_out, &p, sizeof p, keepdim, nsq, squeezed);
    lu_tensor_release(c);
    return y;
}

lu_tensor *lu_sum(lu_tensor *x, int dim, bool keepdim) { return reduce(LU_OP_SUM, x, dim, keepdim); }
lu_tensor *lu_mean(lu_tensor *x, int dim, bool keepdim) { return reduce(LU_OP_MEAN, x, dim, keepdim); }
lu_tensor *lu_max(lu_tensor *x, int dim, bool keepdim) { return reduce(LU_OP_MAX, x, dim, keepdim); }

static lu_tensor *softmax(lu_op op, lu_tensor *x, int dim)
{
    LU_PROPAGATE_NULL(x);
    const char *name = lu_op_name(op);
    lu_dim_params p;
    if (!check_float(name, x) || lu_dim_normalize(name, x, dim, &p.dim)) return NULL;
    lu_tensor *c = lu_contiguous(x);
    if (!c) return NULL;
    lu_tensor *out[1] = {lu_tensor_empty_like(c)};
    lu_tensor *y = run_reduce(op, c, out, 1, &p, sizeof p, true, 0, NULL);
    lu_tensor_release(c);
    return y;
}

lu_tensor *lu_softmax(lu_tensor *x, int dim) { return softmax(LU_OP_SOFTMAX, x, dim); }
lu_tensor *lu_log_softmax(lu_tensor *x, int dim) { return softmax(LU_OP_LOG_SOFTMAX, x, dim); }

lu_tensor *lu_cross_entropy(lu_tensor *logits, lu_tensor *target, int64_t ignore_index, lu_reduction red)
{
    LU_PROPAGATE_NULL(logits, target);
    char sl[LU_SHAPE_STR_MAX], st[LU_SHAPE_STR_MAX];
    if (!check_float("cross_entropy", logits)) return NULL;
    if (logits->ndim < 1 || logits->shape[logits->ndim - 1] < 1) {
        lu_errorf(LU_ERR_SHAPE, "cross_entropy: logits %s need a non-empty last (class) dim",
                  lu_shape_str(logits, sl, sizeof sl));
        return NULL;
    }
    if (target->dtype != LU_I32 && target->dtype != LU_I64) {
        lu_errorf(LU_ERR_DTYPE, "cross_entropy: target must be i32 or i64, got %s", lu_dtype_name(target->dtype));
        return NULL;
    }
    if ((unsigned)red > LU_REDUCE_NONE) {
        lu_errorf(LU_ERR_INVALID, "cross_entropy: unknown reduction %d", (int)red);
        return NULL;
    }
    int64_t V = logits->shape[logits->ndim - 1], N = lu_tensor_numel(logits) / V;
    if (lu_tensor_numel(target) != N) {
        lu_errorf(LU_ERR_SHAPE, "cross_entropy: logits %s hold %lld rows but target %s has %lld elements",
                  lu_shape_str(logits, sl, sizeof sl), (long long)N, lu_shape_str(target, st, sizeof st),
                  (long long)lu_tensor_numel(target));
        return NULL;
    }
    lu_tensor *x2 = lu_reshape(logits, 2, (int64_t[]){N, V});
    lu_tensor *t1 = x2 ? lu_reshape(target, 1, (int64_t[]){N}) : NULL;
    lu_tensor *y = NULL;
    if (t1) {
        lu_device dev = lu_tensor_device(logits);
        lu_cross_entropy_params p = {ignore_index, red};
        /* The loss, lse and count are f32 for 16-bit logits: a loss rounded to bf16's 8
         * significant bits hides the small differences a training curve is read for, the
         * backward's exp(x - lse) needs lse to more than 8 bits, and bf16 counts only to 256
         * exactly. dloss is then f32 too; dlogits stay in the logits' dtype. */
        lu_dtype odt = lu_dtype_size(logits->dtype) < 4 ? LU_F32 : logits->dtype;
        lu_tensor *out[3] = {lu_tensor_empty(odt, red == LU_REDUCE_NONE ? 1 : 0, &N, dev),
                             lu_tensor_empty(odt, 1, &N, dev), lu_tensor_empty(odt, 1, (int64_t[]){1}, dev)};
        lu_tensor *in[2] = {x2, t1};
        if (out[0] && out[1] && out[2] && lu_op_run(LU_OP_CROSS_ENTROPY, in, 2, out, 3, &p, sizeof p) == LU_OK)
            y = red == LU_REDUCE_NONE ? lu_reshape(out[0], target->ndim, target->shape) : lu_tensor_retain(out[0]);
        for (int i = 0; i < 3; i++) lu_tensor_release(out[i]);
    }
    lu_tensor_release(x2);
    lu_tensor_release(t1);
    return y;
}
