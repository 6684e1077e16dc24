#!/usr/bin/env python3
"""plot_metrics.py RUN_DIR [RUN_DIR ...] [--out FILE.png]

Plots training loss, evaluation metrics and the learning rate of one or more luthier runs from
their metrics.jsonl (matplotlib). Runs are overlaid so that configurations can be compared."""
import argparse
import json
import math
import os
import sys


def read(path):
    train, evals = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            (train if rec.get("event") == "train" else evals).append(rec)
    return train, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="metrics.png")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    for run in a.runs:
        path = os.path.join(run, "metrics.jsonl")
        if not os.path.exists(path):
            sys.exit(f"{run}: no metrics.jsonl")
        train, evals = read(path)
        name = os.path.basename(os.path.normpath(run))
        steps = [r["step"] for r in train if r.get("loss") is not None]
        ax_loss.plot(steps, [r["loss"] for r in train if r.get("loss") is not None], label=f"{name} train")
        keys = sorted({k for r in evals for k in r if k.endswith("loss")})
        for k in keys:
            pts = [(r["step"], r[k]) for r in evals if r.get(k) is not None and math.isfinite(r[k])]
            if pts:
                ax_loss.plot(*zip(*pts), "o-", label=f"{name} {k}")
        ax_lr.plot([r["step"] for r in train], [r.get("lr") for r in train], label=name)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"plot_metrics: wrote {a.out}")


if __name__ == "__main__":
    main()
