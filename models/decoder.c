/* decoder.c - Llama/Qwen3 decoder forward pass from core ops (see decoder.h). Backward comes
 * from the autograd tape. */
#include "models/decoder.h"

#include <stdio.h>
#include <string.h>

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

static lu_tensor *param(lu_decoder *m, const char *fmt, int layer)
{
    char n[NAME_MAX_LEN];
    snprintf(n, sizeof n, fmt, layer);
    return lu_params_get(m->params, n);
}

/* x [B,T,D] -> [B,T,H,hd] projections, optional q/k norm, rotary positions. Ops propagate a
 * NULL input (ops.h), so only the end result of a chain is checked. */
static lu_tensor *project_heads(lu_decoder *m, lu_tensor *x, int l, const char *proj, const char *norm, int heads,
                                lu_tensor *positions, bool rotate)
{
    char w[NAME_MAX_LEN], b[NAME_MAX_LEN];
    snprintf(w, sizeof w, "model.layers.%%d.self_attn.%s.weight", proj);
    snprintf(b, sizeof b, "model.layers.%%d.self_attn.%s.bias", proj);
    lu_tensor *y = lu_linear(x, param(m, w, l), m->cfg.attention_bias ? param(m, b, l) : NULL);
    y = lu_reshape(y, LU_SHAPE(x->shape[0], x->shape[1], heads, m->cfg.head_dim));
    if (norm && m->cfg.qk_norm) {
        char nn[NAME_MAX_LEN];
        snprintf(nn, sizeof nn, "model.layers.%%d.self_attn.%s.weight", norm);
        y = lu_rmsnorm(y, param(m, nn, l), m->cfg.rms_norm_eps);
    }
    return rotate ? lu_rope(y, positions, m->cfg.rope_theta, 0) : y;
}

static lu_tensor *default_positions(const lu_tensor *ids)
{
    int64_t B = ids->shape[0], T = ids->shape[1];
    lu_tensor *pos = lu_tensor_empty(LU_I32, LU_SHAPE(B, T), LU_CPU);
    if (!pos) return NULL;
    int32_t *p = lu_tensor_data(pos);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) p[b * T + t] = (int32_t)t;
    return pos;
}

lu_tensor *lu_decoder_forward(lu_decoder *m, const lu_decoder_batch *batch)
{
    const lu_decoder_config *c = &m->cfg;
    lu_tensor *ids = batch->input_ids;
    if (ids->ndim != 2) {
        lu_errorf(LU_ERR_SHAPE, "decoder: input_ids must be [B, T], got %d dims", ids->ndim);
        return NULL;
    }
    int64_t B = ids->shape[0], T = ids->shape[1];
    lu_tensor *pos = batch->positions ? batch->positions : default_positions(ids);
    lu_tensor *h = lu_embedding(lu_params_get(m->params, "model.embed_tokens.weight"), ids);
    lu_attention_opts ao = {.causal = true, .cu_seqlens = batch->cu_seqlens};
    for (int l = 0; l < c->num_layers && h; l++) {
        lu_tensor *x = lu_rmsnorm(h, param(m, "model.layers.%d.input_layernorm.weight", l), c->rms_norm_eps);
        if (!x) return NULL;
        lu_tensor *q = project_heads(m, x, l, "q_proj", "q_norm", c->num_heads, pos, true);
        lu_tensor *k = project_heads(m, x, l, "k_proj", "k_norm", c->num_kv_heads, pos, true);
        lu_tensor *v = project_heads(m, x, l, "v_proj", NULL, c->num_kv_heads, pos, false);
        lu_tensor *a = lu_attention(q, k, v, &ao);
        a = lu_reshape(a, LU_SHAPE(B, T, (int64_t)c->num_heads * c->head_dim));
        h = lu_add(h, lu_linear(a, param(m, "model.layers.%d.self_attn.o_proj.weight", l), NULL));
        /* SwiGLU: down(silu(gate(x)) * up(x)). */
        x = lu_rmsnorm(h, param(m, "model.layers.%d.post_attention_layernorm.weight", l), c->rms_norm_eps);
        lu_tensor *g = lu_silu(lu_linear(x, param(m, "model.layers.%d.mlp.gate_proj.weight", l), NULL));
        lu_tensor *u = lu_linear(x, param(m, "model.layers.%d.mlp.up_proj.weight", l), NULL);
        h = lu_add(h, lu_linear(lu_mul(g, u), param(m, "model.layers.%d.mlp.down_proj.weight", l), NULL));
    }
    h = lu_rmsnorm(h, lu_params_get(m->params, "model.norm.weight"), c->rms_norm_eps);
    lu_tensor *head = lu_params_get(m->params, c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    return lu_linear(h, head, NULL);
}

lu_tensor *lu_decoder_loss(lu_decoder *m, const lu_decoder_batch *batch, lu_tensor *labels)
{
    lu_tensor *logits = lu_decoder_forward(m, batch);
    if (!logits) return NULL;
    int64_t B = logits->shape[0], T = logits->shape[1], V = logits->shape[2];
    if (T < 2) {
        lu_errorf(LU_ERR_SHAPE, "decoder loss: sequences need at least 2 tokens, got %lld", (long long)T);
        return NULL;
    }
    /* logits[:, :-1] predict labels[:, 1:]. */
    lu_tensor *lg = lu_reshape(lu_slice(logits, 1, 0, T - 1, 1), LU_SHAPE(B * (T - 1), V));
    lu_tensor *lb = lu_reshape(lu_slice(labels, 1, 1, T, 1), LU_SHAPE(B * (T - 1)));
    return lu_cross_entropy(lg, lb, -100, LU_REDUCE_MEAN);
}
