/* cublas.c - the cuBLAS and cuBLASLt stand-ins of the CUDA emulator (tests/cuda_emu), for the
 * emulator only: cublasGemmStridedBatchedEx and cublasLtMatmul computed on the CPU with the
 * semantics NVIDIA documents (cuBLAS "cublasGemmStridedBatchedEx", cuBLASLt "cublasLtMatmul",
 * "cublasLtEpilogue_t", "cublasLtMatrixLayoutAttribute_t"), so that the emulated GPU tests check
 * the backend's calls (cuda/matmul.c, cuda/linear.c) against what the libraries promise:
 *   - column-major matrices with leading dimensions; op(X) = X, or X^T for CUBLAS_OP_T and
 *     CUBLAS_OP_C (the same for real types);
 *   - C = alpha op(A) op(B) + beta C with alpha and beta floats (CUBLAS_COMPUTE_32F); beta == 0
 *     means C is not read, so it may hold NaN; k == 0 leaves beta C;
 *   - A and B f32, bf16 or f16 and C of their type or f32, the CUBLAS_COMPUTE_32F rows of the
 *     cublasGemmEx type table; other combinations answer CUBLAS_STATUS_NOT_SUPPORTED;
 *   - the documented argument checks: negative sizes, a leading dimension below the rows stored,
 *     NULL scalars, an unknown operation answer CUBLAS_STATUS_INVALID_VALUE.
 * The products are accumulated in f32 by the host's BLAS (CUBLAS_COMPUTE_32F), then scaled, offset
 * and rounded once to the output type in float, round to nearest even (bf16 and f16 by core/dtype.c).
 * Device memory is host memory in the emulator. Where the GPU would fault - a NULL matrix that is
 * read, or a cuBLASLt matrix less aligned than its algorithm was chosen for - the call answers
 * CUBLAS_STATUS_EXECUTION_FAILED instead of crashing the test process. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <cublasLt.h>
#include <cublas_v2.h>

#include "core/dtype.h"

struct cublasContext {
    char unused;
};

struct cublasLtContext {
    char unused;
};

/* ---- element access ---- */

static float load(cudaDataType t, const void *p, int64_t i)
{
    switch (t) {
    case CUDA_R_16BF: return lu_bf16_to_f32(((const uint16_t *)p)[i]);
    case CUDA_R_16F: return lu_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

static void store(cudaDataType t, void *p, int64_t i, float v)
{
    switch (t) {
    case CUDA_R_16BF: ((uint16_t *)p)[i] = lu_f32_to_bf16(v); break;
    case CUDA_R_16F: ((uint16_t *)p)[i] = lu_f32_to_f16(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

static size_t type_size(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

/* The CUBLAS_COMPUTE_32F rows of cublasGemmEx's type table that this stand-in computes. */
static bool types_supported(cudaDataType ab, cudaDataType c)
{
    switch (ab) {
    case CUDA_R_32F: return c == CUDA_R_32F;
    case CUDA_R_16BF: return c == CUDA_R_16BF || c == CUDA_R_32F;
    case CUDA_R_16F: return c == CUDA_R_16F || c == CUDA_R_32F;
    default: return false;
    }
}

static bool compute_supported(cublasComputeType_t t) { return t == CUBLAS_COMPUTE_32F || t == CUBLAS_COMPUTE_32F_PEDANTIC; }

static bool op_valid(int op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

/* ---- the product ---- */

/* D = alpha op(A) op(B) + beta C (m x n x k, column-major; C and D of c_type), then the epilogue
 * on vec (of vec_type): BIAS adds vec[i] to row i of D; BGRADB writes vec[j] = sum_p op(B)(p, j). */
typedef struct gemm {
    bool ta, tb; /* op(A) = A^T, op(B) = B^T */
    int64_t m, n, k;
    cudaDataType ab_type, c_type, vec_type;
    const void *a, *b, *c;
    void *d, *vec;
    int64_t lda, ldb, ldc, ldd;
    float alpha, beta;
    cublasLtEpilogue_t epilogue;
} gemm;

/* out[j * ostride] = element off + j of x, for j < n: the type's switch once a run. */
static void load_run(cudaDataType t, const void *x, int64_t off, int64_t n, float *out, int64_t ostride)
{
    switch (t) {
    case CUDA_R_16BF:
        for (int64_t j = 0; j < n; j++) {
            const uint32_t u = (uint32_t)((const uint16_t *)x)[off + j] << 16; /* exact */
            memcpy(&out[j * ostride], &u, sizeof u);
        }
        break;
    case CUDA_R_16F:
        for (int64_t j = 0; j < n; j++) out[j * ostride] = lu_f16_to_f32(((const uint16_t *)x)[off + j]);
        break;
    default:
        if (ostride == 1) memcpy(out, (const float *)x + off, (size_t)n * sizeof *out);
        else
            for (int64_t j = 0; j < n; j++) out[j * ostride] = ((const float *)x)[off + j];
        break;
    }
}

/* out [rows, cols] row-major = the rows x cols matrix L stored at x with leading dimension ld,
 * L(i, p) = x[p + i*ld] when row_major, else x[i + p*ld] (column-major); each walks x in order. */
static void pack(const void *x, cudaDataType t, int64_t ld, bool row_major, int64_t rows, int64_t cols, float *out)
{
    if (row_major) {
        for (int64_t i = 0; i < rows; i++) load_run(t, x, i * ld, cols, out + i * cols, 1);
    } else {
        for (int64_t p = 0; p < cols; p++) load_run(t, x, p * ld, rows, out + p, cols);
    }
}

/* The product of op(A) and op(B) (f32 accumulation, as CUBLAS_COMPUTE_32F) by the host's BLAS into
 * prod [n, m] row-major, which is D's column-major order: 16-bit operands first as ap [m, k] =
 * op(A) and bp [n, k] = op(B)^T, both row-major; f32 ones as they are stored, the BLAS told their
 * transposes. Then alpha, beta C and the epilogue, element by element. */
static void gemm_one(const gemm *g, float *ap, float *bp, float *prod)
{
    int64_t m = g->m, n = g->n, k = g->k;
    const bool f32 = g->ab_type == CUDA_R_32F;
    if (k > 0 && f32) {
        /* bp = op(B)^T is b read row-major [n, k] (tb: transposed); ap^T = op(A)^T likewise. */
        cblas_sgemm(CblasRowMajor, g->tb ? CblasTrans : CblasNoTrans, g->ta ? CblasTrans : CblasNoTrans, (int)n,
                    (int)m, (int)k, 1.0f, g->b, (int)g->ldb, g->a, (int)g->lda, 0.0f, prod, (int)m);
    } else if (k > 0) {
        pack(g->a, g->ab_type, g->lda, g->ta, m, k, ap);
        pack(g->b, g->ab_type, g->ldb, !g->tb, n, k, bp);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)m, (int)k, 1.0f, bp, (int)k, ap, (int)k, 0.0f,
                    prod, (int)m);
    } else {
        memset(prod, 0, (size_t)(m * n) * sizeof *prod);
    }
    for (int64_t j = 0; j < n; j++) {
        for (int64_t i = 0; i < m; i++) {
            float v = g->alpha * prod[j * m + i];
            if (g->beta != 0.0f) v += g->beta * load(g->c_type, g->c, i + j * g->ldc);
            if (g->epilogue == CUBLASLT_EPILOGUE_BIAS) v += load(g->vec_type, g->vec, i);
            store(g->c_type, g->d, i + j * g->ldd, v);
        }
        if (g->epilogue == CUBLASLT_EPILOGUE_BGRADB) {
            /* sum over p of op(B)(p, j): b[p + j ldb], or b[j + p ldb] transposed */
            double s = 0;
            for (int64_t p = 0; p < k; p++)
                s += f32 ? load(CUDA_R_32F, g->b, g->tb ? j + p * g->ldb : p + j * g->ldb) : bp[j * k + p];
            store(g->vec_type, g->vec, j, (float)s);
        }
    }
}

/* The device would fault on a NULL matrix it reads or writes. */
static bool pointers_present(const gemm *g)
{
    bool any_d = g->m > 0 && g->n > 0;
    if ((g->m > 0 && g->k > 0 && !g->a) || (g->n > 0 && g->k > 0 && !g->b)) return false;
    if (any_d && (!g->d || (g->beta != 0.0f && !g->c))) return false;
    if (g->epilogue == CUBLASLT_EPILOGUE_BIAS && any_d && !g->vec) return false;
    if (g->epilogue == CUBLASLT_EPILOGUE_BGRADB && g->n > 0 && !g->vec) return false;
    return true;
}

/* batch products, item i's A, B, C and D at sa, sb, sc, sc elements from the previous one's. */
static cublasStatus_t gemm_batch(const gemm *g, int64_t batch, int64_t sa, int64_t sb, int64_t sc)
{
    if (!pointers_present(g)) return CUBLAS_STATUS_EXECUTION_FAILED;
    const bool f32 = g->ab_type == CUDA_R_32F; /* no copies of A and B (gemm_one) */
    float *ap = malloc(((size_t)(f32 ? 0 : g->m * g->k) + 1) * sizeof(float));
    float *bp = malloc(((size_t)(f32 ? 0 : g->n * g->k) + 1) * sizeof(float));
    float *prod = malloc(((size_t)(g->m * g->n) + 1) * sizeof(float));
    if (!ap || !bp || !prod) {
        free(ap);
        free(bp);
        free(prod);
        return CUBLAS_STATUS_ALLOC_FAILED;
    }
    size_t es = type_size(g->ab_type), cs = type_size(g->c_type);
    for (int64_t i = 0; i < batch; i++) {
        gemm gi = *g;
        gi.a = (const char *)g->a + (size_t)(i * sa) * es;
        gi.b = (const char *)g->b + (size_t)(i * sb) * es;
        gi.c = (const char *)g->c + (size_t)(i * sc) * cs;
        gi.d = (char *)g->d + (size_t)(i * sc) * cs;
        gemm_one(&gi, ap, bp, prod);
    }
    free(ap);
    free(bp);
    free(prod);
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLAS ---- */

cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = calloc(1, sizeof **handle);
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "<unknown>";
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    }
    return "unknown error";
}

/* CUBLAS_GEMM_DEFAULT, CUBLAS_GEMM_ALGO0..23, CUBLAS_GEMM_DEFAULT_TENSOR_OP, CUBLAS_GEMM_ALGO0..15_TENSOR_OP. */
static bool algo_valid(int algo) { return (algo >= -1 && algo <= 23) || (algo >= 99 && algo <= 115); }

static int at_least_1(int x) { return x > 1 ? x : 1; }

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          long long int strideC, int batchCount, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || batchCount < 0 || !op_valid(transa) || !op_valid(transb) || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    /* The rows of A, B and C as stored: A is m x k, or k x m under op T. */
    if (lda < at_least_1(transa == CUBLAS_OP_N ? m : k) || ldb < at_least_1(transb == CUBLAS_OP_N ? k : n) ||
        ldc < at_least_1(m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!compute_supported(computeType) || Atype != Btype || !types_supported(Atype, Ctype) || !algo_valid(algo))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (batchCount == 0 || m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    gemm g = {.ta = transa != CUBLAS_OP_N, .tb = transb != CUBLAS_OP_N, .m = m, .n = n, .k = k, .ab_type = Atype,
              .c_type = Ctype, .a = A, .b = B, .c = C, .d = C, .lda = lda, .ldb = ldb, .ldc = ldc, .ldd = ldc,
              .alpha = *(const float *)alpha, .beta = *(const float *)beta, .epilogue = CUBLASLT_EPILOGUE_DEFAULT};
    return gemm_batch(&g, batchCount, strideA, strideB, strideC);
}

/* ---- cuBLASLt ---- */

struct cublasLtMatmulDescOpaque {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int32_t transa, transb;
    uint32_t epilogue;
    void *bias;
    int32_t bias_type; /* -1: D's type */
};

struct cublasLtMatrixLayoutOpaque {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
};

enum { PREF_A, PREF_B, PREF_C, PREF_D };

struct cublasLtMatmulPreferenceOpaque {
    uint64_t max_workspace;
    uint32_t align[4]; /* PREF_A..PREF_D */
};

/* An algorithm from this stand-in's heuristic: data[0] is this tag, data[1..4] the alignments of A,
 * B, C and D it was chosen for, data[5] the bias vector's. */
#define LT_ALGO_TAG 0x6c75656d75616c67ull

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle)
{
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    *lightHandle = calloc(1, sizeof **lightHandle);
    return *lightHandle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle)
{
    if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
    free(lightHandle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType)
{
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    *matmulDesc = malloc(sizeof **matmulDesc);
    if (!*matmulDesc) return CUBLAS_STATUS_ALLOC_FAILED;
    **matmulDesc = (struct cublasLtMatmulDescOpaque){.compute = computeType, .scale = scaleType,
                                                     .transa = CUBLAS_OP_N, .transb = CUBLAS_OP_N,
                                                     .epilogue = CUBLASLT_EPILOGUE_DEFAULT, .bias_type = -1};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc)
{
    free(matmulDesc);
    return CUBLAS_STATUS_SUCCESS;
}

/* cuBLASLt's rule for every setter: buf must hold exactly the attribute's type. */
static cublasStatus_t set_value(void *dst, size_t dst_size, const void *buf, size_t size)
{
    if (!buf || size != dst_size) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(dst, buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes)
{
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    struct cublasLtMatmulDescOpaque *d = matmulDesc;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return set_value(&d->transa, sizeof d->transa, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set_value(&d->transb, sizeof d->transb, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set_value(&d->epilogue, sizeof d->epilogue, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set_value(&d->bias, sizeof d->bias, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set_value(&d->bias_type, sizeof d->bias_type, buf, sizeInBytes);
    }
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld)
{
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    *matLayout = malloc(sizeof **matLayout);
    if (!*matLayout) return CUBLAS_STATUS_ALLOC_FAILED;
    **matLayout = (struct cublasLtMatrixLayoutOpaque){.type = type, .rows = rows, .cols = cols, .ld = ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout)
{
    free(matLayout);
    return CUBLAS_STATUS_SUCCESS;
}

static const struct cublasLtMatmulPreferenceOpaque default_preference = {.max_workspace = 0,
                                                                          .align = {256, 256, 256, 256}};

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref)
{
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = malloc(sizeof **pref);
    if (!*pref) return CUBLAS_STATUS_ALLOC_FAILED;
    **pref = default_preference;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref)
{
    free(pref);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes)
{
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
        return set_value(&pref->max_workspace, sizeof pref->max_workspace, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
        return set_value(&pref->align[PREF_A], sizeof pref->align[0], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
        return set_value(&pref->align[PREF_B], sizeof pref->align[0], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
        return set_value(&pref->align[PREF_C], sizeof pref->align[0], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
        return set_value(&pref->align[PREF_D], sizeof pref->align[0], buf, sizeInBytes);
    }
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

/* The product a descriptor and four layouts describe, less its pointers and scalars.
 * INVALID_VALUE: the shapes disagree (op(A) m x k, op(B) k x n, C and D m x n; m, n from D) or a
 * leading dimension is below its rows (CUBLASLT_MATRIX_LAYOUT_LD); NOT_SUPPORTED: what this
 * stand-in does not compute. */
static cublasStatus_t lt_describe(const struct cublasLtMatmulDescOpaque *op, const struct cublasLtMatrixLayoutOpaque *a,
                                  const struct cublasLtMatrixLayoutOpaque *b, const struct cublasLtMatrixLayoutOpaque *c,
                                  const struct cublasLtMatrixLayoutOpaque *d, gemm *g)
{
    if (!op || !a || !b || !c || !d || !op_valid(op->transa) || !op_valid(op->transb)) return CUBLAS_STATUS_INVALID_VALUE;
    bool ta = op->transa != CUBLAS_OP_N, tb = op->transb != CUBLAS_OP_N;
    uint64_t m = d->rows, n = d->cols, k = ta ? a->rows : a->cols;
    if ((ta ? a->cols : a->rows) != m || (tb ? b->cols : b->rows) != k || (tb ? b->rows : b->cols) != n ||
        c->rows != m || c->cols != n)
        return CUBLAS_STATUS_INVALID_VALUE;
    const struct cublasLtMatrixLayoutOpaque *all[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (all[i]->ld < 0 || (uint64_t)all[i]->ld < all[i]->rows) return CUBLAS_STATUS_INVALID_VALUE;
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!compute_supported(op->compute) || op->scale != CUDA_R_32F || a->type != b->type || c->type != d->type ||
        !types_supported(a->type, d->type))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (op->epilogue != CUBLASLT_EPILOGUE_DEFAULT && op->epilogue != CUBLASLT_EPILOGUE_BIAS &&
        op->epilogue != CUBLASLT_EPILOGUE_BGRADB)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    /* The vector is of D's type unless CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE says f32. */
    cudaDataType vec_type = op->bias_type == -1 ? d->type : (cudaDataType)op->bias_type;
    if (op->epilogue != CUBLASLT_EPILOGUE_DEFAULT && vec_type != d->type && vec_type != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    *g = (gemm){.ta = ta, .tb = tb, .m = (int64_t)m, .n = (int64_t)n, .k = (int64_t)k, .ab_type = a->type,
                .c_type = d->type, .vec_type = vec_type, .vec = op->bias, .lda = a->ld, .ldb = b->ld, .ldc = c->ld,
                .ldd = d->ld, .epilogue = (cublasLtEpilogue_t)op->epilogue};
    return CUBLAS_STATUS_SUCCESS;
}

/* The largest power of two up to 256 that divides p: the alignment the heuristic reads from the
 * bias pointer. */
static uint64_t alignment_of(const void *p)
{
    uint64_t a = 256;
    while (a > 1 && (uintptr_t)p % a) a /= 2;
    return a;
}

/* One algorithm for every product lt_describe accepts; none (NOT_SUPPORTED) for the others. */
static cublasStatus_t lt_heuristic(const struct cublasLtMatmulDescOpaque *op, const struct cublasLtMatrixLayoutOpaque *a,
                                   const struct cublasLtMatrixLayoutOpaque *b,
                                   const struct cublasLtMatrixLayoutOpaque *c,
                                   const struct cublasLtMatrixLayoutOpaque *d,
                                   const struct cublasLtMatmulPreferenceOpaque *pref,
                                   cublasLtMatmulHeuristicResult_t *result, int *count)
{
    gemm g;
    *count = 0;
    cublasStatus_t st = lt_describe(op, a, b, c, d, &g);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    memset(result, 0, sizeof *result);
    result->algo.data[0] = LT_ALGO_TAG;
    for (int i = 0; i < 4; i++) result->algo.data[1 + i] = pref->align[i];
    result->algo.data[5] = alignment_of(op->bias);
    result->workspaceSize = 0;
    result->state = CUBLAS_STATUS_SUCCESS;
    result->wavesCount = 1.0f;
    *count = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount)
{
    if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!preference || requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount)
        return CUBLAS_STATUS_INVALID_VALUE;
    return lt_heuristic(operationDesc, Adesc, Bdesc, Cdesc, Ddesc, preference, heuristicResultsArray,
                        returnAlgoCount);
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream)
{
    (void)workspace, (void)workspaceSizeInBytes, (void)stream; /* no workspace needed; streams are synchronous */
    if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    gemm g;
    cublasStatus_t st = lt_describe(computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &g);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    cublasLtMatmulHeuristicResult_t implicit;
    if (!algo) {
        int count = 0;
        st = lt_heuristic(computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &default_preference, &implicit, &count);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
        algo = &implicit.algo;
    }
    if (algo->data[0] != LT_ALGO_TAG) return CUBLAS_STATUS_INVALID_VALUE;
    if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT && !g.vec) return CUBLAS_STATUS_INVALID_VALUE;
    /* The algorithm's kernels may rely on the alignments the preference promised (and the bias
     * pointer had at the heuristic); on less aligned data the device faults. */
    const void *ptrs[5] = {A, B, C, D, g.vec};
    for (int i = 0; i < 5; i++)
        if (ptrs[i] && algo->data[1 + i] > 1 && (uintptr_t)ptrs[i] % algo->data[1 + i])
            return CUBLAS_STATUS_EXECUTION_FAILED;
    g.a = A;
    g.b = B;
    g.c = C;
    g.d = D;
    g.alpha = *(const float *)alpha;
    g.beta = *(const float *)beta;
    return gemm_batch(&g, 1, 0, 0, 0);
}
