/* ifeval_internal.h - declarations shared by the files of the IFEval checkers (models/ifeval*.c),
 * not part of the API (ifeval.h). Names carry ifeval_ rather than lu_ for that reason.
 *
 *   ifeval.c        the instruction registry, kwargs, each instruction's check, strict/loose
 *   ifeval_text.c   Python's str methods, re (on PCRE2) and json.loads, as the reference uses them
 *   ifeval_words.c  word counts: \w runs, and nltk.word_tokenize for capital words
 *   ifeval_punkt.c  the Punkt sentence splitter with NLTK's English tables
 *   ifeval_lang.c   language identification
 *
 * Texts are (s, n) byte ranges of UTF-8 that need not end in NUL. */
#ifndef LU_IFEVAL_INTERNAL_H
#define LU_IFEVAL_INTERNAL_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "models/ifeval.h"

#define COUNT(a) (sizeof(a) / sizeof *(a))

/* ---- Python str semantics (ifeval_text.c) ---- */

/* The code point at byte i, its length in *k; an invalid byte reads as U+FFFD of length 1. */
int32_t ifeval_decode(const char *s, size_t n, size_t i, size_t *k);
/* str.isspace() of one code point */
bool ifeval_py_space(int32_t c);
/* Cased as Python counts it: category Lu/Ll or the Other_Uppercase/Other_Lowercase property. */
bool ifeval_py_upper_cp(int32_t c);
bool ifeval_py_lower_cp(int32_t c);
/* str.isupper() (upper = true) or str.islower(). */
bool ifeval_py_is_case(const char *s, size_t n, bool upper);
/* Python's \w: letters, numbers (str.isalnum) and '_'. */
bool ifeval_py_word(int32_t c);
/* str.strip(): [*b, *e) without whitespace at either end. */
void ifeval_py_strip(const char *s, size_t n, size_t *b, size_t *e);
/* Nothing but whitespace (str.strip() is empty). */
bool ifeval_blank(const char *s, size_t n);
/* str.lower() (full mapping: U+0130 gives "i\u0307"); new string of *out_n bytes (out_n may be NULL). */
char *ifeval_py_lower(const char *s, size_t n, size_t *out_n);

/* w is in the sorted table list of n strings. */
bool ifeval_in_list(const char *w, const char *const *list, size_t n);

/* ---- regular expressions (ifeval_text.c): PCRE2, Unicode properties, LF newlines as Python ---- */

/* Compiles pattern[0, len); errors name what. */
pcre2_code *ifeval_re_new(const char *pattern, size_t len, uint32_t opts, const char *what);
/* Start/end byte pairs of the matches of re in s (spans may be NULL), as re.finditer; -1 on error. */
int64_t ifeval_re_find(const pcre2_code *re, const char *s, size_t n, size_t **spans);
/* re.search: 1 found, 0 not, -1 error. */
int ifeval_re_search(const pcre2_code *re, const char *s, size_t n);
/* re.sub(re, repl, s) with PCRE2 replacement syntax ($1, $0); new string of *out_n bytes. */
char *ifeval_re_sub(const pcre2_code *re, const char *s, size_t n, const char *repl, size_t *out_n);
/* Compiles n static patterns (opts may be NULL); false (and none kept) on failure. */
bool ifeval_re_new_all(pcre2_code **re, const char *const *patterns, const uint32_t *opts, int n);
void ifeval_re_free_all(pcre2_code **re, int n);

/* ---- json.loads (ifeval_text.c) ---- */

/* The text parses as Python's json module parses it. */
bool ifeval_json_parses(const char *s, size_t n);

/* ---- words and sentences (ifeval_words.c, ifeval_punkt.c) ---- */

/* As lu_ifeval_count_words, lu_ifeval_count_sentences, lu_ifeval_count_capital_words; -1 on error. */
int64_t ifeval_count_words(const char *s, size_t n);
int64_t ifeval_count_sentences(const char *s, size_t n);
int64_t ifeval_count_capital_words(const char *s, size_t n);
/* Sentence spans of s as start, end pairs in *spans (to free; NULL on error), as Punkt's
 * span_tokenize with realign_boundaries; their number, -1 on error. */
int64_t ifeval_sentence_spans(const char *s, size_t n, size_t **spans);

/* ---- language (ifeval_lang.c) ---- */

/* As lu_ifeval_detect_language. */
const char *ifeval_detect_language(const char *s, size_t n);

#endif
