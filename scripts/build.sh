#!/usr/bin/env bash
# build.sh [BUILD_DIR] [cmake args...] - configures and builds luthier (CUDA backend included
# when nvcc is found). Default BUILD_DIR: build.
set -euo pipefail
dir=${1:-build}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >"$dir.cmake.log" 2>&1 || { cat "$dir.cmake.log"; exit 1; }
rm -f "$dir.cmake.log"
cmake --build "$dir" -j"$(nproc)"
