#!/usr/bin/env python3
"""plot_asr.py RUN_DIR [RUN_DIR ...] --out DIR

Tables and plots of early-exit ASR runs (the `asr` trainer task) from their metrics.jsonl, using
the last evaluation of each run:
  DIR/wer_per_exit.png   WER per exit, one line per run (e.g. EE-Conformer vs Splitformer)
  DIR/wer_vs_exit.png    WER against the average exit for the dynamic-exit policies
                         (dyn_<criterion>_<threshold>_wer / _avg_exit), one curve per run and
                         criterion, with the fixed exits for reference
  DIR/loss.png           training loss (and held-out loss) against the step
  DIR/wer_table.md       the runs side by side in the paper's layout: one row per exit, one WER
                         column per model (also printed)
A run is named by its model.arch (config.yaml in the run directory) or else its directory."""
import argparse
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_metrics import read  # noqa: E402 - metrics.jsonl into (train, evals) records

ARCH_NAMES = {"ee_conformer": "EE-Conformer", "splitformer": "Splitformer", "ee_zipformer": "EE-Zipformer"}


def run_name(run):
    for cfg in ("config.yaml", "config.yml"):
        path = os.path.join(run, cfg)
        if os.path.exists(path):
            m = re.search(r"^\s*arch:\s*(\w+)", open(path).read(), re.M)
            if m:
                return ARCH_NAMES.get(m.group(1), m.group(1))
    return os.path.basename(os.path.normpath(run))


def load(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"{run}: no metrics.jsonl")
    train, evals = read(path)
    last = next((r for r in reversed(evals) if any(k.startswith("wer_exit_") for k in r)), None)
    if last is None:
        sys.exit(f"{run}: no evaluation with wer_exit_* in metrics.jsonl")
    wer = {int(k[len("wer_exit_"):]): v for k, v in last.items() if k.startswith("wer_exit_")}
    dyn = {}  # criterion -> [(threshold, avg_exit, wer)]
    for k, v in last.items():
        m = re.fullmatch(r"dyn_(\w+?)_([0-9.]+)_wer", k)
        if m and f"dyn_{m.group(1)}_{m.group(2)}_avg_exit" in last:
            dyn.setdefault(m.group(1), []).append((float(m.group(2)), last[f"dyn_{m.group(1)}_{m.group(2)}_avg_exit"], v))
    return {"name": run_name(run), "train": train, "evals": evals, "step": last["step"], "wer": wer, "dyn": dyn}


def table(runs):
    names = [r["name"] for r in runs]
    exits = sorted({e for r in runs for e in r["wer"]})
    lines = ["| Exit | " + " | ".join(f"{n} WER (%)" for n in names) + " |",
             "|---:|" + "---:|" * len(runs)]
    for e in exits:
        cells = [f"{r['wer'][e]:.1f}" if e in r["wer"] and math.isfinite(r["wer"][e]) else "-" for r in runs]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True, help="directory for the PNGs and wer_table.md")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load(r) for r in a.runs]
    os.makedirs(a.out, exist_ok=True)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        exits = sorted(r["wer"])
        ax.plot(exits, [r["wer"][e] for e in exits], "o-", label=f"{r['name']} (step {r['step']})")
    ax.set_xlabel("exit")
    ax.set_ylabel("WER (%)")
    ax.set_title("WER per exit")
    ax.set_xticks(sorted({e for r in runs for e in r["wer"]}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "wer_per_exit.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, r in enumerate(runs):
        color = f"C{i}"
        exits = sorted(r["wer"])
        ax.plot(exits, [r["wer"][e] for e in exits], ":", color=color, alpha=0.6, label=f"{r['name']} fixed exit")
        for crit, marker in zip(sorted(r["dyn"]), "os^v"):
            pts = sorted(r["dyn"][crit], key=lambda p: p[1])
            ax.plot([p[1] for p in pts], [p[2] for p in pts], marker + "-", color=color, label=f"{r['name']} {crit}")
            for thr, x, y in pts:
                ax.annotate(f"{thr:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("average exit (encoder blocks run)")
    ax.set_ylabel("WER (%)")
    ax.set_title("Dynamic exit: WER vs average exit (labels: thresholds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "wer_vs_exit.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, r in enumerate(runs):
        pts = [(t["step"], t["loss"]) for t in r["train"] if t.get("loss") is not None]
        if pts:
            ax.plot(*zip(*pts), "-", color=f"C{i}", label=f"{r['name']} train")
        pts = [(e["step"], e["valid_loss"]) for e in r["evals"]
               if e.get("valid_loss") is not None and math.isfinite(e["valid_loss"])]
        if pts:
            ax.plot(*zip(*pts), "o--", color=f"C{i}", label=f"{r['name']} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("CTC loss (sum over exits)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "loss.png"), dpi=110)
    plt.close(fig)

    md = table(runs)
    with open(os.path.join(a.out, "wer_table.md"), "w") as f:
        f.write(md)
    print(md, end="")
    print(f"plot_asr: wrote wer_per_exit.png, wer_vs_exit.png, loss.png and wer_table.md in {a.out}")


if __name__ == "__main__":
    main()
