/* test_ifeval.c - the IFEval checkers against the reference implementation (strict and loose
 * results, word / sentence / capital-word counts and language identification of
 * tests/fixtures/ifeval/cases.jsonl, written by scripts/make_ifeval_fixtures.py), kwargs errors,
 * and the ifeval task type of lm_eval.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "models/ifeval.h"
#include "models/lm_eval.h"
#include "testutil.h"

#define CASES "tests/fixtures/ifeval/cases.jsonl"
#define MAX_RESPONSES 256

/* Responses where langdetect and the script + stop-word identifier of ifeval_lang.c disagree (ifeval.h):
 * cases on them that identify the language are skipped, with the reason. */
static const struct { int r; const char *why; } language_exclusions[] = {
    {23, "langdetect reads the two words 'Same answer.' as German; without a listed stop word ifeval_lang.c "
         "reads English"},
    {34, "without the French sentence ('* pommes * poires * cerises'), langdetect's n-grams read French; with no "
         "listed stop word or accented letter ifeval_lang.c reads English"},
    {38, "langdetect reads capitalised French as English (its n-gram profiles are case-sensitive); ifeval_lang.c reads "
         "French"},
};

static cJSON **lines;
static int n_lines;
static const char *responses[MAX_RESPONSES];

static void load_cases(void)
{
    FILE *f = fopen(CASES, "rb");
    cr_assert(f, "cannot open %s (run the tests from the repository root)", CASES);
    static char buf[1 << 16];
    lines = NULL;
    n_lines = 0;
    while (fgets(buf, sizeof buf, f)) {
        cr_assert(strchr(buf, '\n'), "%s: line %d longer than the test's buffer", CASES, n_lines + 1);
        cJSON *o = cJSON_Parse(buf);
        cr_assert(o, "%s:%d: not JSON", CASES, n_lines + 1);
        lines = realloc(lines, (size_t)(n_lines + 1) * sizeof *lines);
        lines[n_lines++] = o;
        const cJSON *t = cJSON_GetObjectItem(o, "text"), *r = cJSON_GetObjectItem(o, "r");
        if (cJSON_IsString(t)) {
            cr_assert(r->valueint >= 0 && r->valueint < MAX_RESPONSES);
            responses[r->valueint] = t->valuestring;
        }
    }
    fclose(f);
}

static void free_cases(void)
{
    for (int i = 0; i < n_lines; i++) cJSON_Delete(lines[i]);
    free(lines);
}

TestSuite(ifeval, .init = load_cases, .fini = free_cases);

static const char *excluded_language(int r)
{
    for (size_t i = 0; i < sizeof language_exclusions / sizeof *language_exclusions; i++)
        if (language_exclusions[i].r == r) return language_exclusions[i].why;
    return NULL;
}

static bool uses_language(const char *id)
{
    return !strcmp(id, "language:response_language") || !strcmp(id, "change_case:english_capital") ||
           !strcmp(id, "change_case:english_lowercase");
}

Test(ifeval, checkers_match_reference_strict_and_loose)
{
    int checked = 0, skipped = 0, failed = 0;
    for (int i = 0; i < n_lines; i++) {
        const cJSON *id = cJSON_GetObjectItem(lines[i], "id");
        if (!id) continue;
        int r = cJSON_GetObjectItem(lines[i], "r")->valueint;
        const char *why = uses_language(id->valuestring) ? excluded_language(r) : NULL;
        if (why) {
            cr_log_info("skipped %s on response %d: %s", id->valuestring, r, why);
            skipped++;
            continue;
        }
        lu_ifeval_instruction *ins = lu_ifeval_instruction_new(id->valuestring, cJSON_GetObjectItem(lines[i], "kwargs"));
        if (cJSON_GetObjectItem(lines[i], "error")) {
            cr_expect_null(ins, "line %d: %s should be refused as the reference refuses it", i + 1, id->valuestring);
            lu_ifeval_instruction_free(ins);
            checked++;
            continue;
        }
        cr_assert(ins, "line %d: %s", i + 1, lu_error_message());
        bool strict, loose;
        cr_assert_eq(lu_ifeval_evaluate(ins, responses[r], &strict, &loose), LU_OK, "%s", lu_error_message());
        bool want_strict = cJSON_IsTrue(cJSON_GetObjectItem(lines[i], "strict"));
        bool want_loose = cJSON_IsTrue(cJSON_GetObjectItem(lines[i], "loose"));
        if (strict != want_strict || loose != want_loose) {
            char *kw = cJSON_PrintUnformatted(cJSON_GetObjectItem(lines[i], "kwargs"));
            cr_log_error("line %d: %s %s on response %d: strict %d loose %d, reference %d %d", i + 1, id->valuestring,
                         kw, r, strict, loose, want_strict, want_loose);
            free(kw);
            failed++;
        }
        lu_ifeval_instruction_free(ins);
        checked++;
    }
    cr_log_info("%d cases checked, %d skipped (documented language exclusions)", checked, skipped);
    cr_assert_eq(failed, 0, "%d of %d cases differ from the reference", failed, checked);
    cr_assert_gt(checked, 300);
}

Test(ifeval, every_registered_instruction_is_covered)
{
    static const char *ids[] = {
        "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
        "language:response_language", "length_constraints:number_sentences", "length_constraints:number_paragraphs",
        "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
        "detectable_content:number_placeholders", "detectable_content:postscript",
        "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
        "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
        "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
        "combination:repeat_prompt", "startend:end_checker", "startend:quotation",
        "change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
        "punctuation:no_comma"};
    for (size_t k = 0; k < sizeof ids / sizeof *ids; k++) {
        int pass = 0, fail = 0;
        for (int i = 0; i < n_lines; i++) {
            const cJSON *id = cJSON_GetObjectItem(lines[i], "id");
            if (!id || strcmp(id->valuestring, ids[k]) || cJSON_GetObjectItem(lines[i], "error")) continue;
            pass += cJSON_IsTrue(cJSON_GetObjectItem(lines[i], "strict"));
            fail += !cJSON_IsTrue(cJSON_GetObjectItem(lines[i], "strict"));
        }
        cr_expect(pass > 0 && fail > 0, "%s: the fixture has %d passing and %d failing cases", ids[k], pass, fail);
    }
}

Test(ifeval, counts_match_nltk)
{
    int failed = 0, checked = 0;
    for (int i = 0; i < n_lines; i++) {
        const cJSON *what = cJSON_GetObjectItem(lines[i], "count");
        if (!what) continue;
        const char *text = responses[cJSON_GetObjectItem(lines[i], "r")->valueint];
        int64_t want = (int64_t)cJSON_GetObjectItem(lines[i], "expected")->valuedouble;
        int64_t got = !strcmp(what->valuestring, "words")       ? lu_ifeval_count_words(text)
                      : !strcmp(what->valuestring, "sentences") ? lu_ifeval_count_sentences(text)
                                                                : lu_ifeval_count_capital_words(text);
        if (got != want) {
            cr_log_error("%s of %s: %lld, nltk %lld", what->valuestring, text, (long long)got, (long long)want);
            failed++;
        }
        checked++;
    }
    cr_assert_eq(failed, 0, "%d of %d counts differ from nltk", failed, checked);
    cr_assert_gt(checked, 100);
}

Test(ifeval, language_matches_langdetect_outside_documented_exclusions)
{
    int failed = 0, checked = 0;
    for (int i = 0; i < n_lines; i++) {
        const cJSON *lang = cJSON_GetObjectItem(lines[i], "lang");
        if (!lang) continue;
        int r = cJSON_GetObjectItem(lines[i], "r")->valueint;
        if (excluded_language(r)) continue;
        const char *got = lu_ifeval_detect_language(responses[r]);
        const char *want = cJSON_IsString(lang) ? lang->valuestring : NULL;
        if (!got != !want || (got && strcmp(got, want))) {
            cr_log_error("response %d: %s, langdetect %s", r, got ? got : "none", want ? want : "none");
            failed++;
        }
        checked++;
    }
    cr_assert_eq(failed, 0, "%d of %d languages differ from langdetect", failed, checked);
}

static void expect_refused(const char *id, const char *kwargs_json, const char *needle)
{
    cJSON *kw = kwargs_json ? cJSON_Parse(kwargs_json) : NULL;
    lu_ifeval_instruction *ins = lu_ifeval_instruction_new(id, kw);
    cr_expect_null(ins, "%s %s accepted", id, kwargs_json ? kwargs_json : "");
    if (!ins) cr_expect(strstr(lu_error_message(), needle), "'%s' does not contain '%s'", lu_error_message(), needle);
    lu_ifeval_instruction_free(ins);
    cJSON_Delete(kw);
}

Test(ifeval, bad_ids_and_kwargs_are_errors_naming_them)
{
    expect_refused("keywords:nonsense", "{}", "unknown instruction id 'keywords:nonsense'");
    expect_refused("keywords:frequency", "{\"keyword\": \"a\", \"frequency\": 2, \"relation\": \"more than\"}",
                   "keywords:frequency: \"relation\" must be");
    expect_refused("keywords:frequency", "{\"keyword\": \"a\", \"relation\": \"at least\"}", "\"frequency\"");
    expect_refused("length_constraints:number_words", "{\"num_words\": -3, \"relation\": \"at least\"}",
                   "\"num_words\" must be an integer >= 1");
    expect_refused("punctuation:no_comma", "{\"letter\": \"a\"}", "unexpected kwarg \"letter\"");
    expect_refused("keywords:existence", "{\"keywords\": [\"a(\"]}", "regex");
    expect_refused("keywords:letter_frequency", "{\"letter\": \"ab\", \"let_frequency\": 2, \"let_relation\": \"at least\"}",
                   "\"letter\" must be one letter a-z");
    expect_refused("length_constraints:nth_paragraph_first_word",
                   "{\"num_paragraphs\": 2, \"nth_paragraph\": 3, \"first_word\": \"a\"}", "beyond");
    expect_refused("language:response_language", "{\"language\": \"xx\"}", "unknown \"language\" 'xx'");
    expect_refused("combination:repeat_prompt", "{}", "\"prompt_to_repeat\"");
}

Test(ifeval, false_kwargs_are_dropped_as_the_reference_does)
{
    /* null, 0 and "" values are removed before build_description; the others are used. */
    cJSON *kw = cJSON_Parse("{\"num_words\": 3, \"relation\": \"less than\", \"keyword\": null, \"letter\": \"\", "
                            "\"num_bullets\": 0}");
    lu_ifeval_instruction *ins = lu_ifeval_instruction_new("length_constraints:number_words", kw);
    cr_assert(ins, "%s", lu_error_message());
    cr_expect_eq(lu_ifeval_check(ins, "one two"), 1);
    cr_expect_eq(lu_ifeval_check(ins, "one two three"), 0);
    lu_ifeval_instruction_free(ins);
    cJSON_Delete(kw);
}

Test(ifeval, blank_response_follows_nothing)
{
    lu_ifeval_instruction *ins = lu_ifeval_instruction_new("punctuation:no_comma", NULL);
    cr_assert(ins, "%s", lu_error_message());
    bool strict = true, loose = true;
    cr_assert_eq(lu_ifeval_evaluate(ins, " \n\t", &strict, &loose), LU_OK);
    cr_expect(!strict && !loose);
    cr_expect_eq(lu_ifeval_check(ins, " \n\t"), 1);
    lu_ifeval_instruction_free(ins);
}

Test(ifeval, invalid_utf8_reads_as_replacement_characters)
{
    /* Each invalid byte (a generation cut inside a character) reads as U+FFFD, 3 bytes: lowering
     * such a text once overran its buffer (seen with -DLUTHIER_SANITIZE=address). */
    const char *text = "xyz \xff\xff\xff\xff\xff\xff\xff\xff";
    cr_expect_str_eq(lu_ifeval_detect_language(text), "en");
    cr_expect_eq(lu_ifeval_count_words(text), 1);
    cJSON *kw = cJSON_Parse("{\"letter\": \"x\", \"let_frequency\": 2, \"let_relation\": \"less than\"}");
    lu_ifeval_instruction *ins = lu_ifeval_instruction_new("keywords:letter_frequency", kw);
    cr_assert(ins, "%s", lu_error_message());
    cr_expect_eq(lu_ifeval_check(ins, text), 1);
    lu_ifeval_instruction_free(ins);
    cJSON_Delete(kw);
}

/* ---- the ifeval task type of lm_eval.h ---- */

static lu_lmeval_task *parse(const char *text)
{
    return lu_lmeval_task_parse(text, strlen(text), "dir/ifeval_fr.jsonl");
}

Test(ifeval, task_items_score_responses_per_instruction)
{
    lu_lmeval_task *t = parse(
        "{\"type\": \"ifeval\", \"prompt\": \"Écris sans virgule, en minuscules.\", \"instruction_id_list\": "
        "[\"punctuation:no_comma\", \"change_case:english_lowercase\", \"detectable_format:title\"], "
        "\"kwargs\": [{}, null, {\"num_bullets\": null}], \"max_new_tokens\": 1280}\n");
    cr_assert(t, "%s", lu_error_message());
    cr_assert_eq(t->type, LU_LMEVAL_IFEVAL);
    cr_assert_eq(t->items[0].n_instructions, 3);
    cr_expect_eq(t->items[0].max_new_tokens, 1280);
    bool strict[3], loose[3];
    /* No comma; lower case only without the title line (loose); a title. */
    cr_assert_eq(lu_lmeval_ifeval_score(&t->items[0], "<<A Poem>>\nthe sun is warm and the sky is blue", strict, loose),
                 LU_OK, "%s", lu_error_message());
    cr_expect(strict[0] && loose[0]);
    cr_expect(!strict[1] && loose[1], "lower case holds once the title line is dropped");
    cr_expect(strict[2] && loose[2]);
    lu_lmeval_task_free(t);
}

Test(ifeval, task_errors_name_file_line_and_instruction)
{
    cr_expect_null(parse("{\"type\": \"ifeval\", \"prompt\": \"p\", \"instruction_id_list\": [\"x:y\"], \"kwargs\": [{}]}\n"));
    tu_assert_error_contains("dir/ifeval_fr.jsonl:1: ifeval item: ifeval: unknown instruction id 'x:y'");
    cr_expect_null(parse("\n{\"type\": \"ifeval\", \"prompt\": \"p\", \"instruction_id_list\": [\"punctuation:no_comma\"], "
                         "\"kwargs\": []}\n"));
    tu_assert_error_contains("dir/ifeval_fr.jsonl:2: ifeval item: \"kwargs\" must be an array of 1 objects");
    cr_expect_null(parse("{\"type\": \"ifeval\", \"prompt\": \"p\", \"instruction_id_list\": "
                         "[\"keywords:frequency\"], \"kwargs\": [{\"keyword\": \"a\", \"frequency\": 2}]}\n"));
    tu_assert_error_contains("dir/ifeval_fr.jsonl:1: ifeval item: keywords:frequency: \"relation\"");
}

/* The run path: greedy generation on a small random Qwen3 model (as test_lm_eval.c), then the
 * checkers. "less than 1000 words" holds exactly for a non-blank response and "at least 1000"
 * never does in 8 new tokens, so the prompt-level scores are 0 and both instruction-level scores
 * are half the share of non-blank responses. */
Test(ifeval, run_generates_and_aggregates_the_four_metrics)
{
    lu_decoder m;
    lu_decoder_config c = {.vocab_size = 880, .hidden_size = 16, .intermediate_size = 24, .num_layers = 2,
                           .num_heads = 2, .num_kv_heads = 1, .head_dim = 8, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                           .qk_norm = true, .tie_embeddings = true, .init_std = 0.5, .bos_token_id = -1,
                           .max_position_embeddings = 4096, .n_eos = 1, .eos_token_ids = {851}, .dtype = LU_F32};
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert(p && !lu_decoder_declare(&m, &c, p) && !lu_params_finalize(p) && !lu_decoder_init(&m, 5), "%s",
              lu_error_message());
    lu_tokenizer *tok = lu_tokenizer_load("tests/fixtures/tokenizer/small_qwen2.json");
    cr_assert(tok, "%s", lu_error_message());
    const char *item = "{\"type\": \"ifeval\", \"prompt\": \"%s\", \"instruction_id_list\": "
                       "[\"length_constraints:number_words\", \"length_constraints:number_words\"], \"kwargs\": "
                       "[{\"num_words\": 1000, \"relation\": \"less than\"}, {\"num_words\": 1000, \"relation\": "
                       "\"at least\"}], \"max_new_tokens\": 8}\n";
    char text[2048];
    int len = snprintf(text, sizeof text, item, "the cat");
    snprintf(text + len, sizeof text - (size_t)len, item, "a dog");
    lu_lmeval_task *t = parse(text);
    cr_assert(t, "%s", lu_error_message());
    lu_lmeval_opts o = {0};
    lu_lmeval_result r;
    cr_assert_eq(lu_lmeval_run(&m, tok, t, &o, &r), LU_OK, "%s", lu_error_message());
    cr_assert_eq(r.n, 2);
    cr_assert_eq(r.n_metrics, 4);
    static const char *names[] = {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                  "inst_level_loose_acc"};
    for (int k = 0; k < 4; k++) cr_expect_str_eq(r.metric[k], names[k]);
    cr_expect_eq(r.value[0], 0.0);
    cr_expect_eq(r.value[2], 0.0);
    cr_expect(r.value[1] == 0.0 || r.value[1] == 0.25 || r.value[1] == 0.5, "inst strict %g", r.value[1]);
    cr_expect_eq(r.value[3], r.value[1]);
    lu_lmeval_task_free(t);
    lu_tokenizer_free(tok);
    lu_params_free(p);
}
