/* test_asr_infer.c - `luthier asr transcribe` on a tiny EE-Conformer (3 exits) trained for a few
 * steps on the espeak-ng fixture utterances (tests/fixtures/asr): one line per file, --exit N,
 * --exit auto at the policy extremes, beam search, the errors; and the dynamic-exit metrics of
 * the task's evaluation. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/trainer.h"
#include "testutil.h"

static char dir[64];
static char cfg[128], ckpt[160];
static const char *const utt1 = "tests/fixtures/asr/utt1.wav", *const utt3 = "tests/fixtures/asr/utt3.wav";

/* Features of the fixture, a tiny config (d 16, 2 heads, 3 exits x 1 layer) and 4 trained steps. */
static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_asr_infer_XXXXXX");
    cr_assert(mkdtemp(dir));
    char feats[128];
    snprintf(feats, sizeof feats, "%s/feats.h5", dir);
    char *argv[] = {"prepare-speech", "--manifest", "tests/fixtures/asr/manifest.jsonl", "--out", feats, NULL};
    cr_assert_eq(tu_run_captured(lu_data_prepare_speech, 5, argv, NULL, 0), 0, "prepare-speech failed");
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    FILE *f = fopen(cfg, "w");
    cr_assert(f);
    fprintf(f,
            "task: asr\n"
            "seed: 3\n"
            "data:\n  train_features: %s\n  valid_features: %s\n  max_frames: 200\n  max_train_frames: 400\n"
            "model:\n  arch: ee_conformer\n  d_model: 16\n  num_heads: 2\n  ffn_dim: 32\n  n_exits: 3\n"
            "  layers_per_exit: 1\n  kernel: 3\n"
            "train:\n  max_steps: 4\n  log_every: 1\n  out_dir: %s/run\n"
            "optim:\n  lr: 3.0e-3\n"
            "schedule:\n  kind: constant\n",
            feats, feats, dir);
    fclose(f);
    lu_run_options o = {.config_path = cfg};
    FILE *keep = stdout;
    stdout = fopen("/dev/null", "w");
    lu_status st = lu_train_run(&o);
    fclose(stdout);
    stdout = keep;
    cr_assert_eq(st, LU_OK, "training failed: %s", lu_error_message());
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoints/last.h5", dir);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(asr_infer, .init = setup, .fini = teardown, .timeout = 240);

typedef struct line {
    char path[160];
    int exit;
    char text[256];
} line;

/* Runs `luthier asr transcribe ARGS...` (NULL-terminated) with stdout in a file; fills up to 8
 * parsed lines and returns the exit code. */
static int transcribe(line *lines, int *n_lines, ...)
{
    char *argv[32] = {"asr", "transcribe"};
    int argc = 2;
    va_list ap;
    va_start(ap, n_lines);
    for (char *a; argc < 31 && (a = va_arg(ap, char *));) argv[argc++] = a;
    va_end(ap);
    char out[4096];
    int rc = tu_run_captured(lu_cli_asr, argc, argv, out, sizeof out);
    *n_lines = 0;
    for (char *save = NULL, *buf = strtok_r(out, "\n", &save); buf; buf = strtok_r(NULL, "\n", &save)) {
        cr_assert_lt(*n_lines, 8, "too many lines");
        line *l = &lines[(*n_lines)++];
        char *tab1 = strchr(buf, '\t'), *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        cr_assert(tab1 && tab2, "line '%s' is not PATH<TAB>EXIT<TAB>TEXT", buf);
        *tab1 = *tab2 = 0;
        snprintf(l->path, sizeof l->path, "%.159s", buf);
        l->exit = atoi(tab1 + 1);
        snprintf(l->text, sizeof l->text, "%.255s", tab2 + 1);
    }
    return rc;
}

Test(asr_infer, prints_one_line_per_file_with_the_last_exit_by_default)
{
    line l[8];
    int n;
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--checkpoint", ckpt, utt1, utt3, NULL), 0, "%s", lu_error_message());
    cr_assert_eq(n, 2);
    cr_assert_str_eq(l[0].path, utt1);
    cr_assert_str_eq(l[1].path, utt3);
    cr_assert_eq(l[0].exit, 3);
    cr_assert_eq(l[1].exit, 3);
}

Test(asr_infer, default_checkpoint_is_the_runs_last)
{
    line a[8], b[8];
    int na, nb;
    cr_assert_eq(transcribe(a, &na, "--config", cfg, utt3, NULL), 0, "%s", lu_error_message());
    cr_assert_eq(transcribe(b, &nb, "--config", cfg, "--checkpoint", ckpt, utt3, NULL), 0);
    cr_assert_eq(na, 1);
    cr_assert_eq(nb, 1);
    cr_assert_str_eq(a[0].text, b[0].text);
}

Test(asr_infer, honours_exit_n)
{
    line l[8];
    int n;
    for (int e = 1; e <= 3; e++) {
        char arg[12]; /* any int */
        snprintf(arg, sizeof arg, "%d", e);
        cr_assert_eq(transcribe(l, &n, "--config", cfg, "--exit", arg, utt1, utt3, NULL), 0, "%s", lu_error_message());
        cr_assert_eq(n, 2);
        cr_assert_eq(l[0].exit, e);
        cr_assert_eq(l[1].exit, e);
    }
}

Test(asr_infer, auto_with_a_policy_accepting_everything_stops_at_exit_1)
{
    line l[8];
    int n;
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--exit", "auto", "--policy", "posterior:0", utt1, utt3, NULL), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(l[0].exit, 1);
    cr_assert_eq(l[1].exit, 1);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--exit", "auto", "--policy", "entropy:1", utt1, NULL), 0);
    cr_assert_eq(l[0].exit, 1);
}

Test(asr_infer, auto_with_a_policy_accepting_nothing_uses_the_last_exit)
{
    line l[8];
    int n;
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--exit", "auto", "--policy", "posterior:1", utt1, utt3, NULL), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(l[0].exit, 3);
    cr_assert_eq(l[1].exit, 3);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--exit", "auto", "--policy", "entropy:0", utt1, NULL), 0);
    cr_assert_eq(l[0].exit, 3);
}

Test(asr_infer, auto_decodes_the_same_text_as_the_exit_it_reports)
{
    line a[8], b[8];
    int na, nb;
    cr_assert_eq(transcribe(a, &na, "--config", cfg, "--exit", "auto", "--policy", "posterior:0", utt3, NULL), 0);
    cr_assert_eq(transcribe(b, &nb, "--config", cfg, "--exit", "1", utt3, NULL), 0);
    cr_assert_str_eq(a[0].text, b[0].text);
}

Test(asr_infer, beam_search_prints_one_line_per_file)
{
    line l[8];
    int n;
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--beam", "4", "--exit", "2", utt1, utt3, NULL), 0, "%s",
                 lu_error_message());
    cr_assert_eq(n, 2);
    cr_assert_eq(l[0].exit, 2);
    cr_assert_eq(l[1].exit, 2);
}

Test(asr_infer, missing_checkpoint_is_an_error_naming_it)
{
    line l[8];
    int n;
    char missing[160];
    snprintf(missing, sizeof missing, "%s/none.h5", dir);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--checkpoint", missing, utt1, NULL), 1);
    cr_assert_eq(n, 0);
    tu_assert_error_contains("none.h5");
}

Test(asr_infer, bad_exit_is_a_usage_error)
{
    line l[8];
    int n;
    const char *bad[] = {"0", "x", "2x", "4"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(transcribe(l, &n, "--config", cfg, "--exit", bad[i], utt1, NULL), 2, "--exit %s", bad[i]);
        cr_assert_eq(n, 0);
    }
}

Test(asr_infer, bad_policy_beam_and_options_are_usage_errors)
{
    line l[8];
    int n;
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--policy", "loudness:0.5", utt1, NULL), 2);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--policy", "entropy:2", utt1, NULL), 2);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--beam", "0", utt1, NULL), 2);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, "--speed", "2", utt1, NULL), 2);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, NULL), 2);
    cr_assert_eq(transcribe(l, &n, utt1, NULL), 2);
}

Test(asr_infer, unreadable_audio_is_reported_and_the_other_files_transcribed)
{
    line l[8];
    int n;
    char missing[160];
    snprintf(missing, sizeof missing, "%s/absent.wav", dir);
    cr_assert_eq(transcribe(l, &n, "--config", cfg, missing, utt1, "tests/fixtures/asr/manifest.jsonl", NULL), 1);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(l[0].path, utt1);
}

/* A stricter threshold accepts a subset of what a looser one accepts, so its first accepted exit
 * is never earlier. */
Test(asr_infer, evaluation_reports_dynamic_exits_ordered_by_threshold)
{
    char metrics[160];
    snprintf(metrics, sizeof metrics, "%s/run/metrics.jsonl", dir);
    const char *wer_keys[] = {"dyn_entropy_0.1_wer", "dyn_entropy_0.2_wer", "dyn_entropy_0.3_wer",
                              "dyn_posterior_0.8_wer", "dyn_posterior_0.9_wer", "dyn_posterior_0.95_wer"};
    /* strictest first within each criterion */
    const char *exit_keys[] = {"dyn_entropy_0.1_avg_exit", "dyn_entropy_0.2_avg_exit", "dyn_entropy_0.3_avg_exit",
                               "dyn_posterior_0.95_avg_exit", "dyn_posterior_0.9_avg_exit", "dyn_posterior_0.8_avg_exit"};
    double avg[6];
    int64_t step;
    for (int i = 0; i < 6; i++) {
        double w;
        cr_assert_eq(lu_metrics_read_last(metrics, "eval", wer_keys[i], &w, &step), LU_OK, "%s", lu_error_message());
        cr_assert(isfinite(w) && w >= 0, "%s = %g", wer_keys[i], w);
        cr_assert_eq(lu_metrics_read_last(metrics, "eval", exit_keys[i], &avg[i], &step), LU_OK, "%s", lu_error_message());
        cr_assert(avg[i] >= 1 && avg[i] <= 3, "%s = %g", exit_keys[i], avg[i]);
        cr_assert_eq(step, 4);
    }
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 2; i++)
            cr_assert_geq(avg[3 * c + i], avg[3 * c + i + 1], "%s %g < %s %g", exit_keys[3 * c + i], avg[3 * c + i],
                          exit_keys[3 * c + i + 1], avg[3 * c + i + 1]);
    double w1;
    cr_assert_eq(lu_metrics_read_last(metrics, "eval", "wer_exit_1", &w1, &step), LU_OK, "per-exit WER kept");
}
