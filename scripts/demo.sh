#!/usr/bin/env bash
# demo.sh - the main job, the Luth demo (experiments/luth/demo-small.yaml): installs what is
# missing, builds, fetches the real SmolLM2-135M-Instruct, prepares the French Debian FAQ as chat
# data and the French/English evaluation tasks (scripts/prepare_luth_demo.py), fine-tunes, merges
# the result with the original model (SLERP) and prints the three models' scores as the paper's
# tables (also in RUN/compare.md). Extra arguments go to `luthier train` (e.g. --max-steps 5
# compare.limit=3 for a quick look). Each call starts a fresh run directory under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
bash scripts/build.sh build
bash scripts/fetch_smollm2.sh
bash scripts/prepare_fr_text.sh data/fr-manpages.txt
python3 scripts/prepare_luth_demo.py --out data/luth-demo
model=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -d data/luth-demo/sft-512 ]; then
  ./build/bin/luthier data prepare-chat --input data/luth-demo/train.jsonl --tokenizer "$model" \
    --out data/luth-demo/sft-512 --seq-len 512 --valid-fraction 0.1 --seed 7
fi
out=runs/demo-small-$(date +%Y%m%d-%H%M%S)
./build/bin/luthier train experiments/luth/demo-small.yaml --out "$out" "$@"
python3 scripts/plot_metrics.py "$out" --out "$out/metrics.png" 2>/dev/null ||
  echo "demo: (pip install matplotlib to get $out/metrics.png)"
echo "demo: run directory $out: model/ (fine-tuned), base/, merged/, compare.md, metrics.jsonl;" \
  "$(( $(date +%s) - start )) s in all"
