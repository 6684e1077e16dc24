/* decoder.c - Llama/Qwen3 decoder forward pass from core ops (see decoder.h). Backward comes
 * from the autograd tape. */
#include "models/decoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/rng.h"

#define NAME_MAX_LEN 128

static lu_tensor *add_param(lu_params *p, const char *name, int ndim, const int64_t *shape)
{
    return lu_params_add(p, name, LU_F32, ndim, shape, true);
}

lu_status lu_decoder_declare(lu_decoder *m, const lu_decoder_config *c, lu_params *p)
{
    if (c->num_heads <= 0 || c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads)
        return lu_errorf(LU_ERR_CONFIG, "decoder: num_heads %d must be a positive multiple of num_kv_heads %d",
                         c->num_heads, c->num_kv_heads);
    if (c->head_dim <= 0 || c->head_dim % 2)
        return lu_errorf(LU_ERR_CONFIG, "decoder: head_dim %d must be positive and even (rotary)", c->head_dim);
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->intermediate_size <= 0 || c->num_layers <= 0)
        return lu_errorf(LU_ERR_CONFIG, "decoder: vocab_size, hidden_size, intermediate_size and num_layers must be positive");
    m->cfg = *c;
    m->params = p;
    m->compute_dtype = LU_F32;
    m->recompute_layers = false;
    m->loss_chunk = 0;
    int64_t D = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    int64_t q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    char n[NAME_MAX_LEN];
    if (!add_param(p, "model.embed_tokens.weight", LU_SHAPE(V, D))) return lu_error_code();
    for (int l = 0; l < c->num_layers; l++) {
        struct { const char *name; int64_t rows, cols; } mats[] = {
            {"self_attn.q_proj", q, D}, {"self_attn.k_proj", kv, D}, {"self_attn.v_proj", kv, D},
            {"self_attn.o_proj", D, q}, {"mlp.gate_proj", F, D},   {"mlp.up_proj", F, D},
            {"mlp.down_proj", D, F},
        };
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
            snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, mats[i].name);
            if (!add_param(p, n, LU_SHAPE(mats[i].rows, mats[i].cols))) return lu_error_code();
            if (c->attention_bias && i < 3) {
                snprintf(n, sizeof n, "model.layers.%d.%s.bias", l, mats[i].name);
                if (!add_param(p, n, LU_SHAPE(mats[i].rows))) return lu_error_code();
            }
        }
        const char *norms[] = {"input_layernorm", "post_attention_layernorm"};
        for (int i = 0; i < 2; i++) {
            snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, norms[i]);
            if (!add_param(p, n, LU_SHAPE(D))) return lu_error_code();
        }
        if (c->qk_norm) {
            snprintf(n, sizeof n, "model.layers.%d.self_attn.q_norm.weight", l);
            if (!add_param(p, n, LU_SHAPE(c->head_dim))) return lu_error_code();
            snprintf(n, sizeof n, "model.layers.%d.self_attn.k_norm.weight", l);
            if (!add_param(p, n, LU_SHAPE(c->head_dim))) return lu_error_code();
        }
    }
    if (!add_param(p, "model.norm.weight", LU_SHAPE(D))) return lu_error_code();
    if (!c->tie_embeddings && !add_param(p, "lm_head.weight", LU_SHAPE(V, D))) return lu_error_code();
    return LU_OK;
}

lu_status lu_decoder_init(lu_decoder *m, uint64_t seed)
{
    lu_params *p = m->params;
    for (int i = 0; i < p->n; i++) {
        lu_tensor *t = p->items[i].t;
        if (t->ndim == 1 && strstr(p->items[i].name, "norm")) LU_TRY(lu_tensor_fill(t, 1.0));
        else if (t->ndim == 1) LU_TRY(lu_tensor_fill(t, 0.0));
        else LU_TRY(lu_tensor_rand_normal(t, 0.0, m->cfg.init_std, seed, (uint32_t)i));
    }
    return LU_OK;
}

/* One forward's weights: the parameters themselves, or (cast != NULL) their casts to the compute
 * dtype, made once per forward so that a weight used twice (tied embeddings) is cast once and
 * its two gradients meet in the compute dtype before one cast back to the f32 gradient. */
typedef struct weights {
    const lu_decoder *m;
    lu_tensor **cast; /* per store item */
} weights;

/* Drops the forward's references to the casts; the autograd tape keeps its own. */
static void weights_end(weights *w)
{
    for (int i = 0; w->cast && i < w->m->params->n; i++) lu_tensor_release(w->cast[i]);
    free(w->cast);
    w->cast = NULL;
}

/* Casts every parameter to m's compute dtype when any differs from it, one recorded CAST per
 * tensor (each needs its own gradient edge back to its f32 parameter); on failure nothing is left
 * to end. */
static lu_status weights_begin(weights *w, const lu_decoder *m)
{
    const lu_params *p = m->params;
    w->m = m;
    w->cast = NULL;
    if (!lu_dtype_is_float(m->compute_dtype))
        return lu_errorf(LU_ERR_DTYPE, "decoder: compute dtype %s is not a float dtype", lu_dtype_name(m->compute_dtype));
    bool differs = false;
    for (int i = 0; i < p->n; i++) differs |= p->items[i].t->dtype != m->compute_dtype;
    if (!differs) return LU_OK;
    if (!(w->cast = calloc((size_t)p->n, sizeof *w->cast))) return lu_errorf(LU_ERR_NOMEM, "decoder: out of memory");
    for (int i = 0; i < p->n; i++) {
        if ((w->cast[i] = lu_cast(p->items[i].t, m->compute_dtype))) continue;
        lu_status s = lu_error_context("decoder: %s: ", p->items[i].name);
        weights_end(w);
        return s;
    }
    return LU_OK;
}

static lu_tensor *weight(const weights *w, const char *name)
{
    const lu_params *p = w->m->params;
    if (!w->cast) return lu_params_get(p, name);
    const lu_param *q = lu_params_find(p, name);
    if (!q) return lu_params_get(p, name); /* records the missing name */
    return w->cast[q - p->items];
}

static lu_tensor *param(const weights *w, const char *fmt, int layer)
{
    char n[NAME_MAX_LEN];
    snprintf(n, sizeof n, fmt, layer);
    return weight(w, n);
}

/* x [B,T,D] -> [B,T,H,hd] projections, optional q/k norm, rotary positions. Ops propagate a
 * NULL input (ops.h), so only the end result of a chain is checked. */
static lu_tensor *project_heads(const weights *ws, lu_tensor *x, int l, const char *proj, const char *norm, int heads,
                                lu_tensor *positions, bool rotate)
{
    const lu_decoder_config *c = &ws->m->cfg;
    char w[NAME_MAX_LEN], b[NAME_MAX_LEN];
    snprintf(w, sizeof w, "model.layers.%%d.self_attn.%s.weight", proj);
    snprintf(b, sizeof b, "model.layers.%%d.self_attn.%s.bias", proj);
    lu_tensor *y = lu_linear(x, param(ws, w, l), c->attention_bias ? param(ws, b, l) : NULL);
    y = lu_reshape(y, LU_SHAPE(x->shape[0], x->shape[1], heads, c->head_dim));
    if (norm && c->qk_norm) {
        char nn[NAME_MAX_LEN];
        snprintf(nn, sizeof nn, "model.layers.%%d.self_attn.%s.weight", norm);
        y = lu_rmsnorm(y, param(ws, nn, l), c->rms_norm_eps);
    }
    return rotate ? lu_rope(y, positions, c->rope_theta, 0) : y;
}

/* Positions start .. start + T - 1 in every row, on the ids' device. */
static lu_tensor *default_positions(const lu_tensor *ids, int64_t start)
{
    int64_t B = ids->shape[0], T = ids->shape[1];
    int32_t *p = malloc((size_t)(B * T > 0 ? B * T : 1) * sizeof *p);
    if (!p) {
        lu_errorf(LU_ERR_NOMEM, "decoder: out of memory");
        return NULL;
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) p[b * T + t] = (int32_t)(start + t);
    lu_tensor *pos = lu_tensor_from_host(LU_I32, LU_SHAPE(B, T), lu_tensor_device(ids), p);
    free(p);
    return pos;
}

/* One decoder layer on h [B,T,D]. With a cache, this call's K and V are stored at positions
 * cache->length .. + T and the queries attend to every cached key (causal alignment puts the
 * last query on the last key, ops.h), which is the full forward restricted to the new rows. */
static lu_tensor *layer_forward(const weights *w, int l, lu_tensor *h, lu_tensor *pos, const lu_attention_opts *ao,
                                lu_kv_cache *cache)
{
    const lu_decoder_config *c = &w->m->cfg;
    int64_t B = h->shape[0], T = h->shape[1];
    lu_tensor *x = lu_rmsnorm(h, param(w, "model.layers.%d.input_layernorm.weight", l), c->rms_norm_eps);
    if (!x) return NULL;
    lu_tensor *q = project_heads(w, x, l, "q_proj", "q_norm", c->num_heads, pos, true);
    lu_tensor *k = project_heads(w, x, l, "k_proj", "k_norm", c->num_kv_heads, pos, true);
    lu_tensor *v = project_heads(w, x, l, "v_proj", NULL, c->num_kv_heads, pos, false);
    if (cache) {
        if (!k || !v) return NULL;
        int64_t end = cache->length + T;
        lu_tensor *kd = lu_slice(cache->k[l], 1, cache->length, end, 1);
        lu_tensor *vd = lu_slice(cache->v[l], 1, cache->length, end, 1);
        if (!kd || !vd || lu_tensor_copy(kd, k) || lu_tensor_copy(vd, v)) return NULL;
        k = lu_slice(cache->k[l], 1, 0, end, 1);
        v = lu_slice(cache->v[l], 1, 0, end, 1);
    }
    lu_tensor *a = lu_attention(q, k, v, ao);
    a = lu_reshape(a, LU_SHAPE(B, T, (int64_t)c->num_heads * c->head_dim));
    h = lu_add(h, lu_linear(a, param(w, "model.layers.%d.self_attn.o_proj.weight", l), NULL));
    /* SwiGLU: down(silu(gate(x)) * up(x)), the product in one op. */
    x = lu_rmsnorm(h, param(w, "model.layers.%d.post_attention_layernorm.weight", l), c->rms_norm_eps);
    lu_tensor *g = lu_linear(x, param(w, "model.layers.%d.mlp.gate_proj.weight", l), NULL);
    lu_tensor *u = lu_linear(x, param(w, "model.layers.%d.mlp.up_proj.weight", l), NULL);
    return lu_add(h, lu_linear(lu_swiglu(g, u), param(w, "model.layers.%d.mlp.down_proj.weight", l), NULL));
}

static lu_tensor *head_forward(const weights *w, lu_tensor *h)
{
    const lu_decoder_config *c = &w->m->cfg;
    h = lu_rmsnorm(h, weight(w, "model.norm.weight"), c->rms_norm_eps);
    return lu_linear(h, weight(w, c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"), NULL);
}

static bool check_ids(const lu_tensor *ids)
{
    if (ids->ndim == 2 && (ids->dtype == LU_I32 || ids->dtype == LU_I64)) return true;
    char s[LU_SHAPE_STR_MAX];
    lu_errorf(LU_ERR_SHAPE, "decoder: input_ids must be i32/i64 [B, T], got %s %s", lu_shape_str(ids, s, sizeof s),
              lu_dtype_name(ids->dtype));
    return false;
}

/* What a recomputed layer or loss chunk needs until the backward: in arena memory, with the
 * cast table copied there (weights_end frees the forward's). */
typedef struct recompute_ctx {
    weights w;
    int layer;
    lu_tensor *pos, *labels;
    lu_attention_opts ao;
} recompute_ctx;

static lu_tensor *layer_recompute(void *ctx, lu_tensor **in, int n_in)
{
    (void)n_in;
    recompute_ctx *c = ctx;
    return layer_forward(&c->w, c->layer, in[0], c->pos, &c->ao, NULL);
}

/* *out: n contexts sharing one arena copy of w's cast table, or NULL when there is nothing to
 * recompute for (no arena, no gradients: fn runs directly). */
static lu_status recompute_ctxs(const weights *w, int n, recompute_ctx **out)
{
    *out = NULL;
    lu_arena *a = lu_arena_current();
    if (!a || !lu_grad_enabled()) return LU_OK;
    recompute_ctx *c = lu_arena_alloc(a, (size_t)n * sizeof *c, 0);
    size_t table = (size_t)w->m->params->n * sizeof *w->cast;
    lu_tensor **cast = c && w->cast ? lu_arena_alloc(a, table, 0) : NULL;
    if (!c || (w->cast && !cast)) return lu_errorf(LU_ERR_NOMEM, "decoder: out of memory for recomputation");
    if (cast) memcpy(cast, w->cast, table);
    for (int i = 0; i < n; i++) c[i] = (recompute_ctx){.w = {.m = w->m, .cast = cast}};
    *out = c;
    return LU_OK;
}

/* The hidden states after the last layer [B,T,D]; w is begun here and ended by the caller. */
static lu_tensor *hidden_forward(const lu_decoder *m, const lu_decoder_batch *batch, weights *w)
{
    lu_tensor *ids = batch->input_ids;
    if (!check_ids(ids) || weights_begin(w, m)) return NULL;
    lu_tensor *pos = batch->positions ? batch->positions : default_positions(ids, 0);
    lu_tensor *h = lu_embedding(weight(w, "model.embed_tokens.weight"), ids);
    lu_attention_opts ao = {.causal = true, .cu_seqlens = batch->cu_seqlens};
    recompute_ctx *rc = NULL;
    if (m->recompute_layers && pos && h && recompute_ctxs(w, m->cfg.num_layers, &rc)) h = NULL;
    for (int l = 0; l < m->cfg.num_layers && h; l++) {
        if (!rc) {
            h = layer_forward(w, l, h, pos, &ao, NULL);
            continue;
        }
        rc[l].layer = l;
        rc[l].pos = pos;
        rc[l].ao = ao;
        h = lu_recompute(layer_recompute, &rc[l], &h, 1);
    }
    /* Recomputed layers read pos again in backward: in an arena (where they run) releasing is a
     * no-op and pos lives until the reset. */
    if (!batch->positions) lu_tensor_release(pos);
    return h;
}

lu_tensor *lu_decoder_forward(lu_decoder *m, const lu_decoder_batch *batch)
{
    weights w = {0};
    lu_tensor *h = hidden_forward(m, batch, &w);
    lu_tensor *logits = h ? head_forward(&w, h) : NULL;
    weights_end(&w);
    return logits;
}

lu_kv_cache *lu_kv_cache_new(const lu_decoder *m, int64_t batch, int64_t capacity)
{
    const lu_decoder_config *c = &m->cfg;
    if (batch <= 0 || capacity <= 0) {
        lu_errorf(LU_ERR_INVALID, "kv cache: batch %lld and capacity %lld must be positive", (long long)batch,
                  (long long)capacity);
        return NULL;
    }
    lu_kv_cache *kc = calloc(1, sizeof *kc);
    if (!kc) {
        lu_errorf(LU_ERR_NOMEM, "kv cache: out of memory");
        return NULL;
    }
    kc->num_layers = c->num_layers;
    kc->batch = batch;
    kc->capacity = capacity;
    kc->k = calloc((size_t)c->num_layers, sizeof *kc->k);
    kc->v = calloc((size_t)c->num_layers, sizeof *kc->v);
    /* Heap storage: the cache outlives the arena resets between decoding steps. */
    lu_arena *prev = lu_arena_activate(NULL);
    bool ok = kc->k && kc->v;
    for (int l = 0; l < c->num_layers && ok; l++) {
        int64_t shape[4] = {batch, capacity, c->num_kv_heads, c->head_dim};
        kc->k[l] = lu_tensor_empty(m->compute_dtype, 4, shape, m->params->device);
        kc->v[l] = lu_tensor_empty(m->compute_dtype, 4, shape, m->params->device);
        ok = kc->k[l] && kc->v[l];
    }
    lu_arena_activate(prev);
    if (!ok) {
        if (!kc->k || !kc->v) lu_errorf(LU_ERR_NOMEM, "kv cache: out of memory");
        lu_kv_cache_free(kc);
        return NULL;
    }
    return kc;
}

void lu_kv_cache_free(lu_kv_cache *kc)
{
    if (!kc) return;
    for (int l = 0; l < kc->num_layers; l++) {
        if (kc->k) lu_tensor_release(kc->k[l]);
        if (kc->v) lu_tensor_release(kc->v[l]);
    }
    free(kc->k);
    free(kc->v);
    free(kc);
}

lu_tensor *lu_decoder_forward_cached(lu_decoder *m, lu_tensor *input_ids, lu_kv_cache *cache, bool last_only)
{
    if (!check_ids(input_ids)) return NULL;
    int64_t B = input_ids->shape[0], T = input_ids->shape[1];
    if (B != cache->batch || cache->length + T > cache->capacity) {
        lu_errorf(LU_ERR_SHAPE, "decoder: %lld x %lld new tokens do not fit a kv cache of batch %lld holding %lld of %lld positions",
                  (long long)B, (long long)T, (long long)cache->batch, (long long)cache->length,
                  (long long)cache->capacity);
        return NULL;
    }
    /* The cache is written by copies that autograd does not record: no tape here. */
    bool grad = lu_grad_set_enabled(false);
    weights w;
    if (weights_begin(&w, m)) {
        lu_grad_set_enabled(grad);
        return NULL;
    }
    lu_tensor *pos = default_positions(input_ids, cache->length);
    lu_tensor *h = lu_embedding(weight(&w, "model.embed_tokens.weight"), input_ids);
    lu_attention_opts ao = {.causal = true};
    for (int l = 0; l < m->cfg.num_layers && h; l++) h = layer_forward(&w, l, h, pos, &ao, cache);
    if (h && last_only && T > 1) h = lu_slice(h, 1, T - 1, T, 1);
    lu_tensor *logits = head_forward(&w, h);
    if (logits) cache->length += T;
    lu_tensor_release(pos);
    weights_end(&w);
    lu_grad_set_enabled(grad);
    return logits;
}

/* The summed cross-entropy of one chunk of rows: final norm, LM head, loss against the chunk's
 * (already shifted) labels. */
static lu_tensor *head_loss_recompute(void *ctx, lu_tensor **in, int n_in)
{
    (void)n_in;
    recompute_ctx *c = ctx;
    lu_tensor *logits = head_forward(&c->w, in[0]);
    lu_tensor *sum = lu_cross_entropy(logits, c->labels, -100, LU_REDUCE_SUM);
    lu_tensor_release(logits);
    return sum;
}

/* labels [B,T] shifted left by one row-wise (the target of position t is labels[t+1]; the last
 * position of each row gets -100), as i64 [B*T] on dev; *count: the targets that are not -100. */
static lu_tensor *shifted_labels(const lu_tensor *labels, int64_t *count)
{
    int64_t B = labels->shape[0], T = labels->shape[1], n = B * T;
    int64_t *v = malloc((size_t)n * sizeof *v), *shifted = malloc((size_t)n * sizeof *shifted);
    lu_tensor *out = NULL;
    if (!v || !shifted) lu_errorf(LU_ERR_NOMEM, "decoder loss: out of memory for %lld labels", (long long)n);
    else if (lu_tensor_to_host(labels, LU_I64, v) == LU_OK) {
        *count = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++) {
                int64_t y = t + 1 < T ? v[b * T + t + 1] : -100;
                shifted[b * T + t] = y;
                *count += y != -100;
            }
        out = lu_tensor_from_host(LU_I64, LU_SHAPE(n), lu_tensor_device(labels), shifted);
    }
    free(v);
    free(shifted);
    return out;
}

/* The loss `chunk` tokens at a time: sum of the chunks' summed cross-entropies over the count of
 * targets (a mean over no target is NaN, as torch's). */
static lu_tensor *chunked_loss(weights *w, lu_tensor *h, lu_tensor *labels, int64_t chunk)
{
    int64_t B = h->shape[0], T = h->shape[1], D = h->shape[2], rows = B * T, count = 0;
    int n = (int)((rows + chunk - 1) / chunk);
    lu_tensor *target = shifted_labels(labels, &count), *h2 = target ? lu_reshape(h, LU_SHAPE(rows, D)) : NULL;
    recompute_ctx *rc = NULL;
    if (!h2 || recompute_ctxs(w, n, &rc) || !rc) return NULL;
    lu_tensor *total = NULL;
    for (int i = 0; i < n; i++) {
        int64_t r0 = (int64_t)i * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        lu_tensor *hc = lu_slice(h2, 0, r0, r1, 1);
        rc[i].labels = lu_slice(target, 0, r0, r1, 1);
        lu_tensor *part = hc && rc[i].labels ? lu_recompute(head_loss_recompute, &rc[i], &hc, 1) : NULL;
        if (!part) return NULL;
        total = total ? lu_add(total, part) : part;
    }
    lu_tensor *mean = total ? lu_scale(total, 1.0 / (double)count) : NULL;
    return mean ? lu_cast(mean, LU_F32) : NULL;
}

lu_tensor *lu_decoder_loss(lu_decoder *m, const lu_decoder_batch *batch, lu_tensor *labels)
{
    if (m->loss_chunk <= 0 || !lu_arena_current() || !lu_grad_enabled())
        return lu_decoder_lm_loss(lu_decoder_forward(m, batch), labels);
    if (!labels) return NULL;
    const lu_tensor *ids = batch->input_ids;
    if (labels->ndim != 2 || ids->ndim != 2 || labels->shape[0] != ids->shape[0] || labels->shape[1] != ids->shape[1]) {
        char sl[LU_SHAPE_STR_MAX], si[LU_SHAPE_STR_MAX];
        lu_errorf(LU_ERR_SHAPE, "decoder loss: labels %s must be [B, T] like the input ids %s",
                  lu_shape_str(labels, sl, sizeof sl), lu_shape_str(ids, si, sizeof si));
        return NULL;
    }
    if (ids->shape[1] < 2) {
        lu_errorf(LU_ERR_SHAPE, "decoder loss: sequences need at least 2 tokens, got %lld", (long long)ids->shape[1]);
        return NULL;
    }
    weights w = {0};
    lu_tensor *h = hidden_forward(m, batch, &w);
    lu_tensor *loss = h ? chunked_loss(&w, h, labels, m->loss_chunk) : NULL;
    weights_end(&w);
    return loss;
}

lu_tensor *lu_decoder_lm_loss(lu_tensor *logits, lu_tensor *labels)
{
    LU_PROPAGATE_NULL(logits, labels);
    int64_t B = logits->shape[0], T = logits->shape[1], V = logits->shape[2];
    if (labels->ndim != 2 || labels->shape[0] != B || labels->shape[1] != T) {
        char sl[LU_SHAPE_STR_MAX], sg[LU_SHAPE_STR_MAX];
        lu_errorf(LU_ERR_SHAPE, "decoder loss: labels %s must be [B, T] like the logits %s", lu_shape_str(labels, sl, sizeof sl),
                  lu_shape_str(logits, sg, sizeof sg));
        return NULL;
    }
    if (T < 2) {
        lu_errorf(LU_ERR_SHAPE, "decoder loss: sequences need at least 2 tokens, got %lld", (long long)T);
        return NULL;
    }
    /* logits[:, :-1] predict labels[:, 1:]. */
    lu_tensor *lg = lu_reshape(lu_slice(logits, 1, 0, T - 1, 1), LU_SHAPE(B * (T - 1), V));
    lu_tensor *lb = lu_reshape(lu_slice(labels, 1, 1, T, 1), LU_SHAPE(B * (T - 1)));
    /* The op's loss is f32 for f32 and 16-bit logits; f64 logits (the CPU's other compute dtype)
     * give an f64 one, narrowed here so that every compute dtype returns f32. */
    lu_tensor *loss = lu_cross_entropy(lg, lb, -100, LU_REDUCE_MEAN), *loss32 = lu_cast(loss, LU_F32);
    lu_tensor_release(loss);
    return loss32;
}
