/* linear.c - LINEAR on the GPU (y = x w^T + bias, torch.nn.Linear; x [M,K], w [N,K], bias [N],
 * y [M,N]), f32 and bf16 with fp32 accumulation, the bias in x's dtype (issue 7). The forward adds
 * the bias in the GEMM's epilogue, and the backward reduces dy for the bias gradient in the weight
 * gradient GEMM's epilogue, both through cuBLASLt; dx is a plain GEMM. core/cpu/matmul_generic.h
 * is the reference.
 *
 * Column-major mapping (cuBLAS is column-major: a row-major buffer X [r,c] is the column-major
 * matrix X^T, c x r with leading dimension c):
 *   forward   D = y^T (N x M, ld N) = w x^T, then + bias:
 *             A = w's buffer, K x N (ld K), transa = T: op(A) = w (N x K);
 *             B = x's buffer, K x M (ld K), transb = N: op(B) = x^T (K x M); m = N, n = M, k = K.
 *             CUBLASLT_EPILOGUE_BIAS adds bias [N] (D's row count) to every column of D.
 *   dw        D = dw^T (K x N, ld K) = x^T dy:
 *             A = x's buffer, K x M (ld K), transa = N: op(A) = x^T (K x M);
 *             B = dy's buffer, N x M (ld N), transb = T: op(B) = dy (M x N); m = K, n = N, k = M.
 *             dy is B, so CUBLASLT_EPILOGUE_BGRADB: op(B) summed over the GEMM's k (the M rows of
 *             dy) gives one value per column of D, dbias [N].
 *   dx        [M,K] = dy w, by lu_cuda_gemm.
 *
 * Unfused path, taken when LUTHIER_CUBLASLT=0 (read at each call, so that tests and the benchmark
 * run both paths in one process), when a size is 0, or when cuBLASLt has no algorithm for the
 * fused call or answers CUBLAS_STATUS_NOT_SUPPORTED (layouts, alignment, dtypes it refuses): y is
 * filled with the bias rows (the CONTIGUOUS kernel on a stride-0 view) and the GEMM adds into it
 * (beta = 1, so bf16 rounds once, as the epilogue does); dbias is the SUM kernel's deterministic
 * column sum of dy.
 *
 * Determinism: cuBLAS documents bit-identical results run to run for one toolkit, architecture
 * and SM count when a single stream is used and, for cublasLtMatmul, a workspace the caller owns;
 * the heuristic picks the same algorithm for the same call, and its split-K reduction schemes
 * (in place with counters, or through the workspace) keep a fixed order. The GPU tests check
 * two runs bit for bit. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "cuda_backend.h"

/* Workspace for split-K and the epilogues, allocated with the handle and kept for the process. */
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)

static cublasLtHandle_t lt_handle;
static void *lt_workspace;
static cublasStatus_t lt_status;
static cudaError_t lt_alloc_status;
static pthread_once_t lt_once = PTHREAD_ONCE_INIT;
static atomic_llong fused_gemms;

/* Created on the first fused call, as matmul.c creates its cuBLAS handle (it allocates GPU memory). */
static void create_lt(void)
{
    lt_status = cublasLtCreate(&lt_handle);
    if (lt_status == CUBLAS_STATUS_SUCCESS) lt_alloc_status = cudaMalloc(&lt_workspace, LT_WORKSPACE_BYTES);
}

static lu_status get_lt(cublasLtHandle_t *h, void **workspace)
{
    LU_TRY(lu_cublas_load());
    pthread_once(&lt_once, create_lt);
    LU_CUBLAS_CHECK(lt_status);
    LU_CUDA_CHECK(lt_alloc_status);
    *h = lt_handle;
    *workspace = lt_workspace;
    return LU_OK;
}

int64_t lu_cuda_linear_fused_gemms(void) { return atomic_load(&fused_gemms); }

static bool fused_enabled(void)
{
    const char *v = getenv("LUTHIER_CUBLASLT");
    return !v || strcmp(v, "0") != 0;
}

/* The largest power of two up to 256 that divides the address: cuBLASLt's heuristic assumes 256
 * unless told, and would pick kernels that fault on a less aligned view. */
static uint32_t alignment_of(const void *p)
{
    uint32_t a = 256;
    while (a > 1 && (uintptr_t)p % a) a /= 2;
    return a;
}

/* One column-major product D = op(A) op(B) (m x n x k; C = D, beta = 0) with an epilogue whose
 * vector is `vec` (read by BIAS, written by BGRADB). */
typedef struct lt_gemm {
    cudaDataType type;
    cublasOperation_t ta, tb;
    uint64_t m, n, k;
    const void *a, *b;
    void *d;
    int64_t lda, ldb, ldd;
    cublasLtEpilogue_t epilogue;
    void *vec;
} lt_gemm;

/* A cuBLASLt call of lt_matmul's chain, run while every earlier one succeeded; `what` keeps the
 * last one run, so that a failure names its call. */
#define LT_STEP(call)                       \
    do {                                    \
        if (st == CUBLAS_STATUS_SUCCESS) {  \
            st = (call);                    \
            what = #call;                   \
        }                                   \
    } while (0)

/* Runs g through cuBLASLt. *done is false, with nothing written, when cuBLASLt has no algorithm
 * for it: the caller then runs the unfused path. Other cuBLASLt failures are errors. */
static lu_status lt_matmul(const lt_gemm *g, bool *done)
{
    *done = false;
    cublasLtHandle_t h = NULL;
    void *workspace = NULL;
    LU_TRY(get_lt(&h, &workspace));
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t result;
    memset(&result, 0, sizeof result);
    int32_t ta = g->ta, tb = g->tb;
    uint32_t epilogue = g->epilogue, align_a = alignment_of(g->a), align_b = alignment_of(g->b);
    uint32_t align_d = alignment_of(g->d);
    uint64_t workspace_bytes = LT_WORKSPACE_BYTES;
    bool na = g->ta == CUBLAS_OP_N, nb = g->tb == CUBLAS_OP_N;
    int found = 0;
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    const char *what = "";
    LT_STEP(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    /* Set before the heuristic, which reads the vector's alignment from it. */
    LT_STEP(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->vec, sizeof g->vec));
    LT_STEP(cublasLtMatrixLayoutCreate(&la, g->type, na ? g->m : g->k, na ? g->k : g->m, g->lda));
    LT_STEP(cublasLtMatrixLayoutCreate(&lb, g->type, nb ? g->k : g->n, nb ? g->n : g->k, g->ldb));
    LT_STEP(cublasLtMatrixLayoutCreate(&ld, g->type, g->m, g->n, g->ldd));
    LT_STEP(cublasLtMatmulPreferenceCreate(&pref));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                 sizeof workspace_bytes));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                 sizeof align_a));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                 sizeof align_b));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                 sizeof align_d));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                 sizeof align_d));
    LT_STEP(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, 1, &result, &found));
    if (st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
        const float alpha = 1.0f, beta = 0.0f;
        LT_STEP(cublasLtMatmul(h, op, &alpha, g->a, la, g->b, lb, &beta, g->d, ld, g->d, ld, &result.algo, workspace,
                               LT_WORKSPACE_BYTES, 0));
        *done = st == CUBLAS_STATUS_SUCCESS;
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) return lu_cublas_fail(st, __FILE__, __LINE__, what);
    if (*done) atomic_fetch_add(&fused_gemms, 1);
    return LU_OK;
}

#undef LT_STEP

static lu_status check_linear(const lu_op_call *call, const lu_tensor *x, const lu_tensor *w, const lu_tensor *bias)
{
    lu_dtype dt = x->dtype;
    if (dt != LU_F32 && dt != LU_BF16)
        return lu_errorf(LU_ERR_DTYPE, "linear: dtype %s is not supported by the cuda backend (use f32 or bf16)",
                         lu_dtype_name(dt));
    for (int i = 0; i < call->n_in; i++)
        if (call->in[i] && call->in[i]->dtype != dt)
            return lu_errorf(LU_ERR_DTYPE, "linear: operand %d is %s, expected %s", i, lu_dtype_name(call->in[i]->dtype),
                             lu_dtype_name(dt));
    if (x->ndim != 2 || w->ndim != 2 || bias->ndim != 1 || w->shape[1] != x->shape[1] || bias->shape[0] != w->shape[0]) {
        char sx[LU_SHAPE_STR_MAX], sw[LU_SHAPE_STR_MAX], sb[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "linear: x %s, w %s, bias %s are not [M,K], [N,K], [N]",
                         lu_shape_str(x, sx, sizeof sx), lu_shape_str(w, sw, sizeof sw), lu_shape_str(bias, sb, sizeof sb));
    }
    return LU_OK;
}

static cudaDataType lt_type(lu_dtype dt) { return dt == LU_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* y [M,N] = bias in every row: the CONTIGUOUS kernel reading bias through a stride-0 view. */
static lu_status fill_rows(const lu_tensor *bias, lu_tensor *y)
{
    lu_backend *b = lu_backend_get(LU_CUDA);
    if (!b) return lu_error_code();
    lu_tensor rows = *bias; /* a view for this call only: no reference is taken */
    rows.ndim = 2;
    rows.shape[0] = y->shape[0];
    rows.shape[1] = y->shape[1];
    rows.stride[0] = 0;
    rows.stride[1] = 1;
    lu_op_call call = {.op = LU_OP_CONTIGUOUS, .in = {&rows}, .n_in = 1, .out = {y}, .n_out = 1};
    return b->forward[LU_OP_CONTIGUOUS](&call);
}

/* dbias [N] = the column sums of dy [M,N]: SUM's kernel along dim 0 (fixed order, no atomics). */
static lu_status column_sums(const lu_tensor *dy, lu_tensor *db)
{
    lu_backend *b = lu_backend_get(LU_CUDA);
    if (!b) return lu_error_code();
    lu_reduce_params p = {0};
    lu_op_call call = {.op = LU_OP_SUM, .in = {(lu_tensor *)dy}, .n_in = 1, .out = {db}, .n_out = 1, .params = &p};
    return b->forward[LU_OP_SUM](&call);
}

/* in = [x, w, bias], out = [y]. */
static lu_status linear_forward(const lu_op_call *call)
{
    const lu_tensor *x = call->in[0], *w = call->in[1], *bias = call->in[2];
    lu_tensor *y = call->out[0];
    LU_TRY(check_linear(call, x, w, bias));
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
    lu_dtype dt = x->dtype;
    if (m == 0 || n == 0) return LU_OK;
    if (k > 0 && fused_enabled()) {
        lt_gemm g = {.type = lt_type(dt), .ta = CUBLAS_OP_T, .tb = CUBLAS_OP_N, .m = (uint64_t)n, .n = (uint64_t)m,
                     .k = (uint64_t)k, .a = lu_tensor_data(w), .lda = k, .b = lu_tensor_data(x), .ldb = k,
                     .d = lu_tensor_data(y), .ldd = n, .epilogue = CUBLASLT_EPILOGUE_BIAS, .vec = lu_tensor_data(bias)};
        bool done = false;
        LU_TRY(lt_matmul(&g, &done));
        if (done) return LU_OK;
    }
    LU_TRY(fill_rows(bias, y));
    if (k == 0) return LU_OK;
    return lu_cuda_gemm(dt, dt, 1, false, true, m, n, k, lu_tensor_data(x), 0, lu_tensor_data(w), 0, 1.0f,
                        lu_tensor_data(y), 0);
}

/* in = [dy, x, w, bias, y], out = [dx, dw, dbias] (any may be NULL): dx = dy w, dw = dy^T x,
 * dbias = the column sums of dy. */
static lu_status linear_backward(const lu_op_call *call)
{
    const lu_tensor *dy = call->in[0], *x = call->in[1], *w = call->in[2], *bias = call->in[3];
    lu_tensor *dx = call->out[0], *dw = call->out[1], *db = call->out[2];
    LU_TRY(check_linear(call, x, w, bias));
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
    lu_dtype dt = x->dtype;
    for (int i = 0; i < 3; i++) {
        /* No gradient reached y, or a sum over nothing: zeros. */
        lu_tensor *o = call->out[i];
        bool empty_sum = i == 0 ? n == 0 : m == 0;
        if (o && (!dy || empty_sum)) LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(o), 0, lu_tensor_nbytes(o), 0));
    }
    if (!dy || m == 0) return LU_OK;
    if (dx && n > 0 && k > 0)
        LU_TRY(lu_cuda_gemm(dt, dt, 1, false, false, m, k, n, lu_tensor_data(dy), 0, lu_tensor_data(w), 0, 0.0f,
                            lu_tensor_data(dx), 0));
    if (n == 0) return LU_OK;
    bool db_done = false;
    if (dw && k > 0) {
        bool done = false;
        if (db && fused_enabled()) {
            lt_gemm g = {.type = lt_type(dt), .ta = CUBLAS_OP_N, .tb = CUBLAS_OP_T, .m = (uint64_t)k, .n = (uint64_t)n,
                         .k = (uint64_t)m, .a = lu_tensor_data(x), .lda = k, .b = lu_tensor_data(dy), .ldb = n,
                         .d = lu_tensor_data(dw), .ldd = k, .epilogue = CUBLASLT_EPILOGUE_BGRADB,
                         .vec = lu_tensor_data(db)};
            LU_TRY(lt_matmul(&g, &done));
            db_done = done;
        }
        if (!done)
            LU_TRY(lu_cuda_gemm(dt, dt, 1, true, false, n, k, m, lu_tensor_data(dy), 0, lu_tensor_data(x), 0, 0.0f,
                                lu_tensor_data(dw), 0));
    }
    if (db && !db_done) LU_TRY(column_sums(dy, db));
    return LU_OK;
}

void lu_cuda_register_linear(lu_backend *b)
{
    b->forward[LU_OP_LINEAR] = linear_forward;
    b->backward[LU_OP_LINEAR] = linear_backward;
}
