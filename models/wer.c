/* wer.c - error rates by Levenshtein alignment and transcript normalisation (see wer.h). */
#include "models/wer.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* A token of an aligned sequence: a word or one code point, as a byte span of the input. */
typedef struct span {
    const char *p;
    int len;
} span;

typedef enum edit { EDIT_MATCH, EDIT_SUB, EDIT_DEL, EDIT_INS } edit;

static bool is_space(int32_t cp)
{
    return cp == ' ' || (cp >= '\t' && cp <= '\r') || utf8proc_category(cp) == UTF8PROC_CATEGORY_ZS;
}

/* Decodes the code point at s; returns its byte length, or records an error (invalid UTF-8). */
static int next_cp(const char *s, int32_t *cp, const char *op)
{
    utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s, -1, cp);
    if (n < 0) {
        lu_errorf(LU_ERR_FORMAT, "%s: invalid UTF-8 at byte 0x%02x", op, (unsigned char)*s);
        return -1;
    }
    return (int)n;
}

static bool span_is_space(span s)
{
    int32_t cp;
    utf8proc_iterate((const utf8proc_uint8_t *)s.p, s.len, &cp);
    return is_space(cp);
}

/* Splits s into words (by_word) or code points with the ends trimmed. *out is malloc'd. */
static lu_status tokenize(const char *s, bool by_word, span **out, int *n, const char *op)
{
    size_t cap = strlen(s) + 1;
    *out = malloc(sizeof(span) * cap);
    *n = 0;
    if (!*out) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory for %zu tokens", op, cap);
    int32_t cp;
    const char *word = NULL;
    for (const char *p = s; *p;) {
        int len = next_cp(p, &cp, op);
        if (len < 0) {
            free(*out);
            *out = NULL;
            return LU_ERR_FORMAT;
        }
        if (!by_word) {
            (*out)[(*n)++] = (span){p, len};
        } else if (is_space(cp) && word) {
            (*out)[(*n)++] = (span){word, (int)(p - word)};
            word = NULL;
        } else if (!is_space(cp) && !word) {
            word = p;
        }
        p += len;
    }
    if (word) (*out)[(*n)++] = (span){word, (int)strlen(word)};
    if (!by_word) {
        int lo = 0;
        while (lo < *n && span_is_space((*out)[lo])) lo++;
        while (*n > lo && span_is_space((*out)[*n - 1])) (*n)--;
        memmove(*out, *out + lo, sizeof(span) * (size_t)(*n - lo));
        *n -= lo;
    }
    return LU_OK;
}

static bool span_eq(span a, span b)
{
    return a.len == b.len && !memcmp(a.p, b.p, (size_t)a.len);
}

/* Levenshtein distance table d[i][j] = cost of aligning ref[0:i] with hyp[0:j], then the backtrace
 * described in wer.h. ops (malloc'd, nr + nh entries at most) is in reading order. */
static lu_status align(const span *r, int nr, const span *h, int nh, edit **ops, int *n_ops, const char *op)
{
    const size_t w = (size_t)nh + 1;
    int *d = malloc(sizeof(int) * ((size_t)nr + 1) * w);
    *ops = malloc(sizeof(edit) * ((size_t)nr + nh + 1));
    if (!d || !*ops) {
        free(d);
        free(*ops);
        *ops = NULL;
        return lu_errorf(LU_ERR_NOMEM, "%s: out of memory aligning %d x %d tokens", op, nr, nh);
    }
    for (int j = 0; j <= nh; j++) d[j] = j;
    for (int i = 1; i <= nr; i++) {
        d[i * w] = i;
        for (int j = 1; j <= nh; j++) {
            int best = d[(i - 1) * w + j - 1] + !span_eq(r[i - 1], h[j - 1]);
            int del = d[(i - 1) * w + j] + 1, ins = d[i * w + j - 1] + 1;
            if (del < best) best = del;
            if (ins < best) best = ins;
            d[i * w + j] = best;
        }
    }
    int n = 0, i = nr, j = nh;
    while (i > 0 || j > 0) {
        if (i > 0 && j > 0 && d[i * w + j] == d[(i - 1) * w + j - 1] + !span_eq(r[i - 1], h[j - 1])) {
            (*ops)[n++] = span_eq(r[i - 1], h[j - 1]) ? EDIT_MATCH : EDIT_SUB;
            i--, j--;
        } else if (i > 0 && d[i * w + j] == d[(i - 1) * w + j] + 1) {
            (*ops)[n++] = EDIT_DEL;
            i--;
        } else {
            (*ops)[n++] = EDIT_INS;
            j--;
        }
    }
    for (int a = 0, b = n - 1; a < b; a++, b--) {
        edit t = (*ops)[a];
        (*ops)[a] = (*ops)[b];
        (*ops)[b] = t;
    }
    *n_ops = n;
    free(d);
    return LU_OK;
}

static lu_status count(const char *ref, const char *hyp, bool by_word, lu_wer_counts *c, const char *op)
{
    if (!ref || !hyp) return lu_errorf(LU_ERR_INVALID, "%s: reference or hypothesis is NULL", op);
    span *r = NULL, *h = NULL;
    edit *ops = NULL;
    int nr, nh, n;
    lu_status st = tokenize(ref, by_word, &r, &nr, op);
    if (st == LU_OK) st = tokenize(hyp, by_word, &h, &nh, op);
    if (st == LU_OK) st = align(r, nr, h, nh, &ops, &n, op);
    if (st == LU_OK) {
        memset(c, 0, sizeof *c);
        for (int k = 0; k < n; k++) {
            c->hits += ops[k] == EDIT_MATCH;
            c->substitutions += ops[k] == EDIT_SUB;
            c->deletions += ops[k] == EDIT_DEL;
            c->insertions += ops[k] == EDIT_INS;
        }
        c->ref_len = nr;
    }
    free(r);
    free(h);
    free(ops);
    return st;
}

lu_status lu_wer_align_words(const char *ref, const char *hyp, lu_wer_counts *c)
{
    return count(ref, hyp, true, c, "wer");
}

lu_status lu_wer_align_chars(const char *ref, const char *hyp, lu_wer_counts *c)
{
    return count(ref, hyp, false, c, "cer");
}

void lu_wer_accumulate(lu_wer_counts *total, const lu_wer_counts *c)
{
    total->hits += c->hits;
    total->substitutions += c->substitutions;
    total->deletions += c->deletions;
    total->insertions += c->insertions;
    total->ref_len += c->ref_len;
}

double lu_wer_rate(const lu_wer_counts *c)
{
    int64_t errors = c->substitutions + c->deletions + c->insertions;
    if (c->ref_len == 0) return errors == 0 ? 0.0 : INFINITY;
    return (double)errors / (double)c->ref_len;
}

/* ---- alignment printout ------------------------------------------------------------------------ */

static int n_cps(span s)
{
    int n = 0;
    for (int i = 0; i < s.len; i++) n += ((unsigned char)s.p[i] & 0xC0) != 0x80;
    return n;
}

/* Appends a column: `cps` code points in `len` bytes of p, padded with spaces to `width` code
 * points, plus one separating space. */
static char *put(char *o, const char *p, int len, int cps, int width)
{
    memcpy(o, p, (size_t)len);
    memset(o + len, ' ', (size_t)(width - cps + 1));
    return o + len + width - cps + 1;
}

/* `width` stars (the missing side of an insertion or deletion) plus one space. */
static char *put_stars(char *o, int width)
{
    memset(o, '*', (size_t)width);
    o[width] = ' ';
    return o + width + 1;
}

static char *end_line(char *line_start, char *o)
{
    while (o > line_start && o[-1] == ' ') o--;
    *o++ = '\n';
    return o;
}

char *lu_wer_format_alignment(const char *ref, const char *hyp)
{
    const char *op = "wer_format_alignment";
    if (!ref || !hyp) {
        lu_errorf(LU_ERR_INVALID, "%s: reference or hypothesis is NULL", op);
        return NULL;
    }
    span *r = NULL, *h = NULL;
    edit *ops = NULL;
    int nr = 0, nh = 0, n = 0;
    char *out = NULL;
    if (tokenize(ref, true, &r, &nr, op) != LU_OK || tokenize(hyp, true, &h, &nh, op) != LU_OK ||
        align(r, nr, h, nh, &ops, &n, op) != LU_OK)
        goto done;
    /* A column takes at most (ref bytes + hyp bytes + 1) bytes on any line: the widest word
     * plus padding plus one space. */
    size_t cap = strlen(ref) + strlen(hyp) + 2 * (size_t)n + 16;
    char *lines[3];
    for (int l = 0; l < 3; l++) {
        lines[l] = malloc(cap);
        if (!lines[l]) {
            for (int q = 0; q < l; q++) free(lines[q]);
            lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
            goto done;
        }
    }
    char *o[3] = {lines[0], lines[1], lines[2]};
    o[0] += sprintf(o[0], "REF: ");
    o[1] += sprintf(o[1], "HYP: ");
    o[2] += sprintf(o[2], "     ");
    for (int k = 0, i = 0, j = 0; k < n; k++) {
        span rs = ops[k] == EDIT_INS ? (span){NULL, 0} : r[i++];
        span hs = ops[k] == EDIT_DEL ? (span){NULL, 0} : h[j++];
        int rc = rs.p ? n_cps(rs) : 0, hc = hs.p ? n_cps(hs) : 0;
        int width = rc > hc ? rc : hc;
        if (width < 1) width = 1;
        o[0] = rs.p ? put(o[0], rs.p, rs.len, rc, width) : put_stars(o[0], width);
        o[1] = hs.p ? put(o[1], hs.p, hs.len, hc, width) : put_stars(o[1], width);
        o[2] = put(o[2], &" SDI"[ops[k]], 1, 1, width);
    }
    size_t total = 0;
    for (int l = 0; l < 3; l++) {
        o[l] = end_line(lines[l], o[l]);
        total += (size_t)(o[l] - lines[l]);
    }
    out = malloc(total + 1);
    if (out) {
        char *w = out;
        for (int l = 0; l < 3; l++) {
            memcpy(w, lines[l], (size_t)(o[l] - lines[l]));
            w += o[l] - lines[l];
        }
        *w = 0;
    } else {
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
    }
    for (int l = 0; l < 3; l++) free(lines[l]);
done:
    free(r);
    free(h);
    free(ops);
    return out;
}

/* ---- normalisation ----------------------------------------------------------------------------- */

/* Maps every code point through f (NULL: identity), dropping those that `drop` rejects. */
static char *map_cps(const char *s, int32_t (*f)(int32_t), const char *drop, const char *op)
{
    if (!s) {
        lu_errorf(LU_ERR_INVALID, "%s: text is NULL", op);
        return NULL;
    }
    /* Simple case mappings stay within 4 bytes per code point; 4x the input bounds the output. */
    char *out = malloc(4 * strlen(s) + 1), *o = out;
    if (!out) {
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
        return NULL;
    }
    int32_t cp;
    for (const char *p = s; *p;) {
        int len = next_cp(p, &cp, op);
        if (len < 0) {
            free(out);
            return NULL;
        }
        p += len;
        if (drop && cp < 128 && strchr(drop, (char)cp)) continue;
        o += utf8proc_encode_char(f ? f(cp) : cp, (utf8proc_uint8_t *)o);
    }
    *o = 0;
    return out;
}

char *lu_text_upper(const char *s)
{
    return map_cps(s, utf8proc_toupper, NULL, "text_upper");
}

char *lu_text_lower(const char *s)
{
    return map_cps(s, utf8proc_tolower, NULL, "text_lower");
}

char *lu_text_squeeze_spaces(const char *s)
{
    const char *op = "text_squeeze_spaces";
    span *w;
    int n;
    if (!s) {
        lu_errorf(LU_ERR_INVALID, "%s: text is NULL", op);
        return NULL;
    }
    if (tokenize(s, true, &w, &n, op) != LU_OK) return NULL;
    char *out = malloc(strlen(s) + 1), *o = out;
    if (out) {
        for (int i = 0; i < n; i++) {
            if (i) *o++ = ' ';
            memcpy(o, w[i].p, (size_t)w[i].len);
            o += w[i].len;
        }
        *o = 0;
    } else {
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
    }
    free(w);
    return out;
}

/* Removes every occurrence of `needle` in place. */
static void remove_all(char *s, const char *needle)
{
    size_t k = strlen(needle);
    char *hit;
    while ((hit = strstr(s, needle))) memmove(hit, hit + k, strlen(hit + k) + 1);
}

char *lu_text_clean(const char *s)
{
    char *t = map_cps(s, NULL, NULL, "text_clean");
    if (!t) return NULL;
    remove_all(t, "<unk>");
    remove_all(t, "[ unclear ]");
    char *u = map_cps(t, NULL, "#^$?:;.![]", "text_clean");
    free(t);
    if (!u) return NULL;
    char *v = lu_text_squeeze_spaces(u);
    free(u);
    return v;
}
