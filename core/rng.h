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
/* Uniform in [0, 1) for element i of stream (seed, step, op). */
float lu_rng_uniform(uint64_t seed, uint64_t step, uint32_t op, uint64_t i);
/* Standard normal (Box-Muller on two words) for element i. */
float lu_rng_normal(uint64_t seed, uint64_t step, uint32_t op, uint64_t i);

/* Fill a float tensor (any device) with U[lo, hi) or N(mean, std^2), element i from index i. */
lu_status lu_tensor_rand_uniform(lu_tensor *t, double lo, double hi, uint64_t seed, uint32_t op);
lu_status lu_tensor_rand_normal(lu_tensor *t, double mean, double std, uint64_t seed, uint32_t op);

#endif
