/* test_attention.c - lu_attention and lu_attention_apply against an explicit float64 reference
 * (scores, masks, softmax, weighted sum) for every option, gradients by finite differences
 * (including losses through the returned weights), thread-count independence, and errors. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* One attention problem: sizes and options; mask and cu_seqlens are host arrays or NULL. */
typedef struct att_case {
    int b, tq, tk, hq, hkv, d, dv;
    bool causal;
    double scale; /* 0: 1/sqrt(d) */
    const uint8_t *mask;
    const int32_t *cu;
    int n_cu;
} att_case;

/* Plain reference: o [B,Tq,Hq,Dv] and weights [B,Hq,Tq,Tk]; rows that see no key are 0. */
static void ref_attention(const att_case *c, const double *q, const double *k, const double *v, double *o, double *w)
{
    double scale = c->scale ? c->scale : 1 / sqrt((double)c->d);
    double *s = malloc((size_t)c->tk * sizeof *s);
    bool *vis = malloc((size_t)c->tk * sizeof *vis);
    for (int b = 0; b < c->b; b++)
        for (int h = 0; h < c->hq; h++)
            for (int i = 0; i < c->tq; i++) {
                int g = h / (c->hq / c->hkv);
                double mx = -INFINITY;
                for (int j = 0; j < c->tk; j++) {
                    vis[j] = !(c->mask && c->mask[b * c->tk + j]) && !(c->causal && j > i + c->tk - c->tq);
                    if (c->cu) {
                        int si = 0, sj = 0;
                        while (c->cu[si + 1] <= i) si++;
                        while (c->cu[sj + 1] <= j) sj++;
                        vis[j] = vis[j] && si == sj;
                    }
                    s[j] = 0;
                    for (int e = 0; e < c->d; e++)
                        s[j] += q[((b * c->tq + i) * c->hq + h) * c->d + e] * k[((b * c->tk + j) * c->hkv + g) * c->d + e];
                    s[j] *= scale;
                    if (vis[j] && s[j] > mx) mx = s[j];
                }
                double z = 0;
                for (int j = 0; j < c->tk; j++) z += vis[j] ? exp(s[j] - mx) : 0;
                double *orow = o + ((b * c->tq + i) * c->hq + h) * c->dv, *wrow = w + ((b * c->hq + h) * c->tq + i) * c->tk;
                for (int e = 0; e < c->dv; e++) orow[e] = 0;
                for (int j = 0; j < c->tk; j++) {
                    wrow[j] = vis[j] ? exp(s[j] - mx) / z : 0;
                    for (int e = 0; e < c->dv; e++) orow[e] += wrow[j] * v[((b * c->tk + j) * c->hkv + g) * c->dv + e];
                }
            }
    free(vis);
    free(s);
}

/* Tensors of a case: q, k, v random (seeded), mask and cu_seqlens from the host arrays. */
typedef struct att_inputs {
    lu_tensor *q, *k, *v, *mask, *cu;
} att_inputs;

static att_inputs make_inputs(const att_case *c, lu_dtype dt, uint64_t seed)
{
    att_inputs in = {tu_rand(dt, LU_SHAPE(c->b, c->tq, c->hq, c->d), -1.5, 1.5, seed),
                     tu_rand(dt, LU_SHAPE(c->b, c->tk, c->hkv, c->d), -1.5, 1.5, seed + 1),
                     tu_rand(dt, LU_SHAPE(c->b, c->tk, c->hkv, c->dv), -1, 1, seed + 2), NULL, NULL};
    if (c->mask) in.mask = lu_tensor_from_host(LU_U8, LU_SHAPE(c->b, c->tk), LU_CPU, c->mask);
    if (c->cu) in.cu = lu_tensor_from_host(LU_I32, LU_SHAPE(c->n_cu), LU_CPU, c->cu);
    return in;
}

static void free_inputs(att_inputs *in)
{
    lu_tensor_release(in->q);
    lu_tensor_release(in->k);
    lu_tensor_release(in->v);
    lu_tensor_release(in->mask);
    lu_tensor_release(in->cu);
}

static lu_attention_opts opts_of(const att_case *c, const att_inputs *in, lu_tensor **weights)
{
    lu_attention_opts o = {c->causal, c->scale, in->mask, in->cu, weights};
    return o;
}

/* Runs the case in dtype dt and compares output and weights with the reference. */
static void check_forward(const att_case *c, lu_dtype dt, double tol, const char *what)
{
    att_inputs in = make_inputs(c, dt, 40);
    lu_tensor *w = NULL;
    lu_attention_opts opts = opts_of(c, &in, &w);
    lu_tensor *o = lu_attention(in.q, in.k, in.v, &opts);
    cr_assert(o && w, "%s: %s", what, lu_error_message());
    int64_t no = (int64_t)c->b * c->tq * c->hq * c->dv, nw = (int64_t)c->b * c->hq * c->tq * c->tk;
    double *q = tu_to_doubles(in.q), *k = tu_to_doubles(in.k), *v = tu_to_doubles(in.v);
    double *ro = malloc((size_t)no * sizeof *ro), *rw = malloc((size_t)(nw + 1) * sizeof *rw);
    ref_attention(c, q, k, v, ro, rw);
    tu_assert_close(o, ro, no, tol, tol, what);
    tu_assert_close(w, rw, nw, tol, tol, what);
    free(q);
    free(k);
    free(v);
    free(ro);
    free(rw);
    lu_tensor_release(o);
    lu_tensor_release(w);
    free_inputs(&in);
}

/* ---- forward ---- */

Test(attention, matches_reference_on_odd_sizes_f64)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 3, .hkv = 3, .d = 6, .dv = 5};
    check_forward(&c, LU_F64, 1e-12, "plain f64");
}

Test(attention, matches_reference_f32)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 4, .hkv = 2, .d = 6, .dv = 6};
    check_forward(&c, LU_F32, 2e-6, "plain f32");
}

Test(attention, grouped_query_heads_share_kv_heads)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 6, .hkv = 2, .d = 6, .dv = 3};
    check_forward(&c, LU_F64, 1e-12, "gqa");
}

Test(attention, multi_query_single_kv_head)
{
    att_case c = {.b = 1, .tq = 4, .tk = 4, .hq = 5, .hkv = 1, .d = 3, .dv = 2, .causal = true};
    check_forward(&c, LU_F64, 1e-12, "mqa");
}

Test(attention, causal_self_attention)
{
    att_case c = {.b = 2, .tq = 7, .tk = 7, .hq = 4, .hkv = 2, .d = 6, .dv = 6, .causal = true};
    check_forward(&c, LU_F64, 1e-12, "causal");
}

Test(attention, causal_with_fewer_queries_aligns_last_query_with_last_key)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 4, .hkv = 2, .d = 6, .dv = 4, .causal = true};
    check_forward(&c, LU_F64, 1e-12, "causal tq < tk");
}

Test(attention, causal_single_query_sees_every_key)
{
    /* The decode step of a KV cache: one query at the end attends to all keys. */
    att_case c = {.b = 1, .tq = 1, .tk = 9, .hq = 2, .hkv = 1, .d = 4, .dv = 4, .causal = true};
    check_forward(&c, LU_F64, 1e-12, "decode step");
}

Test(attention, causal_with_more_queries_leaves_leading_rows_empty)
{
    /* Tq = 7 > Tk = 5: queries 0 and 1 see no key, so their output and weights are 0. */
    att_case c = {.b = 1, .tq = 7, .tk = 5, .hq = 2, .hkv = 2, .d = 4, .dv = 3, .causal = true};
    check_forward(&c, LU_F64, 1e-12, "causal tq > tk");
}

Test(attention, key_padding_mask_ignores_keys)
{
    static const uint8_t mask[14] = {0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1};
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 4, .hkv = 2, .d = 6, .dv = 6, .mask = mask};
    check_forward(&c, LU_F64, 1e-12, "padding mask");
}

Test(attention, key_padding_mask_with_causal)
{
    static const uint8_t mask[14] = {1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0};
    att_case c = {.b = 2, .tq = 7, .tk = 7, .hq = 2, .hkv = 1, .d = 5, .dv = 3, .causal = true, .mask = mask};
    check_forward(&c, LU_F64, 1e-12, "mask + causal");
}

Test(attention, bool_mask_is_accepted)
{
    att_case c = {.b = 1, .tq = 3, .tk = 4, .hq = 1, .hkv = 1, .d = 2, .dv = 2};
    att_inputs in = make_inputs(&c, LU_F64, 41);
    lu_tensor *m8 = lu_tensor_from_host(LU_U8, LU_SHAPE(1, 4), LU_CPU, (uint8_t[]){0, 1, 0, 1});
    lu_tensor *mb = lu_tensor_from_host(LU_BOOL, LU_SHAPE(1, 4), LU_CPU, (bool[]){false, true, false, true});
    lu_attention_opts o8 = {.key_padding_mask = m8}, ob = {.key_padding_mask = mb};
    lu_tensor *y8 = lu_attention(in.q, in.k, in.v, &o8), *yb = lu_attention(in.q, in.k, in.v, &ob);
    tu_assert_tensors_close(yb, y8, 0, 0, "bool mask");
    lu_tensor_release(y8);
    lu_tensor_release(yb);
    lu_tensor_release(m8);
    lu_tensor_release(mb);
    free_inputs(&in);
}

Test(attention, packed_sequences_stay_in_their_segment)
{
    static const int32_t cu[4] = {0, 3, 4, 9};
    att_case c = {.b = 1, .tq = 9, .tk = 9, .hq = 4, .hkv = 2, .d = 6, .dv = 5, .cu = cu, .n_cu = 4};
    check_forward(&c, LU_F64, 1e-12, "cu_seqlens");
}

Test(attention, packed_sequences_with_causal)
{
    static const int32_t cu[4] = {0, 2, 6, 9};
    att_case c = {.b = 1, .tq = 9, .tk = 9, .hq = 2, .hkv = 2, .d = 4, .dv = 4, .causal = true, .cu = cu, .n_cu = 4};
    check_forward(&c, LU_F64, 1e-12, "cu_seqlens causal");
}

Test(attention, packed_sequences_with_empty_segment_and_mask)
{
    static const int32_t cu[5] = {0, 3, 3, 5, 8};
    static const uint8_t mask[8] = {0, 1, 0, 0, 0, 0, 0, 1};
    att_case c = {.b = 1, .tq = 8, .tk = 8, .hq = 2, .hkv = 1, .d = 3, .dv = 3, .causal = true, .mask = mask,
                  .cu = cu, .n_cu = 5};
    check_forward(&c, LU_F64, 1e-12, "cu_seqlens empty segment");
}

Test(attention, explicit_scale)
{
    att_case c = {.b = 1, .tq = 4, .tk = 6, .hq = 2, .hkv = 2, .d = 3, .dv = 3, .scale = 0.8};
    check_forward(&c, LU_F64, 1e-12, "scale");
}

Test(attention, many_query_blocks_f32)
{
    /* More queries than one kernel block (64), causal with Tq != Tk and a mask. */
    static uint8_t mask[2 * 131];
    for (int j = 0; j < 2 * 131; j++) mask[j] = j % 7 == 3;
    att_case c = {.b = 2, .tq = 150, .tk = 131, .hq = 2, .hkv = 1, .d = 16, .dv = 8, .causal = true, .mask = mask};
    check_forward(&c, LU_F32, 2e-6, "many blocks");
}

Test(attention, returned_weights_rows_sum_to_one)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 2, .hkv = 2, .d = 4, .dv = 4, .causal = true};
    att_inputs in = make_inputs(&c, LU_F64, 42);
    lu_tensor *w = NULL;
    lu_attention_opts opts = opts_of(&c, &in, &w);
    lu_tensor *o = lu_attention(in.q, in.k, in.v, &opts);
    cr_assert(o && w, "%s", lu_error_message());
    cr_assert(w->ndim == 4 && w->shape[0] == 2 && w->shape[1] == 2 && w->shape[2] == 5 && w->shape[3] == 7);
    double *wv = tu_to_doubles(w);
    for (int r = 0; r < 2 * 2 * 5; r++) {
        double s = 0;
        for (int j = 0; j < 7; j++) s += wv[r * 7 + j];
        cr_assert(fabs(s - 1) < 1e-12, "row %d sums to %.15g", r, s);
    }
    free(wv);
    lu_tensor_release(o);
    lu_tensor_release(w);
    free_inputs(&in);
}

Test(attention, fully_masked_row_gives_zero_output_and_gradient)
{
    /* Batch 1 masks every key. */
    static const uint8_t mask[10] = {0, 1, 0, 0, 0, 1, 1, 1, 1, 1};
    att_case c = {.b = 2, .tq = 3, .tk = 5, .hq = 2, .hkv = 2, .d = 4, .dv = 3, .mask = mask};
    att_inputs in = make_inputs(&c, LU_F64, 43);
    lu_tensor_set_requires_grad(in.q, true);
    lu_tensor_set_requires_grad(in.k, true);
    lu_tensor_set_requires_grad(in.v, true);
    lu_attention_opts opts = opts_of(&c, &in, NULL);
    lu_tensor *o = lu_attention(in.q, in.k, in.v, &opts);
    cr_assert(o, "%s", lu_error_message());
    double *ov = tu_to_doubles(o);
    for (int i = 0; i < 3 * 2 * 3; i++) {
        cr_assert(isfinite(ov[i]));
        cr_assert_eq(ov[18 + i], 0.0, "batch 1 output %d is %g", i, ov[18 + i]);
    }
    free(ov);
    lu_tensor *dy = lu_tensor_full(LU_F64, 4, o->shape, LU_CPU, 1.0);
    cr_assert_eq(lu_backward_from(o, dy), LU_OK, "%s", lu_error_message());
    double *dq = tu_to_doubles(in.q->grad), *dk = tu_to_doubles(in.k->grad), *dv = tu_to_doubles(in.v->grad);
    for (int i = 0; i < 24; i++) cr_assert(isfinite(dq[i]) && dq[24 + i] == 0, "dq %d: %g", 24 + i, dq[24 + i]);
    for (int i = 0; i < 40; i++) cr_assert(isfinite(dk[i]) && dk[40 + i] == 0, "dk %d: %g", 40 + i, dk[40 + i]);
    for (int i = 0; i < 30; i++) cr_assert(isfinite(dv[i]) && dv[30 + i] == 0, "dv %d: %g", 30 + i, dv[30 + i]);
    free(dq);
    free(dk);
    free(dv);
    lu_tensor_release(dy);
    lu_tensor_release(o);
    free_inputs(&in);
}

Test(attention, strided_inputs_match_contiguous)
{
    att_case c = {.b = 2, .tq = 4, .tk = 4, .hq = 2, .hkv = 2, .d = 3, .dv = 3};
    att_inputs in = make_inputs(&c, LU_F64, 44);
    /* k read through a transposed view of a [B, Hkv, Tk, D] tensor. */
    lu_tensor *kt = lu_transpose(in.k, 1, 2), *kh = lu_contiguous(kt), *kv = lu_transpose(kh, 1, 2);
    lu_tensor *a = lu_attention(in.q, in.k, in.v, NULL), *b = lu_attention(in.q, kv, in.v, NULL);
    tu_assert_tensors_close(b, a, 0, 0, "strided k");
    lu_tensor_release(a);
    lu_tensor_release(b);
    lu_tensor_release(kv);
    lu_tensor_release(kh);
    lu_tensor_release(kt);
    free_inputs(&in);
}

/* ---- thread-count independence ---- */

static void run_with_threads(int threads, const att_case *c, lu_tensor **res)
{
    att_inputs in = make_inputs(c, LU_F32, 45);
    lu_tensor_set_requires_grad(in.q, true);
    lu_tensor_set_requires_grad(in.k, true);
    lu_tensor_set_requires_grad(in.v, true);
    int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    lu_attention_opts opts = opts_of(c, &in, NULL);
    lu_tensor *o = lu_attention(in.q, in.k, in.v, &opts);
    cr_assert(o, "%s", lu_error_message());
    lu_tensor *dy = tu_rand(LU_F32, 4, o->shape, -1, 1, 46);
    cr_assert_eq(lu_backward_from(o, dy), LU_OK, "%s", lu_error_message());
    omp_set_num_threads(prev);
    res[0] = o;
    res[1] = lu_tensor_retain(in.q->grad);
    res[2] = lu_tensor_retain(in.k->grad);
    res[3] = lu_tensor_retain(in.v->grad);
    lu_tensor_release(dy);
    free_inputs(&in);
}

Test(attention, results_do_not_depend_on_thread_count)
{
    att_case c = {.b = 2, .tq = 140, .tk = 140, .hq = 4, .hkv = 2, .d = 8, .dv = 8, .causal = true};
    lu_tensor *one[4], *four[4];
    run_with_threads(1, &c, one);
    run_with_threads(4, &c, four);
    const char *names[4] = {"o", "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        tu_assert_tensors_close(four[i], one[i], 0, 0, names[i]);
        lu_tensor_release(one[i]);
        lu_tensor_release(four[i]);
    }
}

/* ---- gradients ---- */

/* What the gradcheck function returns: the output, the weights, or the output with the
 * weights applied to it again (a loss through both; needs Tq == Tk). */
typedef enum grad_target { GRAD_OUTPUT, GRAD_WEIGHTS, GRAD_BOTH } grad_target;

typedef struct grad_ctx {
    const att_case *c;
    att_inputs *in;
    grad_target target;
} grad_ctx;

static lu_tensor *attention_fn(lu_tensor **in, void *ctx)
{
    grad_ctx *g = ctx;
    lu_tensor *w = NULL;
    lu_attention_opts opts = opts_of(g->c, g->in, g->target == GRAD_OUTPUT ? NULL : &w);
    lu_tensor *o = lu_attention(in[0], in[1], in[2], &opts);
    if (!o || g->target == GRAD_OUTPUT) return o;
    lu_tensor *y = g->target == GRAD_WEIGHTS ? lu_tensor_retain(w) : lu_attention_apply(w, o);
    lu_tensor_release(o);
    lu_tensor_release(w);
    return y;
}

static void check_gradients(const att_case *c, grad_target target, const char *what)
{
    att_inputs in = make_inputs(c, LU_F64, 47);
    grad_ctx g = {c, &in, target};
    lu_tensor *x[3] = {in.q, in.k, in.v};
    bool check[3] = {true, true, target != GRAD_WEIGHTS};
    tu_gradcheck(attention_fn, x, 3, check, &g, 1e-6, 1e-7, 1e-6, 60, what);
    free_inputs(&in);
}

Test(attention, gradients_match_finite_differences)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 2, .hkv = 2, .d = 6, .dv = 3};
    check_gradients(&c, GRAD_OUTPUT, "plain");
}

Test(attention, gradients_with_gqa_and_causal)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 4, .hkv = 2, .d = 6, .dv = 4, .causal = true};
    check_gradients(&c, GRAD_OUTPUT, "gqa causal");
}

Test(attention, gradients_with_padding_mask_and_empty_rows)
{
    static const uint8_t mask[10] = {0, 1, 0, 0, 1, 1, 1, 1, 1, 1};
    att_case c = {.b = 2, .tq = 3, .tk = 5, .hq = 2, .hkv = 1, .d = 4, .dv = 3, .mask = mask};
    check_gradients(&c, GRAD_OUTPUT, "mask");
}

Test(attention, gradients_with_packed_causal_sequences)
{
    static const int32_t cu[4] = {0, 3, 4, 8};
    att_case c = {.b = 1, .tq = 8, .tk = 8, .hq = 2, .hkv = 2, .d = 3, .dv = 3, .causal = true, .cu = cu, .n_cu = 4};
    check_gradients(&c, GRAD_OUTPUT, "cu_seqlens");
}

Test(attention, gradients_with_more_queries_than_keys_causal)
{
    att_case c = {.b = 1, .tq = 6, .tk = 4, .hq = 2, .hkv = 1, .d = 3, .dv = 2, .causal = true, .scale = 0.7};
    check_gradients(&c, GRAD_OUTPUT, "causal tq > tk");
}

Test(attention, gradients_across_query_blocks)
{
    att_case c = {.b = 1, .tq = 70, .tk = 67, .hq = 2, .hkv = 1, .d = 4, .dv = 3, .causal = true};
    check_gradients(&c, GRAD_OUTPUT, "blocks");
}

Test(attention, gradients_through_returned_weights)
{
    att_case c = {.b = 2, .tq = 4, .tk = 5, .hq = 2, .hkv = 1, .d = 3, .dv = 2, .causal = true};
    check_gradients(&c, GRAD_WEIGHTS, "weights");
}

Test(attention, gradients_through_output_and_weights)
{
    static const uint8_t mask[12] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    att_case c = {.b = 2, .tq = 6, .tk = 6, .hq = 2, .hkv = 2, .d = 3, .dv = 3, .mask = mask};
    check_gradients(&c, GRAD_BOTH, "output and weights");
}

/* ---- lu_attention_apply ---- */

Test(attention_apply, matches_reference)
{
    lu_tensor *w = tu_rand(LU_F64, LU_SHAPE(2, 3, 4, 5), 0, 1, 48), *v = tu_rand(LU_F64, LU_SHAPE(2, 5, 3, 6), -1, 1, 49);
    lu_tensor *o = lu_attention_apply(w, v);
    cr_assert(o, "%s", lu_error_message());
    cr_assert(o->ndim == 4 && o->shape[0] == 2 && o->shape[1] == 4 && o->shape[2] == 3 && o->shape[3] == 6);
    double *wv = tu_to_doubles(w), *vv = tu_to_doubles(v), ref[2 * 4 * 3 * 6] = {0};
    for (int b = 0; b < 2; b++)
        for (int h = 0; h < 3; h++)
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 5; j++)
                    for (int e = 0; e < 6; e++)
                        ref[((b * 4 + i) * 3 + h) * 6 + e] += wv[((b * 3 + h) * 4 + i) * 5 + j] * vv[((b * 5 + j) * 3 + h) * 6 + e];
    tu_assert_close(o, ref, 144, 1e-12, 1e-12, "attention_apply");
    free(wv);
    free(vv);
    lu_tensor_release(o);
    lu_tensor_release(v);
    lu_tensor_release(w);
}

Test(attention_apply, reproduces_attention_output)
{
    att_case c = {.b = 2, .tq = 5, .tk = 7, .hq = 2, .hkv = 2, .d = 4, .dv = 3, .causal = true};
    att_inputs in = make_inputs(&c, LU_F64, 50);
    lu_tensor *w = NULL;
    lu_attention_opts opts = opts_of(&c, &in, &w);
    lu_tensor *o = lu_attention(in.q, in.k, in.v, &opts), *o2 = lu_attention_apply(w, in.v);
    tu_assert_tensors_close(o2, o, 1e-13, 1e-13, "apply(weights, v)");
    lu_tensor_release(o);
    lu_tensor_release(o2);
    lu_tensor_release(w);
    free_inputs(&in);
}

static lu_tensor *apply_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_attention_apply(in[0], in[1]);
}

Test(attention_apply, gradients_match_finite_differences)
{
    lu_tensor *in[2] = {tu_rand(LU_F64, LU_SHAPE(1, 2, 3, 4), 0, 1, 51), tu_rand(LU_F64, LU_SHAPE(1, 4, 2, 3), -1, 1, 52)};
    tu_gradcheck(apply_fn, in, 2, (bool[]){true, true}, NULL, 1e-6, 1e-8, 1e-6, 100, "attention_apply");
    lu_tensor_release(in[0]);
    lu_tensor_release(in[1]);
}

Test(attention_apply, rejects_mismatched_shapes)
{
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(1, 2, 3, 4), 0, 1, 1), *v = tu_rand(LU_F32, LU_SHAPE(1, 5, 2, 3), -1, 1, 2);
    cr_assert_null(lu_attention_apply(w, v));
    tu_assert_error_contains("attention_apply: weights [1, 2, 3, 4] must be [B, H, Tq, Tk] and v [1, 5, 2, 3]");
    lu_tensor_release(w);
    lu_tensor_release(v);
}

/* ---- errors ---- */

Test(attention, rejects_head_counts_not_divisible)
{
    lu_tensor *q = tu_rand(LU_F32, LU_SHAPE(1, 2, 3, 4), -1, 1, 1), *k = tu_rand(LU_F32, LU_SHAPE(1, 2, 2, 4), -1, 1, 2);
    cr_assert_null(lu_attention(q, k, k, NULL));
    tu_assert_error_contains("attention: query heads must be a multiple of key/value heads (q [1, 2, 3, 4] f32, k [1, 2, 2, 4]");
    lu_tensor_release(q);
    lu_tensor_release(k);
}

Test(attention, rejects_mask_of_wrong_shape)
{
    lu_tensor *q = tu_rand(LU_F32, LU_SHAPE(2, 3, 2, 4), -1, 1, 1), *k = tu_rand(LU_F32, LU_SHAPE(2, 5, 2, 4), -1, 1, 2);
    lu_tensor *m = lu_tensor_zeros(LU_U8, LU_SHAPE(2, 3), LU_CPU), *mf = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 5), LU_CPU);
    lu_attention_opts o = {.key_padding_mask = m}, of = {.key_padding_mask = mf};
    cr_assert_null(lu_attention(q, k, k, &o));
    tu_assert_error_contains("attention: key_padding_mask [2, 3] u8 must be u8/bool [B, Tk] = [2, 5]");
    cr_assert_null(lu_attention(q, k, k, &of));
    tu_assert_error_contains("key_padding_mask [2, 5] f32 must be u8/bool");
    lu_tensor_release(mf);
    lu_tensor_release(m);
    lu_tensor_release(q);
    lu_tensor_release(k);
}

Test(attention, rejects_cu_seqlens_not_ending_at_t)
{
    lu_tensor *q = tu_rand(LU_F32, LU_SHAPE(1, 6, 2, 4), -1, 1, 1);
    lu_tensor *cu = lu_tensor_from_host(LU_I32, LU_SHAPE(3), LU_CPU, (int32_t[]){0, 2, 5});
    lu_attention_opts o = {.cu_seqlens = cu};
    cr_assert_null(lu_attention(q, q, q, &o));
    tu_assert_error_contains("attention: cu_seqlens must end at T = 6, got 5");
    lu_tensor_release(cu);
    lu_tensor_release(q);
}

Test(attention, rejects_decreasing_or_unbatched_cu_seqlens)
{
    lu_tensor *q = tu_rand(LU_F32, LU_SHAPE(1, 6, 2, 4), -1, 1, 1), *q2 = tu_rand(LU_F32, LU_SHAPE(2, 6, 2, 4), -1, 1, 2);
    lu_tensor *cu = lu_tensor_from_host(LU_I32, LU_SHAPE(4), LU_CPU, (int32_t[]){0, 4, 3, 6});
    lu_attention_opts o = {.cu_seqlens = cu};
    cr_assert_null(lu_attention(q, q, q, &o));
    tu_assert_error_contains("attention: cu_seqlens decreases at 2 (3 after 4)");
    cr_assert_null(lu_attention(q2, q2, q2, &o));
    tu_assert_error_contains("cu_seqlens needs packed self-attention (B == 1, Tq == Tk)");
    lu_tensor_release(cu);
    lu_tensor_release(q2);
    lu_tensor_release(q);
}

Test(attention, rejects_mismatched_dtypes_and_head_dims)
{
    lu_tensor *q = tu_rand(LU_F32, LU_SHAPE(1, 2, 2, 4), -1, 1, 1), *k64 = tu_rand(LU_F64, LU_SHAPE(1, 2, 2, 4), -1, 1, 2);
    lu_tensor *k5 = tu_rand(LU_F32, LU_SHAPE(1, 2, 2, 5), -1, 1, 3);
    cr_assert_null(lu_attention(q, k64, k64, NULL));
    tu_assert_error_contains("q, k, v need one float dtype");
    cr_assert_null(lu_attention(q, k5, k5, NULL));
    tu_assert_error_contains("q and k head dims differ");
    lu_tensor_release(k5);
    lu_tensor_release(k64);
    lu_tensor_release(q);
}
