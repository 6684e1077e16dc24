/* test_resample.c - decimate, downsample (icefall SimpleDownsample) and upsample against float64
 * reference loops, their gradients, and their errors. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

/* x viewed as [outer, T, inner] around dim. */
static void split_dims(const int64_t *shape, int ndim, int dim, int64_t *outer, int64_t *inner)
{
    *outer = *inner = 1;
    for (int i = 0; i < dim; i++) *outer *= shape[i];
    for (int i = dim + 1; i < ndim; i++) *inner *= shape[i];
}

/* ---- decimate ---- */

static void check_decimate(int ndim, const int64_t *shape, int dim, int factor, lu_dtype dt)
{
    int d = dim < 0 ? dim + ndim : dim;
    int64_t outer, inner, T = shape[d], To = (T + factor - 1) / factor;
    split_dims(shape, ndim, d, &outer, &inner);
    lu_tensor *x = dt == LU_I32 ? tu_randint(dt, ndim, shape, 100, 1) : tu_rand(dt, ndim, shape, -1, 1, 1);
    lu_tensor *y = lu_decimate(x, dim, factor);
    cr_assert(y, "%s", lu_error_message());
    cr_assert_eq(y->shape[d], To, "decimate: %lld frames, expected ceil(%lld/%d)", (long long)y->shape[d], (long long)T,
                 factor);
    cr_assert_eq(y->dtype, dt);
    double *xv = tu_to_doubles(x), *ref = malloc((size_t)(outer * To * inner) * sizeof *ref);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t t = 0; t < To; t++)
            for (int64_t i = 0; i < inner; i++) ref[(o * To + t) * inner + i] = xv[(o * T + t * factor) * inner + i];
    tu_assert_close(y, ref, outer * To * inner, 0, 0, "decimate");
    free(xv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(decimate, keeps_frames_0_f_2f_on_odd_length)
{
    check_decimate(3, (int64_t[]){2, 7, 3}, 1, 2, LU_F32);
}

Test(decimate, factor3_on_last_dim_with_negative_dim)
{
    check_decimate(3, (int64_t[]){2, 3, 10}, -1, 3, LU_F64);
}

Test(decimate, factor1_copies_and_integers_move_too)
{
    check_decimate(2, (int64_t[]){3, 5}, 1, 1, LU_F32);
    check_decimate(3, (int64_t[]){2, 9, 2}, 1, 4, LU_I32);
}

Test(decimate, equals_splitformer_zero_pad_then_stride2)
{
    /* asr.md 6: right-pad odd T with a zero frame, keep ::2. The pad frame is never kept. */
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(1, 5, 1), LU_CPU, (double[]){1, 2, 3, 4, 5});
    lu_tensor *y = lu_decimate(x, 1, 2);
    tu_assert_close(y, (double[]){1, 3, 5}, 3, 0, 0, "decimate by 2");
    lu_tensor_release(y);
    lu_tensor_release(x);
}

static lu_tensor *decimate_fn(lu_tensor **in, void *ctx) { return lu_decimate(in[0], 1, *(int *)ctx); }

Test(decimate, gradient_scatters_back_with_zeros_elsewhere)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(2, 7, 3), -1, 1, 2);
    int f = 3;
    tu_gradcheck(decimate_fn, &x, 1, (bool[]){true}, &f, 1e-6, 1e-8, 1e-7, 100, "decimate grad");
    lu_tensor_set_requires_grad(x, true);
    lu_tensor *y = lu_decimate(x, 1, 3);
    lu_tensor *dy = lu_tensor_full(LU_F64, LU_SHAPE(2, 3, 3), LU_CPU, 2);
    cr_assert_eq(lu_backward_from(y, dy), LU_OK, "%s", lu_error_message());
    double ref[42];
    for (int i = 0; i < 42; i++) ref[i] = (i / 3 % 7) % 3 == 0 ? 2 : 0;
    tu_assert_close(x->grad, ref, 42, 0, 0, "decimate dx");
    lu_tensor_release(dy);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(decimate, rejects_bad_factor_and_dim)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 5), -1, 1, 3);
    cr_assert_null(lu_decimate(x, 1, 0));
    tu_assert_error_contains("decimate: factor 0 must be >= 1 (x [2, 5] f32)");
    cr_assert_null(lu_decimate(x, 2, 2));
    tu_assert_error_contains("decimate: dim 2 out of range for a tensor of shape [2, 5]");
    lu_tensor_release(x);
}

/* ---- upsample ---- */

static void check_upsample(int ndim, const int64_t *shape, int dim, int factor, int64_t out_len)
{
    int d = dim < 0 ? dim + ndim : dim;
    int64_t outer, inner, T = shape[d];
    split_dims(shape, ndim, d, &outer, &inner);
    lu_tensor *x = tu_rand(LU_F64, ndim, shape, -1, 1, 4);
    lu_tensor *y = lu_upsample(x, dim, factor, out_len);
    cr_assert(y, "%s", lu_error_message());
    cr_assert_eq(y->shape[d], out_len);
    double *xv = tu_to_doubles(x), *ref = malloc((size_t)(outer * out_len * inner + 1) * sizeof *ref);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t t = 0; t < out_len; t++)
            for (int64_t i = 0; i < inner; i++) ref[(o * out_len + t) * inner + i] = xv[(o * T + t / factor) * inner + i];
    tu_assert_close(y, ref, outer * out_len * inner, 0, 0, "upsample");
    free(xv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(upsample, repeats_each_frame_and_cuts_to_length)
{
    check_upsample(3, (int64_t[]){2, 4, 3}, 1, 2, 7);  /* Splitformer: the pad frame dropped */
    check_upsample(3, (int64_t[]){2, 4, 3}, 1, 3, 12); /* no cut */
    check_upsample(2, (int64_t[]){3, 5}, -1, 4, 17);   /* SimpleUpsample: cut inside the last group */
}

typedef struct up_ctx {
    int factor;
    int64_t out_len;
} up_ctx;

static lu_tensor *upsample_fn(lu_tensor **in, void *ctx)
{
    up_ctx *c = ctx;
    return lu_upsample(in[0], 1, c->factor, c->out_len);
}

Test(upsample, gradient_sums_the_repeats)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(2, 4, 3), -1, 1, 5);
    up_ctx c = {3, 10};
    tu_gradcheck(upsample_fn, &x, 1, (bool[]){true}, &c, 1e-6, 1e-8, 1e-7, 100, "upsample grad");
    lu_tensor_set_requires_grad(x, true);
    lu_tensor *y = lu_upsample(x, 1, 3, 10);
    lu_tensor *dy = lu_tensor_full(LU_F64, LU_SHAPE(2, 10, 3), LU_CPU, 1);
    cr_assert_eq(lu_backward_from(y, dy), LU_OK, "%s", lu_error_message());
    double ref[24];
    for (int i = 0; i < 24; i++) ref[i] = i / 3 % 4 == 3 ? 1 : 3; /* the last frame kept one copy of three */
    tu_assert_close(x->grad, ref, 24, 0, 0, "upsample dx");
    lu_tensor_release(dy);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(upsample, undoes_decimate_shape_on_odd_length)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 9, 4), -1, 1, 6);
    lu_tensor *d = lu_decimate(x, 1, 2), *u = lu_upsample(d, 1, 2, 9);
    cr_assert(u && u->shape[1] == 9, "%s", lu_error_message());
    lu_tensor_release(u);
    lu_tensor_release(d);
    lu_tensor_release(x);
}

Test(upsample, rejects_out_len_beyond_t_times_factor)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 4, 3), -1, 1, 7);
    cr_assert_null(lu_upsample(x, 1, 2, 9));
    tu_assert_error_contains("upsample: out_len 9 must be in [0, 8] (T 4 * factor 2)");
    cr_assert_null(lu_upsample(x, 1, 0, 4));
    tu_assert_error_contains("upsample: factor 0 must be >= 1");
    lu_tensor_release(x);
}

/* ---- downsample ---- */

/* y[b,t,c] = sum_j softmax(bias)_j x[b, min(f t + j, T-1), c]. */
static void check_downsample(int64_t B, int64_t T, int64_t C, int64_t f, lu_dtype dt, double tol)
{
    lu_tensor *x = tu_rand(dt, LU_SHAPE(B, T, C), -1, 1, 8), *bias = tu_rand(dt, LU_SHAPE(f), -2, 2, 9);
    lu_tensor *y = lu_downsample(x, bias);
    cr_assert(y, "%s", lu_error_message());
    int64_t To = (T + f - 1) / f;
    cr_assert_eq(y->shape[1], To);
    double *xv = tu_to_doubles(x), *bv = tu_to_doubles(bias), *ref = malloc((size_t)(B * To * C) * sizeof *ref);
    double w[16], s = 0;
    for (int64_t j = 0; j < f; j++) s += w[j] = exp(bv[j]);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < To; t++)
            for (int64_t c = 0; c < C; c++) {
                double acc = 0;
                for (int64_t j = 0; j < f; j++) {
                    int64_t src = f * t + j < T ? f * t + j : T - 1;
                    acc += w[j] / s * xv[(b * T + src) * C + c];
                }
                ref[(b * To + t) * C + c] = acc;
            }
    tu_assert_close(y, ref, B * To * C, tol, tol, "downsample");
    free(xv);
    free(bv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(bias);
    lu_tensor_release(x);
}

Test(downsample, matches_reference_with_last_frame_padding)
{
    check_downsample(2, 7, 3, 2, LU_F64, 1e-13);
    check_downsample(3, 8, 5, 3, LU_F64, 1e-13);
    check_downsample(2, 11, 4, 4, LU_F32, 1e-6);
}

Test(downsample, length_multiple_of_factor_needs_no_padding)
{
    check_downsample(2, 8, 3, 2, LU_F64, 1e-13);
}

Test(downsample, zero_bias_averages_frames)
{
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(1, 5, 1), LU_CPU, (double[]){1, 2, 3, 4, 5});
    lu_tensor *bias = lu_tensor_zeros(LU_F64, LU_SHAPE(2), LU_CPU);
    lu_tensor *y = lu_downsample(x, bias);
    tu_assert_close(y, (double[]){1.5, 3.5, 5}, 3, 1e-15, 0, "mean of pairs, last frame repeated");
    lu_tensor_release(y);
    lu_tensor_release(bias);
    lu_tensor_release(x);
}

static lu_tensor *downsample_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_downsample(in[0], in[1]);
}

Test(downsample, gradients_for_x_and_bias)
{
    int64_t T[2] = {7, 9}, f[2] = {3, 3};
    for (int k = 0; k < 2; k++) {
        lu_tensor *in[2] = {tu_rand(LU_F64, LU_SHAPE(2, T[k], 3), -1, 1, 10), tu_rand(LU_F64, LU_SHAPE(f[k]), -1, 1, 11)};
        tu_gradcheck(downsample_fn, in, 2, (bool[]){true, true}, NULL, 1e-6, 1e-8, 1e-6, 100, "downsample grad");
        lu_tensor_release(in[0]);
        lu_tensor_release(in[1]);
    }
}

Test(downsample, rejects_bad_shapes_and_dtypes)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 5, 3), -1, 1, 12), *x2 = tu_rand(LU_F32, LU_SHAPE(10, 3), -1, 1, 12);
    lu_tensor *b64 = lu_tensor_zeros(LU_F64, LU_SHAPE(2), LU_CPU), *b2 = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 1), LU_CPU);
    lu_tensor *b = lu_tensor_zeros(LU_F32, LU_SHAPE(2), LU_CPU);
    cr_assert_null(lu_downsample(x2, b));
    tu_assert_error_contains("downsample: x must be [B, T, C] (x [10, 3] f32)");
    cr_assert_null(lu_downsample(x, b64));
    tu_assert_error_contains("x and bias (f64) need one float dtype");
    cr_assert_null(lu_downsample(x, b2));
    tu_assert_error_contains("bias [2, 1] must be [factor]");
    lu_tensor_release(b);
    lu_tensor_release(b2);
    lu_tensor_release(b64);
    lu_tensor_release(x2);
    lu_tensor_release(x);
}
