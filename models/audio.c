/* audio.c - audio files through libsndfile, rate conversion through libsamplerate. */
#include "models/audio.h"

#include <errno.h>
#include <samplerate.h>
#include <sndfile.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static lu_status sndfile_status(int err)
{
    switch (err) {
    case SF_ERR_SYSTEM: return LU_ERR_IO;
    case SF_ERR_UNSUPPORTED_ENCODING: return LU_ERR_UNSUPPORTED;
    default: return LU_ERR_FORMAT;
    }
}

lu_status lu_audio_resample(const float *in, int64_t n_in, int in_rate, int out_rate, float **out, int64_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (in_rate <= 0 || out_rate <= 0)
        return lu_errorf(LU_ERR_INVALID, "audio resample: rates must be positive, got %d -> %d Hz", in_rate, out_rate);
    if (n_in <= 0) return lu_errorf(LU_ERR_INVALID, "audio resample: no input samples (n = %lld)", (long long)n_in);
    /* torchaudio.functional.resample returns ceil(n * new / orig) samples. */
    int64_t n = (n_in * out_rate + in_rate - 1) / in_rate;
    float *y = malloc((size_t)n * sizeof *y);
    if (!y) return lu_errorf(LU_ERR_NOMEM, "audio resample: cannot allocate %lld samples", (long long)n);
    if (in_rate == out_rate) {
        memcpy(y, in, (size_t)n_in * sizeof *y);
        *out = y;
        *n_out = n;
        return LU_OK;
    }
    int err = 0;
    SRC_STATE *st = src_new(SRC_SINC_BEST_QUALITY, 1, &err);
    if (!st) {
        free(y);
        return lu_errorf(LU_ERR_NOMEM, "audio resample: libsamplerate: %s", src_strerror(err));
    }
    /* With end_of_input set the converter flushes its filter tail with zeros; it may need
     * several calls to deliver every output sample. A call that consumes nothing and produces
     * nothing means the signal is exhausted. */
    SRC_DATA d = {.data_in = in, .input_frames = (long)n_in, .end_of_input = 1,
                  .src_ratio = (double)out_rate / in_rate};
    int64_t done = 0;
    while (done < n) {
        d.data_out = y + done;
        d.output_frames = (long)(n - done);
        err = src_process(st, &d);
        if (err) break;
        if (d.output_frames_gen == 0 && d.input_frames_used == 0) break;
        done += d.output_frames_gen;
        d.data_in += d.input_frames_used;
        d.input_frames -= d.input_frames_used;
    }
    src_delete(st);
    if (err) {
        free(y);
        return lu_errorf(LU_ERR_INVALID, "audio resample %d -> %d Hz: libsamplerate: %s", in_rate, out_rate,
                         src_strerror(err));
    }
    /* The sinc tail ends a fraction of an input period early for some ratios: the last
     * samples lie past the final input sample, where the band-limited signal is zero. */
    for (int64_t i = done; i < n; i++) y[i] = 0;
    *out = y;
    *n_out = n;
    return LU_OK;
}

/* Channel `channel` of interleaved frames, or their mean for LU_AUDIO_MIX, into mono[0..n). */
static void to_mono(const float *frames, int64_t n, int channels, int channel, float *mono)
{
    for (int64_t i = 0; i < n; i++) {
        const float *f = frames + i * channels;
        if (channel >= 0) {
            mono[i] = f[channel];
        } else {
            double s = 0;
            for (int c = 0; c < channels; c++) s += f[c];
            mono[i] = (float)(s / channels);
        }
    }
}

lu_status lu_audio_read(const char *path, int target_rate, int channel, lu_audio *out)
{
    memset(out, 0, sizeof *out);
    if (target_rate < 0) return lu_errorf(LU_ERR_INVALID, "audio '%s': target rate %d Hz is negative", path, target_rate);
    if (channel < LU_AUDIO_MIX)
        return lu_errorf(LU_ERR_INVALID, "audio '%s': channel %d is invalid (>= 0, or -1 to mix)", path, channel);
    struct stat sb;
    if (stat(path, &sb) != 0) return lu_errorf(LU_ERR_IO, "audio '%s': cannot open: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return lu_errorf(LU_ERR_IO, "audio '%s': is a directory, not an audio file", path);

    SF_INFO info = {0};
    SNDFILE *sf = sf_open(path, SFM_READ, &info);
    if (!sf) {
        int err = sf_error(NULL);
        return lu_errorf(sndfile_status(err), "audio '%s': cannot read: libsndfile: %s", path, sf_strerror(NULL));
    }
    lu_status s = LU_OK;
    float *frames = NULL, *mono = NULL;
    if (info.frames <= 0) {
        s = lu_errorf(LU_ERR_FORMAT, "audio '%s': contains no samples (0 frames)", path);
    } else if (info.channels <= 0 || info.samplerate <= 0) {
        s = lu_errorf(LU_ERR_FORMAT, "audio '%s': header gives %d channels at %d Hz", path, info.channels, info.samplerate);
    } else if (channel >= info.channels) {
        s = lu_errorf(LU_ERR_INVALID, "audio '%s': channel %d requested but the file has %d channel(s)", path, channel,
                      info.channels);
    } else if ((uint64_t)info.frames > (uint64_t)INT64_MAX / sizeof(float) / (uint64_t)info.channels) {
        s = lu_errorf(LU_ERR_FORMAT, "audio '%s': header gives an impossible %lld frames", path, (long long)info.frames);
    }
    if (!s) {
        frames = malloc((size_t)info.frames * (size_t)info.channels * sizeof *frames);
        mono = malloc((size_t)info.frames * sizeof *mono);
        if (!frames || !mono)
            s = lu_errorf(LU_ERR_NOMEM, "audio '%s': cannot allocate %lld frames", path, (long long)info.frames);
    }
    if (!s) {
        sf_count_t got = sf_readf_float(sf, frames, info.frames);
        if (got != info.frames) {
            const char *why = sf_error(sf) ? sf_strerror(sf) : "file shorter than its header says";
            s = lu_errorf(LU_ERR_FORMAT, "audio '%s': truncated or corrupt: read %lld of %lld frames (libsndfile: %s)",
                          path, (long long)got, (long long)info.frames, why);
        }
    }
    sf_close(sf);
    if (!s) to_mono(frames, info.frames, info.channels, channel, mono);
    free(frames);
    if (s) {
        free(mono);
        return s;
    }
    out->n = info.frames;
    out->rate = out->orig_rate = info.samplerate;
    out->channels = info.channels;
    out->samples = mono;
    if (target_rate > 0 && target_rate != info.samplerate) {
        float *y;
        int64_t ny;
        s = lu_audio_resample(mono, info.frames, info.samplerate, target_rate, &y, &ny);
        free(mono);
        out->samples = NULL;
        if (s) {
            lu_error_context("while reading '%s': ", path);
            memset(out, 0, sizeof *out);
            return s;
        }
        out->samples = y;
        out->n = ny;
        out->rate = target_rate;
    }
    return LU_OK;
}

void lu_audio_free(lu_audio *a)
{
    if (!a) return;
    free(a->samples);
    a->samples = NULL;
    a->n = 0;
}
