/* bench.c - `luthier bench ops`: CPU figures for matmul and attention (GFLOP/s) and for
 * memory-bound ops (GB/s), each beside a reference measured in the same run and the ratio:
 * matmul against OpenBLAS's own sgemm, attention against the unfused BLAS formulation
 * (scores GEMM, softmax, output GEMM), memory-bound ops against memcpy. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/rng.h"
#include "experiments/runner/cli.h"

double lu_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int lu_bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median seconds of repeated calls (at least 5, about 0.5 s in all) after one warm-up. */
typedef int (*bench_fn)(void *ctx);
static double time_it(bench_fn fn, void *ctx, lu_arena *arena)
{
    double times[64];
    int n = 0;
    double start = lu_bench_now();
    lu_arena_reset(arena);
    if (fn(ctx)) return NAN;
    while (n < 64 && (n < 5 || lu_bench_now() - start < 0.5)) {
        lu_arena_reset(arena);
        double t0 = lu_bench_now();
        if (fn(ctx)) return NAN;
        times[n++] = lu_bench_now() - t0;
    }
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && times[j] < times[j - 1]; j--) {
            double t = times[j];
            times[j] = times[j - 1];
            times[j - 1] = t;
        }
    return times[n / 2];
}

static lu_tensor *rand_tensor(int ndim, const int64_t *shape, uint32_t op)
{
    lu_tensor *t = lu_tensor_empty(LU_F32, ndim, shape, LU_CPU);
    if (t) lu_tensor_rand_uniform(t, -1, 1, 1, op);
    return t;
}

/* ---- matmul ---- */
typedef struct mm_ctx { lu_tensor *a, *b; int64_t n; } mm_ctx;
static int mm_ours(void *p)
{
    mm_ctx *c = p;
    return lu_matmul(c->a, c->b, false, false) == NULL;
}
static int mm_ref(void *p)
{
    mm_ctx *c = p;
    static float *out;
    static int64_t cap;
    if (cap < c->n * c->n) {
        free(out);
        out = malloc(sizeof(float) * (size_t)(c->n * c->n));
        cap = c->n * c->n;
    }
    int n = (int)c->n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, lu_tensor_data(c->a), n, lu_tensor_data(c->b), n,
                0, out, n);
    return 0;
}

/* ---- attention ---- */
typedef struct att_ctx { lu_tensor *q, *k, *v; int64_t B, T, H, D; bool causal; float *scratch; } att_ctx;
static int att_ours(void *p)
{
    att_ctx *c = p;
    lu_attention_opts o = {.causal = c->causal};
    return lu_attention(c->q, c->k, c->v, &o) == NULL;
}
/* Unfused reference: per (batch, head) S = QK^T (sgemm), row softmax, O = SV (sgemm), on
 * head-major copies. */
static int att_ref(void *p)
{
    att_ctx *c = p;
    int64_t B = c->B, T = c->T, H = c->H, D = c->D;
    const float *q = lu_tensor_data(c->q), *k = lu_tensor_data(c->k), *v = lu_tensor_data(c->v);
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            int tid = omp_get_thread_num();
            float *qh = c->scratch + (size_t)tid * (size_t)(3 * T * D + T * T + T * D);
            float *kh = qh + T * D, *vh = kh + T * D, *s = vh + T * D, *o = s + T * T;
            for (int64_t t = 0; t < T; t++)
                for (int64_t d = 0; d < D; d++) {
                    size_t src = (size_t)(((b * T + t) * H + h) * D + d);
                    qh[t * D + d] = q[src];
                    kh[t * D + d] = k[src];
                    vh[t * D + d] = v[src];
                }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)D, scale, qh, (int)D, kh, (int)D, 0, s,
                        (int)T);
            for (int64_t i = 0; i < T; i++) {
                float *row = s + i * T, mx = -INFINITY, z = 0;
                int64_t n = c->causal ? i + 1 : T;
                for (int64_t j = 0; j < n; j++) mx = row[j] > mx ? row[j] : mx;
                for (int64_t j = 0; j < n; j++) z += row[j] = expf(row[j] - mx);
                for (int64_t j = 0; j < n; j++) row[j] /= z;
                for (int64_t j = n; j < T; j++) row[j] = 0;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)D, (int)T, 1, s, (int)T, vh, (int)D, 0, o,
                        (int)D);
        }
    return 0;
}

/* ---- memory-bound ---- */
typedef struct mem_ctx { lu_tensor *x, *y, *w; const char *op; float *dst; } mem_ctx;
static int mem_ours(void *p)
{
    mem_ctx *c = p;
    lu_tensor *r = NULL;
    if (!strcmp(c->op, "add")) r = lu_add(c->x, c->y);
    else if (!strcmp(c->op, "mul")) r = lu_mul(c->x, c->y);
    else if (!strcmp(c->op, "silu")) r = lu_silu(c->x);
    else if (!strcmp(c->op, "rmsnorm")) r = lu_rmsnorm(c->x, c->w, 1e-6);
    else if (!strcmp(c->op, "softmax")) r = lu_softmax(c->x, -1);
    return r == NULL;
}
static int mem_ref(void *p)
{
    mem_ctx *c = p;
    memcpy(c->dst, lu_tensor_data(c->x), lu_tensor_nbytes(c->x));
    return 0;
}

static void row(const char *name, const char *unit, double ours, double ref, const char *ref_name)
{
    printf("| %-34s | %10.1f %-6s | %10.1f %-6s | %-22s | %5.2f |\n", name, ours, unit, ref, unit, ref_name, ours / ref);
}

static int bench_ops(void)
{
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    if (!arena) return 1;
    lu_grad_set_enabled(false);
    printf("luthier bench ops: CPU, %d OpenMP threads, OpenBLAS %d threads\n\n", omp_get_max_threads(),
           openblas_get_num_threads());
    printf("| %-34s | %-17s | %-17s | %-22s | %-5s |\n", "case", "luthier", "reference", "reference is", "ratio");
    printf("|%s|%s|%s|%s|%s|\n", "------------------------------------", "-------------------", "-------------------",
           "------------------------", "-------");
    int64_t sizes[] = {256, 1024};
    for (int i = 0; i < 2; i++) {
        int64_t n = sizes[i];
        mm_ctx c = {rand_tensor(LU_SHAPE(n, n), 1), rand_tensor(LU_SHAPE(n, n), 2), n};
        if (!c.a || !c.b) return 1;
        lu_arena *prev = lu_arena_activate(arena);
        double t = time_it(mm_ours, &c, arena), r = time_it(mm_ref, &c, arena);
        lu_arena_activate(prev);
        char name[64];
        snprintf(name, sizeof name, "matmul f32 %lld^3", (long long)n);
        double flop = 2.0 * (double)n * (double)n * (double)n;
        row(name, "GFLOP/s", flop / t * 1e-9, flop / r * 1e-9, "OpenBLAS sgemm");
        lu_tensor_release(c.a);
        lu_tensor_release(c.b);
    }
    struct { int64_t B, T, H, D; bool causal; } ac[] = {{4, 512, 8, 64, true}, {8, 256, 4, 64, false}};
    for (int i = 0; i < 2; i++) {
        att_ctx c = {.B = ac[i].B, .T = ac[i].T, .H = ac[i].H, .D = ac[i].D, .causal = ac[i].causal};
        c.q = rand_tensor(LU_SHAPE(c.B, c.T, c.H, c.D), 3);
        c.k = rand_tensor(LU_SHAPE(c.B, c.T, c.H, c.D), 4);
        c.v = rand_tensor(LU_SHAPE(c.B, c.T, c.H, c.D), 5);
        c.scratch = malloc(sizeof(float) * (size_t)omp_get_max_threads() * (size_t)(4 * c.T * c.D + c.T * c.T));
        if (!c.q || !c.k || !c.v || !c.scratch) return 1;
        lu_arena *prev = lu_arena_activate(arena);
        double t = time_it(att_ours, &c, arena), r = time_it(att_ref, &c, arena);
        lu_arena_activate(prev);
        double flop = 4.0 * (double)(c.B * c.H) * (double)c.T * (double)c.T * (double)c.D * (c.causal ? 0.5 : 1.0);
        char name[64];
        snprintf(name, sizeof name, "attention B%lld T%lld H%lld d%lld %s", (long long)c.B, (long long)c.T,
                 (long long)c.H, (long long)c.D, c.causal ? "causal" : "full");
        row(name, "GFLOP/s", flop / t * 1e-9, flop / r * 1e-9, "BLAS QK^T+softmax+PV");
        lu_tensor_release(c.q);
        lu_tensor_release(c.k);
        lu_tensor_release(c.v);
        free(c.scratch);
    }
    int64_t rows = 4096, cols = 1024;
    const char *ops[] = {"add", "mul", "silu", "rmsnorm", "softmax"};
    int tensors_moved[] = {3, 3, 2, 2, 2};
    mem_ctx m = {rand_tensor(LU_SHAPE(rows, cols), 6), rand_tensor(LU_SHAPE(rows, cols), 7), rand_tensor(LU_SHAPE(cols), 8),
                 NULL, malloc(sizeof(float) * (size_t)(rows * cols))};
    if (!m.x || !m.y || !m.w || !m.dst) return 1;
    double bytes1 = (double)(rows * cols) * 4;
    lu_arena *prev = lu_arena_activate(arena);
    double r = time_it(mem_ref, &m, arena);
    for (int i = 0; i < 5; i++) {
        m.op = ops[i];
        double t = time_it(mem_ours, &m, arena);
        char name[64];
        snprintf(name, sizeof name, "%s f32 [%lld, %lld]", ops[i], (long long)rows, (long long)cols);
        row(name, "GB/s", tensors_moved[i] * bytes1 / t * 1e-9, 2 * bytes1 / r * 1e-9, "memcpy (read+write)");
    }
    lu_arena_activate(prev);
    printf("\nFLOP counts: matmul 2n^3; attention 4*B*H*T^2*d (halved when causal). GB/s counts each input and\n"
           "output tensor once. Figures are medians of repeated runs after a warm-up.\n");
    lu_tensor_release(m.x);
    lu_tensor_release(m.y);
    lu_tensor_release(m.w);
    free(m.dst);
    lu_arena_free(arena);
    return 0;
}

bool lu_bench_int_arg(const char *bench, const char *flag, const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "luthier bench %s: %s needs an integer in [%lld, %lld], got '%s'\n", bench, flag, lo, hi, v ? v : "");
        return false;
    }
    *out = x;
    return true;
}

int lu_cli_bench(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout, "usage: luthier bench ops | luthier bench lm [--layers N ...] (lm --help)\n"
                                            "     | luthier bench asr [--seconds S ...] (asr --help)\n"
                                            "     | luthier bench sft [--layers N ...] (sft --help)\n"
                                            "     | luthier bench merge [--dir DIR ...] (merge --help)\n"
                                            "     | luthier bench gpu [--case NAME ...] (gpu --help)\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "ops")) return bench_ops();
    if (!strcmp(argv[1], "lm")) return lu_bench_lm(argc - 1, argv + 1);
    if (!strcmp(argv[1], "asr")) return lu_bench_asr(argc - 1, argv + 1);
    if (!strcmp(argv[1], "sft")) return lu_bench_sft(argc - 1, argv + 1);
    if (!strcmp(argv[1], "merge")) return lu_bench_merge(argc - 1, argv + 1);
    if (!strcmp(argv[1], "gpu")) return lu_bench_gpu(argc - 1, argv + 1);
    fprintf(stderr, "luthier bench: unknown benchmark '%s' (known: ops, lm, asr, sft, merge, gpu)\n", argv[1]);
    return 2;
}
