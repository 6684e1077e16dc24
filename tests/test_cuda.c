/* test_cuda.c - every kernel of the CUDA backend against the CPU backend, the reference (as
 * ggml's test-backend-ops does): the same op call runs on both backends with the same random
 * inputs (odd sizes, strided and broadcast layouts where the op takes them), and each output is
 * compared by the normalised error sum((a - b)^2) / sum(b^2), NaN/Inf mismatches failing.
 * Backward kernels are compared in isolation, on the CPU's forward outputs.
 *
 * bf16 kernels run on the bf16-rounded inputs against the CPU in f32 on the same values.
 * Without a GPU (or without LUTHIER_CUDA) every test skips and says why. CUDA is first touched
 * inside a test body: Criterion forks each test, and a CUDA context does not survive a fork. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#ifdef LUTHIER_HAVE_CUDA

#include "cuda_testutil.h"

#ifndef LU_CUDA_EMU
#include <cublas_v2.h>
#include <dlfcn.h>
#endif

/* ---- the catalogue ---- */

Test(cuda, every_op_of_the_catalogue_has_its_cpu_kernels_on_the_gpu)
{
    require_gpu();
    lu_backend *cpu = lu_backend_get(LU_CPU), *gpu = lu_backend_get(LU_CUDA);
    cr_assert(cpu && gpu, "%s", lu_error_message());
    for (int op = 0; op < LU_OP_COUNT; op++) {
        cr_expect(gpu->forward[op], "%s has no cuda forward kernel", lu_op_name((lu_op)op));
        cr_expect(!cpu->backward[op] || gpu->backward[op], "%s has a cpu backward kernel but no cuda one",
                  lu_op_name((lu_op)op));
    }
}

/* ---- memory, fill, copy ---- */

Test(cuda, fill_writes_every_dtype_as_the_cpu_does)
{
    require_gpu();
    const double values[2] = {0.0, -2.75};
    for (int dt = 0; dt < LU_DTYPE_COUNT; dt++) {
        for (int v = 0; v < 2; v++) {
            lu_tensor *g = lu_tensor_full((lu_dtype)dt, LU_SHAPE(3, 37), LU_CUDA, values[v]);
            lu_tensor *c = lu_tensor_full((lu_dtype)dt, LU_SHAPE(3, 37), LU_CPU, values[v]);
            cr_assert(g && c, "%s", lu_error_message());
            tu_assert_tensors_close(g, c, 0, 0, lu_dtype_name((lu_dtype)dt));
            lu_tensor_release(g);
            lu_tensor_release(c);
        }
    }
}

Test(cuda, copies_round_trip_host_device_device_host)
{
    require_gpu();
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(5, 127), -3, 3, 1);
    lu_tensor *d1 = lu_tensor_convert(x, LU_F32, LU_CUDA);
    lu_tensor *d2 = lu_tensor_empty(LU_F32, LU_SHAPE(5, 127), LU_CUDA);
    cr_assert(d1 && d2, "%s", lu_error_message());
    cr_assert_eq(lu_tensor_copy(d2, d1), LU_OK, "%s", lu_error_message());
    tu_assert_tensors_close(d2, x, 0, 0, "device copy");
    release_all((lu_tensor *[]){x, d1, d2}, 3);
}

Test(cuda, failed_cuda_call_names_file_line_and_error)
{
    require_gpu();
    lu_backend *b = lu_backend_get(LU_CUDA);
    float host[4];
    /* 0x10 is no device allocation: cudaMemcpy refuses it. */
    cr_assert_neq(b->copy(host, LU_CPU, (const void *)0x10, LU_CUDA, sizeof host), LU_OK);
    tu_assert_error_contains("backend.c:");
    tu_assert_error_contains("cudaMemcpy");
}

/* lu_tensor_copy into a strided view on the device (autograd writes gradients of slices so), from
 * a device source of another dtype and from the host, as the same copy on the CPU. */
Test(cuda, copy_into_a_strided_device_view_matches_cpu)
{
    require_gpu();
    lu_tensor *base = tu_rand(LU_F32, LU_SHAPE(6, 9, 5), -3, 3, 3);
    lu_tensor *src = tu_rand(LU_F32, LU_SHAPE(5, 3, 6), -3, 3, 4);
    lu_tensor *dbase = lu_tensor_convert(base, LU_F32, LU_CUDA), *dsrc = lu_tensor_convert(src, LU_BF16, LU_CUDA);
    cr_assert(dbase && dsrc, "%s", lu_error_message());
    /* [6, 9, 5] -> every third of dim 1 from 1 ([6, 3, 5]) -> permuted to [5, 3, 6]. */
    const int perm[3] = {2, 1, 0};
    lu_tensor *view = lu_permute(lu_slice(base, 1, 1, 9, 3), perm), *dview = lu_permute(lu_slice(dbase, 1, 1, 9, 3), perm);
    cr_assert(view && dview && !lu_tensor_is_contiguous(dview), "%s", lu_error_message());
    lu_tensor *rounded = lu_tensor_convert(dsrc, LU_F32, LU_CPU);
    cr_assert_eq(lu_tensor_copy(view, rounded), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_tensor_copy(dview, dsrc), LU_OK, "%s", lu_error_message());
    tu_assert_tensors_close(dbase, base, 0, 0, "bf16 device source into a strided device view");
    /* From the host, same dtype. */
    cr_assert_eq(lu_tensor_copy(view, src), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_tensor_copy(dview, src), LU_OK, "%s", lu_error_message());
    tu_assert_tensors_close(dbase, base, 0, 0, "host source into a strided device view");
    /* A destination that repeats elements (expanded) has no defined result in parallel. */
    lu_tensor *row = lu_tensor_zeros(LU_F32, LU_SHAPE(1, 5), LU_CUDA), *wide = lu_expand(row, 2, (int64_t[]){4, 5});
    lu_tensor *four = tu_rand(LU_F32, LU_SHAPE(4, 5), -1, 1, 6);
    cr_assert_neq(lu_tensor_copy(wide, four), LU_OK);
    tu_assert_error_contains("repeats elements");
    release_all((lu_tensor *[]){base, src, dbase, dsrc, view, dview, rounded, row, wide, four}, 10);
}

/* A device tensor converted to another dtype stays on the device, gathered and cast there. */
Test(cuda, convert_on_the_device_gathers_and_casts_as_the_cpu)
{
    require_gpu();
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(7, 4, 33), -3, 3, 5);
    lu_tensor *d = lu_tensor_convert(x, LU_F32, LU_CUDA);
    const int perm[3] = {1, 2, 0};
    lu_tensor *v = lu_permute(x, perm), *dv = lu_permute(d, perm);
    lu_tensor *want = lu_tensor_convert(v, LU_BF16, LU_CPU), *got = lu_tensor_convert(dv, LU_BF16, LU_CUDA);
    cr_assert(want && got, "%s", lu_error_message());
    cr_assert_eq(lu_tensor_device(got), LU_CUDA);
    cr_assert(lu_tensor_is_contiguous(got));
    tu_assert_tensors_close(got, want, 0, 0, "permuted f32 -> bf16 on the device");
    release_all((lu_tensor *[]){x, d, v, dv, want, got}, 6);
}

/* ---- layout ---- */

Test(cuda, contiguous_gathers_permuted_sliced_and_expanded_views)
{
    require_gpu();
    const lu_dtype dts[4] = {LU_F32, LU_BF16, LU_I64, LU_U8};
    for (int d = 0; d < 4; d++) {
        lu_tensor *base = tu_rand(LU_F32, LU_SHAPE(4, 5, 6, 7), -5, 5, 2 + (uint64_t)d);
        lu_tensor *x = lu_tensor_convert(base, dts[d], LU_CPU);
        lu_tensor *p = lu_permute(x, (int[]){3, 1, 0, 2});
        lu_tensor *s = lu_slice(p, 2, 1, 4, 2);
        lu_tensor *out = empty(s->dtype, s->ndim, s->shape);
        kcase k = {.op = LU_OP_CONTIGUOUS, .in = {s}, .n_in = 1, .out = {out}, .n_out = 1, .dev_dt = dts[d], .tol = 0};
        check_case(&k, lu_dtype_name(dts[d]));
        release_all((lu_tensor *[]){base, x, p, s, out}, 5);
    }
    lu_tensor *row = tu_rand(LU_F32, LU_SHAPE(1, 9), -1, 1, 9);
    lu_tensor *e = lu_expand(row, 3, (int64_t[]){3, 7, 9});
    lu_tensor *out = empty(LU_F32, LU_SHAPE(3, 7, 9));
    kcase k = {.op = LU_OP_CONTIGUOUS, .in = {e}, .n_in = 1, .out = {out}, .n_out = 1, .dev_dt = LU_F32, .tol = 0};
    check_case(&k, "expanded");
    release_all((lu_tensor *[]){row, e, out}, 3);
}

Test(cuda, contiguous_handles_eight_dims)
{
    require_gpu();
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 3, 1, 2, 3, 2, 1, 3), -1, 1, 3);
    lu_tensor *p = lu_permute(x, (int[]){7, 0, 6, 4, 2, 5, 1, 3});
    lu_tensor *out = empty(LU_F32, p->ndim, p->shape);
    kcase k = {.op = LU_OP_CONTIGUOUS, .in = {p}, .n_in = 1, .out = {out}, .n_out = 1, .dev_dt = LU_F32, .tol = 0};
    check_case(&k, "8-D permutation");
    release_all((lu_tensor *[]){x, p, out}, 3);
}

Test(cuda, cast_converts_bit_exactly_as_the_cpu)
{
    require_gpu();
    const lu_dtype pairs[][2] = {{LU_F32, LU_BF16}, {LU_BF16, LU_F32}, {LU_F32, LU_F16}, {LU_F16, LU_F32},
                                 {LU_I32, LU_I64},  {LU_I64, LU_I32},  {LU_F32, LU_F64}, {LU_F64, LU_F32}};
    /* 7 x 131 elements take the general kernel, 8 x 136 (whole groups of 8) f32 <-> bf16's vector
     * one; a NaN, an Inf and a value that rounds up to Inf in bf16 among them. */
    const int64_t rows[2] = {7, 8}, cols[2] = {131, 136};
    for (int z = 0; z < 2; z++)
        for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
            lu_tensor *r = tu_rand(LU_F32, LU_SHAPE(rows[z], cols[z]), -70000, 70000, 4 + i);
            if (pairs[i][0] == LU_F32) {
                float *f = lu_tensor_data(r);
                f[3] = NAN;
                f[10] = -INFINITY;
                f[17] = 3.3999e38f;
            }
            lu_tensor *x = lu_tensor_convert(r, pairs[i][0], LU_CPU);
            lu_tensor *out = empty(pairs[i][1], LU_SHAPE(rows[z], cols[z]));
            lu_tensor *dx = lu_tensor_convert(x, x->dtype, LU_CUDA);
            lu_tensor *dout = lu_tensor_empty(out->dtype, 2, out->shape, LU_CUDA);
            cr_assert(dx && dout, "%s", lu_error_message());
            cr_assert_eq(run_kernel(LU_CPU, false, LU_OP_CAST, &x, 1, &out, 1, NULL), LU_OK, "%s", lu_error_message());
            cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_CAST, &dx, 1, &dout, 1, NULL), LU_OK, "%s", lu_error_message());
            char what[64];
            snprintf(what, sizeof what, "%s -> %s, %lld elements", lu_dtype_name(pairs[i][0]),
                     lu_dtype_name(pairs[i][1]), (long long)(rows[z] * cols[z]));
            tu_assert_tensors_close(dout, out, 0, 0, what);
            release_all((lu_tensor *[]){r, x, out, dx, dout}, 5);
        }
}

Test(cuda, accumulate_adds_in_place)
{
    require_gpu();
    for (int64_t cols = 301; cols <= 304; cols += 3) {
        lu_tensor *g = tu_rand(LU_F32, LU_SHAPE(3, cols), -1, 1, 5), *acc = tu_rand(LU_F32, LU_SHAPE(3, cols), -1, 1, 6);
        kcase k = {.op = LU_OP_ACCUMULATE, .in = {g}, .n_in = 1, .out = {acc}, .n_out = 1, .dev_dt = LU_F32,
                   .tol = TOL_F32};
        check_case(&k, cols % 8 ? "accumulate, odd size" : "accumulate, 8 a thread");
        release_all((lu_tensor *[]){g, acc}, 2);
    }
}

/* A bf16 gradient added into an f32 one (lu_cast's backward into a parameter's gradient), with an
 * odd size and one of whole groups of eight (the kernel's two paths). */
Test(cuda, accumulate_adds_bf16_into_f32_as_the_cpu)
{
    require_gpu();
    for (int64_t cols = 301; cols <= 304; cols += 3) {
        lu_tensor *r = tu_rand(LU_F32, LU_SHAPE(3, cols), -1, 1, 7), *g = lu_tensor_convert(r, LU_BF16, LU_CPU);
        lu_tensor *acc = tu_rand(LU_F32, LU_SHAPE(3, cols), -1, 1, 8);
        lu_tensor *dg = lu_tensor_convert(g, LU_BF16, LU_CUDA), *dacc = lu_tensor_convert(acc, LU_F32, LU_CUDA);
        cr_assert(dg && dacc, "%s", lu_error_message());
        cr_assert_eq(run_kernel(LU_CPU, false, LU_OP_ACCUMULATE, &g, 1, &acc, 1, NULL), LU_OK, "%s", lu_error_message());
        cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_ACCUMULATE, &dg, 1, &dacc, 1, NULL), LU_OK, "%s",
                     lu_error_message());
        tu_assert_tensors_close(dacc, acc, 0, 0, cols % 8 ? "bf16 into f32, odd size" : "bf16 into f32, 8 a thread");
        release_all((lu_tensor *[]){r, g, acc, dg, dacc}, 5);
    }
}

/* ---- matmul ---- */

/* All four transpose combinations, with b batched and b shared by the batch; kk is the inner
 * size (0: the product is zeros). */
static void check_matmul(lu_dtype dev_dt, bool backward, double tol, int64_t kk)
{
    const int64_t batch = 3, m = 7, n = 5;
    for (int combo = 0; combo < 8; combo++) {
        bool ta = combo & 1, tb = combo & 2, shared = combo & 4;
        lu_matmul_params p = {ta, tb};
        int64_t bb = shared ? 1 : batch;
        lu_tensor *a = ta ? tu_rand(LU_F32, 3, (int64_t[]){batch, kk, m}, -1, 1, 10 + (uint64_t)combo)
                          : tu_rand(LU_F32, 3, (int64_t[]){batch, m, kk}, -1, 1, 10 + (uint64_t)combo);
        lu_tensor *b = tb ? tu_rand(LU_F32, 3, (int64_t[]){bb, n, kk}, -1, 1, 20 + (uint64_t)combo)
                          : tu_rand(LU_F32, 3, (int64_t[]){bb, kk, n}, -1, 1, 20 + (uint64_t)combo);
        lu_tensor *c = empty(LU_F32, 3, (int64_t[]){batch, m, n});
        char what[96];
        snprintf(what, sizeof what, "matmul %s %s trans_a %d trans_b %d %s b", lu_dtype_name(dev_dt),
                 backward ? "backward" : "forward", ta, tb, shared ? "shared" : "batched");
        if (!backward) {
            kcase k = {.op = LU_OP_MATMUL, .params = &p, .in = {a, b}, .n_in = 2, .out = {c}, .n_out = 1,
                       .dev_dt = dev_dt, .tol = tol};
            check_case(&k, what);
        } else {
            if (dev_dt == LU_BF16) {
                round_to_bf16(a);
                round_to_bf16(b);
            }
            cpu_forward(LU_OP_MATMUL, (lu_tensor *[]){a, b}, 2, &c, 1, &p);
            lu_tensor *dc = tu_rand(LU_F32, 3, c->shape, -1, 1, 30 + (uint64_t)combo);
            lu_tensor *da = empty(LU_F32, 3, a->shape), *db = empty(LU_F32, 3, b->shape);
            kcase k = {.op = LU_OP_MATMUL, .backward = true, .params = &p, .in = {dc, a, b, c}, .n_in = 4,
                       .out = {da, db}, .n_out = 2, .dev_dt = dev_dt, .tol = tol};
            check_case(&k, what);
            release_all((lu_tensor *[]){dc, da, db}, 3);
        }
        release_all((lu_tensor *[]){a, b, c}, 3);
    }
}

Test(cuda, matmul_f32_forward_matches_cpu) { require_gpu(); check_matmul(LU_F32, false, TOL_F32, 13); }
Test(cuda, matmul_f32_backward_matches_cpu) { require_gpu(); check_matmul(LU_F32, true, TOL_F32, 13); }
Test(cuda, matmul_bf16_forward_within_bf16_rounding) { require_gpu(); check_matmul(LU_BF16, false, TOL_BF16, 13); }
Test(cuda, matmul_bf16_backward_within_bf16_rounding) { require_gpu(); check_matmul(LU_BF16, true, TOL_BF16, 13); }
Test(cuda, matmul_with_an_empty_inner_dim_gives_zeros) { require_gpu(); check_matmul(LU_F32, false, TOL_F32, 0); }

/* ---- cuBLAS, loaded on the first product (cuda/cublas_load.c) ---- */

/* Needs no GPU: loading the libraries and asking their version and status names does not touch
 * one. The process starts without them (each test is a process of its own). */
Test(cuda, cublas_is_loaded_on_the_first_product_not_at_start)
{
#ifdef LU_CUDA_EMU
    cr_skip_test("CUDA emulator: its cuBLAS (tests/cuda_emu/cublas.c) is linked in");
#else
    char lt[64];
    snprintf(lt, sizeof lt, "libcublasLt.so.%d", CUBLAS_VER_MAJOR);
    cr_assert_null(dlopen(lt, RTLD_NOW | RTLD_NOLOAD), "%s was loaded at start", lt);
    cr_assert_eq(lu_cublas_load(), LU_OK, "%s", lu_error_message());
    void *loaded = dlopen(lt, RTLD_NOW | RTLD_NOLOAD);
    cr_assert_not_null(loaded, "%s is not loaded after lu_cublas_load", lt);
    dlclose(loaded);
    char about[640], expect[32];
    lu_cublas_describe(about, sizeof about);
    snprintf(expect, sizeof expect, "cuBLAS %d.", CUBLAS_VER_MAJOR);
    cr_expect(strncmp(about, expect, strlen(expect)) == 0 && strstr(about, "libcublas.so."), "%s", about);
    /* The functions the backend calls are the library's: its name of a status, not ours. */
    cr_expect_str_eq(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
#endif
}

/* ---- linear ---- */

/* x [M,K], w [N,K], bias [N] -> y; then the backward (dx, dw, dbias) on the CPU's y; each twice
 * on the device, bit for bit. The path (cuBLASLt epilogues, or LUTHIER_CUBLASLT=0: GEMM, bias
 * rows, column sums) is the caller's. */
static void check_linear(int64_t m, int64_t k, int64_t n, lu_dtype dev_dt, double tol, const char *path)
{
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(m, k), -1, 1, 140), *w = tu_rand(LU_F32, LU_SHAPE(n, k), -1, 1, 141);
    lu_tensor *b = tu_rand(LU_F32, LU_SHAPE(n), -1, 1, 142), *y = empty(LU_F32, LU_SHAPE(m, n));
    char what[128];
    snprintf(what, sizeof what, "linear %s %s forward, M %lld K %lld N %lld", path, lu_dtype_name(dev_dt),
             (long long)m, (long long)k, (long long)n);
    kcase f = {.op = LU_OP_LINEAR, .in = {x, w, b}, .n_in = 3, .out = {y}, .n_out = 1, .dev_dt = dev_dt, .tol = tol};
    check_case(&f, what);
    check_deterministic(&f, what);
    cpu_forward(LU_OP_LINEAR, (lu_tensor *[]){x, w, b}, 3, &y, 1, NULL);
    lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(m, n), -1, 1, 143), *dx = empty(LU_F32, LU_SHAPE(m, k));
    lu_tensor *dw = empty(LU_F32, LU_SHAPE(n, k)), *db = empty(LU_F32, LU_SHAPE(n));
    snprintf(what, sizeof what, "linear %s %s backward, M %lld K %lld N %lld", path, lu_dtype_name(dev_dt),
             (long long)m, (long long)k, (long long)n);
    kcase bk = {.op = LU_OP_LINEAR, .backward = true, .in = {dy, x, w, b, y}, .n_in = 5, .out = {dx, dw, db},
                .n_out = 3, .dev_dt = dev_dt, .tol = tol};
    check_case(&bk, what);
    check_deterministic(&bk, what);
    release_all((lu_tensor *[]){x, w, b, y, dy, dx, dw, db}, 8);
}

/* Every combination of M 1, 7, 333, K 5, 64, 130 and N 3, 96, 257 (GEMV-like rows, unaligned
 * leading dimensions) on one path; the unfused one must run no cuBLASLt epilogue. */
static void check_linear_shapes(lu_dtype dev_dt, double tol, bool fused)
{
    static const int64_t ms[3] = {1, 7, 333}, ks[3] = {5, 64, 130}, ns[3] = {3, 96, 257};
    if (fused) unsetenv("LUTHIER_CUBLASLT");
    else setenv("LUTHIER_CUBLASLT", "0", 1);
    int64_t before = lu_cuda_linear_fused_gemms();
    for (int i = 0; i < 27; i++) check_linear(ms[i / 9], ks[i / 3 % 3], ns[i % 3], dev_dt, tol, fused ? "fused" : "unfused");
    if (!fused) cr_assert_eq(lu_cuda_linear_fused_gemms(), before, "LUTHIER_CUBLASLT=0 still ran cuBLASLt epilogues");
}

Test(cuda, linear_f32_fused_matches_cpu) { require_gpu(); check_linear_shapes(LU_F32, TOL_F32, true); }
Test(cuda, linear_f32_unfused_matches_cpu) { require_gpu(); check_linear_shapes(LU_F32, TOL_F32, false); }
Test(cuda, linear_bf16_fused_within_bf16_rounding) { require_gpu(); check_linear_shapes(LU_BF16, TOL_BF16, true); }
Test(cuda, linear_bf16_unfused_within_bf16_rounding) { require_gpu(); check_linear_shapes(LU_BF16, TOL_BF16, false); }

/* In bf16 with aligned sizes cuBLASLt must take both epilogues (bias in the forward GEMM, bias
 * gradient in the weight gradient's), or the fused path is never the one measured. Both paths
 * run in this one process, switched by the variable between calls. */
Test(cuda, linear_bf16_aligned_runs_the_cublaslt_epilogues_and_the_variable_turns_them_off)
{
    require_gpu();
    for (int pass = 0; pass < 2; pass++) {
        int64_t before = lu_cuda_linear_fused_gemms();
        unsetenv("LUTHIER_CUBLASLT");
        check_linear(333, 64, 96, LU_BF16, TOL_BF16, "fused");
        /* check_linear runs the forward and the backward three times each on the device (check_case
         * once, check_deterministic twice): one fused GEMM in each. */
        cr_assert_eq(lu_cuda_linear_fused_gemms() - before, 6, "cuBLASLt ran %lld of the 6 fused GEMMs (bf16, M 333, "
                     "K 64, N 96): it refused the bias or bias-gradient epilogue",
                     (long long)(lu_cuda_linear_fused_gemms() - before));
        setenv("LUTHIER_CUBLASLT", "0", 1);
        before = lu_cuda_linear_fused_gemms();
        check_linear(333, 64, 96, LU_BF16, TOL_BF16, "unfused");
        cr_assert_eq(lu_cuda_linear_fused_gemms(), before, "LUTHIER_CUBLASLT=0 still ran cuBLASLt epilogues");
    }
}

/* A contiguous [r, c] view starting one element into its storage: pointers at 2 (bf16) or 4 (f32)
 * bytes of alignment, below what cuBLASLt assumes unless told. */
static lu_tensor *offset_by_one(int64_t r, int64_t c, uint64_t seed)
{
    lu_tensor *base = tu_rand(LU_F32, LU_SHAPE(1 + r * c), -1, 1, seed), *tail = lu_slice(base, 0, 1, 1 + r * c, 1);
    lu_tensor *v = lu_reshape(tail, 2, (int64_t[]){r, c});
    cr_assert(v && lu_tensor_is_contiguous(v) && v->offset == 1, "%s", lu_error_message());
    release_all((lu_tensor *[]){base, tail}, 2);
    return v;
}

Test(cuda, linear_handles_inputs_at_unaligned_offsets)
{
    require_gpu();
    const lu_dtype dts[2] = {LU_F32, LU_BF16};
    for (int d = 0; d < 2; d++) {
        double tol = dts[d] == LU_BF16 ? TOL_BF16 : TOL_F32;
        lu_tensor *x = offset_by_one(7, 64, 150), *w = offset_by_one(96, 64, 151), *bias = offset_by_one(1, 96, 152);
        lu_tensor *b = lu_reshape(bias, 1, (int64_t[]){96}), *y = empty(LU_F32, LU_SHAPE(7, 96));
        char what[96];
        snprintf(what, sizeof what, "linear %s forward, inputs one element into their storage", lu_dtype_name(dts[d]));
        kcase f = {.op = LU_OP_LINEAR, .in = {x, w, b}, .n_in = 3, .out = {y}, .n_out = 1, .dev_dt = dts[d], .tol = tol};
        check_case(&f, what);
        cpu_forward(LU_OP_LINEAR, (lu_tensor *[]){x, w, b}, 3, &y, 1, NULL);
        lu_tensor *dy = offset_by_one(7, 96, 153), *dx = empty(LU_F32, LU_SHAPE(7, 64));
        lu_tensor *dw = empty(LU_F32, LU_SHAPE(96, 64)), *db = empty(LU_F32, LU_SHAPE(96));
        snprintf(what, sizeof what, "linear %s backward, inputs one element into their storage", lu_dtype_name(dts[d]));
        kcase bk = {.op = LU_OP_LINEAR, .backward = true, .in = {dy, x, w, b, y}, .n_in = 5, .out = {dx, dw, db},
                    .n_out = 3, .dev_dt = dts[d], .tol = tol};
        check_case(&bk, what);
        release_all((lu_tensor *[]){x, w, bias, b, y, dy, dx, dw, db}, 9);
    }
}

/* ---- binary elementwise ---- */

static const lu_op binary_ops[4] = {LU_OP_ADD, LU_OP_SUB, LU_OP_MUL, LU_OP_DIV};

/* a and b (CPU, any layout) -> y; then the backward on the CPU's y. b is kept in [0.5, 2) by the
 * callers so that DIV is well conditioned. */
static void check_binary(lu_tensor *a, lu_tensor *b, int ndim, const int64_t *yshape, lu_dtype dev_dt, double tol,
                         const char *layout)
{
    for (int o = 0; o < 4; o++) {
        lu_op op = binary_ops[o];
        char what[128];
        lu_tensor *y = empty(LU_F32, ndim, yshape);
        snprintf(what, sizeof what, "%s %s forward, %s", lu_op_name(op), lu_dtype_name(dev_dt), layout);
        kcase f = {.op = op, .in = {a, b}, .n_in = 2, .out = {y}, .n_out = 1, .dev_dt = dev_dt, .tol = tol};
        check_case(&f, what);
        cpu_forward(op, (lu_tensor *[]){a, b}, 2, &y, 1, NULL);
        lu_tensor *dy = tu_rand(LU_F32, ndim, yshape, -1, 1, 40 + (uint64_t)o);
        lu_tensor *da = empty(LU_F32, a->ndim, a->shape), *db = empty(LU_F32, b->ndim, b->shape);
        snprintf(what, sizeof what, "%s %s backward, %s", lu_op_name(op), lu_dtype_name(dev_dt), layout);
        kcase k = {.op = op, .backward = true, .in = {dy, a, b, y}, .n_in = 4, .out = {da, db}, .n_out = 2,
                   .dev_dt = dev_dt, .tol = tol};
        check_case(&k, what);
        release_all((lu_tensor *[]){y, dy, da, db}, 4);
    }
}

Test(cuda, binary_ops_match_cpu_on_same_shape_inputs)
{
    require_gpu();
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(3, 5, 67), -2, 2, 50), *b = tu_rand(LU_F32, LU_SHAPE(3, 5, 67), 0.5, 2, 51);
    check_binary(a, b, 3, (int64_t[]){3, 5, 67}, LU_F32, TOL_F32, "same shape");
    release_all((lu_tensor *[]){a, b}, 2);
}

/* 960 elements: the kernels' eight-elements-a-thread path (the others above have odd sizes). */
Test(cuda, binary_ops_match_cpu_eight_elements_a_thread)
{
    require_gpu();
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(4, 6, 40), -2, 2, 58), *b = tu_rand(LU_F32, LU_SHAPE(4, 6, 40), 0.5, 2, 59);
    check_binary(a, b, 3, (int64_t[]){4, 6, 40}, LU_F32, TOL_F32, "same shape, 8 a thread");
    check_binary(a, b, 3, (int64_t[]){4, 6, 40}, LU_BF16, TOL_BF16, "same shape, 8 a thread");
    release_all((lu_tensor *[]){a, b}, 2);
}

Test(cuda, binary_ops_match_cpu_on_broadcast_inputs)
{
    require_gpu();
    /* a [3,1,5] against b [4,1]: y [3,4,5], both inputs broadcast, b of lower rank. */
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(3, 1, 5), -2, 2, 52), *b = tu_rand(LU_F32, LU_SHAPE(4, 1), 0.5, 2, 53);
    check_binary(a, b, 3, (int64_t[]){3, 4, 5}, LU_F32, TOL_F32, "broadcast");
    release_all((lu_tensor *[]){a, b}, 2);
}

Test(cuda, binary_ops_match_cpu_on_strided_inputs)
{
    require_gpu();
    /* a is a transposed view, b a row broadcast over a size-1 leading dim. */
    lu_tensor *base = tu_rand(LU_F32, LU_SHAPE(5, 2, 7), -2, 2, 54);
    lu_tensor *a = lu_transpose(base, 0, 2);
    lu_tensor *b = tu_rand(LU_F32, LU_SHAPE(1, 2, 5), 0.5, 2, 55);
    check_binary(a, b, 3, (int64_t[]){7, 2, 5}, LU_F32, TOL_F32, "transposed and broadcast");
    release_all((lu_tensor *[]){base, a, b}, 3);
}

Test(cuda, binary_ops_bf16_within_bf16_rounding)
{
    require_gpu();
    lu_tensor *a = tu_rand(LU_F32, LU_SHAPE(9, 33), -2, 2, 56), *b = tu_rand(LU_F32, LU_SHAPE(33), 0.5, 2, 57);
    check_binary(a, b, 2, (int64_t[]){9, 33}, LU_BF16, TOL_BF16, "bf16 row broadcast");
    release_all((lu_tensor *[]){a, b}, 2);
}

/* ---- unary ---- */

typedef struct unary_case {
    lu_op op;
    double lo, hi;
    const void *params;
    const char *name;
} unary_case;

static void check_unary(const unary_case *u, lu_dtype dev_dt, double tol)
{
    int64_t shape[3] = {3, 7, 41};
    lu_tensor *x = tu_rand(LU_F32, 3, shape, u->lo, u->hi, 60 + (uint64_t)u->op);
    lu_tensor *y = empty(LU_F32, 3, shape);
    char what[96];
    snprintf(what, sizeof what, "%s %s forward", u->name, lu_dtype_name(dev_dt));
    kcase f = {.op = u->op, .params = u->params, .in = {x}, .n_in = 1, .out = {y}, .n_out = 1, .dev_dt = dev_dt,
               .tol = tol};
    check_case(&f, what);
    cpu_forward(u->op, &x, 1, &y, 1, u->params);
    lu_tensor *dy = tu_rand(LU_F32, 3, shape, -1, 1, 70 + (uint64_t)u->op), *dx = empty(LU_F32, 3, shape);
    snprintf(what, sizeof what, "%s %s backward", u->name, lu_dtype_name(dev_dt));
    kcase k = {.op = u->op, .backward = true, .params = u->params, .in = {dy, x, y}, .n_in = 3, .out = {dx},
               .n_out = 1, .dev_dt = dev_dt, .tol = tol};
    check_case(&k, what);
    release_all((lu_tensor *[]){x, y, dy, dx}, 4);
}

static const lu_affine_params affine = {-1.5, 0.25};
static const lu_gelu_params gelu_exact = {false}, gelu_tanh = {true};
static const unary_case unary_cases[] = {
    {LU_OP_AFFINE, -3, 3, &affine, "affine"},         {LU_OP_EXP, -3, 3, NULL, "exp"},
    {LU_OP_LOG, 0.1, 5, NULL, "log"},                 {LU_OP_TANH, -3, 3, NULL, "tanh"},
    {LU_OP_SIGMOID, -6, 6, NULL, "sigmoid"},          {LU_OP_RELU, -3, 3, NULL, "relu"},
    {LU_OP_SILU, -6, 6, NULL, "silu"},                {LU_OP_GELU, -4, 4, &gelu_exact, "gelu exact"},
    {LU_OP_GELU, -4, 4, &gelu_tanh, "gelu tanh"},     {LU_OP_SWOOSH_L, -8, 12, NULL, "swoosh_l"},
    {LU_OP_SWOOSH_R, -8, 12, NULL, "swoosh_r"},       {LU_OP_SQUARE, -3, 3, NULL, "square"},
    {LU_OP_SQRT, 0.1, 9, NULL, "sqrt"},
};

Test(cuda, unary_ops_match_cpu_forward_and_backward)
{
    require_gpu();
    for (size_t i = 0; i < sizeof unary_cases / sizeof unary_cases[0]; i++) check_unary(&unary_cases[i], LU_F32, TOL_F32);
}

Test(cuda, unary_ops_bf16_within_bf16_rounding)
{
    require_gpu();
    for (size_t i = 0; i < sizeof unary_cases / sizeof unary_cases[0]; i++) check_unary(&unary_cases[i], LU_BF16, TOL_BF16);
}

/* SWIGLU forward and backward (both gradients) as the CPU, f32 and bf16, on [rows, cols]. */
static void check_swiglu(int64_t rows, int64_t cols, lu_dtype dev_dt, double tol)
{
    int64_t shape[2] = {rows, cols};
    lu_tensor *g = tu_rand(LU_F32, 2, shape, -8, 8, 80), *u = tu_rand(LU_F32, 2, shape, -2, 2, 81);
    lu_tensor *y = empty(LU_F32, 2, shape);
    char what[64];
    snprintf(what, sizeof what, "swiglu [%lld, %lld] %s forward", (long long)rows, (long long)cols, lu_dtype_name(dev_dt));
    kcase f = {.op = LU_OP_SWIGLU, .in = {g, u}, .n_in = 2, .out = {y}, .n_out = 1, .dev_dt = dev_dt, .tol = tol};
    check_case(&f, what);
    cpu_forward(LU_OP_SWIGLU, (lu_tensor *[]){g, u}, 2, &y, 1, NULL);
    lu_tensor *dy = tu_rand(LU_F32, 2, shape, -1, 1, 82), *dg = empty(LU_F32, 2, shape), *du = empty(LU_F32, 2, shape);
    snprintf(what, sizeof what, "swiglu [%lld, %lld] %s backward", (long long)rows, (long long)cols, lu_dtype_name(dev_dt));
    kcase k = {.op = LU_OP_SWIGLU, .backward = true, .in = {dy, g, u, y}, .n_in = 4, .out = {dg, du}, .n_out = 2,
               .dev_dt = dev_dt, .tol = tol};
    check_case(&k, what);
    release_all((lu_tensor *[]){g, u, y, dy, dg, du}, 6);
}

/* [37, 129]: one element a thread; [24, 64]: eight. */
Test(cuda, swiglu_matches_cpu_forward_and_backward)
{
    require_gpu();
    check_swiglu(37, 129, LU_F32, TOL_F32);
    check_swiglu(24, 64, LU_F32, TOL_F32);
}

Test(cuda, swiglu_bf16_within_bf16_rounding)
{
    require_gpu();
    check_swiglu(37, 129, LU_BF16, TOL_BF16);
    check_swiglu(24, 64, LU_BF16, TOL_BF16);
}

Test(cuda, unsupported_dtype_names_op_and_dtype)
{
    require_gpu();
    lu_tensor *x = lu_tensor_zeros(LU_F64, LU_SHAPE(4), LU_CUDA), *y = lu_tensor_empty(LU_F64, LU_SHAPE(4), LU_CUDA);
    cr_assert(x && y, "%s", lu_error_message());
    cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_EXP, &x, 1, &y, 1, NULL), LU_ERR_DTYPE);
    tu_assert_error_contains("exp: dtype f64 is not supported by the cuda backend");
    release_all((lu_tensor *[]){x, y}, 2);
}

/* ---- softmax ---- */

static void check_softmax(lu_op op, int ndim, const int64_t *shape)
{
    lu_dim_params p = {ndim - 1};
    lu_tensor *x = tu_rand(LU_F32, ndim, shape, -8, 8, 80 + (uint64_t)op), *y = empty(LU_F32, ndim, shape);
    char what[96];
    snprintf(what, sizeof what, "%s forward, last dim %lld", lu_op_name(op), (long long)shape[ndim - 1]);
    kcase f = {.op = op, .params = &p, .in = {x}, .n_in = 1, .out = {y}, .n_out = 1, .dev_dt = LU_F32, .tol = TOL_F32};
    check_case(&f, what);
    cpu_forward(op, &x, 1, &y, 1, &p);
    lu_tensor *dy = tu_rand(LU_F32, ndim, shape, -1, 1, 90), *dx = empty(LU_F32, ndim, shape);
    snprintf(what, sizeof what, "%s backward, last dim %lld", lu_op_name(op), (long long)shape[ndim - 1]);
    kcase k = {.op = op, .backward = true, .params = &p, .in = {dy, x, y}, .n_in = 3, .out = {dx}, .n_out = 1,
               .dev_dt = LU_F32, .tol = TOL_F32};
    check_case(&k, what);
    release_all((lu_tensor *[]){x, y, dy, dx}, 4);
}

Test(cuda, softmax_matches_cpu_on_short_and_long_rows)
{
    require_gpu();
    check_softmax(LU_OP_SOFTMAX, 2, (int64_t[]){5, 7});
    check_softmax(LU_OP_SOFTMAX, 3, (int64_t[]){3, 2, 1029});
}

Test(cuda, log_softmax_matches_cpu_on_short_and_long_rows)
{
    require_gpu();
    check_softmax(LU_OP_LOG_SOFTMAX, 2, (int64_t[]){5, 7});
    check_softmax(LU_OP_LOG_SOFTMAX, 3, (int64_t[]){3, 2, 1029});
}

Test(cuda, softmax_over_an_inner_dim_is_unsupported)
{
    require_gpu();
    lu_tensor *x = lu_tensor_zeros(LU_F32, LU_SHAPE(3, 4), LU_CUDA), *y = lu_tensor_empty(LU_F32, LU_SHAPE(3, 4), LU_CUDA);
    lu_dim_params p = {0};
    cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_SOFTMAX, &x, 1, &y, 1, &p), LU_ERR_UNSUPPORTED);
    tu_assert_error_contains("only the last dim");
    release_all((lu_tensor *[]){x, y}, 2);
}

/* ---- rmsnorm ---- */

/* x [rows, d] (released here), weight [d] or none; in bf16, x, weight, y and their gradients are
 * bf16 on the device while rstd stays f32. */
static void check_rmsnorm_of(lu_tensor *x, bool with_weight, lu_dtype dev_dt, double tol)
{
    lu_norm_params p = {1e-5};
    int64_t rows = x->shape[0], d = x->shape[1];
    lu_tensor *w = with_weight ? tu_rand(LU_F32, LU_SHAPE(d), 0.5, 1.5, 101) : NULL;
    lu_tensor *y = empty(LU_F32, LU_SHAPE(rows, d)), *rstd = empty(LU_F32, LU_SHAPE(rows));
    char what[96];
    snprintf(what, sizeof what, "rmsnorm [%lld, %lld] %s %s weight forward", (long long)rows, (long long)d,
             lu_dtype_name(dev_dt), with_weight ? "with" : "without");
    kcase f = {.op = LU_OP_RMSNORM, .params = &p, .in = {x, w}, .n_in = 2, .out = {y, rstd}, .n_out = 2,
               .dev_dt = dev_dt, .keep_f32_out = 1u << 1, .tol = tol};
    check_case(&f, what);
    cpu_forward(LU_OP_RMSNORM, (lu_tensor *[]){x, w}, 2, (lu_tensor *[]){y, rstd}, 2, &p);
    lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(rows, d), -1, 1, 102), *dx = empty(LU_F32, LU_SHAPE(rows, d));
    lu_tensor *dw = with_weight ? empty(LU_F32, LU_SHAPE(d)) : NULL;
    snprintf(what, sizeof what, "rmsnorm [%lld, %lld] %s %s weight backward", (long long)rows, (long long)d,
             lu_dtype_name(dev_dt), with_weight ? "with" : "without");
    kcase k = {.op = LU_OP_RMSNORM, .backward = true, .params = &p, .in = {dy, NULL, x, w, y, rstd}, .n_in = 6,
               .out = {dx, dw}, .n_out = 2, .dev_dt = dev_dt, .keep_f32_in = 1u << 5, .tol = tol};
    check_case(&k, what);
    release_all((lu_tensor *[]){x, w, y, rstd, dy, dx, dw}, 7);
}

static void check_rmsnorm(int64_t rows, int64_t d, bool with_weight, lu_dtype dev_dt, double tol)
{
    check_rmsnorm_of(tu_rand(LU_F32, LU_SHAPE(rows, d), -2, 2, 100), with_weight, dev_dt, tol);
}

Test(cuda, rmsnorm_with_weight_matches_cpu) { require_gpu(); check_rmsnorm(18, 67, true, LU_F32, TOL_F32); }
Test(cuda, rmsnorm_without_weight_matches_cpu) { require_gpu(); check_rmsnorm(18, 67, false, LU_F32, TOL_F32); }
Test(cuda, rmsnorm_bf16_within_bf16_rounding) { require_gpu(); check_rmsnorm(18, 67, true, LU_BF16, TOL_BF16); }
/* The weight gradient's column sum over 69 chunks of 16 rows: more chunks than stage 2's block
 * is high, and a partial second block of columns. */
Test(cuda, rmsnorm_weight_gradient_over_many_rows_matches_cpu)
{
    require_gpu();
    check_rmsnorm(1100, 40, true, LU_F32, TOL_F32);
}

/* Rows of whole 16-byte vectors up to 8192 elements are held in registers by groups of lanes:
 * d = 8 (one lane a row, 256 rows a block), 128 (16 lanes, 16 rows a block), 1024 (a warp, 4
 * vectors a lane, 8 rows a block), 2048 (two warps a row), 8192 (the whole block a row), 40, 384
 * and 1032 (idle lanes and vectors; 1032 takes two warps of 3 vectors); rows not a multiple of the
 * block's. 8200 is past the register path: one warp a row. */
Test(cuda, rmsnorm_rows_in_registers_match_cpu)
{
    require_gpu();
    const int64_t ds[9] = {8, 128, 1024, 40, 384, 2048, 1032, 8192, 8200};
    for (int i = 0; i < 9; i++) {
        check_rmsnorm(37, ds[i], true, LU_F32, TOL_F32);
        check_rmsnorm(37, ds[i], false, LU_F32, TOL_F32);
        check_rmsnorm(37, ds[i], true, LU_BF16, TOL_BF16);
        check_rmsnorm(3, ds[i], false, LU_BF16, TOL_BF16);
    }
}

/* x one element into its storage: not 16-byte aligned, the one-warp-a-row kernels. */
Test(cuda, rmsnorm_unaligned_rows_match_cpu)
{
    require_gpu();
    check_rmsnorm_of(offset_by_one(37, 128, 103), true, LU_F32, TOL_F32);
    check_rmsnorm_of(offset_by_one(37, 128, 103), true, LU_BF16, TOL_BF16);
}

/* The weight gradient of rows in registers: 16421 rows of d = 128 fill the 1024 blocks' 16 slots
 * and wrap around, so each block's partial row covers two passes; without dx, and bit-identical
 * when run twice. */
Test(cuda, rmsnorm_weight_gradient_of_rows_in_registers_matches_cpu)
{
    require_gpu();
    const lu_dtype dts[2] = {LU_F32, LU_BF16};
    for (int i = 0; i < 2; i++) {
        lu_norm_params p = {1e-5};
        int64_t rows = 16421, d = 128;
        lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(rows, d), -2, 2, 104), *w = tu_rand(LU_F32, LU_SHAPE(d), 0.5, 1.5, 105);
        lu_tensor *y = empty(LU_F32, LU_SHAPE(rows, d)), *rstd = empty(LU_F32, LU_SHAPE(rows));
        lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(rows, d), -1, 1, 106), *dw = empty(LU_F32, LU_SHAPE(d));
        if (dts[i] == LU_BF16) {
            round_to_bf16(x);
            round_to_bf16(w);
        }
        cpu_forward(LU_OP_RMSNORM, (lu_tensor *[]){x, w}, 2, (lu_tensor *[]){y, rstd}, 2, &p);
        kcase k = {.op = LU_OP_RMSNORM, .backward = true, .params = &p, .in = {dy, NULL, x, w, y, rstd}, .n_in = 6,
                   .out = {NULL, dw}, .n_out = 2, .dev_dt = dts[i], .keep_f32_in = 1u << 5,
                   .tol = dts[i] == LU_BF16 ? TOL_BF16 : TOL_F32};
        check_case(&k, dts[i] == LU_BF16 ? "rmsnorm bf16 weight gradient alone" : "rmsnorm f32 weight gradient alone");
        check_deterministic(&k, "rmsnorm weight gradient");
        release_all((lu_tensor *[]){x, w, y, rstd, dy, dw}, 6);
    }
}

/* The gradient through the aux output rstd: dx gains -x rstd^3 / d * drstd on both backends. */
static void check_rmsnorm_drstd(int64_t rows, int64_t d, lu_dtype dev_dt, double tol)
{
    lu_norm_params p = {1e-5};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(rows, d), -2, 2, 107), *w = tu_rand(LU_F32, LU_SHAPE(d), 0.5, 1.5, 108);
    lu_tensor *y = empty(LU_F32, LU_SHAPE(rows, d)), *rstd = empty(LU_F32, LU_SHAPE(rows));
    lu_tensor *dy = tu_rand(LU_F32, LU_SHAPE(rows, d), -1, 1, 109), *drstd = tu_rand(LU_F32, LU_SHAPE(rows), -1, 1, 110);
    lu_tensor *dx = empty(LU_F32, LU_SHAPE(rows, d)), *dw = empty(LU_F32, LU_SHAPE(d));
    if (dev_dt == LU_BF16) {
        round_to_bf16(x);
        round_to_bf16(w);
        round_to_bf16(dy);
    }
    cpu_forward(LU_OP_RMSNORM, (lu_tensor *[]){x, w}, 2, (lu_tensor *[]){y, rstd}, 2, &p);
    lu_tensor *in[6] = {dy, drstd, x, w, y, rstd}, *out[2] = {dx, dw};
    cr_assert_eq(run_kernel(LU_CPU, true, LU_OP_RMSNORM, in, 6, out, 2, &p), LU_OK, "%s", lu_error_message());
    lu_tensor *din[6], *dout[2];
    for (int i = 0; i < 6; i++) din[i] = to_device(in[i], i == 1 || i == 5 ? LU_F32 : dev_dt);
    for (int j = 0; j < 2; j++) dout[j] = to_device(out[j], dev_dt);
    cr_assert_eq(run_kernel(LU_CUDA, true, LU_OP_RMSNORM, din, 6, dout, 2, &p), LU_OK, "%s", lu_error_message());
    char what[96];
    snprintf(what, sizeof what, "rmsnorm [%lld, %lld] %s with drstd, dx", (long long)rows, (long long)d,
             lu_dtype_name(dev_dt));
    assert_nmse(dout[0], dx, tol, what);
    snprintf(what, sizeof what, "rmsnorm [%lld, %lld] %s with drstd, dweight", (long long)rows, (long long)d,
             lu_dtype_name(dev_dt));
    assert_nmse(dout[1], dw, tol, what);
    release_all(din, 6);
    release_all(dout, 2);
    release_all((lu_tensor *[]){x, w, y, rstd, dy, drstd, dx, dw}, 8);
}

Test(cuda, rmsnorm_drstd_adds_the_gradient_through_rstd)
{
    require_gpu();
    check_rmsnorm_drstd(37, 128, LU_F32, TOL_F32);   /* rows in registers */
    check_rmsnorm_drstd(37, 1024, LU_BF16, TOL_BF16);
    check_rmsnorm_drstd(37, 2048, LU_BF16, TOL_BF16); /* two warps a row */
    check_rmsnorm_drstd(18, 67, LU_F32, TOL_F32);    /* one warp a row */
}

/* ---- layernorm rows in registers (test_cuda_loss.c checks the one-warp-a-row kernels) ---- */

/* x [rows, d]; in bf16, x, weight, bias, y and their gradients are bf16 on the device while mean
 * and rstd stay f32. */
static void check_layernorm_rows(int64_t rows, int64_t d, bool affine, lu_dtype dev_dt, double tol)
{
    lu_norm_params p = {1e-5};
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(rows, d), -2, 3, 120);
    lu_tensor *w = affine ? tu_rand(LU_F32, LU_SHAPE(d), 0.5, 1.5, 121) : NULL;
    lu_tensor *b = affine ? tu_rand(LU_F32, LU_SHAPE(d), -1, 1, 122) : NULL;
    lu_tensor *y = empty(LU_F32, LU_SHAPE(rows, d)), *mean = empty(LU_F32, LU_SHAPE(rows));
    lu_tensor *rstd = empty(LU_F32, LU_SHAPE(rows)), *dy = tu_rand(LU_F32, LU_SHAPE(rows, d), -1, 1, 123);
    lu_tensor *dx = empty(LU_F32, LU_SHAPE(rows, d));
    lu_tensor *dw = affine ? empty(LU_F32, LU_SHAPE(d)) : NULL, *db = affine ? empty(LU_F32, LU_SHAPE(d)) : NULL;
    if (dev_dt == LU_BF16) {
        round_to_bf16(x);
        round_to_bf16(w);
        round_to_bf16(b);
    }
    cpu_forward(LU_OP_LAYERNORM, (lu_tensor *[]){x, w, b}, 3, (lu_tensor *[]){y, mean, rstd}, 3, &p);
    char what[128];
    snprintf(what, sizeof what, "layernorm [%lld, %lld] %s %s, backward", (long long)rows, (long long)d,
             lu_dtype_name(dev_dt), affine ? "affine" : "plain");
    kcase k = {.op = LU_OP_LAYERNORM, .backward = true, .params = &p, .in = {dy, NULL, NULL, x, w, b, y, mean, rstd},
               .n_in = 9, .out = {dx, dw, db}, .n_out = 3, .dev_dt = dev_dt, .keep_f32_in = 3u << 7, .tol = tol};
    check_case(&k, what);
    if (affine) check_deterministic(&k, what);
    kcase only_db = k;
    only_db.out[0] = only_db.out[1] = NULL;
    if (affine) check_case(&only_db, "layernorm, dbias alone");
    release_all((lu_tensor *[]){x, w, b, y, mean, rstd, dy, dx, dw, db}, 10);
}

/* The ASR models' d = 256, 384, 512 in f32, d = 8, 1024 and 2048 (two warps a row), rows not a
 * multiple of the block's; 8237 rows of d = 256 fill the 1024 blocks' 8 slots and wrap around. */
Test(cuda, layernorm_rows_in_registers_match_cpu)
{
    require_gpu();
    const int64_t ds[6] = {256, 384, 512, 8, 1024, 2048};
    for (int i = 0; i < 6; i++) {
        check_layernorm_rows(37, ds[i], true, LU_F32, TOL_F32);
        check_layernorm_rows(37, ds[i], false, LU_F32, TOL_F32);
        check_layernorm_rows(37, ds[i], true, LU_BF16, TOL_BF16);
    }
    check_layernorm_rows(8237, 256, true, LU_F32, TOL_F32);
}

/* ---- adamw ---- */

Test(cuda, adamw_updates_param_and_moments_as_the_cpu)
{
    require_gpu();
    lu_adamw_params p = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1, .step = 3};
    lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(1001), -1, 1, 110), *g = tu_rand(LU_F32, LU_SHAPE(1001), -1, 1, 111);
    lu_tensor *m = tu_rand(LU_F32, LU_SHAPE(1001), -0.1, 0.1, 112), *v = tu_rand(LU_F32, LU_SHAPE(1001), 0, 0.01, 113);
    kcase k = {.op = LU_OP_ADAMW, .inplace = true, .params = &p, .in = {w, g, m, v}, .n_in = 4, .n_out = 0,
               .dev_dt = LU_F32, .tol = TOL_F32};
    check_case(&k, "adamw step 3");
    release_all((lu_tensor *[]){w, g, m, v}, 4);
}

Test(cuda, scaled_adam_updates_param_and_state_as_the_cpu)
{
    require_gpu();
    /* A size-update step with clipped gradients, then a clamped scalar-style step with zeroed ones. */
    const lu_scaled_adam_params ps[2] = {
        {.grad_scale = 0.7, .lr = 3e-2, .factor = 0.05, .inv_bc2 = 1 / 0.3, .scale_step = -0.02, .clamp = 10,
         .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8, .size_update = true},
        {.grad_scale = 0, .lr = 3e-3, .factor = 1, .inv_bc2 = 1, .clamp = 0.5, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8,
         .clamped = true},
    };
    for (int k = 0; k < 2; k++) {
        lu_tensor *w = tu_rand(LU_F32, LU_SHAPE(1001), -1, 1, 120), *g = tu_rand(LU_F32, LU_SHAPE(1001), -1, 1, 121);
        lu_tensor *d = tu_rand(LU_F32, LU_SHAPE(1001), -0.1, 0.1, 122), *v = tu_rand(LU_F32, LU_SHAPE(1001), 0, 0.01, 123);
        kcase c = {.op = LU_OP_SCALED_ADAM, .inplace = true, .params = &ps[k], .in = {w, g, d, v}, .n_in = 4, .n_out = 0,
                   .dev_dt = LU_F32, .tol = TOL_F32};
        check_case(&c, k ? "scaled_adam, zeroed gradients, clamped" : "scaled_adam, size update");
        release_all((lu_tensor *[]){w, g, d, v}, 4);
    }
}

Test(cuda, scaled_adam_stats_sum_in_double_as_the_cpu)
{
    require_gpu();
    /* Sizes below one block, across the two-stage grid, and at its cap. */
    const int64_t sizes[3] = {1, 70001, 3000017};
    for (int k = 0; k < 3; k++) {
        lu_tensor *w = tu_rand(LU_F32, 1, &sizes[k], -1, 1, 130), *g = tu_rand(LU_F32, 1, &sizes[k], -2, 2, 131);
        lu_tensor *out = empty(LU_F64, 1, (int64_t[]){3}), *in[2] = {w, g};
        lu_tensor *din[2] = {to_device(w, LU_F32), to_device(g, LU_F32)};
        lu_tensor *dout = lu_tensor_empty(LU_F64, 1, (int64_t[]){3}, LU_CUDA);
        cr_assert(dout, "%s", lu_error_message());
        cr_assert_eq(run_kernel(LU_CPU, false, LU_OP_SCALED_ADAM_STATS, in, 2, &out, 1, NULL), LU_OK, "%s",
                     lu_error_message());
        cr_assert_eq(run_kernel(LU_CUDA, false, LU_OP_SCALED_ADAM_STATS, din, 2, &dout, 1, NULL), LU_OK, "%s",
                     lu_error_message());
        /* Products of floats are exact in double: only the summation order differs. The CPU
         * adds in sequence (relative error up to about n eps: 1.1e-12 at n = 3M against a long
         * double sum), the GPU by a tree; a float accumulator would be off by 1e-7. */
        tu_assert_tensors_close(dout, out, 0, 1e-10, "scaled_adam_stats");
        release_all((lu_tensor *[]){w, g, out, din[0], din[1], dout}, 6);
    }
}

/* A GPU that the build has no code for (a node of another generation than the build's
 * CMAKE_CUDA_ARCHITECTURES) is refused when the backend starts, with the flag to rebuild with,
 * rather than at the first op's launch. Played by the emulator; on a GPU, whose code is there,
 * the backend has just started. */
Test(cuda, a_gpu_without_code_in_the_build_is_refused_with_the_rebuild_flag)
{
#ifdef LU_CUDA_EMU
    setenv("LU_EMU_NO_KERNEL_IMAGE", "1", 1);
    cr_assert(!lu_device_available(LU_CUDA), "the backend started without code for the GPU");
    const char *why = lu_cuda_unavailable_reason();
    cr_assert(strstr(why, "no code for GPU 0 (compute capability 9.0") && strstr(why, "-DCMAKE_CUDA_ARCHITECTURES=90"),
              "%s", why);
#else
    require_gpu();
    cr_assert_eq(lu_cuda_probe_launch(), cudaSuccess);
#endif
}

/* NCCL on the GPU through the backend's comm entries, as core/dist.c calls them. NCCL refuses two
 * ranks on one GPU, so what a one-GPU machine can run is a communicator of one rank: the library
 * loads, makes a unique id and a communicator, and sums each float dtype in place on device memory
 * (over one rank: the values stay); other dtypes and a rank outside the communicator are refused
 * with a message. test_dist.c runs two ranks where there are two GPUs, and on the emulator. */
Test(cuda, nccl_communicator_of_one_rank_sums_in_place)
{
    require_gpu();
#ifndef LUTHIER_HAVE_NCCL
    cr_skip_test("luthier was built without NCCL");
#else
    lu_backend *b = lu_backend_get(LU_CUDA);
    cr_assert(b && b->comm_id && b->comm_init && b->comm_all_reduce_sum && b->comm_free, "no NCCL communicator entries");
    char id[4096];
    cr_assert(b->comm_id_size <= sizeof id, "unique id of %zu bytes", b->comm_id_size);
    cr_assert_eq(b->comm_id(id), LU_OK, "%s", lu_error_message());
    void *comm = NULL;
    cr_assert_neq(b->comm_init(&comm, id, 1, 1), LU_OK, "rank 1 of 1 accepted");
    cr_assert(strstr(lu_error_message(), "rank 1"), "%s", lu_error_message());
    cr_assert_eq(b->comm_init(&comm, id, 0, 1), LU_OK, "%s", lu_error_message());
    const lu_dtype dts[3] = {LU_F32, LU_BF16, LU_F64};
    for (int i = 0; i < 3; i++) {
        lu_tensor *h = tu_rand(LU_F32, LU_SHAPE(100003), -3, 3, 140 + i), *d = to_device(h, dts[i]);
        lu_tensor *want = lu_tensor_convert(d, dts[i], LU_CPU);
        cr_assert(want, "%s", lu_error_message());
        cr_assert_eq(b->comm_all_reduce_sum(comm, lu_tensor_data(d), dts[i], (size_t)lu_tensor_numel(d)), LU_OK,
                     "%s all-reduce: %s", lu_dtype_name(dts[i]), lu_error_message());
        tu_assert_tensors_close(d, want, 0, 0, lu_dtype_name(dts[i]));
        release_all((lu_tensor *[]){h, d, want}, 3);
    }
    lu_tensor *ints = lu_tensor_empty(LU_I32, 1, (int64_t[]){4}, LU_CUDA);
    cr_assert(ints, "%s", lu_error_message());
    cr_assert_neq(b->comm_all_reduce_sum(comm, lu_tensor_data(ints), LU_I32, 4), LU_OK, "an i32 all-reduce ran");
    cr_assert(strstr(lu_error_message(), lu_dtype_name(LU_I32)), "%s", lu_error_message());
    lu_tensor_release(ints);
    b->comm_free(comm);
#endif
}

#else

Test(cuda, skipped_without_cuda) { cr_skip_test("built without LUTHIER_CUDA"); }

#endif
