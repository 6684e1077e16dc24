/* exit_policy.c - confidence scores and the stopping rule of dynamic early exits (see
 * exit_policy.h). */
#include "models/exit_policy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

lu_status lu_exit_policy_parse(const char *text, lu_exit_policy *out)
{
    const char *colon = strchr(text, ':');
    if (!colon) return lu_errorf(LU_ERR_INVALID, "exit policy '%s': expected entropy:THRESHOLD or posterior:THRESHOLD", text);
    size_t n = (size_t)(colon - text);
    lu_exit_policy p;
    if (n == 7 && !strncmp(text, "entropy", 7)) p.criterion = LU_EXIT_ENTROPY;
    else if (n == 9 && !strncmp(text, "posterior", 9)) p.criterion = LU_EXIT_POSTERIOR;
    else return lu_errorf(LU_ERR_INVALID, "exit policy '%s': unknown criterion (entropy or posterior)", text);
    char *end;
    p.threshold = strtod(colon + 1, &end);
    if (end == colon + 1 || *end || !(p.threshold >= 0 && p.threshold <= 1))
        return lu_errorf(LU_ERR_INVALID, "exit policy '%s': the threshold must be a number in [0, 1]", text);
    *out = p;
    return LU_OK;
}

double lu_exit_score(lu_exit_criterion c, const float *logp, int64_t frames, int64_t V)
{
    if (frames <= 0 || V <= 1) return c == LU_EXIT_ENTROPY ? 0.0 : 1.0;
    double total = 0, log_v = log((double)V);
    for (int64_t t = 0; t < frames; t++) {
        const float *row = logp + t * V;
        if (c == LU_EXIT_ENTROPY) {
            double h = 0;
            for (int64_t k = 0; k < V; k++) {
                double p = exp((double)row[k]);
                if (p > 0) h -= p * (double)row[k];
            }
            total += h / log_v;
        } else {
            float best = row[0];
            for (int64_t k = 1; k < V; k++) best = row[k] > best ? row[k] : best;
            total += exp((double)best);
        }
    }
    return total / (double)frames;
}

int lu_exit_accepts(const lu_exit_policy *p, double score)
{
    return p->criterion == LU_EXIT_ENTROPY ? score <= p->threshold : score >= p->threshold;
}

int lu_exit_select(const lu_exit_policy *p, const double *scores, int n_exits)
{
    for (int i = 0; i < n_exits - 1; i++)
        if (lu_exit_accepts(p, scores[i])) return i;
    return n_exits - 1;
}
