/* test_asr_task.c - the `asr` trainer task end to end on the six espeak-ng fixture utterances
 * (tests/fixtures/asr): a tiny EE-Conformer's loss falls, evaluation reports one WER per exit
 * and the demo prints its table, resuming is bit-exact, Splitformer trains, and config errors
 * name the key. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "core/metrics.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/trainer.h"
#include "testutil.h"

#include <criterion/redirect.h>

static char dir[64];

/* Features of the fixture and the tiny config (tu_write_tiny_asr_config), 6 steps. */
static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_asr_task_XXXXXX");
    cr_assert(mkdtemp(dir));
    tu_write_tiny_asr_config(dir, 6);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(asr_task, .init = setup, .fini = teardown, .timeout = 240);

static lu_status train(const char *out, int64_t stop_after, bool resume, int n_over, char **over)
{
    char cfg[128], outp[128];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    snprintf(outp, sizeof outp, "%s/%s", dir, out);
    lu_run_options o = {.config_path = cfg, .out_dir = outp, .stop_after = stop_after, .resume = resume,
                        .n_overrides = n_over, .overrides = over};
    return lu_train_run(&o);
}

static const char *metrics_path(const char *run)
{
    static char path[160];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", dir, run);
    return path;
}

/* Mean training loss of the first and the last `k` logged steps. */
static void loss_ends(const char *run, int k, double *first, double *last)
{
    FILE *f = fopen(metrics_path(run), "r");
    cr_assert(f);
    double v[512];
    int n = 0;
    char line[1024];
    while (n < 512 && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"event\":\"train\"") ? strstr(line, "\"loss\":") : NULL;
        if (p) v[n++] = atof(p + 7);
    }
    fclose(f);
    cr_assert_geq(n, 2 * k, "%d logged steps", n);
    *first = *last = 0;
    for (int i = 0; i < k; i++) *first += v[i] / k, *last += v[n - 1 - i] / k;
}

Test(asr_task, tiny_conformer_loss_decreases)
{
    cr_redirect_stdout();
    char *over[] = {"train.max_steps=60", "train.save_every=0", "specaug.enabled=false"};
    cr_assert_eq(train("run", 0, false, 3, over), LU_OK, "%s", lu_error_message());
    double first, last;
    loss_ends("run", 5, &first, &last);
    cr_assert_lt(last, 0.7 * first, "training loss %g -> %g over 60 steps", first, last);
}

Test(asr_task, evaluation_reports_one_wer_per_exit_and_the_demo_a_table)
{
    cr_redirect_stdout();
    cr_assert_eq(train("run", 0, false, 0, NULL), LU_OK, "%s", lu_error_message());
    double v;
    int64_t step;
    for (int i = 1; i <= 3; i++) {
        char key[32];
        snprintf(key, sizeof key, "wer_exit_%d", i);
        cr_assert_eq(lu_metrics_read_last(metrics_path("run"), "eval", key, &v, &step), LU_OK, "%s", lu_error_message());
        cr_assert(isfinite(v) && v >= 0, "%s = %g", key, v);
        cr_assert_eq(step, 6);
    }
    cr_assert_neq(lu_metrics_read_last(metrics_path("run"), "eval", "wer_exit_4", &v, &step), LU_OK, "only 3 exits");
    cr_assert_eq(lu_metrics_read_last(metrics_path("run"), "eval", "valid_loss", &v, &step), LU_OK);
    cr_assert(isfinite(v) && v > 0);
    fflush(stdout);
    char out[8192] = {0};
    fread(out, 1, sizeof out - 1, cr_get_redirected_stdout());
    cr_assert(strstr(out, "| exit | encoder layers | WER % |") && strstr(out, "| 3 | 3 |"), "demo:\n%s", out);
    cr_assert(strstr(out, "REF:            YES"), "demo shows the normalised reference:\n%s", out);
}

/* Raw bytes of every dataset of an HDF5 group of a run's last checkpoint, concatenated. */
typedef struct blob {
    size_t n;
    unsigned char *bytes;
} blob;

static herr_t collect(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    blob *b = data;
    hid_t d = H5Dopen2(group, name, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    size_t n = (size_t)H5Sget_simple_extent_npoints(sp) * H5Tget_size(t);
    b->bytes = realloc(b->bytes, b->n + n);
    H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, b->bytes + b->n);
    b->n += n;
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return 0;
}

static blob read_group(const char *run, const char *group)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%s/checkpoints/last.h5", dir, run);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0, "cannot open %s", path);
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    cr_assert(g >= 0, "%s has no group %s", path, group);
    blob b = {0};
    H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, collect, &b);
    H5Gclose(g);
    H5Fclose(f);
    return b;
}

Test(asr_task, resume_after_interruption_is_bit_exact)
{
    cr_redirect_stdout();
    cr_assert_eq(train("straight", 0, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("split", 3, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("split", 0, true, 0, NULL), LU_OK, "%s", lu_error_message());
    const char *groups[] = {"/params", "/optim"};
    for (int g = 0; g < 2; g++) {
        blob a = read_group("straight", groups[g]), b = read_group("split", groups[g]);
        cr_assert_gt(a.n, 0);
        cr_assert_eq(a.n, b.n);
        cr_assert(!memcmp(a.bytes, b.bytes, a.n), "%s differs after resume", groups[g]);
        free(a.bytes);
        free(b.bytes);
    }
}

Test(asr_task, splitformer_trains_and_reports_every_exit)
{
    cr_redirect_stdout();
    char *over[] = {"model.arch=splitformer", "train.max_steps=3", "train.save_every=0"};
    cr_assert_eq(train("run", 0, false, 3, over), LU_OK, "%s", lu_error_message());
    double v;
    int64_t step;
    cr_assert_eq(lu_metrics_read_last(metrics_path("run"), "eval", "wer_exit_3", &v, &step), LU_OK, "%s", lu_error_message());
}

Test(asr_task, exit_weights_must_match_the_exits)
{
    cr_redirect_stdout();
    char *over[] = {"model.exit_weights=[1.0, 0.5]"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("model.exit_weights has 2 entries for 3 exits");
}

Test(asr_task, exit_weights_scale_the_loss)
{
    cr_redirect_stdout();
    char *a[] = {"train.max_steps=1", "train.save_every=0", "model.dropout=0", "specaug.enabled=false"};
    char *b[] = {"train.max_steps=1", "train.save_every=0", "model.dropout=0", "specaug.enabled=false",
                 "model.exit_weights=[2.0, 2.0, 2.0]"};
    cr_assert_eq(train("one", 0, false, 4, a), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("two", 0, false, 5, b), LU_OK, "%s", lu_error_message());
    double l1, l2;
    int64_t step;
    cr_assert_eq(lu_metrics_read_last(metrics_path("one"), "train", "loss", &l1, &step), LU_OK);
    cr_assert_eq(lu_metrics_read_last(metrics_path("two"), "train", "loss", &l2, &step), LU_OK);
    cr_assert_float_eq(l2, 2 * l1, 1e-4 * l1, "weights 2 double the first step's loss: %g vs %g", l2, l1);
}

Test(asr_task, missing_feature_store_is_reported)
{
    cr_redirect_stdout();
    char *over[] = {"data.train_features=/nonexistent/train.h5"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("/nonexistent/train.h5");
}

Test(asr_task, ee_zipformer_trains_with_an_exit_per_stack)
{
    cr_redirect_stdout();
    char json[160];
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
    char zc[200];
    snprintf(zc, sizeof zc, "model.zipformer_config=%s", json);
    char *over[] = {"model.arch=ee_zipformer", zc, "train.max_steps=4", "train.save_every=0"};
    cr_assert_eq(train("run", 0, false, 4, over), LU_OK, "%s", lu_error_message());
    double v;
    int64_t step;
    cr_assert_eq(lu_metrics_read_last(metrics_path("run"), "eval", "wer_exit_2", &v, &step), LU_OK, "%s", lu_error_message());
    cr_assert_neq(lu_metrics_read_last(metrics_path("run"), "eval", "wer_exit_3", &v, &step), LU_OK, "two stacks, two exits");
    cr_assert_eq(lu_metrics_read_last(metrics_path("run"), "train", "loss", &v, &step), LU_OK);
    cr_assert(isfinite(v) && v > 0, "loss %g", v);
}

Test(asr_task, ee_zipformer_without_its_config_is_an_error)
{
    cr_redirect_stdout();
    char *over[] = {"model.arch=ee_zipformer"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("model.zipformer_config");
}
