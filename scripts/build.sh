#!/usr/bin/env bash
# build.sh [BUILD_DIR] [cmake args...] - configures and builds luthier (CUDA backend included
# when nvcc is found). Default BUILD_DIR: build.
set -euo pipefail
dir=${1:-build}
# The CUDA toolkit's usual home, for shells whose PATH does not name it.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
shift || true
# Ninja where it is installed: it compiles one library's files while another's still compile (make
# waits for each library in turn, and conv.cu alone takes minutes). A build directory keeps the
# generator it was configured with.
gen=()
if [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >"$dir.cmake.log" 2>&1 ||
  { cat "$dir.cmake.log"; exit 1; }
rm -f "$dir.cmake.log"
cmake --build "$dir" -j"$(nproc)"
