/* test_cuda_attention.c - the CUDA ATTENTION kernels (cuda/attention.cu) against the CPU backend:
 * forward outputs (o, lse, weights) and every input gradient on odd sizes, with grouped-query
 * heads, causal masks (Tq <, =, > Tk), key-padding masks with a fully padded batch row, packed
 * sequences, returned weights and head dims 64, 128 and others; f32, bf16 and f16 compared by the
 * normalised error sum((a - b)^2) / sum(b^2) (NaN/Inf mismatches fail); bit-identical reruns; the
 * frontend and autograd on CUDA tensors. 16-bit cases run the CPU in f32 on the same rounded
 * values; those with D == Dv in {64, 128} and no returned weights take the tensor-core kernels
 * (cuda/attention_mma.cu), forward and backward.
 * Kernels are called directly (as tests/test_cuda.c does), the backward on the CPU's forward
 * outputs.
 *
 * The index arithmetic the kernels share (cuda/attention_ranges.h) is checked on the host
 * against a brute-force reading of the CPU's rules, with or without a GPU. Without a GPU the
 * other tests skip and say why; CUDA is first touched inside a test body (Criterion forks). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/attention_ranges.h"
#include "testutil.h"

/* ---- range arithmetic (host) ---- */

/* Does query i see key j before the padding mask: causal, and in the same packed segment (the
 * largest s with cu[s] <= position)? */
static bool ref_sees(int64_t tq, int64_t tk, bool causal, const int32_t *cu, int64_t i, int64_t j)
{
    if (causal && j > i + tk - tq) return false;
    if (!cu) return true;
    int si = 0, sj = 0;
    while (cu[si + 1] <= i) si++;
    while (cu[sj + 1] <= j) sj++;
    return si == sj;
}

typedef struct range_case {
    int64_t tq, tk;
    const int32_t *cu;
    int n_cu;
} range_case;

static const int32_t cu_a[4] = {0, 37, 38, 70}, cu_b[6] = {0, 5, 5, 33, 64, 70}, cu_c[2] = {0, 70};
static const range_case range_cases[] = {
    {1, 1, NULL, 0},   {1, 70, NULL, 0},  {70, 1, NULL, 0},  {17, 70, NULL, 0}, {70, 17, NULL, 0},
    {33, 33, NULL, 0}, {70, 70, cu_a, 4}, {70, 70, cu_b, 6}, {70, 70, cu_c, 2},
};

/* The ranges of a case with cu_seqlens stored as i32 or i64. */
static lu_att_ranges ranges_of(const range_case *c, bool causal, bool i64, int64_t *cu64)
{
    for (int s = 0; s < c->n_cu; s++) cu64[s] = c->cu[s];
    lu_att_ranges r = {c->tq, c->tk, causal, c->cu ? (i64 ? (const void *)cu64 : (const void *)c->cu) : NULL, i64,
                       c->n_cu};
    return r;
}

Test(attention_ranges, key_ranges_follow_the_cpu_rules)
{
    int64_t cu64[8];
    for (size_t n = 0; n < sizeof range_cases / sizeof range_cases[0]; n++)
        for (int variant = 0; variant < 4; variant++) {
            const range_case *c = &range_cases[n];
            bool causal = variant & 1;
            lu_att_ranges r = ranges_of(c, causal, variant & 2, cu64);
            /* Rows past Tq pad the last tile and see nothing. */
            for (int64_t i = 0; i < c->tq + 33; i++) {
                int64_t lo, hi;
                lu_att_key_range(&r, i, &lo, &hi);
                cr_assert(lo <= hi, "case %zu causal %d: row %lld range [%lld, %lld)", n, causal, (long long)i,
                          (long long)lo, (long long)hi);
                for (int64_t j = 0; j < c->tk; j++) {
                    bool want = i < c->tq && ref_sees(c->tq, c->tk, causal, c->cu, i, j);
                    cr_assert_eq(j >= lo && j < hi, want, "case %zu causal %d: query %lld key %lld: range [%lld, %lld)", n,
                                 causal, (long long)i, (long long)j, (long long)lo, (long long)hi);
                }
            }
        }
}

Test(attention_ranges, query_range_holds_every_query_that_sees_the_key_tile)
{
    int64_t cu64[8];
    const int64_t tiles[3] = {32, 1, 5};
    for (size_t n = 0; n < sizeof range_cases / sizeof range_cases[0]; n++)
        for (int variant = 0; variant < 4; variant++)
            for (int t = 0; t < 3; t++) {
                const range_case *c = &range_cases[n];
                bool causal = variant & 1;
                lu_att_ranges r = ranges_of(c, causal, variant & 2, cu64);
                for (int64_t j0 = 0; j0 < c->tk; j0 += tiles[t]) {
                    int64_t j1 = j0 + tiles[t] < c->tk ? j0 + tiles[t] : c->tk, lo, hi;
                    lu_att_query_range(&r, j0, j1, &lo, &hi);
                    cr_assert(0 <= lo && lo <= hi && hi <= c->tq, "case %zu: keys [%lld, %lld) give queries [%lld, %lld)",
                              n, (long long)j0, (long long)j1, (long long)lo, (long long)hi);
                    for (int64_t i = 0; i < c->tq; i++)
                        for (int64_t j = j0; j < j1; j++)
                            if (ref_sees(c->tq, c->tk, causal, c->cu, i, j))
                                cr_assert(i >= lo && i < hi,
                                          "case %zu causal %d: query %lld sees key %lld outside queries [%lld, %lld)", n,
                                          causal, (long long)i, (long long)j, (long long)lo, (long long)hi);
                }
            }
}

#ifdef LUTHIER_HAVE_CUDA

#include "cuda_testutil.h"

#define TOL_F16 1e-5

/* Rounds an f32 CPU tensor in place to the values of dt (bf16, f16; f32 leaves it). */
static void round_to(lu_tensor *t, lu_dtype dt)
{
    if (!t) return;
    float *d = lu_tensor_data(t);
    for (int64_t i = 0; i < lu_tensor_numel(t); i++)
        d[i] = dt == LU_BF16  ? lu_bf16_to_f32(lu_f32_to_bf16(d[i]))
               : dt == LU_F16 ? lu_f16_to_f32(lu_f32_to_f16(d[i]))
                              : d[i];
}

/* An uninitialised tensor on dev. */
static lu_tensor *empty_on(lu_dtype dt, int ndim, const int64_t *shape, lu_device dev)
{
    lu_tensor *t = lu_tensor_empty(dt, ndim, shape, dev);
    cr_assert(t, "%s", lu_error_message());
    return t;
}

/* The attention kernel of dev's backend. */
static lu_status run_attention(lu_device dev, bool backward, lu_tensor **in, int n_in, lu_tensor **out, int n_out,
                               const lu_attention_params *p)
{
    return run_kernel(dev, backward, LU_OP_ATTENTION, in, n_in, out, n_out, p);
}

/* One problem. mask: 0 none, 1 about a fifth of the keys padded, 2 that and every key of batch 0
 * padded (its rows see nothing); bool_mask stores it as bool. cu: packed sequences (b == 1,
 * tq == tk), stored as i64 when cu_i64. */
typedef struct gcase {
    const char *name;
    int b, tq, tk, hq, hkv, d, dv;
    bool causal, weights;
    int mask;
    bool bool_mask;
    const int32_t *cu;
    int n_cu;
    bool cu_i64;
    double scale;  /* 0: 1 / sqrt(d) */
    double k_ramp; /* key j scaled by 1 + k_ramp j: scores that grow along the keys */
} gcase;

#define DIMS(B, TQ, TK, HQ, HKV, D, DV) .b = B, .tq = TQ, .tk = TK, .hq = HQ, .hkv = HKV, .d = D, .dv = DV

/* The CPU inputs, outputs and gradients of a case, and the GPU's. */
typedef struct grun {
    lu_attention_params p;
    lu_tensor *in[5], *out[3], *bin[11], *bout[3];
    int n_out, n_bin;
    lu_tensor *din[5], *dout[3], *dbin[11], *dbout[3];
} grun;

static lu_tensor *make_mask(const gcase *c)
{
    if (!c->mask) return NULL;
    uint8_t *m = malloc((size_t)(c->b * c->tk));
    for (int b = 0; b < c->b; b++)
        for (int j = 0; j < c->tk; j++) m[b * c->tk + j] = (c->mask == 2 && b == 0) || (j * 7 + b * 3) % 5 == 1;
    lu_tensor *t = lu_tensor_from_host(c->bool_mask ? LU_BOOL : LU_U8, LU_SHAPE(c->b, c->tk), LU_CPU, m);
    free(m);
    cr_assert(t, "%s", lu_error_message());
    return t;
}

static lu_tensor *make_cu(const gcase *c)
{
    if (!c->cu) return NULL;
    lu_tensor *t32 = lu_tensor_from_host(LU_I32, LU_SHAPE(c->n_cu), LU_CPU, c->cu);
    lu_tensor *t = c->cu_i64 ? lu_tensor_convert(t32, LU_I64, LU_CPU) : lu_tensor_retain(t32);
    lu_tensor_release(t32);
    cr_assert(t, "%s", lu_error_message());
    return t;
}

/* Runs the CPU forward and backward of the case (inputs rounded to dt) and uploads everything the
 * GPU kernels take; the GPU's outputs are allocated, not computed. */
static void setup(grun *r, const gcase *c, lu_dtype dt, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    r->p = (lu_attention_params){c->causal, c->scale ? c->scale : 1 / sqrt((double)c->d), c->weights};
    int64_t so[4] = {c->b, c->tq, c->hq, c->dv}, sl[3] = {c->b, c->hq, c->tq}, sw[4] = {c->b, c->hq, c->tq, c->tk};
    lu_tensor *q = tu_rand(LU_F32, LU_SHAPE(c->b, c->tq, c->hq, c->d), -2, 2, seed);
    lu_tensor *k = tu_rand(LU_F32, LU_SHAPE(c->b, c->tk, c->hkv, c->d), -2, 2, seed + 1);
    lu_tensor *v = tu_rand(LU_F32, LU_SHAPE(c->b, c->tk, c->hkv, c->dv), -1, 1, seed + 2);
    float *kd = lu_tensor_data(k);
    for (int64_t i = 0, row = (int64_t)c->hkv * c->d; i < lu_tensor_numel(k); i++)
        kd[i] *= (float)(1 + c->k_ramp * (double)(i / row % c->tk));
    round_to(q, dt);
    round_to(k, dt);
    round_to(v, dt);
    lu_tensor *in[5] = {q, k, v, make_mask(c), make_cu(c)};
    memcpy(r->in, in, sizeof in);
    r->n_out = c->weights ? 3 : 2;
    r->out[0] = empty_on(LU_F32, 4, so, LU_CPU);
    r->out[1] = empty_on(LU_F32, 3, sl, LU_CPU);
    if (c->weights) r->out[2] = empty_on(LU_F32, 4, sw, LU_CPU);
    cr_assert_eq(run_attention(LU_CPU, false, r->in, 5, r->out, r->n_out, &r->p), LU_OK, "%s cpu forward: %s", c->name,
                 lu_error_message());

    /* Backward inputs [dO, dlse, (dW,) q, k, v, mask, cu, o, lse, (w)]. */
    lu_tensor *dO = tu_rand(LU_F32, 4, so, -1, 1, seed + 3);
    lu_tensor *dW = c->weights ? tu_rand(LU_F32, 4, sw, -1, 1, seed + 4) : NULL;
    round_to(dO, dt);
    round_to(dW, dt);
    int n = 0;
    r->bin[n++] = dO;
    r->bin[n++] = NULL;
    if (c->weights) r->bin[n++] = dW;
    for (int i = 0; i < 5; i++) r->bin[n++] = lu_tensor_retain(r->in[i]);
    for (int j = 0; j < r->n_out; j++) r->bin[n++] = lu_tensor_retain(r->out[j]);
    r->n_bin = n;
    r->bout[0] = empty_on(LU_F32, 4, q->shape, LU_CPU);
    r->bout[1] = empty_on(LU_F32, 4, k->shape, LU_CPU);
    r->bout[2] = empty_on(LU_F32, 4, v->shape, LU_CPU);
    cr_assert_eq(run_attention(LU_CPU, true, r->bin, r->n_bin, r->bout, 3, &r->p), LU_OK, "%s cpu backward: %s", c->name,
                 lu_error_message());

    for (int i = 0; i < 5; i++) r->din[i] = to_device(r->in[i], dt);
    for (int i = 0; i < r->n_bin; i++) r->dbin[i] = to_device(r->bin[i], dt);
    /* lse stays f32 on the device (the frontend's choice for 16-bit inputs). */
    lu_tensor_release(r->dbin[r->n_bin - r->n_out + 1]);
    r->dbin[r->n_bin - r->n_out + 1] = to_device(r->out[1], LU_F32);
    for (int j = 0; j < r->n_out; j++)
        r->dout[j] = empty_on(j == 1 ? LU_F32 : dt, r->out[j]->ndim, r->out[j]->shape, LU_CUDA);
    for (int i = 0; i < 3; i++) r->dbout[i] = empty_on(dt, 4, r->bout[i]->shape, LU_CUDA);
}

static void run_gpu(grun *r, const char *name)
{
    cr_assert_eq(run_attention(LU_CUDA, false, r->din, 5, r->dout, r->n_out, &r->p), LU_OK, "%s cuda forward: %s", name,
                 lu_error_message());
    cr_assert_eq(run_attention(LU_CUDA, true, r->dbin, r->n_bin, r->dbout, 3, &r->p), LU_OK, "%s cuda backward: %s", name,
                 lu_error_message());
}

static void teardown(grun *r)
{
    release_all(r->in, 5);
    release_all(r->out, 3);
    release_all(r->bin, 11);
    release_all(r->bout, 3);
    release_all(r->din, 5);
    release_all(r->dout, 3);
    release_all(r->dbin, 11);
    release_all(r->dbout, 3);
}

static void check_attention(const gcase *c, lu_dtype dt, double tol)
{
    static const char *outs[3] = {"o", "lse", "weights"}, *grads[3] = {"dq", "dk", "dv"};
    grun r;
    setup(&r, c, dt, 1000);
    run_gpu(&r, c->name);
    char what[160];
    for (int j = 0; j < r.n_out; j++) {
        snprintf(what, sizeof what, "%s %s: %s", c->name, lu_dtype_name(dt), outs[j]);
        assert_nmse(r.dout[j], r.out[j], tol, what);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "%s %s: %s", c->name, lu_dtype_name(dt), grads[i]);
        assert_nmse(r.dbout[i], r.bout[i], tol, what);
    }
    teardown(&r);
}

static void check_cases(const gcase *cs, size_t n, lu_dtype dt, double tol)
{
    for (size_t i = 0; i < n; i++) check_attention(&cs[i], dt, tol);
}

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* cu_seqlens: three sequences of odd lengths; and one with an empty segment. */
static const int32_t cu3[4] = {0, 37, 38, 129}, cu_empty[5] = {0, 5, 5, 60, 77};

static const gcase sizes[] = {
    {.name = "17x17 4/4 d64", DIMS(2, 17, 17, 4, 4, 64, 64)},
    {.name = "1x129 8/2 d128", DIMS(1, 1, 129, 8, 2, 128, 128)},
    {.name = "129x300 8/2 d80", DIMS(2, 129, 300, 8, 2, 80, 80)},
    {.name = "300x17 4/4 d64 dv48", DIMS(1, 300, 17, 4, 4, 64, 48)},
    {.name = "1x1 8/2 d64", DIMS(3, 1, 1, 8, 2, 64, 64)},
    {.name = "33x65 2/1 d256 dv200", DIMS(1, 33, 65, 2, 1, 256, 200)},
    {.name = "20x31 3/1 d7 dv5", DIMS(1, 20, 31, 3, 1, 7, 5)},
};

static const gcase causal[] = {
    {.name = "causal 129x129 8/2 d64", DIMS(2, 129, 129, 8, 2, 64, 64), .causal = true},
    {.name = "causal 17x300 4/4 d128", DIMS(1, 17, 300, 4, 4, 128, 128), .causal = true},
    {.name = "causal 300x129 8/2 d80 (leading rows empty)", DIMS(1, 300, 129, 8, 2, 80, 80), .causal = true},
    {.name = "causal 1x17 4/4 d64", DIMS(2, 1, 17, 4, 4, 64, 64), .causal = true},
};

static const gcase masked[] = {
    {.name = "mask 129x129 4/4 d64, batch 0 fully padded", DIMS(3, 129, 129, 4, 4, 64, 64), .mask = 2},
    {.name = "mask causal 17x300 8/2 d128", DIMS(2, 17, 300, 8, 2, 128, 128), .causal = true, .mask = 1},
    {.name = "bool mask 33x40 4/2 d80", DIMS(2, 33, 40, 4, 2, 80, 80), .mask = 2, .bool_mask = true},
};

static const gcase packed[] = {
    {.name = "cu 3 seqs 129 8/2 d64", DIMS(1, 129, 129, 8, 2, 64, 64), .cu = cu3, .n_cu = 4},
    {.name = "cu 3 seqs causal 129 8/2 d64", DIMS(1, 129, 129, 8, 2, 64, 64), .causal = true, .cu = cu3, .n_cu = 4},
    {.name = "cu i64 empty segment causal mask 77 4/4 d80", DIMS(1, 77, 77, 4, 4, 80, 80), .causal = true, .mask = 1,
     .cu = cu_empty, .n_cu = 5, .cu_i64 = true},
};

static const gcase with_weights[] = {
    {.name = "weights 17x129 4/4 d64 mask", DIMS(2, 17, 129, 4, 4, 64, 64), .weights = true, .mask = 2},
    {.name = "weights causal 300x300 4/4 d80", DIMS(1, 300, 300, 4, 4, 80, 80), .causal = true, .weights = true},
    {.name = "weights cu causal 129 8/2 d64", DIMS(1, 129, 129, 8, 2, 64, 64), .causal = true, .weights = true,
     .cu = cu3, .n_cu = 4},
};

static const gcase half_cases[] = {
    {.name = "17x17 4/4 d64", DIMS(2, 17, 17, 4, 4, 64, 64)},
    {.name = "causal mask 129x300 8/2 d128", DIMS(2, 129, 300, 8, 2, 128, 128), .causal = true, .mask = 2},
    {.name = "cu 3 seqs causal 129 8/2 d80", DIMS(1, 129, 129, 8, 2, 80, 80), .causal = true, .cu = cu3, .n_cu = 4},
    {.name = "weights 17x129 4/4 d64 mask", DIMS(2, 17, 129, 4, 4, 64, 64), .weights = true, .mask = 1},
};

Test(cuda_attention, odd_sizes_match_cpu_f32) { require_gpu(); check_cases(sizes, N_OF(sizes), LU_F32, TOL_F32); }
Test(cuda_attention, causal_matches_cpu_f32) { require_gpu(); check_cases(causal, N_OF(causal), LU_F32, TOL_F32); }
Test(cuda_attention, key_padding_masks_match_cpu_f32) { require_gpu(); check_cases(masked, N_OF(masked), LU_F32, TOL_F32); }
Test(cuda_attention, packed_sequences_match_cpu_f32) { require_gpu(); check_cases(packed, N_OF(packed), LU_F32, TOL_F32); }
Test(cuda_attention, returned_weights_and_their_gradient_match_cpu_f32)
{
    require_gpu();
    check_cases(with_weights, N_OF(with_weights), LU_F32, TOL_F32);
}
Test(cuda_attention, bf16_within_bf16_rounding)
{
    require_gpu();
    check_cases(half_cases, N_OF(half_cases), LU_BF16, TOL_BF16);
}
Test(cuda_attention, f16_within_f16_rounding) { require_gpu(); check_cases(half_cases, N_OF(half_cases), LU_F16, TOL_F16); }
Test(cuda_attention, sizes_bf16_within_bf16_rounding) { require_gpu(); check_cases(sizes, N_OF(sizes), LU_BF16, TOL_BF16); }

/* The tensor-core kernels (16-bit, D == Dv in {64, 128}, no returned weights): lengths that end
 * inside a tile of 64, single rows and keys, query heads 16/8, 4/2 and 4/4, and every mask. */
static const gcase mma_cases[] = {
    {.name = "mma 129x129 16/8 d128", DIMS(1, 129, 129, 16, 8, 128, 128)},
    {.name = "mma causal 300x300 4/2 d128", DIMS(1, 300, 300, 4, 2, 128, 128), .causal = true},
    {.name = "mma causal 129x129 4/4 d64", DIMS(2, 129, 129, 4, 4, 64, 64), .causal = true},
    {.name = "mma 300x300 4/4 d64", DIMS(1, 300, 300, 4, 4, 64, 64)},
    {.name = "mma 1x77 4/4 d64", DIMS(2, 1, 77, 4, 4, 64, 64)},
    {.name = "mma causal 1x77 16/8 d128", DIMS(1, 1, 77, 16, 8, 128, 128), .causal = true},
    {.name = "mma 77x1 4/4 d128", DIMS(2, 77, 1, 4, 4, 128, 128)},
    {.name = "mma causal 77x1 16/8 d64 (leading rows empty)", DIMS(1, 77, 1, 16, 8, 64, 64), .causal = true},
    {.name = "mma mask 129x300 4/4 d64, batch 0 fully padded", DIMS(2, 129, 300, 4, 4, 64, 64), .mask = 2},
    {.name = "mma mask causal 300x129 4/2 d128", DIMS(2, 300, 129, 4, 2, 128, 128), .causal = true, .mask = 1},
    {.name = "mma cu 3 seqs 129 16/8 d128", DIMS(1, 129, 129, 16, 8, 128, 128), .cu = cu3, .n_cu = 4},
    {.name = "mma cu i64 empty segment causal mask 77 4/4 d64", DIMS(1, 77, 77, 4, 4, 64, 64), .causal = true,
     .mask = 1, .cu = cu_empty, .n_cu = 5, .cu_i64 = true},
    /* Scores growing along the keys, several times past the forward's slack (ATT_SLACK). */
    {.name = "mma causal 300x300 4/4 d128, growing scores", DIMS(1, 300, 300, 4, 4, 128, 128), .causal = true,
     .k_ramp = 0.05},
    {.name = "mma 300x300 4/4 d64, growing scores", DIMS(2, 300, 300, 4, 4, 64, 64), .k_ramp = 0.05},
    /* A negative scale leaves the tensor cores to the general kernels (lu_att_mma_takes). */
    {.name = "mma causal 129x129 4/4 d64, negative scale", DIMS(1, 129, 129, 4, 4, 64, 64), .causal = true,
     .scale = -0.3},
};

Test(cuda_attention, tensor_core_path_bf16_within_bf16_rounding)
{
    require_gpu();
    check_cases(mma_cases, N_OF(mma_cases), LU_BF16, TOL_BF16);
}
Test(cuda_attention, tensor_core_path_f16_within_f16_rounding)
{
    require_gpu();
    check_cases(mma_cases, N_OF(mma_cases), LU_F16, TOL_F16);
}

/* The mma.sync forward's two tilings, 16 and 32 query rows a warp (FlashAttention-2's and the
 * default; LUTHIER_ATT_ROWS_PER_WARP=16 takes the other; LUTHIER_ATT_WGMMA=0 keeps a Hopper GPU,
 * and the emulator, which plays one, on them): every row is computed
 * by the same operations in the same order, so o and lse agree bit for bit, except in packed
 * sequences, where a block's first key tile starts at the union of its rows' key ranges, which
 * depends on how many rows a block holds (the online softmax then groups keys otherwise). */
static void check_rows_per_warp_agree(const gcase *c, lu_dtype dt)
{
    grun r;
    setup(&r, c, dt, 3000);
    setenv("LUTHIER_ATT_WGMMA", "0", 1);
    setenv("LUTHIER_ATT_ROWS_PER_WARP", "16", 1);
    cr_assert_eq(run_attention(LU_CUDA, false, r.din, 5, r.dout, r.n_out, &r.p), LU_OK, "%s: %s", c->name,
                 lu_error_message());
    lu_tensor *first[2];
    for (int j = 0; j < 2; j++) first[j] = lu_tensor_convert(r.dout[j], r.dout[j]->dtype, LU_CPU);
    setenv("LUTHIER_ATT_ROWS_PER_WARP", "32", 1);
    cr_assert_eq(run_attention(LU_CUDA, false, r.din, 5, r.dout, r.n_out, &r.p), LU_OK, "%s, 32 rows a warp: %s",
                 c->name, lu_error_message());
    unsetenv("LUTHIER_ATT_ROWS_PER_WARP");
    unsetenv("LUTHIER_ATT_WGMMA");
    char what[160];
    for (int j = 0; j < 2; j++) {
        snprintf(what, sizeof what, "%s %s: output %d with 32 rows a warp", c->name, lu_dtype_name(dt), j);
        tu_assert_tensors_close(r.dout[j], first[j], 0, 0, what);
    }
    release_all(first, 2);
    teardown(&r);
}

Test(cuda_attention, tensor_core_forward_with_16_and_32_rows_a_warp)
{
    require_gpu();
    for (size_t i = 0; i < N_OF(mma_cases) && !RACE_CHECKER_PASS; i++) /* both tilings run below */
        if (!mma_cases[i].cu) {
            check_rows_per_warp_agree(&mma_cases[i], LU_BF16);
            if (!ON_EMULATOR) check_rows_per_warp_agree(&mma_cases[i], LU_F16);
        }
    /* Every case against the CPU with both tilings, forward and backward on mma.sync (the other
     * tests run the default, the wgmma forward and dK/dV on a Hopper GPU and in the emulator). */
    setenv("LUTHIER_ATT_WGMMA", "0", 1);
    check_cases(mma_cases, N_OF(mma_cases), LU_F16, TOL_F16);
    setenv("LUTHIER_ATT_ROWS_PER_WARP", "16", 1);
    check_cases(mma_cases, N_OF(mma_cases), LU_BF16, TOL_BF16);
    unsetenv("LUTHIER_ATT_ROWS_PER_WARP");
    unsetenv("LUTHIER_ATT_WGMMA");
}

/* The wgmma forward (attention_wgmma.cu) with the warpgroup count a block that its head dim does
 * not take by default (LUTHIER_ATT_WGMMA_GROUPS: 1 at d 128, 2 at d 64), every case against the
 * CPU in both 16-bit dtypes (bf16 alone on the emulator: ON_EMULATOR). */
Test(cuda_attention, tensor_core_forward_with_the_other_warpgroup_count)
{
    require_gpu();
    for (size_t i = 0; i < N_OF(mma_cases); i++) {
        setenv("LUTHIER_ATT_WGMMA_GROUPS", mma_cases[i].d == 64 ? "2" : "1", 1);
        check_attention(&mma_cases[i], LU_BF16, TOL_BF16);
        if (!ON_EMULATOR) check_attention(&mma_cases[i], LU_F16, TOL_F16);
    }
    unsetenv("LUTHIER_ATT_WGMMA_GROUPS");
}

/* The backward's variant kernels, every tensor-core case against the CPU in both 16-bit dtypes (bf16
 * alone on the emulator: ON_EMULATOR):
 * dK/dV with 128 keys a block (LUTHIER_ATT_DKDV_KEYS=128; the default takes 64; on mma.sync, which
 * LUTHIER_ATT_WGMMA=0 keeps a Hopper GPU and the emulator on), and dQ with 32 query rows a warp and
 * 32 keys a tile (LUTHIER_ATT_DQ_ROWS_PER_WARP=32; the default: 16 and 64). */
static void check_backward_variant(const char *var, const char *value)
{
    setenv(var, value, 1);
    setenv("LUTHIER_ATT_WGMMA", "0", 1);
    check_cases(mma_cases, N_OF(mma_cases), LU_BF16, TOL_BF16);
    if (!ON_EMULATOR) check_cases(mma_cases, N_OF(mma_cases), LU_F16, TOL_F16);
    unsetenv("LUTHIER_ATT_WGMMA");
    unsetenv(var);
}

Test(cuda_attention, tensor_core_backward_with_128_keys_a_block)
{
    require_gpu();
    check_backward_variant("LUTHIER_ATT_DKDV_KEYS", "128");
}

/* On a device that cannot give a block the 128-key kernel's 174 KB (an A100 opts in to 163 KB;
 * the emulator plays one through LU_EMU_OPTIN_SMEM), LUTHIER_ATT_DKDV_KEYS=128 keeps the 64-key
 * kernel instead of failing. */
Test(cuda_attention, tensor_core_backward_with_128_keys_falls_back_where_shared_memory_is_short)
{
    require_gpu();
    setenv("LU_EMU_OPTIN_SMEM", "166912", 1);
    setenv("LUTHIER_ATT_DKDV_KEYS", "128", 1);
    setenv("LUTHIER_ATT_WGMMA", "0", 1);
    check_cases(&mma_cases[1], 1, LU_BF16, TOL_BF16); /* causal 300x300 4/2 d128 */
    unsetenv("LUTHIER_ATT_WGMMA");
    unsetenv("LUTHIER_ATT_DKDV_KEYS");
    unsetenv("LU_EMU_OPTIN_SMEM");
}

Test(cuda_attention, tensor_core_dq_with_32_rows_a_warp)
{
    require_gpu();
    check_backward_variant("LUTHIER_ATT_DQ_ROWS_PER_WARP", "32");
}

/* Two runs on the same inputs give the same bits (no atomics, fixed summation orders). */
static void check_attention_deterministic(const gcase *c, lu_dtype dt)
{
    grun r;
    setup(&r, c, dt, 2000);
    run_gpu(&r, c->name);
    lu_tensor *first[6];
    for (int j = 0; j < 3; j++) first[j] = r.dout[j] ? lu_tensor_convert(r.dout[j], r.dout[j]->dtype, LU_CPU) : NULL;
    for (int i = 0; i < 3; i++) first[3 + i] = lu_tensor_convert(r.dbout[i], r.dbout[i]->dtype, LU_CPU);
    run_gpu(&r, c->name);
    char what[160];
    for (int j = 0; j < 6; j++) {
        lu_tensor *again = j < 3 ? r.dout[j] : r.dbout[j - 3];
        if (!again) continue;
        snprintf(what, sizeof what, "%s %s: rerun of output %d", c->name, lu_dtype_name(dt), j);
        tu_assert_tensors_close(again, first[j], 0, 0, what);
    }
    release_all(first, 6);
    teardown(&r);
}

Test(cuda_attention, reruns_are_bit_identical)
{
    require_gpu();
    skip_under_race_checker("the other tests of this suite");
    const gcase c = {.name = "causal mask weights 129x300 8/2 d64", DIMS(2, 129, 300, 8, 2, 64, 64), .causal = true,
                     .weights = true, .mask = 2};
    check_attention_deterministic(&c, LU_F32);
    check_attention_deterministic(&c, LU_BF16);
    /* Without returned weights, bf16 with D = Dv = 128 takes the tensor-core forward. */
    const gcase t = {.name = "causal mask 129x300 8/2 d128", DIMS(2, 129, 300, 8, 2, 128, 128), .causal = true, .mask = 2};
    check_attention_deterministic(&t, LU_BF16);
}

Test(cuda_attention, tensor_core_backward_reruns_are_bit_identical)
{
    require_gpu();
    skip_under_race_checker("the tensor_core_path tests");
    const gcase c = {.name = "mma causal mask 300x300 4/2 d128", DIMS(2, 300, 300, 4, 2, 128, 128), .causal = true,
                     .mask = 1};
    check_attention_deterministic(&c, LU_BF16);
    const gcase p = {.name = "mma cu causal 129 4/4 d64", DIMS(1, 129, 129, 4, 4, 64, 64), .causal = true, .cu = cu3,
                     .n_cu = 4};
    check_attention_deterministic(&p, LU_F16);
}

/* ---- through the frontend and autograd ---- */

/* y = lu_attention(q, k, v) + lu_attention_apply(weights, v) (or the attention alone) on device
 * tensors, backward from a fixed random dy: the output's gradient and the weights' both reach the
 * attention backward. */
static void frontend_grads(lu_device dev, lu_dtype dt, lu_tensor *const host[3], lu_tensor *mask, bool weights,
                           lu_tensor *out[4])
{
    lu_tensor *x[3], *m = mask ? lu_tensor_convert(mask, mask->dtype, dev) : NULL;
    for (int i = 0; i < 3; i++) {
        x[i] = lu_tensor_convert(host[i], dt, dev);
        cr_assert(x[i], "%s", lu_error_message());
        lu_tensor_set_requires_grad(x[i], true);
    }
    lu_tensor *w = NULL;
    lu_attention_opts opts = {.causal = true, .key_padding_mask = m, .weights_out = weights ? &w : NULL};
    lu_tensor *o = lu_attention(x[0], x[1], x[2], &opts);
    lu_tensor *o2 = weights ? lu_attention_apply(w, x[2]) : NULL, *y = weights ? lu_add(o, o2) : lu_tensor_retain(o);
    cr_assert(y, "%s", lu_error_message());
    lu_tensor *dy = tu_rand(LU_F32, 4, y->shape, -1, 1, 77), *dyd = lu_tensor_convert(dy, dt, dev);
    cr_assert_eq(lu_backward_from(y, dyd), LU_OK, "%s", lu_error_message());
    out[0] = lu_tensor_convert(y, LU_F32, LU_CPU);
    for (int i = 0; i < 3; i++) out[1 + i] = lu_tensor_convert(x[i]->grad, LU_F32, LU_CPU);
    release_all((lu_tensor *[]){x[0], x[1], x[2], m, w, o, o2, y, dy, dyd}, 10);
}

/* The frontend case in dtype dt with the given mask kind and returned weights or not. */
static void check_frontend(lu_dtype dt, double tol, int mask_kind, bool weights)
{
    const gcase c = {.name = "frontend", DIMS(2, 37, 45, 4, 4, 64, 64), .causal = true, .weights = weights,
                     .mask = mask_kind};
    lu_tensor *host[3] = {tu_rand(LU_F32, LU_SHAPE(c.b, c.tq, c.hq, c.d), -2, 2, 90),
                          tu_rand(LU_F32, LU_SHAPE(c.b, c.tk, c.hkv, c.d), -2, 2, 91),
                          tu_rand(LU_F32, LU_SHAPE(c.b, c.tk, c.hkv, c.dv), -1, 1, 92)};
    lu_tensor *mask = make_mask(&c);
    static const char *names[4] = {"output", "dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) round_to(host[i], dt);
    lu_tensor *ref[4], *got[4];
    frontend_grads(LU_CPU, LU_F32, host, mask, weights, ref);
    frontend_grads(LU_CUDA, dt, host, mask, weights, got);
    char what[128];
    for (int i = 0; i < 4; i++) {
        snprintf(what, sizeof what, "frontend %s mask %d %s: %s", lu_dtype_name(dt), mask_kind,
                 weights ? "with weights" : "without weights", names[i]);
        assert_nmse(got[i], ref[i], tol, what);
    }
    release_all(ref, 4);
    release_all(got, 4);
    release_all((lu_tensor *[]){host[0], host[1], host[2], mask}, 4);
}

Test(cuda_attention, frontend_and_autograd_match_cpu_f32) { require_gpu(); check_frontend(LU_F32, TOL_F32, 2, true); }
Test(cuda_attention, frontend_bf16_with_weights) { require_gpu(); check_frontend(LU_BF16, TOL_BF16, 2, true); }
Test(cuda_attention, frontend_bf16_with_weights_no_mask) { require_gpu(); check_frontend(LU_BF16, TOL_BF16, 0, true); }
Test(cuda_attention, frontend_bf16_without_weights) { require_gpu(); check_frontend(LU_BF16, TOL_BF16, 2, false); }

/* The frontend cases at the op level (the CPU's outputs as the GPU backward's inputs), bf16. */
Test(cuda_attention, causal_weights_bf16_within_bf16_rounding)
{
    require_gpu();
    static const gcase cs[] = {
        {.name = "weights causal 37x45 4/4 d64 mask", DIMS(2, 37, 45, 4, 4, 64, 64), .causal = true, .weights = true,
         .mask = 2},
        {.name = "weights causal 300x300 4/4 d80", DIMS(1, 300, 300, 4, 4, 80, 80), .causal = true, .weights = true},
    };
    check_cases(cs, N_OF(cs), LU_BF16, TOL_BF16);
}

/* ---- errors ---- */

Test(cuda_attention, rejects_f64_and_head_dims_over_256)
{
    require_gpu();
    lu_attention_params p = {false, 0.1, false};
    lu_tensor *q = lu_tensor_zeros(LU_F64, LU_SHAPE(1, 3, 2, 4), LU_CUDA);
    lu_tensor *o = lu_tensor_empty(LU_F64, LU_SHAPE(1, 3, 2, 4), LU_CUDA);
    lu_tensor *lse = lu_tensor_empty(LU_F64, LU_SHAPE(1, 2, 3), LU_CUDA);
    cr_assert(q && o && lse, "%s", lu_error_message());
    cr_assert_eq(run_attention(LU_CUDA, false, (lu_tensor *[]){q, q, q, NULL, NULL}, 5, (lu_tensor *[]){o, lse}, 2, &p),
                 LU_ERR_DTYPE);
    tu_assert_error_contains("the cuda backend takes one of f32, bf16, f16");
    lu_tensor *q2 = lu_tensor_zeros(LU_F32, LU_SHAPE(1, 3, 2, 257), LU_CUDA);
    lu_tensor *o2 = lu_tensor_empty(LU_F32, LU_SHAPE(1, 3, 2, 257), LU_CUDA);
    lu_tensor *lse2 = lu_tensor_empty(LU_F32, LU_SHAPE(1, 2, 3), LU_CUDA);
    cr_assert(q2 && o2 && lse2, "%s", lu_error_message());
    cr_assert_eq(
        run_attention(LU_CUDA, false, (lu_tensor *[]){q2, q2, q2, NULL, NULL}, 5, (lu_tensor *[]){o2, lse2}, 2, &p),
        LU_ERR_UNSUPPORTED);
    tu_assert_error_contains("head dims D = 257, Dv = 257");
    release_all((lu_tensor *[]){q, o, lse, q2, o2, lse2}, 6);
}

#else

Test(cuda_attention, skipped_without_cuda) { cr_skip_test("built without LUTHIER_CUDA"); }

#endif
