/* schedule.c - learning-rate schedules (formulas and sources in schedule.h). */
#include "schedule.h"

#include <math.h>

const char *const lu_sched_kind_names = "constant|linear|cosine|noam|eden";

int64_t lu_schedule_warmup_steps(const lu_schedule *s)
{
    if (s->warmup_steps > 0) return s->warmup_steps;
    /* transformers TrainingArguments.get_warmup_steps: math.ceil(total * ratio). */
    return s->warmup_ratio > 0 ? (int64_t)ceil((double)s->total_steps * s->warmup_ratio) : 0;
}

/* transformers' lr_lambda functions divide by max(1, x) to avoid a zero denominator. */
static double at_least_one(int64_t x) { return x > 1 ? (double)x : 1.0; }

static double with_floor(const lu_schedule *s, double decay)
{
    return s->min_lr_ratio > 0 ? s->min_lr_ratio + (1.0 - s->min_lr_ratio) * decay : decay;
}

static double hf_multiplier(const lu_schedule *s, int64_t step)
{
    int64_t w = lu_schedule_warmup_steps(s), t = s->total_steps;
    if (step < w) return (double)step / at_least_one(w);
    switch (s->kind) {
    case LU_SCHED_LINEAR:
        return with_floor(s, fmax(0.0, (double)(t - step) / at_least_one(t - w)));
    case LU_SCHED_COSINE: {
        double progress = (double)(step - w) / at_least_one(t - w);
        return with_floor(s, fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress))));
    }
    default:
        return 1.0;
    }
}

static double noam_lr(const lu_schedule *s, int64_t step)
{
    double n = (double)(step + 1), w = (double)lu_schedule_warmup_steps(s);
    return s->noam_factor * pow(s->noam_d_model, -0.5) * fmin(pow(n, -0.5), n * pow(w, -1.5));
}

static double eden_lr(const lu_schedule *s, int64_t step, double epoch)
{
    double b = (double)step, bb = s->eden_lr_batches, ee = s->eden_lr_epochs;
    double factor = pow((b * b + bb * bb) / (bb * bb), -0.25) * pow((epoch * epoch + ee * ee) / (ee * ee), -0.25);
    double warm = 1.0;
    if (step < s->eden_warmup_batches)
        warm = s->eden_warmup_start + (1.0 - s->eden_warmup_start) * b / (double)s->eden_warmup_batches;
    return s->base_lr * factor * warm;
}

double lu_schedule_lr(const lu_schedule *s, int64_t step, double epoch)
{
    switch (s->kind) {
    case LU_SCHED_NOAM: return noam_lr(s, step);
    case LU_SCHED_EDEN: return eden_lr(s, step, epoch);
    default: return s->base_lr * hf_multiplier(s, step);
    }
}
