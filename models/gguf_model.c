/* gguf_model.c - the decoder (decoder.h) and tokenizer (tokenizer.h) of a GGUF file (see gguf.h).
 * References: llama.cpp convert_hf_to_gguf.py (q/k permutation, token types), gguf-py constants.py
 * (tensor and key names), llama-vocab.cpp (tokenizer.ggml.pre families). */
#include "models/gguf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- decoder --------------------------------------------------------------------------------- */

/* gguf-py constants.py MODEL_TENSOR names -> transformers parameter names (per layer: "%d"). */
static const struct {
    const char *gguf, *hf;
} tensor_names[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
    {"blk.%d.attn_norm.weight", "model.layers.%d.input_layernorm.weight"},
    {"blk.%d.ffn_norm.weight", "model.layers.%d.post_attention_layernorm.weight"},
    {"blk.%d.attn_q.weight", "model.layers.%d.self_attn.q_proj.weight"},
    {"blk.%d.attn_k.weight", "model.layers.%d.self_attn.k_proj.weight"},
    {"blk.%d.attn_v.weight", "model.layers.%d.self_attn.v_proj.weight"},
    {"blk.%d.attn_q.bias", "model.layers.%d.self_attn.q_proj.bias"},
    {"blk.%d.attn_k.bias", "model.layers.%d.self_attn.k_proj.bias"},
    {"blk.%d.attn_v.bias", "model.layers.%d.self_attn.v_proj.bias"},
    {"blk.%d.attn_output.weight", "model.layers.%d.self_attn.o_proj.weight"},
    {"blk.%d.attn_q_norm.weight", "model.layers.%d.self_attn.q_norm.weight"},
    {"blk.%d.attn_k_norm.weight", "model.layers.%d.self_attn.k_norm.weight"},
    {"blk.%d.ffn_gate.weight", "model.layers.%d.mlp.gate_proj.weight"},
    {"blk.%d.ffn_up.weight", "model.layers.%d.mlp.up_proj.weight"},
    {"blk.%d.ffn_down.weight", "model.layers.%d.mlp.down_proj.weight"},
};
#define N_TENSOR_NAMES (int)(sizeof tensor_names / sizeof tensor_names[0])
#define NAME_LEN 160

/* The GGUF name of a parameter; false when none maps to it. */
static bool gguf_name_of(const char *hf, char *out, int *layer)
{
    *layer = -1;
    const char *p = hf;
    char pattern[NAME_LEN];
    if (!strncmp(hf, "model.layers.", 13)) {
        char *end;
        long l = strtol(hf + 13, &end, 10);
        if (end == hf + 13 || *end != '.' || l < 0 || l > INT_MAX) return false;
        *layer = (int)l;
        snprintf(pattern, sizeof pattern, "model.layers.%%d%s", end);
        p = pattern;
    }
    for (int k = 0; k < N_TENSOR_NAMES; k++)
        if (!strcmp(tensor_names[k].hf, p)) {
            snprintf(out, NAME_LEN, tensor_names[k].gguf, *layer);
            return true;
        }
    return false;
}

static lu_status get_arch_int(const lu_gguf *g, const char *arch, const char *suffix, int64_t lo, int64_t hi, int64_t *out)
{
    char key[NAME_LEN];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    LU_TRY(lu_gguf_get_int(g, key, out));
    if (*out < lo || *out > hi)
        return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' = %lld outside [%lld, %lld]", lu_gguf_path(g), key, (long long)*out,
                         (long long)lo, (long long)hi);
    return LU_OK;
}

/* The key's value when present, else *out keeps its default. */
static lu_status opt_arch_float(const lu_gguf *g, const char *arch, const char *suffix, double *out)
{
    char key[NAME_LEN];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return lu_gguf_find_kv(g, key) < 0 ? LU_OK : lu_gguf_get_float(g, key, out);
}

static lu_status opt_arch_int(const lu_gguf *g, const char *arch, const char *suffix, int64_t *out)
{
    char key[NAME_LEN];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return lu_gguf_find_kv(g, key) < 0 ? LU_OK : get_arch_int(g, arch, suffix, 1, INT_MAX, out);
}

static lu_status read_special_ids(const lu_gguf *g, lu_decoder_config *c)
{
    int64_t v;
    c->bos_token_id = -1;
    c->n_eos = 0;
    if (lu_gguf_find_kv(g, "tokenizer.ggml.bos_token_id") >= 0) {
        LU_TRY(lu_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &v));
        c->bos_token_id = v;
    }
    const char *eos_keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"};
    for (int k = 0; k < 2; k++) {
        if (lu_gguf_find_kv(g, eos_keys[k]) < 0) continue;
        LU_TRY(lu_gguf_get_int(g, eos_keys[k], &v));
        if (v < 0 || v >= c->vocab_size)
            return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' = %lld is not a token id (vocabulary %lld)", lu_gguf_path(g),
                             eos_keys[k], (long long)v, (long long)c->vocab_size);
        if (c->n_eos == 0 || c->eos_token_ids[0] != v) c->eos_token_ids[c->n_eos++] = v;
    }
    return LU_OK;
}

lu_status lu_gguf_read_config(const lu_gguf *g, lu_decoder_config *c)
{
    memset(c, 0, sizeof *c);
    const char *arch = lu_gguf_get_str(g, "general.architecture", NULL);
    if (!arch) return lu_error_code();
    bool llama = !strcmp(arch, "llama"), qwen2 = !strcmp(arch, "qwen2"), qwen3 = !strcmp(arch, "qwen3");
    if (!llama && !qwen2 && !qwen3)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: general.architecture '%s' is not supported (llama, qwen2, qwen3)",
                         lu_gguf_path(g), arch);
    int64_t d, layers, heads, kv_heads, ff, head_dim, rot, ctx = 2048;
    LU_TRY(get_arch_int(g, arch, "embedding_length", 1, INT_MAX, &d));
    LU_TRY(get_arch_int(g, arch, "block_count", 1, 100000, &layers));
    LU_TRY(get_arch_int(g, arch, "feed_forward_length", 1, INT_MAX, &ff));
    LU_TRY(get_arch_int(g, arch, "attention.head_count", 1, 100000, &heads));
    kv_heads = heads;
    LU_TRY(opt_arch_int(g, arch, "attention.head_count_kv", &kv_heads));
    head_dim = d / heads;
    LU_TRY(opt_arch_int(g, arch, "attention.key_length", &head_dim));
    int64_t v_dim = head_dim;
    LU_TRY(opt_arch_int(g, arch, "attention.value_length", &v_dim));
    rot = head_dim;
    LU_TRY(opt_arch_int(g, arch, "rope.dimension_count", &rot));
    LU_TRY(opt_arch_int(g, arch, "context_length", &ctx));
    if (v_dim != head_dim || rot != head_dim)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key length %lld, value length %lld and rotary dimensions %lld must be "
                         "equal", lu_gguf_path(g), (long long)head_dim, (long long)v_dim, (long long)rot);
    char key[NAME_LEN];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    const char *scaling = lu_gguf_find_kv(g, key) >= 0 ? lu_gguf_get_str(g, key, NULL) : "none";
    if (!scaling) return lu_error_code();
    if (strcmp(scaling, "none"))
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key '%s' = '%s': scaled RoPE is not supported", lu_gguf_path(g), key, scaling);
    int embd = lu_gguf_find_tensor(g, "token_embd.weight");
    if (embd < 0) return lu_errorf(LU_ERR_FORMAT, "%s: no tensor 'token_embd.weight'", lu_gguf_path(g));
    int ndim;
    int64_t shape[4];
    LU_TRY(lu_gguf_tensor_info(g, embd, NULL, &ndim, shape));
    if (ndim != 2 || shape[1] != d)
        return lu_errorf(LU_ERR_SHAPE, "%s: tensor 'token_embd.weight' must be [vocab, %lld]", lu_gguf_path(g), (long long)d);
    c->vocab_size = shape[0];
    c->hidden_size = d;
    c->intermediate_size = ff;
    c->num_layers = (int)layers;
    c->num_heads = (int)heads;
    c->num_kv_heads = (int)kv_heads;
    c->head_dim = (int)head_dim;
    c->rope_theta = 10000.0;
    LU_TRY(opt_arch_float(g, arch, "rope.freq_base", &c->rope_theta));
    c->rms_norm_eps = 1e-6;
    LU_TRY(opt_arch_float(g, arch, "attention.layer_norm_rms_epsilon", &c->rms_norm_eps));
    c->qk_norm = qwen3;
    c->attention_bias = qwen2;
    c->tie_embeddings = lu_gguf_find_tensor(g, "output.weight") < 0;
    c->init_std = 0.02;
    c->max_position_embeddings = ctx;
    c->dtype = LU_F32;
    return read_special_ids(g, c);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* convert_hf_to_gguf.py LlamaModel.permute: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2), so
 * GGUF row h*hd + 2i + s holds HF row h*hd + s*hd/2 + i. */
static lu_status unpermute_rows(lu_tensor *w, int heads, const char *name)
{
    int64_t rows = w->shape[0], cols = w->shape[1], hd = rows / heads;
    float *x = lu_tensor_data(w), *tmp = malloc((size_t)(hd * cols) * sizeof *tmp);
    if (!tmp) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", name);
    for (int h = 0; h < heads; h++) {
        float *head = x + (int64_t)h * hd * cols;
        memcpy(tmp, head, (size_t)(hd * cols) * sizeof *tmp);
        for (int64_t i = 0; i < hd / 2; i++)
            for (int s = 0; s < 2; s++)
                memcpy(head + (s * hd / 2 + i) * cols, tmp + (2 * i + s) * cols, (size_t)cols * sizeof *tmp);
    }
    free(tmp);
    return LU_OK;
}

static lu_status load_params(const lu_gguf *g, lu_params *p, const lu_decoder_config *c, bool permuted)
{
    int n_tensors = lu_gguf_tensor_count(g);
    bool *used = calloc((size_t)n_tensors + 1, sizeof *used);
    if (!used) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", lu_gguf_path(g));
    lu_status s = LU_OK;
    for (int i = 0; !s && i < p->n; i++) {
        const char *hf = p->items[i].name;
        char name[NAME_LEN];
        int layer, k = -1;
        if (!gguf_name_of(hf, name, &layer) || (k = lu_gguf_find_tensor(g, name)) < 0) {
            char sb[LU_SHAPE_STR_MAX];
            s = lu_errorf(LU_ERR_FORMAT, "%s: parameter '%s' (shape %s) has no tensor '%s' in the file", lu_gguf_path(g), hf,
                          lu_shape_str(p->items[i].t, sb, sizeof sb), k < 0 ? name : hf);
            break;
        }
        used[k] = true;
        s = lu_gguf_read_into(g, name, p->items[i].t);
        if (!s && permuted && ends_with(name, ".attn_q.weight")) s = unpermute_rows(p->items[i].t, c->num_heads, name);
        if (!s && permuted && ends_with(name, ".attn_k.weight")) s = unpermute_rows(p->items[i].t, c->num_kv_heads, name);
    }
    for (int k = 0; !s && k < n_tensors; k++)
        if (!used[k])
            s = lu_errorf(LU_ERR_FORMAT, "%s: unexpected tensor '%s': not a parameter of the model its metadata describes",
                          lu_gguf_path(g), lu_gguf_tensor_name(g, k));
    free(used);
    return s;
}

lu_status lu_gguf_read_decoder(const lu_gguf *g, lu_decoder *m, lu_params **params_out)
{
    *params_out = NULL;
    lu_decoder_config cfg;
    LU_TRY(lu_gguf_read_config(g, &cfg));
    const char *arch = lu_gguf_get_str(g, "general.architecture", NULL);
    lu_params *p = lu_params_new(LU_CPU);
    if (!p) return lu_error_code();
    lu_status s = lu_decoder_declare(m, &cfg, p);
    if (!s) s = lu_params_finalize(p);
    if (!s) s = load_params(g, p, &cfg, !strcmp(arch, "llama"));
    if (s) {
        lu_params_free(p);
        m->params = NULL;
        return s;
    }
    *params_out = p;
    return LU_OK;
}

/* ---- tokenizer ------------------------------------------------------------------------------- */

/* tokenizer.json pre-tokenizer regexes of the families llama.cpp names in tokenizer.ggml.pre
 * (llama-vocab.cpp); Qwen2's is formats.md section 3, Llama-3's its tokenizer.json. */
static const char qwen2_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
static const char llama3_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* tokenizers' Digits(individual_digits = true): every numeric character on its own. */
static const char digits_regex[] = "\\p{N}";

/* llama.cpp token types (llama_token_type / gguf-py TokenType). */
enum { TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4 };

/* The tokenizer parts of a GGUF file's tokenizer.ggml.* metadata; the strings point into the map. */
typedef struct gguf_tokenizer {
    lu_tokenizer_parts parts;
    const char *regex[1];
    const char **tokens, **merges;
    uint8_t *kind;
} gguf_tokenizer;

static void gguf_tokenizer_free(gguf_tokenizer *t)
{
    free(t->tokens);
    free(t->merges);
    free(t->kind);
}

static lu_status gguf_tokenizer_read(const lu_gguf *g, gguf_tokenizer *t)
{
    *t = (gguf_tokenizer){.parts = {.name = lu_gguf_path(g)}};
    lu_tokenizer_parts *parts = &t->parts;
    const char *model = lu_gguf_get_str(g, "tokenizer.ggml.model", NULL);
    if (!model) return lu_error_code();
    if (strcmp(model, "gpt2"))
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%s' is not supported (gpt2: byte-level BPE)",
                         lu_gguf_path(g), model);
    const char *pre = lu_gguf_find_kv(g, "tokenizer.ggml.pre") >= 0 ? lu_gguf_get_str(g, "tokenizer.ggml.pre", NULL)
                                                                    : "default";
    if (!pre) return lu_error_code();
    if (!strcmp(pre, "default") || !strcmp(pre, "gpt-2")) {
        parts->gpt2_regex = true;
    } else if (!strcmp(pre, "smollm")) {
        t->regex[parts->n_regex++] = digits_regex;
        parts->gpt2_regex = true;
    } else if (!strcmp(pre, "qwen2")) {
        t->regex[parts->n_regex++] = qwen2_regex;
        parts->nfc = true;
    } else if (!strcmp(pre, "llama-bpe")) {
        t->regex[parts->n_regex++] = llama3_regex;
    } else {
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: tokenizer.ggml.pre '%s' is not supported (default, gpt-2, smollm, qwen2, "
                         "llama-bpe)", lu_gguf_path(g), pre);
    }
    parts->regex = t->regex;
    lu_gguf_type elem;
    int64_t n_tokens = 0, n_types = 0, n_merges = 0;
    if (lu_gguf_kv_info(g, "tokenizer.ggml.tokens", NULL, &elem, &n_tokens) ||
        lu_gguf_kv_info(g, "tokenizer.ggml.token_type", NULL, NULL, &n_types) ||
        lu_gguf_kv_info(g, "tokenizer.ggml.merges", NULL, NULL, &n_merges))
        return lu_error_code();
    if (n_tokens > INT32_MAX || n_types != n_tokens)
        return lu_errorf(LU_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %lld entries for %lld tokens", lu_gguf_path(g),
                         (long long)n_types, (long long)n_tokens);
    t->tokens = calloc((size_t)n_tokens + 1, sizeof *t->tokens);
    t->merges = calloc((size_t)n_merges + 1, sizeof *t->merges);
    t->kind = calloc((size_t)n_tokens + 1, 1);
    if (!t->tokens || !t->merges || !t->kind) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory for the tokenizer", lu_gguf_path(g));
    for (int64_t i = 0; i < n_tokens; i++) {
        int64_t type;
        if (!(t->tokens[i] = lu_gguf_array_str(g, "tokenizer.ggml.tokens", i, NULL)) ||
            lu_gguf_array_int(g, "tokenizer.ggml.token_type", i, &type))
            return lu_error_code();
        t->kind[i] = type == TOKEN_CONTROL ? LU_TOKEN_SPECIAL : type == TOKEN_USER_DEFINED ? LU_TOKEN_ADDED : LU_TOKEN_NORMAL;
    }
    for (int64_t i = 0; i < n_merges; i++)
        if (!(t->merges[i] = lu_gguf_array_str(g, "tokenizer.ggml.merges", i, NULL))) return lu_error_code();
    parts->n_tokens = (int32_t)n_tokens;
    parts->tokens = t->tokens;
    parts->kind = t->kind;
    parts->n_merges = n_merges;
    parts->merges = t->merges;
    return LU_OK;
}

lu_tokenizer *lu_gguf_read_tokenizer(const lu_gguf *g)
{
    gguf_tokenizer gt;
    lu_tokenizer *t = gguf_tokenizer_read(g, &gt) ? NULL : lu_tokenizer_from_parts(&gt.parts);
    gguf_tokenizer_free(&gt);
    return t;
}

/* Writes text to dir/name through a temporary file renamed into place. */
static lu_status write_text(const char *dir, const char *name, const char *text)
{
    char path[4096], tmp[4096 + 16];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return lu_errorf(LU_ERR_IO, "path too long: %s", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return lu_errorf(LU_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n;
    ok = !fclose(f) && ok;
    if (!ok || rename(tmp, path)) {
        remove(tmp);
        return lu_errorf(LU_ERR_IO, "cannot write %s", path);
    }
    return LU_OK;
}

lu_status lu_gguf_save_tokenizer(const lu_gguf *g, const char *dir)
{
    gguf_tokenizer gt;
    lu_status s = gguf_tokenizer_read(g, &gt);
    char *json = s ? NULL : lu_tokenizer_parts_json(&gt.parts);
    if (!s && !json) s = lu_error_code();
    if (!s) s = write_text(dir, "tokenizer.json", json);
    free(json);
    /* tokenizer_config.json: the special tokens by content and the chat template, as transformers
     * reads them. */
    cJSON *cfg = s ? NULL : cJSON_CreateObject();
    const char *keys[][2] = {{"tokenizer.ggml.bos_token_id", "bos_token"}, {"tokenizer.ggml.eos_token_id", "eos_token"},
                             {"tokenizer.ggml.padding_token_id", "pad_token"}};
    for (int i = 0; cfg && i < 3; i++) {
        int64_t id;
        if (lu_gguf_find_kv(g, keys[i][0]) >= 0 && !lu_gguf_get_int(g, keys[i][0], &id) && id >= 0 && id < gt.parts.n_tokens)
            cJSON_AddStringToObject(cfg, keys[i][1], gt.parts.tokens[id]);
    }
    if (cfg && lu_gguf_find_kv(g, "tokenizer.chat_template") >= 0) {
        const char *tpl = lu_gguf_get_str(g, "tokenizer.chat_template", NULL);
        if (tpl) cJSON_AddStringToObject(cfg, "chat_template", tpl);
    }
    if (cfg) cJSON_AddStringToObject(cfg, "tokenizer_class", "PreTrainedTokenizerFast");
    char *text = cfg ? cJSON_Print(cfg) : NULL;
    if (cfg && !text) s = lu_errorf(LU_ERR_NOMEM, "%s: out of memory", dir);
    if (!s) s = write_text(dir, "tokenizer_config.json", text);
    free(text);
    cJSON_Delete(cfg);
    gguf_tokenizer_free(&gt);
    return s;
}

lu_status lu_gguf_load_decoder(const char *path, lu_decoder *m, lu_params **params_out, lu_tokenizer **tok)
{
    *params_out = NULL;
    if (tok) *tok = NULL;
    lu_gguf *g = lu_gguf_open(path);
    if (!g) return lu_error_code();
    lu_status s = lu_gguf_read_decoder(g, m, params_out);
    if (!s && tok && !(*tok = lu_gguf_read_tokenizer(g))) {
        s = lu_error_code();
        lu_params_free(*params_out);
        *params_out = NULL;
        m->params = NULL;
    }
    lu_gguf_close(g);
    return s;
}
