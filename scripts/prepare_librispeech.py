#!/usr/bin/env python3
"""Builds ASR manifests (JSONL: audio, text, duration, speaker) from LibriSpeech's public layout,
for the paper-scale configs (experiments/asr/*-librispeech.yaml):

    ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   ("<utt id> <TEXT>" lines)

Usage:
  python3 scripts/prepare_librispeech.py --root /data/LibriSpeech --out data/asr/librispeech
      [--subsets train-clean-100,train-clean-360,train-other-500,dev-clean,test-clean,test-other]
      [--merge train-960=train-clean-100,train-clean-360,train-other-500]

Writes OUT/<subset>.jsonl per subset (utterances sorted by id; the speaker is the LibriSpeech
speaker id) and OUT/<name>.jsonl for each --merge. Durations come from the FLAC headers
(soundfile if installed, else `soxi -D`). Audio paths are absolute. Then compute features:
  luthier data prepare-speech --manifest OUT/train-960.jsonl --out OUT/train-960.h5 --features mel
"""
import argparse
import json
import os
import subprocess
import sys

DEFAULT_SUBSETS = "train-clean-100,train-clean-360,train-other-500,dev-clean,dev-other,test-clean,test-other"


def flac_seconds(path):
    try:
        import soundfile

        info = soundfile.info(path)
        return info.frames / info.samplerate
    except ImportError:
        return float(subprocess.run(["soxi", "-D", path], check=True, capture_output=True, text=True).stdout)


def subset_utterances(root, subset):
    base = os.path.join(root, subset)
    if not os.path.isdir(base):
        sys.exit(f"prepare_librispeech: no folder {base}")
    utts = []
    for speaker in sorted(os.listdir(base)):
        for chapter in sorted(os.listdir(os.path.join(base, speaker))):
            folder = os.path.join(base, speaker, chapter)
            trans = os.path.join(folder, f"{speaker}-{chapter}.trans.txt")
            with open(trans, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    parts = line.strip().split(" ", 1)
                    if len(parts) != 2:
                        sys.exit(f"prepare_librispeech: {trans}:{n}: expected '<id> <text>'")
                    audio = os.path.abspath(os.path.join(folder, parts[0] + ".flac"))
                    if not os.path.isfile(audio):
                        sys.exit(f"prepare_librispeech: {trans}:{n}: missing {audio}")
                    utts.append({"audio": audio, "text": parts[1], "duration": round(flac_seconds(audio), 3),
                                 "speaker": speaker})
    return utts


def write(path, utts):
    with open(path, "w", encoding="utf-8") as f:
        for u in utts:
            f.write(json.dumps(u, ensure_ascii=False) + "\n")
    print(f"{path}: {len(utts)} utterances, {sum(u['duration'] for u in utts) / 3600:.1f} h", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the LibriSpeech folder (holding train-clean-100/, ...)")
    ap.add_argument("--out", default="data/asr/librispeech")
    ap.add_argument("--subsets", default=DEFAULT_SUBSETS)
    ap.add_argument("--merge", action="append", default=[],
                    help="NAME=SUBSET,SUBSET,... (default: train-960 from the three training subsets)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    done = {}
    for subset in [s for s in a.subsets.split(",") if s]:
        if os.path.isdir(os.path.join(a.root, subset)):
            done[subset] = subset_utterances(a.root, subset)
            write(os.path.join(a.out, subset + ".jsonl"), done[subset])
        else:
            print(f"prepare_librispeech: skipping absent subset {subset}", file=sys.stderr)
    merges = a.merge or ["train-960=train-clean-100,train-clean-360,train-other-500"]
    for m in merges:
        name, parts = m.split("=", 1)
        parts = parts.split(",")
        if all(p in done for p in parts):
            write(os.path.join(a.out, name + ".jsonl"), [u for p in parts for u in done[p]])
        else:
            print(f"prepare_librispeech: {name} needs {parts}, not all present", file=sys.stderr)


if __name__ == "__main__":
    main()
