#!/usr/bin/env python3
"""mergekit reference figure for `luthier bench merge` (experiments/runner/bench_merge.c), which
runs this script itself; by hand, from the repository root:

    /tmp/mkvenv/bin/python scripts/bench_merge_reference.py --config CONFIG.yaml --out DIR [--threads N]

Merges CONFIG with mergekit's Python API as `mergekit-yaml CONFIG DIR --lazy-unpickle
--no-copy-tokenizer` does on the CPU (run_merge, MergeOptions(lazy_unpickle=True, num_threads=N)
applied as the command applies it), timing run_merge alone (not python's start-up or the
imports), and prints one JSON line {"seconds", "cpu_seconds", "peak_rss_kb", "baseline_rss_kb",
"peak_anon_kb", "baseline_anon_kb", "mergekit": "mergekit 0.1.5"} or {"error": "why"}:
cpu_seconds is the process's user + system time during run_merge; peak_rss_kb the process's
getrusage maximum after the merge and baseline_rss_kb the same before it (python, torch and
mergekit imported); peak_anon_kb the largest RssAnon (heap, without file pages) sampled every
10 ms during the merge and baseline_anon_kb the value before it. DIR must not exist.

mergekit is installed as scripts/make_merge_fixtures.py says (a venv with --system-site-packages).
"""
import argparse
import json
import os
import resource
import sys
import threading
import time


def emit(**fields):
    print(json.dumps(fields), flush=True)


def rss_anon_kb():
    """RssAnon of this process in KiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class AnonPeak(threading.Thread):
    """Samples RssAnon every 10 ms, as the C side samples `luthier merge`."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_anon_kb())
            time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="mergekit YAML config")
    ap.add_argument("--out", required=True, help="output model directory (must not exist)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = ap.parse_args()
    try:
        sys.modules.setdefault("torchaudio", None)  # a torchaudio built for another CUDA breaks transformers
        import yaml
        from importlib.metadata import version
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except Exception as e:  # noqa: BLE001 - the failure becomes the reason in the table
        emit(error=f"{sys.executable} cannot import mergekit ({type(e).__name__}: {e}); install it as "
                   "scripts/make_merge_fixtures.py says and pass --python")
        return
    try:
        with open(args.config) as f:
            config = MergeConfiguration.model_validate(yaml.safe_load(f))
        options = MergeOptions(lazy_unpickle=True, copy_tokenizer=False, write_model_card=False,
                               num_threads=args.threads, quiet=True)
        options.apply_global_options()  # what mergekit-yaml does first: torch threads, log level
        base_anon = rss_anon_kb()
        sampler = AnonPeak()
        sampler.start()
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        run_merge(config, args.out, options)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        sampler.stop.set()
        sampler.join()
    except Exception as e:  # noqa: BLE001
        emit(error=f"mergekit failed: {type(e).__name__}: {e}")
        return
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    emit(seconds=seconds, cpu_seconds=cpu, peak_rss_kb=after.ru_maxrss, baseline_rss_kb=before.ru_maxrss,
         peak_anon_kb=sampler.peak, baseline_anon_kb=base_anon, mergekit=f"mergekit {version('mergekit')}")


if __name__ == "__main__":
    main()
