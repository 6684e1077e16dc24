/* wer.h - word and character error rates by Levenshtein alignment, as jiwer and Kaldi's
 * compute-wer count them: (substitutions + deletions + insertions) / reference length, summed
 * over a corpus before dividing; an alignment printout for reports; and the transcript
 * normalisation the recipes apply before scoring (asr.md 7.2, 7.5).
 *
 * Text is UTF-8 (invalid input is an error). Words are separated by whitespace (ASCII
 * whitespace and Unicode space separators); characters are Unicode code points. */
#ifndef LU_WER_H
#define LU_WER_H

#include <stdint.h>

#include "core/error.h"

typedef struct lu_wer_counts {
    int64_t hits, substitutions, deletions, insertions;
    int64_t ref_len;   /* reference words (or characters) = hits + substitutions + deletions */
} lu_wer_counts;

/* Aligns the words of ref and hyp; *c receives this utterance's counts (not accumulated).
 * Among the alignments of minimal cost the backtrace prefers, from the end, a match or
 * substitution, then a deletion, then an insertion (the S/D/I split of equal-cost alignments is
 * a convention; their total is not). */
lu_status lu_wer_align_words(const char *ref, const char *hyp, lu_wer_counts *c);
/* The same over code points, after trimming leading and trailing whitespace; inner spaces count
 * as characters, as in jiwer.cer (squeeze them first for one space per word boundary). */
lu_status lu_wer_align_chars(const char *ref, const char *hyp, lu_wer_counts *c);
/* total += c (corpus-level scoring sums counts, then divides once). */
void lu_wer_accumulate(lu_wer_counts *total, const lu_wer_counts *c);
/* errors / ref_len. An empty reference has no defined rate (jiwer raises an error): this returns
 * 0 when the hypothesis is empty too and +infinity otherwise, so it cannot pass for a score. */
double lu_wer_rate(const lu_wer_counts *c);

/* Word alignment for reports, three lines of columns padded to the wider word:
 *   REF: the cat sat on mat ***
 *   HYP: the *** sat in mat now
 *            D       S      I
 * '*' fills the missing side; S, D, I mark substitutions, deletions, insertions. Trailing
 * spaces are trimmed; each line ends in '\n'. Returns a malloc'd string or NULL + error. */
char *lu_wer_format_alignment(const char *ref, const char *hyp);

/* Transcript normalisation; each returns a malloc'd string, or NULL + error (invalid UTF-8). */
char *lu_text_upper(const char *s);           /* Unicode simple case mapping (é -> É, œ -> Œ) */
char *lu_text_lower(const char *s);
char *lu_text_squeeze_spaces(const char *s);  /* trims, and turns each whitespace run into one ' ' */
/* asr.md 7.2: removes "<unk>", "[ unclear ]" and the characters # ^ $ ? : ; . ! [ ], then
 * squeezes spaces. */
char *lu_text_clean(const char *s);

#endif
