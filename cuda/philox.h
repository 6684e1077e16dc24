/* philox.h - Philox4x32-10 as core/rng.c computes it (Salmon et al., SC'11), in plain C that
 * compiles for the device (dropout.cu) and for the host, where tests/test_cuda_conv.c checks it
 * against lu_philox4x32 word for word: a dropout mask is then the same on CPU and GPU. */
#ifndef LU_CUDA_PHILOX_H
#define LU_CUDA_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define LU_PHILOX_FN static __host__ __device__ __forceinline__
#else
#define LU_PHILOX_FN static inline
#endif

/* The four words of counter block `block` of stream (seed, step, op): the counter is (block,
 * step ^ op * 0x85EBCA6B, step >> 32 ^ op), the key the seed. */
LU_PHILOX_FN void lu_philox_block(uint64_t seed, uint64_t step, uint32_t op, uint64_t block, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = (uint32_t)step ^ (op * 0x85EBCA6Bu),
             c3 = (uint32_t)(step >> 32) ^ op;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* lu_rng_word_to_unit: 24 random bits -> [0, 1), exact in float. */
LU_PHILOX_FN float lu_philox_unit(uint32_t w) { return (float)(w >> 8) * (1.0f / 16777216.0f); }

#endif
