/* test_cuda_models.c - whole models on the GPU against the same models on the CPU: the Qwen3
 * decoder (padded batch and packed sequences), the early-exit Conformer and Splitformer (training
 * mode: dropout and BatchNorm batch statistics) and the early-exit Zipformer, each with the same
 * parameters on both devices (initialised on the CPU, copied to the GPU store), the same inputs,
 * one forward (outputs and loss compared), one backward (every parameter's gradient compared) and,
 * for the Conformers, the BatchNorm running statistics updated in place. Then determinism: two GPU
 * steps on the same inputs give the same bits.
 *
 * Comparisons use the normalised error of cuda_testutil.h; f32 everywhere, so the CPU and GPU
 * differ only by summation order, which a whole model amplifies a little: TOL_MODEL (gradients
 * that vanish in exact arithmetic are compared on an absolute scale instead). Without a GPU
 * (or without LUTHIER_CUDA) every test skips and says why. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#ifdef LUTHIER_HAVE_CUDA

#include "core/arena.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "cuda_testutil.h"
#include "models/conformer.h"
#include "models/decoder.h"
#include "models/generate.h"
#include "models/gguf.h"
#include "models/zipformer.h"

#define TOL_MODEL 1e-6

/* ---- shared ---- */

/* Copies every buffer of a finalised CPU store into the same declarations on the GPU. */
static void upload_params(lu_params *gpu, const lu_params *cpu)
{
    cr_assert_eq(gpu->n, cpu->n, "stores differ: %d and %d tensors", gpu->n, cpu->n);
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        cr_assert_eq(!cpu->flat[d], !gpu->flat[d], "stores differ in dtype %s", lu_dtype_name((lu_dtype)d));
        if (cpu->flat[d]) cr_assert_eq(lu_tensor_copy(gpu->flat[d], cpu->flat[d]), LU_OK, "%s", lu_error_message());
    }
}

/* Root mean square of the CPU's trainable gradients, all parameters together. */
static double grads_rms(const lu_params *cpu)
{
    double sum = 0;
    int64_t n = 0;
    for (int i = 0; i < cpu->n; i++) {
        const lu_tensor *g = cpu->items[i].trainable ? cpu->items[i].t->grad : NULL;
        if (!g) continue;
        double *v = tu_to_doubles(g);
        for (int64_t k = 0; k < lu_tensor_numel(g); k++) sum += v[k] * v[k];
        n += lu_tensor_numel(g);
        free(v);
    }
    return n ? sqrt(sum / (double)n) : 0;
}

/* A gradient that vanishes in exact arithmetic (a bias followed by BatchNorm in training: the
 * batch mean removes it) is rounding noise on both devices, which a normalised error cannot
 * compare: such a gradient (rms below VANISHING x the model's gradient rms on the CPU) must stay
 * that small on the GPU too, within that absolute scale. */
#define VANISHING 1e-3

static void assert_grad_close(const lu_tensor *gpu, const lu_tensor *cpu, double scale, const char *what)
{
    int64_t n = lu_tensor_numel(cpu);
    double *g = tu_to_doubles(gpu), *c = tu_to_doubles(cpu), cc = 0, dd = 0;
    for (int64_t k = 0; k < n; k++) {
        cc += c[k] * c[k];
        dd += (g[k] - c[k]) * (g[k] - c[k]);
    }
    free(g);
    free(c);
    if (n && sqrt(cc / (double)n) < VANISHING * scale) {
        cr_assert(sqrt(dd / (double)n) < VANISHING * scale,
                  "%s: a vanishing gradient (cpu rms %.3g) differs by rms %.3g on cuda; the model's gradient rms is %.3g",
                  what, sqrt(cc / (double)n), sqrt(dd / (double)n), scale);
        return;
    }
    assert_nmse(gpu, cpu, TOL_MODEL, what);
}

/* Every trainable parameter's gradient, and every buffer (running statistics), GPU vs CPU. */
static void assert_params_close(const lu_params *gpu, const lu_params *cpu, const char *model)
{
    char what[256];
    double scale = grads_rms(cpu);
    for (int i = 0; i < cpu->n; i++) {
        const lu_param *c = &cpu->items[i], *g = &gpu->items[i];
        cr_assert_str_eq(c->name, g->name);
        if (c->trainable) {
            cr_assert(c->t->grad && g->t->grad, "%s: %s has no gradient", model, c->name);
            snprintf(what, sizeof what, "%s: gradient of %s", model, c->name);
            assert_grad_close(g->t->grad, c->t->grad, scale, what);
        } else {
            snprintf(what, sizeof what, "%s: buffer %s", model, c->name);
            assert_nmse(g->t, c->t, TOL_MODEL, what);
        }
    }
    /* And all gradients as one vector. */
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        if (!cpu->flat_grad[d]) continue;
        snprintf(what, sizeof what, "%s: all %s gradients", model, lu_dtype_name((lu_dtype)d));
        assert_nmse(gpu->flat_grad[d], cpu->flat_grad[d], TOL_MODEL, what);
    }
}

/* A host copy of t made outside any arena, so that it outlives the step's arena (a conversion to
 * t's own dtype and device may hand back t itself). */
static lu_tensor *host_copy(const lu_tensor *t)
{
    lu_arena *prev = lu_arena_activate(NULL);
    lu_tensor *h = lu_tensor_empty(t->dtype, t->ndim, t->shape, LU_CPU);
    cr_assert(h && lu_tensor_copy(h, t) == LU_OK, "%s", lu_error_message());
    lu_arena_activate(prev);
    return h;
}

/* Copies of every gradient buffer on the host, for a rerun to be compared with. */
static void save_grads(const lu_params *p, lu_tensor *out[LU_DTYPE_COUNT])
{
    for (int d = 0; d < LU_DTYPE_COUNT; d++)
        out[d] = p->flat_grad[d] ? host_copy(p->flat_grad[d]) : NULL;
}

static void assert_same_grads(const lu_params *p, lu_tensor *first[LU_DTYPE_COUNT], const char *model)
{
    char what[160];
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        if (!first[d]) continue;
        snprintf(what, sizeof what, "%s: %s gradients of a second GPU step", model, lu_dtype_name((lu_dtype)d));
        tu_assert_tensors_close(p->flat_grad[d], first[d], 0, 0, what);
        lu_tensor_release(first[d]);
    }
}

static void assert_loss_close(double gpu, double cpu, const char *model)
{
    cr_assert(isfinite(cpu) && isfinite(gpu), "%s: loss %g on cuda, %g on cpu", model, gpu, cpu);
    cr_assert(fabs(gpu - cpu) <= 1e-5 * fabs(cpu), "%s: loss %.9g on cuda, %.9g on cpu", model, gpu, cpu);
}

/* One arena per step on the device; the step's tensors die with it. */
static lu_arena *begin_step(lu_device dev)
{
    lu_arena *a = lu_arena_new(dev, 0);
    cr_assert(a, "%s", lu_error_message());
    lu_arena_activate(a);
    return a;
}

static void end_step(lu_arena *a)
{
    lu_arena_activate(NULL);
    lu_arena_free(a);
}

/* ---- Qwen3 decoder ---- */

static lu_decoder_config tiny_qwen3(void)
{
    return (lu_decoder_config){.vocab_size = 203, .hidden_size = 96, .intermediate_size = 160, .num_layers = 2,
                               .num_heads = 4, .num_kv_heads = 2, .head_dim = 64, .rope_theta = 1e6,
                               .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.1,
                               .max_position_embeddings = 512, .bos_token_id = -1, .dtype = LU_F32};
}

static lu_params *decoder_on(lu_device dev, lu_decoder *m, const lu_decoder_config *c)
{
    lu_params *p = lu_params_new(dev);
    cr_assert(p && !lu_decoder_declare(m, c, p) && !lu_params_finalize(p), "%s", lu_error_message());
    return p;
}

/* A batch: ids and labels [B, T] i32 (labels -100 where ignored), packed sequences when cu. */
typedef struct lm_batch {
    int64_t b, t;
    int32_t ids[128], labels[128], pos[128], cu[8];
    int n_cu;
} lm_batch;

static void fill_batch(lm_batch *x, int64_t b, int64_t t, const int32_t *cu, int n_cu)
{
    memset(x, 0, sizeof *x);
    x->b = b;
    x->t = t;
    for (int64_t i = 0; i < b * t; i++) {
        x->ids[i] = (int32_t)((i * 37 + 11) % 203);
        x->labels[i] = i % 7 == 3 ? -100 : (int32_t)((i * 53 + 5) % 203);
    }
    x->n_cu = n_cu;
    for (int s = 0; s < n_cu; s++) x->cu[s] = cu[s];
    for (int s = 0; s + 1 < n_cu; s++)
        for (int32_t i = cu[s]; i < cu[s + 1]; i++) x->pos[i] = i - cu[s];
}

/* Forward, loss, backward on dev; the logits come back on the host. */
static double decoder_step(lu_decoder *m, lu_device dev, const lm_batch *x, lu_tensor **logits_out)
{
    lu_arena *a = begin_step(dev);
    lu_tensor *ids = lu_tensor_from_host(LU_I32, LU_SHAPE(x->b, x->t), dev, x->ids);
    lu_tensor *labels = lu_tensor_from_host(LU_I32, LU_SHAPE(x->b, x->t), dev, x->labels);
    lu_decoder_batch batch = {.input_ids = ids};
    if (x->n_cu) {
        batch.positions = lu_tensor_from_host(LU_I32, LU_SHAPE(x->b, x->t), dev, x->pos);
        batch.cu_seqlens = lu_tensor_from_host(LU_I32, LU_SHAPE(x->n_cu), dev, x->cu);
    }
    lu_tensor *logits = lu_decoder_forward(m, &batch), *loss = lu_decoder_lm_loss(logits, labels);
    cr_assert(loss, "%s forward: %s", lu_device_name(dev), lu_error_message());
    double value = lu_tensor_item(loss);
    cr_assert_eq(lu_backward(loss), LU_OK, "%s backward: %s", lu_device_name(dev), lu_error_message());
    if (logits_out) *logits_out = host_copy(logits);
    end_step(a);
    return value;
}

static void check_decoder(const lm_batch *x, const char *name)
{
    lu_decoder_config c = tiny_qwen3();
    lu_decoder mc, mg;
    lu_params *pc = decoder_on(LU_CPU, &mc, &c), *pg = decoder_on(LU_CUDA, &mg, &c);
    cr_assert_eq(lu_decoder_init(&mc, 7), LU_OK, "%s", lu_error_message());
    upload_params(pg, pc);
    lu_tensor *lc, *lg;
    double loss_c = decoder_step(&mc, LU_CPU, x, &lc), loss_g = decoder_step(&mg, LU_CUDA, x, &lg);
    char what[96];
    snprintf(what, sizeof what, "%s: logits", name);
    assert_nmse(lg, lc, TOL_MODEL, what);
    assert_loss_close(loss_g, loss_c, name);
    assert_params_close(pg, pc, name);

    /* Determinism: the same step again from zeroed gradients. */
    lu_tensor *first[LU_DTYPE_COUNT];
    save_grads(pg, first);
    cr_assert_eq(lu_params_zero_grad(pg), LU_OK, "%s", lu_error_message());
    lu_tensor *again;
    double loss_again = decoder_step(&mg, LU_CUDA, x, &again);
    cr_assert(loss_again == loss_g, "%s: a second GPU step gave loss %.17g, the first %.17g", name, loss_again, loss_g);
    snprintf(what, sizeof what, "%s: logits of a second GPU step", name);
    tu_assert_tensors_close(again, lg, 0, 0, what);
    assert_same_grads(pg, first, name);
    release_all((lu_tensor *[]){lc, lg, again}, 3);
    lu_params_free(pc);
    lu_params_free(pg);
}

Test(cuda_models, qwen3_decoder_padded_batch_matches_cpu_and_reruns_identically)
{
    require_gpu();
    lm_batch x;
    fill_batch(&x, 2, 29, NULL, 0);
    check_decoder(&x, "qwen3 [2, 29]");
}

Test(cuda_models, qwen3_decoder_packed_sequences_match_cpu_and_rerun_identically)
{
    require_gpu();
    lm_batch x;
    fill_batch(&x, 1, 61, (const int32_t[]){0, 20, 41, 61}, 4);
    check_decoder(&x, "qwen3 packed [1, 61] in 3 sequences");
}

/* ---- a real model: SmolLM2-135M-Instruct ---- */

#define SMOLLM2 "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define SMOLLM2_REF "tests/fixtures/gguf/smollm2.json"

/* The prompt's next-token logits on the model's device, in host memory. */
static float *smollm2_logits(lu_decoder *m, const int64_t *ids, int64_t n)
{
    lu_arena *a = begin_step(m->params->device);
    bool grad = lu_grad_set_enabled(false);
    lu_decoder_batch batch = {.input_ids = lu_tensor_from_host(LU_I64, LU_SHAPE(1, n), m->params->device, ids)};
    lu_tensor *logits = lu_decoder_forward(m, &batch);
    cr_assert(logits, "%s: %s", lu_device_name(m->params->device), lu_error_message());
    float *all = malloc((size_t)(n * m->cfg.vocab_size) * sizeof *all), *last = malloc((size_t)m->cfg.vocab_size * 4);
    cr_assert(all && last);
    cr_assert_eq(lu_tensor_to_host(logits, LU_F32, all), LU_OK, "%s", lu_error_message());
    memcpy(last, all + (n - 1) * m->cfg.vocab_size, (size_t)m->cfg.vocab_size * sizeof *last);
    free(all);
    lu_grad_set_enabled(grad);
    end_step(a);
    return last;
}

/* The real SmolLM2 (30 layers, 9 query / 3 key-value heads of 64, dequantised Q4_1 weights) moved
 * to the GPU: the chat prompt's five best next-token logits as transformers computes them on the
 * CPU (tests/fixtures/gguf, f32), and its greedy reply through the KV cache on the GPU, token for
 * token; then in bf16 (mixed precision, the tensor-core attention) the same best token (up to a
 * tie in bf16) and the logits within bf16 rounding of the f32 ones. Needs scripts/fetch_smollm2.sh's file. */
Test(cuda_models, smollm2_on_the_gpu_matches_transformers_and_replies_the_same, .timeout = 600)
{
    require_gpu();
    FILE *f = fopen(SMOLLM2, "rb");
    if (!f) cr_skip_test("%s is absent: run scripts/fetch_smollm2.sh", SMOLLM2);
    fclose(f);
    lu_decoder m;
    lu_params *p;
    cr_assert_eq(lu_gguf_load_decoder(SMOLLM2, &m, &p, NULL), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_to_device(p, LU_CUDA), LU_OK, "%s", lu_error_message());
    cJSON *j = tu_read_json(SMOLLM2_REF);
    const cJSON *pids = cJSON_GetObjectItem(j, "prompt_ids"), *top_ids = cJSON_GetObjectItem(j, "top_ids");
    const cJSON *top_logits = cJSON_GetObjectItem(j, "top_logits"), *greedy = cJSON_GetObjectItem(j, "greedy_ids");
    int64_t n = cJSON_GetArraySize(pids), ids[128];
    cr_assert(n > 0 && n <= 128);
    for (int64_t i = 0; i < n; i++) ids[i] = cJSON_GetArrayItem(pids, (int)i)->valueint;

    float *f32 = smollm2_logits(&m, ids, n);
    for (int k = 0; k < 5; k++) {
        int id = cJSON_GetArrayItem(top_ids, k)->valueint;
        double want = cJSON_GetArrayItem(top_logits, k)->valuedouble;
        /* As the CPU test of this file (test_gguf), the GPU summing in another order. */
        cr_assert(fabs(f32[id] - want) < 5e-4, "f32 logit of token %d: %f on the gpu, transformers %f", id, f32[id], want);
    }
    int64_t out[32];
    lu_generate_opts opts = {.max_new_tokens = 24, .sampling = {.greedy = true}};
    int64_t got = lu_generate(&m, ids, n, &opts, out);
    cr_assert_geq(got, 0, "generate on the gpu: %s", lu_error_message());
    cr_assert_eq(got, cJSON_GetArraySize(greedy), "%lld new tokens on the gpu", (long long)got);
    for (int64_t i = 0; i < got; i++)
        cr_assert_eq(out[i], cJSON_GetArrayItem(greedy, (int)i)->valueint, "reply token %lld", (long long)i);

    m.compute_dtype = LU_BF16;
    float *bf16 = smollm2_logits(&m, ids, n);
    int best = 0;
    double err = 0, ref = 0;
    for (int64_t v = 0; v < m.cfg.vocab_size; v++) {
        if (bf16[v] > bf16[best]) best = (int)v;
        err += (double)(bf16[v] - f32[v]) * (bf16[v] - f32[v]);
        ref += (double)f32[v] * f32[v];
    }
    /* The bf16 logits are rounded to 2^-3 near 25, coarser than the f32 gap between the two best
     * tokens (0.08): transformers' best must be among the best in bf16, tied or alone. */
    const int want = cJSON_GetArrayItem(top_ids, 0)->valueint;
    cr_assert_eq(bf16[want], bf16[best], "bf16 best next token %d (%f), transformers' %d has %f", best, bf16[best], want,
                 bf16[want]);
    /* 30 layers of bf16 weights and activations (2^-9 relative rounding each): 0.010 on the CUDA
     * emulator (0.024 and 0.042 with earlier kernels); a wrong kernel gives errors of order 1. */
    cr_assert(sqrt(err / ref) < 0.085, "bf16 logits: relative RMS error %.4f against f32", sqrt(err / ref));
    free(f32);
    free(bf16);
    cJSON_Delete(j);
    lu_params_free(p);
}

/* ---- early-exit Conformer, Splitformer and Zipformer ---- */

static lu_ee_conformer_config small_conformer(bool split)
{
    lu_ee_conformer_config c = {
        .block = {.input_dim = 32, .num_heads = 4, .ffn_dim = 48, .num_layers = 2, .depthwise_conv_kernel_size = 7,
                  .dropout = 0.1},
        .n_mels = 12, .vocab_size = 11, .n_exits = 3, .max_len = 64, .split_num_layers = 1, .split_factor = 2,
    };
    if (split) {
        c.n_split = 2;
        c.split_exits[0] = 0;
        c.split_exits[1] = 2;
    }
    return c;
}

static lu_params *conformer_on(lu_device dev, lu_ee_conformer *m, const lu_ee_conformer_config *c)
{
    lu_params *p = lu_params_new(dev);
    cr_assert(p && !lu_ee_conformer_declare(m, c, p) && !lu_params_finalize(p), "%s", lu_error_message());
    return p;
}

static lu_params *zipformer_on(lu_device dev, lu_ee_zipformer *m, const lu_ee_zipformer_config *c)
{
    lu_params *p = lu_params_new(dev);
    cr_assert(p && !lu_ee_zipformer_declare(m, c, p) && !lu_params_finalize(p), "%s", lu_error_message());
    return p;
}

/* Two utterances of frames[0] and frames[1] frames (features from the host), targets [2, 3]. */
typedef struct asr_batch {
    lu_tensor *feats, *len, *tgt, *tlen;
} asr_batch;

typedef lu_tensor *(*asr_loss_fn)(void *model, const asr_batch *b);

/* Training step (dropout seeded as the trainer seeds it): the summed exit CTC loss. */
static lu_tensor *conformer_loss(void *model, const asr_batch *b)
{
    lu_conformer_run run = {.training = true, .seed = 5, .step = 1};
    lu_tensor *loss = lu_ee_conformer_loss(model, b->feats, b->len, b->tgt, b->tlen, &run);
    cr_assert(!loss || run.site > 0, "training must apply dropout");
    return loss;
}

static lu_tensor *zipformer_loss(void *model, const asr_batch *b)
{
    return lu_ee_zipformer_loss(model, b->feats, b->len, b->tgt, b->tlen);
}

/* One forward and backward of `loss` on dev; the loss value. */
static double asr_step(void *model, asr_loss_fn loss, lu_device dev, const lu_tensor *feats, const int64_t frames[2])
{
    lu_arena *a = begin_step(dev);
    asr_batch b = {.feats = lu_tensor_convert(feats, LU_F32, dev),
                   .len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), dev, frames),
                   .tgt = lu_tensor_from_host(LU_I64, LU_SHAPE(2, 3), dev, (int64_t[]){1, 2, 3, 4, 5, 5}),
                   .tlen = lu_tensor_from_host(LU_I64, LU_SHAPE(2), dev, (int64_t[]){3, 2})};
    lu_tensor *l = loss(model, &b);
    cr_assert(l, "%s forward: %s", lu_device_name(dev), lu_error_message());
    double value = lu_tensor_item(l);
    cr_assert_eq(lu_backward(l), LU_OK, "%s backward: %s", lu_device_name(dev), lu_error_message());
    end_step(a);
    return value;
}

/* The CPU model (initialised) and the GPU one (same declarations) after one step each, then a
 * second GPU step from zeroed gradients, which must give the same bits. */
static void check_asr(void *mc, lu_params *pc, void *mg, lu_params *pg, asr_loss_fn loss, const lu_tensor *feats,
                      const int64_t frames[2], const char *name)
{
    upload_params(pg, pc);
    double loss_c = asr_step(mc, loss, LU_CPU, feats, frames), loss_g = asr_step(mg, loss, LU_CUDA, feats, frames);
    assert_loss_close(loss_g, loss_c, name);
    assert_params_close(pg, pc, name);

    lu_tensor *first[LU_DTYPE_COUNT];
    save_grads(pg, first);
    cr_assert_eq(lu_params_zero_grad(pg), LU_OK, "%s", lu_error_message());
    double again = asr_step(mg, loss, LU_CUDA, feats, frames);
    cr_assert(again == loss_g, "%s: a second GPU step gave loss %.17g, the first %.17g", name, again, loss_g);
    assert_same_grads(pg, first, name);
}

static void check_conformer(bool split)
{
    lu_ee_conformer_config c = small_conformer(split);
    lu_ee_conformer mc, mg;
    lu_params *pc = conformer_on(LU_CPU, &mc, &c), *pg = conformer_on(LU_CUDA, &mg, &c);
    cr_assert_eq(lu_ee_conformer_init(&mc, 11), LU_OK, "%s", lu_error_message());
    lu_tensor *feats = tu_rand(LU_F32, LU_SHAPE(2, 37, 12), -1, 1, 21);
    check_asr(&mc, pc, &mg, pg, conformer_loss, feats, (const int64_t[]){37, 29}, split ? "splitformer" : "ee-conformer");
    lu_tensor_release(feats);
    lu_params_free(pc);
    lu_params_free(pg);
}

Test(cuda_models, ee_conformer_training_step_matches_cpu_and_reruns_identically)
{
    require_gpu();
    check_conformer(false);
}

Test(cuda_models, splitformer_training_step_matches_cpu_and_reruns_identically)
{
    require_gpu();
    check_conformer(true);
}

Test(cuda_models, ee_zipformer_step_matches_cpu_and_reruns_identically)
{
    require_gpu();
    lu_ee_zipformer_config c = {.vocab_size = 11};
    cr_assert_eq(lu_zipformer_config_load_json("tests/fixtures/zipformer/config.json", &c.enc), LU_OK, "%s",
                 lu_error_message());
    lu_ee_zipformer_default_exits(&c);
    lu_ee_zipformer mc, mg;
    lu_params *pc = zipformer_on(LU_CPU, &mc, &c), *pg = zipformer_on(LU_CUDA, &mg, &c);
    cr_assert_eq(lu_ee_zipformer_init(&mc, 5), LU_OK, "%s", lu_error_message());
    lu_tensor *feats = tu_rand(LU_F32, LU_SHAPE(2, 41, 80), -1, 1, 21);
    check_asr(&mc, pc, &mg, pg, zipformer_loss, feats, (const int64_t[]){41, 30}, "ee-zipformer");
    lu_tensor_release(feats);
    lu_params_free(pc);
    lu_params_free(pg);
}

#else

Test(cuda_models, skipped_without_cuda) { cr_skip_test("built without LUTHIER_CUDA"); }

#endif
