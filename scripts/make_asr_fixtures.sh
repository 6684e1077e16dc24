#!/bin/sh
# Regenerates tests/fixtures/asr/: six short English utterances synthesised by espeak-ng
# (22,050 Hz mono 16-bit WAV, ~150 KB in all) and their manifest, read by tests/test_asr_task.c
# and tests/test_asr_data.c. Needs espeak-ng (apt-get install espeak-ng). Run once from the
# repository root: sh scripts/make_asr_fixtures.sh
set -eu
out=tests/fixtures/asr
mkdir -p "$out"
: > "$out/manifest.jsonl"
i=0
for text in "yes" "no" "go left" "stop" "go right" "no stop"; do
    i=$((i + 1))
    wav="utt$i.wav"
    espeak-ng -v en-us -s 170 -w "$out/$wav" "$text"
    dur=$(python3 -c "import wave,sys; w=wave.open(sys.argv[1]); print(round(w.getnframes()/w.getframerate(),3))" "$out/$wav")
    printf '{"audio": "%s", "text": "%s", "duration": %s, "speaker": "espeak-en-us"}\n' "$wav" "$text" "$dur" >> "$out/manifest.jsonl"
done
