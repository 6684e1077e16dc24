/* test_bpe.c - the BPE trainer (merges worked out by hand on a tiny corpus), the asr.md 7.2 id
 * layout, encode/decode round trips in English and French, the character token set, and the
 * JSON file with its loading errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/bpe.h"
#include "testutil.h"

#define WB "\xe2\x96\x81"

static lu_bpe_config tiny_config(int vocab_size)
{
    return (lu_bpe_config){.vocab_size = vocab_size, .unk_id = 0, .bos_id = -1, .eos_id = -1, .pad_id = -1};
}

/* Words AB AB ABC BC: segments ▁AB x2, ▁ABC, ▁BC. Pair counts: ▁A 3, AB 3, BC 2, ▁B 1.
 * 1: AB (ties with ▁A at 3, shorter in bytes). Then ▁+AB 3 -> 2: ▁AB. Then ▁AB+C, ▁+B, B+C all 1:
 * 3: BC (2 bytes). Then ▁AB+C 1 and ▁+BC 1: 4: ▁BC (5 bytes) before 5: ▁ABC (6 bytes). Characters
 * by frequency: ▁ 4 and B 4 (B has the smaller code point), A 3, C 2. */
static const char *const tiny_corpus[] = {"AB AB ABC", "BC"};

static lu_bpe *train_tiny(int vocab_size)
{
    lu_bpe_config c = tiny_config(vocab_size);
    lu_bpe *b = lu_bpe_train(tiny_corpus, 2, &c);
    cr_assert_not_null(b, "%s", lu_error_message());
    return b;
}

static void assert_ids(const lu_bpe *b, const char *text, const int *want, int n)
{
    int *ids, m;
    cr_assert_eq(lu_bpe_encode(b, text, &ids, &m), LU_OK, "%s", lu_error_message());
    cr_assert_eq(m, n, "'%s': %d ids, want %d", text, m, n);
    for (int i = 0; i < n; i++) cr_assert_eq(ids[i], want[i], "'%s': id %d is %d, want %d", text, i, ids[i], want[i]);
    free(ids);
}

static void assert_round_trip(const lu_bpe *b, const char *text)
{
    int *ids, n;
    cr_assert_eq(lu_bpe_encode(b, text, &ids, &n), LU_OK, "%s", lu_error_message());
    for (int i = 0; i < n; i++) cr_assert_neq(ids[i], lu_bpe_unk_id(b), "'%s': unknown at %d", text, i);
    char *back = lu_bpe_decode(b, ids, n);
    cr_assert_not_null(back);
    cr_assert_str_eq(back, text);
    free(back);
    free(ids);
}

Test(bpe, trainer_learns_the_hand_computed_merges)
{
    lu_bpe *b = train_tiny(10);
    const char *want[10] = {"<unk>", "AB", WB "AB", "BC", WB "BC", WB "ABC", "B", WB, "A", "C"};
    cr_assert_eq(lu_bpe_size(b), 10);
    for (int id = 0; id < 10; id++) cr_assert_str_eq(lu_bpe_piece(b, id), want[id], "id %d", id);
    cr_assert_eq(lu_bpe_type(b, 0), LU_BPE_UNKNOWN);
    cr_assert_eq(lu_bpe_type(b, 5), LU_BPE_NORMAL);
    lu_bpe_free(b);
}

Test(bpe, encoder_applies_merges_by_rank)
{
    /* 8 pieces: <unk> AB ▁AB BC | B ▁ A C. ▁ABC: AB (rank 1) then ▁AB; ▁BC: BC; ▁CAB: AB. */
    lu_bpe *b = train_tiny(8);
    assert_ids(b, "ABC BC CAB", (int[]){2, 7, 5, 3, 5, 7, 1}, 7);
    assert_round_trip(b, "ABC BC CAB");
    lu_bpe_free(b);
}

Test(bpe, vocab_size_is_respected_or_refused)
{
    for (int v = 5; v <= 10; v++) {
        lu_bpe *b = train_tiny(v);
        cr_assert_eq(lu_bpe_size(b), v);
        lu_bpe_free(b);
    }
    lu_bpe_config c = tiny_config(11);
    cr_assert_null(lu_bpe_train(tiny_corpus, 2, &c));
    tu_assert_error_contains("vocab_size 11 is too large: the corpus allows at most 10 pieces");
    c = tiny_config(4);
    cr_assert_null(lu_bpe_train(tiny_corpus, 2, &c));
    tu_assert_error_contains("cannot hold the 1 special pieces and the 4 characters");
}

Test(bpe, unknown_characters_map_to_unk)
{
    lu_bpe *b = train_tiny(8);
    /* ▁ZA: Z has no piece; A stays a character. */
    assert_ids(b, "ZA", (int[]){5, 0, 6}, 3);
    int ids[3] = {5, 0, 6};
    char *s = lu_bpe_decode(b, ids, 3);
    cr_assert_str_eq(s, " \xe2\x81\x87 A"); /* ▁ then " ⁇ ", the first space dropped */
    free(s);
    lu_bpe_free(b);
}

/* A corpus big enough for 256 pieces: pseudo-random upper-case words. */
static char **random_corpus(int n_lines, uint64_t seed)
{
    lu_tensor *r = tu_randint(LU_I64, LU_SHAPE(n_lines, 48), 1000, seed);
    const int64_t *x = lu_tensor_data(r);
    char **lines = malloc(sizeof(char *) * (size_t)n_lines);
    for (int i = 0; i < n_lines; i++) {
        char *l = lines[i] = calloc(128, 1);
        for (int w = 0; w < 8; w++) {
            int len = 2 + (int)(x[i * 48 + w * 6] % 5);
            for (int k = 0; k < len; k++) *l++ = (char)('A' + x[i * 48 + w * 6 + 1 + k] % 26 % (6 + w * 3));
            *l++ = w == 7 ? 0 : ' ';
        }
    }
    lu_tensor_release(r);
    return lines;
}

static void free_lines(char **lines, int n)
{
    for (int i = 0; i < n; i++) free(lines[i]);
    free(lines);
}

Test(bpe, default_config_has_the_asr_id_layout)
{
    char **lines = random_corpus(300, 5);
    lu_bpe_config c = lu_bpe_config_default();
    lu_bpe *b = lu_bpe_train((const char *const *)lines, 300, &c);
    cr_assert_not_null(b, "%s", lu_error_message());
    cr_assert_eq(lu_bpe_size(b), 256);
    cr_assert_str_eq(lu_bpe_piece(b, 0), "@");
    cr_assert_eq(lu_bpe_type(b, 0), LU_BPE_USER);
    cr_assert_str_eq(lu_bpe_piece(b, 1), "<s>");
    cr_assert_str_eq(lu_bpe_piece(b, 2), "</s>");
    cr_assert_str_eq(lu_bpe_piece(b, 126), "<pad>");
    cr_assert_str_eq(lu_bpe_piece(b, 127), "<unk>");
    cr_assert(lu_bpe_bos_id(b) == 1 && lu_bpe_eos_id(b) == 2 && lu_bpe_pad_id(b) == 126 && lu_bpe_unk_id(b) == 127);
    cr_assert_eq(lu_bpe_find(b, "@"), 0);
    cr_assert_eq(lu_bpe_find(b, "no such piece"), -1);
    /* Text never encodes to a special id. */
    for (int i = 0; i < 20; i++) {
        int *ids, n;
        cr_assert_eq(lu_bpe_encode(b, lines[i], &ids, &n), LU_OK);
        for (int k = 0; k < n; k++) cr_assert(ids[k] > 2 && ids[k] != 126 && ids[k] != 127, "line %d id %d", i, ids[k]);
        free(ids);
        assert_round_trip(b, lines[i]);
    }
    lu_bpe_free(b);
    free_lines(lines, 300);
}

Test(bpe, user_symbol_in_text_is_its_own_piece)
{
    char **lines = random_corpus(300, 6);
    lu_bpe_config c = lu_bpe_config_default();
    lu_bpe *b = lu_bpe_train((const char *const *)lines, 300, &c);
    cr_assert_not_null(b);
    int *ids, n;
    cr_assert_eq(lu_bpe_encode(b, "AB@A @", &ids, &n), LU_OK);
    int at = 0;
    for (int k = 0; k < n; k++) at += ids[k] == 0;
    cr_assert_eq(at, 2);
    cr_assert_eq(ids[n - 1], 0);
    cr_assert_str_eq(lu_bpe_piece(b, ids[n - 2]), WB, "a word opening with @ keeps its boundary");
    char *s = lu_bpe_decode(b, ids, n);
    cr_assert_str_eq(s, "AB@A @");
    free(s);
    free(ids);
    lu_bpe_free(b);
    free_lines(lines, 300);
}

Test(bpe, round_trips_french_and_english)
{
    const char *fr[] = {"L'ŒUVRE D'UN ÉLÈVE À NOËL", "ÇA SE PASSE AU CŒUR DE LA FORÊT", "LES ÉLÈVES ET LEURS ŒUVRES"};
    const char *en[] = {"THE QUICK BROWN FOX", "JUMPS OVER THE LAZY DOG'S BACK", "THE DOG SLEEPS"};
    lu_bpe_config c = {.vocab_size = 60, .unk_id = 59, .bos_id = 1, .eos_id = 2, .pad_id = -1, .n_user = 1,
                       .user_symbols = {"@"}};
    lu_bpe *b = lu_bpe_train(fr, 3, &c);
    cr_assert_not_null(b, "%s", lu_error_message());
    for (int i = 0; i < 3; i++) assert_round_trip(b, fr[i]);
    assert_round_trip(b, "ÉLÈVE ŒUVRE");
    lu_bpe_free(b);
    c.vocab_size = 50;
    c.unk_id = 49;
    b = lu_bpe_train(en, 3, &c);
    cr_assert_not_null(b, "%s", lu_error_message());
    for (int i = 0; i < 3; i++) assert_round_trip(b, en[i]);
    lu_bpe_free(b);
}

Test(bpe, encoding_normalises_whitespace_and_nfkc)
{
    lu_bpe *b = train_tiny(10);
    int *a, *z, na, nz;
    /* U+FF21 (fullwidth A) is A after NFKC; spacing does not matter. */
    cr_assert_eq(lu_bpe_encode(b, "  ABC\t\tBC ", &a, &na), LU_OK);
    cr_assert_eq(lu_bpe_encode(b, "\xef\xbc\xa1" "BC BC", &z, &nz), LU_OK);
    cr_assert_eq(na, nz);
    cr_assert_arr_eq(a, z, sizeof(int) * (size_t)na);
    free(a);
    free(z);
    int *e, ne;
    cr_assert_eq(lu_bpe_encode(b, "   ", &e, &ne), LU_OK);
    cr_assert_eq(ne, 0);
    free(e);
    lu_bpe_free(b);
}

Test(bpe, character_token_set)
{
    lu_bpe *b = lu_bpe_chars("ABCÉ'");
    cr_assert_not_null(b);
    cr_assert_eq(lu_bpe_size(b), 8);
    cr_assert_str_eq(lu_bpe_piece(b, 0), "<blk>");
    cr_assert_eq(lu_bpe_type(b, 0), LU_BPE_CONTROL);
    cr_assert_eq(lu_bpe_unk_id(b), 1);
    cr_assert_str_eq(lu_bpe_piece(b, 2), WB);
    cr_assert_str_eq(lu_bpe_piece(b, 6), "É");
    assert_ids(b, "AB C'É", (int[]){2, 3, 4, 2, 5, 7, 6}, 7);
    assert_round_trip(b, "AB C'É");
    lu_bpe_free(b);
}

Test(bpe, decode_drops_control_pieces_and_rejects_bad_ids)
{
    lu_bpe_config c = {.vocab_size = 8, .unk_id = 7, .bos_id = 0, .eos_id = 1, .pad_id = -1};
    lu_bpe *b = lu_bpe_train(tiny_corpus, 2, &c);
    cr_assert_not_null(b, "%s", lu_error_message());
    int *ids, n;
    cr_assert_eq(lu_bpe_encode(b, "AB", &ids, &n), LU_OK);
    int framed[8] = {0};
    memcpy(framed + 1, ids, sizeof(int) * (size_t)n);
    framed[n + 1] = 1;
    char *s = lu_bpe_decode(b, framed, n + 2);
    cr_assert_str_eq(s, "AB");
    free(s);
    free(ids);
    cr_assert_null(lu_bpe_decode(b, (int[]){3, 8}, 2));
    tu_assert_error_contains("id 8 at position 1 is outside [0, 8)");
    lu_bpe_free(b);
}

Test(bpe, rejects_bad_configs)
{
    lu_bpe_config c = tiny_config(10);
    c.bos_id = 0;
    cr_assert_null(lu_bpe_train(tiny_corpus, 2, &c));
    tu_assert_error_contains("bos_id 0 is used twice");
    c = tiny_config(10);
    c.unk_id = 10;
    cr_assert_null(lu_bpe_train(tiny_corpus, 2, &c));
    tu_assert_error_contains("unk_id 10 is outside [0, vocab_size 10)");
    c = tiny_config(10);
    c.n_user = 1;
    c.user_symbols[0] = "@@";
    cr_assert_null(lu_bpe_train(tiny_corpus, 2, &c));
    tu_assert_error_contains("user symbol 0 must be one non-space character");
    const char *bad[] = {"OK", "BAD \xff"};
    c = tiny_config(10);
    cr_assert_null(lu_bpe_train(bad, 2, &c));
    tu_assert_error_contains("line 2: bpe_train: text is not valid UTF-8");
}

static char *temp_path(const char *content)
{
    char *path = strdup("/tmp/lu_test_bpe_XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    if (content) cr_assert_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

Test(bpe, save_and_load_round_trip)
{
    lu_bpe *b = train_tiny(10);
    char *path = temp_path(NULL);
    cr_assert_eq(lu_bpe_save(b, path), LU_OK, "%s", lu_error_message());
    lu_bpe *c = lu_bpe_load(path);
    cr_assert_not_null(c, "%s", lu_error_message());
    cr_assert_eq(lu_bpe_size(c), lu_bpe_size(b));
    for (int id = 0; id < lu_bpe_size(b); id++) {
        cr_assert_str_eq(lu_bpe_piece(c, id), lu_bpe_piece(b, id));
        cr_assert_eq(lu_bpe_type(c, id), lu_bpe_type(b, id));
    }
    /* With all 5 merges: ▁ABC, ▁BC, and ▁ C AB (▁C is no piece). */
    assert_ids(c, "ABC BC CAB", (int[]){5, 4, 7, 9, 1}, 5);
    assert_ids(b, "ABC BC CAB", (int[]){5, 4, 7, 9, 1}, 5);
    lu_bpe_free(c);
    lu_bpe_free(b);
    unlink(path);
    free(path);
}

static void assert_load_fails(const char *content, const char *needle)
{
    char *path = temp_path(content);
    cr_assert_null(lu_bpe_load(path));
    tu_assert_error_contains(needle);
    unlink(path);
    free(path);
}

Test(bpe, load_reports_malformed_files)
{
    cr_assert_null(lu_bpe_load("/nonexistent/bpe.json"));
    tu_assert_error_contains("bpe_load: cannot open /nonexistent/bpe.json");
    assert_load_fails("{not json", "is not a luthier-bpe JSON file");
    assert_load_fails("{\"format\": \"luthier-bpe\", \"pieces\": []}", "non-empty \"pieces\" array");
    assert_load_fails("{\"format\": \"luthier-bpe\", \"pieces\": [{\"piece\": \"A\", \"type\": \"weird\"}]}",
                      "piece 0 needs a string \"piece\" and a \"type\"");
    assert_load_fails("{\"format\": \"luthier-bpe\", \"pieces\": [{\"piece\": \"A\", \"type\": \"normal\"}]}",
                      "no unknown piece");
    assert_load_fails("{\"format\": \"luthier-bpe\", \"pieces\": [{\"piece\": \"<unk>\", \"type\": \"unknown\"},"
                      "{\"piece\": \"A\", \"type\": \"normal\"}, {\"piece\": \"A\", \"type\": \"normal\"}]}",
                      "piece 'A' appears at ids 1 and 2");
}
