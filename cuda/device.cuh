/* device.cuh - device-side helpers shared by the .cu kernel files: launch sizes, dtype loads and
 * stores bit-identical to core/dtype.c (so that a cast or a bf16 result equals the CPU's), the
 * strided layout of a tensor with its index arithmetic, and warp reductions. C style: static
 * inline functions, no classes or templates. */
#ifndef LU_CUDA_DEVICE_CUH
#define LU_CUDA_DEVICE_CUH

#include <stdint.h>
#include <string.h>

#include "cuda_backend.h"

#define LU_CUDA_THREADS 256
#define LU_CUDA_WARP 32

/* Blocks for a grid-stride loop over n items; grid-stride loops handle any n. */
static inline unsigned lu_cuda_blocks(int64_t n)
{
    int64_t b = (n + LU_CUDA_THREADS - 1) / LU_CUDA_THREADS;
    if (b < 1) b = 1;
    if (b > 65535) b = 65535;
    return (unsigned)b;
}

/* Dynamic shared memory a launch may take without cudaFuncSetAttribute. */
#define LU_CUDA_SMEM_DEFAULT (48 * 1024)

/* Multiprocessors of the current device, 1 where the query fails. */
static inline int lu_cuda_sm_count(void)
{
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
                                                   cudaSuccess || sms < 1)
        sms = 1;
    return sms;
}

#define LU_CUDA_FOR(i, n)                                                                  \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);             \
         i += (int64_t)blockDim.x * gridDim.x)

/* ---- dtype conversions (core/dtype.c, bit for bit) ---- */

static __device__ __forceinline__ float lu_dev_bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

static __device__ __forceinline__ uint16_t lu_dev_f32_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static __device__ __forceinline__ uint16_t lu_dev_f32_to_f16(float f)
{
    uint32_t u = __float_as_uint(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (absu < 0x38800000u) {
        float r = rintf(__uint_as_float(absu) * 16777216.0f); /* round half to even */
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t mant = absu & 0x7fffffu;
    uint32_t exp = (absu >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

static __device__ __forceinline__ float lu_dev_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    return __uint_as_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/* Element i of a float tensor of dtype dt (f32 or bf16: the dtypes the float kernels accept). */
static __device__ __forceinline__ float lu_dev_load(const void *p, int dt, int64_t i)
{
    return dt == LU_BF16 ? lu_dev_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static __device__ __forceinline__ void lu_dev_store(void *p, int dt, int64_t i, float v)
{
    if (dt == LU_BF16) ((uint16_t *)p)[i] = lu_dev_f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* ---- eight consecutive elements at once: one 16-byte access for bf16, two for f32 (the dense
 * elementwise kernels, which scalar 2-byte accesses leave far from the memory's bandwidth).
 * Element i must be a multiple of 8 and the pointer 16-byte aligned: lu_cuda_vec8_ok. ---- */

#define LU_VEC8 8

static __device__ __forceinline__ void lu_dev_load8(const void *p, int dt, int64_t i, float v[LU_VEC8])
{
    if (dt == LU_BF16) {
        uint4 u = *(const uint4 *)((const uint16_t *)p + i);
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
        for (int k = 0; k < 4; k++) {
            v[2 * k] = __uint_as_float(w[k] << 16); /* the lower address holds the element first */
            v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    } else {
        float4 a = *(const float4 *)((const float *)p + i), b = *(const float4 *)((const float *)p + i + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
}

static __device__ __forceinline__ void lu_dev_store8(void *p, int dt, int64_t i, const float v[LU_VEC8])
{
    if (dt == LU_BF16) {
        uint32_t w[4];
        for (int k = 0; k < 4; k++)
            w[k] = (uint32_t)lu_dev_f32_to_bf16(v[2 * k]) | ((uint32_t)lu_dev_f32_to_bf16(v[2 * k + 1]) << 16);
        *(uint4 *)((uint16_t *)p + i) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
        *(float4 *)((float *)p + i) = make_float4(v[0], v[1], v[2], v[3]);
        *(float4 *)((float *)p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
    }
}

/* True when n elements split into whole groups of 8 and every pointer given (NULLs are skipped)
 * is 16-byte aligned. */
static inline bool lu_cuda_vec8_ok(int64_t n, const void *const *ptrs, int n_ptrs)
{
    if (n % LU_VEC8) return false;
    for (int k = 0; k < n_ptrs; k++)
        if (ptrs[k] && (uintptr_t)ptrs[k] % 16) return false;
    return true;
}

/* ---- strided layouts ---- */

/* Shape and strides (in elements) of a tensor, passed to kernels by value. */
typedef struct lu_cuda_layout {
    int ndim;
    int64_t shape[LU_MAX_DIMS];
    int64_t stride[LU_MAX_DIMS];
} lu_cuda_layout;

static inline lu_cuda_layout lu_cuda_layout_of(const lu_tensor *t)
{
    lu_cuda_layout l;
    memset(&l, 0, sizeof l);
    l.ndim = t->ndim;
    for (int k = 0; k < t->ndim; k++) {
        l.shape[k] = t->shape[k];
        l.stride[k] = t->stride[k];
    }
    return l;
}

/* Offset (elements) of the i-th element in row-major order of the layout's shape. */
static __device__ __forceinline__ int64_t lu_dev_offset(const lu_cuda_layout *l, int64_t i)
{
    int64_t off = 0;
    for (int k = l->ndim - 1; k >= 0; k--) {
        int64_t c = i % l->shape[k];
        i /= l->shape[k];
        off += c * l->stride[k];
    }
    return off;
}

static inline bool lu_cuda_is_float(lu_dtype dt) { return dt == LU_F32 || dt == LU_BF16; }

/* Checks that dt is a float dtype the kernels take (f32, bf16) and that every operand given
 * (NULL slots are skipped) is of dt. */
static inline lu_status lu_cuda_check_float(const lu_op_call *c, const lu_tensor *const *ts, int n, lu_dtype dt)
{
    if (!lu_cuda_is_float(dt))
        return lu_errorf(LU_ERR_DTYPE, "%s: dtype %s is not supported by the cuda backend (use f32 or bf16)",
                         lu_op_name(c->op), lu_dtype_name(dt));
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->dtype != dt)
            return lu_errorf(LU_ERR_DTYPE, "%s: operand %d is %s, expected %s", lu_op_name(c->op), i,
                             lu_dtype_name(ts[i]->dtype), lu_dtype_name(dt));
    return LU_OK;
}

/* ---- scratch memory, allocated and freed in the order of the default stream (no device-wide
 * synchronisation, unlike cudaFree) ---- */

static inline lu_status lu_cuda_scratch_alloc(void **p, size_t nbytes)
{
    *p = NULL;
    LU_CUDA_CHECK(cudaMallocAsync(p, nbytes ? nbytes : 1, 0));
    return LU_OK;
}

static inline void lu_cuda_scratch_free(void *p)
{
    if (p) (void)cudaFreeAsync(p, 0);
}

/* t <- zeros (a backward whose incoming gradient is absent, an accumulator), in stream order. */
static inline lu_status lu_cuda_zero(lu_tensor *t)
{
    LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(t), 0, lu_tensor_nbytes(t), 0));
    return LU_OK;
}

/* *v <- element pos of the i32 or i64 device tensor idx (the offending index of a kernel's check). */
static inline lu_status lu_cuda_index_at(const lu_tensor *idx, int64_t pos, int64_t *v)
{
    size_t es = lu_dtype_size(idx->dtype);
    int64_t raw = 0;
    LU_CUDA_CHECK(cudaMemcpy(&raw, (const char *)lu_tensor_data(idx) + (size_t)pos * es, es, cudaMemcpyDeviceToHost));
    *v = idx->dtype == LU_I32 ? (int64_t)(int32_t)raw : raw; /* little-endian: the low 4 bytes are the i32 */
    return LU_OK;
}

/* ---- warp reductions (every lane gets the result) ---- */

/* float, or double where partial sums cancel (DOWNSAMPLE's dbias). */
template <typename T> static __device__ __forceinline__ T lu_dev_warp_sum(T v)
{
    for (int o = LU_CUDA_WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float lu_dev_warp_max(float v)
{
    for (int o = LU_CUDA_WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of the warp size, at most LU_CUDA_THREADS); every
 * thread gets the total, added in an order that depends only on blockDim.x (deterministic). T is
 * float or double (each has its own shared array). */
template <typename T> static __device__ __forceinline__ T lu_dev_block_sum(T v)
{
    __shared__ T part[LU_CUDA_THREADS / LU_CUDA_WARP];
    v = lu_dev_warp_sum(v);
    __syncthreads(); /* part may still be read from a previous call */
    if (threadIdx.x % LU_CUDA_WARP == 0) part[threadIdx.x / LU_CUDA_WARP] = v;
    __syncthreads();
    T s = 0;
    for (int w = 0; w < (int)(blockDim.x / LU_CUDA_WARP); w++) s += part[w];
    return s;
}

#endif
