/* task_bytelm.c - the `bytelm` task: a small Qwen3-style decoder (models/decoder.h) trained as
 * a byte-level language model on a plain-text file. It exercises the whole training stack on
 * real text with a 256-symbol vocabulary and needs no tokenizer. Evaluation reports held-out
 * loss, perplexity and bits per byte; the demo samples a continuation of a prompt. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/dist.h"
#include "core/fileio.h"
#include "core/ops.h"
#include "core/rng.h"
#include "experiments/runner/task.h"
#include "models/decoder.h"

typedef struct bytelm_config {
    char *text_file;
    double valid_fraction;
    int64_t seq_len, batch_size, eval_batches;
    int64_t hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim;
    double rope_theta;
    bool qk_norm;
    char *demo_prompt;
    int64_t demo_tokens;
    double demo_temperature;
} bytelm_config;

#define F(sec, key, type, member, req, def, help) {sec, key, type, offsetof(bytelm_config, member), req, def, NULL, help}
static const lu_cfg_field bytelm_schema[] = {
    F("data", "text_file", LU_CFG_STRING, text_file, true, NULL, "UTF-8 text to learn (scripts/prepare_fr_text.sh)"),
    F("data", "valid_fraction", LU_CFG_FLOAT, valid_fraction, false, "0.05", "tail of the text held out for evaluation"),
    F("data", "seq_len", LU_CFG_INT, seq_len, false, "128", "bytes per training sequence"),
    F("data", "batch_size", LU_CFG_INT, batch_size, false, "8", "sequences per micro-batch"),
    F("data", "eval_batches", LU_CFG_INT, eval_batches, false, "16", "held-out micro-batches per evaluation"),
    F("model", "hidden_size", LU_CFG_INT, hidden_size, false, "128", "model width"),
    F("model", "intermediate_size", LU_CFG_INT, intermediate_size, false, "384", "SwiGLU hidden width"),
    F("model", "num_layers", LU_CFG_INT, num_layers, false, "2", "decoder layers"),
    F("model", "num_heads", LU_CFG_INT, num_heads, false, "4", "query heads"),
    F("model", "num_kv_heads", LU_CFG_INT, num_kv_heads, false, "2", "key/value heads (grouped-query attention)"),
    F("model", "head_dim", LU_CFG_INT, head_dim, false, "32", "per-head width"),
    F("model", "rope_theta", LU_CFG_FLOAT, rope_theta, false, "10000", "rotary base"),
    F("model", "qk_norm", LU_CFG_BOOL, qk_norm, false, "true", "Qwen3 q/k RMSNorm"),
    F("demo", "prompt", LU_CFG_STRING, demo_prompt, false, "La commande ", "text the demo continues"),
    F("demo", "tokens", LU_CFG_INT, demo_tokens, false, "160", "bytes the demo generates"),
    F("demo", "temperature", LU_CFG_FLOAT, demo_temperature, false, "0.7", "sampling temperature (0: greedy)"),
    {0},
};
#undef F

typedef struct bytelm {
    bytelm_config cfg;
    uint64_t seed;
    unsigned char *text;
    int64_t n_train, n_valid;    /* bytes: train = text[0, n_train), valid = the rest */
    int64_t train_windows;
    int64_t *perm;               /* window order of the current epoch */
    int64_t perm_epoch;
    lu_decoder model;
} bytelm;

static lu_status bytelm_create(void **state, const void *config, uint64_t seed, lu_params *params)
{
    const bytelm_config *c = config;
    bytelm *s = calloc(1, sizeof *s);
    if (!s) return lu_errorf(LU_ERR_NOMEM, "bytelm: out of memory");
    *state = s;
    s->cfg = *c;
    s->seed = seed;
    s->perm_epoch = -1;
    if (c->seq_len < 2 || c->batch_size < 1)
        return lu_errorf(LU_ERR_CONFIG, "bytelm: data.seq_len must be >= 2 and data.batch_size >= 1");
    if (!(c->valid_fraction > 0 && c->valid_fraction < 1))
        return lu_errorf(LU_ERR_CONFIG, "bytelm: data.valid_fraction must be in (0, 1), got %g", c->valid_fraction);
    size_t len = 0;
    s->text = (unsigned char *)lu_file_read(c->text_file, (size_t)1 << 32, &len);
    if (!s->text) return lu_error_context("bytelm data.text_file (run scripts/prepare_fr_text.sh?): ");
    int64_t n = (int64_t)len;
    s->n_valid = (int64_t)((double)n * c->valid_fraction);
    s->n_train = n - s->n_valid;
    s->train_windows = (s->n_train - 1) / c->seq_len;
    if (s->train_windows < c->batch_size || s->n_valid < c->seq_len)
        return lu_errorf(LU_ERR_CONFIG, "bytelm: '%s' has %lld bytes, too few for batches of %lld x %lld bytes",
                         c->text_file, (long long)n, (long long)c->batch_size, (long long)c->seq_len);
    s->perm = malloc((size_t)s->train_windows * sizeof *s->perm);
    if (!s->perm) return lu_errorf(LU_ERR_NOMEM, "bytelm: out of memory");
    lu_decoder_config dc = {
        .vocab_size = 256, .hidden_size = c->hidden_size, .intermediate_size = c->intermediate_size,
        .num_layers = (int)c->num_layers, .num_heads = (int)c->num_heads, .num_kv_heads = (int)c->num_kv_heads,
        .head_dim = (int)c->head_dim, .rope_theta = c->rope_theta, .rms_norm_eps = 1e-6, .qk_norm = c->qk_norm,
        .tie_embeddings = true, .init_std = 0.02,
    };
    return lu_decoder_declare(&s->model, &dc, params);
}

static lu_status bytelm_init(void *state, uint64_t seed)
{
    bytelm *s = state;
    return lu_decoder_init(&s->model, seed);
}

static int64_t bytelm_epoch_size(void *state)
{
    bytelm *s = state;
    return s->train_windows / s->cfg.batch_size;
}

/* Window order for an epoch: a Fisher-Yates shuffle driven by Philox(seed, epoch). */
static void shuffle_for_epoch(bytelm *s, int64_t epoch)
{
    if (s->perm_epoch == epoch) return;
    for (int64_t i = 0; i < s->train_windows; i++) s->perm[i] = i;
    for (int64_t i = s->train_windows - 1; i > 0; i--) {
        int64_t j = (int64_t)(lu_rng_uniform(s->seed, (uint64_t)epoch, 0x5eed, (uint64_t)i) * (double)(i + 1));
        if (j > i) j = i;
        int64_t t = s->perm[i];
        s->perm[i] = s->perm[j];
        s->perm[j] = t;
    }
    s->perm_epoch = epoch;
}

/* [B, T] i32 ids from byte offsets. */
static lu_tensor *make_ids(const bytelm *s, const int64_t *offsets, int64_t B)
{
    int64_t T = s->cfg.seq_len;
    lu_tensor *ids = lu_tensor_empty(LU_I32, LU_SHAPE(B, T), LU_CPU);
    if (!ids) return NULL;
    int32_t *p = lu_tensor_data(ids);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) p[b * T + t] = s->text[offsets[b] + t];
    return ids;
}

static lu_tensor *loss_at(bytelm *s, const int64_t *offsets, int64_t B)
{
    lu_tensor *ids = make_ids(s, offsets, B);
    if (!ids) return NULL;
    lu_decoder_batch batch = {.input_ids = ids};
    return lu_decoder_loss(&s->model, &batch, ids);
}

static lu_tensor *bytelm_loss(void *state, int64_t position, int64_t step, double *items)
{
    (void)step;
    bytelm *s = state;
    int64_t per_epoch = bytelm_epoch_size(s);
    shuffle_for_epoch(s, position / per_epoch);
    int64_t first = (position % per_epoch) * s->cfg.batch_size;
    int64_t offsets[4096];
    int64_t B = s->cfg.batch_size < 4096 ? s->cfg.batch_size : 4096;
    for (int64_t b = 0; b < B; b++) offsets[b] = s->perm[first + b] * s->cfg.seq_len;
    *items = (double)(B * s->cfg.seq_len);
    return loss_at(s, offsets, B);
}

static lu_status bytelm_evaluate(void *state, lu_task_metrics *out)
{
    bytelm *s = state;
    int64_t T = s->cfg.seq_len, B = s->cfg.batch_size < 4096 ? s->cfg.batch_size : 4096;
    int64_t windows = (s->n_valid - 1) / T, batches = windows / B;
    if (batches > s->cfg.eval_batches) batches = s->cfg.eval_batches;
    if (batches < 1) batches = 1, B = windows;
    double total = 0;
    int64_t offsets[4096];
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    if (!arena) return lu_error_code();
    lu_arena *prev = lu_arena_activate(arena);
    lu_status st = LU_OK;
    /* Data-parallel ranks take batches rank, rank + N, ... and add up their totals. */
    for (int64_t i = lu_dist_rank(); i < batches && !st; i += lu_dist_size()) {
        lu_arena_reset(arena);
        for (int64_t b = 0; b < B; b++) offsets[b] = s->n_train + (i * B + b) * T;
        lu_tensor *loss = loss_at(s, offsets, B);
        if (loss) total += lu_tensor_item(loss);
        else st = lu_error_code();
    }
    lu_arena_activate(prev);
    lu_arena_free(arena);
    LU_TRY(st);
    LU_TRY(lu_dist_all_reduce_doubles(&total, 1, LU_DIST_SUM));
    double loss = total / (double)batches;
    out->n = 3;
    out->keys[0] = "valid_loss";
    out->values[0] = loss;
    out->keys[1] = "valid_perplexity";
    out->values[1] = exp(loss);
    out->keys[2] = "valid_bits_per_byte";
    out->values[2] = loss / log(2.0);
    return LU_OK;
}

/* Samples demo.tokens bytes after the prompt, re-running the window each time (no KV cache). */
static void bytelm_demo(void *state, FILE *f)
{
    bytelm *s = state;
    int64_t T = s->cfg.seq_len, len = (int64_t)strlen(s->cfg.demo_prompt);
    int64_t cap = len + s->cfg.demo_tokens;
    unsigned char *buf = malloc((size_t)cap + 1);
    if (!buf || len == 0) {
        free(buf);
        return;
    }
    memcpy(buf, s->cfg.demo_prompt, (size_t)len);
    lu_arena *arena = lu_arena_new(LU_CPU, 0);
    if (!arena) {
        free(buf);
        return;
    }
    lu_arena *prev = lu_arena_activate(arena);
    bool grad = lu_grad_set_enabled(false);
    int64_t n;
    for (n = len; n < cap; n++) {
        lu_arena_reset(arena);
        int64_t start = n > T ? n - T : 0, w = n - start;
        lu_tensor *ids = lu_tensor_empty(LU_I32, LU_SHAPE(1, w), LU_CPU);
        if (!ids) break;
        for (int64_t t = 0; t < w; t++) ((int32_t *)lu_tensor_data(ids))[t] = buf[start + t];
        lu_decoder_batch batch = {.input_ids = ids};
        lu_tensor *logits = lu_decoder_forward(&s->model, &batch);
        if (!logits) break;
        float *lg = (float *)lu_tensor_data(logits) + (w - 1) * 256;
        int best = 0;
        if (s->cfg.demo_temperature <= 0) {
            for (int v = 1; v < 256; v++)
                if (lg[v] > lg[best]) best = v;
        } else {
            double mx = lg[0], z = 0, p[256];
            for (int v = 1; v < 256; v++) mx = lg[v] > mx ? lg[v] : mx;
            for (int v = 0; v < 256; v++) z += p[v] = exp((lg[v] - mx) / s->cfg.demo_temperature);
            double u = lu_rng_uniform(s->seed, (uint64_t)n, 0xde40, 0) * z;
            for (best = 0; best < 255 && (u -= p[best]) > 0; best++) {}
        }
        buf[n] = (unsigned char)best;
    }
    lu_grad_set_enabled(grad);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    buf[n] = 0;
    fprintf(f, "\nsample (prompt \"%s\", temperature %g):\n%s\n", s->cfg.demo_prompt, s->cfg.demo_temperature, buf);
    free(buf);
}

static void bytelm_destroy(void *state)
{
    bytelm *s = state;
    free(s->text);
    free(s->perm);
    free(s);
}

const lu_task lu_task_bytelm = {
    .name = "bytelm",
    .description = "byte-level Qwen3-style language model on a text file",
    .schema = bytelm_schema,
    .config_size = sizeof(bytelm_config),
    .create = bytelm_create,
    .init_params = bytelm_init,
    .epoch_size = bytelm_epoch_size,
    .loss = bytelm_loss,
    .evaluate = bytelm_evaluate,
    .collective_eval = true,
    .demo = bytelm_demo,
    .destroy = bytelm_destroy,
};
