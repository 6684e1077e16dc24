#!/usr/bin/env bash
# gpu_package.sh BUILD_DIR OUT_DIR - packs the built test binaries, `luthier` and any bench_*
# programs with the shared libraries they need that a bare Ubuntu 24.04 + CUDA 13 runtime machine
# lacks (OpenBLAS, HDF5, libyaml, cJSON, Criterion, libgomp and their dependencies), so that
# scripts/gpu_run.sh can run them on a GPU machine that has no build tools. The driver (libcuda),
# the CUDA runtime libraries (cudart, cuBLAS, NCCL) and the C/C++ runtime are expected there and
# are not copied. OUT_DIR/run.sh CMD... runs CMD with OUT_DIR/lib on LD_LIBRARY_PATH.
# OUT_DIR.tar.xz holds the same: xz with a dictionary larger than any binary, since the test
# binaries and `luthier` each carry the same CUDA code (sm_80 + sm_90a, 18 MB a binary): 197 MB
# packed into 22 MB, where gzip's 32 KB window gave 78 MB, over what a device machine takes
# (about 2.5 minutes of one core); gpu_run.sh takes either the directory or the archive.
# LUTHIER_GPU_TESTS_ONLY=1 packs only the GPU test binaries (test_cuda*) and the programs: CI
# runs the others, and a device machine takes a limited upload.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR OUT_DIR" >&2
  exit 2
fi
build=$1
out=$2
if [ ! -d "$build/tests" ]; then
  echo "gpu_package: $build/tests not found (build first: cmake --build $build)" >&2
  exit 1
fi

mkdir -p "$out/tests" "$out/bin" "$out/lib"
bins=()
pattern='test_*'
[ "${LUTHIER_GPU_TESTS_ONLY:-0}" = 1 ] && pattern='test_cuda*'
for f in "$build"/tests/$pattern; do
  [ -x "$f" ] && [ -f "$f" ] || continue
  cp "$f" "$out/tests/"
  bins+=("$f")
done
for f in "$build"/bin/luthier "$build"/bin/bench_*; do
  [ -x "$f" ] && [ -f "$f" ] || continue
  cp "$f" "$out/bin/"
  bins+=("$f")
done
if [ ${#bins[@]} -eq 0 ]; then
  echo "gpu_package: no binaries found under $build" >&2
  exit 1
fi

# Present on the target machine: glibc, the GCC runtime, the NVIDIA driver and CUDA runtime.
system='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libresolv|libgcc_s|libstdc\+\+|libcuda\.so|libnvidia|libcudart|libcublas|libcublasLt|libnccl)'
missing=0
for b in "${bins[@]}"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then
      echo "gpu_package: $b needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    if [[ "$name" =~ $system ]]; then continue; fi
    [ -e "$out/lib/$name" ] || cp -L "$path" "$out/lib/$name"
  done < <(ldd "$b")
done
[ $missing -eq 0 ] || exit 1

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# run.sh CMD [ARGS...] - runs CMD with this package's libraries first on the search path.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
RUN
chmod +x "$out/run.sh"
tar -cf - -C "$(dirname "$out")" "$(basename "$out")" | xz -9 -T1 --lzma2=dict=192MiB > "$out.tar.xz.tmp"
mv "$out.tar.xz.tmp" "$out.tar.xz"
echo "gpu_package: ${#bins[@]} binaries, $(ls "$out/lib" | wc -l) libraries, $(du -sh "$out" | cut -f1) in $out ($(du -sh "$out.tar.xz" | cut -f1) as $out.tar.xz)"
