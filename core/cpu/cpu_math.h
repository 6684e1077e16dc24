/* cpu_math.h - an expf the compiler can vectorise.
 *
 * glibc's expf is a scalar call, so loops over exp (softmax, SiLU, sigmoid, cross-entropy,
 * attention) run one element at a time. lu_expf is Cephes' expf (range reduction by ln 2 in two
 * parts, degree-6 polynomial, relative error about 1 ulp) written branch-free, so that
 * `#pragma omp simd` loops vectorise with plain SSE2. exp(-inf) = 0, exp(+inf) = inf and NaN
 * propagates, as softmax masks rely on. Accuracy: relative error below 1e-7 on [-87.3, 88.7]. */
#ifndef LU_CPU_MATH_H
#define LU_CPU_MATH_H

#include <stdint.h>

typedef union lu_f32_bits { float f; int32_t i; } lu_f32_bits;

#pragma omp declare simd notinbranch
static inline float lu_expf(float x)
{
    /* Results below FLT_MIN (x < -87.33) flush to 0: subnormal exponentials do not matter to
     * softmax-like uses and keeping them would need a second scaling step. */
    float xc = x < -87.33654f ? -87.33654f : (x > 88.72283905f ? 88.72283905f : x);
    xc = x != x ? 0.0f : xc; /* NaN: keep the integer conversion below defined */
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick (round to nearest without roundps). */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    /* 2^n for n in [-126, 128]: n = 128 is written as 2 * 2^127. */
    int32_t ni = (int32_t)n;
    int32_t big = ni > 127;
    lu_f32_bits scale = {.i = (ni - big + 127) << 23};
    y = y * scale.f * (big ? 2.0f : 1.0f);
    y = x < -87.33654f ? 0.0f : y;
    y = x > 88.72283905f ? __builtin_inff() : y;
    return x != x ? x : y;
}

/* log(1 + x) for finite x >= 0 (softplus arguments): Cephes' logf on u = 1 + x, corrected by
 * x / (u - 1) for the rounding of u (Goldberg's log1p identity). Relative error about 2 ulp. */
#pragma omp declare simd notinbranch
static inline float lu_log1pf_pos(float x)
{
    float u = 1.0f + x;
    lu_f32_bits b = {.f = u};
    int32_t e = ((b.i >> 23) & 0xff) - 126;
    b.i = (b.i & (int32_t)0x807fffff) | 0x3f000000; /* mantissa in [0.5, 1) */
    float m = b.f;
    int32_t small = m < 0.707106781186547524f;
    e -= small;
    m = small ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    float fe = (float)e;
    y += -2.12194440e-4f * fe - 0.5f * z;
    float lu = m + y + 0.693359375f * fe;
    float d = u - 1.0f;
    return d == 0.0f ? x : lu * (x / d);
}

#endif
