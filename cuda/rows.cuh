/* rows.cuh - element access for the kernels that stream rows of f32 or bf16 at memory bandwidth
 * (conv.cu's depthwise tiles, resample.cu's downsampling). The element type is the storage type,
 * float for f32 and uint16_t for bf16 (overloads, so that a kernel templated on it has no dtype
 * switch in its loops); values are fp32 in registers and bf16 is rounded once on store
 * (device.cuh's conversions, bit for bit those of core/dtype.c). Four elements move as one
 * 16-byte (f32) or 8-byte (bf16) access, whose address must be aligned to that size. */
#ifndef LU_CUDA_ROWS_CUH
#define LU_CUDA_ROWS_CUH

#include "device.cuh"

static __device__ __forceinline__ float lu_ld(const float *p, int64_t i) { return p[i]; }
static __device__ __forceinline__ float lu_ld(const uint16_t *p, int64_t i) { return lu_dev_bf16_to_f32(p[i]); }
static __device__ __forceinline__ void lu_st(float *p, int64_t i, float v) { p[i] = v; }
static __device__ __forceinline__ void lu_st(uint16_t *p, int64_t i, float v) { p[i] = lu_dev_f32_to_bf16(v); }

static __device__ __forceinline__ void lu_ld4(const float *p, float v[4])
{
    float4 a = *(const float4 *)p;
    v[0] = a.x;
    v[1] = a.y;
    v[2] = a.z;
    v[3] = a.w;
}

static __device__ __forceinline__ void lu_ld4(const uint16_t *p, float v[4])
{
    uint2 a = *(const uint2 *)p;
    v[0] = __uint_as_float(a.x << 16);
    v[1] = __uint_as_float(a.x & 0xffff0000u);
    v[2] = __uint_as_float(a.y << 16);
    v[3] = __uint_as_float(a.y & 0xffff0000u);
}

static __device__ __forceinline__ void lu_st4(float *p, const float v[4])
{
    *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
}

static __device__ __forceinline__ void lu_st4(uint16_t *p, const float v[4])
{
    uint2 a;
    a.x = (uint32_t)lu_dev_f32_to_bf16(v[0]) | (uint32_t)lu_dev_f32_to_bf16(v[1]) << 16;
    a.y = (uint32_t)lu_dev_f32_to_bf16(v[2]) | (uint32_t)lu_dev_f32_to_bf16(v[3]) << 16;
    *(uint2 *)p = a;
}

/* Whether p + 4*i is aligned for lu_ld4/lu_st4 for every i. */
template <typename T> static inline bool lu_aligned4(const T *p) { return (uintptr_t)p % (4 * sizeof(T)) == 0; }

/* [*a, *b) is the aligned part of the elements [lo, hi) of p: lo <= *a <= *b <= hi, p + *a aligned
 * for lu_ld4 and *b - *a a multiple of 4. */
template <typename T>
static __device__ __forceinline__ void lu_row_split(const T *p, int64_t lo, int64_t hi, int64_t *a, int64_t *b)
{
    int64_t mis = (int64_t)((uintptr_t)(p + lo) / sizeof(T) % 4);
    *a = lo + (4 - mis) % 4;
    if (*a > hi) *a = hi;
    *b = *a + (hi - *a) / 4 * 4;
}

/* put(i, row[i]) for every i in [lo, hi), the block's threads taking consecutive groups of 4
 * aligned elements (coalesced vector loads), the unaligned ends one element each. */
template <typename T, typename F>
static __device__ __forceinline__ void lu_row_load(const T *row, int64_t lo, int64_t hi, F put)
{
    if (hi <= lo) return;
    int64_t a, b;
    lu_row_split(row, lo, hi, &a, &b);
    for (int64_t i = lo + threadIdx.x; i < a; i += blockDim.x) put(i, lu_ld(row, i));
    for (int64_t i = b + threadIdx.x; i < hi; i += blockDim.x) put(i, lu_ld(row, i));
    for (int64_t i = a + 4 * (int64_t)threadIdx.x; i < b; i += 4 * (int64_t)blockDim.x) {
        float v[4];
        lu_ld4(row + i, v);
        for (int e = 0; e < 4; e++) put(i + e, v[e]);
    }
}

/* row[i] = get(i) for every i in [0, n), as lu_row_load. */
template <typename T, typename F> static __device__ __forceinline__ void lu_row_store(T *row, int64_t n, F get)
{
    if (n <= 0) return;
    int64_t a, b;
    lu_row_split(row, 0, n, &a, &b);
    for (int64_t i = threadIdx.x; i < a; i += blockDim.x) lu_st(row, i, get(i));
    for (int64_t i = b + threadIdx.x; i < n; i += blockDim.x) lu_st(row, i, get(i));
    for (int64_t i = a + 4 * (int64_t)threadIdx.x; i < b; i += 4 * (int64_t)blockDim.x) {
        float v[4];
        for (int e = 0; e < 4; e++) v[e] = get(i + e);
        lu_st4(row + i, v);
    }
}

#endif
