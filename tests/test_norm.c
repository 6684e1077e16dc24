/* test_norm.c - RMSNorm, LayerNorm, BiasNorm and RoPE against plain float64 references,
 * gradients by finite differences, and argument errors. */
#include <math.h>
#include <stdlib.h>

#include "core/backend.h"
#include "testutil.h"

/* ---- references (rows of length d) ---- */

static double *ref_rmsnorm(const lu_tensor *x, const lu_tensor *w, double eps)
{
    int64_t n = lu_tensor_numel(x), d = x->shape[x->ndim - 1];
    double *xv = tu_to_doubles(x), *wv = w ? tu_to_doubles(w) : NULL, *y = malloc((size_t)n * sizeof *y);
    for (int64_t r = 0; r < n / d; r++) {
        double ss = 0;
        for (int64_t c = 0; c < d; c++) ss += xv[r * d + c] * xv[r * d + c];
        double s = 1 / sqrt(ss / d + eps);
        for (int64_t c = 0; c < d; c++) y[r * d + c] = xv[r * d + c] * s * (wv ? wv[c] : 1);
    }
    free(xv);
    free(wv);
    return y;
}

static double *ref_layernorm(const lu_tensor *x, const lu_tensor *w, const lu_tensor *b, double eps)
{
    int64_t n = lu_tensor_numel(x), d = x->shape[x->ndim - 1];
    double *xv = tu_to_doubles(x), *wv = w ? tu_to_doubles(w) : NULL, *bv = b ? tu_to_doubles(b) : NULL;
    double *y = malloc((size_t)n * sizeof *y);
    for (int64_t r = 0; r < n / d; r++) {
        double m = 0, var = 0;
        for (int64_t c = 0; c < d; c++) m += xv[r * d + c] / d;
        for (int64_t c = 0; c < d; c++) var += (xv[r * d + c] - m) * (xv[r * d + c] - m) / d;
        for (int64_t c = 0; c < d; c++)
            y[r * d + c] = (xv[r * d + c] - m) / sqrt(var + eps) * (wv ? wv[c] : 1) + (bv ? bv[c] : 0);
    }
    free(xv);
    free(wv);
    free(bv);
    return y;
}

static double *ref_biasnorm(const lu_tensor *x, const lu_tensor *b, double log_scale)
{
    int64_t n = lu_tensor_numel(x), d = x->shape[x->ndim - 1];
    double *xv = tu_to_doubles(x), *bv = tu_to_doubles(b), *y = malloc((size_t)n * sizeof *y);
    for (int64_t r = 0; r < n / d; r++) {
        double ss = 0;
        for (int64_t c = 0; c < d; c++) ss += (xv[r * d + c] - bv[c]) * (xv[r * d + c] - bv[c]);
        for (int64_t c = 0; c < d; c++) y[r * d + c] = xv[r * d + c] * exp(log_scale) / sqrt(ss / d);
    }
    free(xv);
    free(bv);
    return y;
}

/* x [B,T,H,D]; angle in double. */
static double *ref_rope(const lu_tensor *x, const lu_tensor *pos, double theta, int rd)
{
    int64_t n = lu_tensor_numel(x), bt = x->shape[0] * x->shape[1], nh = x->shape[2], d = x->shape[3];
    double *xv = tu_to_doubles(x), *pv = tu_to_doubles(pos), *y = malloc((size_t)n * sizeof *y);
    if (rd == 0) rd = (int)d;
    for (int64_t t = 0; t < bt; t++)
        for (int64_t h = 0; h < nh; h++) {
            const double *xr = xv + (t * nh + h) * d;
            double *yr = y + (t * nh + h) * d;
            for (int64_t c = 0; c < d; c++) yr[c] = xr[c];
            for (int i = 0; i < rd / 2; i++) {
                double a = pv[t] * pow(theta, -2.0 * i / rd);
                yr[i] = xr[i] * cos(a) - xr[i + rd / 2] * sin(a);
                yr[i + rd / 2] = xr[i + rd / 2] * cos(a) + xr[i] * sin(a);
            }
        }
    free(xv);
    free(pv);
    return y;
}

/* ---- RMSNorm ---- */

Test(rmsnorm, matches_reference_on_odd_sizes_f32)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), -2, 2, 1), *w = tu_rand(LU_F32, LU_SHAPE(7), 0.5, 1.5, 2);
    lu_tensor *y = lu_rmsnorm(x, w, 1e-6);
    double *ref = ref_rmsnorm(x, w, 1e-6);
    tu_assert_close(y, ref, 105, 1e-6, 1e-5, "rmsnorm f32");
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(w);
    lu_tensor_release(x);
}

Test(rmsnorm, without_weight_matches_reference_f64)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(4, 9), -3, 3, 3);
    lu_tensor *y = lu_rmsnorm(x, NULL, 1e-5);
    double *ref = ref_rmsnorm(x, NULL, 1e-5);
    tu_assert_close(y, ref, 36, 1e-13, 1e-12, "rmsnorm f64");
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(rmsnorm, eps_dominates_tiny_rows)
{
    /* mean(x^2) = 1e-12 << eps = 1e-2: y ~ x / sqrt(1e-2). */
    lu_tensor *x = lu_tensor_full(LU_F64, LU_SHAPE(1, 4), LU_CPU, 1e-6);
    lu_tensor *y = lu_rmsnorm(x, NULL, 1e-2);
    double ref[4];
    for (int i = 0; i < 4; i++) ref[i] = 1e-6 / sqrt(1e-12 + 1e-2);
    tu_assert_close(y, ref, 4, 0, 1e-12, "rmsnorm eps");
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(rmsnorm, reads_strided_input)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(6, 5), -1, 1, 4);
    lu_tensor *xt = lu_transpose(x, 0, 1), *xc = lu_contiguous(xt);
    lu_tensor *y = lu_rmsnorm(xt, NULL, 1e-6);
    double *ref = ref_rmsnorm(xc, NULL, 1e-6);
    tu_assert_close(y, ref, 30, 1e-13, 1e-12, "rmsnorm transposed");
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(xc);
    lu_tensor_release(xt);
    lu_tensor_release(x);
}

static lu_tensor *rmsnorm_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_rmsnorm(in[0], in[1], 1e-3);
}

Test(rmsnorm, gradients_match_finite_differences)
{
    lu_tensor *in[2] = {tu_rand(LU_F64, LU_SHAPE(3, 2, 7), -2, 2, 5), tu_rand(LU_F64, LU_SHAPE(7), 0.5, 1.5, 6)};
    tu_gradcheck(rmsnorm_fn, in, 2, (bool[]){true, true}, NULL, 1e-6, 1e-7, 1e-6, 100, "rmsnorm");
    lu_tensor_release(in[0]);
    lu_tensor_release(in[1]);
}

Test(rmsnorm, gradient_without_weight)
{
    lu_tensor *in[2] = {tu_rand(LU_F64, LU_SHAPE(5, 3), -2, 2, 7), NULL};
    tu_gradcheck(rmsnorm_fn, in, 2, (bool[]){true, false}, NULL, 1e-6, 1e-7, 1e-6, 100, "rmsnorm no weight");
    lu_tensor_release(in[0]);
}

/* rstd of one row by the definition, for the finite differences below. */
static double rms_rstd(const double *x, int64_t d, double eps)
{
    double ss = 0;
    for (int64_t c = 0; c < d; c++) ss += x[c] * x[c];
    return 1.0 / sqrt(ss / (double)d + eps);
}

/* The backward kernel's gradient through the aux output rstd (the CUDA kernels add it too), with
 * dy absent: dx = J^T drstd, J by central differences of rstd. */
Test(rmsnorm, backward_kernel_takes_the_gradient_through_rstd)
{
    const int64_t rows = 3, d = 5;
    const double eps = 1e-3, h = 1e-6;
    lu_norm_params p = {eps};
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(rows, d), -2, 2, 8), *w = tu_rand(LU_F64, LU_SHAPE(d), 0.5, 1.5, 9);
    lu_tensor *drstd = tu_rand(LU_F64, LU_SHAPE(rows), -1, 1, 10);
    lu_tensor *y = lu_tensor_empty(LU_F64, LU_SHAPE(rows, d), LU_CPU);
    lu_tensor *rstd = lu_tensor_empty(LU_F64, LU_SHAPE(rows), LU_CPU);
    lu_tensor *dx = lu_tensor_empty(LU_F64, LU_SHAPE(rows, d), LU_CPU);
    lu_tensor *dw = lu_tensor_empty(LU_F64, LU_SHAPE(d), LU_CPU);
    lu_backend *b = lu_backend_get(LU_CPU);
    lu_op_call fwd = {.op = LU_OP_RMSNORM, .in = {x, w}, .n_in = 2, .out = {y, rstd}, .n_out = 2, .params = &p};
    cr_assert_eq(b->forward[LU_OP_RMSNORM](&fwd), LU_OK, "%s", lu_error_message());
    lu_op_call bwd = {.op = LU_OP_RMSNORM, .in = {NULL, drstd, x, w, y, rstd}, .n_in = 6, .out = {dx, dw}, .n_out = 2,
                      .params = &p};
    cr_assert_eq(b->backward[LU_OP_RMSNORM](&bwd), LU_OK, "%s", lu_error_message());
    double *xs = lu_tensor_data(x), ref[15], zero[5] = {0};
    const double *g = lu_tensor_data(drstd);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < d; c++) {
            double *xr = xs + r * d, keep = xr[c];
            xr[c] = keep + h;
            double up = rms_rstd(xr, d, eps);
            xr[c] = keep - h;
            double down = rms_rstd(xr, d, eps);
            xr[c] = keep;
            ref[r * d + c] = g[r] * (up - down) / (2 * h);
        }
    tu_assert_close(dx, ref, rows * d, 1e-7, 1e-6, "rmsnorm dx through rstd");
    tu_assert_close(dw, zero, d, 0, 0, "rmsnorm dweight without dy");
    lu_tensor *all[] = {x, w, drstd, y, rstd, dx, dw};
    for (int i = 0; i < 7; i++) lu_tensor_release(all[i]);
}

Test(rmsnorm, rejects_weight_of_wrong_length)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 4), -1, 1, 1), *w = tu_rand(LU_F32, LU_SHAPE(5), -1, 1, 2);
    cr_assert_null(lu_rmsnorm(x, w, 1e-6));
    tu_assert_error_contains("rmsnorm: weight [5] must have shape [4] for x [2, 3, 4]");
    lu_tensor_release(w);
    lu_tensor_release(x);
}

Test(rmsnorm, rejects_integer_input)
{
    lu_tensor *x = tu_randint(LU_I32, LU_SHAPE(2, 3), 5, 1);
    cr_assert_null(lu_rmsnorm(x, NULL, 1e-6));
    tu_assert_error_contains("expected a float dtype");
    lu_tensor_release(x);
}

/* ---- LayerNorm ---- */

Test(layernorm, matches_reference_with_affine_f32)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 11), -1, 3, 8);
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(11), 0.5, 1.5, 9), *b = tu_rand(LU_F32, LU_SHAPE(11), -1, 1, 10);
    lu_tensor *y = lu_layernorm(x, w, b, 1e-5);
    double *ref = ref_layernorm(x, w, b, 1e-5);
    tu_assert_close(y, ref, 66, 1e-5, 1e-5, "layernorm f32");
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(b);
    lu_tensor_release(w);
    lu_tensor_release(x);
}

Test(layernorm, without_affine_has_zero_mean_unit_variance)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(7, 13), 5, 9, 11);
    lu_tensor *y = lu_layernorm(x, NULL, NULL, 0);
    double *ref = ref_layernorm(x, NULL, NULL, 0);
    tu_assert_close(y, ref, 91, 1e-12, 1e-12, "layernorm f64");
    double *yv = tu_to_doubles(y);
    for (int r = 0; r < 7; r++) {
        double m = 0, v = 0;
        for (int c = 0; c < 13; c++) m += yv[r * 13 + c] / 13;
        for (int c = 0; c < 13; c++) v += (yv[r * 13 + c] - m) * (yv[r * 13 + c] - m) / 13;
        cr_assert(fabs(m) < 1e-12 && fabs(v - 1) < 1e-12, "row %d: mean %g variance %g", r, m, v);
    }
    free(yv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

static lu_tensor *layernorm_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_layernorm(in[0], in[1], in[2], 1e-4);
}

Test(layernorm, gradients_match_finite_differences)
{
    lu_tensor *in[3] = {tu_rand(LU_F64, LU_SHAPE(4, 3, 5), -2, 2, 12), tu_rand(LU_F64, LU_SHAPE(5), 0.5, 1.5, 13),
                        tu_rand(LU_F64, LU_SHAPE(5), -1, 1, 14)};
    tu_gradcheck(layernorm_fn, in, 3, (bool[]){true, true, true}, NULL, 1e-6, 1e-7, 1e-6, 100, "layernorm");
    for (int i = 0; i < 3; i++) lu_tensor_release(in[i]);
}

Test(layernorm, gradients_with_bias_only)
{
    lu_tensor *in[3] = {tu_rand(LU_F64, LU_SHAPE(3, 6), -2, 2, 15), NULL, tu_rand(LU_F64, LU_SHAPE(6), -1, 1, 16)};
    tu_gradcheck(layernorm_fn, in, 3, (bool[]){true, false, true}, NULL, 1e-6, 1e-7, 1e-6, 100, "layernorm bias only");
    lu_tensor_release(in[0]);
    lu_tensor_release(in[2]);
}

Test(layernorm, rejects_bias_of_other_dtype)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 4), -1, 1, 1), *b = tu_rand(LU_F64, LU_SHAPE(4), -1, 1, 2);
    cr_assert_null(lu_layernorm(x, NULL, b, 1e-5));
    tu_assert_error_contains("layernorm: bias has dtype f64, x has f32");
    lu_tensor_release(b);
    lu_tensor_release(x);
}

Test(layernorm, rejects_negative_eps)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 4), -1, 1, 1);
    cr_assert_null(lu_layernorm(x, NULL, NULL, -1));
    tu_assert_error_contains("eps must be >= 0");
    lu_tensor_release(x);
}

/* ---- BiasNorm ---- */

Test(biasnorm, matches_reference_on_odd_sizes)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(3, 4, 9), -2, 2, 17), *b = tu_rand(LU_F32, LU_SHAPE(9), -0.5, 0.5, 18);
    lu_tensor *ls = lu_tensor_full(LU_F32, LU_SHAPE(1), LU_CPU, 0.7);
    lu_tensor *y = lu_biasnorm(x, b, ls);
    double *ref = ref_biasnorm(x, b, (double)0.7f);
    tu_assert_close(y, ref, 108, 1e-5, 1e-5, "biasnorm f32");
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(ls);
    lu_tensor_release(b);
    lu_tensor_release(x);
}

Test(biasnorm, has_no_epsilon)
{
    /* Rows barely apart from the bias are scaled up to unit RMS: an epsilon (even 1e-8) would
     * shrink them by orders of magnitude. */
    double xv[4] = {1e-5, -1e-5, 1e-5, -1e-5}, bv[4] = {0};
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(1, 4), LU_CPU, xv);
    lu_tensor *b = lu_tensor_from_host(LU_F64, LU_SHAPE(4), LU_CPU, bv);
    lu_tensor *ls = lu_tensor_zeros(LU_F64, LU_SHAPE(1), LU_CPU);
    lu_tensor *y = lu_biasnorm(x, b, ls);
    tu_assert_close(y, (double[]){1, -1, 1, -1}, 4, 0, 1e-12, "biasnorm unit rms");
    lu_tensor_release(y);
    lu_tensor_release(ls);
    lu_tensor_release(b);
    lu_tensor_release(x);
}

Test(biasnorm, bias_enters_only_the_rms)
{
    /* x = [3, 5], bias = [3, 3]: rms of x - bias = sqrt((0 + 4) / 2), y = x / sqrt(2). */
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(2), LU_CPU, (double[]){3, 5});
    lu_tensor *b = lu_tensor_full(LU_F64, LU_SHAPE(2), LU_CPU, 3);
    lu_tensor *ls = lu_tensor_zeros(LU_F64, LU_SHAPE(1), LU_CPU);
    lu_tensor *y = lu_biasnorm(x, b, ls);
    tu_assert_close(y, (double[]){3 / sqrt(2.0), 5 / sqrt(2.0)}, 2, 0, 1e-14, "biasnorm bias");
    lu_tensor_release(y);
    lu_tensor_release(ls);
    lu_tensor_release(b);
    lu_tensor_release(x);
}

static lu_tensor *biasnorm_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_biasnorm(in[0], in[1], in[2]);
}

Test(biasnorm, gradients_match_finite_differences)
{
    lu_tensor *in[3] = {tu_rand(LU_F64, LU_SHAPE(5, 7), -2, 2, 19), tu_rand(LU_F64, LU_SHAPE(7), -0.5, 0.5, 20),
                        lu_tensor_full(LU_F64, LU_SHAPE(1), LU_CPU, -0.3)};
    tu_gradcheck(biasnorm_fn, in, 3, (bool[]){true, true, true}, NULL, 1e-6, 1e-7, 1e-6, 100, "biasnorm");
    for (int i = 0; i < 3; i++) lu_tensor_release(in[i]);
}

Test(biasnorm, rejects_log_scale_of_wrong_shape)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 4), -1, 1, 1), *b = tu_rand(LU_F32, LU_SHAPE(4), -1, 1, 2);
    lu_tensor *ls = tu_rand(LU_F32, LU_SHAPE(4), -1, 1, 3);
    cr_assert_null(lu_biasnorm(x, b, ls));
    tu_assert_error_contains("biasnorm: log_scale [4] must have shape [1]");
    cr_assert_null(lu_biasnorm(x, NULL, ls));
    tu_assert_error_contains("bias and log_scale are required");
    lu_tensor_release(ls);
    lu_tensor_release(b);
    lu_tensor_release(x);
}

/* ---- RoPE ---- */

Test(rope, matches_reference_on_all_dims)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(2, 5, 3, 8), -1, 1, 21), *pos = tu_randint(LU_I32, LU_SHAPE(2, 5), 500, 22);
    lu_tensor *y = lu_rope(x, pos, 10000, 0);
    double *ref = ref_rope(x, pos, 10000, 0);
    tu_assert_close(y, ref, 240, 1e-12, 1e-12, "rope f64");
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(pos);
    lu_tensor_release(x);
}

Test(rope, partial_rotary_dim_passes_the_rest_through)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(1, 4, 2, 10), -1, 1, 23), *pos = tu_randint(LU_I64, LU_SHAPE(1, 4), 50, 24);
    lu_tensor *y = lu_rope(x, pos, 500, 6);
    double *ref = ref_rope(x, pos, 500, 6);
    tu_assert_close(y, ref, 80, 1e-12, 1e-12, "rope partial");
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(pos);
    lu_tensor_release(x);
}

Test(rope, position_zero_is_identity)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(1, 3, 2, 6), -1, 1, 25), *pos = lu_tensor_zeros(LU_I32, LU_SHAPE(1, 3), LU_CPU);
    lu_tensor *y = lu_rope(x, pos, 10000, 0);
    tu_assert_tensors_close(y, x, 0, 0, "rope at 0");
    lu_tensor_release(y);
    lu_tensor_release(pos);
    lu_tensor_release(x);
}

Test(rope, f32_follows_transformers_float32_angles)
{
    /* transformers (Qwen3): inv_freq = 1 / theta ** (arange(0, rd, 2).float() / rd) in float32,
     * freqs = pos.float() * inv_freq, cos/sin in float32. Large positions make the float32
     * angle differ visibly from the exact one, so this pins the float32 recipe. */
    int32_t pv[4] = {0, 1, 4097, 31999};
    lu_tensor *pos = lu_tensor_from_host(LU_I32, LU_SHAPE(1, 4), LU_CPU, pv);
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(1, 4, 1, 16), -1, 1, 26);
    lu_tensor *y = lu_rope(x, pos, 1000000, 0);
    double *xv = tu_to_doubles(x), ref[64];
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 8; i++) {
            float inv = 1.0f / powf(1000000.0f, (float)(2 * i) / 16.0f), a = (float)pv[t] * inv;
            float c = cosf(a), s = sinf(a), x0 = (float)xv[t * 16 + i], x1 = (float)xv[t * 16 + i + 8];
            ref[t * 16 + i] = x0 * c - x1 * s;
            ref[t * 16 + i + 8] = x1 * c + x0 * s;
        }
    tu_assert_close(y, ref, 64, 1e-6, 0, "rope float32 recipe");
    free(xv);
    lu_tensor_release(y);
    lu_tensor_release(x);
    lu_tensor_release(pos);
}

static lu_tensor *rope_fn(lu_tensor **in, void *ctx)
{
    return lu_rope(in[0], in[1], 10000, *(int *)ctx);
}

Test(rope, gradient_is_the_inverse_rotation)
{
    lu_tensor *in[2] = {tu_rand(LU_F64, LU_SHAPE(2, 3, 2, 6), -1, 1, 27), tu_randint(LU_I64, LU_SHAPE(2, 3), 100, 28)};
    int rd = 4;
    tu_gradcheck(rope_fn, in, 2, (bool[]){true, false}, &rd, 1e-6, 1e-8, 1e-6, 100, "rope");
    lu_tensor_release(in[0]);
    lu_tensor_release(in[1]);
}

Test(rope, rejects_bad_rotary_dim_and_positions)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 2, 6), -1, 1, 1), *pos = tu_randint(LU_I32, LU_SHAPE(2, 3), 9, 2);
    cr_assert_null(lu_rope(x, pos, 10000, 5));
    tu_assert_error_contains("rope: rotary_dim 5 must be even and in [0, 6]");
    lu_tensor *bad = tu_randint(LU_I32, LU_SHAPE(3, 2), 9, 3);
    cr_assert_null(lu_rope(x, bad, 10000, 0));
    tu_assert_error_contains("rope: positions [3, 2] i32 must be i32/i64 [B, T] for x [2, 3, 2, 6]");
    lu_tensor *x3 = tu_rand(LU_F32, LU_SHAPE(2, 3, 6), -1, 1, 4);
    cr_assert_null(lu_rope(x3, pos, 10000, 0));
    tu_assert_error_contains("must be [B, T, H, D]");
    lu_tensor_release(x3);
    lu_tensor_release(bad);
    lu_tensor_release(pos);
    lu_tensor_release(x);
}
