/* backend.h - a backend is a table of function pointers for one device: memory management plus
 * a forward and a backward kernel per op of the catalogue (op.h). The CPU backend is always
 * present; the CUDA backend registers itself when luthier is built with LUTHIER_CUDA. */
#ifndef LU_BACKEND_H
#define LU_BACKEND_H

#include "op.h"

typedef lu_status (*lu_kernel)(const lu_op_call *call);

typedef struct lu_backend {
    const char *name;
    lu_device device;
    void *(*alloc)(size_t nbytes);
    void (*free)(void *ptr);
    /* Copies nbytes between this device and the host or within this device. */
    lu_status (*copy)(void *dst, lu_device dst_dev, const void *src, lu_device src_dev, size_t nbytes);
    lu_status (*fill)(void *dst, lu_dtype dt, size_t n, double value);
    lu_status (*synchronize)(void);
    /* Collectives between the processes of a data-parallel run for buffers on this device, used
     * by core/dist.c; NULL where the backend has none (the CPU's buffers go through MPI). Rank 0
     * fills comm_id_size bytes with comm_id and sends them to the others; every rank then joins
     * with comm_init. comm_all_reduce_sum sums n elements of dtype dt in place across ranks and
     * returns when the sum is there. */
    size_t comm_id_size;
    lu_status (*comm_id)(void *id);
    lu_status (*comm_init)(void **comm, const void *id, int rank, int size);
    lu_status (*comm_all_reduce_sum)(void *comm, void *buf, lu_dtype dt, size_t n);
    void (*comm_free)(void *comm);
    lu_kernel forward[LU_OP_COUNT];
    lu_kernel backward[LU_OP_COUNT];
} lu_backend;

/* The backend of a device, or NULL (with an error recorded) when it is not available. */
lu_backend *lu_backend_get(lu_device dev);
void lu_backend_register(lu_backend *b);
bool lu_device_available(lu_device dev);

/* Built-in backends; each fills its table. */
void lu_cpu_backend_init(lu_backend *b);
#ifdef LUTHIER_HAVE_CUDA
/* Returns false (and leaves b unregistered) when no GPU is present. */
bool lu_cuda_backend_init(lu_backend *b);
#endif

#endif
