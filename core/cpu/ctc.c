/* ctc.c - CPU kernels of the CTC loss (Graves et al., ICML 2006): the forward-backward recursions
 * in log space over the extended label sequence l' = (blank, l_1, blank, l_2, ..., l_S, blank),
 * one sample per thread (ctc_generic.h). Targets and lengths were validated by lu_ctc_loss. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

/* log(exp(a) + exp(b)) without overflow; -inf is the log of zero. */
static double ctc_logaddexp(double a, double b)
{
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

/* One sample's extended labels: l'(s) = blank for even s, targets[b, s/2] for odd s. */
typedef struct ctc_sample {
    int64_t t;      /* input length */
    int64_t len;    /* 2 * target length + 1 */
    int64_t *label; /* [len]; one allocation with the two rows below */
    double *skip;   /* [len]: 0 where the path may jump from s-2 to s (ctc_can_skip), else -inf */
    double *row;    /* [len]: scratch for lp[t, l'(s)] of one frame */
} ctc_sample;

/* Room for the labels, skips and row of up to 2S + 1 positions; false when out of memory. */
static bool ctc_sample_alloc(ctc_sample *s, int64_t S)
{
    size_t n = (size_t)(2 * S + 1);
    s->label = malloc(n * (sizeof *s->label + sizeof *s->skip + sizeof *s->row));
    s->skip = s->label ? (double *)(s->label + n) : NULL;
    s->row = s->label ? s->skip + n : NULL;
    return s->label != NULL;
}

/* Whether the path may jump from s-2 to s (skipping a blank): l'(s) is a label that differs
 * from l'(s-2). */
static bool ctc_can_skip(const ctc_sample *s, int64_t i) { return i >= 2 && i % 2 == 1 && s->label[i] != s->label[i - 2]; }

/* Reads sample b: its input length, its labels from targets [B, S] and their skips. */
static void ctc_sample_read(const lu_tensor *targets, const lu_tensor *input_lengths,
                            const lu_tensor *target_lengths, int blank, int64_t b, ctc_sample *s)
{
    int64_t S = targets->shape[1];
    s->t = lu_cpu_index_at(input_lengths, b);
    s->len = 2 * lu_cpu_index_at(target_lengths, b) + 1;
    for (int64_t i = 0; i < s->len; i++) s->label[i] = i % 2 ? lu_cpu_index_at(targets, b * S + i / 2) : blank;
    for (int64_t i = 0; i < s->len; i++) s->skip[i] = ctc_can_skip(s, i) ? 0 : -INFINITY;
}

#define LU_GENERIC_FILE "ctc_generic.h"
#include "generic.h"

static lu_status ctc_forward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(ctc_fwd, c, c->out[0]->dtype); }
static lu_status ctc_backward(const lu_op_call *c) { LU_CPU_DISPATCH_FLOAT(ctc_bwd, c, c->in[2]->dtype); }

void lu_cpu_register_ctc(lu_backend *b)
{
    b->forward[LU_OP_CTC_LOSS] = ctc_forward;
    b->backward[LU_OP_CTC_LOSS] = ctc_backward;
}
