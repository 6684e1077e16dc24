/* zipformer.c - icefall Zipformer2 + Conv2dSubsampling and the early-exit Zipformer from core
 * ops (see zipformer.h). Source: k2-fsa/icefall egs/librispeech/ASR/zipformer/zipformer.py,
 * scaling.py, subsampling.py at 36e0420 (asr.md 9). icefall runs time-major (T, B, C); this
 * file runs batch-first [B,T,C], the same sums. Backward comes from the autograd tape. */
#include "models/zipformer.h"

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

#define NAME_LEN 192
#define PREFIX_LEN 128
#define MASKED_SCORE (-1000.0)   /* RelPositionMultiheadAttentionWeights: masked_fill(mask, -1000) */
#define CONVNEXT_KERNEL 7        /* ConvNeXt(kernel_size=(7, 7)) in Conv2dSubsampling */
#define CONVNEXT_HIDDEN_RATIO 3

/* ---- configuration ------------------------------------------------------------------------- */

static int64_t max_dim(const lu_zipformer_config *c, int upto)
{
    int64_t m = 0;
    for (int i = 0; i <= upto; i++) m = c->encoder_dim[i] > m ? c->encoder_dim[i] : m;
    return m;
}

static int64_t embed_width(const lu_zipformer_config *c) { return (((c->feature_dim - 1) / 2) - 1) / 2; }

lu_status lu_zipformer_config_check(const lu_zipformer_config *c)
{
    if (c->causal)
        return lu_errorf(LU_ERR_CONFIG, "zipformer: causal=true (chunked streaming) is not implemented; use causal=false");
    if (c->num_stacks < 1 || c->num_stacks > LU_ZIPFORMER_MAX_STACKS)
        return lu_errorf(LU_ERR_CONFIG, "zipformer: %d stacks, must be in [1, %d]", c->num_stacks, LU_ZIPFORMER_MAX_STACKS);
    if (c->output_downsampling_factor != 2)
        return lu_errorf(LU_ERR_CONFIG, "zipformer: output_downsampling_factor %d must be 2 (icefall asserts it)",
                         c->output_downsampling_factor);
    if (c->pos_dim < 2 || c->pos_dim % 2)
        return lu_errorf(LU_ERR_CONFIG, "zipformer: pos_dim %d must be even and >= 2", c->pos_dim);
    if (c->feature_dim < 7)
        return lu_errorf(LU_ERR_CONFIG, "zipformer: feature_dim %lld must be >= 7 (Conv2dSubsampling)", (long long)c->feature_dim);
    if (c->layer1_channels < 1 || c->layer2_channels < 1 || c->layer3_channels < 1)
        return lu_errorf(LU_ERR_CONFIG, "zipformer: layer channels %d, %d, %d must be >= 1", c->layer1_channels,
                         c->layer2_channels, c->layer3_channels);
    for (int i = 0; i < c->num_stacks; i++) {
        if (c->downsampling_factor[i] < 1 || c->encoder_dim[i] < 4 || c->num_encoder_layers[i] < 1 ||
            c->query_head_dim[i] < 1 || c->pos_head_dim[i] < 1 || c->value_head_dim[i] < 1 || c->num_heads[i] < 1 ||
            c->feedforward_dim[i] < 1)
            return lu_errorf(LU_ERR_CONFIG, "zipformer: stack %d: downsampling_factor, num_encoder_layers, head dims, num_heads "
                             "and feedforward_dim must be >= 1 and encoder_dim >= 4", i);
        if (c->encoder_unmasked_dim[i] < 1 || c->encoder_unmasked_dim[i] > c->encoder_dim[i])
            return lu_errorf(LU_ERR_CONFIG, "zipformer: stack %d: encoder_unmasked_dim %lld must be in [1, encoder_dim %lld]", i,
                             (long long)c->encoder_unmasked_dim[i], (long long)c->encoder_dim[i]);
        if (c->cnn_module_kernel[i] < 1 || c->cnn_module_kernel[i] % 2 == 0)
            return lu_errorf(LU_ERR_CONFIG, "zipformer: stack %d: cnn_module_kernel %d must be positive and odd", i,
                             c->cnn_module_kernel[i]);
    }
    return LU_OK;
}

lu_zipformer_config lu_zipformer_small_config(void)
{
    lu_zipformer_config c = {.num_stacks = 6, .output_downsampling_factor = 2, .pos_dim = 48, .feature_dim = 80,
                             .layer1_channels = 8, .layer2_channels = 32, .layer3_channels = 128};
    static const int ds[6] = {1, 2, 4, 8, 4, 2}, heads[6] = {4, 4, 4, 8, 4, 4}, kernel[6] = {31, 31, 15, 15, 15, 31};
    static const int64_t dim[6] = {192, 256, 256, 256, 256, 256}, ff[6] = {512, 768, 768, 768, 768, 768};
    for (int i = 0; i < 6; i++) {
        c.downsampling_factor[i] = ds[i];
        c.encoder_dim[i] = dim[i];
        c.num_encoder_layers[i] = 2;
        c.encoder_unmasked_dim[i] = 192;
        c.query_head_dim[i] = 32;
        c.pos_head_dim[i] = 4;
        c.value_head_dim[i] = 12;
        c.num_heads[i] = heads[i];
        c.feedforward_dim[i] = ff[i];
        c.cnn_module_kernel[i] = kernel[i];
    }
    return c;
}

static lu_status json_int(const cJSON *it, const char *path, const char *key, int64_t *out)
{
    double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!(v >= 0 && v <= 1e9 && v == floor(v)))
        return lu_errorf(LU_ERR_CONFIG, "zipformer config %s: '%s' must hold non-negative integers", path, key);
    *out = (int64_t)v;
    return LU_OK;
}

/* An integer or a list of integers; *n receives the count. */
static lu_status json_ints(const cJSON *it, const char *path, int64_t *out, int *n)
{
    if (!cJSON_IsArray(it)) {
        *n = 1;
        return json_int(it, path, it->string, out);
    }
    *n = cJSON_GetArraySize(it);
    if (*n < 1 || *n > LU_ZIPFORMER_MAX_STACKS)
        return lu_errorf(LU_ERR_CONFIG, "zipformer config %s: '%s' has %d entries, must have 1 to %d", path, it->string, *n,
                         LU_ZIPFORMER_MAX_STACKS);
    int k = 0;
    for (const cJSON *e = it->child; e; e = e->next) LU_TRY(json_int(e, path, it->string, &out[k++]));
    return LU_OK;
}

enum { K_ODF, K_DS, K_DIM, K_LAYERS, K_UNMASKED, K_QDIM, K_PDIM, K_VDIM, K_HEADS, K_FF, K_KERNEL, K_POSDIM,
       K_FEAT, K_L1, K_L2, K_L3, N_KEYS };
static const char *const keys[N_KEYS] = {
    "output_downsampling_factor", "downsampling_factor", "encoder_dim", "num_encoder_layers", "encoder_unmasked_dim",
    "query_head_dim", "pos_head_dim", "value_head_dim", "num_heads", "feedforward_dim", "cnn_module_kernel", "pos_dim",
    "feature_dim", "layer1_channels", "layer2_channels", "layer3_channels"};
#define FIRST_OPTIONAL K_FEAT

/* Spreads the per-stack key k (n values) over the stacks as icefall's _to_tuple. */
static lu_status per_stack(const char *path, int k, const int64_t *v, int n, int stacks, int64_t *out)
{
    if (n != 1 && n != stacks)
        return lu_errorf(LU_ERR_CONFIG, "zipformer config %s: '%s' has %d entries; needs 1 or %d (one per stack)", path,
                         keys[k], n, stacks);
    for (int i = 0; i < stacks; i++) out[i] = v[n == 1 ? 0 : i];
    return LU_OK;
}

lu_status lu_zipformer_config_load_json(const char *path, lu_zipformer_config *c)
{
    char *text = lu_file_read(path, (size_t)1 << 20, NULL);
    if (!text) return lu_error_context("zipformer config ");
    lu_status s = lu_zipformer_config_parse_json(text, path, c);
    free(text);
    return s;
}

lu_status lu_zipformer_config_parse_json(const char *text, const char *path, lu_zipformer_config *c)
{
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lu_errorf(LU_ERR_CONFIG, "zipformer config %s: not a JSON object", path);
    }
    int64_t v[N_KEYS][LU_ZIPFORMER_MAX_STACKS];
    int n[N_KEYS] = {0};
    bool causal = false;
    lu_status s = LU_OK;
    for (const cJSON *it = root->child; it && s == LU_OK; it = it->next) {
        int k = 0;
        while (k < N_KEYS && strcmp(it->string, keys[k])) k++;
        if (k < N_KEYS) {
            s = json_ints(it, path, v[k], &n[k]);
            if (s == LU_OK && (k == K_ODF || k == K_POSDIM || k >= FIRST_OPTIONAL) && cJSON_IsArray(it))
                s = lu_errorf(LU_ERR_CONFIG, "zipformer config %s: '%s' must be one integer", path, keys[k]);
        } else if (!strcmp(it->string, "causal")) {
            if (!cJSON_IsBool(it)) s = lu_errorf(LU_ERR_CONFIG, "zipformer config %s: 'causal' must be true or false", path);
            causal = cJSON_IsTrue(it);
        } else {
            s = lu_errorf(LU_ERR_CONFIG, "zipformer config %s: unknown key '%s' (expected icefall Zipformer2 arguments, "
                          "feature_dim or layer{1,2,3}_channels)", path, it->string);
        }
    }
    cJSON_Delete(root);
    for (int k = 0; k < FIRST_OPTIONAL && s == LU_OK; k++)
        if (!n[k]) s = lu_errorf(LU_ERR_CONFIG, "zipformer config %s: missing key '%s'", path, keys[k]);
    if (s != LU_OK) return s;
    static const int64_t defaults[N_KEYS - FIRST_OPTIONAL] = {80, 8, 32, 128};
    for (int k = FIRST_OPTIONAL; k < N_KEYS; k++)
        if (!n[k]) v[k][0] = defaults[k - FIRST_OPTIONAL];
    lu_zipformer_config out = {
        .num_stacks = n[K_DS], .output_downsampling_factor = (int)v[K_ODF][0], .pos_dim = (int)v[K_POSDIM][0],
        .causal = causal, .feature_dim = v[K_FEAT][0], .layer1_channels = (int)v[K_L1][0],
        .layer2_channels = (int)v[K_L2][0], .layer3_channels = (int)v[K_L3][0]};
    int64_t t[N_KEYS][LU_ZIPFORMER_MAX_STACKS];
    for (int k = K_DS; k <= K_KERNEL; k++) LU_TRY(per_stack(path, k, v[k], n[k], out.num_stacks, t[k]));
    for (int i = 0; i < out.num_stacks; i++) {
        out.downsampling_factor[i] = (int)t[K_DS][i];
        out.encoder_dim[i] = t[K_DIM][i];
        out.num_encoder_layers[i] = (int)t[K_LAYERS][i];
        out.encoder_unmasked_dim[i] = t[K_UNMASKED][i];
        out.query_head_dim[i] = (int)t[K_QDIM][i];
        out.pos_head_dim[i] = (int)t[K_PDIM][i];
        out.value_head_dim[i] = (int)t[K_VDIM][i];
        out.num_heads[i] = (int)t[K_HEADS][i];
        out.feedforward_dim[i] = t[K_FF][i];
        out.cnn_module_kernel[i] = (int)t[K_KERNEL][i];
    }
    if (lu_zipformer_config_check(&out)) return lu_error_context("zipformer config %s: ", path);
    *c = out;
    return LU_OK;
}

/* ---- parameters ---------------------------------------------------------------------------- */

/* Linear / Conv: prefix+module.weight of `shape` and .bias [shape[0]]. */
static lu_status declare_wb(lu_params *p, const char *prefix, const char *module, int ndim, const int64_t *shape)
{
    LU_TRY(lu_params_declare(p, LU_F32, true, ndim, shape, "%s%s.weight", prefix, module));
    return lu_params_declare(p, LU_F32, true, 1, shape, "%s%s.bias", prefix, module);
}

/* BiasNorm: bias [dim] and the scalar log_scale (shape [] as in icefall). */
static lu_status declare_biasnorm(lu_params *p, const char *prefix, const char *module, int64_t dim)
{
    LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(dim), "%s%s.bias", prefix, module));
    return lu_params_declare(p, LU_F32, true, 0, (int64_t[]){1}, "%s%s.log_scale", prefix, module);
}

static lu_status declare_layer(lu_params *p, const lu_zipformer_config *c, int i, const char *L)
{
    int64_t D = c->encoder_dim[i], H = c->num_heads[i], F = c->feedforward_dim[i], Hn = 3 * D / 4;
    int64_t qkp = (2 * (int64_t)c->query_head_dim[i] + c->pos_head_dim[i]) * H, V = H * c->value_head_dim[i];
    LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(D), "%sbypass.bypass_scale", L));
    LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(D), "%sbypass_mid.bypass_scale", L));
    LU_TRY(lu_params_declare(p, LU_F32, false, LU_SHAPE(D), "%sbypass_scale", L));
    LU_TRY(declare_wb(p, L, "self_attn_weights.in_proj", LU_SHAPE(qkp, D)));
    LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(H * c->pos_head_dim[i], c->pos_dim), "%sself_attn_weights.linear_pos.weight", L));
    for (int k = 1; k <= 2; k++) {
        char m[32];
        snprintf(m, sizeof m, "self_attn%d.in_proj", k);
        LU_TRY(declare_wb(p, L, m, LU_SHAPE(V, D)));
        snprintf(m, sizeof m, "self_attn%d.out_proj", k);
        LU_TRY(declare_wb(p, L, m, LU_SHAPE(D, V)));
    }
    const int64_t hidden[3] = {F * 3 / 4, F, F * 5 / 4};
    for (int k = 1; k <= 3; k++) {
        char m[32];
        snprintf(m, sizeof m, "feed_forward%d.in_proj", k);
        LU_TRY(declare_wb(p, L, m, LU_SHAPE(hidden[k - 1], D)));
        snprintf(m, sizeof m, "feed_forward%d.out_proj", k);
        LU_TRY(declare_wb(p, L, m, LU_SHAPE(D, hidden[k - 1])));
    }
    LU_TRY(declare_wb(p, L, "nonlin_attention.in_proj", LU_SHAPE(3 * Hn, D)));
    LU_TRY(declare_wb(p, L, "nonlin_attention.out_proj", LU_SHAPE(D, Hn)));
    for (int k = 1; k <= 2; k++) {
        char m[40];
        snprintf(m, sizeof m, "conv_module%d.in_proj", k);
        LU_TRY(declare_wb(p, L, m, LU_SHAPE(2 * D, D)));
        snprintf(m, sizeof m, "conv_module%d.depthwise_conv", k);
        LU_TRY(declare_wb(p, L, m, LU_SHAPE(D, 1, c->cnn_module_kernel[i])));
        snprintf(m, sizeof m, "conv_module%d.out_proj", k);
        LU_TRY(declare_wb(p, L, m, LU_SHAPE(D, D)));
    }
    return declare_biasnorm(p, L, "norm", D);
}

/* "encoder.encoders.{i}." plus "encoder." for a downsampled stack: where its layers live. */
static void stack_prefix(const lu_zipformer_config *c, int i, char *out, size_t n)
{
    snprintf(out, n, "encoder.encoders.%d.%s", i, c->downsampling_factor[i] > 1 ? "encoder." : "");
}

lu_status lu_zipformer_declare(lu_params *p, const lu_zipformer_config *c)
{
    LU_TRY(lu_zipformer_config_check(c));
    const char *E = "encoder_embed.";
    int64_t c1 = c->layer1_channels, c2 = c->layer2_channels, c3 = c->layer3_channels;
    LU_TRY(declare_wb(p, E, "conv.0", LU_SHAPE(c1, 1, 3, 3)));
    LU_TRY(declare_wb(p, E, "conv.4", LU_SHAPE(c2, c1, 3, 3)));
    LU_TRY(declare_wb(p, E, "conv.7", LU_SHAPE(c3, c2, 3, 3)));
    LU_TRY(declare_wb(p, E, "convnext.depthwise_conv", LU_SHAPE(c3, 1, CONVNEXT_KERNEL, CONVNEXT_KERNEL)));
    LU_TRY(declare_wb(p, E, "convnext.pointwise_conv1", LU_SHAPE(CONVNEXT_HIDDEN_RATIO * c3, c3, 1, 1)));
    LU_TRY(declare_wb(p, E, "convnext.pointwise_conv2", LU_SHAPE(c3, CONVNEXT_HIDDEN_RATIO * c3, 1, 1)));
    LU_TRY(declare_wb(p, E, "out", LU_SHAPE(c->encoder_dim[0], c3 * embed_width(c))));
    LU_TRY(declare_biasnorm(p, E, "out_norm", c->encoder_dim[0]));
    for (int i = 0; i < c->num_stacks; i++) {
        char prefix[PREFIX_LEN], layer[PREFIX_LEN + 24];
        stack_prefix(c, i, prefix, sizeof prefix);
        for (int l = 0; l < c->num_encoder_layers[i]; l++) {
            snprintf(layer, sizeof layer, "%slayers.%d.", prefix, l);
            LU_TRY(declare_layer(p, c, i, layer));
        }
        if (c->downsampling_factor[i] > 1) {
            LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(c->downsampling_factor[i]), "encoder.encoders.%d.downsample.bias", i));
            LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(c->encoder_dim[i]), "encoder.encoders.%d.out_combiner.bypass_scale", i));
        }
    }
    return lu_params_declare(p, LU_F32, true, LU_SHAPE(c->output_downsampling_factor), "encoder.downsample_output.bias");
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* initial_scale of the ScaledLinear / ScaledConv2d owning weight-or-bias `name`; 0 for a plain
 * nn.Linear / nn.Conv (scaling.py ScaledLinear; zipformer.py, subsampling.py constructors). */
static double initial_scale(const lu_zipformer_config *c, const char *name)
{
    int stack = 0;
    if (strstr(name, "self_attn_weights.in_proj.") && sscanf(name, "encoder.encoders.%d.", &stack) == 1)
        return pow(c->query_head_dim[stack], -0.25);
    if (strstr(name, "linear_pos.")) return 0.05;
    if (strstr(name, "feed_forward") && strstr(name, ".out_proj.")) return 0.1;
    if (strstr(name, ".out_proj.") && (strstr(name, "self_attn") || strstr(name, "nonlin_attention") || strstr(name, "conv_module")))
        return 0.05;
    if (strstr(name, "convnext.pointwise_conv2.")) return 0.01;
    return 0;
}

/* torch default init of a Linear/Conv weight or bias, times the ScaledLinear scale s. */
static lu_status init_linear(const lu_params *p, int i, double s, uint64_t seed)
{
    const char *name = p->items[i].name;
    lu_tensor *t = p->items[i].t;
    char wname[NAME_LEN];
    bool is_bias = ends_with(name, ".bias");
    snprintf(wname, sizeof wname, "%.*sweight", (int)(strlen(name) - (is_bias ? 4 : 6)), name);
    const lu_tensor *w = lu_params_get(p, wname);
    if (!w) return lu_error_code();
    double fan_in = 1;
    for (int d = 1; d < w->ndim; d++) fan_in *= (double)w->shape[d];
    double bound = 1 / sqrt(fan_in); /* kaiming_uniform_(a=sqrt(5)) and the bias rule of nn.Linear */
    if (is_bias && s > 0) bound = 0.1 * s;
    else if (!is_bias && s > 0) bound *= s;
    return lu_tensor_rand_uniform(t, -bound, bound, seed, (uint32_t)i);
}

lu_status lu_zipformer_init(lu_params *p, const lu_zipformer_config *c, uint64_t seed)
{
    if (!p->finalized) return lu_errorf(LU_ERR_STATE, "zipformer: init needs finalised params");
    for (int i = 0; i < p->n; i++) {
        const char *name = p->items[i].name;
        lu_tensor *t = p->items[i].t;
        if (strncmp(name, "encoder_embed.", 14) && strncmp(name, "encoder.", 8)) continue;
        if (ends_with(name, "bypass_scale")) LU_TRY(lu_tensor_fill(t, 0.5));
        else if (ends_with(name, "norm.log_scale")) LU_TRY(lu_tensor_fill(t, 1.0));
        else if (ends_with(name, "norm.bias")) LU_TRY(lu_tensor_rand_normal(t, 0, 1e-4, seed, (uint32_t)i));
        else if (ends_with(name, "downsample.bias") || ends_with(name, "downsample_output.bias")) LU_TRY(lu_tensor_fill(t, 0));
        else LU_TRY(init_linear(p, i, initial_scale(c, name), seed));
    }
    return LU_OK;
}

/* ---- weights ------------------------------------------------------------------------------- */

typedef struct prefixes { int n; const char *const *list; } prefixes;

static bool under(const char *name, void *ctx)
{
    const prefixes *p = ctx;
    for (int k = 0; k < p->n; k++)
        if (!strncmp(name, p->list[k], strlen(p->list[k]))) return true;
    return false;
}

lu_status lu_zipformer_load_safetensors(lu_params *p, const char *path, int n_prefixes, const char *const *keep_prefixes)
{
    prefixes scope = {n_prefixes, keep_prefixes};
    return lu_st_load_params(path, p, "zipformer weights", under, &scope);
}

/* ---- building blocks (scaling.py, zipformer.py) -------------------------------------------- */

static lu_tensor *param(const lu_params *p, const char *prefix, const char *suffix)
{
    char n[NAME_LEN];
    snprintf(n, sizeof n, "%s%s", prefix, suffix);
    return lu_params_get(p, n);
}

static lu_tensor *linear(const lu_params *p, const char *prefix, const char *module, lu_tensor *x)
{
    char w[NAME_LEN], b[NAME_LEN];
    snprintf(w, sizeof w, "%s%s.weight", prefix, module);
    snprintf(b, sizeof b, "%s%s.bias", prefix, module);
    return lu_linear(x, lu_params_get(p, w), lu_params_get(p, b));
}

/* BiasNorm: x * exp(log_scale) / sqrt(mean((x - bias)^2)) over channels (asr.md 9.1). */
static lu_tensor *biasnorm(const lu_params *p, const char *prefix, const char *module, lu_tensor *x)
{
    char b[NAME_LEN], g[NAME_LEN];
    snprintf(b, sizeof b, "%s%s.bias", prefix, module);
    snprintf(g, sizeof g, "%s%s.log_scale", prefix, module);
    return lu_biasnorm(x, lu_params_get(p, b), lu_reshape(lu_params_get(p, g), LU_SHAPE(1)));
}

/* BypassModule at inference: orig + (x - orig) * scale, scale per channel, unclamped. */
static lu_tensor *bypass(lu_tensor *orig, lu_tensor *x, lu_tensor *scale)
{
    return lu_add(orig, lu_mul(lu_sub(x, orig), scale));
}

/* convert_num_channels: keep the first n channels, or zero-pad to n. */
static lu_tensor *convert_channels(lu_tensor *x, int64_t n)
{
    LU_PROPAGATE_NULL(x);
    int64_t C = x->shape[2];
    if (n <= C) return n == C ? x : lu_slice(x, 2, 0, n, 1);
    lu_tensor *pad = lu_tensor_zeros(x->dtype, LU_SHAPE(x->shape[0], x->shape[1], n - C), lu_tensor_device(x));
    return lu_concat((lu_tensor *[]){x, pad}, 2, 2);
}

/* A constant built in float64 (h), in the model's dtype. */
static lu_tensor *to_dtype(lu_tensor *h, lu_dtype dt)
{
    if (!h || dt == LU_F64) return h;
    lu_tensor *y = lu_cast(h, dt);
    lu_tensor_release(h);
    return y;
}

/* Host frame values [B,T] (b, t) -> valid if t < lens[b] else pad, as a tensor of dtype dt
 * shaped by `shape` (B*T elements). */
static lu_tensor *frame_values(const int64_t *lens, int64_t B, int64_t T, double valid, double pad, lu_dtype dt,
                               int ndim, const int64_t *shape, lu_device dev)
{
    double *v = malloc((size_t)(B * T > 0 ? B * T : 1) * sizeof *v);
    if (!v) {
        lu_errorf(LU_ERR_NOMEM, "zipformer: out of memory for a [%lld, %lld] mask", (long long)B, (long long)T);
        return NULL;
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) v[b * T + t] = t < lens[b] ? valid : pad;
    lu_tensor *h = lu_tensor_from_host(LU_F64, ndim, shape, dev, v);
    free(v);
    return to_dtype(h, dt);
}

/* CompactRelPositionalEncoding rows for offsets -(T-1) .. T-1 [2T-1, P] (asr.md 9.2): with
 * L = sqrt(P), x_c = L sign(x) (ln(|x| + L) - ln L), theta = atan(x_c / (P / 2 pi)):
 * pe[2f] = cos((f+1) theta), pe[2f+1] = sin((f+1) theta), and pe[P-1] = 1 (bias channel). */
static lu_tensor *rel_positions(int64_t T, int P, lu_dtype dt, lu_device dev)
{
    int64_t R = 2 * T - 1;
    double *pe = malloc((size_t)(R * P) * sizeof *pe);
    if (!pe) {
        lu_errorf(LU_ERR_NOMEM, "zipformer: out of memory for the positional encoding");
        return NULL;
    }
    double L = sqrt((double)P), scale = P / (2 * M_PI);
    for (int64_t r = 0; r < R; r++) {
        double x = (double)(r - (T - 1)), sign = x > 0 ? 1 : x < 0 ? -1 : 0;
        double theta = atan(L * sign * (log(fabs(x) + L) - log(L)) / scale);
        for (int f = 0; f < P / 2; f++) {
            pe[r * P + 2 * f] = cos((f + 1) * theta);
            pe[r * P + 2 * f + 1] = sin((f + 1) * theta);
        }
        pe[r * P + P - 1] = 1.0;
    }
    lu_tensor *h = lu_tensor_from_host(LU_F64, LU_SHAPE(R, P), dev, pe);
    free(pe);
    return to_dtype(h, dt);
}

/* What the layers of one stack share: positional encoding and padding masks at its rate. */
typedef struct stack_ctx {
    int stack;
    lu_tensor *pe;        /* [2T-1, pos_dim] */
    lu_tensor *key_keep;  /* [B,1,1,T]: 1 valid key, 0 padded */
    lu_tensor *key_fill;  /* [B,1,1,T]: 0 valid key, -1000 padded */
    lu_tensor *frame_keep;/* [B,T,1] */
} stack_ctx;

static lu_status stack_ctx_make(stack_ctx *s, const lu_zipformer_config *c, int stack, const lu_tensor *x,
                                const int64_t *lens)
{
    int64_t B = x->shape[0], T = x->shape[1];
    lu_device dev = lu_tensor_device(x);
    s->stack = stack;
    s->pe = rel_positions(T, c->pos_dim, x->dtype, dev);
    s->key_keep = frame_values(lens, B, T, 1, 0, x->dtype, LU_SHAPE(B, 1, 1, T), dev);
    s->key_fill = frame_values(lens, B, T, 0, MASKED_SCORE, x->dtype, LU_SHAPE(B, 1, 1, T), dev);
    s->frame_keep = frame_values(lens, B, T, 1, 0, x->dtype, LU_SHAPE(B, T, 1), dev);
    return s->pe && s->key_keep && s->key_fill && s->frame_keep ? LU_OK : lu_error_code();
}

/* Transformer-XL relative shift (icefall's as_strided): scores [B,H,T,2T-1] over offsets
 * -(T-1)..T-1 -> [B,H,T,T] with out[i, j] = scores[i, T-1-i+j] (offset j - i). Row i starts at
 * flat index i(2T-1) + T-1-i = T-1 + i(2T-2): a view of the flattened rows with stride 2T-2. */
static lu_tensor *rel_shift(lu_tensor *s)
{
    LU_PROPAGATE_NULL(s);
    int64_t B = s->shape[0], H = s->shape[1], T = s->shape[2];
    if (T == 1) return s;
    lu_tensor *flat = lu_reshape(s, LU_SHAPE(B, H, T * (2 * T - 1)));
    flat = lu_slice(flat, 2, T - 1, T - 1 + T * (2 * T - 2), 1);
    return lu_slice(lu_reshape(flat, LU_SHAPE(B, H, T, 2 * T - 2)), 3, 0, T, 1);
}

/* RelPositionMultiheadAttentionWeights (eval): [B,H,T,T] softmax over keys of
 * q k^T + p (W_pos pe)^T (rel-shifted), no 1/sqrt(d) factor, padded keys set to -1000. */
static lu_tensor *attention_weights(const lu_params *p, const lu_zipformer_config *c, const char *L,
                                    const stack_ctx *s, lu_tensor *x)
{
    int i = s->stack;
    int64_t B = x->shape[0], T = x->shape[1], H = c->num_heads[i], dq = c->query_head_dim[i], dp = c->pos_head_dim[i];
    lu_tensor *h = linear(p, L, "self_attn_weights.in_proj", x);
    static const int bhtd[4] = {0, 2, 1, 3};
    lu_tensor *q = lu_permute(lu_reshape(lu_slice(h, 2, 0, H * dq, 1), LU_SHAPE(B, T, H, dq)), bhtd);
    lu_tensor *k = lu_permute(lu_reshape(lu_slice(h, 2, H * dq, 2 * H * dq, 1), LU_SHAPE(B, T, H, dq)), bhtd);
    static const int hbtd[4] = {2, 0, 1, 3};
    lu_tensor *pq = lu_permute(lu_reshape(lu_slice(h, 2, 2 * H * dq, 2 * H * dq + H * dp, 1), LU_SHAPE(B, T, H, dp)), hbtd);
    pq = lu_reshape(pq, LU_SHAPE(H, B * T, dp));
    lu_tensor *pos = lu_linear(s->pe, param(p, L, "self_attn_weights.linear_pos.weight"), NULL);
    static const int hrd[3] = {1, 0, 2};
    pos = lu_permute(lu_reshape(pos, LU_SHAPE(2 * T - 1, H, dp)), hrd);
    lu_tensor *ps = lu_reshape(lu_matmul(pq, pos, false, true), LU_SHAPE(H, B, T, 2 * T - 1));
    static const int bh[4] = {1, 0, 2, 3};
    ps = rel_shift(lu_permute(ps, bh));
    lu_tensor *scores = lu_add(lu_matmul(q, k, false, true), ps);
    /* masked_fill(mask, -1000), exactly: score * keep + fill. */
    scores = lu_add(lu_mul(scores, s->key_keep), s->key_fill);
    return lu_softmax(scores, -1);
}

/* FeedforwardModule (eval): Linear -> SwooshL -> Linear. */
static lu_tensor *feed_forward(const lu_params *p, const char *L, int k, lu_tensor *x)
{
    char in[32], out[32];
    snprintf(in, sizeof in, "feed_forward%d.in_proj", k);
    snprintf(out, sizeof out, "feed_forward%d.out_proj", k);
    return linear(p, L, out, lu_swoosh_l(linear(p, L, in, x)));
}

/* SelfAttention: per-head values weighted by the shared weights, then out_proj. */
static lu_tensor *self_attention(const lu_params *p, const lu_zipformer_config *c, int i, const char *L, int k,
                                 lu_tensor *x, lu_tensor *w)
{
    int64_t B = x->shape[0], T = x->shape[1], H = c->num_heads[i], dv = c->value_head_dim[i];
    char in[24], out[24];
    snprintf(in, sizeof in, "self_attn%d.in_proj", k);
    snprintf(out, sizeof out, "self_attn%d.out_proj", k);
    lu_tensor *v = lu_reshape(linear(p, L, in, x), LU_SHAPE(B, T, H, dv));
    return linear(p, L, out, lu_reshape(lu_attention_apply(w, v), LU_SHAPE(B, T, H * dv)));
}

/* NonlinAttention: (s, x, y) = in_proj(x); x = x * tanh(s); x = A_0 x (head 0 weights, all
 * channels as one head); x = x * y; out_proj. */
static lu_tensor *nonlin_attention(const lu_params *p, const char *L, lu_tensor *x, lu_tensor *w)
{
    int64_t B = x->shape[0], T = x->shape[1], Hn = 3 * x->shape[2] / 4;
    lu_tensor *h = linear(p, L, "nonlin_attention.in_proj", x);
    lu_tensor *v = lu_mul(lu_slice(h, 2, Hn, 2 * Hn, 1), lu_tanh(lu_slice(h, 2, 0, Hn, 1)));
    lu_tensor *w0 = lu_slice(w, 1, 0, 1, 1);
    v = lu_reshape(lu_attention_apply(w0, lu_reshape(v, LU_SHAPE(B, T, 1, Hn))), LU_SHAPE(B, T, Hn));
    return linear(p, L, "nonlin_attention.out_proj", lu_mul(v, lu_slice(h, 2, 2 * Hn, 3 * Hn, 1)));
}

/* ConvolutionModule (non-causal): in_proj -> x * sigmoid(s) -> zero padded frames -> depthwise
 * Conv1d(k, padding k//2) -> SwooshR -> out_proj. No normalisation. */
static lu_tensor *convolution(const lu_params *p, const lu_zipformer_config *c, const stack_ctx *s, const char *L,
                              int k, lu_tensor *x)
{
    int64_t D = x->shape[2];
    int K = c->cnn_module_kernel[s->stack];
    char in[32], dw[40], dwb[40], out[32];
    snprintf(in, sizeof in, "conv_module%d.in_proj", k);
    snprintf(dw, sizeof dw, "conv_module%d.depthwise_conv.weight", k);
    snprintf(dwb, sizeof dwb, "conv_module%d.depthwise_conv.bias", k);
    snprintf(out, sizeof out, "conv_module%d.out_proj", k);
    lu_tensor *h = linear(p, L, in, x);
    h = lu_mul(lu_mul(lu_slice(h, 2, 0, D, 1), lu_sigmoid(lu_slice(h, 2, D, 2 * D, 1))), s->frame_keep);
    h = lu_conv1d(lu_transpose(h, 1, 2), param(p, L, dw), param(p, L, dwb), 1, K / 2, 1, (int)D);
    return linear(p, L, out, lu_swoosh_r(lu_transpose(h, 1, 2)));
}

/* Zipformer2EncoderLayer.forward in eval mode (asr.md 9.2). */
static lu_tensor *layer_forward(const lu_params *p, const lu_zipformer_config *c, const stack_ctx *s, const char *L,
                                lu_tensor *x)
{
    lu_tensor *orig = x;
    lu_tensor *w = attention_weights(p, c, L, s, x);
    x = lu_add(x, feed_forward(p, L, 1, x));
    x = lu_add(x, nonlin_attention(p, L, x, w));
    x = lu_add(x, self_attention(p, c, s->stack, L, 1, x, w));
    x = lu_add(x, convolution(p, c, s, L, 1, x));
    x = lu_add(x, feed_forward(p, L, 2, x));
    x = bypass(orig, x, param(p, L, "bypass_mid.bypass_scale"));
    x = lu_add(x, self_attention(p, c, s->stack, L, 2, x, w));
    x = lu_add(x, convolution(p, c, s, L, 2, x));
    x = lu_add(x, feed_forward(p, L, 3, x));
    x = biasnorm(p, L, "norm", x);
    return bypass(orig, x, param(p, L, "bypass.bypass_scale"));
}

lu_tensor *lu_zipformer_layer_forward(const lu_params *p, const lu_zipformer_config *c, int stack, const char *name,
                                      lu_tensor *x, const int64_t *lens)
{
    LU_PROPAGATE_NULL(x);
    char sx[LU_SHAPE_STR_MAX];
    if (stack < 0 || stack >= c->num_stacks || x->ndim != 3 || x->shape[2] != c->encoder_dim[stack]) {
        lu_errorf(LU_ERR_SHAPE, "zipformer layer %s: x %s must be [B, T, encoder_dim] of stack %d of %d", name,
                  lu_shape_str(x, sx, sizeof sx), stack, c->num_stacks);
        return NULL;
    }
    stack_ctx s;
    if (stack_ctx_make(&s, c, stack, x, lens)) return NULL;
    return layer_forward(p, c, &s, name, x);
}

/* Zipformer2Encoder (and DownsampledZipformer2Encoder around it) for stack i on x [B,T,dim_i];
 * lens are the valid frame counts at the subsampled rate. */
static lu_tensor *stack_forward(const lu_params *p, const lu_zipformer_config *c, int i, lu_tensor *x,
                                const int64_t *lens)
{
    LU_PROPAGATE_NULL(x);
    int64_t B = x->shape[0], T = x->shape[1];
    int ds = c->downsampling_factor[i];
    lu_tensor *orig = x;
    char name[NAME_LEN];
    if (ds > 1) {
        snprintf(name, sizeof name, "encoder.encoders.%d.downsample.bias", i);
        x = lu_downsample(x, lu_params_get(p, name));
        if (!x) return NULL;
    }
    /* src_key_padding_mask[..., ::ds]: frame t of the stack is padding iff t*ds >= lens[b]. */
    int64_t *sl = malloc((size_t)B * sizeof *sl);
    if (!sl) {
        lu_errorf(LU_ERR_NOMEM, "zipformer: out of memory");
        return NULL;
    }
    for (int64_t b = 0; b < B; b++) sl[b] = (lens[b] + ds - 1) / ds;
    stack_ctx s;
    lu_status st = stack_ctx_make(&s, c, i, x, sl);
    free(sl);
    if (st) return NULL;
    char prefix[PREFIX_LEN], layer[PREFIX_LEN + 24];
    stack_prefix(c, i, prefix, sizeof prefix);
    for (int l = 0; l < c->num_encoder_layers[i] && x; l++) {
        snprintf(layer, sizeof layer, "%slayers.%d.", prefix, l);
        x = layer_forward(p, c, &s, layer, x);
    }
    if (ds == 1) return x;
    snprintf(name, sizeof name, "encoder.encoders.%d.out_combiner.bypass_scale", i);
    return bypass(orig, lu_upsample(x, 1, ds, T), lu_params_get(p, name));
}

int64_t lu_zipformer_embed_frames(int64_t t)
{
    int64_t d = t - 7;
    return d >= 0 ? d / 2 : -((-d + 1) / 2); /* floor division */
}

/* A 1x1 Conv2d on [N,C,H,W] as a Linear over C. */
static lu_tensor *pointwise_conv2d(lu_tensor *x, lu_tensor *w, lu_tensor *b)
{
    LU_PROPAGATE_NULL(x, w);
    static const int to_last[4] = {0, 2, 3, 1}, to_second[4] = {0, 3, 1, 2};
    lu_tensor *w2 = lu_reshape(w, LU_SHAPE(w->shape[0], w->shape[1]));
    return lu_permute(lu_linear(lu_permute(x, to_last), w2, b), to_second);
}

lu_tensor *lu_zipformer_embed_forward(const lu_params *p, const lu_zipformer_config *c, lu_tensor *x)
{
    LU_PROPAGATE_NULL(x);
    char sx[LU_SHAPE_STR_MAX];
    if (x->ndim != 3 || x->shape[2] != c->feature_dim || lu_zipformer_embed_frames(x->shape[1]) < 1) {
        lu_errorf(LU_ERR_SHAPE, "zipformer: x %s must be [B, T >= 9, feature_dim = %lld]", lu_shape_str(x, sx, sizeof sx),
                  (long long)c->feature_dim);
        return NULL;
    }
    const char *E = "encoder_embed.";
    lu_conv2d_params c0 = {{1, 1}, {0, 1}, {1, 1}, 1}, c4 = {{2, 2}, {0, 0}, {1, 1}, 1}, c7 = {{1, 2}, {0, 0}, {1, 1}, 1};
    lu_tensor *h = lu_unsqueeze(x, 1);
    h = lu_swoosh_r(lu_conv2d(h, param(p, E, "conv.0.weight"), param(p, E, "conv.0.bias"), &c0));
    h = lu_swoosh_r(lu_conv2d(h, param(p, E, "conv.4.weight"), param(p, E, "conv.4.bias"), &c4));
    h = lu_swoosh_r(lu_conv2d(h, param(p, E, "conv.7.weight"), param(p, E, "conv.7.bias"), &c7));
    /* ConvNeXt: depthwise 7x7 (padding 3) -> 1x1 -> SwooshL -> 1x1, plus the input. */
    lu_conv2d_params dw = {{1, 1}, {CONVNEXT_KERNEL / 2, CONVNEXT_KERNEL / 2}, {1, 1}, c->layer3_channels};
    lu_tensor *y = lu_conv2d(h, param(p, E, "convnext.depthwise_conv.weight"), param(p, E, "convnext.depthwise_conv.bias"), &dw);
    y = lu_swoosh_l(pointwise_conv2d(y, param(p, E, "convnext.pointwise_conv1.weight"), param(p, E, "convnext.pointwise_conv1.bias")));
    y = pointwise_conv2d(y, param(p, E, "convnext.pointwise_conv2.weight"), param(p, E, "convnext.pointwise_conv2.bias"));
    h = lu_add(h, y);
    LU_PROPAGATE_NULL(h);
    /* (N, C, T', W) -> (N, T', C*W) -> Linear -> BiasNorm. */
    int64_t B = h->shape[0], T = h->shape[2];
    h = lu_reshape(lu_transpose(h, 1, 2), LU_SHAPE(B, T, h->shape[1] * h->shape[3]));
    return biasnorm(p, E, "out_norm", linear(p, E, "out", h));
}

/* _get_full_dim_output over stacks 0..last: the last stack's output, then for each wider
 * earlier stack (scanning backwards) its channels [cur, dim). */
static lu_tensor *full_dim_output(const lu_zipformer_config *c, lu_tensor **outputs, int last)
{
    lu_tensor *pieces[LU_ZIPFORMER_MAX_STACKS];
    int n = 0;
    pieces[n++] = outputs[last];
    int64_t cur = c->encoder_dim[last];
    for (int i = last - 1; i >= 0; i--)
        if (c->encoder_dim[i] > cur) {
            pieces[n++] = lu_slice(outputs[i], 2, cur, c->encoder_dim[i], 1);
            cur = c->encoder_dim[i];
        }
    return n == 1 ? pieces[0] : lu_concat(pieces, n, 2);
}

/* Host lengths at the subsampled rate, (x_lens - 7) // 2, each in [1, T_sub]. */
static int64_t *embed_lengths(const lu_tensor *x_lens, int64_t B, int64_t T, const char *what)
{
    char sl[LU_SHAPE_STR_MAX];
    if (x_lens->ndim != 1 || x_lens->shape[0] != B || (x_lens->dtype != LU_I32 && x_lens->dtype != LU_I64)) {
        lu_errorf(LU_ERR_SHAPE, "%s: x_lens %s %s must be i32/i64 [B] with B = %lld", what,
                  lu_shape_str(x_lens, sl, sizeof sl), lu_dtype_name(x_lens->dtype), (long long)B);
        return NULL;
    }
    int64_t *len = malloc((size_t)(B > 0 ? B : 1) * sizeof *len);
    if (!len) {
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", what);
        return NULL;
    }
    if (lu_tensor_to_host(x_lens, LU_I64, len)) {
        free(len);
        return NULL;
    }
    for (int64_t b = 0; b < B; b++) {
        if (len[b] > T || lu_zipformer_embed_frames(len[b]) < 1) {
            lu_errorf(LU_ERR_INVALID, "%s: x_lens[%lld] = %lld must be in [9, T = %lld] (at least one frame after "
                      "subsampling)", what, (long long)b, (long long)len[b], (long long)T);
            free(len);
            return NULL;
        }
        len[b] = lu_zipformer_embed_frames(len[b]);
    }
    return len;
}

/* The encoder up to the stack outputs: fills outputs[0..num_stacks) and returns the subsampled
 * lengths (host, caller frees), or NULL. */
static int64_t *encode_stacks(const lu_params *p, const lu_zipformer_config *c, lu_tensor *x, lu_tensor *x_lens,
                              lu_tensor **outputs)
{
    lu_tensor *h = lu_zipformer_embed_forward(p, c, x);
    if (!h || !x_lens) return NULL;
    int64_t *len = embed_lengths(x_lens, x->shape[0], x->shape[1], "zipformer");
    for (int i = 0; i < c->num_stacks && len; i++) {
        h = stack_forward(p, c, i, convert_channels(h, c->encoder_dim[i]), len);
        outputs[i] = h;
        if (!h) {
            free(len);
            len = NULL;
        }
    }
    return len;
}

/* encoder_out_lens = (len + 1) // 2 at the output rate, as an i64 tensor. */
static lu_tensor *output_lengths(const int64_t *len, int64_t B, lu_device dev)
{
    int64_t *o = malloc((size_t)(B > 0 ? B : 1) * sizeof *o);
    if (!o) {
        lu_errorf(LU_ERR_NOMEM, "zipformer: out of memory");
        return NULL;
    }
    for (int64_t b = 0; b < B; b++) o[b] = (len[b] + 1) / 2;
    lu_tensor *t = lu_tensor_from_host(LU_I64, LU_SHAPE(B), dev, o);
    free(o);
    return t;
}

lu_tensor *lu_zipformer_forward(const lu_params *p, const lu_zipformer_config *c, lu_tensor *x, lu_tensor *x_lens,
                                lu_tensor **out_lens, lu_tensor **stack_out)
{
    LU_PROPAGATE_NULL(x, x_lens);
    lu_tensor *outputs[LU_ZIPFORMER_MAX_STACKS] = {0};
    int64_t *len = encode_stacks(p, c, x, x_lens, outputs);
    if (!len) return NULL;
    lu_tensor *y = lu_downsample(full_dim_output(c, outputs, c->num_stacks - 1),
                                 lu_params_get(p, "encoder.downsample_output.bias"));
    if (y && out_lens && !(*out_lens = output_lengths(len, x->shape[0], lu_tensor_device(x)))) y = NULL;
    if (y && stack_out)
        for (int i = 0; i < c->num_stacks; i++) stack_out[i] = outputs[i];
    free(len);
    return y;
}

/* ---- early-exit Zipformer ------------------------------------------------------------------ */

void lu_ee_zipformer_default_exits(lu_ee_zipformer_config *c)
{
    c->n_exits = c->enc.num_stacks;
    for (int i = 0; i < c->n_exits; i++) c->exit_stacks[i] = i;
}

static bool is_final_exit(const lu_ee_zipformer_config *c, int k) { return c->exit_stacks[k] == c->enc.num_stacks - 1; }

static lu_status ee_config_check(const lu_ee_zipformer_config *c)
{
    LU_TRY(lu_zipformer_config_check(&c->enc));
    if (c->vocab_size < 1) return lu_errorf(LU_ERR_CONFIG, "ee_zipformer: vocab_size %lld must be >= 1", (long long)c->vocab_size);
    if (c->n_exits < 1 || c->n_exits > c->enc.num_stacks)
        return lu_errorf(LU_ERR_CONFIG, "ee_zipformer: n_exits %d must be in [1, num_stacks = %d]", c->n_exits,
                         c->enc.num_stacks);
    for (int k = 0; k < c->n_exits; k++)
        if (c->exit_stacks[k] < 0 || c->exit_stacks[k] >= c->enc.num_stacks || (k && c->exit_stacks[k] <= c->exit_stacks[k - 1]))
            return lu_errorf(LU_ERR_CONFIG, "ee_zipformer: exit stack %d must be an increasing stack index in [0, %d)",
                             c->exit_stacks[k], c->enc.num_stacks);
    return LU_OK;
}

lu_status lu_ee_zipformer_declare(lu_ee_zipformer *m, const lu_ee_zipformer_config *c, lu_params *p)
{
    LU_TRY(ee_config_check(c));
    m->cfg = *c;
    m->params = p;
    LU_TRY(lu_zipformer_declare(p, &c->enc));
    for (int k = 0; k < c->n_exits; k++) {
        int64_t D = max_dim(&c->enc, c->exit_stacks[k]);
        if (is_final_exit(c, k)) {
            LU_TRY(declare_wb(p, "", "ctc_output.1", LU_SHAPE(c->vocab_size, D)));
        } else {
            LU_TRY(lu_params_declare(p, LU_F32, true, LU_SHAPE(c->enc.output_downsampling_factor), "exits.%d.downsample.bias", k));
            char m2[32];
            snprintf(m2, sizeof m2, "exits.%d.linear", k);
            LU_TRY(declare_wb(p, "", m2, LU_SHAPE(c->vocab_size, D)));
        }
    }
    return LU_OK;
}

lu_status lu_ee_zipformer_init(lu_ee_zipformer *m, uint64_t seed)
{
    lu_params *p = m->params;
    LU_TRY(lu_zipformer_init(p, &m->cfg.enc, seed));
    for (int i = 0; i < p->n; i++) {
        const char *name = p->items[i].name;
        if (strncmp(name, "exits.", 6) && strncmp(name, "ctc_output.", 11)) continue;
        if (ends_with(name, "downsample.bias")) LU_TRY(lu_tensor_fill(p->items[i].t, 0));
        else LU_TRY(init_linear(p, i, 0, seed));
    }
    return LU_OK;
}

lu_status lu_ee_zipformer_begin(lu_ee_zipformer *m, lu_tensor *feats, lu_tensor *lengths, lu_ee_zipformer_steps *st)
{
    *st = (lu_ee_zipformer_steps){.m = m};
    if (!feats || !lengths) return lu_error_code();
    if (!(st->h = lu_zipformer_embed_forward(m->params, &m->cfg.enc, feats))) return lu_error_code();
    st->batch = feats->shape[0];
    st->device = lu_tensor_device(feats);
    st->len = embed_lengths(lengths, feats->shape[0], feats->shape[1], "zipformer");
    return st->len ? LU_OK : lu_error_code();
}

/* Runs stack st->done on the previous one's output. */
static lu_status run_stack(lu_ee_zipformer_steps *st)
{
    const lu_zipformer_config *c = &st->m->cfg.enc;
    if (!st->len || !st->h) return lu_errorf(LU_ERR_STATE, "ee_zipformer: the forward failed or was not begun");
    if (st->done >= c->num_stacks) return lu_errorf(LU_ERR_STATE, "ee_zipformer: all %d stacks have run", c->num_stacks);
    int i = st->done++;
    st->h = st->outputs[i] = stack_forward(st->m->params, c, i, convert_channels(st->h, c->encoder_dim[i]), st->len);
    return st->h ? LU_OK : lu_error_code();
}

/* Log-probabilities of exit k, whose stack has run. */
static lu_tensor *exit_head(lu_ee_zipformer_steps *st, int k)
{
    const lu_ee_zipformer_config *c = &st->m->cfg;
    const lu_params *p = st->m->params;
    char name[NAME_LEN], lin[32];
    lu_tensor *h = full_dim_output(&c->enc, st->outputs, c->exit_stacks[k]);
    if (is_final_exit(c, k)) {
        h = lu_downsample(h, lu_params_get(p, "encoder.downsample_output.bias"));
        snprintf(lin, sizeof lin, "ctc_output.1");
    } else {
        snprintf(name, sizeof name, "exits.%d.downsample.bias", k);
        h = lu_downsample(h, lu_params_get(p, name));
        snprintf(lin, sizeof lin, "exits.%d.linear", k);
    }
    return lu_log_softmax(linear(p, "", lin, h), -1);
}

lu_status lu_ee_zipformer_next(lu_ee_zipformer_steps *st, lu_tensor **exit)
{
    *exit = NULL;
    LU_TRY(run_stack(st));
    for (int k = 0; k < st->m->cfg.n_exits; k++)
        if (st->m->cfg.exit_stacks[k] == st->done - 1) return (*exit = exit_head(st, k)) ? LU_OK : lu_error_code();
    return LU_OK;
}

lu_tensor *lu_ee_zipformer_steps_lengths(const lu_ee_zipformer_steps *st)
{
    if (!st->len) {
        lu_errorf(LU_ERR_STATE, "ee_zipformer: the forward failed or was not begun");
        return NULL;
    }
    return output_lengths(st->len, st->batch, st->device);
}

void lu_ee_zipformer_steps_end(lu_ee_zipformer_steps *st)
{
    free(st->len);
    st->len = NULL;
}

lu_status lu_ee_zipformer_forward(lu_ee_zipformer *m, lu_tensor *feats, lu_tensor *lengths, lu_tensor **exits,
                                  lu_tensor **out_lengths)
{
    lu_ee_zipformer_steps st;
    lu_status s = lu_ee_zipformer_begin(m, feats, lengths, &st);
    /* Every stack, then every head: the tape then holds the ops in the order training has always
     * recorded, and the backward adds up gradients in that order. */
    for (int i = 0; i < m->cfg.enc.num_stacks && s == LU_OK; i++) s = run_stack(&st);
    for (int k = 0; k < m->cfg.n_exits && s == LU_OK; k++)
        if (!(exits[k] = exit_head(&st, k))) s = lu_error_code();
    if (s == LU_OK && out_lengths && !(*out_lengths = lu_ee_zipformer_steps_lengths(&st))) s = lu_error_code();
    lu_ee_zipformer_steps_end(&st);
    return s;
}

lu_tensor *lu_ee_zipformer_loss(lu_ee_zipformer *m, lu_tensor *feats, lu_tensor *lengths, lu_tensor *targets,
                                lu_tensor *target_lengths)
{
    lu_tensor *exits[LU_ZIPFORMER_MAX_STACKS] = {0}, *len = NULL;
    if (lu_ee_zipformer_forward(m, feats, lengths, exits, &len)) return NULL;
    lu_tensor *loss = NULL;
    for (int k = 0; k < m->cfg.n_exits; k++) {
        lu_tensor *l = lu_ctc_loss(exits[k], targets, len, target_lengths, 0, LU_REDUCE_SUM, false);
        loss = k ? lu_add(loss, l) : l;
    }
    return loss;
}
