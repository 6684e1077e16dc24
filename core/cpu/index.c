/* index.c - CPU kernels that select or assemble elements: embedding lookup, concatenation and
 * torch.gather. Their backward passes scatter-add, each destination element owned by one thread
 * and summed in index order, so gradients do not depend on the thread count. The float loops
 * are in index_generic.h; concat only moves bytes and works for every dtype. */
#include <string.h>

#include "cpu.h"

/* Index values must lie in [0, hi): the first one that does not is named with its position. */
static lu_status check_indices(const char *op, const char *what, const lu_tensor *ids, int64_t hi)
{
    int64_t n = lu_tensor_numel(ids);
    for (int64_t i = 0; i < n; i++) {
        int64_t v = lu_cpu_index_at(ids, i);
        if (v < 0 || v >= hi)
            return lu_errorf(LU_ERR_INVALID, "%s: %s %lld at position %lld is outside [0, %lld)", op, what, (long long)v,
                             (long long)i, (long long)hi);
    }
    return LU_OK;
}

/* Gather works along lines: all elements of index sharing every coordinate but `dim`. Line l
 * starts at *xo in x and *io in index (both contiguous). */
static void gather_line(const lu_tensor *x, const lu_tensor *index, int dim, int64_t l, int64_t *xo, int64_t *io)
{
    int64_t a = 0, b = 0;
    for (int k = index->ndim - 1; k >= 0; k--) {
        if (k == dim) continue;
        int64_t c = l % index->shape[k];
        l /= index->shape[k];
        a += c * x->stride[k];
        b += c * index->stride[k];
    }
    *xo = a;
    *io = b;
}

#define LU_GENERIC_FILE "index_generic.h"
#include "generic.h"

static lu_status embedding_forward(const lu_op_call *c)
{
    const lu_tensor *w = c->in[0], *ids = c->in[1];
    LU_TRY(check_indices("embedding", "id", ids, w->shape[0]));
    int64_t n = lu_tensor_numel(ids), D = w->shape[1];
    size_t row = (size_t)D * lu_dtype_size(w->dtype);
    const char *W = lu_tensor_data(w);
    char *Y = lu_tensor_data(c->out[0]);
#pragma omp parallel for if (n * D > 32768)
    for (int64_t i = 0; i < n; i++) memcpy(Y + (size_t)i * row, W + (size_t)lu_cpu_index_at(ids, i) * row, row);
    return LU_OK;
}

static lu_status embedding_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(embedding_bwd, c, c->in[1]->dtype); }

/* x_k viewed as [outer, shape_k[dim] * inner]; a row of y is the rows of the x_k side by side.
 * to_y copies the pieces into y; otherwise y is split into them (NULL pieces are skipped). */
static void concat_copy(char *const *parts, const int64_t *sizes, int n, lu_tensor *y, int dim, bool to_y)
{
    size_t es = lu_dtype_size(y->dtype);
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= y->shape[i];
    for (int i = dim + 1; i < y->ndim; i++) inner *= y->shape[i];
    size_t yrow = (size_t)(y->shape[dim] * inner) * es;
    char *Y = lu_tensor_data(y);
#pragma omp parallel for if (outer * (int64_t)yrow > 262144)
    for (int64_t o = 0; o < outer; o++) {
        size_t at = 0;
        for (int k = 0; k < n; k++) {
            size_t len = (size_t)(sizes[k] * inner) * es;
            if (parts[k] && to_y) memcpy(Y + (size_t)o * yrow + at, parts[k] + (size_t)o * len, len);
            else if (parts[k]) memcpy(parts[k] + (size_t)o * len, Y + (size_t)o * yrow + at, len);
            at += len;
        }
    }
}

static lu_status concat_forward(const lu_op_call *c)
{
    const lu_dim_params *p = c->params;
    char *parts[LU_MAX_IO];
    int64_t sizes[LU_MAX_IO];
    for (int k = 0; k < c->n_in; k++) {
        parts[k] = lu_tensor_data(c->in[k]);
        sizes[k] = c->in[k]->shape[p->dim];
    }
    concat_copy(parts, sizes, c->n_in, c->out[0], p->dim, true);
    return LU_OK;
}

/* in = [dy, x_0 .. x_{n-1}, y], out = [dx_0 .. dx_{n-1}]: dy split along dim. */
static lu_status concat_backward(const lu_op_call *c)
{
    const lu_dim_params *p = c->params;
    char *parts[LU_MAX_IO];
    int64_t sizes[LU_MAX_IO];
    for (int k = 0; k < c->n_out; k++) {
        parts[k] = c->out[k] ? lu_tensor_data(c->out[k]) : NULL;
        sizes[k] = c->in[1 + k]->shape[p->dim];
    }
    if (!c->in[0]) {
        for (int k = 0; k < c->n_out; k++)
            if (c->out[k]) memset(parts[k], 0, lu_tensor_nbytes(c->out[k]));
        return LU_OK;
    }
    concat_copy(parts, sizes, c->n_out, c->in[0], p->dim, false);
    return LU_OK;
}

static lu_status gather_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(gather_fwd, c, c->out[0]->dtype); }
static lu_status gather_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(gather_bwd, c, c->in[1]->dtype); }

void lu_cpu_register_index(lu_backend *b)
{
    b->forward[LU_OP_EMBEDDING] = embedding_forward;
    b->backward[LU_OP_EMBEDDING] = embedding_backward;
    b->forward[LU_OP_CONCAT] = concat_forward;
    b->backward[LU_OP_CONCAT] = concat_backward;
    b->forward[LU_OP_GATHER] = gather_forward;
    b->backward[LU_OP_GATHER] = gather_backward;
}
