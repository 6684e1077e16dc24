/* ifeval_words.c - the word counts of the IFEval checkers: runs of \w (length_constraints:
 * number_words, nltk RegexpTokenizer(r"\w+")) and the capital words of nltk.word_tokenize
 * (change_case:capital_word_frequency). */
#define _GNU_SOURCE /* strndup */
#include <stdlib.h>
#include <string.h>

#include "models/ifeval_internal.h"

/* ---- words ---- */

int64_t ifeval_count_words(const char *s, size_t n)
{
    int64_t words = 0;
    bool in = false;
    for (size_t i = 0, k; i < n; i += k) {
        bool w = ifeval_py_word(ifeval_decode(s, n, i, &k));
        words += w && !in;
        in = w;
    }
    return words;
}

int64_t lu_ifeval_count_words(const char *text) { return ifeval_count_words(text, strlen(text)); }

/* ---- nltk.word_tokenize: Punkt sentences, then NLTKWordTokenizer's substitutions ---- */

static const char *const treebank_patterns[] = {
    /* STARTING_QUOTES */
    "([\\x{ab}\\x{201c}\\x{2018}\\x{201e}]|[`]+)", "^\"", "(``)", "([ \\(\\[{<])(\"|'{2})",
    "(?i)(')(?!re|ve|ll|m|t|s|d|n)(\\w)\\b",
    /* PUNCTUATION */
    "([^\\.])(\\.)([\\]\\)}>\"'\\x{bb}\\x{201d}\\x{2019} ]*)\\s*$", "([:,])([^\\d])", "([:,])$", "\\.{2,}",
    "[;@#$%&]", "([^\\.])(\\.)([\\]\\)}>\"']*)\\s*$", "[?!]", "([^'])' ", "[*]",
    /* PARENS_BRACKETS, DOUBLE_DASHES */
    "[\\]\\[\\(\\)\\{\\}\\<\\>]", "--",
    /* ENDING_QUOTES (after padding with spaces) */
    "([\\x{bb}\\x{201d}\\x{2019}])", "''", "\"", "\\s+", "([^' ])('[sS]|'[mM]|'[dD]|') ",
    "([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ",
    /* CONTRACTIONS2, CONTRACTIONS3 */
    "(?i)\\b(can)(?#X)(not)\\b", "(?i)\\b(d)(?#X)('ye)\\b", "(?i)\\b(gim)(?#X)(me)\\b", "(?i)\\b(gon)(?#X)(na)\\b",
    "(?i)\\b(got)(?#X)(ta)\\b", "(?i)\\b(lem)(?#X)(me)\\b", "(?i)\\b(more)(?#X)('n)\\b",
    "(?i)\\b(wan)(?#X)(na)(?=\\s)", "(?i) ('t)(?#X)(is)\\b", "(?i) ('t)(?#X)(was)\\b",
};
static const char *const treebank_repl[] = {
    " $1 ", "``", " $1 ", "$1 `` ", "$1 $2",
    "$1 $2 $3 ", " $1 $2", " $1 ", " $0 ", " $0 ", "$1 $2$3 ", " $0 ", "$1 ' ", " $0 ",
    " $0 ", " -- ",
    " $1 ", " '' ", " '' ", " ", "$1 $2 ", "$1 $2 ",
    " $1 $2 ", " $1 $2 ", " $1 $2 ", " $1 $2 ", " $1 $2 ", " $1 $2 ", " $1 $2 ", " $1 $2 ", " $1 $2 ", " $1 $2 ",
};
#define TREEBANK_N ((int)COUNT(treebank_patterns))
#define TREEBANK_PAD 16 /* index of the first pattern applied after " " + text + " " */

/* Capital tokens (str.isupper) of one sentence; -1 on error. */
static int64_t treebank_capitals(pcre2_code *const *re, const char *s, size_t n)
{
    char *text = strndup(s, n);
    if (!text) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        return -1;
    }
    size_t len = n;
    for (int i = 0; i < TREEBANK_N && text; i++) {
        if (i == TREEBANK_PAD) {
            char *padded = malloc(len + 3);
            if (padded) {
                padded[0] = ' ';
                memcpy(padded + 1, text, len);
                padded[len + 1] = ' ';
                padded[len + 2] = 0;
                len += 2;
            } else {
                lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
            }
            free(text);
            text = padded;
            if (!text) break;
        }
        char *next = ifeval_re_sub(re[i], text, len, treebank_repl[i], &len);
        free(text);
        text = next;
    }
    if (!text) return -1;
    /* str.split() */
    int64_t caps = 0;
    for (size_t i = 0, k; i < len;) {
        while (i < len && ifeval_py_space(ifeval_decode(text, len, i, &k))) i += k;
        size_t a = i;
        while (i < len && !ifeval_py_space(ifeval_decode(text, len, i, &k))) i += k;
        if (i > a) caps += ifeval_py_is_case(text + a, i - a, true);
    }
    free(text);
    return caps;
}

int64_t ifeval_count_capital_words(const char *s, size_t n)
{
    pcre2_code *re[COUNT(treebank_patterns)];
    if (!ifeval_re_new_all(re, treebank_patterns, NULL, TREEBANK_N)) return -1;
    size_t *spans;
    int64_t m = ifeval_sentence_spans(s, n, &spans), caps = m < 0 ? -1 : 0;
    for (int64_t i = 0; i < m && caps >= 0; i++) {
        int64_t c = treebank_capitals(re, s + spans[2 * i], spans[2 * i + 1] - spans[2 * i]);
        caps = c < 0 ? -1 : caps + c;
    }
    free(spans);
    ifeval_re_free_all(re, TREEBANK_N);
    return caps;
}

int64_t lu_ifeval_count_capital_words(const char *text) { return ifeval_count_capital_words(text, strlen(text)); }
