/* test_trainer.c - the shared trainer end to end on the bytelm task: run directory contents,
 * metrics, exact resume after an interruption, evaluation, and the errors a user meets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>
#include <math.h>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/metrics.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/trainer.h"
#include "testutil.h"

static char dir[256];

/* A temp dir with a small French text and a tiny bytelm config. */
static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_trainer_XXXXXX");
    cr_assert(mkdtemp(dir));
    tu_write_tiny_bytelm_config(dir);
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

static lu_status train(const char *out, int64_t stop_after, bool resume, int n_over, char **over)
{
    char cfg[512], outp[512];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    snprintf(outp, sizeof outp, "%s/%s", dir, out);
    lu_run_options o = {.config_path = cfg, .out_dir = outp, .stop_after = stop_after, .resume = resume,
                        .n_overrides = n_over, .overrides = over};
    return lu_train_run(&o);
}

static char *read_text(const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "missing %s", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

TestSuite(trainer, .init = setup, .fini = teardown, .timeout = 120);

Test(trainer, run_directory_holds_config_metrics_and_checkpoint)
{
    cr_assert_eq(train("run", 0, false, 0, NULL), LU_OK, "%s", lu_error_message());
    const char *cfg = read_text("run/config.yaml");
    cr_assert(strstr(cfg, "bytelm") && strstr(cfg, "max_steps") && strstr(cfg, "device: cpu"), "resolved config:\n%s", cfg);
    const char *m = read_text("run/metrics.jsonl");
    int train_lines = 0;
    for (const char *p = m; (p = strstr(p, "\"event\":\"train\"")); p++) train_lines++;
    cr_assert_eq(train_lines, 3, "log_every 2 over 6 steps -> 3 lines:\n%s", m);
    cr_assert(strstr(m, "\"event\":\"eval\"") && strstr(m, "valid_loss"), "%s", m);
    char path[512];
    snprintf(path, sizeof path, "%s/run/checkpoints/last.h5", dir);
    cr_assert_eq(access(path, R_OK), 0);
}

Test(trainer, loss_decreases_on_repetitive_text)
{
    char *over[] = {"train.max_steps=40", "train.log_every=40"};
    cr_assert_eq(train("run", 0, false, 2, over), LU_OK, "%s", lu_error_message());
    double first, last;
    int64_t step;
    char path[512];
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
    cr_assert_eq(lu_metrics_read_last(path, "eval", "valid_loss", &last, &step), LU_OK, "%s", lu_error_message());
    first = log(256.0); /* an untrained byte model starts near uniform */
    cr_assert_lt(last, first - 1.0, "valid loss %g after 40 steps, uniform is %g", last, first);
}

/* Collects the datasets of an HDF5 group: names and raw bytes. */
typedef struct h5_blob { char name[256]; size_t n; unsigned char *bytes; } h5_blob;
typedef struct h5_set { int n; h5_blob items[512]; } h5_set;

static herr_t collect(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    h5_set *set = data;
    hid_t d = H5Dopen2(group, name, H5P_DEFAULT);
    if (d < 0) return 0; /* a subgroup */
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    h5_blob *b = &set->items[set->n++];
    snprintf(b->name, sizeof b->name, "%s", name);
    b->n = (size_t)H5Sget_simple_extent_npoints(sp) * H5Tget_size(t);
    b->bytes = malloc(b->n + 1);
    H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, b->bytes);
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return 0;
}

static void read_group(const char *run, const char *group, h5_set *set)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/checkpoints/last.h5", dir, run);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0, "cannot open %s", path);
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    cr_assert(g >= 0, "%s has no group %s", path, group);
    set->n = 0;
    H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, collect, set);
    H5Gclose(g);
    H5Fclose(f);
}

static void assert_groups_identical(const char *group)
{
    static h5_set a, b;
    read_group("straight", group, &a);
    read_group("split", group, &b);
    cr_assert_gt(a.n, 0, "no datasets in %s", group);
    cr_assert_eq(a.n, b.n, "%s: %d vs %d datasets", group, a.n, b.n);
    for (int i = 0; i < a.n; i++) {
        cr_assert_str_eq(a.items[i].name, b.items[i].name);
        cr_assert_eq(a.items[i].n, b.items[i].n);
        cr_assert(!memcmp(a.items[i].bytes, b.items[i].bytes, a.items[i].n), "%s/%s differs after resume", group,
                  a.items[i].name);
        free(a.items[i].bytes);
        free(b.items[i].bytes);
    }
}

Test(trainer, resume_after_interruption_is_bit_exact)
{
    cr_assert_eq(train("straight", 0, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("split", 3, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(train("split", 0, true, 0, NULL), LU_OK, "%s", lu_error_message());
    assert_groups_identical("/params");
    assert_groups_identical("/optim");
}

static char *read_bytes(const char *rel, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    char *b = malloc(*n + 1);
    cr_assert(b && fread(b, 1, *n, f) == *n);
    fclose(f);
    return b;
}

/* A 3-step run resumed with the overrides fails with an error holding both needles, and leaves
 * its checkpoint byte for byte as it was. */
static void assert_resume_fails_keeping_the_checkpoint(int n, char **over, const char *needle, const char *needle2)
{
    cr_assert_eq(train("run", 3, false, 0, NULL), LU_OK, "%s", lu_error_message());
    size_t n0, n1;
    char *before = read_bytes("run/checkpoints/last.h5", &n0);
    cr_assert_neq(train("run", 0, true, n, over), LU_OK, "the resumed run must stop");
    tu_assert_error_contains(needle);
    tu_assert_error_contains(needle2);
    char *after = read_bytes("run/checkpoints/last.h5", &n1);
    cr_assert(n0 == n1 && !memcmp(before, after, n0), "the checkpoint changed");
    free(before);
    free(after);
}

/* A step whose loss or gradient norm is not finite is not applied: the run stops naming the step
 * and the checkpoint to resume from. lr 1e30: step 4's update gives parameters near 1e30, whose
 * forward overflows at step 5. */
Test(trainer, a_nonfinite_step_stops_the_run_and_keeps_the_checkpoint)
{
    char *huge[] = {"optim.lr=1e30", "schedule.kind=constant"};
    assert_resume_fails_keeping_the_checkpoint(2, huge, "step 5: loss", "not finite, so the step was not applied");
}

/* An update that overflows the parameters to infinity is caught before a checkpoint is written. */
Test(trainer, overflowed_parameters_are_never_saved)
{
    char *inf[] = {"optim.lr=1e39", "schedule.kind=constant", "train.save_every=1"};
    assert_resume_fails_keeping_the_checkpoint(3, inf, "step 4: the f32 parameters hold NaN or infinite values",
                                               "holds the last good one");
}

Test(trainer, refuses_to_overwrite_a_run_without_resume)
{
    cr_assert_eq(train("run", 2, false, 0, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_neq(train("run", 2, false, 0, NULL), LU_OK);
    tu_assert_error_contains("pass --resume");
}

Test(trainer, resume_without_checkpoint_is_an_error)
{
    cr_assert_neq(train("nothing", 0, true, 0, NULL), LU_OK);
    tu_assert_error_contains("--resume: no checkpoint at");
}

Test(trainer, bad_override_names_the_key)
{
    char *over[] = {"optim.lr=fast"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("optim.lr");
}

Test(trainer, unknown_task_lists_the_known_ones)
{
    char path[512];
    snprintf(path, sizeof path, "%s/bad.yaml", dir);
    FILE *f = fopen(path, "w");
    fputs("task: splitformer9000\n", f);
    fclose(f);
    lu_run_options o = {.config_path = path};
    cr_assert_neq(lu_train_run(&o), LU_OK);
    tu_assert_error_contains("unknown task 'splitformer9000' (known: bytelm, sft, asr)");
}

Test(trainer, unknown_device_names_the_key_and_the_choices)
{
    char *over[] = {"train.device=tpu"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("train.device");
    tu_assert_error_contains("cpu|cuda");
}

/* Refused before the task loads anything: the message names the key, the config and the reason. */
Test(trainer, cuda_device_without_a_gpu_fails_at_start)
{
    if (lu_device_available(LU_CUDA))
        cr_skip_test("a CUDA GPU is present: tests/test_cuda_train.c trains on it");
    char *over[] = {"train.device=cuda", "data.text_file=/nonexistent/fr.txt"};
    cr_assert_neq(train("run", 0, false, 2, over), LU_OK);
    tu_assert_error_contains("tiny.yaml: train.device cuda: no usable GPU: ");
    char path[512];
    snprintf(path, sizeof path, "%s/run", dir);
    cr_assert_neq(access(path, F_OK), 0, "nothing written for a refused run");
}

Test(trainer, missing_text_file_is_reported)
{
    char *over[] = {"data.text_file=/nonexistent/fr.txt"};
    cr_assert_neq(train("run", 0, false, 1, over), LU_OK);
    tu_assert_error_contains("/nonexistent/fr.txt");
}

Test(trainer, eval_reads_the_last_checkpoint)
{
    cr_assert_eq(train("run", 2, false, 0, NULL), LU_OK, "%s", lu_error_message());
    char cfg[512], outp[512];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    snprintf(outp, sizeof outp, "%s/run", dir);
    lu_run_options o = {.config_path = cfg, .out_dir = outp};
    cr_assert_eq(lu_eval_run(&o), LU_OK, "%s", lu_error_message());
    snprintf(outp, sizeof outp, "%s/none", dir);
    cr_assert_neq(lu_eval_run(&o), LU_OK);
}

Test(trainer, keeps_the_newest_step_checkpoints_and_averages_them)
{
    char *over[] = {"train.keep_checkpoints=2", "train.save_every=2"};
    cr_assert_eq(train("run", 0, false, 2, over), LU_OK, "%s", lu_error_message());
    char path[512];
    const int64_t steps[] = {2, 4, 6};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/run/checkpoints/step-%08lld.h5", dir, (long long)steps[i]);
        cr_assert_eq(access(path, R_OK) == 0, i > 0, "step %lld: kept only the newest two", (long long)steps[i]);
    }
    char cfg[512], outp[512];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    snprintf(outp, sizeof outp, "%s/run", dir);
    lu_run_options o = {.config_path = cfg, .out_dir = outp, .avg = 2};
    cr_assert_eq(lu_eval_run(&o), LU_OK, "%s", lu_error_message());
    /* The averaged parameters are the mean of the two kept checkpoints. */
    lu_loaded_task *avg = lu_task_open(&o);
    char p4[512], p6[512];
    snprintf(p4, sizeof p4, "%s/run/checkpoints/step-00000004.h5", dir);
    snprintf(p6, sizeof p6, "%s/run/checkpoints/step-00000006.h5", dir);
    lu_run_options o4 = {.config_path = cfg, .out_dir = outp, .checkpoint = p4}, o6 = o4;
    o6.checkpoint = p6;
    lu_loaded_task *a = lu_task_open(&o4), *b = lu_task_open(&o6);
    cr_assert(avg && a && b, "%s", lu_error_message());
    lu_params *pa = lu_loaded_task_params(a), *pb = lu_loaded_task_params(b), *pm = lu_loaded_task_params(avg);
    for (int i = 0; i < pm->n; i++) {
        double *x = tu_to_doubles(pa->items[i].t), *y = tu_to_doubles(pb->items[i].t);
        int64_t n = lu_tensor_numel(pm->items[i].t);
        for (int64_t k = 0; k < n; k++) x[k] = (x[k] + y[k]) / 2;
        tu_assert_close(pm->items[i].t, x, n, 1e-7, 1e-6, pm->items[i].name);
        free(x);
        free(y);
    }
    lu_task_close(avg);
    lu_task_close(a);
    lu_task_close(b);
    o.avg = 3;
    cr_assert_neq(lu_eval_run(&o), LU_OK);
    tu_assert_error_contains("--avg 3:");
    tu_assert_error_contains("holds 2 step checkpoints");
}

/* `luthier version`: the build and each device, or why the GPU is not usable. */
Test(trainer, version_names_the_build_and_the_devices)
{
    int rc = -1;
    char *out = tu_run_captured_text(lu_cli_version, 1, (const char *[]){"version"}, &rc);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(!strncmp(out, "luthier " LU_VERSION "\n", strlen("luthier " LU_VERSION "\n")), "%s", out);
    cr_assert(strstr(out, "\nbuild: C11 (") && strstr(out, "OpenBLAS") && strstr(out, "HDF5 1."), "%s", out);
    cr_assert(strstr(out, "\ncpu: "), "%s", out);
#ifdef LUTHIER_HAVE_MPI
    cr_assert(strstr(out, "\nmpi: ") && !strstr(out, "mpi: not built"), "%s", out);
#endif
#ifdef LUTHIER_HAVE_CUDA
    cr_assert(strstr(out, "\ncuda backend: "), "%s", out);
    if (lu_device_available(LU_CUDA)) cr_assert(strstr(out, "\ncuda 0: ") && strstr(out, "compute capability"), "%s", out);
    else cr_assert(strstr(out, "\ncuda: not usable: "), "%s", out);
#else
    cr_assert(strstr(out, "\ncuda backend: not built"), "%s", out);
#endif
    free(out);
    out = tu_run_captured_text(lu_cli_version, 2, (const char *[]){"version", "--gpu"}, &rc);
    cr_assert_eq(rc, 2, "an unknown argument was accepted: %s", out);
    free(out);
}
