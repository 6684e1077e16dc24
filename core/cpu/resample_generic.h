/* resample_generic.h - the float parts of the frame-rate kernels over `real` (see resample.c). */

/* in = [dy, x, y], out = [dx]: dx[o, s] = sum of dy[o, t] over t in [s*f, min((s+1)*f, out_len)). */
static lu_status R(upsample_bwd)(const lu_op_call *c)
{
    const lu_resample_params *p = c->params;
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    if (!c->in[0]) {
        memset(lu_tensor_data(dx), 0, lu_tensor_nbytes(dx));
        return LU_OK;
    }
    frames f = frames_of(c->in[1], c->in[2], p->dim);
    const real *dy = lu_tensor_data(c->in[0]);
    real *d = lu_tensor_data(dx);
#pragma omp parallel for if (f.outer * f.t * f.inner > 65536)
    for (int64_t r = 0; r < f.outer * f.t; r++) {
        int64_t o = r / f.t, s = r % f.t, t0 = s * p->factor, t1 = t0 + p->factor;
        if (t1 > f.t_out) t1 = f.t_out;
        real *dr = d + r * f.inner;
        for (int64_t i = 0; i < f.inner; i++) dr[i] = 0;
        for (int64_t t = t0; t < t1; t++) {
            const real *g = dy + (o * f.t_out + t) * f.inner;
            for (int64_t i = 0; i < f.inner; i++) dr[i] += g[i];
        }
    }
    return LU_OK;
}

/* w = softmax(bias) in double, followed by `extra` doubles of scratch; the caller frees it. */
static double *R(downsample_weights)(const lu_op_call *c, const lu_tensor *bias, int64_t extra)
{
    const real *b = lu_tensor_data(bias);
    int64_t f = bias->shape[0];
    double *w = malloc((size_t)(f + extra) * sizeof *w);
    if (!w) {
        lu_errorf(LU_ERR_NOMEM, "%s: cannot allocate %lld weights", lu_op_name(c->op), (long long)f);
        return NULL;
    }
    double mx = b[0], s = 0;
    for (int64_t j = 1; j < f; j++) mx = b[j] > mx ? b[j] : mx;
    for (int64_t j = 0; j < f; j++) s += w[j] = exp((double)b[j] - mx);
    for (int64_t j = 0; j < f; j++) w[j] /= s;
    return w;
}

/* icefall SimpleDownsample (asr.md 9.3): x [B,T,C] right-padded by repeating frame T-1 to a
 * multiple of f; y[b, t] = sum_j w_j x[b, min(f*t + j, T-1)]. in = [x, bias], out = [y]. */
static lu_status R(downsample_fwd)(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *bias = c->in[1];
    lu_tensor *y = c->out[0];
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2], To = y->shape[1], f = bias->shape[0];
    double *w;
    LU_TRY_PTR(w, R(downsample_weights)(c, bias, 0));
    const real *X = lu_tensor_data(x);
    real *Y = lu_tensor_data(y);
#pragma omp parallel for collapse(2) if (B * To * C > 16384)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < To; t++) {
            real *yr = Y + (b * To + t) * C;
            for (int64_t i = 0; i < C; i++) yr[i] = 0;
            for (int64_t j = 0; j < f; j++) {
                int64_t s = f * t + j < T ? f * t + j : T - 1;
                const real *xr = X + (b * T + s) * C;
                real wj = (real)w[j];
                for (int64_t i = 0; i < C; i++) yr[i] += wj * xr[i];
            }
        }
    free(w);
    return LU_OK;
}

/* in = [dy, x, bias, y], out = [dx?, dbias?].
 * dx[b, s] = w_{s mod f} dy[b, s/f] for s < T-1; the last frame also collects the pad taps:
 * dx[b, T-1] = sum_{j >= (T-1) mod f} w_j dy[b, (T-1)/f].
 * dbias_k = w_k (G_k - sum_j w_j G_j), G_j = sum_{b,t,c} dy[b,t,c] x[b, min(f*t+j, T-1), c]. */
static lu_status R(downsample_bwd)(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *bias = c->in[2];
    lu_tensor *dx = c->out[0], *dbias = c->out[1];
    if (!dy) {
        for (int i = 0; i < 2; i++)
            if (c->out[i]) memset(lu_tensor_data(c->out[i]), 0, lu_tensor_nbytes(c->out[i]));
        return LU_OK;
    }
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2], To = dy->shape[1], f = bias->shape[0];
    double *w, *G;
    LU_TRY_PTR(w, R(downsample_weights)(c, bias, f));
    G = w + f;
    const real *DY = lu_tensor_data(dy), *X = lu_tensor_data(x);
    if (dx) {
        real *DX = lu_tensor_data(dx);
#pragma omp parallel for collapse(2) if (B * T * C > 16384)
        for (int64_t b = 0; b < B; b++)
            for (int64_t s = 0; s < T; s++) {
                const real *g = DY + (b * To + s / f) * C;
                double ws = w[s % f];
                if (s == T - 1)
                    for (int64_t j = s % f + 1; j < f; j++) ws += w[j];
                real *dr = DX + (b * T + s) * C;
                real wr = (real)ws;
                for (int64_t i = 0; i < C; i++) dr[i] = wr * g[i];
            }
    }
    if (dbias) {
        double wg = 0;
#pragma omp parallel for
        for (int64_t j = 0; j < f; j++) {
            double s = 0;
            for (int64_t b = 0; b < B; b++)
                for (int64_t t = 0; t < To; t++) {
                    const real *g = DY + (b * To + t) * C, *xr = X + (b * T + (f * t + j < T ? f * t + j : T - 1)) * C;
                    for (int64_t i = 0; i < C; i++) s += (double)g[i] * xr[i];
                }
            G[j] = s;
        }
        for (int64_t j = 0; j < f; j++) wg += w[j] * G[j];
        real *DB = lu_tensor_data(dbias);
        for (int64_t j = 0; j < f; j++) DB[j] = (real)(w[j] * (G[j] - wg));
    }
    free(w);
    return LU_OK;
}
