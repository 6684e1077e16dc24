/* test_optim.c - AdamW and ScaledAdam against float64 references of their formulas (torch
 * AdamW; icefall ScaledAdam per reference/asr.md 9.6), and global gradient-norm clipping. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/optim.h"
#include "testutil.h"

/* Fills every trainable gradient of p with U[-1, 1) (scaled by `scale`) from stream `seed`. */
static void set_grads(lu_params *p, uint64_t seed, double scale)
{
    for (int i = 0; i < p->n; i++) {
        lu_tensor *t = p->items[i].t;
        if (!p->items[i].trainable) continue;
        lu_tensor *r = tu_rand(t->dtype, t->ndim, t->shape, -scale, scale, seed * 131 + (uint64_t)i);
        cr_assert_eq(lu_tensor_copy(t->grad, r), LU_OK);
        lu_tensor_release(r);
    }
}

static void set_values(lu_tensor *t, double lo, double hi, uint64_t seed)
{
    lu_tensor *r = tu_rand(t->dtype, t->ndim, t->shape, lo, hi, seed);
    cr_assert_eq(lu_tensor_copy(t, r), LU_OK);
    lu_tensor_release(r);
}

/* ---- AdamW ---------------------------------------------------------------------------------- */

/* torch.optim.AdamW on one tensor in double, 1-based step t. */
static void adamw_ref(double *p, double *m, double *v, const double *g, int64_t n, double lr, const lu_optim_config *c,
                      int t)
{
    double bc1 = 1 - pow(c->beta1, t), bc2 = 1 - pow(c->beta2, t);
    for (int64_t i = 0; i < n; i++) {
        p[i] *= 1 - lr * c->weight_decay;
        m[i] = c->beta1 * m[i] + (1 - c->beta1) * g[i];
        v[i] = c->beta2 * v[i] + (1 - c->beta2) * g[i] * g[i];
        p[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + c->eps);
    }
}

Test(adamw, three_steps_match_double_reference_with_weight_decay)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_tensor *w = lu_params_add(p, "layer.w", LU_F32, LU_SHAPE(3, 5), true);
    lu_tensor *buf = lu_params_add(p, "bn.running_mean", LU_F32, LU_SHAPE(4), false);
    lu_tensor *b = lu_params_add(p, "layer.b", LU_F32, LU_SHAPE(7), true);
    lu_tensor *d = lu_params_add(p, "gain", LU_F64, LU_SHAPE(3), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    set_values(w, -1, 1, 1);
    set_values(buf, 5, 6, 2);
    set_values(b, -1, 1, 3);
    set_values(d, -1, 1, 4);
    double *buf0 = tu_to_doubles(buf);
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_ADAMW);
    c.weight_decay = 0.1;
    lu_optim *o = lu_optim_new(p, &c);
    cr_assert_not_null(o);
    lu_tensor *ts[3] = {w, b, d};
    double *rp[3], *rm[3], *rv[3];
    for (int k = 0; k < 3; k++) {
        int64_t n = lu_tensor_numel(ts[k]);
        rp[k] = tu_to_doubles(ts[k]);
        rm[k] = calloc((size_t)n, sizeof(double));
        rv[k] = calloc((size_t)n, sizeof(double));
    }
    const double lrs[3] = {1e-2, 5e-3, 2e-2};
    for (int step = 1; step <= 3; step++) {
        set_grads(p, (uint64_t)step, 1.0);
        for (int k = 0; k < 3; k++) {
            double *g = tu_to_doubles(ts[k]->grad);
            adamw_ref(rp[k], rm[k], rv[k], g, lu_tensor_numel(ts[k]), lrs[step - 1], &c, step);
            free(g);
        }
        cr_assert_eq(lu_optim_step(o, lrs[step - 1]), LU_OK);
        cr_assert_eq(lu_optim_steps(o), step);
    }
    tu_assert_close(w, rp[0], 15, 1e-6, 1e-5, "w after 3 steps");
    tu_assert_close(b, rp[1], 7, 1e-6, 1e-5, "b after 3 steps");
    tu_assert_close(d, rp[2], 3, 1e-14, 1e-13, "f64 gain after 3 steps");
    tu_assert_close(lu_params_get(lu_optim_state(o), "exp_avg.layer.w"), rm[0], 15, 1e-7, 1e-6, "exp_avg");
    tu_assert_close(lu_params_get(lu_optim_state(o), "exp_avg_sq.gain"), rv[2], 3, 1e-15, 1e-13, "exp_avg_sq");
    tu_assert_close(buf, buf0, 4, 0, 0, "non-trainable buffer untouched");
    for (int k = 0; k < 3; k++) {
        free(rp[k]);
        free(rm[k]);
        free(rv[k]);
    }
    free(buf0);
    lu_optim_free(o);
    lu_params_free(p);
}

Test(adamw, first_step_moves_each_weight_by_lr_against_its_gradient_sign)
{
    /* At t = 1, m/bc1 = g and sqrt(v/bc2) = |g|: without decay the step is -lr * sign(g). */
    lu_params *p = lu_params_new(LU_CPU);
    lu_tensor *w = lu_params_add(p, "w", LU_F64, LU_SHAPE(4), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    double g[4] = {0.5, -2.0, 3.0, -1e-3};
    memcpy(lu_tensor_data(w->grad), g, sizeof g);
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_ADAMW);
    c.weight_decay = 0;
    c.eps = 0;
    lu_optim *o = lu_optim_new(p, &c);
    cr_assert_eq(lu_optim_step(o, 0.25), LU_OK);
    double want[4] = {-0.25, 0.25, -0.25, 0.25};
    tu_assert_close(w, want, 4, 1e-15, 0, "sign step");
    lu_optim_free(o);
    lu_params_free(p);
}

Test(adamw, state_store_names_every_moment_and_the_step)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "a.weight", LU_F32, LU_SHAPE(2, 3), true);
    lu_params_add(p, "running", LU_F32, LU_SHAPE(2), false);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_ADAMW);
    cr_assert_float_eq(c.beta2, 0.999, 0);
    cr_assert_float_eq(c.weight_decay, 0.01, 0);
    lu_optim *o = lu_optim_new(p, &c);
    lu_params *st = lu_optim_state(o);
    cr_assert_eq(st->n, 3);
    cr_assert_not_null(lu_params_find(st, "exp_avg.a.weight"));
    cr_assert_not_null(lu_params_find(st, "exp_avg_sq.a.weight"));
    const lu_param *step = lu_params_find(st, "step");
    cr_assert(step && step->t->dtype == LU_I64);
    cr_assert_null(lu_params_find(st, "exp_avg.running"));
    cr_assert_eq(lu_optim_steps(o), 0);
    lu_optim_free(o);
    lu_params_free(p);
}

Test(adamw, rejects_bad_config_lr_and_stores)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "w", LU_F32, LU_SHAPE(2), true);
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_ADAMW);
    cr_assert_null(lu_optim_new(p, &c));
    tu_assert_error_contains("finalized");
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    c.beta2 = 1.0;
    cr_assert_null(lu_optim_new(p, &c));
    tu_assert_error_contains("betas");
    c.beta2 = 0.999;
    lu_optim *o = lu_optim_new(p, &c);
    cr_assert_eq(lu_optim_step(o, -1.0), LU_ERR_INVALID);
    tu_assert_error_contains("learning rate");
    cr_assert_eq(lu_optim_steps(o), 0);
    lu_optim_free(o);
    lu_params_free(p);

    lu_params *frozen = lu_params_new(LU_CPU);
    lu_params_add(frozen, "buf", LU_F32, LU_SHAPE(2), false);
    lu_params_finalize(frozen);
    cr_assert_null(lu_optim_new(frozen, &c));
    tu_assert_error_contains("no trainable parameters");
    lu_params_free(frozen);
}

Test(adamw, kernel_rejects_mismatched_tensors_and_step_zero)
{
    lu_tensor *a = lu_tensor_zeros(LU_F32, LU_SHAPE(3), LU_CPU), *b = lu_tensor_zeros(LU_F32, LU_SHAPE(4), LU_CPU);
    lu_tensor *none[1] = {NULL};
    lu_adamw_params prm = {1e-3, 0.9, 0.999, 1e-8, 0, 1};
    lu_tensor *bad[4] = {a, a, b, a};
    cr_assert_eq(lu_op_run(LU_OP_ADAMW, bad, 4, none, 0, &prm, sizeof prm), LU_ERR_SHAPE);
    tu_assert_error_contains("adamw: tensor 2");
    lu_tensor *ok[4] = {a, a, a, a};
    prm.step = 0;
    cr_assert_eq(lu_op_run(LU_OP_ADAMW, ok, 4, none, 0, &prm, sizeof prm), LU_ERR_INVALID);
    tu_assert_error_contains("1-based");
    lu_tensor_release(a);
    lu_tensor_release(b);
}

/* ---- ScaledAdam ----------------------------------------------------------------------------- */

/* A float64 transcription of icefall ScaledAdam (asr.md 9.6) for one group of tensors. */
typedef struct ref_tensor {
    int64_t n;
    double *p, *delta, *v;
    double rms, scale_sq, scale_grads[8];
} ref_tensor;

typedef struct ref_opt {
    ref_tensor t[4];
    int nt;
    double norms[100], threshold;
    int64_t step;
    double last_clip;
} ref_opt;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double ref_clip(ref_opt *r, double **g, const lu_optim_config *c)
{
    int64_t t = r->step;
    if (c->clipping_scale == 0 || t == 0) return 1.0;
    double sumsq = 0;
    for (int k = 0; k < r->nt; k++) {
        double w = r->t[k].n == 1 ? c->scalar_lr_scale : r->t[k].rms;
        for (int64_t j = 0; j < r->t[k].n; j++) sumsq += g[k][j] * g[k][j] * w * w;
    }
    double norm = sqrt(sumsq);
    r->norms[t % 100] = norm;
    bool early = t == 10 || t == 20 || t == 40;
    if (t % 100 == 0 || early) {
        double s[100];
        memcpy(s, r->norms, sizeof s);
        qsort(s, 100, sizeof *s, cmp_double);
        int64_t n = early ? t : 100;
        double median = s[100 - n + ((n / 4) * 2 < n - 1 ? (n / 4) * 2 : n - 1)];
        r->threshold = c->clipping_scale * median * (early ? 2 : 1);
    }
    return r->threshold < 0 ? 1.0 : fmin(1.0, r->threshold / (norm + 1e-20));
}

static void ref_step(ref_opt *r, double **g, double lr, const lu_optim_config *c)
{
    int64_t t = r->step, P = c->size_update_period;
    double clip = ref_clip(r, g, c);
    r->last_clip = clip;
    for (int k = 0; k < r->nt; k++) {
        ref_tensor *x = &r->t[k];
        bool scalar = x->n == 1;
        double factor = 1, ss = 0, lr_t = scalar ? lr * c->scalar_lr_scale : lr;
        bool size = false;
        if (!scalar) {
            double pg = 0, pp = 0;
            for (int64_t j = 0; j < x->n; j++) {
                pg += x->p[j] * g[k][j] * clip;
                pp += x->p[j] * x->p[j];
            }
            x->scale_grads[t % P] = pg;
            if (t == 0 || t % P == P - 1) x->rms = sqrt(pp / (double)x->n);
            factor = fmax(x->rms, c->param_min_rms);
            if (t % P == P - 1 && t > 0) {
                size = true;
                double b2c = pow(c->beta2, (double)P), sum = 0, sq = 0;
                for (int64_t q = 0; q < P; q++) {
                    sum += x->scale_grads[q];
                    sq += x->scale_grads[q] * x->scale_grads[q];
                }
                x->scale_sq = b2c * x->scale_sq + (1 - b2c) * sq / (double)P;
                ss = -lr * c->scalar_lr_scale * sqrt(1 - pow(b2c, (double)((t + 1) / P))) * sum /
                     (sqrt(x->scale_sq) + c->eps);
                if (x->rms < c->param_min_rms) ss = 0;
                ss = fmin(fmax(ss, -0.1), 0.1);
                ss = fmin(ss, (c->param_max_rms - x->rms) / x->rms);
            }
        }
        double bc2 = 1 - pow(c->beta2, (double)(t + 1));
        for (int64_t j = 0; j < x->n; j++) {
            double gj = g[k][j] * clip;
            x->v[j] = c->beta2 * x->v[j] + (1 - c->beta2) * gj * gj;
            double vh = bc2 < 0.99 ? x->v[j] / bc2 : x->v[j];
            double d = -lr_t * gj / (sqrt(vh) + c->eps) * factor + (size ? x->p[j] * ss : 0);
            x->delta[j] = c->beta1 * x->delta[j] + (1 - c->beta1) * d;
            x->p[j] += x->delta[j];
            if (scalar) x->p[j] = fmin(fmax(x->p[j], -c->scalar_max), c->scalar_max);
        }
    }
    r->step++;
}

/* A store with a matrix, a bias and a scalar (f64), its optimiser and the reference. */
typedef struct sa_fixture {
    lu_params *p;
    lu_tensor *t[3];
    lu_optim *o;
    lu_optim_config c;
    ref_opt r;
} sa_fixture;

static void sa_setup(sa_fixture *f, double clipping_scale)
{
    memset(f, 0, sizeof *f);
    f->p = lu_params_new(LU_CPU);
    f->t[0] = lu_params_add(f->p, "enc.w", LU_F64, LU_SHAPE(4, 6), true);
    lu_params_add(f->p, "enc.running", LU_F64, LU_SHAPE(3), false);
    f->t[1] = lu_params_add(f->p, "enc.b", LU_F64, LU_SHAPE(5), true);
    f->t[2] = lu_params_add(f->p, "enc.scale", LU_F64, LU_SHAPE(1), true);
    cr_assert_eq(lu_params_finalize(f->p), LU_OK);
    set_values(f->t[0], -0.5, 0.5, 11);
    set_values(f->t[1], -0.1, 0.1, 12);
    set_values(f->t[2], 0.5, 1.5, 13);
    lu_optim_config_defaults(&f->c, LU_OPTIM_SCALED_ADAM);
    f->c.clipping_scale = clipping_scale;
    f->o = lu_optim_new(f->p, &f->c);
    cr_assert_not_null(f->o);
    f->r.nt = 3;
    f->r.threshold = -1;
    for (int k = 0; k < 3; k++) {
        ref_tensor *x = &f->r.t[k];
        x->n = lu_tensor_numel(f->t[k]);
        x->p = tu_to_doubles(f->t[k]);
        x->delta = calloc((size_t)x->n, sizeof(double));
        x->v = calloc((size_t)x->n, sizeof(double));
    }
}

static void sa_teardown(sa_fixture *f)
{
    for (int k = 0; k < 3; k++) {
        free(f->r.t[k].p);
        free(f->r.t[k].delta);
        free(f->r.t[k].v);
    }
    lu_optim_free(f->o);
    lu_params_free(f->p);
}

/* Steps both the optimiser and the reference on the store's current gradients. */
static void sa_step_both(sa_fixture *f, double lr)
{
    double *g[3];
    for (int k = 0; k < 3; k++) g[k] = tu_to_doubles(f->t[k]->grad);
    ref_step(&f->r, g, lr, &f->c);
    cr_assert_eq(lu_optim_step(f->o, lr), LU_OK, "%s", lu_error_message());
    for (int k = 0; k < 3; k++) free(g[k]);
}

static void sa_assert_matches(sa_fixture *f, const char *when)
{
    char what[96];
    for (int k = 0; k < 3; k++) {
        snprintf(what, sizeof what, "%s: tensor %d", when, k);
        tu_assert_close(f->t[k], f->r.t[k].p, f->r.t[k].n, 1e-13, 1e-11, what);
    }
}

Test(scaled_adam, first_step_is_rms_scaled_sign_step)
{
    /* At t = 0: v/bc2 = g^2, so delta = (1-b1) * -lr * sign(g) * rms(p); scalars use lr*0.1. */
    lu_params *p = lu_params_new(LU_CPU);
    lu_tensor *w = lu_params_add(p, "w", LU_F64, LU_SHAPE(2, 2), true);
    lu_tensor *s = lu_params_add(p, "s", LU_F64, LU_SHAPE(1), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    double w0[4] = {2, -2, 2, -2}, gw[4] = {0.5, -2, 1, 4}, s0 = 1.0, gs = 3.0;
    memcpy(lu_tensor_data(w), w0, sizeof w0);
    memcpy(lu_tensor_data(w->grad), gw, sizeof gw);
    *(double *)lu_tensor_data(s) = s0;
    *(double *)lu_tensor_data(s->grad) = gs;
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_SCALED_ADAM);
    c.eps = 0;
    lu_optim *o = lu_optim_new(p, &c);
    cr_assert_eq(lu_optim_step(o, 0.1), LU_OK);
    double want_w[4] = {2 - 0.02, -2 + 0.02, 2 - 0.02, -2 - 0.02}; /* rms 2: 0.1 * 0.1 * 2 */
    tu_assert_close(w, want_w, 4, 1e-15, 0, "matrix");
    double want_s = 1.0 - 0.1 * 0.01;                            /* (1-b1) * lr*0.1 */
    tu_assert_close(s, &want_s, 1, 1e-15, 0, "scalar");
    lu_optim_free(o);
    lu_params_free(p);
}

Test(scaled_adam, twelve_steps_match_reference_including_size_updates)
{
    sa_fixture f;
    sa_setup(&f, 2.0);
    for (int step = 0; step < 12; step++) {
        set_grads(f.p, 100 + (uint64_t)step, 1.0 + 0.3 * step);
        sa_step_both(&f, 0.045);
        char when[32];
        snprintf(when, sizeof when, "step %d", step);
        sa_assert_matches(&f, when);
    }
    double *rms = tu_to_doubles(lu_params_get(lu_optim_state(f.o), "param_rms.enc.w"));
    cr_assert(fabs(rms[0] - f.r.t[0].rms) <= 1e-14, "param_rms %g vs %g", rms[0], f.r.t[0].rms);
    free(rms);
    cr_assert_eq(lu_optim_steps(f.o), 12);
    sa_teardown(&f);
}

Test(scaled_adam, scale_step_is_clamped_when_gradients_keep_shrinking_the_tensor)
{
    /* g = p makes every sum(p * g) positive: at lr 1 the raw scale step is about -0.4 per size
     * update and the clamp at -0.1 decides the result. */
    sa_fixture f;
    sa_setup(&f, 0);
    for (int step = 0; step < 8; step++) {
        for (int k = 0; k < 3; k++) cr_assert_eq(lu_tensor_copy(f.t[k]->grad, f.t[k]), LU_OK);
        sa_step_both(&f, 1.0);
    }
    sa_assert_matches(&f, "after two size updates");
    sa_teardown(&f);
}

Test(scaled_adam, scalar_is_clamped_to_scalar_max)
{
    sa_fixture f;
    sa_setup(&f, 0);
    *(double *)lu_tensor_data(f.t[2]) = 9.999;
    f.r.t[2].p[0] = 9.999;
    for (int step = 0; step < 5; step++) {
        set_grads(f.p, 300 + (uint64_t)step, 1.0);
        *(double *)lu_tensor_data(f.t[2]->grad) = -50.0; /* pushes the scalar up */
        sa_step_both(&f, 0.5);
    }
    cr_assert_eq(*(double *)lu_tensor_data(f.t[2]), 10.0);
    sa_assert_matches(&f, "after clamping");
    sa_teardown(&f);
}

Test(scaled_adam, clipping_starts_at_the_first_median_estimate)
{
    /* Two optimisers, with and without clipping, see the same gradients; a gradient 1000x too
     * large at step 5 is not clipped (no estimate yet), one at step 10 is (threshold = 2 * 2 *
     * median of the last 10 norms). */
    sa_fixture a, b;
    sa_setup(&a, 2.0);
    sa_setup(&b, 0.0);
    for (int step = 0; step <= 10; step++) {
        double scale = step == 5 || step == 10 ? 1000.0 : 1.0;
        set_grads(a.p, 500 + (uint64_t)step, scale);
        set_grads(b.p, 500 + (uint64_t)step, scale);
        sa_step_both(&a, 0.03);
        sa_step_both(&b, 0.03);
        bool same = !memcmp(lu_tensor_data(a.p->flat[LU_F64]), lu_tensor_data(b.p->flat[LU_F64]),
                            lu_tensor_nbytes(a.p->flat[LU_F64]));
        if (step < 10) cr_assert(same, "step %d: clipping changed an update before the first estimate", step);
        else cr_assert(!same, "step 10: the 1000x gradient was not clipped");
    }
    cr_assert(a.r.last_clip < 0.01, "reference clip factor %g", a.r.last_clip);
    sa_assert_matches(&a, "clipped step 10");
    double thr = lu_tensor_item(lu_params_get(lu_optim_state(a.o), "model_norm_threshold"));
    cr_assert(fabs(thr - a.r.threshold) <= 1e-12 * a.r.threshold, "threshold %g vs %g", thr, a.r.threshold);
    sa_teardown(&a);
    sa_teardown(&b);
}

Test(scaled_adam, does_not_modify_the_gradients)
{
    sa_fixture f;
    sa_setup(&f, 2.0);
    for (int step = 0; step < 12; step++) {
        set_grads(f.p, 700 + (uint64_t)step, step == 11 ? 100.0 : 1.0);
        double *before = tu_to_doubles(f.p->flat_grad[LU_F64]);
        sa_step_both(&f, 0.04);
        tu_assert_close(f.p->flat_grad[LU_F64], before, lu_tensor_numel(f.p->flat_grad[LU_F64]), 0, 0, "grads");
        free(before);
    }
    sa_teardown(&f);
}

Test(scaled_adam, state_holds_per_tensor_statistics)
{
    sa_fixture f;
    sa_setup(&f, 2.0);
    lu_params *st = lu_optim_state(f.o);
    const char *present[] = {"delta.enc.w", "exp_avg_sq.enc.w", "param_rms.enc.w", "scale_exp_avg_sq.enc.w",
                             "scale_grads.enc.w", "delta.enc.scale", "exp_avg_sq.enc.scale", "model_norms",
                             "model_norm_threshold", "step"};
    for (size_t i = 0; i < sizeof present / sizeof *present; i++)
        cr_assert_not_null(lu_params_find(st, present[i]), "missing %s", present[i]);
    cr_assert_null(lu_params_find(st, "param_rms.enc.scale"), "scalars have no rms");
    cr_assert_null(lu_params_find(st, "delta.enc.running"), "buffers have no state");
    cr_assert_eq(lu_params_get(st, "scale_grads.enc.w")->shape[0], 4);
    sa_teardown(&f);
}

Test(scaled_adam, rejects_half_precision_parameters)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "emb", LU_BF16, LU_SHAPE(4, 2), true);
    lu_params_finalize(p);
    lu_optim_config c;
    lu_optim_config_defaults(&c, LU_OPTIM_SCALED_ADAM);
    cr_assert_null(lu_optim_new(p, &c));
    tu_assert_error_contains("'emb' is bf16");
    c.size_update_period = 0;
    cr_assert_null(lu_optim_new(p, &c));
    tu_assert_error_contains("size_update_period");
    lu_params_free(p);
}

/* ---- gradient norm and clipping ------------------------------------------------------------- */

static lu_params *mixed_store(void)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "a", LU_F32, LU_SHAPE(3, 4), true);
    lu_params_add(p, "frozen", LU_F32, LU_SHAPE(5), false);
    lu_params_add(p, "b", LU_F64, LU_SHAPE(5), true);
    lu_params_add(p, "c", LU_BF16, LU_SHAPE(2), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    set_grads(p, 900, 2.0);
    return p;
}

static double ref_norm(lu_params *p)
{
    double s = 0;
    for (int i = 0; i < p->n; i++) {
        if (!p->items[i].trainable) continue;
        double *g = tu_to_doubles(p->items[i].t->grad);
        for (int64_t j = 0; j < lu_tensor_numel(p->items[i].t); j++) s += g[j] * g[j];
        free(g);
    }
    return sqrt(s);
}

Test(grad_norm, global_norm_covers_every_trainable_dtype)
{
    lu_params *p = mixed_store();
    double want = ref_norm(p);
    cr_assert(want > 0);
    cr_assert(fabs(lu_grad_global_norm(p) - want) <= 1e-12 * want);
    lu_params_free(p);
}

Test(grad_norm, clip_scales_by_max_over_norm_and_returns_the_norm)
{
    lu_params *p = mixed_store();
    double norm = ref_norm(p);
    double *a = tu_to_doubles(lu_params_get(p, "a")->grad), *b = tu_to_doubles(lu_params_get(p, "b")->grad);
    double got = lu_clip_grad_norm(p, 0.5);
    cr_assert(fabs(got - norm) <= 1e-12 * norm, "returned %g, norm %g", got, norm);
    double coef = 0.5 / (norm + 1e-6);
    for (int i = 0; i < 12; i++) a[i] *= coef;
    for (int i = 0; i < 5; i++) b[i] *= coef;
    tu_assert_close(lu_params_get(p, "a")->grad, a, 12, 1e-7, 1e-6, "clipped f32");
    tu_assert_close(lu_params_get(p, "b")->grad, b, 5, 1e-15, 1e-14, "clipped f64");
    cr_assert(fabs(lu_grad_global_norm(p) - 0.5) <= 1e-2, "norm after clipping %g", lu_grad_global_norm(p));
    free(a);
    free(b);
    lu_params_free(p);
}

Test(grad_norm, clip_below_threshold_leaves_gradients_bit_identical)
{
    lu_params *p = mixed_store();
    size_t nb = lu_tensor_nbytes(p->flat_grad[LU_F32]);
    void *before = malloc(nb);
    memcpy(before, lu_tensor_data(p->flat_grad[LU_F32]), nb);
    double norm = lu_clip_grad_norm(p, 1e3);
    cr_assert(norm > 0 && norm < 1e3);
    cr_assert(!memcmp(before, lu_tensor_data(p->flat_grad[LU_F32]), nb));
    free(before);
    lu_params_free(p);
}

Test(grad_norm, nonfinite_gradient_gives_nonfinite_norm)
{
    lu_params *p = mixed_store();
    ((float *)lu_tensor_data(lu_params_get(p, "a")->grad))[3] = INFINITY;
    cr_assert(isinf(lu_grad_global_norm(p)));
    ((float *)lu_tensor_data(lu_params_get(p, "a")->grad))[3] = NAN;
    cr_assert(isnan(lu_grad_global_norm(p)));
    lu_params_free(p);
}

/* f32/f64 CPU gradients take the in-place path (several chunks of 16384 on OpenMP threads): the
 * same norm and clipping, identical for any thread count. */
Test(grad_norm, in_place_path_matches_and_ignores_the_thread_count)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_params_add(p, "big", LU_F32, LU_SHAPE(700, 301), true);
    lu_params_add(p, "frozen", LU_F32, LU_SHAPE(50), false);
    lu_params_add(p, "small", LU_F64, LU_SHAPE(7), true);
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    set_grads(p, 901, 3.0);
    double want = ref_norm(p);
    double *big = tu_to_doubles(lu_params_get(p, "big")->grad);
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    double one = lu_grad_global_norm(p);
    omp_set_num_threads(threads > 1 ? threads : 2);
    double many = lu_grad_global_norm(p);
    cr_assert(one == many, "norm %.17g on one thread, %.17g on several", one, many);
    cr_assert(fabs(one - want) <= 1e-12 * want, "norm %.17g, reference %.17g", one, want);
    double got = lu_clip_grad_norm(p, 1.0);
    cr_assert(got == one);
    double coef = 1.0 / (one + 1e-6);
    for (int64_t i = 0; i < 700 * 301; i++) big[i] = (float)(big[i] * coef);
    tu_assert_close(lu_params_get(p, "big")->grad, big, 700 * 301, 0, 0, "clipped in place");
    omp_set_num_threads(threads);
    free(big);
    lu_params_free(p);
}
