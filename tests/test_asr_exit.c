/* test_asr_exit.c - early exits that stop the encoder, and self-contained ASR checkpoints:
 * the block-by-block forwards of the EE-Conformer, Splitformer and early-exit Zipformer give
 * bit-identical log-probabilities at every exit to the full forward; `luthier asr transcribe`
 * runs from a checkpoint alone (no config, no training data, no Zipformer JSON), falls back to
 * the training data for checkpoints without asr.assets and says what is missing; --exit auto
 * runs only the blocks up to the exit the policy accepts; the evaluation reports the compute of
 * its dynamic exits. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checkpoint.h"
#include "core/metrics.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/task_asr.h"
#include "experiments/runner/trainer.h"
#include "models/conformer.h"
#include "models/zipformer.h"
#include "testutil.h"

/* ---- block by block equals the full forward ---- */

static lu_arena *arena;

static void arena_setup(void)
{
    arena = lu_arena_new(LU_CPU, 16u << 20);
    lu_arena_activate(arena);
}

static void arena_teardown(void)
{
    lu_arena_activate(NULL);
    lu_arena_free(arena);
}

TestSuite(exit_steps, .init = arena_setup, .fini = arena_teardown);

/* 3 exits x 2 layers; Splitformer branches at blocks 0 and 2. */
static lu_params *conformer(lu_ee_conformer *m, bool split)
{
    lu_ee_conformer_config c = {
        .block = {.input_dim = 16, .num_heads = 2, .ffn_dim = 24, .num_layers = 2, .depthwise_conv_kernel_size = 5,
                  .dropout = 0.1},
        .n_mels = 12, .vocab_size = 11, .n_exits = 3, .max_len = 64, .split_num_layers = 1, .split_factor = 2,
        .n_split = split ? 2 : 0, .split_exits = {0, 2},
    };
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_ee_conformer_declare(m, &c, p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_ee_conformer_init(m, 7), LU_OK, "%s", lu_error_message());
    return p;
}

/* 41 frames give 9 exit frames, an odd count, so the Splitformer branches pad. */
static void check_conformer_steps(bool split, bool training)
{
    lu_ee_conformer m;
    lu_params *p = conformer(&m, split);
    lu_tensor *feats = tu_rand(LU_F32, LU_SHAPE(2, 41, 12), -1, 1, 3);
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){41, 30});
    lu_conformer_run r1 = {.training = training, .seed = 5, .step = 2}, r2 = r1;
    lu_tensor *full[LU_CONFORMER_MAX_EXITS], *full_len = NULL;
    cr_assert_eq(lu_ee_conformer_forward(&m, feats, len, &r1, full, &full_len), LU_OK, "%s", lu_error_message());
    lu_ee_conformer_steps st;
    cr_assert_eq(lu_ee_conformer_begin(&m, feats, len, &r2, &st), LU_OK, "%s", lu_error_message());
    for (int i = 0; i < 3; i++) {
        lu_tensor *x = lu_ee_conformer_next(&st);
        cr_assert(x, "exit %d: %s", i + 1, lu_error_message());
        cr_assert_eq(st.done, i + 1);
        char what[48];
        snprintf(what, sizeof what, "exit %d block by block", i + 1);
        tu_assert_tensors_close(x, full[i], 0, 0, what);
    }
    tu_assert_tensors_close(lu_ee_conformer_steps_lengths(&st), full_len, 0, 0, "exit-rate lengths");
    cr_assert_null(lu_ee_conformer_next(&st));
    tu_assert_error_contains("all 3 blocks have run");
    cr_assert_eq(r1.site, r2.site, "dropout sites %u vs %u", r1.site, r2.site);
    lu_ee_conformer_steps_end(&st);
    lu_params_free(p);
}

Test(exit_steps, ee_conformer_steps_equal_the_full_forward_at_every_exit) { check_conformer_steps(false, false); }

Test(exit_steps, splitformer_steps_equal_the_full_forward_at_every_exit) { check_conformer_steps(true, false); }

Test(exit_steps, splitformer_training_steps_draw_the_same_dropout_masks) { check_conformer_steps(true, true); }

Test(exit_steps, conformer_begin_rejects_what_the_forward_rejects)
{
    lu_ee_conformer m;
    lu_params *p = conformer(&m, false);
    lu_ee_conformer_steps st;
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(1), LU_CPU, (int64_t[]){6});
    cr_assert_eq(lu_ee_conformer_begin(&m, tu_rand(LU_F32, LU_SHAPE(1, 6, 12), -1, 1, 1), len, NULL, &st), LU_ERR_SHAPE);
    tu_assert_error_contains("outside [1, max_len = 64]");
    cr_assert_null(lu_ee_conformer_next(&st));
    tu_assert_error_contains("failed or was not begun");
    lu_ee_conformer_steps_end(&st);
    lu_params_free(p);
}

/* The fixture encoder (3 stacks: 32, 48, 40 channels, downsampling 1, 2, 4), random weights. */
static lu_params *zipformer(lu_ee_zipformer *m, int n_exits, const int *stacks)
{
    lu_ee_zipformer_config c = {.vocab_size = 11, .n_exits = n_exits};
    cr_assert_eq(lu_zipformer_config_load_json("tests/fixtures/zipformer/config.json", &c.enc), LU_OK, "%s",
                 lu_error_message());
    for (int k = 0; k < n_exits; k++) c.exit_stacks[k] = stacks[k];
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_ee_zipformer_declare(m, &c, p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_ee_zipformer_init(m, 5), LU_OK, "%s", lu_error_message());
    return p;
}

static void check_zipformer_steps(int n_exits, const int *stacks)
{
    lu_ee_zipformer m;
    lu_params *p = zipformer(&m, n_exits, stacks);
    lu_tensor *feats = tu_rand(LU_F32, LU_SHAPE(2, 41, 80), -1, 1, 21);
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){41, 30});
    lu_tensor *full[LU_ZIPFORMER_MAX_STACKS], *full_len = NULL;
    cr_assert_eq(lu_ee_zipformer_forward(&m, feats, len, full, &full_len), LU_OK, "%s", lu_error_message());
    lu_ee_zipformer_steps st;
    cr_assert_eq(lu_ee_zipformer_begin(&m, feats, len, &st), LU_OK, "%s", lu_error_message());
    int k = 0;
    for (int i = 0; i < 3; i++) {
        lu_tensor *x = NULL;
        cr_assert_eq(lu_ee_zipformer_next(&st, &x), LU_OK, "stack %d: %s", i, lu_error_message());
        bool has_exit = k < n_exits && stacks[k] == i;
        cr_assert_eq(x != NULL, has_exit, "stack %d: exit %s", i, x ? "given" : "missing");
        if (!has_exit) continue;
        char what[48];
        snprintf(what, sizeof what, "exit after stack %d block by block", i);
        tu_assert_tensors_close(x, full[k++], 0, 0, what);
    }
    cr_assert_eq(k, n_exits);
    tu_assert_tensors_close(lu_ee_zipformer_steps_lengths(&st), full_len, 0, 0, "encoder_out_lens");
    lu_tensor *x = NULL;
    cr_assert_eq(lu_ee_zipformer_next(&st, &x), LU_ERR_STATE);
    tu_assert_error_contains("all 3 stacks have run");
    lu_ee_zipformer_steps_end(&st);
    lu_params_free(p);
}

Test(exit_steps, ee_zipformer_steps_equal_the_full_forward_after_every_stack)
{
    check_zipformer_steps(3, (int[]){0, 1, 2});
}

Test(exit_steps, ee_zipformer_stacks_without_an_exit_give_none)
{
    check_zipformer_steps(2, (int[]){1, 2});
    check_zipformer_steps(1, (int[]){1});
}

/* ---- transcription from a checkpoint alone ---- */

static char dir[64], feats[128], cfg[128], ckpt[160];
static const char *const utt1 = "tests/fixtures/asr/utt1.wav", *const utt3 = "tests/fixtures/asr/utt3.wav";

static void write_config(const char *path, const char *arch_lines)
{
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fprintf(f,
            "task: asr\n"
            "seed: 3\n"
            "data:\n  train_features: %s\n  valid_features: %s\n  max_frames: 200\n  max_train_frames: 400\n"
            "model:\n%s"
            "train:\n  max_steps: 4\n  log_every: 1\n"
            "optim:\n  lr: 3.0e-3\n"
            "schedule:\n  kind: constant\n",
            feats, feats, arch_lines);
    fclose(f);
}

/* Runs `luthier train` quietly on cfg into dir/<out>. */
static void train(const char *out, int n_over, char **over)
{
    char outp[128];
    snprintf(outp, sizeof outp, "%s/%s", dir, out);
    lu_run_options o = {.config_path = cfg, .out_dir = outp, .n_overrides = n_over, .overrides = over};
    FILE *keep = stdout;
    stdout = fopen("/dev/null", "w");
    lu_status st = lu_train_run(&o);
    fclose(stdout);
    stdout = keep;
    cr_assert_eq(st, LU_OK, "training failed: %s", lu_error_message());
}

/* The fixture's features and a tiny EE-Conformer (d 16, 3 exits x 1 layer) trained 4 steps. */
static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_asr_exit_XXXXXX");
    cr_assert(mkdtemp(dir));
    snprintf(feats, sizeof feats, "%s/feats.h5", dir);
    char *argv[] = {"prepare-speech", "--manifest", "tests/fixtures/asr/manifest.jsonl", "--out", feats, NULL};
    cr_assert_eq(tu_run_captured(lu_data_prepare_speech, 5, argv, NULL, 0), 0, "prepare-speech failed");
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    write_config(cfg, "  arch: ee_conformer\n  d_model: 16\n  num_heads: 2\n  ffn_dim: 32\n  n_exits: 3\n"
                      "  layers_per_exit: 1\n  kernel: 3\n");
    train("run", 0, NULL);
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoints/last.h5", dir);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(asr_exit, .init = setup, .fini = teardown, .timeout = 240);

/* Runs `luthier asr transcribe ARGS...` (NULL-terminated); its stdout goes to out (size 2048). */
static int transcribe(char *out, ...)
{
    char *argv[32] = {"asr", "transcribe"};
    int argc = 2;
    va_list ap;
    va_start(ap, out);
    for (char *a; argc < 31 && (a = va_arg(ap, char *));) argv[argc++] = a;
    va_end(ap);
    return tu_run_captured(lu_cli_asr, argc, argv, out, 2048);
}

static void remove_file(const char *path) { cr_assert_eq(remove(path), 0, "cannot remove %s", path); }

Test(asr_exit, checkpoint_alone_transcribes_as_config_and_checkpoint_without_the_training_data)
{
    char ref[2048], got[2048], run_dir[128];
    cr_assert_eq(transcribe(ref, "--config", cfg, "--checkpoint", ckpt, utt1, utt3, NULL), 0, "%s", lu_error_message());
    cr_assert(strstr(ref, utt1) && strstr(ref, utt3), "output:\n%s", ref);
    remove_file(feats);
    remove_file(cfg);
    cr_assert_eq(transcribe(got, "--checkpoint", ckpt, utt1, utt3, NULL), 0, "%s", lu_error_message());
    cr_assert_str_eq(got, ref);
    snprintf(run_dir, sizeof run_dir, "%s/run", dir);
    cr_assert_eq(transcribe(got, "--checkpoint", run_dir, "--exit", "auto", utt1, utt3, NULL), 0, "%s", lu_error_message());
    cr_assert(strstr(got, utt1) && strstr(got, utt3), "a run directory reads its checkpoints/last.h5:\n%s", got);
}

Test(asr_exit, zipformer_checkpoint_alone_needs_neither_data_nor_its_json)
{
    char json[128], zc[200], ref[2048], got[2048];
    snprintf(json, sizeof json, "%s/zip.json", dir);
    FILE *f = fopen(json, "w");
    cr_assert(f);
    fputs("{\"output_downsampling_factor\": 2, \"downsampling_factor\": [1, 2], \"encoder_dim\": [16, 16],\n"
          " \"num_encoder_layers\": [1, 1], \"encoder_unmasked_dim\": [16, 16], \"query_head_dim\": 8,\n"
          " \"pos_head_dim\": 4, \"value_head_dim\": 4, \"num_heads\": 2, \"feedforward_dim\": 32,\n"
          " \"cnn_module_kernel\": 3, \"pos_dim\": 8, \"feature_dim\": 80, \"layer1_channels\": 4,\n"
          " \"layer2_channels\": 8, \"layer3_channels\": 16}\n",
          f);
    fclose(f);
    snprintf(zc, sizeof zc, "model.zipformer_config=%s", json);
    char *over[] = {"model.arch=ee_zipformer", zc, "train.max_steps=2"};
    train("zip", 3, over);
    char zckpt[160];
    snprintf(zckpt, sizeof zckpt, "%s/zip/checkpoints/last.h5", dir);
    cr_assert_eq(transcribe(ref, "--checkpoint", zckpt, "--exit", "1", utt1, NULL), 0, "%s", lu_error_message());
    remove_file(json);
    remove_file(feats);
    cr_assert_eq(transcribe(got, "--checkpoint", zckpt, "--exit", "1", utt1, NULL), 0, "%s", lu_error_message());
    cr_assert_str_eq(got, ref);
    cr_assert(strstr(got, "\t1\t"), "exit 1:\n%s", got);
}

Test(asr_exit, checkpoint_without_a_config_is_an_error_naming_it)
{
    char path[128], out[2048];
    snprintf(path, sizeof path, "%s/bare.h5", dir);
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert(lu_params_add(p, "w", LU_F32, LU_SHAPE(2), true));
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    cr_assert_eq(lu_ckpt_save(path, p, NULL, &(lu_ckpt_meta){.step = 1}), LU_OK, "%s", lu_error_message());
    lu_params_free(p);
    cr_assert_eq(transcribe(out, "--checkpoint", path, utt1, NULL), 1);
    tu_assert_error_contains("bare.h5' holds no config");
    cr_assert_str_eq(out, "");
}

Test(asr_exit, checkpoint_of_another_task_or_missing_is_an_error)
{
    char out[2048], path[128];
    snprintf(path, sizeof path, "%s/none.h5", dir);
    cr_assert_eq(transcribe(out, "--checkpoint", path, utt1, NULL), 1);
    tu_assert_error_contains("none.h5': cannot read");
    snprintf(path, sizeof path, "%s/sft.yaml", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs("task: sft\nmodel:\n  hf_dir: x\n", f);
    fclose(f);
    cr_assert_eq(transcribe(out, "--config", path, "--checkpoint", ckpt, utt1, NULL), 1);
    tu_assert_error_contains("task 'sft', not asr");
}

/* Random features of the model's width (the state normalises them). */
static lu_tensor *some_features(void *state)
{
    int rate;
    int64_t dim;
    lu_asr_task_features(state, &rate, &dim);
    return tu_rand(LU_F32, LU_SHAPE(120, dim), -3, 3, 11);
}

Test(asr_exit, older_checkpoint_falls_back_to_the_training_data_and_names_what_is_missing)
{
    char *over[] = {"model.self_contained=false"};
    train("old", 1, over);
    char old[160], ref[2048], got[2048];
    snprintf(old, sizeof old, "%s/old/checkpoints/last.h5", dir);
    cr_assert_eq(transcribe(ref, "--checkpoint", ckpt, utt1, NULL), 0, "%s", lu_error_message());
    cr_assert_eq(transcribe(got, "--checkpoint", old, utt1, NULL), 0, "%s", lu_error_message());
    cr_assert_str_eq(got + strlen(utt1), ref + strlen(utt1), "same weights, same transcript");
    /* Same weights (same seed and data); the normalisation read back from asr.assets is the one
     * computed from the data, to the bit. */
    void *a = NULL, *b = NULL;
    cr_assert_eq(lu_asr_task_open(ckpt, NULL, &a), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_asr_task_open(old, NULL, &b), LU_OK, "%s", lu_error_message());
    lu_arena *ar = lu_arena_new(LU_CPU, 0), *prev = lu_arena_activate(ar);
    lu_tensor *x = some_features(a);
    lu_asr_exit_out oa, ob;
    cr_assert_eq(lu_asr_task_run(a, lu_tensor_data(x), 120, 2, NULL, &oa), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_asr_task_run(b, lu_tensor_data(x), 120, 2, NULL, &ob), LU_OK, "%s", lu_error_message());
    cr_assert(oa.t_out == ob.t_out && oa.vocab == ob.vocab);
    cr_assert(!memcmp(oa.logp, ob.logp, (size_t)(oa.t_out * oa.vocab) * sizeof(float)), "exit 2 log-probabilities differ");
    free(oa.logp);
    free(ob.logp);
    lu_arena_activate(prev);
    lu_arena_free(ar);
    lu_asr_task_close(a);
    lu_asr_task_close(b);
    remove_file(feats);
    cr_assert_eq(transcribe(got, "--checkpoint", old, utt1, NULL), 1);
    tu_assert_error_contains("has no tensor 'asr.assets'");
    tu_assert_error_contains("feats.h5");
    cr_assert_eq(transcribe(got, "--checkpoint", ckpt, utt1, NULL), 0, "%s", lu_error_message());
}

Test(asr_exit, auto_runs_only_the_blocks_up_to_the_accepted_exit)
{
    void *state = NULL;
    cr_assert_eq(lu_asr_task_open(ckpt, NULL, &state), LU_OK, "%s", lu_error_message());
    lu_arena *a = lu_arena_new(LU_CPU, 0), *prev = lu_arena_activate(a);
    lu_tensor *x = some_features(state);
    const float *f = lu_tensor_data(x);
    int n = lu_asr_task_n_exits(state), total = lu_asr_task_exit_layers(state, n - 1);
    cr_assert_eq(n, 3);
    lu_exit_policy yes = {LU_EXIT_POSTERIOR, 0.0}, never = {LU_EXIT_POSTERIOR, 1.0};
    lu_asr_exit_out early, late, first, last;
    cr_assert_eq(lu_asr_task_run(state, f, 120, 0, &yes, &early), LU_OK, "%s", lu_error_message());
    cr_assert_eq(early.exit, 1);
    cr_assert_eq(early.layers, lu_asr_task_exit_layers(state, 0));
    cr_assert_lt(early.layers, total);
    cr_assert_eq(lu_asr_task_run(state, f, 120, 0, &never, &late), LU_OK, "%s", lu_error_message());
    cr_assert_eq(late.exit, n);
    cr_assert_eq(late.layers, total);
    /* The log-probabilities are those of the same exit asked for by number. */
    cr_assert_eq(lu_asr_task_run(state, f, 120, 1, NULL, &first), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_asr_task_run(state, f, 120, 0, NULL, &last), LU_OK, "%s", lu_error_message());
    cr_assert_eq(last.exit, n);
    cr_assert(early.frames > 0 && early.frames == last.frames && early.vocab == last.vocab);
    size_t bytes = (size_t)(early.t_out * early.vocab) * sizeof(float);
    cr_assert(!memcmp(early.logp, first.logp, bytes), "auto at exit 1 = exit 1");
    cr_assert(!memcmp(late.logp, last.logp, bytes), "auto at the last exit = the last exit");
    cr_assert(memcmp(early.logp, late.logp, bytes), "exits 1 and 3 differ");
    lu_asr_exit_out bad;
    cr_assert_eq(lu_asr_task_run(state, f, 120, 4, NULL, &bad), LU_ERR_INVALID);
    tu_assert_error_contains("exit 4, the model has exits 1..3");
    free(early.logp);
    free(late.logp);
    free(first.logp);
    free(last.logp);
    lu_arena_activate(prev);
    lu_arena_free(a);
    lu_asr_task_close(state);
}

/* Stricter thresholds stop later, so they run at least as many layers; every fraction is in
 * (0, 1]; utterances run one at a time use no more layers than their batches. */
Test(asr_exit, evaluation_reports_the_compute_of_dynamic_exits)
{
    char metrics[160];
    snprintf(metrics, sizeof metrics, "%s/run/metrics.jsonl", dir);
    const char *layer_keys[] = {"dyn_entropy_0.1_layer_frac", "dyn_entropy_0.2_layer_frac", "dyn_entropy_0.3_layer_frac",
                                "dyn_posterior_0.95_layer_frac", "dyn_posterior_0.9_layer_frac", "dyn_posterior_0.8_layer_frac"};
    const char *time_keys[] = {"dyn_entropy_0.1_time_frac", "dyn_entropy_0.2_time_frac", "dyn_entropy_0.3_time_frac",
                               "dyn_posterior_0.95_time_frac", "dyn_posterior_0.9_time_frac", "dyn_posterior_0.8_time_frac"};
    double layers[6];
    int64_t step;
    for (int i = 0; i < 6; i++) {
        double t;
        cr_assert_eq(lu_metrics_read_last(metrics, "eval", layer_keys[i], &layers[i], &step), LU_OK, "%s", lu_error_message());
        cr_assert(layers[i] > 0 && layers[i] <= 1, "%s = %g", layer_keys[i], layers[i]);
        cr_assert_eq(lu_metrics_read_last(metrics, "eval", time_keys[i], &t, &step), LU_OK, "%s", lu_error_message());
        cr_assert(t > 0 && t <= 1 + 1e-12, "%s = %g", time_keys[i], t);
        /* One utterance at a time never runs more than its batch, which stops at its latest exit. */
        char utt_key[64];
        snprintf(utt_key, sizeof utt_key, "%.*sutt_layer_frac", (int)(strlen(layer_keys[i]) - strlen("layer_frac")),
                 layer_keys[i]);
        double u;
        cr_assert_eq(lu_metrics_read_last(metrics, "eval", utt_key, &u, &step), LU_OK, "%s", lu_error_message());
        cr_assert(u > 0 && u <= layers[i], "%s = %g, %s = %g", utt_key, u, layer_keys[i], layers[i]);
    }
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 2; i++)
            cr_assert_geq(layers[3 * c + i], layers[3 * c + i + 1], "%s %g < %s %g", layer_keys[3 * c + i],
                          layers[3 * c + i], layer_keys[3 * c + i + 1], layers[3 * c + i + 1]);
}
