/* tensor.h - n-dimensional strided tensors over reference-counted storage.
 *
 * A tensor is a view (dtype, shape, strides in elements, offset) of a storage block that lives on
 * one device. Views share storage; the storage is freed when its last view is released. Tensors
 * and their storage are taken from the current arena when one is active (see arena.h): then
 * release is a no-op and the arena frees everything at reset.
 *
 * Differentiable view functions (reshape, transpose, ...) are declared in ops.h. */
#ifndef LU_TENSOR_H
#define LU_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

#define LU_MAX_DIMS 8

typedef enum lu_device { LU_CPU = 0, LU_CUDA = 1, LU_DEVICE_COUNT } lu_device;

const char *lu_device_name(lu_device d);

struct lu_arena;

typedef struct lu_storage {
    void *data;
    size_t nbytes;
    lu_device device;
    int refcount;
    struct lu_arena *arena;        /* owning arena, or NULL for heap storage */
    bool counted;                  /* arena storage made while recycling (arena.h): counted */
    void (*release)(void *ctx);    /* external memory (mmap, ...): called instead of free */
    void *release_ctx;
    bool borrowed;                 /* wrapped memory owned elsewhere: never freed here */
} lu_storage;

typedef struct lu_tensor {
    lu_storage *storage;
    size_t offset;                 /* in elements of dtype */
    lu_dtype dtype;
    int ndim;
    int64_t shape[LU_MAX_DIMS];
    int64_t stride[LU_MAX_DIMS];   /* in elements; 0 for broadcast dimensions */
    int refcount;
    struct lu_arena *arena;        /* arena holding this struct, or NULL */
    bool counted;                  /* arena struct made while recycling: retain/release count */
    /* autograd (autograd.h) */
    bool requires_grad;
    bool is_leaf;                  /* created by the user, not by an op */
    bool is_param;                 /* trainable parameter: grad is a view into the store's buffer */
    struct lu_tensor *grad;
} lu_tensor;

/* Shape literal: lu_tensor_empty(LU_F32, LU_SHAPE(2, 3), LU_CPU). */
#define LU_SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

lu_tensor *lu_tensor_empty(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev);
lu_tensor *lu_tensor_zeros(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev);
lu_tensor *lu_tensor_full(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev, double value);
/* Copies `data` (host memory, contiguous, of dtype dt) into a new tensor on dev. */
lu_tensor *lu_tensor_from_host(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev, const void *data);
/* Wraps memory without copying; release(ctx) is called when the storage dies (may be NULL). */
lu_tensor *lu_tensor_wrap(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev, void *data,
                          void (*release)(void *ctx), void *ctx);
/* Same dtype, shape and device as t, contiguous, uninitialised. */
lu_tensor *lu_tensor_empty_like(const lu_tensor *t);
lu_tensor *lu_tensor_zeros_like(const lu_tensor *t);

lu_tensor *lu_tensor_retain(lu_tensor *t);
/* Whether references to s are counted (heap storage, or arena storage made while recycling). */
bool lu_storage_counted(const lu_storage *s);
void lu_tensor_release(lu_tensor *t);

int64_t lu_tensor_numel(const lu_tensor *t);
size_t lu_tensor_nbytes(const lu_tensor *t);
bool lu_tensor_is_contiguous(const lu_tensor *t);
bool lu_tensor_same_shape(const lu_tensor *a, const lu_tensor *b);
lu_device lu_tensor_device(const lu_tensor *t);
/* Address of element 0 (storage data + offset). */
void *lu_tensor_data(const lu_tensor *t);
/* Writes "[2, 3, 4]" into buf (for error messages); returns buf. */
const char *lu_shape_str(const lu_tensor *t, char *buf, size_t size);
#define LU_SHAPE_STR_MAX 96
/* Normalises a possibly negative dim; records an error naming `op` when out of range. */
lu_status lu_dim_normalize(const char *op, const lu_tensor *t, int dim, int *out);

/* Fills every element (any layout) with value. Not recorded by autograd. */
lu_status lu_tensor_fill(lu_tensor *t, double value);
/* Copies src into dst element by element (shapes equal, dtypes may differ, any layout/device).
 * Not recorded by autograd. */
lu_status lu_tensor_copy(lu_tensor *dst, const lu_tensor *src);
/* Reads the whole tensor into host memory as contiguous elements of dtype dt. */
lu_status lu_tensor_to_host(const lu_tensor *t, lu_dtype dt, void *dst);
/* Value of a one-element tensor (or element 0), as double. */
double lu_tensor_item(const lu_tensor *t);
/* Contiguous copy with a new dtype and/or device, not recorded by autograd; retains t when
 * nothing changes. */
lu_tensor *lu_tensor_convert(const lu_tensor *t, lu_dtype dt, lu_device dev);

#endif
