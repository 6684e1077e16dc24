/* matmul_generic.h - batched GEMM through CBLAS, written over `real` (see generic.h): MATMUL and
 * LINEAR. Shapes (op.h): a [Ba,M,K] (or [Ba,K,M] when trans_a), b [Bb,K,N] (or [Bb,N,K]), Bb == Ba
 * or 1, c [Ba,M,N]; LINEAR's x [M,K], w [N,K], bias [N], y [M,N]. */

static void R(gemm_batch)(int64_t batch, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const real *a,
                          int64_t sa, const real *b, int64_t sb, real beta, real *c, int64_t sc)
{
    /* One row (a decoding step): GEMV reads b in place, where GEMM would first pack all of it. */
    if (m == 1) {
        for (int64_t i = 0; i < batch; i++)
            R_BLAS(gemv)(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? (int)n : (int)k, tb ? (int)k : (int)n, 1,
                         b + i * sb, tb ? (int)k : (int)n, a + i * sa, 1, beta, c + i * sc, 1);
        return;
    }
    /* Many small products (attention heads): one per thread, each GEMM on its calling thread
     * (OpenBLAS is the OpenMP build, CMakeLists.txt), instead of every small GEMM split across
     * all threads. Larger ones are called outside any parallel region, where OpenBLAS threads
     * them (inside an inactive `parallel if (0)` region the training step ran several times
     * slower). */
    if (batch > 1 && m * n * k < LU_MATMUL_SMALL) {
#pragma omp parallel for
        for (int64_t i = 0; i < batch; i++)
            R_BLAS(gemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                         (int)k, 1, a + i * sa, ta ? (int)m : (int)k, b + i * sb, tb ? (int)k : (int)n, beta,
                         c + i * sc, (int)n);
        return;
    }
    for (int64_t i = 0; i < batch; i++)
        R_BLAS(gemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                     (int)k, 1, a + i * sa, ta ? (int)m : (int)k, b + i * sb, tb ? (int)k : (int)n, beta,
                     c + i * sc, (int)n);
}

static lu_status R(matmul_fwd)(const lu_op_call *call)
{
    const lu_matmul_params *p = call->params;
    const lu_tensor *a = call->in[0], *b = call->in[1];
    lu_tensor *c = call->out[0];
    int64_t batch = a->shape[0], m = c->shape[1], n = c->shape[2];
    int64_t k = p->trans_a ? a->shape[1] : a->shape[2];
    int64_t sb = b->shape[0] == 1 ? 0 : k * n;
    R(gemm_batch)(batch, p->trans_a, p->trans_b, m, n, k, lu_tensor_data(a), m * k, lu_tensor_data(b), sb, 0,
                  lu_tensor_data(c), m * n);
    return LU_OK;
}

/* in = [dc, a, b, c], out = [da, db]; dop(A) = dC op(B)^T, dop(B) = op(A)^T dC. */
static lu_status R(matmul_bwd)(const lu_op_call *call)
{
    const lu_matmul_params *p = call->params;
    const lu_tensor *dc = call->in[0], *a = call->in[1], *b = call->in[2];
    lu_tensor *da = call->out[0], *db = call->out[1];
    int64_t batch = a->shape[0], m = dc->shape[1], n = dc->shape[2];
    int64_t k = p->trans_a ? a->shape[1] : a->shape[2];
    bool shared_b = b->shape[0] == 1 && batch > 1;
    const real *A = lu_tensor_data(a), *B = lu_tensor_data(b), *DC = lu_tensor_data(dc);
    int64_t sb = shared_b ? 0 : k * n;
    if (da) {
        real *DA = lu_tensor_data(da);
        if (!p->trans_a) R(gemm_batch)(batch, false, !p->trans_b, m, k, n, DC, m * n, B, sb, 0, DA, m * k);
        else R(gemm_batch)(batch, p->trans_b, true, k, m, n, B, sb, DC, m * n, 0, DA, m * k);
    }
    if (db && !shared_b) {
        real *DB = lu_tensor_data(db);
        if (!p->trans_b) R(gemm_batch)(batch, !p->trans_a, false, k, n, m, A, m * k, DC, m * n, 0, DB, k * n);
        else R(gemm_batch)(batch, true, p->trans_a, n, k, m, DC, m * n, A, m * k, 0, DB, k * n);
    } else if (db) {
        /* b shared by the batch: its gradient sums the products in batch order. */
        real *DB = lu_tensor_data(db);
        memset(DB, 0, (size_t)(k * n) * sizeof(real));
        for (int64_t i = 0; i < batch; i++) {
            const real *Ai = A + i * m * k, *DCi = DC + i * m * n;
            if (!p->trans_b) R(gemm_batch)(1, !p->trans_a, false, k, n, m, Ai, 0, DCi, 0, 1, DB, 0);
            else R(gemm_batch)(1, true, p->trans_a, n, k, m, DCi, 0, Ai, 0, 1, DB, 0);
        }
    }
    return LU_OK;
}

/* ---- LINEAR: x [M,K], w [N,K], bias [N] -> y [M,N] = x w^T + bias ---- */

/* One row-major product c = op(a) op(b), m x n x k, with the sizes BLAS refuses (a zero leading
 * dimension) handled here: nothing to write, or a zero sum. */
static void R(linear_gemm)(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const real *a, const real *b, real *c)
{
    if (m == 0 || n == 0) return;
    if (k == 0) memset(c, 0, (size_t)(m * n) * sizeof(real));
    else R(gemm_batch)(1, ta, tb, m, n, k, a, 0, b, 0, 0, c, 0);
}

/* The product, then the bias added to each row: the same sums as MATMUL followed by ADD. */
static lu_status R(linear_fwd)(const lu_op_call *call)
{
    const lu_tensor *x = call->in[0], *w = call->in[1], *bias = call->in[2];
    lu_tensor *y = call->out[0];
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
    const real *B = lu_tensor_data(bias);
    real *Y = lu_tensor_data(y);
    R(linear_gemm)(false, true, m, n, k, lu_tensor_data(x), lu_tensor_data(w), Y);
#pragma omp parallel for if (m * n > 32768)
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) Y[i * n + j] += B[j];
    return LU_OK;
}

/* in = [dy, x, w, bias, y], out = [dx, dw, dbias]: dx = dy w, dw = dy^T x, dbias = the column sums
 * of dy, accumulated in double down the rows for blocks of 16 columns (a cache line of f32), as
 * ADD's broadcast gradient does: the order does not depend on the thread count. */
static lu_status R(linear_bwd)(const lu_op_call *call)
{
    const lu_tensor *dy = call->in[0], *x = call->in[1], *w = call->in[2];
    lu_tensor *dx = call->out[0], *dw = call->out[1], *db = call->out[2];
    int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
    if (!dy) {
        for (int i = 0; i < 3; i++)
            if (call->out[i]) memset(lu_tensor_data(call->out[i]), 0, lu_tensor_nbytes(call->out[i]));
        return LU_OK;
    }
    const real *DY = lu_tensor_data(dy);
    if (dx) R(linear_gemm)(false, false, m, k, n, DY, lu_tensor_data(w), lu_tensor_data(dx));
    if (dw) R(linear_gemm)(true, false, n, k, m, DY, lu_tensor_data(x), lu_tensor_data(dw));
    if (db) {
        enum { COLS = 16 };
        real *DB = lu_tensor_data(db);
#pragma omp parallel for if (m * n > 32768)
        for (int64_t blk = 0; blk < (n + COLS - 1) / COLS; blk++) {
            int64_t j0 = blk * COLS, jn = n - j0 < COLS ? n - j0 : COLS;
            double acc[COLS] = {0};
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < jn; j++) acc[j] += DY[i * n + j0 + j];
            for (int64_t j = 0; j < jn; j++) DB[j0 + j] = (real)acc[j];
        }
    }
    return LU_OK;
}
