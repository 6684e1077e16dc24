#!/usr/bin/env bash
# setup.sh - installs every Debian package that building, testing and the demos of luthier need.
# Idempotent: when everything is present it only checks (about a second) and installs nothing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  libopenblas-openmp-dev  # BLAS for the CPU backend, on luthier's OpenMP threads
  libhdf5-dev          # checkpoints and datasets
  libyaml-dev          # experiment configs
  libcjson-dev         # JSON (metrics, config.json, tokenizer.json)
  libcriterion-dev     # tests
  libsndfile1-dev      # audio I/O (WAV, FLAC)
  libsamplerate0-dev   # resampling (8 kHz sources)
  libfftw3-dev         # FFT for speech features
  libutf8proc-dev      # Unicode NFC and categories (tokenizer)
  libpcre2-dev         # the Qwen pre-tokenizer regex (\p{L}, lookahead)
  libopenmpi-dev openmpi-bin  # multi-process launching
  python3              # fixture and plot scripts, the CUDA emulator's kernel-file transform
  manpages-fr          # real French text (demo tasks, the byte-level language model)
  debian-faq-fr debian-faq  # French instruction data and French/English evaluation of the Luth demo
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
