/* ifeval.h - the IFEval instruction checkers (google-research instruction_following_eval, as
 * vendored in LightEval 0.10 `extended|ifeval` and lm-evaluation-harness `ifeval`), used by the
 * "ifeval" task type of lm_eval.h for ifeval-en (google/IFEval) and ifeval-fr (jzhang86/fr_ifeval).
 *
 * Every registered instruction id, with the reference's kwargs and semantics:
 *   keywords:existence {keywords}  frequency {keyword, frequency, relation}  forbidden_words
 *     {forbidden_words}  letter_frequency {letter, let_frequency, let_relation}
 *   language:response_language {language}
 *   length_constraints:number_sentences {num_sentences, relation}  number_paragraphs {num_paragraphs}
 *     number_words {num_words, relation}  nth_paragraph_first_word {num_paragraphs, nth_paragraph,
 *     first_word}
 *   detectable_content:number_placeholders {num_placeholders}  postscript {postscript_marker}
 *   detectable_format:number_bullet_lists {num_bullets}  constrained_response {}
 *     number_highlighted_sections {num_highlights}  multiple_sections {section_spliter,
 *     num_sections}  json_format {}  title {}
 *   combination:two_responses {}  repeat_prompt {prompt_to_repeat}
 *   startend:end_checker {end_phrase}  quotation {}
 *   change_case:capital_word_frequency {capital_frequency, capital_relation}  english_capital {}
 *     english_lowercase {}
 *   punctuation:no_comma {}
 * relation is "less than" or "at least". As the reference, kwargs whose value is false in Python
 * (null, 0, "", [], {}) are dropped first; where the reference would then draw a random value
 * (a missing or negative count, a missing word) this is an error instead, as is any other kwarg.
 *
 * Strict: the response is non-blank and follows the instruction. Loose: one of 8 variants does -
 * the response, without its first line, without its last, without both (each stripped), each also
 * with every '*' removed.
 *
 * Deviations from the reference (Python re, nltk 3.9.1 with punkt_tab "english", langdetect 1.0.9):
 *   - Regexes run on PCRE2 with Unicode properties: Python's \s also matches U+001C-U+001F and
 *     U+0085, and user patterns (keywords, section splitter, postscript marker) use PCRE2 syntax.
 *   - Sentences (number_sentences, and the sentence split before the Treebank word tokenizer of
 *     capital_word_frequency) are Punkt's algorithm with its English abbreviations, collocations and
 *     sentence starters, but its orthographic statistics only for ~1600 frequent English words:
 *     after an abbreviation, ellipsis or initial, a capitalised word outside that list counts as
 *     never seen in lower case. Elsewhere the count is Punkt's.
 *   - Language identification (response_language, english_capital, english_lowercase) is not
 *     langdetect (a random-restart n-gram model, not deterministic on short texts): the dominant
 *     script decides, then stop words (Latin, Devanagari scripts) or script-specific letters
 *     (Cyrillic, Arabic scripts); lu_ifeval_detect_language below. Text without letters follows
 *     the reference's LangDetectException path: the instruction counts as followed. */
#ifndef LU_IFEVAL_H
#define LU_IFEVAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

struct cJSON;

typedef struct lu_ifeval_instruction lu_ifeval_instruction;

/* One instruction with its kwargs (a JSON object, or NULL for none). Errors name the id and the
 * kwarg ("keywords:frequency: \"relation\" must be \"less than\" or \"at least\""). */
lu_ifeval_instruction *lu_ifeval_instruction_new(const char *id, const struct cJSON *kwargs);
void lu_ifeval_instruction_free(lu_ifeval_instruction *ins);

/* The reference's check_following on one text: 1 followed, 0 not, -1 error (out of memory). */
int lu_ifeval_check(const lu_ifeval_instruction *ins, const char *text);
/* Strict and loose results for a response. */
lu_status lu_ifeval_evaluate(const lu_ifeval_instruction *ins, const char *response, bool *strict, bool *loose);

/* Pieces of the checkers, for tests. Words: runs of Unicode letters, digits and '_' (nltk
 * RegexpTokenizer(r"\w+")). Sentences: Punkt as above. Capital words: tokens of nltk word_tokenize
 * for which Python's str.isupper() holds. -1 on error. */
int64_t lu_ifeval_count_words(const char *text);
int64_t lu_ifeval_count_sentences(const char *text);
int64_t lu_ifeval_count_capital_words(const char *text);
/* ISO 639-1 code as langdetect spells it ("en", "fr", "zh-cn", ...), or NULL when the text has no
 * letter. */
const char *lu_ifeval_detect_language(const char *text);

#endif
