/* nccl.c - NCCL's collectives over MPI, for the CUDA emulator only (README.md beside): device
 * memory is host memory there, so a communicator is a duplicate of MPI_COMM_WORLD and an
 * all-reduce is MPI_Allreduce. It keeps NCCL's contract where luthier could get it wrong: the
 * ranks must have passed the same unique id (broadcast by the caller), nranks and rank must be the
 * job's, and a communicator must exist before a collective. 16-bit values are reduced in float.
 * A communicator of one rank needs no MPI (as NCCL's needs no other process): its all-reduce
 * copies. */
#include <limits.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>
#include <nccl.h>

#include "core/dtype.h"

struct ncclComm {
    MPI_Comm mpi;
    int rank, nranks;
    char last_error[256];
};

static char last_error[256];

static ncclResult_t fail(struct ncclComm *c, ncclResult_t r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c ? c->last_error : last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return r;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    if (!id) return fail(NULL, ncclInvalidArgument, "ncclGetUniqueId: NULL id");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "luthier-emulated-nccl %ld %ld %ld", (long)getpid(), (long)ts.tv_sec,
             (long)ts.tv_nsec);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)
{
    if (!comm) return fail(NULL, ncclInvalidArgument, "ncclCommInitRank: NULL comm");
    *comm = NULL;
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return fail(NULL, ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
    if (nranks == 1) {
        struct ncclComm *c = calloc(1, sizeof *c);
        if (!c) return fail(NULL, ncclSystemError, "ncclCommInitRank: out of memory");
        c->mpi = MPI_COMM_NULL;
        c->nranks = 1;
        *comm = c;
        return ncclSuccess;
    }
    int init = 0, size = 0, me = 0;
    MPI_Initialized(&init);
    if (!init)
        return fail(NULL, ncclInvalidUsage, "the emulator's NCCL runs over MPI, which this process has not started");
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    if (size != nranks || me != rank)
        return fail(NULL, ncclInvalidUsage,
                    "the emulator's NCCL spans MPI_COMM_WORLD: asked for rank %d of %d, MPI has rank %d of %d", rank,
                    nranks, me, size);
    /* Every rank must hold rank 0's id, as NCCL's bootstrap requires (it would hang otherwise). */
    ncclUniqueId root = id;
    MPI_Bcast(&root, (int)sizeof root, MPI_BYTE, 0, MPI_COMM_WORLD);
    int differs = memcmp(&root, &id, sizeof id) != 0, any = 0;
    MPI_Allreduce(&differs, &any, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
    if (any) return fail(NULL, ncclInvalidArgument, "ncclCommInitRank: the ranks passed different unique ids");
    struct ncclComm *c = calloc(1, sizeof *c);
    if (!c) return fail(NULL, ncclSystemError, "ncclCommInitRank: out of memory");
    if (MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi) != MPI_SUCCESS) {
        free(c);
        return fail(NULL, ncclSystemError, "ncclCommInitRank: MPI_Comm_dup failed");
    }
    c->rank = rank;
    c->nranks = nranks;
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    if (!comm) return ncclSuccess;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm->mpi != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm->mpi);
    free(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error)
{
    if (!comm || !async_error) return fail(comm, ncclInvalidArgument, "ncclCommGetAsyncError: NULL argument");
    *async_error = ncclSuccess; /* every collective here has finished when it returns */
    return ncclSuccess;
}

static MPI_Datatype mpi_type(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8: return MPI_INT8_T;
    case ncclUint8: return MPI_UINT8_T;
    case ncclInt32: return MPI_INT32_T;
    case ncclUint32: return MPI_UINT32_T;
    case ncclInt64: return MPI_INT64_T;
    case ncclUint64: return MPI_UINT64_T;
    case ncclFloat64: return MPI_DOUBLE;
    default: return MPI_FLOAT; /* f32, and f16/bf16 widened to it */
    }
}

static size_t type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 4;
    }
}

/* count elements of type t from send to recv (which may be send), reduced by op over the ranks. */
static ncclResult_t reduce_part(const void *send, void *recv, size_t count, ncclDataType_t t, MPI_Op op,
                                struct ncclComm *c)
{
    bool half = t == ncclFloat16 || t == ncclBfloat16;
    if (!half) {
        int r = MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, mpi_type(t), op, c->mpi);
        return r == MPI_SUCCESS ? ncclSuccess : fail(c, ncclSystemError, "MPI_Allreduce failed (%d)", r);
    }
    float *w = malloc(count * sizeof *w);
    if (!w) return fail(c, ncclSystemError, "ncclAllReduce: out of memory");
    const uint16_t *s = send;
    for (size_t i = 0; i < count; i++) w[i] = t == ncclBfloat16 ? lu_bf16_to_f32(s[i]) : lu_f16_to_f32(s[i]);
    int r = MPI_Allreduce(MPI_IN_PLACE, w, (int)count, MPI_FLOAT, op, c->mpi);
    uint16_t *d = recv;
    for (size_t i = 0; i < count && r == MPI_SUCCESS; i++)
        d[i] = t == ncclBfloat16 ? lu_f32_to_bf16(w[i]) : lu_f32_to_f16(w[i]);
    free(w);
    return r == MPI_SUCCESS ? ncclSuccess : fail(c, ncclSystemError, "MPI_Allreduce failed (%d)", r);
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream)
{
    (void)stream; /* the emulator's streams are synchronous */
    if (!comm) return fail(NULL, ncclInvalidArgument, "ncclAllReduce: NULL communicator");
    if ((unsigned)datatype > ncclBfloat16) return fail(comm, ncclInvalidArgument, "ncclAllReduce: datatype %d", datatype);
    if (count && (!sendbuff || !recvbuff)) return fail(comm, ncclInvalidArgument, "ncclAllReduce: NULL buffer");
    MPI_Op mop = op == ncclSum || op == ncclAvg ? MPI_SUM : op == ncclProd ? MPI_PROD : op == ncclMax ? MPI_MAX : MPI_MIN;
    if ((unsigned)op > ncclAvg) return fail(comm, ncclInvalidArgument, "ncclAllReduce: op %d", op);
    if (op == ncclAvg && datatype != ncclFloat32 && datatype != ncclFloat64)
        return fail(comm, ncclInvalidArgument, "ncclAllReduce: ncclAvg of datatype %d (the emulator averages f32/f64)",
                    datatype);
    size_t es = type_size(datatype), step = INT_MAX / 2;
    if (comm->nranks == 1) {
        if (count && sendbuff != recvbuff) memmove(recvbuff, sendbuff, count * es);
        return ncclSuccess;
    }
    for (size_t off = 0; off < count; off += step) {
        size_t n = count - off < step ? count - off : step;
        ncclResult_t r = reduce_part((const char *)sendbuff + off * es, (char *)recvbuff + off * es, n, datatype, mop,
                                     comm);
        if (r != ncclSuccess) return r;
    }
    if (op == ncclAvg)
        for (size_t i = 0; i < count; i++) {
            if (datatype == ncclFloat32) ((float *)recvbuff)[i] /= (float)comm->nranks;
            else ((double *)recvbuff)[i] /= comm->nranks;
        }
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t result)
{
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    }
    return "unknown result code";
}

const char *ncclGetLastError(ncclComm_t comm) { return comm ? comm->last_error : last_error; }
