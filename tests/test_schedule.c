/* test_schedule.c - learning-rate schedules against values computed by hand (python3 math from
 * the formulas in schedule.h) at warm-up boundaries, middles and ends. */
#include <math.h>
#include <string.h>

#include "core/schedule.h"
#include "testutil.h"

#define TOL 1e-12

static lu_schedule hf(lu_sched_kind kind)
{
    return (lu_schedule){.kind = kind, .base_lr = 2.0, .total_steps = 100, .warmup_steps = 10};
}

static void expect_lr(const lu_schedule *s, int64_t step, double epoch, double want)
{
    double got = lu_schedule_lr(s, step, epoch);
    cr_assert(fabs(got - want) <= TOL * fmax(1.0, fabs(want)), "step %lld: lr %.17g, expected %.17g", (long long)step,
              got, want);
}

Test(schedule, linear_warms_up_then_decays_to_zero)
{
    lu_schedule s = hf(LU_SCHED_LINEAR);
    expect_lr(&s, 0, 0, 0.0);
    expect_lr(&s, 5, 0, 1.0);          /* 2 * 5/10 */
    expect_lr(&s, 10, 0, 2.0);         /* warm-up boundary: (100-10)/90 */
    expect_lr(&s, 55, 0, 1.0);         /* 2 * 45/90 */
    expect_lr(&s, 99, 0, 2.0 / 90.0);
    expect_lr(&s, 100, 0, 0.0);
    expect_lr(&s, 130, 0, 0.0);        /* past the end: floored at 0, never negative */
}

Test(schedule, cosine_follows_half_cosine_after_warmup)
{
    lu_schedule s = hf(LU_SCHED_COSINE);
    expect_lr(&s, 3, 0, 0.6);
    expect_lr(&s, 10, 0, 2.0);
    expect_lr(&s, 25, 0, 2.0 * 0.9330127018922194); /* progress 1/6: 0.5 (1 + cos(pi/6)) */
    expect_lr(&s, 55, 0, 1.0);
    expect_lr(&s, 100, 0, 0.0);
}

Test(schedule, min_lr_ratio_floors_linear_and_cosine)
{
    lu_schedule s = hf(LU_SCHED_COSINE);
    s.min_lr_ratio = 0.1;
    expect_lr(&s, 55, 0, 2.0 * 0.55);  /* 0.1 + 0.9 * 0.5 */
    expect_lr(&s, 100, 0, 0.2);
    expect_lr(&s, 5, 0, 1.0);          /* warm-up is not floored */
    s.kind = LU_SCHED_LINEAR;
    expect_lr(&s, 55, 0, 1.1);
    expect_lr(&s, 200, 0, 0.2);
}

Test(schedule, constant_with_and_without_warmup)
{
    lu_schedule s = hf(LU_SCHED_CONSTANT);
    expect_lr(&s, 4, 0, 0.8);
    expect_lr(&s, 10, 0, 2.0);
    expect_lr(&s, 1000, 0, 2.0);
    s.warmup_steps = 0;
    expect_lr(&s, 0, 0, 2.0);
}

Test(schedule, warmup_ratio_rounds_up_as_transformers)
{
    lu_schedule s = {.kind = LU_SCHED_LINEAR, .base_lr = 1.0, .total_steps = 100, .warmup_ratio = 0.101};
    cr_assert_eq(lu_schedule_warmup_steps(&s), 11);  /* ceil(10.1) */
    expect_lr(&s, 11, 0, 1.0);
    expect_lr(&s, 10, 0, 10.0 / 11.0);
    s.warmup_steps = 4;                              /* explicit steps win over the ratio */
    cr_assert_eq(lu_schedule_warmup_steps(&s), 4);
}

Test(schedule, noam_peaks_at_warmup)
{
    lu_schedule s = {.kind = LU_SCHED_NOAM, .base_lr = 123.0, .warmup_steps = 4000, .noam_d_model = 512,
                     .noam_factor = 2.0};
    expect_lr(&s, 0, 0, 3.493856214843422e-07);      /* step n = 1 */
    expect_lr(&s, 1999, 0, 0.0006987712429686844);   /* n = 2000: linear part */
    expect_lr(&s, 3999, 0, 0.0013975424859373686);   /* n = 4000: the peak */
    expect_lr(&s, 15999, 0, 0.0006987712429686843);  /* n = 16000: inverse square root */
}

Test(schedule, eden_matches_icefall_formula)
{
    lu_schedule s = {.kind = LU_SCHED_EDEN, .base_lr = 0.045, .eden_lr_batches = 7500, .eden_lr_epochs = 3.5,
                     .eden_warmup_start = 0.1, .eden_warmup_batches = 500};
    expect_lr(&s, 0, 0, 0.0045);                     /* warm-up starts at 0.1 */
    expect_lr(&s, 250, 0, 0.02474312977033056);      /* warm-up 0.55 */
    expect_lr(&s, 1000, 2, 0.041746488771829626);
    expect_lr(&s, 7500, 3.5, 0.03181980515339464);   /* 0.045 * 2^-0.25 * 2^-0.25 */
}

Test(schedule, kind_names_follow_enum_order)
{
    cr_assert_str_eq(lu_sched_kind_names, "constant|linear|cosine|noam|eden");
    cr_assert_eq(LU_SCHED_EDEN, 4);
}
