/* conv_tiles.h - the index arithmetic of the CUDA convolution kernels (conv.cu), in plain C that
 * compiles for the device and for the host, so that tests/test_cuda_conv.c can check the tiling
 * on a machine without a GPU by running the same functions serially.
 *
 * Geometry as core/cpu/conv.c: output o reads input o*s - p + k*d for taps k in [0, K).
 * The fast depthwise conv1d (groups == Cin == Cout, stride 1 or 2) gives a block LU_DW_TILE
 * consecutive frames of one (batch, channel) row and stages the frames they touch in shared
 * memory: forward and dw read an input window, dx (the transposed convolution) a dy window. */
#ifndef LU_CUDA_CONV_TILES_H
#define LU_CUDA_CONV_TILES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#define LU_HD static __host__ __device__ __forceinline__
#else
#define LU_HD static inline
#endif

#define LU_DW_TILE 512     /* frames per block (outputs for forward and dw, inputs for dx) */
#define LU_DW_MAX_HALO 256 /* largest (K-1)*dilation of the fast path */
/* Shared-memory floats of the windows: the input window of a forward tile, and the dy window
 * of a dx tile (lu_dw_dy_window). */
#define LU_DW_X_WINDOW ((LU_DW_TILE - 1) * 2 + LU_DW_MAX_HALO + 1)
#define LU_DW_DY_WINDOW (LU_DW_TILE + LU_DW_MAX_HALO + 1)

/* floor(a / b) for b > 0 and any sign of a. */
LU_HD int64_t lu_floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

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

/* Whether a conv1d takes the fast depthwise path. */
LU_HD bool lu_dw_fast_ok(int64_t cin, int64_t cout, int64_t groups, int64_t k, int64_t stride, int64_t dil)
{
    return groups == cin && cout == cin && (stride == 1 || stride == 2) && k >= 1 && (k - 1) * dil <= LU_DW_MAX_HALO;
}

/* Input frames read by the forward (or dw) tile of outputs [o0, o0 + cnt), cnt <= LU_DW_TILE:
 * [o0*s - p, that + *span). */
LU_HD int64_t lu_dw_x_window(int64_t o0, int64_t cnt, int64_t s, int64_t p, int64_t k, int64_t d, int64_t *span)
{
    *span = (cnt - 1) * s + (k - 1) * d + 1;
    return o0 * s - p;
}

/* Output o of a forward tile whose input window starts at in0 (xs[j] = x[in0 + j], 0 outside
 * [0, n)): bias, then the taps inside the input in order, as the CPU adds them. */
LU_HD float lu_dw_fwd_point(const float *xs, const float *ws, float b0, int64_t o, int64_t in0, int64_t n, int64_t s,
                            int64_t p, int64_t d, int64_t k)
{
    int64_t lo, hi;
    lu_conv_taps(o, s, p, d, k, n, &lo, &hi);
    const float *xr = xs + (o * s - p - in0);
    float acc = b0;
    for (int64_t j = lo; j < hi; j++) acc += ws[j] * xr[j * d];
    return acc;
}

/* Outputs that reach the inputs [t0, t0 + cnt) of a dx tile, cnt <= LU_DW_TILE: returns the span
 * of [*o_base, *o_base + span) (indices outside [0, n_out) included; they read as 0). */
LU_HD int64_t lu_dw_dy_window(int64_t t0, int64_t cnt, int64_t s, int64_t p, int64_t k, int64_t d, int64_t *o_base)
{
    *o_base = lu_floor_div(t0 + p - (k - 1) * d, s);
    return lu_floor_div(t0 + cnt - 1 + p, s) - *o_base + 1;
}

/* dx at input t: sum over taps k of w[k] dy[o] with o*s = t + p - k*d, 0 <= o < n_out
 * (dys[j] = dy[o_base + j]). Taps run from K-1 down, in the order the CPU's scatter adds them. */
LU_HD float lu_dw_dx_point(const float *dys, const float *ws, int64_t t, int64_t o_base, int64_t n_out, int64_t s,
                           int64_t p, int64_t d, int64_t k)
{
    float acc = 0.0f;
    for (int64_t j = k - 1; j >= 0; j--) {
        int64_t o = lu_conv_out_of(t, j, s, p, d, n_out);
        if (o >= 0) acc += ws[j] * dys[o - o_base];
    }
    return acc;
}

/* Term of tap j of dw for output o with gradient g: g * x[o*s - p + j*d], 0 when that input is
 * padding (the CPU skips it: an Inf g times a padded zero must not give NaN). */
LU_HD float lu_dw_dw_term(const float *xs, float g, int64_t o, int64_t in0, int64_t n, int64_t s, int64_t p, int64_t d,
                          int64_t j)
{
    int64_t i = o * s - p + j * d;
    return i >= 0 && i < n ? g * xs[i - in0] : 0.0f;
}

#endif
