/* bpe.c - SentencePiece-like BPE training, encoding and decoding (see bpe.h). The trainer follows
 * sentencepiece/src/bpe_model_trainer.cc: most frequent pair first, duplicates skipped, merged
 * pieces then required characters in the final vocabulary. Pair frequencies are recounted over
 * the distinct word segments at every merge: simple, and quick for the few hundred merges of an
 * ASR vocabulary. */
#include "models/bpe.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "models/wer.h"

#define WORD_BOUNDARY "\xe2\x96\x81" /* U+2581 */
#define UNK_SURFACE " \xe2\x81\x87 " /* SentencePiece's default unk_surface, U+2047 */
#define MAX_PIECE_CHARS 16           /* SentencePiece's max_piece_length default */

struct lu_bpe {
    int n;
    char **piece;
    lu_bpe_piece_type *type;
    int unk, bos, eos, pad;
    int n_user;
    int32_t user_cp[LU_BPE_MAX_USER];
    int user_id[LU_BPE_MAX_USER];
    struct strmap *map; /* piece -> id */
};

/* ---- a byte-string hash map (open addressing, FNV-1a) --------------------------------------- */

typedef struct strmap {
    char **key;
    size_t *klen;
    int *val;
    size_t cap, n;
} strmap;

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static void strmap_free(strmap *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->cap; i++) free(m->key[i]);
    free(m->key);
    free(m->klen);
    free(m->val);
    free(m);
}

static strmap *strmap_new(size_t cap)
{
    strmap *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cap = 16;
    while (m->cap < 2 * cap) m->cap *= 2;
    m->key = calloc(m->cap, sizeof(char *));
    m->klen = calloc(m->cap, sizeof(size_t));
    m->val = calloc(m->cap, sizeof(int));
    if (!m->key || !m->klen || !m->val) {
        strmap_free(m);
        return NULL;
    }
    return m;
}

static size_t strmap_slot(const strmap *m, const char *k, size_t n)
{
    size_t i = fnv1a(k, n) & (m->cap - 1);
    while (m->key[i] && !(m->klen[i] == n && !memcmp(m->key[i], k, n))) i = (i + 1) & (m->cap - 1);
    return i;
}

static int strmap_get(const strmap *m, const char *k, size_t n)
{
    size_t i = strmap_slot(m, k, n);
    return m->key[i] ? m->val[i] : -1;
}

/* Inserts or overwrites; the map grows to keep at most half of its slots used. */
static bool strmap_put(strmap *m, const char *k, size_t n, int v)
{
    if (2 * (m->n + 1) > m->cap) {
        strmap *g = strmap_new(m->cap);
        if (!g) return false;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->key[i]) continue;
            size_t j = strmap_slot(g, m->key[i], m->klen[i]);
            g->key[j] = m->key[i];
            g->klen[j] = m->klen[i];
            g->val[j] = m->val[i];
            m->key[i] = NULL;
        }
        g->n = m->n;
        free(m->key);
        free(m->klen);
        free(m->val);
        *m = *g;
        free(g);
    }
    size_t i = strmap_slot(m, k, n);
    if (!m->key[i]) {
        m->key[i] = malloc(n ? n : 1);
        if (!m->key[i]) return false;
        memcpy(m->key[i], k, n);
        m->klen[i] = n;
        m->n++;
    }
    m->val[i] = v;
    return true;
}

/* ---- splitting text into word segments ---------------------------------------------------------- */

/* A segment is a run of text characters of one word (the first carries ▁ in front) or one
 * user-defined symbol (user >= 0). Bytes live in the list's buffer. */
typedef struct seg {
    int user;
    size_t off, len;
} seg;

typedef struct seglist {
    char *buf;
    size_t blen, bcap;
    seg *s;
    int n, cap;
} seglist;

static void seglist_free(seglist *l)
{
    free(l->buf);
    free(l->s);
}

static bool seglist_push(seglist *l, int user)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        seg *s = realloc(l->s, sizeof(seg) * (size_t)cap);
        if (!s) return false;
        l->s = s;
        l->cap = cap;
    }
    l->s[l->n++] = (seg){user, l->blen, 0};
    return true;
}

static void seglist_append(seglist *l, const char *p, size_t n)
{
    memcpy(l->buf + l->blen, p, n);
    l->blen += n;
    l->s[l->n - 1].len += n;
}

static int user_index(const int32_t *cps, int n, int32_t cp)
{
    for (int i = 0; i < n; i++)
        if (cps[i] == cp) return i;
    return -1;
}

/* NFKC, squeezed whitespace, then the segments of each word. */
static lu_status segment_text(const char *text, const int32_t *user_cp, int n_user, seglist *l, const char *op)
{
    memset(l, 0, sizeof *l);
    if (!text) return lu_errorf(LU_ERR_INVALID, "%s: text is NULL", op);
    char *norm = (char *)utf8proc_NFKC((const utf8proc_uint8_t *)text);
    if (!norm) return lu_errorf(LU_ERR_FORMAT, "%s: text is not valid UTF-8", op);
    char *sq = lu_text_squeeze_spaces(norm);
    free(norm);
    if (!sq) return lu_error_code();
    /* Each character gains at most the 3-byte ▁ of its word. */
    l->bcap = 4 * strlen(sq) + 4;
    l->buf = malloc(l->bcap);
    if (!l->buf) goto nomem;
    bool word_start = true, open = false;
    for (const char *p = sq; *p;) {
        int32_t cp;
        int len = (int)utf8proc_iterate((const utf8proc_uint8_t *)p, -1, &cp);
        p += len;
        if (cp == ' ') {
            word_start = true;
            open = false;
            continue;
        }
        int u = user_index(user_cp, n_user, cp);
        if (u >= 0) {
            /* A word opening with a user symbol keeps its boundary marker as a piece of its own. */
            if (word_start) {
                if (!seglist_push(l, -1)) goto nomem;
                seglist_append(l, WORD_BOUNDARY, 3);
            }
            if (!seglist_push(l, u)) goto nomem;
            open = false;
        } else {
            if (!open && !seglist_push(l, -1)) goto nomem;
            if (word_start) seglist_append(l, WORD_BOUNDARY, 3);
            seglist_append(l, p - len, (size_t)len);
            open = true;
        }
        word_start = false;
    }
    free(sq);
    return LU_OK;
nomem:
    free(sq);
    seglist_free(l);
    return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
}

/* ---- the vocabulary -------------------------------------------------------------------------- */

static const char *const type_names[] = {"normal", "unknown", "control", "user"};

void lu_bpe_free(lu_bpe *b)
{
    if (!b) return;
    for (int i = 0; i < b->n; i++) free(b->piece[i]);
    free(b->piece);
    free(b->type);
    strmap_free(b->map);
    free(b);
}

static lu_bpe *bpe_new(int n, const char *op)
{
    lu_bpe *b = calloc(1, sizeof *b);
    if (b) {
        b->n = n;
        b->piece = calloc((size_t)n, sizeof(char *));
        b->type = calloc((size_t)n, sizeof(lu_bpe_piece_type));
        b->map = strmap_new((size_t)n);
    }
    if (!b || !b->piece || !b->type || !b->map) {
        lu_bpe_free(b);
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory for %d pieces", op, n);
        return NULL;
    }
    return b;
}

static bool set_piece(lu_bpe *b, int id, const char *p, size_t len, lu_bpe_piece_type type)
{
    b->piece[id] = malloc(len + 1);
    if (!b->piece[id]) return false;
    memcpy(b->piece[id], p, len);
    b->piece[id][len] = 0;
    b->type[id] = type;
    return true;
}

static bool valid_utf8(const char *p)
{
    int32_t cp;
    for (utf8proc_ssize_t n; *p; p += n)
        if ((n = utf8proc_iterate((const utf8proc_uint8_t *)p, -1, &cp)) < 0) return false;
    return true;
}

/* Checks the pieces (set for ids 0..n-1), indexes them and finds the special ids. Frees b on
 * failure. */
static lu_bpe *bpe_finish(lu_bpe *b, const char *op)
{
    b->unk = b->bos = b->eos = b->pad = -1;
    b->n_user = 0;
    for (int id = 0; id < b->n; id++) {
        const char *p = b->piece[id];
        size_t len = p ? strlen(p) : 0;
        int32_t cp;
        if (!len || !valid_utf8(p)) {
            lu_errorf(LU_ERR_FORMAT, "%s: piece %d is empty or not valid UTF-8", op, id);
            goto fail;
        }
        int prev = strmap_get(b->map, p, len);
        if (prev >= 0) {
            lu_errorf(LU_ERR_FORMAT, "%s: piece '%s' appears at ids %d and %d", op, p, prev, id);
            goto fail;
        }
        if (!strmap_put(b->map, p, len, id)) {
            lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
            goto fail;
        }
        if (b->type[id] == LU_BPE_UNKNOWN) {
            if (b->unk >= 0) {
                lu_errorf(LU_ERR_FORMAT, "%s: two unknown pieces, ids %d and %d", op, b->unk, id);
                goto fail;
            }
            b->unk = id;
        } else if (b->type[id] == LU_BPE_USER) {
            if (b->n_user == LU_BPE_MAX_USER || utf8proc_iterate((const utf8proc_uint8_t *)p, -1, &cp) != (utf8proc_ssize_t)len) {
                lu_errorf(LU_ERR_FORMAT, "%s: user-defined piece '%s' (id %d) must be one character, at most %d of them",
                          op, p, id, LU_BPE_MAX_USER);
                goto fail;
            }
            b->user_cp[b->n_user] = cp;
            b->user_id[b->n_user++] = id;
        } else if (b->type[id] == LU_BPE_CONTROL) {
            if (!strcmp(p, "<s>")) b->bos = id;
            if (!strcmp(p, "</s>")) b->eos = id;
            if (!strcmp(p, "<pad>")) b->pad = id;
        }
    }
    if (b->unk < 0) {
        lu_errorf(LU_ERR_FORMAT, "%s: no unknown piece among the %d pieces", op, b->n);
        goto fail;
    }
    return b;
fail:
    lu_bpe_free(b);
    return NULL;
}

lu_bpe *lu_bpe_chars(const char *alphabet)
{
    const char *op = "bpe_chars";
    if (!alphabet || !valid_utf8(alphabet)) {
        lu_errorf(LU_ERR_INVALID, "%s: the alphabet is NULL or not valid UTF-8", op);
        return NULL;
    }
    int n = 3;
    for (const char *p = alphabet; *p; p++) n += ((unsigned char)*p & 0xC0) != 0x80;
    lu_bpe *b = bpe_new(n, op);
    if (!b) return NULL;
    bool ok = set_piece(b, 0, "<blk>", 5, LU_BPE_CONTROL) && set_piece(b, 1, "<unk>", 5, LU_BPE_UNKNOWN) &&
              set_piece(b, 2, WORD_BOUNDARY, 3, LU_BPE_NORMAL);
    int32_t cp;
    for (int id = 3; ok && *alphabet; id++) {
        int len = (int)utf8proc_iterate((const utf8proc_uint8_t *)alphabet, -1, &cp);
        ok = set_piece(b, id, alphabet, (size_t)len, LU_BPE_NORMAL);
        alphabet += len;
    }
    if (!ok) {
        lu_bpe_free(b);
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
        return NULL;
    }
    return bpe_finish(b, op);
}

/* ---- training --------------------------------------------------------------------------------- */

typedef struct symbol {
    char *s;
    size_t len;
    int chars;       /* code points */
    int64_t freq;    /* corpus frequency (characters only) */
} symbol;

typedef struct segment {
    int *seq;        /* symbol ids */
    int len;
    int64_t count;   /* occurrences in the corpus */
} segment;

typedef struct trainer {
    symbol *sym;     /* the characters (first-seen order), then the merges */
    int n_sym, cap_sym, n_chars;
    strmap *sym_map;
    segment *seg;    /* distinct word segments */
    int n_seg, cap_seg;
    strmap *seg_map;
    uint64_t *pair_key; /* (a << 32 | b) -> pair_freq, open addressing over pair_cap slots */
    int64_t *pair_freq;
    size_t *pair_used, n_used, pair_cap;
} trainer;

#define PAIR_EMPTY UINT64_MAX

static void trainer_free(trainer *t)
{
    for (int i = 0; i < t->n_sym; i++) free(t->sym[i].s);
    for (int i = 0; i < t->n_seg; i++) free(t->seg[i].seq);
    free(t->sym);
    free(t->seg);
    strmap_free(t->sym_map);
    strmap_free(t->seg_map);
    free(t->pair_key);
    free(t->pair_freq);
    free(t->pair_used);
}

static bool grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return true;
    int c = *cap ? 2 * *cap : 256;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* The symbol for these bytes, created when new; -1 when out of memory. */
static int trainer_symbol(trainer *t, const char *p, size_t n, int chars)
{
    int id = strmap_get(t->sym_map, p, n);
    if (id >= 0) return id;
    if (!grow((void **)&t->sym, &t->cap_sym, t->n_sym + 1, sizeof(symbol))) return -1;
    symbol *y = &t->sym[t->n_sym];
    *y = (symbol){malloc(n + 1), n, chars, 0};
    if (!y->s || !strmap_put(t->sym_map, p, n, t->n_sym)) {
        free(y->s);
        return -1;
    }
    memcpy(y->s, p, n);
    y->s[n] = 0;
    return t->n_sym++;
}

/* Counts one occurrence of a text segment, splitting a new one into character symbols. */
static bool trainer_add_segment(trainer *t, const char *p, size_t n)
{
    int id = strmap_get(t->seg_map, p, n);
    if (id >= 0) {
        t->seg[id].count++;
        return true;
    }
    if (!grow((void **)&t->seg, &t->cap_seg, t->n_seg + 1, sizeof(segment))) return false;
    segment *g = &t->seg[t->n_seg];
    *g = (segment){malloc(sizeof(int) * n), 0, 1};
    if (!g->seq || !strmap_put(t->seg_map, p, n, t->n_seg)) {
        free(g->seq);
        return false;
    }
    t->n_seg++;
    int32_t cp;
    for (size_t off = 0; off < n;) {
        int len = (int)utf8proc_iterate((const utf8proc_uint8_t *)p + off, (utf8proc_ssize_t)(n - off), &cp);
        int sym = trainer_symbol(t, p + off, (size_t)len, 1);
        if (sym < 0) return false;
        g->seq[g->len++] = sym;
        off += (size_t)len;
    }
    return true;
}

static void count_pairs(trainer *t)
{
    for (size_t k = 0; k < t->n_used; k++) t->pair_key[t->pair_used[k]] = PAIR_EMPTY;
    t->n_used = 0;
    for (int i = 0; i < t->n_seg; i++) {
        const segment *g = &t->seg[i];
        for (int j = 0; j + 1 < g->len; j++) {
            uint64_t key = (uint64_t)g->seq[j] << 32 | (uint32_t)g->seq[j + 1];
            size_t h = (size_t)(key * 0x9E3779B97F4A7C15ull) & (t->pair_cap - 1);
            while (t->pair_key[h] != PAIR_EMPTY && t->pair_key[h] != key) h = (h + 1) & (t->pair_cap - 1);
            if (t->pair_key[h] == PAIR_EMPTY) {
                t->pair_key[h] = key;
                t->pair_freq[h] = 0;
                t->pair_used[t->n_used++] = h;
            }
            t->pair_freq[h] += g->count;
        }
    }
}

/* The best pair to merge (bpe.h: frequency, then shorter, then byte-wise smaller), skipping pairs
 * whose union is a piece already or too long. Returns false when no pair is left. */
static bool best_pair(const trainer *t, int *a, int *b)
{
    int64_t best_f = 0;
    char best[4 * MAX_PIECE_CHARS], cand[4 * MAX_PIECE_CHARS];
    size_t best_len = 0;
    for (size_t k = 0; k < t->n_used; k++) {
        size_t h = t->pair_used[k];
        int64_t f = t->pair_freq[h];
        if (f < best_f) continue;
        const symbol *x = &t->sym[t->pair_key[h] >> 32], *y = &t->sym[(uint32_t)t->pair_key[h]];
        if (x->chars + y->chars > MAX_PIECE_CHARS) continue;
        size_t len = x->len + y->len;
        memcpy(cand, x->s, x->len);
        memcpy(cand + x->len, y->s, y->len);
        if (strmap_get(t->sym_map, cand, len) >= 0) continue;
        if (f > best_f || len < best_len || (len == best_len && memcmp(cand, best, len) < 0)) {
            best_f = f;
            best_len = len;
            memcpy(best, cand, len);
            *a = (int)(t->pair_key[h] >> 32);
            *b = (int)(uint32_t)t->pair_key[h];
        }
    }
    return best_f > 0;
}

static void apply_merge(trainer *t, int a, int b, int merged)
{
    for (int i = 0; i < t->n_seg; i++) {
        segment *g = &t->seg[i];
        int w = 0;
        for (int r = 0; r < g->len; r++) {
            if (r + 1 < g->len && g->seq[r] == a && g->seq[r + 1] == b) {
                g->seq[w++] = merged;
                r++;
            } else {
                g->seq[w++] = g->seq[r];
            }
        }
        g->len = w;
    }
}

/* Character symbols by descending frequency, then ascending code point (SentencePiece's Sorted).
 * Insertion sort: a corpus has at most a few thousand characters. */
static bool char_before(const symbol *x, const symbol *y)
{
    if (x->freq != y->freq) return x->freq > y->freq;
    int32_t cx, cy;
    utf8proc_iterate((const utf8proc_uint8_t *)x->s, -1, &cx);
    utf8proc_iterate((const utf8proc_uint8_t *)y->s, -1, &cy);
    return cx < cy;
}

static void sort_chars(int *ids, int n, const symbol *sym)
{
    for (int i = 1; i < n; i++) {
        int v = ids[i], j = i;
        for (; j > 0 && char_before(&sym[v], &sym[ids[j - 1]]); j--) ids[j] = ids[j - 1];
        ids[j] = v;
    }
}

lu_bpe_config lu_bpe_config_default(void)
{
    return (lu_bpe_config){.vocab_size = 256, .unk_id = 127, .bos_id = 1, .eos_id = 2, .pad_id = 126,
                           .n_user = 1, .user_symbols = {"@"}};
}

/* Checks the special ids and user symbols; fills `taken` (vocab_size flags) and user code points. */
static lu_status check_config(const lu_bpe_config *c, bool *taken, int32_t *user_cp, const char *op)
{
    const int ids[4] = {c->unk_id, c->bos_id, c->eos_id, c->pad_id};
    const char *names[4] = {"unk_id", "bos_id", "eos_id", "pad_id"};
    if (c->unk_id < 0) return lu_errorf(LU_ERR_CONFIG, "%s: unk_id is required, got %d", op, c->unk_id);
    for (int k = 0; k < 4; k++) {
        if (ids[k] < -1 || ids[k] >= c->vocab_size)
            return lu_errorf(LU_ERR_CONFIG, "%s: %s %d is outside [0, vocab_size %d)", op, names[k], ids[k], c->vocab_size);
        if (ids[k] < 0) continue;
        if (taken[ids[k]]) return lu_errorf(LU_ERR_CONFIG, "%s: %s %d is used twice", op, names[k], ids[k]);
        taken[ids[k]] = true;
    }
    if (c->n_user < 0 || c->n_user > LU_BPE_MAX_USER)
        return lu_errorf(LU_ERR_CONFIG, "%s: %d user symbols, at most %d", op, c->n_user, LU_BPE_MAX_USER);
    for (int u = 0; u < c->n_user; u++) {
        const char *p = c->user_symbols[u];
        if (!p || !*p || utf8proc_iterate((const utf8proc_uint8_t *)p, -1, &user_cp[u]) != (utf8proc_ssize_t)strlen(p) ||
            user_cp[u] == ' ')
            return lu_errorf(LU_ERR_CONFIG, "%s: user symbol %d must be one non-space character", op, u);
    }
    return LU_OK;
}

static lu_bpe *train(trainer *t, const char *const *lines, int n_lines, const lu_bpe_config *c, const char *op)
{
    int32_t user_cp[LU_BPE_MAX_USER];
    if (c->vocab_size < 1 || c->vocab_size > (1 << 24)) {
        lu_errorf(LU_ERR_CONFIG, "%s: vocab_size %d is outside [1, 2^24]", op, c->vocab_size);
        return NULL;
    }
    bool *taken = calloc((size_t)c->vocab_size, sizeof(bool));
    lu_bpe *b = NULL;
    if (!taken) goto nomem;
    if (check_config(c, taken, user_cp, op) != LU_OK) goto out;
    t->sym_map = strmap_new(256);
    t->seg_map = strmap_new(1024);
    if (!t->sym_map || !t->seg_map) goto nomem;
    size_t positions = 0;
    for (int i = 0; i < n_lines; i++) {
        seglist l;
        if (segment_text(lines[i], user_cp, c->n_user, &l, op) != LU_OK) {
            lu_error_context("line %d: ", i + 1);
            goto out;
        }
        bool ok = true;
        for (int k = 0; ok && k < l.n; k++)
            if (l.s[k].user < 0) ok = trainer_add_segment(t, l.buf + l.s[k].off, l.s[k].len);
        seglist_free(&l);
        if (!ok) goto nomem;
    }
    t->n_chars = t->n_sym;
    for (int i = 0; i < t->n_seg; i++) {
        positions += (size_t)t->seg[i].len;
        for (int j = 0; j < t->seg[i].len; j++) t->sym[t->seg[i].seq[j]].freq += t->seg[i].count;
    }
    const int n_meta = 1 + (c->bos_id >= 0) + (c->eos_id >= 0) + (c->pad_id >= 0) + c->n_user;
    const int n_merges = c->vocab_size - n_meta - t->n_chars;
    if (n_merges < 0) {
        lu_errorf(LU_ERR_CONFIG, "%s: vocab_size %d cannot hold the %d special pieces and the %d characters of the corpus",
                  op, c->vocab_size, n_meta, t->n_chars);
        goto out;
    }
    t->pair_cap = 16;
    while (t->pair_cap < 2 * positions) t->pair_cap *= 2;
    t->pair_key = malloc(sizeof(uint64_t) * t->pair_cap);
    t->pair_freq = malloc(sizeof(int64_t) * t->pair_cap);
    t->pair_used = malloc(sizeof(size_t) * (positions + 1));
    if (!t->pair_key || !t->pair_freq || !t->pair_used) goto nomem;
    memset(t->pair_key, 0xff, sizeof(uint64_t) * t->pair_cap);
    for (int m = 0; m < n_merges; m++) {
        int a = -1, z = -1;
        count_pairs(t);
        if (!best_pair(t, &a, &z)) {
            lu_errorf(LU_ERR_CONFIG, "%s: vocab_size %d is too large: the corpus allows at most %d pieces", op,
                      c->vocab_size, n_meta + t->n_sym);
            goto out;
        }
        char buf[4 * MAX_PIECE_CHARS];
        memcpy(buf, t->sym[a].s, t->sym[a].len);
        memcpy(buf + t->sym[a].len, t->sym[z].s, t->sym[z].len);
        int merged = trainer_symbol(t, buf, t->sym[a].len + t->sym[z].len, t->sym[a].chars + t->sym[z].chars);
        if (merged < 0) goto nomem;
        apply_merge(t, a, z, merged);
    }

    /* Final layout: specials, user symbols at the lowest free ids, merges, characters by frequency. */
    int *chars = malloc(sizeof(int) * (size_t)(t->n_chars + 1));
    b = bpe_new(c->vocab_size, op);
    if (!chars || !b) {
        free(chars);
        goto nomem;
    }
    for (int i = 0; i < t->n_chars; i++) chars[i] = i;
    sort_chars(chars, t->n_chars, t->sym);
    bool ok = set_piece(b, c->unk_id, "<unk>", 5, LU_BPE_UNKNOWN);
    if (c->bos_id >= 0) ok = ok && set_piece(b, c->bos_id, "<s>", 3, LU_BPE_CONTROL);
    if (c->eos_id >= 0) ok = ok && set_piece(b, c->eos_id, "</s>", 4, LU_BPE_CONTROL);
    if (c->pad_id >= 0) ok = ok && set_piece(b, c->pad_id, "<pad>", 5, LU_BPE_CONTROL);
    int next = 0, u = 0;
    for (int id = 0; ok && id < c->vocab_size; id++) {
        if (taken[id]) continue;
        if (u < c->n_user) {
            ok = set_piece(b, id, c->user_symbols[u], strlen(c->user_symbols[u]), LU_BPE_USER);
            u++;
            continue;
        }
        const symbol *y = next < n_merges ? &t->sym[t->n_chars + next] : &t->sym[chars[next - n_merges]];
        ok = set_piece(b, id, y->s, y->len, LU_BPE_NORMAL);
        next++;
    }
    free(chars);
    if (!ok) goto nomem;
    free(taken);
    return bpe_finish(b, op);
nomem:
    lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
out:
    free(taken);
    lu_bpe_free(b);
    return NULL;
}

lu_bpe *lu_bpe_train(const char *const *lines, int n_lines, const lu_bpe_config *cfg)
{
    if (!cfg || (n_lines > 0 && !lines) || n_lines < 0) {
        lu_errorf(LU_ERR_INVALID, "bpe_train: need a config and %d lines", n_lines);
        return NULL;
    }
    trainer t;
    memset(&t, 0, sizeof t);
    lu_bpe *b = train(&t, lines, n_lines, cfg, "bpe_train");
    trainer_free(&t);
    return b;
}

/* ---- using a vocabulary ---------------------------------------------------------------------- */

int lu_bpe_size(const lu_bpe *b)
{
    return b->n;
}

const char *lu_bpe_piece(const lu_bpe *b, int id)
{
    return id >= 0 && id < b->n ? b->piece[id] : NULL;
}

lu_bpe_piece_type lu_bpe_type(const lu_bpe *b, int id)
{
    return id >= 0 && id < b->n ? b->type[id] : LU_BPE_UNKNOWN;
}

int lu_bpe_find(const lu_bpe *b, const char *piece)
{
    return strmap_get(b->map, piece, strlen(piece));
}

int lu_bpe_unk_id(const lu_bpe *b) { return b->unk; }
int lu_bpe_bos_id(const lu_bpe *b) { return b->bos; }
int lu_bpe_eos_id(const lu_bpe *b) { return b->eos; }
int lu_bpe_pad_id(const lu_bpe *b) { return b->pad; }

/* Id of a text span if it is a normal piece, else -1. */
static int normal_id(const lu_bpe *b, const char *p, size_t n)
{
    int id = strmap_get(b->map, p, n);
    return id >= 0 && b->type[id] == LU_BPE_NORMAL ? id : -1;
}

/* BPE over one segment: spans start at off[i] (off[k] = end); joins the pair whose union is the
 * lowest-id normal piece, leftmost on ties, until no union is a piece. Appends the ids. */
static void encode_segment(const lu_bpe *b, const char *p, int *off, int k, int *ids, int *n)
{
    for (;;) {
        int best = -1, at = -1;
        for (int i = 0; i + 1 < k; i++) {
            int id = normal_id(b, p + off[i], (size_t)(off[i + 2] - off[i]));
            if (id >= 0 && (best < 0 || id < best)) best = id, at = i;
        }
        if (best < 0) break;
        memmove(off + at + 1, off + at + 2, sizeof(int) * (size_t)(k - at - 1));
        k--;
    }
    for (int i = 0; i < k; i++) {
        int id = normal_id(b, p + off[i], (size_t)(off[i + 1] - off[i]));
        ids[(*n)++] = id >= 0 ? id : b->unk;
    }
}

lu_status lu_bpe_encode(const lu_bpe *b, const char *text, int **ids, int *n)
{
    const char *op = "bpe_encode";
    seglist l;
    *ids = NULL;
    *n = 0;
    LU_TRY(segment_text(text, b->user_cp, b->n_user, &l, op));
    /* One id per character at most, plus one per user symbol. */
    *ids = malloc(sizeof(int) * (l.blen + (size_t)l.n + 1));
    int *off = malloc(sizeof(int) * (l.blen + 2));
    if (!*ids || !off) {
        free(*ids);
        free(off);
        *ids = NULL;
        seglist_free(&l);
        return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
    }
    for (int s = 0; s < l.n; s++) {
        if (l.s[s].user >= 0) {
            (*ids)[(*n)++] = b->user_id[l.s[s].user];
            continue;
        }
        const char *p = l.buf + l.s[s].off;
        int k = 0;
        int32_t cp;
        for (size_t q = 0; q < l.s[s].len; k++)
            off[k] = (int)q, q += (size_t)utf8proc_iterate((const utf8proc_uint8_t *)p + q, -1, &cp);
        off[k] = (int)l.s[s].len;
        encode_segment(b, p, off, k, *ids, n);
    }
    free(off);
    seglist_free(&l);
    return LU_OK;
}

char *lu_bpe_decode(const lu_bpe *b, const int *ids, int n)
{
    size_t cap = 1;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= b->n) {
            lu_errorf(LU_ERR_INVALID, "bpe_decode: id %d at position %d is outside [0, %d)", ids[i], i, b->n);
            return NULL;
        }
        cap += strlen(b->piece[ids[i]]) + sizeof UNK_SURFACE;
    }
    char *out = malloc(cap), *o = out;
    if (!out) {
        lu_errorf(LU_ERR_NOMEM, "bpe_decode: out of memory for %d ids", n);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        const char *p = b->piece[ids[i]];
        switch (b->type[ids[i]]) {
        case LU_BPE_CONTROL: break;
        case LU_BPE_UNKNOWN: o += sprintf(o, "%s", UNK_SURFACE); break;
        case LU_BPE_USER: o += sprintf(o, "%s", p); break;
        case LU_BPE_NORMAL:
            /* ▁ (3 bytes) becomes one space. */
            while (*p) {
                if (!strncmp(p, WORD_BOUNDARY, 3)) *o++ = ' ', p += 3;
                else *o++ = *p++;
            }
            break;
        }
    }
    *o = 0;
    if (out[0] == ' ') memmove(out, out + 1, strlen(out));
    return out;
}

/* ---- files ----------------------------------------------------------------------------------- */

char *lu_bpe_to_json(const lu_bpe *b)
{
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    bool ok = root && arr && cJSON_AddStringToObject(root, "format", "luthier-bpe");
    if (arr) cJSON_AddItemToObject(root, "pieces", arr);
    for (int i = 0; ok && i < b->n; i++) {
        cJSON *e = cJSON_CreateObject();
        ok = e && cJSON_AddStringToObject(e, "piece", b->piece[i]) && cJSON_AddStringToObject(e, "type", type_names[b->type[i]]);
        if (e) cJSON_AddItemToArray(arr, e);
    }
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) lu_errorf(LU_ERR_NOMEM, "bpe: out of memory writing the token set as JSON");
    return text;
}

lu_status lu_bpe_save(const lu_bpe *b, const char *path)
{
    char *text = lu_bpe_to_json(b);
    if (!text) return lu_error_context("bpe_save %s: ", path);
    FILE *f = fopen(path, "w");
    bool written = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) written = false;
    free(text);
    if (!written) return lu_errorf(LU_ERR_IO, "bpe_save: cannot write %s", path);
    return LU_OK;
}

static char *read_text_file(const char *path, const char *op)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lu_errorf(LU_ERR_IO, "%s: cannot open %s", op, path);
        return NULL;
    }
    char *text = NULL;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size + 1))) {
        if (fread(text, 1, (size_t)size, f) == (size_t)size) {
            text[size] = 0;
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(f);
    if (!text) lu_errorf(LU_ERR_IO, "%s: cannot read %s", op, path);
    return text;
}

lu_bpe *lu_bpe_load(const char *path)
{
    char *text = read_text_file(path, "bpe_load");
    if (!text) return NULL;
    lu_bpe *b = lu_bpe_from_json(text, path);
    free(text);
    return b;
}

lu_bpe *lu_bpe_from_json(const char *text, const char *path)
{
    const char *op = "bpe_load";
    cJSON *root = cJSON_Parse(text);
    lu_bpe *b = NULL;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "pieces");
    if (!root || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "luthier-bpe") || !cJSON_IsArray(arr) ||
        cJSON_GetArraySize(arr) < 1) {
        lu_errorf(LU_ERR_FORMAT, "%s: %s is not a luthier-bpe JSON file with a non-empty \"pieces\" array", op, path);
        goto out;
    }
    if (!(b = bpe_new(cJSON_GetArraySize(arr), op))) goto out;
    int id = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "piece"), *ty = cJSON_GetObjectItemCaseSensitive(e, "type");
        int t = 0;
        while (cJSON_IsString(ty) && t < 4 && strcmp(ty->valuestring, type_names[t])) t++;
        if (!cJSON_IsString(p) || !cJSON_IsString(ty) || t == 4) {
            lu_errorf(LU_ERR_FORMAT, "%s: %s: piece %d needs a string \"piece\" and a \"type\" among normal, unknown, "
                      "control, user", op, path, id);
            goto fail;
        }
        if (!set_piece(b, id, p->valuestring, strlen(p->valuestring), (lu_bpe_piece_type)t)) {
            lu_errorf(LU_ERR_NOMEM, "%s: out of memory", op);
            goto fail;
        }
        id++;
    }
    cJSON_Delete(root);
    b = bpe_finish(b, op);
    if (!b) lu_error_context("%s: ", path);
    return b;
fail:
    lu_bpe_free(b);
    b = NULL;
out:
    cJSON_Delete(root);
    return b;
}
