/* nccl.c - the CUDA backend's communicator for data-parallel runs (the comm_* entries of
 * lu_backend, used by core/dist.c): one NCCL communicator per process, one GPU per process, an
 * in-place all-reduce sum on the default stream. Without NCCL at configure time the entries stay
 * NULL and a multi-GPU run fails with a message saying so. */
#include "cuda_backend.h"

#ifdef LUTHIER_HAVE_NCCL

#include <string.h>

#include <nccl.h>

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

static lu_status nccl_id(void *id)
{
    LU_NCCL_CHECK(NULL, ncclGetUniqueId((ncclUniqueId *)id));
    return LU_OK;
}

static lu_status nccl_init(void **out, const void *id, int rank, int size)
{
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size)
        return lu_errorf(LU_ERR_INVALID, "nccl: rank %d is not in [0, %d)", rank, size);
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclComm_t comm = NULL;
    LU_NCCL_CHECK(NULL, ncclCommInitRank(&comm, size, uid, rank));
    *out = comm;
    return LU_OK;
}

static lu_status nccl_all_reduce_sum(void *comm, void *buf, lu_dtype dt, size_t n)
{
    ncclComm_t c = (ncclComm_t)comm;
    ncclDataType_t type;
    switch (dt) {
    case LU_F32: type = ncclFloat32; break;
    case LU_F64: type = ncclFloat64; break;
    case LU_BF16: type = ncclBfloat16; break;
    case LU_F16: type = ncclFloat16; break;
    default: return lu_errorf(LU_ERR_DTYPE, "nccl: all-reduce of %s", lu_dtype_name(dt));
    }
    if (n == 0) return LU_OK;
    /* On the default stream, after the kernels that produced buf. */
    LU_NCCL_CHECK(c, ncclAllReduce(buf, buf, n, type, ncclSum, c, 0));
    LU_CUDA_CHECK(cudaStreamSynchronize(0));
    ncclResult_t async = ncclSuccess;
    LU_NCCL_CHECK(c, ncclCommGetAsyncError(c, &async));
    LU_NCCL_CHECK(c, async);
    return LU_OK;
}

static void nccl_free(void *comm)
{
    if (comm) ncclCommDestroy((ncclComm_t)comm);
}

void lu_cuda_comm_describe(char *out, size_t size)
{
#ifdef LU_CUDA_EMU
    snprintf(out, size, "NCCL (the emulator's, over MPI)");
#else
    int v = 0;
    if (ncclGetVersion(&v) == ncclSuccess)
        snprintf(out, size, "NCCL %d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    else
        snprintf(out, size, "NCCL (version unknown)");
#endif
}

void lu_cuda_register_comm(lu_backend *b)
{
    b->comm_id_size = sizeof(ncclUniqueId);
    b->comm_id = nccl_id;
    b->comm_init = nccl_init;
    b->comm_all_reduce_sum = nccl_all_reduce_sum;
    b->comm_free = nccl_free;
}

#else

void lu_cuda_comm_describe(char *out, size_t size) { snprintf(out, size, "no NCCL (multi-GPU runs refused)"); }

void lu_cuda_register_comm(lu_backend *b) { (void)b; }

#endif
