/* data_speech.c - `luthier data prepare-speech`: the utterances of a JSONL manifest
 * (models/asr_data.h) read with models/audio.h, resampled to one rate, turned into features with
 * models/features.h and written to an HDF5 feature store with their transcripts (kept as the
 * manifest gives them: the training config states the normalisation). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "experiments/runner/cli.h"
#include "models/asr_data.h"
#include "models/audio.h"
#include "models/features.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: luthier data prepare-speech --manifest M.jsonl --out FEATS.h5 [--features fbank|mel]\n"
            "                                   [--sample-rate HZ] [--log] [--skip-bad]\n"
            "\n"
            "Reads every utterance of the manifest (one JSON object a line: {\"audio\": path, \"text\": ...,\n"
            "\"duration\": seconds, \"speaker\": optional}; relative paths are relative to the manifest),\n"
            "resamples it, computes 80 features per 10 ms frame and writes one HDF5 store (/feats,\n"
            "/offsets, /text, /speaker, /duration) via a temporary file renamed when complete.\n"
            "\n"
            "  --features KIND    fbank (default): Kaldi log-mel filterbank, 16-bit integer scale;\n"
            "                     mel: the Splitformer's torchaudio power mel spectrogram\n"
            "  --sample-rate HZ   rate every file is resampled to first (default 16000; 8 kHz telephony\n"
            "                     prompts are upsampled and keep their 4 kHz band)\n"
            "  --log              mel only: log(mel + 1e-6) instead of the power mel\n"
            "  --skip-bad         report an unreadable, empty or too short utterance and go on\n"
            "                     (default: stop at the first one, writing nothing)\n");
}

/* Features of one utterance, or NULL + error. */
static lu_tensor *compute(const char *kind, const lu_audio *a, bool log_mel)
{
    if (!strcmp(kind, "fbank")) {
        lu_fbank_opts o = lu_fbank_defaults();
        o.sample_rate = a->rate;
        return lu_fbank(a->samples, a->n, &o);
    }
    lu_mel_opts o = lu_mel_defaults();
    o.sample_rate = a->rate;
    o.log = log_mel;
    return lu_mel_spectrogram(a->samples, a->n, &o);
}

int lu_data_prepare_speech(int argc, char **argv)
{
    const char *manifest = NULL, *out = NULL, *kind = "fbank";
    int rate = 16000;
    bool skip_bad = false, log_mel = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--manifest") && has) {
            manifest = argv[++i];
        } else if (!strcmp(a, "--out") && has) {
            out = argv[++i];
        } else if (!strcmp(a, "--features") && has) {
            kind = argv[++i];
        } else if (!strcmp(a, "--sample-rate") && has) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 4000 || v > 192000) {
                fprintf(stderr, "luthier data prepare-speech: --sample-rate needs 4000..192000 Hz, got '%s'\n", argv[i]);
                return 2;
            }
            rate = (int)v;
        } else if (!strcmp(a, "--log")) {
            log_mel = true;
        } else if (!strcmp(a, "--skip-bad")) {
            skip_bad = true;
        } else {
            fprintf(stderr, "luthier data prepare-speech: unknown or incomplete option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!manifest || !out) {
        fprintf(stderr, "luthier data prepare-speech: --manifest and --out are required\n\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(kind, "fbank") && strcmp(kind, "mel")) {
        fprintf(stderr, "luthier data prepare-speech: --features must be fbank or mel, got '%s'\n", kind);
        return 2;
    }
    if (log_mel && strcmp(kind, "mel")) {
        fprintf(stderr, "luthier data prepare-speech: --log applies to --features mel only (fbank is logged)\n");
        return 2;
    }
    lu_asr_manifest m;
    if (lu_asr_manifest_read(manifest, &m)) {
        fprintf(stderr, "luthier data prepare-speech: %s\n", lu_error_message());
        return 1;
    }
    const char *stored_kind = !strcmp(kind, "mel") && log_mel ? "logmel" : kind;
    lu_asr_store_writer *w = lu_asr_store_writer_open(out, stored_kind, rate, 80);
    if (!w) {
        fprintf(stderr, "luthier data prepare-speech: %s\n", lu_error_message());
        lu_asr_manifest_free(&m);
        return 1;
    }
    int written = 0, skipped = 0;
    double seconds = 0;
    lu_status s = LU_OK;
    for (int i = 0; i < m.n && !s; i++) {
        const lu_asr_utt *u = &m.utts[i];
        lu_audio a;
        lu_tensor *f = NULL;
        s = lu_audio_read(u->audio, rate, 0, &a);
        if (!s && !(f = compute(kind, &a, log_mel))) s = lu_error_code();
        if (!s) s = lu_asr_store_writer_add(w, lu_tensor_data(f), f->shape[0], u->text, u->speaker, (double)a.n / rate);
        if (!s) written++, seconds += (double)a.n / rate;
        lu_tensor_release(f);
        lu_audio_free(&a);
        if (s) {
            fprintf(stderr, "luthier data prepare-speech: %s:%d: %s%s\n", manifest, u->line, lu_error_message(),
                    skip_bad ? " (skipped)" : "");
            if (skip_bad) s = LU_OK, skipped++;
        }
    }
    lu_asr_manifest_free(&m);
    if (!s && written == 0) {
        fprintf(stderr, "luthier data prepare-speech: no usable utterance in %s\n", manifest);
        s = LU_ERR_FORMAT;
    }
    lu_status cs = lu_asr_store_writer_close(w, !s);
    if (!s && cs) {
        fprintf(stderr, "luthier data prepare-speech: %s\n", lu_error_message());
        s = cs;
    }
    if (s) return 1;
    printf("%s: %d utterances, %.1f min of audio, %s features at %d Hz (%d skipped)\n", out, written, seconds / 60,
           stored_kind, rate, skipped);
    return 0;
}
