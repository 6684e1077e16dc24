/* task_sft.c - the `sft` task: supervised fine-tuning of a decoder (models/decoder.h) on packed
 * chat sequences prepared by `luthier data prepare-chat` (models/sft_data.h), as Luth does with
 * Axolotl (luth.md section 4): full fine-tuning from a Hugging Face directory or a GGUF file (or a
 * small from-scratch Qwen3 shape), loss on the assistant tokens only, samples packed without
 * attention across them.
 *
 * A micro-batch of data.batch_size sequences is flattened into one packed row [1, B * seq_len]
 * whose cu_seqlens join the sequences' own (the attention op takes packing with B == 1 only);
 * positions restart at 0 at every boundary. The loss is the mean cross-entropy over the labelled
 * tokens of the row. Evaluation reports the token-weighted held-out loss. At the end of a completed
 * run the model is exported as a Hugging Face directory into <run dir>/model. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/arena.h"
#include "core/dist.h"
#include "core/rng.h"
#include "experiments/runner/luth_compare.h"
#include "experiments/runner/task.h"
#include "models/decoder.h"
#include "models/gguf.h"
#include "models/hf_model.h"
#include "models/sft_data.h"

typedef struct sft_config {
    char *model_path;
    int64_t vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim;
    double rope_theta;
    int export_dtype, compute_dtype;
    bool gradient_checkpointing;
    int64_t loss_chunk_tokens;
    char *data_dir;
    int64_t batch_size;
    int64_t eval_max_sequences;
    char *compare_tasks, *compare_system;
    bool compare_chat;
    int64_t compare_limit, compare_max_new_tokens;
    int compare_merge;
    double compare_t;
} sft_config;

#define F(sec, key, type, member, req, def, choices, help) \
    {sec, key, type, offsetof(sft_config, member), req, def, choices, help}
static const lu_cfg_field sft_schema[] = {
    F("model", "path", LU_CFG_STRING, model_path, false, NULL, NULL,
      "HF model directory or .gguf file to fine-tune (none: a from-scratch Qwen3 of the shape below)"),
    F("model", "vocab_size", LU_CFG_INT, vocab_size, false, "0", NULL, "from scratch: vocabulary (0: the data's tokenizer's)"),
    F("model", "hidden_size", LU_CFG_INT, hidden_size, false, "64", NULL, "from scratch: model width"),
    F("model", "intermediate_size", LU_CFG_INT, intermediate_size, false, "192", NULL, "from scratch: SwiGLU width"),
    F("model", "num_layers", LU_CFG_INT, num_layers, false, "2", NULL, "from scratch: decoder layers"),
    F("model", "num_heads", LU_CFG_INT, num_heads, false, "4", NULL, "from scratch: query heads"),
    F("model", "num_kv_heads", LU_CFG_INT, num_kv_heads, false, "2", NULL, "from scratch: key/value heads"),
    F("model", "head_dim", LU_CFG_INT, head_dim, false, "16", NULL, "from scratch: per-head width"),
    F("model", "rope_theta", LU_CFG_FLOAT, rope_theta, false, "1000000", NULL, "from scratch: rotary base"),
    F("model", "export_dtype", LU_CFG_ENUM, export_dtype, false, "bf16", "bf16|f32|f16", "dtype of the exported model"),
    F("model", "compute_dtype", LU_CFG_ENUM, compute_dtype, false, "f32", "f32|bf16",
      "dtype of the forward and backward: bf16 = mixed precision with f32 master weights and optimiser state "
      "(train.device cuda; the cpu computes in f32)"),
    F("model", "gradient_checkpointing", LU_CFG_BOOL, gradient_checkpointing, false, "false", NULL,
      "recompute each layer's activations in backward instead of keeping them (Axolotl's gradient_checkpointing)"),
    F("model", "loss_chunk_tokens", LU_CFG_INT, loss_chunk_tokens, false, "0", NULL,
      "LM head and cross-entropy this many tokens at a time, recomputed in backward, so that the logits of a "
      "micro-batch never exist whole (Axolotl's chunked_cross_entropy); 0: all at once"),
    F("data", "dir", LU_CFG_STRING, data_dir, true, NULL, NULL, "directory written by `luthier data prepare-chat`"),
    F("data", "batch_size", LU_CFG_INT, batch_size, false, "1", NULL, "packed sequences per micro-batch"),
    F("eval", "max_sequences", LU_CFG_INT, eval_max_sequences, false, "0", NULL, "held-out sequences per evaluation (0: all)"),
    F("compare", "tasks", LU_CFG_STRING, compare_tasks, false, NULL, NULL,
      "at the end: evaluate the starting, fine-tuned and merged models on these lm-eval task files (a directory of "
      "*.jsonl or a comma-separated list; none: no comparison)"),
    F("compare", "chat", LU_CFG_BOOL, compare_chat, false, "true", NULL, "compare: prompts through the chat template"),
    F("compare", "system", LU_CFG_STRING, compare_system, false, "You are a helpful assistant.", NULL,
      "compare: system prompt in chat mode (null: none)"),
    F("compare", "limit", LU_CFG_INT, compare_limit, false, "0", NULL, "compare: items per task (0: all)"),
    F("compare", "max_new_tokens", LU_CFG_INT, compare_max_new_tokens, false, "256", NULL, "compare: generative tasks' bound"),
    F("compare", "merge", LU_CFG_ENUM, compare_merge, false, "slerp", "slerp|linear|none",
      "compare: how the fine-tuned model is merged with the starting one (mergekit semantics)"),
    F("compare", "merge_t", LU_CFG_FLOAT, compare_t, false, "0.7", NULL,
      "compare: share of the fine-tuned model (slerp t; linear weight); Luth's merge keeps 70%"),
    {0},
};
#undef F

typedef struct sft {
    sft_config cfg;
    uint64_t seed;
    lu_sft_data *train, *valid;   /* valid: NULL when the data has no held-out split */
    int64_t seq_len;
    int64_t *perm;                /* sequence order of the current epoch */
    int64_t perm_epoch;
    int32_t *ids, *labels, *pos, *cu; /* one packed row of batch_size sequences (host) */
    lu_decoder model;
} sft;

static bool is_gguf(const char *path)
{
    size_t n = strlen(path);
    return n > 5 && !strcmp(path + n - 5, ".gguf");
}

static lu_status read_model_config(const char *path, lu_decoder_config *dc)
{
    if (!is_gguf(path)) return lu_hf_read_config(path, dc);
    lu_gguf *g = lu_gguf_open(path);
    if (!g) return lu_error_code();
    lu_status s = lu_gguf_read_config(g, dc);
    lu_gguf_close(g);
    return s;
}

static lu_status sft_create(void **state, const void *config, uint64_t seed, lu_params *params)
{
    const sft_config *c = config;
    sft *s = calloc(1, sizeof *s);
    if (!s) return lu_errorf(LU_ERR_NOMEM, "sft: out of memory");
    *state = s;
    s->cfg = *c;
    s->seed = seed;
    s->perm_epoch = -1;
    if (c->batch_size < 1) return lu_errorf(LU_ERR_CONFIG, "sft: data.batch_size must be >= 1, got %lld", (long long)c->batch_size);
    s->train = lu_sft_data_open(c->data_dir, "train");
    if (!s->train) return lu_error_code();
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/valid/shard-00000.h5", c->data_dir);
    struct stat sb;
    if (stat(probe, &sb) == 0 && !(s->valid = lu_sft_data_open(c->data_dir, "valid"))) return lu_error_code();
    s->seq_len = lu_sft_data_seq_len(s->train);
    if (s->valid && lu_sft_data_seq_len(s->valid) != s->seq_len)
        return lu_errorf(LU_ERR_FORMAT, "sft: %s: valid sequences of %lld tokens, train of %lld", c->data_dir,
                         (long long)lu_sft_data_seq_len(s->valid), (long long)s->seq_len);
    int64_t n = lu_sft_data_count(s->train);
    if (n < c->batch_size)
        return lu_errorf(LU_ERR_CONFIG, "sft: %s holds %lld training sequences, fewer than data.batch_size %lld", c->data_dir,
                         (long long)n, (long long)c->batch_size);
    int64_t row = c->batch_size * s->seq_len;
    s->perm = malloc((size_t)n * sizeof *s->perm);
    s->ids = malloc((size_t)row * sizeof *s->ids);
    s->labels = malloc((size_t)row * sizeof *s->labels);
    s->pos = malloc((size_t)row * sizeof *s->pos);
    s->cu = malloc((size_t)(row + c->batch_size + 1) * sizeof *s->cu);
    if (!s->perm || !s->ids || !s->labels || !s->pos || !s->cu) return lu_errorf(LU_ERR_NOMEM, "sft: out of memory");
    int64_t data_vocab = lu_sft_data_vocab_size(c->data_dir);
    if (data_vocab < 0) return lu_error_code();
    lu_decoder_config dc;
    if (c->model_path) {
        LU_TRY(read_model_config(c->model_path, &dc));
        if (data_vocab > dc.vocab_size)
            return lu_errorf(LU_ERR_CONFIG, "sft: the data's tokenizer has %lld tokens, more than the vocabulary of %s (%lld)",
                             (long long)data_vocab, c->model_path, (long long)dc.vocab_size);
    } else {
        dc = (lu_decoder_config){
            .vocab_size = c->vocab_size > 0 ? c->vocab_size : data_vocab, .hidden_size = c->hidden_size,
            .intermediate_size = c->intermediate_size, .num_layers = (int)c->num_layers, .num_heads = (int)c->num_heads,
            .num_kv_heads = (int)c->num_kv_heads, .head_dim = (int)c->head_dim, .rope_theta = c->rope_theta,
            .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.02,
            .max_position_embeddings = s->seq_len, .bos_token_id = -1, .dtype = LU_F32,
        };
        /* Generation of a from-scratch chat model stops at the template's <|im_end|>. */
        int64_t im_end = lu_sft_data_im_end_id(c->data_dir);
        if (im_end >= 0 && im_end < dc.vocab_size) {
            dc.n_eos = 1;
            dc.eos_token_ids[0] = im_end;
        }
        if (dc.vocab_size < data_vocab)
            return lu_errorf(LU_ERR_CONFIG, "sft: model.vocab_size %lld is smaller than the data's tokenizer (%lld)",
                             (long long)dc.vocab_size, (long long)data_vocab);
    }
    LU_TRY(lu_decoder_declare(&s->model, &dc, params));
    if (c->compute_dtype == 1) s->model.compute_dtype = LU_BF16;
    if (c->loss_chunk_tokens < 0)
        return lu_errorf(LU_ERR_CONFIG, "sft: model.loss_chunk_tokens must be >= 0, got %lld", (long long)c->loss_chunk_tokens);
    s->model.recompute_layers = c->gradient_checkpointing;
    s->model.loss_chunk = c->loss_chunk_tokens;
    return LU_OK;
}

/* Weights of model.path, loaded into a store of their own and copied by name. */
static lu_status sft_init(void *state, uint64_t seed)
{
    sft *s = state;
    if (!s->cfg.model_path) return lu_decoder_init(&s->model, seed);
    lu_decoder src;
    lu_params *sp = NULL;
    LU_TRY(is_gguf(s->cfg.model_path) ? lu_gguf_load_decoder(s->cfg.model_path, &src, &sp, NULL)
                                      : lu_hf_load(s->cfg.model_path, &src, &sp));
    lu_params *dst = s->model.params;
    lu_status st = LU_OK;
    for (int i = 0; i < dst->n && !st; i++) {
        lu_tensor *to = dst->items[i].t, *from = lu_params_get(sp, dst->items[i].name);
        if (!from || lu_tensor_numel(from) != lu_tensor_numel(to) || from->dtype != to->dtype)
            st = lu_errorf(LU_ERR_FORMAT, "sft: %s: parameter %s missing or of another shape", s->cfg.model_path,
                           dst->items[i].name);
        else memcpy(lu_tensor_data(to), lu_tensor_data(from), (size_t)lu_tensor_numel(to) * lu_dtype_size(to->dtype));
    }
    lu_params_free(sp);
    return st;
}

static int64_t sft_epoch_size(void *state)
{
    sft *s = state;
    return lu_sft_data_count(s->train) / s->cfg.batch_size;
}

/* Sequence order for an epoch: a Fisher-Yates shuffle driven by Philox(seed, epoch). */
static void shuffle_for_epoch(sft *s, int64_t epoch)
{
    if (s->perm_epoch == epoch) return;
    int64_t n = lu_sft_data_count(s->train);
    for (int64_t i = 0; i < n; i++) s->perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(lu_rng_uniform(s->seed, (uint64_t)epoch, 0x5f7e, (uint64_t)i) * (double)(i + 1));
        if (j > i) j = i;
        int64_t t = s->perm[i];
        s->perm[i] = s->perm[j];
        s->perm[j] = t;
    }
    s->perm_epoch = epoch;
}

/* Loss of sequences idx[0..B) of `data`, flattened into one packed row (built on the host, then
 * copied to the model's device); *targets counts its labels. */
static lu_tensor *packed_loss(sft *s, lu_sft_data *data, const int64_t *idx, int64_t B, int64_t *targets)
{
    int64_t T = s->seq_len, L = B * T;
    int n_cu = 1;
    s->cu[0] = 0;
    for (int64_t b = 0; b < B; b++) {
        int k;
        if (lu_sft_data_read(data, idx[b], s->ids + b * T, s->labels + b * T, s->cu + n_cu - 1, &k)) return NULL;
        /* The sequence's values start at its own 0: shift them to its place in the row. */
        for (int i = 0; i < k; i++) s->cu[n_cu - 1 + i] += (int32_t)(b * T);
        n_cu += k - 1;
    }
    for (int i = 0; i + 1 < n_cu; i++)
        for (int32_t t = s->cu[i]; t < s->cu[i + 1]; t++) s->pos[t] = t - s->cu[i];
    lu_device dev = s->model.params->device;
    if (s->model.compute_dtype == LU_BF16 && dev == LU_CPU) {
        lu_errorf(LU_ERR_CONFIG, "sft: model.compute_dtype bf16 needs train.device cuda (the cpu computes in f32)");
        return NULL;
    }
    lu_tensor *ids = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), dev, s->ids);
    lu_tensor *labels = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), dev, s->labels);
    lu_tensor *pos = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), dev, s->pos);
    lu_tensor *cu = lu_tensor_from_host(LU_I32, LU_SHAPE(n_cu), dev, s->cu);
    if (!ids || !labels || !pos || !cu) return NULL;
    *targets = 0;
    for (int64_t t = 1; t < L; t++) *targets += s->labels[t] != -100;
    lu_decoder_batch batch = {.input_ids = ids, .positions = pos, .cu_seqlens = cu};
    return lu_decoder_loss(&s->model, &batch, labels);
}

static lu_tensor *sft_loss(void *state, int64_t position, int64_t step, double *items)
{
    (void)step;
    sft *s = state;
    int64_t per_epoch = sft_epoch_size(s), B = s->cfg.batch_size, targets;
    shuffle_for_epoch(s, position / per_epoch);
    *items = (double)(B * s->seq_len);
    return packed_loss(s, s->train, s->perm + (position % per_epoch) * B, B, &targets);
}

static lu_status sft_evaluate(void *state, lu_task_metrics *out)
{
    sft *s = state;
    lu_sft_data *data = s->valid ? s->valid : s->train;
    int64_t n = lu_sft_data_count(data), B = s->cfg.batch_size;
    if (s->cfg.eval_max_sequences > 0 && s->cfg.eval_max_sequences < n) n = s->cfg.eval_max_sequences;
    lu_arena *arena = lu_arena_new(s->model.params->device, 0);
    if (!arena) return lu_error_code();
    lu_arena *prev = lu_arena_activate(arena);
    double total = 0;
    int64_t tokens = 0;
    int64_t *idx = malloc((size_t)B * sizeof *idx);
    lu_status st = idx ? LU_OK : lu_errorf(LU_ERR_NOMEM, "sft: out of memory");
    /* Data parallel: batch k of the held-out sequences is scored by rank k mod N. */
    int world = lu_dist_size();
    for (int64_t first = (int64_t)lu_dist_rank() * B; first < n && !st; first += B * world) {
        lu_arena_reset(arena);
        int64_t b = n - first < B ? n - first : B, targets = 0;
        for (int64_t i = 0; i < b; i++) idx[i] = first + i;
        lu_tensor *loss = packed_loss(s, data, idx, b, &targets);
        if (!loss) st = lu_error_code();
        else if (targets > 0) {
            /* The loss is a mean over the row's targets: weight it back to a sum. */
            total += lu_tensor_item(loss) * (double)targets;
            tokens += targets;
        }
    }
    free(idx);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    LU_TRY(st);
    double sums[2] = {total, (double)tokens};
    LU_TRY(lu_dist_all_reduce_doubles(sums, 2, LU_DIST_SUM));
    total = sums[0];
    tokens = (int64_t)sums[1];
    double loss = tokens ? total / (double)tokens : 0;
    /* Without a held-out split the training sequences are scored, under their own names. */
    out->n = 3;
    out->keys[0] = s->valid ? "valid_loss" : "train_loss";
    out->keys[1] = s->valid ? "valid_perplexity" : "train_perplexity";
    out->keys[2] = s->valid ? "valid_target_tokens" : "train_target_tokens";
    out->values[0] = loss;
    out->values[1] = exp(loss);
    out->values[2] = (double)tokens;
    return LU_OK;
}

static lu_status copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in) return LU_OK; /* an optional tokenizer file the source does not have */
    FILE *out = fopen(to, "wb");
    lu_status s = out ? LU_OK : lu_errorf(LU_ERR_IO, "sft: cannot write %s", to);
    char buf[1 << 16];
    size_t n;
    while (!s && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) s = lu_errorf(LU_ERR_IO, "sft: cannot write %s", to);
    fclose(in);
    if (out && fclose(out) && !s) s = lu_errorf(LU_ERR_IO, "sft: cannot write %s", to);
    return s;
}

static const lu_dtype export_dtypes[] = {LU_BF16, LU_F32, LU_F16};

/* Exports the model to run_dir/model with the tokenizer files of model.path (an HF directory's
 * files, or those written from a GGUF file's metadata; a from-scratch model has none). */
static lu_status export_model(sft *s, const char *run_dir)
{
    char dir[4096], from[4096 + 32], to[4096 + 32];
    if (snprintf(dir, sizeof dir, "%s/model", run_dir) >= (int)sizeof dir) return lu_errorf(LU_ERR_IO, "sft: path too long: %s", run_dir);
    LU_TRY(lu_hf_save(dir, &s->model, export_dtypes[s->cfg.export_dtype], 0));
    if (s->cfg.model_path && is_gguf(s->cfg.model_path)) {
        lu_gguf *g = lu_gguf_open(s->cfg.model_path);
        if (!g) return lu_error_code();
        lu_status st = lu_gguf_save_tokenizer(g, dir);
        lu_gguf_close(g);
        LU_TRY(st);
    } else if (s->cfg.model_path) {
        const char *files[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
        for (int i = 0; i < 3; i++) {
            snprintf(from, sizeof from, "%s/%s", s->cfg.model_path, files[i]);
            snprintf(to, sizeof to, "%s/%s", dir, files[i]);
            LU_TRY(copy_file(from, to));
        }
    }
    fprintf(stderr, "exported the fine-tuned model to %s\n", dir);
    return LU_OK;
}

/* The export (rank 0's), then the comparison of luth_compare.h when compare.tasks is set, which
 * the ranks of a data-parallel run share. */
static lu_status sft_finish(void *state, const char *run_dir)
{
    sft *s = state;
    LU_TRY(lu_dist_agree(lu_dist_rank() == 0 ? export_model(s, run_dir) : LU_OK, "sft: exporting the model"));
    if (!s->cfg.compare_tasks) return LU_OK;
    lu_compare_opts o = {.tasks = s->cfg.compare_tasks, .chat = s->cfg.compare_chat, .system = s->cfg.compare_system,
                         .limit = s->cfg.compare_limit, .max_new_tokens = s->cfg.compare_max_new_tokens,
                         .merge = (lu_compare_merge)s->cfg.compare_merge, .t = s->cfg.compare_t,
                         .export_dtype = export_dtypes[s->cfg.export_dtype], .device = s->model.params->device};
    return lu_luth_compare(run_dir, s->cfg.model_path, &o);
}

static void sft_destroy(void *state)
{
    sft *s = state;
    lu_sft_data_close(s->train);
    lu_sft_data_close(s->valid);
    free(s->perm);
    free(s->ids);
    free(s->labels);
    free(s->pos);
    free(s->cu);
    free(s);
}

const lu_task lu_task_sft = {
    .name = "sft",
    .description = "supervised fine-tuning of a decoder on packed chat data (luthier data prepare-chat)",
    .schema = sft_schema,
    .config_size = sizeof(sft_config),
    .any_device = true,
    .create = sft_create,
    .init_params = sft_init,
    .epoch_size = sft_epoch_size,
    .loss = sft_loss,
    .evaluate = sft_evaluate,
    .collective_eval = true,
    .finish = sft_finish,
    .collective_finish = true,
    .destroy = sft_destroy,
};
