/* test_wer.c - word and character error rates, the alignment printout and transcript
 * normalisation. Expected counts are worked out by hand (they are what jiwer reports). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/wer.h"
#include "testutil.h"

static lu_wer_counts words(const char *ref, const char *hyp)
{
    lu_wer_counts c;
    cr_assert_eq(lu_wer_align_words(ref, hyp, &c), LU_OK, "%s", lu_error_message());
    return c;
}

static void assert_counts(lu_wer_counts c, int64_t h, int64_t s, int64_t d, int64_t i, int64_t n)
{
    cr_assert(c.hits == h && c.substitutions == s && c.deletions == d && c.insertions == i && c.ref_len == n,
              "got H%lld S%lld D%lld I%lld N%lld, want H%lld S%lld D%lld I%lld N%lld", (long long)c.hits,
              (long long)c.substitutions, (long long)c.deletions, (long long)c.insertions, (long long)c.ref_len,
              (long long)h, (long long)s, (long long)d, (long long)i, (long long)n);
}

static void assert_str(char *got, const char *want)
{
    cr_assert_not_null(got, "%s", lu_error_message());
    cr_assert_str_eq(got, want);
    free(got);
}

Test(wer, counts_substitution_deletion_and_insertion)
{
    /* oh inserted, sat -> sit, the deleted: the only alignment of cost 3. */
    lu_wer_counts c = words("the cat sat on the mat", "oh the cat sit on mat");
    assert_counts(c, 4, 1, 1, 1, 6);
    cr_assert_float_eq(lu_wer_rate(&c), 0.5, 1e-15);
}

Test(wer, identical_text_has_no_errors_whatever_the_spacing)
{
    /* Tabs, runs of spaces and U+00A0 (a Unicode space separator) all separate words. */
    lu_wer_counts c = words("  hello   world\tagain ", "hello\xc2\xa0world again");
    assert_counts(c, 3, 0, 0, 0, 3);
    cr_assert_float_eq(lu_wer_rate(&c), 0.0, 0);
}

Test(wer, empty_hypothesis_is_all_deletions)
{
    lu_wer_counts c = words("one two three", "");
    assert_counts(c, 0, 0, 3, 0, 3);
    cr_assert_float_eq(lu_wer_rate(&c), 1.0, 0);
}

Test(wer, empty_reference_rate_is_zero_or_infinite)
{
    lu_wer_counts c = words("", "extra words");
    assert_counts(c, 0, 0, 0, 2, 0);
    cr_assert(isinf(lu_wer_rate(&c)) && lu_wer_rate(&c) > 0);
    c = words("   ", "");
    assert_counts(c, 0, 0, 0, 0, 0);
    cr_assert_float_eq(lu_wer_rate(&c), 0.0, 0);
}

Test(wer, insertions_can_exceed_one_hundred_percent)
{
    lu_wer_counts c = words("a", "b c d");
    cr_assert_eq(c.substitutions + c.deletions + c.insertions, 3);
    cr_assert_float_eq(lu_wer_rate(&c), 3.0, 0);
}

Test(wer, corpus_rate_sums_counts_before_dividing)
{
    /* 1 error in 1 word and 0 errors in 9 words: corpus WER 1/10, not the mean of 1 and 0. */
    lu_wer_counts total = {0}, c = words("yes", "no");
    lu_wer_accumulate(&total, &c);
    c = words("a b c d e f g h i", "a b c d e f g h i");
    lu_wer_accumulate(&total, &c);
    assert_counts(total, 9, 1, 0, 0, 10);
    cr_assert_float_eq(lu_wer_rate(&total), 0.1, 1e-15);
}

/* Plain recursive edit distance over single-letter words, as the definition reads. */
static int edit_distance(const char *a, int na, const char *b, int nb)
{
    if (na == 0) return nb;
    if (nb == 0) return na;
    int sub = edit_distance(a, na - 1, b, nb - 1) + (a[na - 1] != b[nb - 1]);
    int del = edit_distance(a, na - 1, b, nb) + 1, ins = edit_distance(a, na, b, nb - 1) + 1;
    return sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
}

Test(wer, counts_are_consistent_with_edit_distance_on_random_sentences)
{
    lu_tensor *r = tu_randint(LU_I64, LU_SHAPE(40, 16), 3, 9);
    const int64_t *x = lu_tensor_data(r);
    for (int k = 0; k < 20; k++) {
        const int64_t *a = x + 2 * k * 16, *b = a + 16;
        int na = 1 + (int)(k % 7), nb = (int)((k * 5) % 8);
        char wa[8], wb[8], sa[32] = "", sb[32] = "";
        for (int i = 0; i < na; i++) {
            wa[i] = (char)('a' + a[i]);
            sprintf(sa + strlen(sa), "%c ", wa[i]);
        }
        for (int i = 0; i < nb; i++) {
            wb[i] = (char)('a' + b[i]);
            sprintf(sb + strlen(sb), "%c ", wb[i]);
        }
        lu_wer_counts c = words(sa, sb);
        cr_assert_eq(c.substitutions + c.deletions + c.insertions, edit_distance(wa, na, wb, nb), "'%s' vs '%s'", sa, sb);
        cr_assert_eq(c.hits + c.substitutions + c.deletions, na);
        cr_assert_eq(c.hits + c.substitutions + c.insertions, nb);
    }
    lu_tensor_release(r);
}

Test(wer, cer_counts_code_points_of_french_words)
{
    /* é and è are two bytes each but one character: 2 substitutions out of 5. */
    lu_wer_counts c;
    cr_assert_eq(lu_wer_align_chars("élève", "eleve", &c), LU_OK);
    assert_counts(c, 3, 2, 0, 0, 5);
    cr_assert_eq(lu_wer_align_chars("cœur", "coeur", &c), LU_OK);
    cr_assert_eq(c.ref_len, 4);
    cr_assert_eq(c.substitutions + c.deletions + c.insertions, 2);
}

Test(wer, cer_trims_ends_and_counts_inner_spaces)
{
    lu_wer_counts c;
    cr_assert_eq(lu_wer_align_chars("  a b ", "ab", &c), LU_OK);
    assert_counts(c, 2, 0, 1, 0, 3);
}

Test(wer, alignment_printout_marks_edits)
{
    assert_str(lu_wer_format_alignment("the cat sat on mat", "the sat in mat now"),
               "REF: the cat sat on mat ***\n"
               "HYP: the *** sat in mat now\n"
               "         D       S      I\n");
}

Test(wer, alignment_printout_pads_by_characters_not_bytes)
{
    assert_str(lu_wer_format_alignment("élève x", "eleves x"),
               "REF: élève  x\n"
               "HYP: eleves x\n"
               "     S\n");
    assert_str(lu_wer_format_alignment("", ""), "REF:\nHYP:\n\n");
}

Test(wer, rejects_invalid_utf8_and_null)
{
    lu_wer_counts c;
    cr_assert_neq(lu_wer_align_words("ok \xff", "ok", &c), LU_OK);
    tu_assert_error_contains("wer: invalid UTF-8 at byte 0xff");
    cr_assert_neq(lu_wer_align_chars("a", NULL, &c), LU_OK);
    tu_assert_error_contains("cer: reference or hypothesis is NULL");
    cr_assert_null(lu_text_upper("\xc3"));
    tu_assert_error_contains("text_upper: invalid UTF-8");
}

Test(text, case_mapping_handles_french_letters)
{
    assert_str(lu_text_upper("œuvre d'élève, ça"), "ŒUVRE D'ÉLÈVE, ÇA");
    assert_str(lu_text_lower("ŒUVRE D'ÉLÈVE, ÇA"), "œuvre d'élève, ça");
    assert_str(lu_text_upper(""), "");
}

Test(text, squeeze_spaces_trims_and_collapses)
{
    assert_str(lu_text_squeeze_spaces("\t a  b\n\nc \xc2\xa0"), "a b c");
    assert_str(lu_text_squeeze_spaces("   "), "");
}

Test(text, clean_removes_what_the_recipe_removes)
{
    assert_str(lu_text_clean("HELLO, [ unclear ] <unk> WORLD!? A.B #1^$: [NOISE];"), "HELLO, WORLD AB 1 NOISE");
}
