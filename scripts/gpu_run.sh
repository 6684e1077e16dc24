#!/usr/bin/env bash
# gpu_run.sh PACKAGE OUT - on a GPU machine, runs what scripts/gpu_package.sh packed (PACKAGE is
# its directory or its .tar.xz / .tar.gz):
# nvidia-smi, `luthier version`, the GPU tests (test_cuda*) first, then every other test binary (unless
# LUTHIER_GPU_TESTS_ONLY=1: CI runs those already, and a device lease is short), then
# the benchmarks of LUTHIER_GPU_BENCHES (one `luthier bench` argument list per line; default
# `gpu`, `asr --train --device cuda`, `sft --device cuda` and both steps under LUTHIER_PROFILE=1;
# leading VAR=value words of a line set its environment; PyTorch references by python3 when it
# imports torch there, else --no-reference), and writes OUT/report.md (date, GPU, driver, each test
# binary's pass/fail counts from Criterion's summary line, benchmark output) and OUT/logs.tar.gz. Run it
# from the repository root (tests read fixtures, the benchmark its reference script, relative to
# it). Exit status 1 when a test failed or crashed.
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 PACKAGE_DIR|PACKAGE.tar.xz OUT" >&2
  exit 2
fi
out=$2
mkdir -p "$out/logs"
if [ -f "$1" ]; then
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  # GNU tar finds the compression itself; Python's tarfile where tar lacks xz.
  tar -xf "$1" -C "$unpacked" 2>/dev/null ||
    python3 -c 'import sys, tarfile
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)' "$1" "$unpacked" || exit 1
  pkg=$(find "$unpacked" -mindepth 2 -maxdepth 2 -name run.sh -printf '%h\n' | head -1)
  [ -n "$pkg" ] || { echo "gpu_run: no run.sh in $1" >&2; exit 1; }
else
  pkg=$(cd "$1" && pwd)
fi
report="$out/report.md"
run="$pkg/run.sh"
test_timeout=${LUTHIER_TEST_TIMEOUT:-300}
bench_timeout=${LUTHIER_BENCH_TIMEOUT:-600}
gpu_tests_only=${LUTHIER_GPU_TESTS_ONLY:-0}
start=$(date +%s)
# As in CTest: the CPU kernels' results must not depend on the thread count anyway.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

{
  echo "# luthier GPU run"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- host: $(hostname)"
} > "$report"

if nvidia-smi > "$out/logs/nvidia-smi.txt" 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
  echo "- GPU: $gpu" >> "$report"
  echo "- driver: $driver" >> "$report"
else
  echo "- GPU: none (nvidia-smi failed, see logs/nvidia-smi.txt)" >> "$report"
fi

# Libraries the package expects the machine to have (CUDA runtime, NCCL, ...; cuBLAS is opened
# at run time, and `luthier version` below names the one it found, or says why none).
unresolved=$(for b in "$pkg"/tests/* "$pkg"/bin/*; do LD_LIBRARY_PATH="$pkg/lib" ldd "$b"; done 2>/dev/null |
  grep 'not found' | sort -u | awk '{print $1}' | tr '\n' ' ')
echo "- libraries not found: ${unresolved:-none}" >> "$report"
# What the build holds and what it sees (luthier version): the GPU it can use, or why not.
if [ -x "$pkg/bin/luthier" ]; then
  {
    echo
    echo '```'
    "$run" "$pkg/bin/luthier" version 2>&1
    echo '```'
  } >> "$report"
fi

{
  echo
  echo "## Tests"
  echo
  echo "| binary | tested | passing | failing | crashing | skipped | exit |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
} >> "$report"

failed=0
tests=()
for t in "$pkg"/tests/test_cuda*; do
  [ -x "$t" ] && tests+=("$t")
done
if [ "$gpu_tests_only" != 1 ]; then
  for t in "$pkg"/tests/test_*; do
    case $(basename "$t") in test_cuda*) ;; *) tests+=("$t") ;; esac
  done
fi
for t in "${tests[@]}"; do
  name=$(basename "$t")
  log="$out/logs/$name.log"
  # As ctest runs them: memory a step gives back to its arena reads as NaN (a use after release fails).
  LUTHIER_ARENA_POISON=1 timeout "$test_timeout" "$run" "$t" --verbose --jobs "$(nproc)" > "$log" 2>&1
  rc=$?
  # Criterion's last line: [====] Synthesis: Tested: 18 | Passing: 18 | Failing: 0 | Crashing: 0
  line=$(grep -a 'Synthesis:' "$log" | tail -1)
  count() { echo "$line" | sed -n "s/.*$1: \([0-9]*\).*/\1/p"; }
  tested=$(count Tested) passing=$(count Passing) failing=$(count Failing) crashing=$(count Crashing)
  skipped=$(grep -ac '\[SKIP\]' "$log")
  [ -n "$line" ] || { tested=? passing=? failing=? crashing=?; }
  [ $rc -eq 124 ] && rc="124 (timeout ${test_timeout}s)"
  echo "| $name | $tested | $passing | $failing | $crashing | $skipped | $rc |" >> "$report"
  echo "gpu_run: $name exit $rc at $(( $(date +%s) - start )) s" >&2
  if [ "$rc" != 0 ]; then failed=1; fi
done

# Criterion's assertion messages ([----] file:line: ...) and failed test names, per failing binary.
for t in "${tests[@]}"; do
  log="$out/logs/$(basename "$t").log"
  if grep -aq '\[FAIL\]\|CRASH\|Assertion' "$log"; then
    {
      echo
      echo "### $(basename "$t"): failures"
      echo
      echo '```'
      # The assertion's location and message lines, and each failed test's name.
      grep -a -A2 '\[----\].*:[0-9]*: \|\[FAIL\]\|CRASH\|signal' "$log" | grep -av '^--$\|\[----\] *$\|\[RUN \]\|\[PASS\]\|\[SKIP\]' | head -80
      echo '```'
    } >> "$report"
  fi
done

{
  echo
  echo "## Benchmarks"
  echo
} >> "$report"
# The Python packages the references import, as the benchmarks will run them.
for mod in torch transformers safetensors torchaudio; do
  v=$("$run" python3 -c "import $mod; print($mod.__version__)" 2>/dev/null) || v="not importable"
  echo "- python3 $mod: $v" >> "$report"
done
echo >> "$report"
if [ -x "$pkg/bin/luthier" ]; then
  if "$run" python3 -c "import torch" > "$out/logs/python-torch.txt" 2>&1; then
    reference=()
    gpu_reference=(--python "$(command -v python3)")
  else
    reference=(--no-reference)
    gpu_reference=(--no-reference)
  fi
  # One `luthier bench` per line: the kernels beside PyTorch, then training steps on the GPU, then
  # both steps again under the per-op profiler (leading VAR=value words set the environment).
  benches=${LUTHIER_GPU_BENCHES:-"gpu
asr --train --device cuda
sft --device cuda
LUTHIER_PROFILE=1 asr --train --device cuda --runs 2 --no-reference
LUTHIER_PROFILE=1 sft --device cuda --steps 1 --warmup 1 --no-reference"}
  while IFS= read -r bench; do
    [ -n "$bench" ] || continue
    read -r -a args <<< "$bench"
    envs=()
    while [ ${#args[@]} -gt 0 ] && [[ ${args[0]} == [A-Z_]*=* ]]; do envs+=("${args[0]}"); args=("${args[@]:1}"); done
    if [ "${args[0]}" = gpu ]; then args+=("${gpu_reference[@]}"); else args+=("${reference[@]}"); fi
    log="$out/logs/bench-$(echo "${envs[*]} ${args[*]}" | tr -c 'a-zA-Z0-9\n' '-' | tr -s '-' | sed 's/^-//')"
    # stdout is Markdown (tables and notes); stderr, the progress lines and any profile, stays in the log.
    timeout "$bench_timeout" env "${envs[@]}" "$run" "$pkg/bin/luthier" bench "${args[@]}" > "$log.md" 2> "$log.log"
    rc=$?
    [ $rc -eq 124 ] && rc="124 (timeout ${bench_timeout}s)"
    echo "gpu_run: bench ${envs[*]}${envs[*]:+ }${args[*]} exit $rc at $(( $(date +%s) - start )) s" >&2
    {
      echo "### ${envs[*]}${envs[*]:+ }luthier bench ${args[*]} (exit $rc)"
      echo
      cat "$log.md"
      if grep -q '^luthier profile' "$log.log"; then
        echo; echo '```'; sed -n '/^luthier profile/,/all ops/p' "$log.log"; echo '```'
      fi
      [ "$rc" = 0 ] || { echo; echo '```'; tail -20 "$log.log"; echo '```'; }
      echo
    } >> "$report"
  done <<< "$benches"
else
  echo "bin/luthier was not packaged: no \`luthier bench\`." >> "$report"
fi

[ "$gpu_tests_only" = 1 ] && { echo; echo "Only the GPU tests ran (LUTHIER_GPU_TESTS_ONLY=1)."; } >> "$report"
echo >> "$report"
echo "Wall time of this run: $(( $(date +%s) - start )) s." >> "$report"
# One archive of the logs: a device machine may return only a few files.
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$out/logs"
cat "$report"
exit $failed
