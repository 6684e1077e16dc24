/* audio.h - reading speech audio: any file libsndfile opens (WAV, FLAC, ...) as mono float
 * samples in [-1, 1], resampled with libsamplerate when the model wants another rate.
 *
 * Channels: by default channel 0 is kept, as Kaldi (compute-fbank-feats --channel=-1 on a
 * multi-channel file) and torchaudio.compliance.kaldi (channel=-1) do; LU_AUDIO_MIX averages
 * all channels instead. Samples are libsndfile's float view of the file (16-bit PCM s maps to
 * s / 32768), so multiplying by 32768 recovers Kaldi's 16-bit integer scale exactly. */
#ifndef LU_AUDIO_H
#define LU_AUDIO_H

#include <stdint.h>

#include "core/error.h"

#define LU_AUDIO_MIX (-1) /* `channel` value: average all channels */

typedef struct lu_audio {
    float *samples;  /* n mono samples in [-1, 1] (malloc'd; lu_audio_free) */
    int64_t n;
    int rate;        /* sample rate of `samples` (the target rate, or the file's when none) */
    int orig_rate;   /* sample rate stored in the file */
    int channels;    /* channel count of the file */
} lu_audio;

/* Reads `path` into *out. channel >= 0 selects that channel, LU_AUDIO_MIX averages them.
 * target_rate > 0 resamples to that rate (SRC_SINC_BEST_QUALITY); 0 keeps the file's rate.
 * Errors name the file: LU_ERR_IO (missing, a directory, unreadable), LU_ERR_FORMAT (not an
 * audio file, corrupt, truncated, no samples), LU_ERR_UNSUPPORTED (encoding libsndfile lacks),
 * LU_ERR_INVALID (channel out of range, bad rate). On failure *out is zeroed. */
lu_status lu_audio_read(const char *path, int target_rate, int channel, lu_audio *out);
void lu_audio_free(lu_audio *a);

/* Resamples n_in samples from in_rate to out_rate with libsamplerate's best sinc converter.
 * The output has ceil(n_in * out_rate / in_rate) samples (torchaudio.functional.resample's
 * length); *out is malloc'd. Equal rates copy. */
lu_status lu_audio_resample(const float *in, int64_t n_in, int in_rate, int out_rate, float **out, int64_t *n_out);

#endif
