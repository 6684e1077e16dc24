/* conv_generic.h - convolution, batch norm and dropout kernels over `real` (see generic.h and
 * conv.c). Layouts: x [B,Cin,H,W], w [Cout,Cin/g,KH,KW], y [B,Cout,OH,OW] (H = KH = OH = 1 for
 * conv1d); batch norm x [B,C,S] with S the product of the trailing dims. */

/* ---- convolution ---------------------------------------------------------------------------- */

/* col [(c*KH + i)*KW + j, oy*OW + ox] = x [c, oy*sh - ph + i*dh, ox*sw - pw + j*dw] (0 outside),
 * for the Cin/g channels of one group. Serial on purpose, as is col2im: an OpenMP region between
 * two multithreaded GEMMs leaves spinning threads that slowed a k3 256->256 conv1d tenfold. */
static void R(im2col)(const conv_geom *g, const real *x, real *col)
{
    int64_t rows = g->cin / g->groups * g->kh * g->kw, L = g->oh * g->ow;
    for (int64_t r = 0; r < rows; r++) {
        int64_t c = r / (g->kh * g->kw), i = r / g->kw % g->kh, j = r % g->kw;
        for (int64_t oy = 0; oy < g->oh; oy++) {
            real *dst = col + r * L + oy * g->ow;
            int64_t iy = oy * g->stride[0] - g->pad[0] + i * g->dil[0];
            if (iy < 0 || iy >= g->h) {
                memset(dst, 0, (size_t)g->ow * sizeof(real));
                continue;
            }
            const real *src = x + (c * g->h + iy) * g->w;
            for (int64_t ox = 0; ox < g->ow; ox++) {
                int64_t ix = ox * g->stride[1] - g->pad[1] + j * g->dil[1];
                dst[ox] = ix >= 0 && ix < g->w ? src[ix] : 0;
            }
        }
    }
}

/* The adjoint of im2col: dx [c, iy, ix] = sum of the col entries that read it. */
static void R(col2im)(const conv_geom *g, const real *col, real *dx)
{
    int64_t cg = g->cin / g->groups, L = g->oh * g->ow;
    for (int64_t c = 0; c < cg; c++) {
        real *dxc = dx + c * g->h * g->w;
        memset(dxc, 0, (size_t)(g->h * g->w) * sizeof(real));
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) {
                const real *src = col + ((c * g->kh + i) * g->kw + j) * L;
                for (int64_t oy = 0; oy < g->oh; oy++) {
                    int64_t iy = oy * g->stride[0] - g->pad[0] + i * g->dil[0];
                    if (iy < 0 || iy >= g->h) continue;
                    for (int64_t ox = 0; ox < g->ow; ox++) {
                        int64_t ix = ox * g->stride[1] - g->pad[1] + j * g->dil[1];
                        if (ix >= 0 && ix < g->w) dxc[iy * g->w + ix] += src[oy * g->ow + ox];
                    }
                }
            }
    }
}

/* Direct loop when Cin/g == 1: output channel oc reads input channel oc / (Cout/g). */
/* Stride-1 conv1d (the Conformer/Zipformer modules): one tap at a time over the whole row, so the
 * inner loop runs over contiguous output frames and vectorises. */
static void R(conv_depthwise_fwd_row)(const conv_geom *g, const real *x, const real *w, const real *bias, real *y)
{
    int64_t og = g->cout / g->groups, K = g->kw, T = g->w, OT = g->ow;
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < g->batch; b++)
        for (int64_t oc = 0; oc < g->cout; oc++) {
            const real *restrict xc = x + (b * g->cin + oc / og) * T, *wk = w + oc * K;
            real *restrict yc = y + (b * g->cout + oc) * OT;
            real b0 = bias ? bias[oc] : 0;
            for (int64_t t = 0; t < OT; t++) yc[t] = b0;
            for (int64_t j = 0; j < K; j++) {
                int64_t off = j * g->dil[1] - g->pad[1]; /* input frame = output frame + off */
                int64_t lo = off < 0 ? -off : 0, hi = T - off < OT ? T - off : OT;
                real wj = wk[j];
                for (int64_t t = lo; t < hi; t++) yc[t] += wj * xc[t + off];
            }
        }
}

static void R(conv_depthwise_fwd)(const conv_geom *g, const real *x, const real *w, const real *bias, real *y)
{
    int64_t og = g->cout / g->groups, K = g->kh * g->kw;
    if (g->kh == 1 && g->h == 1 && g->stride[1] == 1) {
        R(conv_depthwise_fwd_row)(g, x, w, bias, y);
        return;
    }
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < g->batch; b++)
        for (int64_t oc = 0; oc < g->cout; oc++) {
            const real *xc = x + (b * g->cin + oc / og) * g->h * g->w, *wk = w + oc * K;
            real *yc = y + (b * g->cout + oc) * g->oh * g->ow;
            real b0 = bias ? bias[oc] : 0;
            for (int64_t oy = 0; oy < g->oh; oy++) {
                int64_t ilo, ihi;
                conv_taps(oy, g->stride[0], g->pad[0], g->dil[0], g->kh, g->h, &ilo, &ihi);
                for (int64_t ox = 0; ox < g->ow; ox++) {
                    int64_t jlo, jhi;
                    conv_taps(ox, g->stride[1], g->pad[1], g->dil[1], g->kw, g->w, &jlo, &jhi);
                    real acc = b0;
                    for (int64_t i = ilo; i < ihi; i++) {
                        const real *xr = xc + (oy * g->stride[0] - g->pad[0] + i * g->dil[0]) * g->w
                                         + ox * g->stride[1] - g->pad[1];
                        for (int64_t j = jlo; j < jhi; j++) acc += xr[j * g->dil[1]] * wk[i * g->kw + j];
                    }
                    yc[oy * g->ow + ox] = acc;
                }
            }
        }
}

/* The backward of conv_depthwise_fwd_row, tap by tap over whole rows: dx[t + off] += w_j dy[t];
 * dw_j = sum over the batch (in order) of the row dot product dy[t] x[t + off]. */
static void R(conv_depthwise_bwd_row)(const conv_geom *g, const real *dy, const real *x, const real *w, real *dx,
                                      real *dw)
{
    int64_t og = g->cout / g->groups, K = g->kw, T = g->w, OT = g->ow;
    if (dx) {
#pragma omp parallel for collapse(2)
        for (int64_t b = 0; b < g->batch; b++)
            for (int64_t ic = 0; ic < g->cin; ic++) {
                real *restrict dxc = dx + (b * g->cin + ic) * T;
                memset(dxc, 0, (size_t)T * sizeof(real));
                for (int64_t oc = ic * og; oc < (ic + 1) * og; oc++) {
                    const real *restrict dyc = dy + (b * g->cout + oc) * OT;
                    for (int64_t j = 0; j < K; j++) {
                        int64_t off = j * g->dil[1] - g->pad[1];
                        int64_t lo = off < 0 ? -off : 0, hi = T - off < OT ? T - off : OT;
                        real wj = w[oc * K + j];
                        for (int64_t t = lo; t < hi; t++) dxc[t + off] += wj * dyc[t];
                    }
                }
            }
    }
    if (dw) {
#pragma omp parallel for
        for (int64_t oc = 0; oc < g->cout; oc++)
            for (int64_t j = 0; j < K; j++) {
                int64_t off = j * g->dil[1] - g->pad[1];
                int64_t lo = off < 0 ? -off : 0, hi = T - off < OT ? T - off : OT;
                double acc = 0;
                for (int64_t b = 0; b < g->batch; b++) {
                    const real *xc = x + (b * g->cin + oc / og) * T + off, *dyc = dy + (b * g->cout + oc) * OT;
                    double s = 0;
                    if (hi > lo) LU_CPU_LANE_SUM(s, hi - lo, t, (double)dyc[lo + t] * xc[lo + t]);
                    acc += s;
                }
                dw[oc * K + j] = (real)acc;
            }
    }
}

/* dx: one thread per (batch, input channel), scattering from its Cout/g output channels.
 * dw: one thread per output channel, summing over the batch in order. */
static void R(conv_depthwise_bwd)(const conv_geom *g, const real *dy, const real *x, const real *w, real *dx, real *dw)
{
    int64_t og = g->cout / g->groups, K = g->kh * g->kw, HW = g->h * g->w, OL = g->oh * g->ow;
    if (g->kh == 1 && g->h == 1 && g->stride[1] == 1) {
        R(conv_depthwise_bwd_row)(g, dy, x, w, dx, dw);
        return;
    }
    if (dx) {
#pragma omp parallel for collapse(2)
        for (int64_t b = 0; b < g->batch; b++)
            for (int64_t ic = 0; ic < g->cin; ic++) {
                real *dxc = dx + (b * g->cin + ic) * HW;
                memset(dxc, 0, (size_t)HW * sizeof(real));
                for (int64_t oc = ic * og; oc < (ic + 1) * og; oc++) {
                    const real *dyc = dy + (b * g->cout + oc) * OL, *wk = w + oc * K;
                    for (int64_t oy = 0; oy < g->oh; oy++) {
                        int64_t ilo, ihi;
                        conv_taps(oy, g->stride[0], g->pad[0], g->dil[0], g->kh, g->h, &ilo, &ihi);
                        for (int64_t ox = 0; ox < g->ow; ox++) {
                            int64_t jlo, jhi;
                            conv_taps(ox, g->stride[1], g->pad[1], g->dil[1], g->kw, g->w, &jlo, &jhi);
                            real d = dyc[oy * g->ow + ox];
                            for (int64_t i = ilo; i < ihi; i++) {
                                real *dr = dxc + (oy * g->stride[0] - g->pad[0] + i * g->dil[0]) * g->w
                                           + ox * g->stride[1] - g->pad[1];
                                for (int64_t j = jlo; j < jhi; j++) dr[j * g->dil[1]] += d * wk[i * g->kw + j];
                            }
                        }
                    }
                }
            }
    }
    if (dw) {
#pragma omp parallel for
        for (int64_t oc = 0; oc < g->cout; oc++) {
            real *dwk = dw + oc * K;
            memset(dwk, 0, (size_t)K * sizeof(real));
            for (int64_t b = 0; b < g->batch; b++) {
                const real *xc = x + (b * g->cin + oc / og) * HW, *dyc = dy + (b * g->cout + oc) * OL;
                for (int64_t oy = 0; oy < g->oh; oy++) {
                    int64_t ilo, ihi;
                    conv_taps(oy, g->stride[0], g->pad[0], g->dil[0], g->kh, g->h, &ilo, &ihi);
                    for (int64_t ox = 0; ox < g->ow; ox++) {
                        int64_t jlo, jhi;
                        conv_taps(ox, g->stride[1], g->pad[1], g->dil[1], g->kw, g->w, &jlo, &jhi);
                        real d = dyc[oy * g->ow + ox];
                        for (int64_t i = ilo; i < ihi; i++) {
                            const real *xr = xc + (oy * g->stride[0] - g->pad[0] + i * g->dil[0]) * g->w
                                             + ox * g->stride[1] - g->pad[1];
                            for (int64_t j = jlo; j < jhi; j++) dwk[i * g->kw + j] += d * xr[j * g->dil[1]];
                        }
                    }
                }
            }
        }
    }
}

/* One (batch, group) task t of the general path: y_g = w_g @ im2col(x_g) (see conv.c). */
static void R(conv_gemm_fwd_task)(const conv_geom *g, int64_t t, const real *x, const real *w, real *y, real *col)
{
    int64_t cg = g->cin / g->groups, og = g->cout / g->groups, ck = cg * g->kh * g->kw, L = g->oh * g->ow;
    int64_t b = t / g->groups, grp = t % g->groups;
    const real *xg = x + (b * g->cin + grp * cg) * g->h * g->w;
    if (col) R(im2col)(g, xg, col);
    R_BLAS(gemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)og, (int)L, (int)ck, 1, w + grp * og * ck, (int)ck,
                 col ? col : xg, (int)L, 0, y + (b * g->cout + grp * og) * L, (int)L);
}

/* Task t of the backward: dw_part = dy_g @ col_g^T (into dwp, og x ck), dcol = w_g^T @ dy_g
 * folded back into dx by col2im. */
static void R(conv_gemm_bwd_task)(const conv_geom *g, int64_t t, const real *dy, const real *x, const real *w,
                                  real *dx, real *dwp, real dw_beta, real *col)
{
    int64_t cg = g->cin / g->groups, og = g->cout / g->groups, ck = cg * g->kh * g->kw, L = g->oh * g->ow;
    int64_t b = t / g->groups, grp = t % g->groups;
    const real *xg = x + (b * g->cin + grp * cg) * g->h * g->w, *dyg = dy + (b * g->cout + grp * og) * L;
    real *dxg = dx ? dx + (b * g->cin + grp * cg) * g->h * g->w : NULL;
    if (dwp) {
        if (col) R(im2col)(g, xg, col);
        R_BLAS(gemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (int)og, (int)ck, (int)L, 1, dyg, (int)L, col ? col : xg,
                     (int)L, dw_beta, dwp, (int)ck);
    }
    if (dxg) {
        R_BLAS(gemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (int)ck, (int)L, (int)og, 1, w + grp * og * ck, (int)ck,
                     dyg, (int)L, 0, col ? col : dxg, (int)L);
        if (col) R(col2im)(g, col, dxg);
    }
}

/* General path, one task per (batch, group). With at least one task per thread the tasks run
 * in parallel, each GEMM on its thread (OpenBLAS is the OpenMP build), and each thread has its
 * own im2col buffer; otherwise (B = 1 inference) they run in turn with threaded GEMMs. */
static lu_status R(conv_gemm_fwd)(const lu_op_call *c, const conv_geom *g, const real *x, const real *w, real *y)
{
    int64_t tasks = g->batch * g->groups, colsize = conv_is_pointwise(g) ? 0 : conv_col_size(g);
    bool nomem = false;
    if (!conv_tasks_parallel(tasks)) { /* outside any parallel region: see gemm_batch (matmul) */
        real *col = colsize ? malloc((size_t)colsize * sizeof(real)) : NULL;
        if (colsize && !col) return conv_nomem(c, g);
        for (int64_t t = 0; t < tasks; t++) R(conv_gemm_fwd_task)(g, t, x, w, y, col);
        free(col);
        return LU_OK;
    }
#pragma omp parallel
    {
        real *col = colsize ? malloc((size_t)colsize * sizeof(real)) : NULL;
        if (colsize && !col) {
#pragma omp atomic write
            nomem = true;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++)
            if (!colsize || col) R(conv_gemm_fwd_task)(g, t, x, w, y, col);
        free(col);
    }
    return nomem ? conv_nomem(c, g) : LU_OK;
}

/* dw = sum over the batch of the tasks' parts, added in batch order: in place (beta = 1) when
 * the tasks run in turn, from per-task parts when they run in parallel. */
static lu_status R(conv_gemm_bwd)(const lu_op_call *c, const conv_geom *g, const real *dy, const real *x,
                                  const real *w, real *dx, real *dw)
{
    int64_t tasks = g->batch * g->groups, colsize = conv_is_pointwise(g) ? 0 : conv_col_size(g);
    int64_t og = g->cout / g->groups, wsize = og * (g->cin / g->groups) * g->kh * g->kw;
    bool nomem = false;
    if (!conv_tasks_parallel(tasks)) { /* outside any parallel region: see gemm_batch (matmul) */
        real *col = colsize ? malloc((size_t)colsize * sizeof(real)) : NULL;
        if (colsize && !col) return conv_nomem(c, g);
        if (dw) memset(dw, 0, (size_t)(g->groups * wsize) * sizeof(real));
        for (int64_t t = 0; t < tasks; t++)
            R(conv_gemm_bwd_task)(g, t, dy, x, w, dx, dw ? dw + (t % g->groups) * wsize : NULL, 1, col);
        free(col);
        return LU_OK;
    }
    real *parts = dw ? malloc((size_t)(tasks * wsize) * sizeof(real)) : NULL;
    if (dw && !parts) return conv_nomem(c, g);
#pragma omp parallel
    {
        real *col = colsize ? malloc((size_t)colsize * sizeof(real)) : NULL;
        if (colsize && !col) {
#pragma omp atomic write
            nomem = true;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            if (colsize && !col) continue;
            R(conv_gemm_bwd_task)(g, t, dy, x, w, dx, parts ? parts + t * wsize : NULL, 0, col);
        }
        free(col);
    }
    if (parts && !nomem) {
#pragma omp parallel for
        for (int64_t i = 0; i < g->groups * wsize; i++) {
            int64_t grp = i / wsize, e = i % wsize;
            real s = 0;
            for (int64_t b = 0; b < g->batch; b++) s += parts[(b * g->groups + grp) * wsize + e];
            dw[i] = s;
        }
    }
    free(parts);
    return nomem ? conv_nomem(c, g) : LU_OK;
}

/* in = [x, w, bias?], out = [y]. */
static lu_status R(conv_fwd)(const lu_op_call *c)
{
    const lu_tensor *x = c->in[0], *w = c->in[1], *bias = c->in[2];
    lu_tensor *y = c->out[0];
    conv_geom g = conv_geom_of(c, x, w, y);
    const real *X = lu_tensor_data(x), *W = lu_tensor_data(w), *BIAS = bias ? lu_tensor_data(bias) : NULL;
    real *Y = lu_tensor_data(y);
    if (g.cin == g.groups) {
        R(conv_depthwise_fwd)(&g, X, W, BIAS, Y);
        return LU_OK;
    }
    LU_TRY(R(conv_gemm_fwd)(c, &g, X, W, Y));
    if (BIAS) {
        int64_t L = g.oh * g.ow;
#pragma omp parallel for collapse(2)
        for (int64_t b = 0; b < g.batch; b++)
            for (int64_t oc = 0; oc < g.cout; oc++) {
                real *yc = Y + (b * g.cout + oc) * L;
                for (int64_t l = 0; l < L; l++) yc[l] += BIAS[oc];
            }
    }
    return LU_OK;
}

/* in = [dy, x, w, bias?, y], out = [dx?, dw?, dbias?]. */
static lu_status R(conv_bwd)(const lu_op_call *c)
{
    const lu_tensor *dy = c->in[0], *x = c->in[1], *w = c->in[2], *y = c->in[4];
    lu_tensor *dx = c->out[0], *dw = c->out[1], *db = c->out[2];
    if (!dy) {
        for (int i = 0; i < 3; i++)
            if (c->out[i]) memset(lu_tensor_data(c->out[i]), 0, lu_tensor_nbytes(c->out[i]));
        return LU_OK;
    }
    conv_geom g = conv_geom_of(c, x, w, y);
    const real *DY = lu_tensor_data(dy), *X = lu_tensor_data(x), *W = lu_tensor_data(w);
    real *DX = dx ? lu_tensor_data(dx) : NULL, *DW = dw ? lu_tensor_data(dw) : NULL;
    if (g.cin == g.groups) R(conv_depthwise_bwd)(&g, DY, X, W, DX, DW);
    else if (DX || DW) LU_TRY(R(conv_gemm_bwd)(c, &g, DY, X, W, DX, DW));
    if (db) {
        real *DB = lu_tensor_data(db);
        int64_t L = g.oh * g.ow;
#pragma omp parallel for
        for (int64_t oc = 0; oc < g.cout; oc++) {
            double s = 0;
            for (int64_t b = 0; b < g.batch; b++) {
                const real *dyc = DY + (b * g.cout + oc) * L;
                for (int64_t l = 0; l < L; l++) s += dyc[l];
            }
            DB[oc] = (real)s;
        }
    }
    return LU_OK;
}

/* ---- batch normalisation -------------------------------------------------------------------- */

/* torch.nn.BatchNorm{1,2}d: per channel c over the n = B*S values,
 *   training: mean, var = biased batch statistics; running = (1-m)*running + m*batch, with the
 *             unbiased variance var*n/(n-1) for running_var;
 *   eval:     mean, var = running statistics;
 *   y = (x - mean) / sqrt(var + eps) * weight + bias.
 * in = [x, weight?, bias?, running_mean, running_var], out = [y, mean, invstd]. */
static lu_status R(batchnorm_fwd)(const lu_op_call *c)
{
    const lu_batchnorm_params *p = c->params;
    const lu_tensor *x = c->in[0], *wt = c->in[1], *bs = c->in[2];
    int64_t B = x->shape[0], C = x->shape[1], S = B * C > 0 ? lu_tensor_numel(x) / (B * C) : 0, n = B * S;
    const real *X = lu_tensor_data(x), *W = wt ? lu_tensor_data(wt) : NULL, *BS = bs ? lu_tensor_data(bs) : NULL;
    real *RM = lu_tensor_data(c->in[3]), *RV = lu_tensor_data(c->in[4]);
    real *Y = lu_tensor_data(c->out[0]), *MEAN = lu_tensor_data(c->out[1]), *INV = lu_tensor_data(c->out[2]);
#pragma omp parallel for
    for (int64_t ch = 0; ch < C; ch++) {
        double mean, var;
        if (p->training) {
            double s = 0, ss = 0;
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < S; i++) s += X[(b * C + ch) * S + i];
            mean = s / (double)n;
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < S; i++) {
                    double d = X[(b * C + ch) * S + i] - mean;
                    ss += d * d;
                }
            var = ss / (double)n;
            RM[ch] = (real)((1 - p->momentum) * RM[ch] + p->momentum * mean);
            RV[ch] = (real)((1 - p->momentum) * RV[ch] + p->momentum * var * (double)n / (double)(n - 1));
        } else {
            mean = RM[ch];
            var = RV[ch];
        }
        double inv = 1 / sqrt(var + p->eps), scale = (W ? W[ch] : 1) * inv, shift = (BS ? BS[ch] : 0) - mean * scale;
        MEAN[ch] = (real)mean;
        INV[ch] = (real)inv;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < S; i++) {
                int64_t k = (b * C + ch) * S + i;
                Y[k] = (real)(X[k] * scale + shift);
            }
    }
    return LU_OK;
}

/* With xhat = (x - mean)*invstd, per channel: dweight = sum(dy*xhat), dbias = sum(dy);
 *   training: dx = weight*invstd * (dy - sum(dy)/n - xhat*sum(dy*xhat)/n)  (mean and var depend on x)
 *   eval:     dx = weight*invstd * dy.
 * in = [dy, dmean, dinvstd, x, weight?, bias?, running_mean, running_var, y, mean, invstd],
 * out = [dx?, dweight?, dbias?, -, -]. The saved statistics are not differentiated (dmean and
 * dinvstd are ignored). */
static lu_status R(batchnorm_bwd)(const lu_op_call *c)
{
    const lu_batchnorm_params *p = c->params;
    const lu_tensor *dy = c->in[0], *x = c->in[3], *wt = c->in[4];
    lu_tensor *dx = c->out[0], *dwt = c->out[1], *dbs = c->out[2];
    int64_t B = x->shape[0], C = x->shape[1], S = B * C > 0 ? lu_tensor_numel(x) / (B * C) : 0, n = B * S;
    if (!dy) {
        for (int i = 0; i < 3; i++)
            if (c->out[i]) memset(lu_tensor_data(c->out[i]), 0, lu_tensor_nbytes(c->out[i]));
        return LU_OK;
    }
    const real *DY = lu_tensor_data(dy), *X = lu_tensor_data(x), *W = wt ? lu_tensor_data(wt) : NULL;
    const real *MEAN = lu_tensor_data(c->in[9]), *INV = lu_tensor_data(c->in[10]);
    real *DX = dx ? lu_tensor_data(dx) : NULL, *DW = dwt ? lu_tensor_data(dwt) : NULL;
    real *DB = dbs ? lu_tensor_data(dbs) : NULL;
#pragma omp parallel for
    for (int64_t ch = 0; ch < C; ch++) {
        double mean = MEAN[ch], inv = INV[ch], sdy = 0, sdyx = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < S; i++) {
                int64_t k = (b * C + ch) * S + i;
                sdy += DY[k];
                sdyx += DY[k] * (X[k] - mean) * inv;
            }
        if (DW) DW[ch] = (real)sdyx;
        if (DB) DB[ch] = (real)sdy;
        if (!DX) continue;
        double a = (W ? W[ch] : 1) * inv, mdy = p->training ? sdy / (double)n : 0,
               mdyx = p->training ? sdyx / (double)n : 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < S; i++) {
                int64_t k = (b * C + ch) * S + i;
                DX[k] = (real)(a * (DY[k] - mdy - (X[k] - mean) * inv * mdyx));
            }
    }
    return LU_OK;
}

/* ---- dropout -------------------------------------------------------------------------------- */

/* Element i is dropped when lu_rng_uniform(seed, step, op_id, i) < p, i.e. when the top 24 bits
 * of its Philox word are below dropout_threshold(p) (conv.c); kept ones are scaled by 1/(1-p). Chunks of 64
 * elements = 16 Philox blocks generated together (element i uses word i % 4 of block i / 4). */
static void R(dropout_chunk_mask)(const lu_dropout_params *p, uint32_t thr, int64_t c, const real *src, real scale,
                                  real *dst, int64_t m)
{
    uint32_t w[64];
    lu_philox4x32_blocks(p->seed, p->step, p->op_id, (uint64_t)c * 16, 16, w);
#pragma omp simd
    for (int64_t j = 0; j < m; j++) dst[j] = (w[j] >> 8) < thr ? 0 : src[j] * scale;
}

static lu_status R(dropout_fwd)(const lu_op_call *c)
{
    const lu_dropout_params *p = c->params;
    const real *X = lu_tensor_data(c->in[0]);
    real *Y = lu_tensor_data(c->out[0]), scale = (real)(1 / (1 - p->p));
    int64_t n = lu_tensor_numel(c->in[0]);
    uint32_t thr = dropout_threshold(p->p);
#pragma omp parallel for if (n > 16384)
    for (int64_t k = 0; k < (n + 63) / 64; k++)
        R(dropout_chunk_mask)(p, thr, k, X + 64 * k, scale, Y + 64 * k, n - 64 * k < 64 ? n - 64 * k : 64);
    return LU_OK;
}

/* in = [dy, x, y], out = [dx]: dx = dy * mask / (1-p). The mask is read off the output instead of
 * regenerated: a dropped element is 0 and a kept one x / (1-p), which is not 0 when x is not
 * (|1/(1-p)| >= 1, no flush-to-zero). A chunk holding an x == 0 regenerates its mask. */
static lu_status R(dropout_bwd)(const lu_op_call *c)
{
    const lu_dropout_params *p = c->params;
    lu_tensor *dx = c->out[0];
    if (!dx) return LU_OK;
    if (!c->in[0]) {
        memset(lu_tensor_data(dx), 0, lu_tensor_nbytes(dx));
        return LU_OK;
    }
    const real *DY = lu_tensor_data(c->in[0]), *X = lu_tensor_data(c->in[1]), *Y = lu_tensor_data(c->in[2]);
    real *DX = lu_tensor_data(dx), scale = (real)(1 / (1 - p->p));
    int64_t n = lu_tensor_numel(dx);
    uint32_t thr = dropout_threshold(p->p);
#pragma omp parallel for if (n > 16384)
    for (int64_t k = 0; k < (n + 63) / 64; k++) {
        int64_t i0 = 64 * k, m = n - i0 < 64 ? n - i0 : 64;
        bool zero = false;
        for (int64_t j = 0; j < m; j++) zero |= X[i0 + j] == 0;
        if (zero) {
            R(dropout_chunk_mask)(p, thr, k, DY + i0, scale, DX + i0, m);
            continue;
        }
#pragma omp simd
        for (int64_t j = 0; j < m; j++) DX[i0 + j] = Y[i0 + j] != 0 ? DY[i0 + j] * scale : 0;
    }
    return LU_OK;
}
