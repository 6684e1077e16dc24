/* exit_policy.h - dynamic exit selection for early-exit ASR: run exits in order and stop at the
 * first whose output is confident enough (Wright et al., arXiv 2309.09546: frame entropy, or the
 * posterior-probability criterion they propose as an alternative). */
#ifndef LU_EXIT_POLICY_H
#define LU_EXIT_POLICY_H

#include <stdint.h>

#include "core/error.h"

typedef enum lu_exit_criterion {
    LU_EXIT_ENTROPY,    /* mean over frames of -sum_k p log p / log V, in [0, 1]; stop when <= threshold */
    LU_EXIT_POSTERIOR,  /* mean over frames of max_k p; stop when >= threshold */
} lu_exit_criterion;

typedef struct lu_exit_policy {
    lu_exit_criterion criterion;
    double threshold;
} lu_exit_policy;

/* Parses "entropy:0.3" or "posterior:0.9". */
lu_status lu_exit_policy_parse(const char *text, lu_exit_policy *out);

/* Confidence score of one exit's log-probabilities [T, V] over its first `frames` frames (the
 * valid ones): normalised mean entropy or mean max-posterior, per the criterion. */
double lu_exit_score(lu_exit_criterion c, const float *logp, int64_t frames, int64_t V);

/* True when the score passes the policy's threshold. */
int lu_exit_accepts(const lu_exit_policy *p, double score);

/* The exit (0-based) the policy stops at, given each exit's score; the last exit when none
 * passes. */
int lu_exit_select(const lu_exit_policy *p, const double *scores, int n_exits);

#endif
