/* test_ctc.c - the CTC loss against brute-force enumeration of every alignment on tiny sizes,
 * its reductions and edge cases (repeats, infeasible targets, zero_infinity, short inputs), its
 * gradient w.r.t. log_probs (exact enumeration and central differences), and its errors. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

/* Sums exp(sum_t lp[t, path_t]) over all V^T paths whose collapse (merge repeats, drop blanks)
 * equals tgt[0..S). Also accumulates, per (t, k), the mass of those paths with path_t == k into
 * mass_tk when not NULL. Returns the total mass p. */
static double brute_mass(const double *lp, int64_t T, int64_t V, const int64_t *tgt, int64_t S, int64_t blank,
                         double *mass_tk)
{
    int64_t npaths = 1;
    for (int64_t t = 0; t < T; t++) npaths *= V;
    double total = 0;
    int64_t path[16];
    for (int64_t code = 0; code < npaths; code++) {
        int64_t c = code, n = 0, prev = -1;
        for (int64_t t = 0; t < T; t++) {
            path[t] = c % V;
            c /= V;
        }
        bool match = true;
        for (int64_t t = 0; t < T && match; t++) {
            if (path[t] != blank && path[t] != prev) {
                match = n < S && tgt[n] == path[t];
                n++;
            }
            prev = path[t];
        }
        if (!match || n != S) continue;
        double lsum = 0;
        for (int64_t t = 0; t < T; t++) lsum += lp[t * V + path[t]];
        total += exp(lsum);
        if (mass_tk)
            for (int64_t t = 0; t < T; t++) mass_tk[t * V + path[t]] += exp(lsum);
    }
    return total;
}

/* A batch of B samples with log_probs [B, T, V] (log-softmax normalised when `normalise`). */
typedef struct ctc_batch {
    int64_t B, T, V, S;
    lu_tensor *lp, *targets, *il, *tl;
} ctc_batch;

static ctc_batch ctc_make(int64_t B, int64_t T, int64_t V, int64_t S, const int64_t *targets, const int64_t *il,
                          const int64_t *tl, bool normalise, lu_dtype dt, uint64_t seed)
{
    ctc_batch c = {B, T, V, S, NULL, NULL, NULL, NULL};
    lu_tensor *raw = tu_rand(LU_F64, LU_SHAPE(B, T, V), -2, 2, seed);
    double *v = lu_tensor_data(raw);
    if (normalise)
        for (int64_t r = 0; r < B * T; r++) {
            double s = 0;
            for (int64_t k = 0; k < V; k++) s += exp(v[r * V + k]);
            for (int64_t k = 0; k < V; k++) v[r * V + k] -= log(s);
        }
    c.lp = lu_tensor_convert(raw, dt, LU_CPU);
    lu_tensor_release(raw);
    c.targets = lu_tensor_from_host(LU_I64, LU_SHAPE(B, S), LU_CPU, targets);
    c.il = lu_tensor_from_host(LU_I64, LU_SHAPE(B), LU_CPU, il);
    c.tl = lu_tensor_from_host(LU_I64, LU_SHAPE(B), LU_CPU, tl);
    return c;
}

static void ctc_free(ctc_batch *c)
{
    lu_tensor_release(c->lp);
    lu_tensor_release(c->targets);
    lu_tensor_release(c->il);
    lu_tensor_release(c->tl);
}

/* -log p per sample by enumeration (inf when no path matches). */
static void brute_nll(const ctc_batch *c, int64_t blank, double *nll)
{
    double *lp = tu_to_doubles(c->lp);
    const int64_t *tg = lu_tensor_data(c->targets), *il = lu_tensor_data(c->il), *tl = lu_tensor_data(c->tl);
    for (int64_t b = 0; b < c->B; b++)
        nll[b] = -log(brute_mass(lp + b * c->T * c->V, il[b], c->V, tg + b * c->S, tl[b], blank, NULL));
    free(lp);
}

Test(ctc, matches_bruteforce_enumeration_per_sample)
{
    int64_t tg[8] = {1, 2, 2, 0, 1, 1, 2, 0}, il[4] = {4, 3, 4, 2}, tl[4] = {2, 1, 0, 1};
    for (int norm = 0; norm < 2; norm++) {
        ctc_batch c = ctc_make(4, 4, 3, 2, tg, il, tl, norm, LU_F64, 1 + norm);
        double ref[4];
        brute_nll(&c, 0, ref);
        lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_NONE, false);
        cr_assert(loss && loss->ndim == 1 && loss->shape[0] == 4, "%s", lu_error_message());
        tu_assert_close(loss, ref, 4, 1e-12, 1e-12, norm ? "ctc normalised" : "ctc unnormalised");
        lu_tensor_release(loss);
        ctc_free(&c);
    }
}

Test(ctc, nonzero_blank_matches_bruteforce)
{
    int64_t tg[4] = {0, 1, 1, 0}, il[2] = {4, 4}, tl[2] = {2, 2};
    ctc_batch c = ctc_make(2, 4, 3, 2, tg, il, tl, true, LU_F64, 3);
    double ref[2];
    brute_nll(&c, 2, ref);
    lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 2, LU_REDUCE_NONE, false);
    tu_assert_close(loss, ref, 2, 1e-12, 1e-12, "ctc blank 2");
    lu_tensor_release(loss);
    ctc_free(&c);
}

Test(ctc, repeated_labels_need_a_blank_between)
{
    /* Target (1, 1) in 3 frames has the single alignment 1, blank, 1; in 2 frames none. */
    int64_t tg[4] = {1, 1, 1, 1}, il[2] = {3, 2}, tl[2] = {2, 2};
    ctc_batch c = ctc_make(2, 3, 3, 2, tg, il, tl, true, LU_F64, 4);
    double *lp = tu_to_doubles(c.lp);
    double ref[2] = {-(lp[0 * 3 + 1] + lp[1 * 3 + 0] + lp[2 * 3 + 1]), INFINITY};
    lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_NONE, false);
    tu_assert_close(loss, ref, 2, 1e-12, 1e-12, "ctc repeats");
    free(lp);
    lu_tensor_release(loss);
    ctc_free(&c);
}

Test(ctc, empty_target_is_the_all_blank_path)
{
    int64_t tg[2] = {0, 0}, il[1] = {5}, tl[1] = {0};
    ctc_batch c = ctc_make(1, 5, 4, 2, tg, il, tl, true, LU_F64, 5);
    double *lp = tu_to_doubles(c.lp), ref = 0;
    for (int t = 0; t < 5; t++) ref -= lp[t * 4];
    lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_MEAN, false);
    cr_assert(loss && loss->ndim == 0, "mean gives a scalar: %s", lu_error_message());
    tu_assert_close(loss, &ref, 1, 1e-12, 1e-12, "ctc empty target (divided by max(0, 1))");
    free(lp);
    lu_tensor_release(loss);
    ctc_free(&c);
}

Test(ctc, reductions_mean_divides_by_target_length_sum_adds)
{
    int64_t tg[9] = {1, 2, 3, 2, 0, 0, 0, 0, 0}, il[3] = {6, 5, 4}, tl[3] = {3, 1, 0};
    ctc_batch c = ctc_make(3, 6, 4, 3, tg, il, tl, true, LU_F64, 6);
    lu_tensor *none = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_NONE, false);
    lu_tensor *sum = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_SUM, false);
    lu_tensor *mean = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_MEAN, false);
    double *n = tu_to_doubles(none);
    double rs = n[0] + n[1] + n[2], rm = (n[0] / 3 + n[1] / 1 + n[2] / 1) / 3;
    tu_assert_close(sum, &rs, 1, 1e-12, 1e-12, "ctc sum");
    tu_assert_close(mean, &rm, 1, 1e-12, 1e-12, "ctc mean");
    free(n);
    lu_tensor_release(none);
    lu_tensor_release(sum);
    lu_tensor_release(mean);
    ctc_free(&c);
}

Test(ctc, infeasible_sample_is_inf_or_zeroed_with_zero_infinity)
{
    /* Sample 0: 3 labels in 2 frames (infeasible); sample 1 feasible. */
    int64_t tg[6] = {1, 2, 1, 2, 0, 0}, il[2] = {2, 4}, tl[2] = {3, 1};
    ctc_batch c = ctc_make(2, 4, 3, 3, tg, il, tl, true, LU_F64, 7);
    double ref[2];
    brute_nll(&c, 0, ref);
    cr_assert(isinf(ref[0]));
    lu_tensor *inf_loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_SUM, false);
    double inf = INFINITY;
    tu_assert_close(inf_loss, &inf, 1, 0, 0, "ctc sum without zero_infinity");
    lu_tensor_release(inf_loss);

    lu_tensor_set_requires_grad(c.lp, true);
    lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_SUM, true);
    tu_assert_close(loss, &ref[1], 1, 1e-12, 1e-12, "ctc sum with zero_infinity");
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    double *g = tu_to_doubles(c.lp->grad);
    for (int i = 0; i < 12; i++) cr_assert_eq(g[i], 0.0, "infeasible sample gradient[%d] = %g", i, g[i]);
    bool any = false;
    for (int i = 12; i < 24; i++) any |= g[i] != 0;
    cr_assert(any, "the feasible sample got no gradient");
    free(g);
    lu_tensor_release(loss);
    ctc_free(&c);
}

Test(ctc, infeasible_sample_without_zero_infinity_has_nan_gradient)
{
    int64_t tg[2] = {1, 2}, il[1] = {1}, tl[1] = {2};
    ctc_batch c = ctc_make(1, 2, 3, 2, tg, il, tl, true, LU_F64, 8);
    lu_tensor_set_requires_grad(c.lp, true);
    lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_MEAN, false);
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    double *g = tu_to_doubles(c.lp->grad);
    for (int k = 0; k < 3; k++) cr_assert(isnan(g[k]), "frame 0 gradient[%d] = %g, expected NaN", k, g[k]);
    for (int k = 3; k < 6; k++) cr_assert_eq(g[k], 0.0, "frame 1 lies beyond the input length");
    free(g);
    lu_tensor_release(loss);
    ctc_free(&c);
}

Test(ctc, frames_beyond_input_length_are_ignored)
{
    int64_t tg[2] = {2, 1}, il[1] = {4}, tl[1] = {2};
    ctc_batch c = ctc_make(1, 6, 3, 2, tg, il, tl, false, LU_F64, 9);
    double ref;
    brute_nll(&c, 0, &ref);
    lu_tensor_set_requires_grad(c.lp, true);
    lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_SUM, false);
    tu_assert_close(loss, &ref, 1, 1e-12, 1e-12, "ctc short input");
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    double *g = tu_to_doubles(c.lp->grad);
    for (int i = 12; i < 18; i++) cr_assert_eq(g[i], 0.0, "gradient[%d] beyond the input length is %g", i, g[i]);
    free(g);
    lu_tensor_release(loss);
    ctc_free(&c);
}

Test(ctc, gradient_matches_bruteforce_path_masses)
{
    /* d(-log p)/d lp[t,k] = -(mass of matching paths with path_t = k) / p, with free log_probs. */
    int64_t tg[4] = {1, 1, 2, 0}, il[2] = {4, 4}, tl[2] = {2, 1};
    ctc_batch c = ctc_make(2, 4, 3, 2, tg, il, tl, false, LU_F64, 10);
    double *lp = tu_to_doubles(c.lp), ref[24] = {0};
    for (int b = 0; b < 2; b++) {
        double p = brute_mass(lp + b * 12, 4, 3, tg + b * 2, tl[b], 0, ref + b * 12);
        for (int i = 0; i < 12; i++) ref[b * 12 + i] *= -1 / p;
    }
    lu_tensor_set_requires_grad(c.lp, true);
    lu_tensor *loss = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_SUM, false);
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    tu_assert_close(c.lp->grad, ref, 24, 1e-12, 1e-10, "ctc gradient vs enumeration");
    free(lp);
    lu_tensor_release(loss);
    ctc_free(&c);
}

typedef struct ctc_ctx {
    ctc_batch *c;
    lu_reduction red;
    int blank;
} ctc_ctx;

static lu_tensor *ctc_fn(lu_tensor **in, void *ctx)
{
    ctc_ctx *x = ctx;
    return lu_ctc_loss(in[0], x->c->targets, x->c->il, x->c->tl, x->blank, x->red, false);
}

Test(ctc, gradcheck_per_sample_losses)
{
    int64_t tg[9] = {1, 3, 3, 2, 4, 0, 4, 0, 0}, il[3] = {7, 6, 5}, tl[3] = {3, 2, 1};
    ctc_batch c = ctc_make(3, 7, 5, 3, tg, il, tl, false, LU_F64, 11);
    ctc_ctx x = {&c, LU_REDUCE_NONE, 0};
    tu_gradcheck(ctc_fn, &c.lp, 1, (bool[]){true}, &x, 1e-6, 1e-8, 1e-6, 200, "ctc grad none");
    ctc_free(&c);
}

Test(ctc, gradcheck_mean_reduction_with_blank_in_the_middle)
{
    int64_t tg[6] = {0, 1, 1, 3, 0, 0}, il[2] = {6, 4}, tl[2] = {3, 1};
    ctc_batch c = ctc_make(2, 6, 4, 3, tg, il, tl, true, LU_F64, 12);
    ctc_ctx x = {&c, LU_REDUCE_MEAN, 2};
    tu_gradcheck(ctc_fn, &c.lp, 1, (bool[]){true}, &x, 1e-6, 1e-8, 1e-6, 200, "ctc grad mean blank 2");
    ctc_free(&c);
}

Test(ctc, f32_agrees_with_f64_on_realistic_sizes)
{
    enum { B = 4, T = 50, V = 12, S = 15 };
    int64_t tg[B * S], il[B] = {50, 41, 33, 20}, tl[B] = {15, 10, 12, 3};
    for (int i = 0; i < B * S; i++) tg[i] = 1 + (i * 7 + i / 3) % (V - 1);
    ctc_batch c64 = ctc_make(B, T, V, S, tg, il, tl, true, LU_F64, 13);
    ctc_batch c32 = ctc_make(B, T, V, S, tg, il, tl, true, LU_F32, 13);
    lu_tensor_set_requires_grad(c64.lp, true);
    lu_tensor_set_requires_grad(c32.lp, true);
    /* One backward per loss: lu_backward clears the whole tape. */
    lu_tensor *l64 = lu_ctc_loss(c64.lp, c64.targets, c64.il, c64.tl, 0, LU_REDUCE_MEAN, true);
    cr_assert_eq(lu_backward(l64), LU_OK, "%s", lu_error_message());
    lu_tensor *l32 = lu_ctc_loss(c32.lp, c32.targets, c32.il, c32.tl, 0, LU_REDUCE_MEAN, true);
    cr_assert_eq(lu_backward(l32), LU_OK, "%s", lu_error_message());
    tu_assert_tensors_close(l32, l64, 1e-5, 1e-5, "ctc f32 loss");
    tu_assert_tensors_close(c32.lp->grad, c64.lp->grad, 1e-5, 1e-4, "ctc f32 gradient");
    lu_tensor_release(l64);
    lu_tensor_release(l32);
    ctc_free(&c64);
    ctc_free(&c32);
}

Test(ctc, accepts_i32_lengths_and_targets)
{
    int64_t tg[4] = {1, 2, 2, 0}, il[2] = {4, 3}, tl[2] = {2, 1};
    ctc_batch c = ctc_make(2, 4, 3, 2, tg, il, tl, true, LU_F64, 14);
    lu_tensor *t32 = lu_tensor_convert(c.targets, LU_I32, LU_CPU), *il32 = lu_tensor_convert(c.il, LU_I32, LU_CPU);
    lu_tensor *a = lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_NONE, false);
    lu_tensor *b = lu_ctc_loss(c.lp, t32, il32, c.tl, 0, LU_REDUCE_NONE, false);
    tu_assert_tensors_close(b, a, 0, 0, "i32 vs i64");
    lu_tensor_release(a);
    lu_tensor_release(b);
    lu_tensor_release(t32);
    lu_tensor_release(il32);
    ctc_free(&c);
}

Test(ctc, rejects_bad_targets_and_lengths)
{
    int64_t tg[4] = {1, 0, 2, 1}, il[2] = {4, 4}, tl[2] = {2, 2};
    ctc_batch c = ctc_make(2, 4, 3, 2, tg, il, tl, true, LU_F32, 15);
    cr_assert_null(lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 0, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("ctc_loss: targets[0, 1] = 0 must be in [0, V = 3) and differ from blank 0");
    tu_assert_error_contains("(log_probs [2, 4, 3] f32, targets [2, 2] i64)");
    cr_assert_null(lu_ctc_loss(c.lp, c.targets, c.il, c.tl, 1, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("targets[0, 0] = 1 must be in [0, V = 3) and differ from blank 1");
    int64_t bad_tl[2] = {1, 3}, bad_il[2] = {5, 1}, big[4] = {1, 3, 2, 1};
    lu_tensor *tl3 = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, bad_tl);
    lu_tensor *il5 = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, bad_il);
    lu_tensor *tbig = lu_tensor_from_host(LU_I64, LU_SHAPE(2, 2), LU_CPU, big);
    cr_assert_null(lu_ctc_loss(c.lp, tbig, c.il, c.tl, 0, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("targets[0, 1] = 3 must be in [0, V = 3)");
    cr_assert_null(lu_ctc_loss(c.lp, tbig, c.il, tl3, 0, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("target_lengths[1] = 3 is outside [0, S = 2]");
    cr_assert_null(lu_ctc_loss(c.lp, tbig, il5, c.tl, 0, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("input_lengths[0] = 5 is outside [0, T = 4]");
    cr_assert_null(lu_ctc_loss(c.lp, tbig, c.il, c.tl, 3, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("blank 3 must be in [0, V)");
    lu_tensor_release(tl3);
    lu_tensor_release(il5);
    lu_tensor_release(tbig);
    ctc_free(&c);
}

Test(ctc, rejects_bad_shapes_and_dtypes)
{
    int64_t tg[4] = {1, 2, 2, 1}, il[2] = {4, 4}, tl[2] = {2, 2};
    ctc_batch c = ctc_make(2, 4, 3, 2, tg, il, tl, true, LU_F32, 16);
    lu_tensor *flat = lu_tensor_from_host(LU_I64, LU_SHAPE(4), LU_CPU, tg);
    cr_assert_null(lu_ctc_loss(c.lp, flat, c.il, c.tl, 0, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("targets must be a padded i32/i64 [B, S]");
    lu_tensor *fl = lu_tensor_convert(c.il, LU_F32, LU_CPU);
    cr_assert_null(lu_ctc_loss(c.lp, c.targets, fl, c.tl, 0, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("input_lengths [2] f32 must be i32/i64 [B]");
    lu_tensor *lp2 = lu_reshape(c.lp, LU_SHAPE(8, 3));
    cr_assert_null(lu_ctc_loss(lp2, c.targets, c.il, c.tl, 0, LU_REDUCE_MEAN, false));
    tu_assert_error_contains("log_probs must be a float [B, T, V]");
    lu_tensor_release(lp2);
    lu_tensor_release(fl);
    lu_tensor_release(flat);
    ctc_free(&c);
}

/* ---- parity with torch.nn.functional.ctc_loss (scripts/make_ctc_fixtures.py) ---- */

#include "core/safetensors.h"

/* logits -> log_softmax -> ctc_loss, compared with torch's losses and logits gradients. */
static void check_torch_case(lu_st_file *f, const char *prefix, const char *red_name, int64_t blank, lu_reduction red,
                             bool zero_inf)
{
    char key[128];
    lu_tensor *logits = lu_st_load(f, "logits", LU_F64);
    cr_assert(logits, "%s", lu_error_message());
    lu_tensor_set_requires_grad(logits, true);
    snprintf(key, sizeof key, "%s.targets", prefix);
    lu_tensor *targets = lu_st_load(f, key, LU_I64);
    snprintf(key, sizeof key, "%s.input_lengths", prefix);
    lu_tensor *il = lu_st_load(f, key, LU_I64);
    snprintf(key, sizeof key, "%s.target_lengths", prefix);
    lu_tensor *tl = lu_st_load(f, key, LU_I64);
    cr_assert(targets && il && tl, "%s", lu_error_message());
    lu_tensor *lp = lu_log_softmax(logits, -1);
    lu_tensor *loss = lu_ctc_loss(lp, targets, il, tl, (int)blank, red, zero_inf);
    cr_assert(loss, "%s", lu_error_message());
    snprintf(key, sizeof key, "%s.%s.loss", prefix, red_name);
    lu_tensor *ref_loss = lu_st_load(f, key, LU_F64);
    double *rl = tu_to_doubles(ref_loss);
    tu_assert_close(loss, rl, lu_tensor_numel(ref_loss), 1e-9, 1e-5, key);
    lu_tensor *ones = lu_tensor_full(LU_F64, loss->ndim, loss->shape, LU_CPU, 1.0);
    cr_assert_eq(lu_backward_from(loss, ones), LU_OK, "%s", lu_error_message());
    snprintf(key, sizeof key, "%s.%s.grad", prefix, red_name);
    tu_assert_tensors_close(logits->grad, lu_st_load(f, key, LU_F64), 1e-9, 1e-5, key);
    free(rl);
}

Test(ctc, matches_torch_ctc_loss_losses_and_gradients)
{
    lu_st_file *f = lu_st_open("tests/fixtures/ctc/torch_ctc.safetensors");
    cr_assert(f, "%s", lu_error_message());
    const char *names[] = {"none", "sum", "mean"};
    lu_reduction reds[] = {LU_REDUCE_NONE, LU_REDUCE_SUM, LU_REDUCE_MEAN};
    for (int r = 0; r < 3; r++) {
        check_torch_case(f, "blank0", names[r], 0, reds[r], false);
        check_torch_case(f, "blank6", names[r], 6, reds[r], false);
    }
    check_torch_case(f, "infeasible", "mean", 0, LU_REDUCE_MEAN, true);
    lu_st_close(f);
}
