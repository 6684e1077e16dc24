/* nccl.h - a thin NCCL communicator for data-parallel training: one communicator per process
 * (one GPU per process), an in-place all-reduce sum of a float buffer on the GPU, destroy.
 * Bootstrapping is the caller's: rank 0 makes an id with lu_nccl_unique_id and sends it to the
 * other ranks (MPI, a file, ...), then every rank calls lu_nccl_init with it. Each process
 * selects its GPU (cudaSetDevice) before lu_nccl_init. Compiled when LUTHIER_HAVE_NCCL is
 * defined (NCCL found at configure time). */
#ifndef LU_NCCL_H
#define LU_NCCL_H

#ifdef LUTHIER_HAVE_NCCL

#include <stddef.h>

#include <nccl.h>

#include "core/error.h"

typedef struct lu_nccl {
    ncclComm_t comm;
    int rank, size;
} lu_nccl;

lu_status lu_nccl_unique_id(ncclUniqueId *id);
/* Joins the communicator of `size` ranks named by id as `rank`; blocks until all ranks join. */
lu_status lu_nccl_init(lu_nccl **out, const ncclUniqueId *id, int rank, int size);
/* buf (n floats in GPU memory) <- the sum of every rank's buf; returns when the sum is there. */
lu_status lu_nccl_all_reduce_sum(lu_nccl *c, float *buf, size_t n);
void lu_nccl_destroy(lu_nccl *c);

#endif
#endif
