/* cli_lm_eval.c - `luthier lm eval`: runs task files (models/lm_eval.h) on a model and prints a
 * Markdown table of the metrics; --out writes them as JSON:
 *   {"model": M, "chat": true, "system": S, "tasks": {"NAME": {"type": "mc", "n": 100,
 *    "metrics": {"acc": 0.41, ...}}, ...}}
 * Started by mpirun or srun, the ranks share every task's items and rank 0 reports. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/dist.h"
#include "experiments/runner/cli.h"
#include "experiments/runner/trainer.h"
#include "models/gguf.h"
#include "models/hf_model.h"
#include "models/lm_eval.h"

static const char *eval_usage =
    "usage: luthier lm eval --model DIR|FILE.gguf --tasks T1.jsonl[,T2.jsonl...] [--chat] [--system TEXT]\n"
    "                       [--limit N] [--max-new-tokens N] [--max-length N] [--device cpu|cuda]\n"
    "                       [--out RESULTS.json]\n"
    "\n"
    "  Task files are JSON Lines of multiple-choice, generative, perplexity or IFEval items (models/lm_eval.h).\n"
    "  --chat renders prompts with the chat template and the system prompt (default, as Luth evaluates:\n"
    "  \"You are a helpful assistant.\"; --system '' for none); without it prompts are raw text.\n"
    "  --limit N evaluates the first N items of each task; --max-new-tokens bounds generation (256);\n"
    "  --max-length is the perplexity window in tokens (min(context, 1024)); --device cuda evaluates on the\n"
    "  GPU (f32, as on the CPU). Under mpirun or srun each process scores its share of every task's items\n"
    "  (one GPU a process with --device cuda) and rank 0 prints and writes the results.\n";

static int eval_usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "luthier lm eval: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun 'luthier lm eval --help' for the usage\n");
    return 2;
}

static bool parse_count(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < 0) return false;
    *out = v;
    return true;
}

static lu_status write_json(const char *path, const char *model, const lu_lmeval_opts *o, lu_lmeval_task **tasks,
                            const lu_lmeval_result *res, int n)
{
    static const char *types[] = {"mc", "gen", "ppl", "ifeval"};
    cJSON *root = cJSON_CreateObject(), *ts = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddBoolToObject(root, "chat", o->chat);
    if (o->system) cJSON_AddStringToObject(root, "system", o->system);
    else cJSON_AddNullToObject(root, "system");
    cJSON_AddItemToObject(root, "tasks", ts);
    for (int i = 0; i < n; i++) {
        cJSON *t = cJSON_CreateObject(), *mt = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "type", types[tasks[i]->type]);
        cJSON_AddNumberToObject(t, "n", (double)res[i].n);
        for (int k = 0; k < res[i].n_metrics; k++) cJSON_AddNumberToObject(mt, res[i].metric[k], res[i].value[k]);
        cJSON_AddItemToObject(t, "metrics", mt);
        cJSON_AddItemToObject(ts, tasks[i]->name, t);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    /* A temporary file renamed when complete: a failed write leaves an earlier result whole. */
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        free(text);
        return lu_errorf(LU_ERR_IO, "lm eval: path too long: %s", path);
    }
    FILE *f = text ? fopen(tmp, "w") : NULL;
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = false;
    free(text);
    if (ok && rename(tmp, path)) ok = false;
    if (!ok) remove(tmp);
    return ok ? LU_OK : lu_errorf(LU_ERR_IO, "lm eval: cannot write %s", path);
}

int lu_cli_lm_eval(int argc, char **argv)
{
    const char *model = NULL, *task_list = NULL, *out = NULL;
    lu_device device = LU_CPU;
    lu_lmeval_opts o = {.system = "You are a helpful assistant.", .progress = true, .shared = true};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
            fputs(eval_usage, stdout);
            return 0;
        }
        if (!strcmp(k, "--chat")) {
            o.chat = true;
            continue;
        }
        if (!v) return eval_usage_error("%s needs a value (or is unknown)", k);
        i++;
        if (!strcmp(k, "--model")) model = v;
        else if (!strcmp(k, "--tasks")) task_list = v;
        else if (!strcmp(k, "--out")) out = v;
        else if (!strcmp(k, "--system")) o.system = *v ? v : NULL;
        else if (!strcmp(k, "--device")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) return eval_usage_error("--device is cpu or cuda, got '%s'", v);
            device = !strcmp(v, "cuda") ? LU_CUDA : LU_CPU;
        }
        else if (!strcmp(k, "--limit") || !strcmp(k, "--max-new-tokens") || !strcmp(k, "--max-length")) {
            int64_t x;
            if (!parse_count(v, &x)) return eval_usage_error("%s needs a non-negative integer", k);
            int64_t *dst = !strcmp(k, "--limit") ? &o.limit : !strcmp(k, "--max-new-tokens") ? &o.max_new_tokens
                                                                                           : &o.max_length;
            *dst = x;
        } else
            return eval_usage_error("unknown option '%s'", k);
    }
    if (!model || !task_list) return eval_usage_error("%s", "eval needs --model and --tasks");
    if (lu_join_ranks(device)) {
        fprintf(stderr, "luthier lm eval: %s\n", lu_error_message());
        return 1;
    }
    const bool lead = lu_dist_rank() == 0;

    /* Task files first: a malformed line fails before the model is loaded. */
    int n = 1, rc = 1;
    for (const char *c = task_list; *c; c++) n += *c == ',';
    lu_lmeval_task **tasks = calloc((size_t)n, sizeof *tasks);
    lu_lmeval_result *res = calloc((size_t)n, sizeof *res);
    char *list = strdup(task_list);
    lu_decoder m;
    lu_params *params = NULL;
    lu_tokenizer *tok = NULL;
    bool ok = tasks && res && list;
    if (!ok) lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
    char *save = NULL, *path = ok ? strtok_r(list, ",", &save) : NULL;
    n = 0;
    for (; ok && path; path = strtok_r(NULL, ",", &save)) ok = (tasks[n++] = lu_lmeval_task_load(path)) != NULL;
    if (ok && n == 0) ok = lu_errorf(LU_ERR_INVALID, "lm eval: --tasks names no file") == LU_OK;

    size_t ml = strlen(model);
    if (ok && ml > 5 && !strcmp(model + ml - 5, ".gguf")) {
        ok = lu_gguf_load_decoder(model, &m, &params, &tok) == LU_OK;
    } else if (ok) {
        char tp[4096];
        snprintf(tp, sizeof tp, "%s/tokenizer.json", model);
        ok = lu_hf_load(model, &m, &params) == LU_OK && (tok = lu_tokenizer_load(tp)) != NULL;
    }
    if (ok && device != LU_CPU) ok = lu_params_to_device(params, device) == LU_OK;
    for (int i = 0; ok && i < n; i++) ok = lu_lmeval_run(&m, tok, tasks[i], &o, &res[i]) == LU_OK;
    if (ok && out && lead) ok = write_json(out, model, &o, tasks, res, n) == LU_OK;
    if (!ok && lu_dist_size() > 1) {
        /* The other ranks would wait for this one in their next collective: end them all. */
        fprintf(stderr, "luthier lm eval: rank %d of %d: %s\n", lu_dist_rank(), lu_dist_size(), lu_error_message());
        lu_dist_abort(1);
    }
    if (ok && !lead) {
        rc = 0;
    } else if (ok) {
        printf("| task | metric | value | n |\n|---|---|---:|---:|\n");
        for (int i = 0; i < n; i++)
            for (int k = 0; k < res[i].n_metrics; k++)
                printf("| %s | %s | %.4f | %lld |\n", tasks[i]->name, res[i].metric[k], res[i].value[k],
                       (long long)res[i].n);
        rc = 0;
    } else {
        fprintf(stderr, "luthier lm eval: %s\n", lu_error_message());
    }
    for (int i = 0; tasks && i < n; i++) lu_lmeval_task_free(tasks[i]);
    free(tasks);
    free(res);
    free(list);
    lu_tokenizer_free(tok);
    lu_params_free(params);
    lu_dist_finalize();
    return rc;
}
