/* rng.c - Philox4x32-10 and the uniform/normal transforms built on it. */
#include "rng.h"

#include <math.h>
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

void lu_philox4x32_blocks(uint64_t seed, uint64_t step, uint32_t op, uint64_t first, int n, uint32_t *out)
{
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
