#!/usr/bin/env bash
# demo_bytelm.sh - the first demo: installs what is missing, builds, prepares real French text and
# trains + evaluates the byte-level language model of experiments/bytelm/fr_manpages.yaml.
# Extra arguments go to `luthier train` (e.g. --max-steps 50). Each call starts a fresh run
# directory under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh build
bash scripts/prepare_fr_text.sh data/fr-manpages.txt
out=runs/fr_manpages-$(date +%Y%m%d-%H%M%S)
./build/bin/luthier train experiments/bytelm/fr_manpages.yaml --out "$out" "$@"
./build/bin/luthier eval experiments/bytelm/fr_manpages.yaml --out "$out"
python3 scripts/plot_metrics.py "$out" --out "$out/metrics.png" 2>/dev/null ||
  echo "demo: (pip install matplotlib to get $out/metrics.png)"
echo "demo: run directory $out (config.yaml, metrics.jsonl, checkpoints/last.h5)"
