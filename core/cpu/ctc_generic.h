/* ctc_generic.h - CTC loss forward and backward over `real` (see ctc.c). Recursions in double.
 *
 * alpha_t(s) = log of the mass of path prefixes ending at (t, s), including lp[t, l'(s)]:
 *   alpha_0(0) = lp[0, blank], alpha_0(1) = lp[0, l_1],
 *   alpha_t(s) = lse(alpha_{t-1}(s), alpha_{t-1}(s-1), [alpha_{t-1}(s-2) if skip allowed]) + lp[t, l'(s)];
 * beta_t(s) the same over suffixes from (t, s), also including lp[t, l'(s)];
 * log Z = lse(alpha_{T-1}(L'-1), alpha_{T-1}(L'-2)), loss = -log Z. */

/* exp of x <= 0 in the precision of `real`: the terms it gives are probabilities whose relative
 * error then stays below that of the log-probabilities they come from. */
static inline double R(ctc_exp)(double x) { return (double)R_EXP((real)x); }

/* log(e^a + e^b + e^c), -inf for log 0, as m + log1p(sum of the other two terms) with m the
 * largest: the terms are in [0, 1] and are computed in the precision of `real` (for f32 the
 * vectorisable lu_expf and lu_log1pf_pos), the running sums stay in double. Branch-free, so
 * that the recursions' loops vectorise. */
static inline double R(ctc_lse3)(double a, double b, double c)
{
    double m = a > b ? a : b;
    m = m > c ? m : c;
    double z = m == -INFINITY ? 0 : m; /* all -inf: exp(-inf - 0) = 0, no NaN from -inf - -inf */
    real e = R_EXP((real)(a - z)) + R_EXP((real)(b - z)) + R_EXP((real)(c - z)) - 1;
    return m == -INFINITY ? m : m + (double)R_LOG1P_POS(e);
}

/* Runs the alpha recursion of one sample over lp [T, V] into alpha (t rows of len when all_rows,
 * else 2 alternating rows) and returns log Z. */
static double R(ctc_alpha)(const real *lp, int64_t V, const ctc_sample *s, double *alpha, bool all_rows)
{
    int64_t L = s->len;
    const int64_t *lab = s->label;
    if (s->t == 0) return L == 1 ? 0 : -INFINITY;
    double *prev = alpha;
    for (int64_t i = 0; i < L; i++) prev[i] = i < 2 ? (double)lp[lab[i]] : -INFINITY;
    for (int64_t t = 1; t < s->t; t++) {
        double *restrict cur = alpha + (all_rows ? t : t % 2) * L;
        const double *restrict pv = prev;
        const real *lpt = lp + t * V;
        double *restrict row = s->row;
        const double *restrict skip = s->skip;
        for (int64_t i = 0; i < L; i++) row[i] = (double)lpt[lab[i]];
        cur[0] = pv[0] + row[0];
        if (L > 1) cur[1] = R(ctc_lse3)(pv[1], pv[0], -INFINITY) + row[1];
#pragma omp simd
        for (int64_t i = 2; i < L; i++) cur[i] = R(ctc_lse3)(pv[i], pv[i - 1], pv[i - 2] + skip[i]) + row[i];
        prev = cur;
    }
    return ctc_logaddexp(prev[L - 1], L >= 2 ? prev[L - 2] : -INFINITY);
}

/* beta [t rows of len], mirrored: beta_{T-1}(L'-1) and beta_{T-1}(L'-2) start the recursion. */
static void R(ctc_beta)(const real *lp, int64_t V, const ctc_sample *s, double *beta)
{
    int64_t L = s->len, T = s->t;
    const int64_t *lab = s->label;
    if (T == 0) return;
    double *last = beta + (T - 1) * L;
    for (int64_t i = 0; i < L; i++) last[i] = i >= L - 2 ? (double)lp[(T - 1) * V + lab[i]] : -INFINITY;
    for (int64_t t = T - 2; t >= 0; t--) {
        double *restrict cur = beta + t * L;
        const double *restrict nx = cur + L;
        const real *lpt = lp + t * V;
        double *restrict row = s->row;
        const double *restrict skip = s->skip;
        for (int64_t i = 0; i < L; i++) row[i] = (double)lpt[lab[i]];
#pragma omp simd
        for (int64_t i = 0; i < L - 2; i++) cur[i] = R(ctc_lse3)(nx[i], nx[i + 1], nx[i + 2] + skip[i + 2]) + row[i];
        if (L > 1) cur[L - 2] = R(ctc_lse3)(nx[L - 2], nx[L - 1], -INFINITY) + row[L - 2];
        cur[L - 1] = nx[L - 1] + row[L - 1];
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
        bool have = ctc_sample_alloc(&s, S);
        double *alpha = malloc((size_t)(2 * (2 * S + 1)) * sizeof *alpha);
        if (!have || !alpha) {
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
        bool have = ctc_sample_alloc(&s, S);
        double *ab = malloc((size_t)(2 * tb * lenb + V + lenb) * sizeof *ab);
        if (!have || !ab) {
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
            /* The occupancies exp(alpha + beta - log Z - lp) are probabilities: summed per label
             * in linear space, as the lse over the label's positions then exp would give. */
            double *occ = lse, *term = lse + V;
            for (int64_t t = 0; t < s.t; t++) {
                const double *at = alpha + t * s.len, *bt = beta + t * s.len;
                const real *lpt = lpb + t * V;
                for (int64_t i = 0; i < s.len; i++) occ[s.label[i]] = 0;
#pragma omp simd
                for (int64_t i = 0; i < s.len; i++) term[i] = R(ctc_exp)(at[i] + bt[i] - logz - (double)lpt[s.label[i]]);
                for (int64_t i = 0; i < s.len; i++) occ[s.label[i]] += term[i];
                for (int64_t i = 0; i < s.len; i++) {
                    int64_t k = s.label[i];
                    if (occ[k] > 0) gb[t * V + k] = (real)(-scale * occ[k]);
                }
            }
        }
        free(s.label);
        free(ab);
    }
    if (failed) return lu_errorf(LU_ERR_NOMEM, "ctc_loss: cannot allocate the alpha/beta tables (T %lld, %lld labels)",
                                 (long long)T, (long long)S);
    return LU_OK;
}
