/* matmul.c - CUDA matrix products through cuBLAS, f32 and bf16 with fp32 accumulation. The
 * shapes, the shared-b batch and the backward formulas are those of core/cpu/matmul_generic.h:
 * a [Ba,M,K] (or [Ba,K,M] when trans_a), b [Bb,K,N] (or [Bb,N,K]), Bb == Ba or 1, c [Ba,M,N].
 *
 * cuBLAS is column-major; a row-major X [r,c] is the column-major X^T, so the row-major
 * C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: swap the operands and
 * the m/n sizes, keep the transpose flags. */
#include <limits.h>
#include <pthread.h>

#include <cublas_v2.h>

#include "cuda_backend.h"

lu_status lu_cublas_fail(int status, const char *file, int line, const char *expr)
{
    return lu_errorf(status == CUBLAS_STATUS_ALLOC_FAILED ? LU_ERR_NOMEM : LU_ERR_DEVICE, "%s:%d: %s failed: %s (%s)",
                     file, line, expr, cublasGetStatusString((cublasStatus_t)status),
                     cublasGetStatusName((cublasStatus_t)status));
}

/* One handle for the process, created on the first product (creating it allocates GPU memory,
 * which runs that only need tensors on the CPU should not pay for). */
static cublasHandle_t handle;
static cublasStatus_t handle_status;
static pthread_once_t handle_once = PTHREAD_ONCE_INIT;

static void create_handle(void) { handle_status = cublasCreate(&handle); }

static lu_status get_handle(cublasHandle_t *out)
{
    LU_TRY(lu_cublas_load());
    pthread_once(&handle_once, create_handle);
    LU_CUBLAS_CHECK(handle_status);
    *out = handle;
    return LU_OK;
}

/* batch row-major products C_i = op(A_i) op(B_i) (+ beta C_i), m x n x k, operand i at X + i*sX
 * elements (sB may be 0: one B for all); ta/tb say A/B are stored transposed. A and B are of
 * dtype dt, C of c_dt (dt, or f32 for an fp32 accumulator). */
static lu_status gemm_batch(lu_dtype dt, lu_dtype c_dt, int64_t batch, bool ta, bool tb, int64_t m, int64_t n,
                            int64_t k, const void *a, int64_t sa, const void *b, int64_t sb, float beta, void *c,
                            int64_t sc)
{
    if (batch == 0 || m == 0 || n == 0) return LU_OK;
    if (batch > INT_MAX || m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return lu_errorf(LU_ERR_SHAPE, "matmul: sizes batch %lld, m %lld, n %lld, k %lld exceed cuBLAS's int range",
                         (long long)batch, (long long)m, (long long)n, (long long)k);
    cublasHandle_t h = NULL;
    LU_TRY(get_handle(&h));
    cudaDataType type = dt == LU_BF16 ? CUDA_R_16BF : CUDA_R_32F, c_type = c_dt == LU_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    float alpha = 1.0f;
    /* cuBLAS wants every leading dimension at least 1, k == 0 included; it then scales C by beta,
     * which with beta == 0 zeroes it, as the CPU does. */
    int lda = ta ? (int)m : (int)(k > 0 ? k : 1), ldb = tb ? (int)(k > 0 ? k : 1) : (int)n;
    LU_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                               (int)n, (int)m, (int)k, &alpha, b, type, ldb, sb, a, type, lda, sa,
                                               &beta, c, c_type, (int)n, sc, (int)batch, CUBLAS_COMPUTE_32F,
                                               CUBLAS_GEMM_DEFAULT));
    return LU_OK;
}

static lu_status check_dtypes(const lu_op_call *call, lu_dtype dt, int n)
{
    if (dt != LU_F32 && dt != LU_BF16)
        return lu_errorf(LU_ERR_DTYPE, "matmul: dtype %s is not supported by the cuda backend (use f32 or bf16)",
                         lu_dtype_name(dt));
    for (int i = 0; i < n; i++)
        if (call->in[i] && call->in[i]->dtype != dt)
            return lu_errorf(LU_ERR_DTYPE, "matmul: operand %d is %s, expected %s", i, lu_dtype_name(call->in[i]->dtype),
                             lu_dtype_name(dt));
    return LU_OK;
}

static lu_status matmul_forward(const lu_op_call *call)
{
    const lu_matmul_params *p = call->params;
    const lu_tensor *a = call->in[0], *b = call->in[1];
    lu_tensor *c = call->out[0];
    LU_TRY(check_dtypes(call, c->dtype, 2));
    int64_t batch = a->shape[0], m = c->shape[1], n = c->shape[2];
    int64_t k = p->trans_a ? a->shape[1] : a->shape[2];
    int64_t sb = b->shape[0] == 1 ? 0 : k * n;
    return gemm_batch(c->dtype, c->dtype, batch, p->trans_a, p->trans_b, m, n, k, lu_tensor_data(a), m * k, lu_tensor_data(b), sb,
                      0.0f, lu_tensor_data(c), m * n);
}

/* db of a b shared by the whole batch: sum_i op(A_i)^T dC_i, one product per item added with
 * beta = 1 into the fp32 accumulator acc [k*n]. */
static lu_status sum_products(const lu_matmul_params *p, lu_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t k,
                              const char *A, const char *DC, float *acc)
{
    size_t es = lu_dtype_size(dt);
    LU_CUDA_CHECK(cudaMemsetAsync(acc, 0, (size_t)(k * n) * sizeof(float), 0));
    for (int64_t i = 0; i < batch; i++) {
        const char *Ai = A + (size_t)(i * m * k) * es, *DCi = DC + (size_t)(i * m * n) * es;
        if (!p->trans_b) LU_TRY(gemm_batch(dt, LU_F32, 1, !p->trans_a, false, k, n, m, Ai, 0, DCi, 0, 1, acc, 0));
        else LU_TRY(gemm_batch(dt, LU_F32, 1, true, p->trans_a, n, k, m, DCi, 0, Ai, 0, 1, acc, 0));
    }
    return LU_OK;
}

/* An f32 db is its own accumulator; a bf16 one is rounded once from a temporary. */
static lu_status shared_b_grad(const lu_matmul_params *p, lu_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t k,
                               const char *A, const char *DC, lu_tensor *db)
{
    if (dt == LU_F32) return sum_products(p, dt, batch, m, n, k, A, DC, lu_tensor_data(db));
    float *acc = NULL;
    LU_CUDA_CHECK(cudaMalloc((void **)&acc, (size_t)(k * n) * sizeof(float) + 1));
    lu_status st = sum_products(p, dt, batch, m, n, k, A, DC, acc);
    if (st == LU_OK) st = lu_cuda_convert(lu_tensor_data(db), dt, acc, LU_F32, (size_t)(k * n));
    cudaError_t e = cudaFree(acc);
    if (st == LU_OK && e != cudaSuccess) st = lu_cuda_fail(e, __FILE__, __LINE__, "cudaFree(acc)");
    return st;
}

/* in = [dc, a, b, c], out = [da, db]; dop(A) = dC op(B)^T, dop(B) = op(A)^T dC. */
static lu_status matmul_backward(const lu_op_call *call)
{
    const lu_matmul_params *p = call->params;
    const lu_tensor *dc = call->in[0], *a = call->in[1], *b = call->in[2];
    lu_tensor *da = call->out[0], *db = call->out[1];
    lu_dtype dt = a->dtype;
    if (!dc) {
        /* No gradient reached c: both gradients are zero. */
        if (da) LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(da), 0, lu_tensor_nbytes(da), 0));
        if (db) LU_CUDA_CHECK(cudaMemsetAsync(lu_tensor_data(db), 0, lu_tensor_nbytes(db), 0));
        return LU_OK;
    }
    LU_TRY(check_dtypes(call, dt, 3));
    int64_t batch = a->shape[0], m = dc->shape[1], n = dc->shape[2];
    int64_t k = p->trans_a ? a->shape[1] : a->shape[2];
    bool shared_b = b->shape[0] == 1 && batch > 1;
    const char *A = lu_tensor_data(a), *B = lu_tensor_data(b), *DC = lu_tensor_data(dc);
    int64_t sb = shared_b ? 0 : k * n;
    if (da) {
        void *DA = lu_tensor_data(da);
        if (!p->trans_a) LU_TRY(gemm_batch(dt, dt, batch, false, !p->trans_b, m, k, n, DC, m * n, B, sb, 0, DA, m * k));
        else LU_TRY(gemm_batch(dt, dt, batch, p->trans_b, true, k, m, n, B, sb, DC, m * n, 0, DA, m * k));
    }
    if (db && !shared_b) {
        void *DB = lu_tensor_data(db);
        if (!p->trans_b) LU_TRY(gemm_batch(dt, dt, batch, !p->trans_a, false, k, n, m, A, m * k, DC, m * n, 0, DB, k * n));
        else LU_TRY(gemm_batch(dt, dt, batch, true, p->trans_a, n, k, m, DC, m * n, A, m * k, 0, DB, k * n));
    }
    if (db && shared_b) LU_TRY(shared_b_grad(p, dt, batch, m, n, k, A, DC, db));
    return LU_OK;
}

void lu_cuda_register_matmul(lu_backend *b)
{
    b->forward[LU_OP_MATMUL] = matmul_forward;
    b->backward[LU_OP_MATMUL] = matmul_backward;
}

/* gemm_batch for the kernel files that reduce to products (conv.cu). */
lu_status lu_cuda_gemm(lu_dtype dt, lu_dtype c_dt, int64_t batch, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                       const void *a, int64_t sa, const void *b, int64_t sb, float beta, void *c, int64_t sc)
{
    return gemm_batch(dt, c_dt, batch, ta, tb, m, n, k, a, sa, b, sb, beta, c, sc);
}
