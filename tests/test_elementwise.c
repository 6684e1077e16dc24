/* test_elementwise.c - add/sub/mul/div with broadcasting and strides, affine/scale, and the
 * unary activations: forward against float64 loops, backward by finite differences. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"

/* ---- binary ops ------------------------------------------------------------------------ */

typedef enum bin { B_ADD, B_SUB, B_MUL, B_DIV } bin;

static lu_tensor *bin_apply(bin op, lu_tensor *a, lu_tensor *b)
{
    switch (op) {
    case B_ADD: return lu_add(a, b);
    case B_SUB: return lu_sub(a, b);
    case B_MUL: return lu_mul(a, b);
    case B_DIV: return lu_div(a, b);
    }
    return NULL;
}

static double bin_ref(bin op, double a, double b)
{
    switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    }
    return NAN;
}

/* Flat index into x (shape xs, nx dims, right-aligned) of element i of y (shape ys, ny dims). */
static int64_t bcast_index(int64_t i, const int64_t *ys, int ny, const int64_t *xs, int nx)
{
    int64_t off = 0, stride = 1;
    for (int k = ny - 1; k >= 0; k--) {
        int64_t c = i % ys[k];
        i /= ys[k];
        int xk = k - (ny - nx);
        if (xk < 0) continue;
        if (xs[xk] != 1) off += c * stride;
        stride *= xs[xk];
    }
    return off;
}

/* y = op(a, b) against a double loop over the broadcast shape (a, b may be views). */
static void check_binary(bin op, lu_tensor *a, lu_tensor *b, double tol, const char *what)
{
    lu_tensor *y = bin_apply(op, a, b);
    cr_assert(y, "%s: %s", what, lu_error_message());
    int64_t n = lu_tensor_numel(y);
    double *av = tu_to_doubles(a), *bv = tu_to_doubles(b), *ref = malloc((size_t)n * sizeof *ref);
    for (int64_t i = 0; i < n; i++)
        ref[i] = bin_ref(op, av[bcast_index(i, y->shape, y->ndim, a->shape, a->ndim)],
                         bv[bcast_index(i, y->shape, y->ndim, b->shape, b->ndim)]);
    tu_assert_close(y, ref, n, tol, tol, what);
    free(av);
    free(bv);
    free(ref);
    lu_tensor_release(y);
}

Test(binary, same_shape_matches_reference_on_odd_sizes)
{
    for (int op = B_ADD; op <= B_DIV; op++) {
        lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), -2, 2, 1), *b = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), 0.5, 2, 2);
        check_binary(op, a, b, 1e-6, "same shape f32");
        lu_tensor_release(a);
        lu_tensor_release(b);
    }
}

Test(binary, broadcasts_both_operands)
{
    /* [3,1,5] op [4,1] -> [3,4,5]: each operand is broadcast along a different dim. */
    for (int op = B_ADD; op <= B_DIV; op++) {
        lu_tensor *a = tu_rand(LU_F64, LU_SHAPE(3, 1, 5), -2, 2, 3), *b = tu_rand(LU_F64, LU_SHAPE(4, 1), 0.5, 2, 4);
        lu_tensor *y = bin_apply(op, a, b);
        cr_assert(y && y->ndim == 3 && y->shape[0] == 3 && y->shape[1] == 4 && y->shape[2] == 5);
        lu_tensor_release(y);
        check_binary(op, a, b, 1e-14, "[3,1,5] op [4,1]");
        check_binary(op, b, a, 1e-14, "[4,1] op [3,1,5]");
        lu_tensor_release(a);
        lu_tensor_release(b);
    }
}

Test(binary, scalar_like_operand_on_either_side)
{
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), -2, 2, 5), *s = tu_rand(LU_F32, LU_SHAPE(1), 0.5, 2, 6);
    for (int op = B_ADD; op <= B_DIV; op++) {
        check_binary(op, a, s, 1e-6, "x op [1]");
        check_binary(op, s, a, 1e-6, "[1] op x");
    }
    lu_tensor_release(a);
    lu_tensor_release(s);
}

Test(binary, bias_along_trailing_dims_on_either_side)
{
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), -2, 2, 7), *bias = tu_rand(LU_F32, LU_SHAPE(5, 7), 0.5, 2, 8);
    for (int op = B_ADD; op <= B_DIV; op++) {
        check_binary(op, a, bias, 1e-6, "x op bias");
        check_binary(op, bias, a, 1e-6, "bias op x");
    }
    lu_tensor_release(a);
    lu_tensor_release(bias);
}

Test(binary, reads_strided_views)
{
    lu_tensor *base = tu_rand(LU_F64, LU_SHAPE(7, 5), -2, 2, 9), *b = tu_rand(LU_F64, LU_SHAPE(5, 7), 0.5, 2, 10);
    lu_tensor *t = lu_transpose(base, 0, 1);
    lu_tensor *s = lu_slice(b, 1, 0, 7, 3); /* [5, 3], column stride 3 */
    lu_tensor *col = lu_slice(base, 0, 0, 3, 1);
    lu_tensor *colt = lu_transpose(col, 0, 1); /* [5, 3] transposed view */
    cr_assert(t && s && colt);
    for (int op = B_ADD; op <= B_DIV; op++) {
        check_binary(op, t, b, 1e-14, "transposed + contiguous");
        check_binary(op, s, colt, 1e-14, "sliced op transposed");
    }
    lu_tensor_release(t);
    lu_tensor_release(s);
    lu_tensor_release(col);
    lu_tensor_release(colt);
    lu_tensor_release(base);
    lu_tensor_release(b);
}

Test(binary, large_contiguous_add_uses_parallel_path)
{
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(301, 257), -1, 1, 11), *b = tu_rand(LU_F32, LU_SHAPE(301, 257), -1, 1, 12);
    lu_tensor *bias = tu_rand(LU_F32, LU_SHAPE(257), -1, 1, 13);
    check_binary(B_ADD, a, b, 1e-6, "large add");
    check_binary(B_MUL, a, bias, 1e-6, "large bias mul");
    lu_tensor_release(a);
    lu_tensor_release(b);
    lu_tensor_release(bias);
}

Test(binary, zero_dim_operands)
{
    lu_tensor *a = lu_tensor_full(LU_F64, 0, (int64_t[]){1}, LU_CPU, 3.0);
    lu_tensor *b = tu_rand(LU_F64, LU_SHAPE(2, 3), -1, 1, 14);
    lu_tensor *y = lu_mul(a, a);
    cr_assert(y && y->ndim == 0, "%s", lu_error_message());
    cr_assert_float_eq(lu_tensor_item(y), 9.0, 1e-15);
    lu_tensor_release(y);
    check_binary(B_SUB, a, b, 1e-15, "0-dim - [2,3]");
    lu_tensor_release(a);
    lu_tensor_release(b);
}

typedef struct bin_case { bin op; } bin_case;

static lu_tensor *bin_fn(lu_tensor **in, void *ctx) { return bin_apply(((bin_case *)ctx)->op, in[0], in[1]); }

static void gradcheck_binary(const int64_t *as, int an, const int64_t *bs, int bn, const char *what)
{
    for (int op = B_ADD; op <= B_DIV; op++) {
        lu_tensor *in[2] = {tu_rand(LU_F64, an, as, 0.5, 2, 15), tu_rand(LU_F64, bn, bs, 0.5, 2, 16)};
        bin_case c = {op};
        tu_gradcheck(bin_fn, in, 2, (bool[]){true, true}, &c, 1e-6, 1e-7, 1e-6, 200, what);
        /* Operands swapped: the broadcast one is now the first. */
        lu_tensor *sw[2] = {in[1], in[0]};
        tu_gradcheck(bin_fn, sw, 2, (bool[]){true, true}, &c, 1e-6, 1e-7, 1e-6, 200, what);
        lu_tensor_release(in[0]);
        lu_tensor_release(in[1]);
    }
}

Test(binary, backward_same_shape)
{
    gradcheck_binary((int64_t[]){3, 5, 7}, 3, (int64_t[]){3, 5, 7}, 3, "same shape grad");
}

Test(binary, backward_reduces_onto_both_broadcast_shapes)
{
    gradcheck_binary((int64_t[]){3, 1, 5}, 3, (int64_t[]){4, 1}, 2, "[3,1,5] op [4,1] grad");
}

Test(binary, backward_bias_and_scalar)
{
    gradcheck_binary((int64_t[]){4, 3, 5}, 3, (int64_t[]){3, 5}, 2, "bias grad");
    gradcheck_binary((int64_t[]){3, 5}, 2, (int64_t[]){1}, 1, "scalar grad");
    gradcheck_binary((int64_t[]){6, 1}, 2, (int64_t[]){6, 7}, 2, "column grad");
}

static lu_tensor *square_by_mul(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_mul(in[0], in[0]);
}

Test(binary, backward_with_the_same_tensor_twice)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 5), -2, 2, 17);
    tu_gradcheck(square_by_mul, &x, 1, (bool[]){true}, NULL, 1e-6, 1e-8, 1e-6, 100, "x * x");
    lu_tensor_release(x);
}

static lu_tensor *add_transposed(lu_tensor **in, void *ctx)
{
    (void)ctx;
    lu_tensor *t = lu_transpose(in[0], 0, 1);
    lu_tensor *y = lu_mul(t, in[1]);
    lu_tensor_release(t);
    return y;
}

Test(binary, backward_through_a_strided_operand)
{
    lu_tensor *in[2] = {tu_rand(LU_F64, LU_SHAPE(5, 3), -2, 2, 18), tu_rand(LU_F64, LU_SHAPE(4, 3, 5), -2, 2, 19)};
    tu_gradcheck(add_transposed, in, 2, (bool[]){true, true}, NULL, 1e-6, 1e-8, 1e-6, 200, "x^T * y");
    lu_tensor_release(in[0]);
    lu_tensor_release(in[1]);
}

Test(binary, rejects_different_dtypes_naming_both)
{
    lu_tensor *a = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3), LU_CPU), *b = lu_tensor_zeros(LU_F64, LU_SHAPE(2, 3), LU_CPU);
    cr_assert_null(lu_add(a, b));
    tu_assert_error_contains("add: dtypes differ (a [2, 3] f32, b [2, 3] f64)");
    cr_assert_eq(lu_error_code(), LU_ERR_DTYPE);
    lu_tensor_release(a);
    lu_tensor_release(b);
}

Test(binary, rejects_shapes_that_do_not_broadcast)
{
    lu_tensor *a = lu_tensor_zeros(LU_F32, LU_SHAPE(3, 4), LU_CPU), *b = lu_tensor_zeros(LU_F32, LU_SHAPE(5, 1, 3), LU_CPU);
    cr_assert_null(lu_div(a, b));
    tu_assert_error_contains("div: shapes do not broadcast (a [3, 4] f32, b [5, 1, 3] f32)");
    lu_tensor_release(a);
    lu_tensor_release(b);
}

Test(binary, rejects_integer_tensors)
{
    lu_tensor *a = lu_tensor_zeros(LU_I32, LU_SHAPE(2), LU_CPU);
    cr_assert_null(lu_mul(a, a));
    tu_assert_error_contains("mul: needs a float tensor, got [2] i32");
    lu_tensor_release(a);
}

static lu_tensor *linear_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_linear(in[0], in[1], in[2]);
}

Test(binary, linear_adds_its_bias_and_backpropagates_to_it)
{
    lu_tensor *in[3] = {tu_rand(LU_F64, LU_SHAPE(2, 3, 4), -1, 1, 20), tu_rand(LU_F64, LU_SHAPE(5, 4), -1, 1, 21),
                        tu_rand(LU_F64, LU_SHAPE(5), -1, 1, 22)};
    lu_tensor *y = lu_linear(in[0], in[1], in[2]);
    cr_assert(y && y->ndim == 3 && y->shape[2] == 5, "%s", lu_error_message());
    double *x = tu_to_doubles(in[0]), *w = tu_to_doubles(in[1]), *b = tu_to_doubles(in[2]), ref[30];
    for (int r = 0; r < 6; r++)
        for (int o = 0; o < 5; o++) {
            ref[r * 5 + o] = b[o];
            for (int i = 0; i < 4; i++) ref[r * 5 + o] += x[r * 4 + i] * w[o * 4 + i];
        }
    tu_assert_close(y, ref, 30, 1e-12, 1e-12, "linear");
    lu_tensor_release(y);
    tu_gradcheck(linear_fn, in, 3, (bool[]){true, true, true}, NULL, 1e-6, 1e-8, 1e-6, 100, "linear grad");
    free(x);
    free(w);
    free(b);
    for (int i = 0; i < 3; i++) lu_tensor_release(in[i]);
}

/* ---- affine and scale -------------------------------------------------------------------- */

Test(affine, matches_alpha_x_plus_beta)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(3, 5, 7), -2, 2, 23);
    lu_tensor *y = lu_affine(x, -1.5, 0.25), *z = lu_scale(x, 3.0);
    double *xv = tu_to_doubles(x), ref[105], ref2[105];
    for (int i = 0; i < 105; i++) {
        ref[i] = -1.5 * xv[i] + 0.25;
        ref2[i] = 3.0 * xv[i];
    }
    tu_assert_close(y, ref, 105, 1e-6, 1e-6, "affine");
    tu_assert_close(z, ref2, 105, 1e-6, 1e-6, "scale");
    free(xv);
    lu_tensor_release(y);
    lu_tensor_release(z);
    lu_tensor_release(x);
}

static lu_tensor *affine_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    lu_tensor *t = lu_transpose(in[0], 0, 2);
    lu_tensor *y = lu_affine(t, 0.7, -2.0);
    lu_tensor_release(t);
    return y;
}

Test(affine, backward_through_a_transposed_input)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 5, 7), -2, 2, 24);
    tu_gradcheck(affine_fn, &x, 1, (bool[]){true}, NULL, 1e-6, 1e-8, 1e-6, 200, "affine grad");
    lu_tensor_release(x);
}

/* ---- unary activations ------------------------------------------------------------------- */

typedef enum un { U_EXP, U_LOG, U_TANH, U_SIGMOID, U_RELU, U_SILU, U_GELU, U_GELU_TANH, U_SWOOSH_L, U_SWOOSH_R,
                  U_SQUARE, U_SQRT, U_COUNT } un;

static const char *un_name[U_COUNT] = {"exp",  "log",       "tanh",     "sigmoid",  "relu",   "silu",
                                       "gelu", "gelu_tanh", "swoosh_l", "swoosh_r", "square", "sqrt"};

static lu_tensor *un_apply(un op, lu_tensor *x)
{
    switch (op) {
    case U_EXP: return lu_exp(x);
    case U_LOG: return lu_log(x);
    case U_TANH: return lu_tanh(x);
    case U_SIGMOID: return lu_sigmoid(x);
    case U_RELU: return lu_relu(x);
    case U_SILU: return lu_silu(x);
    case U_GELU: return lu_gelu(x, false);
    case U_GELU_TANH: return lu_gelu(x, true);
    case U_SWOOSH_L: return lu_swoosh_l(x);
    case U_SWOOSH_R: return lu_swoosh_r(x);
    case U_SQUARE: return lu_square(x);
    case U_SQRT: return lu_sqrt(x);
    case U_COUNT: break;
    }
    return NULL;
}

/* Textbook float64 forms (torch's definitions; swoosh from reference/asr.md 9.1). */
static double un_ref(un op, double x)
{
    switch (op) {
    case U_EXP: return exp(x);
    case U_LOG: return log(x);
    case U_TANH: return tanh(x);
    case U_SIGMOID: return 1 / (1 + exp(-x));
    case U_RELU: return x > 0 ? x : 0;
    case U_SILU: return x / (1 + exp(-x));
    case U_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case U_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case U_SWOOSH_L: return log(1 + exp(x - 4)) - 0.08 * x - 0.035;
    case U_SWOOSH_R: return log(1 + exp(x - 1)) - 0.08 * x - 0.313261687;
    case U_SQUARE: return x * x;
    case U_SQRT: return sqrt(x);
    case U_COUNT: break;
    }
    return NAN;
}

/* log and sqrt need positive inputs; the others see both signs. */
static double un_lo(un op) { return op == U_LOG || op == U_SQRT ? 0.2 : -5; }

static void check_unary_forward(lu_dtype dt, double tol)
{
    for (int op = 0; op < U_COUNT; op++) {
        lu_tensor *x = tu_rand(dt, LU_SHAPE(3, 5, 7), un_lo(op), 5, 30 + (uint64_t)op);
        lu_tensor *y = un_apply(op, x);
        double *xv = tu_to_doubles(x), ref[105];
        for (int i = 0; i < 105; i++) ref[i] = un_ref(op, xv[i]);
        tu_assert_close(y, ref, 105, tol, tol, un_name[op]);
        free(xv);
        lu_tensor_release(y);
        lu_tensor_release(x);
    }
}

Test(unary, forward_matches_reference_f64) { check_unary_forward(LU_F64, 1e-13); }
Test(unary, forward_matches_reference_f32) { check_unary_forward(LU_F32, 2e-6); }

static lu_tensor *un_fn(lu_tensor **in, void *ctx) { return un_apply(*(un *)ctx, in[0]); }

Test(unary, backward_matches_finite_differences)
{
    for (un op = 0; op < U_COUNT; op++) {
        lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(3, 5, 7), un_lo(op), 5, 50 + (uint64_t)op);
        tu_gradcheck(un_fn, &x, 1, (bool[]){true}, &op, 1e-6, 1e-7, 1e-6, 105, un_name[op]);
        lu_tensor_release(x);
    }
}

Test(unary, known_values)
{
    double xs[3] = {-1.0, 0.0, 1.0};
    lu_tensor *x = lu_tensor_from_host(LU_F64, LU_SHAPE(3), LU_CPU, xs);
    lu_tensor *g = lu_gelu(x, false), *gt = lu_gelu(x, true), *sr = lu_swoosh_r(x);
    /* torch.nn.functional.gelu(torch.tensor([-1., 0., 1.], dtype=float64)) and approximate='tanh'. */
    tu_assert_close(g, (double[]){-0.15865525393145707, 0.0, 0.8413447460685429}, 3, 1e-15, 1e-14, "gelu");
    tu_assert_close(gt, (double[]){-0.15880800939172324, 0.0, 0.8411919906082768}, 3, 1e-15, 1e-14, "gelu tanh");
    /* icefall picks SwooshR's offset so that SwooshR(0) = 0. */
    cr_assert_float_eq(((double *)lu_tensor_data(sr))[1], 0.0, 1e-9);
    lu_tensor_release(g);
    lu_tensor_release(gt);
    lu_tensor_release(sr);
    lu_tensor_release(x);
}

Test(unary, stable_at_extreme_inputs)
{
    float xs[4] = {-1000.0f, -100.0f, 100.0f, 1000.0f};
    lu_tensor *x = lu_tensor_from_host(LU_F32, LU_SHAPE(4), LU_CPU, xs);
    lu_tensor *s = lu_sigmoid(x), *si = lu_silu(x), *sl = lu_swoosh_l(x), *sr = lu_swoosh_r(x);
    tu_assert_close(s, (double[]){0, 0, 1, 1}, 4, 1e-30, 0, "sigmoid");
    tu_assert_close(si, (double[]){0, 0, 100, 1000}, 4, 1e-30, 1e-7, "silu");
    /* softplus(x - c) is exactly x - c for large x and 0 for very negative x. */
    tu_assert_close(sl, (double[]){80 - 0.035, 8 - 0.035, 96 - 8 - 0.035, 996 - 80 - 0.035}, 4, 1e-4, 1e-6, "swoosh_l");
    tu_assert_close(sr, (double[]){80 - 0.313261687, 8 - 0.313261687, 99 - 8 - 0.313261687, 999 - 80 - 0.313261687}, 4,
                    1e-4, 1e-6, "swoosh_r");
    lu_tensor_release(s);
    lu_tensor_release(si);
    lu_tensor_release(sl);
    lu_tensor_release(sr);
    lu_tensor_release(x);
}

Test(unary, large_input_uses_parallel_path)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(257, 301), -3, 3, 60);
    lu_tensor *y = lu_silu(x);
    int64_t n = 257 * 301;
    double *xv = tu_to_doubles(x), *ref = malloc((size_t)n * sizeof *ref);
    for (int64_t i = 0; i < n; i++) ref[i] = un_ref(U_SILU, xv[i]);
    tu_assert_close(y, ref, n, 2e-6, 2e-6, "large silu");
    free(xv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(x);
}

Test(unary, rejects_integer_input)
{
    lu_tensor *x = lu_tensor_zeros(LU_I64, LU_SHAPE(4), LU_CPU);
    cr_assert_null(lu_exp(x));
    tu_assert_error_contains("exp: needs a float tensor, got [4] i64");
    cr_assert_null(lu_gelu(x, true));
    tu_assert_error_contains("gelu: needs a float tensor");
    lu_tensor_release(x);
}

/* ---- swiglu ---- */

static lu_tensor *swiglu_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_swiglu(in[0], in[1]);
}

Test(swiglu, equals_silu_of_gate_times_up)
{
    lu_tensor *g = tu_rand(LU_F32, LU_SHAPE(3, 37, 11), -8, 8, 90), *u = tu_rand(LU_F32, LU_SHAPE(3, 37, 11), -2, 2, 91);
    lu_tensor *want = lu_mul(lu_silu(g), u), *got = lu_swiglu(g, u);
    cr_assert(got, "%s", lu_error_message());
    double *w = tu_to_doubles(want);
    tu_assert_close(got, w, lu_tensor_numel(want), 1e-6, 1e-6, "swiglu vs silu * mul");
    free(w);
}

Test(swiglu, backward_matches_finite_differences)
{
    lu_tensor *in[2] = {tu_rand(LU_F64, LU_SHAPE(4, 9), -6, 6, 92), tu_rand(LU_F64, LU_SHAPE(4, 9), -2, 2, 93)};
    tu_gradcheck(swiglu_fn, in, 2, (bool[]){true, true}, NULL, 1e-6, 1e-7, 1e-6, 200, "swiglu");
    /* Only one operand needing a gradient: the other output stays unallocated. */
    tu_gradcheck(swiglu_fn, in, 2, (bool[]){false, true}, NULL, 1e-6, 1e-7, 1e-6, 200, "swiglu, up only");
}

Test(swiglu, reads_a_strided_gate)
{
    lu_tensor *base = tu_rand(LU_F32, LU_SHAPE(5, 6), -3, 3, 94), *g = lu_transpose(base, 0, 1);
    lu_tensor *u = tu_rand(LU_F32, LU_SHAPE(6, 5), -1, 1, 95);
    lu_tensor *want = lu_mul(lu_silu(g), u), *got = lu_swiglu(g, u);
    double *w = tu_to_doubles(want);
    tu_assert_close(got, w, 30, 1e-6, 1e-6, "transposed gate");
    free(w);
}

Test(swiglu, rejects_different_shapes_and_dtypes)
{
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(2, 3), -1, 1, 96), *b = tu_rand(LU_F32, LU_SHAPE(3, 2), -1, 1, 97);
    cr_assert_null(lu_swiglu(a, b));
    tu_assert_error_contains("swiglu: shapes differ");
    lu_tensor *c = tu_rand(LU_F64, LU_SHAPE(2, 3), -1, 1, 98);
    cr_assert_null(lu_swiglu(a, c));
    tu_assert_error_contains("swiglu: dtypes differ");
}
