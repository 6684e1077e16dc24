/* test_reduce.c - sum/mean/max over a dim or all dims, softmax and log-softmax, and the fused
 * softmax cross-entropy: forward against float64 loops, backward by finite differences. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

typedef enum red { R_SUM, R_MEAN, R_MAX } red;

static lu_tensor *red_apply(red op, lu_tensor *x, int dim, bool keepdim)
{
    return op == R_SUM ? lu_sum(x, dim, keepdim) : op == R_MEAN ? lu_mean(x, dim, keepdim) : lu_max(x, dim, keepdim);
}

/* [outer, n, inner] around dim of a contiguous shape (dim LU_ALL_DIMS: everything). */
static void geom(const int64_t *shape, int nd, int dim, int64_t *outer, int64_t *n, int64_t *inner)
{
    *outer = *inner = *n = 1;
    for (int i = 0; i < nd; i++) {
        if (dim == LU_ALL_DIMS || i == dim) *n *= shape[i];
        else if (i < dim) *outer *= shape[i];
        else *inner *= shape[i];
    }
}

static void ref_reduce(red op, const double *x, const int64_t *shape, int nd, int dim, double *y)
{
    int64_t outer, n, inner;
    geom(shape, nd, dim, &outer, &n, &inner);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            double acc = op == R_MAX ? -INFINITY : 0;
            for (int64_t j = 0; j < n; j++) {
                double v = x[(o * n + j) * inner + i];
                acc = op == R_MAX ? fmax(acc, v) : acc + v;
            }
            y[o * inner + i] = op == R_MEAN ? acc / (double)n : acc;
        }
}

static void check_reduce(red op, lu_dtype dt, double tol)
{
    int64_t shape[3] = {3, 5, 7};
    lu_tensor *x = tu_rand(dt, 3, shape, -2, 2, 1 + (uint64_t)op);
    double *xv = tu_to_doubles(x), ref[105];
    for (int dim = -1; dim < 3; dim++) {
        for (int keep = 0; keep < 2; keep++) {
            lu_tensor *y = red_apply(op, x, dim, keep);
            cr_assert(y, "%s", lu_error_message());
            int expect_nd = keep ? 3 : dim == LU_ALL_DIMS ? 0 : 2;
            cr_assert_eq(y->ndim, expect_nd, "dim %d keepdim %d: %d dims", dim, keep, y->ndim);
            if (keep) cr_assert_eq(y->shape[dim == LU_ALL_DIMS ? 0 : dim], 1);
            ref_reduce(op, xv, shape, 3, dim, ref);
            tu_assert_close(y, ref, lu_tensor_numel(y), tol, tol, "reduce");
            lu_tensor_release(y);
        }
    }
    free(xv);
    lu_tensor_release(x);
}

Test(reduce, sum_matches_reference_every_dim) { check_reduce(R_SUM, LU_F32, 1e-6); }
Test(reduce, mean_matches_reference_every_dim) { check_reduce(R_MEAN, LU_F32, 1e-6); }
Test(reduce, max_matches_reference_every_dim) { check_reduce(R_MAX, LU_F64, 0); }
Test(reduce, sum_f64_matches_reference) { check_reduce(R_SUM, LU_F64, 1e-13); }

Test(reduce, negative_dims_count_from_the_end)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 5, 7), -1, 1, 5);
    lu_tensor *a = lu_sum(x, -2, false), *b = lu_sum(x, 1, false);
    tu_assert_tensors_close(a, b, 0, 0, "dim -2 == dim 1");
    lu_tensor_release(a);
    lu_tensor_release(b);
    lu_tensor_release(x);
}

Test(reduce, f32_sums_accumulate_in_double)
{
    /* 3M values of 0.1f: a float accumulator drifts by ~1e-3 relative; double stays exact to
     * ~1e-12. Covers the one-long-run (blocked) and the row-per-output paths. */
    int64_t n = 3000000;
    lu_tensor *x = lu_tensor_full(LU_F32, LU_SHAPE(2, n / 2), LU_CPU, 0.1);
    double v = (double)0.1f;
    lu_tensor *all = lu_sum(x, LU_ALL_DIMS, false), *rows = lu_sum(x, 1, false), *m = lu_mean(x, LU_ALL_DIMS, false);
    cr_assert_float_eq(lu_tensor_item(all), (float)(v * (double)n), 1e-12 * v * (double)n);
    tu_assert_close(rows, (double[]){(float)(v * (double)(n / 2)), (float)(v * (double)(n / 2))}, 2, 0, 1e-7, "rows");
    cr_assert_float_eq(lu_tensor_item(m), 0.1f, 1e-9);
    lu_tensor_release(all);
    lu_tensor_release(rows);
    lu_tensor_release(m);
    lu_tensor_release(x);
}

Test(reduce, sum_over_leading_dim_of_a_large_tensor)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(301, 130), -1, 1, 6);
    lu_tensor *y = lu_sum(x, 0, false);
    double *xv = tu_to_doubles(x), ref[130];
    ref_reduce(R_SUM, xv, (int64_t[]){301, 130}, 2, 0, ref);
    tu_assert_close(y, ref, 130, 1e-5, 1e-6, "column sums");
    free(xv);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(reduce, works_on_strided_and_expanded_views)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(4, 1, 3), -1, 1, 7);
    lu_tensor *e = lu_expand(x, LU_SHAPE(4, 5, 3)), *t = lu_transpose(e, 0, 2); /* [3, 5, 4], strides 1, 0, 3 */
    lu_tensor *y = lu_sum(t, 1, false);
    double *xv = tu_to_doubles(x), ref[12];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) ref[i * 4 + j] = 5 * xv[j * 3 + i];
    tu_assert_close(y, ref, 12, 1e-14, 1e-14, "sum of expanded transposed view");
    free(xv);
    lu_tensor_release(y);
    lu_tensor_release(t);
    lu_tensor_release(e);
    lu_tensor_release(x);
}

typedef struct red_case { red op; int dim; bool keepdim; } red_case;

static lu_tensor *red_fn(lu_tensor **in, void *ctx)
{
    const red_case *c = ctx;
    return red_apply(c->op, in[0], c->dim, c->keepdim);
}

Test(reduce, backward_matches_finite_differences)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 5, 7), -2, 2, 8);
    for (int op = R_SUM; op <= R_MAX; op++)
        for (int dim = -1; dim < 3; dim++) {
            red_case c = {op, dim, dim == 1};
            tu_gradcheck(red_fn, &x, 1, (bool[]){true}, &c, 1e-6, 1e-8, 1e-6, 105, "reduce grad");
        }
    lu_tensor_release(x);
}

Test(reduce, max_gradient_goes_to_the_first_maximum)
{
    double xs[6] = {1, 3, 3, 2, 5, 5};
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(2, 3), LU_CPU, xs);
    lu_tensor_set_requires_grad(x, true);
    lu_tensor *y = lu_max(x, 1, false);
    tu_assert_close(y, (double[]){3, 5}, 2, 0, 0, "max");
    lu_tensor *ones = lu_tensor_full(LU_F64, LU_SHAPE(2), LU_CPU, 1.0);
    cr_assert_eq(lu_backward_from(y, ones), LU_OK, "%s", lu_error_message());
    tu_assert_close(x->grad, (double[]){0, 1, 0, 0, 1, 0}, 6, 0, 0, "grad to first max");
    lu_tensor_release(ones);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(reduce, max_propagates_nan)
{
    double xs[4] = {1, NAN, 7, 2};
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(4), LU_CPU, xs);
    lu_tensor *y = lu_max(x, LU_ALL_DIMS, false);
    cr_assert(isnan(lu_tensor_item(y)));
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(reduce, rejects_bad_dims_and_dtypes)
{
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3), LU_CPU), *e = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 0), LU_CPU);
    lu_tensor *i = lu_tensor_zeros(LU_I32, LU_SHAPE(2), LU_CPU);
    cr_assert_null(lu_sum(x, 2, false));
    tu_assert_error_contains("sum: dim 2 out of range for a tensor of shape [2, 3]");
    cr_assert_null(lu_max(e, 1, false));
    tu_assert_error_contains("max: cannot reduce an empty dim of a tensor of shape [2, 0]");
    cr_assert_null(lu_mean(i, 0, false));
    tu_assert_error_contains("mean: needs a float tensor, got [2] i32");
    lu_tensor_release(x);
    lu_tensor_release(e);
    lu_tensor_release(i);
}

/* ---- softmax / log-softmax ------------------------------------------------------------- */

static void ref_softmax(const double *x, const int64_t *shape, int nd, int dim, bool log_form, double *y)
{
    int64_t outer, n, inner;
    geom(shape, nd, dim, &outer, &n, &inner);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            double mx = -INFINITY, s = 0;
            for (int64_t j = 0; j < n; j++) mx = fmax(mx, x[(o * n + j) * inner + i]);
            for (int64_t j = 0; j < n; j++) s += exp(x[(o * n + j) * inner + i] - mx);
            for (int64_t j = 0; j < n; j++) {
                double v = x[(o * n + j) * inner + i] - mx;
                y[(o * n + j) * inner + i] = log_form ? v - log(s) : exp(v) / s;
            }
        }
}

static void check_softmax(bool log_form, lu_dtype dt, double tol)
{
    int64_t shape[3] = {3, 5, 7};
    lu_tensor *x = tu_rand(dt, 3, shape, -4, 4, 9);
    double *xv = tu_to_doubles(x), ref[105];
    for (int dim = 0; dim < 3; dim++) {
        lu_tensor *y = log_form ? lu_log_softmax(x, dim) : lu_softmax(x, dim);
        ref_softmax(xv, shape, 3, dim, log_form, ref);
        tu_assert_close(y, ref, 105, tol, tol, log_form ? "log_softmax" : "softmax");
        lu_tensor_release(y);
    }
    free(xv);
    lu_tensor_release(x);
}

Test(softmax, matches_reference_on_odd_sizes_every_dim) { check_softmax(false, LU_F64, 1e-14); }
Test(softmax, f32_matches_reference) { check_softmax(false, LU_F32, 1e-6); }
Test(log_softmax, matches_reference_on_odd_sizes_every_dim) { check_softmax(true, LU_F64, 1e-13); }
Test(log_softmax, f32_matches_reference) { check_softmax(true, LU_F32, 2e-6); }

Test(softmax, large_logits_do_not_overflow)
{
    float xs[3] = {1000.0f, 1001.0f, 999.0f};
    lu_tensor *x = lu_tensor_from_host(LU_F32, LU_SHAPE(1, 3), LU_CPU, xs);
    lu_tensor *y = lu_softmax(x, -1), *l = lu_log_softmax(x, -1);
    double s = exp(-1.0) + 1 + exp(-2.0);
    tu_assert_close(y, (double[]){exp(-1.0) / s, 1 / s, exp(-2.0) / s}, 3, 1e-7, 1e-6, "softmax of large logits");
    tu_assert_close(l, (double[]){-1 - log(s), -log(s), -2 - log(s)}, 3, 1e-6, 1e-6, "log_softmax of large logits");
    lu_tensor_release(y);
    lu_tensor_release(l);
    lu_tensor_release(x);
}

typedef struct sm_case { bool log_form; int dim; } sm_case;

static lu_tensor *sm_fn(lu_tensor **in, void *ctx)
{
    const sm_case *c = ctx;
    return c->log_form ? lu_log_softmax(in[0], c->dim) : lu_softmax(in[0], c->dim);
}

Test(softmax, backward_matches_finite_differences)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 5, 7), -2, 2, 10);
    for (int lf = 0; lf < 2; lf++)
        for (int dim = -3; dim < 0; dim++) {
            sm_case c = {lf, dim};
            tu_gradcheck(sm_fn, &x, 1, (bool[]){true}, &c, 1e-6, 1e-8, 1e-6, 105, lf ? "log_softmax grad" : "softmax grad");
        }
    lu_tensor_release(x);
}

Test(softmax, rejects_dim_out_of_range)
{
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3), LU_CPU);
    cr_assert_null(lu_softmax(x, 2));
    tu_assert_error_contains("softmax: dim 2 out of range for a tensor of shape [2, 3]");
    cr_assert_null(lu_log_softmax(x, -3));
    tu_assert_error_contains("log_softmax: dim -3 out of range");
    lu_tensor_release(x);
}

/* ---- cross-entropy ---------------------------------------------------------------------- */

/* torch.nn.functional.cross_entropy in float64: per-row losses into rows (0 when ignored),
 * returns the reduced loss. */
static double ref_xent(const double *x, const lu_tensor *target, int64_t N, int64_t V, int64_t ignore, lu_reduction r,
                       double *rows)
{
    double total = 0;
    int64_t count = 0;
    for (int64_t i = 0; i < N; i++) {
        int64_t t = target->dtype == LU_I64 ? ((int64_t *)lu_tensor_data(target))[i] : ((int32_t *)lu_tensor_data(target))[i];
        rows[i] = 0;
        if (t == ignore) continue;
        double mx = -INFINITY, s = 0;
        for (int64_t j = 0; j < V; j++) mx = fmax(mx, x[i * V + j]);
        for (int64_t j = 0; j < V; j++) s += exp(x[i * V + j] - mx);
        rows[i] = log(s) + mx - x[i * V + t];
        total += rows[i];
        count++;
    }
    return r == LU_REDUCE_SUM ? total : total / (double)count;
}

/* Targets in [0, V) with every third one set to ignore_index. */
static lu_tensor *make_targets(lu_dtype dt, int ndim, const int64_t *shape, int64_t V, int64_t ignore, uint64_t seed)
{
    lu_tensor *t = tu_randint(dt, ndim, shape, V, seed);
    int64_t n = lu_tensor_numel(t);
    for (int64_t i = 0; i < n; i += 3) {
        if (dt == LU_I64) ((int64_t *)lu_tensor_data(t))[i] = ignore;
        else ((int32_t *)lu_tensor_data(t))[i] = (int32_t)ignore;
    }
    return t;
}

Test(cross_entropy, matches_reference_for_every_reduction)
{
    int64_t N = 3 * 5, V = 7;
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), -3, 3, 11);
    double *xv = tu_to_doubles(x), rows[15];
    for (int dt = 0; dt < 2; dt++) {
        lu_tensor *t = make_targets(dt ? LU_I64 : LU_I32, LU_SHAPE(3, 5), V, -100, 12);
        double mean = ref_xent(xv, t, N, V, -100, LU_REDUCE_MEAN, rows);
        double sum = ref_xent(xv, t, N, V, -100, LU_REDUCE_SUM, rows);
        lu_tensor *lm = lu_cross_entropy(x, t, -100, LU_REDUCE_MEAN), *ls = lu_cross_entropy(x, t, -100, LU_REDUCE_SUM);
        lu_tensor *ln = lu_cross_entropy(x, t, -100, LU_REDUCE_NONE);
        cr_assert(lm && ls && ln, "%s", lu_error_message());
        cr_assert_eq(lm->ndim, 0);
        cr_assert(ln->ndim == 2 && ln->shape[0] == 3 && ln->shape[1] == 5, "none keeps the target's shape");
        tu_assert_close(lm, &mean, 1, 1e-6, 1e-6, "mean");
        tu_assert_close(ls, &sum, 1, 1e-5, 1e-6, "sum");
        tu_assert_close(ln, rows, N, 1e-6, 1e-6, "none (ignored rows 0)");
        lu_tensor_release(lm);
        lu_tensor_release(ls);
        lu_tensor_release(ln);
        lu_tensor_release(t);
    }
    free(xv);
    lu_tensor_release(x);
}

Test(cross_entropy, large_logits_are_stable)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(4, 1001), 500, 510, 13);
    lu_tensor *t = tu_randint(LU_I64, LU_SHAPE(4), 1001, 14);
    double *xv = tu_to_doubles(x), rows[4];
    double ref = ref_xent(xv, t, 4, 1001, -100, LU_REDUCE_MEAN, rows);
    lu_tensor *l = lu_cross_entropy(x, t, -100, LU_REDUCE_MEAN);
    tu_assert_close(l, &ref, 1, 1e-4, 1e-5, "loss of logits near 500");
    free(xv);
    lu_tensor_release(l);
    lu_tensor_release(t);
    lu_tensor_release(x);
}

typedef struct xent_case { lu_tensor *target; lu_reduction red; } xent_case;

static lu_tensor *xent_fn(lu_tensor **in, void *ctx)
{
    const xent_case *c = ctx;
    return lu_cross_entropy(in[0], c->target, -100, c->red);
}

Test(cross_entropy, backward_matches_finite_differences)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 5, 7), -2, 2, 15);
    lu_tensor *t = make_targets(LU_I64, LU_SHAPE(3, 5), 7, -100, 16);
    for (int r = LU_REDUCE_MEAN; r <= LU_REDUCE_NONE; r++) {
        xent_case c = {t, r};
        tu_gradcheck(xent_fn, &x, 1, (bool[]){true}, &c, 1e-6, 1e-8, 1e-6, 105, "cross_entropy grad");
    }
    lu_tensor_release(t);
    lu_tensor_release(x);
}

/* 16-bit logits (the GPU's compute dtype) give an f32 loss, not one rounded to 8 significant
 * bits: the CPU runs them through its f32 kernel, so the loss equals, bit for bit, that of f32
 * logits holding the same values, for every reduction (every third row ignored). dloss is f32
 * (dy below, not 1, so that a misread dtype shows); the gradient comes back in the logits' dtype:
 * the f32 one rounded to nearest, within half an ulp (2^-8 relative for bf16, 2^-11 for f16, and
 * half f16's smallest subnormal, 2^-25, near 0). */
Test(cross_entropy, sixteen_bit_logits_give_an_f32_loss_and_a_rounded_gradient)
{
    const lu_dtype dts[2] = {LU_BF16, LU_F16};
    const double rtol[2] = {0x1p-8, 0x1p-11}, atol[2] = {0, 0x1p-25};
    lu_tensor *t = make_targets(LU_I64, LU_SHAPE(3, 5), 7, -100, 19);
    for (int d = 0; d < 2; d++) {
        lu_tensor *x32 = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), -3, 3, 18);
        lu_tensor *xh = lu_tensor_convert(x32, dts[d], LU_CPU), *xf = lu_tensor_convert(xh, LU_F32, LU_CPU);
        cr_assert(xh && xf, "%s", lu_error_message());
        lu_tensor_set_requires_grad(xh, true);
        lu_tensor_set_requires_grad(xf, true);
        for (int r = LU_REDUCE_MEAN; r <= LU_REDUCE_NONE; r++) {
            char what[96];
            /* One loss at a time: a backward clears the whole tape. */
            lu_tensor *lh = lu_cross_entropy(xh, t, -100, r);
            cr_assert(lh, "%s", lu_error_message());
            cr_assert(lh->dtype == LU_F32, "%s logits, reduction %d: the loss is %s, not f32", lu_dtype_name(dts[d]),
                      r, lu_dtype_name(lh->dtype));
            lu_tensor *dy = tu_rand(LU_F32, lh->ndim, lh->shape, 0.5, 1.5, 20 + (uint64_t)r);
            cr_assert_eq(lu_backward_from(lh, dy), LU_OK, "%s", lu_error_message());
            lu_tensor *lf = lu_cross_entropy(xf, t, -100, r);
            cr_assert(lf, "%s", lu_error_message());
            snprintf(what, sizeof what, "%s logits, reduction %d: loss", lu_dtype_name(dts[d]), r);
            tu_assert_tensors_close(lh, lf, 0, 0, what);
            cr_assert_eq(lu_backward_from(lf, dy), LU_OK, "%s", lu_error_message());
            cr_assert(xh->grad && xh->grad->dtype == dts[d], "the gradient is in the logits' dtype");
            snprintf(what, sizeof what, "%s logits, reduction %d: gradient", lu_dtype_name(dts[d]), r);
            tu_assert_tensors_close(xh->grad, xf->grad, atol[d], rtol[d], what);
            lu_tensor_zero_grad(xh);
            lu_tensor_zero_grad(xf);
            lu_tensor_release(dy);
            lu_tensor_release(lh);
            lu_tensor_release(lf);
        }
        lu_tensor_release(x32);
        lu_tensor_release(xh);
        lu_tensor_release(xf);
    }
    lu_tensor_release(t);
}

Test(cross_entropy, all_ignored_mean_is_nan_like_torch)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 4), -1, 1, 17);
    lu_tensor *t = lu_tensor_full(LU_I64, LU_SHAPE(3), LU_CPU, -100);
    lu_tensor_set_requires_grad(x, true);
    lu_tensor *m = lu_cross_entropy(x, t, -100, LU_REDUCE_MEAN);
    cr_assert(m && isnan(lu_tensor_item(m)), "torch returns nan for a mean over zero targets");
    /* The gradient of ignored rows is zero, not NaN. */
    cr_assert_eq(lu_backward(m), LU_OK, "%s", lu_error_message());
    double zeros[12] = {0};
    tu_assert_close(x->grad, zeros, 12, 0, 0, "grad of ignored rows");
    lu_tensor *s = lu_cross_entropy(x, t, -100, LU_REDUCE_SUM);
    cr_assert_float_eq(lu_tensor_item(s), 0.0, 0);
    lu_tensor_release(s);
    lu_tensor_release(m);
    lu_tensor_release(t);
    lu_tensor_release(x);
}

Test(cross_entropy, rejects_targets_out_of_range_naming_value_and_position)
{
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(4, 5), LU_CPU);
    int32_t bad[4] = {0, 4, 5, -100};
    lu_tensor *t = lu_tensor_from_host(LU_I32, LU_SHAPE(4), LU_CPU, bad);
    cr_assert_null(lu_cross_entropy(x, t, -100, LU_REDUCE_MEAN));
    tu_assert_error_contains("cross_entropy: target 5 at position 2 is outside [0, 5)");
    cr_assert_null(lu_cross_entropy(x, t, -1, LU_REDUCE_SUM));
    tu_assert_error_contains("target 5 at position 2");
    lu_tensor_release(t);
    lu_tensor_release(x);
}

Test(cross_entropy, rejects_mismatched_target_shape_and_dtype)
{
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(4, 5), LU_CPU), *t3 = lu_tensor_zeros(LU_I64, LU_SHAPE(3), LU_CPU);
    lu_tensor *tf = lu_tensor_zeros(LU_F32, LU_SHAPE(4), LU_CPU);
    cr_assert_null(lu_cross_entropy(x, t3, -100, LU_REDUCE_MEAN));
    tu_assert_error_contains("cross_entropy: logits [4, 5] hold 4 rows but target [3] has 3 elements");
    cr_assert_null(lu_cross_entropy(x, tf, -100, LU_REDUCE_MEAN));
    tu_assert_error_contains("cross_entropy: target must be i32 or i64, got f32");
    lu_tensor_release(x);
    lu_tensor_release(t3);
    lu_tensor_release(tf);
}
