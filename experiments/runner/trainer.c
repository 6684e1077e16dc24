/* trainer.c - the shared training loop and evaluation driver (see trainer.h). */
#include "experiments/runner/trainer.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <yaml.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/dist.h"
#include "core/metrics.h"
#include "core/ops.h"
#include "core/progress.h"
#include "experiments/runner/cli.h"
#ifdef LUTHIER_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#define F(sec, key, type, member, req, def, choices, help) \
    {sec, key, type, offsetof(lu_train_config, member), req, def, choices, help}

const lu_cfg_field lu_train_schema[] = {
    F(NULL, "task", LU_CFG_STRING, task, true, NULL, NULL, "what to train (luthier train --help lists tasks)"),
    F(NULL, "name", LU_CFG_STRING, name, false, NULL, NULL, "run name (default: the config file's name)"),
    F(NULL, "seed", LU_CFG_INT, seed, false, "1234", NULL, "seed of every random stream"),
    F("train", "max_steps", LU_CFG_INT, max_steps, false, "0", NULL, "optimiser steps (0: from epochs)"),
    F("train", "epochs", LU_CFG_INT, epochs, false, "1", NULL, "passes over the training data"),
    F("train", "grad_accum", LU_CFG_INT, grad_accum, false, "1", NULL, "micro-batches per optimiser step"),
    F("train", "log_every", LU_CFG_INT, log_every, false, "10", NULL, "steps between metric lines"),
    F("train", "eval_every", LU_CFG_INT, eval_every, false, "0", NULL, "steps between evaluations (0: at the end)"),
    F("train", "save_every", LU_CFG_INT, save_every, false, "0", NULL, "steps between checkpoints (0: at the end)"),
    F("train", "clip_norm", LU_CFG_FLOAT, clip_norm, false, "1.0", NULL, "global gradient-norm clip (0: off)"),
    F("train", "keep_checkpoints", LU_CFG_INT, keep_checkpoints, false, "0", NULL,
      "also keep checkpoints/step-N.h5 of the last N saves (for eval --avg)"),
    F("train", "out_dir", LU_CFG_STRING, out_dir, false, NULL, NULL, "run directory (default runs/<name>)"),
    F("train", "device", LU_CFG_ENUM, device, false, "cpu", "cpu|cuda",
      "where parameters, optimiser state, steps and evaluation run (cuda: the current GPU)"),
    F("optim", "kind", LU_CFG_ENUM, optim_kind, false, "adamw", "adamw|scaled_adam", "optimiser"),
    F("optim", "lr", LU_CFG_FLOAT, lr, false, "3e-4", NULL, "peak learning rate"),
    F("optim", "beta1", LU_CFG_FLOAT, beta1, false, "0.9", NULL, "first-moment decay"),
    F("optim", "beta2", LU_CFG_FLOAT, beta2, false, "0.999", NULL, "second-moment decay"),
    F("optim", "eps", LU_CFG_FLOAT, eps, false, "1e-8", NULL, "denominator epsilon"),
    F("optim", "weight_decay", LU_CFG_FLOAT, weight_decay, false, "0.01", NULL, "decoupled weight decay"),
    F("schedule", "kind", LU_CFG_ENUM, sched_kind, false, "cosine", "constant|linear|cosine|noam|eden", "learning-rate schedule"),
    F("schedule", "warmup_ratio", LU_CFG_FLOAT, warmup_ratio, false, "0.0", NULL, "warm-up as a fraction of the steps"),
    F("schedule", "warmup_steps", LU_CFG_INT, warmup_steps, false, "0", NULL, "warm-up steps (overrides the ratio)"),
    F("schedule", "min_lr_ratio", LU_CFG_FLOAT, min_lr_ratio, false, "0.0", NULL, "floor of linear/cosine decay"),
    F("schedule", "noam_d_model", LU_CFG_FLOAT, noam_d_model, false, "256", NULL, "Noam: model width"),
    F("schedule", "noam_factor", LU_CFG_FLOAT, noam_factor, false, "1.0", NULL, "Noam: scale factor"),
    F("schedule", "eden_lr_batches", LU_CFG_FLOAT, eden_lr_batches, false, "7500", NULL, "Eden: lr_batches"),
    F("schedule", "eden_lr_epochs", LU_CFG_FLOAT, eden_lr_epochs, false, "3.5", NULL, "Eden: lr_epochs"),
    F("schedule", "eden_warmup_start", LU_CFG_FLOAT, eden_warmup_start, false, "0.1", NULL, "Eden: warm-up start factor"),
    F("schedule", "eden_warmup_batches", LU_CFG_INT, eden_warmup_batches, false, "500", NULL, "Eden: warm-up batches"),
    {0},
};
#undef F
_Static_assert(LU_CPU == 0 && LU_CUDA == 1, "train.device choices are in lu_device order");

/* ---- config: common fields + the task's fields in one allocation ----------------------------- */

typedef struct run_config {
    lu_train_config *common;
    void *task_cfg;
    lu_cfg_field *schema;    /* combined, offsets relative to `block` */
    void *block;
    char *text;              /* resolved config as YAML */
} run_config;

#define TASK_OFFSET ((sizeof(lu_train_config) + 15) & ~(size_t)15)

/* Reads the top-level `task:` value to pick the schema before the full, strict parse. */
static lu_status peek_task(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return lu_errorf(LU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t p;
    yaml_event_t e;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_file(&p, f);
    /* Inside the top-level mapping (depth 1) nodes alternate key, value. */
    int depth = 0;
    bool is_key = true, want = false, found = false;
    for (;;) {
        if (!yaml_parser_parse(&p, &e)) break; /* syntax errors are reported by the full parse */
        yaml_event_type_t t = e.type;
        if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT) {
            if (depth == 1) is_key = true;
            depth++;
        } else if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT) {
            depth--;
        } else if (t == YAML_SCALAR_EVENT && depth == 1) {
            const char *v = (const char *)e.data.scalar.value;
            if (is_key) want = !strcmp(v, "task");
            else if (want) found = snprintf(out, size, "%s", v) >= 0;
            is_key = !is_key;
        }
        yaml_event_delete(&e);
        if (found || t == YAML_STREAM_END_EVENT) break;
    }
    yaml_parser_delete(&p);
    fclose(f);
    if (!found) return lu_errorf(LU_ERR_CONFIG, "%s: missing required key 'task'", path);
    return LU_OK;
}

static void run_config_free(run_config *rc)
{
    if (rc->schema) lu_config_free(rc->schema, rc->block);
    free(rc->schema);
    free(rc->block);
    free(rc->text);
    memset(rc, 0, sizeof *rc);
}

static lu_status run_config_load(run_config *rc, const lu_task *task, const lu_run_options *opt)
{
    int nc = 0, nt = 0;
    while (lu_train_schema[nc].key) nc++;
    while (task->schema[nt].key) nt++;
    rc->schema = calloc((size_t)(nc + nt + 1), sizeof *rc->schema);
    rc->block = calloc(1, TASK_OFFSET + task->config_size);
    if (!rc->schema || !rc->block) return lu_errorf(LU_ERR_NOMEM, "config: out of memory");
    memcpy(rc->schema, lu_train_schema, (size_t)nc * sizeof *rc->schema);
    for (int i = 0; i < nt; i++) {
        rc->schema[nc + i] = task->schema[i];
        rc->schema[nc + i].offset += TASK_OFFSET;
    }
    rc->common = rc->block;
    rc->task_cfg = (char *)rc->block + TASK_OFFSET;
    LU_TRY(lu_config_load(opt->config_path, rc->schema, rc->block, opt->n_overrides, opt->overrides));
    lu_train_config *c = rc->common;
    if (c->grad_accum < 1) return lu_errorf(LU_ERR_CONFIG, "%s: train.grad_accum must be >= 1", opt->config_path);
    if (c->log_every < 1) return lu_errorf(LU_ERR_CONFIG, "%s: train.log_every must be >= 1", opt->config_path);
    if (!c->name) {
        const char *base = strrchr(opt->config_path, '/');
        base = base ? base + 1 : opt->config_path;
        c->name = strdup(base);
        char *dot = c->name ? strrchr(c->name, '.') : NULL;
        if (dot) *dot = 0;
    }
    if (opt->out_dir) {
        free(c->out_dir);
        c->out_dir = strdup(opt->out_dir);
    } else if (!c->out_dir) {
        size_t n = strlen(c->name) + 8;
        c->out_dir = malloc(n);
        if (c->out_dir) snprintf(c->out_dir, n, "runs/%s", c->name);
    }
    if (!c->name || !c->out_dir) return lu_errorf(LU_ERR_NOMEM, "config: out of memory");
    if (opt->max_steps > 0) c->max_steps = opt->max_steps;
    rc->text = lu_config_to_string(rc->schema, rc->block);
    return rc->text ? LU_OK : lu_error_code();
}

/* ---- files ---------------------------------------------------------------------------------- */

#define PATH_LEN 4096

/* dst = a + b (b starts with '/' or a suffix); an over-long path is an error, not a truncation. */
static lu_status path_join(char *dst, const char *a, const char *b)
{
    if (snprintf(dst, PATH_LEN, "%s%s", a, b) >= PATH_LEN) return lu_errorf(LU_ERR_IO, "path too long: %s%s", a, b);
    return LU_OK;
}

static lu_status make_dir(const char *path)
{
    char buf[PATH_LEN];
    LU_TRY(path_join(buf, path, ""));
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return lu_errorf(LU_ERR_IO, "%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) return lu_errorf(LU_ERR_IO, "%s: cannot create: %s", buf, strerror(errno));
    return LU_OK;
}

static lu_status write_file_atomic(const char *path, const char *text)
{
    char tmp[PATH_LEN], suffix[32];
    snprintf(suffix, sizeof suffix, ".tmp.%d", (int)getpid());
    LU_TRY(path_join(tmp, path, suffix));
    FILE *f = fopen(tmp, "w");
    if (!f) return lu_errorf(LU_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    bool ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path)) {
        remove(tmp);
        return lu_errorf(LU_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    }
    return LU_OK;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- the run -------------------------------------------------------------------------------- */

typedef struct run {
    run_config rc;
    const lu_task *task;
    void *state;
    lu_params *params;
    lu_optim *optim;
    lu_schedule sched;
    int64_t total_steps;
} run;

static void run_free(run *r)
{
    if (r->task && r->state) r->task->destroy(r->state);
    lu_optim_free(r->optim);
    lu_params_free(r->params);
    run_config_free(&r->rc);
}

/* train.device is refused at start, before any data is loaded, when this build, this machine,
 * the task or the optimiser cannot use it. */
static lu_status check_device(const lu_task *task, const lu_train_config *c, const char *path)
{
    lu_device dev = (lu_device)c->device;
    const char *name = lu_device_name(dev);
    if (dev == LU_CPU) return LU_OK;
    if (!lu_device_available(dev)) {
#ifdef LUTHIER_HAVE_CUDA
        const char *why = lu_cuda_unavailable_reason();
#else
        const char *why = "luthier was built without the CUDA backend (LUTHIER_CUDA off)";
#endif
        return lu_errorf(LU_ERR_DEVICE, "%s: train.device %s: no usable GPU: %s", path, name, why);
    }
    if (!task->any_device)
        return lu_errorf(LU_ERR_CONFIG, "%s: train.device %s: task %s runs on the cpu only", path, name, task->name);
    return LU_OK;
}

/* The GPU is picked before MPI starts as well: a CUDA-aware MPI may create a context on the
 * current GPU in MPI_Init, and every rank would then hold one on GPU 0. */
lu_status lu_join_ranks(lu_device device)
{
#ifdef LUTHIER_HAVE_CUDA
    int early = lu_dist_launcher_local_rank();
    if (device == LU_CUDA && early > 0) LU_TRY(lu_cuda_select_device(early));
#endif
    LU_TRY(lu_dist_init());
#ifdef LUTHIER_HAVE_CUDA
    if (device == LU_CUDA && lu_dist_size() > 1) LU_TRY(lu_cuda_select_device(lu_dist_local_rank()));
#else
    (void)device;
#endif
    return LU_OK;
}

/* join: the process takes part in a data-parallel job when a launcher started it (train, eval). */
static lu_status run_setup(run *r, const lu_run_options *opt, bool with_optim, bool join)
{
    char task_name[128];
    LU_TRY(peek_task(opt->config_path, task_name, sizeof task_name));
    r->task = lu_task_find(task_name);
    if (!r->task) {
        char known[512] = "";
        for (int i = 0; lu_tasks[i]; i++) {
            strncat(known, i ? ", " : "", sizeof known - strlen(known) - 1);
            strncat(known, lu_tasks[i]->name, sizeof known - strlen(known) - 1);
        }
        return lu_errorf(LU_ERR_CONFIG, "%s: unknown task '%s' (known: %s)", opt->config_path, task_name, known);
    }
    LU_TRY(run_config_load(&r->rc, r->task, opt));
    lu_train_config *c = r->rc.common;
    LU_TRY(check_device(r->task, c, opt->config_path));
    if (join) LU_TRY(lu_join_ranks((lu_device)c->device));
    /* Initialisers write host memory: the store is built on the CPU, then moved. */
    r->params = lu_params_new(LU_CPU);
    if (!r->params) return lu_error_code();
    LU_TRY(r->task->create(&r->state, r->rc.task_cfg, (uint64_t)c->seed, r->params));
    LU_TRY(lu_params_finalize(r->params));
    LU_TRY(r->task->init_params(r->state, (uint64_t)c->seed));
    LU_TRY(lu_params_to_device(r->params, (lu_device)c->device));
    /* A step takes grad_accum micro-batches on each of the data-parallel ranks. */
    int64_t per_epoch = r->task->epoch_size(r->state) / (c->grad_accum * lu_dist_size());
    r->total_steps = c->max_steps > 0 ? c->max_steps : c->epochs * (per_epoch > 0 ? per_epoch : 1);
    if (!with_optim) return LU_OK;
    lu_optim_config oc;
    lu_optim_config_defaults(&oc, c->optim_kind == 0 ? LU_OPTIM_ADAMW : LU_OPTIM_SCALED_ADAM);
    /* The config's betas/eps/decay apply to both; ScaledAdam ignores weight decay (icefall). */
    oc.beta1 = c->beta1;
    oc.beta2 = c->beta2;
    oc.eps = c->eps;
    oc.weight_decay = c->weight_decay;
    r->optim = lu_optim_new(r->params, &oc);
    if (!r->optim) return lu_error_code();
    r->sched = (lu_schedule){
        .kind = (lu_sched_kind)c->sched_kind, .base_lr = c->lr, .total_steps = r->total_steps,
        .warmup_ratio = c->warmup_ratio, .warmup_steps = c->warmup_steps, .min_lr_ratio = c->min_lr_ratio,
        .noam_d_model = c->noam_d_model, .noam_factor = c->noam_factor, .eden_lr_batches = c->eden_lr_batches,
        .eden_lr_epochs = c->eden_lr_epochs, .eden_warmup_start = c->eden_warmup_start,
        .eden_warmup_batches = c->eden_warmup_batches,
    };
    return LU_OK;
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int cmp_path(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* checkpoints/step-*.h5 in dir, oldest first (the zero-padded step sorts by name). */
static lu_status list_step_checkpoints(const char *dir, char ***out, int *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return lu_errorf(LU_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    struct dirent *e;
    int cap = 0;
    lu_status s = LU_OK;
    while (!s && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "step-", 5) || len < 8 || strcmp(e->d_name + len - 3, ".h5")) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = realloc(*out, (size_t)cap * sizeof *grown);
            if (!grown) {
                s = lu_errorf(LU_ERR_NOMEM, "%s: out of memory", dir);
                break;
            }
            *out = grown;
        }
        char *p = malloc(PATH_LEN);
        if (!p || path_join(p, dir, "/") || (strlen(p) + len >= PATH_LEN)) {
            free(p);
            s = lu_errorf(LU_ERR_IO, "%s: path too long", dir);
            break;
        }
        strcat(p, e->d_name);
        (*out)[(*n)++] = p;
    }
    closedir(d);
    if (*n > 1) qsort(*out, (size_t)*n, sizeof **out, cmp_path);
    return s;
}

/* Loads the newest `count` step checkpoints in turn and leaves their element-wise mean in the
 * parameters and buffers (icefall's --avg over saved models). */
static lu_status average_checkpoints(run *r, const char *dir, int count, int64_t *last_step)
{
    char **paths = NULL;
    int n = 0;
    LU_TRY(list_step_checkpoints(dir, &paths, &n));
    lu_status s = LU_OK;
    if (n < count)
        s = lu_errorf(LU_ERR_STATE, "--avg %d: %s holds %d step checkpoints (train with train.keep_checkpoints >= %d)",
                      count, dir, n, count);
    lu_params *p = r->params;
    double **sum = s ? NULL : calloc((size_t)p->n, sizeof *sum);
    if (!s && !sum) s = lu_errorf(LU_ERR_NOMEM, "--avg: out of memory");
    for (int k = n - count; !s && k < n; k++) {
        lu_ckpt_meta meta = {0};
        s = lu_ckpt_load(paths[k], p, NULL, &meta);
        free(meta.loaded_config_text);
        *last_step = meta.step;
        for (int i = 0; !s && i < p->n; i++) {
            lu_tensor *t = p->items[i].t;
            if (!lu_dtype_is_float(t->dtype)) continue;
            int64_t m = lu_tensor_numel(t);
            double *v = malloc((size_t)m * sizeof *v);
            if (!sum[i]) sum[i] = calloc((size_t)m, sizeof **sum);
            if (!v || !sum[i]) s = lu_errorf(LU_ERR_NOMEM, "--avg: out of memory");
            else if (!(s = lu_tensor_to_host(t, LU_F64, v)))
                for (int64_t j = 0; j < m; j++) sum[i][j] += v[j];
            free(v);
        }
        if (!s) fprintf(stderr, "averaging %s (step %lld)\n", paths[k], (long long)meta.step);
    }
    for (int i = 0; sum && i < p->n; i++) {
        lu_tensor *t = p->items[i].t;
        if (!s && sum[i]) {
            int64_t m = lu_tensor_numel(t);
            for (int64_t j = 0; j < m; j++) sum[i][j] /= count;
            lu_tensor *h = lu_tensor_wrap(LU_F64, t->ndim, t->shape, LU_CPU, sum[i], NULL, NULL);
            s = h ? lu_tensor_copy(t, h) : lu_error_code();
            lu_tensor_release(h);
        }
        free(sum ? sum[i] : NULL);
    }
    free(sum);
    for (int k = 0; k < n; k++) free(paths[k]);
    free(paths);
    return s;
}

/* An update with finite gradients can still overflow the parameters (a learning rate far too
 * large): a checkpoint is written only of finite parameters, so last.h5 stays a good one. */
/* sums: each dtype's parameter sum, which data-parallel runs then compare across ranks. */
static lu_status check_finite_params(const lu_params *p, int64_t step, int64_t saved, const char *dir,
                                     double sums[LU_DTYPE_COUNT])
{
    LU_TRY(lu_params_sums(p, sums));
    for (int d = 0; d < LU_DTYPE_COUNT; d++)
        if (!isfinite(sums[d]))
            return lu_errorf(LU_ERR_STATE, "step %lld: the %s parameters hold NaN or infinite values (the last update "
                             "overflowed): no checkpoint written, training stops; %s/last.h5 %s", (long long)step,
                             lu_dtype_name((lu_dtype)d), dir, saved >= 0 ? "holds the last good one" : "was never written");
    return LU_OK;
}

static lu_status save_checkpoint(run *r, const char *dir, int64_t step, int64_t position)
{
    lu_ckpt_meta meta = {.step = step, .epoch = position / (r->task->epoch_size(r->state) > 0 ? r->task->epoch_size(r->state) : 1),
                         .data_position = position, .rng_seed = (uint64_t)r->rc.common->seed, .config_text = r->rc.text};
    char path[PATH_LEN];
    LU_TRY(path_join(path, dir, "/last.h5"));
    LU_TRY(lu_ckpt_save(path, r->params, r->optim, &meta));
    int64_t keep = r->rc.common->keep_checkpoints;
    if (keep <= 0) return LU_OK;
    char name[64];
    snprintf(name, sizeof name, "/step-%08lld.h5", (long long)step);
    LU_TRY(path_join(path, dir, name));
    LU_TRY(lu_ckpt_save(path, r->params, r->optim, &meta));
    char **old = NULL;
    int n = 0;
    LU_TRY(list_step_checkpoints(dir, &old, &n));
    for (int i = 0; i < n; i++) {
        if (i < n - keep) remove(old[i]);
        free(old[i]);
    }
    free(old);
    return LU_OK;
}

static void print_metrics(FILE *f, const char *title, const lu_task_metrics *m)
{
    fprintf(f, "\n%s\n", title);
    fprintf(f, "| %-24s | %14s |\n|%s|%s|\n", "metric", "value", "--------------------------", "----------------");
    for (int i = 0; i < m->n; i++) fprintf(f, "| %-24s | %14.6g |\n", m->keys[i], m->values[i]);
}

static lu_status evaluate(run *r, lu_metrics *metrics, int64_t step, bool print)
{
    lu_task_metrics m = {0};
    bool grad = lu_grad_set_enabled(false);
    lu_status s = r->task->evaluate(r->state, &m);
    lu_grad_set_enabled(grad);
    LU_TRY(s);
    if (lu_dist_rank() != 0) return LU_OK; /* a collective evaluation: rank 0 reports */
    if (metrics) LU_TRY(lu_metrics_log(metrics, "eval", step, m.n, m.keys, m.values));
    if (print) {
        char title[160];
        snprintf(title, sizeof title, "evaluation of %s at step %lld", r->rc.common->name, (long long)step);
        print_metrics(stdout, title, &m);
    } else {
        fprintf(stderr, "eval step %lld:", (long long)step);
        for (int i = 0; i < m.n; i++) fprintf(stderr, " %s=%.4g", m.keys[i], m.values[i]);
        fprintf(stderr, "\n");
    }
    return LU_OK;
}

/* "cpu", or "cuda [<GPU name, capability, SMs, CUDA runtime>]" for the run's first line. */
static void device_description(lu_device dev, char *out, size_t size)
{
    if (dev == LU_CPU) {
        snprintf(out, size, "%s", lu_device_name(dev));
        return;
    }
    char gpu[192];
    lu_bench_gpu_name(gpu, sizeof gpu);
    snprintf(out, size, "%s [%s]", lu_device_name(dev), gpu);
}

lu_status lu_train_run(const lu_run_options *opt)
{
    run r = {0};
    lu_status s = run_setup(&r, opt, true, true);
    lu_train_config *c = r.rc.common;
    /* Data parallel: every rank runs this loop on its share of each step's micro-batches; rank 0
     * alone writes the run directory, logs and evaluates. */
    int world = lu_dist_size(), rank = lu_dist_rank();
    bool lead = rank == 0;
    char ckdir[PATH_LEN], path[PATH_LEN];
    lu_metrics *metrics = NULL;
    lu_progress *progress = NULL;
    lu_arena *arena = NULL;
    int64_t step = 0, position = 0;
    if (s) goto done;
    if ((s = path_join(ckdir, c->out_dir, "/checkpoints")) || (s = path_join(path, ckdir, "/last.h5"))) goto done;
    if (opt->resume) {
        if (!file_exists(path)) {
            s = lu_errorf(LU_ERR_STATE, "--resume: no checkpoint at %s", path);
            goto done;
        }
        lu_ckpt_meta meta = {0};
        if ((s = lu_ckpt_load(path, r.params, r.optim, &meta))) goto done;
        free(meta.loaded_config_text);
        step = meta.step;
        position = meta.data_position;
        fprintf(stderr, "resuming %s from step %lld (data position %lld)\n", path, (long long)step, (long long)position);
    } else if (file_exists(path)) {
        s = lu_errorf(LU_ERR_STATE, "%s already holds a run (%s): pass --resume to continue it or --out DIR for a new one",
                      c->out_dir, path);
        goto done;
    }
    if (lead) {
        if ((s = make_dir(ckdir))) goto done;
        if ((s = path_join(path, c->out_dir, "/config.yaml")) || (s = write_file_atomic(path, r.rc.text))) goto done;
        if ((s = path_join(path, c->out_dir, "/metrics.jsonl"))) goto done;
        if (!(metrics = lu_metrics_open(path, true))) {
            s = lu_error_code();
            goto done;
        }
    }
    if (!(arena = lu_arena_new(r.params->device, 0))) {
        s = lu_error_code();
        goto done;
    }
    char where[256];
    device_description(r.params->device, where, sizeof where);
    int64_t per_step = c->grad_accum * world; /* micro-batches of one optimiser step */
    if (lead) {
        fprintf(stderr, "training %s (task %s) on %s: %lld parameters, %lld steps x %lld micro-batches, run dir %s\n",
                c->name, r.task->name, where, (long long)lu_params_count(r.params, true), (long long)r.total_steps,
                (long long)per_step, c->out_dir);
        if (world > 1)
            fprintf(stderr, "data parallel over %d processes (%s): %lld micro-batches per process and step\n", world,
                    lu_dist_backend_name(), (long long)c->grad_accum);
    }
    interrupted = 0;
    void (*old_handler)(int) = signal(SIGINT, on_sigint);
    progress = lead ? lu_progress_begin(stderr, c->name, r.total_steps) : NULL;
    double items_since = 0, loss_since = 0;
    int64_t steps_since = 0;
    int64_t stop_at = opt->stop_after > 0 ? step + opt->stop_after : r.total_steps;
    bool stop = false;              /* an interruption seen by any rank, agreed after each step */
    int64_t saved = opt->resume ? step : -1; /* the step checkpoints/last.h5 holds */
    while (step < r.total_steps && step < stop_at && !stop && !(world == 1 && interrupted)) {
        lu_arena_reset(arena);
        lu_arena *prev = lu_arena_activate(arena);
        if ((s = lu_params_zero_grad(r.params))) break;
        double loss_sum = 0, items = 0;
        /* Micro-batch a of rank k is number position + a * world + k: the same examples in the
         * same step whatever the number of ranks, so N ranks with grad_accum g train as one
         * process with grad_accum N * g. */
        for (int64_t a = 0; a < c->grad_accum && !s; a++) {
            double n = 0;
            lu_tensor *loss = r.task->loss(r.state, position + a * world + rank, step, &n);
            lu_tensor *scaled = loss ? lu_scale(loss, 1.0 / (double)per_step) : NULL;
            s = scaled ? lu_backward(scaled) : lu_error_code();
            if (!s) {
                loss_sum += lu_tensor_item(loss);
                items += n;
            }
        }
        lu_arena_activate(prev);
        if (s) break;
        if (world > 1) {
            double sums[3] = {loss_sum, items, interrupted ? 1 : 0};
            if ((s = lu_dist_sum_gradients(r.params)) || (s = lu_dist_all_reduce_doubles(sums, 3, LU_DIST_SUM))) break;
            loss_sum = sums[0];
            items = sums[1];
            stop = sums[2] > 0;
        }
        position += per_step;
        double norm = c->clip_norm > 0 ? lu_clip_grad_norm(r.params, c->clip_norm) : lu_grad_global_norm(r.params);
        /* Eden counts completed epochs, as icefall's step_epoch does. */
        double lr = lu_schedule_lr(&r.sched, step, (double)(position / r.task->epoch_size(r.state)));
        double loss = loss_sum / (double)per_step;
        if (!isfinite(loss) || !isfinite(norm)) {
            /* Stopped before the update: the parameters, the optimiser and every checkpoint stay
             * as they were (the same on every rank: loss and norm are global). */
            char last[PATH_LEN + 128] = "no checkpoint was written yet: start again, e.g. with a lower optim.lr";
            if (saved >= 0)
                snprintf(last, sizeof last, "%s/last.h5 holds step %lld: --resume continues from it, e.g. with a lower "
                         "optim.lr", ckdir, (long long)saved);
            s = lu_errorf(LU_ERR_STATE, "step %lld: loss %g, gradient norm %g (lr %g): not finite, so the step was not "
                          "applied and training stops; %s", (long long)step + 1, loss, norm, lr, last);
            break;
        }
        if ((s = lu_optim_step(r.optim, lr))) break;
        if (world > 1 && (s = lu_dist_average_buffers(r.params))) break;
        step++;
        items_since += items;
        loss_since += loss;
        steps_since++;
        const char *keys[] = {"loss", "lr", "grad_norm"};
        double vals[] = {loss, lr, norm};
        lu_progress_update(progress, step, 3, keys, vals, items, "tok");
        if (lead && (step % c->log_every == 0 || step == r.total_steps)) {
            /* loss: mean over the steps since the last line; lr and grad_norm: this step. */
            const char *mk[] = {"loss", "lr", "grad_norm", "items"};
            double mv[] = {loss_since / (double)steps_since, lr, norm, items_since};
            items_since = loss_since = 0;
            steps_since = 0;
            if ((s = lu_metrics_log(metrics, "train", step, 4, mk, mv))) break;
        }
        bool last = step == r.total_steps;
        bool evaluates = lead || r.task->collective_eval; /* evaluate() reports on rank 0 only */
        if (evaluates && (c->eval_every > 0 && step % c->eval_every == 0) && !last) {
            if ((s = evaluate(&r, metrics, step, false))) break;
        }
        if ((c->save_every > 0 && step % c->save_every == 0) || last) {
            double sums[LU_DTYPE_COUNT];
            if ((s = check_finite_params(r.params, step, saved, ckdir, sums))) break;
            if (world > 1 && (s = lu_dist_check_replicas(sums, step))) break;
            if (lead && (s = save_checkpoint(&r, ckdir, step, position))) break;
            saved = step;
        }
    }
    lu_progress_end(progress);
    progress = NULL;
    signal(SIGINT, old_handler);
    if (!s && (interrupted || stop || step < r.total_steps)) {
        if (lead) {
            fprintf(stderr, "%s at step %lld of %lld: saving a checkpoint to resume from\n",
                    interrupted || stop ? "interrupted" : "stopping", (long long)step, (long long)r.total_steps);
            s = save_checkpoint(&r, ckdir, step, position);
        }
    } else if (!s) {
        if (lead || r.task->collective_eval) s = evaluate(&r, metrics, step, true);
        if (!s && lead && r.task->demo) r.task->demo(r.state, stdout);
        if (!s && r.task->finish && (lead || r.task->collective_finish)) {
            /* The step's activations and the optimiser state are not needed any more, and the
             * hook may load further models (the sft comparison holds three in turn). */
            lu_arena_free(arena);
            arena = NULL;
            lu_optim_free(r.optim);
            r.optim = NULL;
            s = r.task->finish(r.state, c->out_dir);
        }
    }
done:
    if (progress) lu_progress_end(progress);
    lu_metrics_close(metrics);
    lu_arena_free(arena);
    run_free(&r);
    return s;
}

/* The weights `luthier eval` and the inference tools use: --checkpoint FILE, the average of the
 * newest --avg N step checkpoints, or the run's checkpoints/last.h5. */
static lu_status load_weights(run *r, const lu_run_options *opt, int64_t *step)
{
    char path[PATH_LEN];
    if (opt->avg > 0) {
        LU_TRY(path_join(path, r->rc.common->out_dir, "/checkpoints"));
        return average_checkpoints(r, path, opt->avg, step);
    }
    lu_ckpt_meta meta = {0};
    LU_TRY(opt->checkpoint ? path_join(path, opt->checkpoint, "") : path_join(path, r->rc.common->out_dir, "/checkpoints/last.h5"));
    lu_status s = lu_ckpt_load(path, r->params, NULL, &meta);
    free(meta.loaded_config_text);
    if (!s) fprintf(stderr, "loaded %s (step %lld)\n", path, (long long)meta.step);
    *step = meta.step;
    return s;
}

lu_status lu_eval_run(const lu_run_options *opt)
{
    run r = {0};
    int64_t step = 0;
    lu_status s = run_setup(&r, opt, false, true);
    if (!s) s = load_weights(&r, opt, &step);
    /* Under a launcher, a collective evaluation is shared by the ranks; another is rank 0's. */
    bool lead = lu_dist_rank() == 0;
    if (!s && (lead || r.task->collective_eval)) s = evaluate(&r, NULL, step, true);
    if (!s && lead && r.task->demo) r.task->demo(r.state, stdout);
    run_free(&r);
    return s;
}

struct lu_loaded_task {
    run r;
    int64_t step;
};

lu_loaded_task *lu_task_open(const lu_run_options *opt)
{
    lu_loaded_task *t = calloc(1, sizeof *t);
    if (!t) {
        lu_errorf(LU_ERR_NOMEM, "task: out of memory");
        return NULL;
    }
    lu_status s = run_setup(&t->r, opt, false, false);
    if (!s) s = load_weights(&t->r, opt, &t->step);
    if (s) {
        lu_task_close(t);
        return NULL;
    }
    return t;
}

const lu_task *lu_loaded_task_kind(const lu_loaded_task *t)
{
    return t->r.task;
}

void *lu_loaded_task_state(const lu_loaded_task *t)
{
    return t->r.state;
}

int64_t lu_loaded_task_step(const lu_loaded_task *t)
{
    return t->step;
}

lu_params *lu_loaded_task_params(const lu_loaded_task *t) { return t->r.params; }

void lu_task_close(lu_loaded_task *t)
{
    if (!t) return;
    run_free(&t->r);
    free(t);
}
