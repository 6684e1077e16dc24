/* ops_index.c - ops that select or assemble elements: embedding lookup, concatenation along a
 * dim, and torch.gather. Index values are checked by the kernels (their position is named). */
#include "autograd.h"
#include "ops.h"

static bool is_index_dtype(lu_dtype dt) { return dt == LU_I32 || dt == LU_I64; }

/* Makes the inputs contiguous, runs op into y and releases the temporaries. */
static lu_tensor *run_contiguous(lu_op op, lu_tensor **in, int n, lu_tensor *y, const void *params, size_t size)
{
    lu_tensor *c[LU_MAX_IO] = {0};
    bool ok = y != NULL;
    for (int i = 0; i < n && ok; i++) ok = (c[i] = lu_contiguous(in[i])) != NULL;
    if (ok && lu_op_run(op, c, n, &y, 1, params, size) != LU_OK) ok = false;
    for (int i = 0; i < n; i++) lu_tensor_release(c[i]);
    if (!ok) {
        lu_tensor_release(y);
        return NULL;
    }
    return y;
}

lu_tensor *lu_embedding(lu_tensor *weight, lu_tensor *ids)
{
    LU_PROPAGATE_NULL(weight, ids);
    char sw[LU_SHAPE_STR_MAX], si[LU_SHAPE_STR_MAX];
    if (weight->ndim != 2 || !lu_dtype_is_float(weight->dtype) || !is_index_dtype(ids->dtype) ||
        ids->ndim >= LU_MAX_DIMS) {
        lu_errorf(LU_ERR_SHAPE, "embedding: needs a float weight [V, D] and i32/i64 ids of at most %d dims "
                  "(weight %s %s, ids %s %s)", LU_MAX_DIMS - 1, lu_shape_str(weight, sw, sizeof sw),
                  lu_dtype_name(weight->dtype), lu_shape_str(ids, si, sizeof si), lu_dtype_name(ids->dtype));
        return NULL;
    }
    int64_t shape[LU_MAX_DIMS];
    for (int i = 0; i < ids->ndim; i++) shape[i] = ids->shape[i];
    shape[ids->ndim] = weight->shape[1];
    lu_tensor *in[2] = {weight, ids};
    lu_tensor *y = lu_tensor_empty(weight->dtype, ids->ndim + 1, shape, lu_tensor_device(weight));
    return run_contiguous(LU_OP_EMBEDDING, in, 2, y, NULL, 0);
}

lu_tensor *lu_concat(lu_tensor **xs, int n, int dim)
{
    for (int i = 0; i < n; i++)
        if (!xs[i]) return NULL;
    if (n < 1 || n > LU_MAX_IO) {
        lu_errorf(LU_ERR_INVALID, "concat: %d tensors given, between 1 and %d supported", n, LU_MAX_IO);
        return NULL;
    }
    lu_dim_params p;
    if (lu_dim_normalize("concat", xs[0], dim, &p.dim)) return NULL;
    int64_t shape[LU_MAX_DIMS];
    for (int i = 0; i < xs[0]->ndim; i++) shape[i] = xs[0]->shape[i];
    for (int k = 1; k < n; k++) {
        bool ok = xs[k]->dtype == xs[0]->dtype && xs[k]->ndim == xs[0]->ndim;
        for (int i = 0; ok && i < xs[0]->ndim; i++) ok = i == p.dim || xs[k]->shape[i] == xs[0]->shape[i];
        if (!ok) {
            char s0[LU_SHAPE_STR_MAX], sk[LU_SHAPE_STR_MAX];
            lu_errorf(LU_ERR_SHAPE, "concat: tensor %d (%s %s) does not match tensor 0 (%s %s) outside dim %d", k,
                      lu_shape_str(xs[k], sk, sizeof sk), lu_dtype_name(xs[k]->dtype),
                      lu_shape_str(xs[0], s0, sizeof s0), lu_dtype_name(xs[0]->dtype), p.dim);
            return NULL;
        }
        shape[p.dim] += xs[k]->shape[p.dim];
    }
    lu_tensor *y = lu_tensor_empty(xs[0]->dtype, xs[0]->ndim, shape, lu_tensor_device(xs[0]));
    return run_contiguous(LU_OP_CONCAT, xs, n, y, &p, sizeof p);
}

lu_tensor *lu_gather(lu_tensor *x, int dim, lu_tensor *index)
{
    LU_PROPAGATE_NULL(x, index);
    char sx[LU_SHAPE_STR_MAX], si[LU_SHAPE_STR_MAX];
    lu_dim_params p;
    if (lu_dim_normalize("gather", x, dim, &p.dim)) return NULL;
    bool ok = lu_dtype_is_float(x->dtype) && is_index_dtype(index->dtype) && index->ndim == x->ndim;
    /* torch.gather: index may be smaller than x in every dim but `dim`, where it may be larger. */
    for (int i = 0; ok && i < x->ndim; i++) ok = i == p.dim || index->shape[i] <= x->shape[i];
    if (!ok) {
        lu_errorf(LU_ERR_SHAPE, "gather: needs a float x and an i32/i64 index of the same rank, no larger than x "
                  "outside dim %d (x %s %s, index %s %s)", p.dim, lu_shape_str(x, sx, sizeof sx),
                  lu_dtype_name(x->dtype), lu_shape_str(index, si, sizeof si), lu_dtype_name(index->dtype));
        return NULL;
    }
    lu_tensor *in[2] = {x, index};
    lu_tensor *y = lu_tensor_empty(x->dtype, index->ndim, index->shape, lu_tensor_device(x));
    return run_contiguous(LU_OP_GATHER, in, 2, y, &p, sizeof p);
}
