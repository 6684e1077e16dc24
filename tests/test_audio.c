/* test_audio.c - reading WAV/FLAC through libsndfile and resampling through libsamplerate,
 * against samples and torchaudio resampling recorded by scripts/make_feature_fixtures.py. */
#include <math.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "models/audio.h"
#include "tests/testutil.h"

#define FIX "tests/fixtures/features/"

static lu_tensor *load_ref(const char *name) { return tu_load_fixture(FIX "refs.safetensors", name, LU_F32); }

static lu_audio read_ok(const char *path, int rate, int channel)
{
    lu_audio a;
    cr_assert_eq(lu_audio_read(path, rate, channel, &a), LU_OK, "%s: %s", path, lu_error_message());
    return a;
}

static void assert_samples_equal(const lu_audio *a, const char *ref_name)
{
    lu_tensor *ref = load_ref(ref_name);
    cr_assert_eq(a->n, lu_tensor_numel(ref), "%s: %lld samples, reference %lld", ref_name, (long long)a->n,
                 (long long)lu_tensor_numel(ref));
    const float *r = lu_tensor_data(ref);
    for (int64_t i = 0; i < a->n; i++)
        cr_assert_eq(a->samples[i], r[i], "%s: sample %lld is %.9g, reference %.9g", ref_name, (long long)i,
                     a->samples[i], r[i]);
    lu_tensor_release(ref);
}

/* 10 log10(sum ref^2 / sum (got - ref)^2) over [from, to). */
static double snr_db(const float *got, const float *ref, int64_t from, int64_t to)
{
    double sig = 0, err = 0;
    for (int64_t i = from; i < to; i++) {
        sig += (double)ref[i] * ref[i];
        err += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
    }
    return 10 * log10(sig / err);
}

/* A temporary file path unique to this process. */
static void tmp_path(char *buf, size_t size, const char *suffix)
{
    snprintf(buf, size, "/tmp/luthier_test_audio_%d%s", (int)getpid(), suffix);
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot create %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

Test(audio, wav_samples_are_int16_over_32768)
{
    lu_audio a = read_ok(FIX "chirp16k.wav", 0, 0);
    cr_assert_eq(a.rate, 16000);
    cr_assert_eq(a.orig_rate, 16000);
    cr_assert_eq(a.channels, 1);
    assert_samples_equal(&a, "chirp_samples");
    lu_audio_free(&a);
}

Test(audio, flac_and_wav_give_identical_samples)
{
    lu_audio w = read_ok(FIX "chirp16k.wav", 0, 0), f = read_ok(FIX "chirp16k.flac", 0, 0);
    cr_assert_eq(w.n, f.n);
    cr_assert_eq(memcmp(w.samples, f.samples, (size_t)w.n * sizeof(float)), 0, "WAV and FLAC samples differ");
    lu_audio_free(&w);
    lu_audio_free(&f);
}

Test(audio, stereo_keeps_channel_0_by_default)
{
    lu_audio a = read_ok(FIX "stereo16k.wav", 0, 0);
    cr_assert_eq(a.channels, 2);
    assert_samples_equal(&a, "stereo_ch0_samples");
    lu_audio_free(&a);
}

Test(audio, stereo_selects_channel_1)
{
    lu_audio a = read_ok(FIX "stereo16k.wav", 0, 1);
    assert_samples_equal(&a, "stereo_ch1_samples");
    lu_audio_free(&a);
}

Test(audio, stereo_mix_averages_the_channels)
{
    lu_audio a = read_ok(FIX "stereo16k.wav", 0, LU_AUDIO_MIX);
    lu_tensor *c0 = load_ref("stereo_ch0_samples"), *c1 = load_ref("stereo_ch1_samples");
    double ref[4800];
    cr_assert_eq(a.n, 4800);
    for (int i = 0; i < 4800; i++)
        ref[i] = 0.5 * ((double)((float *)lu_tensor_data(c0))[i] + ((float *)lu_tensor_data(c1))[i]);
    lu_tensor *got = lu_tensor_from_host(LU_F32, LU_SHAPE(a.n), LU_CPU, a.samples);
    tu_assert_close(got, ref, a.n, 1e-7, 0, "mixed channels");
    lu_tensor_release(got);
    lu_tensor_release(c0);
    lu_tensor_release(c1);
    lu_audio_free(&a);
}

Test(audio, channel_beyond_the_file_is_an_error)
{
    lu_audio a;
    cr_assert_eq(lu_audio_read(FIX "stereo16k.wav", 0, 2, &a), LU_ERR_INVALID);
    tu_assert_error_contains("channel 2 requested but the file has 2 channel(s)");
    cr_assert_null(a.samples);
}

Test(audio, resample_8k_to_16k_matches_torchaudio_above_40db)
{
    lu_audio a = read_ok(FIX "tones8k.wav", 16000, 0);
    lu_tensor *ref = load_ref("tones8k_resampled");
    cr_assert_eq(a.orig_rate, 8000);
    cr_assert_eq(a.rate, 16000);
    cr_assert_eq(a.n, lu_tensor_numel(ref), "resampled length %lld, torchaudio %lld", (long long)a.n,
                 (long long)lu_tensor_numel(ref));
    /* Two different sinc designs (libsamplerate's best vs torchaudio's 6-zero Hann-windowed):
     * their passbands agree to far better than 1% on a signal below 3 kHz. */
    double snr = snr_db(a.samples, lu_tensor_data(ref), 0, a.n);
    cr_assert_gt(snr, 40.0, "SNR against torchaudio.functional.resample is %.1f dB", snr);
    lu_tensor_release(ref);
    lu_audio_free(&a);
}

Test(audio, resampled_sine_matches_the_analytic_sine)
{
    /* 1 kHz at 8 kHz -> 16 kHz must equal the 1 kHz sine sampled at 16 kHz (away from the
     * edges, where the sinc filter sees the zeros outside the signal). */
    int n = 4000;
    float *x = malloc(sizeof(float) * (size_t)n), *y;
    int64_t ny;
    for (int i = 0; i < n; i++) x[i] = (float)(0.5 * sin(2 * M_PI * 1000.0 * i / 8000));
    cr_assert_eq(lu_audio_resample(x, n, 8000, 16000, &y, &ny), LU_OK, "%s", lu_error_message());
    cr_assert_eq(ny, 8000);
    float *ref = malloc(sizeof(float) * (size_t)ny);
    for (int64_t i = 0; i < ny; i++) ref[i] = (float)(0.5 * sin(2 * M_PI * 1000.0 * (double)i / 16000));
    double snr = snr_db(y, ref, 1000, ny - 1000);
    cr_assert_gt(snr, 80.0, "SNR against the analytic sine is %.1f dB", snr);
    free(x);
    free(y);
    free(ref);
}

Test(audio, resample_length_is_ceil_of_n_times_ratio)
{
    float x[1001] = {0};
    struct { int from, to; int64_t want; } cases[] = {{8000, 16000, 2002}, {16000, 8000, 501}, {44100, 16000, 364},
                                                      {22050, 16000, 727}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        float *y;
        int64_t ny;
        cr_assert_eq(lu_audio_resample(x, 1001, cases[c].from, cases[c].to, &y, &ny), LU_OK, "%s", lu_error_message());
        cr_assert_eq(ny, cases[c].want, "%d -> %d: %lld samples, want %lld", cases[c].from, cases[c].to, (long long)ny,
                     (long long)cases[c].want);
        free(y);
    }
}

Test(audio, resample_at_equal_rates_copies)
{
    float x[5] = {0.1f, -0.2f, 0.3f, 0.4f, -0.5f}, *y;
    int64_t ny;
    cr_assert_eq(lu_audio_resample(x, 5, 16000, 16000, &y, &ny), LU_OK);
    cr_assert_eq(ny, 5);
    cr_assert_eq(memcmp(x, y, sizeof x), 0);
    free(y);
}

Test(audio, resample_rejects_bad_rates_and_empty_input)
{
    float x[4] = {0}, *y;
    int64_t ny;
    cr_assert_eq(lu_audio_resample(x, 4, 0, 16000, &y, &ny), LU_ERR_INVALID);
    tu_assert_error_contains("rates must be positive, got 0 -> 16000 Hz");
    cr_assert_eq(lu_audio_resample(x, 0, 8000, 16000, &y, &ny), LU_ERR_INVALID);
    tu_assert_error_contains("no input samples");
}

Test(audio, missing_file_names_the_path)
{
    lu_audio a;
    cr_assert_eq(lu_audio_read("tests/fixtures/features/no_such.wav", 16000, 0, &a), LU_ERR_IO);
    tu_assert_error_contains("no_such.wav");
    tu_assert_error_contains("No such file");
}

Test(audio, directory_is_an_error)
{
    lu_audio a;
    cr_assert_eq(lu_audio_read(FIX, 16000, 0, &a), LU_ERR_IO);
    tu_assert_error_contains("is a directory");
}

Test(audio, garbage_with_a_wav_name_is_a_format_error)
{
    char path[128];
    tmp_path(path, sizeof path, "_garbage.wav");
    unsigned char junk[300];
    for (int i = 0; i < 300; i++) junk[i] = (unsigned char)(i * 37 + 11);
    write_bytes(path, junk, sizeof junk);
    lu_audio a;
    lu_status s = lu_audio_read(path, 16000, 0, &a);
    unlink(path);
    cr_assert_eq(s, LU_ERR_FORMAT, "status %s: %s", lu_status_name(s), lu_error_message());
    tu_assert_error_contains("_garbage.wav");
    tu_assert_error_contains("libsndfile:");
}

Test(audio, wav_with_zero_frames_is_an_error)
{
    char path[128];
    tmp_path(path, sizeof path, "_empty.wav");
    SF_INFO info = {.samplerate = 16000, .channels = 1, .format = SF_FORMAT_WAV | SF_FORMAT_PCM_16};
    SNDFILE *f = sf_open(path, SFM_WRITE, &info);
    cr_assert(f, "cannot write %s: %s", path, sf_strerror(NULL));
    sf_close(f);
    lu_audio a;
    lu_status s = lu_audio_read(path, 16000, 0, &a);
    unlink(path);
    cr_assert_eq(s, LU_ERR_FORMAT);
    tu_assert_error_contains("contains no samples");
    tu_assert_error_contains("_empty.wav");
}

Test(audio, truncated_flac_is_an_error)
{
    FILE *f = fopen(FIX "chirp16k.flac", "rb");
    cr_assert(f);
    unsigned char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert_eq(n, sizeof buf, "fixture smaller than expected");
    char path[128];
    tmp_path(path, sizeof path, "_cut.flac");
    write_bytes(path, buf, n);
    lu_audio a;
    lu_status s = lu_audio_read(path, 16000, 0, &a);
    unlink(path);
    cr_assert_eq(s, LU_ERR_FORMAT, "status %s: %s", lu_status_name(s), lu_error_message());
    tu_assert_error_contains("truncated or corrupt");
}

Test(audio, invalid_arguments_are_rejected)
{
    lu_audio a;
    cr_assert_eq(lu_audio_read(FIX "chirp16k.wav", -8000, 0, &a), LU_ERR_INVALID);
    tu_assert_error_contains("target rate -8000 Hz is negative");
    cr_assert_eq(lu_audio_read(FIX "chirp16k.wav", 16000, -3, &a), LU_ERR_INVALID);
    tu_assert_error_contains("channel -3 is invalid");
}
