/* backend.c - the CUDA backend: device memory, copies, fills, and the kernel table assembled
 * from the kernel files (cuda_backend.h). Everything runs on the default stream of the current
 * device, so kernels, cuBLAS calls and copies are ordered; copies to or from host memory return
 * when the data has arrived. */
#include <string.h>

#include "cuda_backend.h"

static char unavailable_reason[256];

const char *lu_cuda_unavailable_reason(void) { return unavailable_reason; }

#ifdef LUTHIER_CUDA_ARCHS
const char *lu_cuda_built_archs(void) { return LUTHIER_CUDA_ARCHS; }
#else
const char *lu_cuda_built_archs(void) { return "the CPU emulator"; }
#endif

/* False, with the reason, when the build's kernels cannot launch on device dev: a cluster node's
 * GPU of another generation than the build was made for fails here rather than at the first op. */
static bool kernels_launch(int dev)
{
    cudaError_t e = lu_cuda_probe_launch();
    if (e == cudaSuccess) return true;
    struct cudaDeviceProp prop;
    int major = 0, minor = 0;
    if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
        major = prop.major;
        minor = prop.minor;
    }
    cudaGetLastError();
    if (e == cudaErrorNoKernelImageForDevice)
        snprintf(unavailable_reason, sizeof unavailable_reason,
                 "this build has no code for GPU %d (compute capability %d.%d; built for %s): rebuild with "
                 "-DCMAKE_CUDA_ARCHITECTURES=%d%d%s", dev, major, minor, lu_cuda_built_archs(), major, minor,
                 major == 9 && minor == 0 ? "a" : ""); /* sm_90a: Hopper's wgmma (attention_wgmma.cu) */
    else
        snprintf(unavailable_reason, sizeof unavailable_reason, "a test kernel does not launch on GPU %d: %s (%s)", dev,
                 cudaGetErrorString(e), cudaGetErrorName(e));
    return false;
}

lu_status lu_cuda_fail(cudaError_t err, const char *file, int line, const char *expr)
{
    return lu_errorf(err == cudaErrorMemoryAllocation ? LU_ERR_NOMEM : LU_ERR_DEVICE, "%s:%d: %s failed: %s (%s)",
                     file, line, expr, cudaGetErrorString(err), cudaGetErrorName(err));
}

static void *cuda_alloc(size_t nbytes)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, nbytes);
    if (e != cudaSuccess) {
        lu_cuda_fail(e, __FILE__, __LINE__, "cudaMalloc");
        return NULL;
    }
    return p;
}

/* The interface gives free no way to fail: a failure is recorded as the thread's error. */
static void cuda_free(void *p)
{
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) lu_cuda_fail(e, __FILE__, __LINE__, "cudaFree");
}

static lu_status cuda_copy(void *dst, lu_device dst_dev, const void *src, lu_device src_dev, size_t nbytes)
{
    if ((dst_dev != LU_CPU && dst_dev != LU_CUDA) || (src_dev != LU_CPU && src_dev != LU_CUDA))
        return lu_errorf(LU_ERR_DEVICE, "cuda backend: cannot copy %s -> %s", lu_device_name(src_dev),
                         lu_device_name(dst_dev));
    if (nbytes == 0) return LU_OK;
    enum cudaMemcpyKind kind;
    if (src_dev == LU_CPU) kind = dst_dev == LU_CPU ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice;
    else kind = dst_dev == LU_CPU ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
    LU_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, kind));
    return LU_OK;
}

static lu_status cuda_fill(void *dst, lu_dtype dt, size_t n, double value)
{
    size_t es = lu_dtype_size(dt);
    if (es == 0) return lu_errorf(LU_ERR_DTYPE, "cuda fill: invalid dtype %d", (int)dt);
    if (n == 0) return LU_OK;
    if (value == 0.0) {
        LU_CUDA_CHECK(cudaMemsetAsync(dst, 0, n * es, 0));
        return LU_OK;
    }
    /* The element's bytes as the CPU would store them, repeated by a kernel. */
    unsigned char one[8] = {0};
    uint64_t pattern;
    lu_dtype_convert(one, dt, &value, LU_F64, 1);
    memcpy(&pattern, one, sizeof pattern);
    return lu_cuda_fill_pattern(dst, es, n, pattern);
}

static lu_status cuda_synchronize(void)
{
    LU_CUDA_CHECK(cudaDeviceSynchronize());
    return LU_OK;
}

/* Scratch comes from the device's default pool (lu_cuda_scratch_alloc), whose release threshold
 * of 0 hands its memory back to the driver at every synchronisation, so that the next step (or,
 * under LUTHIER_PROFILE, the next op) maps it again. Keep it: the pool holds at most what a step
 * needed at once. */
static lu_status cuda_keep_pool(int device)
{
    cudaMemPool_t pool;
    uint64_t keep = UINT64_MAX;
    LU_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    LU_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    return LU_OK;
}

lu_status lu_cuda_select_device(int index)
{
    int count = 0;
    LU_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (count < 1) return lu_errorf(LU_ERR_DEVICE, "cuda: no GPU to select");
    LU_CUDA_CHECK(cudaSetDevice(index % count));
    return cuda_keep_pool(index % count);
}

bool lu_cuda_backend_init(lu_backend *b)
{
    memset(b, 0, sizeof *b);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(unavailable_reason, sizeof unavailable_reason, "cudaGetDeviceCount failed: %s (%s)",
                 cudaGetErrorString(e), cudaGetErrorName(e));
        cudaGetLastError(); /* clear the error so that it does not resurface in a later check */
        return false;
    }
    if (count == 0) {
        snprintf(unavailable_reason, sizeof unavailable_reason, "cudaGetDeviceCount found no device");
        return false;
    }
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cuda_keep_pool(dev) != LU_OK) {
        snprintf(unavailable_reason, sizeof unavailable_reason,
                 "the default memory pool of device %d is not usable: %s", dev, lu_error_message());
        cudaGetLastError();
        return false;
    }
    if (!kernels_launch(dev)) return false;
    unavailable_reason[0] = 0;
    b->name = "cuda";
    b->device = LU_CUDA;
    b->alloc = cuda_alloc;
    b->free = cuda_free;
    b->copy = cuda_copy;
    b->fill = cuda_fill;
    b->synchronize = cuda_synchronize;
    lu_cuda_register_layout(b);
    lu_cuda_register_matmul(b);
    lu_cuda_register_linear(b);
    lu_cuda_register_elementwise(b);
    lu_cuda_register_norm(b);
    lu_cuda_register_optim(b);
    lu_cuda_register_reduce(b);
    lu_cuda_register_loss(b);
    lu_cuda_register_ctc(b);
    lu_cuda_register_concat_gather(b);
    lu_cuda_register_attention(b);
    lu_cuda_register_conv(b);
    lu_cuda_register_batchnorm(b);
    lu_cuda_register_resample(b);
    lu_cuda_register_dropout(b);
    lu_cuda_register_rope(b);
    lu_cuda_register_embedding(b);
    lu_cuda_register_comm(b);
    return true;
}
