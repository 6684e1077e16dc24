/* features.c - Kaldi fbank, torchaudio mel spectrogram and SpecAugment over FFTW.
 *
 * Formulas follow torchaudio's sources: compliance/kaldi.py (fbank, get_mel_banks) and
 * functional/functional.py (spectrogram, melscale_fbanks). Everything runs in double, the FFT
 * included: with a float32 FFT the quiet bands of a loud frame (1e-9 of its loudest band) come
 * out up to 2e-3 off in log (measured on the chirp fixture; torchaudio's own float32 fbank is
 * 1.5e-3 off its float64 run there). The cost is negligible beside any acoustic model. */
#include "models/features.h"

#include <fftw3.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

/* ---- FFT plans ------------------------------------------------------------------------------ */

/* FFTW's planner is not thread-safe; fftw_execute_dft_r2c on a finished plan is. Plans are made
 * with FFTW_ESTIMATE, which picks the same algorithm every run (FFTW_MEASURE times candidates
 * and may pick differently, changing the last bits of features between runs), and live until
 * the process exits. Arrays passed at execution come from fftw_malloc, so they have the
 * alignment the plan was made for. */
typedef struct fft_plan {
    int n;
    fftw_plan plan;
    struct fft_plan *next;
} fft_plan;

static pthread_mutex_t plan_lock = PTHREAD_MUTEX_INITIALIZER;
static fft_plan *plans;

static fftw_plan plan_r2c(int n)
{
    pthread_mutex_lock(&plan_lock);
    fft_plan *p = plans;
    while (p && p->n != n) p = p->next;
    if (!p) {
        double *in = fftw_malloc(sizeof(double) * (size_t)n);
        fftw_complex *out = fftw_malloc(sizeof(fftw_complex) * (size_t)(n / 2 + 1));
        p = malloc(sizeof *p);
        if (in && out && p) {
            p->n = n;
            p->plan = fftw_plan_dft_r2c_1d(n, in, out, FFTW_ESTIMATE);
            p->next = plans;
            if (p->plan) {
                plans = p;
            } else {
                free(p);
                p = NULL;
            }
        } else {
            free(p);
            p = NULL;
        }
        fftw_free(in);
        fftw_free(out);
    }
    pthread_mutex_unlock(&plan_lock);
    if (!p) {
        lu_errorf(LU_ERR_NOMEM, "features: cannot make an FFTW plan of size %d", n);
        return NULL;
    }
    return p->plan;
}

/* Power spectra of n_frames frames: fill(ctx, t, buf) writes frame t (n_fft values) into buf;
 * row t of power (n_fft / 2 + 1 doubles) receives |X_k|^2. Frames are independent, so the
 * result does not depend on the thread count. */
typedef void (*frame_fill_fn)(const void *ctx, int64_t t, double *buf);

static lu_status power_spectra(int n_fft, int64_t n_frames, frame_fill_fn fill, const void *ctx, double *power)
{
    fftw_plan plan = plan_r2c(n_fft);
    if (!plan) return lu_error_code();
    int n_bins = n_fft / 2 + 1;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        double *buf = fftw_malloc(sizeof(double) * (size_t)n_fft);
        fftw_complex *spec = fftw_malloc(sizeof(fftw_complex) * (size_t)n_bins);
        if (!buf || !spec) failed = 1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_frames; t++) {
            if (!buf || !spec) continue;
            fill(ctx, t, buf);
            fftw_execute_dft_r2c(plan, buf, spec);
            double *row = power + t * n_bins;
            for (int k = 0; k < n_bins; k++) row[k] = spec[k][0] * spec[k][0] + spec[k][1] * spec[k][1];
        }
        fftw_free(buf);
        fftw_free(spec);
    }
    if (failed) return lu_errorf(LU_ERR_NOMEM, "features: cannot allocate FFT buffers of size %d", n_fft);
    return LU_OK;
}

typedef enum log_kind {
    LOG_NONE,
    LOG_FLOOR,  /* log(max(s, arg)) */
    LOG_OFFSET, /* log(s + arg) */
} log_kind;

/* out[t, m] = sum_k power[t, k] * bank[m, k], then the log step, as float32 [n_frames, n_mels]. */
static lu_tensor *project(const double *power, int64_t n_frames, int n_bins, const double *bank, int n_mels,
                          log_kind how, double log_arg)
{
    lu_tensor *out = lu_tensor_empty(LU_F32, LU_SHAPE(n_frames, n_mels), LU_CPU);
    if (!out) return NULL;
    float *y = lu_tensor_data(out);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n_frames; t++) {
        for (int m = 0; m < n_mels; m++) {
            const double *w = bank + (int64_t)m * n_bins;
            const double *p = power + t * n_bins;
            double s = 0;
            for (int k = 0; k < n_bins; k++) s += w[k] * p[k];
            if (how == LOG_FLOOR) s = log(fmax(s, log_arg));
            else if (how == LOG_OFFSET) s = log(s + log_arg);
            y[t * n_mels + m] = (float)s;
        }
    }
    return out;
}

/* ---- Kaldi fbank ---------------------------------------------------------------------------- */

lu_fbank_opts lu_fbank_defaults(void)
{
    return (lu_fbank_opts){.sample_rate = 16000, .num_mel_bins = 80, .frame_length_ms = 25, .frame_shift_ms = 10,
                           .preemph = 0.97, .low_freq = 20, .high_freq = 0, .scale = 32768};
}

static double kaldi_mel(double f) { return 1127.0 * log(1.0 + f / 700.0); }

/* get_mel_banks (kaldi.py, vtln_warp_factor 1): triangles equally spaced on the Kaldi mel
 * scale between mel(low) and mel(high), evaluated at FFT bin centres k * sr / n_fft for
 * k < n_fft / 2; the Nyquist bin gets weight 0. torchaudio builds them in float32 even for
 * double input; that rounding alone moves its log energies by up to 3e-4 from these (with
 * float64 banks torchaudio and this code agree to 1e-6 on the speech fixture). */
static void kaldi_mel_banks(int n_mels, int n_fft, double sr, double low, double high, double *bank)
{
    int n_bins = n_fft / 2 + 1;
    double mel_low = kaldi_mel(low), mel_high = kaldi_mel(high);
    double delta = (mel_high - mel_low) / (n_mels + 1);
    for (int m = 0; m < n_mels; m++) {
        double left = mel_low + m * delta, centre = left + delta, right = centre + delta;
        double *w = bank + (int64_t)m * n_bins;
        for (int k = 0; k < n_bins; k++) {
            if (k == n_fft / 2) {
                w[k] = 0;
                continue;
            }
            double mel = kaldi_mel(sr / n_fft * k);
            double up = (mel - left) / (centre - left), down = (right - mel) / (right - centre);
            w[k] = fmax(0.0, fmin(up, down));
        }
    }
}

typedef struct fbank_ctx {
    const float *x;
    int64_t shift;
    int window;
    int n_fft;
    double scale, preemph;
    const double *povey;
} fbank_ctx;

/* One Kaldi frame: scale, remove the DC offset, pre-emphasise with x[-1] = x[0] (Kaldi's
 * first-sample rule: the first output is x0 - 0.97 x0), povey window, zero-pad to n_fft. */
static void fbank_fill(const void *vctx, int64_t t, double *buf)
{
    const fbank_ctx *c = vctx;
    const float *x = c->x + t * c->shift;
    double mean = 0;
    for (int i = 0; i < c->window; i++) mean += x[i] * c->scale;
    mean /= c->window;
    for (int i = 0; i < c->window; i++) {
        double cur = x[i] * c->scale - mean, prev = x[i > 0 ? i - 1 : 0] * c->scale - mean;
        buf[i] = (cur - c->preemph * prev) * c->povey[i];
    }
    for (int i = c->window; i < c->n_fft; i++) buf[i] = 0;
}

lu_tensor *lu_fbank(const float *samples, int64_t n, const lu_fbank_opts *o)
{
    if (!samples) {
        lu_errorf(LU_ERR_INVALID, "fbank: samples is NULL");
        return NULL;
    }
    if (o->sample_rate <= 0 || o->num_mel_bins <= 0 || o->frame_length_ms <= 0 || o->frame_shift_ms <= 0 ||
        o->scale <= 0) {
        lu_errorf(LU_ERR_INVALID,
                  "fbank: sample_rate %d, num_mel_bins %d, frame length %g ms, shift %g ms and scale %g must be positive",
                  o->sample_rate, o->num_mel_bins, o->frame_length_ms, o->frame_shift_ms, o->scale);
        return NULL;
    }
    /* kaldi.py: window_size = int(sr * length * 0.001), padded to the next power of two. */
    int window = (int)(o->sample_rate * o->frame_length_ms * 0.001);
    int64_t shift = (int64_t)(o->sample_rate * o->frame_shift_ms * 0.001);
    double nyquist = 0.5 * o->sample_rate;
    double high = o->high_freq > 0 ? o->high_freq : nyquist + o->high_freq;
    if (window < 2 || shift < 1) {
        lu_errorf(LU_ERR_INVALID, "fbank: window of %d samples / shift of %lld samples is too short", window,
                  (long long)shift);
        return NULL;
    }
    if (n < window) {
        lu_errorf(LU_ERR_SHAPE, "fbank: %lld samples are fewer than one %d-sample window (%g ms at %d Hz)",
                  (long long)n, window, o->frame_length_ms, o->sample_rate);
        return NULL;
    }
    if (!(o->low_freq >= 0 && o->low_freq < high && high <= nyquist)) {
        lu_errorf(LU_ERR_INVALID, "fbank: need 0 <= low_freq (%g) < high_freq (%g) <= Nyquist (%g)", o->low_freq, high,
                  nyquist);
        return NULL;
    }
    int n_fft = 1;
    while (n_fft < window) n_fft *= 2;
    int n_bins = n_fft / 2 + 1;
    if (o->num_mel_bins > n_bins) {
        lu_errorf(LU_ERR_INVALID, "fbank: %d mel bins exceed the %d FFT bins", o->num_mel_bins, n_bins);
        return NULL;
    }
    int64_t n_frames = 1 + (n - window) / shift;

    double *povey = malloc(sizeof(double) * (size_t)window);
    double *bank = malloc(sizeof(double) * (size_t)o->num_mel_bins * (size_t)n_bins);
    double *power = malloc(sizeof(double) * (size_t)n_frames * (size_t)n_bins);
    lu_tensor *out = NULL;
    if (!povey || !bank || !power) {
        lu_errorf(LU_ERR_NOMEM, "fbank: cannot allocate %lld frames of %d bins", (long long)n_frames, n_bins);
    } else {
        /* povey = symmetric Hann (torch.hann_window(periodic=False)) to the power 0.85. */
        for (int i = 0; i < window; i++) povey[i] = pow(0.5 - 0.5 * cos(2 * M_PI * i / (window - 1)), 0.85);
        kaldi_mel_banks(o->num_mel_bins, n_fft, o->sample_rate, o->low_freq, high, bank);
        fbank_ctx c = {.x = samples, .shift = shift, .window = window, .n_fft = n_fft, .scale = o->scale,
                       .preemph = o->preemph, .povey = povey};
        /* log(max(energy, eps)) with eps = torch.finfo(torch.float).eps. */
        if (power_spectra(n_fft, n_frames, fbank_fill, &c, power) == LU_OK)
            out = project(power, n_frames, n_bins, bank, o->num_mel_bins, LOG_FLOOR, FLT_EPSILON);
    }
    free(povey);
    free(bank);
    free(power);
    return out;
}

/* ---- torchaudio mel spectrogram ------------------------------------------------------------- */

lu_mel_opts lu_mel_defaults(void)
{
    return (lu_mel_opts){.sample_rate = 16000, .n_fft = 1024, .win_length = 320, .hop_length = 160, .n_mels = 80,
                         .f_min = 0, .f_max = 0, .log = false, .log_offset = 1e-6};
}

static double htk_mel(double f) { return 2595.0 * log10(1.0 + f / 700.0); }
static double htk_hz(double m) { return 700.0 * (pow(10.0, m / 2595.0) - 1.0); }

/* melscale_fbanks(n_freqs, f_min, f_max, n_mels, sr, norm=None, mel_scale="htk"): triangles
 * whose corners f_pts are n_mels + 2 points equally spaced in HTK mel, evaluated at the
 * n_freqs frequencies linspace(0, sr // 2, n_freqs). */
static void htk_mel_banks(int n_mels, int n_freqs, int sr, double f_min, double f_max, double *bank)
{
    double m_min = htk_mel(f_min), m_max = htk_mel(f_max);
    for (int m = 0; m < n_mels; m++) {
        double *w = bank + (int64_t)m * n_freqs;
        double f0 = htk_hz(m_min + (m_max - m_min) * m / (n_mels + 1));
        double f1 = htk_hz(m_min + (m_max - m_min) * (m + 1) / (n_mels + 1));
        double f2 = htk_hz(m_min + (m_max - m_min) * (m + 2) / (n_mels + 1));
        for (int k = 0; k < n_freqs; k++) {
            double f = n_freqs > 1 ? (double)(sr / 2) * k / (n_freqs - 1) : 0;
            double down = (f - f0) / (f1 - f0), up = (f2 - f) / (f2 - f1);
            w[k] = fmax(0.0, fmin(down, up));
        }
    }
}

typedef struct mel_ctx {
    const float *x;
    int64_t n;
    int pad; /* n_fft / 2: centre padding on each side */
    int n_fft, win_length, win_offset, hop;
    const double *hann;
} mel_ctx;

/* Frame t covers padded positions [t * hop, t * hop + n_fft), the padded signal being x with
 * n_fft / 2 reflected samples on each side (x[-j] = x[j], x[n-1+j] = x[n-1-j]); torch.stft
 * centres the win_length window inside the n_fft frame at (n_fft - win_length) / 2. */
static void mel_fill(const void *vctx, int64_t t, double *buf)
{
    const mel_ctx *c = vctx;
    memset(buf, 0, sizeof(double) * (size_t)c->n_fft);
    for (int i = 0; i < c->win_length; i++) {
        int64_t j = t * c->hop + c->win_offset + i - c->pad;
        if (j < 0) j = -j;
        if (j >= c->n) j = 2 * (c->n - 1) - j;
        buf[c->win_offset + i] = c->x[j] * c->hann[i];
    }
}

lu_tensor *lu_mel_spectrogram(const float *samples, int64_t n, const lu_mel_opts *o)
{
    if (!samples) {
        lu_errorf(LU_ERR_INVALID, "mel spectrogram: samples is NULL");
        return NULL;
    }
    if (o->sample_rate <= 0 || o->n_fft < 2 || o->win_length <= 0 || o->win_length > o->n_fft ||
        o->hop_length <= 0 || o->n_mels <= 0) {
        lu_errorf(LU_ERR_INVALID,
                  "mel spectrogram: need sample_rate > 0, n_fft >= 2, 0 < win_length <= n_fft, hop_length > 0, "
                  "n_mels > 0; got %d Hz, n_fft %d, win_length %d, hop_length %d, n_mels %d",
                  o->sample_rate, o->n_fft, o->win_length, o->hop_length, o->n_mels);
        return NULL;
    }
    double f_max = o->f_max > 0 ? o->f_max : o->sample_rate / 2;
    if (!(o->f_min >= 0 && o->f_min < f_max && f_max <= o->sample_rate / 2)) {
        lu_errorf(LU_ERR_INVALID, "mel spectrogram: need 0 <= f_min (%g) < f_max (%g) <= sample_rate / 2 (%d)",
                  o->f_min, f_max, o->sample_rate / 2);
        return NULL;
    }
    if (o->log && !(o->log_offset > 0)) {
        lu_errorf(LU_ERR_INVALID, "mel spectrogram: log_offset %g must be positive", o->log_offset);
        return NULL;
    }
    int pad = o->n_fft / 2;
    if (n <= pad) {
        lu_errorf(LU_ERR_SHAPE, "mel spectrogram: %lld samples are too few for reflect padding of %d (n_fft %d)",
                  (long long)n, pad, o->n_fft);
        return NULL;
    }
    int n_bins = o->n_fft / 2 + 1;
    int64_t n_frames = 1 + (n + 2 * pad - o->n_fft) / o->hop_length;
    double *hann = malloc(sizeof(double) * (size_t)o->win_length);
    double *bank = malloc(sizeof(double) * (size_t)o->n_mels * (size_t)n_bins);
    double *power = malloc(sizeof(double) * (size_t)n_frames * (size_t)n_bins);
    lu_tensor *out = NULL;
    if (!hann || !bank || !power) {
        lu_errorf(LU_ERR_NOMEM, "mel spectrogram: cannot allocate %lld frames of %d bins", (long long)n_frames, n_bins);
    } else {
        /* torch.hann_window(win_length) is periodic: 0.5 - 0.5 cos(2 pi i / win_length). */
        for (int i = 0; i < o->win_length; i++) hann[i] = 0.5 - 0.5 * cos(2 * M_PI * i / o->win_length);
        htk_mel_banks(o->n_mels, n_bins, o->sample_rate, o->f_min, f_max, bank);
        mel_ctx c = {.x = samples, .n = n, .pad = pad, .n_fft = o->n_fft, .win_length = o->win_length,
                     .win_offset = (o->n_fft - o->win_length) / 2, .hop = o->hop_length, .hann = hann};
        if (power_spectra(o->n_fft, n_frames, mel_fill, &c, power) == LU_OK)
            out = project(power, n_frames, n_bins, bank, o->n_mels, o->log ? LOG_OFFSET : LOG_NONE, o->log_offset);
    }
    free(hann);
    free(bank);
    free(power);
    return out;
}

/* ---- SpecAugment ---------------------------------------------------------------------------- */

lu_specaug_opts lu_specaug_defaults(void)
{
    return (lu_specaug_opts){.n_time_masks = 2, .max_time_width = 100, .max_time_ratio = 1.0, .n_freq_masks = 2,
                             .max_freq_width = 27, .mask_value = 0};
}

/* Width uniform in [0, max_width] and start uniform in [0, size - width], from draws k, k + 1. */
static void draw_mask(uint64_t seed, uint64_t step, uint64_t k, int64_t size, int64_t max_width, int64_t *start,
                      int64_t *width)
{
    if (max_width > size) max_width = size;
    *width = (int64_t)(lu_rng_uniform(seed, step, LU_SPECAUG_RNG_OP, k) * (double)(max_width + 1));
    if (*width > max_width) *width = max_width;
    *start = (int64_t)(lu_rng_uniform(seed, step, LU_SPECAUG_RNG_OP, k + 1) * (double)(size - *width + 1));
    if (*start > size - *width) *start = size - *width;
}

lu_status lu_specaugment(lu_tensor *feats, const lu_specaug_opts *o, uint64_t seed, uint64_t step)
{
    if (!feats) return lu_error_code();
    char sh[LU_SHAPE_STR_MAX];
    if (feats->ndim != 2 || feats->dtype != LU_F32 || lu_tensor_device(feats) != LU_CPU ||
        !lu_tensor_is_contiguous(feats))
        return lu_errorf(LU_ERR_SHAPE, "specaugment: needs a contiguous CPU float32 [T, F] tensor, got %s %s on %s",
                         lu_dtype_name(feats->dtype), lu_shape_str(feats, sh, sizeof sh),
                         lu_device_name(lu_tensor_device(feats)));
    if (o->n_time_masks < 0 || o->n_freq_masks < 0 || o->max_time_width < 0 || o->max_freq_width < 0 ||
        !(o->max_time_ratio >= 0 && o->max_time_ratio <= 1))
        return lu_errorf(LU_ERR_INVALID,
                         "specaugment: mask counts (%d, %d) and widths (%d, %d) must be >= 0, max_time_ratio (%g) in [0, 1]",
                         o->n_time_masks, o->n_freq_masks, o->max_time_width, o->max_freq_width, o->max_time_ratio);
    int64_t T = feats->shape[0], F = feats->shape[1];
    float *x = lu_tensor_data(feats);
    int64_t max_t = (int64_t)floor(o->max_time_ratio * (double)T);
    if (max_t > o->max_time_width) max_t = o->max_time_width;
    uint64_t k = 0;
    for (int i = 0; i < o->n_time_masks; i++, k += 2) {
        int64_t start, width;
        draw_mask(seed, step, k, T, max_t, &start, &width);
        for (int64_t t = start; t < start + width; t++)
            for (int64_t f = 0; f < F; f++) x[t * F + f] = o->mask_value;
    }
    for (int i = 0; i < o->n_freq_masks; i++, k += 2) {
        int64_t start, width;
        draw_mask(seed, step, k, F, o->max_freq_width, &start, &width);
        for (int64_t t = 0; t < T; t++)
            for (int64_t f = start; f < start + width; f++) x[t * F + f] = o->mask_value;
    }
    return LU_OK;
}
