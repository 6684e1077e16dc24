/* arena.h - bump allocation for per-step activations.
 *
 * While an arena is active on a thread, every new tensor (struct and storage) comes from it and
 * lu_tensor_release is a no-op for it; lu_arena_reset frees them all at once, keeping the blocks
 * for the next step. Parameters, gradients of leaves and optimiser state are allocated with no
 * arena active. Blocks come from the device backend's allocator.
 *
 * The exception is backward: autograd turns recycling on while it runs, and the tensors made
 * then (gradients, their temporaries) are reference-counted; when the last reference to such a
 * storage goes, its memory returns to the arena and later allocations of the same step reuse it.
 * So a step's peak is the forward's activations plus the gradients alive at once, not plus every
 * gradient of the step. With LUTHIER_ARENA_POISON set (the tests set it), returned memory, and
 * everything at a reset, is filled with 0xff bytes (NaN in every float dtype), so that a use
 * after the last release shows. */
#ifndef LU_ARENA_H
#define LU_ARENA_H

#include <stdbool.h>
#include <stddef.h>

#include "tensor.h"

typedef struct lu_arena lu_arena;

lu_arena *lu_arena_new(lu_device dev, size_t block_bytes);
void lu_arena_free(lu_arena *a);
/* Makes a the thread's active arena and returns the previous one (NULL if none). */
lu_arena *lu_arena_activate(lu_arena *a);
lu_arena *lu_arena_current(void);
/* Frees everything allocated since the last reset. No tensor from it may be used afterwards. */
void lu_arena_reset(lu_arena *a);
/* A second arena on a's device for work whose tensors are all dropped at once before a's step
 * ends (lu_recompute's scratch), made on first use and freed with a. */
lu_arena *lu_arena_scratch(lu_arena *a);
/* Tensors made while recycling is on get reference-counted storage (see above); returns the
 * previous setting. */
bool lu_arena_set_recycling(lu_arena *a, bool on);
bool lu_arena_recycling(const lu_arena *a);
/* Gives back the device data of a recycled storage (tensor.c), nbytes as allocated. */
void lu_arena_recycle(lu_arena *a, void *data, size_t nbytes);
/* Bytes in use (handed out and not given back) since the last reset, and the most ever in use. */
size_t lu_arena_used(const lu_arena *a);
size_t lu_arena_peak(const lu_arena *a);

/* Allocation from a (used by tensor.c); 64-byte aligned; host memory for structs when
 * device_memory is false, else memory on the arena's device. */
void *lu_arena_alloc(lu_arena *a, size_t nbytes, int device_memory);
lu_device lu_arena_device(const lu_arena *a);

#endif
