/* generate.c - KV-cached generation and token sampling (see generate.h). */
#include "models/generate.h"

#include <math.h>
#include <stdlib.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/rng.h"

/* Random stream id of sampling in rng.h's (seed, step, op) key: "gen". */
#define LU_GENERATE_RNG_OP 0x67656eu

lu_status lu_sampling_check(const lu_sampling *s)
{
    if (s->greedy) return LU_OK;
    if (!(s->temperature > 0) || !isfinite(s->temperature))
        return lu_errorf(LU_ERR_CONFIG, "sampling: temperature must be > 0 and finite, got %g", s->temperature);
    if (s->top_k < 0) return lu_errorf(LU_ERR_CONFIG, "sampling: top_k must be >= 0, got %lld", (long long)s->top_k);
    if (!(s->top_p > 0 && s->top_p <= 1))
        return lu_errorf(LU_ERR_CONFIG, "sampling: top_p must be in (0, 1], got %g", s->top_p);
    return LU_OK;
}

typedef struct scored {
    double z;
    int64_t id;
} scored;

/* Descending score, then ascending id: a total order, so the result never depends on qsort. */
static int by_score_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->z != y->z) return x->z > y->z ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int64_t lu_sample_token(const float *logits, int64_t vocab, const lu_sampling *s, uint64_t step)
{
    if (lu_sampling_check(s)) return -1;
    if (vocab <= 0) {
        lu_errorf(LU_ERR_INVALID, "sampling: vocabulary size must be positive, got %lld", (long long)vocab);
        return -1;
    }
    if (s->greedy) {
        int64_t best = 0;
        for (int64_t i = 1; i < vocab; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    scored *c = malloc((size_t)vocab * sizeof *c);
    if (!c) {
        lu_errorf(LU_ERR_NOMEM, "sampling: out of memory for %lld candidates", (long long)vocab);
        return -1;
    }
    for (int64_t i = 0; i < vocab; i++) c[i] = (scored){(double)logits[i] / s->temperature, i};
    qsort(c, (size_t)vocab, sizeof *c, by_score_desc);
    /* top-k (transformers TopKLogitsWarper): remove scores below the k-th largest. */
    int64_t n = vocab;
    if (s->top_k > 0 && s->top_k < vocab) {
        n = s->top_k;
        while (n < vocab && c[n].z == c[s->top_k - 1].z) n++;
    }
    /* Softmax over the survivors, in place of the scores. */
    double total = 0, zmax = c[0].z;
    for (int64_t i = 0; i < n; i++) total += (c[i].z = exp(c[i].z - zmax));
    for (int64_t i = 0; i < n; i++) c[i].z /= total;
    /* top-p (TopPLogitsWarper): a token is removed when the tokens more likely than it already
     * hold top_p of the mass; the most likely one always stays. */
    double above = 0;
    int64_t kept = 0;
    while (kept < n && (kept == 0 || above < s->top_p)) above += c[kept++].z;
    /* Inverse CDF over the kept tokens, renormalised. */
    double u = (double)lu_rng_uniform(s->seed, step, LU_GENERATE_RNG_OP, 0) * above, acc = 0;
    int64_t pick = c[kept - 1].id;
    for (int64_t i = 0; i < kept; i++) {
        acc += c[i].z;
        if (u < acc) {
            pick = c[i].id;
            break;
        }
    }
    free(c);
    return pick;
}

/* Logits of the last position of `ids` into host memory; the ids go to the model's device. */
static lu_status step_logits(lu_decoder *m, const int64_t *ids, int64_t n, lu_kv_cache *cache, float *logits)
{
    lu_tensor *t = lu_tensor_from_host(LU_I64, LU_SHAPE(1, n), m->params->device, ids);
    lu_tensor *y = t ? lu_decoder_forward_cached(m, t, cache, true) : NULL;
    return y ? lu_tensor_to_host(y, LU_F32, logits) : lu_error_code();
}

static bool is_eos(int64_t tok, const int64_t *eos, int n_eos)
{
    for (int i = 0; i < n_eos; i++)
        if (eos[i] == tok) return true;
    return false;
}

int64_t lu_generate(lu_decoder *m, const int64_t *prompt, int64_t n_prompt, const lu_generate_opts *o, int64_t *out)
{
    const lu_decoder_config *c = &m->cfg;
    if (n_prompt < 1 || o->max_new_tokens < 0) {
        lu_errorf(LU_ERR_INVALID, "generate: need a prompt of at least one token and max_new_tokens >= 0, got %lld and %lld",
                  (long long)n_prompt, (long long)o->max_new_tokens);
        return -1;
    }
    for (int64_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size) {
            lu_errorf(LU_ERR_INVALID, "generate: prompt token %lld at position %lld is outside the vocabulary [0, %lld)",
                      (long long)prompt[i], (long long)i, (long long)c->vocab_size);
            return -1;
        }
    if (lu_sampling_check(&o->sampling)) return -1;
    if (o->max_new_tokens == 0) return 0;
    const int64_t *eos = o->eos_ids ? o->eos_ids : c->eos_token_ids;
    int n_eos = o->eos_ids ? o->n_eos : c->n_eos;

    lu_kv_cache *cache = lu_kv_cache_new(m, 1, n_prompt + o->max_new_tokens);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    lu_arena *arena = lu_arena_new(m->params->device, 0);
    if (!cache || !logits || !arena) {
        if (cache && (!logits || !arena)) lu_errorf(LU_ERR_NOMEM, "generate: out of memory");
        lu_kv_cache_free(cache);
        free(logits);
        lu_arena_free(arena);
        return -1;
    }
    lu_arena *prev = lu_arena_activate(arena);
    bool grad = lu_grad_set_enabled(false);
    int64_t n = -1;
    if (step_logits(m, prompt, n_prompt, cache, logits) == LU_OK) {
        for (n = 0; n < o->max_new_tokens;) {
            lu_arena_reset(arena);
            int64_t tok = lu_sample_token(logits, c->vocab_size, &o->sampling, (uint64_t)n);
            if (tok < 0) {
                n = -1;
                break;
            }
            out[n++] = tok;
            bool stop = o->on_token && o->on_token(tok, o->ctx);
            if (stop || is_eos(tok, eos, n_eos) || n == o->max_new_tokens) break;
            if (step_logits(m, &tok, 1, cache, logits)) {
                n = -1;
                break;
            }
        }
    }
    lu_grad_set_enabled(grad);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    lu_kv_cache_free(cache);
    free(logits);
    return n;
}
