/* luth_compare.c - starting model vs fine-tuned vs merged on the same tasks (luth_compare.h). */
#include "experiments/runner/luth_compare.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "core/dist.h"
#include "core/fileio.h"
#include "models/gguf.h"
#include "models/hf_model.h"
#include "models/lm_eval.h"
#include "models/merge.h"

#define N_MODELS 3
#define PATH_MAX_LEN 4096

static bool is_gguf(const char *path)
{
    size_t n = strlen(path);
    return n > 5 && !strcmp(path + n - 5, ".gguf");
}

static bool has_config(const char *dir)
{
    char p[PATH_MAX_LEN + 16];
    struct stat st;
    snprintf(p, sizeof p, "%s/config.json", dir);
    return stat(p, &st) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Appends item (a new string, or NULL when its allocation failed) to the list; false when out of
 * memory (item is freed). */
static bool push(char ***f, int *cap, int *n, char *item)
{
    if (item && *n == *cap) {
        char **g = realloc(*f, (size_t)(*cap * 2) * sizeof **f);
        if (!g) {
            free(item);
            return false;
        }
        *f = g;
        *cap *= 2;
    }
    if (!item) return false;
    (*f)[(*n)++] = item;
    return true;
}

/* The task files: every *.jsonl of a directory, sorted, or the comma-separated list. */
static lu_status list_tasks(const char *spec, char ***files, int *n)
{
    *files = NULL;
    *n = 0;
    struct stat st;
    int cap = 8;
    bool oom = false;
    char **f = malloc((size_t)cap * sizeof *f);
    if (!f) return lu_errorf(LU_ERR_NOMEM, "compare: out of memory");
    if (stat(spec, &st) == 0 && S_ISDIR(st.st_mode)) {
        DIR *d = opendir(spec);
        if (!d) {
            free(f);
            return lu_errorf(LU_ERR_IO, "compare.tasks: cannot open %s: %s", spec, strerror(errno));
        }
        for (struct dirent *e; !oom && (e = readdir(d));) {
            size_t l = strlen(e->d_name);
            if (l <= 6 || strcmp(e->d_name + l - 6, ".jsonl")) continue;
            size_t m = strlen(spec) + l + 2;
            char *path = malloc(m);
            if (path) snprintf(path, m, "%s/%s", spec, e->d_name);
            oom = !push(&f, &cap, n, path);
        }
        closedir(d);
        qsort(f, (size_t)*n, sizeof *f, cmp_str);
    } else {
        char *copy = strdup(spec), *save = NULL;
        oom = !copy;
        for (char *p = copy ? strtok_r(copy, ",", &save) : NULL; p && !oom; p = strtok_r(NULL, ",", &save))
            oom = !push(&f, &cap, n, strdup(p));
        free(copy);
    }
    *files = f;
    if (oom) return lu_errorf(LU_ERR_NOMEM, "compare: out of memory listing %s", spec);
    if (*n == 0) return lu_errorf(LU_ERR_CONFIG, "compare.tasks: '%s' names no .jsonl task file", spec);
    return LU_OK;
}

/* base/: the starting GGUF file as a Hugging Face directory with its tokenizer. */
static lu_status export_base(const char *gguf, const char *dir, lu_dtype dtype)
{
    if (has_config(dir)) return LU_OK;
    lu_decoder m;
    lu_params *p = NULL;
    LU_TRY(lu_gguf_load_decoder(gguf, &m, &p, NULL));
    lu_status s = lu_hf_save(dir, &m, dtype, 0);
    lu_params_free(p);
    lu_gguf *g = s ? NULL : lu_gguf_open(gguf);
    if (!s && !g) s = lu_error_code();
    if (!s) s = lu_gguf_save_tokenizer(g, dir);
    lu_gguf_close(g);
    return s;
}

/* merge.yaml next to base/ and model/ (mergekit resolves paths from the config's directory). */
static lu_status write_merge_config(const char *path, const char *base, const lu_compare_opts *o)
{
    FILE *f = fopen(path, "w");
    if (!f) return lu_errorf(LU_ERR_IO, "compare: cannot write %s: %s", path, strerror(errno));
    fprintf(f, "# written by luthier at the end of the SFT run: the fine-tuned model merged with the starting model\n");
    if (o->merge == LU_COMPARE_SLERP)
        fprintf(f, "merge_method: slerp\nbase_model: %s\nmodels:\n  - model: model\n  - model: %s\nparameters:\n  t: %.10g\n",
                base, base, o->t);
    else
        fprintf(f, "merge_method: linear\nmodels:\n  - model: model\n    parameters:\n      weight: %.10g\n"
                   "  - model: %s\n    parameters:\n      weight: %.10g\n",
                o->t, base, 1 - o->t);
    fprintf(f, "dtype: %s\n", o->export_dtype == LU_F32 ? "float32" : o->export_dtype == LU_F16 ? "float16" : "bfloat16");
    return fclose(f) ? lu_errorf(LU_ERR_IO, "compare: cannot write %s", path) : LU_OK;
}

/* The metric a row of the table shows for a task, as the paper reports its benchmarks. */
static int primary_metric(const lu_lmeval_result *r)
{
    static const char *prefer[] = {"prompt_level_strict_acc", "acc_norm", "qem", "ppl"};
    for (size_t p = 0; p < sizeof prefer / sizeof *prefer; p++)
        for (int k = 0; k < r->n_metrics; k++)
            if (!strcmp(r->metric[k], prefer[p])) return k;
    return 0;
}

static bool is_accuracy(const char *metric) { return strcmp(metric, "ppl") && strcmp(metric, "bits_per_byte"); }

/* Ends with "_fr"/"-fr" (French), "_en"/"-en" (English), or neither (2). */
static int task_language(const char *name)
{
    size_t n = strlen(name);
    if (n > 3 && (name[n - 3] == '_' || name[n - 3] == '-')) {
        if (!strcmp(name + n - 2, "fr")) return 0;
        if (!strcmp(name + n - 2, "en")) return 1;
    }
    return 2;
}

static void print_tables(FILE *f, const char *const *labels, int n_models, lu_lmeval_task **tasks, int n_tasks,
                         lu_lmeval_result (*res)[N_MODELS])
{
    static const char *titles[] = {"French", "English", "Other tasks"};
    for (int lang = 0; lang < 3; lang++) {
        int rows = 0;
        for (int i = 0; i < n_tasks; i++) rows += task_language(tasks[i]->name) == lang;
        if (!rows) continue;
        fprintf(f, "\n**%s** (accuracies in %%, higher is better; ppl: lower is better)\n\n| Benchmark | metric |", titles[lang]);
        for (int m = 0; m < n_models; m++) fprintf(f, " %s |", labels[m]);
        fprintf(f, "\n|---|---|");
        for (int m = 0; m < n_models; m++) fprintf(f, "---:|");
        fprintf(f, "\n");
        for (int i = 0; i < n_tasks; i++) {
            if (task_language(tasks[i]->name) != lang) continue;
            int k = primary_metric(&res[i][0]);
            const char *metric = res[i][0].metric[k];
            fprintf(f, "| %s | %s (n=%lld) |", tasks[i]->name, metric, (long long)res[i][0].n);
            for (int m = 0; m < n_models; m++) {
                double v = res[i][m].value[k];
                if (is_accuracy(metric)) fprintf(f, " %.2f |", 100 * v);
                else fprintf(f, " %.3f |", v);
            }
            fprintf(f, "\n");
        }
    }
}

static lu_status write_results_json(const char *path, const char *const *labels, const char *const *dirs, int n_models,
                                    lu_lmeval_task **tasks, int n_tasks, lu_lmeval_result (*res)[N_MODELS])
{
    cJSON *root = cJSON_CreateObject(), *models = cJSON_AddArrayToObject(root, "models");
    for (int m = 0; models && m < n_models; m++) {
        cJSON *mo = cJSON_CreateObject(), *ts = cJSON_AddObjectToObject(mo, "tasks");
        cJSON_AddItemToArray(models, mo);
        cJSON_AddStringToObject(mo, "label", labels[m]);
        cJSON_AddStringToObject(mo, "path", dirs[m]);
        for (int i = 0; ts && i < n_tasks; i++) {
            cJSON *t = cJSON_AddObjectToObject(ts, tasks[i]->name), *mt = cJSON_AddObjectToObject(t, "metrics");
            cJSON_AddNumberToObject(t, "n", (double)res[i][m].n);
            for (int k = 0; mt && k < res[i][m].n_metrics; k++) cJSON_AddNumberToObject(mt, res[i][m].metric[k], res[i][m].value[k]);
        }
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return lu_errorf(LU_ERR_NOMEM, "compare: out of memory");
    char tmp[PATH_MAX_LEN + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = false;
    free(text);
    if (!ok || rename(tmp, path)) {
        remove(tmp);
        return lu_errorf(LU_ERR_IO, "compare: cannot write %s", path);
    }
    return LU_OK;
}

static lu_status evaluate_dir(const char *dir, lu_lmeval_task **tasks, int n_tasks, const lu_lmeval_opts *eo,
                              lu_device device, lu_lmeval_result (*res)[N_MODELS], int col)
{
    char tp[PATH_MAX_LEN + 32];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", dir);
    lu_decoder m;
    lu_params *p = NULL;
    LU_TRY(lu_hf_load(dir, &m, &p));
    lu_tokenizer *tok = lu_tokenizer_load(tp);
    lu_status s = tok ? LU_OK : lu_error_code();
    if (!s && device != LU_CPU) s = lu_params_to_device(p, device);
    for (int i = 0; !s && i < n_tasks; i++) s = lu_lmeval_run(&m, tok, tasks[i], eo, &res[i][col]);
    lu_tokenizer_free(tok);
    lu_params_free(p);
    return s;
}

lu_status lu_luth_compare(const char *run_dir, const char *start_model, const lu_compare_opts *o)
{
    if (!start_model)
        return lu_errorf(LU_ERR_CONFIG, "compare: model.path is not set: there is no starting model to compare with");
    if (o->merge != LU_COMPARE_NO_MERGE && !(o->t >= 0 && o->t <= 1))
        return lu_errorf(LU_ERR_CONFIG, "compare.merge_t must be in [0, 1], got %g", o->t);
    char **files = NULL;
    int n_tasks = 0;
    lu_status s = list_tasks(o->tasks, &files, &n_tasks);
    lu_lmeval_task **tasks = calloc((size_t)n_tasks + 1, sizeof *tasks);
    lu_lmeval_result(*res)[N_MODELS] = calloc((size_t)n_tasks + 1, sizeof *res);
    if (!s && (!tasks || !res)) s = lu_errorf(LU_ERR_NOMEM, "compare: out of memory");
    /* Task files first: a malformed line fails before any model is written or loaded. */
    for (int i = 0; !s && i < n_tasks; i++)
        if (!(tasks[i] = lu_lmeval_task_load(files[i]))) s = lu_error_code();

    char base[PATH_MAX_LEN], model[PATH_MAX_LEN], merged[PATH_MAX_LEN], yaml[PATH_MAX_LEN], out[PATH_MAX_LEN];
    snprintf(model, sizeof model, "%s/model", run_dir);
    snprintf(merged, sizeof merged, "%s/merged", run_dir);
    snprintf(yaml, sizeof yaml, "%s/merge.yaml", run_dir);
    /* In a data-parallel job every rank calls this: rank 0 writes the directories and the
     * results, every rank scores its share of each task's items. */
    const bool lead = lu_dist_rank() == 0;
    const char *base_rel = "base";
    if (is_gguf(start_model)) {
        snprintf(base, sizeof base, "%s/base", run_dir);
        if (!s && lead) {
            fprintf(stderr, "compare: exporting the starting model %s to %s\n", start_model, base);
            s = export_base(start_model, base, (lu_dtype)o->export_dtype);
        }
        s = lu_dist_agree(s, "compare: exporting the starting model");
    } else {
        /* mergekit paths are relative to the config's directory unless absolute. */
        if (start_model[0] == '/') snprintf(base, sizeof base, "%s", start_model);
        else if (!realpath(start_model, base)) s = s ? s : lu_errorf(LU_ERR_IO, "compare: %s: %s", start_model, strerror(errno));
        base_rel = base;
    }
    int n_models = o->merge == LU_COMPARE_NO_MERGE ? 2 : 3;
    if (!s && lead && n_models == 3 && !has_config(merged)) {
        s = write_merge_config(yaml, base_rel, o);
        lu_merge_options mo = {.seed = 0, .progress = false};
        if (!s) {
            fprintf(stderr, "compare: merging (%s) into %s\n", yaml, merged);
            s = lu_merge_run(yaml, merged, &mo);
        }
    }
    s = lu_dist_agree(s, "compare: merging");

    char merge_label[64], base_label[256];
    const char *name = strrchr(start_model, '/');
    snprintf(base_label, sizeof base_label, "%s", name && name[1] ? name + 1 : start_model);
    if (is_gguf(base_label)) base_label[strlen(base_label) - 5] = 0;
    snprintf(merge_label, sizeof merge_label, "%s merge (t=%g)", o->merge == LU_COMPARE_SLERP ? "SLERP" : "linear", o->t);
    const char *labels[N_MODELS] = {base_label, "fine-tuned", merge_label};
    const char *dirs[N_MODELS] = {base, model, merged};
    lu_lmeval_opts eo = {.chat = o->chat, .system = o->system, .limit = o->limit, .max_new_tokens = o->max_new_tokens,
                         .progress = true, .shared = true};
    for (int m = 0; !s && m < n_models; m++) {
        if (lead) fprintf(stderr, "compare: evaluating %s (%s) on %d tasks\n", labels[m], dirs[m], n_tasks);
        s = evaluate_dir(dirs[m], tasks, n_tasks, &eo, (lu_device)o->device, res, m);
    }
    if (!s && lead) {
        snprintf(out, sizeof out, "%s/compare.json", run_dir);
        s = write_results_json(out, labels, dirs, n_models, tasks, n_tasks, res);
    }
    if (!s && lead) {
        snprintf(out, sizeof out, "%s/compare.md", run_dir);
        char tmp[PATH_MAX_LEN + 8];
        snprintf(tmp, sizeof tmp, "%s.tmp", out);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "# %s: starting model, fine-tuned, merged\n", run_dir);
            print_tables(f, labels, n_models, tasks, n_tasks, res);
        }
        if (!f || fclose(f) || rename(tmp, out)) s = lu_errorf(LU_ERR_IO, "compare: cannot write %s", out);
        print_tables(stdout, labels, n_models, tasks, n_tasks, res);
        fprintf(stderr, "compare: tables in %s, every metric in %s/compare.json\n", out, run_dir);
    }
    for (int i = 0; i < n_tasks; i++) {
        if (tasks) lu_lmeval_task_free(tasks[i]);
        free(files[i]);
    }
    free(files);
    free(tasks);
    free(res);
    return s;
}
