#!/usr/bin/env python3
"""Builds ASR manifests (JSONL: audio, text, duration, speaker) from the real speech that Debian
packages ship (shared/reference/data.md section 3), then computes their features.

Sources:
  asterisk-core-sounds-<lang>-wav + asterisk-core-sounds-<lang> (the transcript file): ~550
      telephony prompts by one speaker, 8 kHz (resampled to 16 kHz by the feature step);
  pocketsphinx-testdata: 5 LibriVox utterances (Sense and Sensibility), 16 kHz (English only);
  espeak-ng (optional, --espeak-voices): synthetic copies of the TRAINING prompts only.

Split: prompts are held out by a hash of their key (--test-percent), and any training prompt
whose normalised text equals a held-out one moves to the test set, so no test sentence is ever
heard in training; the LibriVox utterances are test-only. The test set is real human speech.

Usage:
  python3 scripts/prepare_debian_speech.py [--install] [--lang en|fr] [--out data/asr/debian-en]
      [--max-duration 16] [--test-percent 12] [--espeak-voices en+m3,en-us+f2] [--luthier build/bin/luthier]
Writes OUT/train.jsonl, OUT/test.jsonl and (unless --no-features) OUT/train.h5, OUT/test.h5 via
`luthier data prepare-speech --features fbank`.
"""
import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import wave

SOUNDS = "/usr/share/asterisk/sounds"
VOICE = {"en": "en_US_f_Allison", "fr": "fr_CA_f_June"}
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"


def install(lang):
    pkgs = [f"asterisk-core-sounds-{lang}", f"asterisk-core-sounds-{lang}-wav", "pocketsphinx-testdata", "espeak-ng"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *pkgs], check=True, env=env)


def wav_seconds(path):
    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()


def normalised(text):
    """The comparison key for disjointness: upper-case words without punctuation."""
    return " ".join(re.sub(r"[^\w']+", " ", text.upper()).split())


def asterisk_prompts(lang):
    """data.md 3.1: key: text lines; drop comments, tones/effects and keys without a WAV."""
    path = f"/usr/share/doc/asterisk-core-sounds-{lang}/core-sounds-{lang}.txt.gz"
    folder = os.path.join(SOUNDS, VOICE[lang])
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            key, text = line.split(":", 1)
            key = key.strip()
            text = text.strip().strip('"\u201c\u201d').strip()
            if not text or text[0] in "[(":
                continue
            wav = os.path.join(folder, key + ".wav")
            if not os.path.isfile(wav):
                continue
            out.append({"audio": wav, "text": text, "duration": round(wav_seconds(wav), 3),
                        "speaker": VOICE[lang], "key": key})
    return out


def librivox():
    utts = []
    with open(os.path.join(LIBRIVOX, "transcription"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line.strip())
            if m:
                wav = os.path.join(LIBRIVOX, m.group(2) + ".wav")
                utts.append({"audio": wav, "text": m.group(1), "duration": round(wav_seconds(wav), 3),
                             "speaker": "librivox-austen"})
    return utts


def held_out(key, percent):
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100 < percent


def espeak(utts, voices, folder):
    os.makedirs(folder, exist_ok=True)
    out = []
    for i, u in enumerate(utts):
        for v in voices:
            wav = os.path.abspath(os.path.join(folder, f"{i:04d}_{v.replace('+', '_')}.wav"))
            if not os.path.exists(wav):
                subprocess.run(["espeak-ng", "-v", v, "-w", wav, u["text"]], check=True)
            out.append({"audio": wav, "text": u["text"], "duration": round(wav_seconds(wav), 3), "speaker": "espeak-" + v})
    return out


def write(path, utts):
    with open(path, "w", encoding="utf-8") as f:
        for u in utts:
            f.write(json.dumps({k: u[k] for k in ("audio", "text", "duration", "speaker")}, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install", action="store_true", help="apt-get install the packages first")
    ap.add_argument("--lang", choices=["en", "fr"], default="en")
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-duration", type=float, default=16.0, help="longer training prompts are dropped")
    ap.add_argument("--test-percent", type=int, default=12)
    ap.add_argument("--espeak-voices", default="", help="comma-separated espeak-ng voices for synthetic training copies")
    ap.add_argument("--luthier", default="build/bin/luthier")
    ap.add_argument("--no-features", action="store_true")
    a = ap.parse_args()
    out = a.out or f"data/asr/debian-{a.lang}"
    if a.install:
        install(a.lang)
    prompts = asterisk_prompts(a.lang)
    test = [u for u in prompts if held_out(u["key"], a.test_percent)]
    test_texts = {normalised(u["text"]) for u in test}
    train = []
    for u in prompts:
        if u in test:
            continue
        if normalised(u["text"]) in test_texts:
            test.append(u)  # the same sentence said again: keep it out of training
        elif u["duration"] <= a.max_duration:
            train.append(u)
    if a.lang == "en":
        test += librivox()
    if a.espeak_voices:
        train += espeak(train, [v for v in a.espeak_voices.split(",") if v], os.path.join(out, "espeak"))
    assert not {normalised(u["text"]) for u in train} & {normalised(u["text"]) for u in test}
    os.makedirs(out, exist_ok=True)
    write(os.path.join(out, "train.jsonl"), train)
    write(os.path.join(out, "test.jsonl"), test)
    for name, utts in (("train", train), ("test", test)):
        print(f"{name}: {len(utts)} utterances, {sum(u['duration'] for u in utts) / 60:.1f} min", file=sys.stderr)
    if not a.no_features:
        for name in ("train", "test"):
            subprocess.run([a.luthier, "data", "prepare-speech", "--manifest", os.path.join(out, name + ".jsonl"),
                            "--out", os.path.join(out, name + ".h5"), "--features", "fbank"], check=True)


if __name__ == "__main__":
    main()
