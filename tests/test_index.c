/* test_index.c - embedding lookup, concatenation and gather: forward against float64 loops,
 * backward (scatter-adds and splits) by finite differences, and index errors. */
#include <stdlib.h>

#include "testutil.h"

/* ---- embedding -------------------------------------------------------------------------- */

static void check_embedding(lu_dtype id_dt, int64_t V, int64_t D)
{
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(V, D), -1, 1, 1), *ids = tu_randint(id_dt, LU_SHAPE(3, 5), V, 2);
    lu_tensor *y = lu_embedding(w, ids);
    cr_assert(y, "%s", lu_error_message());
    cr_assert(y->ndim == 3 && y->shape[0] == 3 && y->shape[1] == 5 && y->shape[2] == D);
    double *wv = tu_to_doubles(w), *iv = tu_to_doubles(ids), *ref = malloc((size_t)(15 * D) * sizeof *ref);
    for (int i = 0; i < 15; i++)
        for (int64_t d = 0; d < D; d++) ref[i * D + d] = wv[(int64_t)iv[i] * D + d];
    tu_assert_close(y, ref, 15 * D, 0, 0, "embedding rows");
    free(wv);
    free(iv);
    free(ref);
    lu_tensor_release(y);
    lu_tensor_release(ids);
    lu_tensor_release(w);
}

Test(embedding, looks_up_rows_for_i32_and_i64_ids)
{
    check_embedding(LU_I32, 11, 7);
    check_embedding(LU_I64, 4, 130);
}

static lu_tensor *emb_fn(lu_tensor **in, void *ctx) { return lu_embedding(in[0], ctx); }

Test(embedding, backward_scatter_adds_repeated_ids)
{
    /* 15 ids over 4 rows: every row is hit several times; D = 130 spans three column blocks. */
    for (int64_t D = 7; D <= 130; D += 123) {
        lu_tensor *w = tu_rand(LU_F64, LU_SHAPE(4, D), -1, 1, 3), *ids = tu_randint(LU_I64, LU_SHAPE(3, 5), 4, 4);
        tu_gradcheck(emb_fn, &w, 1, (bool[]){true}, ids, 1e-6, 1e-8, 1e-6, 600, "embedding grad");
        lu_tensor_release(ids);
        lu_tensor_release(w);
    }
}

Test(embedding, rejects_ids_out_of_range_naming_value_and_position)
{
    lu_tensor *w = lu_tensor_zeros(LU_F32, LU_SHAPE(10, 3), LU_CPU);
    int64_t bad[4] = {0, 9, 10, 3}, neg[2] = {1, -1};
    lu_tensor *ids = lu_tensor_from_host(LU_I64, LU_SHAPE(2, 2), LU_CPU, bad);
    lu_tensor *nids = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, neg);
    cr_assert_null(lu_embedding(w, ids));
    tu_assert_error_contains("embedding: id 10 at position 2 is outside [0, 10)");
    cr_assert_null(lu_embedding(w, nids));
    tu_assert_error_contains("embedding: id -1 at position 1");
    lu_tensor_release(ids);
    lu_tensor_release(nids);
    lu_tensor_release(w);
}

Test(embedding, rejects_bad_weight_or_id_dtypes)
{
    lu_tensor *w1 = lu_tensor_zeros(LU_F32, LU_SHAPE(10), LU_CPU), *w = lu_tensor_zeros(LU_F32, LU_SHAPE(10, 3), LU_CPU);
    lu_tensor *ids = lu_tensor_zeros(LU_I32, LU_SHAPE(2), LU_CPU), *fids = lu_tensor_zeros(LU_F32, LU_SHAPE(2), LU_CPU);
    cr_assert_null(lu_embedding(w1, ids));
    tu_assert_error_contains("embedding: needs a float weight [V, D] and i32/i64 ids of at most 7 dims (weight [10] f32, ids [2] i32)");
    cr_assert_null(lu_embedding(w, fids));
    tu_assert_error_contains("ids [2] f32");
    lu_tensor_release(w1);
    lu_tensor_release(w);
    lu_tensor_release(ids);
    lu_tensor_release(fids);
}

/* ---- concat ----------------------------------------------------------------------------- */

/* Three [2, 3, 4]-like tensors whose `dim` sizes are 1, 2 and 3. */
static void make_pieces(lu_dtype dt, int dim, lu_tensor **xs)
{
    for (int k = 0; k < 3; k++) {
        int64_t shape[3] = {2, 3, 5};
        shape[dim] = k + 1;
        xs[k] = tu_rand(dt, 3, shape, -1, 1, 10 + (uint64_t)k);
    }
}

static void check_concat(int dim)
{
    lu_tensor *xs[3];
    make_pieces(LU_F32, dim, xs);
    lu_tensor *y = lu_concat(xs, 3, dim);
    cr_assert(y, "%s", lu_error_message());
    cr_assert_eq(y->shape[dim], 1 + 2 + 3);
    int64_t n = lu_tensor_numel(y), outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= y->shape[i];
    for (int i = dim + 1; i < 3; i++) inner *= y->shape[i];
    double *ref = malloc((size_t)n * sizeof *ref), *p = ref;
    double *xv[3] = {tu_to_doubles(xs[0]), tu_to_doubles(xs[1]), tu_to_doubles(xs[2])};
    for (int64_t o = 0; o < outer; o++)
        for (int k = 0; k < 3; k++)
            for (int64_t j = 0; j < (k + 1) * inner; j++) *p++ = xv[k][o * (k + 1) * inner + j];
    tu_assert_close(y, ref, n, 0, 0, "concat");
    for (int k = 0; k < 3; k++) {
        free(xv[k]);
        lu_tensor_release(xs[k]);
    }
    free(ref);
    lu_tensor_release(y);
}

Test(concat, matches_reference_along_every_dim)
{
    for (int dim = 0; dim < 3; dim++) check_concat(dim);
}

Test(concat, negative_dim_and_strided_inputs)
{
    lu_tensor *a = tu_rand(LU_F64, LU_SHAPE(4, 3), -1, 1, 20), *b = tu_rand(LU_F64, LU_SHAPE(3, 2), -1, 1, 21);
    lu_tensor *bt = lu_transpose(b, 0, 1); /* [2, 3], not contiguous */
    lu_tensor *y = lu_concat((lu_tensor *[]){a, bt}, 2, -2);
    cr_assert(y && y->shape[0] == 6 && y->shape[1] == 3, "%s", lu_error_message());
    double *av = tu_to_doubles(a), *bv = tu_to_doubles(b), ref[18];
    for (int i = 0; i < 12; i++) ref[i] = av[i];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) ref[12 + i * 3 + j] = bv[j * 2 + i];
    tu_assert_close(y, ref, 18, 0, 0, "concat with transposed piece");
    free(av);
    free(bv);
    lu_tensor_release(y);
    lu_tensor_release(bt);
    lu_tensor_release(a);
    lu_tensor_release(b);
}

Test(concat, works_for_integer_tensors)
{
    int32_t a[2] = {1, 2}, b[3] = {3, 4, 5};
    lu_tensor *ta = lu_tensor_from_host(LU_I32, LU_SHAPE(2), LU_CPU, a), *tb = lu_tensor_from_host(LU_I32, LU_SHAPE(3), LU_CPU, b);
    lu_tensor *y = lu_concat((lu_tensor *[]){ta, tb}, 2, 0);
    tu_assert_close(y, (double[]){1, 2, 3, 4, 5}, 5, 0, 0, "i32 concat");
    lu_tensor_release(y);
    lu_tensor_release(ta);
    lu_tensor_release(tb);
}

static lu_tensor *concat_fn(lu_tensor **in, void *ctx) { return lu_concat(in, 3, *(int *)ctx); }

Test(concat, backward_splits_the_gradient)
{
    for (int dim = 0; dim < 3; dim++) {
        lu_tensor *xs[3];
        make_pieces(LU_F64, dim, xs);
        tu_gradcheck(concat_fn, xs, 3, (bool[]){true, true, true}, &dim, 1e-6, 1e-9, 1e-7, 100, "concat grad");
        /* The middle piece needs no gradient: the others still get theirs. */
        tu_gradcheck(concat_fn, xs, 3, (bool[]){true, false, true}, &dim, 1e-6, 1e-9, 1e-7, 100, "concat grad skip");
        for (int k = 0; k < 3; k++) lu_tensor_release(xs[k]);
    }
}

Test(concat, rejects_mismatched_pieces)
{
    lu_tensor *a = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3), LU_CPU), *b = lu_tensor_zeros(LU_F32, LU_SHAPE(3, 3), LU_CPU);
    lu_tensor *c = lu_tensor_zeros(LU_F64, LU_SHAPE(2, 3), LU_CPU);
    cr_assert_null(lu_concat((lu_tensor *[]){a, b}, 2, 1));
    tu_assert_error_contains("concat: tensor 1 ([3, 3] f32) does not match tensor 0 ([2, 3] f32) outside dim 1");
    cr_assert_null(lu_concat((lu_tensor *[]){a, c}, 2, 0));
    tu_assert_error_contains("tensor 1 ([2, 3] f64)");
    cr_assert_null(lu_concat((lu_tensor *[]){a}, 0, 0));
    tu_assert_error_contains("concat: 0 tensors given");
    lu_tensor_release(a);
    lu_tensor_release(b);
    lu_tensor_release(c);
}

/* ---- gather ----------------------------------------------------------------------------- */

/* torch.gather in float64 over contiguous x [3,5,7] and index of shape is. */
static void ref_gather(const double *x, const int64_t *xs, const double *idx, const int64_t *is, int dim, double *y)
{
    int64_t n = is[0] * is[1] * is[2];
    for (int64_t e = 0; e < n; e++) {
        int64_t c[3] = {e / (is[1] * is[2]), (e / is[2]) % is[1], e % is[2]};
        c[dim] = (int64_t)idx[e];
        y[e] = x[(c[0] * xs[1] + c[1]) * xs[2] + c[2]];
    }
}

Test(gather, matches_torch_gather_along_every_dim)
{
    int64_t xs[3] = {3, 5, 7};
    lu_tensor *x = tu_rand(LU_F32, 3, xs, -1, 1, 30);
    double *xv = tu_to_doubles(x);
    for (int dim = 0; dim < 3; dim++) {
        /* index smaller than x outside dim, longer than x along it (repeats). */
        int64_t is[3] = {2, 4, 6};
        is[dim] = 9;
        lu_tensor *idx = tu_randint(dim == 1 ? LU_I32 : LU_I64, 3, is, xs[dim], 31 + (uint64_t)dim);
        lu_tensor *y = lu_gather(x, dim, idx);
        cr_assert(y, "%s", lu_error_message());
        double *iv = tu_to_doubles(idx), ref[9 * 4 * 6];
        ref_gather(xv, xs, iv, is, dim, ref);
        tu_assert_close(y, ref, is[0] * is[1] * is[2], 0, 0, "gather");
        free(iv);
        lu_tensor_release(y);
        lu_tensor_release(idx);
    }
    free(xv);
    lu_tensor_release(x);
}

typedef struct gather_case { int dim; lu_tensor *index; } gather_case;

static lu_tensor *gather_fn(lu_tensor **in, void *ctx)
{
    const gather_case *c = ctx;
    return lu_gather(in[0], c->dim, c->index);
}

Test(gather, backward_scatter_adds_repeated_indices)
{
    int64_t xs[3] = {3, 5, 7};
    lu_tensor *x = tu_rand(LU_F64, 3, xs, -1, 1, 40);
    for (int dim = -3; dim < 0; dim++) {
        int64_t is[3] = {3, 4, 6};
        is[dim + 3] = 9;
        gather_case c = {dim, tu_randint(LU_I64, 3, is, xs[dim + 3], 41 + (uint64_t)(dim + 3))};
        tu_gradcheck(gather_fn, &x, 1, (bool[]){true}, &c, 1e-6, 1e-9, 1e-7, 105, "gather grad");
        lu_tensor_release(c.index);
    }
    lu_tensor_release(x);
}

Test(gather, rejects_bad_index_values_and_shapes)
{
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3), LU_CPU);
    int64_t bad[4] = {0, 2, 3, 1};
    lu_tensor *idx = lu_tensor_from_host(LU_I64, LU_SHAPE(2, 2), LU_CPU, bad);
    lu_tensor *big = lu_tensor_zeros(LU_I64, LU_SHAPE(3, 2), LU_CPU), *flat = lu_tensor_zeros(LU_I64, LU_SHAPE(2), LU_CPU);
    cr_assert_null(lu_gather(x, 1, idx));
    tu_assert_error_contains("gather: index 3 at position 2 is outside [0, 3)");
    cr_assert_null(lu_gather(x, 1, big));
    tu_assert_error_contains("gather: needs a float x and an i32/i64 index of the same rank, no larger than x outside "
                             "dim 1 (x [2, 3] f32, index [3, 2] i64)");
    cr_assert_null(lu_gather(x, 0, flat));
    tu_assert_error_contains("index [2] i64");
    cr_assert_null(lu_gather(x, 2, idx));
    tu_assert_error_contains("gather: dim 2 out of range");
    lu_tensor_release(x);
    lu_tensor_release(idx);
    lu_tensor_release(big);
    lu_tensor_release(flat);
}
