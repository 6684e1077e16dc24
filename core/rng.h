/* rng.h - counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
 *
 * A value is a pure function of (seed, step, op, element index): no hidden state, so dropout
 * masks and initialisations are identical whatever the thread count, backend or rank. The
 * "state" a checkpoint stores is just the seed and the step. */
#ifndef LU_RNG_H
#define LU_RNG_H

#include <stdint.h>

#include "tensor.h"

/* The four 32-bit words for counter block `block` of stream (seed, step, op). */
void lu_philox4x32(uint64_t seed, uint64_t step, uint32_t op, uint64_t block, uint32_t out[4]);
/* Blocks first .. first+n-1 of the stream into out[4*k .. 4*k+3], several blocks at a time
 * (the rounds vectorise across blocks); equal to n calls of lu_philox4x32. */
void lu_philox4x32_blocks(uint64_t seed, uint64_t step, uint32_t op, uint64_t first, int n, uint32_t *out);
/* 24 random bits of a Philox word -> [0, 1), exactly representable in float. Element i of a
 * stream uses word i % 4 of block i / 4. */
static inline float lu_rng_word_to_unit(uint32_t w) { return (float)(w >> 8) * (1.0f / 16777216.0f); }
/* Uniform in [0, 1) for element i of stream (seed, step, op). */
float lu_rng_uniform(uint64_t seed, uint64_t step, uint32_t op, uint64_t i);
/* Standard normal (Box-Muller on two words) for element i. */
float lu_rng_normal(uint64_t seed, uint64_t step, uint32_t op, uint64_t i);

/* Fill a float tensor (any device) with U[lo, hi) or N(mean, std^2), element i from index i. */
lu_status lu_tensor_rand_uniform(lu_tensor *t, double lo, double hi, uint64_t seed, uint32_t op);
lu_status lu_tensor_rand_normal(lu_tensor *t, double mean, double std, uint64_t seed, uint32_t op);

#endif
