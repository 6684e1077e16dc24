/* norm_generic.h - RMSNorm, LayerNorm, BiasNorm over the last dim and half-split RoPE, written
 * over `real` (see generic.h). Row statistics accumulate in double; the saved statistics (aux
 * outputs) have the input's dtype. A NULL output gradient reads as zero (op.h). */

/* Threads only pay off above this many elements. */
#define LU_NORM_PAR 32768
/* Columns per task of the deterministic column sums (each task owns its columns). */
#define LU_NORM_COLS 16

static void R(zero_outputs)(const lu_op_call *call)
{
    for (int i = 0; i < call->n_out; i++)
        if (call->out[i]) memset(lu_tensor_data(call->out[i]), 0, lu_tensor_nbytes(call->out[i]));
}

/* sum of x*y in double over 8 lanes in a fixed order: the compiler may vectorise it (no
 * reassociation needed) and the result does not depend on the thread count. */
static double R(dot)(const real *x, const real *y, int64_t n)
{
    double lane[8] = {0}, s = 0;
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        for (int l = 0; l < 8; l++) lane[l] += (double)x[c + l] * y[c + l];
    for (; c < n; c++) s += (double)x[c] * y[c];
    for (int l = 0; l < 8; l++) s += lane[l];
    return s;
}

/* ---- RMSNorm: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps) (HF Qwen3RMSNorm) ---- */

static lu_status R(rmsnorm_fwd)(const lu_op_call *call)
{
    const lu_norm_params *p = call->params;
    const lu_tensor *xt = call->in[0], *wt = call->in[1];
    int64_t d = xt->shape[xt->ndim - 1], rows = d ? lu_tensor_numel(xt) / d : 0;
    const real *x = lu_tensor_data(xt), *w = wt ? lu_tensor_data(wt) : NULL;
    real *y = lu_tensor_data(call->out[0]), *rstd = lu_tensor_data(call->out[1]);
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
    for (int64_t r = 0; r < rows; r++) {
        const real *xr = x + r * d;
        real s = (real)(1.0 / sqrt(R(dot)(xr, xr, d) / (double)d + p->eps));
        rstd[r] = s;
        if (w)
            for (int64_t c = 0; c < d; c++) y[r * d + c] = (xr[c] * s) * w[c];
        else
            for (int64_t c = 0; c < d; c++) y[r * d + c] = xr[c] * s;
    }
    return LU_OK;
}

/* in = [dy, drstd, x, w, y, rstd]: dx = s*g - x * s^3/D * (sum(g*x) + drstd) with g = dy*w, the
 * last term being the gradient through the aux output rstd (d s / d x_j = -s^3 x_j / D);
 * dw = sum over rows of dy * x * s. Either of dy and drstd may be NULL (zero). */
static lu_status R(rmsnorm_bwd)(const lu_op_call *call)
{
    const lu_tensor *dyt = call->in[0], *drt = call->in[1], *xt = call->in[2], *wt = call->in[3];
    if (!dyt && !drt) {
        R(zero_outputs)(call);
        return LU_OK;
    }
    int64_t d = xt->shape[xt->ndim - 1], rows = d ? lu_tensor_numel(xt) / d : 0;
    const real *dy = dyt ? lu_tensor_data(dyt) : NULL, *x = lu_tensor_data(xt), *rstd = lu_tensor_data(call->in[5]);
    const real *w = wt ? lu_tensor_data(wt) : NULL, *drstd = drt ? lu_tensor_data(drt) : NULL;
    if (call->out[0]) {
        real *dx = lu_tensor_data(call->out[0]);
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
        for (int64_t r = 0; r < rows; r++) {
            const real *xr = x + r * d, *dyr = dy ? dy + r * d : NULL;
            double s = rstd[r], dot = drstd ? (double)drstd[r] : 0;
            if (dyr)
                for (int64_t c = 0; c < d; c++) dot += (double)dyr[c] * (w ? w[c] : 1) * xr[c];
            double k = s * s * s * dot / (double)d;
            for (int64_t c = 0; c < d; c++)
                dx[r * d + c] = (real)((dyr ? s * dyr[c] * (w ? w[c] : 1) : 0) - k * xr[c]);
        }
    }
    if (call->out[1] && !dy) memset(lu_tensor_data(call->out[1]), 0, lu_tensor_nbytes(call->out[1]));
    if (call->out[1] && dy) {
        real *dw = lu_tensor_data(call->out[1]);
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
        for (int64_t c0 = 0; c0 < d; c0 += LU_NORM_COLS) {
            int64_t n = d - c0 < LU_NORM_COLS ? d - c0 : LU_NORM_COLS;
            double acc[LU_NORM_COLS] = {0};
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < n; c++) acc[c] += (double)dy[r * d + c0 + c] * x[r * d + c0 + c] * rstd[r];
            for (int64_t c = 0; c < n; c++) dw[c0 + c] = (real)acc[c];
        }
    }
    return LU_OK;
}

/* ---- LayerNorm: y = (x - mean) * rstd * w + b, biased variance (torch.nn.LayerNorm) ---- */

static lu_status R(layernorm_fwd)(const lu_op_call *call)
{
    const lu_norm_params *p = call->params;
    const lu_tensor *xt = call->in[0], *wt = call->in[1], *bt = call->in[2];
    int64_t d = xt->shape[xt->ndim - 1], rows = d ? lu_tensor_numel(xt) / d : 0;
    const real *x = lu_tensor_data(xt), *w = wt ? lu_tensor_data(wt) : NULL, *b = bt ? lu_tensor_data(bt) : NULL;
    real *y = lu_tensor_data(call->out[0]), *mean = lu_tensor_data(call->out[1]), *rstd = lu_tensor_data(call->out[2]);
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
    for (int64_t r = 0; r < rows; r++) {
        const real *xr = x + r * d;
        double m, v;
        LU_CPU_LANE_SUM(m, d, c, (double)xr[c]);
        m /= (double)d;
        LU_CPU_LANE_SUM(v, d, c, ((double)xr[c] - m) * ((double)xr[c] - m));
        double s = 1.0 / sqrt(v / (double)d + p->eps);
        mean[r] = (real)m;
        rstd[r] = (real)s;
        for (int64_t c = 0; c < d; c++) {
            double h = ((double)xr[c] - m) * s;
            y[r * d + c] = (real)(h * (w ? w[c] : 1) + (b ? b[c] : 0));
        }
    }
    return LU_OK;
}

/* in = [dy, dmean, drstd, x, w, b, y, mean, rstd]; with h = (x - mean) * s and g = dy * w:
 * dx = s * (g - mean(g) - h * mean(g * h)); dw = sum dy * h; db = sum dy. */
static lu_status R(layernorm_bwd)(const lu_op_call *call)
{
    const lu_tensor *dyt = call->in[0], *xt = call->in[3], *wt = call->in[4];
    if (!dyt) {
        R(zero_outputs)(call);
        return LU_OK;
    }
    int64_t d = xt->shape[xt->ndim - 1], rows = d ? lu_tensor_numel(xt) / d : 0;
    const real *dy = lu_tensor_data(dyt), *x = lu_tensor_data(xt), *w = wt ? lu_tensor_data(wt) : NULL;
    const real *mean = lu_tensor_data(call->in[7]), *rstd = lu_tensor_data(call->in[8]);
    if (call->out[0]) {
        real *dx = lu_tensor_data(call->out[0]);
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
        for (int64_t r = 0; r < rows; r++) {
            const real *xr = x + r * d, *dyr = dy + r * d;
            double s = rstd[r], m = mean[r], sg, sgh;
            if (w) {
                LU_CPU_LANE_SUM(sg, d, c, (double)dyr[c] * w[c]);
                LU_CPU_LANE_SUM(sgh, d, c, (double)dyr[c] * w[c] * ((double)xr[c] - m) * s);
            } else {
                LU_CPU_LANE_SUM(sg, d, c, (double)dyr[c]);
                LU_CPU_LANE_SUM(sgh, d, c, (double)dyr[c] * ((double)xr[c] - m) * s);
            }
            sg /= (double)d;
            sgh /= (double)d;
            for (int64_t c = 0; c < d; c++) {
                double g = (double)dyr[c] * (w ? w[c] : 1);
                dx[r * d + c] = (real)(s * (g - sg - ((double)xr[c] - m) * s * sgh));
            }
        }
    }
    real *dw = call->out[1] ? lu_tensor_data(call->out[1]) : NULL, *db = call->out[2] ? lu_tensor_data(call->out[2]) : NULL;
    if (dw || db) {
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
        for (int64_t c0 = 0; c0 < d; c0 += LU_NORM_COLS) {
            int64_t n = d - c0 < LU_NORM_COLS ? d - c0 : LU_NORM_COLS;
            double aw[LU_NORM_COLS] = {0}, ab[LU_NORM_COLS] = {0};
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < n; c++) {
                    int64_t i = r * d + c0 + c;
                    aw[c] += (double)dy[i] * ((double)x[i] - mean[r]) * rstd[r];
                    ab[c] += dy[i];
                }
            for (int64_t c = 0; c < n; c++) {
                if (dw) dw[c0 + c] = (real)aw[c];
                if (db) db[c0 + c] = (real)ab[c];
            }
        }
    }
    return LU_OK;
}

/* ---- BiasNorm: y = x * exp(log_scale) * rstd, rstd = mean((x - bias)^2)^(-1/2), no epsilon
 * (icefall zipformer/scaling.py BiasNorm; reference/asr.md 9.1) ---- */

static lu_status R(biasnorm_fwd)(const lu_op_call *call)
{
    const lu_tensor *xt = call->in[0];
    int64_t d = xt->shape[xt->ndim - 1], rows = d ? lu_tensor_numel(xt) / d : 0;
    const real *x = lu_tensor_data(xt), *b = lu_tensor_data(call->in[1]);
    double scale = exp((double)*(const real *)lu_tensor_data(call->in[2]));
    real *y = lu_tensor_data(call->out[0]), *rstd = lu_tensor_data(call->out[1]);
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
    for (int64_t r = 0; r < rows; r++) {
        const real *xr = x + r * d;
        double ss = 0;
        for (int64_t c = 0; c < d; c++) ss += ((double)xr[c] - b[c]) * ((double)xr[c] - b[c]);
        double s = 1.0 / sqrt(ss / (double)d);
        rstd[r] = (real)s;
        for (int64_t c = 0; c < d; c++) y[r * d + c] = (real)(xr[c] * scale * s);
    }
    return LU_OK;
}

/* in = [dy, drstd, x, bias, log_scale, y, rstd]; with e = exp(log_scale), u = x - bias and
 * A = sum(dy * x) * e per row: dx = dy*e*s - A*s^3*u/D, dbias = sum over rows of A*s^3*u/D,
 * dlog_scale = sum(dy * y). */
static lu_status R(biasnorm_bwd)(const lu_op_call *call)
{
    const lu_tensor *dyt = call->in[0], *xt = call->in[2];
    if (!dyt) {
        R(zero_outputs)(call);
        return LU_OK;
    }
    int64_t d = xt->shape[xt->ndim - 1], rows = d ? lu_tensor_numel(xt) / d : 0;
    const real *dy = lu_tensor_data(dyt), *x = lu_tensor_data(xt), *b = lu_tensor_data(call->in[3]);
    const real *y = lu_tensor_data(call->in[5]), *rstd = lu_tensor_data(call->in[6]);
    double e = exp((double)*(const real *)lu_tensor_data(call->in[4]));
    real *dx = call->out[0] ? lu_tensor_data(call->out[0]) : NULL;
    /* Per-row k = A*s^3/D, and per-row sum(dy*y), summed in row order afterwards. */
    double *k = malloc((size_t)(2 * rows + 1) * sizeof *k);
    if (!k) return lu_errorf(LU_ERR_NOMEM, "biasnorm backward: out of memory for %lld rows", (long long)rows);
    double *dyy = k + rows;
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
    for (int64_t r = 0; r < rows; r++) {
        const real *xr = x + r * d, *dyr = dy + r * d;
        double s = rstd[r], a = 0, t = 0;
        for (int64_t c = 0; c < d; c++) {
            a += (double)dyr[c] * xr[c];
            t += (double)dyr[c] * y[r * d + c];
        }
        k[r] = a * e * s * s * s / (double)d;
        dyy[r] = t;
        if (dx)
            for (int64_t c = 0; c < d; c++) dx[r * d + c] = (real)(dyr[c] * e * s - k[r] * ((double)xr[c] - b[c]));
    }
    if (call->out[1]) {
        real *db = lu_tensor_data(call->out[1]);
#pragma omp parallel for if (rows * d > LU_NORM_PAR)
        for (int64_t c0 = 0; c0 < d; c0 += LU_NORM_COLS) {
            int64_t n = d - c0 < LU_NORM_COLS ? d - c0 : LU_NORM_COLS;
            double acc[LU_NORM_COLS] = {0};
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < n; c++) acc[c] += k[r] * ((double)x[r * d + c0 + c] - b[c0 + c]);
            for (int64_t c = 0; c < n; c++) db[c0 + c] = (real)acc[c];
        }
    }
    if (call->out[2]) {
        double t = 0;
        for (int64_t r = 0; r < rows; r++) t += dyy[r];
        *(real *)lu_tensor_data(call->out[2]) = (real)t;
    }
    free(k);
    return LU_OK;
}

/* ---- RoPE, half-split (transformers rotate_half / apply_rotary_pos_emb):
 * inv_freq_i = 1 / theta^(2i/rd), a = pos * inv_freq_i, for i < rd/2:
 * y_i = x_i cos a - x_{i+rd/2} sin a, y_{i+rd/2} = x_{i+rd/2} cos a + x_i sin a.
 * The angle is computed in `real`, as transformers does in float32 for f32 models.
 * sign = +1 rotates forward; -1 applies the inverse rotation (the backward). ---- */

static void R(rope_apply)(const lu_rope_params *p, const lu_tensor *src_t, const lu_tensor *pos, real *dst, real sign)
{
    int64_t bt = src_t->shape[0] * src_t->shape[1], nh = src_t->shape[2], d = src_t->shape[3];
    int64_t rd = p->rotary_dim ? p->rotary_dim : d, half = rd / 2;
    const real *src = lu_tensor_data(src_t);
    real th = (real)p->theta;
#pragma omp parallel for if (bt * nh * d > LU_NORM_PAR)
    for (int64_t t = 0; t < bt; t++) {
        real ps = (real)lu_cpu_index_at(pos, t);
        const real *xs = src + t * nh * d;
        real *ys = dst + t * nh * d;
        for (int64_t i = 0; i < half; i++) {
            real inv = (real)1 / pow(th, (real)(2 * i) / (real)rd);
            real a = ps * inv, c = cos(a), s = sign * sin(a);
            for (int64_t h = 0; h < nh; h++) {
                real x0 = xs[h * d + i], x1 = xs[h * d + i + half];
                ys[h * d + i] = x0 * c - x1 * s;
                ys[h * d + i + half] = x1 * c + x0 * s;
            }
        }
        for (int64_t h = 0; h < nh; h++)
            for (int64_t i = rd; i < d; i++) ys[h * d + i] = xs[h * d + i];
    }
}

static lu_status R(rope_fwd)(const lu_op_call *call)
{
    R(rope_apply)(call->params, call->in[0], call->in[1], lu_tensor_data(call->out[0]), 1);
    return LU_OK;
}

/* in = [dy, x, positions, y]; the rotation is orthogonal, so dx is dy rotated back. */
static lu_status R(rope_bwd)(const lu_op_call *call)
{
    if (!call->out[0]) return LU_OK;
    if (!call->in[0]) {
        R(zero_outputs)(call);
        return LU_OK;
    }
    R(rope_apply)(call->params, call->in[0], call->in[2], lu_tensor_data(call->out[0]), -1);
    return LU_OK;
}

#undef LU_NORM_PAR
#undef LU_NORM_COLS
