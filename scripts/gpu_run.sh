#!/usr/bin/env bash
# gpu_run.sh PACKAGE OUT - on a GPU machine, runs what scripts/gpu_package.sh packed (PACKAGE is
# its directory or its .tar.gz):
# nvidia-smi, the GPU tests (test_cuda*) first, then every other test binary, then
# `luthier bench gpu` (PyTorch reference by python3 when it imports torch there, else
# --no-reference) and any bench_* program, and writes OUT/report.md (date, GPU, driver, each test
# binary's pass/fail counts from Criterion's summary line, benchmark output) and OUT/logs/. Run it
# from the repository root (tests read fixtures, the benchmark its reference script, relative to
# it). Exit status 1 when a test failed or crashed.
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 PACKAGE_DIR|PACKAGE.tar.gz OUT" >&2
  exit 2
fi
out=$2
mkdir -p "$out/logs"
if [ -f "$1" ]; then
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar -xzf "$1" -C "$unpacked" || exit 1
  pkg=$(find "$unpacked" -mindepth 2 -maxdepth 2 -name run.sh -printf '%h\n' | head -1)
  [ -n "$pkg" ] || { echo "gpu_run: no run.sh in $1" >&2; exit 1; }
else
  pkg=$(cd "$1" && pwd)
fi
report="$out/report.md"
run="$pkg/run.sh"
test_timeout=${LUTHIER_TEST_TIMEOUT:-300}
bench_timeout=${LUTHIER_BENCH_TIMEOUT:-600}
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

# Libraries the package expects the machine to have (CUDA runtime, cuBLAS, NCCL, ...).
unresolved=$(for b in "$pkg"/tests/* "$pkg"/bin/*; do LD_LIBRARY_PATH="$pkg/lib" ldd "$b"; done 2>/dev/null |
  grep 'not found' | sort -u | awk '{print $1}' | tr '\n' ' ')
echo "- libraries not found: ${unresolved:-none}" >> "$report"

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
for t in "$pkg"/tests/test_*; do
  case $(basename "$t") in test_cuda*) ;; *) tests+=("$t") ;; esac
done
for t in "${tests[@]}"; do
  name=$(basename "$t")
  log="$out/logs/$name.log"
  timeout "$test_timeout" "$run" "$t" --verbose --jobs "$(nproc)" > "$log" 2>&1
  rc=$?
  # Criterion's last line: [====] Synthesis: Tested: 18 | Passing: 18 | Failing: 0 | Crashing: 0
  line=$(grep -a 'Synthesis:' "$log" | tail -1)
  count() { echo "$line" | sed -n "s/.*$1: \([0-9]*\).*/\1/p"; }
  tested=$(count Tested) passing=$(count Passing) failing=$(count Failing) crashing=$(count Crashing)
  skipped=$(grep -ac '\[SKIP\]' "$log")
  [ -n "$line" ] || { tested=? passing=? failing=? crashing=?; }
  [ $rc -eq 124 ] && rc="124 (timeout ${test_timeout}s)"
  echo "| $name | $tested | $passing | $failing | $crashing | $skipped | $rc |" >> "$report"
  if [ "$rc" != 0 ]; then failed=1; fi
done

{
  echo
  echo "## Benchmarks"
  echo
} >> "$report"
if [ -x "$pkg/bin/luthier" ]; then
  # Checked as the benchmark will run it: with the package's libraries on the search path.
  if "$run" python3 -c "import torch" > "$out/logs/python-torch.txt" 2>&1; then
    reference=(--python "$(command -v python3)")
  else
    reference=(--no-reference)
  fi
  # stdout is Markdown (tables and notes); stderr, the progress lines, stays in the log.
  timeout "$bench_timeout" "$run" "$pkg/bin/luthier" bench gpu "${reference[@]}" \
    > "$out/logs/bench-gpu.md" 2> "$out/logs/bench-gpu.log"
  rc=$?
  [ $rc -eq 124 ] && rc="124 (timeout ${bench_timeout}s)"
  {
    echo "### luthier bench gpu ${reference[*]} (exit $rc)"
    echo
    cat "$out/logs/bench-gpu.md"
    [ "$rc" = 0 ] || { echo; echo '```'; tail -20 "$out/logs/bench-gpu.log"; echo '```'; }
    echo
  } >> "$report"
else
  echo "bin/luthier was not packaged: no \`luthier bench gpu\`." >> "$report"
fi
benches=("$pkg"/bin/bench_*)
if [ -x "${benches[0]}" ]; then
  for b in "${benches[@]}"; do
    name=$(basename "$b")
    timeout "$test_timeout" "$run" "$b" > "$out/logs/$name.log" 2>&1
    rc=$?
    {
      echo "### $name (exit $rc)"
      echo
      echo '```'
      cat "$out/logs/$name.log"
      echo '```'
    } >> "$report"
  done
else
  echo "No bench_* programs were packaged." >> "$report"
fi

cat "$report"
exit $failed
