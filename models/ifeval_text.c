/* ifeval_text.c - the Python text semantics that the IFEval reference relies on (str methods,
 * re, json.loads), for the checkers of ifeval.c and the tokenizers of ifeval_words.c and
 * ifeval_punkt.c. Python's re is PCRE2 here; ifeval.h lists how the two differ. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "models/ifeval_internal.h"

/* ---- Python str semantics ---- */

int32_t ifeval_decode(const char *s, size_t n, size_t i, size_t *k)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    if (r <= 0) {
        *k = 1;
        return 0xFFFD;
    }
    *k = (size_t)r;
    return c;
}

/* Start of the code point that ends at byte e. */
static size_t prev_start(const char *s, size_t e)
{
    size_t i = e - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

/* str.isspace() */
bool ifeval_py_space(int32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Code points that Python counts as lower or upper case beyond categories Ll and Lu (the Unicode
 * Other_Lowercase and Other_Uppercase properties, from Python 3.11's str.islower/isupper). */
static const int32_t other_lower[][2] = {
    {0xAA, 0xAA},       {0xBA, 0xBA},       {0x2B0, 0x2B8},     {0x2C0, 0x2C1},     {0x2E0, 0x2E4},
    {0x345, 0x345},     {0x37A, 0x37A},     {0x1D2C, 0x1D6A},   {0x1D78, 0x1D78},   {0x1D9B, 0x1DBF},
    {0x2071, 0x2071},   {0x207F, 0x207F},   {0x2090, 0x209C},   {0x2170, 0x217F},   {0x24D0, 0x24E9},
    {0x2C7C, 0x2C7D},   {0xA69C, 0xA69D},   {0xA770, 0xA770},   {0xA7F8, 0xA7F9},   {0xAB5C, 0xAB5F},
    {0x10780, 0x10780}, {0x10783, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA}};
static const int32_t other_upper[][2] = {
    {0x2160, 0x216F}, {0x24B6, 0x24CF}, {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189}};

static bool in_ranges(int32_t c, const int32_t (*r)[2], size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (c >= r[i][0] && c <= r[i][1]) return true;
    return false;
}

bool ifeval_py_upper_cp(int32_t c)
{
    return utf8proc_category(c) == UTF8PROC_CATEGORY_LU || in_ranges(c, other_upper, COUNT(other_upper));
}

bool ifeval_py_lower_cp(int32_t c)
{
    return utf8proc_category(c) == UTF8PROC_CATEGORY_LL || in_ranges(c, other_lower, COUNT(other_lower));
}

/* str.isupper() (upper = true) or str.islower(): no character of the other case or title case,
 * and at least one of this case. */
bool ifeval_py_is_case(const char *s, size_t n, bool upper)
{
    bool cased = false;
    for (size_t i = 0, k; i < n; i += k) {
        int32_t c = ifeval_decode(s, n, i, &k);
        bool u = ifeval_py_upper_cp(c), l = ifeval_py_lower_cp(c);
        if ((upper ? l : u) || utf8proc_category(c) == UTF8PROC_CATEGORY_LT) return false;
        cased |= upper ? u : l;
    }
    return cased;
}

/* Python's \w: letters, numbers (str.isalnum) and '_'. */
bool ifeval_py_word(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);
    return c == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

/* str.strip(): [*b, *e) without whitespace at either end. */
void ifeval_py_strip(const char *s, size_t n, size_t *b, size_t *e)
{
    size_t i = 0, k;
    while (i < n && ifeval_py_space(ifeval_decode(s, n, i, &k))) i += k;
    size_t j = n;
    while (j > i) {
        size_t p = prev_start(s, j);
        if (!ifeval_py_space(ifeval_decode(s, n, p, &k))) break;
        j = p;
    }
    *b = i;
    *e = j;
}

bool ifeval_blank(const char *s, size_t n)
{
    size_t b, e;
    ifeval_py_strip(s, n, &b, &e);
    return b == e;
}

static bool cased_cp(int32_t c)
{
    return ifeval_py_upper_cp(c) || ifeval_py_lower_cp(c) || utf8proc_category(c) == UTF8PROC_CATEGORY_LT;
}

static bool case_ignorable(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
           cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK || c == '\'' || c == '.' || c == ':' ||
           c == 0xB7 || c == 0x2019;
}

/* Final_Sigma: a capital sigma after a cased letter and not before one lowers to U+03C2. */
static bool final_sigma(const char *s, size_t n, size_t i, size_t k)
{
    size_t j = i, kk;
    bool before = false;
    while (j > 0) {
        j = prev_start(s, j);
        int32_t c = ifeval_decode(s, n, j, &kk);
        if (case_ignorable(c)) continue;
        before = cased_cp(c);
        break;
    }
    if (!before) return false;
    for (j = i + k; j < n; j += kk) {
        int32_t c = ifeval_decode(s, n, j, &kk);
        if (case_ignorable(c)) continue;
        return !cased_cp(c);
    }
    return true;
}

/* str.lower() (full mapping: U+0130 gives "i\u0307"); new string of *out_n bytes. */
char *ifeval_py_lower(const char *s, size_t n, size_t *out_n)
{
    /* A byte gives at most 3: an invalid one reads as U+FFFD. */
    char *out = malloc(3 * n + 4);
    if (!out) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        return NULL;
    }
    size_t len = 0;
    for (size_t i = 0, k; i < n; i += k) {
        int32_t c = ifeval_decode(s, n, i, &k);
        if (c == 0x130) {
            memcpy(out + len, "i\xCC\x87", 3);
            len += 3;
            continue;
        }
        int32_t l = c == 0x3A3 && final_sigma(s, n, i, k) ? 0x3C2 : utf8proc_tolower(c);
        len += (size_t)utf8proc_encode_char(l, (utf8proc_uint8_t *)out + len);
    }
    out[len] = 0;
    if (out_n) *out_n = len;
    return out;
}

/* `w in table` for the sorted tables (Punkt's, LANGUAGE_CODES). */
static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

bool ifeval_in_list(const char *w, const char *const *list, size_t n)
{
    return bsearch(&w, list, n, sizeof *list, cmp_str) != NULL;
}

/* ---- regular expressions (PCRE2, Unicode properties, LF newlines as Python) ---- */

pcre2_code *ifeval_re_new(const char *pattern, size_t len, uint32_t opts, const char *what)
{
    char *p = malloc(len + 6);
    if (!p) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        return NULL;
    }
    memcpy(p, "(*LF)", 5);
    memcpy(p + 5, pattern, len);
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)p, len + 5, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | opts, &err,
                                   &off, NULL);
    free(p);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        lu_errorf(LU_ERR_INVALID, "%s: regex '%.*s' at offset %zu: %s", what, (int)len, pattern,
                  off >= 5 ? (size_t)off - 5 : 0, (const char *)msg);
    }
    return re;
}

/* Start/end byte pairs of the matches of re in s, as Python's re.finditer (non-overlapping, left to
 * right, an empty match never where the previous match ended empty); -1 on error. */
int64_t ifeval_re_find(const pcre2_code *re, const char *s, size_t n, size_t **spans)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        return -1;
    }
    int64_t count = 0, cap = 0;
    size_t pos = 0;
    uint32_t flags = 0;
    if (spans) *spans = NULL;
    while (pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, flags, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            lu_errorf(LU_ERR_INVALID, "ifeval: regex match: %s", (const char *)msg);
            count = -1;
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (spans) {
            if (count == cap) {
                cap = 2 * cap + 8;
                size_t *grown = realloc(*spans, (size_t)cap * 2 * sizeof *grown);
                if (!grown) {
                    lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
                    count = -1;
                    break;
                }
                *spans = grown;
            }
            (*spans)[2 * count] = ov[0];
            (*spans)[2 * count + 1] = ov[1];
        }
        count++;
        flags = ov[0] == ov[1] ? PCRE2_NOTEMPTY_ATSTART : 0;
        pos = ov[1];
    }
    pcre2_match_data_free(md);
    if (count < 0 && spans) {
        free(*spans);
        *spans = NULL;
    }
    return count;
}

int ifeval_re_search(const pcre2_code *re, const char *s, size_t n)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        return -1;
    }
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    if (rc >= 0) return 1;
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    lu_errorf(LU_ERR_INVALID, "ifeval: regex match failed (%d)", rc);
    return -1;
}

/* re.sub(re, repl, s) with PCRE2 replacement syntax ($1, $0); new string. */
char *ifeval_re_sub(const pcre2_code *re, const char *s, size_t n, const char *repl, size_t *out_n)
{
    PCRE2_SIZE cap = 2 * n + 64;
    for (;;) {
        char *out = malloc(cap);
        if (!out) break;
        PCRE2_SIZE len = cap;
        int rc = pcre2_substitute(re, (PCRE2_SPTR)s, n, 0,
                                  PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH |
                                      PCRE2_SUBSTITUTE_UNSET_EMPTY,
                                  NULL, NULL, (PCRE2_SPTR)repl, PCRE2_ZERO_TERMINATED, (PCRE2_UCHAR *)out, &len);
        if (rc >= 0) {
            *out_n = len;
            return out;
        }
        free(out);
        if (rc != PCRE2_ERROR_NOMEMORY) {
            lu_errorf(LU_ERR_INVALID, "ifeval: regex substitution failed (%d)", rc);
            return NULL;
        }
        cap = len + 1;
    }
    lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
    return NULL;
}

void ifeval_re_free_all(pcre2_code **re, int n)
{
    for (int i = 0; i < n; i++) pcre2_code_free(re[i]);
}

/* Compiles n static patterns; false (and none kept) on failure. */
bool ifeval_re_new_all(pcre2_code **re, const char *const *patterns, const uint32_t *opts, int n)
{
    for (int i = 0; i < n; i++) {
        re[i] = ifeval_re_new(patterns[i], strlen(patterns[i]), opts ? opts[i] : 0, "ifeval");
        if (!re[i]) {
            ifeval_re_free_all(re, i);
            return false;
        }
    }
    return true;
}

/* ---- json.loads: does the text parse as Python's json module parses it ---- */

static const char *json_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static bool json_lit(const char **p, const char *e, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(e - *p) < n || memcmp(*p, lit, n)) return false;
    *p += n;
    return true;
}

static const char *json_string(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c != '\\') continue;
        if (++p >= e) return NULL;
        if (*p == 'u') {
            for (int i = 0; i < 4; i++)
                if (++p >= e || !strchr("0123456789abcdefABCDEF", *p) || !*p) return NULL;
        } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
            return NULL;
        }
    }
    return NULL;
}

static const char *json_digits(const char *p, const char *e)
{
    while (p < e && *p >= '0' && *p <= '9') p++;
    return p;
}

/* One value at p (no leading whitespace); the end of it, or NULL. */
static const char *json_value(const char *p, const char *e, int depth)
{
    if (p >= e || depth > 10000) return NULL;
    if (*p == '"') return json_string(p, e);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = json_ws(p + 1, e);
        if (p < e && *p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= e || *p != '"' || !(p = json_string(p, e))) return NULL;
                p = json_ws(p, e);
                if (p >= e || *p != ':') return NULL;
                p = json_ws(p + 1, e);
            }
            if (!(p = json_value(p, e, depth + 1))) return NULL;
            p = json_ws(p, e);
            if (p < e && *p == close) return p + 1;
            if (p >= e || *p != ',') return NULL;
            p = json_ws(p + 1, e);
        }
    }
    if (json_lit(&p, e, "null") || json_lit(&p, e, "true") || json_lit(&p, e, "false") || json_lit(&p, e, "NaN") ||
        json_lit(&p, e, "Infinity") || json_lit(&p, e, "-Infinity"))
        return p;
    const char *q = p + (*p == '-');
    if (q >= e || *q < '0' || *q > '9') return NULL;
    q = *q == '0' ? q + 1 : json_digits(q, e);
    if (q + 1 < e && *q == '.' && q[1] >= '0' && q[1] <= '9') q = json_digits(q + 1, e);
    if (q < e && (*q == 'e' || *q == 'E')) {
        const char *x = q + 1;
        if (x < e && (*x == '+' || *x == '-')) x++;
        if (x < e && *x >= '0' && *x <= '9') q = json_digits(x, e);
    }
    return q;
}

bool ifeval_json_parses(const char *s, size_t n)
{
    const char *e = s + n, *p = json_value(json_ws(s, e), e, 0);
    return p && json_ws(p, e) == e;
}
