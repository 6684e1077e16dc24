/* chat_template.c - the Qwen3 chat template without tools (see chat_template.h); each branch follows
 * the Jinja text of tests/fixtures/tokenizer/qwen3_chat_template.jinja. */
#include "models/chat_template.h"

#include <stdlib.h>
#include <string.h>

typedef struct renderer {
    char *text;
    size_t n, cap;
    lu_chat_segment *segs;
    int n_segs, cap_segs;
    bool ok;
} renderer;

/* Appends s[0..len) as one segment (merged with the previous one when they share message and part). */
static void put(renderer *r, const char *s, size_t len, int message, lu_chat_part part)
{
    if (!r->ok || len == 0) return;
    if (r->n + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < r->n + len + 1) cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t) {
            r->ok = false;
            return;
        }
        r->text = t;
        r->cap = cap;
    }
    memcpy(r->text + r->n, s, len);
    r->text[r->n + len] = '\0';
    lu_chat_segment *last = r->n_segs ? &r->segs[r->n_segs - 1] : NULL;
    if (last && last->message == message && last->part == part) {
        last->end += len;
    } else {
        if (r->n_segs == r->cap_segs) {
            int cap = r->cap_segs ? 2 * r->cap_segs : 16;
            lu_chat_segment *s2 = realloc(r->segs, (size_t)cap * sizeof *s2);
            if (!s2) {
                r->ok = false;
                return;
            }
            r->segs = s2;
            r->cap_segs = cap;
        }
        r->segs[r->n_segs++] = (lu_chat_segment){r->n, r->n + len, message, part};
    }
    r->n += len;
}

static void puts_(renderer *r, const char *s, int message, lu_chat_part part) { put(r, s, strlen(s), message, part); }

/* A view s[0..n) of a string, for Python's split/strip on '\n'. */
typedef struct view {
    const char *s;
    size_t n;
} view;

static view lstrip_nl(view v)
{
    while (v.n && v.s[0] == '\n') v.s++, v.n--;
    return v;
}

static view rstrip_nl(view v)
{
    while (v.n && v.s[v.n - 1] == '\n') v.n--;
    return v;
}

/* Pointer to the last occurrence of needle in v, or NULL. */
static const char *find_last(view v, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = v.n >= k ? v.n - k + 1 : 0; i-- > 0;)
        if (!memcmp(v.s + i, needle, k)) return v.s + i;
    return NULL;
}

static const char *find_first(view v, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= v.n; i++)
        if (!memcmp(v.s + i, needle, k)) return v.s + i;
    return NULL;
}

static bool is_role(const lu_chat_message *m, const char *role) { return !strcmp(m->role, role); }

/* The template's assistant branch: content and reasoning_content from the message. */
static void render_assistant(renderer *r, const lu_chat_message *m, int i, bool after_last_query, bool last)
{
    view content = {m->content, strlen(m->content)}, reasoning = {"", 0};
    if (m->reasoning) {
        reasoning = (view){m->reasoning, strlen(m->reasoning)};
    } else if (find_first(content, "</think>")) {
        /* content.split('</think>')[-1].lstrip('\n');
         * content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
        const char *end_first = find_first(content, "</think>"), *end_last = find_last(content, "</think>");
        view before = rstrip_nl((view){content.s, (size_t)(end_first - content.s)});
        const char *open = find_last(before, "<think>");
        if (open) before = (view){open + 7, before.n - (size_t)(open + 7 - before.s)};
        reasoning = lstrip_nl(before);
        const char *after = end_last + 8;
        content = lstrip_nl((view){after, content.n - (size_t)(after - content.s)});
    }
    puts_(r, "<|im_start|>assistant\n", i, LU_CHAT_FRAME);
    if (after_last_query && (last || reasoning.n)) {
        view rs = rstrip_nl(lstrip_nl(reasoning));
        puts_(r, "<think>\n", i, LU_CHAT_THINK);
        put(r, rs.s, rs.n, i, LU_CHAT_THINK);
        puts_(r, "\n</think>\n\n", i, LU_CHAT_THINK);
        content = lstrip_nl(content);
    }
    put(r, content.s, content.n, i, LU_CHAT_ANSWER);
    puts_(r, "<|im_end|>", i, LU_CHAT_ANSWER_END);
    puts_(r, "\n", i, LU_CHAT_FRAME);
}

static bool is_tool_response(const char *s)
{
    size_t n = strlen(s), a = strlen("<tool_response>"), b = strlen("</tool_response>");
    return n >= a && n >= b && !strncmp(s, "<tool_response>", a) && !strcmp(s + n - b, "</tool_response>");
}

char *lu_chat_render_segments(const lu_chat_message *m, int n, bool add_generation_prompt, bool enable_thinking,
                              lu_chat_segment **segs, int *n_segs)
{
    if (segs) *segs = NULL;
    if (n_segs) *n_segs = 0;
    if (!m || n < 1) {
        lu_errorf(LU_ERR_INVALID, "chat template: needs at least one message, got %d", n);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (!m[i].role || !m[i].content) {
            lu_errorf(LU_ERR_INVALID, "chat template: message %d has no %s", i, m[i].role ? "content" : "role");
            return NULL;
        }
        if (!is_role(&m[i], "system") && !is_role(&m[i], "user") && !is_role(&m[i], "assistant") &&
            !is_role(&m[i], "tool")) {
            lu_errorf(LU_ERR_INVALID, "chat template: message %d has role \"%s\" (expected system, user, assistant "
                      "or tool)", i, m[i].role);
            return NULL;
        }
    }
    /* ns.last_query_index: the last user message that is not a wrapped tool response. */
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--)
        if (is_role(&m[i], "user") && !is_tool_response(m[i].content)) {
            last_query = i;
            break;
        }
    renderer r = {.ok = true};
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "user") || is_role(&m[i], "system")) {
            puts_(&r, "<|im_start|>", i, LU_CHAT_FRAME);
            puts_(&r, m[i].role, i, LU_CHAT_FRAME);
            puts_(&r, "\n", i, LU_CHAT_FRAME);
            puts_(&r, m[i].content, i, LU_CHAT_INPUT);
            puts_(&r, "<|im_end|>\n", i, LU_CHAT_FRAME);
        } else if (is_role(&m[i], "assistant")) {
            render_assistant(&r, &m[i], i, i > last_query, i == n - 1);
        } else { /* tool */
            if (i == 0 || !is_role(&m[i - 1], "tool")) puts_(&r, "<|im_start|>user", i, LU_CHAT_FRAME);
            puts_(&r, "\n<tool_response>\n", i, LU_CHAT_FRAME);
            puts_(&r, m[i].content, i, LU_CHAT_INPUT);
            puts_(&r, "\n</tool_response>", i, LU_CHAT_FRAME);
            if (i == n - 1 || !is_role(&m[i + 1], "tool")) puts_(&r, "<|im_end|>\n", i, LU_CHAT_FRAME);
        }
    }
    if (add_generation_prompt) {
        puts_(&r, "<|im_start|>assistant\n", -1, LU_CHAT_FRAME);
        if (!enable_thinking) puts_(&r, "<think>\n\n</think>\n\n", -1, LU_CHAT_FRAME);
    }
    if (r.ok && !r.text) r.ok = (r.text = calloc(1, 1)) != NULL;
    if (!r.ok) {
        free(r.text), free(r.segs);
        lu_errorf(LU_ERR_NOMEM, "chat template: out of memory");
        return NULL;
    }
    if (segs) *segs = r.segs;
    else free(r.segs);
    if (n_segs) *n_segs = r.n_segs;
    return r.text;
}

char *lu_chat_render(const lu_chat_message *m, int n, bool add_generation_prompt, bool enable_thinking)
{
    return lu_chat_render_segments(m, n, add_generation_prompt, enable_thinking, NULL, NULL);
}

lu_status lu_chat_encode(const lu_tokenizer *t, const lu_chat_message *m, int n, bool train_think, int32_t **ids,
                         uint8_t **mask, int64_t *n_tokens)
{
    *ids = NULL;
    *mask = NULL;
    *n_tokens = 0;
    lu_chat_segment *segs;
    int n_segs;
    char *text = lu_chat_render_segments(m, n, false, false, &segs, &n_segs);
    if (!text) return lu_error_code();
    int64_t *starts = NULL, nt = 0;
    lu_status st = lu_tokenizer_encode_offsets(t, text, strlen(text), ids, &starts, &nt);
    if (st == LU_OK && !(*mask = malloc((size_t)nt + 1))) st = lu_errorf(LU_ERR_NOMEM, "chat encode: out of memory");
    /* Token starts and segments are both in increasing order: one merged walk. */
    for (int64_t k = 0, s = 0; st == LU_OK && k < nt; k++) {
        while (s + 1 < n_segs && (int64_t)segs[s].end <= starts[k]) s++;
        lu_chat_part p = segs[s].part;
        (*mask)[k] = p == LU_CHAT_ANSWER || p == LU_CHAT_ANSWER_END || (train_think && p == LU_CHAT_THINK);
    }
    free(text), free(segs), free(starts);
    if (st != LU_OK) {
        free(*ids), free(*mask);
        *ids = NULL;
        *mask = NULL;
        return st;
    }
    *n_tokens = nt;
    return LU_OK;
}
