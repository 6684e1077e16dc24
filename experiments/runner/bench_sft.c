/* bench_sft.c - `luthier bench sft`: training throughput (tokens/s) of the step of the sft task
 * (task_sft.c, trainer.c) with random N(0, 0.02) weights: a row of --batch packed sequences of
 * --seq-len tokens with cu_seqlens and restarting positions, mean cross-entropy over the labelled
 * tokens, backward, global-norm clipping at 0.1 and AdamW (lr 5e-5, weight decay 0.01:
 * experiments/luth/demo-small.yaml). Beside it, transformers' AutoModelForCausalLM on the same
 * weights and the same batch (written to a temporary HF directory and safetensors file), measured
 * in the same run by scripts/bench_sft_reference.py, and the ratio. Both sides report the loss of
 * their first step, which must agree: same weights, same batch.
 *
 * On the CPU (the default): the demo SFT model's shape (SmolLM2-135M-Instruct, read from its GGUF
 * or any HF directory) in f32, transformers in f32 with the same thread count. --dtype f64 runs
 * the mixed-precision path of the GPU (f32 parameters, compute dtype cast once per forward) with
 * the CPU's other compute dtype, beside transformers in float64 on the same f32 weights.
 *
 * On the GPU (--device cuda): Qwen3-0.6B's shape, bf16 mixed precision by default (f32 master
 * weights and AdamW state, each weight cast to bf16 once per forward: decoder.h), B 8 x T 2048:
 * the "Qwen3-0.6B SFT step (transformers, bf16, AdamW, B 8 x T 2048)"; --shape qwen3-1.7b
 * takes Luth's other base model (hidden 2048, intermediate 6144). transformers runs
 * in bf16 weights (what that reference figure measures) with fused AdamW, on the weights we
 * saved in bf16, the packed row cut into --batch rows. Steps are timed to the GPU's completion;
 * MFU = 6 x params x tokens/s over the GPU's bf16 dense peak.
 *
 * The batch stands for prepare-chat's packing: each sequence holds samples of --sample-len
 * tokens (the last one shorter; on the CPU 180, the demo's FAQ pairs; on the GPU one sample per
 * sequence), the first 60 tokens of each (the prompt) unlabelled; token ids are a fixed
 * pseudo-random function of the position. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"
#include "core/optim.h"
#include "core/profile.h"
#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/decoder.h"
#include "models/gguf.h"
#include "models/hf_model.h"
#ifdef LUTHIER_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#define REFERENCE_SCRIPT "scripts/bench_sft_reference.py"
#define DEFAULT_MODEL "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define SHAPE_QWEN3_06B "qwen3-0.6b"
#define SHAPE_QWEN3_17B "qwen3-1.7b"
#define SHAPES SHAPE_QWEN3_06B " or " SHAPE_QWEN3_17B
#define MAX_STEPS 100
#define SAMPLE_LEN 180
#define PROMPT_LEN 60
#define LR 5e-5
#define CLIP 0.1
#define MAX_REFS 2
/* bf16 dense tensor-core peak of the H100 SXM and H200 (NVIDIA's datasheets, without sparsity). */
#define HOPPER_BF16_PEAK_TFLOPS 989.0

typedef struct sft_bench_opts {
    const char *model, *shape, *attn;
    lu_device device;
    lu_dtype dtype;
    int layers, batch, steps, warmup, threads;
    int64_t seq_len, sample_len;
    double peak_tflops; /* 0: from the GPU's name */
    bool reference;
    bool recompute;     /* --gradient-checkpointing: ours per layer (lu_recompute), transformers' too */
    int64_t loss_chunk; /* --loss-chunk N: ours only (transformers has no chunked loss) */
} sft_bench_opts;

typedef struct sft_result {
    double seconds, loss0; /* median seconds per step; loss of the first step */
    double mem_bytes;      /* GPU only: see report(); NAN when unknown */
    int64_t params;
    char attn[32];         /* reference only: attn_implementation */
    char why[512];         /* reference only: non-empty when not measured */
    char versions[160];
} sft_result;

/* One packed row [1, B * T] as task_sft.c's packed_loss builds it. */
typedef struct sft_batch {
    lu_tensor *ids, *labels, *pos, *cu;
} sft_batch;

/* Qwen/Qwen3-0.6B's config.json; Qwen3-1.7B differs in hidden (2048) and intermediate (6144) sizes
 * (../shared/reference/formats.md, 1.1). */
static void qwen3_shape(const char *name, lu_decoder_config *c)
{
    bool big = !strcmp(name, SHAPE_QWEN3_17B);
    *c = (lu_decoder_config){.vocab_size = 151936, .hidden_size = big ? 2048 : 1024,
                             .intermediate_size = big ? 6144 : 3072, .num_layers = 28,
                             .num_heads = 16, .num_kv_heads = 8, .head_dim = 128, .rope_theta = 1e6,
                             .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.02,
                             .max_position_embeddings = 40960, .bos_token_id = 151643, .n_eos = 1,
                             .eos_token_ids = {151645}, .dtype = LU_BF16};
}

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

static lu_status make_batch(int64_t B, int64_t T, int64_t sample_len, int64_t V, sft_batch *b)
{
    int64_t L = B * T, n_cu = 1;
    int32_t *ids = malloc((size_t)L * sizeof *ids), *labels = malloc((size_t)L * sizeof *labels);
    int32_t *pos = malloc((size_t)L * sizeof *pos), *cu = malloc((size_t)(L + 1) * sizeof *cu);
    lu_status s = ids && labels && pos && cu ? LU_OK : lu_errorf(LU_ERR_NOMEM, "bench sft: out of memory");
    cu[0] = 0;
    for (int64_t t = 0; !s && t < L; t++) {
        int64_t in_seq = t % T, start = t - in_seq + in_seq / sample_len * sample_len;
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

#ifdef LUTHIER_HAVE_CUDA
/* Bytes in use on the GPU, all processes (cudaMemGetInfo); NAN when unknown. */
static double gpu_used_bytes(void)
{
    size_t free_b = 0, total_b = 0;
    return cudaMemGetInfo(&free_b, &total_b) == cudaSuccess ? (double)(total_b - free_b) : NAN;
}
#endif

/* warmup + steps training steps as trainer.c runs them (on the GPU, each one ends when the GPU
 * has finished it); the median of the timed ones. The batch is on the parameters' device. */
static lu_status run_luthier(lu_decoder *m, const sft_batch *b, const sft_bench_opts *o, double mem0, sft_result *r)
{
    lu_optim_config oc;
    lu_optim_config_defaults(&oc, LU_OPTIM_ADAMW);
    oc.weight_decay = 0.01;
    lu_backend *be = lu_backend_get(o->device);
    lu_optim *opt = be ? lu_optim_new(m->params, &oc) : NULL;
    lu_arena *arena = lu_arena_new(o->device, 0);
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
        /* Off the CPU, the clipping's scratch comes from the step's arena. */
        double norm = s ? 0 : lu_clip_grad_norm(m->params, CLIP);
        lu_arena_activate(prev);
        if (!s && norm != norm) s = lu_errorf(LU_ERR_INVALID, "bench sft: gradient norm is NaN");
        if (!s) s = lu_optim_step(opt, LR);
        if (!s) s = be->synchronize();
        if (i >= 0) times[i] = lu_bench_now() - t0;
        else if (i == -1) lu_profile_reset(); /* LUTHIER_PROFILE: the table covers the timed steps */
    }
    /* Parameters, gradients, optimiser state and the arena, which keeps its blocks after a reset:
     * what the steps held at their peak, beside what mem0 (taken before the parameters) held. */
    r->mem_bytes = NAN;
#ifdef LUTHIER_HAVE_CUDA
    if (!s && o->device == LU_CUDA) r->mem_bytes = gpu_used_bytes() - mem0;
#else
    (void)mem0;
#endif
    lu_arena_free(arena);
    lu_optim_free(opt);
    if (s) return s;
    qsort(times, (size_t)o->steps, sizeof times[0], lu_bench_cmp_double);
    r->seconds = times[o->steps / 2];
    return LU_OK;
}

/* Runs the reference script on model_dir and batch_path for each attention implementation of
 * refs[0 .. n-1].attn; it prints one JSON line per implementation {"attn", "seconds_per_step",
 * "loss0", "params", "versions"[, "memory_bytes"]} or {"attn", "error"}, or one {"error"} for all.
 * Other lines are kept: the last one explains a failure. */
static void run_reference(const sft_bench_opts *o, const char *model_dir, const char *batch_path, sft_result *refs,
                          int n)
{
    for (int k = 0; k < n; k++) snprintf(refs[k].why, sizeof refs[k].why, "no result from %s", REFERENCE_SCRIPT);
    if (access(REFERENCE_SCRIPT, R_OK) != 0) {
        for (int k = 0; k < n; k++)
            snprintf(refs[k].why, sizeof refs[k].why, "%s not found (run from the repository root)", REFERENCE_SCRIPT);
        return;
    }
    char cmd[2 * PATH_MAX + 512];
    snprintf(cmd, sizeof cmd,
             "python3 %s --model '%s' --batch '%s' --threads %d --steps %d --warmup %d --attn %s --lr %g --clip %g "
             "--device %s --dtype %s --rows %d%s 2>&1",
             REFERENCE_SCRIPT, model_dir, batch_path, o->threads, o->steps, o->warmup, o->attn, LR, CLIP,
             lu_device_name(o->device), lu_dtype_name(o->dtype), o->device == LU_CPU ? 1 : o->batch,
             o->recompute ? " --gradient-checkpointing" : "");
    FILE *p = popen(cmd, "r");
    if (!p) {
        for (int k = 0; k < n; k++) snprintf(refs[k].why, sizeof refs[k].why, "cannot start python3");
        return;
    }
    char line[4096], last[256] = "";
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        cJSON *j = line[0] == '{' ? cJSON_Parse(line) : NULL;
        const cJSON *attn = cJSON_GetObjectItemCaseSensitive(j, "attn");
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(j, "seconds_per_step");
        const cJSON *loss = cJSON_GetObjectItemCaseSensitive(j, "loss0");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(j, "params");
        const cJSON *ver = cJSON_GetObjectItemCaseSensitive(j, "versions");
        const cJSON *mem = cJSON_GetObjectItemCaseSensitive(j, "memory_bytes");
        sft_result *r = NULL;
        for (int k = 0; k < n && cJSON_IsString(attn); k++)
            if (!strcmp(refs[k].attn, attn->valuestring)) r = &refs[k];
        if (cJSON_IsString(err)) {
            for (int k = 0; k < n; k++)
                if (!r || r == &refs[k]) snprintf(refs[k].why, sizeof refs[k].why, "%s", err->valuestring);
        } else if (r && cJSON_IsNumber(sec) && cJSON_IsNumber(loss) && cJSON_IsNumber(params) && sec->valuedouble > 0) {
            r->seconds = sec->valuedouble;
            r->loss0 = loss->valuedouble;
            r->params = (int64_t)params->valuedouble;
            r->mem_bytes = cJSON_IsNumber(mem) ? mem->valuedouble : NAN;
            if (cJSON_IsString(ver)) snprintf(r->versions, sizeof r->versions, "%s", ver->valuestring);
            r->why[0] = 0;
        } else if (line[0]) {
            snprintf(last, sizeof last, "%.255s", line);
        }
        cJSON_Delete(j);
    }
    int status = pclose(p), rc = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    for (int k = 0; k < n; k++) {
        if (rc == 0 || strncmp(refs[k].why, "no result", 9)) continue;
        if (rc == 127) snprintf(refs[k].why, sizeof refs[k].why, "python3 not found");
        else snprintf(refs[k].why, sizeof refs[k].why, "python3 failed (exit status %d): %.200s", rc, last);
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
    fprintf(f, "usage: luthier bench sft [--device cpu|cuda] [--dtype f32|bf16] [--model PATH | --shape NAME]\n"
               "                         [--layers N] [--seq-len T] [--batch B] [--sample-len S] [--steps N]\n"
               "                         [--warmup N] [--threads N] [--attn LIST] [--peak-tflops X] [--no-reference]\n"
               "                         [--gradient-checkpointing] [--loss-chunk N]\n"
               "  SFT training tokens/s (packed forward, masked cross-entropy, backward, clipping, AdamW) with\n"
               "  random weights, beside transformers on the same weights and batch (python3 " REFERENCE_SCRIPT "),\n"
               "  and the ratio.\n"
               "  --device D       cpu (default) or cuda (a GPU and a build with LUTHIER_CUDA)\n"
               "  --dtype T        compute dtype: f32 (cpu default); bf16 (cuda only, its default): bf16 weights\n"
               "                   and activations, f32 master weights and AdamW state; f64 (cpu only): the same\n"
               "                   mixed-precision path with f64 compute, transformers in float64\n"
               "  --model PATH     GGUF file or HF directory giving the shape (cpu default " DEFAULT_MODEL ")\n"
               "  --shape NAME     a built-in shape: " SHAPES " (cuda default " SHAPE_QWEN3_06B ")\n"
               "  --layers N       keep the first N layers (default: all)\n"
               "  --seq-len T      tokens per packed sequence (default 512; cuda 2048)\n"
               "  --batch B        packed sequences per step (default 1; cuda 8)\n"
               "  --sample-len S   tokens per sample inside a sequence (default %d; cuda: the sequence)\n"
               "  --steps N        timed steps, median reported (default 3)\n"
               "  --warmup N       untimed steps first (default 1)\n"
               "  --threads N      OpenMP, OpenBLAS and torch threads (default: OpenMP's maximum)\n"
               "  --attn LIST      transformers attention implementations, comma-separated, each measured:\n"
               "                   sdpa, eager, flash_attention_2 (default sdpa; cuda sdpa,flash_attention_2,\n"
               "                   the latter reported as not measured when flash_attn is not installed)\n"
               "  --peak-tflops X  the GPU's bf16 dense peak for MFU (default: %.0f on an H100 or H200, else no MFU)\n"
               "  --no-reference   skip transformers\n"
               "  --gradient-checkpointing  recompute each layer in backward (model.gradient_checkpointing), and\n"
               "                   transformers with gradient_checkpointing_enable()\n"
               "  --loss-chunk N   LM head and cross-entropy N tokens at a time (model.loss_chunk_tokens; ours only)\n",
            SAMPLE_LEN, HOPPER_BF16_PEAK_TFLOPS);
}

/* Splits the --attn list into refs[].attn; false (with a message) on an unknown name or too many. */
static bool parse_attn(const char *list, sft_result *refs, int *n)
{
    *n = 0;
    for (const char *a = list; *a;) {
        size_t len = strcspn(a, ",");
        bool known = (len == 4 && !strncmp(a, "sdpa", 4)) || (len == 5 && !strncmp(a, "eager", 5)) ||
                     (len == 17 && !strncmp(a, "flash_attention_2", 17));
        if (!known || *n == MAX_REFS) {
            fprintf(stderr, "luthier bench sft: --attn takes up to %d of sdpa, eager, flash_attention_2 separated by "
                            "commas, got '%s'\n", MAX_REFS, list);
            return false;
        }
        snprintf(refs[(*n)++].attn, sizeof refs->attn, "%.*s", (int)len, a);
        a += len + (a[len] == ',');
    }
    if (*n == 0) fprintf(stderr, "luthier bench sft: --attn needs at least one implementation\n");
    return *n > 0;
}

/* Whether o->device can run; says why not. */
static bool device_ready(const sft_bench_opts *o)
{
    if (o->device == LU_CPU) return true;
#ifdef LUTHIER_HAVE_CUDA
    if (lu_device_available(LU_CUDA)) return true;
    fprintf(stderr, "luthier bench sft: --device cuda: no usable CUDA GPU (%s)\n", lu_cuda_unavailable_reason());
#else
    fprintf(stderr, "luthier bench sft: --device cuda: luthier was built without the CUDA backend (LUTHIER_CUDA off)\n");
#endif
    return false;
}

/* The GPU's name in gpu, and its bf16 dense peak in FLOP/s from --peak-tflops or the name (0:
 * unknown). */
static double gpu_peak(const sft_bench_opts *o, char *gpu, size_t size)
{
    snprintf(gpu, size, "unknown GPU");
#ifdef LUTHIER_HAVE_CUDA
    int dev = 0;
    struct cudaDeviceProp prop;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
        snprintf(gpu, size, "%s (sm_%d%d, %d SMs)", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
#endif
    if (o->peak_tflops > 0) return o->peak_tflops * 1e12;
    return strstr(gpu, "H100") || strstr(gpu, "H200") ? HOPPER_BF16_PEAK_TFLOPS * 1e12 : 0;
}

/* The memory options of the run, when any is on (both tables' headers). */
static void print_recompute(const sft_bench_opts *o)
{
    if (o->recompute)
        printf("gradient checkpointing: luthier recomputes each layer in backward (lu_recompute), transformers\n"
               "with gradient_checkpointing_enable()\n");
    if (o->loss_chunk > 0)
        printf("luthier: final norm, LM head and cross-entropy %lld tokens at a time, recomputed in backward\n"
               "(transformers has no chunked loss)\n",
               (long long)o->loss_chunk);
}

static void report_cpu(const sft_bench_opts *o, const lu_decoder_config *cfg, const sft_result *ours,
                       const sft_result *ref)
{
    double tokens = (double)o->batch * (double)o->seq_len;
    printf("luthier bench sft: %d threads (OpenMP, OpenBLAS, torch); %s shape, %d layers, hidden %lld, %d/%d heads,\n"
           "vocab %lld, %s, random N(0, 0.02) weights; batch %d x %lld packed tokens (samples of %lld, first %d\n"
           "unlabelled); step = forward, cross-entropy, backward, clip 0.1, AdamW; median of %d steps after %d\n"
           "warm-up; transformers: AutoModelForCausalLM, attn_implementation=%s, same weights and batch\n\n",
           o->threads, o->shape ? o->shape : o->model, cfg->num_layers, (long long)cfg->hidden_size, cfg->num_heads,
           cfg->num_kv_heads, (long long)cfg->vocab_size,
           o->dtype == LU_F32 ? "f32" : "f64 compute from f32 parameters (transformers in float64)", o->batch,
           (long long)o->seq_len,
           (long long)o->sample_len, PROMPT_LEN, o->steps, o->warmup, ref->attn);
    print_recompute(o);
    printf("| %-12s | %10s | %10s | %9s | %10s |\n", "side", "params", "ms/step", "tokens/s", "first loss");
    printf("|--------------|------------|------------|-----------|------------|\n");
    printf("| %-12s | %10lld | %10.1f | %9.1f | %10.5f |\n", "luthier", (long long)ours->params, 1e3 * ours->seconds,
           tokens / ours->seconds, ours->loss0);
    if (ref->why[0]) {
        printf("| %-12s | %10s | %10s | %9s | %10s |\n", "transformers", "-", "-", "-", "-");
        printf("\ntransformers: not measured: %s\n", ref->why);
        return;
    }
    printf("| %-12s | %10lld | %10.1f | %9.1f | %10.5f |\n", "transformers", (long long)ref->params,
           1e3 * ref->seconds, tokens / ref->seconds, ref->loss0);
    printf("\nratio (transformers ms / luthier ms): %.2f (> 1: luthier is faster); %s\n", ref->seconds / ours->seconds,
           ref->versions);
}

/* A row of the GPU table: side, params, ms/step, tokens/s, MFU, GPU GiB, first loss. */
#define GPU_ROW "| %-30s | %10s | %8s | %9s | %6s | %7s | %10s |\n"

static void gpu_row(const char *side, const sft_result *r, double tokens, double peak)
{
    char params[24], ms[16], tps[16], mfu[16] = "-", mem[16] = "-", loss[16];
    snprintf(params, sizeof params, "%lld", (long long)r->params);
    snprintf(ms, sizeof ms, "%.1f", 1e3 * r->seconds);
    snprintf(tps, sizeof tps, "%.0f", tokens / r->seconds);
    if (peak > 0) snprintf(mfu, sizeof mfu, "%.1f%%", 100.0 * 6.0 * (double)r->params * tokens / r->seconds / peak);
    if (r->mem_bytes == r->mem_bytes) snprintf(mem, sizeof mem, "%.1f", r->mem_bytes / (1024.0 * 1024.0 * 1024.0));
    snprintf(loss, sizeof loss, "%.5f", r->loss0);
    printf(GPU_ROW, side, params, ms, tps, mfu, mem, loss);
}

static void report_gpu(const sft_bench_opts *o, const lu_decoder_config *cfg, const sft_result *ours,
                       const sft_result *refs, int n_refs)
{
    char gpu[320];
    double peak = gpu_peak(o, gpu, sizeof gpu), tokens = (double)o->batch * (double)o->seq_len;
    const char *dt = lu_dtype_name(o->dtype);
    printf("luthier bench sft: %s\n"
           "%s shape: %d layers, hidden %lld, %d/%d heads, vocab %lld; random N(0, 0.02) weights;\n"
           "luthier: %s compute%s; transformers: AutoModelForCausalLM with the same weights in %s,\n"
           "fused AdamW where torch has it; batch %d x %lld packed tokens (samples of %lld, first %d unlabelled;\n"
           "transformers: %d rows of %lld holding the same samples); step = forward, cross-entropy, backward,\n"
           "clip 0.1, AdamW (lr 5e-5, wd 0.01); median of %d steps after %d warm-up, each timed to the GPU's\n"
           "completion\n",
           gpu, o->shape ? o->shape : o->model, cfg->num_layers, (long long)cfg->hidden_size, cfg->num_heads,
           cfg->num_kv_heads, (long long)cfg->vocab_size, dt,
           o->dtype == LU_F32 ? "" : ", f32 master weights and AdamW state", dt, o->batch, (long long)o->seq_len,
           (long long)(o->sample_len < o->seq_len ? o->sample_len : o->seq_len), PROMPT_LEN, o->batch,
           (long long)o->seq_len, o->steps, o->warmup);
    print_recompute(o);
    if (peak > 0) printf("MFU = 6 x params x tokens/s / %.0f TFLOP/s (the bf16 dense peak assumed)\n", peak / 1e12);
    else printf("MFU: no bf16 peak known for this GPU (--peak-tflops X gives one)\n");
    printf("\n" GPU_ROW, "side", "params", "ms/step", "tokens/s", "MFU", "GPU GiB", "first loss");
    printf("|--------------------------------|------------|----------|-----------|--------|---------|------------|\n");
    gpu_row("luthier", ours, tokens, peak);
    char side[48];
    for (int k = 0; k < n_refs; k++) {
        snprintf(side, sizeof side, "transformers %s", refs[k].attn);
        if (!refs[k].why[0]) gpu_row(side, &refs[k], tokens, peak);
        else printf(GPU_ROW, side, "-", "-", "-", "-", "-", "-");
    }
    printf("\nGPU GiB: luthier, device memory in use after the steps less before the parameters (cudaMemGetInfo:\n"
           "parameters, gradients, AdamW state, the step arena at its peak, library workspaces); transformers,\n"
           "torch.cuda.max_memory_reserved. First losses: same weights and batch.\n");
    for (int k = 0; k < n_refs; k++) {
        if (refs[k].why[0]) printf("transformers %s: not measured: %s\n", refs[k].attn, refs[k].why);
        else
            printf("ratio (transformers %s ms / luthier ms): %.2f (> 1: luthier is faster); %s\n", refs[k].attn,
                   refs[k].seconds / ours->seconds, refs[k].versions);
    }
}

/* Copies the host batch to dev (retains it on the CPU). */
static lu_status batch_to(const sft_batch *h, lu_device dev, sft_batch *d)
{
    d->ids = lu_tensor_convert(h->ids, h->ids->dtype, dev);
    d->labels = lu_tensor_convert(h->labels, h->labels->dtype, dev);
    d->pos = lu_tensor_convert(h->pos, h->pos->dtype, dev);
    d->cu = lu_tensor_convert(h->cu, h->cu->dtype, dev);
    return d->ids && d->labels && d->pos && d->cu ? LU_OK : lu_error_code();
}

int lu_bench_sft(int argc, char **argv)
{
    sft_bench_opts o = {.device = LU_CPU, .dtype = LU_DTYPE_COUNT, .layers = 0, .steps = 3, .warmup = 1,
                        .threads = omp_get_max_threads(), .reference = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-reference")) {
            o.reference = false;
        } else if (!strcmp(a, "--gradient-checkpointing")) {
            o.recompute = true;
        } else if (!strcmp(a, "--loss-chunk")) {
            if (!lu_bench_int_arg("sft", a, v, 1, 1 << 24, &x)) return 2;
            o.loss_chunk = x;
            i++;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--shape")) {
            if (!v) return fprintf(stderr, "luthier bench sft: %s needs a value\n", a), 2;
            if (!strcmp(a, "--shape") && strcmp(v, SHAPE_QWEN3_06B) && strcmp(v, SHAPE_QWEN3_17B))
                return fprintf(stderr, "luthier bench sft: unknown --shape '%s' (known: " SHAPES ")\n", v), 2;
            *(!strcmp(a, "--model") ? &o.model : &o.shape) = v;
            i++;
        } else if (!strcmp(a, "--device")) {
            if (!v || (strcmp(v, "cpu") && strcmp(v, "cuda")))
                return fprintf(stderr, "luthier bench sft: --device is cpu or cuda, got '%s'\n", v ? v : ""), 2;
            o.device = strcmp(v, "cpu") ? LU_CUDA : LU_CPU;
            i++;
        } else if (!strcmp(a, "--dtype")) {
            if (!v || (strcmp(v, "f32") && strcmp(v, "bf16") && strcmp(v, "f64")))
                return fprintf(stderr, "luthier bench sft: --dtype is f32, bf16 or f64, got '%s'\n", v ? v : ""), 2;
            o.dtype = !strcmp(v, "f32") ? LU_F32 : !strcmp(v, "bf16") ? LU_BF16 : LU_F64;
            i++;
        } else if (!strcmp(a, "--attn")) {
            if (!v) return fprintf(stderr, "luthier bench sft: --attn needs a list\n"), 2;
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
        } else if (!strcmp(a, "--seq-len") || !strcmp(a, "--sample-len")) {
            if (!lu_bench_int_arg("sft", a, v, 2, 1 << 20, &x)) return 2;
            *(!strcmp(a, "--seq-len") ? &o.seq_len : &o.sample_len) = x;
            i++;
        } else if (!strcmp(a, "--peak-tflops")) {
            char *end = NULL;
            o.peak_tflops = v ? strtod(v, &end) : 0;
            if (!v || end == v || *end || !(o.peak_tflops > 0))
                return fprintf(stderr, "luthier bench sft: --peak-tflops needs a positive number, got '%s'\n", v ? v : ""), 2;
            i++;
        } else {
            fprintf(stderr, "luthier bench sft: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    /* Defaults by device: the CPU bench as it always was, the GPU one as the issue states it. */
    bool gpu = o.device != LU_CPU;
    if (o.model && o.shape) return fprintf(stderr, "luthier bench sft: --model and --shape exclude each other\n"), 2;
    if (!o.model && !o.shape) *(gpu ? &o.shape : &o.model) = gpu ? SHAPE_QWEN3_06B : DEFAULT_MODEL;
    if (o.dtype == LU_DTYPE_COUNT) o.dtype = gpu ? LU_BF16 : LU_F32;
    if (!o.batch) o.batch = gpu ? 8 : 1;
    if (!o.seq_len) o.seq_len = gpu ? 2048 : 512;
    if (!o.sample_len) o.sample_len = gpu ? o.seq_len : SAMPLE_LEN;
    if (!o.attn) o.attn = gpu ? "sdpa,flash_attention_2" : "sdpa";
    int64_t sample = o.sample_len < o.seq_len ? o.sample_len : o.seq_len;
    if (sample <= PROMPT_LEN)
        return fprintf(stderr, "luthier bench sft: samples of %lld tokens leave none labelled (the first %d of each "
                               "are the prompt): give --seq-len and --sample-len above %d\n",
                       (long long)sample, PROMPT_LEN, PROMPT_LEN), 2;
    if (o.dtype == LU_BF16 && !gpu)
        return fprintf(stderr, "luthier bench sft: --dtype bf16 needs --device cuda (the cpu backend computes in f32 "
                               "and f64; it stores bf16 but has no bf16 kernels)\n"), 2;
    if (o.dtype == LU_F64 && gpu)
        return fprintf(stderr, "luthier bench sft: --dtype f64 needs --device cpu (the cuda backend has no f64 "
                               "kernels)\n"), 2;
    sft_result ours = {0}, refs[MAX_REFS] = {{0}};
    int n_refs = 0;
    if (!parse_attn(o.attn, refs, &n_refs)) return 2;
    if (!gpu && n_refs > 1) return fprintf(stderr, "luthier bench sft: on the cpu --attn names one implementation\n"), 2;
    if (!device_ready(&o)) return 1;
    omp_set_num_threads(o.threads);
    openblas_set_num_threads(o.threads);
    lu_decoder_config cfg;
    if (o.shape) {
        qwen3_shape(o.shape, &cfg);
    } else if (read_shape(o.model, &cfg)) {
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
    double mem0 = NAN;
#ifdef LUTHIER_HAVE_CUDA
    if (gpu) mem0 = gpu_used_bytes();
#endif
    lu_decoder m;
    sft_batch b = {0}, db = {0};
    lu_params *params = lu_params_new(o.device);
    lu_status s = params ? lu_decoder_declare(&m, &cfg, params) : lu_error_code();
    if (!s) s = lu_params_finalize(params);
    if (!s) s = lu_decoder_init(&m, 1);
    m.compute_dtype = o.dtype;
    m.recompute_layers = o.recompute;
    m.loss_chunk = o.loss_chunk;
    if (!s) s = make_batch(o.batch, o.seq_len, o.sample_len, cfg.vocab_size, &b);
    if (!s) s = batch_to(&b, o.device, &db);
    for (int k = 0; k < n_refs; k++) snprintf(refs[k].why, sizeof refs[k].why, "not requested (--no-reference)");
    if (o.reference && !have_tmp)
        for (int k = 0; k < n_refs; k++) snprintf(refs[k].why, sizeof refs[k].why, "cannot create a temporary directory in /tmp");
    /* The reference gets the initial weights (in bf16 for a bf16 run, else the exact f32 ones) and
     * the batch before our steps update them. */
    if (!s && have_tmp) s = lu_hf_save(model_dir, &m, o.dtype == LU_BF16 ? LU_BF16 : LU_F32, 0);
    if (!s && have_tmp) {
        const char *names[] = {"input_ids", "labels", "position_ids", "cu_seqlens"};
        lu_tensor *ts[] = {b.ids, b.labels, b.pos, b.cu};
        s = lu_st_save(batch_path, 4, names, ts, 0, NULL, NULL);
    }
    if (!s) {
        ours.params = lu_params_count(params, true);
        s = run_luthier(&m, &db, &o, mem0, &ours);
    }
    lu_params_free(params);
    free_batch(&db);
    free_batch(&b);
    if (!s && have_tmp) run_reference(&o, model_dir, batch_path, refs, n_refs);
    if (have_tmp) remove_tmp(tmp);
    if (s) {
        fprintf(stderr, "luthier bench sft: %s\n", lu_error_message());
        return 1;
    }
    if (gpu) report_gpu(&o, &cfg, &ours, refs, n_refs);
    else report_cpu(&o, &cfg, &ours, &refs[0]);
    return 0;
}
