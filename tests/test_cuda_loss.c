/* test_cuda_loss.c - the CUDA reductions (sum, mean, max), LayerNorm and BiasNorm, concat and
 * gather, the fused cross-entropy and the CTC loss against the CPU backend (the reference), as
 * test_cuda.c does for the other kernels: same random inputs (odd sizes, NaN/Inf where the op
 * must propagate them), outputs compared by normalised error with NaN/Inf mismatches failing,
 * backward kernels compared on the CPU's forward outputs, and two GPU runs compared bit for bit
 * (the kernels use no float atomics). Without a GPU every test skips and says why. */
#include <math.h>
#include <string.h>

#include "testutil.h"

#ifdef LUTHIER_HAVE_CUDA

#include "cuda_testutil.h"

static float *fdata(lu_tensor *t) { return lu_tensor_data(t); }

/* ---- sum, mean, max ---- */

/* Forward then backward of SUM and MEAN along dim (LU_ALL_DIMS: everything). */
static void check_sum(int ndim, const int64_t *shape, int dim, lu_dtype dev_dt, double tol, bool twice)
{
    lu_reduce_params p = {dim};
    int64_t kept[LU_MAX_DIMS];
    for (int i = 0; i < ndim; i++) kept[i] = dim == LU_ALL_DIMS || i == dim ? 1 : shape[i];
    const lu_op ops[2] = {LU_OP_SUM, LU_OP_MEAN};
    for (int o = 0; o < 2; o++) {
        lu_tensor *x = tu_rand(LU_F32, ndim, shape, -2, 2, 200 + (uint64_t)dim), *y = empty(LU_F32, ndim, kept);
        char what[128];
        snprintf(what, sizeof what, "%s %s dim %d of %lld elements, forward", lu_op_name(ops[o]), lu_dtype_name(dev_dt),
                 dim, (long long)lu_tensor_numel(x));
        kcase f = {.op = ops[o], .params = &p, .in = {x}, .n_in = 1, .out = {y}, .n_out = 1, .dev_dt = dev_dt, .tol = tol};
        check_case(&f, what);
        if (twice) check_deterministic(&f, what);
        cpu_forward(ops[o], &x, 1, &y, 1, &p);
        lu_tensor *dy = tu_rand(LU_F32, ndim, kept, -1, 1, 210), *dx = empty(LU_F32, ndim, shape);
        snprintf(what, sizeof what, "%s %s dim %d, backward", lu_op_name(ops[o]), lu_dtype_name(dev_dt), dim);
        kcase b = {.op = ops[o], .backward = true, .params = &p, .in = {dy, x, y}, .n_in = 3, .out = {dx}, .n_out = 1,
                   .dev_dt = dev_dt, .tol = tol};
        check_case(&b, what);
        release_all((lu_tensor *[]){x, y, dy, dx}, 4);
    }
}

Test(cuda_loss, sum_and_mean_match_cpu_along_every_dim)
{
    require_gpu();
    const int64_t shape[3] = {3, 333, 7};
    for (int d = -1; d < 3; d++) check_sum(3, shape, d, LU_F32, TOL_F32, false);
}

Test(cuda_loss, sum_and_mean_match_cpu_on_long_rows_and_columns)
{
    require_gpu();
    check_sum(2, (int64_t[]){2, 100003}, 1, LU_F32, TOL_F32, true);   /* chunked rows */
    check_sum(2, (int64_t[]){5000, 3}, 0, LU_F32, TOL_F32, true);     /* chunked columns */
    check_sum(1, (int64_t[]){300007}, LU_ALL_DIMS, LU_F32, TOL_F32, true);
    check_sum(1, (int64_t[]){1}, LU_ALL_DIMS, LU_F32, TOL_F32, false);
    check_sum(3, (int64_t[]){3, 0, 2}, 1, LU_F32, TOL_F32, false);    /* empty: 0 and NaN */
}

Test(cuda_loss, sum_and_mean_bf16_within_bf16_rounding)
{
    require_gpu();
    check_sum(3, (int64_t[]){3, 333, 7}, 1, LU_BF16, TOL_BF16, false);
    check_sum(2, (int64_t[]){2, 100003}, 1, LU_BF16, TOL_BF16, false);
}

/* Values on a coarse grid (many ties) with NaNs at a few places: max and argmax must equal the
 * CPU's exactly (first maximum, first NaN). */
static void check_max(int ndim, const int64_t *shape, int dim, lu_dtype dev_dt, bool with_nan)
{
    lu_reduce_params p = {dim};
    int64_t kept[LU_MAX_DIMS];
    for (int i = 0; i < ndim; i++) kept[i] = dim == LU_ALL_DIMS || i == dim ? 1 : shape[i];
    lu_tensor *x = tu_rand(LU_F32, ndim, shape, -3, 3, 220 + (uint64_t)dim);
    int64_t n = lu_tensor_numel(x);
    for (int64_t i = 0; i < n; i++) fdata(x)[i] = floorf(fdata(x)[i]);
    if (with_nan)
        for (int64_t i = 5; i < n; i += 97) fdata(x)[i] = NAN;
    lu_tensor *y = empty(LU_F32, ndim, kept), *am = empty(LU_I64, ndim, kept);
    char what[128];
    snprintf(what, sizeof what, "max %s dim %d%s, forward", lu_dtype_name(dev_dt), dim, with_nan ? " with NaN" : "");
    kcase f = {.op = LU_OP_MAX, .params = &p, .in = {x}, .n_in = 1, .out = {y, am}, .n_out = 2, .dev_dt = dev_dt,
               .tol = 0};
    check_case(&f, what);
    check_deterministic(&f, what);
    cpu_forward(LU_OP_MAX, &x, 1, (lu_tensor *[]){y, am}, 2, &p);
    lu_tensor *dy = tu_rand(LU_F32, ndim, kept, -1, 1, 230), *dx = empty(LU_F32, ndim, shape);
    snprintf(what, sizeof what, "max %s dim %d, backward", lu_dtype_name(dev_dt), dim);
    kcase b = {.op = LU_OP_MAX, .backward = true, .params = &p, .in = {dy, NULL, x, y, am}, .n_in = 5, .out = {dx},
               .n_out = 1, .dev_dt = dev_dt, .tol = 0};
    check_case(&b, what);
    release_all((lu_tensor *[]){x, y, am, dy, dx}, 5);
}

Test(cuda_loss, max_and_argmax_match_cpu_exactly)
{
    require_gpu();
    const int64_t shape[3] = {3, 333, 7};
    for (int d = -1; d < 3; d++) check_max(3, shape, d, LU_F32, false);
    check_max(2, (int64_t[]){2, 100003}, 1, LU_F32, false);
    check_max(2, (int64_t[]){5000, 3}, 0, LU_F32, false);
}

Test(cuda_loss, max_propagates_the_first_nan)
{
    require_gpu();
    check_max(3, (int64_t[]){3, 333, 7}, 1, LU_F32, true);
    check_max(2, (int64_t[]){2, 100003}, 1, LU_F32, true);
    check_max(1, (int64_t[]){300007}, LU_ALL_DIMS, LU_F32, true);
}

Test(cuda_loss, max_bf16_matches_cpu_exactly) { require_gpu(); check_max(3, (int64_t[]){3, 333, 7}, 2, LU_BF16, true); }

/* ---- layernorm, biasnorm ---- */

/* In bf16, x, the per-channel tensors, y and their gradients are bf16 on the device while the
 * saved statistics stay f32. */
static void check_layernorm(int ndim, const int64_t *shape, bool affine, lu_dtype dev_dt, double tol)
{
    lu_norm_params p = {1e-5};
    int64_t d = shape[ndim - 1];
    lu_tensor *x = tu_rand(LU_F32, ndim, shape, -2, 3, 300);
    lu_tensor *w = affine ? tu_rand(LU_F32, 1, &d, 0.5, 1.5, 301) : NULL, *b = affine ? tu_rand(LU_F32, 1, &d, -1, 1, 302) : NULL;
    lu_tensor *y = empty(LU_F32, ndim, shape), *mean = empty(LU_F32, ndim - 1, shape), *rstd = empty(LU_F32, ndim - 1, shape);
    char what[128];
    snprintf(what, sizeof what, "layernorm %s D %lld rows %lld %s, forward", lu_dtype_name(dev_dt), (long long)d,
             (long long)(lu_tensor_numel(x) / d), affine ? "affine" : "plain");
    kcase f = {.op = LU_OP_LAYERNORM, .params = &p, .in = {x, w, b}, .n_in = 3, .out = {y, mean, rstd}, .n_out = 3,
               .dev_dt = dev_dt, .keep_f32_out = 6, .tol = tol};
    check_case(&f, what);
    cpu_forward(LU_OP_LAYERNORM, (lu_tensor *[]){x, w, b}, 3, (lu_tensor *[]){y, mean, rstd}, 3, &p);
    lu_tensor *dy = tu_rand(LU_F32, ndim, shape, -1, 1, 303), *dx = empty(LU_F32, ndim, shape);
    lu_tensor *dw = affine ? empty(LU_F32, 1, &d) : NULL, *db = affine ? empty(LU_F32, 1, &d) : NULL;
    snprintf(what, sizeof what, "layernorm %s D %lld %s, backward", lu_dtype_name(dev_dt), (long long)d,
             affine ? "affine" : "plain");
    kcase k = {.op = LU_OP_LAYERNORM, .backward = true, .params = &p, .in = {dy, NULL, NULL, x, w, b, y, mean, rstd},
               .n_in = 9, .out = {dx, dw, db}, .n_out = 3, .dev_dt = dev_dt, .keep_f32_in = 3u << 7, .tol = tol};
    check_case(&k, what);
    if (affine) check_deterministic(&k, what);
    release_all((lu_tensor *[]){x, w, b, y, mean, rstd, dy, dx, dw, db}, 10);
}

Test(cuda_loss, layernorm_matches_cpu_forward_and_gradients)
{
    require_gpu();
    check_layernorm(3, (int64_t[]){2, 9, 67}, true, LU_F32, TOL_F32);
    check_layernorm(3, (int64_t[]){2, 9, 67}, false, LU_F32, TOL_F32);
    check_layernorm(2, (int64_t[]){333, 67}, true, LU_F32, TOL_F32);   /* two-stage column sums */
    check_layernorm(2, (int64_t[]){1, 5}, true, LU_F32, TOL_F32);
    check_layernorm(2, (int64_t[]){7, 1031}, true, LU_F32, TOL_F32);
    check_layernorm(2, (int64_t[]){4099, 3}, true, LU_F32, TOL_F32);   /* many chunks of rows */
}

Test(cuda_loss, layernorm_bf16_within_bf16_rounding)
{
    require_gpu();
    check_layernorm(2, (int64_t[]){333, 67}, true, LU_BF16, TOL_BF16);
}

static void check_biasnorm(int ndim, const int64_t *shape, lu_dtype dev_dt, double tol)
{
    int64_t d = shape[ndim - 1];
    lu_tensor *x = tu_rand(LU_F32, ndim, shape, -2, 3, 310), *bias = tu_rand(LU_F32, 1, &d, -1, 1, 311);
    lu_tensor *ls = tu_rand(LU_F32, 1, (int64_t[]){1}, -0.5, 0.5, 312);
    lu_tensor *y = empty(LU_F32, ndim, shape), *rstd = empty(LU_F32, ndim - 1, shape);
    char what[128];
    snprintf(what, sizeof what, "biasnorm %s D %lld rows %lld, forward", lu_dtype_name(dev_dt), (long long)d,
             (long long)(lu_tensor_numel(x) / d));
    kcase f = {.op = LU_OP_BIASNORM, .in = {x, bias, ls}, .n_in = 3, .out = {y, rstd}, .n_out = 2, .dev_dt = dev_dt,
               .keep_f32_out = 2, .tol = tol};
    check_case(&f, what);
    cpu_forward(LU_OP_BIASNORM, (lu_tensor *[]){x, bias, ls}, 3, (lu_tensor *[]){y, rstd}, 2, NULL);
    lu_tensor *dy = tu_rand(LU_F32, ndim, shape, -1, 1, 313), *dx = empty(LU_F32, ndim, shape);
    lu_tensor *db = empty(LU_F32, 1, &d), *dls = empty(LU_F32, 1, (int64_t[]){1});
    snprintf(what, sizeof what, "biasnorm %s D %lld, backward", lu_dtype_name(dev_dt), (long long)d);
    kcase k = {.op = LU_OP_BIASNORM, .backward = true, .in = {dy, NULL, x, bias, ls, y, rstd}, .n_in = 7,
               .out = {dx, db, dls}, .n_out = 3, .dev_dt = dev_dt, .keep_f32_in = 1u << 6, .tol = tol};
    check_case(&k, what);
    check_deterministic(&k, what);
    release_all((lu_tensor *[]){x, bias, ls, y, rstd, dy, dx, db, dls}, 9);
}

Test(cuda_loss, biasnorm_matches_cpu_forward_and_gradients)
{
    require_gpu();
    check_biasnorm(3, (int64_t[]){2, 9, 67}, LU_F32, TOL_F32);
    check_biasnorm(2, (int64_t[]){333, 384}, LU_F32, TOL_F32);
    check_biasnorm(2, (int64_t[]){1, 7}, LU_F32, TOL_F32);
    check_biasnorm(2, (int64_t[]){4099, 3}, LU_F32, TOL_F32);
}

Test(cuda_loss, biasnorm_bf16_within_bf16_rounding) { require_gpu(); check_biasnorm(2, (int64_t[]){333, 67}, LU_BF16, TOL_BF16); }

/* ---- concat, gather ---- */

/* Three parts of [5, 3, 7] with extents 1, 4 and 2 along dim; backward with the middle
 * gradient not needed. */
static void check_concat(int dim, lu_dtype dt)
{
    lu_dim_params p = {dim};
    const int64_t ext[3] = {1, 4, 2};
    lu_tensor *parts[3], *grads[3];
    int64_t yshape[3] = {5, 3, 7};
    yshape[dim] = 7;
    for (int k = 0; k < 3; k++) {
        int64_t s[3] = {5, 3, 7};
        s[dim] = ext[k];
        lu_tensor *r = tu_rand(LU_F32, 3, s, -100, 100, 400 + (uint64_t)k);
        parts[k] = lu_tensor_convert(r, dt, LU_CPU);
        lu_tensor_release(r);
        grads[k] = k == 1 ? NULL : empty(dt, 3, s);
    }
    lu_tensor *y = empty(dt, 3, yshape);
    char what[96];
    snprintf(what, sizeof what, "concat %s along dim %d, forward", lu_dtype_name(dt), dim);
    kcase f = {.op = LU_OP_CONCAT, .params = &p, .in = {parts[0], parts[1], parts[2]}, .n_in = 3, .out = {y}, .n_out = 1,
               .dev_dt = dt, .tol = 0};
    check_case(&f, what);
    lu_tensor *r = tu_rand(LU_F32, 3, yshape, -100, 100, 410), *dy = lu_tensor_convert(r, dt, LU_CPU);
    snprintf(what, sizeof what, "concat %s along dim %d, backward", lu_dtype_name(dt), dim);
    kcase b = {.op = LU_OP_CONCAT, .backward = true, .params = &p, .in = {dy, parts[0], parts[1], parts[2], y}, .n_in = 5,
               .out = {grads[0], grads[1], grads[2]}, .n_out = 3, .dev_dt = dt, .tol = 0};
    check_case(&b, what);
    release_all((lu_tensor *[]){parts[0], parts[1], parts[2], grads[0], grads[2], y, r, dy}, 8);
}

Test(cuda_loss, concat_matches_cpu_along_every_dim_and_dtype)
{
    require_gpu();
    const lu_dtype dts[3] = {LU_F32, LU_BF16, LU_I64};
    for (int t = 0; t < 3; t++)
        for (int d = 0; d < 3; d++) check_concat(d, dts[t]);
}

/* x [7, 13, 5]; the index is one smaller than x outside dim and 2 * extent + 1 along it, so
 * values repeat and the backward adds several gradients into one element. */
static void check_gather(int dim, lu_dtype index_dt, lu_dtype dev_dt, double tol)
{
    lu_dim_params p = {dim};
    int64_t xs[3] = {7, 13, 5}, is[3] = {6, 12, 4};
    is[dim] = 2 * xs[dim] + 1;
    lu_tensor *x = tu_rand(LU_F32, 3, xs, -2, 2, 420), *index = tu_randint(index_dt, 3, is, xs[dim], 421 + (uint64_t)dim);
    lu_tensor *y = empty(LU_F32, 3, is);
    char what[96];
    snprintf(what, sizeof what, "gather %s dim %d %s index, forward", lu_dtype_name(dev_dt), dim, lu_dtype_name(index_dt));
    kcase f = {.op = LU_OP_GATHER, .params = &p, .in = {x, index}, .n_in = 2, .out = {y}, .n_out = 1, .dev_dt = dev_dt,
               .tol = 0};
    check_case(&f, what);
    cpu_forward(LU_OP_GATHER, (lu_tensor *[]){x, index}, 2, &y, 1, &p);
    lu_tensor *dy = tu_rand(LU_F32, 3, is, -1, 1, 430), *dx = empty(LU_F32, 3, xs);
    snprintf(what, sizeof what, "gather %s dim %d %s index, backward", lu_dtype_name(dev_dt), dim,
             lu_dtype_name(index_dt));
    kcase b = {.op = LU_OP_GATHER, .backward = true, .params = &p, .in = {dy, x, index, y}, .n_in = 4, .out = {dx, NULL},
               .n_out = 2, .dev_dt = dev_dt, .tol = tol};
    check_case(&b, what);
    check_deterministic(&b, what);
    release_all((lu_tensor *[]){x, index, y, dy, dx}, 5);
}

Test(cuda_loss, gather_matches_cpu_along_every_dim)
{
    require_gpu();
    for (int d = 0; d < 3; d++) {
        check_gather(d, LU_I64, LU_F32, TOL_F32);
        check_gather(d, LU_I32, LU_F32, TOL_F32);
        check_gather(d, LU_I64, LU_BF16, TOL_BF16);
    }
}

Test(cuda_loss, gather_index_out_of_range_names_its_position)
{
    require_gpu();
    lu_dim_params p = {1};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3), -1, 1, 440), *index = lu_tensor_zeros(LU_I64, LU_SHAPE(2, 2), LU_CPU);
    ((int64_t *)lu_tensor_data(index))[3] = 3;
    lu_tensor *dx = to_device(x, LU_F32), *di = to_device(index, LU_F32);
    lu_tensor *dy = lu_tensor_empty(LU_F32, LU_SHAPE(2, 2), LU_CUDA);
    cr_assert(dy, "%s", lu_error_message());
    cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_GATHER, (lu_tensor *[]){dx, di}, 2, &dy, 1, &p), LU_ERR_INVALID);
    tu_assert_error_contains("gather: index 3 at position 3 is outside [0, 3)");
    release_all((lu_tensor *[]){x, index, dx, di, dy}, 5);
}

/* ---- cross-entropy ---- */

/* logits [N, V] in [-8, 8); targets in [0, V) with every fifth row set to ignore_index. With bf16
 * logits (and dlogits) on the device, the loss, dloss, lse and count stay f32 there, as
 * lu_cross_entropy makes them. */
static void check_xent(int64_t N, int64_t V, lu_reduction red, int64_t ignore, lu_dtype dev_dt, double tol,
                       bool non_finite, bool twice)
{
    lu_cross_entropy_params p = {ignore, red};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(N, V), -8, 8, 500 + (uint64_t)V), *t = tu_randint(LU_I64, LU_SHAPE(N), V, 501);
    for (int64_t i = 0; i < N; i += 5) ((int64_t *)lu_tensor_data(t))[i] = ignore;
    if (non_finite && N >= 4 && V >= 3) {
        /* row 1: +inf at one class; row 2: a NaN; row 3: all -inf */
        int64_t *tt = lu_tensor_data(t);
        tt[1] = (tt[1] + 1) % V;
        fdata(x)[1 * V + tt[1] - (tt[1] > 0)] = INFINITY;
        fdata(x)[2 * V + V / 2] = NAN;
        for (int64_t j = 0; j < V; j++) fdata(x)[3 * V + j] = -INFINITY;
    }
    int64_t one = 1;
    lu_tensor *loss = red == LU_REDUCE_NONE ? empty(LU_F32, 1, &N) : empty(LU_F32, 0, &one);
    lu_tensor *lse = empty(LU_F32, 1, &N), *count = empty(LU_F32, 1, &one);
    char what[128];
    snprintf(what, sizeof what, "cross_entropy %s N %lld V %lld reduction %d ignore %lld, forward", lu_dtype_name(dev_dt),
             (long long)N, (long long)V, (int)red, (long long)ignore);
    kcase f = {.op = LU_OP_CROSS_ENTROPY, .params = &p, .in = {x, t}, .n_in = 2, .out = {loss, lse, count}, .n_out = 3,
               .dev_dt = dev_dt, .keep_f32_out = 7, .tol = tol};
    check_case(&f, what);
    if (twice) check_deterministic(&f, what);
    cpu_forward(LU_OP_CROSS_ENTROPY, (lu_tensor *[]){x, t}, 2, (lu_tensor *[]){loss, lse, count}, 3, &p);
    lu_tensor *dl = red == LU_REDUCE_NONE ? tu_rand(LU_F32, LU_SHAPE(N), 0.5, 1.5, 502) : tu_rand(LU_F32, 0, &one, 0.5, 1.5, 502);
    lu_tensor *dx = empty(LU_F32, LU_SHAPE(N, V));
    snprintf(what, sizeof what, "cross_entropy %s N %lld V %lld reduction %d, backward", lu_dtype_name(dev_dt),
             (long long)N, (long long)V, (int)red);
    kcase b = {.op = LU_OP_CROSS_ENTROPY, .backward = true, .params = &p,
               .in = {dl, NULL, NULL, x, t, loss, lse, count}, .n_in = 8, .out = {dx, NULL}, .n_out = 2,
               .dev_dt = dev_dt, .keep_f32_in = 1u | 7u << 5, .tol = tol};
    check_case(&b, what);
    if (twice) check_deterministic(&b, what);
    release_all((lu_tensor *[]){x, t, loss, lse, count, dl, dx}, 7);
}

/* V % 8 == 0 takes the backward's vector kernel, 5 and 1001 the scalar one. */
static const int64_t xent_sizes[][2] = {{1, 5}, {7, 5}, {7, 1000}, {33, 1001}, {333, 1000}, {1, 152064}, {7, 152064}};

Test(cuda_loss, cross_entropy_matches_cpu_for_every_reduction)
{
    require_gpu();
    for (size_t i = 0; i < sizeof xent_sizes / sizeof xent_sizes[0]; i++)
        for (int red = 0; red < 3; red++)
            check_xent(xent_sizes[i][0], xent_sizes[i][1], (lu_reduction)red, -100, LU_F32, TOL_F32, false, i == 6);
}

Test(cuda_loss, cross_entropy_ignore_index_inside_the_vocabulary)
{
    require_gpu();
    check_xent(333, 1000, LU_REDUCE_MEAN, 3, LU_F32, TOL_F32, false, false);
}

Test(cuda_loss, cross_entropy_bf16_logits_within_bf16_rounding)
{
    require_gpu();
    check_xent(333, 1000, LU_REDUCE_MEAN, -100, LU_BF16, TOL_BF16, false, false);
    check_xent(7, 152064, LU_REDUCE_SUM, -100, LU_BF16, TOL_BF16, false, true);
}

/* Through lu_cross_entropy and autograd, as training runs it: bf16 logits on the GPU give an f32
 * loss (within f32 error of the CPU's on the same values, for every reduction) and a bf16
 * gradient (within bf16 error), from an f32 dloss. */
Test(cuda_loss, cross_entropy_op_gives_an_f32_loss_for_bf16_logits)
{
    require_gpu();
    int64_t N = 333, V = 1000;
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(N, V), -8, 8, 520), *t = tu_randint(LU_I64, LU_SHAPE(N), V, 521);
    for (int64_t i = 0; i < N; i += 5) ((int64_t *)lu_tensor_data(t))[i] = -100;
    round_to_bf16(x);
    lu_tensor *dx = to_device(x, LU_BF16), *dt = to_device(t, LU_F32);
    lu_tensor_set_requires_grad(x, true);
    lu_tensor_set_requires_grad(dx, true);
    for (int r = LU_REDUCE_MEAN; r <= LU_REDUCE_NONE; r++) {
        char what[96];
        lu_tensor *lc = lu_cross_entropy(x, t, -100, (lu_reduction)r);
        cr_assert(lc, "cpu: %s", lu_error_message());
        lu_tensor *dy = tu_rand(LU_F32, lc->ndim, lc->shape, 0.5, 1.5, 522 + (uint64_t)r), *ddy = to_device(dy, LU_F32);
        cr_assert_eq(lu_backward_from(lc, dy), LU_OK, "cpu: %s", lu_error_message());
        lu_tensor *lg = lu_cross_entropy(dx, dt, -100, (lu_reduction)r);
        cr_assert(lg, "cuda: %s", lu_error_message());
        cr_assert(lg->dtype == LU_F32, "reduction %d: the loss of bf16 logits is %s, not f32", r,
                  lu_dtype_name(lg->dtype));
        snprintf(what, sizeof what, "cross_entropy op, bf16 logits, reduction %d: loss", r);
        assert_nmse(lg, lc, TOL_F32, what);
        cr_assert_eq(lu_backward_from(lg, ddy), LU_OK, "cuda: %s", lu_error_message());
        cr_assert(dx->grad && dx->grad->dtype == LU_BF16, "the gradient of bf16 logits is bf16");
        snprintf(what, sizeof what, "cross_entropy op, bf16 logits, reduction %d: gradient", r);
        assert_nmse(dx->grad, x->grad, TOL_BF16, what);
        lu_tensor_zero_grad(x);
        lu_tensor_zero_grad(dx);
        release_all((lu_tensor *[]){lc, dy, ddy, lg}, 4);
    }
    release_all((lu_tensor *[]){x, t, dx, dt}, 4);
}

Test(cuda_loss, cross_entropy_propagates_inf_and_nan_as_the_cpu)
{
    require_gpu();
    check_xent(7, 1000, LU_REDUCE_NONE, -100, LU_F32, TOL_F32, true, false);
    check_xent(7, 5, LU_REDUCE_NONE, -100, LU_F32, TOL_F32, true, false);
}

Test(cuda_loss, cross_entropy_bad_target_names_its_position)
{
    require_gpu();
    lu_cross_entropy_params p = {-100, LU_REDUCE_MEAN};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(4, 5), -1, 1, 510), *t = lu_tensor_zeros(LU_I32, LU_SHAPE(4), LU_CPU);
    ((int32_t *)lu_tensor_data(t))[2] = 9;
    lu_tensor *dx = to_device(x, LU_F32), *dt = to_device(t, LU_F32);
    lu_tensor *out[3] = {lu_tensor_empty(LU_F32, 0, (int64_t[]){1}, LU_CUDA), lu_tensor_empty(LU_F32, LU_SHAPE(4), LU_CUDA),
                         lu_tensor_empty(LU_F32, LU_SHAPE(1), LU_CUDA)};
    cr_assert(out[0] && out[1] && out[2], "%s", lu_error_message());
    cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_CROSS_ENTROPY, (lu_tensor *[]){dx, dt}, 2, out, 3, &p), LU_ERR_INVALID);
    tu_assert_error_contains("cross_entropy: target 9 at position 2 is outside [0, 5)");
    release_all((lu_tensor *[]){x, t, dx, dt, out[0], out[1], out[2]}, 7);
}

/* ---- CTC ---- */

/* log_probs [B, T, V]: log_softmax of uniform [-3, 3) scores. */
static lu_tensor *rand_log_probs(int64_t B, int64_t T, int64_t V, uint64_t seed)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(B, T, V), -3, 3, seed);
    float *d = fdata(x);
    for (int64_t r = 0; r < B * T; r++) {
        double m = -INFINITY, s = 0;
        for (int64_t k = 0; k < V; k++) m = fmax(m, d[r * V + k]);
        for (int64_t k = 0; k < V; k++) s += exp(d[r * V + k] - m);
        for (int64_t k = 0; k < V; k++) d[r * V + k] = (float)(d[r * V + k] - m - log(s));
    }
    return x;
}

/* A CTC batch: lengths as given; labels drawn from the V - 1 ids that are not blank. */
typedef struct ctc_batch {
    int64_t B, T, V, S;
    lu_tensor *lp, *targets, *il, *tl;
} ctc_batch;

static ctc_batch ctc_make(int64_t B, int64_t T, int64_t V, int64_t S, const int64_t *ilen, const int64_t *tlen,
                          int blank, lu_dtype target_dt, uint64_t seed)
{
    ctc_batch c = {B, T, V, S, rand_log_probs(B, T, V, seed), NULL, NULL, NULL};
    lu_tensor *raw = tu_randint(LU_I64, LU_SHAPE(B, S), V - 1, seed + 1);
    int64_t *r = lu_tensor_data(raw);
    for (int64_t i = 0; i < B * S; i++) r[i] += r[i] >= blank;
    c.targets = lu_tensor_convert(raw, target_dt, LU_CPU);
    c.il = lu_tensor_empty(LU_I64, LU_SHAPE(B), LU_CPU);
    c.tl = lu_tensor_empty(LU_I32, LU_SHAPE(B), LU_CPU);
    cr_assert(c.targets && c.il && c.tl, "%s", lu_error_message());
    for (int64_t b = 0; b < B; b++) {
        ((int64_t *)lu_tensor_data(c.il))[b] = ilen[b];
        ((int32_t *)lu_tensor_data(c.tl))[b] = (int32_t)tlen[b];
    }
    lu_tensor_release(raw);
    return c;
}

static void ctc_free(ctc_batch *c) { release_all((lu_tensor *[]){c->lp, c->targets, c->il, c->tl}, 4); }

static void check_ctc(ctc_batch *c, int blank, lu_reduction red, bool zero_infinity, lu_dtype dev_dt, double tol,
                      const char *name)
{
    lu_ctc_params p = {blank, red, zero_infinity};
    int64_t B = c->B, one = 1;
    lu_tensor *loss = red == LU_REDUCE_NONE ? empty(LU_F32, 1, &B) : empty(LU_F32, 0, &one), *nll = empty(LU_F32, 1, &B);
    char what[160];
    snprintf(what, sizeof what, "ctc %s %s reduction %d zero_infinity %d, forward", name, lu_dtype_name(dev_dt), (int)red,
             zero_infinity);
    kcase f = {.op = LU_OP_CTC_LOSS, .params = &p, .in = {c->lp, c->targets, c->il, c->tl}, .n_in = 4,
               .out = {loss, nll}, .n_out = 2, .dev_dt = dev_dt, .tol = tol};
    check_case(&f, what);
    cpu_forward(LU_OP_CTC_LOSS, (lu_tensor *[]){c->lp, c->targets, c->il, c->tl}, 4, (lu_tensor *[]){loss, nll}, 2, &p);
    lu_tensor *dl = red == LU_REDUCE_NONE ? tu_rand(LU_F32, 1, &B, 0.5, 1.5, 600) : tu_rand(LU_F32, 0, &one, 0.5, 1.5, 600);
    lu_tensor *dlp = empty(LU_F32, 3, c->lp->shape);
    snprintf(what, sizeof what, "ctc %s %s reduction %d zero_infinity %d, backward", name, lu_dtype_name(dev_dt),
             (int)red, zero_infinity);
    kcase b = {.op = LU_OP_CTC_LOSS, .backward = true, .params = &p,
               .in = {dl, NULL, c->lp, c->targets, c->il, c->tl, loss, nll}, .n_in = 8, .out = {dlp}, .n_out = 1,
               .dev_dt = dev_dt, .tol = tol};
    check_case(&b, what);
    if (red == LU_REDUCE_MEAN) check_deterministic(&b, what);
    release_all((lu_tensor *[]){loss, nll, dl, dlp}, 4);
}

/* Six utterances of T 200: full length, short, one frame, none, too short for its labels
 * (infeasible), and no labels at all. */
static ctc_batch ctc_mixed(int64_t V, int blank, lu_dtype target_dt, uint64_t seed)
{
    const int64_t ilen[6] = {200, 77, 1, 0, 9, 131}, tlen[6] = {50, 23, 1, 0, 12, 0};
    return ctc_make(6, 200, V, 50, ilen, tlen, blank, target_dt, seed);
}

Test(cuda_loss, ctc_matches_cpu_for_every_reduction)
{
    require_gpu();
    for (int zi = 0; zi < 2; zi++)
        for (int red = 0; red < 3; red++) {
            ctc_batch c = ctc_mixed(29, 0, LU_I64, 610);
            check_ctc(&c, 0, (lu_reduction)red, zi, LU_F32, TOL_F32, "mixed lengths");
            ctc_free(&c);
        }
}

Test(cuda_loss, ctc_with_repeated_labels_and_last_blank)
{
    require_gpu();
    /* V 4 makes repeats (no skip transition) frequent; blank is the last id; i32 targets. */
    ctc_batch c = ctc_mixed(4, 3, LU_I32, 620);
    check_ctc(&c, 3, LU_REDUCE_SUM, true, LU_F32, TOL_F32, "V 4, blank 3");
    ctc_free(&c);
}

Test(cuda_loss, ctc_single_frame_and_empty_targets)
{
    require_gpu();
    const int64_t ilen[3] = {1, 1, 1}, tlen[3] = {0, 1, 0};
    ctc_batch c = ctc_make(3, 1, 5, 1, ilen, tlen, 0, LU_I64, 630);
    check_ctc(&c, 0, LU_REDUCE_NONE, false, LU_F32, TOL_F32, "T 1");
    ctc_free(&c);
    const int64_t ilen0[2] = {3, 2}, tlen0[2] = {0, 0};
    ctc_batch z = ctc_make(2, 3, 5, 0, ilen0, tlen0, 0, LU_I64, 631);
    check_ctc(&z, 0, LU_REDUCE_MEAN, false, LU_F32, TOL_F32, "S 0");
    ctc_free(&z);
}

Test(cuda_loss, ctc_long_targets_with_rows_in_global_memory)
{
    require_gpu();
    /* S 1000: 2001 states, whose working rows exceed the 48 KB of shared memory a launch gets
     * without opting in, so the recursions run on global scratch. */
    const int64_t ilen[2] = {1100, 1060}, tlen[2] = {1000, 990};
    ctc_batch c = ctc_make(2, 1100, 29, 1000, ilen, tlen, 0, LU_I32, 650);
    check_ctc(&c, 0, LU_REDUCE_MEAN, false, LU_F32, TOL_F32, "S 1000");
    ctc_free(&c);
}

Test(cuda_loss, ctc_bf16_within_bf16_rounding)
{
    require_gpu();
    ctc_batch c = ctc_mixed(29, 0, LU_I64, 640);
    check_ctc(&c, 0, LU_REDUCE_MEAN, true, LU_BF16, TOL_BF16, "mixed lengths");
    ctc_free(&c);
}

#else

Test(cuda_loss, skipped_without_cuda) { cr_skip_test("built without LUTHIER_CUDA"); }

#endif
