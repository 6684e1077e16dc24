/* params.h - the parameter store: every parameter and buffer of a model, by name, in one
 * contiguous buffer per dtype (and one for the gradients of trainable parameters), so that an
 * all-reduce, a checkpoint write or a merge is one pass over one buffer.
 *
 * Declare every tensor with lu_params_add, then lu_params_finalize allocates the buffers and
 * points each declared tensor into them; the tensor pointers stay valid for the store's life.
 * Trainable parameters get requires_grad and a preallocated gradient; buffers (BatchNorm running
 * statistics, ...) get neither. */
#ifndef LU_PARAMS_H
#define LU_PARAMS_H

#include "tensor.h"

typedef struct lu_param {
    char *name;
    lu_tensor *t;
    bool trainable;
    size_t offset;           /* element offset in the store's buffer of t's dtype */
} lu_param;

typedef struct lu_params {
    lu_param *items;
    int n, cap;
    bool finalized;
    lu_device device;
    lu_tensor *flat[LU_DTYPE_COUNT];      /* all tensors of that dtype, back to back */
    lu_tensor *flat_grad[LU_DTYPE_COUNT]; /* gradients of trainable ones, same layout */
} lu_params;

lu_params *lu_params_new(lu_device dev);
void lu_params_free(lu_params *p);
/* Declares a tensor (storage arrives at finalize). Names must be unique. */
lu_tensor *lu_params_add(lu_params *p, const char *name, lu_dtype dt, int ndim, const int64_t *shape, bool trainable);
/* lu_params_add with a printf-style name, returning a status (model declaration code). */
lu_status lu_params_declare(lu_params *p, lu_dtype dt, bool trainable, int ndim, const int64_t *shape, const char *fmt,
                            ...) __attribute__((format(printf, 6, 7)));
lu_status lu_params_finalize(lu_params *p);
lu_tensor *lu_params_get(const lu_params *p, const char *name);
const lu_param *lu_params_find(const lu_params *p, const char *name);
int64_t lu_params_count(const lu_params *p, bool trainable_only);
/* Zeroes every gradient buffer. */
lu_status lu_params_zero_grad(lu_params *p);
/* Moves a finalised store to dev in place: new value and gradient buffers on dev holding the
 * same bytes, every declared tensor and gradient (the same structs, so pointers held elsewhere
 * stay valid) re-pointed into them at its offset, the old buffers released. A no-op when the
 * store is on dev already. Fails, leaving the store unchanged, when a view of its buffers is
 * held outside the store (it would keep pointing at the old memory). */
lu_status lu_params_to_device(lu_params *p, lu_device dev);
/* sums[d]: the sum of every element of the store's buffer of float dtype d (0 for the dtypes it
 * does not hold; NaN or infinite when an element is), computed on the store's device without
 * recording gradients. A fingerprint of the values (data-parallel replicas) and a finiteness test. */
lu_status lu_params_sums(const lu_params *p, double sums[LU_DTYPE_COUNT]);

#endif
