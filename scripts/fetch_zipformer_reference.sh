#!/usr/bin/env bash
# Fetches the Zipformer modules that scripts/bench_asr_reference.py (`luthier bench asr`) runs as
# the PyTorch reference when no icefall checkout is given, into data/zipformer_ref/ (not committed).
#
# Source: the PyPI wheel `zipformer` 0.1.3 (k2-fsa's official standalone Zipformer, source
# pkufool/zipformer, Apache-2.0; asr.md 9.8), downloaded with pip (--no-deps: it is NOT installed,
# its requirements pin an older torch) and pinned by SHA-256. Only zipformer/modules/
# {zipformer,scaling,subsampling}.py and the wheel's METADATA are extracted.
#
# Those files are icefall's egs/librispeech/ASR/zipformer/{zipformer,scaling,subsampling}.py with
# the imports rewritten to the package (`from zipformer.modules.scaling import ...`,
# `from zipformer.utils import torch_autocast`), Zipformer2 renamed Zipformer, the
# EncoderInterface base replaced by torch.nn.Module, and SwooshL/SwooshR built with torch.compile
# instead of k2 (switched off by K2_ONNX_EXPORT=1). So they cannot be given to
# make_zipformer_fixtures.py --icefall as they are (that expects flat modules importing each other
# as `scaling`, and k2/icefall stubs); bench_asr_reference.py wires the package names up itself
# (load_wheel_modules) and leaves the files unchanged. The fixtures of tests/fixtures/zipformer/
# stay tied to icefall 36e0420 (make_zipformer_fixtures.py --icefall DIR).
#
# Without this directory and without `luthier bench asr --icefall DIR`, the Zipformer row of the
# benchmark says that no reference is available instead of giving a PyTorch figure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/zipformer_ref"
PKG=zipformer
VERSION=0.1.3
WHEEL=zipformer-0.1.3-py3-none-any.whl
WHEEL_SHA256=01571f6588bd77459914722d16ac2a6f5de3d29184f8d564f77c8fe9544020c6
FILES=(zipformer/modules/zipformer.py zipformer/modules/scaling.py zipformer/modules/subsampling.py
       zipformer-0.1.3.dist-info/METADATA)

if [[ -f "$DEST/zipformer/modules/zipformer.py" ]]; then
    echo "$DEST already present"
    exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP" "$PKG==$VERSION"
echo "$WHEEL_SHA256  $TMP/$WHEEL" | sha256sum --check --quiet
python3 - "$TMP/$WHEEL" "$TMP/out" "${FILES[@]}" <<'PY'
import os, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        os.makedirs(os.path.join(out, os.path.dirname(name)), exist_ok=True)
        with z.open(name) as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
PY
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
echo "wrote $DEST (${FILES[*]})"
