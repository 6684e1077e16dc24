/* features.h - speech front ends computed from mono float samples in [-1, 1] (models/audio.h):
 *
 * - lu_fbank: Kaldi's log-mel filterbank exactly as torchaudio.compliance.kaldi.fbank computes
 *   it (the front end of Kaldi, lhotse and icefall recipes);
 * - lu_mel_spectrogram: the Splitformer front end, torchaudio.transforms.Spectrogram followed
 *   by MelScale (power mel, optionally logged);
 * - lu_specaugment: time and frequency masking for training (Park et al. 2019).
 *
 * Outputs are new CPU float32 tensors [T, n_mels] (from the active arena when one is). FFTs go
 * through FFTW in double precision (features.c says why); plans are made once per size and
 * shared by all threads. */
#ifndef LU_FEATURES_H
#define LU_FEATURES_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"

/* torchaudio.compliance.kaldi.fbank options (its defaults except num_mel_bins = 80, dither =
 * 0). Fixed as in that default: snip_edges, DC removal per frame, povey window, padding of the
 * window to a power of two, power spectrum, log with a float-epsilon floor, no energy term. */
typedef struct lu_fbank_opts {
    int sample_rate;         /* Hz; 16000 */
    int num_mel_bins;        /* 80 */
    double frame_length_ms;  /* 25 */
    double frame_shift_ms;   /* 10 */
    double preemph;          /* 0.97 */
    double low_freq;         /* 20 Hz */
    double high_freq;        /* 0: Nyquist; negative: Nyquist + high_freq (Kaldi's rule) */
    /* Samples are multiplied by `scale` first: 32768 gives Kaldi's 16-bit integer scale (what
     * Kaldi and torchaudio are fed); 1 keeps [-1, 1], as lhotse/icefall features do. */
    double scale;
} lu_fbank_opts;

lu_fbank_opts lu_fbank_defaults(void);
/* Frames: 1 + (n - window) / shift (snip_edges). Fails naming the sizes when n is shorter
 * than one window or an option is out of range. */
lu_tensor *lu_fbank(const float *samples, int64_t n, const lu_fbank_opts *o);

/* torchaudio Spectrogram(n_fft, win_length, hop_length, window_fn = periodic Hann, center =
 * True, pad_mode = "reflect", power = 2, normalized = False) + MelScale(n_mels, sample_rate,
 * f_min, f_max, n_stft = n_fft / 2 + 1, norm = None, mel_scale = "htk"). Defaults are the
 * Splitformer's (shared/reference/asr.md 7.3): 1024, 320, 160, 80 mels, 16 kHz, 0 - 8000 Hz, no log. */
typedef struct lu_mel_opts {
    int sample_rate;   /* 16000 */
    int n_fft;         /* 1024 */
    int win_length;    /* 320 (<= n_fft; the window is centred in the n_fft frame) */
    int hop_length;    /* 160 */
    int n_mels;        /* 80 */
    double f_min;      /* 0 Hz */
    double f_max;      /* 0: sample_rate / 2 */
    /* With log set, features are log(mel + log_offset); 1e-6 as in torchaudio-based recipes
     * (e.g. wav2letter/ESPnet log-mel), large enough that digital silence stays finite. */
    bool log;
    double log_offset; /* 1e-6 */
} lu_mel_opts;

lu_mel_opts lu_mel_defaults(void);
/* Frames: 1 + n / hop_length (centred). Reflect padding needs n > n_fft / 2, as torch does. */
lu_tensor *lu_mel_spectrogram(const float *samples, int64_t n, const lu_mel_opts *o);

/* SpecAugment masks on a contiguous CPU float32 [T, F] tensor, in place. Each time mask has a
 * width w uniform in [0, min(max_time_width, floor(max_time_ratio * T))] and a start uniform in
 * [0, T - w]; frequency masks likewise over F with max_freq_width. Masked cells get
 * mask_value. Every draw is lu_rng_uniform(seed, step, LU_SPECAUG_RNG_OP, k), so the masks
 * are a pure function of (seed, step, T, F, options). */
typedef struct lu_specaug_opts {
    int n_time_masks;      /* 2 */
    int max_time_width;    /* 100 frames */
    double max_time_ratio; /* 1.0: no cap relative to T */
    int n_freq_masks;      /* 2 */
    int max_freq_width;    /* 27 bins */
    float mask_value;      /* 0 */
} lu_specaug_opts;

#define LU_SPECAUG_RNG_OP 0x5ec0u

/* The LibriSpeech "LD" policy of Park et al. 2019 (Table 1): T = 100, mT = 2, F = 27, mF = 2. */
lu_specaug_opts lu_specaug_defaults(void);
lu_status lu_specaugment(lu_tensor *feats, const lu_specaug_opts *o, uint64_t seed, uint64_t step);

#endif
