/* ifeval.c - the IFEval instructions (ifeval.h): the registry of ids and the kwargs each takes,
 * each instruction's check_following, and the strict and loose evaluation of a response. The text
 * semantics these rely on (Python str, re and json, words, Punkt sentences, language) are in the
 * other models/ifeval_*.c files, declared in ifeval_internal.h. */
#define _GNU_SOURCE /* memmem, memrchr, strndup */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "models/ifeval_internal.h"

/* ---- the instructions ---- */

typedef enum {
    I_EXISTENCE, I_FREQUENCY, I_FORBIDDEN, I_LETTER, I_LANGUAGE, I_SENTENCES, I_PARAGRAPHS, I_WORDS,
    I_NTH_PARAGRAPH, I_PLACEHOLDERS, I_POSTSCRIPT, I_BULLETS, I_CONSTRAINED, I_HIGHLIGHTS, I_SECTIONS, I_JSON,
    I_TITLE, I_TWO_RESPONSES, I_REPEAT_PROMPT, I_END, I_QUOTATION, I_CAPITAL_WORDS, I_CAPITAL, I_LOWERCASE,
    I_NO_COMMA
} kind;

/* Ids and the kwargs each accepts (space-separated). */
static const struct { const char *id; kind k; const char *kwargs; } registry[] = {
    {"keywords:existence", I_EXISTENCE, "keywords"},
    {"keywords:frequency", I_FREQUENCY, "keyword frequency relation"},
    {"keywords:forbidden_words", I_FORBIDDEN, "forbidden_words"},
    {"keywords:letter_frequency", I_LETTER, "letter let_frequency let_relation"},
    {"language:response_language", I_LANGUAGE, "language"},
    {"length_constraints:number_sentences", I_SENTENCES, "num_sentences relation"},
    {"length_constraints:number_paragraphs", I_PARAGRAPHS, "num_paragraphs"},
    {"length_constraints:number_words", I_WORDS, "num_words relation"},
    {"length_constraints:nth_paragraph_first_word", I_NTH_PARAGRAPH, "num_paragraphs nth_paragraph first_word"},
    {"detectable_content:number_placeholders", I_PLACEHOLDERS, "num_placeholders"},
    {"detectable_content:postscript", I_POSTSCRIPT, "postscript_marker"},
    {"detectable_format:number_bullet_lists", I_BULLETS, "num_bullets"},
    {"detectable_format:constrained_response", I_CONSTRAINED, ""},
    {"detectable_format:number_highlighted_sections", I_HIGHLIGHTS, "num_highlights"},
    {"detectable_format:multiple_sections", I_SECTIONS, "section_spliter num_sections"},
    {"detectable_format:json_format", I_JSON, ""},
    {"detectable_format:title", I_TITLE, ""},
    {"combination:two_responses", I_TWO_RESPONSES, ""},
    {"combination:repeat_prompt", I_REPEAT_PROMPT, "prompt_to_repeat"},
    {"startend:end_checker", I_END, "end_phrase"},
    {"startend:quotation", I_QUOTATION, ""},
    {"change_case:capital_word_frequency", I_CAPITAL_WORDS, "capital_frequency capital_relation"},
    {"change_case:english_capital", I_CAPITAL, ""},
    {"change_case:english_lowercase", I_LOWERCASE, ""},
    {"punctuation:no_comma", I_NO_COMMA, ""},
};

/* instructions_util.LANGUAGE_CODES */
static const char *const language_codes[] = {"ar", "bg", "bn", "de", "en", "es", "fa", "fi", "fr", "gu",
                                             "he", "hi", "it", "ja", "kn", "ko", "ml", "mr", "ne", "pa",
                                             "pl", "pt", "ru", "sw", "ta", "te", "th", "uk", "ur", "vi"};

struct lu_ifeval_instruction {
    const char *id;
    kind k;
    bool at_least;  /* relation "at least" (else "less than") */
    int64_t n, nth; /* the count; nth_paragraph */
    char *text;     /* keyword, letter, language, first word, marker, splitter, prompt or end phrase */
    int n_re;
    pcre2_code **re; /* keywords, forbidden words, frequency keyword, section splitter, marker */
};

void lu_ifeval_instruction_free(lu_ifeval_instruction *ins)
{
    if (!ins) return;
    ifeval_re_free_all(ins->re, ins->n_re);
    free(ins->re);
    free(ins->text);
    free(ins);
}

/* Python truth of a kwarg value: the reference drops false ones before build_description. */
static bool truthy(const cJSON *v)
{
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return false;
    if (cJSON_IsNumber(v)) return v->valuedouble != 0;
    if (cJSON_IsString(v)) return v->valuestring[0] != 0;
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) return v->child != NULL;
    return true;
}

static const cJSON *kwarg(const cJSON *kw, const char *key)
{
    const cJSON *v = kw ? cJSON_GetObjectItemCaseSensitive(kw, key) : NULL;
    return truthy(v) ? v : NULL;
}

/* An integer kwarg >= lo (required: the reference draws a random one otherwise). */
static bool get_int(const lu_ifeval_instruction *ins, const cJSON *kw, const char *key, int64_t lo, int64_t *out)
{
    const cJSON *v = kwarg(kw, key);
    if (!v || !cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e15 ||
        v->valuedouble < (double)lo) {
        if (lo == INT64_MIN)
            lu_errorf(LU_ERR_INVALID, "%s: \"%s\" must be a non-zero integer", ins->id, key);
        else
            lu_errorf(LU_ERR_INVALID, "%s: \"%s\" must be an integer >= %lld", ins->id, key, (long long)lo);
        return false;
    }
    *out = (int64_t)v->valuedouble;
    return true;
}

static bool get_relation(lu_ifeval_instruction *ins, const cJSON *kw, const char *key)
{
    const cJSON *v = kwarg(kw, key);
    if (!v || !cJSON_IsString(v) || (strcmp(v->valuestring, "less than") && strcmp(v->valuestring, "at least"))) {
        lu_errorf(LU_ERR_INVALID, "%s: \"%s\" must be \"less than\" or \"at least\"", ins->id, key);
        return false;
    }
    ins->at_least = !strcmp(v->valuestring, "at least");
    return true;
}

/* A string kwarg, stripped (as str.strip()) when strip is set. */
static bool get_text(lu_ifeval_instruction *ins, const cJSON *kw, const char *key, bool strip)
{
    const cJSON *v = kwarg(kw, key);
    if (!v || !cJSON_IsString(v)) {
        lu_errorf(LU_ERR_INVALID, "%s: \"%s\" must be a non-empty string", ins->id, key);
        return false;
    }
    size_t b = 0, e = strlen(v->valuestring);
    if (strip) ifeval_py_strip(v->valuestring, e, &b, &e);
    if (!(ins->text = strndup(v->valuestring + b, e - b))) lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
    return ins->text != NULL;
}

static bool add_re(lu_ifeval_instruction *ins, const char *pattern, size_t len, uint32_t opts, const char *key)
{
    pcre2_code **grown = realloc(ins->re, (size_t)(ins->n_re + 1) * sizeof *grown);
    if (!grown) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        return false;
    }
    ins->re = grown;
    char what[160];
    snprintf(what, sizeof what, "%s: \"%s\"", ins->id, key);
    return (ins->re[ins->n_re] = ifeval_re_new(pattern, len, opts, what)) != NULL && ++ins->n_re;
}

/* Keywords, forbidden words: non-empty list of strings, each a case-insensitive regex (forbidden
 * words between \b). */
static bool get_words(lu_ifeval_instruction *ins, const cJSON *kw, const char *key, bool bounded)
{
    const cJSON *v = kwarg(kw, key), *e;
    if (!v || !cJSON_IsArray(v)) {
        lu_errorf(LU_ERR_INVALID, "%s: \"%s\" must be a non-empty list of strings", ins->id, key);
        return false;
    }
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e)) {
            lu_errorf(LU_ERR_INVALID, "%s: \"%s\" must be a non-empty list of strings", ins->id, key);
            return false;
        }
        size_t n = strlen(e->valuestring);
        char *p = malloc(n + 5);
        if (!p) {
            lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
            return false;
        }
        snprintf(p, n + 5, bounded ? "\\b%s\\b" : "%s", e->valuestring);
        bool ok = add_re(ins, p, strlen(p), PCRE2_CASELESS, key);
        free(p);
        if (!ok) return false;
    }
    return true;
}

static bool parse_kwargs(lu_ifeval_instruction *ins, const cJSON *kw)
{
    switch (ins->k) {
    case I_EXISTENCE: return get_words(ins, kw, "keywords", false);
    case I_FORBIDDEN: return get_words(ins, kw, "forbidden_words", true);
    case I_FREQUENCY:
        return get_text(ins, kw, "keyword", true) && get_int(ins, kw, "frequency", 1, &ins->n) &&
               get_relation(ins, kw, "relation") &&
               add_re(ins, ins->text, strlen(ins->text), PCRE2_CASELESS, "keyword");
    case I_LETTER: {
        const cJSON *v = kwarg(kw, "letter");
        size_t k = 0;
        int32_t c = v && cJSON_IsString(v) ? utf8proc_tolower(ifeval_decode(v->valuestring, strlen(v->valuestring), 0, &k))
                                          : 0;
        if (!v || !cJSON_IsString(v) || v->valuestring[k] || c < 'a' || c > 'z') {
            lu_errorf(LU_ERR_INVALID, "%s: \"letter\" must be one letter a-z", ins->id);
            return false;
        }
        if (!(ins->text = malloc(2))) return lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory") == LU_OK;
        ins->text[0] = (char)c;
        ins->text[1] = 0;
        return get_int(ins, kw, "let_frequency", 1, &ins->n) && get_relation(ins, kw, "let_relation");
    }
    case I_LANGUAGE:
        if (!get_text(ins, kw, "language", false)) return false;
        if (!ifeval_in_list(ins->text, language_codes, COUNT(language_codes))) {
            lu_errorf(LU_ERR_INVALID, "%s: unknown \"language\" '%s' (not in the reference's LANGUAGE_CODES)", ins->id,
                      ins->text);
            return false;
        }
        return true;
    case I_SENTENCES: return get_int(ins, kw, "num_sentences", 1, &ins->n) && get_relation(ins, kw, "relation");
    case I_WORDS: return get_int(ins, kw, "num_words", 1, &ins->n) && get_relation(ins, kw, "relation");
    case I_PARAGRAPHS: return get_int(ins, kw, "num_paragraphs", 1, &ins->n);
    case I_NTH_PARAGRAPH: {
        if (!get_int(ins, kw, "num_paragraphs", 1, &ins->n) || !get_int(ins, kw, "nth_paragraph", 1, &ins->nth) ||
            !get_text(ins, kw, "first_word", false))
            return false;
        if (ins->nth > ins->n) {
            lu_errorf(LU_ERR_INVALID, "%s: \"nth_paragraph\" %lld is beyond \"num_paragraphs\" %lld", ins->id,
                      (long long)ins->nth, (long long)ins->n);
            return false;
        }
        char *low = ifeval_py_lower(ins->text, strlen(ins->text), NULL);
        free(ins->text);
        return (ins->text = low) != NULL;
    }
    case I_PLACEHOLDERS: return get_int(ins, kw, "num_placeholders", 1, &ins->n);
    case I_BULLETS: return get_int(ins, kw, "num_bullets", 1, &ins->n);
    case I_HIGHLIGHTS: return get_int(ins, kw, "num_highlights", 1, &ins->n);
    case I_POSTSCRIPT: {
        if (!get_text(ins, kw, "postscript_marker", true)) return false;
        size_t ln;
        char *low = ifeval_py_lower(ins->text, strlen(ins->text), &ln), *p = low ? malloc(ln + 16) : NULL;
        if (!p) {
            free(low);
            return lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory") == LU_OK;
        }
        snprintf(p, ln + 16, "\\s*%s.*$", low);
        const char *pattern = !strcmp(ins->text, "P.P.S") ? "\\s*p\\.\\s?p\\.\\s?s.*$"
                              : !strcmp(ins->text, "P.S.") ? "\\s*p\\.\\s?s\\..*$"
                                                           : p;
        bool ok = add_re(ins, pattern, strlen(pattern), PCRE2_MULTILINE, "postscript_marker");
        free(low);
        free(p);
        return ok;
    }
    case I_SECTIONS: {
        if (!get_text(ins, kw, "section_spliter", true) || !get_int(ins, kw, "num_sections", 1, &ins->n)) return false;
        size_t n = strlen(ins->text);
        char *p = malloc(n + 16);
        if (!p) return lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory") == LU_OK;
        snprintf(p, n + 16, "\\s?%s\\s?\\d+\\s?", ins->text);
        bool ok = add_re(ins, p, strlen(p), 0, "section_spliter");
        free(p);
        return ok;
    }
    case I_REPEAT_PROMPT: return get_text(ins, kw, "prompt_to_repeat", false);
    case I_END: return get_text(ins, kw, "end_phrase", true);
    case I_CAPITAL_WORDS:
        return get_int(ins, kw, "capital_frequency", INT64_MIN, &ins->n) && get_relation(ins, kw, "capital_relation");
    default: return true;
    }
}

lu_ifeval_instruction *lu_ifeval_instruction_new(const char *id, const cJSON *kwargs)
{
    size_t r = 0;
    while (r < COUNT(registry) && strcmp(registry[r].id, id)) r++;
    if (r == COUNT(registry)) {
        lu_errorf(LU_ERR_INVALID, "ifeval: unknown instruction id '%s'", id);
        return NULL;
    }
    if (kwargs && !cJSON_IsObject(kwargs) && !cJSON_IsNull(kwargs)) {
        lu_errorf(LU_ERR_INVALID, "%s: kwargs must be an object", id);
        return NULL;
    }
    const cJSON *e, *obj = cJSON_IsObject(kwargs) ? kwargs : NULL;
    cJSON_ArrayForEach(e, obj)
    {
        /* The reference passes the true-valued kwargs to build_description: others are TypeErrors. */
        char key[72];
        snprintf(key, sizeof key, " %s ", e->string);
        char allowed[96];
        snprintf(allowed, sizeof allowed, " %s ", registry[r].kwargs);
        if (truthy(e) && !strstr(allowed, key)) {
            lu_errorf(LU_ERR_INVALID, "%s: unexpected kwarg \"%s\"", id, e->string);
            return NULL;
        }
    }
    lu_ifeval_instruction *ins = calloc(1, sizeof *ins);
    if (!ins) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        return NULL;
    }
    ins->id = registry[r].id;
    ins->k = registry[r].k;
    if (!parse_kwargs(ins, obj)) {
        lu_ifeval_instruction_free(ins);
        return NULL;
    }
    return ins;
}

/* ---- checking a text ---- */

static bool compare(const lu_ifeval_instruction *ins, int64_t v) { return ins->at_least ? v >= ins->n : v < ins->n; }

/* Pieces of s split at every occurrence of sep (str.split(sep)) as start/end pairs; their number. */
static int64_t split_pieces(const char *s, size_t n, const char *sep, size_t **out)
{
    size_t k = strlen(sep), cap = 8, m = 0;
    size_t *sp = malloc(cap * 2 * sizeof *sp);
    for (size_t a = 0; sp;) {
        const char *hit = memmem(s + a, n - a, sep, k);
        size_t b = hit ? (size_t)(hit - s) : n;
        if (m == cap) {
            cap *= 2;
            size_t *grown = realloc(sp, cap * 2 * sizeof *grown);
            if (!grown) {
                free(sp);
                sp = NULL;
                break;
            }
            sp = grown;
        }
        sp[2 * m] = a;
        sp[2 * m + 1] = b;
        m++;
        if (!hit) break;
        a = b + k;
    }
    *out = sp;
    if (!sp) lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
    return sp ? (int64_t)m : -1;
}

/* The matches of a static pattern in s, as ifeval_re_find (spans may be NULL). */
static int64_t find_matches(const char *pattern, uint32_t opts, const char *s, size_t n, size_t **spans)
{
    if (spans) *spans = NULL;
    pcre2_code *re = ifeval_re_new(pattern, strlen(pattern), opts, "ifeval");
    int64_t m = re ? ifeval_re_find(re, s, n, spans) : -1;
    pcre2_code_free(re);
    return m;
}

static int check_paragraphs(const lu_ifeval_instruction *ins, const char *s, size_t n)
{
    size_t *sp;
    int64_t m = find_matches("\\s?\\*\\*\\*\\s?", 0, s, n, &sp);
    if (m < 0) return -1;
    /* pieces: [0, sp0), [sp1, sp2), ..., [sp_last, n) */
    int64_t pieces = m + 1, count = pieces;
    int ok = 1;
    for (int64_t i = 0; i < pieces && ok; i++) {
        size_t a = i == 0 ? 0 : sp[2 * i - 1], b = i == m ? n : sp[2 * i];
        if (ifeval_blank(s + a, b - a)) {
            if (i == 0 || i == pieces - 1) count--;
            else ok = 0;
        }
    }
    free(sp);
    return ok && count == ins->n;
}

static int check_nth_paragraph(const lu_ifeval_instruction *ins, const char *s, size_t n)
{
    size_t *sp;
    int64_t m = split_pieces(s, n, "\n\n", &sp);
    if (m < 0) return -1;
    int64_t count = m;
    for (int64_t i = 0; i < m; i++) count -= ifeval_blank(s + sp[2 * i], sp[2 * i + 1] - sp[2 * i]);
    int ok = 0;
    if (ins->nth <= count) {
        size_t a, b, k;
        ifeval_py_strip(s + sp[2 * (ins->nth - 1)], sp[2 * (ins->nth - 1) + 1] - sp[2 * (ins->nth - 1)], &a, &b);
        const char *p = s + sp[2 * (ins->nth - 1)] + a;
        size_t len = b - a, w = 0;
        if (len) {
            /* paragraph.split()[0], lstrip("'"), lstrip('"'), letters up to punctuation, lowered */
            while (w < len && !ifeval_py_space(ifeval_decode(p, len, w, &k))) w += k;
            size_t i = 0;
            while (i < w && p[i] == '\'') i++;
            while (i < w && p[i] == '"') i++;
            size_t j = i;
            while (j < w && !strchr(".,?!'\"", p[j])) j++;
            size_t ln;
            char *first = ifeval_py_lower(p + i, j - i, &ln);
            if (!first) {
                free(sp);
                return -1;
            }
            ok = count == ins->n && !strcmp(first, ins->text);
            free(first);
        }
    }
    free(sp);
    return ok;
}

static int check_two_responses(const char *s, size_t n)
{
    size_t *sp;
    int64_t m = split_pieces(s, n, "******", &sp);
    if (m < 0) return -1;
    int64_t valid[2], nv = 0;
    int ok = 1;
    for (int64_t i = 0; i < m && ok; i++) {
        if (ifeval_blank(s + sp[2 * i], sp[2 * i + 1] - sp[2 * i])) {
            if (i != 0 && i != m - 1) ok = 0;
        } else {
            if (nv < 2) valid[nv] = i;
            nv++;
        }
    }
    if (ok && nv == 2) {
        size_t a0, b0, a1, b1;
        const char *p0 = s + sp[2 * valid[0]], *p1 = s + sp[2 * valid[1]];
        ifeval_py_strip(p0, sp[2 * valid[0] + 1] - sp[2 * valid[0]], &a0, &b0);
        ifeval_py_strip(p1, sp[2 * valid[1] + 1] - sp[2 * valid[1]], &a1, &b1);
        ok = b0 - a0 != b1 - a1 || memcmp(p0 + a0, p1 + a1, b0 - a0);
    } else {
        ok = 0;
    }
    free(sp);
    return ok;
}

/* Highlights: *text* and **text** whose text is not blank. */
static int count_highlights(const char *s, size_t n)
{
    static const char *const patterns[] = {"\\*[^\\n\\*]*\\*", "\\*\\*[^\\n\\*]*\\*\\*"};
    int total = 0;
    for (int p = 0; p < 2 && total >= 0; p++) {
        size_t *sp;
        int64_t m = find_matches(patterns[p], 0, s, n, &sp);
        if (m < 0) return -1;
        for (int64_t i = 0; i < m; i++) {
            size_t d = (size_t)p + 1, a = sp[2 * i] + d, b = sp[2 * i + 1] - d;
            total += !ifeval_blank(s + a, b - a);
        }
        free(sp);
    }
    return total;
}

static int check_title(const char *s, size_t n)
{
    size_t *sp;
    int64_t m = find_matches("<<[^\\n]+>>", 0, s, n, &sp);
    if (m < 0) return -1;
    int ok = 0;
    for (int64_t i = 0; i < m && !ok; i++) {
        size_t a = sp[2 * i], b = sp[2 * i + 1];
        while (a < b && s[a] == '<') a++;
        while (b > a && s[b - 1] == '>') b--;
        ok = !ifeval_blank(s + a, b - a);
    }
    free(sp);
    return ok;
}

static bool starts_with(const char *s, size_t n, const char *p, size_t k) { return n >= k && !memcmp(s, p, k); }

static int check_text(const lu_ifeval_instruction *ins, const char *s, size_t n)
{
    size_t a, b, ln;
    int64_t m, m2;
    int r;
    switch (ins->k) {
    case I_EXISTENCE:
        for (int i = 0; i < ins->n_re; i++)
            if ((r = ifeval_re_search(ins->re[i], s, n)) != 1) return r;
        return 1;
    case I_FORBIDDEN:
        for (int i = 0; i < ins->n_re; i++)
            if ((r = ifeval_re_search(ins->re[i], s, n)) != 0) return r < 0 ? -1 : 0;
        return 1;
    case I_FREQUENCY: return (m = ifeval_re_find(ins->re[0], s, n, NULL)) < 0 ? -1 : compare(ins, m);
    case I_LETTER: {
        char *low = ifeval_py_lower(s, n, &ln);
        if (!low) return -1;
        m = 0;
        for (size_t i = 0; i < ln; i++) m += low[i] == ins->text[0];
        free(low);
        return compare(ins, m);
    }
    case I_LANGUAGE: {
        const char *lang = ifeval_detect_language(s, n);
        return !lang || !strcmp(lang, ins->text);
    }
    case I_SENTENCES: return (m = ifeval_count_sentences(s, n)) < 0 ? -1 : compare(ins, m);
    case I_WORDS: return compare(ins, ifeval_count_words(s, n));
    case I_PARAGRAPHS: return check_paragraphs(ins, s, n);
    case I_NTH_PARAGRAPH: return check_nth_paragraph(ins, s, n);
    case I_PLACEHOLDERS: return (m = find_matches("\\[.*?\\]", 0, s, n, NULL)) < 0 ? -1 : m >= ins->n;
    case I_POSTSCRIPT: {
        char *low = ifeval_py_lower(s, n, &ln);
        r = low ? ifeval_re_search(ins->re[0], low, ln) : -1;
        free(low);
        return r;
    }
    case I_BULLETS:
        m = find_matches("^\\s*\\*[^\\*].*$", PCRE2_MULTILINE, s, n, NULL);
        m2 = find_matches("^\\s*-.*$", PCRE2_MULTILINE, s, n, NULL);
        return m < 0 || m2 < 0 ? -1 : m + m2 == ins->n;
    case I_CONSTRAINED: {
        static const char *const options[] = {"My answer is yes.", "My answer is no.", "My answer is maybe."};
        ifeval_py_strip(s, n, &a, &b);
        for (int i = 0; i < 3; i++)
            if (memmem(s + a, b - a, options[i], strlen(options[i]))) return 1;
        return 0;
    }
    case I_HIGHLIGHTS: return (m = count_highlights(s, n)) < 0 ? -1 : m >= ins->n;
    case I_SECTIONS: {
        uint32_t groups = 0;
        pcre2_pattern_info(ins->re[0], PCRE2_INFO_CAPTURECOUNT, &groups);
        /* len(re.split(...)) - 1: each match adds a piece and its groups. */
        return (m = ifeval_re_find(ins->re[0], s, n, NULL)) < 0 ? -1 : m * (1 + (int64_t)groups) >= ins->n;
    }
    case I_JSON: {
        /* strip, removeprefix ```json / ```Json / ```JSON / ```, removesuffix ```, strip */
        ifeval_py_strip(s, n, &a, &b);
        const char *p = s + a;
        size_t len = b - a;
        if (starts_with(p, len, "```json", 7) || starts_with(p, len, "```Json", 7) || starts_with(p, len, "```JSON", 7))
            p += 7, len -= 7;
        if (starts_with(p, len, "```", 3)) p += 3, len -= 3;
        if (len >= 3 && !memcmp(p + len - 3, "```", 3)) len -= 3;
        ifeval_py_strip(p, len, &a, &b);
        return ifeval_json_parses(p + a, b - a);
    }
    case I_TITLE: return check_title(s, n);
    case I_TWO_RESPONSES: return check_two_responses(s, n);
    case I_REPEAT_PROMPT: {
        size_t pa, pb, lp;
        ifeval_py_strip(s, n, &a, &b);
        ifeval_py_strip(ins->text, strlen(ins->text), &pa, &pb);
        char *low = ifeval_py_lower(s + a, b - a, &ln), *want = low ? ifeval_py_lower(ins->text + pa, pb - pa, &lp) : NULL;
        r = want ? starts_with(low, ln, want, lp) : -1;
        free(low);
        free(want);
        return r;
    }
    case I_END: {
        /* value.strip().strip('"').lower().endswith(end_phrase.strip().lower()) */
        ifeval_py_strip(s, n, &a, &b);
        while (a < b && s[a] == '"') a++;
        while (b > a && s[b - 1] == '"') b--;
        size_t lp;
        char *low = ifeval_py_lower(s + a, b - a, &ln), *want = low ? ifeval_py_lower(ins->text, strlen(ins->text), &lp) : NULL;
        r = want ? ln >= lp && !memcmp(low + ln - lp, want, lp) : -1;
        free(low);
        free(want);
        return r;
    }
    case I_QUOTATION:
        ifeval_py_strip(s, n, &a, &b);
        return b - a > 1 && s[a] == '"' && s[b - 1] == '"';
    case I_CAPITAL_WORDS: return (m = ifeval_count_capital_words(s, n)) < 0 ? -1 : compare(ins, m);
    case I_CAPITAL:
    case I_LOWERCASE: {
        if (!ifeval_py_is_case(s, n, ins->k == I_CAPITAL)) return 0;
        const char *lang = ifeval_detect_language(s, n);
        return !lang || !strcmp(lang, "en");
    }
    case I_NO_COMMA: return memchr(s, ',', n) == NULL;
    }
    return 0;
}

int lu_ifeval_check(const lu_ifeval_instruction *ins, const char *text) { return check_text(ins, text, strlen(text)); }

lu_status lu_ifeval_evaluate(const lu_ifeval_instruction *ins, const char *response, bool *strict, bool *loose)
{
    size_t n = strlen(response);
    const char *first = memchr(response, '\n', n), *last = memrchr(response, '\n', n);
    /* The variants: whole, without the first line, the last, both (each stripped); each also without '*'. */
    size_t from[4] = {0, first ? (size_t)(first - response) + 1 : n, 0, first ? (size_t)(first - response) + 1 : n};
    size_t to[4] = {n, n, last ? (size_t)(last - response) : 0, last ? (size_t)(last - response) : 0};
    if (to[3] < from[3]) to[3] = from[3];
    *strict = *loose = false;
    char *bare = malloc(n + 1);
    if (!bare) return lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
    /* Order as the reference tries them (the result does not depend on it). */
    for (int v = 0; v < 8 && !*loose; v++) {
        int base = v < 2 ? 0 : v < 5 ? v - 1 : v - 4;
        bool strip_stars = v == 1 || v >= 5;
        size_t a = from[base], b = to[base];
        if (base > 0) {
            size_t sa, sb;
            ifeval_py_strip(response + a, b - a, &sa, &sb);
            b = a + sb;
            a += sa;
        }
        const char *p = response + a;
        size_t len = b - a;
        if (strip_stars) {
            len = 0;
            for (size_t i = a; i < b; i++)
                if (response[i] != '*') bare[len++] = response[i];
            p = bare;
        }
        if (ifeval_blank(p, len)) continue;
        int r = check_text(ins, p, len);
        if (r < 0) {
            free(bare);
            return lu_error_code();
        }
        if (v == 0) *strict = r;
        *loose = r;
    }
    free(bare);
    return LU_OK;
}
