/* reduce_generic.h - reductions, softmax and cross-entropy over `real` (see generic.h and
 * reduce.c). Sums accumulate in double. */

/* Sum of a contiguous run, in a fixed order (vector lanes, then lanes added). */
static double R(sum_run)(const real *restrict x, int64_t n)
{
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += (double)x[i];
    return s;
}

/* One long run: fixed-size blocks summed in parallel, then the block sums in order, so the
 * result does not depend on the thread count. */
static lu_status R(sum_long_run)(const real *x, int64_t n, double *out)
{
    enum { BLOCK = 16384 };
    int64_t nb = (n + BLOCK - 1) / BLOCK;
    if (nb <= 4) {
        *out = R(sum_run)(x, n);
        return LU_OK;
    }
    double *part = malloc((size_t)nb * sizeof *part);
    if (!part) return lu_errorf(LU_ERR_NOMEM, "sum: out of memory for %lld partial sums", (long long)nb);
#pragma omp parallel for
    for (int64_t b = 0; b < nb; b++) {
        int64_t len = n - b * BLOCK < BLOCK ? n - b * BLOCK : BLOCK;
        part[b] = R(sum_run)(x + b * BLOCK, len);
    }
    double s = 0;
    for (int64_t b = 0; b < nb; b++) s += part[b];
    free(part);
    *out = s;
    return LU_OK;
}

/* SUM and MEAN: x [outer, n, inner] -> y [outer, 1, inner]. */
static lu_status R(sum_fwd)(const lu_op_call *c)
{
    const lu_reduce_params *p = c->params;
    int64_t outer, n, inner;
    reduce_geom(c->in[0], p->dim, &outer, &n, &inner);
    const real *X = lu_tensor_data(c->in[0]);
    real *Y = lu_tensor_data(c->out[0]);
    /* mean of nothing is 0/0 = NaN, as torch. */
    double scale = c->op == LU_OP_MEAN ? 1.0 / (double)n : 1.0;
    if (inner == 1 && outer == 1) {
        double s = 0;
        LU_TRY(R(sum_long_run)(X, n, &s));
        Y[0] = (real)(s * scale);
    } else if (inner == 1) {
#pragma omp parallel for if (outer * n > 32768)
        for (int64_t o = 0; o < outer; o++) Y[o] = (real)(R(sum_run)(X + o * n, n) * scale);
    } else {
        /* Blocks of columns summed row by row: contiguous reads, one owner per output. */
        enum { COLS = 64 };
        int64_t nblk = (inner + COLS - 1) / COLS;
#pragma omp parallel for if (outer * n * inner > 32768)
        for (int64_t ob = 0; ob < outer * nblk; ob++) {
            int64_t o = ob / nblk, k0 = (ob % nblk) * COLS, kn = inner - k0 < COLS ? inner - k0 : COLS;
            double acc[COLS] = {0};
            for (int64_t j = 0; j < n; j++) {
                const real *xr = X + (o * n + j) * inner + k0;
                for (int64_t k = 0; k < kn; k++) acc[k] += (double)xr[k];
            }
            for (int64_t k = 0; k < kn; k++) Y[o * inner + k0 + k] = (real)(acc[k] * scale);
        }
    }
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]: dx[o, j, i] = dy[o, i] (/ n for MEAN). */
static lu_status R(sum_bwd)(const lu_op_call *c)
{
    const lu_reduce_params *p = c->params;
    int64_t outer, n, inner;
    reduce_geom(c->in[1], p->dim, &outer, &n, &inner);
    const real *DY = lu_tensor_data(c->in[0]);
    real *DX = lu_tensor_data(c->out[0]);
    real scale = c->op == LU_OP_MEAN ? (real)(1.0 / (double)n) : 1;
#pragma omp parallel for if (outer * n * inner > 32768)
    for (int64_t r = 0; r < outer * n; r++) {
        const real *restrict dy = DY + (r / n) * inner;
        real *restrict dx = DX + r * inner;
#pragma omp simd
        for (int64_t i = 0; i < inner; i++) dx[i] = dy[i] * scale;
    }
    return LU_OK;
}

/* MAX: y [outer, 1, inner] and argmax (i64, index along the dim; flat for LU_ALL_DIMS). The
 * first maximum wins; a NaN is the maximum (as torch.max). */
static lu_status R(max_fwd)(const lu_op_call *c)
{
    const lu_reduce_params *p = c->params;
    int64_t outer, n, inner;
    reduce_geom(c->in[0], p->dim, &outer, &n, &inner);
    const real *X = lu_tensor_data(c->in[0]);
    real *Y = lu_tensor_data(c->out[0]);
    int64_t *argmax = lu_tensor_data(c->out[1]);
#pragma omp parallel for if (outer * n * inner > 32768)
    for (int64_t oi = 0; oi < outer * inner; oi++) {
        const real *x = X + (oi / inner) * n * inner + oi % inner;
        real best = x[0];
        int64_t at = 0;
        for (int64_t j = 1; j < n && best == best; j++) {
            real v = x[j * inner];
            if (v > best || v != v) {
                best = v;
                at = j;
            }
        }
        Y[oi] = best;
        argmax[oi] = at;
    }
    return LU_OK;
}

/* in = [dy, dargmax, x, y, argmax], out = [dx]: the gradient goes to the first maximum. */
static lu_status R(max_bwd)(const lu_op_call *c)
{
    const lu_reduce_params *p = c->params;
    const lu_tensor *dy = c->in[0];
    int64_t outer, n, inner;
    reduce_geom(c->in[2], p->dim, &outer, &n, &inner);
    real *DX = lu_tensor_data(c->out[0]);
    memset(DX, 0, lu_tensor_nbytes(c->out[0]));
    if (!dy) return LU_OK;
    const real *DY = lu_tensor_data(dy);
    const int64_t *argmax = lu_tensor_data(c->in[4]);
    for (int64_t oi = 0; oi < outer * inner; oi++) DX[(oi / inner) * n * inner + argmax[oi] * inner + oi % inner] = DY[oi];
    return LU_OK;
}

/* ---- softmax / log-softmax ------------------------------------------------------------- */

/* One contiguous row of n elements: y = softmax(x) or log_softmax(x), max-subtracted. */
static void R(softmax_row1)(const real *restrict x, real *restrict y, int64_t n, bool log_form)
{
    real mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    double sum = 0;
    if (log_form) {
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; j++) sum += (double)R_EXP(x[j] - mx);
        /* (x - max) - log(sum) keeps the precision that x - (max + log(sum)) would round away. */
        real ls = (real)log(sum);
        for (int64_t j = 0; j < n; j++) y[j] = (x[j] - mx) - ls;
    } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; j++) {
            y[j] = R_EXP(x[j] - mx);
            sum += (double)y[j];
        }
        real inv = (real)(1.0 / sum);
        for (int64_t j = 0; j < n; j++) y[j] *= inv;
    }
}

/* A row at stride s goes through a contiguous scratch copy so the arithmetic stays in one
 * vectorised routine. */
static void R(softmax_row)(const real *x, real *y, int64_t n, int64_t s, bool log_form, real *scratch)
{
    if (s == 1) {
        R(softmax_row1)(x, y, n, log_form);
        return;
    }
    for (int64_t j = 0; j < n; j++) scratch[j] = x[j * s];
    R(softmax_row1)(scratch, scratch + n, n, log_form);
    for (int64_t j = 0; j < n; j++) y[j * s] = scratch[n + j];
}

static lu_status R(softmax_fwd)(const lu_op_call *c)
{
    const lu_dim_params *p = c->params;
    int64_t outer, n, inner;
    reduce_geom(c->in[0], p->dim, &outer, &n, &inner);
    const real *X = lu_tensor_data(c->in[0]);
    real *Y = lu_tensor_data(c->out[0]);
    bool log_form = c->op == LU_OP_LOG_SOFTMAX;
    real *scratch = NULL;
    if (inner > 1 && !(scratch = malloc(sizeof(real) * 2 * (size_t)n * (size_t)omp_get_max_threads())))
        return lu_errorf(LU_ERR_NOMEM, "softmax: out of memory for %lld-element rows", (long long)n);
#pragma omp parallel for if (outer * n * inner > 32768)
    for (int64_t oi = 0; oi < outer * inner; oi++) {
        int64_t off = (oi / inner) * n * inner + oi % inner;
        real *mine = scratch ? scratch + 2 * n * omp_get_thread_num() : NULL;
        R(softmax_row)(X + off, Y + off, n, inner, log_form, mine);
    }
    free(scratch);
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]. softmax: dx = y (dy - sum(dy y)); log_softmax:
 * dx = dy - exp(y) sum(dy). */
static lu_status R(softmax_bwd)(const lu_op_call *c)
{
    const lu_dim_params *p = c->params;
    int64_t outer, n, inner;
    reduce_geom(c->in[1], p->dim, &outer, &n, &inner);
    const real *DY = lu_tensor_data(c->in[0]), *Y = lu_tensor_data(c->in[2]);
    real *DX = lu_tensor_data(c->out[0]);
    bool log_form = c->op == LU_OP_LOG_SOFTMAX;
#pragma omp parallel for if (outer * n * inner > 32768)
    for (int64_t oi = 0; oi < outer * inner; oi++) {
        int64_t off = (oi / inner) * n * inner + oi % inner;
        const real *dy = DY + off, *y = Y + off;
        real *dx = DX + off;
        double s = 0;
        for (int64_t j = 0; j < n; j++) s += log_form ? (double)dy[j * inner] : (double)dy[j * inner] * (double)y[j * inner];
        real sr = (real)s;
        for (int64_t j = 0; j < n; j++) {
            int64_t k = j * inner;
            dx[k] = log_form ? dy[k] - R_EXP(y[k]) * sr : y[k] * (dy[k] - sr);
        }
    }
    return LU_OK;
}

/* ---- cross-entropy ---------------------------------------------------------------------- */

/* log(sum_j exp(x_j - max)) of one contiguous row, and its max. */
static double R(row_lse)(const real *x, int64_t n, real *max)
{
    real mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    *max = mx;
    if (isinf(mx)) return 0;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) s += (double)R_EXP(x[j] - mx);
    return log(s);
}

/* in = [logits [N,V], target [N]], out = [loss ([] or [N]), lse [N], count [1]], every float
 * operand a `real` (reduce.c hands 16-bit logits over widened to f32, with their f32 loss, lse
 * and count). Row losses are log(sum exp(x - max)) - (x[t] - max) in double; the softmax itself
 * is never stored. */
static lu_status R(xent_fwd)(const lu_op_call *c)
{
    const lu_cross_entropy_params *p = c->params;
    const lu_tensor *logits = c->in[0], *target = c->in[1];
    int64_t N = logits->shape[0], V = logits->shape[1];
    for (int64_t i = 0; i < N; i++) {
        int64_t t = lu_cpu_index_at(target, i);
        if (t != p->ignore_index && (t < 0 || t >= V))
            return lu_errorf(LU_ERR_INVALID, "cross_entropy: target %lld at position %lld is outside [0, %lld) "
                             "and is not ignore_index %lld", (long long)t, (long long)i, (long long)V,
                             (long long)p->ignore_index);
    }
    double *rows = malloc((size_t)(N ? N : 1) * sizeof *rows);
    if (!rows) return lu_errorf(LU_ERR_NOMEM, "cross_entropy: out of memory for %lld row losses", (long long)N);
    const real *X = lu_tensor_data(logits);
    real *loss = lu_tensor_data(c->out[0]), *lse = lu_tensor_data(c->out[1]), *count = lu_tensor_data(c->out[2]);
#pragma omp parallel for if (N * V > 32768)
    for (int64_t i = 0; i < N; i++) {
        real mx;
        double ls = R(row_lse)(X + i * V, V, &mx);
        int64_t t = lu_cpu_index_at(target, i);
        lse[i] = (real)(ls + (double)mx);
        rows[i] = t == p->ignore_index ? 0.0 : ls - (double)(X[i * V + t] - mx);
    }
    double total = 0;
    int64_t counted = 0;
    for (int64_t i = 0; i < N; i++) {
        counted += lu_cpu_index_at(target, i) != p->ignore_index;
        total += rows[i];
        if (p->reduction == LU_REDUCE_NONE) loss[i] = (real)rows[i];
    }
    free(rows);
    /* torch: the mean over zero counted targets is 0/0 = NaN. */
    if (p->reduction == LU_REDUCE_SUM) loss[0] = (real)total;
    if (p->reduction == LU_REDUCE_MEAN) loss[0] = (real)(total / (double)counted);
    count[0] = (real)counted;
    return LU_OK;
}

/* in = [dloss, dlse, dcount, logits, target, loss, lse, count], out = [dlogits, -], every float
 * operand a `real` (reduce.c runs 16-bit logits and dlogits through f32 copies; their dloss is f32):
 * dlogits[i, j] = g_i (exp(x_ij - lse_i) - [j == t_i]), g_i = 0 for ignored rows. */
static lu_status R(xent_bwd)(const lu_op_call *c)
{
    const lu_cross_entropy_params *p = c->params;
    const lu_tensor *dloss = c->in[0], *logits = c->in[3], *target = c->in[4];
    real *DX = lu_tensor_data(c->out[0]);
    if (!DX) return LU_OK;
    int64_t N = logits->shape[0], V = logits->shape[1];
    if (!dloss) {
        memset(DX, 0, lu_tensor_nbytes(c->out[0]));
        return LU_OK;
    }
    const real *X = lu_tensor_data(logits), *LSE = lu_tensor_data(c->in[6]), *DL = lu_tensor_data(dloss);
    real count = *(const real *)lu_tensor_data(c->in[7]);
#pragma omp parallel for if (N * V > 32768)
    for (int64_t i = 0; i < N; i++) {
        int64_t t = lu_cpu_index_at(target, i);
        real *dx = DX + i * V;
        if (t == p->ignore_index) {
            memset(dx, 0, (size_t)V * sizeof *dx);
            continue;
        }
        real g = p->reduction == LU_REDUCE_NONE ? DL[i] : p->reduction == LU_REDUCE_SUM ? DL[0] : DL[0] / count;
        const real *x = X + i * V;
        real lse = LSE[i];
#pragma omp simd
        for (int64_t j = 0; j < V; j++) dx[j] = g * R_EXP(x[j] - lse);
        dx[t] -= g;
    }
    return LU_OK;
}
