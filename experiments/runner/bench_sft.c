/* bench_sft.c - `luthier bench sft`: CPU training throughput (tokens/s) of the demo SFT model
 * (SmolLM2-135M-Instruct's shape, read from its GGUF or any HF directory; random N(0, 0.02)
 * weights) on the step of the sft task (task_sft.c, trainer.c): a row of --batch packed sequences
 * of --seq-len tokens with cu_seqlens and restarting positions, mean cross-entropy over the
 * labelled tokens, backward, global-norm clipping at 0.1 and AdamW (lr 5e-5, weight decay 0.01:
 * experiments/luth/demo-small.yaml). Beside it, transformers' LlamaForCausalLM in f32 on the same
 * weights and the same batch (written to a temporary HF directory and safetensors file), measured
 * in the same run by scripts/bench_sft_reference.py with the same thread count, and the ratio.
 * Both sides report the loss of their first step, which must agree: same weights, same batch.
 *
 * The batch stands for prepare-chat's packing of the demo's ~180-token FAQ pairs: each sequence
 * holds samples of 180 tokens (the last one shorter), the first 60 tokens of each (the prompt)
 * unlabelled; token ids are a fixed pseudo-random function of the position. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/optim.h"
#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/decoder.h"
#include "models/gguf.h"
#include "models/hf_model.h"

#define REFERENCE_SCRIPT "scripts/bench_sft_reference.py"
#define DEFAULT_MODEL "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define MAX_STEPS 100
#define SAMPLE_LEN 180
#define PROMPT_LEN 60
#define LR 5e-5
#define CLIP 0.1

typedef struct sft_bench_opts {
    const char *model, *attn;
    int layers, batch, steps, warmup, threads;
    int64_t seq_len;
    bool reference;
} sft_bench_opts;

typedef struct sft_result {
    double seconds, loss0; /* median seconds per step; loss of the first step */
    int64_t params;
    char why[512];         /* reference only: non-empty when not measured */
    char versions[128];
} sft_result;

/* One packed row [1, B * T] as task_sft.c's packed_loss builds it. */
typedef struct sft_batch {
    lu_tensor *ids, *labels, *pos, *cu;
} sft_batch;

static lu_status read_shape(const char *path, lu_decoder_config *dc)
{
    size_t n = strlen(path);
    if (n <= 5 || strcmp(path + n - 5, ".gguf")) return lu_hf_read_config(path, dc);
    lu_gguf *g = lu_gguf_open(path);
    if (!g) return lu_error_code();
    lu_status s = lu_gguf_read_config(g, dc);
    lu_gguf_close(g);
    return s;
}

static lu_status make_batch(int64_t B, int64_t T, int64_t V, sft_batch *b)
{
    int64_t L = B * T, n_cu = 1;
    int32_t *ids = malloc((size_t)L * sizeof *ids), *labels = malloc((size_t)L * sizeof *labels);
    int32_t *pos = malloc((size_t)L * sizeof *pos), *cu = malloc((size_t)(L + 1) * sizeof *cu);
    lu_status s = ids && labels && pos && cu ? LU_OK : lu_errorf(LU_ERR_NOMEM, "bench sft: out of memory");
    cu[0] = 0;
    for (int64_t t = 0; !s && t < L; t++) {
        int64_t in_seq = t % T, start = t - in_seq + in_seq / SAMPLE_LEN * SAMPLE_LEN;
        if (t == start && t > 0) cu[n_cu++] = (int32_t)t;
        ids[t] = (int32_t)((t * 7919 + 13) % V);
        pos[t] = (int32_t)(t - start);
        labels[t] = t - start < PROMPT_LEN ? -100 : ids[t];
    }
    if (!s) cu[n_cu++] = (int32_t)L;
    if (!s) {
        b->ids = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), LU_CPU, ids);
        b->labels = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), LU_CPU, labels);
        b->pos = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), LU_CPU, pos);
        b->cu = lu_tensor_from_host(LU_I32, LU_SHAPE(n_cu), LU_CPU, cu);
        if (!b->ids || !b->labels || !b->pos || !b->cu) s = lu_error_code();
    }
    free(ids);
    free(labels);
    free(pos);
    free(cu);
    return s;
}

static void free_batch(sft_batch *b)
{
    lu_tensor_release(b->ids);
    lu_tensor_release(b->labels);
    lu_tensor_release(b->pos);
    lu_tensor_release(b->cu);
}

/* warmup + steps training steps as trainer.c runs them; the median of the timed ones. */
static lu_status run_luthier(lu_decoder *m, const sft_batch *b, const sft_bench_opts *o, sft_result *r)
{
    lu_optim_config oc;
    lu_optim_config_defaults(&oc, LU_OPTIM_ADAMW);
    oc.weight_decay = 0.01;
    lu_optim *opt = lu_optim_new(m->params, &oc);
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    lu_status s = opt && arena ? LU_OK : lu_error_code();
    double times[MAX_STEPS];
    lu_decoder_batch batch = {.input_ids = b->ids, .positions = b->pos, .cu_seqlens = b->cu};
    for (int i = -o->warmup; i < o->steps && !s; i++) {
        double t0 = lu_bench_now();
        lu_arena_reset(arena);
        lu_arena *prev = lu_arena_activate(arena);
        s = lu_params_zero_grad(m->params);
        lu_tensor *loss = s ? NULL : lu_decoder_loss(m, &batch, b->labels);
        if (!s) s = loss ? lu_backward(loss) : lu_error_code();
        if (!s && i == -o->warmup) r->loss0 = lu_tensor_item(loss);
        lu_arena_activate(prev);
        double norm = s ? 0 : lu_clip_grad_norm(m->params, CLIP);
        if (!s && norm != norm) s = lu_errorf(LU_ERR_INVALID, "bench sft: gradient norm is NaN");
        if (!s) s = lu_optim_step(opt, LR);
        if (i >= 0) times[i] = lu_bench_now() - t0;
    }
    lu_arena_free(arena);
    lu_optim_free(opt);
    if (s) return s;
    qsort(times, (size_t)o->steps, sizeof times[0], lu_bench_cmp_double);
    r->seconds = times[o->steps / 2];
    return LU_OK;
}

/* Runs the reference script on model_dir and batch_path; it prints one JSON line
 * {"seconds_per_step", "loss0", "params", "versions"} or {"error"}. Other lines are kept: the
 * last one explains a failure. */
static void run_reference(const sft_bench_opts *o, const char *model_dir, const char *batch_path, sft_result *r)
{
    snprintf(r->why, sizeof r->why, "no result from %s", REFERENCE_SCRIPT);
    if (access(REFERENCE_SCRIPT, R_OK) != 0) {
        snprintf(r->why, sizeof r->why, "%s not found (run from the repository root)", REFERENCE_SCRIPT);
        return;
    }
    char cmd[2 * PATH_MAX + 256];
    snprintf(cmd, sizeof cmd,
             "python3 %s --model '%s' --batch '%s' --threads %d --steps %d --warmup %d --attn %s --lr %g --clip %g 2>&1",
             REFERENCE_SCRIPT, model_dir, batch_path, o->threads, o->steps, o->warmup, o->attn, LR, CLIP);
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(r->why, sizeof r->why, "cannot start python3");
        return;
    }
    char line[4096], last[256] = "";
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        cJSON *j = line[0] == '{' ? cJSON_Parse(line) : NULL;
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(j, "seconds_per_step");
        const cJSON *loss = cJSON_GetObjectItemCaseSensitive(j, "loss0");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(j, "params");
        const cJSON *ver = cJSON_GetObjectItemCaseSensitive(j, "versions");
        if (cJSON_IsString(err)) {
            snprintf(r->why, sizeof r->why, "%s", err->valuestring);
        } else if (cJSON_IsNumber(sec) && cJSON_IsNumber(loss) && cJSON_IsNumber(params) && sec->valuedouble > 0) {
            r->seconds = sec->valuedouble;
            r->loss0 = loss->valuedouble;
            r->params = (int64_t)params->valuedouble;
            if (cJSON_IsString(ver)) snprintf(r->versions, sizeof r->versions, "%s", ver->valuestring);
            r->why[0] = 0;
        } else if (line[0]) {
            snprintf(last, sizeof last, "%.255s", line);
        }
        cJSON_Delete(j);
    }
    int status = pclose(p), rc = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (rc != 0 && !strncmp(r->why, "no result", 9)) {
        if (rc == 127) snprintf(r->why, sizeof r->why, "python3 not found");
        else snprintf(r->why, sizeof r->why, "python3 failed (exit status %d): %.200s", rc, last);
    }
}

/* Removes the temporary directory's files: model/<files>, model/, the batch, then itself. */
static void remove_tmp(const char *tmp)
{
    char p[PATH_MAX], q[PATH_MAX];
    snprintf(p, sizeof p, "%s/model", tmp);
    DIR *d = opendir(p);
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            snprintf(q, sizeof q, "%s/%s", p, e->d_name) < (int)sizeof q)
            unlink(q);
    if (d) closedir(d);
    rmdir(p);
    snprintf(p, sizeof p, "%s/batch.safetensors", tmp);
    unlink(p);
    rmdir(tmp);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: luthier bench sft [--model PATH] [--layers N] [--seq-len T] [--batch B] [--steps N]\n"
               "                         [--warmup N] [--threads N] [--attn sdpa|eager] [--no-reference]\n"
               "  CPU SFT training tokens/s (packed forward, masked cross-entropy, backward, clipping, AdamW)\n"
               "  of the demo model's shape with random weights, beside transformers' LlamaForCausalLM on\n"
               "  the same weights and batch (python3 " REFERENCE_SCRIPT "), and the ratio.\n"
               "  --model PATH     GGUF file or HF directory giving the shape (default " DEFAULT_MODEL ")\n"
               "  --layers N       keep the first N layers (default: all)\n"
               "  --seq-len T      tokens per packed sequence (default 512)\n"
               "  --batch B        packed sequences per step (default 1)\n"
               "  --steps N        timed steps, median reported (default 3)\n"
               "  --warmup N       untimed steps first (default 1)\n"
               "  --threads N      OpenMP, OpenBLAS and torch threads (default: OpenMP's maximum)\n"
               "  --attn KIND      transformers attention implementation (default sdpa)\n"
               "  --no-reference   skip transformers\n");
}

int lu_bench_sft(int argc, char **argv)
{
    sft_bench_opts o = {.model = DEFAULT_MODEL, .attn = "sdpa", .layers = 0, .batch = 1, .steps = 3, .warmup = 1,
                        .threads = omp_get_max_threads(), .seq_len = 512, .reference = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-reference")) {
            o.reference = false;
        } else if (!strcmp(a, "--model")) {
            if (!v) return fprintf(stderr, "luthier bench sft: --model needs a path\n"), 2;
            o.model = v;
            i++;
        } else if (!strcmp(a, "--attn")) {
            if (!v || (strcmp(v, "sdpa") && strcmp(v, "eager")))
                return fprintf(stderr, "luthier bench sft: --attn is sdpa or eager, got '%s'\n", v ? v : ""), 2;
            o.attn = v;
            i++;
        } else if (!strcmp(a, "--layers") || !strcmp(a, "--batch") || !strcmp(a, "--threads")) {
            if (!lu_bench_int_arg("sft", a, v, 1, 1024, &x)) return 2;
            *(!strcmp(a, "--layers") ? &o.layers : !strcmp(a, "--batch") ? &o.batch : &o.threads) = (int)x;
            i++;
        } else if (!strcmp(a, "--steps") || !strcmp(a, "--warmup")) {
            if (!lu_bench_int_arg("sft", a, v, !strcmp(a, "--steps"), MAX_STEPS, &x)) return 2;
            *(!strcmp(a, "--steps") ? &o.steps : &o.warmup) = (int)x;
            i++;
        } else if (!strcmp(a, "--seq-len")) {
            if (!lu_bench_int_arg("sft", a, v, 2, 1 << 20, &x)) return 2;
            o.seq_len = x;
            i++;
        } else {
            fprintf(stderr, "luthier bench sft: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    omp_set_num_threads(o.threads);
    openblas_set_num_threads(o.threads);
    lu_decoder_config cfg;
    if (read_shape(o.model, &cfg)) {
        fprintf(stderr, "luthier bench sft: %s (the default model comes from scripts/fetch_smollm2.sh; --model names "
                        "another GGUF file or HF directory)\n", lu_error_message());
        return 1;
    }
    if (o.layers > 0 && o.layers < cfg.num_layers) cfg.num_layers = o.layers;
    cfg.dtype = LU_F32;
    if (cfg.max_position_embeddings < o.seq_len) cfg.max_position_embeddings = o.seq_len;

    char tmp[] = "/tmp/luthier_bench_sft_XXXXXX", model_dir[PATH_MAX], batch_path[PATH_MAX];
    bool have_tmp = o.reference && mkdtemp(tmp) != NULL;
    snprintf(model_dir, sizeof model_dir, "%s/model", tmp);
    snprintf(batch_path, sizeof batch_path, "%s/batch.safetensors", tmp);
    lu_decoder m;
    sft_batch b = {0};
    sft_result ours = {0}, ref = {0};
    lu_params *params = lu_params_new(LU_CPU);
    lu_status s = params ? lu_decoder_declare(&m, &cfg, params) : lu_error_code();
    if (!s) s = lu_params_finalize(params);
    if (!s) s = lu_decoder_init(&m, 1);
    if (!s) s = make_batch(o.batch, o.seq_len, cfg.vocab_size, &b);
    snprintf(ref.why, sizeof ref.why, "not requested (--no-reference)");
    if (o.reference && !have_tmp) snprintf(ref.why, sizeof ref.why, "cannot create a temporary directory in /tmp");
    /* The reference gets the initial weights and the batch before our steps update them. */
    if (!s && have_tmp) s = lu_hf_save(model_dir, &m, LU_F32, 0);
    if (!s && have_tmp) {
        const char *names[] = {"input_ids", "labels", "position_ids", "cu_seqlens"};
        lu_tensor *ts[] = {b.ids, b.labels, b.pos, b.cu};
        s = lu_st_save(batch_path, 4, names, ts, 0, NULL, NULL);
    }
    if (!s) {
        ours.params = lu_params_count(params, true);
        s = run_luthier(&m, &b, &o, &ours);
    }
    lu_params_free(params);
    free_batch(&b);
    if (!s && have_tmp) run_reference(&o, model_dir, batch_path, &ref);
    if (have_tmp) remove_tmp(tmp);
    if (s) {
        fprintf(stderr, "luthier bench sft: %s\n", lu_error_message());
        return 1;
    }

    double tokens = (double)o.batch * (double)o.seq_len;
    printf("luthier bench sft: %d threads (OpenMP, OpenBLAS, torch); %s shape, %d layers, hidden %lld, %d/%d heads,\n"
           "vocab %lld, f32, random N(0, 0.02) weights; batch %d x %lld packed tokens (samples of %d, first %d\n"
           "unlabelled); step = forward, cross-entropy, backward, clip 0.1, AdamW; median of %d steps after %d\n"
           "warm-up; transformers: LlamaForCausalLM, attn_implementation=%s, same weights and batch\n\n",
           o.threads, o.model, cfg.num_layers, (long long)cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
           (long long)cfg.vocab_size, o.batch, (long long)o.seq_len, SAMPLE_LEN, PROMPT_LEN, o.steps, o.warmup, o.attn);
    printf("| %-12s | %10s | %10s | %9s | %10s |\n", "side", "params", "ms/step", "tokens/s", "first loss");
    printf("|--------------|------------|------------|-----------|------------|\n");
    printf("| %-12s | %10lld | %10.1f | %9.1f | %10.5f |\n", "luthier", (long long)ours.params, 1e3 * ours.seconds,
           tokens / ours.seconds, ours.loss0);
    if (ref.why[0]) {
        printf("| %-12s | %10s | %10s | %9s | %10s |\n", "transformers", "-", "-", "-", "-");
        printf("\ntransformers: not measured: %s\n", ref.why);
        return 0;
    }
    printf("| %-12s | %10lld | %10.1f | %9.1f | %10.5f |\n", "transformers", (long long)ref.params, 1e3 * ref.seconds,
           tokens / ref.seconds, ref.loss0);
    printf("\nratio (transformers ms / luthier ms): %.2f (> 1: luthier is faster); %s\n", ref.seconds / ours.seconds,
           ref.versions);
    return 0;
}
