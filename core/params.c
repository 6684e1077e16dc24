/* params.c - the flat parameter store (see params.h). */
#include "params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "autograd.h"
#include "ops.h"

lu_params *lu_params_new(lu_device dev)
{
    lu_params *p = calloc(1, sizeof *p);
    if (!p) lu_errorf(LU_ERR_NOMEM, "params: out of memory");
    else p->device = dev;
    return p;
}

void lu_params_free(lu_params *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        free(p->items[i].name);
        lu_tensor *t = p->items[i].t;
        if (p->finalized) {
            lu_tensor_release(t->grad);
            t->grad = NULL;
            lu_tensor_release(t);
        } else {
            free(t);
        }
    }
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        lu_tensor_release(p->flat[d]);
        lu_tensor_release(p->flat_grad[d]);
    }
    free(p->items);
    free(p);
}

const lu_param *lu_params_find(const lu_params *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->items[i].name, name)) return &p->items[i];
    return NULL;
}

lu_tensor *lu_params_get(const lu_params *p, const char *name)
{
    const lu_param *q = lu_params_find(p, name);
    if (!q) {
        lu_errorf(LU_ERR_INVALID, "params: no parameter named '%s'", name);
        return NULL;
    }
    return q->t;
}

lu_tensor *lu_params_add(lu_params *p, const char *name, lu_dtype dt, int ndim, const int64_t *shape, bool trainable)
{
    if (p->finalized) {
        lu_errorf(LU_ERR_STATE, "params: cannot add '%s' after finalize", name);
        return NULL;
    }
    if (lu_params_find(p, name)) {
        lu_errorf(LU_ERR_INVALID, "params: duplicate parameter name '%s'", name);
        return NULL;
    }
    if (ndim < 0 || ndim > LU_MAX_DIMS) {
        lu_errorf(LU_ERR_SHAPE, "params: '%s' has %d dims", name, ndim);
        return NULL;
    }
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        lu_param *items = realloc(p->items, (size_t)cap * sizeof *items);
        if (!items) {
            lu_errorf(LU_ERR_NOMEM, "params: out of memory");
            return NULL;
        }
        p->items = items;
        p->cap = cap;
    }
    lu_tensor *t = calloc(1, sizeof *t);
    char *nm = strdup(name);
    if (!t || !nm) {
        free(t);
        free(nm);
        lu_errorf(LU_ERR_NOMEM, "params: out of memory");
        return NULL;
    }
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->refcount = 1;
    t->is_leaf = true;
    t->is_param = trainable;
    t->requires_grad = trainable;
    p->items[p->n++] = (lu_param){nm, t, trainable, 0};
    return t;
}

lu_status lu_params_declare(lu_params *p, lu_dtype dt, bool trainable, int ndim, const int64_t *shape, const char *fmt,
                            ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name) return lu_errorf(LU_ERR_INVALID, "params: name too long (%d bytes)", n);
    return lu_params_add(p, name, dt, ndim, shape, trainable) ? LU_OK : lu_error_code();
}

/* Points `t` (already holding dtype and shape) at storage s + offset, contiguous. */
static void bind(lu_tensor *t, lu_storage *s, size_t offset)
{
    t->storage = s;
    s->refcount++;
    t->offset = offset;
    int64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = st;
        st *= t->shape[i];
    }
}

lu_status lu_params_finalize(lu_params *p)
{
    if (p->finalized) return LU_OK;
    size_t total[LU_DTYPE_COUNT] = {0}, grads[LU_DTYPE_COUNT] = {0};
    for (int i = 0; i < p->n; i++) {
        lu_param *q = &p->items[i];
        q->offset = total[q->t->dtype];
        total[q->t->dtype] += (size_t)lu_tensor_numel(q->t);
        if (q->trainable) grads[q->t->dtype] += (size_t)lu_tensor_numel(q->t);
    }
    lu_arena *prev = lu_arena_activate(NULL);
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        if (!total[d]) continue;
        p->flat[d] = lu_tensor_zeros((lu_dtype)d, 1, (int64_t[]){(int64_t)total[d]}, p->device);
        if (grads[d]) p->flat_grad[d] = lu_tensor_zeros((lu_dtype)d, 1, (int64_t[]){(int64_t)total[d]}, p->device);
        if (!p->flat[d] || (grads[d] && !p->flat_grad[d])) {
            lu_arena_activate(prev);
            return lu_error_context("params: ");
        }
    }
    lu_arena_activate(prev);
    /* Gradients share the parameter layout (the buffer has room for every tensor) so that a
     * parameter and its gradient sit at the same offset. */
    for (int i = 0; i < p->n; i++) {
        lu_param *q = &p->items[i];
        bind(q->t, p->flat[q->t->dtype]->storage, q->offset);
        if (q->trainable) {
            lu_tensor *g = calloc(1, sizeof *g);
            if (!g) return lu_errorf(LU_ERR_NOMEM, "params: out of memory");
            *g = *q->t;
            g->refcount = 1;
            g->requires_grad = g->is_param = false;
            g->grad = NULL;
            bind(g, p->flat_grad[q->t->dtype]->storage, q->offset);
            q->t->grad = g;
        }
    }
    p->finalized = true;
    return LU_OK;
}

int64_t lu_params_count(const lu_params *p, bool trainable_only)
{
    int64_t n = 0;
    for (int i = 0; i < p->n; i++)
        if (!trainable_only || p->items[i].trainable) n += lu_tensor_numel(p->items[i].t);
    return n;
}

lu_status lu_params_zero_grad(lu_params *p)
{
    for (int d = 0; d < LU_DTYPE_COUNT; d++)
        if (p->flat_grad[d]) LU_TRY(lu_tensor_fill(p->flat_grad[d], 0.0));
    return LU_OK;
}

/* A heap copy of the buffer b on dev. */
static lu_tensor *buffer_copy(const lu_tensor *b, lu_device dev)
{
    lu_tensor *t = lu_tensor_empty(b->dtype, b->ndim, b->shape, dev);
    if (t && lu_tensor_copy(t, b)) {
        lu_tensor_release(t);
        return NULL;
    }
    return t;
}

/* Points t at storage s at its current offset; the buffer tensor whose storage t left still
 * holds a reference to it, so the count cannot reach zero here. */
static void rebind(lu_tensor *t, lu_storage *s)
{
    t->storage->refcount--;
    t->storage = s;
    s->refcount++;
}

lu_status lu_params_to_device(lu_params *p, lu_device dev)
{
    if (!p->finalized) return lu_errorf(LU_ERR_STATE, "params: cannot move a store to %s before finalize", lu_device_name(dev));
    if (p->device == dev) return LU_OK;
    /* Each buffer's storage is referenced by the buffer tensor and by every tensor bound into it;
     * any other reference is a view that would keep reading the old memory. */
    int values[LU_DTYPE_COUNT] = {0}, grads[LU_DTYPE_COUNT] = {0};
    for (int i = 0; i < p->n; i++) {
        values[p->items[i].t->dtype]++;
        grads[p->items[i].t->dtype] += p->items[i].trainable;
    }
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        bool extra = (p->flat[d] && p->flat[d]->storage->refcount != 1 + values[d]) ||
                     (p->flat_grad[d] && p->flat_grad[d]->storage->refcount != 1 + grads[d]);
        if (extra)
            return lu_errorf(LU_ERR_STATE, "params: cannot move the store to %s: a view of its %s buffer is held elsewhere",
                             lu_device_name(dev), lu_dtype_name((lu_dtype)d));
    }
    lu_tensor *flat[LU_DTYPE_COUNT] = {0}, *flat_grad[LU_DTYPE_COUNT] = {0};
    lu_status s = LU_OK;
    lu_arena *prev = lu_arena_activate(NULL); /* the buffers outlive every arena */
    for (int d = 0; d < LU_DTYPE_COUNT && !s; d++) {
        if (p->flat[d] && !(flat[d] = buffer_copy(p->flat[d], dev))) s = lu_error_code();
        if (!s && p->flat_grad[d] && !(flat_grad[d] = buffer_copy(p->flat_grad[d], dev))) s = lu_error_code();
    }
    lu_arena_activate(prev);
    if (s) {
        for (int d = 0; d < LU_DTYPE_COUNT; d++) {
            lu_tensor_release(flat[d]);
            lu_tensor_release(flat_grad[d]);
        }
        return lu_error_context("params: moving the store to %s: ", lu_device_name(dev));
    }
    for (int i = 0; i < p->n; i++) {
        lu_tensor *t = p->items[i].t;
        rebind(t, flat[t->dtype]->storage);
        if (p->items[i].trainable) rebind(t->grad, flat_grad[t->dtype]->storage);
    }
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        lu_tensor_release(p->flat[d]);
        lu_tensor_release(p->flat_grad[d]);
        p->flat[d] = flat[d];
        p->flat_grad[d] = flat_grad[d];
    }
    p->device = dev;
    return LU_OK;
}

lu_status lu_params_sums(const lu_params *p, double sums[LU_DTYPE_COUNT])
{
    bool grad = lu_grad_set_enabled(false);
    lu_status s = LU_OK;
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        sums[d] = 0;
        if (s || !p->flat[d] || !lu_dtype_is_float((lu_dtype)d)) continue;
        lu_tensor *sum = lu_sum(p->flat[d], LU_ALL_DIMS, false);
        if (sum) sums[d] = lu_tensor_item(sum);
        else s = lu_error_code();
        lu_tensor_release(sum);
    }
    lu_grad_set_enabled(grad);
    return s;
}
