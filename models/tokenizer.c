/* tokenizer.c - byte-level BPE from tokenizer.json (see tokenizer.h). Reference: huggingface/tokenizers
 * (added_vocabulary.rs, normalizers/unicode.rs, pre_tokenizers/split.rs and byte_level.rs,
 * models/bpe/word.rs) and formats.md section 3. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "models/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* pre_tokenizers/byte_level.rs: ByteLevel with use_regex = true splits with the GPT-2 pattern. */
static const char gpt2_regex[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum { MAX_REGEX = 4, CACHE_CAP = 1 << 15, CACHE_MAX_WORD = 64 };
enum { TOK_ADDED = 1, TOK_SPECIAL = 2 };

typedef struct bytebuf {
    char *p;
    size_t n, cap;
} bytebuf;

typedef struct cache_entry {
    char *key; /* NULL: empty slot */
    size_t klen;
    int32_t *ids;
    int32_t n;
} cache_entry;

/* Pre-token bytes -> BPE ids; open addressing, emptied when 3/4 full. */
typedef struct word_cache {
    pthread_mutex_t mu;
    cache_entry *slots;
    size_t count;
} word_cache;

struct lu_tokenizer {
    char *name;                   /* the file, for messages */
    int32_t n_ids;                /* largest id + 1 */
    char **tokens;                /* [n_ids] token string as in the file, NULL for unused ids */
    uint8_t *flags;               /* [n_ids] TOK_ADDED | TOK_SPECIAL */
    int64_t *dec_off;             /* [n_ids + 1] each token's decoded bytes in dec */
    char *dec;
    int32_t *vocab_slots;         /* model.vocab hash: token string -> id, -1 empty */
    size_t vocab_cap;
    uint64_t *merge_keys;         /* merges hash: (left id, right id) -> (rank, merged id) */
    int32_t *merge_rank, *merge_id;
    size_t merge_cap;
    int32_t byte_id[256];         /* id of the one-byte token of each byte, -1 if absent */
    int32_t *added;               /* added token ids, longest content first */
    int n_added;
    bool added_first[256];        /* bytes that start an added token */
    bool nfc, ignore_merges;
    pcre2_code *re[MAX_REGEX];
    int n_re;
    word_cache *cache;
};

/* ---- small helpers -------------------------------------------------------------------------- */

static bool buf_put(bytebuf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return false;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33; /* splitmix64 finaliser */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100 + k in order. */
static void byte_map(int32_t cp_of_byte[256])
{
    int k = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp_of_byte[b] = printable ? b : 0x100 + k++;
    }
}

/* Classifies the UTF-8 sequence at b[0..n): returns 1 (valid, *len bytes), 0 (invalid, *len = its
 * maximal subpart, Unicode 15 section 3.9) or -1 (a valid prefix cut short by the end). */
static int utf8_seq(const uint8_t *b, size_t n, size_t *len)
{
    uint8_t c = b[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80) need = 1;
    else if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *len = 1;
        return 0;
    }
    for (size_t k = 1; k < need; k++) {
        if (k >= n) {
            *len = k;
            return -1;
        }
        uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b[k] < l || b[k] > h) {
            *len = k;
            return 0;
        }
    }
    *len = need;
    return 1;
}

/* Appends b[0..n) to out as valid UTF-8, each maximal invalid subpart becoming U+FFFD (Rust's
 * String::from_utf8_lossy, which tokenizers' decoders use). Unless `final`, stops before an
 * incomplete sequence at the end; returns the number of bytes consumed (n when final). */
static size_t utf8_lossy(const uint8_t *b, size_t n, bool final, bytebuf *out, bool *ok)
{
    static const char replacement[] = "\xEF\xBF\xBD";
    size_t i = 0;
    while (i < n) {
        size_t len;
        int r = utf8_seq(b + i, n - i, &len);
        if (r < 0 && !final) break;
        *ok = *ok && (r > 0 ? buf_put(out, b + i, len) : buf_put(out, replacement, 3));
        i += len;
    }
    return i;
}

/* ---- hash tables ---------------------------------------------------------------------------- */

static int32_t vocab_find(const lu_tokenizer *t, const char *s, size_t n)
{
    for (size_t i = hash_bytes(s, n) & (t->vocab_cap - 1);; i = (i + 1) & (t->vocab_cap - 1)) {
        int32_t id = t->vocab_slots[i];
        if (id < 0) return -1;
        if (!(t->flags[id] & TOK_ADDED) && strlen(t->tokens[id]) == n && !memcmp(t->tokens[id], s, n)) return id;
    }
}

static void vocab_insert(lu_tokenizer *t, int32_t id)
{
    size_t i = hash_bytes(t->tokens[id], strlen(t->tokens[id])) & (t->vocab_cap - 1);
    while (t->vocab_slots[i] >= 0) i = (i + 1) & (t->vocab_cap - 1);
    t->vocab_slots[i] = id;
}

static uint64_t merge_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

/* Slot of pair (a, b): its entry or the empty slot where it belongs (keys are never 0: empty). */
static size_t merge_slot(const lu_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = merge_key(a, b) + 1;
    size_t i = hash_u64(key) & (t->merge_cap - 1);
    while (t->merge_keys[i] && t->merge_keys[i] != key) i = (i + 1) & (t->merge_cap - 1);
    return i;
}

/* ---- loading -------------------------------------------------------------------------------- */

static lu_status fmt_error(const lu_tokenizer *t, const char *what)
{
    return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: %s", t->name, what);
}

static lu_status load_vocab(lu_tokenizer *t, const cJSON *vocab, const cJSON *added)
{
    if (!cJSON_IsObject(vocab)) return fmt_error(t, "model.vocab is missing or not an object");
    if (added && !cJSON_IsArray(added)) return fmt_error(t, "added_tokens is not an array");
    int64_t max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= INT32_MAX || e->valuedouble != e->valueint)
            return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: model.vocab[\"%s\"] is not an id in [0, 2^31)", t->name,
                             e->string);
        if (e->valueint > max_id) max_id = e->valueint;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= INT32_MAX ||
            id->valuedouble != id->valueint || !cJSON_IsString(content) || !content->valuestring[0])
            return fmt_error(t, "added_tokens entry without an integer \"id\" and a non-empty \"content\"");
        const char *opts[] = {"lstrip", "rstrip", "single_word"};
        for (int k = 0; k < 3; k++)
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, opts[k])))
                return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: added token \"%s\" sets %s (not supported)",
                                 t->name, content->valuestring, opts[k]);
        if (id->valueint > max_id) max_id = id->valueint;
    }
    t->n_ids = (int32_t)(max_id + 1);
    t->tokens = calloc((size_t)t->n_ids + 1, sizeof *t->tokens);
    t->flags = calloc((size_t)t->n_ids + 1, 1);
    t->vocab_cap = pow2_at_least(2 * (size_t)cJSON_GetArraySize(vocab) + 1);
    t->vocab_slots = malloc(t->vocab_cap * sizeof *t->vocab_slots);
    t->added = malloc(((size_t)cJSON_GetArraySize(added) + 1) * sizeof *t->added);
    if (!t->tokens || !t->flags || !t->vocab_slots || !t->added)
        return lu_errorf(LU_ERR_NOMEM, "tokenizer %s: out of memory for %d tokens", t->name, t->n_ids);
    memset(t->vocab_slots, 0xff, t->vocab_cap * sizeof *t->vocab_slots);
    cJSON_ArrayForEach(e, vocab) {
        if (t->tokens[e->valueint])
            return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: model.vocab gives id %d to both \"%s\" and \"%s\"", t->name,
                             e->valueint, t->tokens[e->valueint], e->string);
        if (!(t->tokens[e->valueint] = strdup(e->string))) return lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory");
        vocab_insert(t, e->valueint);
    }
    cJSON_ArrayForEach(e, added) {
        int32_t id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        const char *content = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        if (t->flags[id] & TOK_ADDED)
            return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: added_tokens lists id %d twice", t->name, id);
        if (t->tokens[id] && strcmp(t->tokens[id], content))
            return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: added token \"%s\" has id %d, which model.vocab gives to \"%s\"",
                             t->name, content, id, t->tokens[id]);
        if (!t->tokens[id] && !(t->tokens[id] = strdup(content))) return lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory");
        t->flags[id] |= TOK_ADDED | (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")) ? TOK_SPECIAL : 0);
        t->added[t->n_added++] = id;
        t->added_first[(uint8_t)content[0]] = true;
    }
    /* Longest first, so that the first added token found at a position is the longest match. */
    for (int i = 1; i < t->n_added; i++)
        for (int j = i; j > 0 && strlen(t->tokens[t->added[j]]) > strlen(t->tokens[t->added[j - 1]]); j--) {
            int32_t tmp = t->added[j];
            t->added[j] = t->added[j - 1];
            t->added[j - 1] = tmp;
        }
    return LU_OK;
}

/* Decoded bytes of every token: the inverse byte map for vocabulary tokens (a token with a character
 * outside the map keeps its own bytes, as tokenizers' ByteLevel decoder does), content for added ones. */
static lu_status build_decoded(lu_tokenizer *t)
{
    int32_t cp_of_byte[256];
    int16_t byte_of_cp[0x144];
    byte_map(cp_of_byte);
    memset(byte_of_cp, 0xff, sizeof byte_of_cp);
    for (int b = 0; b < 256; b++) byte_of_cp[cp_of_byte[b]] = (int16_t)b;
    size_t total = 0;
    for (int32_t id = 0; id < t->n_ids; id++) total += t->tokens[id] ? strlen(t->tokens[id]) : 0;
    t->dec_off = malloc(((size_t)t->n_ids + 1) * sizeof *t->dec_off);
    t->dec = malloc(total + 1);
    if (!t->dec_off || !t->dec) return lu_errorf(LU_ERR_NOMEM, "tokenizer %s: out of memory", t->name);
    int64_t at = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        t->dec_off[id] = at;
        const char *s = t->tokens[id];
        if (!s) continue;
        size_t n = strlen(s), i = 0;
        int64_t start = at;
        bool mapped = !(t->flags[id] & TOK_ADDED);
        while (mapped && i < n) {
            utf8proc_int32_t cp;
            utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
            mapped = k > 0 && cp < 0x144 && byte_of_cp[cp] >= 0;
            if (mapped) t->dec[at++] = (char)byte_of_cp[cp];
            i += k > 0 ? (size_t)k : 1;
        }
        if (!mapped) {
            at = start;
            memcpy(t->dec + at, s, n);
            at += (int64_t)n;
        }
    }
    t->dec_off[t->n_ids] = at;
    /* The one-byte token of each byte is what BPE starts from. */
    for (int b = 0; b < 256; b++) {
        char s[3];
        size_t n = (size_t)utf8proc_encode_char(cp_of_byte[b], (utf8proc_uint8_t *)s);
        t->byte_id[b] = vocab_find(t, s, n);
    }
    return LU_OK;
}

static lu_status load_merges(lu_tokenizer *t, const cJSON *merges)
{
    if (!cJSON_IsArray(merges)) return fmt_error(t, "model.merges is missing or not an array");
    int n = cJSON_GetArraySize(merges);
    t->merge_cap = pow2_at_least(2 * (size_t)n + 1);
    t->merge_keys = calloc(t->merge_cap, sizeof *t->merge_keys);
    t->merge_rank = malloc(t->merge_cap * sizeof *t->merge_rank);
    t->merge_id = malloc(t->merge_cap * sizeof *t->merge_id);
    if (!t->merge_keys || !t->merge_rank || !t->merge_id)
        return lu_errorf(LU_ERR_NOMEM, "tokenizer %s: out of memory for %d merges", t->name, n);
    int rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        /* Two formats: "a b" (split at the one space) and ["a", "b"]. */
        char left[1024], right[1024];
        bool ok = false;
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            size_t ln = sp ? (size_t)(sp - m->valuestring) : 0;
            ok = sp && !strchr(sp + 1, ' ') && ln < sizeof left && strlen(sp + 1) < sizeof right;
            if (ok) {
                memcpy(left, m->valuestring, ln);
                left[ln] = '\0';
                strcpy(right, sp + 1);
            }
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
            const cJSON *a = cJSON_GetArrayItem(m, 0), *b = cJSON_GetArrayItem(m, 1);
            ok = cJSON_IsString(a) && cJSON_IsString(b) && strlen(a->valuestring) < sizeof left &&
                 strlen(b->valuestring) < sizeof right;
            if (ok) {
                strcpy(left, a->valuestring);
                strcpy(right, b->valuestring);
            }
        }
        if (!ok)
            return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", t->name,
                             rank);
        char joined[2048];
        snprintf(joined, sizeof joined, "%s%s", left, right);
        int32_t a = vocab_find(t, left, strlen(left)), b = vocab_find(t, right, strlen(right));
        int32_t ab = vocab_find(t, joined, strlen(joined));
        const char *missing = a < 0 ? left : b < 0 ? right : ab < 0 ? joined : NULL;
        if (missing)
            return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: model.merges[%d]: token \"%s\" is not in model.vocab",
                             t->name, rank, missing);
        /* A repeated pair keeps its last rank, as tokenizers' HashMap does. */
        size_t slot = merge_slot(t, a, b);
        t->merge_keys[slot] = merge_key(a, b) + 1;
        t->merge_rank[slot] = rank++;
        t->merge_id[slot] = ab;
    }
    return LU_OK;
}

static lu_status add_regex(lu_tokenizer *t, const char *pattern, bool literal)
{
    if (t->n_re == MAX_REGEX)
        return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: more than %d Split pre-tokenizers", t->name, MAX_REGEX);
    int err;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &err, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return lu_errorf(LU_ERR_FORMAT, "tokenizer %s: pre_tokenizer regex does not compile at offset %zu: %s",
                         t->name, (size_t)at, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* without JIT the interpreter gives the same matches */
    t->re[t->n_re++] = re;
    return LU_OK;
}

static lu_status load_pre_tokenizer(lu_tokenizer *t, const cJSON *p)
{
    if (!p || cJSON_IsNull(p)) return LU_OK;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e, *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return fmt_error(t, "pre_tokenizer Sequence without a \"pretokenizers\" array");
        cJSON_ArrayForEach(e, list) LU_TRY(load_pre_tokenizer(t, e));
        return LU_OK;
    }
    if (!strcmp(ty, "ByteLevel")) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space")))
            return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: pre_tokenizer ByteLevel add_prefix_space=true", t->name);
        const cJSON *use = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
        return use && cJSON_IsFalse(use) ? LU_OK : add_regex(t, gpt2_regex, false);
    }
    if (!strcmp(ty, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex"), *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        if (!cJSON_IsString(rx) && !cJSON_IsString(lit))
            return fmt_error(t, "pre_tokenizer Split without pattern.Regex or pattern.String");
        if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") ||
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "invert")))
            return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: pre_tokenizer Split supports behavior \"Isolated\" "
                             "without invert only", t->name);
        return cJSON_IsString(rx) ? add_regex(t, rx->valuestring, false) : add_regex(t, lit->valuestring, true);
    }
    return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: pre_tokenizer type \"%s\" is not supported", t->name, ty);
}

static lu_status load_normalizer(lu_tokenizer *t, const cJSON *n)
{
    if (!n || cJSON_IsNull(n)) return LU_OK;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(n, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    if (!strcmp(ty, "NFC")) {
        t->nfc = true;
        return LU_OK;
    }
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e, *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) return fmt_error(t, "normalizer Sequence without a \"normalizers\" array");
        cJSON_ArrayForEach(e, list) LU_TRY(load_normalizer(t, e));
        return LU_OK;
    }
    return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: normalizer type \"%s\" is not supported (NFC only)", t->name, ty);
}

static lu_status load_model(lu_tokenizer *t, const cJSON *root)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return fmt_error(t, "\"model\" is missing or not an object");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !(cJSON_IsString(type) && !strcmp(type->valuestring, "BPE")))
        return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: model.type must be \"BPE\"", t->name);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
        return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: model.byte_fallback=true is not supported", t->name);
    const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(model, affixes[k]);
        if (cJSON_IsString(a) && a->valuestring[0])
            return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: model.%s is not supported", t->name, affixes[k]);
    }
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    LU_TRY(load_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                      cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
    LU_TRY(build_decoded(t));
    LU_TRY(load_merges(t, cJSON_GetObjectItemCaseSensitive(model, "merges")));
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const cJSON *dty = cJSON_GetObjectItemCaseSensitive(dec, "type");
    if (dec && !cJSON_IsNull(dec) && !(cJSON_IsString(dty) && !strcmp(dty->valuestring, "ByteLevel")))
        return lu_errorf(LU_ERR_UNSUPPORTED, "tokenizer %s: decoder must be ByteLevel", t->name);
    LU_TRY(load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer")));
    return load_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
}

static lu_tokenizer *tokenizer_new(const char *name)
{
    lu_tokenizer *t = calloc(1, sizeof *t);
    word_cache *c = calloc(1, sizeof *c);
    cache_entry *slots = calloc(CACHE_CAP, sizeof *slots);
    char *nm = strdup(name ? name : "(memory)");
    if (!t || !c || !slots || !nm) {
        free(t), free(c), free(slots), free(nm);
        lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->slots = slots;
    t->cache = c;
    t->name = nm;
    return t;
}

lu_tokenizer *lu_tokenizer_parse(const char *json, size_t len, const char *name)
{
    lu_tokenizer *t = tokenizer_new(name);
    if (!t) return NULL;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        lu_errorf(LU_ERR_FORMAT, "tokenizer %s: not a JSON object (parse error at byte %lld)", t->name,
                  at && at >= json && at <= json + len ? (long long)(at - json) : -1LL);
        cJSON_Delete(root);
        lu_tokenizer_free(t);
        return NULL;
    }
    lu_status s = load_model(t, root);
    cJSON_Delete(root);
    if (s != LU_OK) {
        lu_tokenizer_free(t);
        return NULL;
    }
    return t;
}

/* The tokenizer.json tree that parts describe (see tokenizer.h), with every field Hugging Face
 * tokenizers expects when it reads the file; NULL when out of memory. */
static cJSON *parts_json(const lu_tokenizer_parts *p)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON *norm = p->nfc ? cJSON_AddObjectToObject(root, "normalizer") : cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON *seq = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON_AddNullToObject(root, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    /* cJSON's Add functions return NULL for a NULL parent: one check covers each chain. */
    bool ok = added && norm && seq && dec && model && (!p->nfc || cJSON_AddStringToObject(norm, "type", "NFC")) &&
              cJSON_AddStringToObject(pre, "type", "Sequence") && cJSON_AddStringToObject(dec, "type", "ByteLevel") &&
              cJSON_AddBoolToObject(dec, "add_prefix_space", true) && cJSON_AddBoolToObject(dec, "trim_offsets", true) &&
              cJSON_AddBoolToObject(dec, "use_regex", true) && cJSON_AddStringToObject(model, "type", "BPE") &&
              cJSON_AddNullToObject(model, "dropout") && cJSON_AddNullToObject(model, "unk_token") &&
              cJSON_AddNullToObject(model, "continuing_subword_prefix") && cJSON_AddNullToObject(model, "end_of_word_suffix") &&
              cJSON_AddBoolToObject(model, "fuse_unk", false) && cJSON_AddBoolToObject(model, "byte_fallback", false) &&
              cJSON_AddBoolToObject(model, "ignore_merges", false);
    cJSON *vocab = ok ? cJSON_AddObjectToObject(model, "vocab") : NULL, *merges = ok ? cJSON_AddArrayToObject(model, "merges") : NULL;
    ok = vocab && merges;
    for (int32_t i = 0; ok && i < p->n_tokens; i++) {
        ok = cJSON_AddNumberToObject(vocab, p->tokens[i], i) != NULL;
        if (ok && p->kind && p->kind[i] != LU_TOKEN_NORMAL) {
            cJSON *a = cJSON_CreateObject();
            ok = a && cJSON_AddItemToArray(added, a) && cJSON_AddNumberToObject(a, "id", i) &&
                 cJSON_AddStringToObject(a, "content", p->tokens[i]) && cJSON_AddBoolToObject(a, "single_word", false) &&
                 cJSON_AddBoolToObject(a, "lstrip", false) && cJSON_AddBoolToObject(a, "rstrip", false) &&
                 cJSON_AddBoolToObject(a, "normalized", false) &&
                 cJSON_AddBoolToObject(a, "special", p->kind[i] == LU_TOKEN_SPECIAL);
        }
    }
    for (int64_t i = 0; ok && i < p->n_merges; i++) {
        cJSON *m = cJSON_CreateString(p->merges[i]);
        ok = m && cJSON_AddItemToArray(merges, m);
    }
    for (int i = 0; ok && i <= p->n_regex; i++) {
        cJSON *s = cJSON_CreateObject();
        ok = s && cJSON_AddItemToArray(seq, s);
        if (ok && i < p->n_regex)
            ok = cJSON_AddStringToObject(s, "type", "Split") &&
                 cJSON_AddStringToObject(cJSON_AddObjectToObject(s, "pattern"), "Regex", p->regex[i]) &&
                 cJSON_AddStringToObject(s, "behavior", "Isolated") && cJSON_AddBoolToObject(s, "invert", false);
        else if (ok)
            ok = cJSON_AddStringToObject(s, "type", "ByteLevel") && cJSON_AddBoolToObject(s, "add_prefix_space", false) &&
                 cJSON_AddBoolToObject(s, "trim_offsets", true) && cJSON_AddBoolToObject(s, "use_regex", p->gpt2_regex);
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static lu_status check_parts(const lu_tokenizer_parts *p)
{
    for (int32_t i = 0; i < p->n_tokens; i++)
        if (!p->tokens[i]) return lu_errorf(LU_ERR_INVALID, "tokenizer %s: token %d is NULL", p->name ? p->name : "(parts)", i);
    for (int64_t i = 0; i < p->n_merges; i++)
        if (!p->merges[i])
            return lu_errorf(LU_ERR_INVALID, "tokenizer %s: merge %lld is NULL", p->name ? p->name : "(parts)", (long long)i);
    return LU_OK;
}

char *lu_tokenizer_parts_json(const lu_tokenizer_parts *p)
{
    if (check_parts(p)) return NULL;
    cJSON *root = parts_json(p);
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) lu_errorf(LU_ERR_NOMEM, "tokenizer %s: out of memory", p->name ? p->name : "(parts)");
    return text;
}

lu_tokenizer *lu_tokenizer_from_parts(const lu_tokenizer_parts *p)
{
    if (check_parts(p)) return NULL;
    lu_tokenizer *t = tokenizer_new(p->name);
    if (!t) return NULL;
    cJSON *root = parts_json(p);
    lu_status s = root ? load_model(t, root) : lu_errorf(LU_ERR_NOMEM, "tokenizer %s: out of memory", t->name);
    cJSON_Delete(root);
    if (s != LU_OK) {
        lu_tokenizer_free(t);
        return NULL;
    }
    return t;
}

lu_tokenizer *lu_tokenizer_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lu_errorf(LU_ERR_IO, "tokenizer: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    bytebuf b = {0};
    char chunk[1 << 16];
    size_t k;
    bool ok = true;
    while (ok && (k = fread(chunk, 1, sizeof chunk, f)) > 0) ok = buf_put(&b, chunk, k);
    bool err = ferror(f);
    fclose(f);
    lu_tokenizer *t = NULL;
    if (!ok) lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory reading %s", path);
    else if (err) lu_errorf(LU_ERR_IO, "tokenizer: cannot read %s", path);
    else t = lu_tokenizer_parse(b.p ? b.p : "", b.n, path);
    free(b.p);
    return t;
}

void lu_tokenizer_free(lu_tokenizer *t)
{
    if (!t) return;
    for (int32_t i = 0; t->tokens && i < t->n_ids; i++) free(t->tokens[i]);
    free(t->tokens), free(t->flags), free(t->dec_off), free(t->dec), free(t->vocab_slots), free(t->added);
    free(t->merge_keys), free(t->merge_rank), free(t->merge_id);
    for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
    if (t->cache) {
        for (size_t i = 0; i < CACHE_CAP; i++) free(t->cache->slots[i].key), free(t->cache->slots[i].ids);
        pthread_mutex_destroy(&t->cache->mu);
        free(t->cache->slots);
        free(t->cache);
    }
    free(t->name);
    free(t);
}

/* ---- BPE ------------------------------------------------------------------------------------ */

typedef struct idvec {
    int32_t *ids;
    int64_t *starts;
    int64_t n, cap;
    bool ok;
} idvec;

static void idvec_push(idvec *v, int32_t id, int64_t start)
{
    if (!v->ok) return;
    if (v->n == v->cap) {
        int64_t cap = v->cap ? 2 * v->cap : 64;
        int32_t *ids = realloc(v->ids, (size_t)cap * sizeof *ids);
        int64_t *st = ids ? realloc(v->starts, (size_t)cap * sizeof *st) : NULL;
        if (ids) v->ids = ids;
        if (st) v->starts = st;
        if (!ids || !st) {
            v->ok = false;
            return;
        }
        v->cap = cap;
    }
    v->ids[v->n] = id;
    v->starts[v->n++] = start;
}

typedef struct merge_cand {
    int32_t rank, pos, left, right;
} merge_cand;

static bool cand_less(merge_cand a, merge_cand b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(merge_cand *h, int *n, merge_cand c)
{
    int i = (*n)++;
    for (; i > 0 && cand_less(c, h[(i - 1) / 2]); i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
    h[i] = c;
}

static merge_cand heap_pop(merge_cand *h, int *n)
{
    merge_cand top = h[0], last = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(h[c + 1], h[c])) c++;
        if (!cand_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

static void consider_pair(const lu_tokenizer *t, const int32_t *sym, int pos, int next, merge_cand *h, int *nh)
{
    if (next < 0) return;
    size_t slot = merge_slot(t, sym[pos], sym[next]);
    if (t->merge_keys[slot]) heap_push(h, nh, (merge_cand){t->merge_rank[slot], pos, sym[pos], sym[next]});
}

/* BPE of one pre-token (models/bpe/word.rs merge_all): the pair of lowest rank, leftmost on ties, is
 * merged until none is ranked; a heap of candidates and a linked list keep it O(n log n). Bytes whose
 * one-byte token is absent are dropped, as tokenizers does without an unk token. Appends to out. */
static bool bpe_word(const lu_tokenizer *t, const uint8_t *w, int n, int32_t **out, int32_t *n_out)
{
    int32_t *sym = malloc((size_t)n * sizeof *sym);
    int *next = malloc((size_t)n * sizeof *next), *prev = malloc((size_t)n * sizeof *prev);
    /* At most n - 1 initial candidates plus two per merge (n - 1 merges). */
    merge_cand *heap = malloc(((size_t)n * 3 + 1) * sizeof *heap);
    bool ok = sym && next && prev && heap;
    int m = 0, nh = 0;
    for (int i = 0; ok && i < n; i++)
        if (t->byte_id[w[i]] >= 0) sym[m++] = t->byte_id[w[i]];
    if (ok && t->ignore_merges && m > 1) {
        /* tokenizers' ignore_merges (Llama-3): a pre-token that is itself in the vocabulary is one token. */
        int32_t cp_of_byte[256];
        byte_map(cp_of_byte);
        bytebuf s = {0};
        for (int i = 0; ok && i < n; i++) {
            utf8proc_uint8_t enc[4];
            ok = buf_put(&s, enc, (size_t)utf8proc_encode_char(cp_of_byte[w[i]], enc));
        }
        int32_t id = ok ? vocab_find(t, s.p, s.n) : -1;
        free(s.p);
        if (id >= 0) {
            sym[0] = id;
            m = 1;
        }
    }
    for (int i = 0; ok && i < m; i++) {
        next[i] = i + 1 < m ? i + 1 : -1;
        prev[i] = i - 1;
    }
    for (int i = 0; ok && i + 1 < m; i++) consider_pair(t, sym, i, i + 1, heap, &nh);
    while (ok && nh > 0) {
        merge_cand c = heap_pop(heap, &nh);
        int r = next[c.pos];
        /* Stale when either symbol has changed since: a merged symbol is a longer token, never equal. */
        if (sym[c.pos] != c.left || r < 0 || sym[r] != c.right) continue;
        sym[c.pos] = t->merge_id[merge_slot(t, c.left, c.right)];
        next[c.pos] = next[r];
        if (next[r] >= 0) prev[next[r]] = c.pos;
        sym[r] = -1;
        if (prev[c.pos] >= 0) consider_pair(t, sym, prev[c.pos], c.pos, heap, &nh);
        consider_pair(t, sym, c.pos, next[c.pos], heap, &nh);
    }
    int k = 0;
    for (int i = 0; ok && m > 0 && i >= 0; i = next[i]) sym[k++] = sym[i];
    free(next), free(prev), free(heap);
    if (!ok) {
        free(sym);
        return false;
    }
    *out = sym;
    *n_out = k;
    return true;
}

/* bpe_word through the cache; appends the ids, with starts, to v. */
static void encode_word(const lu_tokenizer *t, const uint8_t *w, int n, const int64_t *map, int64_t at, idvec *v)
{
    word_cache *c = t->cache;
    size_t slot = hash_bytes(w, (size_t)n) & (CACHE_CAP - 1);
    bool cacheable = n <= CACHE_MAX_WORD;
    int32_t *ids = NULL, n_ids = 0;
    bool hit = false;
    if (cacheable) {
        pthread_mutex_lock(&c->mu);
        for (; c->slots[slot].key; slot = (slot + 1) & (CACHE_CAP - 1))
            if (c->slots[slot].klen == (size_t)n && !memcmp(c->slots[slot].key, w, (size_t)n)) break;
        if (c->slots[slot].key && (ids = malloc((size_t)c->slots[slot].n * sizeof *ids + 1))) {
            n_ids = c->slots[slot].n;
            memcpy(ids, c->slots[slot].ids, (size_t)n_ids * sizeof *ids);
            hit = true;
        }
        pthread_mutex_unlock(&c->mu);
    }
    if (!hit && !bpe_word(t, w, n, &ids, &n_ids)) {
        v->ok = false;
        return;
    }
    int64_t off = at;
    for (int32_t i = 0; i < n_ids; i++) {
        idvec_push(v, ids[i], map[off]);
        off += t->dec_off[ids[i] + 1] - t->dec_off[ids[i]];
        if (off > at + n) off = at + n;
    }
    if (cacheable && !hit) {
        pthread_mutex_lock(&c->mu);
        if (c->count >= CACHE_CAP * 3 / 4) {
            for (size_t i = 0; i < CACHE_CAP; i++) free(c->slots[i].key), free(c->slots[i].ids);
            memset(c->slots, 0, CACHE_CAP * sizeof *c->slots);
            c->count = 0;
        }
        slot = hash_bytes(w, (size_t)n) & (CACHE_CAP - 1);
        for (; c->slots[slot].key; slot = (slot + 1) & (CACHE_CAP - 1))
            if (c->slots[slot].klen == (size_t)n && !memcmp(c->slots[slot].key, w, (size_t)n)) break;
        char *key = c->slots[slot].key ? NULL : malloc((size_t)n + 1);
        int32_t *copy = key ? malloc((size_t)n_ids * sizeof *copy + 1) : NULL;
        if (copy) {
            memcpy(key, w, (size_t)n);
            memcpy(copy, ids, (size_t)n_ids * sizeof *copy);
            c->slots[slot] = (cache_entry){key, (size_t)n, copy, n_ids};
            c->count++;
        } else {
            free(key);
        }
        pthread_mutex_unlock(&c->mu);
    }
    free(ids);
}

/* ---- encoding ------------------------------------------------------------------------------- */

/* NFC of s[0..n) into out, with map[i] = offset in the original text of output byte i. NFC never acts
 * across the start of an ASCII character (no ASCII character is a second element of a canonical
 * composition, and ASCII characters have combining class 0), so the text is normalised in pieces of
 * one ASCII character followed by its non-ASCII run; map is exact in every piece NFC leaves alone. */
static bool normalize(const lu_tokenizer *t, const uint8_t *s, size_t n, int64_t base, bytebuf *out, int64_t **map)
{
    size_t cap = n + 1;
    int64_t *m = malloc(cap * sizeof *m);
    bool ok = m != NULL;
    size_t i = 0;
    while (ok && i < n) {
        size_t j = i + 1;
        while (t->nfc && j < n && s[j] >= 0x80) j++;
        utf8proc_uint8_t *d = NULL;
        utf8proc_ssize_t dn = j - i > 1 ? utf8proc_map(s + i, (utf8proc_ssize_t)(j - i), &d,
                                                       UTF8PROC_STABLE | UTF8PROC_COMPOSE) : 0;
        bool same = !d || ((size_t)dn == j - i && !memcmp(d, s + i, j - i));
        const uint8_t *src = same ? s + i : d;
        size_t len = same ? j - i : (size_t)dn;
        if (out->n + len + 1 > cap) {
            while (out->n + len + 1 > cap) cap *= 2;
            int64_t *bigger = realloc(m, cap * sizeof *m);
            if (bigger) m = bigger;
            ok = bigger != NULL;
        }
        for (size_t k = 0; ok && k < len; k++) m[out->n + k] = base + (int64_t)(same ? i + k : i);
        ok = ok && buf_put(out, src, len);
        free(d);
        i = j;
    }
    if (ok) m[out->n] = base + (int64_t)n;
    *map = m;
    return ok;
}

/* Splits s[a..b) with regexes k.. (tokenizers' Split, behaviour Isolated: matches and the gaps between
 * them are pre-tokens) and BPE-encodes each pre-token. */
static lu_status split_encode(const lu_tokenizer *t, const uint8_t *s, size_t a, size_t b, int k, const int64_t *map,
                              pcre2_match_data *md, idvec *v)
{
    if (a == b) return LU_OK;
    if (k == t->n_re) {
        encode_word(t, s + a, (int)(b - a), map, (int64_t)a, v);
        return v->ok ? LU_OK : lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory");
    }
    size_t pos = 0, last = 0, n = b - a;
    while (pos < n) {
        int rc = pcre2_match(t->re[k], s + a, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return lu_errorf(LU_ERR_INVALID, "tokenizer %s: regex match failed (PCRE2 error %d)", t->name, rc);
        /* Copied out: the next regexes' matches below reuse md. */
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t m0 = ov[0], m1 = ov[1];
        if (m1 == m0) { /* an empty match splits nothing: step over one character */
            size_t len;
            utf8_seq(s + a + m0, n - m0, &len);
            pos = m0 + len;
            continue;
        }
        LU_TRY(split_encode(t, s, a + last, a + m0, k + 1, map, md, v));
        LU_TRY(split_encode(t, s, a + m0, a + m1, k + 1, map, md, v));
        last = pos = m1;
    }
    return split_encode(t, s, a + last, b, k + 1, map, md, v);
}

static lu_status encode_chunk(const lu_tokenizer *t, const uint8_t *s, size_t n, int64_t base, pcre2_match_data *md,
                              idvec *v)
{
    if (n == 0) return LU_OK;
    bytebuf norm = {0};
    int64_t *map = NULL;
    lu_status st = normalize(t, s, n, base, &norm, &map)
                       ? split_encode(t, (const uint8_t *)norm.p, 0, norm.n, 0, map, md, v)
                       : lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory normalising %zu bytes", n);
    free(norm.p);
    free(map);
    return st;
}

static lu_status encode(const lu_tokenizer *t, const char *text, size_t len, idvec *v)
{
    const uint8_t *s = (const uint8_t *)text;
    for (size_t i = 0, k; i < len; i += k)
        if (utf8_seq(s + i, len - i, &k) <= 0)
            return lu_errorf(LU_ERR_INVALID, "tokenizer encode: text is not valid UTF-8 at byte %zu", i);
    pcre2_match_data *md = t->n_re ? pcre2_match_data_create(4, NULL) : NULL;
    if (t->n_re && !md) return lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory");
    lu_status st = LU_OK;
    size_t chunk = 0, pos = 0;
    /* tokenizers' AddedVocabulary: leftmost-longest match of every added token in the raw text. */
    while (st == LU_OK && pos < len) {
        int32_t hit = -1;
        for (int a = 0; t->added_first[s[pos]] && a < t->n_added && hit < 0; a++) {
            const char *c = t->tokens[t->added[a]];
            size_t cl = strlen(c);
            if (cl <= len - pos && !memcmp(s + pos, c, cl)) hit = t->added[a];
        }
        if (hit < 0) {
            pos++;
            continue;
        }
        st = encode_chunk(t, s + chunk, pos - chunk, (int64_t)chunk, md, v);
        idvec_push(v, hit, (int64_t)pos);
        pos += strlen(t->tokens[hit]);
        chunk = pos;
    }
    if (st == LU_OK) st = encode_chunk(t, s + chunk, len - chunk, (int64_t)chunk, md, v);
    if (st == LU_OK && !v->ok) st = lu_errorf(LU_ERR_NOMEM, "tokenizer: out of memory");
    pcre2_match_data_free(md);
    return st;
}

lu_status lu_tokenizer_encode_offsets(const lu_tokenizer *t, const char *text, size_t len, int32_t **ids,
                                      int64_t **starts, int64_t *n)
{
    *ids = NULL;
    if (starts) *starts = NULL;
    *n = 0;
    if (!t || (!text && len)) return lu_errorf(LU_ERR_INVALID, "tokenizer encode: NULL tokenizer or text");
    idvec v = {.ok = true};
    lu_status st = encode(t, text, len, &v);
    if (st != LU_OK) {
        free(v.ids), free(v.starts);
        return st;
    }
    *ids = v.ids;
    if (starts) *starts = v.starts;
    else free(v.starts);
    *n = v.n;
    return LU_OK;
}

lu_status lu_tokenizer_encode(const lu_tokenizer *t, const char *text, size_t len, int32_t **ids, int64_t *n)
{
    return lu_tokenizer_encode_offsets(t, text, len, ids, NULL, n);
}

/* ---- decoding and lookups ------------------------------------------------------------------- */

static bool valid_id(const lu_tokenizer *t, int32_t id) { return id >= 0 && id < t->n_ids && t->tokens[id]; }

static lu_status bad_id(const lu_tokenizer *t, int32_t id)
{
    return lu_errorf(LU_ERR_INVALID, "tokenizer decode: id %d is not a token of %s (vocabulary size %d)", id, t->name,
                     t->n_ids);
}

char *lu_tokenizer_decode(const lu_tokenizer *t, const int32_t *ids, int64_t n, bool skip_special)
{
    bytebuf raw = {0}, out = {0};
    bool ok = buf_put(&out, "", 0);
    for (int64_t i = 0; ok && i < n; i++) {
        if (!valid_id(t, ids[i])) {
            bad_id(t, ids[i]);
            free(raw.p), free(out.p);
            return NULL;
        }
        if (skip_special && (t->flags[ids[i]] & TOK_SPECIAL)) continue;
        ok = buf_put(&raw, t->dec + t->dec_off[ids[i]], (size_t)(t->dec_off[ids[i] + 1] - t->dec_off[ids[i]]));
    }
    if (ok) utf8_lossy((const uint8_t *)raw.p, raw.n, true, &out, &ok);
    free(raw.p);
    if (!ok) {
        free(out.p);
        lu_errorf(LU_ERR_NOMEM, "tokenizer decode: out of memory");
        return NULL;
    }
    return out.p;
}

int32_t lu_tokenizer_token_id(const lu_tokenizer *t, const char *token)
{
    for (int a = 0; a < t->n_added; a++)
        if (!strcmp(t->tokens[t->added[a]], token)) return t->added[a];
    return vocab_find(t, token, strlen(token));
}

const char *lu_tokenizer_id_token(const lu_tokenizer *t, int32_t id) { return valid_id(t, id) ? t->tokens[id] : NULL; }

bool lu_tokenizer_is_special(const lu_tokenizer *t, int32_t id) { return valid_id(t, id) && (t->flags[id] & TOK_SPECIAL); }

int64_t lu_tokenizer_vocab_size(const lu_tokenizer *t) { return t->n_ids; }

/* ---- streaming decode ----------------------------------------------------------------------- */

struct lu_tokenizer_stream {
    const lu_tokenizer *t;
    bool skip_special;
    bytebuf pending; /* the first bytes of a character not yet complete */
    bytebuf out;
};

lu_tokenizer_stream *lu_tokenizer_stream_new(const lu_tokenizer *t, bool skip_special)
{
    lu_tokenizer_stream *s = calloc(1, sizeof *s);
    if (!s) {
        lu_errorf(LU_ERR_NOMEM, "tokenizer stream: out of memory");
        return NULL;
    }
    s->t = t;
    s->skip_special = skip_special;
    return s;
}

static const char *stream_emit(lu_tokenizer_stream *s, bool final)
{
    bool ok = true;
    s->out.n = 0;
    ok = buf_put(&s->out, "", 0);
    size_t used = ok ? utf8_lossy((const uint8_t *)s->pending.p, s->pending.n, final, &s->out, &ok) : 0;
    if (!ok) {
        lu_errorf(LU_ERR_NOMEM, "tokenizer stream: out of memory");
        return NULL;
    }
    if (used) {
        memmove(s->pending.p, s->pending.p + used, s->pending.n - used);
        s->pending.n -= used;
    }
    return s->out.p;
}

const char *lu_tokenizer_stream_push(lu_tokenizer_stream *s, int32_t id)
{
    const lu_tokenizer *t = s->t;
    if (!valid_id(t, id)) {
        bad_id(t, id);
        return NULL;
    }
    bool skip = s->skip_special && (t->flags[id] & TOK_SPECIAL);
    if (!skip && !buf_put(&s->pending, t->dec + t->dec_off[id], (size_t)(t->dec_off[id + 1] - t->dec_off[id]))) {
        lu_errorf(LU_ERR_NOMEM, "tokenizer stream: out of memory");
        return NULL;
    }
    return stream_emit(s, false);
}

const char *lu_tokenizer_stream_flush(lu_tokenizer_stream *s) { return stream_emit(s, true); }

void lu_tokenizer_stream_free(lu_tokenizer_stream *s)
{
    if (!s) return;
    free(s->pending.p);
    free(s->out.p);
    free(s);
}
