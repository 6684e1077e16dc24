/* test_conv.c - conv1d/conv2d (general im2col path, pointwise, depthwise), batch norm and dropout
 * against float64 reference loops, their gradients by central differences, and their errors. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

/* ---- convolution ------------------------------------------------------------------------------ */

/* A conv1d case is a conv2d one with H = KH = 1 and the time axis in W (index 1 of the params). */
typedef struct conv_case {
    bool one_d, bias;
    int64_t B, Cin, H, W, Cout, KH, KW;
    lu_conv2d_params p;
} conv_case;

static int64_t conv_out(int64_t n, int64_t k, int s, int pad, int d) { return (n + 2 * pad - d * (k - 1) - 1) / s + 1; }

/* Direct float64 loops: y[b,o,i,j] = bias[o] + sum_{c in group, u, v} x[b,c,i*s-p+u*d, j*s-p+v*d] w[o,c',u,v]. */
static double *ref_conv(const conv_case *c, const double *x, const double *w, const double *bias, int64_t *n_out)
{
    int64_t OH = conv_out(c->H, c->KH, c->p.stride[0], c->p.padding[0], c->p.dilation[0]);
    int64_t OW = conv_out(c->W, c->KW, c->p.stride[1], c->p.padding[1], c->p.dilation[1]);
    int64_t cg = c->Cin / c->p.groups, og = c->Cout / c->p.groups;
    *n_out = c->B * c->Cout * OH * OW;
    double *y = calloc((size_t)*n_out, sizeof *y);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t o = 0; o < c->Cout; o++)
            for (int64_t i = 0; i < OH; i++)
                for (int64_t j = 0; j < OW; j++) {
                    double s = bias ? bias[o] : 0;
                    for (int64_t ci = 0; ci < cg; ci++)
                        for (int64_t u = 0; u < c->KH; u++)
                            for (int64_t v = 0; v < c->KW; v++) {
                                int64_t ih = i * c->p.stride[0] - c->p.padding[0] + u * c->p.dilation[0];
                                int64_t iw = j * c->p.stride[1] - c->p.padding[1] + v * c->p.dilation[1];
                                if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                                int64_t cin = o / og * cg + ci;
                                s += x[((b * c->Cin + cin) * c->H + ih) * c->W + iw] *
                                     w[((o * cg + ci) * c->KH + u) * c->KW + v];
                            }
                    y[((b * c->Cout + o) * OH + i) * OW + j] = s;
                }
    return y;
}

static lu_tensor *conv_apply(const conv_case *c, lu_tensor *x, lu_tensor *w, lu_tensor *bias)
{
    if (c->one_d) return lu_conv1d(x, w, bias, c->p.stride[1], c->p.padding[1], c->p.dilation[1], c->p.groups);
    return lu_conv2d(x, w, bias, &c->p);
}

static lu_tensor *conv_fn(lu_tensor **in, void *ctx) { return conv_apply(ctx, in[0], in[1], in[2]); }

static void conv_make(const conv_case *c, lu_dtype dt, uint64_t seed, lu_tensor **in)
{
    int64_t cg = c->Cin / c->p.groups;
    if (c->one_d) {
        in[0] = tu_rand(dt, LU_SHAPE(c->B, c->Cin, c->W), -1, 1, seed);
        in[1] = tu_rand(dt, LU_SHAPE(c->Cout, cg, c->KW), -1, 1, seed + 1);
    } else {
        in[0] = tu_rand(dt, LU_SHAPE(c->B, c->Cin, c->H, c->W), -1, 1, seed);
        in[1] = tu_rand(dt, LU_SHAPE(c->Cout, cg, c->KH, c->KW), -1, 1, seed + 1);
    }
    in[2] = c->bias ? tu_rand(dt, LU_SHAPE(c->Cout), -1, 1, seed + 2) : NULL;
}

static void conv_release(lu_tensor **in)
{
    for (int i = 0; i < 3; i++) lu_tensor_release(in[i]);
}

/* Forward in f32 and f64 against the reference loops, and the output shape. */
static void check_conv_forward(const conv_case *c, const char *what)
{
    lu_dtype dts[2] = {LU_F64, LU_F32};
    for (int d = 0; d < 2; d++) {
        lu_tensor *in[3];
        conv_make(c, dts[d], 100, in);
        lu_tensor *y = conv_apply(c, in[0], in[1], in[2]);
        cr_assert(y, "%s: %s", what, lu_error_message());
        double *x = tu_to_doubles(in[0]), *w = tu_to_doubles(in[1]), *b = in[2] ? tu_to_doubles(in[2]) : NULL;
        int64_t n;
        double *ref = ref_conv(c, x, w, b, &n);
        int64_t oh = conv_out(c->H, c->KH, c->p.stride[0], c->p.padding[0], c->p.dilation[0]);
        int64_t ow = conv_out(c->W, c->KW, c->p.stride[1], c->p.padding[1], c->p.dilation[1]);
        cr_assert_eq(y->ndim, c->one_d ? 3 : 4, "%s: rank", what);
        cr_assert_eq(y->shape[y->ndim - 1], ow, "%s: last dim %lld, expected %lld", what, (long long)y->shape[y->ndim - 1],
                     (long long)ow);
        if (!c->one_d) cr_assert_eq(y->shape[2], oh, "%s: height", what);
        tu_assert_close(y, ref, n, dts[d] == LU_F64 ? 1e-12 : 1e-5, dts[d] == LU_F64 ? 1e-12 : 1e-5, what);
        free(x);
        free(w);
        free(b);
        free(ref);
        lu_tensor_release(y);
        conv_release(in);
    }
}

static void check_conv_grad(const conv_case *c, const char *what)
{
    lu_tensor *in[3];
    conv_make(c, LU_F64, 200, in);
    tu_gradcheck(conv_fn, in, 3, (bool[]){true, true, c->bias}, (void *)c, 1e-6, 1e-7, 1e-6, 400, what);
    conv_release(in);
}

#define CONV1D(...) (conv_case){.one_d = true, .H = 1, .KH = 1, __VA_ARGS__}
#define P1D(s, pad, d, g) (lu_conv2d_params){{1, s}, {0, pad}, {1, d}, g}

Test(conv1d, matches_reference_on_odd_sizes)
{
    conv_case c = CONV1D(.bias = true, .B = 2, .Cin = 3, .W = 11, .Cout = 5, .KW = 3, .p = P1D(1, 1, 1, 1));
    check_conv_forward(&c, "conv1d k3 p1");
}

Test(conv1d, stride2_padding_dilation2)
{
    conv_case c = CONV1D(.bias = true, .B = 3, .Cin = 4, .W = 13, .Cout = 3, .KW = 3, .p = P1D(2, 2, 2, 1));
    check_conv_forward(&c, "conv1d s2 p2 d2");
}

Test(conv1d, groups2)
{
    conv_case c = CONV1D(.bias = true, .B = 2, .Cin = 4, .W = 9, .Cout = 6, .KW = 5, .p = P1D(1, 2, 1, 2));
    check_conv_forward(&c, "conv1d groups 2");
}

Test(conv1d, depthwise_k7)
{
    conv_case c = CONV1D(.bias = true, .B = 2, .Cin = 6, .W = 10, .Cout = 6, .KW = 7, .p = P1D(1, 3, 1, 6));
    check_conv_forward(&c, "conv1d depthwise k7");
}

Test(conv1d, depthwise_k31_conformer_same_padding)
{
    conv_case c = CONV1D(.bias = true, .B = 2, .Cin = 5, .W = 37, .Cout = 5, .KW = 31, .p = P1D(1, 15, 1, 5));
    check_conv_forward(&c, "conv1d depthwise k31");
}

Test(conv1d, depthwise_strided_dilated_with_channel_multiplier)
{
    conv_case c = CONV1D(.bias = false, .B = 2, .Cin = 3, .W = 12, .Cout = 6, .KW = 3, .p = P1D(2, 1, 2, 3));
    check_conv_forward(&c, "conv1d depthwise x2");
}

Test(conv1d, pointwise_k1_without_bias)
{
    conv_case c = CONV1D(.bias = false, .B = 3, .Cin = 7, .W = 5, .Cout = 4, .KW = 1, .p = P1D(1, 0, 1, 1));
    check_conv_forward(&c, "conv1d k1");
}

Test(conv1d, kernel_as_long_as_padded_input_gives_one_frame)
{
    conv_case c = CONV1D(.bias = true, .B = 1, .Cin = 2, .W = 4, .Cout = 3, .KW = 6, .p = P1D(3, 1, 1, 1));
    check_conv_forward(&c, "conv1d single output frame");
}

Test(conv1d, gradients_general)
{
    conv_case c = CONV1D(.bias = true, .B = 2, .Cin = 4, .W = 11, .Cout = 6, .KW = 3, .p = P1D(2, 2, 2, 2));
    check_conv_grad(&c, "conv1d grad groups 2 s2 p2 d2");
}

Test(conv1d, gradients_depthwise)
{
    conv_case c = CONV1D(.bias = true, .B = 2, .Cin = 3, .W = 9, .Cout = 6, .KW = 5, .p = P1D(2, 2, 1, 3));
    check_conv_grad(&c, "conv1d grad depthwise");
}

Test(conv1d, gradients_pointwise)
{
    conv_case c = CONV1D(.bias = true, .B = 2, .Cin = 3, .W = 5, .Cout = 4, .KW = 1, .p = P1D(1, 0, 1, 1));
    check_conv_grad(&c, "conv1d grad k1");
}

Test(conv1d, f32_general_and_depthwise_agree_with_f64_on_larger_sizes)
{
    conv_case cs[2] = {CONV1D(.bias = true, .B = 3, .Cin = 16, .W = 57, .Cout = 24, .KW = 3, .p = P1D(2, 1, 1, 1)),
                       CONV1D(.bias = true, .B = 3, .Cin = 32, .W = 75, .Cout = 32, .KW = 15, .p = P1D(1, 7, 1, 32))};
    for (int i = 0; i < 2; i++) check_conv_forward(&cs[i], i ? "conv1d depthwise 32x75" : "conv1d 16->24 x57");
}

Test(conv1d, rejects_bad_shapes_and_arguments)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 8), -1, 1, 1), *w = tu_rand(LU_F32, LU_SHAPE(4, 3, 3), -1, 1, 2);
    cr_assert_null(lu_conv1d(x, w, NULL, 1, 0, 1, 2));
    tu_assert_error_contains("conv1d: with groups 2, Cin and Cout must be multiples of groups");
    tu_assert_error_contains("x [2, 3, 8] f32, w [4, 3, 3] f32");
    cr_assert_null(lu_conv1d(x, w, NULL, 1, 0, 5, 1));
    tu_assert_error_contains("padded input size 8 is smaller than the dilated kernel size 11");
    cr_assert_null(lu_conv1d(x, w, NULL, 0, 0, 1, 1));
    tu_assert_error_contains("stride 0 and dilation 1 must be >= 1");
    lu_tensor *b = tu_rand(LU_F32, LU_SHAPE(3), -1, 1, 3);
    cr_assert_null(lu_conv1d(x, w, b, 1, 0, 1, 1));
    tu_assert_error_contains("bias must be [Cout]");
    lu_tensor *w64 = tu_rand(LU_F64, LU_SHAPE(4, 3, 3), -1, 1, 2);
    cr_assert_null(lu_conv1d(x, w64, NULL, 1, 0, 1, 1));
    tu_assert_error_contains("need one float dtype");
    lu_tensor_release(w64);
    lu_tensor_release(b);
    lu_tensor_release(w);
    lu_tensor_release(x);
}

#define P2D(sh, sw, ph, pw, dh, dw, g) (lu_conv2d_params){{sh, sw}, {ph, pw}, {dh, dw}, g}

Test(conv2d, matches_reference_3x3_padding1)
{
    conv_case c = {.bias = true, .B = 2, .Cin = 3, .H = 7, .W = 6, .Cout = 4, .KH = 3, .KW = 3, .p = P2D(1, 1, 1, 1, 1, 1, 1)};
    check_conv_forward(&c, "conv2d 3x3");
}

Test(conv2d, asymmetric_stride_1_2)
{
    /* Zipformer Conv2dSubsampling's third conv: k3, stride (1, 2), no padding. */
    conv_case c = {.bias = true, .B = 2, .Cin = 4, .H = 9, .W = 11, .Cout = 5, .KH = 3, .KW = 3, .p = P2D(1, 2, 0, 0, 1, 1, 1)};
    check_conv_forward(&c, "conv2d stride (1,2)");
}

Test(conv2d, single_input_channel_with_width_padding)
{
    /* Conv2dSubsampling's first conv: 1 -> 8 channels, k3, padding (0, 1) (direct path). */
    conv_case c = {.bias = true, .B = 2, .Cin = 1, .H = 8, .W = 9, .Cout = 8, .KH = 3, .KW = 3, .p = P2D(1, 1, 0, 1, 1, 1, 1)};
    check_conv_forward(&c, "conv2d 1->8");
}

Test(conv2d, groups_dilation_and_rectangular_kernel)
{
    conv_case c = {.bias = false, .B = 2, .Cin = 4, .H = 9, .W = 8, .Cout = 6, .KH = 2, .KW = 3, .p = P2D(2, 1, 1, 2, 2, 1, 2)};
    check_conv_forward(&c, "conv2d groups 2 dil (2,1)");
}

Test(conv2d, depthwise_7x7)
{
    /* Zipformer ConvNeXt: depthwise 7x7, padding 3. */
    conv_case c = {.bias = true, .B = 2, .Cin = 5, .H = 9, .W = 8, .Cout = 5, .KH = 7, .KW = 7, .p = P2D(1, 1, 3, 3, 1, 1, 5)};
    check_conv_forward(&c, "conv2d depthwise 7x7");
}

Test(conv2d, pointwise_1x1)
{
    conv_case c = {.bias = true, .B = 2, .Cin = 6, .H = 3, .W = 5, .Cout = 4, .KH = 1, .KW = 1, .p = P2D(1, 1, 0, 0, 1, 1, 1)};
    check_conv_forward(&c, "conv2d 1x1");
}

Test(conv2d, gradients_general)
{
    conv_case c = {.bias = true, .B = 2, .Cin = 4, .H = 6, .W = 7, .Cout = 4, .KH = 3, .KW = 2, .p = P2D(1, 2, 1, 0, 2, 1, 2)};
    check_conv_grad(&c, "conv2d grad groups 2");
}

Test(conv2d, gradients_depthwise)
{
    conv_case c = {.bias = true, .B = 2, .Cin = 3, .H = 6, .W = 5, .Cout = 3, .KH = 3, .KW = 3, .p = P2D(2, 1, 1, 1, 1, 2, 3)};
    check_conv_grad(&c, "conv2d grad depthwise");
}

Test(conv2d, gradients_single_input_channel)
{
    conv_case c = {.bias = false, .B = 2, .Cin = 1, .H = 5, .W = 6, .Cout = 3, .KH = 3, .KW = 3, .p = P2D(2, 2, 0, 1, 1, 1, 1)};
    check_conv_grad(&c, "conv2d grad 1->3");
}

Test(conv2d, reads_strided_input)
{
    /* A transposed view goes through lu_contiguous; the result equals that of a contiguous copy. */
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(2, 3, 6, 5), -1, 1, 5), *w = tu_rand(LU_F64, LU_SHAPE(2, 3, 3, 3), -1, 1, 6);
    lu_tensor *xt = lu_transpose(x, 2, 3), *xc = lu_contiguous(xt);
    lu_conv2d_params p = P2D(1, 1, 1, 1, 1, 1, 1);
    lu_tensor *a = lu_conv2d(xt, w, NULL, &p), *b = lu_conv2d(xc, w, NULL, &p);
    tu_assert_tensors_close(a, b, 0, 0, "conv2d strided input");
    lu_tensor_release(a);
    lu_tensor_release(b);
    lu_tensor_release(xc);
    lu_tensor_release(xt);
    lu_tensor_release(w);
    lu_tensor_release(x);
}

Test(conv2d, rejects_wrong_rank)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 8), -1, 1, 1), *w = tu_rand(LU_F32, LU_SHAPE(4, 3, 3, 3), -1, 1, 2);
    lu_conv2d_params p = P2D(1, 1, 0, 0, 1, 1, 1);
    cr_assert_null(lu_conv2d(x, w, NULL, &p));
    tu_assert_error_contains("conv2d: x and w need 4 dims");
    lu_tensor_release(w);
    lu_tensor_release(x);
}

/* ---- batch norm ------------------------------------------------------------------------------ */

/* Reference per channel over [B, C, S]: statistics (biased var for y, unbiased for running_var). */
static void ref_batchnorm(const double *x, int64_t B, int64_t C, int64_t S, const double *w, const double *b,
                          double *rm, double *rv, bool training, double m, double eps, double *y)
{
    for (int64_t c = 0; c < C; c++) {
        double mean = rm[c], var = rv[c];
        int64_t n = B * S;
        if (training) {
            double s = 0, ss = 0;
            for (int64_t i = 0; i < B; i++)
                for (int64_t j = 0; j < S; j++) s += x[(i * C + c) * S + j];
            mean = s / n;
            for (int64_t i = 0; i < B; i++)
                for (int64_t j = 0; j < S; j++) ss += pow(x[(i * C + c) * S + j] - mean, 2);
            var = ss / n;
            rm[c] = (1 - m) * rm[c] + m * mean;
            rv[c] = (1 - m) * rv[c] + m * ss / (n - 1);
        }
        for (int64_t i = 0; i < B; i++)
            for (int64_t j = 0; j < S; j++) {
                int64_t k = (i * C + c) * S + j;
                y[k] = (x[k] - mean) / sqrt(var + eps) * (w ? w[c] : 1) + (b ? b[c] : 0);
            }
    }
}

static void check_batchnorm(int ndim, const int64_t *shape, bool training, bool affine, lu_dtype dt, double tol)
{
    int64_t C = shape[1], n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    int64_t S = n / (shape[0] * C);
    lu_tensor *x = tu_rand(dt, ndim, shape, -2, 3, 10);
    lu_tensor *w = affine ? tu_rand(dt, 1, &C, 0.5, 1.5, 11) : NULL, *b = affine ? tu_rand(dt, 1, &C, -1, 1, 12) : NULL;
    lu_tensor *rm = tu_rand(dt, 1, &C, -0.5, 0.5, 13), *rv = tu_rand(dt, 1, &C, 0.5, 2, 14);
    double *xv = tu_to_doubles(x), *wv = w ? tu_to_doubles(w) : NULL, *bv = b ? tu_to_doubles(b) : NULL;
    double *rmv = tu_to_doubles(rm), *rvv = tu_to_doubles(rv), *ref = malloc((size_t)n * sizeof *ref);
    ref_batchnorm(xv, shape[0], C, S, wv, bv, rmv, rvv, training, 0.1, 1e-5, ref);
    lu_tensor *y = lu_batchnorm(x, w, b, rm, rv, training, 0.1, 1e-5);
    tu_assert_close(y, ref, n, tol, tol, training ? "batchnorm train y" : "batchnorm eval y");
    tu_assert_close(rm, rmv, C, tol, tol, "running_mean");
    tu_assert_close(rv, rvv, C, tol, tol, "running_var");
    free(xv);
    free(wv);
    free(bv);
    free(rmv);
    free(rvv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(x);
    lu_tensor_release(w);
    lu_tensor_release(b);
    lu_tensor_release(rm);
    lu_tensor_release(rv);
}

Test(batchnorm, training_normalises_and_updates_running_stats_1d)
{
    check_batchnorm(3, (int64_t[]){3, 4, 7}, true, true, LU_F64, 1e-12);
    check_batchnorm(3, (int64_t[]){3, 4, 7}, true, true, LU_F32, 1e-5);
}

Test(batchnorm, training_on_2d_maps_without_affine)
{
    check_batchnorm(4, (int64_t[]){2, 3, 5, 3}, true, false, LU_F64, 1e-12);
}

Test(batchnorm, training_on_b_by_c_input)
{
    /* [B, C] (BatchNorm1d without time): n = B. */
    check_batchnorm(2, (int64_t[]){5, 3}, true, true, LU_F64, 1e-12);
}

Test(batchnorm, eval_uses_running_stats_and_leaves_them)
{
    check_batchnorm(4, (int64_t[]){2, 3, 4, 5}, false, true, LU_F64, 1e-12);
    check_batchnorm(3, (int64_t[]){2, 5, 3}, false, true, LU_F32, 1e-5);
}

Test(batchnorm, running_var_uses_unbiased_variance)
{
    /* One channel, values 1 and 3: mean 2, biased var 1, unbiased var 2. Momentum 1 takes the batch. */
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(2, 1), LU_CPU, (double[]){1, 3});
    lu_tensor *rm = lu_tensor_zeros(LU_F64, LU_SHAPE(1), LU_CPU), *rv = lu_tensor_full(LU_F64, LU_SHAPE(1), LU_CPU, 1);
    lu_tensor *y = lu_batchnorm(x, NULL, NULL, rm, rv, true, 1.0, 0);
    cr_assert_null(y);
    tu_assert_error_contains("eps 0 must be > 0");
    y = lu_batchnorm(x, NULL, NULL, rm, rv, true, 1.0, 1e-12);
    tu_assert_close(y, (double[]){-1, 1}, 2, 1e-9, 0, "y");
    tu_assert_close(rm, (double[]){2}, 1, 0, 0, "running_mean");
    tu_assert_close(rv, (double[]){2}, 1, 0, 0, "running_var");
    lu_tensor_release(y);
    lu_tensor_release(rm);
    lu_tensor_release(rv);
    lu_tensor_release(x);
}

typedef struct bn_ctx {
    lu_tensor *rm, *rv;
    bool training;
} bn_ctx;

static lu_tensor *bn_fn(lu_tensor **in, void *ctx)
{
    bn_ctx *c = ctx;
    return lu_batchnorm(in[0], in[1], in[2], c->rm, c->rv, c->training, 0.1, 1e-3);
}

static void check_batchnorm_grad(bool training)
{
    lu_tensor *in[3] = {tu_rand(LU_F64, LU_SHAPE(3, 2, 5), -2, 2, 20), tu_rand(LU_F64, LU_SHAPE(2), 0.5, 1.5, 21),
                        tu_rand(LU_F64, LU_SHAPE(2), -1, 1, 22)};
    bn_ctx c = {tu_rand(LU_F64, LU_SHAPE(2), -0.5, 0.5, 23), tu_rand(LU_F64, LU_SHAPE(2), 0.5, 2, 24), training};
    tu_gradcheck(bn_fn, in, 3, (bool[]){true, true, true}, &c, 1e-6, 1e-7, 1e-6, 100,
                 training ? "batchnorm train grad" : "batchnorm eval grad");
    for (int i = 0; i < 3; i++) lu_tensor_release(in[i]);
    lu_tensor_release(c.rm);
    lu_tensor_release(c.rv);
}

Test(batchnorm, gradients_in_training) { check_batchnorm_grad(true); }

Test(batchnorm, gradients_in_eval) { check_batchnorm_grad(false); }

Test(batchnorm, rejects_single_value_per_channel_and_bad_stats)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(1, 3), -1, 1, 1);
    lu_tensor *rm = lu_tensor_zeros(LU_F32, LU_SHAPE(3), LU_CPU), *rv = lu_tensor_zeros(LU_F32, LU_SHAPE(3), LU_CPU);
    cr_assert_null(lu_batchnorm(x, NULL, NULL, rm, rv, true, 0.1, 1e-5));
    tu_assert_error_contains("batchnorm: training needs more than 1 value per channel (x [1, 3] f32)");
    lu_tensor *rm4 = lu_tensor_zeros(LU_F32, LU_SHAPE(4), LU_CPU);
    cr_assert_null(lu_batchnorm(x, NULL, NULL, rm4, rv, false, 0.1, 1e-5));
    tu_assert_error_contains("running_mean [4] f32 must be [C]");
    lu_tensor *rv64 = lu_tensor_zeros(LU_F64, LU_SHAPE(3), LU_CPU);
    cr_assert_null(lu_batchnorm(x, NULL, NULL, rm, rv64, false, 0.1, 1e-5));
    tu_assert_error_contains("running_var [3] f64 must have x's dtype");
    lu_tensor_release(rv64);
    lu_tensor_release(rm4);
    lu_tensor_release(rm);
    lu_tensor_release(rv);
    lu_tensor_release(x);
}

/* ---- dropout --------------------------------------------------------------------------------- */

Test(dropout, same_key_gives_same_mask_and_other_step_another)
{
    lu_tensor *x = lu_tensor_full(LU_F32, LU_SHAPE(3, 101), LU_CPU, 1);
    lu_tensor *a = lu_dropout(x, 0.3, 7, 5, 2), *b = lu_dropout(x, 0.3, 7, 5, 2), *c = lu_dropout(x, 0.3, 7, 6, 2);
    lu_tensor *d = lu_dropout(x, 0.3, 7, 5, 3);
    tu_assert_tensors_close(a, b, 0, 0, "same key");
    double *av = tu_to_doubles(a), *cv = tu_to_doubles(c), *dv = tu_to_doubles(d);
    int diff_step = 0, diff_op = 0;
    for (int i = 0; i < 303; i++) {
        diff_step += av[i] != cv[i];
        diff_op += av[i] != dv[i];
    }
    cr_assert_gt(diff_step, 30, "another step changed only %d of 303 elements", diff_step);
    cr_assert_gt(diff_op, 30, "another op id changed only %d of 303 elements", diff_op);
    free(av);
    free(cv);
    free(dv);
    lu_tensor_release(a);
    lu_tensor_release(b);
    lu_tensor_release(c);
    lu_tensor_release(d);
    lu_tensor_release(x);
}

Test(dropout, keeps_about_one_minus_p_scaled_and_follows_the_philox_rule)
{
    int64_t n = 20000;
    double p = 0.25;
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(n), 0.5, 1.5, 3);
    lu_tensor *y = lu_dropout(x, p, 11, 2, 9);
    double *xv = tu_to_doubles(x), *ref = malloc((size_t)n * sizeof *ref);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        bool drop = lu_rng_uniform(11, 2, 9, (uint64_t)i) < p;
        ref[i] = drop ? 0 : xv[i] / (1 - p);
        kept += !drop;
    }
    tu_assert_close(y, ref, n, 1e-15, 1e-15, "dropout values");
    /* Binomial(20000, 0.75): sd ~ 61, so +-400 is more than 6 sd. */
    cr_assert(llabs(kept - 15000) < 400, "kept %lld of %lld", (long long)kept, (long long)n);
    free(xv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(dropout, gradient_is_mask_over_keep_probability)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(4, 33), -1, 1, 4);
    lu_tensor_set_requires_grad(x, true);
    lu_tensor *y = lu_dropout(x, 0.4, 1, 1, 1);
    lu_tensor *ones = lu_tensor_full(LU_F64, LU_SHAPE(4, 33), LU_CPU, 1);
    cr_assert_eq(lu_backward_from(y, ones), LU_OK, "%s", lu_error_message());
    double ref[132];
    for (int i = 0; i < 132; i++) ref[i] = lu_rng_uniform(1, 1, 1, (uint64_t)i) < 0.4 ? 0 : 1 / 0.6;
    tu_assert_close(x->grad, ref, 132, 1e-15, 1e-15, "dropout grad");
    lu_tensor_release(ones);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

/* The backward reads the mask off y where x != 0 and regenerates it in chunks of 64 elements
 * holding an x == 0 (there y is 0 either way): zeros only in the second chunk cover both. */
Test(dropout, gradient_where_the_input_has_zeros)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(200), -1, 1, 6);
    float *xv = lu_tensor_data(x);
    for (int i = 64; i < 128; i += 3) xv[i] = 0;
    lu_tensor_set_requires_grad(x, true);
    lu_tensor *y = lu_dropout(x, 0.3, 2, 5, 7);
    lu_tensor *ones = lu_tensor_full(LU_F32, LU_SHAPE(200), LU_CPU, 1);
    cr_assert_eq(lu_backward_from(y, ones), LU_OK, "%s", lu_error_message());
    double ref[200];
    for (int i = 0; i < 200; i++) ref[i] = lu_rng_uniform(2, 5, 7, (uint64_t)i) < 0.3 ? 0 : (double)(float)(1 / 0.7);
    tu_assert_close(x->grad, ref, 200, 0, 0, "dropout grad");
    lu_tensor_release(ones);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

static lu_tensor *dropout_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_dropout(in[0], 0.5, 3, 4, 5);
}

Test(dropout, gradcheck)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 7), -1, 1, 5);
    tu_gradcheck(dropout_fn, &x, 1, (bool[]){true}, NULL, 1e-6, 1e-8, 1e-7, 100, "dropout");
    lu_tensor_release(x);
}

Test(dropout, p0_is_identity_and_bad_p_is_rejected)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 5), -1, 1, 6);
    lu_tensor *y = lu_dropout(x, 0, 1, 2, 3);
    tu_assert_tensors_close(y, x, 0, 0, "p = 0");
    lu_tensor_release(y);
    cr_assert_null(lu_dropout(x, 1.0, 1, 2, 3));
    tu_assert_error_contains("dropout: p = 1 must be in [0, 1) (x [2, 5])");
    cr_assert_null(lu_dropout(x, -0.1, 1, 2, 3));
    tu_assert_error_contains("p = -0.1 must be in [0, 1)");
    lu_tensor_release(x);
}
