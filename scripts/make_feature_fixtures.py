#!/usr/bin/env python3
"""Regenerates tests/fixtures/features/: short audio files and torchaudio reference features.

Run once from the repository root (needs torch, torchaudio, numpy, soundfile, safetensors;
optionally the Debian package pocketsphinx-testdata for a real speech excerpt):

    python3 scripts/make_feature_fixtures.py

Audio written (16-bit PCM):
  chirp16k.wav / chirp16k.flac  0.7 s, 16 kHz: a 100 -> 6000 Hz chirp plus white noise, the same
                                samples in both containers
  stereo16k.wav                 0.3 s, 16 kHz, 2 channels: channel 0 a chirp, channel 1 a 440 Hz tone
  tones8k.wav                   0.5 s, 8 kHz: three tones and a 200 -> 3000 Hz chirp (below 4 kHz)
  speech16k.wav                 1.0 s of LibriVox speech (pocketsphinx-testdata, BSD-2), or, when the
                                package is absent, a synthetic vowel-like signal (the metadata says which)

References in refs.safetensors (stored as float32), computed by torchaudio on the file's
samples (int16 / 32768, what libsndfile returns). Features are computed in float64 (the same
torchaudio code on double tensors): torchaudio's float32 run is itself off by up to ~1.5e-3 in
log on the quiet bands of the loud chirp frames, so float64 is the reference that can pin the
formulas down; the *_f32 entries are the default float32 run, for parity on real speech.
  <name>_samples            the mono samples (chirp, stereo_ch0, stereo_ch1, tones8k)
  <name>_fbank              torchaudio.compliance.kaldi.fbank(x * 32768, num_mel_bins=80, dither=0)
  chirp_fbank_unit          the same on x in [-1, 1] (lhotse/icefall scale)
  <name>_mel                Spectrogram(n_fft=1024, win_length=320, hop_length=160, power=2)
                            + MelScale(n_mels=80, sample_rate=16000, n_stft=513), as [T, 80]
  chirp_logmel              log(chirp_mel + 1e-6)
  chirp_mel_small           n_fft=512, win_length=400, hop_length=128, n_mels=40
  speech_fbank_f32, speech_mel_f32   the float32 runs on the speech excerpt
  tones8k_resampled         torchaudio.functional.resample(tones8k, 8000, 16000) (default sinc)
"""
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "features")
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"


def chirp(n, rate, f0, f1):
    t = np.arange(n) / rate
    dur = n / rate
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * dur)))


def to_int16(x):
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def write(name, samples_i16, rate):
    path = os.path.join(OUT, name)
    fmt = "FLAC" if name.endswith(".flac") else "WAV"
    sf.write(path, samples_i16, rate, format=fmt, subtype="PCM_16")
    return path


def read(path):
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(x.T)), rate


def fbank(x, scale=32768.0, dtype=torch.float64):
    return torchaudio.compliance.kaldi.fbank(x[:1].to(dtype) * scale, num_mel_bins=80, dither=0.0)


def mel(x, n_fft=1024, win_length=320, hop_length=160, n_mels=80, dtype=torch.float64):
    spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=2.0)
    scale = torchaudio.transforms.MelScale(n_mels=n_mels, sample_rate=16000, n_stft=n_fft // 2 + 1)
    return scale.to(dtype)(spec.to(dtype)(x[:1].to(dtype)))[0].T.contiguous()


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1234)
    refs = {}
    meta = {"generator": "scripts/make_feature_fixtures.py", "torch": torch.__version__,
            "torchaudio": torchaudio.__version__}

    n = int(0.7 * 16000)
    c = to_int16(0.5 * chirp(n, 16000, 100, 6000) + 0.02 * rng.standard_normal(n))
    write("chirp16k.wav", c, 16000)
    write("chirp16k.flac", c, 16000)
    x, _ = read(os.path.join(OUT, "chirp16k.wav"))
    refs["chirp_samples"] = x[0]
    refs["chirp_fbank"] = fbank(x)
    refs["chirp_fbank_unit"] = fbank(x, 1.0)
    refs["chirp_mel"] = mel(x)
    refs["chirp_logmel"] = torch.log(refs["chirp_mel"] + 1e-6)
    refs["chirp_mel_small"] = mel(x, n_fft=512, win_length=400, hop_length=128, n_mels=40)

    n = int(0.3 * 16000)
    t = np.arange(n) / 16000
    st = np.stack([to_int16(0.4 * chirp(n, 16000, 300, 3000)), to_int16(0.3 * np.sin(2 * np.pi * 440 * t))], axis=1)
    write("stereo16k.wav", st, 16000)
    x, _ = read(os.path.join(OUT, "stereo16k.wav"))
    refs["stereo_ch0_samples"] = x[0]
    refs["stereo_ch1_samples"] = x[1]

    n = int(0.5 * 8000)
    t = np.arange(n) / 8000
    tones = (0.2 * np.sin(2 * np.pi * 300 * t) + 0.15 * np.sin(2 * np.pi * 1100 * t)
             + 0.1 * np.sin(2 * np.pi * 2500 * t) + 0.2 * chirp(n, 8000, 200, 3000))
    write("tones8k.wav", to_int16(tones), 8000)
    x, _ = read(os.path.join(OUT, "tones8k.wav"))
    refs["tones8k_samples"] = x[0]
    refs["tones8k_resampled"] = torchaudio.functional.resample(x[0], 8000, 16000)

    if os.path.exists(LIBRIVOX):
        s, rate = sf.read(LIBRIVOX, dtype="int16")
        assert rate == 16000, rate
        speech = s[8000:24000]  # 0.5 s to 1.5 s: inside the first words
        meta["speech_source"] = "pocketsphinx-testdata " + os.path.basename(LIBRIVOX) + " samples 8000:24000"
    else:
        n = 16000
        t = np.arange(n) / 16000
        f0 = 120 + 30 * np.sin(2 * np.pi * 2 * t)
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        speech = to_int16(sum(0.3 / k * np.sin(k * phase) for k in range(1, 30)) * (0.5 + 0.5 * np.sin(np.pi * t)))
        meta["speech_source"] = "synthetic harmonic signal (pocketsphinx-testdata not installed)"
    write("speech16k.wav", speech, 16000)
    x, _ = read(os.path.join(OUT, "speech16k.wav"))
    refs["speech_fbank"] = fbank(x)
    refs["speech_mel"] = mel(x)
    refs["speech_fbank_f32"] = fbank(x, dtype=torch.float32)
    refs["speech_mel_f32"] = mel(x, dtype=torch.float32)

    save_file({k: v.to(torch.float32).contiguous() for k, v in refs.items()},
              os.path.join(OUT, "refs.safetensors"), metadata=meta)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
