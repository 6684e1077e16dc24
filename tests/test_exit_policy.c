/* test_exit_policy.c - confidence scores and the stopping rule of dynamic early exits. */
#include <math.h>

#include "models/exit_policy.h"
#include "testutil.h"

/* Two frames over V = 4: one certain, one uniform. */
static void make_logp(float *lp)
{
    for (int k = 0; k < 4; k++) {
        lp[k] = k == 2 ? 0.0f : -INFINITY;
        lp[4 + k] = (float)log(0.25);
    }
}

Test(exit_policy, entropy_is_zero_for_certain_and_one_for_uniform_frames)
{
    float lp[8];
    make_logp(lp);
    cr_assert_float_eq(lu_exit_score(LU_EXIT_ENTROPY, lp, 1, 4), 0.0, 1e-12);
    cr_assert_float_eq(lu_exit_score(LU_EXIT_ENTROPY, lp + 4, 1, 4), 1.0, 1e-6);
    cr_assert_float_eq(lu_exit_score(LU_EXIT_ENTROPY, lp, 2, 4), 0.5, 1e-6);
}

Test(exit_policy, posterior_is_the_mean_max_probability)
{
    float lp[8];
    make_logp(lp);
    cr_assert_float_eq(lu_exit_score(LU_EXIT_POSTERIOR, lp, 2, 4), (1.0 + 0.25) / 2, 1e-6);
}

Test(exit_policy, only_valid_frames_count)
{
    float lp[8];
    make_logp(lp);
    /* The uniform second frame is padding for a one-frame utterance. */
    cr_assert_float_eq(lu_exit_score(LU_EXIT_POSTERIOR, lp, 1, 4), 1.0, 1e-12);
}

Test(exit_policy, selects_the_first_confident_exit_or_the_last)
{
    lu_exit_policy ent = {LU_EXIT_ENTROPY, 0.3}, post = {LU_EXIT_POSTERIOR, 0.9};
    double ent_scores[4] = {0.8, 0.5, 0.2, 0.1}, post_scores[4] = {0.5, 0.95, 0.97, 0.99};
    cr_assert_eq(lu_exit_select(&ent, ent_scores, 4), 2);
    cr_assert_eq(lu_exit_select(&post, post_scores, 4), 1);
    double never[3] = {0.9, 0.9, 0.9};
    cr_assert_eq(lu_exit_select(&ent, never, 3), 2, "falls through to the last exit");
}

Test(exit_policy, parses_and_rejects_policies)
{
    lu_exit_policy p;
    cr_assert_eq(lu_exit_policy_parse("entropy:0.25", &p), LU_OK);
    cr_assert(p.criterion == LU_EXIT_ENTROPY && p.threshold == 0.25);
    cr_assert_eq(lu_exit_policy_parse("posterior:0.9", &p), LU_OK);
    cr_assert(p.criterion == LU_EXIT_POSTERIOR);
    cr_assert_neq(lu_exit_policy_parse("margin:0.2", &p), LU_OK);
    tu_assert_error_contains("unknown criterion");
    cr_assert_neq(lu_exit_policy_parse("entropy:1.5", &p), LU_OK);
    tu_assert_error_contains("in [0, 1]");
    cr_assert_neq(lu_exit_policy_parse("entropy", &p), LU_OK);
    tu_assert_error_contains("expected entropy:THRESHOLD");
}
