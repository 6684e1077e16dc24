/* nccl.c - the NCCL communicator (see nccl.h). */
#include "nccl.h"

#ifdef LUTHIER_HAVE_NCCL

#include <stdlib.h>

#include "cuda_backend.h"

static lu_status nccl_fail(ncclResult_t r, ncclComm_t comm, const char *file, int line, const char *expr)
{
    return lu_errorf(LU_ERR_DEVICE, "%s:%d: %s failed: %s%s%s", file, line, expr, ncclGetErrorString(r),
                     comm ? ": " : "", comm ? ncclGetLastError(comm) : "");
}

#define LU_NCCL_CHECK(comm, expr)                                                  \
    do {                                                                           \
        ncclResult_t lu_nccl_r_ = (expr);                                          \
        if (lu_nccl_r_ != ncclSuccess)                                             \
            return nccl_fail(lu_nccl_r_, (comm), __FILE__, __LINE__, #expr);       \
    } while (0)

lu_status lu_nccl_unique_id(ncclUniqueId *id)
{
    LU_NCCL_CHECK(NULL, ncclGetUniqueId(id));
    return LU_OK;
}

lu_status lu_nccl_init(lu_nccl **out, const ncclUniqueId *id, int rank, int size)
{
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size)
        return lu_errorf(LU_ERR_INVALID, "nccl: rank %d is not in [0, %d)", rank, size);
    lu_nccl *c = calloc(1, sizeof *c);
    if (!c) return lu_errorf(LU_ERR_NOMEM, "nccl: out of memory");
    ncclResult_t r = ncclCommInitRank(&c->comm, size, *id, rank);
    if (r != ncclSuccess) {
        free(c);
        return nccl_fail(r, NULL, __FILE__, __LINE__, "ncclCommInitRank");
    }
    c->rank = rank;
    c->size = size;
    *out = c;
    return LU_OK;
}

lu_status lu_nccl_all_reduce_sum(lu_nccl *c, float *buf, size_t n)
{
    if (n == 0) return LU_OK;
    /* On the default stream, after the kernels that produced buf. */
    LU_NCCL_CHECK(c->comm, ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, c->comm, 0));
    LU_CUDA_CHECK(cudaStreamSynchronize(0));
    ncclResult_t async = ncclSuccess;
    LU_NCCL_CHECK(c->comm, ncclCommGetAsyncError(c->comm, &async));
    LU_NCCL_CHECK(c->comm, async);
    return LU_OK;
}

void lu_nccl_destroy(lu_nccl *c)
{
    if (!c) return;
    ncclCommDestroy(c->comm);
    free(c);
}

#endif
