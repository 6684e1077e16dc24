/* test_gguf.c - the GGUF reader against files written by gguf-py (scripts/make_gguf_fixtures.py):
 * every metadata type, every dequantised tensor type, hand-made Q4_0/Q4_1/Q8_0 blocks against
 * the ggml formulas, malformed files, a tiny random Llama converted as llama.cpp converts (q/k
 * rows permuted) against transformers' logits, and the real SmolLM2-135M-Instruct (Q4_1) file:
 * its tokenizer against transformers' and a greedy chat reply. The SmolLM2 tests need
 * data/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_smollm2.sh) and skip, saying so,
 * without it. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/chat_template.h"
#include "models/generate.h"
#include "models/gguf.h"
#include "testutil.h"

#define FIX "tests/fixtures/gguf/"
#define SMOLLM2 "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"

static lu_gguf *open_ok(const char *path)
{
    lu_gguf *g = lu_gguf_open(path);
    cr_assert(g, "%s", lu_error_message());
    return g;
}

/* ---- hand-written files ------------------------------------------------------------------------ */

typedef struct bytes {
    uint8_t p[4096];
    size_t n;
} bytes;

static void put(bytes *b, const void *x, size_t n)
{
    cr_assert(b->n + n <= sizeof b->p);
    memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes *b, uint64_t v) { put(b, &v, 8); }
static void put_str(bytes *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad(bytes *b)
{
    while (b->n % 32) put(b, "", 1);
}

/* A v3 file with one string key and one [2, 32] tensor of `type` at `offset`, followed by
 * data_bytes bytes of data (value 0x11). */
static bytes one_tensor_file(uint32_t type, uint64_t offset, size_t data_bytes)
{
    bytes b = {.n = 0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 1);
    put_u64(&b, 1);
    put_str(&b, "general.architecture");
    put_u32(&b, LU_GGUF_STRING);
    put_str(&b, "test");
    put_str(&b, "w");
    put_u32(&b, 2);
    put_u64(&b, 32);
    put_u64(&b, 2);
    put_u32(&b, type);
    put_u64(&b, offset);
    pad(&b);
    for (size_t i = 0; i < data_bytes; i++) put(&b, "\x11", 1);
    return b;
}

/* Writes the bytes to a temporary file and opens it (NULL + error when the reader refuses it). */
static lu_gguf *open_bytes(const void *p, size_t n)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/lu_test_gguf_%d.gguf", (int)getpid());
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
    lu_gguf *g = lu_gguf_open(path);
    unlink(path);
    return g;
}

/* ---- metadata and tensors of gguf-py's file ---------------------------------------------------- */

Test(gguf, reads_every_metadata_type_as_written_by_gguf_py)
{
    lu_gguf *g = open_ok(FIX "types.gguf");
    int64_t i;
    double f;
    bool b;
    const struct { const char *key; int64_t v; lu_gguf_type t; } ints[] = {
        {"t.u8", 200, LU_GGUF_UINT8},   {"t.i8", -100, LU_GGUF_INT8},           {"t.u16", 60000, LU_GGUF_UINT16},
        {"t.i16", -30000, LU_GGUF_INT16}, {"t.u32", 4000000000LL, LU_GGUF_UINT32}, {"t.i32", -2000000000LL, LU_GGUF_INT32},
        {"t.u64", (1LL << 40) + 3, LU_GGUF_UINT64}, {"t.i64", -(1LL << 40) - 5, LU_GGUF_INT64},
    };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        lu_gguf_type t;
        cr_assert_eq(lu_gguf_kv_info(g, ints[k].key, &t, NULL, NULL), LU_OK, "%s", lu_error_message());
        cr_assert_eq(t, ints[k].t, "%s: type %d", ints[k].key, t);
        cr_assert_eq(lu_gguf_get_int(g, ints[k].key, &i), LU_OK, "%s", lu_error_message());
        cr_assert_eq(i, ints[k].v, "%s = %lld", ints[k].key, (long long)i);
    }
    cr_assert_eq(lu_gguf_get_float(g, "t.f32", &f), LU_OK);
    cr_assert_eq(f, 0.15625);
    cr_assert_eq(lu_gguf_get_float(g, "t.f64", &f), LU_OK);
    cr_assert_eq(f, -2.5e-300);
    cr_assert_eq(lu_gguf_get_bool(g, "t.bool", &b), LU_OK);
    cr_assert(b);
    size_t len;
    cr_assert_str_eq(lu_gguf_get_str(g, "t.str", &len), "café ≠ cafe");
    cr_assert_eq(len, strlen("café ≠ cafe"));
    cr_assert_str_eq(lu_gguf_get_str(g, "general.architecture", NULL), "types");
    lu_gguf_close(g);
}

Test(gguf, reads_arrays_of_ints_floats_strings_and_bools)
{
    lu_gguf *g = open_ok(FIX "types.gguf");
    lu_gguf_type t, e;
    int64_t n, v;
    double f;
    cr_assert_eq(lu_gguf_kv_info(g, "t.arr_i32", &t, &e, &n), LU_OK);
    cr_assert(t == LU_GGUF_ARRAY && e == LU_GGUF_INT32 && n == 3);
    const int64_t want[] = {1, -2, 3};
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(lu_gguf_array_int(g, "t.arr_i32", k, &v), LU_OK);
        cr_assert_eq(v, want[k]);
    }
    cr_assert_eq(lu_gguf_array_float(g, "t.arr_f32", 1, &f), LU_OK);
    cr_assert_eq(f, -1.25);
    cr_assert_eq(lu_gguf_kv_info(g, "t.arr_str", &t, &e, &n), LU_OK);
    cr_assert(e == LU_GGUF_STRING && n == 3);
    cr_assert_str_eq(lu_gguf_array_str(g, "t.arr_str", 0, NULL), "a");
    cr_assert_str_eq(lu_gguf_array_str(g, "t.arr_str", 1, NULL), "");
    cr_assert_str_eq(lu_gguf_array_str(g, "t.arr_str", 2, NULL), "ünï");
    cr_assert_eq(lu_gguf_array_int(g, "t.arr_bool", 0, &v), LU_OK);
    cr_assert_eq(v, 1);
    cr_assert_eq(lu_gguf_array_int(g, "t.arr_bool", 1, &v), LU_OK);
    cr_assert_eq(v, 0);
    lu_gguf_close(g);
}

Test(gguf, getters_name_the_key_when_absent_or_of_another_kind)
{
    lu_gguf *g = open_ok(FIX "types.gguf");
    int64_t v;
    cr_assert_neq(lu_gguf_get_int(g, "no.such.key", &v), LU_OK);
    tu_assert_error_contains("missing key 'no.such.key'");
    cr_assert_neq(lu_gguf_get_int(g, "t.str", &v), LU_OK);
    tu_assert_error_contains("key 't.str' holds a string");
    cr_assert_null(lu_gguf_get_str(g, "t.u8", NULL));
    tu_assert_error_contains("key 't.u8' is not a string");
    cr_assert_neq(lu_gguf_array_int(g, "t.arr_i32", 3, &v), LU_OK);
    tu_assert_error_contains("index 3 outside the array of 3");
    cr_assert_neq(lu_gguf_array_int(g, "t.arr_str", 0, &v), LU_OK);
    tu_assert_error_contains("holds strings");
    lu_gguf_close(g);
}

Test(gguf, reports_header_fields_and_row_major_shapes)
{
    lu_gguf *g = open_ok(FIX "types.gguf");
    cr_assert_eq(lu_gguf_version(g), 3);
    cr_assert_eq(lu_gguf_alignment(g), 64);
    cr_assert_eq(lu_gguf_tensor_count(g), 12);
    const struct { const char *name; int type, ndim; int64_t shape[3]; } want[] = {
        {"f32", LU_GGML_F32, 3, {3, 5, 7}}, {"f16", LU_GGML_F16, 2, {4, 6}},   {"bf16", LU_GGML_BF16, 2, {2, 32}},
        {"q8_0", LU_GGML_Q8_0, 2, {3, 64}}, {"q4_0", LU_GGML_Q4_0, 2, {2, 96}}, {"q4_1", LU_GGML_Q4_1, 2, {5, 32}},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        int i = lu_gguf_find_tensor(g, want[k].name), type, ndim;
        int64_t shape[4];
        cr_assert_geq(i, 0, "%s", want[k].name);
        cr_assert_eq(lu_gguf_tensor_info(g, i, &type, &ndim, shape), LU_OK);
        cr_assert_eq(type, want[k].type, "%s: type %s", want[k].name, lu_ggml_type_name(type));
        cr_assert_eq(ndim, want[k].ndim);
        for (int d = 0; d < ndim; d++) cr_assert_eq(shape[d], want[k].shape[d], "%s dim %d", want[k].name, d);
        size_t nbytes;
        const uint8_t *p = lu_gguf_tensor_data(g, i, &nbytes);
        cr_assert_eq((uintptr_t)p % 64, 0, "%s: data not 64-aligned", want[k].name);
    }
    lu_gguf_close(g);
}

Test(gguf, dequantises_every_supported_type_as_gguf_py_does)
{
    lu_gguf *g = open_ok(FIX "types.gguf");
    const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"};
    for (int k = 0; k < 6; k++) {
        char e[32];
        snprintf(e, sizeof e, "expect.%s", names[k]);
        lu_tensor *got = lu_gguf_load(g, names[k]), *ref = lu_gguf_load(g, e);
        cr_assert(got && ref, "%s", lu_error_message());
        /* Same float32 operations as gguf-py: exact up to the order of one multiply-add. */
        tu_assert_tensors_close(got, ref, 1e-6, 1e-6, names[k]);
        lu_tensor_release(got);
        lu_tensor_release(ref);
    }
    lu_gguf_close(g);
}

Test(gguf, read_into_checks_the_destination_shape)
{
    lu_gguf *g = open_ok(FIX "types.gguf");
    lu_tensor *t = lu_tensor_empty(LU_F32, LU_SHAPE(4, 5), LU_CPU);
    cr_assert_neq(lu_gguf_read_into(g, "f16", t), LU_OK);
    tu_assert_error_contains("tensor 'f16' has shape [4, 6]; the destination is [4, 5]");
    cr_assert_null(lu_gguf_load(g, "nope"));
    tu_assert_error_contains("no tensor 'nope'");
    lu_tensor_release(t);
    lu_gguf_close(g);
}

/* ---- block formats against ggml's formulas ----------------------------------------------------- */

/* Byte j holds nibble lo(j) = j % 16 and hi(j) = 15 - j: the element order inside a block shows. */
static void fill_nibbles(uint8_t *qs)
{
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((j % 16) | ((15 - j) << 4));
}

Test(gguf, q4_0_block_is_low_nibbles_then_high_nibbles_minus_8_times_d)
{
    uint8_t block[18];
    uint16_t d = lu_f32_to_f16(0.375f);
    memcpy(block, &d, 2);
    fill_nibbles(block + 2);
    float y[32];
    cr_assert_eq(lu_ggml_dequantize(LU_GGML_Q4_0, block, 32, y), LU_OK);
    for (int j = 0; j < 16; j++) {
        cr_assert_eq(y[j], (float)(j - 8) * 0.375f, "element %d", j);
        cr_assert_eq(y[j + 16], (float)(15 - j - 8) * 0.375f, "element %d", j + 16);
    }
}

Test(gguf, q4_1_block_is_q_times_d_plus_m)
{
    uint8_t block[20];
    uint16_t d = lu_f32_to_f16(0.25f), m = lu_f32_to_f16(-1.5f);
    memcpy(block, &d, 2);
    memcpy(block + 2, &m, 2);
    fill_nibbles(block + 4);
    float y[32];
    cr_assert_eq(lu_ggml_dequantize(LU_GGML_Q4_1, block, 32, y), LU_OK);
    for (int j = 0; j < 16; j++) {
        cr_assert_eq(y[j], (float)j * 0.25f - 1.5f, "element %d", j);
        cr_assert_eq(y[j + 16], (float)(15 - j) * 0.25f - 1.5f, "element %d", j + 16);
    }
}

Test(gguf, q8_0_blocks_are_int8_times_their_own_scale)
{
    uint8_t blocks[68];
    const float scales[2] = {0.5f, -0.125f};
    for (int b = 0; b < 2; b++) {
        uint16_t d = lu_f32_to_f16(scales[b]);
        memcpy(blocks + 34 * b, &d, 2);
        for (int j = 0; j < 32; j++) blocks[34 * b + 2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    }
    float y[64];
    cr_assert_eq(lu_ggml_dequantize(LU_GGML_Q8_0, blocks, 64, y), LU_OK);
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 32; j++) cr_assert_eq(y[32 * b + j], (float)(j * 8 - 128) * scales[b], "element %d", 32 * b + j);
}

Test(gguf, dequantize_refuses_partial_blocks_and_unsupported_types)
{
    uint8_t block[256] = {0};
    float y[256];
    cr_assert_neq(lu_ggml_dequantize(LU_GGML_Q4_0, block, 31, y), LU_OK);
    tu_assert_error_contains("31 elements are not whole Q4_0 blocks of 32");
    cr_assert_neq(lu_ggml_dequantize(12, block, 256, y), LU_OK);
    tu_assert_error_contains("unsupported tensor type Q4_K");
}

/* ---- malformed files --------------------------------------------------------------------------- */

Test(gguf, hand_written_file_reads_back)
{
    bytes b = one_tensor_file(LU_GGML_Q8_0, 0, 2 * 34);
    lu_gguf *g = open_bytes(b.p, b.n);
    cr_assert(g, "%s", lu_error_message());
    lu_tensor *t = lu_gguf_load(g, "w");
    cr_assert(t, "%s", lu_error_message());
    /* d = f16 0x1111, every q = 0x11 = 17. */
    double d = lu_f16_to_f32(0x1111);
    double *v = tu_to_doubles(t);
    for (int i = 0; i < 64; i++) cr_assert_float_eq(v[i], 17 * d, 1e-9 * fabs(17 * d));
    free(v);
    lu_tensor_release(t);
    lu_gguf_close(g);
}

Test(gguf, rejects_a_bad_magic)
{
    bytes b = one_tensor_file(LU_GGML_F32, 0, 256);
    memcpy(b.p, "GGML", 4);
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("not a GGUF file (magic 47 47 4d 4c");
}

Test(gguf, rejects_a_truncated_header_and_an_unknown_version)
{
    bytes b = one_tensor_file(LU_GGML_F32, 0, 256);
    cr_assert_null(open_bytes(b.p, 10));
    tu_assert_error_contains("truncated: tensor count needs 8 bytes at offset 8");
    b.p[4] = 7;
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("GGUF version 7 is not supported");
}

Test(gguf, every_truncation_of_a_valid_file_fails_cleanly)
{
    FILE *f = fopen(FIX "types.gguf", "rb");
    cr_assert(f);
    static uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert_lt(n, sizeof buf);
    for (size_t cut = 0; cut < n; cut += 7) {
        lu_gguf *g = open_bytes(buf, cut);
        cr_assert_null(g, "a file cut at %zu of %zu bytes was accepted", cut, n);
        cr_assert(strstr(lu_error_message(), "lu_test_gguf_"), "cut %zu: error does not name the file: %s", cut,
                  lu_error_message());
    }
}

Test(gguf, rejects_a_string_length_beyond_the_file)
{
    bytes b = one_tensor_file(LU_GGML_F32, 0, 256);
    uint64_t huge = 1ull << 60;
    memcpy(b.p + 24, &huge, 8); /* the first key's length */
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("key 0: string length 1152921504606846976 at offset 24 runs past the end of the file");
}

Test(gguf, rejects_counts_the_file_cannot_hold_before_allocating)
{
    bytes b = one_tensor_file(LU_GGML_F32, 0, 256);
    uint64_t huge = 1ull << 30;
    memcpy(b.p + 16, &huge, 8); /* key/value count */
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("1073741824 key/values cannot fit");
}

Test(gguf, rejects_a_tensor_outside_the_data_section)
{
    bytes b = one_tensor_file(LU_GGML_F32, 0, 255); /* one byte short of 2 x 32 floats */
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("tensor 'w': bytes [0, 256) lie outside the data section of 255 bytes");
    b = one_tensor_file(LU_GGML_F32, 1ull << 62, 256);
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("tensor 'w': bytes [4611686018427387904");
}

Test(gguf, rejects_an_unaligned_offset_and_a_row_that_is_not_whole_blocks)
{
    bytes b = one_tensor_file(LU_GGML_F16, 2, 256);
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("tensor 'w': offset 2 is not a multiple of the alignment 32");
    b = one_tensor_file(12 /* Q4_K */, 0, 4 * 144);
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("tensor 'w': row length 32 is not a multiple of the Q4_K block size 256");
}

Test(gguf, rejects_an_unknown_tensor_type_and_names_an_unsupported_one)
{
    bytes b = one_tensor_file(77, 0, 256);
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("tensor 'w': unknown tensor type 77");
    b = one_tensor_file(6 /* Q5_0 */, 0, 2 * 22);
    lu_gguf *g = open_bytes(b.p, b.n);
    cr_assert(g, "%s", lu_error_message());
    cr_assert_null(lu_gguf_load(g, "w"));
    tu_assert_error_contains("tensor 'w': dequantize: unsupported tensor type Q5_0");
    lu_gguf_close(g);
}

Test(gguf, rejects_a_duplicate_key)
{
    bytes b = {.n = 0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 0);
    put_u64(&b, 2);
    for (int k = 0; k < 2; k++) {
        put_str(&b, "a.b");
        put_u32(&b, LU_GGUF_UINT8);
        put(&b, "\x01", 1);
    }
    cr_assert_null(open_bytes(b.p, b.n));
    tu_assert_error_contains("key 'a.b' appears twice");
}

/* ---- tokenizer from parts ---------------------------------------------------------------------- */

Test(gguf, tokenizer_from_parts_merges_and_matches_special_tokens)
{
    /* "Ġ" is the byte-mapped space. */
    const char *tokens[] = {"<|end|>", "h", "e", "l", "o", "Ġ", "he", "ll", "hell", "hello", "Ġh"};
    const uint8_t kind[] = {LU_TOKEN_SPECIAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "Ġ h"};
    lu_tokenizer_parts parts = {.name = "parts", .n_tokens = 11, .tokens = tokens, .kind = kind, .n_merges = 5,
                                .merges = merges, .gpt2_regex = true};
    lu_tokenizer *t = lu_tokenizer_from_parts(&parts);
    cr_assert(t, "%s", lu_error_message());
    int32_t *ids;
    int64_t n;
    const char *text = "hello<|end|> hell";
    cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ids, &n), LU_OK, "%s", lu_error_message());
    /* "Ġhell": h+e merges first (rank 0), so "Ġ h" (rank 4) never applies. */
    const int32_t want[] = {9, 0, 5, 8};
    cr_assert_eq(n, 4);
    for (int i = 0; i < 4; i++) cr_assert_eq(ids[i], want[i], "token %d: %d", i, ids[i]);
    char *back = lu_tokenizer_decode(t, ids, n, true);
    cr_assert_str_eq(back, "hello hell");
    free(back);
    free(ids);
    lu_tokenizer_free(t);
    /* Split by single digits, then by the GPT-2 regex (SmolLM2's pre-tokenizer): "12" never merges. */
    const char *dtokens[] = {"1", "2", "12", "a", "Ġ"}, *dmerges[] = {"1 2"}, *digits[] = {"\\p{N}"};
    lu_tokenizer_parts dparts = {.name = "digits", .n_tokens = 5, .tokens = dtokens, .n_merges = 1, .merges = dmerges,
                                 .n_regex = 1, .regex = digits, .gpt2_regex = true};
    cr_assert(t = lu_tokenizer_from_parts(&dparts), "%s", lu_error_message());
    cr_assert_eq(lu_tokenizer_encode(t, "a 12", 4, &ids, &n), LU_OK, "%s", lu_error_message());
    cr_assert(n == 4 && ids[0] == 3 && ids[1] == 4 && ids[2] == 0 && ids[3] == 1, "%lld tokens", (long long)n);
    free(ids);
    lu_tokenizer_free(t);
    merges[1] = "l x";
    cr_assert_null(lu_tokenizer_from_parts(&parts));
    tu_assert_error_contains("tokenizer parts: model.merges[1]: token \"x\" is not in model.vocab");
}

/* ---- models ------------------------------------------------------------------------------------ */

Test(gguf, non_model_file_is_refused_naming_the_architecture)
{
    lu_decoder m;
    lu_params *p;
    cr_assert_neq(lu_gguf_load_decoder(FIX "types.gguf", &m, &p, NULL), LU_OK);
    tu_assert_error_contains("general.architecture 'types' is not supported");
    cr_assert_null(p);
}

Test(gguf, tiny_llama_config_from_metadata)
{
    lu_gguf *g = open_ok(FIX "tiny_llama.gguf");
    lu_decoder_config c;
    cr_assert_eq(lu_gguf_read_config(g, &c), LU_OK, "%s", lu_error_message());
    cr_assert(c.vocab_size == 96 && c.hidden_size == 64 && c.intermediate_size == 96 && c.num_layers == 2);
    cr_assert(c.num_heads == 4 && c.num_kv_heads == 2 && c.head_dim == 16 && !c.qk_norm && !c.attention_bias);
    cr_assert(!c.tie_embeddings && c.rope_theta == 10000.0 && fabs(c.rms_norm_eps - 1e-5) < 1e-12);
    cr_assert(c.max_position_embeddings == 256 && c.bos_token_id == 1 && c.n_eos == 1 && c.eos_token_ids[0] == 2);
    lu_gguf_close(g);
}

Test(gguf, tiny_llama_logits_match_transformers_reading_the_same_file)
{
    lu_decoder m;
    lu_params *p;
    cr_assert_eq(lu_gguf_load_decoder(FIX "tiny_llama.gguf", &m, &p, NULL), LU_OK, "%s", lu_error_message());
    cJSON *j = tu_read_json(FIX "tiny_llama.json");
    const cJSON *ids_j = cJSON_GetObjectItem(j, "input_ids"), *rows = cJSON_GetObjectItem(j, "logits");
    int64_t T = cJSON_GetArraySize(ids_j), V = 96, ids[64];
    double *ref = malloc((size_t)(T * V) * sizeof *ref);
    for (int64_t t = 0; t < T; t++) {
        ids[t] = cJSON_GetArrayItem(ids_j, (int)t)->valueint;
        for (int64_t v = 0; v < V; v++) ref[t * V + v] = cJSON_GetArrayItem(cJSON_GetArrayItem(rows, (int)t), (int)v)->valuedouble;
    }
    lu_arena *a = lu_arena_new(LU_CPU, 0);
    lu_arena_activate(a);
    lu_decoder_batch batch = {.input_ids = lu_tensor_from_host(LU_I64, LU_SHAPE(1, T), LU_CPU, ids)};
    lu_tensor *logits = lu_decoder_forward(&m, &batch);
    cr_assert(logits, "%s", lu_error_message());
    /* f32 forward in both; the fixture keeps 6 decimals. */
    tu_assert_close(logits, ref, T * V, 2e-5, 1e-5, "tiny llama logits");
    lu_arena_activate(NULL);
    lu_arena_free(a);
    free(ref);
    cJSON_Delete(j);
    lu_params_free(p);
}

/* ---- the real SmolLM2-135M-Instruct ------------------------------------------------------------ */

static bool have_smollm2(void)
{
    struct stat st;
    return stat(SMOLLM2, &st) == 0;
}

#define SKIP_WITHOUT_SMOLLM2()                                                                                     \
    do {                                                                                                           \
        if (!have_smollm2())                                                                                       \
            cr_skip_test("%s is absent: run scripts/fetch_smollm2.sh to test the real SmolLM2 model", SMOLLM2);    \
    } while (0)

/* transformers' ids for the fixture's texts, and the texts back from them. */
static void assert_transformers_ids(const lu_tokenizer *t)
{
    cJSON *j = tu_read_json(FIX "smollm2.json");
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "texts"))
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "ids");
        int32_t *ids;
        int64_t n;
        cr_assert_eq(lu_tokenizer_encode(t, text, strlen(text), &ids, &n), LU_OK, "%s", lu_error_message());
        cr_assert_eq(n, cJSON_GetArraySize(want), "\"%s\": %lld tokens", text, (long long)n);
        for (int64_t i = 0; i < n; i++)
            cr_assert_eq(ids[i], cJSON_GetArrayItem(want, (int)i)->valueint, "\"%s\" token %lld", text, (long long)i);
        char *back = lu_tokenizer_decode(t, ids, n, false);
        cr_assert_str_eq(back, text);
        free(back);
        free(ids);
    }
    cJSON_Delete(j);
}

Test(gguf, smollm2_metadata_config_and_chat_template)
{
    SKIP_WITHOUT_SMOLLM2();
    lu_gguf *g = open_ok(SMOLLM2);
    lu_decoder_config c;
    cr_assert_eq(lu_gguf_read_config(g, &c), LU_OK, "%s", lu_error_message());
    cr_assert(c.vocab_size == 49152 && c.hidden_size == 576 && c.intermediate_size == 1536 && c.num_layers == 30);
    cr_assert(c.num_heads == 9 && c.num_kv_heads == 3 && c.head_dim == 64 && c.tie_embeddings);
    cr_assert(c.rope_theta == 100000.0 && c.bos_token_id == 1 && c.n_eos == 1 && c.eos_token_ids[0] == 2);
    const char *tmpl = lu_gguf_get_str(g, "tokenizer.chat_template", NULL);
    cr_assert(tmpl && strstr(tmpl, "<|im_start|>"), "%s", lu_error_message());
    lu_gguf_close(g);
}

Test(gguf, smollm2_tokenizer_matches_transformers)
{
    SKIP_WITHOUT_SMOLLM2();
    lu_gguf *g = open_ok(SMOLLM2);
    lu_tokenizer *t = lu_gguf_read_tokenizer(g);
    cr_assert(t, "%s", lu_error_message());
    assert_transformers_ids(t);
    lu_tokenizer_free(t);
    lu_gguf_close(g);
}

Test(gguf, smollm2_tokenizer_exported_as_tokenizer_json_encodes_the_same_ids)
{
    SKIP_WITHOUT_SMOLLM2();
    char dir[64], path[96];
    snprintf(dir, sizeof dir, "/tmp/lu_test_gguf_tok_%d", (int)getpid());
    cr_assert_eq(mkdir(dir, 0755), 0);
    lu_gguf *g = open_ok(SMOLLM2);
    cr_assert_eq(lu_gguf_save_tokenizer(g, dir), LU_OK, "%s", lu_error_message());
    lu_gguf_close(g);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    lu_tokenizer *t = lu_tokenizer_load(path);
    cr_assert(t, "%s", lu_error_message());
    assert_transformers_ids(t);
    lu_tokenizer_free(t);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    cJSON *cfg = tu_read_json(path);
    cr_assert_str_eq(cJSON_GetObjectItem(cfg, "eos_token")->valuestring, "<|im_end|>");
    cr_assert_str_eq(cJSON_GetObjectItem(cfg, "bos_token")->valuestring, "<|im_start|>");
    cr_assert(strstr(cJSON_GetObjectItem(cfg, "chat_template")->valuestring, "<|im_start|>"));
    cJSON_Delete(cfg);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    rmdir(dir);
}

Test(gguf, smollm2_answers_the_capital_of_france_greedily, .timeout = 300)
{
    SKIP_WITHOUT_SMOLLM2();
    lu_decoder m;
    lu_params *p;
    lu_tokenizer *tok;
    cr_assert_eq(lu_gguf_load_decoder(SMOLLM2, &m, &p, &tok), LU_OK, "%s", lu_error_message());
    cJSON *j = tu_read_json(FIX "smollm2.json");
    /* SmolLM2's template is ChatML with a default system turn: the Qwen3 renderer gives the same text. */
    lu_chat_message msgs[] = {
        {"system", "You are a helpful AI assistant named SmolLM, trained by Hugging Face", NULL},
        {"user", "What is the capital of France?", NULL},
    };
    char *prompt = lu_chat_render(msgs, 2, true, true);
    cr_assert_str_eq(prompt, cJSON_GetObjectItem(j, "prompt")->valuestring);
    int32_t *ids32;
    int64_t n;
    cr_assert_eq(lu_tokenizer_encode(tok, prompt, strlen(prompt), &ids32, &n), LU_OK, "%s", lu_error_message());
    const cJSON *want_prompt = cJSON_GetObjectItem(j, "prompt_ids");
    cr_assert_eq(n, cJSON_GetArraySize(want_prompt));
    int64_t ids[128];
    for (int64_t i = 0; i < n; i++) {
        ids[i] = ids32[i];
        cr_assert_eq(ids[i], cJSON_GetArrayItem(want_prompt, (int)i)->valueint, "prompt token %lld", (long long)i);
    }
    /* Next-token logits of the prompt: the five best as transformers (f32, same dequantised weights). */
    lu_arena *a = lu_arena_new(LU_CPU, 0);
    lu_arena_activate(a);
    lu_decoder_batch batch = {.input_ids = lu_tensor_from_host(LU_I64, LU_SHAPE(1, n), LU_CPU, ids)};
    lu_tensor *logits = lu_decoder_forward(&m, &batch);
    cr_assert(logits, "%s", lu_error_message());
    const float *last = (const float *)lu_tensor_data(logits) + (n - 1) * m.cfg.vocab_size;
    const cJSON *top_ids = cJSON_GetObjectItem(j, "top_ids"), *top_logits = cJSON_GetObjectItem(j, "top_logits");
    for (int k = 0; k < 5; k++) {
        int id = cJSON_GetArrayItem(top_ids, k)->valueint;
        double want = cJSON_GetArrayItem(top_logits, k)->valuedouble;
        cr_assert(fabs(last[id] - want) < 2e-4, "logit of token %d: %f, transformers %f", id, last[id], want);
    }
    lu_arena_activate(NULL);
    lu_arena_free(a);
    /* Greedy reply, stopping at <|im_end|> (the file's eos). */
    int64_t out[32];
    lu_generate_opts opts = {.max_new_tokens = 24, .sampling = {.greedy = true}};
    int64_t got = lu_generate(&m, ids, n, &opts, out);
    cr_assert_geq(got, 0, "%s", lu_error_message());
    const cJSON *want = cJSON_GetObjectItem(j, "greedy_ids");
    cr_assert_eq(got, cJSON_GetArraySize(want), "%lld new tokens", (long long)got);
    int32_t reply[32];
    for (int64_t i = 0; i < got; i++) {
        cr_assert_eq(out[i], cJSON_GetArrayItem(want, (int)i)->valueint, "reply token %lld", (long long)i);
        reply[i] = (int32_t)out[i];
    }
    char *text = lu_tokenizer_decode(tok, reply, got, true);
    cr_assert_str_eq(text, "The capital of France is Paris.");
    free(text);
    free(ids32);
    free(prompt);
    cJSON_Delete(j);
    lu_tokenizer_free(tok);
    lu_params_free(p);
}
