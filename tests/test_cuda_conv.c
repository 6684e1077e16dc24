/* test_cuda_conv.c - the CUDA kernels of the convolution modules and sequence ops against the CPU
 * backend (cuda_testutil.h): CONV1D (fast depthwise, other depthwise, grouped, dense and
 * pointwise GEMM paths), CONV2D, BATCHNORM, DECIMATE, UPSAMPLE, DOWNSAMPLE, DROPOUT (its mask bit
 * for bit), ROPE and EMBEDDING, forward and every gradient, f32 and bf16, NaN/Inf propagation,
 * and determinism (two GPU runs bit identical). Without a GPU those tests skip and say why.
 *
 * The index arithmetic of the tiled depthwise kernels (cuda/conv_tiles.h) and the device Philox
 * generator (cuda/philox.h) are plain C shared by host and device: the cuda_tiles tests run them
 * serially here, GPU or not, against direct loops and core/rng.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/conv_tiles.h"
#include "cuda/philox.h"
#include "testutil.h"

/* ---- host checks of the shared device code ---- */

/* Pseudo-random value in [-1, 1) for element i of stream s. */
static float prand(uint32_t s, uint64_t i) { return 2 * lu_rng_uniform(7, 0, s, i) - 1; }

/* Phase arrays of a simulated block (S rows of LU_DW_PHASE_LEN floats): NaN wherever the kernel
 * does not write, so that a read past what it stages turns the result into NaN. */
typedef struct phases {
    float a[2][LU_DW_PHASE_LEN];
} phases;

/* Weight phases (LU_DW_WLEN floats apart, as in the kernels), NaN where not staged. */
typedef struct wphases {
    float a[2][LU_DW_WLEN];
} wphases;

static void phases_clear(phases *ph)
{
    for (int r = 0; r < 2; r++)
        for (int m = 0; m < LU_DW_PHASE_LEN; m++) ph->a[r][m] = NAN;
}

/* dw_stage_rows of conv.cu for one row: the input window of outputs [o0, o0 + cnt) as s phases of
 * fill floats. */
static void stage_x(phases *xs, const float *x, int64_t T, int64_t o0, int64_t cnt, int64_t s, int64_t p, int64_t K,
                    int64_t fill)
{
    int64_t span, in0 = lu_dw_x_window(o0, cnt, s, p, K, &span);
    cr_assert(fill <= LU_DW_PHASE_LEN && span <= s * fill, "window %lld, fill %lld", (long long)span, (long long)fill);
    phases_clear(xs);
    for (int64_t k = 0; k < s * fill; k++) {
        int64_t i = in0 + k;
        xs->a[k % s][k / s] = k < span && i >= 0 && i < T ? x[i] : 0.0f;
    }
}

/* The weight phases that dw_load_weights and dw_store_weights of conv.cu stage. */
static void stage_weights(wphases *ws, const float *w, int64_t K, int64_t s, bool reversed)
{
    int64_t n = lu_dw_ceil4(lu_dw_phase_taps(K, s, 0));
    cr_assert(n <= LU_DW_WLEN);
    for (int r = 0; r < 2; r++)
        for (int m = 0; m < LU_DW_WLEN; m++) ws->a[r][m] = NAN;
    for (int64_t r = 0; r < s; r++)
        for (int64_t i = 0, kr = lu_dw_phase_taps(K, s, r); i < n; i++)
            ws->a[r][i] = i < kr ? w[s * (reversed ? kr - 1 - i : i) + r] : 0.0f;
}

/* dw_corr of conv.cu for 4 outputs, element by element; every index it loads must be below `fill`. */
static void corr4(float acc[4], const float *xw, int64_t base, const float *wt, int64_t groups, int64_t fill)
{
    cr_assert(base + 4 * groups + 4 <= fill, "corr4 loads up to %lld, %lld staged", (long long)(base + 4 * groups + 3),
              (long long)fill);
    for (int64_t gi = 0; gi < groups; gi++)
        for (int t = 0; t < 4; t++)
            for (int v = 0; v < 4; v++) acc[v] += wt[4 * gi + t] * xw[base + 4 * gi + t + v];
}

/* Forward, dx, dw and dbias of one row (the batch of one) through the tiles of the fast depthwise
 * kernels, their fast and exact paths, against direct double loops: y[o] = b + sum_j w[j]
 * x[o*s - p + j]. */
static void check_dw_tiling(int64_t T, int64_t K, int64_t s, int64_t p)
{
    int64_t OT = (T + 2 * p - K) / s + 1;
    float *x = malloc((size_t)T * sizeof(float)), *w = malloc((size_t)K * sizeof(float));
    float *dy = malloc((size_t)OT * sizeof(float)), *got = malloc((size_t)LU_DW_TILE * sizeof(float));
    double *dw_ref = calloc((size_t)K + 1, sizeof(double)), *dx_ref = calloc((size_t)T, sizeof(double));
    double *dw_fast = calloc((size_t)K + 1, sizeof(double)), *dw_exact = calloc((size_t)K + 1, sizeof(double));
    phases *xs = malloc(sizeof *xs);
    wphases *ws = malloc(sizeof *ws);
    cr_assert(x && w && dy && got && dw_ref && dx_ref && dw_fast && dw_exact && xs && ws);
    for (int64_t i = 0; i < T; i++) x[i] = prand(1, (uint64_t)i);
    for (int64_t k = 0; k < K; k++) w[k] = prand(2, (uint64_t)k);
    for (int64_t o = 0; o < OT; o++) dy[o] = prand(3, (uint64_t)o);
    char what[128];
    snprintf(what, sizeof what, "T %lld K %lld stride %lld padding %lld", (long long)T, (long long)K, (long long)s,
             (long long)p);
    for (int64_t o = 0; o < OT; o++) {
        dw_ref[K] += dy[o];
        for (int64_t k = 0; k < K; k++) {
            int64_t i = o * s - p + k;
            if (i >= 0 && i < T) {
                dw_ref[k] += (double)dy[o] * x[i];
                dx_ref[i] += (double)w[k] * dy[o];
            }
        }
    }
    /* forward */
    stage_weights(ws, w, K, s, false);
    for (int64_t o0 = 0; o0 < OT; o0 += LU_DW_TILE) {
        int64_t cnt = OT - o0 < LU_DW_TILE ? OT - o0 : LU_DW_TILE, fill = lu_dw_fwd_fill(K, s);
        stage_x(xs, x, T, o0, cnt, s, p, K, fill);
        for (int tid = 0; tid < LU_DW_THREADS; tid++) {
            float acc[4] = {0.25f, 0.25f, 0.25f, 0.25f};
            for (int64_t r = 0; r < s; r++)
                corr4(acc, xs->a[r], 4 * tid, ws->a[r], lu_dw_ceil4(lu_dw_phase_taps(K, s, r)) / 4, fill);
            for (int v = 0; v < 4; v++)
                if (4 * tid + v < cnt) got[4 * tid + v] = acc[v];
        }
        for (int64_t q = 0; q < cnt; q++) {
            int64_t o = o0 + q;
            double ref = 0.25;
            for (int64_t k = 0; k < K; k++)
                if (o * s - p + k >= 0 && o * s - p + k < T) ref += (double)w[k] * x[o * s - p + k];
            float ex = lu_dw_fwd_exact(&xs->a[0][0], LU_DW_PHASE_LEN, &ws->a[0][0], 0.25f, q, o0, T, s, p, K);
            cr_assert(fabs(got[q] - ref) <= 1e-4, "%s: y[%lld] = %g, expected %g", what, (long long)o, got[q], ref);
            cr_assert(fabs(ex - ref) <= 1e-4, "%s: exact y[%lld] = %g, expected %g", what, (long long)o, ex, ref);
        }
    }
    /* dx */
    stage_weights(ws, w, K, s, true);
    for (int64_t t0 = 0; t0 < T; t0 += LU_DW_TILE) {
        int64_t cnt = T - t0 < LU_DW_TILE ? T - t0 : LU_DW_TILE, fill = lu_dw_dx_fill(K, s);
        int64_t first[2], members[2], ob[2], kc[2], covered = 0;
        cr_assert(fill <= LU_DW_PHASE_LEN);
        phases_clear(xs);
        for (int64_t c = 0; c < s; c++) {
            kc[c] = lu_dw_dx_class(t0, cnt, s, p, K, c, &first[c], &members[c], &ob[c]);
            int64_t need = members[c] > 0 && kc[c] > 0 ? members[c] + kc[c] - 1 : 0;
            cr_assert(members[c] <= LU_DW_TILE / s && need <= fill, "%s: class %lld", what, (long long)c);
            for (int64_t m = 0; m < fill; m++)
                xs->a[c][m] = m < need && ob[c] + m >= 0 && ob[c] + m < OT ? dy[ob[c] + m] : 0.0f;
            covered += members[c];
        }
        cr_assert_eq(covered, cnt, "%s: the classes hold %lld of %lld inputs", what, (long long)covered,
                     (long long)cnt);
        for (int64_t q = 0; q < cnt; q++) got[q] = NAN;
        for (int tid = 0; tid < LU_DW_THREADS; tid++) {
            int c = tid / (LU_DW_THREADS / (int)s), q0 = 4 * (tid % (LU_DW_THREADS / (int)s));
            float acc[4] = {0, 0, 0, 0};
            corr4(acc, xs->a[c], q0, ws->a[c], lu_dw_ceil4(kc[c]) / 4, fill);
            for (int v = 0; v < 4; v++)
                if (q0 + v < members[c]) {
                    int64_t at = first[c] - t0 + s * (q0 + v);
                    cr_assert(at >= 0 && at < cnt && isnan(got[at]), "%s: dx slot %lld", what, (long long)at);
                    got[at] = acc[v];
                }
        }
        for (int64_t q = 0; q < cnt; q++) {
            int64_t t = t0 + q, c = (t + p) % s;
            float ex = lu_dw_dx_exact(xs->a[c], ws->a[c], t, ob[c], OT, s, p, kc[c], c);
            cr_assert(fabs(got[q] - dx_ref[t]) <= 1e-4, "%s: dx[%lld] = %g, expected %g", what, (long long)t, got[q],
                      dx_ref[t]);
            cr_assert(fabs(ex - dx_ref[t]) <= 1e-4, "%s: exact dx[%lld] = %g, expected %g", what, (long long)t, ex,
                      dx_ref[t]);
        }
    }
    /* dw and dbias: the threads of dw_partial_kernel, then its reduction over each combo */
    int64_t g0 = lu_dw_dw_groups(K, s, 0), combos = g0 + (s == 2 ? lu_dw_dw_groups(K, s, 1) : 0);
    int64_t per_combo = LU_DW_THREADS / combos;
    cr_assert(per_combo >= 1);
    for (int exact = 0; exact < 2; exact++) {
        double *dw_got = exact ? dw_exact : dw_fast;
        for (int tid = 0; tid < combos * per_combo; tid++) {
            int64_t combo = tid / per_combo, lane = tid % per_combo, r = combo < g0 ? 0 : 1, gi = combo - r * g0;
            int64_t kr = lu_dw_phase_taps(K, s, r);
            double acc[LU_DW_WTAPS + 1] = {0};
            for (int64_t o0 = 0; o0 < OT; o0 += LU_DW_TILE) {
                int64_t cnt = OT - o0 < LU_DW_TILE ? OT - o0 : LU_DW_TILE, fill = lu_dw_dw_fill(K, s);
                float dys[LU_DW_DY_LEN];
                stage_x(xs, x, T, o0, cnt, s, p, K, fill);
                for (int64_t q = 0; q < LU_DW_DY_LEN; q++) dys[q] = q < cnt ? dy[o0 + q] : 0.0f;
                for (int64_t qs = lane * LU_DW_SEG; qs < cnt; qs += per_combo * LU_DW_SEG) {
                    int64_t base = qs + LU_DW_WTAPS * gi;
                    cr_assert(base + LU_DW_SEG + 8 <= fill && qs + LU_DW_SEG <= LU_DW_DY_LEN, "%s: dw loads", what);
                    int64_t qe = exact ? (qs + LU_DW_SEG < cnt ? qs + LU_DW_SEG : cnt) : qs + LU_DW_SEG;
                    for (int64_t q = qs; q < qe; q++) {
                        for (int64_t t = 0; t < LU_DW_WTAPS; t++) {
                            int64_t i = LU_DW_WTAPS * gi + t;
                            if (!exact) acc[t] += dys[q] * xs->a[r][q + i];
                            else if (i < kr) acc[t] += lu_dw_dw_term(xs->a[r], dys[q], q, o0, T, s, p, r, i);
                        }
                        if (combo == 0) acc[LU_DW_WTAPS] += dys[q];
                    }
                }
            }
            for (int64_t j = 0; j <= K; j++) {
                int64_t src = 0, t = LU_DW_WTAPS;
                if (j < K) {
                    src = (j % s ? g0 : 0) + j / s / LU_DW_WTAPS;
                    t = j / s % LU_DW_WTAPS;
                }
                if (src == combo) dw_got[j] += acc[t];
            }
        }
        for (int64_t k = 0; k <= K; k++)
            cr_assert(fabs(dw_got[k] - dw_ref[k]) <= 1e-3, "%s: %s dw[%lld] = %g, expected %g", what,
                      exact ? "exact" : "fast", (long long)k, dw_got[k], dw_ref[k]);
    }
    free(x);
    free(w);
    free(dy);
    free(got);
    free(dw_ref);
    free(dx_ref);
    free(dw_fast);
    free(dw_exact);
    free(xs);
    free(ws);
}

Test(cuda_tiles, depthwise_tiles_match_direct_loops_on_odd_sizes)
{
    const int64_t Ts[] = {1, 2, 17, 37, 499, 500, 512, 513, 1100, 1537};
    const int64_t Ks[] = {1, 2, 3, 4, 7, 15, 31};
    int checked = 0;
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
        for (size_t b = 0; b < sizeof Ks / sizeof Ks[0]; b++)
            for (int64_t s = 1; s <= 2; s++) {
                int64_t K = Ks[b], pads[4] = {0, (K - 1) / 2, K - 1, K + 4};
                for (int pi = 0; pi < 4; pi++) {
                    if (Ts[a] + 2 * pads[pi] < K) continue;
                    check_dw_tiling(Ts[a], K, s, pads[pi]);
                    checked++;
                }
            }
    /* The largest kernels of the fast path. */
    check_dw_tiling(700, LU_DW_MAX_HALO + 1, 2, LU_DW_MAX_HALO / 2);
    check_dw_tiling(700, LU_DW_MAX_HALO + 1, 1, 3);
    check_dw_tiling(1537, LU_DW_MAX_HALO, 1, LU_DW_MAX_HALO + 9);
    cr_assert_gt(checked, 400);
}

Test(cuda_tiles, fast_depthwise_path_is_taken_only_where_its_windows_fit)
{
    cr_assert(lu_dw_fast_ok(384, 384, 384, 31, 1, 1));
    cr_assert(lu_dw_fast_ok(384, 384, 384, 31, 2, 1));
    cr_assert(!lu_dw_fast_ok(384, 384, 384, 31, 3, 1), "stride 3");
    cr_assert(!lu_dw_fast_ok(384, 768, 384, 31, 1, 1), "channel multiplier");
    cr_assert(!lu_dw_fast_ok(384, 384, 192, 31, 1, 1), "two channels per group");
    cr_assert(!lu_dw_fast_ok(8, 8, 8, 7, 1, 2), "dilation 2");
    cr_assert(lu_dw_fast_ok(8, 8, 8, 1, 2, 5), "a dilated 1-tap kernel is not dilated");
    cr_assert(lu_dw_fast_ok(8, 8, 8, LU_DW_MAX_HALO + 1, 1, 1));
    cr_assert(!lu_dw_fast_ok(8, 8, 8, LU_DW_MAX_HALO + 2, 1, 1));
}

Test(cuda_tiles, tap_ranges_and_their_inverse_match_brute_force)
{
    for (int64_t s = 1; s <= 3; s++)
        for (int64_t d = 1; d <= 3; d++)
            for (int64_t p = 0; p <= 4; p++)
                for (int64_t k = 1; k <= 5; k++)
                    for (int64_t n = 1; n <= 9; n++) {
                        if (n + 2 * p < d * (k - 1) + 1) continue;
                        int64_t n_out = (n + 2 * p - d * (k - 1) - 1) / s + 1;
                        for (int64_t o = 0; o < n_out; o++) {
                            int64_t lo, hi, blo = k, bhi = 0;
                            lu_conv_taps(o, s, p, d, k, n, &lo, &hi);
                            for (int64_t j = 0; j < k; j++) {
                                int64_t i = o * s - p + j * d;
                                if (i >= 0 && i < n) {
                                    blo = j < blo ? j : blo;
                                    bhi = j + 1;
                                }
                            }
                            if (blo > bhi) blo = bhi;
                            cr_assert(hi - lo == bhi - blo && (hi == lo || (lo == blo && hi == bhi)),
                                      "taps of o %lld: [%lld, %lld), expected [%lld, %lld)", (long long)o,
                                      (long long)lo, (long long)hi, (long long)blo, (long long)bhi);
                        }
                        for (int64_t i = 0; i < n; i++)
                            for (int64_t j = 0; j < k; j++) {
                                int64_t expect = -1;
                                for (int64_t o = 0; o < n_out; o++)
                                    if (o * s - p + j * d == i) expect = o;
                                cr_assert_eq(lu_conv_out_of(i, j, s, p, d, n_out), expect);
                            }
                    }
}

Test(cuda_tiles, device_philox_matches_core_rng_word_for_word)
{
    const uint64_t seeds[] = {0, 1, 0xDEADBEEFCAFEBABEull}, steps[] = {0, 7, (1ull << 40) | 3};
    const uint32_t ops[] = {0, 5, 0xFFFFFFFFu};
    const uint64_t blocks[] = {0, 1, 12345, (1ull << 32) + 9, ~0ull};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 3; c++)
                for (int e = 0; e < 5; e++) {
                    uint32_t got[4], ref[4];
                    lu_philox_block(seeds[a], steps[b], ops[c], blocks[e], got);
                    lu_philox4x32(seeds[a], steps[b], ops[c], blocks[e], ref);
                    for (int k = 0; k < 4; k++) {
                        cr_assert_eq(got[k], ref[k], "seed %d step %d op %d block %d word %d", a, b, c, e, k);
                        cr_assert_eq(lu_philox_unit(got[k]), lu_rng_word_to_unit(ref[k]));
                    }
                }
    cr_assert_eq(lu_philox_unit(0xFFFFFFFFu), lu_rng_word_to_unit(0xFFFFFFFFu));
    cr_assert(lu_philox_unit(0xFFFFFFFFu) < 1.0f);
}

#ifdef LUTHIER_HAVE_CUDA

#include "cuda_testutil.h"

/* ---- convolution ---- */

/* Forward, then the backward (dx, dw, dbias) on the CPU's y, then the backward once more on the
 * device to check it is deterministic. */
static void check_conv(lu_op op, const void *params, lu_tensor *x, lu_tensor *w, lu_tensor *bias, const int64_t *yshape,
                       lu_dtype dev_dt, double tol, const char *what)
{
    char name[200];
    lu_tensor *y = empty(LU_F32, x->ndim, yshape);
    snprintf(name, sizeof name, "%s %s forward", lu_op_name(op), what);
    kcase f = {.op = op, .params = params, .in = {x, w, bias}, .n_in = 3, .out = {y}, .n_out = 1, .dev_dt = dev_dt,
               .tol = tol};
    check_case(&f, name);
    cpu_forward(op, (lu_tensor *[]){x, w, bias}, 3, &y, 1, params);
    lu_tensor *dy = tu_rand(LU_F32, x->ndim, yshape, -1, 1, 500 + (uint64_t)yshape[x->ndim - 1]);
    lu_tensor *dx = empty(LU_F32, x->ndim, x->shape), *dw = empty(LU_F32, w->ndim, w->shape);
    lu_tensor *db = bias ? empty(LU_F32, 1, bias->shape) : NULL;
    snprintf(name, sizeof name, "%s %s backward", lu_op_name(op), what);
    kcase k = {.op = op, .backward = true, .params = params, .in = {dy, x, w, bias, y}, .n_in = 5,
               .out = {dx, dw, db}, .n_out = 3, .dev_dt = dev_dt, .tol = tol};
    check_case(&k, name);
    check_deterministic(&k, name);
    release_all((lu_tensor *[]){y, dy, dx, dw, db}, 5);
}

static void check_conv1d(int64_t B, int64_t cin, int64_t cout, int64_t T, int64_t K, int stride, int pad, int dil,
                         int groups, bool with_bias, lu_dtype dev_dt, double tol)
{
    lu_conv1d_params p = {stride, pad, dil, groups};
    uint64_t seed = (uint64_t)(T * 131 + K * 17 + cin * 7 + stride + pad * 3 + groups);
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(B, cin, T), -1, 1, seed);
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(cout, cin / groups, K), -0.3, 0.3, seed + 1);
    lu_tensor *bias = with_bias ? tu_rand(LU_F32, LU_SHAPE(cout), -0.5, 0.5, seed + 2) : NULL;
    int64_t yshape[3] = {B, cout, (T + 2 * pad - (int64_t)dil * (K - 1) - 1) / stride + 1};
    char what[160];
    snprintf(what, sizeof what, "%s B %lld Cin %lld Cout %lld T %lld K %lld stride %d pad %d dil %d groups %d%s",
             lu_dtype_name(dev_dt), (long long)B, (long long)cin, (long long)cout, (long long)T, (long long)K, stride,
             pad, dil, groups, with_bias ? " bias" : "");
    check_conv(LU_OP_CONV1D, &p, x, w, bias, yshape, dev_dt, tol, what);
    release_all((lu_tensor *[]){x, w, bias}, 3);
}

static void check_conv2d(int64_t B, int64_t cin, int64_t cout, int64_t H, int64_t W, int64_t KH, int64_t KW,
                         lu_conv2d_params p, bool with_bias, lu_dtype dev_dt, double tol)
{
    uint64_t seed = (uint64_t)(H * 31 + W * 7 + cin + KH * 3 + KW);
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(B, cin, H, W), -1, 1, seed);
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(cout, cin / p.groups, KH, KW), -0.3, 0.3, seed + 1);
    lu_tensor *bias = with_bias ? tu_rand(LU_F32, LU_SHAPE(cout), -0.5, 0.5, seed + 2) : NULL;
    int64_t yshape[4] = {B, cout, (H + 2 * p.padding[0] - (int64_t)p.dilation[0] * (KH - 1) - 1) / p.stride[0] + 1,
                         (W + 2 * p.padding[1] - (int64_t)p.dilation[1] * (KW - 1) - 1) / p.stride[1] + 1};
    char what[200];
    snprintf(what, sizeof what, "%s x [%lld,%lld,%lld,%lld] w [%lld,%lld,%lld,%lld] stride %dx%d pad %dx%d dil %dx%d "
             "groups %d%s", lu_dtype_name(dev_dt), (long long)B, (long long)cin, (long long)H, (long long)W,
             (long long)cout, (long long)(cin / p.groups), (long long)KH, (long long)KW, p.stride[0], p.stride[1],
             p.padding[0], p.padding[1], p.dilation[0], p.dilation[1], p.groups, with_bias ? " bias" : "");
    check_conv(LU_OP_CONV2D, &p, x, w, bias, yshape, dev_dt, tol, what);
    release_all((lu_tensor *[]){x, w, bias}, 3);
}

/* The Conformer/Zipformer depthwise module: groups == Cin == Cout, K 3..31 (odd and even),
 * stride 1 and 2; dilation 2 takes the other depthwise kernels. */
static void check_depthwise_sweep(lu_dtype dev_dt, double tol)
{
    const int64_t Ts[] = {1, 17, 37, 499, 500};
    const int64_t Ks[] = {3, 4, 7, 15, 31};
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
        for (size_t b = 0; b < sizeof Ks / sizeof Ks[0]; b++)
            for (int s = 1; s <= 2; s++) {
                int64_t K = Ks[b], T = Ts[a];
                if (T + (K - 1) / 2 * 2 >= K) check_conv1d(2, 3, 3, T, K, s, (int)(K - 1) / 2, 1, 3, true, dev_dt, tol);
                if (T >= K) check_conv1d(2, 3, 3, T, K, s, 0, 1, 3, false, dev_dt, tol);
                check_conv1d(1, 3, 3, T, K, s, (int)K + 2, 2, 3, true, dev_dt, tol);
            }
}

Test(cuda_conv, depthwise_conv1d_f32_matches_cpu_on_odd_sizes)
{
    require_gpu();
    check_depthwise_sweep(LU_F32, TOL_F32);
}

Test(cuda_conv, depthwise_conv1d_bf16_within_bf16_rounding)
{
    require_gpu();
    check_depthwise_sweep(LU_BF16, TOL_BF16);
}

Test(cuda_conv, depthwise_conv1d_matches_cpu_at_model_width)
{
    require_gpu();
    for (int s = 1; s <= 2; s++) {
        check_conv1d(2, 384, 384, 500, 31, s, 15, 1, 384, true, LU_F32, TOL_F32);
        check_conv1d(2, 384, 384, 499, 15, s, 7, 1, 384, true, LU_BF16, TOL_BF16);
        check_conv1d(3, 384, 384, 37, 31, s, 15, 1, 384, true, LU_F32, TOL_F32); /* a block with one row */
        check_conv1d(3, 384, 384, 1, 31, s, 15, 1, 384, false, LU_BF16, TOL_BF16);
    }
    /* Several tiles per row, the largest halo of the fast path. */
    check_conv1d(2, 5, 5, 1537, 257, 2, 128, 1, 5, true, LU_F32, TOL_F32);
    check_conv1d(2, 5, 5, 1537, 256, 1, 300, 1, 5, false, LU_F32, TOL_F32);
}

/* A forward block takes 4 rows of a channel: batches of 5 and 6 leave a block of 1 and of 2; T
 * 1029 and 1030 give three tiles, the last short, and rows whose starts are not 4-aligned (a
 * store of 2 or of 1 element at a time). */
Test(cuda_conv, depthwise_conv1d_matches_cpu_on_row_tails_and_several_tiles)
{
    require_gpu();
    for (int s = 1; s <= 2; s++) {
        check_conv1d(5, 3, 3, 1030, 31, s, 15, 1, 3, true, LU_F32, TOL_F32);
        check_conv1d(5, 3, 3, 1029, 7, s, 3, 1, 3, false, LU_F32, TOL_F32);
        check_conv1d(6, 3, 3, 1030, 31, s, 15, 1, 3, true, LU_BF16, TOL_BF16);
        check_conv1d(5, 3, 3, 1029, 8, s, 3, 1, 3, true, LU_BF16, TOL_BF16);
        check_conv1d(5, 2, 2, 514, 31, s, 15, 1, 2, false, LU_BF16, TOL_BF16);
    }
}

/* dw and dbias with several (row pair, tile) units a block of the first stage, the last block
 * with fewer: the stage takes about 32 blocks a multiprocessor, and the emulated device here has
 * one (LU_EMU_SMS; on a GPU these shapes take a unit a block). B 5 leaves a pair of one row; at
 * stride 1 the 9 units of a channel go 4, 4 and 1 to its blocks, at stride 2 the 6 go 3 and 3. */
Test(cuda_conv, depthwise_dw_sums_several_units_a_block)
{
    require_gpu();
    setenv("LU_EMU_SMS", "1", 1);
    for (int s = 1; s <= 2; s++) {
        check_conv1d(5, 16, 16, 1030, 31, s, 15, 1, 16, true, LU_F32, TOL_F32);
        check_conv1d(5, 16, 16, 1029, 8, s, 3, 1, 16, true, LU_BF16, TOL_BF16);
    }
    unsetenv("LU_EMU_SMS");
}

/* The shapes of `luthier bench gpu` (B 32, C 384, T 500, K 31), forward and backward, on a GPU:
 * on the emulator (45 s of its ASan pass) depthwise_conv1d_matches_cpu_at_model_width runs the
 * same kernels at C 384, and depthwise_dw_sums_several_units_a_block the dw sums over several
 * units a block that B 32 gives. */
Test(cuda_conv, depthwise_conv1d_matches_cpu_at_benchmark_shape)
{
    require_gpu();
    skip_on_emulator("depthwise_conv1d_matches_cpu_at_model_width and depthwise_dw_sums_several_units_a_block");
    for (int s = 1; s <= 2; s++) {
        check_conv1d(32, 384, 384, 500, 31, s, 15, 1, 384, true, LU_F32, TOL_F32);
        check_conv1d(32, 384, 384, 500, 31, s, 15, 1, 384, true, LU_BF16, TOL_BF16);
    }
}

Test(cuda_conv, other_depthwise_conv1d_match_cpu)
{
    require_gpu();
    check_conv1d(2, 3, 6, 17, 5, 1, 2, 1, 3, true, LU_F32, TOL_F32);   /* channel multiplier */
    check_conv1d(2, 5, 5, 40, 7, 3, 2, 1, 5, true, LU_F32, TOL_F32);   /* stride 3 */
    check_conv1d(2, 4, 4, 300, 31, 1, 135, 9, 4, false, LU_F32, TOL_F32); /* halo 270 */
    check_conv1d(3, 1, 4, 17, 3, 2, 1, 1, 1, true, LU_F32, TOL_F32);   /* single input channel */
    check_conv1d(2, 3, 6, 17, 5, 2, 2, 1, 3, true, LU_BF16, TOL_BF16);
}

Test(cuda_conv, grouped_and_dense_conv1d_match_cpu)
{
    require_gpu();
    check_conv1d(2, 6, 9, 17, 3, 2, 1, 1, 3, true, LU_F32, TOL_F32);   /* groups 3 */
    check_conv1d(2, 3, 5, 17, 7, 1, 3, 2, 1, true, LU_F32, TOL_F32);   /* dense, dilated */
    check_conv1d(2, 3, 5, 1, 7, 1, 3, 1, 1, false, LU_F32, TOL_F32);   /* T 1 */
    check_conv1d(2, 8, 4, 499, 15, 2, 0, 1, 2, true, LU_F32, TOL_F32);
    check_conv1d(2, 6, 9, 17, 3, 2, 1, 1, 3, true, LU_BF16, TOL_BF16);
    check_conv1d(2, 8, 4, 499, 15, 2, 0, 1, 2, false, LU_BF16, TOL_BF16);
}

Test(cuda_conv, pointwise_conv1d_matches_cpu)
{
    require_gpu();
    check_conv1d(2, 64, 96, 499, 1, 1, 0, 1, 1, true, LU_F32, TOL_F32);
    check_conv1d(2, 64, 96, 17, 1, 1, 0, 1, 2, false, LU_F32, TOL_F32);
    check_conv1d(2, 64, 96, 499, 1, 1, 0, 1, 1, true, LU_BF16, TOL_BF16);
    check_conv1d(2, 6, 4, 17, 1, 2, 0, 1, 1, true, LU_F32, TOL_F32); /* 1x1 strided: im2col */
}

/* A conv1d forward on the device of x (dtype xdt) and w, y (f32) of zeros of these shapes, which
 * fails with st and a message holding msg. */
static void check_conv1d_rejected(lu_dtype xdt, const int64_t *xs, const int64_t *ws, const int64_t *ys,
                                  lu_conv1d_params p, lu_status st, const char *msg)
{
    lu_tensor *x = lu_tensor_zeros(xdt, 3, xs, LU_CUDA), *w = lu_tensor_zeros(LU_F32, 3, ws, LU_CUDA);
    lu_tensor *y = lu_tensor_empty(LU_F32, 3, ys, LU_CUDA);
    cr_assert(x && w && y, "%s", lu_error_message());
    cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_CONV1D, (lu_tensor *[]){x, w, NULL}, 3, &y, 1, &p), st);
    tu_assert_error_contains(msg);
    release_all((lu_tensor *[]){x, w, y}, 3);
}

/* The GEMM path's column buffer in chunks of the batch: LUTHIER_CONV_COLUMNS (elements; 2^25 by
 * default) holds two batch items of these shapes (chunks of 2, 2 and 1), then less than one (a
 * chunk an item); a value that is not a positive count is an error naming the variable. */
Test(cuda_conv, conv1d_with_chunked_column_buffer_matches_cpu)
{
    require_gpu();
    setenv("LUTHIER_CONV_COLUMNS", "6000", 1); /* conv1d: Cin * K * OT = 8 * 5 * 64 = 2560 an item */
    check_conv1d(5, 8, 6, 64, 5, 1, 2, 1, 2, true, LU_F32, TOL_F32);
    check_conv1d(5, 8, 6, 64, 5, 1, 2, 1, 2, false, LU_BF16, TOL_BF16);
    /* conv2d: 4 * 3 * 3 * 9 * 10 = 3240 an item */
    check_conv2d(5, 4, 8, 9, 10, 3, 3, (lu_conv2d_params){{1, 1}, {1, 1}, {1, 1}, 1}, true, LU_F32, TOL_F32);
    setenv("LUTHIER_CONV_COLUMNS", "1000", 1);
    check_conv1d(3, 8, 6, 64, 5, 2, 2, 2, 1, true, LU_F32, TOL_F32);
    setenv("LUTHIER_CONV_COLUMNS", "12k", 1);
    check_conv1d_rejected(LU_F32, (int64_t[]){2, 8, 64}, (int64_t[]){6, 4, 5}, (int64_t[]){2, 6, 64},
                          (lu_conv1d_params){1, 2, 1, 2}, LU_ERR_INVALID,
                          "LUTHIER_CONV_COLUMNS=12k: expected a positive number of elements");
    unsetenv("LUTHIER_CONV_COLUMNS");
}

/* The shapes of Zipformer's Conv2dSubsampling and of other 2-D front ends. */
Test(cuda_conv, conv2d_matches_cpu)
{
    require_gpu();
    check_conv2d(2, 1, 8, 19, 80, 3, 3, (lu_conv2d_params){{1, 1}, {0, 1}, {1, 1}, 1}, true, LU_F32, TOL_F32);
    check_conv2d(2, 8, 32, 17, 40, 3, 3, (lu_conv2d_params){{2, 2}, {0, 0}, {1, 1}, 1}, true, LU_F32, TOL_F32);
    check_conv2d(2, 32, 128, 8, 19, 3, 3, (lu_conv2d_params){{1, 2}, {0, 0}, {1, 1}, 1}, true, LU_F32, TOL_F32);
    check_conv2d(2, 16, 16, 9, 10, 7, 7, (lu_conv2d_params){{1, 1}, {3, 3}, {1, 1}, 16}, true, LU_F32, TOL_F32);
    check_conv2d(2, 16, 24, 5, 7, 1, 1, (lu_conv2d_params){{1, 1}, {0, 0}, {1, 1}, 1}, false, LU_F32, TOL_F32);
    check_conv2d(2, 6, 4, 11, 9, 3, 2, (lu_conv2d_params){{2, 1}, {1, 0}, {2, 1}, 2}, true, LU_F32, TOL_F32);
    check_conv2d(2, 8, 32, 17, 40, 3, 3, (lu_conv2d_params){{2, 2}, {0, 0}, {1, 1}, 1}, true, LU_BF16, TOL_BF16);
    check_conv2d(2, 16, 16, 9, 10, 7, 7, (lu_conv2d_params){{1, 1}, {3, 3}, {1, 1}, 16}, true, LU_BF16, TOL_BF16);
}

Test(cuda_conv, conv_backward_without_dy_or_with_some_gradients_matches_cpu)
{
    require_gpu();
    lu_conv1d_params p = {1, 3, 1, 4};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 4, 33), -1, 1, 600), *w = tu_rand(LU_F32, LU_SHAPE(4, 1, 7), -1, 1, 601);
    lu_tensor *bias = tu_rand(LU_F32, LU_SHAPE(4), -1, 1, 602), *y = empty(LU_F32, LU_SHAPE(2, 4, 33));
    cpu_forward(LU_OP_CONV1D, (lu_tensor *[]){x, w, bias}, 3, &y, 1, &p);
    lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(2, 4, 33), -1, 1, 603);
    lu_tensor *dx = tu_rand(LU_F32, LU_SHAPE(2, 4, 33), -1, 1, 604);
    lu_tensor *dw = tu_rand(LU_F32, LU_SHAPE(4, 1, 7), -1, 1, 605);
    kcase none = {.op = LU_OP_CONV1D, .backward = true, .params = &p, .in = {NULL, x, w, bias, y}, .n_in = 5,
                  .out = {dx, dw, NULL}, .n_out = 3, .dev_dt = LU_F32, .tol = 0};
    check_case(&none, "conv1d backward without dy (zeros)");
    kcase only_dx = {.op = LU_OP_CONV1D, .backward = true, .params = &p, .in = {dy, x, w, bias, y}, .n_in = 5,
                     .out = {dx, NULL, NULL}, .n_out = 3, .dev_dt = LU_F32, .tol = TOL_F32};
    check_case(&only_dx, "conv1d backward, dx only");
    kcase only_dw = {.op = LU_OP_CONV1D, .backward = true, .params = &p, .in = {dy, x, w, bias, y}, .n_in = 5,
                     .out = {NULL, dw, NULL}, .n_out = 3, .dev_dt = LU_F32, .tol = TOL_F32};
    check_case(&only_dw, "conv1d backward, dw only");
    release_all((lu_tensor *[]){x, w, bias, y, dy, dx, dw}, 7);
}

Test(cuda_conv, depthwise_conv1d_propagates_nan_and_inf_as_the_cpu)
{
    require_gpu();
    lu_conv1d_params p = {1, 7, 1, 3};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 60), -1, 1, 610);
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(3, 1, 15), -1, 1, 611);
    float *X = lu_tensor_data(x);
    X[5] = INFINITY;
    X[70] = NAN;
    X[100] = -INFINITY;
    X[101] = INFINITY;
    lu_tensor *y = empty(LU_F32, LU_SHAPE(2, 3, 60));
    kcase f = {.op = LU_OP_CONV1D, .params = &p, .in = {x, w, NULL}, .n_in = 3, .out = {y}, .n_out = 1,
               .dev_dt = LU_F32, .tol = TOL_F32};
    check_case(&f, "depthwise conv1d with NaN and Inf inputs");
    release_all((lu_tensor *[]){x, w, y}, 3);
}

/* bf16, five rows (a block of 4 and one of 1), stride 1 and 2: the block holding the NaN and the Inf
 * takes the exact path for all its rows, the other the fast one; so do the blocks of a channel with
 * a NaN weight. */
static void check_dw_bf16_nan_and_inf(void)
{
    for (int s = 1; s <= 2; s++) {
        lu_conv1d_params p = {s, 7, 1, 2};
        int64_t OT = (61 + 14 - 15) / s + 1;
        lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(5, 2, 61), -1, 1, 615);
        lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(2, 1, 15), -1, 1, 616), *y = empty(LU_F32, LU_SHAPE(5, 2, OT));
        float *X = lu_tensor_data(x);
        X[2] = INFINITY;            /* batch 0, channel 0, near the padded start */
        X[3 * 61 + 59] = NAN;       /* batch 1, channel 1, near the padded end */
        X[8 * 61 + 30] = -INFINITY; /* batch 4, channel 0: a block of one row */
        /* Channel 1's tap 3: its blocks take the exact path too, where the CPU leaves the outputs
         * whose tap 3 falls in the padding finite. */
        ((float *)lu_tensor_data(w))[15 + 3] = NAN;
        kcase f = {.op = LU_OP_CONV1D, .params = &p, .in = {x, w, NULL}, .n_in = 3, .out = {y}, .n_out = 1,
                   .dev_dt = LU_BF16, .tol = TOL_BF16};
        check_case(&f, s == 1 ? "bf16 depthwise conv1d with NaN and Inf" : "bf16 strided depthwise conv1d with NaN "
                                                                            "and Inf");
        release_all((lu_tensor *[]){x, w, y}, 3);
    }
}

Test(cuda_conv, depthwise_conv1d_bf16_propagates_nan_and_inf_as_the_cpu)
{
    require_gpu();
    check_dw_bf16_nan_and_inf();
}

/* The forward's FMA kernel and the FMA dx at stride 1 (LUTHIER_DW_MMA=0; the default is the
 * tensor cores), the forward compiled for each count of 4-tap groups of phase 0 up to 8 (beyond,
 * it counts them at run time). Stride 1: K 3 .. 31 step 4 and 33 (1 .. 8 groups, then run time).
 * Stride 2: K 7, 9, 17, 25, 33, 41, 55, 63 (1 .. 8 groups, phase 1 a group short for K 9, 17, 25,
 * 33 and 41) and 65. Five rows (a block of 4 and one of 1), T 37 (one short tile) and 1030 (three
 * tiles, rows not 8-aligned), each K in f32 and bf16; the NaN and Inf case. */
Test(cuda_conv, depthwise_forward_matches_cpu_for_each_group_count)
{
    require_gpu();
    static const int64_t Ts[] = {37, 1030};
    static const int64_t Ks[2][9] = {{3, 7, 11, 15, 19, 23, 27, 31, 33}, {7, 9, 17, 25, 33, 41, 55, 63, 65}};
    setenv("LUTHIER_DW_MMA", "0", 1);
    for (int s = 1; s <= 2; s++)
        for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
            for (size_t b = 0; b < sizeof Ks[0] / sizeof Ks[0][0]; b++) {
                int64_t K = Ks[s - 1][b];
                lu_dtype dt = (a + b) % 2 ? LU_BF16 : LU_F32; /* each K in both dtypes */
                double tol = dt == LU_BF16 ? TOL_BF16 : TOL_F32;
                check_conv1d(5, 3, 3, Ts[a], K, s, (int)(K - 1) / 2, 1, 3, a == 0, dt, tol);
            }
    check_dw_bf16_nan_and_inf();
    unsetenv("LUTHIER_DW_MMA");
}

/* The forward on the tensor cores (the default; f32 as three bf16 parts a value), and dx at
 * stride 1, the same kernel on dy with the taps reversed: compiled for 1 ..
 * 6 steps of 16 columns, K up to 82 at stride 1 and 75 at stride 2, and the FMA kernels beyond.
 * Stride 1: K 1, 2 (1 step), 9, 18 (2), 31, 34 (3), 50, 66, 82 (4 .. 6), 83; stride 2: K 1, 11
 * (2), 27, 43, 59, 75 (3 .. 6), 76. Five rows (a block of 4 and one of 1), T 37 (one short tile)
 * and 1030 (three tiles; rows 1030 elements apart start at every offset from an 8-element
 * boundary, which the staging moves into the taps' matrix, and odd output rows at stride 2 take
 * single stores), the padding (K - 1) / 2, and K + 2 (windows wholly in the padding at T 37),
 * each K in bf16 and f32. Then f32 values near FLT_MAX, whose first part would round to Inf: their
 * rows take the exact path, finite as on the CPU. */
Test(cuda_conv, depthwise_forward_on_tensor_cores_matches_cpu_for_each_step_count)
{
    require_gpu();
    static const int64_t Ts[] = {37, 1030};
    static const int64_t Ks[2][10] = {{1, 2, 9, 18, 31, 34, 50, 66, 82, 83}, {1, 11, 27, 43, 59, 75, 76}};
    for (int s = 1; s <= 2; s++)
        for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
            for (size_t b = 0; b < 10 && Ks[s - 1][b]; b++) {
                const int64_t K = Ks[s - 1][b];
                const int pad = (b + a) % 3 == 2 ? (int)K + 2 : (int)(K - 1) / 2;
                const lu_dtype dt = (a + b) % 2 ? LU_F32 : LU_BF16;
                if (Ts[a] + 2 * pad >= K)
                    check_conv1d(5, 3, 3, Ts[a], K, s, pad, 1, 3, b % 2 == 0, dt, dt == LU_F32 ? TOL_F32 : TOL_BF16);
            }
    for (int s = 1; s <= 2; s++) {
        lu_conv1d_params p = {s, 15, 1, 3};
        lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(5, 3, 70), -1, 1, 620);
        lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(3, 1, 31), -0.3, 0.3, 621);
        lu_tensor *y = empty(LU_F32, LU_SHAPE(5, 3, (70 - 1) / s + 1));
        float *X = lu_tensor_data(x);
        X[40] = 3.4e38f;        /* batch 0, channel 0 */
        X[7 * 70 + 3] = -3.3e38f; /* batch 2, channel 1 */
        kcase f = {.op = LU_OP_CONV1D, .params = &p, .in = {x, w, NULL}, .n_in = 3, .out = {y}, .n_out = 1,
                   .dev_dt = LU_F32, .tol = TOL_F32};
        check_case(&f, "f32 depthwise conv1d with values near FLT_MAX");
        release_all((lu_tensor *[]){x, w, y}, 3);
    }
}

/* NaN and Inf in x and dy, near the padded ends too: the tiles holding them take the exact path,
 * which skips padded taps as the CPU does (Inf times a padded zero must not give NaN). */
Test(cuda_conv, depthwise_conv1d_backward_propagates_nan_and_inf_as_the_cpu)
{
    require_gpu();
    for (int v = 0; v < 3; v++) { /* stride 1 with dx on the tensor cores, then on the FMA units; stride 2 */
        const int s = v < 2 ? 1 : 2;
        if (v == 1) setenv("LUTHIER_DW_MMA", "0", 1);
        lu_conv1d_params p = {s, 7, 1, 3};
        int64_t OT = (60 + 14 - 15) / s + 1;
        lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 60), -1, 1, 612);
        lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(3, 1, 15), -1, 1, 613), *y = empty(LU_F32, LU_SHAPE(2, 3, OT));
        lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(2, 3, OT), -1, 1, 614);
        float *X = lu_tensor_data(x), *DY = lu_tensor_data(dy);
        X[70] = NAN;
        X[100] = INFINITY;
        DY[0] = INFINITY;            /* row 0, its first output reads padding */
        DY[2 * OT - 1] = -INFINITY;  /* row 1, its last output reads padding */
        DY[3 * OT + OT / 2] = NAN;
        cpu_forward(LU_OP_CONV1D, (lu_tensor *[]){x, w, NULL}, 3, &y, 1, &p);
        lu_tensor *dx = empty(LU_F32, LU_SHAPE(2, 3, 60)), *dw = empty(LU_F32, LU_SHAPE(3, 1, 15));
        kcase k = {.op = LU_OP_CONV1D, .backward = true, .params = &p, .in = {dy, x, w, NULL, y}, .n_in = 5,
                   .out = {dx, dw, NULL}, .n_out = 3, .dev_dt = LU_F32, .tol = TOL_F32};
        check_case(&k, s == 1 ? "depthwise conv1d backward with NaN and Inf" : "strided depthwise conv1d backward "
                                                                              "with NaN and Inf");
        release_all((lu_tensor *[]){x, w, y, dy, dx, dw}, 6);
        unsetenv("LUTHIER_DW_MMA");
    }
}

Test(cuda_conv, conv_rejects_mismatched_shapes_and_f64)
{
    require_gpu();
    const lu_conv1d_params p = {1, 0, 1, 1};
    check_conv1d_rejected(LU_F32, (int64_t[]){1, 3, 10}, (int64_t[]){2, 3, 3}, (int64_t[]){1, 2, 9}, p, LU_ERR_SHAPE,
                          "conv1d: x [1, 3, 10], w [2, 3, 3] and y [1, 2, 9] do not fit");
    check_conv1d_rejected(LU_F64, (int64_t[]){1, 3, 10}, (int64_t[]){2, 3, 3}, (int64_t[]){1, 2, 8}, p, LU_ERR_DTYPE,
                          "conv1d: dtype f64 is not supported by the cuda backend");
}

/* ---- batch norm ---- */

/* x [shape] with C = shape[1]; running stats updated in place in training (compared too). */
static void check_batchnorm(int ndim, const int64_t *shape, bool training, bool affine, lu_dtype dev_dt, double tol)
{
    lu_batchnorm_params p = {training, 0.1, 1e-5};
    int64_t C = shape[1];
    lu_tensor *x = tu_rand(LU_F32, ndim, shape, -2, 3, 700 + (uint64_t)C);
    lu_tensor *w = affine ? tu_rand(LU_F32, 1, &shape[1], 0.5, 1.5, 701) : NULL;
    lu_tensor *b = affine ? tu_rand(LU_F32, 1, &shape[1], -0.5, 0.5, 702) : NULL;
    lu_tensor *rm = tu_rand(LU_F32, 1, &shape[1], -0.2, 0.2, 703), *rv = tu_rand(LU_F32, 1, &shape[1], 0.5, 2, 704);
    lu_tensor *y = empty(LU_F32, ndim, shape), *mean = empty(LU_F32, 1, &shape[1]), *inv = empty(LU_F32, 1, &shape[1]);
    char what[160];
    snprintf(what, sizeof what, "batchnorm %s %s %s, %lld values per channel", lu_dtype_name(dev_dt),
             training ? "training" : "eval", affine ? "affine" : "plain", (long long)(lu_tensor_numel(x) / C));
    kcase f = {.op = LU_OP_BATCHNORM, .inplace = true, .params = &p, .in = {x, w, b, rm, rv}, .n_in = 5,
               .out = {y, mean, inv}, .n_out = 3, .dev_dt = dev_dt, .tol = tol};
    check_case(&f, what);
    /* y, mean and invstd for the backward (the running stats, updated again, are not read). */
    cpu_forward(LU_OP_BATCHNORM, (lu_tensor *[]){x, w, b, rm, rv}, 5, (lu_tensor *[]){y, mean, inv}, 3, &p);
    /* Not x's seed: dy affine in x makes the training dx cancel to ~eps/var, all rounding. */
    lu_tensor *dy = tu_rand(LU_F32, ndim, shape, -1, 1, 900 + (uint64_t)C), *dx = empty(LU_F32, ndim, shape);
    lu_tensor *dw = affine ? empty(LU_F32, 1, &shape[1]) : NULL, *db = affine ? empty(LU_F32, 1, &shape[1]) : NULL;
    char bwhat[180];
    snprintf(bwhat, sizeof bwhat, "%s backward", what);
    kcase k = {.op = LU_OP_BATCHNORM, .backward = true, .params = &p,
               .in = {dy, NULL, NULL, x, w, b, rm, rv, y, mean, inv}, .n_in = 11, .out = {dx, dw, db, NULL, NULL},
               .n_out = 5, .dev_dt = dev_dt, .tol = tol};
    check_case(&k, bwhat);
    check_deterministic(&k, bwhat);
    release_all((lu_tensor *[]){x, w, b, rm, rv, y, mean, inv, dy, dx, dw, db}, 12);
}

Test(cuda_conv, batchnorm_matches_cpu_in_training_and_eval)
{
    require_gpu();
    for (int t = 0; t < 2; t++) {
        check_batchnorm(3, (int64_t[]){4, 3, 17}, t, true, LU_F32, TOL_F32);
        check_batchnorm(2, (int64_t[]){7, 5}, t, false, LU_F32, TOL_F32);
        check_batchnorm(4, (int64_t[]){2, 3, 5, 7}, t, true, LU_F32, TOL_F32);
        check_batchnorm(3, (int64_t[]){2, 384, 500}, t, true, LU_F32, TOL_F32);
        check_batchnorm(3, (int64_t[]){4, 3, 17}, t, true, LU_BF16, TOL_BF16);
    }
}

Test(cuda_conv, batchnorm_propagates_inf_as_the_cpu)
{
    require_gpu();
    for (int t = 0; t < 2; t++) {
        lu_batchnorm_params p = {t, 0.1, 1e-5};
        lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 9), -1, 1, 720);
        ((float *)lu_tensor_data(x))[4] = INFINITY; /* channel 0 */
        lu_tensor *rm = lu_tensor_zeros(LU_F32, LU_SHAPE(3), LU_CPU);
        lu_tensor *rv = lu_tensor_full(LU_F32, LU_SHAPE(3), LU_CPU, 1);
        lu_tensor *y = empty(LU_F32, LU_SHAPE(2, 3, 9)), *mean = empty(LU_F32, LU_SHAPE(3));
        lu_tensor *inv = empty(LU_F32, LU_SHAPE(3));
        kcase f = {.op = LU_OP_BATCHNORM, .inplace = true, .params = &p, .in = {x, NULL, NULL, rm, rv}, .n_in = 5,
                   .out = {y, mean, inv}, .n_out = 3, .dev_dt = LU_F32, .tol = TOL_F32};
        check_case(&f, t ? "batchnorm training with an Inf" : "batchnorm eval with an Inf");
        release_all((lu_tensor *[]){x, rm, rv, y, mean, inv}, 6);
    }
}

/* ---- decimate, upsample, downsample ---- */

static void check_resample(lu_op op, int ndim, const int64_t *shape, int dim, int factor, int64_t out_len,
                           lu_dtype dev_dt, double tol)
{
    lu_resample_params p = {dim, factor, out_len};
    int64_t yshape[LU_MAX_DIMS];
    memcpy(yshape, shape, (size_t)ndim * sizeof *shape);
    yshape[dim] = op == LU_OP_DECIMATE ? (shape[dim] + factor - 1) / factor : out_len;
    lu_tensor *x = tu_rand(LU_F32, ndim, shape, -1, 1, 800 + (uint64_t)factor), *y = empty(LU_F32, ndim, yshape);
    char what[128];
    snprintf(what, sizeof what, "%s %s dim %d factor %d, %lld -> %lld frames", lu_op_name(op), lu_dtype_name(dev_dt),
             dim, factor, (long long)shape[dim], (long long)yshape[dim]);
    kcase f = {.op = op, .params = &p, .in = {x}, .n_in = 1, .out = {y}, .n_out = 1, .dev_dt = dev_dt, .tol = 0};
    check_case(&f, what);
    cpu_forward(op, &x, 1, &y, 1, &p);
    lu_tensor *dy = tu_rand(LU_F32, ndim, yshape, -1, 1, 810), *dx = empty(LU_F32, ndim, shape);
    kcase k = {.op = op, .backward = true, .params = &p, .in = {dy, x, y}, .n_in = 3, .out = {dx}, .n_out = 1,
               .dev_dt = dev_dt, .tol = op == LU_OP_DECIMATE ? 0 : tol};
    check_case(&k, what);
    release_all((lu_tensor *[]){x, y, dy, dx}, 4);
}

Test(cuda_conv, decimate_and_upsample_match_cpu)
{
    require_gpu();
    for (int d = 0; d < 2; d++) {
        lu_dtype dt = d ? LU_BF16 : LU_F32;
        double tol = d ? TOL_BF16 : TOL_F32;
        check_resample(LU_OP_DECIMATE, 3, (int64_t[]){2, 17, 5}, 1, 2, 0, dt, tol);
        check_resample(LU_OP_DECIMATE, 3, (int64_t[]){2, 17, 5}, 1, 3, 0, dt, tol);
        check_resample(LU_OP_DECIMATE, 2, (int64_t[]){9, 4}, 0, 4, 0, dt, tol);
        check_resample(LU_OP_DECIMATE, 3, (int64_t[]){2, 3, 1}, 2, 2, 0, dt, tol);
        check_resample(LU_OP_UPSAMPLE, 3, (int64_t[]){2, 9, 5}, 1, 2, 17, dt, tol);
        check_resample(LU_OP_UPSAMPLE, 3, (int64_t[]){2, 9, 5}, 1, 2, 18, dt, tol);
        check_resample(LU_OP_UPSAMPLE, 3, (int64_t[]){2, 9, 5}, 1, 3, 25, dt, tol);
        check_resample(LU_OP_UPSAMPLE, 2, (int64_t[]){4, 3}, 1, 4, 10, dt, tol);
        check_resample(LU_OP_UPSAMPLE, 3, (int64_t[]){2, 1, 5}, 1, 2, 1, dt, tol);
    }
}

Test(cuda_conv, decimate_and_upsample_move_integers_exactly)
{
    require_gpu();
    lu_tensor *base = tu_randint(LU_I64, LU_SHAPE(3, 11, 2), 1000, 820);
    for (int u = 0; u < 2; u++) {
        lu_op op = u ? LU_OP_UPSAMPLE : LU_OP_DECIMATE;
        lu_resample_params p = {1, 3, u ? 31 : 0};
        lu_tensor *y = empty(LU_I64, LU_SHAPE(3, u ? 31 : 4, 2));
        kcase f = {.op = op, .params = &p, .in = {base}, .n_in = 1, .out = {y}, .n_out = 1, .dev_dt = LU_F32, .tol = 0};
        check_case(&f, u ? "upsample i64" : "decimate i64");
        lu_tensor_release(y);
    }
    lu_tensor_release(base);
}

static void check_downsample(int64_t B, int64_t T, int64_t C, int64_t f, lu_dtype dev_dt, double tol)
{
    int64_t To = (T + f - 1) / f;
    lu_resample_params p = {1, (int)f, 0};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(B, T, C), -1, 1, 830 + (uint64_t)T);
    lu_tensor *bias = tu_rand(LU_F32, LU_SHAPE(f), -1, 1, 831 + (uint64_t)f), *y = empty(LU_F32, LU_SHAPE(B, To, C));
    char what[128];
    snprintf(what, sizeof what, "downsample %s [%lld, %lld, %lld] factor %lld", lu_dtype_name(dev_dt), (long long)B,
             (long long)T, (long long)C, (long long)f);
    kcase fw = {.op = LU_OP_DOWNSAMPLE, .params = &p, .in = {x, bias}, .n_in = 2, .out = {y}, .n_out = 1,
                .dev_dt = dev_dt, .tol = tol};
    check_case(&fw, what);
    cpu_forward(LU_OP_DOWNSAMPLE, (lu_tensor *[]){x, bias}, 2, &y, 1, &p);
    lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(B, To, C), -1, 1, 832), *dx = empty(LU_F32, LU_SHAPE(B, T, C));
    lu_tensor *db = empty(LU_F32, LU_SHAPE(f));
    kcase k = {.op = LU_OP_DOWNSAMPLE, .backward = true, .params = &p, .in = {dy, x, bias, y}, .n_in = 4,
               .out = {dx, db}, .n_out = 2, .dev_dt = dev_dt, .tol = tol};
    check_case(&k, what);
    check_deterministic(&k, what);
    release_all((lu_tensor *[]){x, bias, y, dy, dx, db}, 6);
}

Test(cuda_conv, downsample_matches_cpu)
{
    require_gpu();
    check_downsample(2, 17, 7, 2, LU_F32, TOL_F32);
    check_downsample(2, 17, 7, 3, LU_F32, TOL_F32);
    check_downsample(3, 16, 5, 4, LU_F32, TOL_F32);
    check_downsample(1, 1, 5, 2, LU_F32, TOL_F32);
    check_downsample(2, 9, 3, 1, LU_F32, TOL_F32);
    check_downsample(4, 500, 384, 2, LU_F32, TOL_F32); /* several partial-sum chunks */
    check_downsample(2, 17, 7, 3, LU_BF16, TOL_BF16);
}

/* C % 4 == 0 and f <= 8: the vector kernels (the others above take the general ones, as f 9). */
Test(cuda_conv, downsample_vector_path_matches_cpu)
{
    require_gpu();
    check_downsample(2, 37, 8, 2, LU_F32, TOL_F32);
    check_downsample(2, 37, 12, 3, LU_F32, TOL_F32);
    check_downsample(3, 16, 4, 4, LU_F32, TOL_F32);
    check_downsample(2, 17, 8, 8, LU_F32, TOL_F32);
    check_downsample(1, 1, 8, 2, LU_F32, TOL_F32);
    check_downsample(2, 9, 4, 1, LU_F32, TOL_F32);
    check_downsample(2, 37, 8, 9, LU_F32, TOL_F32);
    check_downsample(32, 500, 384, 2, LU_F32, TOL_F32); /* the benchmark's shape */
    check_downsample(32, 500, 384, 2, LU_BF16, TOL_BF16);
    check_downsample(2, 37, 8, 3, LU_BF16, TOL_BF16);
    check_downsample(3, 37, 12, 2, LU_BF16, TOL_BF16); /* 4 channels an access: C % 8 != 0 */
    check_downsample(3, 41, 24, 4, LU_BF16, TOL_BF16);
    check_downsample(3, 41, 24, 8, LU_F32, TOL_F32);
}

/* ---- dropout ---- */

/* x in [0.5, 1.5): an output is zero exactly where the element was dropped. */
static void check_dropout(double prob, uint64_t seed, uint64_t step, uint32_t op_id, int64_t n, lu_dtype dev_dt,
                          double tol)
{
    lu_dropout_params p = {prob, seed, step, op_id};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(n), 0.5, 1.5, 900), *y = empty(LU_F32, LU_SHAPE(n));
    char what[128];
    snprintf(what, sizeof what, "dropout %s p %g, %lld elements", lu_dtype_name(dev_dt), prob, (long long)n);
    lu_tensor *dx = to_device(x, dev_dt), *dy = lu_tensor_empty(dev_dt, LU_SHAPE(n), LU_CUDA);
    cr_assert(dy, "%s", lu_error_message());
    cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_DROPOUT, &dx, 1, &dy, 1, &p), LU_OK, "%s", lu_error_message());
    kcase f = {.op = LU_OP_DROPOUT, .params = &p, .in = {x}, .n_in = 1, .out = {y}, .n_out = 1, .dev_dt = dev_dt,
               .tol = tol};
    check_case(&f, what);
    /* The mask, element by element, against the CPU's output and against core/rng.c. */
    double *g = tu_to_doubles(dy), *c = tu_to_doubles(y);
    int64_t dropped = 0;
    for (int64_t i = 0; i < n; i++) {
        bool drop = (double)lu_rng_uniform(seed, step, op_id, (uint64_t)i) < prob;
        cr_assert_eq(g[i] == 0, drop, "%s: element %lld is %g on cuda, dropped %d by the generator", what, (long long)i,
                     g[i], drop);
        cr_assert_eq(c[i] == 0, drop, "%s: element %lld is %g on cpu", what, (long long)i, c[i]);
        dropped += drop;
    }
    cr_assert(fabs((double)dropped / (double)n - prob) < 0.05, "%s: %lld dropped", what, (long long)dropped);
    free(g);
    free(c);
    lu_tensor *gy = tu_rand(LU_F32, LU_SHAPE(n), -1, 1, 901), *gx = empty(LU_F32, LU_SHAPE(n));
    kcase k = {.op = LU_OP_DROPOUT, .backward = true, .params = &p, .in = {gy, x, y}, .n_in = 3, .out = {gx},
               .n_out = 1, .dev_dt = dev_dt, .tol = tol};
    check_case(&k, what);
    release_all((lu_tensor *[]){x, y, dx, dy, gy, gx}, 6);
}

Test(cuda_conv, dropout_mask_equals_the_cpu_mask_bit_for_bit)
{
    require_gpu();
    check_dropout(0.1, 1234, 7, 3, 1001, LU_F32, 0);
    check_dropout(0.5, 0xDEADBEEFCAFEBABEull, (1ull << 40) | 5, 0xFFFFFFFFu, 4099, LU_F32, 0);
    check_dropout(0.3, 42, 0, 0, 3, LU_F32, 0);
    check_dropout(0.25, 9, 1, 2, 1003, LU_BF16, TOL_BF16);
}

/* ---- rope ---- */

static void check_rope(int64_t B, int64_t T, int64_t H, int64_t D, int rotary_dim, double theta, lu_dtype pos_dt,
                       int64_t max_pos, lu_dtype dev_dt, double tol)
{
    lu_rope_params p = {theta, rotary_dim};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(B, T, H, D), -2, 2, 1000 + (uint64_t)D);
    lu_tensor *pos = tu_randint(pos_dt, LU_SHAPE(B, T), max_pos, 1001), *y = empty(LU_F32, LU_SHAPE(B, T, H, D));
    char what[160];
    snprintf(what, sizeof what, "rope %s [%lld, %lld, %lld, %lld] rotary_dim %d theta %g, %s positions < %lld",
             lu_dtype_name(dev_dt), (long long)B, (long long)T, (long long)H, (long long)D, rotary_dim, theta,
             lu_dtype_name(pos_dt), (long long)max_pos);
    kcase f = {.op = LU_OP_ROPE, .params = &p, .in = {x, pos}, .n_in = 2, .out = {y}, .n_out = 1, .dev_dt = dev_dt,
               .tol = tol};
    check_case(&f, what);
    lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(B, T, H, D), -1, 1, 1002), *dx = empty(LU_F32, LU_SHAPE(B, T, H, D));
    kcase k = {.op = LU_OP_ROPE, .backward = true, .params = &p, .in = {dy, x, pos, y}, .n_in = 4, .out = {dx},
               .n_out = 1, .dev_dt = dev_dt, .tol = tol};
    check_case(&k, what);
    release_all((lu_tensor *[]){x, pos, y, dy, dx}, 5);
}

Test(cuda_conv, rope_matches_cpu_float32_recipe)
{
    require_gpu();
    check_rope(2, 17, 3, 64, 0, 1e6, LU_I64, 40000, LU_F32, TOL_F32);
    check_rope(2, 17, 3, 128, 0, 1e4, LU_I32, 4096, LU_F32, TOL_F32);
    check_rope(1, 5, 2, 80, 32, 1e4, LU_I64, 100, LU_F32, TOL_F32); /* partial rotation, copied tail */
    check_rope(1, 5, 2, 80, 20, 1e4, LU_I64, 100, LU_F32, TOL_F32); /* the same in the general kernel (10 pairs) */
    check_rope(3, 1, 1, 2, 0, 1e6, LU_I32, 7, LU_F32, TOL_F32);
    check_rope(2, 17, 3, 64, 0, 1e6, LU_I64, 40000, LU_BF16, TOL_BF16);
    /* The vector kernel (rd / 2 and d - rd multiples of 8): Qwen3's heads, two tokens a block, an
     * odd token count; a rotation of 128 pairs, a token a block; a copied tail in bf16. */
    check_rope(3, 11, 16, 128, 0, 1e6, LU_I64, 40000, LU_BF16, TOL_BF16);
    check_rope(3, 11, 8, 128, 0, 1e6, LU_I32, 40000, LU_F32, TOL_F32);
    check_rope(1, 3, 2, 256, 0, 1e4, LU_I32, 9000, LU_F32, TOL_F32);
    check_rope(2, 7, 3, 80, 16, 1e4, LU_I64, 500, LU_BF16, TOL_BF16);
}

/* ---- embedding ---- */

static void check_embedding(int64_t V, int64_t D, int ndim, const int64_t *ids_shape, int64_t id_hi, lu_dtype ids_dt,
                            lu_dtype dev_dt, double tol)
{
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(V, D), -1, 1, 1100);
    lu_tensor *ids = tu_randint(ids_dt, ndim, ids_shape, id_hi, 1101);
    int64_t yshape[LU_MAX_DIMS];
    memcpy(yshape, ids_shape, (size_t)ndim * sizeof *ids_shape);
    yshape[ndim] = D;
    lu_tensor *y = empty(LU_F32, ndim + 1, yshape);
    char what[128];
    snprintf(what, sizeof what, "embedding %s [%lld, %lld], %lld %s ids < %lld", lu_dtype_name(dev_dt), (long long)V,
             (long long)D, (long long)lu_tensor_numel(ids), lu_dtype_name(ids_dt), (long long)id_hi);
    kcase f = {.op = LU_OP_EMBEDDING, .in = {w, ids}, .n_in = 2, .out = {y}, .n_out = 1, .dev_dt = dev_dt, .tol = 0};
    check_case(&f, what);
    lu_tensor *dy = tu_rand(LU_F32, ndim + 1, yshape, -1, 1, 1102), *dw = empty(LU_F32, LU_SHAPE(V, D));
    /* The rows are added in the CPU's order: f32 gradients are equal bit for bit. */
    kcase k = {.op = LU_OP_EMBEDDING, .backward = true, .in = {dy, w, ids, y}, .n_in = 4, .out = {dw, NULL},
               .n_out = 2, .dev_dt = dev_dt, .tol = dev_dt == LU_F32 ? 0 : tol};
    check_case(&k, what);
    check_deterministic(&k, what);
    release_all((lu_tensor *[]){w, ids, y, dy, dw}, 5);
}

Test(cuda_conv, embedding_matches_cpu_with_repeated_ids)
{
    require_gpu();
    check_embedding(1000, 67, 2, (int64_t[]){3, 17}, 50, LU_I64, LU_F32, TOL_F32);
    check_embedding(1000, 67, 2, (int64_t[]){3, 17}, 1000, LU_I32, LU_F32, TOL_F32);
    check_embedding(5, 3, 1, (int64_t[]){1}, 5, LU_I32, LU_F32, TOL_F32);
    check_embedding(152064, 8, 2, (int64_t[]){4, 512}, 152064, LU_I64, LU_F32, TOL_F32);
    check_embedding(7, 33, 1, (int64_t[]){2000}, 3, LU_I64, LU_F32, TOL_F32); /* long runs of one id */
    check_embedding(1000, 67, 2, (int64_t[]){3, 17}, 50, LU_I64, LU_BF16, TOL_BF16);
}

Test(cuda_conv, embedding_names_the_first_id_out_of_range)
{
    require_gpu();
    const int64_t bad[2] = {1000, -3};
    for (int d = 0; d < 2; d++) {
        lu_dtype dt = d ? LU_I32 : LU_I64;
        lu_tensor *host = tu_randint(dt, LU_SHAPE(9), 1000, 1110);
        if (dt == LU_I64) ((int64_t *)lu_tensor_data(host))[5] = bad[d];
        else ((int32_t *)lu_tensor_data(host))[5] = (int32_t)bad[d];
        if (dt == LU_I64) ((int64_t *)lu_tensor_data(host))[7] = 5000;
        else ((int32_t *)lu_tensor_data(host))[7] = 5000;
        lu_tensor *ids = to_device(host, LU_F32), *w = lu_tensor_zeros(LU_F32, LU_SHAPE(1000, 4), LU_CUDA);
        lu_tensor *y = lu_tensor_empty(LU_F32, LU_SHAPE(9, 4), LU_CUDA);
        cr_assert(w && y, "%s", lu_error_message());
        cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_EMBEDDING, (lu_tensor *[]){w, ids}, 2, &y, 1, NULL),
                     LU_ERR_INVALID);
        char msg[96];
        snprintf(msg, sizeof msg, "embedding: id %lld at position 5 is outside [0, 1000)", (long long)bad[d]);
        tu_assert_error_contains(msg);
        release_all((lu_tensor *[]){host, ids, w, y}, 4);
    }
}

#else

Test(cuda_conv, skipped_without_cuda) { cr_skip_test("built without LUTHIER_CUDA"); }

#endif
