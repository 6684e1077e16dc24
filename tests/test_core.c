/* test_core.c - tensors, dtypes, views, the parameter store, the arena, the RNG, matmul, linear
 * and the autograd tape. */
#include <math.h>
#include <string.h>

#include "core/backend.h"
#include "core/params.h"
#include "testutil.h"

Test(dtype, bf16_rounds_to_nearest_even)
{
    /* 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0). */
    cr_assert_eq(lu_f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
    /* 1 + 3*2^-8 is halfway too: rounds up to the even 1 + 2^-6. */
    cr_assert_eq(lu_f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    cr_assert_eq(lu_f32_to_bf16(-2.0f), 0xc000);
    cr_assert(isnan(lu_bf16_to_f32(lu_f32_to_bf16(NAN))));
    cr_assert_eq(lu_bf16_to_f32(0x3f80), 1.0f);
}

Test(dtype, f16_round_trip_and_edges)
{
    cr_assert_eq(lu_f32_to_f16(1.0f), 0x3c00);
    cr_assert_eq(lu_f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(lu_f32_to_f16(65520.0f), 0x7c00); /* rounds to infinity */
    cr_assert_eq(lu_f32_to_f16(5.960464477539063e-08f), 0x0001); /* smallest subnormal */
    cr_assert_eq(lu_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(lu_f16_to_f32(0x0001), 5.960464477539063e-08f);
    cr_assert_eq(lu_f16_to_f32(0xc000), -2.0f);
    /* Every finite f16 survives f16 -> f32 -> f16. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        cr_assert_eq(lu_f32_to_f16(lu_f16_to_f32((uint16_t)h)), h, "f16 0x%04x", h);
    }
}

Test(dtype, parse_names_and_aliases)
{
    lu_dtype d;
    cr_assert(lu_dtype_parse("bfloat16", &d) && d == LU_BF16);
    cr_assert(lu_dtype_parse("f32", &d) && d == LU_F32);
    cr_assert(!lu_dtype_parse("float8", &d));
}

Test(tensor, create_fill_and_read_back)
{
    lu_tensor *t = lu_tensor_full(LU_F32, LU_SHAPE(3, 5), LU_CPU, 2.5);
    cr_assert(t);
    cr_assert_eq(lu_tensor_numel(t), 15);
    cr_assert(lu_tensor_is_contiguous(t));
    double ref[15];
    for (int i = 0; i < 15; i++) ref[i] = 2.5;
    tu_assert_close(t, ref, 15, 0, 0, "full");
    lu_tensor_release(t);
}

Test(tensor, convert_between_dtypes)
{
    float src[4] = {1.5f, -2.25f, 3.0f, 1e-3f};
    lu_tensor *t = lu_tensor_from_host(LU_F32, LU_SHAPE(4), LU_CPU, src);
    lu_tensor *h = lu_tensor_convert(t, LU_BF16, LU_CPU);
    lu_tensor *back = lu_tensor_convert(h, LU_F32, LU_CPU);
    double ref[4] = {1.5, -2.25, 3.0, lu_bf16_to_f32(lu_f32_to_bf16(1e-3f))};
    tu_assert_close(back, ref, 4, 0, 0, "bf16 round trip");
    lu_tensor *i = lu_tensor_convert(t, LU_I32, LU_CPU);
    cr_assert_eq(((int32_t *)lu_tensor_data(i))[1], -2);
    lu_tensor_release(i);
    lu_tensor_release(back);
    lu_tensor_release(h);
    lu_tensor_release(t);
}

Test(tensor, rejects_bad_shapes)
{
    cr_assert_null(lu_tensor_empty(LU_F32, 9, (int64_t[9]){1, 1, 1, 1, 1, 1, 1, 1, 1}, LU_CPU));
    tu_assert_error_contains("at most 8");
    cr_assert_null(lu_tensor_empty(LU_F32, LU_SHAPE(2, -1), LU_CPU));
    tu_assert_error_contains("negative size");
    cr_assert_null(lu_tensor_empty(LU_F32, LU_SHAPE(INT64_MAX / 2, 4), LU_CPU));
    tu_assert_error_contains("too large");
}

Test(view, transpose_shares_storage_and_copies_contiguous)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(3, 4), -1, 1, 1);
    lu_tensor *t = lu_transpose(x, 0, 1);
    cr_assert(t && t->storage == x->storage);
    cr_assert(!lu_tensor_is_contiguous(t));
    lu_tensor *c = lu_contiguous(t);
    double *xv = tu_to_doubles(x), ref[12];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) ref[i * 3 + j] = xv[j * 4 + i];
    tu_assert_close(c, ref, 12, 0, 0, "transpose");
    free(xv);
    lu_tensor_release(c);
    lu_tensor_release(t);
    lu_tensor_release(x);
}

/* Every permutation of a 4-D tensor, plain and with a step-2 slice, in widths 1, 2, 4 and 8
 * bytes: lu_contiguous and lu_tensor_copy into a permuted destination against an index loop.
 * Dims of 33 and 70 cross the 32-element copy tiles; 70*33*5*6 elements take the parallel path. */
Test(view, contiguous_and_copy_match_an_index_loop_for_every_permutation)
{
    static const lu_dtype dts[] = {LU_U8, LU_BF16, LU_F32, LU_F64};
    int64_t shape[4] = {5, 70, 6, 33};
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++) {
        lu_tensor *x64 = tu_rand(LU_F64, 4, shape, 0, 100, 3 + d), *x = lu_cast(x64, dts[d]);
        cr_assert(x);
        double *xv = tu_to_doubles(x);
        for (int p = 0; p < 24; p++) {
            int perm[4], avail[4] = {0, 1, 2, 3}, code = p;
            for (int i = 0; i < 4; i++) {
                int f = 4 - i, k = code % f;
                code /= f;
                perm[i] = avail[k];
                for (int j = k; j < f - 1; j++) avail[j] = avail[j + 1];
            }
            for (int step = 1; step <= 2; step++) {
                lu_tensor *s = lu_slice(x, 1, 1, shape[1], step), *v = lu_permute(s, perm);
                lu_tensor *c = lu_contiguous(v);
                lu_tensor *dst = lu_tensor_zeros(dts[d], 4, s->shape, LU_CPU), *dv = lu_permute(dst, perm);
                cr_assert(c && dv && lu_tensor_copy(dv, v) == LU_OK);
                int64_t n = lu_tensor_numel(v), idx[4] = {0};
                double *ref = malloc((size_t)n * sizeof *ref);
                for (int64_t e = 0; e < n; e++) {
                    int64_t src[4];
                    for (int i = 0; i < 4; i++) src[perm[i]] = idx[i];
                    ref[e] = xv[((src[0] * shape[1] + 1 + src[1] * step) * shape[2] + src[2]) * shape[3] + src[3]];
                    for (int i = 3; i >= 0 && ++idx[i] == v->shape[i]; i--) idx[i] = 0;
                }
                char what[64];
                snprintf(what, sizeof what, "%s perm %d%d%d%d step %d", lu_dtype_name(dts[d]), perm[0], perm[1],
                         perm[2], perm[3], step);
                tu_assert_close(c, ref, n, 0, 0, what);
                /* dst holds s's layout: read it back through the permutation. */
                lu_tensor *dc = lu_contiguous(dv);
                tu_assert_close(dc, ref, n, 0, 0, what);
                free(ref);
                lu_tensor_release(dc);
                lu_tensor_release(dv);
                lu_tensor_release(dst);
                lu_tensor_release(c);
                lu_tensor_release(v);
                lu_tensor_release(s);
            }
        }
        free(xv);
        lu_tensor_release(x);
        lu_tensor_release(x64);
    }
}

Test(view, slice_with_step_and_negative_start)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(2, 7), -1, 1, 2);
    lu_tensor *s = lu_slice(x, 1, -6, 7, 2); /* columns 1, 3, 5 */
    cr_assert(s);
    cr_assert_eq(s->shape[1], 3);
    double *xv = tu_to_doubles(x), ref[6];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) ref[i * 3 + j] = xv[i * 7 + 1 + 2 * j];
    tu_assert_close(s, ref, 6, 0, 0, "slice");
    free(xv);
    lu_tensor_release(s);
    cr_assert_null(lu_slice(x, 2, 0, 1, 1));
    tu_assert_error_contains("slice: dim 2 out of range");
    lu_tensor_release(x);
}

Test(view, reshape_infers_and_rejects)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 4), -1, 1, 3);
    lu_tensor *r = lu_reshape(x, LU_SHAPE(-1, 4));
    cr_assert(r && r->shape[0] == 6 && r->shape[1] == 4);
    cr_assert_null(lu_reshape(x, LU_SHAPE(5, 5)));
    tu_assert_error_contains("reshape: cannot view a tensor of shape [2, 3, 4]");
    lu_tensor_release(r);
    lu_tensor_release(x);
}

static lu_tensor *view_chain(lu_tensor **in, void *ctx)
{
    (void)ctx;
    /* permute -> slice -> reshape -> expand -> contiguous: gradients must route back. */
    lu_tensor *p = lu_permute(in[0], (int[]){2, 0, 1});
    lu_tensor *s = lu_slice(p, 0, 1, 4, 2);
    lu_tensor *r = lu_reshape(s, LU_SHAPE(2, 1, 6));
    lu_tensor *e = lu_expand(r, LU_SHAPE(2, 3, 6));
    lu_tensor *c = lu_contiguous(e);
    lu_tensor_release(p);
    lu_tensor_release(s);
    lu_tensor_release(r);
    lu_tensor_release(e);
    return c;
}

Test(view, gradients_route_through_views)
{
    lu_tensor *x = tu_rand(LU_F64, LU_SHAPE(2, 3, 4), -1, 1, 4);
    tu_gradcheck(view_chain, &x, 1, (bool[]){true}, NULL, 1e-6, 1e-8, 1e-6, 1000, "view chain");
    lu_tensor_release(x);
}

/* ---- matmul ---- */

static void ref_matmul(const double *a, const double *b, double *c, int64_t batch, int64_t m, int64_t n, int64_t k,
                       bool ta, bool tb, bool shared_b)
{
    for (int64_t z = 0; z < batch; z++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t l = 0; l < k; l++) {
                    double av = ta ? a[z * m * k + l * m + i] : a[z * m * k + i * k + l];
                    const double *bz = b + (shared_b ? 0 : z * k * n);
                    double bv = tb ? bz[j * k + l] : bz[l * n + j];
                    s += av * bv;
                }
                c[z * m * n + i * n + j] = s;
            }
}

typedef struct mm_case { int64_t batch, m, n, k; bool ta, tb, shared_b; } mm_case;

static lu_tensor *mm_fn(lu_tensor **in, void *ctx)
{
    const mm_case *c = ctx;
    return lu_matmul(in[0], in[1], c->ta, c->tb);
}

static void check_matmul(mm_case c, lu_dtype dt)
{
    lu_tensor *a = c.ta ? tu_rand(dt, LU_SHAPE(c.batch, c.k, c.m), -1, 1, 5) : tu_rand(dt, LU_SHAPE(c.batch, c.m, c.k), -1, 1, 5);
    lu_tensor *b = c.shared_b ? (c.tb ? tu_rand(dt, LU_SHAPE(c.n, c.k), -1, 1, 6) : tu_rand(dt, LU_SHAPE(c.k, c.n), -1, 1, 6))
                              : (c.tb ? tu_rand(dt, LU_SHAPE(c.batch, c.n, c.k), -1, 1, 6)
                                      : tu_rand(dt, LU_SHAPE(c.batch, c.k, c.n), -1, 1, 6));
    lu_tensor *y = lu_matmul(a, b, c.ta, c.tb);
    cr_assert(y, "%s", lu_error_message());
    double *av = tu_to_doubles(a), *bv = tu_to_doubles(b), *ref = malloc(sizeof(double) * (size_t)(c.batch * c.m * c.n));
    ref_matmul(av, bv, ref, c.batch, c.m, c.n, c.k, c.ta, c.tb, c.shared_b);
    tu_assert_close(y, ref, c.batch * c.m * c.n, dt == LU_F32 ? 1e-5 : 1e-12, dt == LU_F32 ? 1e-5 : 1e-12, "matmul");
    free(av);
    free(bv);
    free(ref);
    lu_tensor_release(y);
    if (dt == LU_F64) {
        lu_tensor *in[2] = {a, b};
        tu_gradcheck(mm_fn, in, 2, (bool[]){true, true}, &c, 1e-6, 1e-7, 1e-6, 200, "matmul grad");
    }
    lu_tensor_release(a);
    lu_tensor_release(b);
}

Test(matmul, forward_matches_reference_all_transposes)
{
    for (int t = 0; t < 4; t++) {
        check_matmul((mm_case){3, 5, 7, 9, t & 1, t >> 1, false}, LU_F32);
        check_matmul((mm_case){2, 13, 3, 6, t & 1, t >> 1, true}, LU_F32);
    }
}

Test(matmul, backward_matches_finite_differences)
{
    for (int t = 0; t < 4; t++) {
        check_matmul((mm_case){2, 3, 5, 4, t & 1, t >> 1, false}, LU_F64);
        check_matmul((mm_case){3, 4, 2, 5, t & 1, t >> 1, true}, LU_F64);
    }
}

Test(matmul, rejects_mismatched_inner_dims)
{
    lu_tensor *a = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3), LU_CPU), *b = lu_tensor_zeros(LU_F32, LU_SHAPE(4, 5), LU_CPU);
    cr_assert_null(lu_matmul(a, b, false, false));
    tu_assert_error_contains("matmul: inner dimensions differ (a [2, 3] f32, b [4, 5] f32)");
    lu_tensor_release(a);
    lu_tensor_release(b);
}

/* ---- linear (the LINEAR op: lu_linear with a bias) ---- */

static lu_tensor *linear_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    return lu_linear(in[0], in[1], in[2]);
}

static lu_tensor *matmul_add_fn(lu_tensor **in, void *ctx)
{
    (void)ctx;
    lu_tensor *y = lu_matmul(in[0], in[1], false, true), *z = lu_add(y, in[2]);
    lu_tensor_release(y);
    return z;
}

/* y and the gradients of x, w and bias for one output gradient, by f. */
static void linear_outputs(tu_fn f, lu_tensor **in, lu_tensor **out)
{
    for (int i = 0; i < 3; i++) {
        lu_tensor_zero_grad(in[i]);
        lu_tensor_set_requires_grad(in[i], true);
    }
    lu_tensor *y = f(in, NULL);
    cr_assert(y, "%s", lu_error_message());
    lu_tensor *dy = tu_rand(y->dtype, y->ndim, y->shape, -1, 1, 17);
    cr_assert_eq(lu_backward_from(y, dy), LU_OK, "%s", lu_error_message());
    out[0] = y;
    for (int i = 0; i < 3; i++) {
        out[1 + i] = lu_tensor_retain(in[i]->grad);
        lu_tensor_zero_grad(in[i]);
        lu_tensor_set_requires_grad(in[i], false);
    }
    lu_tensor_release(dy);
}

/* The CPU kernels make the calls MATMUL and ADD made (the same GEMMs, the bias gradient summed in
 * double in the same order), so the fused op changes no result: y, dx, dw and dbias are equal. */
Test(linear, equals_matmul_then_add_forward_and_backward)
{
    const lu_dtype dts[2] = {LU_F32, LU_F64};
    const int64_t shapes[3][3] = {{2, 7, 13}, {1, 1, 33}, {3, 40, 9}}; /* x [B, T, K]; N below */
    const int64_t outs[3] = {5, 17, 70};
    for (int d = 0; d < 2; d++)
        for (int c = 0; c < 3; c++) {
            lu_tensor *in[3] = {tu_rand(dts[d], 3, shapes[c], -1, 1, 30 + (uint64_t)c),
                                tu_rand(dts[d], LU_SHAPE(outs[c], shapes[c][2]), -1, 1, 40 + (uint64_t)c),
                                tu_rand(dts[d], LU_SHAPE(outs[c]), -1, 1, 50 + (uint64_t)c)};
            lu_tensor *got[4], *want[4];
            linear_outputs(linear_fn, in, got);
            linear_outputs(matmul_add_fn, in, want);
            const char *names[4] = {"y", "dx", "dw", "dbias"};
            char what[64];
            for (int i = 0; i < 4; i++) {
                snprintf(what, sizeof what, "%s %s case %d", lu_dtype_name(dts[d]), names[i], c);
                tu_assert_tensors_close(got[i], want[i], 0, 0, what);
                lu_tensor_release(got[i]);
                lu_tensor_release(want[i]);
            }
            for (int i = 0; i < 3; i++) lu_tensor_release(in[i]);
        }
}

Test(linear, backward_matches_finite_differences)
{
    lu_tensor *in[3] = {tu_rand(LU_F64, LU_SHAPE(2, 3, 6), -1, 1, 60), tu_rand(LU_F64, LU_SHAPE(5, 6), -1, 1, 61),
                        tu_rand(LU_F64, LU_SHAPE(5), -1, 1, 62)};
    tu_gradcheck(linear_fn, in, 3, (bool[]){true, true, true}, NULL, 1e-6, 1e-8, 1e-6, 200, "linear grad");
    for (int i = 0; i < 3; i++) lu_tensor_release(in[i]);
}

/* The op as a kernel call: no output gradient reads as zero; gradients not asked for are skipped. */
Test(linear, backward_kernel_zeroes_without_dy_and_skips_null_outputs)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(4, 3), -1, 1, 63), *w = tu_rand(LU_F32, LU_SHAPE(2, 3), -1, 1, 64);
    lu_tensor *b = tu_rand(LU_F32, LU_SHAPE(2), -1, 1, 65), *y = lu_tensor_zeros(LU_F32, LU_SHAPE(4, 2), LU_CPU);
    lu_tensor *dx = lu_tensor_full(LU_F32, LU_SHAPE(4, 3), LU_CPU, 7), *db = lu_tensor_full(LU_F32, LU_SHAPE(2), LU_CPU, 7);
    lu_backend *cpu = lu_backend_get(LU_CPU);
    lu_op_call call = {.op = LU_OP_LINEAR, .in = {NULL, x, w, b, y}, .n_in = 5, .out = {dx, NULL, db}, .n_out = 3};
    cr_assert_eq(cpu->backward[LU_OP_LINEAR](&call), LU_OK, "%s", lu_error_message());
    double zeros[12] = {0};
    tu_assert_close(dx, zeros, 12, 0, 0, "dx without dy");
    tu_assert_close(db, zeros, 2, 0, 0, "dbias without dy");
    lu_tensor *all[6] = {x, w, b, y, dx, db};
    for (int i = 0; i < 6; i++) lu_tensor_release(all[i]);
}

Test(linear, rejects_bad_shapes_and_dtypes)
{
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3, 4), LU_CPU), *w = lu_tensor_zeros(LU_F32, LU_SHAPE(5, 4), LU_CPU);
    lu_tensor *w3 = lu_tensor_zeros(LU_F32, LU_SHAPE(5, 3), LU_CPU), *b = lu_tensor_zeros(LU_F32, LU_SHAPE(5), LU_CPU);
    lu_tensor *b6 = lu_tensor_zeros(LU_F32, LU_SHAPE(6), LU_CPU), *b64 = lu_tensor_zeros(LU_F64, LU_SHAPE(5), LU_CPU);
    lu_tensor *x1 = lu_tensor_zeros(LU_F32, LU_SHAPE(4), LU_CPU);
    cr_assert_null(lu_linear(x, w3, b));
    tu_assert_error_contains("linear: x's last dim differs from w's in (x [2, 3, 4] f32, w [5, 3] f32, bias [5] f32)");
    cr_assert_null(lu_linear(x, w, b6));
    tu_assert_error_contains("linear: bias must be [out] (x [2, 3, 4] f32, w [5, 4] f32, bias [6] f32)");
    cr_assert_null(lu_linear(x, w, b64));
    tu_assert_error_contains("linear: x, w and bias need one float dtype");
    cr_assert_null(lu_linear(x1, w, b));
    tu_assert_error_contains("linear: x needs at least 2 dims");
    lu_tensor *all[7] = {x, w, w3, b, b6, b64, x1};
    for (int i = 0; i < 7; i++) lu_tensor_release(all[i]);
}

/* ---- autograd, params, arena, rng ---- */

Test(autograd, gradients_accumulate_across_backward_calls)
{
    lu_tensor *a = tu_rand(LU_F64, LU_SHAPE(2, 3), -1, 1, 8), *b = tu_rand(LU_F64, LU_SHAPE(3, 2), -1, 1, 9);
    lu_tensor_set_requires_grad(a, true);
    lu_tensor *ones = lu_tensor_full(LU_F64, LU_SHAPE(2, 2), LU_CPU, 1.0);
    for (int rep = 0; rep < 2; rep++) {
        lu_tensor *y = lu_matmul(a, b, false, false);
        cr_assert_eq(lu_backward_from(y, ones), LU_OK, "%s", lu_error_message());
        lu_tensor_release(y);
    }
    /* d sum(a b) / d a[i][l] = sum_j b[l][j], twice. */
    double *bv = tu_to_doubles(b), ref[6];
    for (int i = 0; i < 2; i++)
        for (int l = 0; l < 3; l++) ref[i * 3 + l] = 2 * (bv[l * 2] + bv[l * 2 + 1]);
    tu_assert_close(a->grad, ref, 6, 1e-12, 1e-12, "accumulated grad");
    cr_assert_null(b->grad, "b does not require a gradient");
    cr_assert_eq(lu_tape_size(), 0);
    free(bv);
    lu_tensor_release(ones);
    lu_tensor_release(a);
    lu_tensor_release(b);
}

/* lu_cast's backward adds a bf16 gradient straight into an existing f32 gradient (a parameter's,
 * under bf16 compute): the same bits as casting it to f32 first and adding. */
Test(autograd, cast_backward_adds_bf16_gradients_into_an_existing_f32_gradient)
{
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(5, 67), -1, 1, 30), *dy32 = tu_rand(LU_F32, LU_SHAPE(5, 67), -3, 3, 31);
    lu_tensor *dy = lu_cast(dy32, LU_BF16), *start = tu_rand(LU_F32, LU_SHAPE(5, 67), -1, 1, 32);
    lu_tensor_set_requires_grad(w, true);
    w->grad = tu_rand(LU_F32, LU_SHAPE(5, 67), -1, 1, 32); /* start's values, its own storage */
    for (int rep = 0; rep < 2; rep++) {
        lu_tensor *y = lu_cast(w, LU_BF16);
        cr_assert_eq(lu_backward_from(y, dy), LU_OK, "%s", lu_error_message());
        lu_tensor_release(y);
    }
    const float *g = lu_tensor_data(w->grad), *s0 = lu_tensor_data(start);
    const uint16_t *d = lu_tensor_data(dy);
    for (int i = 0; i < 5 * 67; i++) {
        float want = s0[i] + lu_bf16_to_f32(d[i]);
        want += lu_bf16_to_f32(d[i]);
        cr_assert_eq(g[i], want, "element %d: %g, expected %g", i, (double)g[i], (double)want);
    }
    cr_assert_eq(lu_tape_size(), 0);
    lu_tensor_release(w);
    lu_tensor_release(dy32);
    lu_tensor_release(dy);
    lu_tensor_release(start);
}

Test(autograd, no_grad_mode_records_nothing)
{
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(2, 2), -1, 1, 10);
    lu_tensor_set_requires_grad(a, true);
    bool prev = lu_grad_set_enabled(false);
    lu_tensor *y = lu_matmul(a, a, false, false);
    lu_grad_set_enabled(prev);
    cr_assert_eq(lu_tape_size(), 0);
    cr_assert(!y->requires_grad);
    cr_assert_neq(lu_backward(y), LU_OK);
    lu_tensor_release(y);
    lu_tensor_release(a);
}

Test(params, one_buffer_per_dtype_with_gradients)
{
    lu_params *p = lu_params_new(LU_CPU);
    lu_tensor *w = lu_params_add(p, "w", LU_F32, LU_SHAPE(3, 4), true);
    lu_tensor *rm = lu_params_add(p, "bn.running_mean", LU_F32, LU_SHAPE(4), false);
    lu_tensor *v = lu_params_add(p, "v", LU_F32, LU_SHAPE(5), true);
    cr_assert_null(lu_params_add(p, "w", LU_F32, LU_SHAPE(1), true));
    tu_assert_error_contains("duplicate parameter name 'w'");
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    cr_assert_eq(w->storage, p->flat[LU_F32]->storage);
    cr_assert_eq(v->offset, 16);
    cr_assert(w->grad && v->grad && !rm->grad);
    cr_assert(!rm->requires_grad);
    cr_assert_eq(lu_params_count(p, true), 17);
    cr_assert_eq(lu_params_count(p, false), 21);
    cr_assert_eq(lu_params_get(p, "v"), v);
    lu_params_free(p);
}

/* A finalised store of two trainable f32 tensors, an f32 buffer and an i64 buffer, every value
 * and gradient element set to a value of its own. */
static lu_params *filled_store(void)
{
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert(p && lu_params_add(p, "w", LU_F32, LU_SHAPE(3, 4), true) && lu_params_add(p, "bn.count", LU_I64, LU_SHAPE(2), false) &&
              lu_params_add(p, "bn.mean", LU_F32, LU_SHAPE(4), false) && lu_params_add(p, "v", LU_F32, LU_SHAPE(5), true));
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    float *f = lu_tensor_data(p->flat[LU_F32]), *g = lu_tensor_data(p->flat_grad[LU_F32]);
    for (int i = 0; i < 21; i++) f[i] = 0.5f * (float)i, g[i] = -0.25f * (float)i;
    int64_t *n = lu_tensor_data(p->flat[LU_I64]);
    n[0] = 7, n[1] = 9;
    return p;
}

/* What a move must keep: the tensor structs, their offsets and shapes, values and gradients. */
typedef struct store_view {
    lu_tensor *t[4], *grad[4];
    size_t offset[4];
    lu_storage *storage[4];
} store_view;

static store_view view_of(const lu_params *p)
{
    store_view v;
    for (int i = 0; i < 4; i++) {
        v.t[i] = p->items[i].t;
        v.grad[i] = p->items[i].t->grad;
        v.offset[i] = p->items[i].t->offset;
        v.storage[i] = p->items[i].t->storage;
    }
    return v;
}

static void assert_store_unchanged(const lu_params *p, const store_view *v)
{
    cr_assert_eq(p->device, LU_CPU);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(p->items[i].t, v->t[i], "%s: tensor struct replaced", p->items[i].name);
        cr_assert_eq(p->items[i].t->grad, v->grad[i], "%s: gradient struct replaced", p->items[i].name);
        cr_assert_eq(p->items[i].t->offset, v->offset[i]);
        cr_assert_eq(p->items[i].t->storage, v->storage[i], "%s: storage replaced", p->items[i].name);
    }
    cr_assert_eq(p->flat[LU_F32]->storage->refcount, 4, "the f32 buffer and its three tensors");
    cr_assert_eq(p->flat_grad[LU_F32]->storage->refcount, 3, "the gradient buffer and two gradients");
    const float *f = lu_tensor_data(p->flat[LU_F32]), *g = lu_tensor_data(p->flat_grad[LU_F32]);
    for (int i = 0; i < 21; i++) {
        cr_assert_eq(f[i], 0.5f * (float)i, "value %d", i);
        cr_assert_eq(g[i], -0.25f * (float)i, "gradient %d", i);
    }
    cr_assert_eq(((const int64_t *)lu_tensor_data(lu_params_get(p, "bn.count")))[1], 9);
}

Test(params, to_device_on_its_own_device_changes_nothing)
{
    lu_params *p = filled_store();
    store_view v = view_of(p);
    cr_assert_eq(lu_params_to_device(p, LU_CPU), LU_OK, "%s", lu_error_message());
    assert_store_unchanged(p, &v);
    lu_params_free(p);
}

Test(params, to_device_before_finalize_is_an_error)
{
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert(lu_params_add(p, "w", LU_F32, LU_SHAPE(2), true));
    cr_assert_neq(lu_params_to_device(p, LU_CUDA), LU_OK);
    tu_assert_error_contains("before finalize");
    lu_params_free(p);
}

/* The check comes before any allocation, so it runs without a GPU too. */
Test(params, to_device_refuses_while_a_view_of_the_store_is_held)
{
    lu_params *p = filled_store();
    store_view v = view_of(p);
    lu_tensor *view = lu_detach(lu_params_get(p, "v"));
    cr_assert(view, "%s", lu_error_message());
    cr_assert_neq(lu_params_to_device(p, LU_CUDA), LU_OK);
    tu_assert_error_contains("a view of its f32 buffer is held elsewhere");
    lu_tensor_release(view);
    assert_store_unchanged(p, &v);
    lu_params_free(p);
}

Test(params, to_device_without_that_device_fails_and_keeps_the_store)
{
    if (lu_device_available(LU_CUDA))
        cr_skip_test("a CUDA GPU is present: tests/test_cuda_train.c checks the move itself");
    lu_params *p = filled_store();
    store_view v = view_of(p);
    cr_assert_neq(lu_params_to_device(p, LU_CUDA), LU_OK);
    tu_assert_error_contains("moving the store to cuda");
    assert_store_unchanged(p, &v);
    lu_params_free(p);
}

Test(arena, step_tensors_come_from_the_arena_and_reset)
{
    lu_arena *a = lu_arena_new(LU_CPU, 1 << 20);
    lu_arena *prev = lu_arena_activate(a);
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(100, 100), LU_CPU);
    cr_assert(x && x->arena == a);
    size_t used = lu_arena_used(a);
    cr_assert_geq(used, 40000);
    lu_arena_activate(prev);
    lu_arena_reset(a);
    cr_assert_eq(lu_arena_used(a), 0);
    cr_assert_geq(lu_arena_peak(a), used);
    lu_arena_free(a);
}

/* Backward's gradients go back to the arena once propagated and later ones reuse the memory:
 * through a deep chain, backward adds about one activation's worth of gradients to the forward's
 * peak, not one gradient per activation (which doubled the step's memory before). */
Test(arena, backward_reuses_the_memory_of_propagated_gradients)
{
    enum { LAYERS = 12 };
    const int64_t rows = 256, width = 512; /* 512 KiB per activation */
    lu_arena *a = lu_arena_new(LU_CPU, 4 << 20);
    lu_arena *prev = lu_arena_activate(a);
    lu_tensor *w[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        lu_arena_activate(NULL);
        w[l] = tu_rand(LU_F32, LU_SHAPE(width, width), -0.05, 0.05, 10 + l);
        lu_tensor_set_requires_grad(w[l], true);
        lu_arena_activate(a);
    }
    lu_tensor *h = tu_rand(LU_F32, LU_SHAPE(rows, width), -1, 1, 3);
    for (int l = 0; l < LAYERS; l++) h = lu_silu(lu_linear(h, w[l], NULL));
    lu_tensor *loss = lu_sum(h, LU_ALL_DIMS, false);
    cr_assert(loss, "%s", lu_error_message());
    size_t forward = lu_arena_peak(a), activation = (size_t)(rows * width) * sizeof(float);
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    size_t added = lu_arena_peak(a) - forward;
    /* Alive at once: the gradient coming down, the one going out, and a weight's gradient (two
     * activations' worth here) on its way to the heap. Without reuse backward added all of
     * them, about 4 activations' worth per layer (48 here). */
    cr_assert_leq(added, 6 * activation, "backward added %zu bytes to a forward peak of %zu (%zu per activation)", added,
                  forward, activation);
    for (int l = 0; l < LAYERS; l++) {
        cr_assert(w[l]->grad, "layer %d got no gradient", l);
        lu_tensor_release(w[l]);
    }
    lu_arena_activate(prev);
    lu_arena_free(a);
}

/* Recycled memory is handed out again, and with LUTHIER_ARENA_POISON it reads as NaN in between
 * (the tests run with it set: a use after the last release shows up as NaN). */
Test(arena, released_backward_tensors_are_reused_and_poisoned)
{
    lu_arena *a = lu_arena_new(LU_CPU, 1 << 20);
    lu_arena *prev = lu_arena_activate(a);
    bool was = lu_arena_set_recycling(a, true);
    cr_assert_not(was);
    lu_tensor *t = lu_tensor_full(LU_F32, LU_SHAPE(1000), LU_CPU, 1.0);
    cr_assert(t && t->counted && t->storage->counted);
    float *data = lu_tensor_data(t);
    lu_tensor *view = lu_reshape(t, 2, (int64_t[]){10, 100});
    lu_tensor_release(t);
    cr_assert_eq(data[0], 1.0f, "a view keeps its storage alive");
    size_t before = lu_arena_used(a);
    lu_tensor_release(view);
    cr_assert_lt(lu_arena_used(a), before);
    const char *poison = getenv("LUTHIER_ARENA_POISON");
    if (poison && strcmp(poison, "0")) cr_assert(isnan(data[0]) && isnan(data[999]), "given-back memory is poisoned");
    lu_tensor *again = lu_tensor_empty(LU_F32, LU_SHAPE(1000), LU_CPU);
    cr_assert_eq(lu_tensor_data(again), (void *)data, "the same size reuses the given-back memory");
    lu_arena_set_recycling(a, false);
    lu_tensor *kept = lu_tensor_empty(LU_F32, LU_SHAPE(1000), LU_CPU);
    cr_assert(kept && !kept->counted, "outside recycling, arena tensors live until the reset");
    lu_arena_activate(prev);
    lu_arena_free(a);
}

Test(rng, philox_is_a_pure_function_of_its_key)
{
    uint32_t a[4], b[4], c[4];
    lu_philox4x32(42, 3, 1, 10, a);
    lu_philox4x32(42, 3, 1, 10, b);
    lu_philox4x32(42, 3, 2, 10, c);
    cr_assert_arr_eq(a, b, sizeof a);
    cr_assert(memcmp(a, c, sizeof a) != 0);
    double mean = 0, sq = 0;
    for (int i = 0; i < 100000; i++) {
        double u = lu_rng_uniform(1, 0, 0, (uint64_t)i);
        cr_assert(u >= 0 && u < 1);
        mean += u;
        double z = lu_rng_normal(1, 0, 1, (uint64_t)i);
        sq += z * z;
    }
    cr_assert_float_eq(mean / 100000, 0.5, 0.005);
    cr_assert_float_eq(sq / 100000, 1.0, 0.02);
}

/* ---- the vectorisable expf of the CPU kernels ---- */

#include "core/cpu/cpu_math.h"

Test(cpu_math, expf_matches_libm_to_a_few_ulp)
{
    double worst = 0;
    for (float x = -87.3f; x < 88.7f; x += 0.00731f) {
        double ref = exp((double)x), rel = fabs(lu_expf(x) - ref) / ref;
        worst = rel > worst ? rel : worst;
    }
    cr_assert_lt(worst, 2.5e-7, "worst relative error %g", worst);
}

Test(cpu_math, expf_edges)
{
    cr_assert_eq(lu_expf(-INFINITY), 0.0f);
    cr_assert_eq(lu_expf(-1000.0f), 0.0f);
    cr_assert(isinf(lu_expf(INFINITY)) && lu_expf(INFINITY) > 0);
    cr_assert(isinf(lu_expf(89.0f)));
    cr_assert(isnan(lu_expf(NAN)));
    cr_assert_eq(lu_expf(0.0f), 1.0f);
    cr_assert_float_eq(lu_expf(88.7f), expf(88.7f), 1e32);
}

Test(cpu_math, log1p_of_non_negative_matches_libm)
{
    double worst = 0;
    for (double x = 0; x < 50; x = x < 1e-6 ? x + 1e-9 : x * 1.0007 + 1e-9) {
        float xf = (float)x;
        double ref = log1p((double)xf), got = lu_log1pf_pos(xf);
        double rel = ref > 0 ? fabs(got - ref) / ref : fabs(got);
        worst = rel > worst ? rel : worst;
    }
    cr_assert_lt(worst, 3e-7, "worst relative error %g", worst);
    cr_assert_eq(lu_log1pf_pos(0.0f), 0.0f);
    cr_assert_eq(lu_log1pf_pos(1e-30f), 1e-30f);
}

Test(rng, block_generator_equals_single_blocks)
{
    /* Starts where the block counter's low word wraps inside a group of generated blocks. */
    static const uint64_t firsts[] = {1000, 0xFFFFFFF6u, (5ull << 32) + 0xFFFFFFFDu};
    uint32_t many[4 * 37], one[4];
    for (int f = 0; f < 3; f++) {
        lu_philox4x32_blocks(9, 4, 3, firsts[f], 37, many);
        for (int k = 0; k < 37; k++) {
            lu_philox4x32(9, 4, 3, firsts[f] + (uint64_t)k, one);
            cr_assert_arr_eq(many + 4 * k, one, sizeof one, "first %llu block %d", (unsigned long long)firsts[f], k);
        }
    }
}
