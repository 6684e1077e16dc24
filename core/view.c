/* view.c - differentiable views and layout changes: reshape, transpose, permute, slice, expand,
 * (un)squeeze, split, contiguous, cast, detach. Views share storage with their input; their
 * backward functions route gradients back through the inverse layout change. */
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "autograd.h"
#include "ops.h"

/* A new tensor struct sharing x's storage (dims filled in by the caller). */
static lu_tensor *view_of(lu_tensor *x)
{
    lu_arena *a = lu_arena_current();
    if (a && lu_arena_device(a) != lu_tensor_device(x)) a = NULL;
    lu_tensor *t = a ? lu_arena_alloc(a, sizeof *t, 0) : malloc(sizeof *t);
    if (!t) {
        lu_errorf(LU_ERR_NOMEM, "view: out of memory");
        return NULL;
    }
    memset(t, 0, sizeof *t);
    t->storage = x->storage;
    t->arena = a;
    t->counted = a && lu_arena_recycling(a);
    /* A view that releases holds a count on counted storage. A view that never releases (an
     * arena view made outside recycling) holds none on heap storage, which must stay free to
     * go, but pins counted arena storage until the reset, which must not be reused under it. */
    bool releases = !a || t->counted;
    if (lu_storage_counted(x->storage) && (releases || x->storage->arena)) x->storage->refcount++;
    t->offset = x->offset;
    t->dtype = x->dtype;
    t->refcount = 1;
    t->is_leaf = true;
    return t;
}

static lu_tensor *record_view(lu_tensor *x, lu_tensor *y, lu_backward_fn bw, const void *params, size_t size)
{
    if (lu_node_record(bw, &x, 1, &y, 1, params, size)) {
        lu_tensor_release(y);
        return NULL;
    }
    return y;
}

/* ---- reshape ---- */

static lu_status reshape_backward(lu_node *n, lu_tensor **gy, lu_tensor **gx, const bool *needs)
{
    (void)needs;
    lu_tensor *x = n->in[0];
    gx[0] = lu_reshape(gy[0], x->ndim, x->shape);
    return gx[0] ? LU_OK : lu_error_code();
}

lu_tensor *lu_reshape(lu_tensor *x, int ndim, const int64_t *shape)
{
    LU_PROPAGATE_NULL(x);
    if (ndim < 0 || ndim > LU_MAX_DIMS) {
        lu_errorf(LU_ERR_SHAPE, "reshape: %d dims requested, at most %d", ndim, LU_MAX_DIMS);
        return NULL;
    }
    int64_t sh[LU_MAX_DIMS], known = 1, n = lu_tensor_numel(x);
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        sh[i] = shape[i];
        if (shape[i] == -1 && infer < 0) infer = i;
        else if (shape[i] < 0) {
            lu_errorf(LU_ERR_SHAPE, "reshape: invalid size %lld at dim %d", (long long)shape[i], i);
            return NULL;
        } else known *= shape[i];
    }
    if (infer >= 0) sh[infer] = known ? n / known : 0;
    int64_t total = 1;
    for (int i = 0; i < ndim; i++) total *= sh[i];
    if (total != n) {
        char s[LU_SHAPE_STR_MAX];
        lu_errorf(LU_ERR_SHAPE, "reshape: cannot view a tensor of shape %s (%lld elements) with %lld elements",
                  lu_shape_str(x, s, sizeof s), (long long)n, (long long)total);
        return NULL;
    }
    lu_tensor *c = lu_contiguous(x);
    if (!c) return NULL;
    lu_tensor *y = view_of(c);
    if (y) {
        y->ndim = ndim;
        int64_t st = 1;
        for (int i = ndim - 1; i >= 0; i--) {
            y->shape[i] = sh[i];
            y->stride[i] = st;
            st *= sh[i];
        }
        y = record_view(c, y, reshape_backward, NULL, 0);
    }
    lu_tensor_release(c);
    return y;
}

lu_tensor *lu_unsqueeze(lu_tensor *x, int dim)
{
    LU_PROPAGATE_NULL(x);
    int d = dim < 0 ? dim + x->ndim + 1 : dim;
    if (d < 0 || d > x->ndim || x->ndim == LU_MAX_DIMS) {
        lu_errorf(LU_ERR_SHAPE, "unsqueeze: dim %d invalid for %d dims", dim, x->ndim);
        return NULL;
    }
    int64_t sh[LU_MAX_DIMS];
    for (int i = 0, j = 0; i <= x->ndim; i++) sh[i] = i == d ? 1 : x->shape[j++];
    return lu_reshape(x, x->ndim + 1, sh);
}

lu_tensor *lu_squeeze(lu_tensor *x, int dim)
{
    LU_PROPAGATE_NULL(x);
    int d;
    if (lu_dim_normalize("squeeze", x, dim, &d)) return NULL;
    if (x->shape[d] != 1) {
        lu_errorf(LU_ERR_SHAPE, "squeeze: dim %d has size %lld, not 1", dim, (long long)x->shape[d]);
        return NULL;
    }
    int64_t sh[LU_MAX_DIMS];
    for (int i = 0, j = 0; i < x->ndim; i++)
        if (i != d) sh[j++] = x->shape[i];
    return lu_reshape(x, x->ndim - 1, sh);
}

/* ---- permute / transpose ---- */

typedef struct perm_params { int perm[LU_MAX_DIMS]; } perm_params;

static lu_status permute_backward(lu_node *n, lu_tensor **gy, lu_tensor **gx, const bool *needs)
{
    (void)needs;
    const perm_params *p = (const perm_params *)n->params;
    int inv[LU_MAX_DIMS];
    for (int i = 0; i < n->in[0]->ndim; i++) inv[p->perm[i]] = i;
    lu_tensor *t = lu_permute(gy[0], inv);
    if (!t) return lu_error_code();
    gx[0] = lu_contiguous(t);
    lu_tensor_release(t);
    return gx[0] ? LU_OK : lu_error_code();
}

lu_tensor *lu_permute(lu_tensor *x, const int *perm)
{
    LU_PROPAGATE_NULL(x);
    perm_params p;
    bool seen[LU_MAX_DIMS] = {0};
    for (int i = 0; i < x->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= x->ndim || seen[perm[i]]) {
            lu_errorf(LU_ERR_SHAPE, "permute: invalid permutation for %d dims (entry %d = %d)", x->ndim, i, perm[i]);
            return NULL;
        }
        seen[perm[i]] = true;
        p.perm[i] = perm[i];
    }
    lu_tensor *y = view_of(x);
    if (!y) return NULL;
    y->ndim = x->ndim;
    for (int i = 0; i < x->ndim; i++) {
        y->shape[i] = x->shape[perm[i]];
        y->stride[i] = x->stride[perm[i]];
    }
    return record_view(x, y, permute_backward, &p, sizeof p);
}

lu_tensor *lu_transpose(lu_tensor *x, int d0, int d1)
{
    LU_PROPAGATE_NULL(x);
    int a, b;
    if (lu_dim_normalize("transpose", x, d0, &a) || lu_dim_normalize("transpose", x, d1, &b)) return NULL;
    int perm[LU_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[a] = b;
    perm[b] = a;
    return lu_permute(x, perm);
}

/* ---- slice ---- */

typedef struct slice_params { int dim; int64_t start, step; } slice_params;

static lu_status slice_backward(lu_node *n, lu_tensor **gy, lu_tensor **gx, const bool *needs)
{
    (void)needs;
    const slice_params *p = (const slice_params *)n->params;
    lu_tensor *x = n->in[0];
    lu_tensor *g = lu_tensor_zeros(gy[0]->dtype, x->ndim, x->shape, lu_tensor_device(gy[0]));
    if (!g) return lu_error_code();
    int64_t end = p->start + (gy[0]->shape[p->dim] - 1) * p->step + 1;
    lu_tensor *part = lu_slice(g, p->dim, p->start, end, p->step);
    lu_status s = part ? lu_tensor_copy(part, gy[0]) : lu_error_code();
    lu_tensor_release(part);
    if (s) {
        lu_tensor_release(g);
        return s;
    }
    gx[0] = g;
    return LU_OK;
}

lu_tensor *lu_slice(lu_tensor *x, int dim, int64_t start, int64_t end, int64_t step)
{
    LU_PROPAGATE_NULL(x);
    int d;
    if (lu_dim_normalize("slice", x, dim, &d)) return NULL;
    int64_t n = x->shape[d];
    if (start < 0) start += n;
    if (end < 0) end += n;
    if (end > n) end = n;
    if (step < 1 || start < 0 || start > n || end < start) {
        lu_errorf(LU_ERR_SHAPE, "slice: range [%lld:%lld:%lld] invalid for size %lld at dim %d", (long long)start,
                  (long long)end, (long long)step, (long long)n, dim);
        return NULL;
    }
    lu_tensor *y = view_of(x);
    if (!y) return NULL;
    y->ndim = x->ndim;
    memcpy(y->shape, x->shape, sizeof y->shape);
    memcpy(y->stride, x->stride, sizeof y->stride);
    y->shape[d] = (end - start + step - 1) / step;
    y->stride[d] = x->stride[d] * step;
    y->offset = x->offset + (size_t)(start * x->stride[d]);
    slice_params p = {d, start, step};
    return record_view(x, y, slice_backward, &p, sizeof p);
}

lu_status lu_split(lu_tensor *x, int dim, int n, const int64_t *sizes, lu_tensor **out)
{
    if (!x) return lu_error_code();
    int d;
    LU_TRY(lu_dim_normalize("split", x, dim, &d));
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    if (total != x->shape[d])
        return lu_errorf(LU_ERR_SHAPE, "split: sizes add up to %lld but dim %d has size %lld", (long long)total, dim,
                         (long long)x->shape[d]);
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        out[i] = lu_slice(x, d, at, at + sizes[i], 1);
        if (!out[i]) {
            while (i--) lu_tensor_release(out[i]);
            return lu_error_code();
        }
        at += sizes[i];
    }
    return LU_OK;
}

/* ---- expand ---- */

static lu_status expand_backward(lu_node *n, lu_tensor **gy, lu_tensor **gx, const bool *needs)
{
    (void)needs;
    lu_tensor *x = n->in[0];
    lu_tensor *g = lu_tensor_retain(gy[0]);
    int lead = g->ndim - x->ndim;
    for (int i = g->ndim - 1; i >= 0; i--) {
        int xi = i - lead;
        if (xi >= 0 && x->shape[xi] == g->shape[i]) continue;
        lu_tensor *s = lu_sum(g, i, true);
        lu_tensor_release(g);
        if (!s) return lu_error_code();
        g = s;
    }
    gx[0] = lu_reshape(g, x->ndim, x->shape);
    lu_tensor_release(g);
    return gx[0] ? LU_OK : lu_error_code();
}

lu_tensor *lu_expand(lu_tensor *x, int ndim, const int64_t *shape)
{
    LU_PROPAGATE_NULL(x);
    int lead = ndim - x->ndim;
    if (lead < 0 || ndim > LU_MAX_DIMS) {
        lu_errorf(LU_ERR_SHAPE, "expand: cannot expand %d dims to %d", x->ndim, ndim);
        return NULL;
    }
    for (int i = 0; i < x->ndim; i++) {
        if (x->shape[i] != shape[i + lead] && x->shape[i] != 1) {
            char s[LU_SHAPE_STR_MAX];
            lu_errorf(LU_ERR_SHAPE, "expand: dim %d of %s is %lld, cannot become %lld", i, lu_shape_str(x, s, sizeof s),
                      (long long)x->shape[i], (long long)shape[i + lead]);
            return NULL;
        }
    }
    lu_tensor *y = view_of(x);
    if (!y) return NULL;
    y->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        int xi = i - lead;
        y->shape[i] = shape[i];
        y->stride[i] = (xi >= 0 && x->shape[xi] == shape[i]) ? x->stride[xi] : 0;
    }
    return record_view(x, y, expand_backward, NULL, 0);
}

/* ---- contiguous, cast, detach ---- */

static lu_status identity_backward(lu_node *n, lu_tensor **gy, lu_tensor **gx, const bool *needs)
{
    (void)n;
    (void)needs;
    gx[0] = lu_tensor_retain(gy[0]);
    return LU_OK;
}

lu_tensor *lu_contiguous(lu_tensor *x)
{
    LU_PROPAGATE_NULL(x);
    if (lu_tensor_is_contiguous(x)) return lu_tensor_retain(x);
    lu_tensor *y = lu_tensor_empty(x->dtype, x->ndim, x->shape, lu_tensor_device(x));
    if (!y) return NULL;
    lu_tensor *in[1] = {x};
    if (lu_op_run(LU_OP_CONTIGUOUS, in, 1, &y, 1, NULL, 0)) {
        lu_tensor_release(y);
        return NULL;
    }
    /* The kernel records nothing (no backward kernel): gradients pass through unchanged. */
    return record_view(x, y, identity_backward, NULL, 0);
}

/* Where x already has a gradient of its own dtype (a parameter's preallocated f32 gradient under
 * bf16 compute: Qwen3 SFT casts its ~300 weights every step), the bf16 gradient is added into it
 * converted, one pass over it where a cast then autograd's addition take two (the sums are the
 * same: bf16 converts to f32 exactly). */
static lu_status cast_backward(lu_node *n, lu_tensor **gy, lu_tensor **gx, const bool *needs)
{
    (void)needs;
    lu_tensor *x = n->in[0], *g = gy[0];
    if (x->grad && x->grad->dtype == LU_F32 && g->dtype == LU_BF16 && lu_tensor_is_contiguous(x->grad) &&
        lu_tensor_is_contiguous(g) && lu_tensor_device(x->grad) == lu_tensor_device(g)) {
        gx[0] = NULL;
        return lu_op_run(LU_OP_ACCUMULATE, &g, 1, &x->grad, 1, NULL, 0);
    }
    gx[0] = lu_cast(g, x->dtype);
    return gx[0] ? LU_OK : lu_error_code();
}

lu_tensor *lu_cast(lu_tensor *x, lu_dtype dt)
{
    LU_PROPAGATE_NULL(x);
    if (x->dtype == dt) return lu_tensor_retain(x);
    lu_tensor *c = lu_contiguous(x);
    if (!c) return NULL;
    lu_tensor *y = lu_tensor_empty(dt, x->ndim, x->shape, lu_tensor_device(x));
    lu_status s = y ? lu_op_run(LU_OP_CAST, &c, 1, &y, 1, NULL, 0) : lu_error_code();
    if (s) {
        lu_tensor_release(c);
        lu_tensor_release(y);
        return NULL;
    }
    if (lu_dtype_is_float(dt) && lu_dtype_is_float(x->dtype)) y = record_view(c, y, cast_backward, NULL, 0);
    lu_tensor_release(c);
    return y;
}

lu_tensor *lu_detach(lu_tensor *x)
{
    LU_PROPAGATE_NULL(x);
    lu_tensor *y = view_of(x);
    if (!y) return NULL;
    y->ndim = x->ndim;
    memcpy(y->shape, x->shape, sizeof y->shape);
    memcpy(y->stride, x->stride, sizeof y->stride);
    return y;
}
