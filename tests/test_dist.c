/* test_dist.c - data-parallel training on the CPU: `mpirun -np 2 luthier train` against one
 * process that accumulates the same micro-batches (losses, gradient norms, parameters and
 * optimiser state), resuming a 2-rank run in one process, and a failing rank ending the job; and
 * on GPUs, where NCCL all-reduces device gradients (two GPUs, or the CPU emulator of
 * tests/cuda_emu, whose NCCL runs over MPI). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <hdf5.h>

#include "core/backend.h"
#include "core/dist.h"
#include "experiments/runner/trainer.h"
#include "testutil.h"

#ifdef LUTHIER_HAVE_NCCL
#include <cuda_runtime_api.h>
#endif

static char dir[256];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_dist_XXXXXX");
    cr_assert(mkdtemp(dir));
    /* mpirun refuses root without these (CI containers run as root). */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    /* Open MPI keeps its start-up allocations until exit: LeakSanitizer would report them. */
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(dist, .init = setup, .fini = teardown, .timeout = 240);

/* luthier train dir/tiny.yaml --out dir/out [--resume] over... in this process. */
static void train_here(const char *out, bool resume, int n, char **over)
{
    char cfg[512], outp[512];
    snprintf(cfg, sizeof cfg, "%s/tiny.yaml", dir);
    snprintf(outp, sizeof outp, "%s/%s", dir, out);
    lu_run_options o = {.config_path = cfg, .out_dir = outp, .resume = resume, .n_overrides = n, .overrides = over};
    cr_assert_eq(lu_train_run(&o), LU_OK, "%s: %s", out, lu_error_message());
}

/* `mpirun -np ranks luthier train dir/tiny.yaml --out dir/out args`; returns the exit status and
 * leaves the output in dir/out.log. */
static int train_mpi(int ranks, const char *out, const char *args)
{
    char cmd[2048];
    /* One thread per rank (the ranks share this machine's cores); no binding (other suites run
     * beside this one); `timeout`: a hang fails instead of stalling CI. */
    snprintf(cmd, sizeof cmd,
             "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout 180 mpirun -np %d --oversubscribe --bind-to none "
             "%s train %s/tiny.yaml --out %s/%s %s > %s/%s.log 2>&1",
             ranks, LU_TEST_LUTHIER, dir, dir, out, args, dir, out);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static const char *read_log(const char *out)
{
    static char buf[1 << 15];
    char path[512];
    snprintf(path, sizeof path, "%s/%s.log", dir, out);
    FILE *f = fopen(path, "r");
    if (!f) return "(no log)";
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* The "train" lines of a run's metrics.jsonl: loss and grad_norm per step. */
typedef struct curve {
    int n;
    double loss[64], norm[64], items[64];
} curve;

static void read_curve(const char *out, curve *c)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", dir, out);
    c->n = tu_read_metric(path, "train", "loss", c->loss, 64);
    cr_assert_eq(tu_read_metric(path, "train", "grad_norm", c->norm, 64), c->n);
    cr_assert_eq(tu_read_metric(path, "train", "items", c->items, 64), c->n);
}

static void assert_curves_match(const char *a, const char *b)
{
    curve ca, cb;
    read_curve(a, &ca);
    read_curve(b, &cb);
    cr_assert_gt(ca.n, 0, "%s logged no steps", a);
    cr_assert_eq(ca.n, cb.n, "%s logged %d steps, %s %d", a, ca.n, b, cb.n);
    for (int i = 0; i < ca.n; i++) {
        /* The same micro-batches summed in another order: float rounding only. */
        cr_assert(fabs(ca.loss[i] - cb.loss[i]) <= 1e-5 * fabs(ca.loss[i]), "step %d loss: %s %.9g, %s %.9g", i + 1, a,
                  ca.loss[i], b, cb.loss[i]);
        cr_assert(fabs(ca.norm[i] - cb.norm[i]) <= 1e-4 * fabs(ca.norm[i]) + 1e-7, "step %d grad_norm: %s %.9g, %s %.9g",
                  i + 1, a, ca.norm[i], b, cb.norm[i]);
        cr_assert_eq(ca.items[i], cb.items[i], "step %d items: %s %g, %s %g", i + 1, a, ca.items[i], b, cb.items[i]);
    }
}

/* Every dataset of group in both runs' last.h5, read as doubles, within tolerance. */
typedef struct h5_walk {
    hid_t other;
    const char *group, *a, *b;
    int n;
    double worst;
} h5_walk;

static herr_t compare_dataset(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    h5_walk *w = data;
    hid_t da = H5Dopen2(group, name, H5P_DEFAULT);
    if (da < 0) return 0; /* a subgroup */
    hid_t db = H5Dopen2(w->other, name, H5P_DEFAULT);
    cr_assert(db >= 0, "%s/%s is in %s but not in %s", w->group, name, w->a, w->b);
    hid_t sa = H5Dget_space(da), sb = H5Dget_space(db);
    hssize_t n = H5Sget_simple_extent_npoints(sa);
    cr_assert_eq(n, H5Sget_simple_extent_npoints(sb), "%s/%s: sizes differ", w->group, name);
    double *x = malloc((size_t)n * sizeof *x + 8), *y = malloc((size_t)n * sizeof *y + 8);
    cr_assert(x && y);
    cr_assert(H5Dread(da, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0);
    cr_assert(H5Dread(db, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, y) >= 0);
    for (hssize_t i = 0; i < n; i++) {
        double d = fabs(x[i] - y[i]) / (fabs(x[i]) + 1e-3);
        cr_assert(d <= 1e-4, "%s/%s[%lld]: %s %.9g, %s %.9g", w->group, name, (long long)i, w->a, x[i], w->b, y[i]);
        if (d > w->worst) w->worst = d;
    }
    free(x);
    free(y);
    H5Sclose(sa);
    H5Sclose(sb);
    H5Dclose(da);
    H5Dclose(db);
    w->n++;
    return 0;
}

static void assert_checkpoints_match(const char *a, const char *b, const char *group)
{
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s/checkpoints/last.h5", dir, a);
    snprintf(pb, sizeof pb, "%s/%s/checkpoints/last.h5", dir, b);
    hid_t fa = H5Fopen(pa, H5F_ACC_RDONLY, H5P_DEFAULT), fb = H5Fopen(pb, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(fa >= 0 && fb >= 0, "cannot open %s or %s", pa, pb);
    hid_t ga = H5Gopen2(fa, group, H5P_DEFAULT), gb = H5Gopen2(fb, group, H5P_DEFAULT);
    cr_assert(ga >= 0 && gb >= 0, "%s: no group %s", a, group);
    h5_walk w = {.other = gb, .group = group, .a = a, .b = b};
    H5Literate(ga, H5_INDEX_NAME, H5_ITER_INC, NULL, compare_dataset, &w);
    cr_assert_gt(w.n, 0, "%s: no datasets in %s", a, group);
    H5Gclose(ga);
    H5Gclose(gb);
    H5Fclose(fa);
    H5Fclose(fb);
}

#ifdef LUTHIER_HAVE_MPI
#define REQUIRE_MPI()
#else
#define REQUIRE_MPI() cr_skip_test("luthier was built without MPI")
#endif

Test(dist, started_by_hand_is_rank_0_of_1)
{
    cr_assert_eq(lu_dist_init(), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_dist_size(), 1);
    cr_assert_eq(lu_dist_rank(), 0);
    cr_assert_str_eq(lu_dist_backend_name(), "none");
    double v[2] = {1.5, -2};
    cr_assert_eq(lu_dist_all_reduce_doubles(v, 2, LU_DIST_SUM), LU_OK);
    cr_assert(v[0] == 1.5 && v[1] == -2, "one rank: the values are their own sum");
    lu_tensor *t = tu_rand(LU_F32, 1, (int64_t[]){5}, -1, 1, 3);
    cr_assert_eq(lu_dist_all_reduce_sum(t), LU_OK);
    lu_tensor *i = tu_randint(LU_I32, 1, (int64_t[]){5}, 9, 3);
    cr_assert_neq(lu_dist_all_reduce_sum(i), LU_OK);
    tu_assert_error_contains("floating-point");
    lu_tensor_release(t);
    lu_tensor_release(i);
}

/* srun --mpi=none would start independent copies writing one run directory: refused. */
Test(dist, tasks_started_without_process_management_are_refused)
{
    setenv("SLURM_STEP_NUM_TASKS", "4", 1);
    cr_assert_neq(lu_dist_init(), LU_OK, "4 srun tasks without PMI must not train as 4 separate runs");
    tu_assert_error_contains("srun --mpi=pmix");
    /* The answer stays (lu_dist_init runs once per process). */
    cr_assert_neq(lu_dist_init(), LU_OK);
}

Test(dist, two_ranks_train_as_one_process_accumulating_both_shares)
{
    REQUIRE_MPI();
    tu_write_tiny_bytelm_config(dir);
    train_here("one", false, 2, (char *[]){"train.grad_accum=2", "train.log_every=1"});
    cr_assert_eq(train_mpi(2, "two", "train.log_every=1"), 0, "mpirun failed:\n%s", read_log("two"));
    cr_assert(strstr(read_log("two"), "data parallel over 2 processes"), "%s", read_log("two"));
    assert_curves_match("one", "two");
    assert_checkpoints_match("one", "two", "/params");
    assert_checkpoints_match("one", "two", "/optim");
}

Test(dist, asr_with_batchnorm_and_scaled_adam)
{
    REQUIRE_MPI();
    tu_write_tiny_asr_config(dir, 4);
    /* Two ranks with 2 micro-batches each = one process with 4, compared by losses and gradient
     * norms: BatchNorm's running statistics are averaged over the ranks (not updated in turn as
     * in one process), and the depthwise-conv bias before a training-mode BatchNorm has a zero
     * gradient in exact arithmetic, so ScaledAdam's updates of it follow rounding noise. */
    train_here("one", false, 2, (char *[]){"train.grad_accum=4", "optim.kind=scaled_adam"});
    cr_assert_eq(train_mpi(2, "two", "train.grad_accum=2 optim.kind=scaled_adam"), 0, "mpirun failed:\n%s",
                 read_log("two"));
    assert_curves_match("one", "two");
}

/* The sft task's evaluation is collective: each rank scores its share of the held-out sequences
 * and the totals are summed, giving one process's figures (mid-run and final). */
Test(dist, sft_evaluation_is_shared_by_the_ranks)
{
    REQUIRE_MPI();
    tu_write_tiny_sft_config(dir, 6);
    train_here("one", false, 2, (char *[]){"train.grad_accum=2", "train.eval_every=3"});
    cr_assert_eq(train_mpi(2, "two", "train.eval_every=3"), 0, "mpirun failed:\n%s", read_log("two"));
    assert_curves_match("one", "two");
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/one/metrics.jsonl", dir);
    snprintf(pb, sizeof pb, "%s/two/metrics.jsonl", dir);
    double la[4], lb[4], ta[4], tb[4];
    cr_assert_eq(tu_read_metric(pa, "eval", "valid_loss", la, 4), 2, "evaluations at steps 3 and 6");
    cr_assert_eq(tu_read_metric(pb, "eval", "valid_loss", lb, 4), 2, "one report per evaluation, from rank 0");
    cr_assert_eq(tu_read_metric(pa, "eval", "valid_target_tokens", ta, 4), 2);
    cr_assert_eq(tu_read_metric(pb, "eval", "valid_target_tokens", tb, 4), 2);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(ta[i], tb[i], "evaluation %d scored %g targets on 2 ranks, %g in one process", i + 1, tb[i], ta[i]);
        cr_assert(fabs(la[i] - lb[i]) <= 1e-5 * fabs(la[i]), "evaluation %d: loss %.9g on 2 ranks, %.9g in one process",
                  i + 1, lb[i], la[i]);
    }
}

/* A metric of compare.json: model m, task, name. */
static double compare_metric(const cJSON *c, int m, const char *task, const char *name)
{
    const cJSON *mo = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "models"), m);
    const cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(mo, "tasks"), task);
    const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(t, "metrics"), name);
    cr_assert(cJSON_IsNumber(v), "model %d task %s metric %s is missing", m, task, name);
    return v->valuedouble;
}

/* The Luth comparison at the end of an sft run is shared too: rank 0 exports the model and merges,
 * every rank scores its share of each task's items (one item, two or three here), and the sums
 * meet. The starting model is the same in both runs: its scores are one process's; the
 * fine-tuned and merged ones, trained by 2 ranks as by one process accumulating both shares,
 * agree within the training's float rounding. */
/* A tiny fine-tuned model in dir/start/model (with a tokenizer) and task files of each kind but
 * IFEval in dir/tasks. */
static void write_start_model_and_tasks(void)
{
    tu_write_tiny_sft_config(dir, 4);
    train_here("start", false, 1, (char *[]){"train.save_every=0"});
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cp tests/fixtures/tokenizer/small_qwen2.json %s/start/model/tokenizer.json", dir);
    cr_assert_eq(system(cmd), 0);
    char tasks[300];
    snprintf(tasks, sizeof tasks, "%s/tasks", dir);
    cr_assert_eq(mkdir(tasks, 0755), 0);
    tu_write_file(tasks, "qa-mc-fr.jsonl",
                  "{\"type\": \"mc\", \"query\": \"Bonjour\", \"choices\": [\"oui\", \"non merci\"], \"gold\": 0}\n"
                  "{\"type\": \"mc\", \"query\": \"Quelle heure ?\", \"choices\": [\"midi\", \"rien\", \"le soir\"], \"gold\": 2}\n"
                  "{\"type\": \"mc\", \"query\": \"Oui ?\", \"choices\": [\"non\", \"si\"], \"gold\": 1}\n");
    tu_write_file(tasks, "salut-gen-fr.jsonl",
                  "{\"type\": \"gen\", \"prompt\": \"Bonjour\", \"answers\": [\"bonjour\"]}\n"
                  "{\"type\": \"gen\", \"prompt\": \"Salut\", \"answers\": [\"salut\"]}\n");
    tu_write_file(tasks, "text-ppl-en.jsonl",
                  "{\"type\": \"ppl\", \"text\": \"The cat sat on the mat.\"}\n"
                  "{\"type\": \"ppl\", \"text\": \"Hello world\"}\n"
                  "{\"type\": \"ppl\", \"text\": \"A third line of text.\"}\n");
}

Test(dist, sft_comparison_is_shared_by_the_ranks)
{
    REQUIRE_MPI();
    write_start_model_and_tasks();
    char model_over[400], tasks_over[400], args[1000];
    snprintf(model_over, sizeof model_over, "model.path=%s/start/model", dir);
    snprintf(tasks_over, sizeof tasks_over, "compare.tasks=%s/tasks", dir);
    train_here("one", false, 5,
               (char *[]){model_over, tasks_over, "compare.merge_t=0.5", "compare.max_new_tokens=4", "train.grad_accum=2"});
    snprintf(args, sizeof args, "%s %s compare.merge_t=0.5 compare.max_new_tokens=4", model_over, tasks_over);
    cr_assert_eq(train_mpi(2, "two", args), 0, "mpirun failed:\n%s", read_log("two"));

    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/one/compare.json", dir);
    snprintf(pb, sizeof pb, "%s/two/compare.json", dir);
    cJSON *a = tu_read_json(pa), *b = tu_read_json(pb);
    static const struct { const char *task, *metric; } rows[] = {
        {"qa-mc-fr", "acc"}, {"qa-mc-fr", "acc_norm"}, {"salut-gen-fr", "em"}, {"salut-gen-fr", "qem"},
        {"text-ppl-en", "ppl"}, {"text-ppl-en", "bits_per_byte"}};
    for (int m = 0; m < 3; m++)
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            const char *task = rows[i].task, *name = rows[i].metric;
            /* The fine-tuned and merged models may flip a close choice: their perplexities only. */
            if (m > 0 && strcmp(task, "text-ppl-en")) continue;
            double va = compare_metric(a, m, task, name), vb = compare_metric(b, m, task, name);
            /* Accuracies count the same items; ppl adds the ranks' shares in another order. */
            double tol = m == 0 ? 1e-12 : 1e-4;
            cr_assert(fabs(va - vb) <= tol * fabs(va), "model %d %s %s: %.12g on 2 ranks, %.12g in one process", m, task,
                      name, vb, va);
        }
    cJSON_Delete(a);
    cJSON_Delete(b);
    snprintf(pb, sizeof pb, "%s/two/compare.md", dir);
    struct stat st;
    cr_assert_eq(stat(pb, &st), 0, "2 ranks wrote no %s", pb);
}

/* `mpirun -np 2 luthier lm eval` shares every task's items: the same metrics as one process. */
Test(dist, lm_eval_is_shared_by_the_ranks)
{
    REQUIRE_MPI();
    write_start_model_and_tasks();
    char cmd[3000];
    const char *eval = "lm eval --model %s/start/model --tasks %s/tasks/qa-mc-fr.jsonl,%s/tasks/salut-gen-fr.jsonl,"
                       "%s/tasks/text-ppl-en.jsonl --max-new-tokens 4 --out %s/%s.json > %s/%s.log 2>&1";
    char one[2400], two[2400];
    snprintf(one, sizeof one, eval, dir, dir, dir, dir, dir, "one", dir, "one");
    snprintf(two, sizeof two, eval, dir, dir, dir, dir, dir, "two", dir, "two");
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s %s", LU_TEST_LUTHIER, one);
    cr_assert_eq(system(cmd), 0, "luthier lm eval failed:\n%s", read_log("one"));
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 timeout 180 mpirun -np 2 --oversubscribe --bind-to none %s %s",
             LU_TEST_LUTHIER, two);
    cr_assert_eq(system(cmd), 0, "mpirun luthier lm eval failed:\n%s", read_log("two"));
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/one.json", dir);
    snprintf(pb, sizeof pb, "%s/two.json", dir);
    cJSON *a = tu_read_json(pa), *b = tu_read_json(pb);
    static const struct { const char *task, *metric; } rows[] = {
        {"qa-mc-fr", "acc"}, {"qa-mc-fr", "acc_norm_token"}, {"salut-gen-fr", "qem"}, {"text-ppl-en", "ppl"}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const cJSON *ta = cJSON_GetObjectItem(cJSON_GetObjectItem(a, "tasks"), rows[i].task);
        const cJSON *tb = cJSON_GetObjectItem(cJSON_GetObjectItem(b, "tasks"), rows[i].task);
        const cJSON *va = cJSON_GetObjectItem(cJSON_GetObjectItem(ta, "metrics"), rows[i].metric);
        const cJSON *vb = cJSON_GetObjectItem(cJSON_GetObjectItem(tb, "metrics"), rows[i].metric);
        cr_assert(cJSON_IsNumber(va) && cJSON_IsNumber(vb), "%s %s missing", rows[i].task, rows[i].metric);
        cr_assert(fabs(va->valuedouble - vb->valuedouble) <= 1e-12 * fabs(va->valuedouble),
                  "%s %s: %.12g on 2 ranks, %.12g in one process", rows[i].task, rows[i].metric, vb->valuedouble,
                  va->valuedouble);
        cr_assert_eq(cJSON_GetObjectItem(ta, "n")->valuedouble, cJSON_GetObjectItem(tb, "n")->valuedouble);
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    /* Rank 0 alone reports: one table in the log. */
    const char *log = read_log("two"), *first = strstr(log, "| task | metric");
    cr_assert(first && !strstr(first + 1, "| task | metric"), "expected one table:\n%s", log);
}

/* `luthier eval dir/tiny.yaml --out dir/out` by `ranks` processes of mpirun (0: one, without
 * mpirun), its output in dir/log.log; returns the exit status. */
static int eval_run(int ranks, const char *out, const char *log)
{
    char cmd[2048], launcher[160] = "";
    if (ranks)
        snprintf(launcher, sizeof launcher, "timeout 180 mpirun -np %d --oversubscribe --bind-to none ", ranks);
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 %s%s eval %s/tiny.yaml --out %s/%s > %s/%s.log 2>&1",
             launcher, LU_TEST_LUTHIER, dir, dir, out, dir, log);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* The lines of an evaluation's output that do not depend on timing: the metric rows but the
 * encoder-time ones, and the demo's REF/HYP lines, joined. */
static char *timeless_lines(const char *log)
{
    static char buf[2][1 << 14];
    static int which;
    char *out = buf[which ^= 1];
    out[0] = 0;
    const char *text = read_log(log);
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        bool row = !strncmp(line, "| ", 2) || !strncmp(line, "REF:", 4) || !strncmp(line, "HYP", 3);
        char one[512];
        snprintf(one, sizeof one, "%.*s\n", (int)(len < 500 ? len : 500), line);
        if (row && !strstr(one, "time") && strlen(out) + strlen(one) < sizeof buf[0]) strcat(out, one);
        line += len + (end ? 1 : 0);
    }
    return out;
}

/* `mpirun luthier eval` shares a task's evaluation (each rank scores its share of the batches;
 * the sums, and the asr demo's transcripts, meet on rank 0): the same figures and transcripts as
 * one process. */
static void check_shared_evaluation(void)
{
    train_here("run", false, 0, NULL);
    cr_assert_eq(eval_run(0, "run", "one"), 0, "luthier eval failed:\n%s", read_log("one"));
    cr_assert_eq(eval_run(2, "run", "two"), 0, "mpirun luthier eval failed:\n%s", read_log("two"));
    const char *one = timeless_lines("one"), *two = timeless_lines("two");
    cr_assert(strstr(one, "| valid_loss"), "no metric rows:\n%s", read_log("one"));
    cr_assert_str_eq(two, one, "2 ranks:\n%s\none process:\n%s", two, one);
}

Test(dist, asr_evaluation_is_shared_by_the_ranks)
{
    REQUIRE_MPI();
    tu_write_tiny_asr_config(dir, 3);
    check_shared_evaluation();
    cr_assert(strstr(timeless_lines("one"), "REF:"), "no transcripts:\n%s", read_log("one"));
}

Test(dist, bytelm_evaluation_is_shared_by_the_ranks)
{
    REQUIRE_MPI();
    tu_write_tiny_bytelm_config(dir);
    check_shared_evaluation();
}

Test(dist, a_two_rank_run_resumes_in_one_process)
{
    REQUIRE_MPI();
    tu_write_tiny_bytelm_config(dir);
    train_here("straight", false, 2, (char *[]){"train.grad_accum=2", "train.log_every=1"});
    cr_assert_eq(train_mpi(2, "split", "--stop-after 3 train.log_every=1"), 0, "mpirun failed:\n%s", read_log("split"));
    /* The checkpoint holds the global data position: one process with twice the accumulation
     * takes the same micro-batches from there. */
    train_here("split", true, 2, (char *[]){"train.grad_accum=2", "train.log_every=1"});
    assert_curves_match("straight", "split");
    assert_checkpoints_match("straight", "split", "/params");
}

Test(dist, a_failing_rank_ends_the_whole_job)
{
    REQUIRE_MPI();
    tu_write_tiny_bytelm_config(dir);
    cr_assert_eq(train_mpi(2, "run", ""), 0, "mpirun failed:\n%s", read_log("run"));
    /* Again into the same directory without --resume: refused, and no rank is left waiting. */
    int rc = train_mpi(2, "run", "");
    const char *log = read_log("run");
    cr_assert_neq(rc, 0, "a refused run must fail:\n%s", log);
    cr_assert_neq(rc, 124, "the job hung until the timeout:\n%s", log);
    cr_assert(strstr(log, "already holds a run"), "the error is not reported:\n%s", log);
    cr_assert(strstr(log, "rank "), "the error does not name the rank:\n%s", log);
}

/* The sft task on GPUs: gradients and the step's sums on the device, all-reduced by NCCL (a
 * missing or wrong communicator fails the run: there is no host path for device buffers). */
Test(dist, two_ranks_on_cuda_all_reduce_device_gradients_with_nccl)
{
    REQUIRE_MPI();
#ifndef LUTHIER_HAVE_NCCL
    cr_skip_test("luthier was built without NCCL");
#else
#ifndef LU_CUDA_EMU
    /* NCCL refuses two ranks on one GPU. */
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) cr_skip_test("needs two GPUs (found %d)", gpus);
#endif
    if (!lu_backend_get(LU_CUDA)) cr_skip_test("no GPU: %s", lu_error_message());
    tu_write_tiny_sft_config(dir, 4);
    train_here("one", false, 3, (char *[]){"train.grad_accum=2", "train.log_every=1", "train.device=cuda"});
    cr_assert_eq(train_mpi(2, "two", "train.log_every=1 train.device=cuda"), 0, "mpirun failed:\n%s", read_log("two"));
    cr_assert(strstr(read_log("two"), "data parallel over 2 processes"), "%s", read_log("two"));
    assert_curves_match("one", "two");
    assert_checkpoints_match("one", "two", "/params");
    assert_checkpoints_match("one", "two", "/optim");
#endif
}
