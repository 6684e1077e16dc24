#!/usr/bin/env python3
"""Extract the question/answer pairs of the French Debian FAQ into chat JSONL for SFT.

Reads the gzipped plain-text FAQ installed by the Debian package `debian-faq-fr`
(apt-get install debian-faq-fr; /usr/share/doc/debian/FAQ/debian-faq.fr.txt.gz) and writes one
{"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "id": "1.1."} line per pair, the
extraction of shared/reference/data.md section 2.1: U+00A0 -> space; headings match
^\\d+\\.\\d+\\.(\\d+\\.)? \\S; the answer is every non-empty line up to the next heading, stripped and
joined with single spaces; a pair is kept when the question ends with "?" and the answer is not
empty. --max-words cuts long answers (whole words) for a small model.

usage: python3 scripts/prepare_fr_faq.py [--faq PATH] [--max-words N] --out data/fr-faq.jsonl
       [--heldout-every K --heldout-out data/fr-faq-heldout.jsonl]

With --heldout-every K every K-th pair (in FAQ order) goes to the held-out file instead, so the
evaluation questions are never trained on.
"""
import argparse
import gzip
import json
import re

HEADING = re.compile(r"^(\d+\.\d+\.(?:\d+\.)?) (\S.*)$")


def pairs(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.replace("\u00a0", " ").rstrip("\n") for line in f]
    out, current = [], None
    for line in lines:
        m = HEADING.match(line)
        if m:
            if current:
                out.append(current)
            current = {"id": m.group(1), "question": m.group(2).strip(), "answer": []}
        elif current is not None and line.strip():
            current["answer"].append(line.strip())
    if current:
        out.append(current)
    for p in out:
        answer = " ".join(p["answer"])
        if p["question"].endswith("?") and answer:
            yield p["id"], p["question"], answer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faq", default="/usr/share/doc/debian/FAQ/debian-faq.fr.txt.gz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-words", type=int, default=0, help="cut answers to this many words (0: keep all)")
    ap.add_argument("--heldout-every", type=int, default=0)
    ap.add_argument("--heldout-out")
    a = ap.parse_args()
    if a.heldout_every and not a.heldout_out:
        ap.error("--heldout-every needs --heldout-out")
    train = open(a.out, "w", encoding="utf-8")
    held = open(a.heldout_out, "w", encoding="utf-8") if a.heldout_every else None
    n_train = n_held = 0
    for i, (pid, q, ans) in enumerate(pairs(a.faq)):
        if a.max_words:
            words = ans.split(" ")
            if len(words) > a.max_words:
                ans = " ".join(words[: a.max_words]) + " …"
        row = {"id": pid, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]}
        if held and (i + 1) % a.heldout_every == 0:
            held.write(json.dumps(row, ensure_ascii=False) + "\n")
            n_held += 1
        else:
            train.write(json.dumps(row, ensure_ascii=False) + "\n")
            n_train += 1
    train.close()
    if held:
        held.close()
    print(f"{n_train} pairs -> {a.out}" + (f", {n_held} held out -> {a.heldout_out}" if held else ""))


if __name__ == "__main__":
    main()
