/* lm_eval.c - task files, log-likelihood scoring, greedy generation with answer extraction, and
 * perplexity (lm_eval.h). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "models/lm_eval.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/arena.h"
#include "core/autograd.h"
#include "core/dist.h"
#include "core/progress.h"
#include "models/chat_template.h"
#include "models/generate.h"

/* ---- task files ---- */

static void item_free(lu_lmeval_item *it)
{
    free(it->text);
    for (int i = 0; i < it->n_choices; i++) free(it->choices[i]);
    free(it->choices);
    for (int i = 0; i < it->n_answers; i++) free(it->answers[i]);
    free(it->answers);
    free(it->regex);
    for (int i = 0; i < it->n_instructions; i++) lu_ifeval_instruction_free(it->instructions[i]);
    free(it->instructions);
}

void lu_lmeval_task_free(lu_lmeval_task *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_items; i++) item_free(&t->items[i]);
    free(t->items);
    free(t->name);
    free(t);
}

static const char *type_name(lu_lmeval_type t)
{
    return t == LU_LMEVAL_MC ? "mc" : t == LU_LMEVAL_GEN ? "gen" : t == LU_LMEVAL_PPL ? "ppl" : "ifeval";
}

/* An optional "max_new_tokens" (a positive integer). */
static lu_status get_max_new(const cJSON *o, const char *where, const char *type, int64_t *out)
{
    const cJSON *mx = cJSON_GetObjectItemCaseSensitive(o, "max_new_tokens");
    if (!mx) return LU_OK;
    if (!cJSON_IsNumber(mx) || mx->valuedouble < 1 || mx->valuedouble != (double)(int64_t)mx->valuedouble)
        return lu_errorf(LU_ERR_INVALID, "%s: %s item: \"max_new_tokens\" must be a positive integer", where, type);
    *out = (int64_t)mx->valuedouble;
    return LU_OK;
}

/* "instruction_id_list" and "kwargs" (one object or null per id) of an ifeval item. */
static lu_status parse_instructions(const cJSON *o, const char *where, lu_lmeval_item *it)
{
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "instruction_id_list");
    const cJSON *kws = cJSON_GetObjectItemCaseSensitive(o, "kwargs");
    int n = cJSON_IsArray(ids) ? cJSON_GetArraySize(ids) : 0;
    if (n == 0)
        return lu_errorf(LU_ERR_INVALID, "%s: ifeval item: \"instruction_id_list\" must be a non-empty array of strings",
                         where);
    if (!cJSON_IsArray(kws) || cJSON_GetArraySize(kws) != n)
        return lu_errorf(LU_ERR_INVALID, "%s: ifeval item: \"kwargs\" must be an array of %d objects, one per instruction",
                         where, n);
    if (!(it->instructions = calloc((size_t)n, sizeof *it->instructions)))
        return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", where);
    for (int i = 0; i < n; i++) {
        const cJSON *id = cJSON_GetArrayItem(ids, i), *kw = cJSON_GetArrayItem(kws, i);
        if (!cJSON_IsString(id))
            return lu_errorf(LU_ERR_INVALID, "%s: ifeval item: \"instruction_id_list\"[%d] is not a string", where, i);
        if (!cJSON_IsObject(kw) && !cJSON_IsNull(kw))
            return lu_errorf(LU_ERR_INVALID, "%s: ifeval item: \"kwargs\"[%d] is not an object", where, i);
        if (!(it->instructions[i] = lu_ifeval_instruction_new(id->valuestring, kw)))
            return lu_error_context("%s: ifeval item: ", where);
        it->n_instructions++;
    }
    return LU_OK;
}

/* A required string field. */
static char *get_string(const cJSON *o, const char *key, const char *where, const char *type)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) {
        lu_errorf(LU_ERR_INVALID, "%s: %s item: \"%s\" must be a string", where, type, key);
        return NULL;
    }
    char *s = strdup(v->valuestring);
    if (!s) lu_errorf(LU_ERR_NOMEM, "%s: out of memory", where);
    return s;
}

/* A non-empty array of strings. */
static lu_status get_strings(const cJSON *o, const char *key, const char *where, const char *type, char ***out, int *n)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    int count = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
    if (count == 0)
        return lu_errorf(LU_ERR_INVALID, "%s: %s item: \"%s\" must be a non-empty array of strings", where, type, key);
    *out = calloc((size_t)count, sizeof **out);
    if (!*out) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", where);
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        if (!cJSON_IsString(e))
            return lu_errorf(LU_ERR_INVALID, "%s: %s item: \"%s\"[%d] is not a string", where, type, key, *n);
        if (!((*out)[*n] = strdup(e->valuestring))) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", where);
        (*n)++;
    }
    return LU_OK;
}

static lu_status parse_item(const char *line, size_t len, const char *where, lu_lmeval_item *it)
{
    cJSON *o = cJSON_ParseWithLength(line, len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return lu_errorf(LU_ERR_INVALID, "%s: not a JSON object", where);
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const char *ts = cJSON_IsString(type) ? type->valuestring : "";
    lu_status st = LU_OK;
    if (!strcmp(ts, "mc")) {
        it->type = LU_LMEVAL_MC;
        const cJSON *gold = cJSON_GetObjectItemCaseSensitive(o, "gold");
        if (!(it->text = get_string(o, "query", where, ts))) st = lu_error_code();
        else if ((st = get_strings(o, "choices", where, ts, &it->choices, &it->n_choices)) != LU_OK) {
        } else if (!cJSON_IsNumber(gold) || gold->valuedouble != (int)gold->valuedouble)
            st = lu_errorf(LU_ERR_INVALID, "%s: mc item: \"gold\" must be an integer", where);
        else if ((it->gold = (int)gold->valuedouble) < 0 || it->gold >= it->n_choices)
            st = lu_errorf(LU_ERR_INVALID, "%s: mc item: gold %d out of range for %d choices", where, it->gold,
                           it->n_choices);
    } else if (!strcmp(ts, "gen")) {
        it->type = LU_LMEVAL_GEN;
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(o, "regex");
        if (!(it->text = get_string(o, "prompt", where, ts))) st = lu_error_code();
        else if ((st = get_strings(o, "answers", where, ts, &it->answers, &it->n_answers)) != LU_OK) {
        } else if (re && !(it->regex = get_string(o, "regex", where, ts))) {
            st = lu_error_code();
        } else {
            st = get_max_new(o, where, ts, &it->max_new_tokens);
        }
    } else if (!strcmp(ts, "ifeval")) {
        it->type = LU_LMEVAL_IFEVAL;
        if (!(it->text = get_string(o, "prompt", where, ts))) st = lu_error_code();
        else if ((st = parse_instructions(o, where, it)) == LU_OK)
            st = get_max_new(o, where, ts, &it->max_new_tokens);
    } else if (!strcmp(ts, "ppl")) {
        it->type = LU_LMEVAL_PPL;
        if (!(it->text = get_string(o, "text", where, ts))) st = lu_error_code();
        else if (!*it->text) st = lu_errorf(LU_ERR_INVALID, "%s: ppl item: empty text", where);
    } else {
        st = lu_errorf(LU_ERR_INVALID, "%s: \"type\" must be \"mc\", \"gen\", \"ppl\" or \"ifeval\"", where);
    }
    cJSON_Delete(o);
    return st;
}

lu_lmeval_task *lu_lmeval_task_parse(const char *text, size_t len, const char *name)
{
    lu_lmeval_task *t = calloc(1, sizeof *t);
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    if (!t || !(t->name = strdup(base))) {
        lu_lmeval_task_free(t);
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    size_t nl = strlen(t->name);
    if (nl > 6 && !strcmp(t->name + nl - 6, ".jsonl")) t->name[nl - 6] = 0;
    int cap = 0, line_no = 0;
    for (size_t pos = 0; pos < len;) {
        const char *line = text + pos, *end = memchr(line, '\n', len - pos);
        size_t n = end ? (size_t)(end - line) : len - pos;
        pos += n + 1;
        line_no++;
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == n) continue;
        if (t->n_items == cap) {
            cap = 2 * cap + 16;
            lu_lmeval_item *grown = realloc(t->items, (size_t)cap * sizeof *grown);
            if (!grown) {
                lu_errorf(LU_ERR_NOMEM, "%s: out of memory", name);
                lu_lmeval_task_free(t);
                return NULL;
            }
            t->items = grown;
        }
        lu_lmeval_item *it = &t->items[t->n_items++];
        *it = (lu_lmeval_item){.line = line_no};
        char where[512];
        snprintf(where, sizeof where, "%s:%d", name, line_no);
        if (parse_item(line, n, where, it) != LU_OK) {
            lu_lmeval_task_free(t);
            return NULL;
        }
        if (t->n_items == 1) t->type = it->type;
        else if (it->type != t->type) {
            lu_errorf(LU_ERR_INVALID, "%s: %s item in a %s task (one type per file)", where, type_name(it->type),
                      type_name(t->type));
            lu_lmeval_task_free(t);
            return NULL;
        }
    }
    if (t->n_items == 0) {
        lu_errorf(LU_ERR_INVALID, "%s: no item", name);
        lu_lmeval_task_free(t);
        return NULL;
    }
    return t;
}

lu_lmeval_task *lu_lmeval_task_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lu_errorf(LU_ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = 2 * cap + 65536;
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fclose(f);
                lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
                return NULL;
            }
            buf = grown;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    lu_lmeval_task *t = err ? NULL : lu_lmeval_task_parse(buf, len, path);
    if (err) lu_errorf(LU_ERR_IO, "%s: read error", path);
    free(buf);
    return t;
}

/* ---- scoring ---- */

static int64_t *encode(const lu_tokenizer *tok, const char *s, int64_t *n)
{
    int32_t *ids32 = NULL;
    if (lu_tokenizer_encode(tok, s, strlen(s), &ids32, n)) return NULL;
    int64_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    if (!ids) lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
    for (int64_t i = 0; ids && i < *n; i++) ids[i] = ids32[i];
    free(ids32);
    return ids;
}

/* log softmax(row)[id], in float64. */
static double log_softmax_at(const float *row, int64_t V, int64_t id)
{
    float mx = row[0];
    for (int64_t v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    double s = 0;
    for (int64_t v = 0; v < V; v++) s += exp((double)row[v] - mx);
    return (double)row[id] - mx - log(s);
}

/* Sum over t in [from, n) of log p(ids[t] | ids[< t]) from one forward over ids (from >= 1). */
static lu_status score_tokens(lu_decoder *m, const int64_t *ids, int64_t n, int64_t from, double *ll)
{
    lu_arena *arena = lu_arena_new(m->params->device, 0);
    if (!arena) return lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
    lu_arena *prev = lu_arena_activate(arena);
    bool grad = lu_grad_set_enabled(false);
    int64_t V = m->cfg.vocab_size;
    float *rows = malloc((size_t)(n * V) * sizeof *rows);
    lu_tensor *in = rows ? lu_tensor_from_host(LU_I64, LU_SHAPE(1, n), m->params->device, ids) : NULL;
    lu_tensor *logits = in ? lu_decoder_forward(m, &(lu_decoder_batch){.input_ids = in}) : NULL;
    lu_status st = !rows ? lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory")
                   : logits ? lu_tensor_to_host(logits, LU_F32, rows)
                            : lu_error_code();
    *ll = 0;
    for (int64_t t = from; st == LU_OK && t < n; t++) *ll += log_softmax_at(rows + (t - 1) * V, V, ids[t]);
    free(rows);
    lu_grad_set_enabled(grad);
    lu_arena_activate(prev);
    lu_arena_free(arena);
    return st;
}

lu_status lu_lmeval_loglikelihood(lu_decoder *m, const lu_tokenizer *tok, const char *context, const char *continuation,
                                double *ll, int64_t *n_tokens)
{
    size_t nc = strlen(context), nk = strlen(continuation);
    char *whole = malloc(nc + nk + 1);
    if (!whole) return lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
    memcpy(whole, context, nc);
    memcpy(whole + nc, continuation, nk + 1);
    int64_t n_whole = 0, n_ctx = 0, *w = encode(tok, whole, &n_whole), *c = w ? encode(tok, context, &n_ctx) : NULL;
    free(whole);
    lu_status st = !c ? lu_error_code()
                   : n_ctx == 0 ? lu_errorf(LU_ERR_INVALID, "lm eval: the context encodes to no token")
                   : n_ctx >= n_whole
                       ? lu_errorf(LU_ERR_INVALID, "lm eval: the continuation '%s' encodes to no token", continuation)
                       : score_tokens(m, w, n_whole, n_ctx, ll);
    if (st == LU_OK) *n_tokens = n_whole - n_ctx;
    free(w);
    free(c);
    return st;
}

static bool same_prefix(const int64_t *a, const int64_t *b, int64_t n)
{
    return !memcmp(a, b, (size_t)n * sizeof *a);
}

/* Log-likelihoods ll[c] and token counts nt[c] of every choice after context, paired as
 * lu_lmeval_loglikelihood does. The context is computed once into a key/value cache, which is
 * rewound to it for each choice whose ids start with the context's own ids (the usual case); a
 * choice whose first token merges with the end of the context gets a full forward of its own. */
static lu_status mc_scores(lu_decoder *m, const lu_tokenizer *tok, const char *context, char *const *choices, int n,
                           double *ll, int64_t *nt)
{
    int64_t nc = 0, *c = encode(tok, context, &nc);
    int64_t **w = calloc((size_t)n, sizeof *w), *nw = calloc((size_t)n, sizeof *nw);
    size_t lc = strlen(context);
    lu_status st = !c ? lu_error_code()
                   : !w || !nw ? lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory")
                   : nc == 0 ? lu_errorf(LU_ERR_INVALID, "lm eval: the context encodes to no token")
                             : LU_OK;
    int64_t longest = 0;
    for (int i = 0; i < n && st == LU_OK; i++) {
        size_t lk = strlen(choices[i]);
        char *whole = malloc(lc + lk + 1);
        if (!whole) {
            st = lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
            break;
        }
        memcpy(whole, context, lc);
        memcpy(whole + lc, choices[i], lk + 1);
        w[i] = encode(tok, whole, &nw[i]);
        free(whole);
        if (!w[i]) st = lu_error_code();
        else if (nw[i] <= nc)
            st = lu_errorf(LU_ERR_INVALID, "lm eval: the continuation '%s' encodes to no token", choices[i]);
        else if (nw[i] - nc > longest) longest = nw[i] - nc;
    }
    lu_kv_cache *cache = st == LU_OK ? lu_kv_cache_new(m, 1, nc + longest) : NULL;
    lu_arena *arena = cache ? lu_arena_new(m->params->device, 0) : NULL;
    if (st == LU_OK && !arena) st = cache ? lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory") : lu_error_code();
    lu_arena *prev = arena ? lu_arena_activate(arena) : NULL;
    bool grad = lu_grad_set_enabled(false);
    int64_t V = m->cfg.vocab_size;
    float *last = malloc((size_t)V * sizeof *last), *rows = malloc((size_t)(longest * V + 1) * sizeof *rows);
    if (st == LU_OK && (!last || !rows)) st = lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
    if (st == LU_OK) {
        lu_tensor *in = lu_tensor_from_host(LU_I64, LU_SHAPE(1, nc), m->params->device, c);
        lu_tensor *lg = in ? lu_decoder_forward_cached(m, in, cache, true) : NULL;
        st = lg ? lu_tensor_to_host(lg, LU_F32, last) : lu_error_code();
        lu_arena_reset(arena);
    }
    for (int i = 0; i < n && st == LU_OK; i++) {
        nt[i] = nw[i] - nc;
        if (!same_prefix(w[i], c, nc)) {
            st = score_tokens(m, w[i], nw[i], nc, &ll[i]);
            continue;
        }
        ll[i] = log_softmax_at(last, V, w[i][nc]);
        if (nt[i] == 1) continue;
        /* Tokens nc .. nw-2 after the cached context predict tokens nc+1 .. nw-1. */
        cache->length = nc;
        lu_tensor *in = lu_tensor_from_host(LU_I64, LU_SHAPE(1, nt[i] - 1), m->params->device, w[i] + nc);
        lu_tensor *lg = in ? lu_decoder_forward_cached(m, in, cache, false) : NULL;
        st = lg ? lu_tensor_to_host(lg, LU_F32, rows) : lu_error_code();
        for (int64_t t = 0; st == LU_OK && t < nt[i] - 1; t++)
            ll[i] += log_softmax_at(rows + t * V, V, w[i][nc + 1 + t]);
        lu_arena_reset(arena);
    }
    lu_grad_set_enabled(grad);
    if (arena) {
        lu_arena_activate(prev);
        lu_arena_free(arena);
    }
    lu_kv_cache_free(cache);
    for (int i = 0; w && i < n; i++) free(w[i]);
    free(w);
    free(nw);
    free(c);
    free(last);
    free(rows);
    return st;
}

static int64_t utf8_chars(const char *s)
{
    int64_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Index of the largest value, the first one on ties (numpy argmax). */
static int argmax(const double *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* ---- answers ---- */

static char *trimmed(const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    char *out = malloc(n + 1);
    if (!out) {
        lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
        return NULL;
    }
    memcpy(out, s, n);
    out[n] = 0;
    return out;
}

char *lu_lmeval_extract(const char *generated, const char *regex)
{
    if (!regex) {
        const char *p = generated;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        const char *end = strchr(p, '\n');
        return trimmed(p, end ? (size_t)(end - p) : strlen(p));
    }
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        lu_errorf(LU_ERR_INVALID, "lm eval: regex '%s' at offset %zu: %s", regex, (size_t)off, (const char *)msg);
        return NULL;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)generated, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) : -1;
    char *out;
    if (rc > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        int g = rc > 1 && ov[2] != PCRE2_UNSET ? 1 : 0;
        out = trimmed(generated + ov[2 * g], ov[2 * g + 1] - ov[2 * g]);
    } else {
        out = trimmed("", 0);
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return out;
}

char *lu_lmeval_normalize(const char *s)
{
    utf8proc_uint8_t *folded = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, 0, &folded,
                                      UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_COMPAT | UTF8PROC_DECOMPOSE |
                                          UTF8PROC_CASEFOLD | UTF8PROC_STRIPMARK);
    if (n < 0) {
        lu_errorf(LU_ERR_INVALID, "lm eval: cannot normalise '%s': %s", s, utf8proc_errmsg(n));
        return NULL;
    }
    /* Punctuation dropped, whitespace runs become one space, none at either end. */
    char *out = malloc((size_t)n + 1);
    size_t len = 0;
    bool space = false;
    utf8proc_int32_t cp;
    for (utf8proc_ssize_t i = 0, k; out && i < n; i += k) {
        k = utf8proc_iterate(folded + i, n - i, &cp);
        utf8proc_category_t cat = utf8proc_category(cp);
        if (cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO) continue;
        if (cat == UTF8PROC_CATEGORY_ZS || cp == '\t' || cp == '\n' || cp == '\r' || cp == '\v' || cp == '\f') {
            space = len > 0;
            continue;
        }
        if (space) out[len++] = ' ';
        space = false;
        memcpy(out + len, folded + i, (size_t)k);
        len += (size_t)k;
    }
    free(folded);
    if (!out) {
        lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
        return NULL;
    }
    out[len] = 0;
    return out;
}

lu_status lu_lmeval_ifeval_score(const lu_lmeval_item *it, const char *response, bool *strict, bool *loose)
{
    if (it->type != LU_LMEVAL_IFEVAL) return lu_errorf(LU_ERR_INVALID, "lm eval: line %d is not an ifeval item", it->line);
    for (int i = 0; i < it->n_instructions; i++)
        LU_TRY(lu_ifeval_evaluate(it->instructions[i], response, &strict[i], &loose[i]));
    return LU_OK;
}

/* ---- running a task ---- */

static char *render(const lu_decoder *m, const lu_lmeval_opts *o, const char *text)
{
    if (!o->chat) {
        char *s = strdup(text);
        if (!s) lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
        return s;
    }
    lu_chat_message msgs[2];
    int n = 0;
    if (o->system) msgs[n++] = (lu_chat_message){"system", o->system, NULL};
    msgs[n++] = (lu_chat_message){"user", text, NULL};
    /* Qwen3 models get the non-thinking generation prompt; other ChatML models none. */
    return lu_chat_render(msgs, n, true, !m->cfg.qk_norm);
}

typedef struct gen_ctx {
    lu_tokenizer_stream *stream;
    char *text;
    size_t len, cap;
    bool first_line; /* stop once a non-blank line is complete */
    bool failed;
} gen_ctx;

static bool append(gen_ctx *c, const char *piece)
{
    size_t k = strlen(piece);
    if (c->len + k + 1 > c->cap) {
        c->cap = 2 * (c->len + k + 1);
        char *grown = realloc(c->text, c->cap);
        if (!grown) {
            lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
            return false;
        }
        c->text = grown;
    }
    memcpy(c->text + c->len, piece, k + 1);
    c->len += k;
    return true;
}

static int on_token(int64_t token, void *p)
{
    gen_ctx *c = p;
    const char *piece = lu_tokenizer_stream_push(c->stream, (int32_t)token);
    if (!piece || !append(c, piece)) {
        c->failed = true;
        return 1;
    }
    if (!c->first_line) return 0;
    const char *p0 = c->text;
    while (*p0 == ' ' || *p0 == '\t' || *p0 == '\n' || *p0 == '\r') p0++;
    return *p0 && strchr(p0, '\n') != NULL;
}

/* Greedy continuation of prompt as text (special tokens skipped); new string. */
static char *generate_text(lu_decoder *m, const lu_tokenizer *tok, const char *prompt, int64_t max_new, bool first_line)
{
    int64_t n = 0, *ids = encode(tok, prompt, &n);
    if (!ids) return NULL;
    if (n == 0) {
        free(ids);
        lu_errorf(LU_ERR_INVALID, "lm eval: the prompt encodes to no token");
        return NULL;
    }
    gen_ctx c = {.stream = lu_tokenizer_stream_new(tok, true), .text = calloc(1, 64), .cap = 64,
                 .first_line = first_line};
    int64_t *out = malloc((size_t)max_new * sizeof *out);
    int64_t got = -1;
    if (c.stream && c.text && out) {
        lu_generate_opts g = {.max_new_tokens = max_new, .sampling = {.greedy = true}, .on_token = on_token, .ctx = &c};
        got = lu_generate(m, ids, n, &g, out);
    } else {
        lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory");
    }
    const char *rest = got >= 0 && !c.failed ? lu_tokenizer_stream_flush(c.stream) : NULL;
    if (got >= 0 && !c.failed && (!rest || !append(&c, rest))) c.failed = true;
    free(ids);
    free(out);
    lu_tokenizer_stream_free(c.stream);
    if (got < 0 || c.failed) {
        free(c.text);
        return NULL;
    }
    return c.text;
}

/* The model's token before a scored text: BOS, else its first end token. */
static int64_t start_token(const lu_decoder *m)
{
    if (m->cfg.bos_token_id >= 0) return m->cfg.bos_token_id;
    if (m->cfg.n_eos > 0) return m->cfg.eos_token_ids[0];
    lu_errorf(LU_ERR_INVALID, "lm eval: ppl needs a model with a BOS or end token to start the text");
    return -1;
}

/* Adds the NLL of item's text and its token count. */
static lu_status ppl_item(lu_decoder *m, const lu_tokenizer *tok, const char *text, int64_t window, double *nll,
                          int64_t *n_tokens)
{
    int64_t start = start_token(m), n = 0, *ids = start >= 0 ? encode(tok, text, &n) : NULL;
    int64_t *buf = ids ? malloc((size_t)window * sizeof *buf) : NULL;
    lu_status st = !ids ? lu_error_code() : !buf ? lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory") : LU_OK;
    for (int64_t pos = 0, prev = start; st == LU_OK && pos < n;) {
        int64_t k = n - pos < window - 1 ? n - pos : window - 1;
        buf[0] = prev;
        memcpy(buf + 1, ids + pos, (size_t)k * sizeof *buf);
        double ll;
        st = score_tokens(m, buf, k + 1, 1, &ll);
        *nll -= ll;
        prev = ids[pos + k - 1];
        pos += k;
    }
    if (st == LU_OK) *n_tokens += n;
    free(ids);
    free(buf);
    return st;
}

lu_status lu_lmeval_run(lu_decoder *m, const lu_tokenizer *tok, const lu_lmeval_task *task, const lu_lmeval_opts *o,
                      lu_lmeval_result *r)
{
    *r = (lu_lmeval_result){0};
    int64_t n = o->limit > 0 && o->limit < task->n_items ? o->limit : task->n_items;
    int64_t max_new = o->max_new_tokens > 0 ? o->max_new_tokens : 256;
    int64_t window = o->max_length > 0 ? o->max_length : 1024;
    if (o->max_length <= 0 && m->cfg.max_position_embeddings > 0 && m->cfg.max_position_embeddings < window)
        window = m->cfg.max_position_embeddings;
    if (window < 2) return lu_errorf(LU_ERR_INVALID, "lm eval: max_length %lld must be at least 2", (long long)window);
    /* Shared: this rank's items are rank, rank + ranks, ... (long generations spread evenly). */
    const int rank = o->shared ? lu_dist_rank() : 0, ranks = o->shared ? lu_dist_size() : 1;
    const int64_t mine = n > rank ? (n - rank + ranks - 1) / ranks : 0;
    lu_progress *p = o->progress && rank == 0 ? lu_progress_begin(stderr, task->name, mine) : NULL;
    double hits[LU_LMEVAL_MAX_METRICS] = {0}, nll = 0, bytes = 0;
    int64_t tokens = 0, instructions = 0, done = 0;
    lu_status st = LU_OK;
    for (int64_t i = rank; i < n && st == LU_OK; i += ranks) {
        const lu_lmeval_item *it = &task->items[i];
        int64_t tokens_before = tokens;
        if (it->type == LU_LMEVAL_MC) {
            int nch = it->n_choices;
            char *ctx = render(m, o, it->text);
            double *score = calloc((size_t)nch * 5, sizeof *score);
            int64_t *nt = calloc((size_t)nch, sizeof *nt);
            st = !ctx ? lu_error_code()
                 : !score || !nt ? lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory")
                                 : mc_scores(m, tok, ctx, it->choices, nch, score + 4 * nch, nt);
            for (int c = 0; c < nch && st == LU_OK; c++) {
                double ll = score[4 * nch + c];
                const char *ch = it->choices[c];
                int64_t chars = utf8_chars(ch), nospace = chars - (*ch == ' ');
                score[c] = ll;
                score[nch + c] = ll / (double)(chars > 0 ? chars : 1);
                score[2 * nch + c] = ll / (double)(nospace > 0 ? nospace : 1);
                score[3 * nch + c] = ll / (double)nt[c];
                tokens += nt[c];
            }
            for (int k = 0; k < 4 && st == LU_OK; k++) hits[k] += argmax(score + k * nch, nch) == it->gold;
            if (st != LU_OK) lu_errorf(lu_error_code(), "%s:%d: %s", task->name, it->line, lu_error_message());
            free(ctx);
            free(score);
            free(nt);
        } else if (it->type == LU_LMEVAL_GEN) {
            char *prompt = render(m, o, it->text);
            int64_t bound = it->max_new_tokens > 0 ? it->max_new_tokens : max_new;
            char *gen = prompt ? generate_text(m, tok, prompt, bound, it->regex == NULL) : NULL;
            char *ans = gen ? lu_lmeval_extract(gen, it->regex) : NULL;
            char *norm = ans ? lu_lmeval_normalize(ans) : NULL;
            bool em = false, qem = false;
            for (int a = 0; norm && a < it->n_answers; a++) {
                char *want = trimmed(it->answers[a], strlen(it->answers[a]));
                char *want_norm = want ? lu_lmeval_normalize(want) : NULL;
                if (!want_norm) {
                    free(want);
                    free(norm);
                    norm = NULL;
                    break;
                }
                em |= !strcmp(ans, want);
                qem |= !strcmp(norm, want_norm);
                free(want);
                free(want_norm);
            }
            if (!norm) st = lu_errorf(lu_error_code(), "%s:%d: %s", task->name, it->line, lu_error_message());
            hits[0] += em;
            hits[1] += qem;
            free(prompt);
            free(gen);
            free(ans);
            free(norm);
        } else if (it->type == LU_LMEVAL_IFEVAL) {
            char *prompt = render(m, o, it->text);
            int64_t bound = it->max_new_tokens > 0 ? it->max_new_tokens : max_new;
            char *gen = prompt ? generate_text(m, tok, prompt, bound, false) : NULL;
            bool *ok = gen ? calloc(2 * (size_t)it->n_instructions, sizeof *ok) : NULL;
            st = !gen ? lu_error_code()
                 : !ok ? lu_errorf(LU_ERR_NOMEM, "lm eval: out of memory")
                       : lu_lmeval_ifeval_score(it, gen, ok, ok + it->n_instructions);
            if (st == LU_OK) {
                bool all_strict = true, all_loose = true;
                for (int k = 0; k < it->n_instructions; k++) {
                    all_strict &= ok[k];
                    all_loose &= ok[it->n_instructions + k];
                    hits[1] += ok[k];
                    hits[3] += ok[it->n_instructions + k];
                }
                hits[0] += all_strict;
                hits[2] += all_loose;
                instructions += it->n_instructions;
            } else {
                lu_errorf(lu_error_code(), "%s:%d: %s", task->name, it->line, lu_error_message());
            }
            free(prompt);
            free(gen);
            free(ok);
        } else {
            st = ppl_item(m, tok, it->text, window, &nll, &tokens);
            bytes += (double)strlen(it->text);
            if (st != LU_OK) lu_errorf(lu_error_code(), "%s:%d: %s", task->name, it->line, lu_error_message());
        }
        if (p) lu_progress_update(p, ++done, 0, NULL, NULL, (double)(tokens - tokens_before), "tok");
    }
    if (p) lu_progress_end(p);
    if (ranks > 1) {
        /* Every rank reaches the sums, failed or not (the others wait for it there). */
        double v[LU_LMEVAL_MAX_METRICS + 4] = {nll, bytes, (double)tokens, (double)instructions};
        for (int k = 0; k < LU_LMEVAL_MAX_METRICS; k++) v[4 + k] = hits[k];
        lu_status rs = lu_dist_agree(st, task->name);
        if (rs == LU_OK) rs = lu_dist_all_reduce_doubles(v, LU_LMEVAL_MAX_METRICS + 4, LU_DIST_SUM);
        LU_TRY(rs);
        nll = v[0], bytes = v[1], tokens = (int64_t)v[2], instructions = (int64_t)v[3];
        for (int k = 0; k < LU_LMEVAL_MAX_METRICS; k++) hits[k] = v[4 + k];
    }
    if (st != LU_OK) return st;
    r->n = n;
    if (task->type == LU_LMEVAL_MC) {
        static const char *names[] = {"acc", "acc_norm", "acc_norm_nospace", "acc_norm_token"};
        r->n_metrics = 4;
        for (int k = 0; k < 4; k++) r->metric[k] = names[k], r->value[k] = hits[k] / (double)n;
    } else if (task->type == LU_LMEVAL_GEN) {
        r->n_metrics = 2;
        r->metric[0] = "em", r->value[0] = hits[0] / (double)n;
        r->metric[1] = "qem", r->value[1] = hits[1] / (double)n;
    } else if (task->type == LU_LMEVAL_IFEVAL) {
        static const char *names[] = {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                      "inst_level_loose_acc"};
        r->n_metrics = 4;
        for (int k = 0; k < 4; k++)
            r->metric[k] = names[k], r->value[k] = hits[k] / (double)(k % 2 ? instructions : n);
    } else {
        r->n_metrics = 2;
        r->metric[0] = "ppl", r->value[0] = tokens ? exp(nll / (double)tokens) : NAN;
        r->metric[1] = "bits_per_byte", r->value[1] = nll / (log(2.0) * bytes);
    }
    return LU_OK;
}
