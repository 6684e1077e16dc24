/* test_tokenizer.c - byte-level BPE against the ids of Hugging Face tokenizers (fixtures written by
 * scripts/make_tokenizer_fixtures.py), round trips, merge order, offsets, streaming decode and the
 * error messages. The real Qwen3 tokenizer tests need data/tokenizers/qwen3/tokenizer.json
 * (scripts/fetch_qwen_tokenizer.sh) and skip, saying so, without it. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/tokenizer.h"
#include "testutil.h"

#define FIX "tests/fixtures/tokenizer/"
#define QWEN3_JSON "data/tokenizers/qwen3/tokenizer.json"

static lu_tokenizer *load(const char *path)
{
    lu_tokenizer *t = lu_tokenizer_load(path);
    cr_assert(t, "loading %s: %s", path, lu_error_message());
    return t;
}

static lu_tokenizer *parse(const char *json)
{
    lu_tokenizer *t = lu_tokenizer_parse(json, strlen(json), "inline.json");
    cr_assert(t, "parsing inline tokenizer: %s", lu_error_message());
    return t;
}

/* Encodes every case of the reference file and compares with its ids under `key`. */
static void check_ids(const char *tok_path, const char *ref_path, const char *key)
{
    lu_tokenizer *t = load(tok_path);
    cJSON *ref = tu_read_json(ref_path), *c;
    cr_assert_eq(lu_tokenizer_vocab_size(t), cJSON_GetObjectItem(ref, "vocab_size")->valueint);
    int n_cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(ref, "cases")) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        cJSON *want = cJSON_GetObjectItem(c, key);
        int32_t *ids;
        int64_t n;
        cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ids, &n), LU_OK, "%s: %s", name, lu_error_message());
        cr_assert_eq(n, cJSON_GetArraySize(want), "%s (%s): %lld tokens, reference %d", name, tok_path, (long long)n,
                     cJSON_GetArraySize(want));
        for (int64_t i = 0; i < n; i++)
            cr_assert_eq(ids[i], cJSON_GetArrayItem(want, (int)i)->valueint, "%s (%s): token %lld is %d, reference %d",
                         name, tok_path, (long long)i, ids[i], cJSON_GetArrayItem(want, (int)i)->valueint);
        free(ids);
        n_cases++;
    }
    cr_assert_geq(n_cases, 20);
    cJSON_Delete(ref);
    lu_tokenizer_free(t);
}

/* decode(encode(x)) == NFC(x) for every case; `nfc` is given by the fixture or equals the text. */
static void check_round_trip(const char *tok_path, const char *ref_path)
{
    lu_tokenizer *t = load(tok_path);
    cJSON *ref = tu_read_json(ref_path), *c;
    cJSON *small = tu_read_json(FIX "small_reference.json");
    int k = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(ref, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        /* The NFC forms are recorded once, in small_reference.json, for the same strings in order. */
        const char *nfc = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(small, "cases"), k++), "nfc")->valuestring;
        int32_t *ids;
        int64_t n;
        cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ids, &n), LU_OK);
        char *back = lu_tokenizer_decode(t, ids, n, false);
        cr_assert(back);
        cr_assert_str_eq(back, nfc, "round trip of case %s", cJSON_GetObjectItem(c, "name")->valuestring);
        free(back);
        free(ids);
    }
    cJSON_Delete(small);
    cJSON_Delete(ref);
    lu_tokenizer_free(t);
}

static bool have_qwen3(void)
{
    if (access(QWEN3_JSON, R_OK) == 0) return true;
    cr_skip_test("%s is absent: run scripts/fetch_qwen_tokenizer.sh to test the real Qwen3 tokenizer", QWEN3_JSON);
    return false;
}

/* ---- against Hugging Face tokenizers ---------------------------------------------------------- */

Test(tokenizer, small_qwen2_ids_match_hf_tokenizers)
{
    check_ids(FIX "small_qwen2.json", FIX "small_reference.json", "ids");
}

Test(tokenizer, legacy_string_merges_give_the_same_ids)
{
    check_ids(FIX "small_qwen2_legacy.json", FIX "small_reference.json", "ids");
}

Test(tokenizer, gpt2_byte_level_regex_is_read_from_the_file)
{
    check_ids(FIX "small_gpt2.json", FIX "small_reference.json", "gpt2_ids");
}

Test(tokenizer, small_decode_of_encode_is_nfc_of_the_text)
{
    check_round_trip(FIX "small_qwen2.json", FIX "small_reference.json");
}

Test(tokenizer, qwen3_ids_match_hf_tokenizers, .timeout = 60)
{
    if (!have_qwen3()) return;
    check_ids(QWEN3_JSON, FIX "qwen3_reference.json", "ids");
}

Test(tokenizer, qwen3_decode_of_encode_is_nfc_of_the_text, .timeout = 60)
{
    if (!have_qwen3()) return;
    check_round_trip(QWEN3_JSON, FIX "qwen3_reference.json");
}

Test(tokenizer, qwen3_special_token_ids_match_formats_md, .timeout = 60)
{
    if (!have_qwen3()) return;
    lu_tokenizer *t = load(QWEN3_JSON);
    cr_assert_eq(lu_tokenizer_vocab_size(t), 151669);
    struct { const char *tok; int32_t id; bool special; } want[] = {
        {"<|endoftext|>", 151643, true}, {"<|im_start|>", 151644, true}, {"<|im_end|>", 151645, true},
        {"<|video_pad|>", 151656, true}, {"<tool_call>", 151657, false}, {"<think>", 151667, false},
        {"</think>", 151668, false}, {"Ċ", 198, false}, {"ĊĊ", 271, false},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cr_assert_eq(lu_tokenizer_token_id(t, want[i].tok), want[i].id, "%s", want[i].tok);
        cr_assert_eq(lu_tokenizer_is_special(t, want[i].id), want[i].special, "%s", want[i].tok);
    }
    int32_t *ids;
    int64_t n;
    cr_assert_eq(lu_tokenizer_encode(t, "\n\n", 2, &ids, &n), LU_OK);
    cr_assert(n == 1 && ids[0] == 271);
    free(ids);
    lu_tokenizer_free(t);
}

/* ---- behaviour on small inline tokenizers ----------------------------------------------------- */

/* Vocabulary a b c ab bc abc; merge ranks decide, not position. */
static const char *tiny_json(const char *merges, const char *extra_model)
{
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "{\"added_tokens\": [{\"id\": 6, \"content\": \"<s>\", \"special\": true},"
             "                    {\"id\": 7, \"content\": \"<s>x\", \"special\": false}],"
             " \"normalizer\": null, \"pre_tokenizer\": null, \"decoder\": {\"type\": \"ByteLevel\"},"
             " \"model\": {\"type\": \"BPE\", %s \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, \"abc\": 5},"
             " \"merges\": %s}}",
             extra_model, merges);
    return buf;
}

static void assert_encodes(const lu_tokenizer *t, const char *text, int n_want, const int32_t *want)
{
    int32_t *ids;
    int64_t n;
    cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ids, &n), LU_OK, "%s", lu_error_message());
    cr_assert_eq(n, n_want, "\"%s\": %lld tokens, expected %d", text, (long long)n, n_want);
    for (int i = 0; i < n_want; i++) cr_assert_eq(ids[i], want[i], "\"%s\" token %d: %d, expected %d", text, i, ids[i], want[i]);
    free(ids);
}

Test(tokenizer, lowest_rank_merges_first_not_leftmost)
{
    lu_tokenizer *t = parse(tiny_json("[\"b c\", \"a b\"]", ""));
    assert_encodes(t, "abc", 2, (int32_t[]){0, 4});
    lu_tokenizer_free(t);
    t = parse(tiny_json("[[\"a\", \"b\"], [\"b\", \"c\"], [\"ab\", \"c\"]]", ""));
    assert_encodes(t, "abc", 1, (int32_t[]){5});
    assert_encodes(t, "abab", 2, (int32_t[]){3, 3});
    lu_tokenizer_free(t);
}

Test(tokenizer, ignore_merges_takes_whole_vocabulary_words)
{
    lu_tokenizer *t = parse(tiny_json("[\"b c\"]", "\"ignore_merges\": true,"));
    assert_encodes(t, "abc", 1, (int32_t[]){5});
    assert_encodes(t, "cabc", 3, (int32_t[]){2, 0, 4});
    lu_tokenizer_free(t);
}

Test(tokenizer, added_tokens_match_longest_first_and_bytes_without_token_are_dropped)
{
    lu_tokenizer *t = parse(tiny_json("[\"a b\"]", ""));
    /* "<s>x" wins over "<s>"; 'd', '<', '>' have no token (no unk): dropped as tokenizers does. */
    assert_encodes(t, "ab<s>xab<s>d", 4, (int32_t[]){3, 7, 3, 6});
    lu_tokenizer_free(t);
}

Test(tokenizer, long_word_merges_in_n_log_n, .timeout = 10)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    size_t n = 400000;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) s[i] = "luthier"[i % 7];
    s[n] = '\0';
    int32_t *ids;
    int64_t nt;
    cr_assert_eq(lu_tokenizer_encode(t, s, n, &ids, &nt), LU_OK);
    char *back = lu_tokenizer_decode(t, ids, nt, false);
    cr_assert_str_eq(back, s);
    cr_assert_lt(nt, (int64_t)n / 2, "a repeated word must merge (%lld tokens)", (long long)nt);
    free(back), free(ids), free(s);
    lu_tokenizer_free(t);
}

Test(tokenizer, repeated_encoding_through_the_cache_is_identical)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    const char *text = "Le luth, le luth, le luth et l'œuvre du luthier.";
    int32_t *a, *b;
    int64_t na, nb;
    cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &a, &na), LU_OK);
    cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &b, &nb), LU_OK);
    cr_assert_eq(na, nb);
    cr_assert_arr_eq(a, b, (size_t)na * sizeof *a);
    free(a), free(b);
    lu_tokenizer_free(t);
}

Test(tokenizer, empty_text_gives_no_tokens)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    int32_t *ids = (int32_t *)1;
    int64_t n = -1;
    cr_assert_eq(lu_tokenizer_encode(t, "", 0, &ids, &n), LU_OK);
    cr_assert(n == 0 && ids == NULL);
    char *s = lu_tokenizer_decode(t, NULL, 0, false);
    cr_assert_str_eq(s, "");
    free(s);
    lu_tokenizer_free(t);
}

Test(tokenizer, lookups_of_tokens_and_ids)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    int32_t im_end = lu_tokenizer_token_id(t, "<|im_end|>");
    cr_assert_geq(im_end, 0);
    cr_assert_str_eq(lu_tokenizer_id_token(t, im_end), "<|im_end|>");
    cr_assert(lu_tokenizer_is_special(t, im_end));
    cr_assert(!lu_tokenizer_is_special(t, lu_tokenizer_token_id(t, "<think>")));
    cr_assert_str_eq(lu_tokenizer_id_token(t, lu_tokenizer_token_id(t, "Ġ")), "Ġ");
    cr_assert_eq(lu_tokenizer_token_id(t, "no such token"), -1);
    cr_assert_null(lu_tokenizer_id_token(t, -1));
    cr_assert_null(lu_tokenizer_id_token(t, (int32_t)lu_tokenizer_vocab_size(t)));
    lu_tokenizer_free(t);
}

Test(tokenizer, decode_skip_special_drops_only_special_tokens)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    const char *text = "<|im_start|>user\nSalut<|im_end|><think>x</think>";
    int32_t *ids;
    int64_t n;
    cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ids, &n), LU_OK);
    char *all = lu_tokenizer_decode(t, ids, n, false), *some = lu_tokenizer_decode(t, ids, n, true);
    cr_assert_str_eq(all, text);
    cr_assert_str_eq(some, "user\nSalut<think>x</think>");
    free(all), free(some), free(ids);
    lu_tokenizer_free(t);
}

Test(tokenizer, offsets_point_at_each_token_in_the_input)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    /* "e" + U+0301 composes under NFC: its tokens point at the start of that stretch. */
    const char *text = "Le caf\x65\xcc\x81 <|im_end|> ok";
    int32_t *ids;
    int64_t *starts, n;
    cr_assert_eq(lu_tokenizer_encode_offsets(t, text, strlen(text), &ids, &starts, &n), LU_OK);
    cr_assert_eq(starts[0], 0);
    for (int64_t i = 1; i < n; i++) cr_assert_geq(starts[i], starts[i - 1]);
    int32_t im_end = lu_tokenizer_token_id(t, "<|im_end|>");
    bool seen_end = false, seen_e = false;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] == im_end) {
            cr_assert_eq(starts[i], (int64_t)(strstr(text, "<|im_end|>") - text));
            seen_end = true;
        }
        /* Bytes 6..8 ("e" + U+0301) become "é": their tokens start at 6; every other token decodes to
         * the input bytes at its offset. */
        char *piece = lu_tokenizer_decode(t, &ids[i], 1, false);
        cr_assert(starts[i] != 7 && starts[i] != 8, "token %lld starts inside the rewritten stretch", (long long)i);
        if (starts[i] == 6) seen_e = true;
        else cr_assert(!strncmp(text + starts[i], piece, strlen(piece)), "token %lld at %lld", (long long)i, (long long)starts[i]);
        free(piece);
    }
    cr_assert(seen_end && seen_e);
    free(ids), free(starts);
    lu_tokenizer_free(t);
}

/* ---- streaming decode --------------------------------------------------------------------------- */

Test(tokenizer, stream_holds_back_split_characters)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    const char *text = "Dev 👩‍💻 à l'œuvre 🇫🇷!";
    int32_t *ids;
    int64_t n;
    cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ids, &n), LU_OK);
    lu_tokenizer_stream *s = lu_tokenizer_stream_new(t, false);
    char out[256] = "";
    int held = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *piece = lu_tokenizer_stream_push(s, ids[i]);
        cr_assert(piece);
        size_t len;
        /* Every piece is whole UTF-8: no U+FFFD from a character split between tokens. */
        cr_assert_null(strstr(piece, "\xEF\xBF\xBD"), "piece %lld", (long long)i);
        held += piece[0] == '\0';
        len = strlen(out);
        snprintf(out + len, sizeof out - len, "%s", piece);
    }
    cr_assert_str_eq(lu_tokenizer_stream_flush(s), "");
    cr_assert_str_eq(out, text);
    cr_assert_gt(held, 0, "the emoji should span several byte tokens");
    lu_tokenizer_stream_free(s);
    free(ids);
    lu_tokenizer_free(t);
}

Test(tokenizer, stream_flush_and_decode_replace_cut_sequences)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    /* The one-byte tokens of 0xF0 0x9F (the start of a 4-byte emoji): byte map U+00F0, U+0141. */
    int32_t ids[2] = {lu_tokenizer_token_id(t, "ð"), lu_tokenizer_token_id(t, "Ł")};
    cr_assert(ids[0] >= 0 && ids[1] >= 0);
    lu_tokenizer_stream *s = lu_tokenizer_stream_new(t, false);
    cr_assert_str_eq(lu_tokenizer_stream_push(s, ids[0]), "");
    cr_assert_str_eq(lu_tokenizer_stream_push(s, ids[1]), "");
    cr_assert_str_eq(lu_tokenizer_stream_flush(s), "\xEF\xBF\xBD");
    lu_tokenizer_stream_free(s);
    char *d = lu_tokenizer_decode(t, ids, 2, false);
    cr_assert_str_eq(d, "\xEF\xBF\xBD");
    free(d);
    lu_tokenizer_free(t);
}

/* ---- errors ------------------------------------------------------------------------------------- */

Test(tokenizer, missing_file_error_names_the_file)
{
    cr_assert_null(lu_tokenizer_load("/nonexistent/dir/tokenizer.json"));
    tu_assert_error_contains("/nonexistent/dir/tokenizer.json");
}

Test(tokenizer, corrupt_json_error_names_the_file)
{
    char path[] = "/tmp/lu_tok_corruptXXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *bad = "{\"model\": {\"vocab\": {\"a\": 0,";
    cr_assert_eq(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
    close(fd);
    cr_assert_null(lu_tokenizer_load(path));
    tu_assert_error_contains(path);
    tu_assert_error_contains("not a JSON object");
    unlink(path);
}

Test(tokenizer, merge_of_unknown_token_is_an_error_naming_the_key)
{
    const char *j = tiny_json("[\"a b\", \"b z\"]", "");
    cr_assert_null(lu_tokenizer_parse(j, strlen(j), "tok.json"));
    tu_assert_error_contains("tok.json: model.merges[1]: token \"z\" is not in model.vocab");
}

Test(tokenizer, malformed_merge_entry_is_an_error)
{
    const char *j = tiny_json("[\"a b c\"]", "");
    cr_assert_null(lu_tokenizer_parse(j, strlen(j), "tok.json"));
    tu_assert_error_contains("model.merges[0] is neither");
}

Test(tokenizer, missing_vocab_is_an_error)
{
    const char *j = "{\"model\": {\"type\": \"BPE\", \"merges\": []}}";
    cr_assert_null(lu_tokenizer_parse(j, strlen(j), "tok.json"));
    tu_assert_error_contains("tok.json: model.vocab is missing");
}

Test(tokenizer, unsupported_pre_tokenizer_is_an_error)
{
    const char *j = "{\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}";
    cr_assert_null(lu_tokenizer_parse(j, strlen(j), "tok.json"));
    tu_assert_error_contains("pre_tokenizer type \"Metaspace\" is not supported");
}

Test(tokenizer, invalid_utf8_input_is_an_error_naming_the_offset)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    int32_t *ids;
    int64_t n;
    cr_assert_eq(lu_tokenizer_encode(t, "abc\xC3(", 5, &ids, &n), LU_ERR_INVALID);
    tu_assert_error_contains("not valid UTF-8 at byte 3");
    lu_tokenizer_free(t);
}

Test(tokenizer, decode_of_unknown_id_is_an_error)
{
    lu_tokenizer *t = load(FIX "small_qwen2.json");
    int32_t ids[2] = {0, 1 << 20};
    cr_assert_null(lu_tokenizer_decode(t, ids, 2, false));
    tu_assert_error_contains("id 1048576 is not a token");
    lu_tokenizer_free(t);
}
