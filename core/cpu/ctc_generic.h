/* ctc_generic.h - CTC loss forward and backward over `real` (see ctc.c). Recursions in double.
 *
 * alpha_t(s) = log of the mass of path prefixes ending at (t, s), including lp[t, l'(s)]:
 *   alpha_0(0) = lp[0, blank], alpha_0(1) = lp[0, l_1],
 *   alpha_t(s) = lse(alpha_{t-1}(s), alpha_{t-1}(s-1), [alpha_{t-1}(s-2) if skip allowed]) + lp[t, l'(s)];
 * beta_t(s) the same over suffixes from (t, s), also including lp[t, l'(s)];
 * log Z = lse(alpha_{T-1}(L'-1), alpha_{T-1}(L'-2)), loss = -log Z. */

/* Runs the alpha recursion of one sample over lp [T, V] into alpha (t rows of len when all_rows,
 * else 2 alternating rows) and returns log Z. */
static double R(ctc_alpha)(const real *lp, int64_t V, const ctc_sample *s, double *alpha, bool all_rows)
{
    int64_t L = s->len;
    if (s->t == 0) return L == 1 ? 0 : -INFINITY;
    double *prev = alpha;
    for (int64_t i = 0; i < L; i++) prev[i] = i < 2 ? (double)lp[s->label[i]] : -INFINITY;
    for (int64_t t = 1; t < s->t; t++) {
        double *cur = alpha + (all_rows ? t : t % 2) * L;
        const real *lpt = lp + t * V;
        for (int64_t i = 0; i < L; i++) {
            double a = prev[i];
            if (i >= 1) a = ctc_logaddexp(a, prev[i - 1]);
            if (ctc_can_skip(s, i)) a = ctc_logaddexp(a, prev[i - 2]);
            cur[i] = a + (double)lpt[s->label[i]];
        }
        prev = cur;
    }
    return ctc_logaddexp(prev[L - 1], L >= 2 ? prev[L - 2] : -INFINITY);
}

/* beta [t rows of len], mirrored: beta_{T-1}(L'-1) and beta_{T-1}(L'-2) start the recursion. */
static void R(ctc_beta)(const real *lp, int64_t V, const ctc_sample *s, double *beta)
{
    int64_t L = s->len, T = s->t;
    if (T == 0) return;
    double *last = beta + (T - 1) * L;
    for (int64_t i = 0; i < L; i++) last[i] = i >= L - 2 ? (double)lp[(T - 1) * V + s->label[i]] : -INFINITY;
    for (int64_t t = T - 2; t >= 0; t--) {
        double *cur = beta + t * L, *next = cur + L;
        const real *lpt = lp + t * V;
        for (int64_t i = 0; i < L; i++) {
            double b = next[i];
            if (i + 1 < L) b = ctc_logaddexp(b, next[i + 1]);
            if (i + 2 < L && ctc_can_skip(s, i + 2)) b = ctc_logaddexp(b, next[i + 2]);
            cur[i] = b + (double)lpt[s->label[i]];
        }
    }
}

/* in = [log_probs [B,T,V], targets [B,S], input_lengths [B], target_lengths [B]],
 * out = [loss ([] for mean/sum, [B] for none), nll [B] (-log Z, +inf when no alignment exists)]. */
static lu_status R(ctc_fwd)(const lu_op_call *c)
{
    const lu_ctc_params *p = c->params;
    const lu_tensor *lp = c->in[0], *targets = c->in[1], *il = c->in[2], *tl = c->in[3];
    int64_t B = lp->shape[0], T = lp->shape[1], V = lp->shape[2], S = targets->shape[1];
    const real *LP = lu_tensor_data(lp);
    real *LOSS = lu_tensor_data(c->out[0]), *NLL = lu_tensor_data(c->out[1]);
    int failed = 0;
#pragma omp parallel for reduction(| : failed) schedule(dynamic)
    for (int64_t b = 0; b < B; b++) {
        ctc_sample s;
        s.label = malloc((size_t)(2 * S + 1) * sizeof *s.label);
        double *alpha = malloc((size_t)(2 * (2 * S + 1)) * sizeof *alpha);
        if (!s.label || !alpha) {
            failed = 1;
        } else {
            ctc_sample_read(targets, il, tl, p->blank, b, &s);
            NLL[b] = (real)-R(ctc_alpha)(LP + b * T * V, V, &s, alpha, false);
        }
        free(s.label);
        free(alpha);
    }
    if (failed) return lu_errorf(LU_ERR_NOMEM, "ctc_loss: cannot allocate the alpha rows (%lld labels)", (long long)S);
    double total = 0;
    for (int64_t b = 0; b < B; b++) {
        double nll = NLL[b];
        if (p->zero_infinity && isinf(nll)) nll = 0;
        if (p->reduction == LU_REDUCE_NONE) LOSS[b] = (real)nll;
        else if (p->reduction == LU_REDUCE_SUM) total += nll;
        else total += nll / (double)(lu_cpu_index_at(tl, b) > 1 ? lu_cpu_index_at(tl, b) : 1);
    }
    if (p->reduction == LU_REDUCE_SUM) LOSS[0] = (real)total;
    else if (p->reduction == LU_REDUCE_MEAN) LOSS[0] = (real)(total / (double)B);
    return LU_OK;
}

/* in = [dloss, dnll, log_probs, targets, input_lengths, target_lengths, loss, nll], out = [dlp].
 * The gradient treats log_probs as free inputs (no log_softmax assumed upstream):
 *   d(-log Z)/d lp[t,k] = -exp(lse_{s: l'(s)=k}(alpha_t(s) + beta_t(s)) - log Z - lp[t,k])
 * (alpha and beta both include lp[t, k], so it is divided out once); zero for t >= T_b and for
 * labels k absent from l'. Infeasible samples (log Z = -inf) get NaN, or zero under
 * zero_infinity. dnll is ignored: nll is a saved statistic. */
static lu_status R(ctc_bwd)(const lu_op_call *c)
{
    const lu_ctc_params *p = c->params;
    const lu_tensor *dloss = c->in[0], *lp = c->in[2], *targets = c->in[3], *il = c->in[4], *tl = c->in[5];
    lu_tensor *dlp = c->out[0];
    if (!dlp) return LU_OK;
    int64_t B = lp->shape[0], T = lp->shape[1], V = lp->shape[2], S = targets->shape[1];
    const real *LP = lu_tensor_data(lp), *DL = dloss ? lu_tensor_data(dloss) : NULL;
    real *G = lu_tensor_data(dlp);
    int failed = 0;
#pragma omp parallel for reduction(| : failed) schedule(dynamic)
    for (int64_t b = 0; b < B; b++) {
        const real *lpb = LP + b * T * V;
        real *gb = G + b * T * V;
        memset(gb, 0, (size_t)(T * V) * sizeof(real));
        double scale = 0;
        if (DL) {
            int64_t tlen = lu_cpu_index_at(tl, b);
            if (p->reduction == LU_REDUCE_NONE) scale = DL[b];
            else if (p->reduction == LU_REDUCE_SUM) scale = DL[0];
            else scale = DL[0] / ((double)(tlen > 1 ? tlen : 1) * (double)B);
        }
        int64_t tb = lu_cpu_index_at(il, b), lenb = 2 * lu_cpu_index_at(tl, b) + 1;
        if (scale == 0 || tb == 0) continue;
        ctc_sample s;
        s.label = malloc((size_t)(2 * S + 1) * sizeof *s.label);
        double *ab = malloc((size_t)(2 * tb * lenb + V) * sizeof *ab);
        if (!s.label || !ab) {
            failed = 1;
            free(s.label);
            free(ab);
            continue;
        }
        ctc_sample_read(targets, il, tl, p->blank, b, &s);
        double *alpha = ab, *beta = ab + s.t * s.len, *lse = beta + s.t * s.len;
        double logz = R(ctc_alpha)(lpb, V, &s, alpha, true);
        if (isinf(logz)) {
            real fill = p->zero_infinity ? 0 : (real)NAN;
            for (int64_t i = 0; i < s.t * V; i++) gb[i] = fill;
        } else {
            R(ctc_beta)(lpb, V, &s, beta);
            for (int64_t t = 0; t < s.t; t++) {
                for (int64_t k = 0; k < V; k++) lse[k] = -INFINITY;
                for (int64_t i = 0; i < s.len; i++) {
                    int64_t k = s.label[i];
                    lse[k] = ctc_logaddexp(lse[k], alpha[t * s.len + i] + beta[t * s.len + i]);
                }
                for (int64_t k = 0; k < V; k++)
                    if (lse[k] != -INFINITY) gb[t * V + k] = (real)(-scale * exp(lse[k] - logz - (double)lpb[t * V + k]));
            }
        }
        free(s.label);
        free(ab);
    }
    if (failed) return lu_errorf(LU_ERR_NOMEM, "ctc_loss: cannot allocate the alpha/beta tables (T %lld, %lld labels)",
                                 (long long)T, (long long)S);
    return LU_OK;
}
