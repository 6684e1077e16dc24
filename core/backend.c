/* backend.c - the registry of device backends and the op names. The CPU backend is created on
 * first use; the CUDA backend when built in and a GPU is present. */
#include "backend.h"

#include <pthread.h>

static lu_backend backends[LU_DEVICE_COUNT];
static bool present[LU_DEVICE_COUNT];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_backends(void)
{
    lu_cpu_backend_init(&backends[LU_CPU]);
    present[LU_CPU] = true;
#ifdef LUTHIER_HAVE_CUDA
    present[LU_CUDA] = lu_cuda_backend_init(&backends[LU_CUDA]);
#endif
}

void lu_backend_register(lu_backend *b)
{
    pthread_once(&once, init_backends);
    backends[b->device] = *b;
    present[b->device] = true;
}

lu_backend *lu_backend_get(lu_device dev)
{
    pthread_once(&once, init_backends);
    if ((unsigned)dev >= LU_DEVICE_COUNT || !present[dev]) {
        lu_errorf(LU_ERR_DEVICE, "device %s is not available (%s)", lu_device_name(dev),
#ifdef LUTHIER_HAVE_CUDA
                  "no GPU found"
#else
                  "luthier was built without LUTHIER_CUDA"
#endif
        );
        return NULL;
    }
    return &backends[dev];
}

bool lu_device_available(lu_device dev)
{
    pthread_once(&once, init_backends);
    return (unsigned)dev < LU_DEVICE_COUNT && present[dev];
}

const char *lu_op_name(lu_op op)
{
    static const char *names[] = {
#define LU_OP_NAME(name, str) str,
        LU_OP_LIST(LU_OP_NAME)
#undef LU_OP_NAME
    };
    return (unsigned)op < LU_OP_COUNT ? names[op] : "custom";
}
