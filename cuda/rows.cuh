/* rows.cuh - element access for the kernels that stream rows of f32 or bf16 at memory bandwidth
 * (conv.cu's depthwise tiles, resample.cu's downsampling). The element type is the storage type,
 * float for f32 and uint16_t for bf16 (overloads, so that a kernel templated on it has no dtype
 * switch in its loops); values are fp32 in registers and bf16 is rounded once on store
 * (device.cuh's conversions, bit for bit those of core/dtype.c). Four elements move as one
 * 16-byte (f32) or 8-byte (bf16) access, eight as 16-byte accesses, two as one 8- or 4-byte
 * access; the address must be aligned to the access size. */
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

/* bf16(lo) | bf16(hi) << 16, bit for bit lu_dev_f32_to_bf16. From sm_80 on, one cvt.rn.bf16x2.f32
 * rounds both: IEEE round-to-nearest-even, subnormals kept and overflow to Inf as the integer
 * rounding does (cuda_bf16.hpp's __float2bfloat16_rn takes that same integer rounding where the
 * instruction is missing); only its NaN (the canonical 0x7fff) differs from core/dtype.c's (the
 * input's quieted upper half), so a pair holding a NaN takes the integer rounding. */
static __device__ __forceinline__ uint32_t lu_bf16x2(float lo, float hi)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (lo == lo && hi == hi) {
        uint32_t r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); /* a goes to the upper half */
        return r;
    }
#endif
    return (uint32_t)lu_dev_f32_to_bf16(lo) | (uint32_t)lu_dev_f32_to_bf16(hi) << 16;
}

static __device__ __forceinline__ void lu_st4(uint16_t *p, const float v[4])
{
    *(uint2 *)p = make_uint2(lu_bf16x2(v[0], v[1]), lu_bf16x2(v[2], v[3]));
}

static __device__ __forceinline__ void lu_st2(float *p, const float v[2]) { *(float2 *)p = make_float2(v[0], v[1]); }
static __device__ __forceinline__ void lu_st2(uint16_t *p, const float v[2]) { *(uint32_t *)p = lu_bf16x2(v[0], v[1]); }

static __device__ __forceinline__ void lu_ld8(const float *p, float v[8])
{
    lu_ld4(p, v);
    lu_ld4(p + 4, v + 4);
}

static __device__ __forceinline__ void lu_ld8(const uint16_t *p, float v[8])
{
    uint4 a = *(const uint4 *)p;
    const uint32_t u[4] = {a.x, a.y, a.z, a.w};
    for (int k = 0; k < 4; k++) {
        v[2 * k] = __uint_as_float(u[k] << 16);
        v[2 * k + 1] = __uint_as_float(u[k] & 0xffff0000u);
    }
}

static __device__ __forceinline__ void lu_st8(float *p, const float v[8])
{
    lu_st4(p, v);
    lu_st4(p + 4, v + 4);
}

static __device__ __forceinline__ void lu_st8(uint16_t *p, const float v[8])
{
    *(uint4 *)p =
        make_uint4(lu_bf16x2(v[0], v[1]), lu_bf16x2(v[2], v[3]), lu_bf16x2(v[4], v[5]), lu_bf16x2(v[6], v[7]));
}

/* V = 4 or 8 elements, by the length of v. */
template <typename T> static __device__ __forceinline__ void lu_ldv(const T *p, float (&v)[4]) { lu_ld4(p, v); }
template <typename T> static __device__ __forceinline__ void lu_ldv(const T *p, float (&v)[8]) { lu_ld8(p, v); }
template <typename T> static __device__ __forceinline__ void lu_stv(T *p, const float (&v)[4]) { lu_st4(p, v); }
template <typename T> static __device__ __forceinline__ void lu_stv(T *p, const float (&v)[8]) { lu_st8(p, v); }

/* p[0, n) = v[0, n), n <= 4, with the widest accesses that p's alignment allows. */
template <typename T> static __device__ __forceinline__ void lu_st_upto4(T *p, const float v[4], int n)
{
    if (n == 4 && (uintptr_t)p % (4 * sizeof(T)) == 0) {
        lu_st4(p, v);
    } else if (n == 4 && (uintptr_t)p % (2 * sizeof(T)) == 0) {
        lu_st2(p, v);
        lu_st2(p + 2, v + 2);
    } else {
        for (int e = 0; e < n; e++) lu_st(p, e, v[e]);
    }
}

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
