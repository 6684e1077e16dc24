/* attention_ranges.h - which keys a query of ATTENTION may see, and which queries may see a tile
 * of keys: the index arithmetic of the CUDA attention kernels (attention.cu), plain C so that
 * tests check it on the host against core/cpu/attention.c's rules:
 *   causal: query i sees keys j <= i + Tk - Tq (the last query aligns with the last key);
 *   packed (cu_seqlens, Tq == Tk): i sees only keys of its own segment [cu[s], cu[s+1]).
 * The key-padding mask is applied per key on top of these ranges. */
#ifndef LU_CUDA_ATTENTION_RANGES_H
#define LU_CUDA_ATTENTION_RANGES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#define LU_ATT_HD __host__ __device__ __forceinline__
#else
#define LU_ATT_HD inline
#endif

typedef struct lu_att_ranges {
    int64_t tq, tk;
    bool causal;
    const void *cu; /* cu_seqlens [n_cu], i32 or i64 (values 0 .. T, non-decreasing); or NULL */
    bool cu_i64;
    int64_t n_cu;
} lu_att_ranges;

static LU_ATT_HD int64_t lu_att_cu_at(const lu_att_ranges *r, int64_t s)
{
    return r->cu_i64 ? ((const int64_t *)r->cu)[s] : (int64_t)((const int32_t *)r->cu)[s];
}

/* Segment [start, end) of packed position x (0 <= x < T): the largest s with cu[s] <= x, as the
 * CPU finds it, so empty segments are skipped. */
static LU_ATT_HD void lu_att_segment(const lu_att_ranges *r, int64_t x, int64_t *start, int64_t *end)
{
    int64_t s0 = 0, s1 = r->n_cu - 1;
    while (s1 - s0 > 1) {
        int64_t m = (s0 + s1) / 2;
        if (lu_att_cu_at(r, m) <= x) s0 = m;
        else s1 = m;
    }
    *start = lu_att_cu_at(r, s0);
    *end = lu_att_cu_at(r, s0 + 1);
}

/* Keys [lo, hi) that query i may see; none (lo == hi) for i outside [0, Tq), which pads a tile. */
static LU_ATT_HD void lu_att_key_range(const lu_att_ranges *r, int64_t i, int64_t *lo, int64_t *hi)
{
    int64_t l = 0, h = i >= 0 && i < r->tq ? r->tk : 0;
    if (r->causal && i + r->tk - r->tq + 1 < h) h = i + r->tk - r->tq + 1;
    if (r->cu && h > l) {
        int64_t s, e;
        lu_att_segment(r, i, &s, &e);
        if (s > l) l = s;
        if (e < h) h = e;
    }
    *lo = l;
    *hi = h > l ? h : l;
}

/* Queries [lo, hi) among which are all that may see a key of [j0, j1) (0 <= j0 < j1 <= Tk): a
 * superset, the kernels test each (query, key) pair. Packed sequences have Tq == Tk, so keys
 * and queries share cu_seqlens. */
static LU_ATT_HD void lu_att_query_range(const lu_att_ranges *r, int64_t j0, int64_t j1, int64_t *lo, int64_t *hi)
{
    int64_t l = 0, h = r->tq, s, e;
    if (r->causal && j0 - (r->tk - r->tq) > l) l = j0 - (r->tk - r->tq);
    if (r->cu) {
        lu_att_segment(r, j0, &s, &e);
        if (s > l) l = s;
        lu_att_segment(r, j1 - 1, &s, &e);
        if (e < h) h = e;
    }
    *lo = l;
    *hi = h > l ? h : l;
}

#endif
