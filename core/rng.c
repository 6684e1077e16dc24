/* rng.c - Philox4x32-10 and the uniform/normal transforms built on it. */
#include "rng.h"

#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <stdlib.h>

#include "arena.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void lu_philox4x32(uint64_t seed, uint64_t step, uint32_t op, uint64_t block, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = (uint32_t)step ^ (op * 0x85EBCA6Bu),
             c3 = (uint32_t)(step >> 32) ^ op;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

#define PHILOX_LANES 16

#ifdef __AVX2__
/* High and low 32-bit halves of the lane-wise products a * m (unsigned): vpmuludq multiplies
 * the even lanes, a second one the odd lanes shifted down. */
static inline void mul_hi_lo(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* Counter words of blocks first .. first+7 (the low word may wrap into the high one). */
static inline void philox8_counter(uint64_t first, __m256i *c0, __m256i *c1)
{
    __m256i base = _mm256_set1_epi32((int)(uint32_t)first), sign = _mm256_set1_epi32(INT32_MIN);
    __m256i lo = _mm256_add_epi32(base, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    /* -1 where lo < base as unsigned numbers, i.e. where the low word wrapped. */
    __m256i wrap = _mm256_cmpgt_epi32(_mm256_xor_si256(base, sign), _mm256_xor_si256(lo, sign));
    *c0 = lo;
    *c1 = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(first >> 32)), wrap);
}

/* 8 blocks x 4 words -> out[4*block + word]: a 4x4 transpose in each 128-bit half. */
static inline void philox8_store(__m256i c0, __m256i c1, __m256i c2, __m256i c3, uint32_t *out)
{
    __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
    __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
    __m256i b0 = _mm256_unpacklo_epi64(t0, t2), b1 = _mm256_unpackhi_epi64(t0, t2);
    __m256i b2 = _mm256_unpacklo_epi64(t1, t3), b3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i *o = (__m256i *)out;
    _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(b0, b1, 0x20));
    _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(b2, b3, 0x20));
    _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(b0, b1, 0x31));
    _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(b2, b3, 0x31));
}

/* Blocks first .. first+15 with the rounds of lu_philox4x32: two independent sets of 8 lanes
 * keep the multipliers busy while the other set waits on its products. */
static void philox16_avx2(uint64_t seed, uint64_t step, uint32_t op, uint64_t first, uint32_t *out)
{
    __m256i a0, a1, b0, b1;
    philox8_counter(first, &a0, &a1);
    philox8_counter(first + 8, &b0, &b1);
    __m256i a2 = _mm256_set1_epi32((int)((uint32_t)step ^ (op * 0x85EBCA6Bu)));
    __m256i a3 = _mm256_set1_epi32((int)((uint32_t)(step >> 32) ^ op)), b2 = a2, b3 = a3;
    __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        __m256i ka = _mm256_set1_epi32((int)k0), kb = _mm256_set1_epi32((int)k1);
        __m256i ahi0, alo0, ahi1, alo1, bhi0, blo0, bhi1, blo1;
        mul_hi_lo(a0, m0, &ahi0, &alo0);
        mul_hi_lo(b0, m0, &bhi0, &blo0);
        mul_hi_lo(a2, m1, &ahi1, &alo1);
        mul_hi_lo(b2, m1, &bhi1, &blo1);
        a0 = _mm256_xor_si256(_mm256_xor_si256(ahi1, a1), ka);
        b0 = _mm256_xor_si256(_mm256_xor_si256(bhi1, b1), ka);
        a2 = _mm256_xor_si256(_mm256_xor_si256(ahi0, a3), kb);
        b2 = _mm256_xor_si256(_mm256_xor_si256(bhi0, b3), kb);
        a1 = alo1;
        b1 = blo1;
        a3 = alo0;
        b3 = blo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    philox8_store(a0, a1, a2, a3, out);
    philox8_store(b0, b1, b2, b3, out + 32);
}
#endif

void lu_philox4x32_blocks(uint64_t seed, uint64_t step, uint32_t op, uint64_t first, int n, uint32_t *out)
{
#ifdef __AVX2__
    for (; n >= 16; n -= 16, first += 16, out += 64) philox16_avx2(seed, step, op, first, out);
#endif
    for (int base = 0; base < n; base += PHILOX_LANES) {
        int m = n - base < PHILOX_LANES ? n - base : PHILOX_LANES;
        uint32_t c0[PHILOX_LANES], c1[PHILOX_LANES], c2[PHILOX_LANES], c3[PHILOX_LANES];
        for (int k = 0; k < PHILOX_LANES; k++) {
            uint64_t block = first + (uint64_t)(base + k);
            c0[k] = (uint32_t)block;
            c1[k] = (uint32_t)(block >> 32);
            c2[k] = (uint32_t)step ^ (op * 0x85EBCA6Bu);
            c3[k] = (uint32_t)(step >> 32) ^ op;
        }
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int r = 0; r < 10; r++) {
#pragma omp simd
            for (int k = 0; k < PHILOX_LANES; k++) {
                uint64_t p0 = (uint64_t)PHILOX_M0 * c0[k], p1 = (uint64_t)PHILOX_M1 * c2[k];
                uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[k] ^ k0;
                uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[k] ^ k1;
                c1[k] = (uint32_t)p1;
                c3[k] = (uint32_t)p0;
                c0[k] = n0;
                c2[k] = n2;
            }
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        for (int k = 0; k < m; k++) {
            uint32_t *o = out + 4 * (size_t)(base + k);
            o[0] = c0[k];
            o[1] = c1[k];
            o[2] = c2[k];
            o[3] = c3[k];
        }
    }
}

float lu_rng_uniform(uint64_t seed, uint64_t step, uint32_t op, uint64_t i)
{
    uint32_t w[4];
    lu_philox4x32(seed, step, op, i >> 2, w);
    return lu_rng_word_to_unit(w[i & 3]);
}

float lu_rng_normal(uint64_t seed, uint64_t step, uint32_t op, uint64_t i)
{
    uint32_t w[4];
    lu_philox4x32(seed, step, op, i >> 1, w);
    int h = (int)(i & 1) * 2;
    double u1 = ((double)w[h] + 1.0) / 4294967297.0; /* (0, 1] avoids log(0) */
    double u2 = (double)w[h + 1] / 4294967296.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static lu_status fill_random(lu_tensor *t, int normal, double a, double b, uint64_t seed, uint32_t op)
{
    if (!lu_dtype_is_float(t->dtype))
        return lu_errorf(LU_ERR_DTYPE, "rand: tensor dtype %s is not a float type", lu_dtype_name(t->dtype));
    int64_t n = lu_tensor_numel(t);
    lu_arena *prev = lu_arena_activate(NULL);
    lu_tensor *host = lu_tensor_empty(LU_F64, t->ndim, t->shape, LU_CPU);
    lu_arena_activate(prev);
    if (!host) return lu_error_code();
    double *h = lu_tensor_data(host);
    /* Element i depends only on (seed, op, i): any thread count gives the same values. */
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++)
        h[i] = normal ? a + b * lu_rng_normal(seed, 0, op, (uint64_t)i)
                      : a + (b - a) * lu_rng_uniform(seed, 0, op, (uint64_t)i);
    lu_status s = lu_tensor_copy(t, host);
    lu_tensor_release(host);
    return s;
}

lu_status lu_tensor_rand_uniform(lu_tensor *t, double lo, double hi, uint64_t seed, uint32_t op)
{
    return fill_random(t, 0, lo, hi, seed, op);
}

lu_status lu_tensor_rand_normal(lu_tensor *t, double mean, double std, uint64_t seed, uint32_t op)
{
    return fill_random(t, 1, mean, std, seed, op);
}
