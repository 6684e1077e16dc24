/* cli_features.c - `luthier features fbank|mel`: speech features of one audio file, saved as
 * safetensors (`features` [T, n_mels] float32, the parameters in the metadata). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/audio.h"
#include "models/features.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: luthier features fbank --audio FILE --out OUT.safetensors [--sample-rate HZ] [--unit-scale]\n"
            "       luthier features mel --audio FILE --out OUT.safetensors [--sample-rate HZ] [--n-fft N]\n"
            "                            [--win-length N] [--hop-length N] [--n-mels N] [--log]\n"
            "\n"
            "fbank: Kaldi log-mel filterbank as torchaudio.compliance.kaldi.fbank (80 bins, dither 0,\n"
            "       25 ms povey window, 10 ms shift, pre-emphasis 0.97, DC removal, snip_edges).\n"
            "mel:   power mel spectrogram as torchaudio Spectrogram + MelScale (Hann window, centred\n"
            "       with reflect padding, HTK mels from 0 Hz to sample_rate / 2, no normalisation).\n"
            "\n"
            "  --audio FILE       WAV, FLAC or any format libsndfile reads; channel 0 of multi-channel files\n"
            "  --out FILE         output safetensors: `features` [T, n_mels] float32 + parameters as metadata\n"
            "  --sample-rate HZ   rate the audio is resampled to before analysis (default 16000)\n"
            "  --unit-scale       fbank on samples in [-1, 1] (lhotse/icefall) instead of 16-bit integer scale\n"
            "  --n-fft N          FFT size (default 1024)\n"
            "  --win-length N     Hann window length in samples (default 320)\n"
            "  --hop-length N     frame shift in samples (default 160)\n"
            "  --n-mels N         mel bands (default 80)\n"
            "  --log              log(mel + 1e-6) instead of the power mel\n");
}

static bool parse_positive(const char *opt, const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v <= 0 || v > 1 << 24) {
        fprintf(stderr, "luthier features: %s needs a positive integer, got '%s'\n", opt, s);
        return false;
    }
    *out = (int)v;
    return true;
}

/* Saves `features` with metadata pairs keys/values (n of them); returns the exit code. */
static int save(const char *out_path, lu_tensor *feats, int n, const char *const *keys, const char *const *values)
{
    const char *names[] = {"features"};
    lu_status s = lu_st_save(out_path, 1, names, &feats, n, keys, values);
    if (s) {
        fprintf(stderr, "luthier features: %s\n", lu_error_message());
        return 1;
    }
    return 0;
}

int lu_cli_features(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *kind = argv[1];
    bool is_fbank = !strcmp(kind, "fbank"), is_mel = !strcmp(kind, "mel");
    if (!is_fbank && !is_mel) {
        fprintf(stderr, "luthier features: unknown feature kind '%s' (fbank or mel)\n", kind);
        usage(stderr);
        return 2;
    }
    const char *audio_path = NULL, *out_path = NULL;
    lu_fbank_opts fb = lu_fbank_defaults();
    lu_mel_opts mel = lu_mel_defaults();
    int rate = 16000;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--audio") && has_value) {
            audio_path = argv[++i];
        } else if (!strcmp(a, "--out") && has_value) {
            out_path = argv[++i];
        } else if (!strcmp(a, "--sample-rate") && has_value) {
            if (!parse_positive(a, argv[++i], &rate)) return 2;
        } else if (!strcmp(a, "--unit-scale") && is_fbank) {
            fb.scale = 1;
        } else if (!strcmp(a, "--n-fft") && has_value && is_mel) {
            if (!parse_positive(a, argv[++i], &mel.n_fft)) return 2;
        } else if (!strcmp(a, "--win-length") && has_value && is_mel) {
            if (!parse_positive(a, argv[++i], &mel.win_length)) return 2;
        } else if (!strcmp(a, "--hop-length") && has_value && is_mel) {
            if (!parse_positive(a, argv[++i], &mel.hop_length)) return 2;
        } else if (!strcmp(a, "--n-mels") && has_value && is_mel) {
            if (!parse_positive(a, argv[++i], &mel.n_mels)) return 2;
        } else if (!strcmp(a, "--log") && is_mel) {
            mel.log = true;
        } else {
            fprintf(stderr, "luthier features %s: unknown or incomplete option '%s'\n", kind, a);
            usage(stderr);
            return 2;
        }
    }
    if (!audio_path || !out_path) {
        fprintf(stderr, "luthier features %s: --audio and --out are required\n", kind);
        usage(stderr);
        return 2;
    }

    lu_audio audio;
    if (lu_audio_read(audio_path, rate, 0, &audio)) {
        fprintf(stderr, "luthier features: %s\n", lu_error_message());
        return 1;
    }
    fb.sample_rate = mel.sample_rate = rate;
    lu_tensor *feats = is_fbank ? lu_fbank(audio.samples, audio.n, &fb) : lu_mel_spectrogram(audio.samples, audio.n, &mel);
    int orig_rate = audio.orig_rate;
    lu_audio_free(&audio);
    if (!feats) {
        fprintf(stderr, "luthier features: %s: %s\n", audio_path, lu_error_message());
        return 1;
    }

    char v[12][32];
    snprintf(v[0], sizeof v[0], "%d", rate);
    snprintf(v[1], sizeof v[1], "%d", orig_rate);
    int rc;
    if (is_fbank) {
        snprintf(v[2], sizeof v[2], "%d", fb.num_mel_bins);
        snprintf(v[3], sizeof v[3], "%g", fb.frame_length_ms);
        snprintf(v[4], sizeof v[4], "%g", fb.frame_shift_ms);
        snprintf(v[5], sizeof v[5], "%g", fb.preemph);
        snprintf(v[6], sizeof v[6], "%g", fb.low_freq);
        snprintf(v[7], sizeof v[7], "%g", fb.high_freq);
        snprintf(v[8], sizeof v[8], "%g", fb.scale);
        const char *keys[] = {"feature", "source", "sample_rate", "orig_sample_rate", "num_mel_bins", "frame_length_ms",
                              "frame_shift_ms", "preemphasis", "low_freq", "high_freq", "input_scale", "dither",
                              "window", "log"};
        const char *values[] = {"kaldi_fbank", audio_path, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], "0",
                                "povey", "log(max(x, float32 eps))"};
        rc = save(out_path, feats, (int)(sizeof keys / sizeof *keys), keys, values);
    } else {
        snprintf(v[2], sizeof v[2], "%d", mel.n_fft);
        snprintf(v[3], sizeof v[3], "%d", mel.win_length);
        snprintf(v[4], sizeof v[4], "%d", mel.hop_length);
        snprintf(v[5], sizeof v[5], "%d", mel.n_mels);
        snprintf(v[6], sizeof v[6], "%g", mel.f_min);
        snprintf(v[7], sizeof v[7], "%g", mel.f_max > 0 ? mel.f_max : rate / 2.0);
        snprintf(v[8], sizeof v[8], "%s", mel.log ? "log(x + log_offset)" : "none");
        snprintf(v[9], sizeof v[9], "%g", mel.log_offset);
        const char *keys[] = {"feature", "source", "sample_rate", "orig_sample_rate", "n_fft", "win_length",
                              "hop_length", "n_mels", "f_min", "f_max", "log", "log_offset", "window", "mel_scale",
                              "power"};
        const char *values[] = {"mel_spectrogram", audio_path, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8],
                                v[9], "hann (periodic), centred, reflect padding", "htk, no norm", "2"};
        rc = save(out_path, feats, (int)(sizeof keys / sizeof *keys), keys, values);
    }
    lu_tensor_release(feats);
    return rc;
}
