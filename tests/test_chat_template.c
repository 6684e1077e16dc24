/* test_chat_template.c - the Qwen3 chat template against the strings transformers'
 * apply_chat_template renders (tests/fixtures/tokenizer/chat_reference.json, written by
 * scripts/make_tokenizer_fixtures.py), the exact strings of formats.md section 4, the segments used
 * for SFT loss masks, and the errors. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/chat_template.h"
#include "testutil.h"

#define FIX "tests/fixtures/tokenizer/"

/* Converts a fixture conversation; the strings stay owned by the JSON. */
static int to_messages(const cJSON *conv, lu_chat_message *m, int cap)
{
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(conv, "messages")) {
        cr_assert_lt(n, cap);
        const cJSON *r = cJSON_GetObjectItem(e, "reasoning_content");
        m[n++] = (lu_chat_message){cJSON_GetObjectItem(e, "role")->valuestring,
                                   cJSON_GetObjectItem(e, "content")->valuestring, r ? r->valuestring : NULL};
    }
    return n;
}

/* Renders every fixture conversation with (add_generation_prompt, enable_thinking) and compares. */
static void check_variant(bool gen, bool think)
{
    cJSON *ref = tu_read_json(FIX "chat_reference.json"), *conv;
    char key[32];
    snprintf(key, sizeof key, "gen%d_think%d", gen, think);
    int checked = 0;
    cJSON_ArrayForEach(conv, cJSON_GetObjectItem(ref, "conversations")) {
        lu_chat_message m[16];
        int n = to_messages(conv, m, 16);
        char *got = lu_chat_render(m, n, gen, think);
        cr_assert(got, "%s: %s", cJSON_GetObjectItem(conv, "name")->valuestring, lu_error_message());
        const char *want = cJSON_GetObjectItem(cJSON_GetObjectItem(conv, "rendered"), key)->valuestring;
        cr_assert_str_eq(got, want, "conversation %s, %s", cJSON_GetObjectItem(conv, "name")->valuestring, key);
        free(got);
        checked++;
    }
    cr_assert_geq(checked, 15);
    cJSON_Delete(ref);
}

Test(chat_template, matches_transformers_without_generation_prompt) { check_variant(false, false); }
Test(chat_template, matches_transformers_without_generation_prompt_thinking) { check_variant(false, true); }
Test(chat_template, matches_transformers_with_generation_prompt_non_thinking) { check_variant(true, false); }
Test(chat_template, matches_transformers_with_generation_prompt_thinking) { check_variant(true, true); }

Test(chat_template, evaluation_prompt_matches_formats_md)
{
    lu_chat_message m[] = {{"system", "You are a helpful assistant.", NULL}, {"user", "Bonjour", NULL}};
    char *s = lu_chat_render(m, 2, true, false);
    cr_assert_str_eq(s, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nBonjour<|im_end|>\n"
                        "<|im_start|>assistant\n<think>\n\n</think>\n\n");
    free(s);
}

Test(chat_template, training_sample_matches_formats_md)
{
    lu_chat_message m[] = {{"user", "U", NULL}, {"assistant", "A", NULL}};
    char *s = lu_chat_render(m, 2, false, false);
    cr_assert_str_eq(s, "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n");
    free(s);
}

Test(chat_template, segments_cover_the_text_and_label_the_answers)
{
    lu_chat_message m[] = {{"system", "S", NULL}, {"user", "Q1", NULL}, {"assistant", "A1", NULL},
                           {"user", "Q2", NULL}, {"assistant", "<think>r</think>A2", NULL}};
    lu_chat_segment *sg;
    int ns;
    char *s = lu_chat_render_segments(m, 5, true, false, &sg, &ns);
    cr_assert(s);
    size_t at = 0;
    char answers[64] = "", thinks[64] = "";
    for (int i = 0; i < ns; i++) {
        cr_assert_eq(sg[i].start, at, "segment %d starts at %zu, expected %zu", i, sg[i].start, at);
        cr_assert_gt(sg[i].end, sg[i].start);
        at = sg[i].end;
        char *dst = sg[i].part == LU_CHAT_ANSWER || sg[i].part == LU_CHAT_ANSWER_END ? answers
                    : sg[i].part == LU_CHAT_THINK                                    ? thinks
                                                                                     : NULL;
        if (dst) strncat(dst, s + sg[i].start, sg[i].end - sg[i].start);
        if (sg[i].part == LU_CHAT_INPUT) cr_assert(sg[i].message == 0 || sg[i].message == 1 || sg[i].message == 3);
    }
    cr_assert_eq(at, strlen(s));
    cr_assert_str_eq(answers, "A1<|im_end|>A2<|im_end|>");
    cr_assert_str_eq(thinks, "<think>\nr\n</think>\n\n");
    cr_assert_eq(sg[ns - 1].message, -1, "the generation prompt belongs to no message");
    free(s), free(sg);
}

Test(chat_template, encode_masks_answers_and_their_end_token)
{
    lu_tokenizer *t = lu_tokenizer_load(FIX "small_qwen2.json");
    cr_assert(t, "%s", lu_error_message());
    lu_chat_message m[] = {{"user", "Qui es-tu ?", NULL}, {"assistant", "Un luthier.", NULL},
                           {"user", "Et après ?", NULL}, {"assistant", "\n\nJe joue du luth 🎸.", NULL}};
    for (int think = 0; think < 2; think++) {
        int32_t *ids;
        uint8_t *mask;
        int64_t n;
        cr_assert_eq(lu_chat_encode(t, m, 4, think, &ids, &mask, &n), LU_OK, "%s", lu_error_message());
        /* Same ids as encoding the rendered text. */
        char *text = lu_chat_render(m, 4, false, false);
        int32_t *ref;
        int64_t nref;
        cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ref, &nref), LU_OK);
        cr_assert_eq(n, nref);
        cr_assert_arr_eq(ids, ref, (size_t)n * sizeof *ids);
        /* The masked tokens decode to exactly the trained text. */
        int32_t kept[512];
        int nk = 0;
        for (int64_t i = 0; i < n; i++)
            if (mask[i]) kept[nk++] = ids[i];
        char *trained = lu_tokenizer_decode(t, kept, nk, false);
        cr_assert_str_eq(trained, think ? "Un luthier.<|im_end|><think>\n\n</think>\n\nJe joue du luth 🎸.<|im_end|>"
                                        : "Un luthier.<|im_end|>Je joue du luth 🎸.<|im_end|>");
        free(trained), free(text), free(ref), free(ids), free(mask);
    }
    lu_tokenizer_free(t);
}

Test(chat_template, enable_thinking_changes_only_the_generation_prompt)
{
    lu_chat_message m[] = {{"user", "Q", NULL}, {"assistant", "A", NULL}};
    char *a = lu_chat_render(m, 2, false, false), *b = lu_chat_render(m, 2, false, true);
    cr_assert_str_eq(a, b);
    free(a), free(b);
    char *g = lu_chat_render(m, 1, true, true);
    cr_assert_str_eq(g, "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n");
    free(g);
}

Test(chat_template, unknown_role_is_an_error_naming_the_message)
{
    lu_chat_message m[] = {{"user", "Q", NULL}, {"narrator", "x", NULL}};
    cr_assert_null(lu_chat_render(m, 2, false, false));
    tu_assert_error_contains("message 1 has role \"narrator\"");
}

Test(chat_template, missing_content_and_empty_conversation_are_errors)
{
    lu_chat_message m[] = {{"user", NULL, NULL}};
    cr_assert_null(lu_chat_render(m, 1, false, false));
    tu_assert_error_contains("message 0 has no content");
    cr_assert_null(lu_chat_render(m, 0, true, false));
    tu_assert_error_contains("at least one message");
}
