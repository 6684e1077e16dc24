#!/usr/bin/env bash
# prepare_fr_text.sh [OUT] - renders the French manual pages of Debian's manpages-fr package
# (section 1, human-written French) to one plain UTF-8 text file for the byte-level LM demo.
# Default OUT: data/fr-manpages.txt. Rewrites OUT only when it is missing.
set -euo pipefail
out=${1:-data/fr-manpages.txt}
if [ -s "$out" ]; then
  echo "prepare_fr_text: $out exists ($(wc -c <"$out") bytes)"
  exit 0
fi
src=/usr/share/man/fr/man1
if [ ! -d "$src" ]; then
  echo "prepare_fr_text: $src not found: install manpages-fr (scripts/setup.sh does)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# Render each page without hyphenation or justification, strip overstrikes and squeeze the
# indentation runs that man adds.
for page in "$src"/*.1.gz; do
  [ -L "$page" ] && continue
  MANWIDTH=100 man --no-hyphenation --no-justification -l "$page" 2>/dev/null | col -bx || true
done | sed -e 's/^ \+//' -e 's/ \{2,\}/ /g' | cat -s >"$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "prepare_fr_text: wrote $out ($(wc -c <"$out") bytes from $(ls "$src"/*.1.gz | wc -l) pages)"
