/* conformer.c - torchaudio Conformer, the early-exit Conformer baseline and Splitformer from core
 * ops (see conformer.h). Sources: pytorch/audio src/torchaudio/models/conformer.py and
 * augustgw/early-exit-transformer models/model/early_exit.py at 7adad07 (asr.md 3, 4, 6).
 * Backward comes from the autograd tape. */
#include "models/conformer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "core/rng.h"
#include "core/fileio.h"
#include "core/safetensors.h"

#define NAME_LEN 256     /* a full parameter name */
#define LAYER_LEN 160    /* "<prefix>conformer_layers.{l}." */
#define PREFIX_LEN 96    /* a stack prefix ("conformer_parallel.{k}.") */
#define LN_EPS 1e-5        /* torch.nn.LayerNorm default */
#define BN_EPS 1e-5        /* torch.nn.BatchNorm1d defaults */
#define BN_MOMENTUM 0.1

/* ---- configuration ------------------------------------------------------------------------- */

lu_status lu_conformer_config_check(const lu_conformer_config *c)
{
    if (c->input_dim <= 0 || c->num_heads <= 0 || c->input_dim % c->num_heads)
        return lu_errorf(LU_ERR_CONFIG, "conformer: input_dim %lld must be a positive multiple of num_heads %d",
                         (long long)c->input_dim, c->num_heads);
    if (c->ffn_dim <= 0 || c->num_layers <= 0)
        return lu_errorf(LU_ERR_CONFIG, "conformer: ffn_dim %lld and num_layers %d must be positive",
                         (long long)c->ffn_dim, c->num_layers);
    if (c->depthwise_conv_kernel_size <= 0 || c->depthwise_conv_kernel_size % 2 == 0)
        return lu_errorf(LU_ERR_CONFIG, "conformer: depthwise_conv_kernel_size %d must be positive and odd",
                         c->depthwise_conv_kernel_size);
    if (!(c->dropout >= 0 && c->dropout < 1))
        return lu_errorf(LU_ERR_CONFIG, "conformer: dropout %g must be in [0, 1)", c->dropout);
    return LU_OK;
}

static lu_status json_int(const cJSON *it, const char *path, int64_t lo, int64_t *out)
{
    double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!(v >= (double)lo && v <= 1e9 && v == floor(v)))
        return lu_errorf(LU_ERR_CONFIG, "conformer config %s: '%s' must be an integer >= %lld", path, it->string,
                         (long long)lo);
    *out = (int64_t)v;
    return LU_OK;
}

lu_status lu_conformer_config_load_json(const char *path, lu_conformer_config *c)
{
    static const char *const ints[] = {"input_dim", "num_heads", "ffn_dim", "num_layers", "depthwise_conv_kernel_size"};
    enum { N_INTS = 5 };
    char *text = lu_file_read(path, (size_t)1 << 20, NULL);
    if (!text) return lu_error_context("conformer config ");
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lu_errorf(LU_ERR_CONFIG, "conformer config %s: not a JSON object", path);
    }
    int64_t v[N_INTS];
    bool seen[N_INTS] = {false};
    lu_conformer_config out = {0};
    lu_status s = LU_OK;
    for (const cJSON *it = root->child; it && s == LU_OK; it = it->next) {
        int k = 0;
        while (k < N_INTS && strcmp(it->string, ints[k])) k++;
        if (k < N_INTS) {
            s = json_int(it, path, 1, &v[k]);
            seen[k] = true;
        } else if (!strcmp(it->string, "dropout")) {
            if (!cJSON_IsNumber(it)) s = lu_errorf(LU_ERR_CONFIG, "conformer config %s: 'dropout' must be a number", path);
            else out.dropout = it->valuedouble;
        } else if (!strcmp(it->string, "use_group_norm") || !strcmp(it->string, "convolution_first")) {
            if (!cJSON_IsFalse(it))
                s = lu_errorf(LU_ERR_CONFIG, "conformer config %s: '%s' must be false (only the BatchNorm, attention-first layer is implemented)",
                              path, it->string);
        } else {
            s = lu_errorf(LU_ERR_CONFIG, "conformer config %s: unknown key '%s' (expected torchaudio Conformer arguments "
                          "input_dim, num_heads, ffn_dim, num_layers, depthwise_conv_kernel_size, dropout)", path, it->string);
        }
    }
    cJSON_Delete(root);
    for (int k = 0; k < N_INTS && s == LU_OK; k++)
        if (!seen[k]) s = lu_errorf(LU_ERR_CONFIG, "conformer config %s: missing key '%s'", path, ints[k]);
    if (s != LU_OK) return s;
    out.input_dim = v[0];
    out.num_heads = (int)v[1];
    out.ffn_dim = v[2];
    out.num_layers = (int)v[3];
    out.depthwise_conv_kernel_size = (int)v[4];
    if (lu_conformer_config_check(&out)) return lu_error_context("conformer config %s: ", path);
    *c = out;
    return LU_OK;
}

/* ---- parameters ---------------------------------------------------------------------------- */

/* LayerNorm / Linear / Conv1d: weight of `shape` and bias [shape[0]] under name.weight/.bias. */
static lu_status declare_wb(lu_params *p, const char *layer, const char *module, int ndim, const int64_t *shape)
{
    LU_TRY(lu_params_declare(p, LU_F32, true, ndim, shape, "%s%s.weight", layer, module));
    return lu_params_declare(p, LU_F32, true, 1, shape, "%s%s.bias", layer, module);
}

static lu_status declare_layer(lu_params *p, const char *layer, const lu_conformer_config *c)
{
    int64_t D = c->input_dim, F = c->ffn_dim, K = c->depthwise_conv_kernel_size;
    for (int i = 1; i <= 2; i++) {
        char ffn[24];
        snprintf(ffn, sizeof ffn, "ffn%d.sequential", i);
        char m[48];
        snprintf(m, sizeof m, "%s.0", ffn);
        LU_TRY(declare_wb(p, layer, m, LU_SHAPE(D)));
        snprintf(m, sizeof m, "%s.1", ffn);
        LU_TRY(declare_wb(p, layer, m, LU_SHAPE(F, D)));
        snprintf(m, sizeof m, "%s.4", ffn);
        LU_TRY(declare_wb(p, layer, m, LU_SHAPE(D, F)));
    }
    LU_TRY(declare_wb(p, layer, "self_attn_layer_norm", LU_SHAPE(D)));
    LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(3 * D, D), "%sself_attn.in_proj_weight", layer));
    LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(3 * D), "%sself_attn.in_proj_bias", layer));
    LU_TRY(declare_wb(p, layer, "self_attn.out_proj", LU_SHAPE(D, D)));
    LU_TRY(declare_wb(p, layer, "conv_module.layer_norm", LU_SHAPE(D)));
    LU_TRY(declare_wb(p, layer, "conv_module.sequential.0", LU_SHAPE(2 * D, D, 1)));
    LU_TRY(declare_wb(p, layer, "conv_module.sequential.2", LU_SHAPE(D, 1, K)));
    LU_TRY(declare_wb(p, layer, "conv_module.sequential.3", LU_SHAPE(D)));
    LU_TRY(lu_params_declare(p, LU_F32, false, LU_SHAPE(D), "%sconv_module.sequential.3.running_mean", layer));
    LU_TRY(lu_params_declare(p, LU_F32, false, LU_SHAPE(D), "%sconv_module.sequential.3.running_var", layer));
    LU_TRY(declare_wb(p, layer, "conv_module.sequential.5", LU_SHAPE(D, D, 1)));
    return declare_wb(p, layer, "final_layer_norm", LU_SHAPE(D));
}

lu_status lu_conformer_declare(lu_params *p, const char *prefix, const lu_conformer_config *c)
{
    LU_TRY(lu_conformer_config_check(c));
    for (int l = 0; l < c->num_layers; l++) {
        char layer[LAYER_LEN];
        snprintf(layer, sizeof layer, "%sconformer_layers.%d.", prefix, l);
        LU_TRY(declare_layer(p, layer, c));
    }
    return LU_OK;
}

/* ---- the torchaudio layer (asr.md 3) ------------------------------------------------------- */

static lu_tensor *param(const lu_params *p, const char *layer, const char *suffix)
{
    char n[NAME_LEN];
    snprintf(n, sizeof n, "%s%s", layer, suffix);
    return lu_params_get(p, n);
}

static lu_tensor *dropout(lu_tensor *x, double rate, lu_conformer_run *run)
{
    if (!run->training || rate == 0) return x;
    return lu_dropout(x, rate, run->seed, run->step, run->site++);
}

/* LayerNorm -> Linear(D, F) -> SiLU -> Dropout -> Linear(F, D) -> Dropout; ffn is "ffn1" or "ffn2". */
static lu_tensor *feed_forward(const lu_params *p, const char *layer, const char *ffn, const lu_conformer_config *c,
                               lu_tensor *x, lu_conformer_run *run)
{
    char w[3][64], b[3][64];
    static const char *const at[] = {"0", "1", "4"};
    for (int i = 0; i < 3; i++) {
        snprintf(w[i], sizeof w[i], "%s.sequential.%s.weight", ffn, at[i]);
        snprintf(b[i], sizeof b[i], "%s.sequential.%s.bias", ffn, at[i]);
    }
    lu_tensor *h = lu_layernorm(x, param(p, layer, w[0]), param(p, layer, b[0]), LN_EPS);
    h = dropout(lu_silu(lu_linear(h, param(p, layer, w[1]), param(p, layer, b[1]))), c->dropout, run);
    return dropout(lu_linear(h, param(p, layer, w[2]), param(p, layer, b[2])), c->dropout, run);
}

/* torch.nn.MultiheadAttention(D, H) on LN(x): packed in-projection, heads of D/H channels,
 * softmax(q k^T / sqrt(D/H)) over unmasked keys, dropout on the weights, out-projection. */
static lu_tensor *self_attention(const lu_params *p, const char *layer, const lu_conformer_config *c, lu_tensor *x,
                                 lu_tensor *mask, lu_conformer_run *run)
{
    int64_t B = x->shape[0], T = x->shape[1], D = c->input_dim, H = c->num_heads;
    lu_tensor *h = lu_layernorm(x, param(p, layer, "self_attn_layer_norm.weight"),
                                param(p, layer, "self_attn_layer_norm.bias"), LN_EPS);
    lu_tensor *qkv = lu_linear(h, param(p, layer, "self_attn.in_proj_weight"), param(p, layer, "self_attn.in_proj_bias"));
    qkv = lu_reshape(qkv, LU_SHAPE(B, T, 3, H, D / H));
    lu_tensor *q = lu_squeeze(lu_slice(qkv, 2, 0, 1, 1), 2);
    lu_tensor *k = lu_squeeze(lu_slice(qkv, 2, 1, 2, 1), 2);
    lu_tensor *v = lu_squeeze(lu_slice(qkv, 2, 2, 3, 1), 2);
    lu_attention_opts ao = {.key_padding_mask = mask};
    lu_tensor *a;
    if (run->training && c->dropout > 0) {
        lu_tensor *weights = NULL;
        ao.weights_out = &weights;
        if (!lu_attention(q, k, v, &ao)) return NULL;
        a = lu_attention_apply(dropout(weights, c->dropout, run), v);
    } else {
        a = lu_attention(q, k, v, &ao);
    }
    a = lu_reshape(a, LU_SHAPE(B, T, D));
    a = lu_linear(a, param(p, layer, "self_attn.out_proj.weight"), param(p, layer, "self_attn.out_proj.bias"));
    return dropout(a, c->dropout, run);
}

/* LayerNorm -> pointwise Conv1d(D, 2D) -> GLU -> depthwise Conv1d(k, pad (k-1)/2) -> BatchNorm1d
 * -> SiLU -> pointwise Conv1d(D, D) -> Dropout. Pointwise convolutions run as linears on [B,T,C]
 * (the same sums); padded frames are not masked (torchaudio). */
static lu_tensor *convolution(const lu_params *p, const char *layer, const lu_conformer_config *c, lu_tensor *x,
                              lu_conformer_run *run)
{
    int64_t D = c->input_dim;
    int K = c->depthwise_conv_kernel_size;
    lu_tensor *h = lu_layernorm(x, param(p, layer, "conv_module.layer_norm.weight"),
                                param(p, layer, "conv_module.layer_norm.bias"), LN_EPS);
    lu_tensor *w0 = lu_reshape(param(p, layer, "conv_module.sequential.0.weight"), LU_SHAPE(2 * D, D));
    h = lu_linear(h, w0, param(p, layer, "conv_module.sequential.0.bias"));
    h = lu_mul(lu_slice(h, -1, 0, D, 1), lu_sigmoid(lu_slice(h, -1, D, 2 * D, 1)));
    h = lu_conv1d(lu_transpose(h, 1, 2), param(p, layer, "conv_module.sequential.2.weight"),
                  param(p, layer, "conv_module.sequential.2.bias"), 1, (K - 1) / 2, 1, (int)D);
    h = lu_batchnorm(h, param(p, layer, "conv_module.sequential.3.weight"), param(p, layer, "conv_module.sequential.3.bias"),
                     param(p, layer, "conv_module.sequential.3.running_mean"),
                     param(p, layer, "conv_module.sequential.3.running_var"), run->training, BN_MOMENTUM, BN_EPS);
    h = lu_transpose(lu_silu(h), 1, 2);
    lu_tensor *w5 = lu_reshape(param(p, layer, "conv_module.sequential.5.weight"), LU_SHAPE(D, D));
    h = lu_linear(h, w5, param(p, layer, "conv_module.sequential.5.bias"));
    return dropout(h, c->dropout, run);
}

lu_tensor *lu_conformer_layer_forward(const lu_params *p, const char *name, const lu_conformer_config *c,
                                      lu_tensor *x, lu_tensor *key_padding_mask, lu_conformer_run *run)
{
    LU_PROPAGATE_NULL(x);
    lu_conformer_run eval = {0};
    if (!run) run = &eval;
    char sx[LU_SHAPE_STR_MAX];
    if (x->ndim != 3 || x->shape[2] != c->input_dim) {
        lu_errorf(LU_ERR_SHAPE, "conformer layer %s: x %s must be [B, T, %lld]", name, lu_shape_str(x, sx, sizeof sx),
                  (long long)c->input_dim);
        return NULL;
    }
    x = lu_add(lu_scale(feed_forward(p, name, "ffn1", c, x, run), 0.5), x);
    x = lu_add(self_attention(p, name, c, x, key_padding_mask, run), x);
    x = lu_add(convolution(p, name, c, x, run), x);
    x = lu_add(lu_scale(feed_forward(p, name, "ffn2", c, x, run), 0.5), x);
    return lu_layernorm(x, param(p, name, "final_layer_norm.weight"), param(p, name, "final_layer_norm.bias"), LN_EPS);
}

/* ---- stacks and lengths -------------------------------------------------------------------- */

/* Host copy of lengths [B] (i32/i64) as int64; what names the tensor in errors. */
static int64_t *lengths_to_host(const lu_tensor *lengths, int64_t B, const char *what)
{
    char sl[LU_SHAPE_STR_MAX];
    if (lengths->ndim != 1 || lengths->shape[0] != B || (lengths->dtype != LU_I32 && lengths->dtype != LU_I64)) {
        lu_errorf(LU_ERR_SHAPE, "%s: lengths %s %s must be i32/i64 [B] with B = %lld", what,
                  lu_shape_str(lengths, sl, sizeof sl), lu_dtype_name(lengths->dtype), (long long)B);
        return NULL;
    }
    int64_t *h = malloc((size_t)(B > 0 ? B : 1) * sizeof *h);
    if (!h) lu_errorf(LU_ERR_NOMEM, "%s: out of memory", what);
    else if (lu_tensor_to_host(lengths, LU_I64, h)) {
        free(h);
        return NULL;
    }
    return h;
}

/* Key padding mask [B,T] u8, 1 where t >= len[b] (torchaudio _lengths_to_padding_mask); every
 * len[b] must be in [1, T] (an all-masked row gives NaN in torch). */
static lu_tensor *padding_mask(const int64_t *len, int64_t B, int64_t T, lu_device dev, const char *what)
{
    for (int64_t b = 0; b < B; b++)
        if (len[b] < 1 || len[b] > T) {
            lu_errorf(LU_ERR_INVALID, "%s: length %lld of utterance %lld is outside [1, T = %lld]", what,
                      (long long)len[b], (long long)b, (long long)T);
            return NULL;
        }
    uint8_t *m = malloc((size_t)(B * T > 0 ? B * T : 1));
    if (!m) {
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", what);
        return NULL;
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) m[b * T + t] = t >= len[b];
    lu_tensor *mask = lu_tensor_from_host(LU_U8, LU_SHAPE(B, T), dev, m);
    free(m);
    return mask;
}

static lu_tensor *stack_forward(const lu_params *p, const char *prefix, const lu_conformer_config *c, lu_tensor *x,
                                lu_tensor *mask, lu_conformer_run *run)
{
    for (int l = 0; l < c->num_layers && x; l++) {
        char layer[LAYER_LEN];
        snprintf(layer, sizeof layer, "%sconformer_layers.%d.", prefix, l);
        x = lu_conformer_layer_forward(p, layer, c, x, mask, run);
    }
    return x;
}

lu_tensor *lu_conformer_forward(const lu_params *p, const char *prefix, const lu_conformer_config *c, lu_tensor *x,
                                lu_tensor *lengths, lu_conformer_run *run)
{
    LU_PROPAGATE_NULL(x, lengths);
    lu_conformer_run eval = {0};
    if (!run) run = &eval;
    char sx[LU_SHAPE_STR_MAX];
    if (x->ndim != 3 || x->shape[2] != c->input_dim) {
        lu_errorf(LU_ERR_SHAPE, "conformer: x %s must be [B, T, input_dim = %lld]", lu_shape_str(x, sx, sizeof sx),
                  (long long)c->input_dim);
        return NULL;
    }
    int64_t *len = lengths_to_host(lengths, x->shape[0], "conformer");
    if (!len) return NULL;
    lu_tensor *mask = padding_mask(len, x->shape[0], x->shape[1], lu_tensor_device(x), "conformer");
    free(len);
    return mask ? stack_forward(p, prefix, c, x, mask, run) : NULL;
}

/* ---- early-exit Conformer and Splitformer (asr.md 4, 6) ------------------------------------- */

lu_ee_conformer_config lu_ee_conformer_paper_config(bool splitformer)
{
    lu_ee_conformer_config c = {
        .block = {.input_dim = 256, .num_heads = 8, .ffn_dim = 2048, .num_layers = 2,
                  .depthwise_conv_kernel_size = 31, .dropout = 0.1},
        .n_mels = 80, .vocab_size = 256, .n_exits = 6, .max_len = 2000,
        .split_num_layers = 1, .split_factor = 2,
    };
    if (splitformer) {
        c.n_split = 2;
        c.split_exits[0] = 0;
        c.split_exits[1] = c.n_exits - 1;
    }
    return c;
}

static lu_conformer_config split_config(const lu_ee_conformer_config *c)
{
    lu_conformer_config s = c->block;
    s.num_layers = c->split_num_layers;
    return s;
}

/* Index k of the parallel branch at block i, or -1. */
static int split_index(const lu_ee_conformer_config *c, int i)
{
    for (int k = 0; k < c->n_split; k++)
        if (c->split_exits[k] == i) return k;
    return -1;
}

static lu_status ee_config_check(const lu_ee_conformer_config *c)
{
    LU_TRY(lu_conformer_config_check(&c->block));
    if (c->n_mels <= 0 || c->vocab_size <= 0 || c->max_len <= 0)
        return lu_errorf(LU_ERR_CONFIG, "ee_conformer: n_mels %lld, vocab_size %lld and max_len %lld must be positive",
                         (long long)c->n_mels, (long long)c->vocab_size, (long long)c->max_len);
    if (c->n_exits < 1 || c->n_exits > LU_CONFORMER_MAX_EXITS)
        return lu_errorf(LU_ERR_CONFIG, "ee_conformer: n_exits %d must be in [1, %d]", c->n_exits, LU_CONFORMER_MAX_EXITS);
    if (c->n_split < 0 || c->n_split > c->n_exits)
        return lu_errorf(LU_ERR_CONFIG, "ee_conformer: %d split exits for %d exits", c->n_split, c->n_exits);
    for (int k = 0; k < c->n_split; k++)
        if (c->split_exits[k] < 0 || c->split_exits[k] >= c->n_exits || (k && c->split_exits[k] <= c->split_exits[k - 1]))
            return lu_errorf(LU_ERR_CONFIG, "ee_conformer: split exit %d must be an increasing block index in [0, %d)",
                             c->split_exits[k], c->n_exits);
    if (c->n_split && (c->split_num_layers < 1 || c->split_factor < 1))
        return lu_errorf(LU_ERR_CONFIG, "ee_conformer: split_num_layers %d and split_factor %d must be >= 1",
                         c->split_num_layers, c->split_factor);
    return LU_OK;
}

lu_status lu_ee_conformer_declare(lu_ee_conformer *m, const lu_ee_conformer_config *c, lu_params *p)
{
    LU_TRY(ee_config_check(c));
    m->cfg = *c;
    m->params = p;
    int64_t D = c->block.input_dim;
    LU_TRY(declare_wb(p, "conv_subsample.", "sequential.0", LU_SHAPE(D, c->n_mels, 3)));
    LU_TRY(declare_wb(p, "conv_subsample.", "sequential.1", LU_SHAPE(D, D, 3)));
    char prefix[PREFIX_LEN];
    for (int i = 0; i < c->n_exits; i++) {
        snprintf(prefix, sizeof prefix, "conformer.%d.", i);
        LU_TRY(lu_conformer_declare(p, prefix, &c->block));
    }
    lu_conformer_config s = split_config(c);
    for (int k = 0; k < c->n_split; k++) {
        snprintf(prefix, sizeof prefix, "conformer_parallel.%d.", k);
        LU_TRY(lu_conformer_declare(p, prefix, &s));
    }
    for (int i = 0; i < c->n_exits; i++) {
        snprintf(prefix, sizeof prefix, "linears.%d", i);
        LU_TRY(declare_wb(p, "", prefix, LU_SHAPE(c->vocab_size, D)));
    }
    return LU_OK;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* fan_in, fan_out of a weight as torch.nn.init._calculate_fan_in_and_fan_out. */
static void fans(const lu_tensor *w, double *fan_in, double *fan_out)
{
    double receptive = 1;
    for (int d = 2; d < w->ndim; d++) receptive *= (double)w->shape[d];
    *fan_in = (double)w->shape[1] * receptive;
    *fan_out = (double)w->shape[0] * receptive;
}

lu_status lu_ee_conformer_init(lu_ee_conformer *m, uint64_t seed)
{
    lu_params *p = m->params;
    if (!p->finalized) return lu_errorf(LU_ERR_STATE, "ee_conformer: init needs finalised params");
    for (int i = 0; i < p->n; i++) {
        const char *name = p->items[i].name;
        lu_tensor *t = p->items[i].t;
        double fi, fo;
        if (t->ndim > 1) {
            fans(t, &fi, &fo);
            double a = sqrt(6.0 / (fi + fo)); /* xavier_uniform_, gain 1 */
            LU_TRY(lu_tensor_rand_uniform(t, -a, a, seed, (uint32_t)i));
        } else if (ends_with(name, ".running_var")) {
            LU_TRY(lu_tensor_fill(t, 1.0));
        } else if (ends_with(name, ".running_mean") || ends_with(name, "in_proj_bias") ||
                   ends_with(name, "out_proj.bias")) {
            LU_TRY(lu_tensor_fill(t, 0.0)); /* MultiheadAttention._reset_parameters */
        } else {
            /* A bias (or norm weight): the owner's weight decides between a Linear/Conv1d bias,
             * U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and a LayerNorm/BatchNorm (weight 1, bias 0). */
            char wname[NAME_LEN];
            size_t n = strlen(name);
            bool is_bias = ends_with(name, ".bias");
            snprintf(wname, sizeof wname, "%.*sweight", (int)(n - (is_bias ? 4 : 6)), name);
            const lu_param *w = lu_params_find(p, wname);
            if (is_bias && w && w->t->ndim > 1) {
                fans(w->t, &fi, &fo);
                double b = 1.0 / sqrt(fi);
                LU_TRY(lu_tensor_rand_uniform(t, -b, b, seed, (uint32_t)i));
            } else {
                LU_TRY(lu_tensor_fill(t, is_bias ? 0.0 : 1.0));
            }
        }
    }
    return LU_OK;
}

int64_t lu_ee_conformer_out_frames(int64_t t)
{
    if (t < 3) return 0;
    int64_t t1 = (t - 3) / 2 + 1;
    return t1 < 3 ? 0 : (t1 - 3) / 2 + 1;
}

/* The authors' PositionalEncoding rows 0..T-1 [T, D], computed in float32 as torch does:
 * pe[t, 2i] = sin(t * exp(2i * -ln(10000)/D)), pe[t, 2i+1] = cos(same). */
static lu_tensor *positional_encoding(int64_t T, int64_t D, lu_device dev)
{
    float *pe = malloc((size_t)(T * D) * sizeof *pe);
    if (!pe) {
        lu_errorf(LU_ERR_NOMEM, "ee_conformer: out of memory for the positional encoding");
        return NULL;
    }
    float c = (float)(-log(10000.0) / (double)D);
    for (int64_t i = 0; 2 * i < D; i++) {
        float div = expf((float)(2 * i) * c);
        for (int64_t t = 0; t < T; t++) {
            float arg = (float)t * div;
            pe[t * D + 2 * i] = sinf(arg);
            if (2 * i + 1 < D) pe[t * D + 2 * i + 1] = cosf(arg);
        }
    }
    lu_tensor *y = lu_tensor_from_host(LU_F32, LU_SHAPE(T, D), dev, pe);
    free(pe);
    return y;
}

/* Splitformer branch at a block: zero-pad T to a multiple of f, keep frames 0, f, 2f, ...
 * (lu_decimate: the pad frames are never kept), run the parallel Conformer, repeat each frame f
 * times and cut to T. The branch mask follows the code, min(floor((raw_len + pad)/f), T_ds) from
 * the 100 Hz frame counts, which leaves it all-valid unless an utterance is much shorter than
 * the batch (asr.md 6). */
static lu_tensor *split_branch(lu_ee_conformer *m, int k, lu_tensor *x, const int64_t *raw_len, lu_conformer_run *run)
{
    const lu_ee_conformer_config *c = &m->cfg;
    int64_t B = x->shape[0], T = x->shape[1], f = c->split_factor;
    int64_t pad = (f - T % f) % f, Tds = (T + pad) / f;
    int64_t *len = malloc((size_t)B * sizeof *len);
    if (!len) {
        lu_errorf(LU_ERR_NOMEM, "splitformer: out of memory");
        return NULL;
    }
    for (int64_t b = 0; b < B; b++) {
        int64_t l = (raw_len[b] + pad) / f;
        len[b] = l < Tds ? l : Tds;
    }
    lu_tensor *mask = padding_mask(len, B, Tds, lu_tensor_device(x), "splitformer branch");
    free(len);
    if (!mask) return NULL;
    char prefix[PREFIX_LEN];
    snprintf(prefix, sizeof prefix, "conformer_parallel.%d.", k);
    lu_conformer_config s = split_config(c);
    lu_tensor *y = stack_forward(m->params, prefix, &s, lu_decimate(x, 1, (int)f), mask, run);
    return lu_upsample(y, 1, (int)f, T);
}

/* Conv1dSubampling (two Conv1d(k 3, stride 2), no activation) on feats [B,T,F] read as
 * (B, F, T), then + positional encoding and dropout: [B,T',D]. */
static lu_tensor *front_end(lu_ee_conformer *m, lu_tensor *feats, int64_t t_out, lu_conformer_run *run)
{
    lu_tensor *h = lu_transpose(feats, 1, 2);
    for (int i = 0; i < 2; i++) {
        char w[48], b[48];
        snprintf(w, sizeof w, "conv_subsample.sequential.%d.weight", i);
        snprintf(b, sizeof b, "conv_subsample.sequential.%d.bias", i);
        h = lu_conv1d(h, lu_params_get(m->params, w), lu_params_get(m->params, b), 2, 0, 1, 1);
    }
    lu_tensor *pe = h ? positional_encoding(t_out, m->cfg.block.input_dim, lu_tensor_device(feats)) : NULL;
    return dropout(lu_add(lu_transpose(h, 1, 2), pe), m->cfg.block.dropout, run);
}

lu_status lu_ee_conformer_begin(lu_ee_conformer *m, lu_tensor *feats, lu_tensor *lengths, lu_conformer_run *run,
                                lu_ee_conformer_steps *st)
{
    const lu_ee_conformer_config *c = &m->cfg;
    *st = (lu_ee_conformer_steps){.m = m, .run = run};
    if (!run) st->run = &st->eval;
    if (!feats || !lengths) return lu_error_code();
    char sf[LU_SHAPE_STR_MAX];
    if (feats->ndim != 3 || feats->shape[2] != c->n_mels)
        return lu_errorf(LU_ERR_SHAPE, "ee_conformer: feats %s must be [B, T, n_mels = %lld]",
                         lu_shape_str(feats, sf, sizeof sf), (long long)c->n_mels);
    int64_t B = feats->shape[0], T = lu_ee_conformer_out_frames(feats->shape[1]);
    if (T < 1 || T > c->max_len)
        return lu_errorf(LU_ERR_SHAPE, "ee_conformer: feats %s give %lld frames after subsampling, outside [1, max_len = %lld]",
                         lu_shape_str(feats, sf, sizeof sf), (long long)T, (long long)c->max_len);
    st->batch = B;
    st->device = lu_tensor_device(feats);
    st->raw = lengths_to_host(lengths, B, "ee_conformer");
    st->len = st->raw ? malloc((size_t)B * sizeof *st->len) : NULL;
    if (!st->len) {
        lu_status s = st->raw ? lu_errorf(LU_ERR_NOMEM, "ee_conformer: out of memory") : lu_error_code();
        lu_ee_conformer_steps_end(st);
        return s;
    }
    /* torch.clamp(lengths / 4, max=T').to(int) */
    for (int64_t b = 0; b < B; b++) st->len[b] = st->raw[b] < 0 ? -1 : (st->raw[b] / 4 < T ? st->raw[b] / 4 : T);
    st->mask = padding_mask(st->len, B, T, st->device, "ee_conformer");
    st->h = st->mask ? front_end(m, feats, T, st->run) : NULL;
    if (!st->h) {
        lu_ee_conformer_steps_end(st);
        return lu_error_code();
    }
    return LU_OK;
}

lu_tensor *lu_ee_conformer_next(lu_ee_conformer_steps *st)
{
    const lu_ee_conformer_config *c = &st->m->cfg;
    if (!st->h || !st->len) {
        lu_errorf(LU_ERR_STATE, "ee_conformer: the forward failed or was not begun");
        return NULL;
    }
    if (st->done >= c->n_exits) {
        lu_errorf(LU_ERR_STATE, "ee_conformer: all %d blocks have run", c->n_exits);
        return NULL;
    }
    int i = st->done++;
    lu_tensor *block_in = st->h;
    char prefix[PREFIX_LEN], name[NAME_LEN];
    snprintf(prefix, sizeof prefix, "conformer.%d.", i);
    lu_tensor *h = stack_forward(st->m->params, prefix, &c->block, block_in, st->mask, st->run);
    int k = split_index(c, i);
    if (k >= 0 && h) h = lu_add(h, split_branch(st->m, k, block_in, st->raw, st->run));
    st->h = h;
    snprintf(name, sizeof name, "linears.%d.weight", i);
    lu_tensor *w = lu_params_get(st->m->params, name);
    snprintf(name, sizeof name, "linears.%d.bias", i);
    return h ? lu_log_softmax(lu_linear(h, w, lu_params_get(st->m->params, name)), -1) : NULL;
}

lu_tensor *lu_ee_conformer_steps_lengths(const lu_ee_conformer_steps *st)
{
    if (!st->len) {
        lu_errorf(LU_ERR_STATE, "ee_conformer: the forward failed or was not begun");
        return NULL;
    }
    return lu_tensor_from_host(LU_I64, LU_SHAPE(st->batch), st->device, st->len);
}

void lu_ee_conformer_steps_end(lu_ee_conformer_steps *st)
{
    free(st->raw);
    free(st->len);
    st->raw = st->len = NULL;
}

lu_status lu_ee_conformer_forward(lu_ee_conformer *m, lu_tensor *feats, lu_tensor *lengths, lu_conformer_run *run,
                                  lu_tensor **exits, lu_tensor **out_lengths)
{
    lu_ee_conformer_steps st;
    LU_TRY(lu_ee_conformer_begin(m, feats, lengths, run, &st));
    lu_status s = LU_OK;
    for (int i = 0; i < m->cfg.n_exits && s == LU_OK; i++)
        if (!(exits[i] = lu_ee_conformer_next(&st))) s = lu_error_code();
    if (s == LU_OK && out_lengths && !(*out_lengths = lu_ee_conformer_steps_lengths(&st))) s = lu_error_code();
    lu_ee_conformer_steps_end(&st);
    return s;
}

lu_tensor *lu_ee_conformer_loss(lu_ee_conformer *m, lu_tensor *feats, lu_tensor *lengths, lu_tensor *targets,
                                lu_tensor *target_lengths, lu_conformer_run *run)
{
    const lu_ee_conformer_config *c = &m->cfg;
    lu_tensor *exits[LU_CONFORMER_MAX_EXITS] = {0}, *len = NULL;
    if (lu_ee_conformer_forward(m, feats, lengths, run, exits, &len)) return NULL;
    int64_t B = exits[0]->shape[0], T = exits[0]->shape[1];
    /* train.py: torch.full((B,), T') whatever the utterance lengths (asr.md 7.1). */
    lu_tensor *input_lengths = c->ctc_utterance_lengths ? len : lu_tensor_full(LU_I64, LU_SHAPE(B), lu_tensor_device(len), (double)T);
    lu_tensor *loss = NULL;
    for (int i = 0; i < c->n_exits; i++) {
        lu_tensor *l = lu_ctc_loss(exits[i], targets, input_lengths, target_lengths, 0, LU_REDUCE_MEAN, true);
        loss = i ? lu_add(loss, l) : l;
    }
    return loss;
}

/* ---- weights ------------------------------------------------------------------------------- */

/* BatchNorm counters and the authors' positional-encoding table are not parameters here. */
static bool loaded(const char *name, void *ctx)
{
    (void)ctx;
    return !ends_with(name, ".num_batches_tracked") && strcmp(name, "positional_encoder.pe");
}

lu_status lu_conformer_load_safetensors(lu_params *p, const char *path)
{
    return lu_st_load_params(path, p, "conformer weights", loaded, NULL);
}
