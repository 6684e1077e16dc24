/* test_features.c - Kaldi fbank and the torchaudio mel front end against torchaudio references
 * (scripts/make_feature_fixtures.py), SpecAugment masks, and the `luthier features` verb. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/audio.h"
#include "models/features.h"
#include "tests/testutil.h"

#define FIX "tests/fixtures/features/"

static lu_tensor *load_ref(const char *name) { return tu_load_fixture(FIX "refs.safetensors", name, LU_F32); }

static lu_audio read_16k(const char *path)
{
    lu_audio a;
    cr_assert_eq(lu_audio_read(path, 16000, 0, &a), LU_OK, "%s", lu_error_message());
    return a;
}

static void assert_shape(const lu_tensor *t, int64_t rows, int64_t cols, const char *what)
{
    cr_assert_not_null(t, "%s: %s", what, lu_error_message());
    cr_assert_eq(t->ndim, 2, "%s: rank %d", what, t->ndim);
    cr_assert(t->shape[0] == rows && t->shape[1] == cols, "%s: [%lld, %lld], want [%lld, %lld]", what,
              (long long)t->shape[0], (long long)t->shape[1], (long long)rows, (long long)cols);
    cr_assert_eq(t->dtype, LU_F32);
}

/* Features of `audio` against reference `ref_name`: |got - ref| <= atol + rtol |ref|, with atol
 * given relative to the reference's largest magnitude when rel_to_max is set (power spectra
 * span many decades; float32 FFT error scales with the frame's energy, not the bin's). */
static void check_against(lu_tensor *got, const char *ref_name, double atol, double rtol, bool rel_to_max)
{
    lu_tensor *ref = load_ref(ref_name);
    assert_shape(got, ref->shape[0], ref->shape[1], ref_name);
    if (rel_to_max) {
        double m = 0;
        const float *r = lu_tensor_data(ref);
        for (int64_t i = 0; i < lu_tensor_numel(ref); i++) m = fmax(m, fabs(r[i]));
        atol *= m;
    }
    tu_assert_tensors_close(got, ref, atol, rtol, ref_name);
    lu_tensor_release(ref);
}

/* ---- Kaldi fbank ---------------------------------------------------------------------------- */

Test(fbank, matches_torchaudio_kaldi_on_a_chirp)
{
    lu_audio a = read_16k(FIX "chirp16k.wav");
    lu_fbank_opts o = lu_fbank_defaults();
    lu_tensor *f = lu_fbank(a.samples, a.n, &o);
    check_against(f, "chirp_fbank", 1e-3, 0, false);
    lu_tensor_release(f);
    lu_audio_free(&a);
}

Test(fbank, matches_torchaudio_kaldi_on_speech)
{
    lu_audio a = read_16k(FIX "speech16k.wav");
    lu_fbank_opts o = lu_fbank_defaults();
    lu_tensor *f = lu_fbank(a.samples, a.n, &o);
    check_against(f, "speech_fbank", 1e-3, 0, false);
    lu_tensor_release(f);
    lu_audio_free(&a);
}

Test(fbank, matches_torchaudio_float32_run_on_speech)
{
    lu_audio a = read_16k(FIX "speech16k.wav");
    lu_fbank_opts o = lu_fbank_defaults();
    lu_tensor *f = lu_fbank(a.samples, a.n, &o);
    check_against(f, "speech_fbank_f32", 1e-3, 0, false);
    lu_tensor_release(f);
    lu_audio_free(&a);
}

Test(fbank, unit_scale_matches_torchaudio_on_samples_in_unit_range)
{
    lu_audio a = read_16k(FIX "chirp16k.wav");
    lu_fbank_opts o = lu_fbank_defaults();
    o.scale = 1;
    lu_tensor *f = lu_fbank(a.samples, a.n, &o);
    check_against(f, "chirp_fbank_unit", 1e-3, 0, false);
    lu_tensor_release(f);
    lu_audio_free(&a);
}

Test(fbank, unit_scale_shifts_log_energies_by_log_32768_squared)
{
    /* Every step before the log is linear in the samples and the energy is quadratic, so the
     * two scales differ by exactly 2 ln 32768 wherever no energy hits the floor. */
    lu_audio a = read_16k(FIX "chirp16k.wav");
    lu_fbank_opts o = lu_fbank_defaults();
    lu_tensor *k = lu_fbank(a.samples, a.n, &o);
    o.scale = 1;
    lu_tensor *u = lu_fbank(a.samples, a.n, &o);
    const float *kk = lu_tensor_data(k), *uu = lu_tensor_data(u);
    for (int64_t i = 0; i < lu_tensor_numel(k); i++)
        cr_assert(fabs(kk[i] - uu[i] - 2 * log(32768.0)) < 1e-4, "element %lld: %g vs %g", (long long)i, kk[i], uu[i]);
    lu_tensor_release(k);
    lu_tensor_release(u);
    lu_audio_free(&a);
}

Test(fbank, frame_count_follows_snip_edges)
{
    float x[1200] = {0};
    lu_fbank_opts o = lu_fbank_defaults();
    int64_t ns[] = {400, 559, 560, 1200}, want[] = {1, 1, 2, 6};
    for (int i = 0; i < 4; i++) {
        lu_tensor *f = lu_fbank(x, ns[i], &o);
        assert_shape(f, want[i], 80, "fbank frames");
        lu_tensor_release(f);
    }
}

Test(fbank, silence_gives_log_of_float_epsilon)
{
    float x[800] = {0};
    lu_fbank_opts o = lu_fbank_defaults();
    lu_tensor *f = lu_fbank(x, 800, &o);
    assert_shape(f, 3, 80, "silence");
    const float *y = lu_tensor_data(f);
    for (int i = 0; i < 240; i++) cr_assert_float_eq(y[i], (float)log(FLT_EPSILON), 1e-6);
    lu_tensor_release(f);
}

Test(fbank, audio_shorter_than_a_window_is_an_error)
{
    float x[399] = {0};
    lu_fbank_opts o = lu_fbank_defaults();
    cr_assert_null(lu_fbank(x, 399, &o));
    tu_assert_error_contains("399 samples are fewer than one 400-sample window");
}

Test(fbank, invalid_options_are_rejected)
{
    float x[1000] = {0};
    lu_fbank_opts o = lu_fbank_defaults();
    o.num_mel_bins = 0;
    cr_assert_null(lu_fbank(x, 1000, &o));
    tu_assert_error_contains("num_mel_bins 0");
    o = lu_fbank_defaults();
    o.low_freq = 9000;
    cr_assert_null(lu_fbank(x, 1000, &o));
    tu_assert_error_contains("low_freq (9000)");
    o = lu_fbank_defaults();
    o.num_mel_bins = 300;
    cr_assert_null(lu_fbank(x, 1000, &o));
    tu_assert_error_contains("300 mel bins exceed the 257 FFT bins");
}

/* ---- torchaudio mel spectrogram ------------------------------------------------------------- */

Test(mel, power_matches_torchaudio_on_a_chirp)
{
    lu_audio a = read_16k(FIX "chirp16k.wav");
    lu_mel_opts o = lu_mel_defaults();
    lu_tensor *m = lu_mel_spectrogram(a.samples, a.n, &o);
    check_against(m, "chirp_mel", 1e-6, 1e-3, true);
    lu_tensor_release(m);
    lu_audio_free(&a);
}

Test(mel, power_matches_torchaudio_on_speech)
{
    lu_audio a = read_16k(FIX "speech16k.wav");
    lu_mel_opts o = lu_mel_defaults();
    lu_tensor *m = lu_mel_spectrogram(a.samples, a.n, &o);
    check_against(m, "speech_mel", 1e-6, 1e-3, true);
    lu_tensor_release(m);
    lu_audio_free(&a);
}

Test(mel, power_matches_torchaudio_float32_run_on_speech)
{
    lu_audio a = read_16k(FIX "speech16k.wav");
    lu_mel_opts o = lu_mel_defaults();
    lu_tensor *m = lu_mel_spectrogram(a.samples, a.n, &o);
    check_against(m, "speech_mel_f32", 1e-6, 1e-3, true);
    lu_tensor_release(m);
    lu_audio_free(&a);
}

Test(mel, log_matches_torchaudio_log_with_offset)
{
    lu_audio a = read_16k(FIX "chirp16k.wav");
    lu_mel_opts o = lu_mel_defaults();
    o.log = true;
    lu_tensor *m = lu_mel_spectrogram(a.samples, a.n, &o);
    check_against(m, "chirp_logmel", 1e-3, 0, false);
    lu_tensor_release(m);
    lu_audio_free(&a);
}

Test(mel, other_parameters_match_torchaudio)
{
    lu_audio a = read_16k(FIX "chirp16k.wav");
    lu_mel_opts o = lu_mel_defaults();
    o.n_fft = 512;
    o.win_length = 400;
    o.hop_length = 128;
    o.n_mels = 40;
    lu_tensor *m = lu_mel_spectrogram(a.samples, a.n, &o);
    check_against(m, "chirp_mel_small", 1e-6, 1e-3, true);
    lu_tensor_release(m);
    lu_audio_free(&a);
}

Test(mel, frame_count_is_one_plus_n_over_hop)
{
    float x[2000] = {0};
    lu_mel_opts o = lu_mel_defaults();
    int64_t ns[] = {513, 640, 2000}, want[] = {4, 5, 13};
    for (int i = 0; i < 3; i++) {
        lu_tensor *m = lu_mel_spectrogram(x, ns[i], &o);
        assert_shape(m, want[i], 80, "mel frames");
        lu_tensor_release(m);
    }
}

Test(mel, sine_energy_peaks_in_the_band_of_its_frequency)
{
    /* Independent of torchaudio: a 1 kHz tone peaks in the HTK mel band whose centre is
     * nearest 1 kHz; centres are 700 (10^(m / 2595) - 1) for m equally spaced to mel(8000). */
    float x[4000];
    for (int i = 0; i < 4000; i++) x[i] = (float)(0.5 * sin(2 * M_PI * 1000.0 * i / 16000));
    lu_mel_opts o = lu_mel_defaults();
    lu_tensor *m = lu_mel_spectrogram(x, 4000, &o);
    cr_assert_not_null(m);
    const float *y = (const float *)lu_tensor_data(m) + 10 * 80;
    int best = 0;
    for (int k = 1; k < 80; k++)
        if (y[k] > y[best]) best = k;
    double mel_max = 2595 * log10(1 + 8000.0 / 700), nearest = 1e9;
    int want = -1;
    for (int k = 0; k < 80; k++) {
        double centre = 700 * (pow(10, mel_max * (k + 1) / 81 / 2595) - 1);
        if (fabs(centre - 1000) < nearest) {
            nearest = fabs(centre - 1000);
            want = k;
        }
    }
    cr_assert_eq(best, want, "1 kHz peaks in band %d, expected %d", best, want);
    lu_tensor_release(m);
}

Test(mel, too_short_for_reflect_padding_is_an_error)
{
    float x[512] = {0};
    lu_mel_opts o = lu_mel_defaults();
    cr_assert_null(lu_mel_spectrogram(x, 512, &o));
    tu_assert_error_contains("512 samples are too few for reflect padding of 512");
}

Test(mel, invalid_options_are_rejected)
{
    float x[2000] = {0};
    lu_mel_opts o = lu_mel_defaults();
    o.win_length = 2048;
    cr_assert_null(lu_mel_spectrogram(x, 2000, &o));
    tu_assert_error_contains("win_length 2048");
    o = lu_mel_defaults();
    o.f_max = 9000;
    cr_assert_null(lu_mel_spectrogram(x, 2000, &o));
    tu_assert_error_contains("f_max (9000)");
    o = lu_mel_defaults();
    o.log = true;
    o.log_offset = 0;
    cr_assert_null(lu_mel_spectrogram(x, 2000, &o));
    tu_assert_error_contains("log_offset 0 must be positive");
}

/* ---- SpecAugment ---------------------------------------------------------------------------- */

static lu_tensor *ones(int64_t T, int64_t F) { return lu_tensor_full(LU_F32, LU_SHAPE(T, F), LU_CPU, 1.0); }

Test(specaugment, same_key_gives_the_same_masks)
{
    lu_specaug_opts o = lu_specaug_defaults();
    lu_tensor *a = ones(300, 80), *b = ones(300, 80);
    cr_assert_eq(lu_specaugment(a, &o, 7, 3), LU_OK);
    cr_assert_eq(lu_specaugment(b, &o, 7, 3), LU_OK);
    cr_assert_eq(memcmp(lu_tensor_data(a), lu_tensor_data(b), lu_tensor_nbytes(a)), 0);
    lu_tensor_release(a);
    lu_tensor_release(b);
}

Test(specaugment, different_steps_give_different_masks)
{
    lu_specaug_opts o = lu_specaug_defaults();
    int differ = 0;
    lu_tensor *a = ones(300, 80);
    cr_assert_eq(lu_specaugment(a, &o, 7, 0), LU_OK);
    for (uint64_t step = 1; step <= 4; step++) {
        lu_tensor *b = ones(300, 80);
        cr_assert_eq(lu_specaugment(b, &o, 7, step), LU_OK);
        differ += memcmp(lu_tensor_data(a), lu_tensor_data(b), lu_tensor_nbytes(a)) != 0;
        lu_tensor_release(b);
    }
    cr_assert_geq(differ, 3, "only %d of 4 steps changed the masks", differ);
    lu_tensor_release(a);
}

/* Masked cells of a tensor of ones are exactly those in a fully masked row or column; masked
 * rows and columns number at most count * max width. */
static void check_mask_structure(const lu_tensor *t, const lu_specaug_opts *o, int64_t max_t)
{
    int64_t T = t->shape[0], F = t->shape[1];
    const float *x = lu_tensor_data(t);
    bool row[T], col[F];
    int64_t n_rows = 0, n_cols = 0;
    for (int64_t i = 0; i < T; i++) {
        row[i] = true;
        for (int64_t j = 0; j < F; j++) row[i] &= x[i * F + j] == o->mask_value;
        n_rows += row[i];
    }
    for (int64_t j = 0; j < F; j++) {
        col[j] = true;
        for (int64_t i = 0; i < T; i++) col[j] &= x[i * F + j] == o->mask_value;
        n_cols += col[j];
    }
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < F; j++) {
            float v = x[i * F + j];
            cr_assert(v == 1.0f || v == o->mask_value, "cell (%lld, %lld) = %g", (long long)i, (long long)j, v);
            if (v == o->mask_value)
                cr_assert(row[i] || col[j], "masked cell (%lld, %lld) lies in no masked row or column", (long long)i,
                          (long long)j);
        }
    if (n_rows < T) cr_assert_leq(n_rows, o->n_time_masks * max_t, "%lld masked rows", (long long)n_rows);
    if (n_cols < F) cr_assert_leq(n_cols, o->n_freq_masks * o->max_freq_width, "%lld masked columns", (long long)n_cols);
}

Test(specaugment, masks_stay_within_counts_and_widths)
{
    lu_specaug_opts o = {.n_time_masks = 3, .max_time_width = 20, .max_time_ratio = 1.0, .n_freq_masks = 2,
                         .max_freq_width = 10, .mask_value = -5.0f};
    int masked_any = 0;
    for (uint64_t step = 0; step < 20; step++) {
        lu_tensor *t = ones(97, 80);
        cr_assert_eq(lu_specaugment(t, &o, 11, step), LU_OK);
        check_mask_structure(t, &o, 20);
        const float *x = lu_tensor_data(t);
        for (int64_t i = 0; i < lu_tensor_numel(t); i++) masked_any |= x[i] == -5.0f;
        lu_tensor_release(t);
    }
    cr_assert(masked_any, "20 draws masked nothing");
}

Test(specaugment, time_ratio_caps_the_time_width)
{
    lu_specaug_opts o = {.n_time_masks = 4, .max_time_width = 100, .max_time_ratio = 0.05, .n_freq_masks = 0,
                         .max_freq_width = 0, .mask_value = 0};
    for (uint64_t step = 0; step < 20; step++) {
        lu_tensor *t = ones(60, 8);
        cr_assert_eq(lu_specaugment(t, &o, 5, step), LU_OK);
        check_mask_structure(t, &o, 3); /* floor(0.05 * 60) = 3 frames per mask */
        lu_tensor_release(t);
    }
}

Test(specaugment, no_masks_leave_features_unchanged)
{
    lu_specaug_opts o = {.n_time_masks = 0, .max_time_width = 10, .max_time_ratio = 1, .n_freq_masks = 0,
                         .max_freq_width = 10};
    lu_tensor *t = tu_rand(LU_F32, LU_SHAPE(31, 17), -1, 1, 4), *ref = tu_rand(LU_F32, LU_SHAPE(31, 17), -1, 1, 4);
    cr_assert_eq(lu_specaugment(t, &o, 1, 1), LU_OK);
    cr_assert_eq(memcmp(lu_tensor_data(t), lu_tensor_data(ref), lu_tensor_nbytes(t)), 0);
    lu_tensor_release(t);
    lu_tensor_release(ref);
}

Test(specaugment, rejects_tensors_that_are_not_2d_float32)
{
    lu_specaug_opts o = lu_specaug_defaults();
    lu_tensor *t = lu_tensor_zeros(LU_F32, LU_SHAPE(2, 3, 4), LU_CPU);
    cr_assert_eq(lu_specaugment(t, &o, 1, 1), LU_ERR_SHAPE);
    tu_assert_error_contains("float32 [T, F] tensor, got f32 [2, 3, 4]");
    lu_tensor_release(t);
    o.n_time_masks = -1;
    t = lu_tensor_zeros(LU_F32, LU_SHAPE(5, 4), LU_CPU);
    cr_assert_eq(lu_specaugment(t, &o, 1, 1), LU_ERR_INVALID);
    tu_assert_error_contains("must be >= 0");
    lu_tensor_release(t);
}

/* ---- luthier features ----------------------------------------------------------------------- */

static int run_cli(int argc, const char **argv) { return lu_cli_features(argc, (char **)argv); }

Test(features_cli, fbank_writes_features_and_parameters)
{
    char out[128];
    snprintf(out, sizeof out, "/tmp/luthier_test_features_%d.safetensors", (int)getpid());
    const char *argv[] = {"features", "fbank", "--audio", FIX "chirp16k.flac", "--out", out};
    cr_assert_eq(run_cli(6, argv), 0);
    lu_st_file *f = lu_st_open(out);
    cr_assert(f, "%s", lu_error_message());
    lu_tensor *got = lu_st_load(f, "features", LU_F32);
    cr_assert_str_eq(lu_st_metadata(f, "feature"), "kaldi_fbank");
    cr_assert_str_eq(lu_st_metadata(f, "num_mel_bins"), "80");
    cr_assert_str_eq(lu_st_metadata(f, "input_scale"), "32768");
    check_against(got, "chirp_fbank", 1e-3, 0, false);
    lu_tensor_release(got);
    lu_st_close(f);
    unlink(out);
}

Test(features_cli, mel_log_resamples_8k_input_to_16k)
{
    char out[128];
    snprintf(out, sizeof out, "/tmp/luthier_test_features_mel_%d.safetensors", (int)getpid());
    const char *argv[] = {"features", "mel", "--audio", FIX "tones8k.wav", "--out", out, "--log"};
    cr_assert_eq(run_cli(7, argv), 0);
    lu_st_file *f = lu_st_open(out);
    cr_assert(f, "%s", lu_error_message());
    lu_tensor *got = lu_st_load(f, "features", LU_F32);
    assert_shape(got, 1 + 8000 / 160, 80, "mel of 0.5 s");
    cr_assert_str_eq(lu_st_metadata(f, "orig_sample_rate"), "8000");
    cr_assert_str_eq(lu_st_metadata(f, "sample_rate"), "16000");
    cr_assert_str_eq(lu_st_metadata(f, "log"), "log(x + log_offset)");
    lu_tensor_release(got);
    lu_st_close(f);
    unlink(out);
}

Test(features_cli, usage_errors_exit_2_and_bad_audio_exits_1)
{
    const char *no_out[] = {"features", "fbank", "--audio", FIX "chirp16k.wav"};
    cr_assert_eq(run_cli(4, no_out), 2);
    const char *bad_kind[] = {"features", "mfcc", "--audio", "x", "--out", "y"};
    cr_assert_eq(run_cli(6, bad_kind), 2);
    const char *bad_num[] = {"features", "mel", "--audio", "x", "--out", "y", "--n-fft", "ten"};
    cr_assert_eq(run_cli(8, bad_num), 2);
    const char *fbank_log[] = {"features", "fbank", "--audio", "x", "--out", "y", "--log"};
    cr_assert_eq(run_cli(7, fbank_log), 2);
    const char *missing[] = {"features", "fbank", "--audio", FIX "missing.wav", "--out", "/tmp/luthier_never"};
    cr_assert_eq(run_cli(6, missing), 1);
    cr_assert_neq(access("/tmp/luthier_never", F_OK), 0, "an output was written for a missing input");
}
