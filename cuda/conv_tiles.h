/* conv_tiles.h - the index arithmetic of the CUDA convolution kernels (conv.cu), in plain C that
 * compiles for the device and for the host, so that tests/test_cuda_conv.c can check the tiling
 * on a machine without a GPU by running the same functions serially.
 *
 * Geometry as core/cpu/conv.c: output o reads input o*s - p + j for taps j in [0, K) (the fast
 * depthwise conv1d has dilation 1). It runs as stride-1 correlations, which a thread computes
 * a run of outputs at a time with the inputs sliding through its registers:
 *  - forward: a block takes LU_DW_TILE outputs of (batch, channel) rows and stages the input
 *    window they read split into s phases, window position k in phase k % s at k / s; taps
 *    j = s*i + r form phase r of the weights, and y[o0 + q] = bias + sum over r and i of
 *    w_r[i] x_r[q + i], a thread taking LU_DW_FWD_RUN outputs;
 *  - dx (the transposed convolution): a block takes LU_DW_TILE inputs; input t takes the taps
 *    j = t + p (mod s), so the inputs fall into s classes, class c a correlation of its own dy
 *    window with the reversed taps of phase c (lu_dw_dx_class);
 *  - dw: dw[s*i + r] = sum over the outputs of dy[q] x_r[q + i], a thread holding LU_DW_WTAPS
 *    taps of one phase and sliding along LU_DW_SEG outputs.
 * Phase arrays and tap lists are padded with zeros to whole groups: exact only when every staged
 * value is finite (0 * Inf is NaN where the CPU skips the term), which the kernels check, taking
 * the lu_dw_*_exact path for a tile that holds a NaN or an Inf. */
#ifndef LU_CUDA_CONV_TILES_H
#define LU_CUDA_CONV_TILES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#define LU_HD static __host__ __device__ __forceinline__
#else
#define LU_HD static inline
#endif

#define LU_DW_TILE 512     /* frames per tile (outputs for forward and dw, inputs for dx) */
#define LU_DW_THREADS 128  /* threads of a tile block */
#define LU_DW_FWD_RUN 8    /* forward: consecutive outputs of a thread */
#define LU_DW_MAX_HALO 256 /* largest K - 1 of the fast path */
#define LU_DW_SEG 20       /* dw: outputs per thread segment; 80 bytes apart, the 8 lanes of a
                            * 16-byte shared load hit distinct banks */
#define LU_DW_WTAPS 8      /* dw: taps per thread */
/* Taps of a weight phase, padded to groups of 4. */
#define LU_DW_WLEN ((LU_DW_MAX_HALO + 1 + 3) / 4 * 4)
/* dy floats of a dw tile: whole segments. */
#define LU_DW_DY_LEN ((LU_DW_TILE + LU_DW_SEG - 1) / LU_DW_SEG * LU_DW_SEG)
/* Floats of one phase array: the most any kernel reads (lu_dw_dw_fill at the largest K, which
 * bounds lu_dw_fwd_fill and lu_dw_dx_fill too). */
#define LU_DW_PHASE_LEN (LU_DW_DY_LEN + (LU_DW_MAX_HALO + LU_DW_WTAPS) / LU_DW_WTAPS * LU_DW_WTAPS)

LU_HD int64_t lu_dw_ceil4(int64_t n) { return (n + 3) / 4 * 4; }

/* Taps k in [*lo, *hi) whose input index o*s - p + k*d lies in [0, n) (core/cpu/conv.c). */
LU_HD void lu_conv_taps(int64_t o, int64_t s, int64_t p, int64_t d, int64_t k, int64_t n, int64_t *lo, int64_t *hi)
{
    int64_t start = o * s - p;
    int64_t l = start < 0 ? (-start + d - 1) / d : 0;
    int64_t h = start >= n ? 0 : (n - 1 - start) / d + 1;
    if (h > k) h = k;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* The output that tap k sends to input i (i = o*s - p + k*d), or -1 when none does. */
LU_HD int64_t lu_conv_out_of(int64_t i, int64_t k, int64_t s, int64_t p, int64_t d, int64_t n_out)
{
    int64_t num = i + p - k * d;
    if (num < 0 || num % s) return -1;
    int64_t o = num / s;
    return o < n_out ? o : -1;
}

/* Whether a conv1d takes the fast depthwise path (a dilation is no dilation for K == 1). */
LU_HD bool lu_dw_fast_ok(int64_t cin, int64_t cout, int64_t groups, int64_t k, int64_t stride, int64_t dil)
{
    return groups == cin && cout == cin && (stride == 1 || stride == 2) && k >= 1 && k - 1 <= LU_DW_MAX_HALO &&
           (dil == 1 || k == 1);
}

/* Taps of phase r < s: j = s*i + r < k. */
LU_HD int64_t lu_dw_phase_taps(int64_t k, int64_t s, int64_t r) { return r < k ? (k - r + s - 1) / s : 0; }

/* Input frames read by the tile of outputs [o0, o0 + cnt), cnt <= LU_DW_TILE: [o0*s - p, that +
 * *span). */
LU_HD int64_t lu_dw_x_window(int64_t o0, int64_t cnt, int64_t s, int64_t p, int64_t k, int64_t *span)
{
    *span = (cnt - 1) * s + k;
    return o0 * s - p;
}

/* Entries of each phase array that the forward reads in a tile of at most `most` outputs: a
 * thread's outputs q0 + [0, LU_DW_FWD_RUN), q0 a multiple of LU_DW_FWD_RUN below `most`, read
 * x_r[q0 + i] for i up to the taps rounded to groups of 4. A multiple of 4. */
LU_HD int64_t lu_dw_fwd_fill_upto(int64_t k, int64_t s, int64_t most)
{
    return (most + LU_DW_FWD_RUN - 1) / LU_DW_FWD_RUN * LU_DW_FWD_RUN + lu_dw_ceil4(lu_dw_phase_taps(k, s, 0));
}

/* The same for a whole tile. */
LU_HD int64_t lu_dw_fwd_fill(int64_t k, int64_t s) { return lu_dw_fwd_fill_upto(k, s, LU_DW_TILE); }

/* Output o0 + q of a forward tile without the padding shortcut: bias, then the taps inside the
 * input in order, as the CPU adds them. xs holds the phases plen floats apart, ws the weight
 * phases LU_DW_WLEN apart. */
LU_HD float lu_dw_fwd_exact(const float *xs, int64_t plen, const float *ws, float b0, int64_t q, int64_t o0, int64_t n,
                            int64_t s, int64_t p, int64_t k)
{
    int64_t lo, hi;
    lu_conv_taps(o0 + q, s, p, 1, k, n, &lo, &hi);
    float acc = b0;
    for (int64_t j = lo; j < hi; j++) {
        int64_t pos = q * s + j;
        acc += ws[j % s * LU_DW_WLEN + j / s] * xs[pos % s * plen + pos / s];
    }
    return acc;
}

/* Class c < s of the dx tile of inputs [t0, t0 + cnt): the inputs t with (t + p) % s == c,
 * *first and then every s-th, *members of them; their dy array starts at output *ob, so that
 * dx[*first + s*m] = sum over i < kc of w[s*(kc-1-i) + c] dy[*ob + m + i] (0 outside [0, n_out)).
 * Returns kc, the taps of phase c. */
LU_HD int64_t lu_dw_dx_class(int64_t t0, int64_t cnt, int64_t s, int64_t p, int64_t k, int64_t c, int64_t *first,
                             int64_t *members, int64_t *ob)
{
    int64_t kc = lu_dw_phase_taps(k, s, c);
    *first = t0 + ((c - p - t0) % s + s) % s;
    *members = *first < t0 + cnt ? (t0 + cnt - *first + s - 1) / s : 0;
    *ob = (*first + p - c) / s - kc + 1;
    return kc;
}

/* Entries of a class array that dx reads: a thread's members q0 + [0, 4), q0 <= LU_DW_TILE/s - 4,
 * read dy_c[q0 + i] for i up to the taps rounded to groups of 4. */
LU_HD int64_t lu_dw_dx_fill(int64_t k, int64_t s) { return LU_DW_TILE / s + lu_dw_ceil4(lu_dw_phase_taps(k, s, 0)); }

/* dx at input t of class c without the padding shortcut: the taps whose output lies in
 * [0, n_out), from j = K-1 down as the fast path adds them. dys and ws are class c's arrays. */
LU_HD float lu_dw_dx_exact(const float *dys, const float *ws, int64_t t, int64_t ob, int64_t n_out, int64_t s,
                           int64_t p, int64_t kc, int64_t c)
{
    float acc = 0.0f;
    for (int64_t i = 0; i < kc; i++) {
        int64_t o = (t + p - (s * (kc - 1 - i) + c)) / s;
        if (o >= 0 && o < n_out) acc += ws[i] * dys[o - ob];
    }
    return acc;
}

/* dw: threads take (phase, group of LU_DW_WTAPS taps) pairs; phase r has this many groups. */
LU_HD int64_t lu_dw_dw_groups(int64_t k, int64_t s, int64_t r)
{
    return (lu_dw_phase_taps(k, s, r) + LU_DW_WTAPS - 1) / LU_DW_WTAPS;
}

/* Entries of each phase array that dw reads: a segment [qs, qs + LU_DW_SEG), qs <= LU_DW_DY_LEN -
 * LU_DW_SEG, with taps 8g..8g+7 reads x_r up to qs + LU_DW_SEG + 8g + 7 (whole 16-byte loads). */
LU_HD int64_t lu_dw_dw_fill(int64_t k, int64_t s) { return LU_DW_DY_LEN + LU_DW_WTAPS * lu_dw_dw_groups(k, s, 0); }

/* Term of tap j = s*i + r of dw for output o0 + q with gradient g: g x_r[q + i], 0 when that input
 * is padding (the CPU skips it: an Inf g times a padded zero must not give NaN). */
LU_HD float lu_dw_dw_term(const float *xr, float g, int64_t q, int64_t o0, int64_t n, int64_t s, int64_t p, int64_t r,
                          int64_t i)
{
    int64_t in = (o0 + q) * s - p + s * i + r;
    return in >= 0 && in < n ? g * xr[q + i] : 0.0f;
}

#endif
