/* attention_generic.h - attention forward and backward over `real` (see generic.h).
 * Contiguous layouts: q [B,Tq,Hq,D], k [B,Tk,Hkv,D], v [B,Tk,Hkv,Dv], o [B,Tq,Hq,Dv],
 * lse [B,Hq,Tq], weights [B,Hq,Tq,Tk]. Query head h reads kv head h / (Hq / Hkv). The rows of
 * one head are strided views (stride H*D), which GEMM reads directly through its leading dim.
 *
 * Forward per block of queries: S = scale * Q K^T, P = softmax over visible keys, O = P V,
 * lse = log sum exp(S). Backward (FlashAttention-2, arXiv 2307.08691 Alg. 2) recomputes P from
 * lse: dP = dO V^T (+ dW, the gradient of the returned weights), dS = P * (dP - rowsum(P dP)),
 * dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO. rowsum(P dP) equals rowsum(dO * O) when only
 * O has a gradient. */

/* Probabilities of queries i0 .. i0+nq-1 of head h in batch b over keys klo .. klo+nk-1 (the
 * union of what the rows see) into P [nq, nk]; returns nk and sets *klo. When have_lse is false
 * the row log-sum-exp is computed into lse[0 .. nq-1], else it is read from there. A row that
 * sees no key has lse -inf and P 0. */
static int64_t R(att_probs)(const att_dims *a, const real *q, const real *k, int64_t b, int64_t h, int64_t i0,
                            int64_t nq, real *lse, bool have_lse, real *P, int64_t *klo_out)
{
    int64_t klo = a->tk, khi = 0, lo, hi;
    for (int64_t r = 0; r < nq; r++) {
        att_key_range(a, i0 + r, &lo, &hi);
        if (hi > lo && lo < klo) klo = lo;
        if (hi > lo && hi > khi) khi = hi;
    }
    *klo_out = 0;
    if (khi <= klo) {
        if (!have_lse)
            for (int64_t r = 0; r < nq; r++) lse[r] = -INFINITY;
        return 0;
    }
    int64_t nk = khi - klo, g = h / (a->hq / a->hkv);
    *klo_out = klo;
    R_BLAS(gemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)a->d, (real)a->scale,
                 q + ((b * a->tq + i0) * a->hq + h) * a->d, (int)(a->hq * a->d), k + ((b * a->tk + klo) * a->hkv + g) * a->d,
                 (int)(a->hkv * a->d), 0, P, (int)nk);
    const uint8_t *m = a->mask ? a->mask + b * a->tk + klo : NULL;
    for (int64_t r = 0; r < nq; r++) {
        real *pr = P + r * nk;
        att_key_range(a, i0 + r, &lo, &hi);
        lo -= klo;
        hi -= klo;
        for (int64_t j = 0; j < lo; j++) pr[j] = 0;
        for (int64_t j = hi; j < nk; j++) pr[j] = 0;
        if (m)
            for (int64_t j = lo; j < hi; j++)
                if (m[j]) pr[j] = -INFINITY;
        real l = have_lse ? lse[r] : -INFINITY;
        if (!have_lse) {
            /* Maximum over 8 lanes (the same value as a running maximum). */
            real lane[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
            int64_t j0 = lo;
            for (; j0 + 8 <= hi; j0 += 8)
                for (int l = 0; l < 8; l++) lane[l] = pr[j0 + l] > lane[l] ? pr[j0 + l] : lane[l];
            real mx = -INFINITY;
            for (int64_t j = j0; j < hi; j++) mx = pr[j] > mx ? pr[j] : mx;
            for (int l = 0; l < 8; l++) mx = lane[l] > mx ? lane[l] : mx;
            if (mx > -INFINITY) {
                double sum;
#pragma omp simd
                for (int64_t j = lo; j < hi; j++) pr[j] = R_EXP(pr[j] - mx);
                LU_CPU_LANE_SUM(sum, hi - lo, j, (double)pr[lo + j]);
                real inv = (real)(1 / sum);
                for (int64_t j = lo; j < hi; j++) pr[j] *= inv;
                l = (real)(mx + log(sum));
            }
            lse[r] = l;
        } else if (l > -INFINITY) {
            for (int64_t j = lo; j < hi; j++) pr[j] = R_EXP(pr[j] - l);
        }
        if (!(l > -INFINITY))
            for (int64_t j = lo; j < hi; j++) pr[j] = 0;
    }
    return nk;
}

/* Zeroes n rows of length len spaced ld apart. */
static void R(att_zero_rows)(real *x, int64_t n, int64_t len, int64_t ld)
{
    for (int64_t r = 0; r < n; r++) memset(x + r * ld, 0, (size_t)len * sizeof *x);
}

static lu_status R(attention_fwd)(const lu_op_call *call)
{
    const lu_attention_params *p = call->params;
    att_dims a = att_dims_of(p, call->in[0], call->in[1], call->in[2], call->in[3], call->in[4]);
    const real *q = lu_tensor_data(call->in[0]), *k = lu_tensor_data(call->in[1]), *v = lu_tensor_data(call->in[2]);
    real *o = lu_tensor_data(call->out[0]), *lse = lu_tensor_data(call->out[1]);
    real *w = call->n_out > 2 && call->out[2] ? lu_tensor_data(call->out[2]) : NULL;
    int64_t nblk = (a.tq + LU_ATT_QB - 1) / LU_ATT_QB, tasks = a.b * a.hq * nblk, g_of = a.hq / a.hkv;
    size_t pbytes = (size_t)(LU_ATT_QB * (a.tk ? a.tk : 1)) * sizeof(real);
    bool nomem = false;
#pragma omp parallel
    {
        real *P = malloc(pbytes);
        if (!P) {
#pragma omp atomic write
            nomem = true;
        }
#pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < tasks; t++) {
            if (!P) continue;
            int64_t blk = t % nblk, h = (t / nblk) % a.hq, b = t / (nblk * a.hq), g = h / g_of;
            int64_t i0 = blk * LU_ATT_QB, nq = a.tq - i0 < LU_ATT_QB ? a.tq - i0 : LU_ATT_QB, klo;
            int64_t nk = R(att_probs)(&a, q, k, b, h, i0, nq, lse + (b * a.hq + h) * a.tq + i0, false, P, &klo);
            real *orow = o + ((b * a.tq + i0) * a.hq + h) * a.dv;
            if (nk == 0)
                R(att_zero_rows)(orow, nq, a.dv, a.hq * a.dv);
            else
                R_BLAS(gemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)a.dv, (int)nk, 1, P, (int)nk,
                             v + ((b * a.tk + klo) * a.hkv + g) * a.dv, (int)(a.hkv * a.dv), 0, orow, (int)(a.hq * a.dv));
            if (w) {
                real *wr = w + ((b * a.hq + h) * a.tq + i0) * a.tk;
                R(att_zero_rows)(wr, nq, a.tk, a.tk);
                for (int64_t r = 0; r < nq; r++) memcpy(wr + r * a.tk + klo, P + r * nk, (size_t)nk * sizeof(real));
            }
        }
        free(P);
    }
    if (nomem) return lu_errorf(LU_ERR_NOMEM, "attention: out of memory for a %d x %lld score block", LU_ATT_QB, (long long)a.tk);
    return LU_OK;
}

/* in = [do, dlse, (dweights,) q, k, v, mask, cu_seqlens, o, lse, (weights)], out = [dq, dk, dv].
 * lse is not differentiable: the frontend never hands it out, so its gradient slot stays NULL.
 * Tasks are (batch, kv head): each owns its dk/dv rows and the dq rows of its query heads, and
 * adds query blocks into dk/dv in a fixed order, so results do not depend on the thread count. */
static lu_status R(attention_bwd)(const lu_op_call *call)
{
    const lu_attention_params *p = call->params;
    int m = p->return_weights ? 3 : 2;
    const lu_tensor *qt = call->in[m], *kt = call->in[m + 1], *vt = call->in[m + 2];
    att_dims a = att_dims_of(p, qt, kt, vt, call->in[m + 3], call->in[m + 4]);
    const real *q = lu_tensor_data(qt), *k = lu_tensor_data(kt), *v = lu_tensor_data(vt);
    const real *dO = call->in[0] ? lu_tensor_data(call->in[0]) : NULL;
    const real *dW = m == 3 && call->in[2] ? lu_tensor_data(call->in[2]) : NULL;
    real *lse = lu_tensor_data(call->in[m + 6]);
    real *dq = call->out[0] ? lu_tensor_data(call->out[0]) : NULL;
    real *dk = call->out[1] ? lu_tensor_data(call->out[1]) : NULL;
    real *dv = call->out[2] ? lu_tensor_data(call->out[2]) : NULL;
    int64_t nblk = (a.tq + LU_ATT_QB - 1) / LU_ATT_QB, rep = a.hq / a.hkv, tasks = a.b * a.hkv;
    size_t pbytes = (size_t)(LU_ATT_QB * (a.tk ? a.tk : 1)) * sizeof(real);
    bool nomem = false;
#pragma omp parallel
    {
        real *P = malloc(2 * pbytes), *dP = P ? P + pbytes / sizeof(real) : NULL;
        if (!P) {
#pragma omp atomic write
            nomem = true;
        }
#pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < tasks; t++) {
            if (!P) continue;
            int64_t b = t / a.hkv, g = t % a.hkv;
            real *dkg = dk ? dk + (b * a.tk * a.hkv + g) * a.d : NULL, *dvg = dv ? dv + (b * a.tk * a.hkv + g) * a.dv : NULL;
            if (dkg) R(att_zero_rows)(dkg, a.tk, a.d, a.hkv * a.d);
            if (dvg) R(att_zero_rows)(dvg, a.tk, a.dv, a.hkv * a.dv);
            for (int64_t h = g * rep; h < (g + 1) * rep; h++) {
                for (int64_t blk = 0; blk < nblk; blk++) {
                    int64_t i0 = blk * LU_ATT_QB, nq = a.tq - i0 < LU_ATT_QB ? a.tq - i0 : LU_ATT_QB, klo;
                    int64_t nk = R(att_probs)(&a, q, k, b, h, i0, nq, lse + (b * a.hq + h) * a.tq + i0, true, P, &klo);
                    const real *qr = q + ((b * a.tq + i0) * a.hq + h) * a.d;
                    const real *dOr = dO ? dO + ((b * a.tq + i0) * a.hq + h) * a.dv : NULL;
                    real *dqr = dq ? dq + ((b * a.tq + i0) * a.hq + h) * a.d : NULL;
                    if (nk == 0) {
                        if (dqr) R(att_zero_rows)(dqr, nq, a.d, a.hq * a.d);
                        continue;
                    }
                    const real *kr = k + ((b * a.tk + klo) * a.hkv + g) * a.d;
                    if (dOr)
                        R_BLAS(gemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)a.dv, 1, dOr,
                                     (int)(a.hq * a.dv), v + ((b * a.tk + klo) * a.hkv + g) * a.dv, (int)(a.hkv * a.dv), 0,
                                     dP, (int)nk);
                    else
                        memset(dP, 0, (size_t)(nq * nk) * sizeof *dP);
                    for (int64_t r = 0; r < nq; r++) {
                        real *pr = P + r * nk, *dpr = dP + r * nk;
                        if (dW) {
                            const real *dwr = dW + ((b * a.hq + h) * a.tq + i0 + r) * a.tk + klo;
                            for (int64_t j = 0; j < nk; j++) dpr[j] += dwr[j];
                        }
                        double s;
                        LU_CPU_LANE_SUM(s, nk, j, (double)pr[j] * dpr[j]);
                        for (int64_t j = 0; j < nk; j++) dpr[j] = pr[j] * (dpr[j] - (real)s);
                    }
                    if (dqr)
                        R_BLAS(gemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)a.d, (int)nk, (real)a.scale, dP,
                                     (int)nk, kr, (int)(a.hkv * a.d), 0, dqr, (int)(a.hq * a.d));
                    if (dkg)
                        R_BLAS(gemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)a.d, (int)nq, (real)a.scale, dP,
                                     (int)nk, qr, (int)(a.hq * a.d), 1, dkg + klo * a.hkv * a.d, (int)(a.hkv * a.d));
                    if (dvg && dOr)
                        R_BLAS(gemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)a.dv, (int)nq, 1, P, (int)nk, dOr,
                                     (int)(a.hq * a.dv), 1, dvg + klo * a.hkv * a.dv, (int)(a.hkv * a.dv));
                }
            }
        }
        free(P);
    }
    if (nomem)
        return lu_errorf(LU_ERR_NOMEM, "attention backward: out of memory for two %d x %lld blocks", LU_ATT_QB, (long long)a.tk);
    return LU_OK;
}
