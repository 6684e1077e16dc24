/* testutil.c - shared helpers of the Criterion tests (see testutil.h). */
#include "testutil.h"

#include "core/fileio.h"
#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/sft_data.h"
#include "models/tokenizer.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

lu_tensor *tu_rand(lu_dtype dt, int ndim, const int64_t *shape, double lo, double hi, uint64_t seed)
{
    lu_tensor *t = lu_tensor_empty(dt, ndim, shape, LU_CPU);
    cr_assert(t, "tu_rand: %s", lu_error_message());
    cr_assert_eq(lu_tensor_rand_uniform(t, lo, hi, seed, 7), LU_OK, "%s", lu_error_message());
    return t;
}

lu_tensor *tu_randint(lu_dtype dt, int ndim, const int64_t *shape, int64_t hi, uint64_t seed)
{
    lu_tensor *t = lu_tensor_empty(dt, ndim, shape, LU_CPU);
    cr_assert(t, "tu_randint: %s", lu_error_message());
    int64_t n = lu_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        int64_t v = (int64_t)(lu_rng_uniform(seed, 0, 11, (uint64_t)i) * (double)hi);
        if (v >= hi) v = hi - 1;
        if (dt == LU_I64) ((int64_t *)lu_tensor_data(t))[i] = v;
        else ((int32_t *)lu_tensor_data(t))[i] = (int32_t)v;
    }
    return t;
}

double *tu_to_doubles(const lu_tensor *t)
{
    double *d = malloc((size_t)(lu_tensor_numel(t) + 1) * sizeof *d);
    cr_assert(d);
    cr_assert_eq(lu_tensor_to_host(t, LU_F64, d), LU_OK, "%s", lu_error_message());
    return d;
}

void tu_assert_close(const lu_tensor *got, const double *ref, int64_t n, double atol, double rtol, const char *what)
{
    cr_assert(got, "%s: result is NULL: %s", what, lu_error_message());
    cr_assert_eq(lu_tensor_numel(got), n, "%s: %lld elements, expected %lld", what, (long long)lu_tensor_numel(got),
                 (long long)n);
    double *g = tu_to_doubles(got);
    for (int64_t i = 0; i < n; i++) {
        bool ok;
        if (isnan(ref[i]) || isinf(ref[i])) ok = isnan(ref[i]) ? isnan(g[i]) : g[i] == ref[i];
        else ok = isfinite(g[i]) && fabs(g[i] - ref[i]) <= atol + rtol * fabs(ref[i]);
        if (!ok) {
            double gi = g[i];
            free(g);
            cr_assert_fail("%s: element %lld is %.10g, expected %.10g (atol %g, rtol %g)", what, (long long)i, gi,
                           ref[i], atol, rtol);
        }
    }
    free(g);
}

void tu_assert_tensors_close(const lu_tensor *got, const lu_tensor *ref, double atol, double rtol, const char *what)
{
    cr_assert(ref, "%s: reference is NULL: %s", what, lu_error_message());
    cr_assert(got, "%s: result is NULL: %s", what, lu_error_message());
    cr_assert(lu_tensor_same_shape(got, ref), "%s: shapes differ", what);
    double *r = tu_to_doubles(ref);
    tu_assert_close(got, r, lu_tensor_numel(ref), atol, rtol, what);
    free(r);
}

lu_tensor *tu_load_fixture(const char *file, const char *name, lu_dtype dt)
{
    lu_st_file *f = lu_st_open(file);
    cr_assert(f, "fixture: %s", lu_error_message());
    lu_tensor *t = lu_st_load(f, name, dt);
    cr_assert(t, "fixture %s: %s", file, lu_error_message());
    lu_st_close(f);
    return t;
}

void tu_assert_error_contains(const char *needle)
{
    const char *msg = lu_error_message();
    cr_assert(strstr(msg, needle), "error message \"%s\" does not contain \"%s\"", msg, needle);
}

/* sum(y * r) in double, r drawn from a fixed stream. */
static double projected(const lu_tensor *y)
{
    double *v = tu_to_doubles(y);
    double s = 0;
    int64_t n = lu_tensor_numel(y);
    for (int64_t i = 0; i < n; i++) s += v[i] * (lu_rng_uniform(99, 0, 3, (uint64_t)i) * 2.0 - 1.0);
    free(v);
    return s;
}

static double eval_loss(tu_fn f, lu_tensor **in, void *ctx)
{
    bool prev = lu_grad_set_enabled(false);
    lu_tensor *y = f(in, ctx);
    lu_grad_set_enabled(prev);
    cr_assert(y, "gradcheck forward failed: %s", lu_error_message());
    double l = projected(y);
    lu_tensor_release(y);
    return l;
}

void tu_gradcheck(tu_fn f, lu_tensor **in, int n_in, const bool *check, void *ctx, double h, double atol,
                  double rtol, int64_t max_elems, const char *what)
{
    for (int i = 0; i < n_in; i++) {
        if (!check[i]) continue;
        cr_assert_eq(in[i]->dtype, LU_F64, "%s: gradcheck input %d must be f64", what, i);
        lu_tensor_zero_grad(in[i]);
        lu_tensor_set_requires_grad(in[i], true);
    }
    /* Analytic: d/dx sum(y * r) by backward with r as the output gradient. */
    lu_tensor *y = f(in, ctx);
    cr_assert(y, "%s: forward failed: %s", what, lu_error_message());
    lu_tensor *r = lu_tensor_empty(y->dtype, y->ndim, y->shape, LU_CPU);
    int64_t ny = lu_tensor_numel(y);
    for (int64_t k = 0; k < ny; k++) ((double *)lu_tensor_data(r))[k] = lu_rng_uniform(99, 0, 3, (uint64_t)k) * 2.0 - 1.0;
    cr_assert_eq(lu_backward_from(y, r), LU_OK, "%s: backward failed: %s", what, lu_error_message());
    lu_tensor_release(r);
    lu_tensor_release(y);

    for (int i = 0; i < n_in; i++) {
        if (!check[i]) continue;
        int64_t n = lu_tensor_numel(in[i]);
        cr_assert(in[i]->grad, "%s: input %d received no gradient", what, i);
        cr_assert(lu_tensor_is_contiguous(in[i]), "%s: gradcheck input %d must be contiguous", what, i);
        double *g = tu_to_doubles(in[i]->grad);
        double *x = lu_tensor_data(in[i]);
        int64_t step = n > max_elems ? (n + max_elems - 1) / max_elems : 1;
        for (int64_t e = 0; e < n; e += step) {
            double keep = x[e];
            x[e] = keep + h;
            double lp = eval_loss(f, in, ctx);
            x[e] = keep - h;
            double lm = eval_loss(f, in, ctx);
            x[e] = keep;
            double num = (lp - lm) / (2 * h);
            if (!(fabs(num - g[e]) <= atol + rtol * fabs(num))) {
                double ge = g[e];
                free(g);
                cr_assert_fail("%s: d/d input %d element %lld: backward %.10g, finite difference %.10g", what, i,
                               (long long)e, ge, num);
            }
        }
        free(g);
        lu_tensor_zero_grad(in[i]);
        lu_tensor_set_requires_grad(in[i], false);
    }
}

cJSON *tu_read_json(const char *path)
{
    cJSON *j = lu_json_read(path);
    cr_assert(j, "%s", lu_error_message());
    return j;
}

int tu_run_captured(int (*fn)(int, char **), int argc, char **argv, char *out, size_t cap)
{
    FILE *keep = stdout, *f = tmpfile();
    cr_assert(f, "cannot create a temporary file for stdout");
    fflush(stdout);
    stdout = f;
    int rc = fn(argc, argv);
    fflush(f);
    stdout = keep;
    if (out && cap) {
        rewind(f);
        out[fread(out, 1, cap - 1, f)] = 0;
    }
    fclose(f);
    return rc;
}

char *tu_run_captured_text(int (*fn)(int, char **), int argc, const char **argv, int *rc)
{
    fflush(stdout);
    int saved = dup(1);
    FILE *tmp = tmpfile();
    cr_assert(saved >= 0 && tmp, "cannot redirect stdout to a temporary file");
    dup2(fileno(tmp), 1);
    *rc = fn(argc, (char **)argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    long n = ftell(tmp);
    char *text = calloc(1, (size_t)n + 1);
    cr_assert(text, "out of memory");
    rewind(tmp);
    cr_assert_eq(fread(text, 1, (size_t)n, tmp), (size_t)n);
    fclose(tmp);
    return text;
}

int tu_read_metric(const char *path, const char *event, const char *key, double *values, int max)
{
    char line[4096];
    FILE *f = fopen(path, "r");
    cr_assert(f, "cannot open %s", path);
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        cr_assert(o, "%s: a line is not JSON: %s", path, line);
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event"), *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (cJSON_IsString(ev) && !strcmp(ev->valuestring, event)) {
            cr_assert(cJSON_IsNumber(v) && n < max, "%s: %s line without a number %s, or more than %d: %s", path, event,
                      key, max, line);
            values[n++] = v->valuedouble;
        }
        cJSON_Delete(o);
    }
    fclose(f);
    return n;
}

void tu_write_file(const char *dir, const char *name, const char *fmt, ...)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    va_list ap;
    va_start(ap, fmt);
    int n = vfprintf(f, fmt, ap);
    va_end(ap);
    cr_assert(fclose(f) == 0 && n >= 0, "cannot write %s", path);
}

void tu_write_tiny_sft_config(const char *dir, int max_steps)
{
    lu_tokenizer *tok = lu_tokenizer_load("tests/fixtures/tokenizer/small_qwen2.json");
    cr_assert(tok, "%s", lu_error_message());
    char data[512];
    snprintf(data, sizeof data, "%s/data", dir);
    lu_sft_options o = {.input = "tests/fixtures/sft/chat.jsonl", .out_dir = data, .tok = tok,
                        .tokenizer_name = "small_qwen2.json", .seq_len = 96, .seed = 11, .valid_fraction = 0.25,
                        .shard_tokens = 1 << 20, .pad_id = lu_tokenizer_token_id(tok, "<|endoftext|>")};
    lu_sft_stats st;
    cr_assert_eq(lu_sft_prepare(&o, &st), LU_OK, "%s", lu_error_message());
    lu_tokenizer_free(tok);
    tu_write_file(dir, "tiny.yaml",
            "task: sft\nseed: 5\n"
            "data:\n  dir: %s\n  batch_size: 2\n"
            "model:\n  hidden_size: 32\n  intermediate_size: 64\n  num_layers: 1\n  num_heads: 2\n  num_kv_heads: 1\n"
            "  head_dim: 16\n  export_dtype: f32\n"
            "train:\n  max_steps: %d\n  log_every: 1\n  save_every: 3\n  clip_norm: 1.0\n"
            "optim:\n  lr: 1.0e-2\n"
            "schedule:\n  kind: cosine\n  warmup_ratio: 0.1\n",
            data, max_steps);
}

void tu_write_tiny_bytelm_config(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/text.txt", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    const char *lines[] = {"La commande ls affiche le contenu des répertoires.\n",
                           "Les options courtes peuvent être regroupées.\n",
                           "Ce programme est un logiciel libre ; vous pouvez le redistribuer.\n"};
    for (int i = 0; i < 120; i++) fputs(lines[i % 3], f);
    fclose(f);
    tu_write_file(dir, "tiny.yaml",
            "task: bytelm\n"
            "seed: 7\n"
            "data:\n  text_file: %s/text.txt\n  seq_len: 16\n  batch_size: 2\n  eval_batches: 2\n  valid_fraction: 0.1\n"
            "model:\n  hidden_size: 16\n  intermediate_size: 32\n  num_layers: 1\n  num_heads: 2\n  num_kv_heads: 1\n"
            "  head_dim: 8\n"
            "train:\n  max_steps: 6\n  log_every: 2\n  save_every: 3\n"
            "optim:\n  lr: 1.0e-2\n"
            "schedule:\n  kind: cosine\n  warmup_ratio: 0.2\n"
            "demo:\n  tokens: 4\n",
            dir);
}

void tu_write_tiny_asr_config(const char *dir, int max_steps)
{
    char feats[256];
    snprintf(feats, sizeof feats, "%s/feats.h5", dir);
    char *argv[] = {"prepare-speech", "--manifest", "tests/fixtures/asr/manifest.jsonl", "--out", feats, NULL};
    cr_assert_eq(tu_run_captured(lu_data_prepare_speech, 5, argv, NULL, 0), 0, "prepare-speech failed");
    tu_write_file(dir, "tiny.yaml",
            "task: asr\n"
            "seed: 3\n"
            "data:\n  train_features: %s\n  valid_features: %s\n  max_frames: 200\n  max_train_frames: 400\n"
            "model:\n  arch: ee_conformer\n  d_model: 16\n  num_heads: 2\n  ffn_dim: 32\n  n_exits: 3\n"
            "  layers_per_exit: 1\n  kernel: 3\n  dropout: 0.1\n"
            "specaug:\n  time_width: 10\n  freq_width: 8\n"
            "train:\n  max_steps: %d\n  log_every: 1\n  save_every: 3\n"
            "optim:\n  lr: 3.0e-3\n"
            "schedule:\n  kind: constant\n"
            "demo:\n  examples: 2\n",
            feats, feats, max_steps);
}
