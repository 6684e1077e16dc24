/* bench_gpu.c - `luthier bench gpu`: the CUDA backend's fused attention (bf16), depthwise conv1d
 * (kernel 31, stride 1 and 2), Zipformer's downsampling, the biased linear layer (bf16 and f32),
 * the products of a Qwen3-0.6B SFT step (bf16, no bias) and Qwen3's RMSNorm at the hidden sizes of
 * the 0.6B and 1.7B models beside PyTorch on the same GPU, shapes
 * and dtypes, measured in the same run by scripts/bench_gpu_reference.py, and the ratio (issue 7).
 * Kernel variants are timed beside the defaults: the linear without its cuBLASLt epilogues
 * (LUTHIER_CUBLASLT=0), the attention on mma.sync where the default is wgmma (LUTHIER_ATT_WGMMA=0,
 * a Hopper GPU; elsewhere, or with LUTHIER_ATT_WGMMA=0 set, the forward with 16 query rows a
 * warp, LUTHIER_ATT_ROWS_PER_WARP=16, and the backward's wider tilings,
 * LUTHIER_ATT_DKDV_KEYS=128 and LUTHIER_ATT_DQ_ROWS_PER_WARP=32), the depthwise forward and
 * stride-1 dx on the FMA units (LUTHIER_DW_MMA=0) where the default is the tensor cores, and
 * RMSNorm's rows of 2048 in one warp each (LUTHIER_NORM_MULTIWARP_ROWS=0).
 *
 * Our kernels are called through the CUDA backend's op table on tensors allocated beforehand
 * (forward; forward then backward, with kernel scratch from an arena), and timed as the script
 * times PyTorch: WARMUP calls, one call timed to size the samples, then the median over --iters
 * samples of back-to-back calls (as many as fill MIN_SAMPLE_S) between two CUDA events, divided
 * by the calls. Without LUTHIER_CUDA or without a GPU it says why and exits 0. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "core/arena.h"
#include "core/backend.h"
#include "core/rng.h"
#include "experiments/runner/cli.h"
#ifdef LUTHIER_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#define REFERENCE_SCRIPT "scripts/bench_gpu_reference.py"
#define WARMUP 3
#define MIN_SAMPLE_S 2e-3
#define MAX_REPS 1000
#define MAX_ITERS 1000

typedef enum case_kind { CASE_ATTENTION, CASE_CONV, CASE_DOWNSAMPLE, CASE_LINEAR, CASE_GEMM, CASE_RMSNORM } case_kind;

/* One case; names and shapes are the reference script's. */
typedef struct gpu_case {
    const char *name;
    case_kind kind;
    int64_t b, t;
    int64_t hq, hkv, d; /* attention: query heads, key/value heads, head dim */
    bool causal;
    int64_t c;          /* conv1d, downsample: channels; linear, gemm: input features; rmsnorm: d */
    int k, stride;      /* conv1d: kernel (padding k/2) and stride; downsample: k = factor */
    int64_t out;        /* linear, gemm: output features (rows: b * t) */
    const char *what;
} gpu_case;

static const gpu_case cases[] = {
    {.name = "attn-qwen3-t2048", .kind = CASE_ATTENTION, .b = 8, .t = 2048, .hq = 16, .hkv = 8, .d = 128, .causal = true,
     .what = "attention (Qwen3-0.6B), B 8, T 2048, 16 q / 8 kv heads, d 128, causal, bf16"},
    {.name = "attn-qwen3-t8192", .kind = CASE_ATTENTION, .b = 4, .t = 8192, .hq = 16, .hkv = 8, .d = 128, .causal = true,
     .what = "attention (Qwen3-0.6B), B 4, T 8192, 16 q / 8 kv heads, d 128, causal, bf16"},
    {.name = "attn-zipformer", .kind = CASE_ATTENTION, .b = 32, .t = 512, .hq = 4, .hkv = 4, .d = 64,
     .what = "attention (Zipformer-like), B 32, T 512, 4 heads, d 64, not causal, bf16"},
    {.name = "dwconv-k31", .kind = CASE_CONV, .b = 32, .t = 500, .c = 384, .k = 31, .stride = 1,
     .what = "depthwise conv1d (Conformer/Zipformer module), x [32, 384, 500], kernel 31, padding 15, bias"},
    {.name = "dwconv-k31-s2", .kind = CASE_CONV, .b = 32, .t = 500, .c = 384, .k = 31, .stride = 2,
     .what = "the same depthwise conv1d with stride 2 (downsampling conv, T 500 -> 250)"},
    {.name = "downsample-x2", .kind = CASE_DOWNSAMPLE, .b = 32, .t = 500, .c = 384, .k = 2,
     .what = "Zipformer SimpleDownsample (DOWNSAMPLE op), factor 2, x [B 32, T 500, C 384] -> [32, 250, 384]"},
    {.name = "linear-256-1024", .kind = CASE_LINEAR, .b = 32, .t = 500, .c = 256, .out = 1024,
     .what = "biased linear (LINEAR op; Zipformer feed-forward in), x [32*500 = 16000, 256] -> [16000, 1024]"},
    {.name = "linear-1024-256", .kind = CASE_LINEAR, .b = 32, .t = 500, .c = 1024, .out = 256,
     .what = "biased linear (feed-forward out), x [16000, 1024] -> [16000, 256]"},
    {.name = "gemm-qwen3-up", .kind = CASE_GEMM, .b = 8, .t = 2048, .c = 1024, .out = 3072,
     .what = "Qwen3-0.6B SFT product (MATMUL op, no bias, bf16): gate/up projection, x [8*2048 = 16384, 1024] -> "
             "[16384, 3072]"},
    {.name = "gemm-qwen3-down", .kind = CASE_GEMM, .b = 8, .t = 2048, .c = 3072, .out = 1024,
     .what = "Qwen3-0.6B down projection, x [16384, 3072] -> [16384, 1024], bf16"},
    {.name = "gemm-qwen3-lmhead", .kind = CASE_GEMM, .b = 8, .t = 2048, .c = 1024, .out = 151936,
     .what = "Qwen3-0.6B LM head, x [16384, 1024] -> logits [16384, 151936], bf16"},
    {.name = "rmsnorm-qwen3-0.6b", .kind = CASE_RMSNORM, .b = 8, .t = 2048, .c = 1024,
     .what = "RMSNorm with weight, eps 1e-6 (Qwen3-0.6B's hidden size), x [8*2048 = 16384, 1024]"},
    {.name = "rmsnorm-qwen3-1.7b", .kind = CASE_RMSNORM, .b = 8, .t = 2048, .c = 2048,
     .what = "the same at Qwen3-1.7B's hidden size, x [16384, 2048]"},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

typedef struct gpu_bench_opts {
    const char *only; /* a case name, or NULL for all */
    int iters;
    const char *python;
    bool reference;
} gpu_bench_opts;

static void usage(FILE *f)
{
    fprintf(f, "usage: luthier bench gpu [--case NAME|all] [--iters N] [--python PY] [--no-reference]\n"
               "  The CUDA backend's attention, depthwise conv1d, downsampling, biased linear, Qwen3 matmul\n"
               "  and RMSNorm kernels (forward, and forward + backward) beside PyTorch on the same GPU and shapes\n"
               "  (PY " REFERENCE_SCRIPT "), and the ratio; the linear also without its cuBLASLt epilogues\n"
               "  (LUTHIER_CUBLASLT=0), the attention also on mma.sync (LUTHIER_ATT_WGMMA=0) where the default\n"
               "  is wgmma (a Hopper GPU), elsewhere (or with LUTHIER_ATT_WGMMA=0 set) its forward with 16\n"
               "  query rows a warp instead of 32 (LUTHIER_ATT_ROWS_PER_WARP=16) and its forward + backward\n"
               "  with the backward's variant kernels (LUTHIER_ATT_DKDV_KEYS=128,\n"
               "  LUTHIER_ATT_DQ_ROWS_PER_WARP=32), the depthwise conv also with its forward and stride-1 dx\n"
               "  on the FMA units (LUTHIER_DW_MMA=0) where the default is the tensor cores, RMSNorm at d 2048\n"
               "  also one warp a row (LUTHIER_NORM_MULTIWARP_ROWS=0).\n"
               "  --case NAME    one case (default all):");
    for (int i = 0; i < N_CASES; i++) fprintf(f, " %s", cases[i].name);
    fprintf(f, "\n"
               "  --iters N      timed samples per figure; the median is reported (default 10)\n"
               "  --python PY    interpreter that can import torch (default python3)\n"
               "  --no-reference skip PyTorch\n");
}

#ifdef LUTHIER_HAVE_CUDA

#define N_REF 2 /* attention: PyTorch flash and cuDNN; the other cases: PyTorch in slot 0 */
#define MAX_ROWS (2 * N_CASES)
#define WHY_LEN 256

/* One case in one dtype: figures in seconds per call, [0] forward, [1] forward + backward. */
typedef struct gpu_result {
    const gpu_case *c;
    lu_dtype dt;
    double ours[2];
    double variant[2];             /* ours again: linear with LUTHIER_CUBLASLT=0, attention with its
                                      variant kernels (time_attention) */
    char why[WHY_LEN];             /* why ours is missing; "" when measured */
    char fused_note[WHY_LEN];      /* linear: when cuBLASLt refused an epilogue, "" otherwise */
    double ref[N_REF][2];
    char ref_why[N_REF][WHY_LEN];  /* why a reference is missing; "" when measured */
    char note[N_REF][128];         /* how the reference ran, when it matters (GQA) */
} gpu_result;

static int n_refs(const gpu_case *c) { return c->kind == CASE_ATTENTION ? 2 : 1; }

/* The reference's "impl" in the script's JSON, and how the report names it. */
static const char *ref_name(const gpu_case *c, int i)
{
    if (c->kind != CASE_ATTENTION) return "torch";
    return i == 0 ? "flash" : "cudnn";
}

static const char *ref_label(const gpu_case *c, int i)
{
    if (c->kind != CASE_ATTENTION) return "PyTorch";
    return i == 0 ? "PyTorch flash" : "PyTorch cuDNN";
}

/* FlashAttention's count: 4*B*H*T^2*d for the forward, halved when causal; 3.5x for fwd+bwd. */
static double attention_flop(const gpu_case *c, int pass)
{
    double f = 4.0 * (double)(c->b * c->hq) * (double)c->t * (double)c->t * (double)c->d * (c->causal ? 0.5 : 1.0);
    return pass ? 3.5 * f : f;
}

/* 2*M*N*K for the forward GEMM; fwd+bwd adds the dx and dw GEMMs (the bias terms are not counted). */
static double linear_flop(const gpu_case *c, int pass)
{
    double f = 2.0 * (double)(c->b * c->t) * (double)c->c * (double)c->out;
    return pass ? 3.0 * f : f;
}

static int64_t conv_out_len(const gpu_case *c) { return (c->t + 2 * (c->k / 2) - c->k) / c->stride + 1; }

/* Bytes that a pass must read and write at least once: the forward reads x, w, bias and writes y;
 * the backward reads dy, x, w and writes dx, dw, dbias (downsample has no w; its bias is [f];
 * rmsnorm has no bias, and its f32 rstd, written forward and read backward, is not counted). */
static double pass_bytes(const gpu_case *c, lu_dtype dt, int pass)
{
    double es = (double)lu_dtype_size(dt), x = (double)(c->b * c->c * c->t), w = 0, bias, y;
    if (c->kind == CASE_RMSNORM) {
        w = (double)c->c;
        bias = 0;
        y = x;
    } else if (c->kind == CASE_CONV) {
        w = (double)(c->c * c->k);
        bias = (double)c->c;
        y = (double)(c->b * c->c * conv_out_len(c));
    } else {
        bias = (double)c->k;
        y = (double)(c->b * c->c * ((c->t + c->k - 1) / c->k));
    }
    double fwd = x + w + bias + y, bwd = y + x + w + x + w + bias;
    return es * (pass ? fwd + bwd : fwd);
}

/* ---- our side: op calls on preallocated tensors ---- */

#define MAX_TENSORS 12

typedef struct op_bench {
    lu_device dev;
    lu_backend *be;
    lu_op_call fwd, bwd;
    union {
        lu_attention_params att;
        lu_conv1d_params conv;
        lu_resample_params rs;
        lu_matmul_params mm;
        lu_norm_params norm;
    } p;
    lu_tensor *t[MAX_TENSORS];
    int n;
} op_bench;

/* A tensor of dt on o's device, owned by o: values U(-1, 1) drawn on the host when random, else
 * uninitialised. */
static lu_tensor *bench_tensor(op_bench *o, lu_dtype dt, int ndim, const int64_t *shape, bool random)
{
    if (o->n == MAX_TENSORS) {
        lu_errorf(LU_ERR_INVALID, "bench gpu: more than %d tensors", MAX_TENSORS);
        return NULL;
    }
    lu_tensor *t = NULL;
    if (random) {
        lu_tensor *h = lu_tensor_empty(LU_F32, ndim, shape, LU_CPU);
        if (h && lu_tensor_rand_uniform(h, -1, 1, 1, (uint32_t)o->n) == LU_OK) t = lu_tensor_convert(h, dt, o->dev);
        lu_tensor_release(h);
    } else {
        t = lu_tensor_empty(dt, ndim, shape, o->dev);
    }
    if (t) o->t[o->n++] = t;
    return t;
}

/* q, k, v [B,T,H,d] as lu_attention passes them; in = [q, k, v, mask, cu_seqlens], out = [o, lse];
 * backward in = [dO, dlse, q, k, v, mask, cu_seqlens, o, lse], out = [dq, dk, dv, -, -]. */
static lu_status setup_attention(op_bench *o, const gpu_case *c, lu_dtype dt)
{
    int64_t B = c->b, T = c->t, Hq = c->hq, Hkv = c->hkv, D = c->d;
    lu_tensor *q = bench_tensor(o, dt, LU_SHAPE(B, T, Hq, D), true);
    lu_tensor *k = bench_tensor(o, dt, LU_SHAPE(B, T, Hkv, D), true);
    lu_tensor *v = bench_tensor(o, dt, LU_SHAPE(B, T, Hkv, D), true);
    lu_tensor *out = bench_tensor(o, dt, LU_SHAPE(B, T, Hq, D), false);
    lu_tensor *lse = bench_tensor(o, LU_F32, LU_SHAPE(B, Hq, T), false);
    lu_tensor *dout = bench_tensor(o, dt, LU_SHAPE(B, T, Hq, D), true);
    lu_tensor *dq = bench_tensor(o, dt, LU_SHAPE(B, T, Hq, D), false);
    lu_tensor *dk = bench_tensor(o, dt, LU_SHAPE(B, T, Hkv, D), false);
    lu_tensor *dv = bench_tensor(o, dt, LU_SHAPE(B, T, Hkv, D), false);
    if (o->n != 9) return lu_error_code();
    o->p.att = (lu_attention_params){.causal = c->causal, .scale = 1.0 / sqrt((double)D)};
    o->fwd = (lu_op_call){.op = LU_OP_ATTENTION, .in = {q, k, v, NULL, NULL}, .n_in = 5, .out = {out, lse}, .n_out = 2,
                          .params = &o->p};
    o->bwd = (lu_op_call){.op = LU_OP_ATTENTION, .in = {dout, NULL, q, k, v, NULL, NULL, out, lse}, .n_in = 9,
                          .out = {dq, dk, dv, NULL, NULL}, .n_out = 5, .params = &o->p};
    return LU_OK;
}

/* Depthwise: x [B,C,T], w [C,1,K], bias [C]; in = [x, w, bias], out = [y]; backward in = [dy, x, w,
 * bias, y], out = [dx, dw, dbias]. */
static lu_status setup_conv(op_bench *o, const gpu_case *c, lu_dtype dt)
{
    int64_t B = c->b, C = c->c, T = c->t, K = c->k, To = conv_out_len(c);
    lu_tensor *x = bench_tensor(o, dt, LU_SHAPE(B, C, T), true);
    lu_tensor *w = bench_tensor(o, dt, LU_SHAPE(C, 1, K), true);
    lu_tensor *bias = bench_tensor(o, dt, LU_SHAPE(C), true);
    lu_tensor *y = bench_tensor(o, dt, LU_SHAPE(B, C, To), false);
    lu_tensor *dy = bench_tensor(o, dt, LU_SHAPE(B, C, To), true);
    lu_tensor *dx = bench_tensor(o, dt, LU_SHAPE(B, C, T), false);
    lu_tensor *dw = bench_tensor(o, dt, LU_SHAPE(C, 1, K), false);
    lu_tensor *db = bench_tensor(o, dt, LU_SHAPE(C), false);
    if (o->n != 8) return lu_error_code();
    o->p.conv = (lu_conv1d_params){.stride = c->stride, .padding = c->k / 2, .dilation = 1, .groups = (int)C};
    o->fwd = (lu_op_call){.op = LU_OP_CONV1D, .in = {x, w, bias}, .n_in = 3, .out = {y}, .n_out = 1, .params = &o->p};
    o->bwd = (lu_op_call){.op = LU_OP_CONV1D, .in = {dy, x, w, bias, y}, .n_in = 5, .out = {dx, dw, db}, .n_out = 3,
                          .params = &o->p};
    return LU_OK;
}

/* x [B,T,C], bias [f]; in = [x, bias], out = [y]; backward in = [dy, x, bias, y], out = [dx, dbias]. */
static lu_status setup_downsample(op_bench *o, const gpu_case *c, lu_dtype dt)
{
    int64_t B = c->b, T = c->t, C = c->c, F = c->k, To = (T + F - 1) / F;
    lu_tensor *x = bench_tensor(o, dt, LU_SHAPE(B, T, C), true);
    lu_tensor *bias = bench_tensor(o, dt, LU_SHAPE(F), true);
    lu_tensor *y = bench_tensor(o, dt, LU_SHAPE(B, To, C), false);
    lu_tensor *dy = bench_tensor(o, dt, LU_SHAPE(B, To, C), true);
    lu_tensor *dx = bench_tensor(o, dt, LU_SHAPE(B, T, C), false);
    lu_tensor *db = bench_tensor(o, dt, LU_SHAPE(F), false);
    if (o->n != 6) return lu_error_code();
    o->p.rs = (lu_resample_params){.dim = 1, .factor = c->k};
    o->fwd = (lu_op_call){.op = LU_OP_DOWNSAMPLE, .in = {x, bias}, .n_in = 2, .out = {y}, .n_out = 1, .params = &o->p};
    o->bwd = (lu_op_call){.op = LU_OP_DOWNSAMPLE, .in = {dy, x, bias, y}, .n_in = 4, .out = {dx, db}, .n_out = 2,
                          .params = &o->p};
    return LU_OK;
}

/* x [M,K], w [N,K], bias [N] (M = B*T rows); in = [x, w, bias], out = [y]; backward in = [dy, x,
 * w, bias, y], out = [dx, dw, dbias]. */
static lu_status setup_linear(op_bench *o, const gpu_case *c, lu_dtype dt)
{
    int64_t M = c->b * c->t, K = c->c, N = c->out;
    lu_tensor *x = bench_tensor(o, dt, LU_SHAPE(M, K), true);
    lu_tensor *w = bench_tensor(o, dt, LU_SHAPE(N, K), true);
    lu_tensor *bias = bench_tensor(o, dt, LU_SHAPE(N), true);
    lu_tensor *y = bench_tensor(o, dt, LU_SHAPE(M, N), false);
    lu_tensor *dy = bench_tensor(o, dt, LU_SHAPE(M, N), true);
    lu_tensor *dx = bench_tensor(o, dt, LU_SHAPE(M, K), false);
    lu_tensor *dw = bench_tensor(o, dt, LU_SHAPE(N, K), false);
    lu_tensor *db = bench_tensor(o, dt, LU_SHAPE(N), false);
    if (o->n != 8) return lu_error_code();
    o->fwd = (lu_op_call){.op = LU_OP_LINEAR, .in = {x, w, bias}, .n_in = 3, .out = {y}, .n_out = 1};
    o->bwd = (lu_op_call){.op = LU_OP_LINEAR, .in = {dy, x, w, bias, y}, .n_in = 5, .out = {dx, dw, db}, .n_out = 3};
    return LU_OK;
}

/* x [1,M,K] times w [1,N,K] transposed (a linear layer without bias, as the decoder runs it);
 * backward in = [dy, x, w, y], out = [dx, dw]. */
static lu_status setup_gemm(op_bench *o, const gpu_case *c, lu_dtype dt)
{
    int64_t M = c->b * c->t, K = c->c, N = c->out;
    lu_tensor *x = bench_tensor(o, dt, LU_SHAPE(1, M, K), true);
    lu_tensor *w = bench_tensor(o, dt, LU_SHAPE(1, N, K), true);
    lu_tensor *y = bench_tensor(o, dt, LU_SHAPE(1, M, N), false);
    lu_tensor *dy = bench_tensor(o, dt, LU_SHAPE(1, M, N), true);
    lu_tensor *dx = bench_tensor(o, dt, LU_SHAPE(1, M, K), false);
    lu_tensor *dw = bench_tensor(o, dt, LU_SHAPE(1, N, K), false);
    if (o->n != 6) return lu_error_code();
    o->p.mm = (lu_matmul_params){.trans_a = false, .trans_b = true};
    o->fwd = (lu_op_call){.op = LU_OP_MATMUL, .in = {x, w}, .n_in = 2, .out = {y}, .n_out = 1, .params = &o->p};
    o->bwd = (lu_op_call){.op = LU_OP_MATMUL, .in = {dy, x, w, y}, .n_in = 4, .out = {dx, dw}, .n_out = 2,
                          .params = &o->p};
    return LU_OK;
}

/* x [M,d], w [d], rstd [M] in f32 (as lu_rmsnorm keeps it); in = [x, w], out = [y, rstd]; backward
 * in = [dy, drstd, x, w, y, rstd], out = [dx, dw]. */
static lu_status setup_rmsnorm(op_bench *o, const gpu_case *c, lu_dtype dt)
{
    int64_t M = c->b * c->t, D = c->c;
    lu_tensor *x = bench_tensor(o, dt, LU_SHAPE(M, D), true);
    lu_tensor *w = bench_tensor(o, dt, LU_SHAPE(D), true);
    lu_tensor *y = bench_tensor(o, dt, LU_SHAPE(M, D), false);
    lu_tensor *rstd = bench_tensor(o, LU_F32, LU_SHAPE(M), false);
    lu_tensor *dy = bench_tensor(o, dt, LU_SHAPE(M, D), true);
    lu_tensor *dx = bench_tensor(o, dt, LU_SHAPE(M, D), false);
    lu_tensor *dw = bench_tensor(o, dt, LU_SHAPE(D), false);
    if (o->n != 7) return lu_error_code();
    o->p.norm = (lu_norm_params){.eps = 1e-6};
    o->fwd = (lu_op_call){.op = LU_OP_RMSNORM, .in = {x, w}, .n_in = 2, .out = {y, rstd}, .n_out = 2, .params = &o->p};
    o->bwd = (lu_op_call){.op = LU_OP_RMSNORM, .in = {dy, NULL, x, w, y, rstd}, .n_in = 6, .out = {dx, dw}, .n_out = 2,
                          .params = &o->p};
    return LU_OK;
}

static lu_status op_call(const op_bench *o, bool backward)
{
    LU_TRY(o->be->forward[o->fwd.op](&o->fwd));
    return backward ? o->be->backward[o->bwd.op](&o->bwd) : LU_OK;
}

/* Seconds of `reps` back-to-back calls between two events; the arena is rewound before each
 * call (the default stream orders its reuse after the previous call's kernels). */
static lu_status sample(const op_bench *o, bool backward, int reps, lu_arena *arena, cudaEvent_t ev[2], double *seconds)
{
    LU_CUDA_CHECK(cudaEventRecord(ev[0], 0));
    for (int i = 0; i < reps; i++) {
        lu_arena_reset(arena);
        LU_TRY(op_call(o, backward));
    }
    LU_CUDA_CHECK(cudaEventRecord(ev[1], 0));
    LU_CUDA_CHECK(cudaEventSynchronize(ev[1]));
    LU_TRY(o->be->synchronize()); /* surfaces a kernel fault here rather than later */
    float ms = 0;
    LU_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
    *seconds = 1e-3 * ms;
    return LU_OK;
}

/* Median seconds per call (see the file comment), or a message in why. */
static lu_status time_call(const op_bench *o, bool backward, int iters, double *seconds, char *why)
{
    double samples[MAX_ITERS], first = 0;
    cudaEvent_t ev[2] = {NULL, NULL};
    lu_arena *arena = lu_arena_new(o->dev, 0);
    lu_status s = arena ? LU_OK : lu_error_code();
    cudaError_t e = cudaSuccess;
    if (!s && (e = cudaEventCreate(&ev[0])) == cudaSuccess) e = cudaEventCreate(&ev[1]);
    if (e != cudaSuccess) s = lu_cuda_fail(e, __FILE__, __LINE__, "cudaEventCreate");
    lu_arena *prev = lu_arena_activate(arena);
    for (int i = 0; i < WARMUP && !s; i++) {
        lu_arena_reset(arena);
        s = op_call(o, backward);
    }
    if (!s) s = o->be->synchronize();
    if (!s) s = sample(o, backward, 1, arena, ev, &first);
    double want = first > 0 ? ceil(MIN_SAMPLE_S / first) : MAX_REPS;
    int reps = want < 1 ? 1 : want > MAX_REPS ? MAX_REPS : (int)want;
    for (int i = 0; i < iters && !s; i++) {
        s = sample(o, backward, reps, arena, ev, &samples[i]);
        samples[i] /= reps;
    }
    /* Kept before the clean-up, which may record errors of its own after a kernel fault. */
    if (s) snprintf(why, WHY_LEN, "%s", lu_error_message());
    lu_arena_activate(prev);
    lu_arena_free(arena);
    for (int i = 0; i < 2; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    if (s) return s;
    qsort(samples, (size_t)iters, sizeof samples[0], lu_bench_cmp_double);
    *seconds = samples[iters / 2];
    return LU_OK;
}

/* An environment variable set for a while (the backend reads these at each call), then put back
 * as the caller had it. */
typedef struct env_keep {
    const char *var;
    bool had;
    char value[64];
} env_keep;

static env_keep env_push(const char *var, const char *value)
{
    env_keep k = {.var = var};
    const char *v = getenv(var);
    if (v) {
        k.had = true;
        snprintf(k.value, sizeof k.value, "%s", v);
    }
    if (value) setenv(var, value, 1);
    else unsetenv(var);
    return k;
}

static void env_pop(const env_keep *k)
{
    if (k->had) setenv(k->var, k->value, 1);
    else unsetenv(k->var);
}

/* The linear's two paths, switched by LUTHIER_CUBLASLT (cuda/linear.c). One untimed call counts
 * the GEMMs that ran with a cuBLASLt epilogue (one forward, two with the backward): where cuBLASLt
 * refused one, the fused figure is kept with a note that part of it ran unfused. */
static lu_status time_linear(const op_bench *o, gpu_result *r, int pass, int iters)
{
    env_keep k = env_push("LUTHIER_CUBLASLT", "1");
    int64_t before = lu_cuda_linear_fused_gemms(), want = pass ? 2 : 1;
    lu_status s = op_call(o, pass == 1);
    int64_t ran = lu_cuda_linear_fused_gemms() - before;
    if (s) snprintf(r->why, WHY_LEN, "%s", lu_error_message());
    else if (ran < want)
        snprintf(r->fused_note, WHY_LEN, "cuBLASLt ran %lld of the %lld epilogue GEMMs of a %s call: the rest of the "
                 "fused figure ran unfused", (long long)ran, (long long)want, pass ? "fwd+bwd" : "fwd");
    if (!s) s = time_call(o, pass == 1, iters, &r->ours[pass], r->why);
    env_pop(&k);
    if (!s) {
        fprintf(stderr, "luthier bench gpu: %s %s %s, unfused\n", r->c->name, lu_dtype_name(r->dt), pass ? "fwd+bwd" : "fwd");
        k = env_push("LUTHIER_CUBLASLT", "0");
        s = time_call(o, pass == 1, iters, &r->variant[pass], r->why);
        env_pop(&k);
    }
    return s;
}

/* Ours with the default kernels (every variable of vars[0, n) unset), then the variant: vars[i] set
 * to values[i] where that is not NULL. */
static lu_status time_variant(const op_bench *o, gpu_result *r, int pass, int iters, int n, const char *const *vars,
                              const char *const *values, const char *label)
{
    env_keep keep[4];
    for (int i = 0; i < n; i++) keep[i] = env_push(vars[i], NULL);
    lu_status s = time_call(o, pass == 1, iters, &r->ours[pass], r->why);
    if (!s) {
        for (int i = 0; i < n; i++)
            if (values[i]) setenv(vars[i], values[i], 1);
        fprintf(stderr, "luthier bench gpu: %s %s %s, %s\n", r->c->name, lu_dtype_name(r->dt), pass ? "fwd+bwd" : "fwd",
                label);
        s = time_call(o, pass == 1, iters, &r->variant[pass], r->why);
    }
    for (int i = n - 1; i >= 0; i--) env_pop(&keep[i]);
    return s;
}

/* The attention's kernel variants (cuda/attention_mma.cu, attention_wgmma.cu): the defaults (on a
 * Hopper GPU the wgmma kernels; elsewhere the forward with 32 query rows a warp, dK/dV with 64
 * keys a block, dQ with 16 query rows a warp), then on Hopper the mma.sync kernels
 * (LUTHIER_ATT_WGMMA=0), elsewhere 16 rows a warp for the forward and the backward's wider tilings
 * for forward + backward. LUTHIER_ATT_WGMMA=0 in the environment ranks the mma.sync variants on
 * Hopper too (it stays set for both figures). */
static lu_status time_attention(const op_bench *o, gpu_result *r, int pass, int iters)
{
    static const char *const vars[4] = {"LUTHIER_ATT_ROWS_PER_WARP", "LUTHIER_ATT_DKDV_KEYS",
                                        "LUTHIER_ATT_DQ_ROWS_PER_WARP", "LUTHIER_ATT_WGMMA"};
    static const char *const off[4] = {NULL, NULL, NULL, "0"}, *const rows16[3] = {"16", NULL, NULL},
                              *const wide[3] = {NULL, "128", "32"};
    if (lu_att_wgmma_usable()) return time_variant(o, r, pass, iters, 4, vars, off, "mma.sync");
    return time_variant(o, r, pass, iters, 3, vars, pass ? wide : rows16,
                        pass ? "the backward's wider tilings" : "16 rows a warp");
}

/* The depthwise conv with its forward and stride-1 dx on the tensor cores (the default), then on
 * the FMA units (cuda/conv.cu). */
static lu_status time_conv(const op_bench *o, gpu_result *r, int pass, int iters)
{
    static const char *const vars[1] = {"LUTHIER_DW_MMA"}, *const off[1] = {"0"};
    return time_variant(o, r, pass, iters, 1, vars, off, "on the FMA units");
}

/* RMSNorm: rows of more than 1024 elements in registers across warps (the default), then in one
 * warp a row (LUTHIER_NORM_MULTIWARP_ROWS=0, cuda/norm.cu); smaller rows take one path. */
static lu_status time_rmsnorm(const op_bench *o, gpu_result *r, int pass, int iters)
{
    static const char *const vars[1] = {"LUTHIER_NORM_MULTIWARP_ROWS"}, *const off[1] = {"0"};
    if (r->c->c <= 1024) return time_call(o, pass == 1, iters, &r->ours[pass], r->why);
    return time_variant(o, r, pass, iters, 1, vars, off, "one warp a row");
}

static void bench_ours(gpu_result *r, int iters)
{
    op_bench o = {.dev = LU_CUDA, .be = lu_backend_get(LU_CUDA)};
    lu_status s = o.be ? LU_OK : lu_error_code();
    if (!s) {
        if (r->c->kind == CASE_ATTENTION) s = setup_attention(&o, r->c, r->dt);
        else if (r->c->kind == CASE_CONV) s = setup_conv(&o, r->c, r->dt);
        else if (r->c->kind == CASE_LINEAR) s = setup_linear(&o, r->c, r->dt);
        else if (r->c->kind == CASE_GEMM) s = setup_gemm(&o, r->c, r->dt);
        else if (r->c->kind == CASE_RMSNORM) s = setup_rmsnorm(&o, r->c, r->dt);
        else s = setup_downsample(&o, r->c, r->dt);
    }
    if (!s && (!o.be->forward[o.fwd.op] || !o.be->backward[o.bwd.op]))
        s = lu_errorf(LU_ERR_UNSUPPORTED, "%s is not implemented on the cuda backend", lu_op_name(o.fwd.op));
    if (s) snprintf(r->why, WHY_LEN, "%s", lu_error_message());
    for (int pass = 0; pass < 2 && !s; pass++) {
        fprintf(stderr, "luthier bench gpu: %s %s %s\n", r->c->name, lu_dtype_name(r->dt), pass ? "fwd+bwd" : "fwd");
        if (r->c->kind == CASE_LINEAR) s = time_linear(&o, r, pass, iters);
        else if (r->c->kind == CASE_ATTENTION) s = time_attention(&o, r, pass, iters);
        else if (r->c->kind == CASE_CONV) s = time_conv(&o, r, pass, iters);
        else if (r->c->kind == CASE_RMSNORM) s = time_rmsnorm(&o, r, pass, iters);
        else s = time_call(&o, pass == 1, iters, &r->ours[pass], r->why);
    }
    for (int i = 0; i < o.n; i++) lu_tensor_release(o.t[i]);
}

/* ---- the reference ---- */

static void set_ref_why(gpu_result *r, int n, const char *why)
{
    for (int k = 0; k < n; k++)
        for (int i = 0; i < n_refs(r[k].c); i++) snprintf(r[k].ref_why[i], WHY_LEN, "%s", why);
}

/* One JSON line of the script: {"gpu", "torch"} into torch_desc, or one case/impl/dtype's figures
 * (impl and dtype "all" stand for every one of the case). */
static void reference_line(const cJSON *j, gpu_result *r, int n, char *torch_desc, size_t desc_size)
{
    const cJSON *gpu = cJSON_GetObjectItemCaseSensitive(j, "gpu"), *ver = cJSON_GetObjectItemCaseSensitive(j, "torch");
    if (cJSON_IsString(gpu) && cJSON_IsString(ver)) {
        snprintf(torch_desc, desc_size, "PyTorch %s on %s", ver->valuestring, gpu->valuestring);
        return;
    }
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "case"), *impl = cJSON_GetObjectItemCaseSensitive(j, "impl");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype"), *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *fwd = cJSON_GetObjectItemCaseSensitive(j, "fwd_s"), *both = cJSON_GetObjectItemCaseSensitive(j, "fwdbwd_s");
    const cJSON *note = cJSON_GetObjectItemCaseSensitive(j, "note");
    if (!cJSON_IsString(name) || !cJSON_IsString(impl) || !cJSON_IsString(dt)) return;
    for (int k = 0; k < n; k++) {
        if (strcmp(name->valuestring, r[k].c->name)) continue;
        if (strcmp(dt->valuestring, "all") && strcmp(dt->valuestring, lu_dtype_name(r[k].dt))) continue;
        for (int i = 0; i < n_refs(r[k].c); i++) {
            if (strcmp(impl->valuestring, "all") && strcmp(impl->valuestring, ref_name(r[k].c, i))) continue;
            if (cJSON_IsString(err)) {
                snprintf(r[k].ref_why[i], WHY_LEN, "%s", err->valuestring);
            } else if (cJSON_IsNumber(fwd) && cJSON_IsNumber(both) && fwd->valuedouble > 0 && both->valuedouble > 0) {
                r[k].ref[i][0] = fwd->valuedouble;
                r[k].ref[i][1] = both->valuedouble;
                r[k].ref_why[i][0] = 0;
                if (cJSON_IsString(note)) snprintf(r[k].note[i], sizeof r[k].note[i], "%s", note->valuestring);
            }
        }
    }
}

/* Runs the script for the cases of r and fills their references, or why each is missing. Lines
 * that are not JSON (warnings, a traceback) are kept: the last one explains a failure. */
static void run_reference(const gpu_bench_opts *o, gpu_result *r, int n, char *torch_desc, size_t desc_size)
{
    FILE *script = fopen(REFERENCE_SCRIPT, "r");
    if (!script) {
        set_ref_why(r, n, REFERENCE_SCRIPT " not found (run from the repository root)");
        return;
    }
    fclose(script);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s --case %s --iters %d 2>&1", o->python, REFERENCE_SCRIPT, o->only ? o->only : "all",
             o->iters);
    set_ref_why(r, n, "no result from " REFERENCE_SCRIPT);
    FILE *p = popen(cmd, "r");
    if (!p) {
        set_ref_why(r, n, "cannot start the python interpreter");
        return;
    }
    char line[4096], last[200] = "";
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        cJSON *j = line[0] == '{' ? cJSON_Parse(line) : NULL;
        if (j) reference_line(j, r, n, torch_desc, desc_size);
        else if (line[0]) snprintf(last, sizeof last, "%.199s", line);
        cJSON_Delete(j);
    }
    int status = pclose(p), rc = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (rc == 0) return;
    char why[WHY_LEN];
    /* sh exits with 127 when it cannot find the command. */
    if (rc == 127) snprintf(why, sizeof why, "%s not found", o->python);
    else snprintf(why, sizeof why, "%s failed (exit status %d): %s", o->python, rc, last);
    for (int k = 0; k < n; k++)
        for (int i = 0; i < n_refs(r[k].c); i++)
            if (!strncmp(r[k].ref_why[i], "no result", 9)) snprintf(r[k].ref_why[i], WHY_LEN, "%s", why);
}

/* ---- the report ---- */

static void cell(char *buf, size_t size, const char *fmt, double v, bool ok)
{
    if (ok) snprintf(buf, size, fmt, v);
    else snprintf(buf, size, "-");
}

static void attention_table(const gpu_result *r, int n)
{
    printf("| %-24s | %-7s | %12s | %12s | %13s | %5s | %13s | %5s |\n", "attention (TFLOP/s)", "pass", "ours",
           "variant", "PyTorch flash", "ratio", "PyTorch cuDNN", "ratio");
    printf("|--------------------------|---------|--------------|--------------|---------------|-------|---------------|"
           "-------|\n");
    for (int k = 0; k < n; k++) {
        if (r[k].c->kind != CASE_ATTENTION) continue;
        for (int pass = 0; pass < 2; pass++) {
            double flop = attention_flop(r[k].c, pass), ours = flop / r[k].ours[pass] * 1e-12;
            bool have = r[k].ours[pass] > 0;
            char o[32], v[32], f[32], fr[32], c[32], cr[32];
            cell(o, sizeof o, "%.1f", ours, have);
            cell(v, sizeof v, "%.1f", flop / r[k].variant[pass] * 1e-12, r[k].variant[pass] > 0);
            cell(f, sizeof f, "%.1f", flop / r[k].ref[0][pass] * 1e-12, !r[k].ref_why[0][0]);
            cell(fr, sizeof fr, "%.2f", r[k].ref[0][pass] / r[k].ours[pass], have && !r[k].ref_why[0][0]);
            cell(c, sizeof c, "%.1f", flop / r[k].ref[1][pass] * 1e-12, !r[k].ref_why[1][0]);
            cell(cr, sizeof cr, "%.2f", r[k].ref[1][pass] / r[k].ours[pass], have && !r[k].ref_why[1][0]);
            printf("| %-24s | %-7s | %12s | %12s | %13s | %5s | %13s | %5s |\n", r[k].c->name, pass ? "fwd+bwd" : "fwd",
                   o, v, f, fr, c, cr);
        }
    }
}

static void linear_table(const gpu_result *r, int n)
{
    printf("| %-16s | %-5s | %-7s | %8s | %7s | %10s | %7s | %10s | %9s | %5s | %9s |\n", "linear", "dtype", "pass",
           "fused us", "TFLOP/s", "unfused us", "TFLOP/s", "PyTorch us", "PyT. TF/s", "ratio", "unf/fused");
    printf("|------------------|-------|---------|----------|---------|------------|---------|------------|-----------|"
           "-------|-----------|\n");
    for (int k = 0; k < n; k++) {
        if (r[k].c->kind != CASE_LINEAR) continue;
        for (int pass = 0; pass < 2; pass++) {
            double flop = linear_flop(r[k].c, pass), ours = r[k].ours[pass], unf = r[k].variant[pass];
            double ref = r[k].ref[0][pass];
            bool have = ours > 0, have_unf = unf > 0, have_ref = !r[k].ref_why[0][0];
            char fu[32], ft[32], uu[32], ut[32], ru[32], rt[32], ra[32], uf[32];
            cell(fu, sizeof fu, "%.1f", 1e6 * ours, have);
            cell(ft, sizeof ft, "%.1f", flop / ours * 1e-12, have);
            cell(uu, sizeof uu, "%.1f", 1e6 * unf, have_unf);
            cell(ut, sizeof ut, "%.1f", flop / unf * 1e-12, have_unf);
            cell(ru, sizeof ru, "%.1f", 1e6 * ref, have_ref);
            cell(rt, sizeof rt, "%.1f", flop / ref * 1e-12, have_ref);
            cell(ra, sizeof ra, "%.2f", ref / ours, have && have_ref);
            cell(uf, sizeof uf, "%.2f", unf / ours, have && have_unf);
            printf("| %-16s | %-5s | %-7s | %8s | %7s | %10s | %7s | %10s | %9s | %5s | %9s |\n", r[k].c->name,
                   lu_dtype_name(r[k].dt), pass ? "fwd+bwd" : "fwd", fu, ft, uu, ut, ru, rt, ra, uf);
        }
    }
}

static void gemm_table(const gpu_result *r, int n)
{
    printf("| %-18s | %-7s | %9s | %7s | %10s | %9s | %5s |\n", "matmul (bf16)", "pass", "ours us", "TFLOP/s",
           "PyTorch us", "PyT. TF/s", "ratio");
    printf("|--------------------|---------|-----------|---------|------------|-----------|-------|\n");
    for (int k = 0; k < n; k++) {
        if (r[k].c->kind != CASE_GEMM) continue;
        for (int pass = 0; pass < 2; pass++) {
            double flop = linear_flop(r[k].c, pass), ours = r[k].ours[pass], ref = r[k].ref[0][pass];
            bool have = ours > 0, have_ref = !r[k].ref_why[0][0];
            char ou[32], ot[32], ru[32], rt[32], ra[32];
            cell(ou, sizeof ou, "%.1f", 1e6 * ours, have);
            cell(ot, sizeof ot, "%.1f", flop / ours * 1e-12, have);
            cell(ru, sizeof ru, "%.1f", 1e6 * ref, have_ref);
            cell(rt, sizeof rt, "%.1f", flop / ref * 1e-12, have_ref);
            cell(ra, sizeof ra, "%.2f", ref / ours, have && have_ref);
            printf("| %-18s | %-7s | %9s | %7s | %10s | %9s | %5s |\n", r[k].c->name, pass ? "fwd+bwd" : "fwd", ou, ot,
                   ru, rt, ra);
        }
    }
}

static void memory_table(const gpu_result *r, int n)
{
    printf("| %-24s | %-5s | %-7s | %8s | %9s | %10s | %10s | %10s | %5s |\n", "conv / downsample / norm", "dtype", "pass",
           "ours us", "ours GB/s", "variant us", "PyTorch us", "PyT. GB/s", "ratio");
    printf("|--------------------------|-------|---------|----------|-----------|------------|------------|------------|"
           "-------|\n");
    for (int k = 0; k < n; k++) {
        if (r[k].c->kind != CASE_CONV && r[k].c->kind != CASE_DOWNSAMPLE && r[k].c->kind != CASE_RMSNORM) continue;
        for (int pass = 0; pass < 2; pass++) {
            double bytes = pass_bytes(r[k].c, r[k].dt, pass), ours = r[k].ours[pass], ref = r[k].ref[0][pass];
            bool have = ours > 0, have_ref = !r[k].ref_why[0][0];
            char ou[32], og[32], vu[32], ru[32], rg[32], ra[32];
            cell(ou, sizeof ou, "%.1f", 1e6 * ours, have);
            cell(og, sizeof og, "%.0f", bytes / ours * 1e-9, have);
            cell(vu, sizeof vu, "%.1f", 1e6 * r[k].variant[pass], r[k].variant[pass] > 0);
            cell(ru, sizeof ru, "%.1f", 1e6 * ref, have_ref);
            cell(rg, sizeof rg, "%.0f", bytes / ref * 1e-9, have_ref);
            cell(ra, sizeof ra, "%.2f", ref / ours, have && have_ref);
            printf("| %-24s | %-5s | %-7s | %8s | %9s | %10s | %10s | %10s | %5s |\n", r[k].c->name,
                   lu_dtype_name(r[k].dt), pass ? "fwd+bwd" : "fwd", ou, og, vu, ru, rg, ra);
        }
    }
}

/* The rows of the cases asked for: attention in bf16, the others in bf16 and f32. */
static int select_rows(const gpu_bench_opts *o, gpu_result *r)
{
    int n = 0;
    memset(r, 0, MAX_ROWS * sizeof *r);
    for (int i = 0; i < N_CASES; i++) {
        if (o->only && strcmp(o->only, cases[i].name)) continue;
        r[n].c = &cases[i];
        r[n++].dt = LU_BF16;
        if (cases[i].kind != CASE_ATTENTION && cases[i].kind != CASE_GEMM) {
            r[n].c = &cases[i];
            r[n++].dt = LU_F32;
        }
    }
    return n;
}

static void report(const gpu_bench_opts *o, const gpu_result *r, int n, const char *gpu, const char *torch_desc)
{
    printf("luthier bench gpu: %s; %s\n\n", gpu, torch_desc);
    bool any_attention = false, any_memory = false, any_linear = false, any_gemm = false;
    for (int k = 0; k < n; k++) {
        if (r[k].c->kind == CASE_ATTENTION) any_attention = true;
        else if (r[k].c->kind == CASE_LINEAR) any_linear = true;
        else if (r[k].c->kind == CASE_GEMM) any_gemm = true;
        else any_memory = true;
    }
    if (any_attention) {
        attention_table(r, n);
        printf("\n");
    }
    if (any_memory) {
        memory_table(r, n);
        printf("\n");
    }
    if (any_linear) {
        linear_table(r, n);
        printf("\n");
    }
    if (any_gemm) {
        gemm_table(r, n);
        printf("\n");
    }
    printf("ratio = PyTorch time / ours (> 1: luthier is faster). Attention FLOP as FlashAttention counts them:\n"
           "4*B*H*T^2*d forward, halved when causal, fwd+bwd 3.5x the forward; ours: on Hopper wgmma,\n"
           "elsewhere the forward with 32 query rows a warp (FlashAttention-2's tiling), dK/dV with 64 keys\n"
           "a block and dQ with 16 rows a warp; variant: on Hopper mma.sync\n"
           "(LUTHIER_ATT_WGMMA=0), elsewhere fwd with 16 rows a warp (LUTHIER_ATT_ROWS_PER_WARP=16), fwd+bwd\n"
           "with dK/dV of 128 keys a block and dQ of 32 rows a warp (LUTHIER_ATT_DKDV_KEYS=128\n"
           "LUTHIER_ATT_DQ_ROWS_PER_WARP=32). GB/s:\n"
           "bytes each pass reads and writes once (forward x, w, bias, y; backward dy, x, w, dx, dw, dbias);\n"
           "conv: ours forward (f32 at stride 1 alone) and stride-1 dx on the tensor cores (f32 as three bf16\n"
           "parts a value), variant on the FMA units (LUTHIER_DW_MMA=0). RMSNorm:\n"
           "against F.rms_norm, rstd in f32 on our side; ours holds a row in registers (d 2048: two warps a\n"
           "row), variant: d 2048 in the one-warp-a-row kernels (LUTHIER_NORM_MULTIWARP_ROWS=0).\n"
           "Linear FLOP: 2*M*N*K forward, 3x for fwd+bwd (the dx and dw GEMMs); fused: the bias in the GEMM's\n"
           "cuBLASLt epilogue and its gradient in the dw GEMM's; unfused: LUTHIER_CUBLASLT=0 (GEMM into the\n"
           "bias rows, column-sum kernel); ratio = PyTorch / fused, unf/fused = unfused / fused time. Matmul:\n"
           "the same FLOP count, cuBLAS (cublasGemmStridedBatchedEx) against F.linear without bias. Per call:\n"
           "median of %d samples of back-to-back calls (>= %g ms each) after %d warm-up calls, CUDA events, on\n"
           "both sides. Ours: the CUDA backend's kernels through its op table on preallocated tensors. PyTorch:\n"
           "SDPA under sdpa_kernel(FLASH_ATTENTION / CUDNN_ATTENTION), F.conv1d (TF32 off), icefall's\n"
           "SimpleDownsample, F.linear (TF32 off), F.rms_norm; fwd under no_grad, fwd+bwd with\n"
           "torch.autograd.grad of every input.\n",
           o->iters, 1e3 * MIN_SAMPLE_S, WARMUP);
    for (int i = 0; i < N_CASES; i++)
        if (!o->only || !strcmp(o->only, cases[i].name)) printf("- %s: %s\n", cases[i].name, cases[i].what);
    for (int k = 0; k < n; k++) {
        if (r[k].why[0]) printf("ours %s %s: failed: %s\n", r[k].c->name, lu_dtype_name(r[k].dt), r[k].why);
        if (r[k].fused_note[0]) printf("ours %s %s: %s\n", r[k].c->name, lu_dtype_name(r[k].dt), r[k].fused_note);
        for (int i = 0; i < n_refs(r[k].c); i++) {
            if (r[k].ref_why[i][0])
                printf("%s %s %s: not measured: %s\n", ref_label(r[k].c, i), r[k].c->name, lu_dtype_name(r[k].dt),
                       r[k].ref_why[i]);
            else if (r[k].note[i][0])
                printf("%s %s: %s\n", ref_label(r[k].c, i), r[k].c->name, r[k].note[i]);
        }
    }
}

static int bench_gpu(const gpu_bench_opts *o)
{
    if (!lu_device_available(LU_CUDA)) {
        printf("luthier bench gpu: skipped: no CUDA GPU (%s)\n", lu_cuda_unavailable_reason());
        return 0;
    }
    gpu_result r[MAX_ROWS];
    int n = select_rows(o, r);
    bool failed = false;
    for (int k = 0; k < n; k++) {
        bench_ours(&r[k], o->iters);
        failed |= r[k].why[0] != 0;
    }
    char torch_desc[256] = "PyTorch: not run (--no-reference)", gpu[320];
    if (o->reference) {
        snprintf(torch_desc, sizeof torch_desc, "PyTorch: no version reported");
        run_reference(o, r, n, torch_desc, sizeof torch_desc);
    } else {
        set_ref_why(r, n, "not requested (--no-reference)");
    }
    lu_bench_gpu_name(gpu, sizeof gpu);
    report(o, r, n, gpu, torch_desc);
    return failed ? 1 : 0;
}

#endif

int lu_bench_gpu(int argc, char **argv)
{
    gpu_bench_opts o = {.iters = 10, .python = "python3", .reference = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-reference")) {
            o.reference = false;
        } else if (!strcmp(a, "--case")) {
            bool known = v && !strcmp(v, "all");
            for (int k = 0; v && k < N_CASES && !known; k++) known = !strcmp(v, cases[k].name);
            if (!known) {
                fprintf(stderr, "luthier bench gpu: unknown case '%s'\n", v ? v : "");
                usage(stderr);
                return 2;
            }
            o.only = strcmp(v, "all") ? v : NULL;
            i++;
        } else if (!strcmp(a, "--iters")) {
            long long x;
            if (!lu_bench_int_arg("gpu", a, v, 1, MAX_ITERS, &x)) return 2;
            o.iters = (int)x;
            i++;
        } else if (!strcmp(a, "--python")) {
            if (!v || !*v || strchr(v, '\'')) {
                fprintf(stderr, "luthier bench gpu: --python needs an interpreter path (without single quotes)\n");
                return 2;
            }
            o.python = v;
            i++;
        } else {
            fprintf(stderr, "luthier bench gpu: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
#ifdef LUTHIER_HAVE_CUDA
    return bench_gpu(&o);
#else
    (void)o;
    printf("luthier bench gpu: skipped: luthier was built without the CUDA backend (LUTHIER_CUDA off)\n");
    return 0;
#endif
}

void lu_bench_gpu_name(char *out, size_t size)
{
    snprintf(out, size, "no CUDA GPU");
#ifdef LUTHIER_HAVE_CUDA
    int dev = 0, runtime = 0;
    struct cudaDeviceProp prop;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess &&
        cudaRuntimeGetVersion(&runtime) == cudaSuccess)
        snprintf(out, size, "%s (sm_%d%d, %d SMs), CUDA runtime %d.%d", prop.name, prop.major, prop.minor,
                 prop.multiProcessorCount, runtime / 1000, runtime % 1000 / 10);
#endif
}
