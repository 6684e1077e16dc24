/* test_asr_data.c - speech data preparation: manifest parsing and its line-numbered errors, the
 * HDF5 feature store round trip and its temp-then-rename writing, duration buckets (bounded
 * padded frames, every utterance once per epoch, deterministic order), and `luthier data
 * prepare-speech` on the espeak-ng fixture (tests/fixtures/asr, scripts/make_asr_fixtures.sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "experiments/runner/cli.h"
#include "models/asr_data.h"
#include "models/audio.h"
#include "testutil.h"

#include <criterion/redirect.h>

#define FIXTURE "tests/fixtures/asr/manifest.jsonl"

static char dir[64];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/lu_asr_data_XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(asr_data, .init = setup, .fini = teardown, .timeout = 60);

/* Writes text to dir/name and returns the path (static buffer). */
static const char *write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    return path;
}

Test(asr_data, manifest_reads_fields_and_resolves_relative_paths)
{
    lu_asr_manifest m;
    cr_assert_eq(lu_asr_manifest_read(FIXTURE, &m), LU_OK, "%s", lu_error_message());
    cr_assert_eq(m.n, 6);
    cr_assert_str_eq(m.utts[0].audio, "tests/fixtures/asr/utt1.wav");
    cr_assert_str_eq(m.utts[2].text, "go left");
    cr_assert_str_eq(m.utts[5].speaker, "espeak-en-us");
    cr_assert_float_eq(m.utts[0].duration, 0.709, 1e-12);
    cr_assert_eq(m.utts[3].line, 4);
    lu_asr_manifest_free(&m);
}

Test(asr_data, manifest_skips_blank_lines_and_defaults_the_speaker)
{
    const char *p = write_file("m.jsonl", "\n{\"audio\": \"/a.wav\", \"text\": \"hi\", \"duration\": 1.5}\n\n");
    lu_asr_manifest m;
    cr_assert_eq(lu_asr_manifest_read(p, &m), LU_OK, "%s", lu_error_message());
    cr_assert_eq(m.n, 1);
    cr_assert_str_eq(m.utts[0].audio, "/a.wav");
    cr_assert_str_eq(m.utts[0].speaker, "");
    cr_assert_eq(m.utts[0].line, 2);
    lu_asr_manifest_free(&m);
}

static void assert_manifest_error(const char *text, const char *needle)
{
    const char *p = write_file("bad.jsonl", text);
    lu_asr_manifest m;
    cr_assert_eq(lu_asr_manifest_read(p, &m), LU_ERR_FORMAT, "accepted:\n%s", text);
    cr_assert_eq(m.n, 0);
    tu_assert_error_contains(needle);
}

Test(asr_data, manifest_errors_name_the_line)
{
    const char *ok = "{\"audio\": \"a.wav\", \"text\": \"x\", \"duration\": 1}\n";
    char text[512];
    snprintf(text, sizeof text, "%s%s{\"audio\": \"b.wav\", \"text\": \"y\", \"duration\" 2}\n", ok, ok);
    assert_manifest_error(text, "bad.jsonl:3: not a JSON object");
    snprintf(text, sizeof text, "%s{\"audio\": \"b.wav\", \"text\": \"y\"}\n", ok);
    assert_manifest_error(text, "bad.jsonl:2: \"duration\" must be a positive number");
    snprintf(text, sizeof text, "%s{\"audio\": \"b.wav\", \"text\": \"y\", \"duration\": 0}\n", ok);
    assert_manifest_error(text, "bad.jsonl:2: \"duration\"");
    assert_manifest_error("{\"audio\": \"b.wav\", \"text\": 5, \"duration\": 1}\n", "bad.jsonl:1: \"text\" must be a string");
    assert_manifest_error("{\"text\": \"y\", \"duration\": 1}\n", "bad.jsonl:1: \"audio\"");
    assert_manifest_error("[1, 2]\n", "bad.jsonl:1: not a JSON object");
    assert_manifest_error("{\"audio\": \"b.wav\", \"text\": \"y\", \"duration\": 1, \"speaker\": 3}\n", "\"speaker\" must be a string");
}

Test(asr_data, empty_or_missing_manifest_is_an_error)
{
    assert_manifest_error("\n\n", "no utterances");
    lu_asr_manifest m;
    cr_assert_eq(lu_asr_manifest_read("/nonexistent/m.jsonl", &m), LU_ERR_IO);
    tu_assert_error_contains("/nonexistent/m.jsonl");
}

Test(asr_data, store_round_trip_is_exact)
{
    char path[128];
    snprintf(path, sizeof path, "%s/s.h5", dir);
    enum { D = 5 };
    const int64_t frames[] = {3, 1, 7};
    const char *text[] = {"bonjour é œ", "", "HELLO WORLD"};
    float data[3][7 * D];
    for (int u = 0; u < 3; u++)
        for (int i = 0; i < frames[u] * D; i++) data[u][i] = (float)(u * 100 + i) * 0.37f - 3.0f;
    lu_asr_store_writer *w = lu_asr_store_writer_open(path, "fbank", 16000, D);
    cr_assert(w, "%s", lu_error_message());
    for (int u = 0; u < 3; u++)
        cr_assert_eq(lu_asr_store_writer_add(w, data[u], frames[u], text[u], u == 1 ? NULL : "spk", 0.5 + u), LU_OK);
    cr_assert_eq(lu_asr_store_writer_close(w, true), LU_OK, "%s", lu_error_message());
    lu_asr_store s;
    cr_assert_eq(lu_asr_store_open(path, &s), LU_OK, "%s", lu_error_message());
    cr_assert_eq(s.n, 3);
    cr_assert_eq(s.dim, D);
    cr_assert_eq(s.sample_rate, 16000);
    cr_assert_str_eq(s.features, "fbank");
    for (int u = 0; u < 3; u++) {
        cr_assert_eq(lu_asr_store_frames(&s, u), frames[u]);
        cr_assert_str_eq(s.text[u], text[u]);
        cr_assert_str_eq(s.speaker[u], u == 1 ? "" : "spk");
        cr_assert_float_eq(s.duration[u], 0.5 + u, 0);
        float got[7 * D];
        cr_assert_eq(lu_asr_store_read(&s, u, got), LU_OK);
        cr_assert(!memcmp(got, data[u], (size_t)(frames[u] * D) * sizeof(float)), "utterance %d differs", u);
    }
    cr_assert_neq(lu_asr_store_read(&s, 3, data[0]), LU_OK);
    tu_assert_error_contains("out of range");
    lu_asr_store_close(&s);
}

Test(asr_data, aborted_store_leaves_no_file)
{
    char path[128], tmp[160];
    snprintf(path, sizeof path, "%s/s.h5", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    float x[4] = {1, 2, 3, 4};
    lu_asr_store_writer *w = lu_asr_store_writer_open(path, "fbank", 16000, 2);
    cr_assert(w);
    cr_assert_eq(access(tmp, F_OK), 0, "the store is written under a temporary name first");
    cr_assert_eq(access(path, F_OK), -1);
    cr_assert_eq(lu_asr_store_writer_add(w, x, 2, "a", "", 1.0), LU_OK);
    cr_assert_eq(lu_asr_store_writer_close(w, false), LU_OK);
    cr_assert_eq(access(path, F_OK), -1);
    cr_assert_eq(access(tmp, F_OK), -1);
}

Test(asr_data, opening_a_missing_store_names_it)
{
    lu_asr_store s;
    cr_assert_eq(lu_asr_store_open("/nonexistent/feats.h5", &s), LU_ERR_IO);
    tu_assert_error_contains("/nonexistent/feats.h5");
}

/* Pseudo-random lengths in [1, 300]. */
static void lengths(int64_t *f, int64_t n)
{
    for (int64_t i = 0; i < n; i++) f[i] = 1 + (i * 7919 + 13) % 300;
}

Test(asr_data, buckets_bound_padded_frames_and_sort_by_length)
{
    enum { N = 257 };
    int64_t f[N];
    lengths(f, N);
    lu_asr_buckets b;
    cr_assert_eq(lu_asr_buckets_make(f, N, 1000, 5, &b), LU_OK);
    for (int64_t k = 0; k < b.n_batches; k++) {
        int64_t count = b.start[k + 1] - b.start[k], longest = 0;
        cr_assert_gt(count, 0);
        for (int64_t j = b.start[k]; j < b.start[k + 1]; j++) longest = f[b.order[j]] > longest ? f[b.order[j]] : longest;
        cr_assert_leq(count * longest, 1000, "batch %lld: %lld x %lld frames", (long long)k, (long long)count, (long long)longest);
    }
    for (int64_t j = 1; j < N; j++) cr_assert_leq(f[b.order[j - 1]], f[b.order[j]]);
    lu_asr_buckets_free(&b);
}

Test(asr_data, buckets_give_every_utterance_once_per_epoch_in_a_seeded_order)
{
    enum { N = 101 };
    int64_t f[N];
    lengths(f, N);
    lu_asr_buckets a, b;
    cr_assert_eq(lu_asr_buckets_make(f, N, 900, 11, &a), LU_OK);
    cr_assert_eq(lu_asr_buckets_make(f, N, 900, 11, &b), LU_OK);
    int64_t nb = a.n_batches;
    int first_of[3] = {0};
    for (int epoch = 0; epoch < 3; epoch++) {
        int seen[N] = {0};
        for (int64_t k = 0; k < nb; k++) {
            const int64_t *ids, *ids2;
            int64_t n, n2;
            /* b visits positions backwards: the batch at a position does not depend on history. */
            lu_asr_buckets_at(&a, epoch * nb + k, &ids, &n);
            lu_asr_buckets_at(&b, (2 - epoch) * nb + (nb - 1 - k), &ids2, &n2);
            lu_asr_buckets_at(&b, epoch * nb + k, &ids2, &n2);
            cr_assert_eq(n, n2);
            cr_assert(!memcmp(ids, ids2, (size_t)n * sizeof *ids), "epoch %d batch %lld differs", epoch, (long long)k);
            for (int64_t j = 0; j < n; j++) seen[ids[j]]++;
            if (k == 0) first_of[epoch] = (int)(ids - a.order);
        }
        for (int i = 0; i < N; i++) cr_assert_eq(seen[i], 1, "epoch %d: utterance %d seen %d times", epoch, i, seen[i]);
    }
    cr_assert(first_of[0] != first_of[1] || first_of[1] != first_of[2], "the batch order does not change across epochs");
    lu_asr_buckets_free(&a);
    lu_asr_buckets_free(&b);
}

Test(asr_data, an_utterance_longer_than_the_bound_is_a_batch_of_its_own)
{
    int64_t f[] = {10, 500, 20, 30};
    lu_asr_buckets b;
    cr_assert_eq(lu_asr_buckets_make(f, 4, 100, 1, &b), LU_OK);
    cr_assert_eq(b.n_batches, 2);
    cr_assert_eq(b.order[3], 1);
    cr_assert_eq(b.start[1], 3, "10, 20, 30 pad to 3 x 30 = 90 <= 100");
    lu_asr_buckets_free(&b);
    cr_assert_neq(lu_asr_buckets_make(f, 4, 0, 1, &b), LU_OK);
    tu_assert_error_contains("max_frames");
}

static int prepare(const char *manifest, const char *out, bool skip_bad)
{
    char *argv[] = {"prepare-speech", "--manifest", (char *)manifest, "--out", (char *)out, "--features", "fbank",
                    skip_bad ? "--skip-bad" : NULL, NULL};
    return lu_data_prepare_speech(skip_bad ? 8 : 7, argv);
}

Test(asr_data, prepare_speech_stores_fbank_frames_of_every_utterance)
{
    char out[128];
    snprintf(out, sizeof out, "%s/feats.h5", dir);
    cr_assert_eq(prepare(FIXTURE, out, false), 0);
    lu_asr_store s;
    cr_assert_eq(lu_asr_store_open(out, &s), LU_OK, "%s", lu_error_message());
    cr_assert_eq(s.n, 6);
    cr_assert_eq(s.dim, 80);
    cr_assert_str_eq(s.text[4], "go right");
    lu_asr_manifest m;
    cr_assert_eq(lu_asr_manifest_read(FIXTURE, &m), LU_OK);
    for (int i = 0; i < 6; i++) {
        lu_audio a;
        cr_assert_eq(lu_audio_read(m.utts[i].audio, 16000, 0, &a), LU_OK);
        /* Kaldi snip_edges framing at 16 kHz: 400-sample window, 160-sample shift. */
        cr_assert_eq(lu_asr_store_frames(&s, i), 1 + (a.n - 400) / 160, "utterance %d", i);
        cr_assert_float_eq(s.duration[i], (double)a.n / 16000, 1e-9);
        lu_audio_free(&a);
    }
    lu_asr_manifest_free(&m);
    lu_asr_store_close(&s);
}

Test(asr_data, prepare_speech_names_the_line_of_unreadable_audio)
{
    char out[128], manifest[256];
    snprintf(out, sizeof out, "%s/feats.h5", dir);
    char text[512];
    snprintf(text, sizeof text,
             "{\"audio\": \"%s/tests/fixtures/asr/utt1.wav\", \"text\": \"yes\", \"duration\": 0.7}\n"
             "{\"audio\": \"missing.wav\", \"text\": \"no\", \"duration\": 0.7}\n",
             getcwd(manifest, sizeof manifest));
    snprintf(manifest, sizeof manifest, "%s", write_file("m.jsonl", text));
    cr_redirect_stderr();
    cr_assert_eq(prepare(manifest, out, false), 1);
    cr_assert_eq(access(out, F_OK), -1, "a failed preparation writes nothing");
    cr_assert_eq(prepare(manifest, out, true), 0);
    lu_asr_store s;
    cr_assert_eq(lu_asr_store_open(out, &s), LU_OK, "%s", lu_error_message());
    cr_assert_eq(s.n, 1);
    lu_asr_store_close(&s);
    fflush(stderr);
    char log[2048] = {0};
    fread(log, 1, sizeof log - 1, cr_get_redirected_stderr());
    cr_assert(strstr(log, "m.jsonl:2: ") && strstr(log, "missing.wav") && strstr(log, "(skipped)"), "stderr:\n%s", log);
}

Test(asr_data, prepare_speech_rejects_bad_options)
{
    cr_redirect_stderr();
    char *a1[] = {"prepare-speech", "--manifest", FIXTURE, NULL};
    cr_assert_eq(lu_data_prepare_speech(3, a1), 2);
    char *a2[] = {"prepare-speech", "--manifest", FIXTURE, "--out", "x.h5", "--features", "mfcc", NULL};
    cr_assert_eq(lu_data_prepare_speech(7, a2), 2);
}
