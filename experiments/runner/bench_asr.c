/* bench_asr.c - `luthier bench asr`: CPU forward time and real-time factor of one utterance
 * (B = 1, 80 features at 100 Hz, 10 s by default, random values) through the Zipformer-small
 * encoder (asr.md 9.5, random init) and the 31.5M EE-Conformer (asr.md 2.1, all 6 exits),
 * beside PyTorch eager on the same models, measured in the same run by
 * scripts/bench_asr_reference.py (a python3 child with the same thread count), and the ratio.
 * Where python3, torch or the icefall Zipformer files are missing, the table says why. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "core/arena.h"
#include "core/backend.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/optim.h"
#include "core/profile.h"
#include "core/rng.h"
#include "experiments/runner/cli.h"
#include "models/conformer.h"
#include "models/zipformer.h"

#ifdef LUTHIER_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#define REFERENCE_SCRIPT "scripts/bench_asr_reference.py"
#define MAX_RUNS 100

typedef struct asr_bench_opts {
    double seconds;
    int runs, threads;
    bool reference;
    const char *icefall;
    bool train;    /* --train: training steps of the small Splitformer instead of forwards */
    int batch;     /* --train: utterances per step */
    lu_device device; /* --train: where the step runs */
} asr_bench_opts;

/* One model's figures: ours, and PyTorch's or the reason there are none. */
typedef struct asr_result {
    const char *model;     /* name shared with the reference script's JSON lines */
    int64_t params, ref_params;
    double seconds, ref_seconds;
    char why[256];         /* empty when ref_seconds is a measurement */
} asr_result;

/* Parameters as PyTorch's model.parameters() counts them: every tensor of the store except the
 * BatchNorm running statistics. The store's other buffer, Zipformer's per-layer bypass_scale
 * that icefall never reads (zipformer.h), is an nn.Parameter in icefall. */
static int64_t torch_param_count(const lu_params *p)
{
    int64_t n = 0;
    for (int i = 0; i < p->n; i++)
        if (p->items[i].trainable || !strstr(p->items[i].name, "running_")) n += lu_tensor_numel(p->items[i].t);
    return n;
}

typedef lu_status (*forward_fn)(void *model, lu_tensor *feats, lu_tensor *lengths);

typedef struct zipformer_model {
    lu_zipformer_config cfg;
    lu_params *params;
} zipformer_model;

static lu_status zipformer_forward(void *model, lu_tensor *feats, lu_tensor *lengths)
{
    zipformer_model *m = model;
    return lu_zipformer_forward(m->params, &m->cfg, feats, lengths, NULL, NULL) ? LU_OK : lu_error_code();
}

static lu_status conformer_forward(void *model, lu_tensor *feats, lu_tensor *lengths)
{
    lu_ee_conformer *m = model;
    lu_tensor *exits[LU_CONFORMER_MAX_EXITS];
    lu_conformer_run run = {.training = false};
    return lu_ee_conformer_forward(m, feats, lengths, &run, exits, NULL);
}

/* Median seconds of opts->runs forward passes after one warm-up, without gradients, the arena
 * reset before each pass. */
static lu_status time_forward(forward_fn fn, void *model, const asr_bench_opts *o, double *median)
{
    int64_t frames = (int64_t)llround(o->seconds * 100.0), features = 80;
    lu_tensor *feats = lu_tensor_empty(LU_F32, LU_SHAPE(1, frames, features), LU_CPU);
    lu_tensor *lengths = lu_tensor_from_host(LU_I64, LU_SHAPE(1), LU_CPU, &frames);
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    lu_status s = feats && lengths && arena ? lu_tensor_rand_uniform(feats, -1, 1, 7, 0) : lu_error_code();
    double times[MAX_RUNS];
    bool grad = lu_grad_set_enabled(false);
    lu_arena *prev = lu_arena_activate(arena);
    for (int i = -1; i < o->runs && !s; i++) {
        lu_arena_reset(arena);
        double t0 = lu_bench_now();
        s = fn(model, feats, lengths);
        if (i >= 0) times[i] = lu_bench_now() - t0;
    }
    lu_arena_activate(prev);
    lu_grad_set_enabled(grad);
    lu_arena_free(arena);
    lu_tensor_release(lengths);
    lu_tensor_release(feats);
    if (s) return s;
    qsort(times, (size_t)o->runs, sizeof times[0], lu_bench_cmp_double);
    *median = times[o->runs / 2];
    return LU_OK;
}

static lu_status bench_zipformer(const asr_bench_opts *o, asr_result *r)
{
    zipformer_model m = {lu_zipformer_small_config(), lu_params_new(LU_CPU)};
    lu_status s = m.params ? LU_OK : lu_error_code();
    if (!s) s = lu_zipformer_declare(m.params, &m.cfg);
    if (!s) s = lu_params_finalize(m.params);
    if (!s) s = lu_zipformer_init(m.params, &m.cfg, 1);
    if (!s) {
        r->params = torch_param_count(m.params);
        s = time_forward(zipformer_forward, &m, o, &r->seconds);
    }
    lu_params_free(m.params);
    return s;
}

static lu_status bench_conformer(const asr_bench_opts *o, asr_result *r)
{
    lu_ee_conformer_config c = lu_ee_conformer_paper_config(false);
    lu_ee_conformer m;
    lu_params *p = lu_params_new(LU_CPU);
    lu_status s = p ? LU_OK : lu_error_code();
    if (!s) s = lu_ee_conformer_declare(&m, &c, p);
    if (!s) s = lu_params_finalize(p);
    if (!s) s = lu_ee_conformer_init(&m, 1);
    if (!s) {
        r->params = torch_param_count(p);
        s = time_forward(conformer_forward, &m, o, &r->seconds);
    }
    lu_params_free(p);
    return s;
}

/* The small Splitformer of experiments/asr/splitformer-small.yaml: d 144, 4 heads, FFN 576,
 * kernel 15, 6 exits x 1 layer, parallel branches at the first and last exits, 32 characters. */
static lu_ee_conformer_config small_splitformer(void)
{
    lu_ee_conformer_config c = lu_ee_conformer_paper_config(true);
    c.block.input_dim = 144;
    c.block.num_heads = 4;
    c.block.ffn_dim = 576;
    c.block.num_layers = 1;
    c.block.depthwise_conv_kernel_size = 15;
    c.vocab_size = 32;
    return c;
}

/* The model's parameters on dev: initialised on the CPU (lu_ee_conformer_init writes host
 * memory), then copied buffer by buffer into the same declarations on dev. */
static lu_status split_params_on(lu_device dev, const lu_ee_conformer_config *c, lu_ee_conformer *m, lu_params **out)
{
    lu_ee_conformer host;
    lu_params *h = lu_params_new(LU_CPU), *p = dev == LU_CPU ? h : lu_params_new(dev);
    lu_status s = h && p ? LU_OK : lu_error_code();
    if (!s) s = lu_ee_conformer_declare(&host, c, h);
    if (!s) s = lu_params_finalize(h);
    if (!s) s = lu_ee_conformer_init(&host, 1);
    if (!s && p != h) s = lu_ee_conformer_declare(m, c, p);
    if (!s && p != h) s = lu_params_finalize(p);
    for (int d = 0; d < LU_DTYPE_COUNT && !s && p != h; d++)
        if (h->flat[d]) s = lu_tensor_copy(p->flat[d], h->flat[d]);
    if (p == h) *m = host;
    if (p != h) lu_params_free(h);
    if (s) {
        lu_params_free(p);
        return s;
    }
    *out = p;
    return LU_OK;
}

/* A host tensor's copy on dev (the tensor itself on the CPU); the host one is released. */
static lu_tensor *moved_to(lu_tensor *t, lu_device dev)
{
    if (!t || dev == LU_CPU) return t;
    lu_tensor *d = lu_tensor_convert(t, t->dtype, dev);
    lu_tensor_release(t);
    return d;
}

/* Median seconds of one training step (forward with dropout, sum of the exits' CTC losses,
 * backward, AdamW) on `batch` random utterances with random character targets, on o->device
 * (the timing waits for the device: the step ends when its last kernel has). */
static lu_status bench_split_train(const asr_bench_opts *o, asr_result *r)
{
    lu_ee_conformer_config c = small_splitformer();
    lu_ee_conformer m;
    lu_params *p = NULL;
    lu_optim *opt = NULL;
    int64_t B = o->batch, T = (int64_t)llround(o->seconds * 100.0), S = (int64_t)llround(o->seconds * 10.0);
    lu_tensor *feats = NULL, *lengths = NULL, *targets = NULL, *tlens = NULL;
    lu_backend *be = lu_backend_get(o->device);
    lu_arena *arena = be ? lu_arena_new(o->device, 0) : NULL;
    lu_status s = arena ? LU_OK : lu_error_code();
    if (!s) s = split_params_on(o->device, &c, &m, &p);
    if (!s) {
        lu_optim_config oc;
        lu_optim_config_defaults(&oc, LU_OPTIM_ADAMW);
        if (!(opt = lu_optim_new(p, &oc))) s = lu_error_code();
    }
    if (!s) {
        feats = lu_tensor_empty(LU_F32, LU_SHAPE(B, T, 80), LU_CPU);
        lengths = lu_tensor_full(LU_I64, LU_SHAPE(B), LU_CPU, (double)T);
        targets = lu_tensor_empty(LU_I64, LU_SHAPE(B, S), LU_CPU);
        tlens = lu_tensor_full(LU_I64, LU_SHAPE(B), LU_CPU, (double)S);
        if (!feats || !lengths || !targets || !tlens) s = lu_error_code();
    }
    if (!s) s = lu_tensor_rand_uniform(feats, -1, 1, 7, 0);
    if (!s) {
        int64_t *t = lu_tensor_data(targets);
        for (int64_t i = 0; i < B * S; i++) t[i] = 1 + (int64_t)(lu_rng_uniform(7, 0, 1, (uint64_t)i) * 31) % 31;
        r->params = torch_param_count(p);
        feats = moved_to(feats, o->device);
        lengths = moved_to(lengths, o->device);
        targets = moved_to(targets, o->device);
        tlens = moved_to(tlens, o->device);
        if (!feats || !lengths || !targets || !tlens) s = lu_error_code();
    }
    double times[MAX_RUNS];
    for (int i = -1; i < o->runs && !s; i++) {
        lu_arena_reset(arena);
        lu_arena *prev = lu_arena_activate(arena);
        double t0 = lu_bench_now();
        lu_conformer_run run = {.training = true, .seed = 1, .step = (uint64_t)(i + 1)};
        s = lu_params_zero_grad(p);
        lu_tensor *loss = s ? NULL : lu_ee_conformer_loss(&m, feats, lengths, targets, tlens, &run);
        if (!s) s = loss ? lu_backward(loss) : lu_error_code();
        lu_arena_activate(prev);
        if (!s) s = lu_optim_step(opt, 1e-3);
        if (!s && be->synchronize) s = be->synchronize();
        if (i >= 0) times[i] = lu_bench_now() - t0;
        else lu_profile_reset(); /* LUTHIER_PROFILE: the table covers the timed steps */
    }
    lu_tensor_release(feats);
    lu_tensor_release(lengths);
    lu_tensor_release(targets);
    lu_tensor_release(tlens);
    lu_arena_free(arena);
    lu_optim_free(opt);
    lu_params_free(p);
    if (s) return s;
    qsort(times, (size_t)o->runs, sizeof times[0], lu_bench_cmp_double);
    r->seconds = times[o->runs / 2];
    return LU_OK;
}

/* Runs the reference script and fills ref_params/ref_seconds, or why, for each model. Lines
 * that are not JSON (warnings, a traceback) are kept: the last one explains a failure. */
static void run_reference(const asr_bench_opts *o, asr_result *r, int n)
{
    FILE *script = fopen(REFERENCE_SCRIPT, "r");
    if (!script) {
        for (int k = 0; k < n; k++)
            snprintf(r[k].why, sizeof r[k].why, "%s not found (run from the repository root)", REFERENCE_SCRIPT);
        return;
    }
    fclose(script);
    char cmd[1536];
    int len = snprintf(cmd, sizeof cmd, "python3 %s --seconds %g --threads %d --runs %d", REFERENCE_SCRIPT, o->seconds,
                       o->threads, o->runs);
    if (o->icefall) len += snprintf(cmd + len, sizeof cmd - (size_t)len, " --icefall '%s'", o->icefall);
    if (o->train) len += snprintf(cmd + len, sizeof cmd - (size_t)len, " --train --batch %d --device %s", o->batch,
                                  lu_device_name(o->device));
    snprintf(cmd + len, sizeof cmd - (size_t)len, " 2>&1");
    for (int k = 0; k < n; k++) snprintf(r[k].why, sizeof r[k].why, "no result from %s", REFERENCE_SCRIPT);
    FILE *p = popen(cmd, "r");
    if (!p) {
        for (int k = 0; k < n; k++) snprintf(r[k].why, sizeof r[k].why, "cannot start python3");
        return;
    }
    char line[4096], last[256] = "";
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        cJSON *j = line[0] == '{' ? cJSON_Parse(line) : NULL;
        const cJSON *model = j ? cJSON_GetObjectItemCaseSensitive(j, "model") : NULL;
        if (!cJSON_IsString(model)) {
            if (line[0]) snprintf(last, sizeof last, "%.255s", line);
            cJSON_Delete(j);
            continue;
        }
        for (int k = 0; k < n; k++) {
            if (strcmp(model->valuestring, r[k].model)) continue;
            const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
            const cJSON *params = cJSON_GetObjectItemCaseSensitive(j, "params");
            const cJSON *sec = cJSON_GetObjectItemCaseSensitive(j, o->train ? "seconds_per_step" : "seconds_per_forward");
            if (cJSON_IsString(err)) {
                snprintf(r[k].why, sizeof r[k].why, "%s", err->valuestring);
            } else if (cJSON_IsNumber(params) && cJSON_IsNumber(sec) && sec->valuedouble > 0) {
                r[k].ref_params = (int64_t)params->valuedouble;
                r[k].ref_seconds = sec->valuedouble;
                r[k].why[0] = 0;
            }
        }
        cJSON_Delete(j);
    }
    int status = pclose(p), rc = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    /* sh exits with 127 when it cannot find the command. */
    for (int k = 0; k < n && rc != 0; k++) {
        if (strncmp(r[k].why, "no result", 9)) continue;
        if (rc == 127) snprintf(r[k].why, sizeof r[k].why, "python3 not found");
        else snprintf(r[k].why, sizeof r[k].why, "python3 failed (exit status %d): %.180s", rc, last);
    }
}

/* The first "model name" of /proc/cpuinfo, or "unknown CPU" where it has none (e.g. on ARM). */
static void cpu_model(char *out, size_t size)
{
    snprintf(out, size, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon || strncmp(line, "model name", 10)) continue;
        colon += strspn(colon + 1, " \t") + 1;
        colon[strcspn(colon, "\n")] = 0;
        snprintf(out, size, "%s", colon);
        break;
    }
    fclose(f);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: luthier bench asr [--seconds S] [--runs N] [--threads N] [--no-reference] [--icefall DIR]\n"
               "       luthier bench asr --train [--batch B] [--device cpu|cuda] [--seconds S] [--runs N] [--threads N]\n"
               "                 [--no-reference]\n"
               "  CPU forward time (B = 1, random 80-dim features at 100 Hz) and real-time factor of the\n"
               "  Zipformer-small encoder and the 31.5M EE-Conformer (all 6 exits), beside PyTorch eager on\n"
               "  the same models (python3 " REFERENCE_SCRIPT ") and the ratio.\n"
               "  --seconds S     utterance length (default 10)\n"
               "  --runs N        timed forward passes after one warm-up; the median is reported (default 5)\n"
               "  --threads N     OpenMP, OpenBLAS and torch threads (default: OpenMP's maximum)\n"
               "  --no-reference  skip PyTorch\n"
               "  --icefall DIR   icefall egs/librispeech/ASR/zipformer for the Zipformer reference (default:\n"
               "                  data/zipformer_ref/ from scripts/fetch_zipformer_reference.sh)\n"
               "  --train         training throughput (seconds of audio per second) of the small Splitformer\n"
               "                  (experiments/asr/splitformer-small.yaml): forward with dropout, sum of the 6\n"
               "                  exits' CTC losses, backward, AdamW; PyTorch runs the same model definition\n"
               "  --batch B       --train: utterances of --seconds each per step (default 8)\n"
               "  --device D      --train: cpu (default) or cuda; PyTorch then trains on the same GPU\n"
               "  With LUTHIER_PROFILE=1 in the environment, --train also prints the time per op (forward and\n"
               "  backward) of its timed steps, to stderr.\n");
}

static bool parse_int(const char *flag, const char *v, long lo, long hi, int *out)
{
    long long x;
    if (!lu_bench_int_arg("asr", flag, v, lo, hi, &x)) return false;
    *out = (int)x;
    return true;
}

static int report_train(const asr_bench_opts *o, const char *cpu)
{
    asr_result r = {.model = "splitformer-small-train"};
    if (bench_split_train(o, &r)) {
        fprintf(stderr, "luthier bench asr: %s\n", lu_error_message());
        return 1;
    }
    snprintf(r.why, sizeof r.why, "not requested (--no-reference)");
    if (o->reference) run_reference(o, &r, 1);
    double audio = o->batch * o->seconds;
    char where[400];
    if (o->device == LU_CPU) {
        snprintf(where, sizeof where, "%s, %d threads (OpenMP, OpenBLAS, torch)", cpu, o->threads);
    } else {
        char gpu[320];
        lu_bench_gpu_name(gpu, sizeof gpu);
        snprintf(where, sizeof where, "%s (both sides on the GPU)", gpu);
    }
    printf("luthier bench asr --train: %s; small Splitformer, batch %d x %g s,\n"
           "f32 training step (dropout, 6 CTC losses, backward, AdamW), median of %d steps after a warm-up\n\n",
           where, o->batch, o->seconds, o->runs);
    printf("| %-23s | %-19s | %9s | %10s | %12s | %12s | %6s |\n", "model", "params (ours/torch)", "ours ms",
           "PyTorch ms", "ours audio/s", "torch audio/s", "ratio");
    printf("|-------------------------|---------------------|-----------|------------|--------------|--------------|--------|\n");
    if (r.why[0])
        printf("| %-23s | %9lld / %-7s | %9.1f | %10s | %12.1f | %12s | %6s |\n", r.model, (long long)r.params, "-",
               1e3 * r.seconds, "-", audio / r.seconds, "-", "-");
    else
        printf("| %-23s | %9lld / %-7lld | %9.1f | %10.1f | %12.1f | %12.1f | %6.2f |\n", r.model, (long long)r.params,
               (long long)r.ref_params, 1e3 * r.seconds, 1e3 * r.ref_seconds, audio / r.seconds, audio / r.ref_seconds,
               r.ref_seconds / r.seconds);
    printf("\naudio/s = seconds of audio trained per second; ratio = PyTorch time / ours (> 1: luthier is faster).\n");
    if (r.why[0]) printf("PyTorch %s: not measured: %s\n", r.model, r.why);
    return 0;
}

int lu_bench_asr(int argc, char **argv)
{
    asr_bench_opts o = {.seconds = 10, .runs = 5, .threads = omp_get_max_threads(), .reference = true, .batch = 8};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--train")) {
            o.train = true;
        } else if (!strcmp(a, "--batch")) {
            if (!parse_int(a, v, 1, 256, &o.batch)) return 2;
            i++;
        } else if (!strcmp(a, "--device")) {
            if (!v || (strcmp(v, "cpu") && strcmp(v, "cuda"))) {
                fprintf(stderr, "luthier bench asr: --device needs cpu or cuda, got '%s'\n", v ? v : "");
                return 2;
            }
            o.device = strcmp(v, "cpu") ? LU_CUDA : LU_CPU;
            i++;
        } else if (!strcmp(a, "--no-reference")) {
            o.reference = false;
        } else if (!strcmp(a, "--seconds")) {
            char *end;
            o.seconds = v ? strtod(v, &end) : 0;
            /* Zipformer needs (T - 7) // 2 >= 1 frames, the EE-Conformer at most max_len 2000
             * frames after its x4 front end. */
            if (!v || *end || !(o.seconds >= 0.1 && o.seconds <= 80)) {
                fprintf(stderr, "luthier bench asr: --seconds needs a number in [0.1, 80], got '%s'\n", v ? v : "");
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--runs")) {
            if (!parse_int(a, v, 1, MAX_RUNS, &o.runs)) return 2;
            i++;
        } else if (!strcmp(a, "--threads")) {
            if (!parse_int(a, v, 1, 1024, &o.threads)) return 2;
            i++;
        } else if (!strcmp(a, "--icefall")) {
            if (!v || strchr(v, '\'')) {
                fprintf(stderr, "luthier bench asr: --icefall needs a directory (without single quotes)\n");
                return 2;
            }
            o.icefall = v;
            i++;
        } else {
            fprintf(stderr, "luthier bench asr: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (o.device != LU_CPU && !o.train) {
        fprintf(stderr, "luthier bench asr: --device cuda needs --train (the forward benchmark is the CPU's)\n");
        return 2;
    }
    if (o.device != LU_CPU && !lu_device_available(o.device)) {
#ifdef LUTHIER_HAVE_CUDA
        fprintf(stderr, "luthier bench asr: --device cuda: no CUDA GPU (%s)\n", lu_cuda_unavailable_reason());
#else
        fprintf(stderr, "luthier bench asr: --device cuda: this luthier was built without CUDA\n");
#endif
        return 1;
    }
    omp_set_num_threads(o.threads);
    openblas_set_num_threads(o.threads);
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    if (o.train) return report_train(&o, cpu);
    asr_result r[2] = {{.model = "zipformer-small"}, {.model = "ee-conformer"}};
    if (bench_zipformer(&o, &r[0]) || bench_conformer(&o, &r[1])) {
        fprintf(stderr, "luthier bench asr: %s\n", lu_error_message());
        return 1;
    }
    for (int k = 0; k < 2; k++) snprintf(r[k].why, sizeof r[k].why, "not requested (--no-reference)");
    if (o.reference) run_reference(&o, r, 2);

    printf("luthier bench asr: %s, %d threads (OpenMP, OpenBLAS, torch); B = 1, %g s utterance (%lld frames x 80),\n"
           "f32 forward without gradients, median of %d runs after a warm-up\n\n",
           cpu, o.threads, o.seconds, (long long)llround(o.seconds * 100.0), o.runs);
    printf("| %-15s | %-21s | %9s | %10s | %6s | %7s |\n", "model", "params (ours/torch)", "ours ms", "PyTorch ms",
           "ratio", "our RTF");
    printf("|-----------------|-----------------------|-----------|------------|--------|---------|\n");
    for (int k = 0; k < 2; k++) {
        char params[64];
        if (r[k].why[0]) snprintf(params, sizeof params, "%lld / -", (long long)r[k].params);
        else snprintf(params, sizeof params, "%lld / %lld", (long long)r[k].params, (long long)r[k].ref_params);
        if (r[k].why[0])
            printf("| %-15s | %-21s | %9.1f | %10s | %6s | %7.4f |\n", r[k].model, params, 1e3 * r[k].seconds, "-", "-",
                   r[k].seconds / o.seconds);
        else
            printf("| %-15s | %-21s | %9.1f | %10.1f | %6.2f | %7.4f |\n", r[k].model, params, 1e3 * r[k].seconds,
                   1e3 * r[k].ref_seconds, r[k].ref_seconds / r[k].seconds, r[k].seconds / o.seconds);
    }
    printf("\nratio = PyTorch time / ours (> 1: luthier is faster); RTF = forward time / utterance length.\n");
    for (int k = 0; k < 2; k++)
        if (r[k].why[0]) printf("PyTorch %s: not measured: %s\n", r[k].model, r[k].why);
    return 0;
}
