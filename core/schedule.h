/* schedule.h - learning-rate schedules: the learning rate of optimiser step s (0-based) as a pure
 * function of (schedule, s, epoch), so a resumed run needs no scheduler state.
 *
 * constant, linear, cosine: as Hugging Face transformers get_constant_schedule_with_warmup,
 *   get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup; the multiplier at step
 *   s is s/W during the W warm-up steps, then 1 (constant), (T-s)/(T-W) (linear) or
 *   0.5*(1+cos(pi*(s-W)/(T-W))) (cosine), floored at 0. With min_lr_ratio r > 0 the decaying
 *   part becomes r + (1-r)*decay (transformers get_cosine_with_min_lr_schedule_with_warmup).
 * noam: factor * d_model^-0.5 * min(n^-0.5, n * W^-1.5) with n = s+1 (the NoamOpt of "The
 *   Annotated Transformer"); base_lr is not used.
 * eden: icefall Eden (reference/asr.md 9.7) with batch b = s and e = the epoch argument (icefall's
 *   step_epoch value: 0 during the first epoch):
 *   base_lr * ((b^2+B^2)/B^2)^-0.25 * ((e^2+E^2)/E^2)^-0.25 * warm-up, the warm-up rising
 *   linearly from eden_warmup_start to 1 over eden_warmup_batches and 1 afterwards.
 *
 * The caller validates the fields (positive totals, lr_batches, lr_epochs, d_model); the
 * functions here do no error reporting. */
#ifndef LU_SCHEDULE_H
#define LU_SCHEDULE_H

#include <stdint.h>

typedef enum lu_sched_kind { LU_SCHED_CONSTANT, LU_SCHED_LINEAR, LU_SCHED_COSINE, LU_SCHED_NOAM, LU_SCHED_EDEN } lu_sched_kind;

typedef struct lu_schedule {
    lu_sched_kind kind;
    double base_lr;
    int64_t total_steps;
    double warmup_ratio;
    int64_t warmup_steps;   /* used when > 0, else ceil(warmup_ratio * total_steps) as transformers */
    double min_lr_ratio;    /* cosine/linear floor, 0 = decay to 0 */
    double noam_d_model;
    double noam_factor;
    double eden_lr_batches, eden_lr_epochs, eden_warmup_start;
    int64_t eden_warmup_batches;
} lu_schedule;

/* "constant|linear|cosine|noam|eden", in enum order, for config enums. */
extern const char *const lu_sched_kind_names;

/* The warm-up length W the schedule uses (warmup_steps, or the ratio rounded up). */
int64_t lu_schedule_warmup_steps(const lu_schedule *s);
/* Learning rate for 0-based optimiser step `step` during epoch `epoch` (only eden reads it). */
double lu_schedule_lr(const lu_schedule *s, int64_t step, double epoch);

#endif
