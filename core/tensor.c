/* tensor.c - creation, reference counting, layout queries and raw copies of tensors. */
#include "tensor.h"

#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "backend.h"
#include "cpu/cpu.h"

const char *lu_device_name(lu_device d)
{
    switch (d) {
    case LU_CPU: return "cpu";
    case LU_CUDA: return "cuda";
    default: return "?";
    }
}

/* A tensor is taken from the active arena only when the arena is for its device. */
static lu_tensor *tensor_struct(lu_device dev)
{
    lu_arena *a = lu_arena_current();
    if (a && lu_arena_device(a) != dev) a = NULL;
    lu_tensor *t;
    if (a) {
        t = lu_arena_alloc(a, sizeof *t, 0);
        if (t) memset(t, 0, sizeof *t);
    } else {
        t = calloc(1, sizeof *t);
    }
    if (!t) {
        lu_errorf(LU_ERR_NOMEM, "tensor: out of memory");
        return NULL;
    }
    t->arena = a;
    t->counted = a && lu_arena_recycling(a);
    t->refcount = 1;
    t->is_leaf = true;
    return t;
}

static lu_status check_shape(int ndim, const int64_t *shape, lu_dtype dt)
{
    if (ndim < 0 || ndim > LU_MAX_DIMS)
        return lu_errorf(LU_ERR_SHAPE, "tensor: %d dims requested, at most %d supported", ndim, LU_MAX_DIMS);
    if ((unsigned)dt >= LU_DTYPE_COUNT) return lu_errorf(LU_ERR_DTYPE, "tensor: invalid dtype %d", (int)dt);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return lu_errorf(LU_ERR_SHAPE, "tensor: negative size %lld in dim %d", (long long)shape[i], i);
        if (shape[i] && n > INT64_MAX / 16 / shape[i])
            return lu_errorf(LU_ERR_SHAPE, "tensor: shape too large (overflow at dim %d)", i);
        n *= shape[i];
    }
    return LU_OK;
}

static void set_contiguous_strides(lu_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i];
    }
}

lu_tensor *lu_tensor_empty(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev)
{
    if (check_shape(ndim, shape, dt)) return NULL;
    lu_backend *b = lu_backend_get(dev);
    if (!b) return NULL;
    lu_tensor *t = tensor_struct(dev);
    if (!t) return NULL;
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    set_contiguous_strides(t);
    size_t nbytes = (size_t)lu_tensor_numel(t) * lu_dtype_size(dt);
    lu_arena *a = t->arena;
    lu_storage *s = a ? lu_arena_alloc(a, sizeof *s, 0) : malloc(sizeof *s);
    if (!s) goto nomem;
    memset(s, 0, sizeof *s);
    s->nbytes = nbytes;
    s->device = dev;
    s->refcount = 1;
    s->arena = a;
    s->counted = t->counted;
    t->storage = s;
    s->data = a ? lu_arena_alloc(a, nbytes ? nbytes : 1, 1) : b->alloc(nbytes ? nbytes : 1);
    if (!s->data) goto nomem;
    return t;
nomem:
    lu_errorf(LU_ERR_NOMEM, "tensor: cannot allocate %zu bytes on %s", nbytes, lu_device_name(dev));
    if (!a) {
        free(s);
        free(t);
    }
    return NULL;
}

lu_tensor *lu_tensor_zeros(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev)
{
    return lu_tensor_full(dt, ndim, shape, dev, 0.0);
}

lu_tensor *lu_tensor_full(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev, double value)
{
    lu_tensor *t = lu_tensor_empty(dt, ndim, shape, dev);
    if (t && lu_tensor_fill(t, value)) {
        lu_tensor_release(t);
        return NULL;
    }
    return t;
}

lu_tensor *lu_tensor_from_host(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev, const void *data)
{
    lu_tensor *t = lu_tensor_empty(dt, ndim, shape, dev);
    if (!t) return NULL;
    lu_backend *b = lu_backend_get(dev);
    if (b->copy(t->storage->data, dev, data, LU_CPU, lu_tensor_nbytes(t))) {
        lu_tensor_release(t);
        return NULL;
    }
    return t;
}

lu_tensor *lu_tensor_wrap(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev, void *data,
                          void (*release)(void *ctx), void *ctx)
{
    if (check_shape(ndim, shape, dt)) return NULL;
    lu_tensor *t = calloc(1, sizeof *t);
    lu_storage *s = calloc(1, sizeof *s);
    if (!t || !s) {
        free(t);
        free(s);
        lu_errorf(LU_ERR_NOMEM, "tensor: out of memory");
        return NULL;
    }
    t->refcount = 1;
    t->is_leaf = true;
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    set_contiguous_strides(t);
    s->data = data;
    s->nbytes = (size_t)lu_tensor_numel(t) * lu_dtype_size(dt);
    s->device = dev;
    s->refcount = 1;
    s->release = release;
    s->release_ctx = ctx;
    s->borrowed = !release; /* no release function: the memory must outlive the tensor */
    t->storage = s;
    return t;
}

lu_tensor *lu_tensor_empty_like(const lu_tensor *t)
{
    return lu_tensor_empty(t->dtype, t->ndim, t->shape, lu_tensor_device(t));
}

lu_tensor *lu_tensor_zeros_like(const lu_tensor *t)
{
    return lu_tensor_zeros(t->dtype, t->ndim, t->shape, lu_tensor_device(t));
}

/* Heap tensors and storages are reference-counted; arena ones only when made while the arena
 * recycles (arena.h), the others live until the arena's reset. */
static bool tensor_counted(const lu_tensor *t) { return !t->arena || t->counted; }
bool lu_storage_counted(const lu_storage *s) { return !s->arena || s->counted; }

lu_tensor *lu_tensor_retain(lu_tensor *t)
{
    if (t && tensor_counted(t)) t->refcount++;
    return t;
}

static void storage_release(lu_storage *s)
{
    if (!s || !lu_storage_counted(s)) return;
    if (--s->refcount > 0) return;
    if (s->arena) {
        lu_arena_recycle(s->arena, s->data, s->nbytes);
        return;
    }
    if (s->release) s->release(s->release_ctx);
    else if (!s->borrowed) {
        lu_backend *b = lu_backend_get(s->device);
        if (b) b->free(s->data);
    }
    free(s);
}

void lu_tensor_release(lu_tensor *t)
{
    if (!t || !tensor_counted(t)) return;
    if (--t->refcount > 0) return;
    storage_release(t->storage);
    lu_tensor_release(t->grad);
    if (!t->arena) free(t); /* an arena struct stays until the reset; its storage is what counts */
}

int64_t lu_tensor_numel(const lu_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t lu_tensor_nbytes(const lu_tensor *t) { return (size_t)lu_tensor_numel(t) * lu_dtype_size(t->dtype); }

bool lu_tensor_is_contiguous(const lu_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

bool lu_tensor_same_shape(const lu_tensor *a, const lu_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

lu_device lu_tensor_device(const lu_tensor *t) { return t->storage->device; }

void *lu_tensor_data(const lu_tensor *t)
{
    return (char *)t->storage->data + t->offset * lu_dtype_size(t->dtype);
}

const char *lu_shape_str(const lu_tensor *t, char *buf, size_t size)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, size - n, "[");
    for (int i = 0; i < t->ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

lu_status lu_dim_normalize(const char *op, const lu_tensor *t, int dim, int *out)
{
    int d = dim < 0 ? dim + t->ndim : dim;
    if (d < 0 || d >= t->ndim) {
        char s[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "%s: dim %d out of range for a tensor of shape %s", op, dim,
                         lu_shape_str(t, s, sizeof s));
    }
    *out = d;
    return LU_OK;
}

lu_status lu_tensor_fill(lu_tensor *t, double value)
{
    lu_backend *b = lu_backend_get(lu_tensor_device(t));
    if (!b) return lu_error_code();
    if (lu_tensor_is_contiguous(t)) return b->fill(lu_tensor_data(t), t->dtype, (size_t)lu_tensor_numel(t), value);
    lu_tensor *tmp = lu_tensor_full(t->dtype, t->ndim, t->shape, lu_tensor_device(t), value);
    if (!tmp) return lu_error_code();
    lu_status s = lu_tensor_copy(t, tmp);
    lu_tensor_release(tmp);
    return s;
}

/* Strided element copy on the host: dst and src host tensors of the same shape and dtype. */
static void host_strided_copy(lu_tensor *dst, const lu_tensor *src)
{
    lu_cpu_strided_copy(lu_tensor_data(dst), dst->stride, lu_tensor_data(src), src->stride, src->shape, src->ndim,
                        lu_dtype_size(src->dtype));
}

/* Whether a view reaches one element twice: a zero stride on a dim of more than one element. */
static bool has_repeats(const lu_tensor *t)
{
    for (int k = 0; k < t->ndim; k++)
        if (t->stride[k] == 0 && t->shape[k] > 1) return true;
    return false;
}

lu_status lu_tensor_copy(lu_tensor *dst, const lu_tensor *src)
{
    if (!lu_tensor_same_shape(dst, src)) {
        char a[LU_SHAPE_STR_MAX], b[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "copy: destination %s and source %s differ", lu_shape_str(dst, a, sizeof a),
                         lu_shape_str(src, b, sizeof b));
    }
    lu_device dd = lu_tensor_device(dst), sd = lu_tensor_device(src);
    if (dst->dtype == src->dtype && lu_tensor_is_contiguous(dst) && lu_tensor_is_contiguous(src)) {
        lu_backend *b = lu_backend_get(dd != LU_CPU ? dd : sd);
        if (!b) return lu_error_code();
        return b->copy(lu_tensor_data(dst), dd, lu_tensor_data(src), sd, lu_tensor_nbytes(src));
    }
    if (dd == LU_CPU && sd == LU_CPU && dst->dtype == src->dtype) {
        host_strided_copy(dst, (lu_tensor *)src);
        return LU_OK;
    }
    /* General case: make src contiguous with dst's dtype on dst's device, then copy strided (on a
     * device, the CONTIGUOUS kernel writes a strided destination too). */
    lu_tensor *tmp = lu_tensor_convert(src, dst->dtype, dd);
    if (!tmp) return lu_error_code();
    lu_status st = LU_OK;
    lu_backend *b = lu_backend_get(dd);
    if (!b) {
        st = lu_error_code();
    } else if (lu_tensor_is_contiguous(dst)) {
        st = b->copy(lu_tensor_data(dst), dd, lu_tensor_data(tmp), dd, lu_tensor_nbytes(tmp));
    } else if (dd == LU_CPU) {
        host_strided_copy(dst, tmp);
    } else if (has_repeats(dst)) {
        /* Parallel writes to one element would land in no fixed order (the host's loop: last wins). */
        char sd[LU_SHAPE_STR_MAX];
        st = lu_errorf(LU_ERR_UNSUPPORTED, "copy: destination %s on %s repeats elements (a zero stride): copy into "
                       "the tensor it expands instead", lu_shape_str(dst, sd, sizeof sd), lu_device_name(dd));
    } else {
        lu_op_call call = {.op = LU_OP_CONTIGUOUS, .in = {tmp}, .out = {dst}, .n_in = 1, .n_out = 1};
        st = b->forward[LU_OP_CONTIGUOUS](&call);
    }
    lu_tensor_release(tmp);
    return st;
}

/* A contiguous copy of the device tensor t in dtype dt on its own device, by the backend's
 * CONTIGUOUS and CAST kernels: no round trip through the host. */
static lu_tensor *convert_on_device(const lu_tensor *t, lu_dtype dt)
{
    lu_device d = lu_tensor_device(t);
    lu_backend *b = lu_backend_get(d);
    if (!b) return NULL;
    lu_tensor *c = lu_tensor_retain((lu_tensor *)t);
    if (!lu_tensor_is_contiguous(t)) {
        lu_tensor_release(c);
        c = lu_tensor_empty(t->dtype, t->ndim, t->shape, d);
        lu_op_call call = {.op = LU_OP_CONTIGUOUS, .in = {(lu_tensor *)t}, .out = {c}, .n_in = 1, .n_out = 1};
        if (!c || b->forward[LU_OP_CONTIGUOUS](&call)) {
            lu_tensor_release(c);
            return NULL;
        }
    }
    if (dt == t->dtype) return c;
    lu_tensor *y = lu_tensor_empty(dt, t->ndim, t->shape, d);
    lu_op_call call = {.op = LU_OP_CAST, .in = {c}, .out = {y}, .n_in = 1, .n_out = 1};
    if (y && b->forward[LU_OP_CAST](&call)) {
        lu_tensor_release(y);
        y = NULL;
    }
    lu_tensor_release(c);
    return y;
}

lu_tensor *lu_tensor_convert(const lu_tensor *t, lu_dtype dt, lu_device dev)
{
    lu_device sd = lu_tensor_device(t);
    if (t->dtype == dt && sd == dev && lu_tensor_is_contiguous(t)) return lu_tensor_retain((lu_tensor *)t);
    if (sd == dev && sd != LU_CPU) return convert_on_device(t, dt);
    /* Across devices: gather to a contiguous host copy, convert, upload. */
    lu_tensor *host = lu_tensor_empty(t->dtype, t->ndim, t->shape, LU_CPU);
    if (!host) return NULL;
    if (sd == LU_CPU) {
        host_strided_copy(host, t);
    } else {
        lu_tensor *c = (lu_tensor *)t;
        lu_backend *b = lu_backend_get(sd);
        if (!lu_tensor_is_contiguous(t)) {
            lu_op_call call = {.op = LU_OP_CONTIGUOUS, .n_in = 1, .n_out = 1};
            c = lu_tensor_empty(t->dtype, t->ndim, t->shape, sd);
            call.in[0] = (lu_tensor *)t;
            call.out[0] = c;
            if (!c || b->forward[LU_OP_CONTIGUOUS](&call)) {
                lu_tensor_release(host);
                return NULL;
            }
        }
        lu_status st = b->copy(lu_tensor_data(host), LU_CPU, lu_tensor_data(c), sd, lu_tensor_nbytes(host));
        if (c != t) lu_tensor_release(c);
        if (st) {
            lu_tensor_release(host);
            return NULL;
        }
    }
    lu_tensor *conv = host;
    if (dt != t->dtype) {
        conv = lu_tensor_empty(dt, t->ndim, t->shape, LU_CPU);
        if (!conv) {
            lu_tensor_release(host);
            return NULL;
        }
        lu_dtype_convert(lu_tensor_data(conv), dt, lu_tensor_data(host), t->dtype, (size_t)lu_tensor_numel(t));
        lu_tensor_release(host);
    }
    if (dev == LU_CPU) return conv;
    lu_tensor *out = lu_tensor_from_host(dt, t->ndim, t->shape, dev, lu_tensor_data(conv));
    lu_tensor_release(conv);
    return out;
}

lu_status lu_tensor_to_host(const lu_tensor *t, lu_dtype dt, void *dst)
{
    lu_tensor *c = lu_tensor_convert(t, dt, LU_CPU);
    if (!c) return lu_error_code();
    memcpy(dst, lu_tensor_data(c), lu_tensor_nbytes(c));
    lu_tensor_release(c);
    return LU_OK;
}

double lu_tensor_item(const lu_tensor *t)
{
    unsigned char buf[8];
    double v = 0;
    lu_device dev = lu_tensor_device(t);
    lu_backend *b = lu_backend_get(dev);
    if (!b || b->copy(buf, LU_CPU, lu_tensor_data(t), dev, lu_dtype_size(t->dtype))) return 0;
    lu_dtype_convert(&v, LU_F64, buf, t->dtype, 1);
    return v;
}
