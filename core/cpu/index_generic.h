/* index_generic.h - the float loops of embedding and gather (see generic.h and index.c). */

/* in = [dy, weight, ids, y], out = [dweight, -]: dweight[v] = sum of dy rows whose id is v.
 * Threads own blocks of columns and walk the ids in order. */
static lu_status R(embedding_bwd)(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *ids = c->in[2];
    lu_tensor *dw = c->out[0];
    if (!dw) return LU_OK;
    memset(lu_tensor_data(dw), 0, lu_tensor_nbytes(dw));
    if (!dy) return LU_OK;
    int64_t n = lu_tensor_numel(ids), D = dw->shape[1];
    const real *DY = lu_tensor_data(dy);
    real *DW = lu_tensor_data(dw);
    enum { COLS = 64 };
#pragma omp parallel for if (n * D > 32768)
    for (int64_t blk = 0; blk < (D + COLS - 1) / COLS; blk++) {
        int64_t k0 = blk * COLS, kn = D - k0 < COLS ? D - k0 : COLS;
        for (int64_t i = 0; i < n; i++) {
            const real *restrict src = DY + i * D + k0;
            real *restrict dst = DW + lu_cpu_index_at(ids, i) * D + k0;
#pragma omp simd
            for (int64_t k = 0; k < kn; k++) dst[k] += src[k];
        }
    }
    return LU_OK;
}

/* in = [x, index], out = [y]: y[.., j, ..] = x[.., index[.., j, ..], ..] along dim. */
static lu_status R(gather_fwd)(const lu_op_call *c)
{
    const lu_dim_params *p = c->params;
    const lu_tensor *x = c->in[0], *index = c->in[1];
    int d = p->dim;
    LU_TRY(check_indices("gather", "index", index, x->shape[d]));
    int64_t m = index->shape[d], n = lu_tensor_numel(index);
    if (n == 0) return LU_OK;
    int64_t xs = x->stride[d], is = index->stride[d];
    const real *X = lu_tensor_data(x);
    real *Y = lu_tensor_data(c->out[0]);
#pragma omp parallel for if (n > 32768)
    for (int64_t l = 0; l < n / m; l++) {
        int64_t xo, io;
        gather_line(x, index, d, l, &xo, &io);
        for (int64_t j = 0; j < m; j++) Y[io + j * is] = X[xo + lu_cpu_index_at(index, io + j * is) * xs];
    }
    return LU_OK;
}

/* in = [dy, x, index, y], out = [dx, -]: dy scatter-added into zeros. A line of index only
 * reaches its own line of x, so lines run in parallel and each adds in index order. */
static lu_status R(gather_bwd)(const lu_op_call *c)
{
    const lu_dim_params *p = c->params;
    const lu_tensor *dy = c->in[0], *x = c->in[1], *index = c->in[2];
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    memset(lu_tensor_data(dx), 0, lu_tensor_nbytes(dx));
    int d = p->dim;
    int64_t m = index->shape[d], n = lu_tensor_numel(index);
    if (!dy || n == 0) return LU_OK;
    int64_t xs = x->stride[d], is = index->stride[d];
    const real *DY = lu_tensor_data(dy);
    real *DX = lu_tensor_data(dx);
#pragma omp parallel for if (n > 32768)
    for (int64_t l = 0; l < n / m; l++) {
        int64_t xo, io;
        gather_line(x, index, d, l, &xo, &io);
        for (int64_t j = 0; j < m; j++) DX[xo + lu_cpu_index_at(index, io + j * is) * xs] += DY[io + j * is];
    }
    return LU_OK;
}
