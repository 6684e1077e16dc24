#!/usr/bin/env python3
"""PyTorch eager reference figures for `luthier bench asr` (experiments/runner/bench_asr.c),
which runs this script itself; by hand, from the repository root:

    python3 scripts/bench_asr_reference.py [--seconds 10] [--threads N] [--runs 5] [--icefall DIR]
    python3 scripts/bench_asr_reference.py --train [--batch 8] [--device cpu|cuda] [--seconds 10] [--runs 5]

Prints one JSON line per model, {"model": ..., "params": ..., "seconds_per_forward": ...} or
{"model": ..., "error": "why"}; other output lines are diagnostics. Both models are built in
float32 with random weights (the modules' own initialisation), in eval mode, and timed as the C
side times them: forward under torch.no_grad() on one utterance (B = 1, 80 features, 100 frames a
second, values U(-1, 1)), one warm-up, then the median of --runs passes, torch.set_num_threads(N).

  ee-conformer     EarlyExitConformer of scripts/make_conformer_fixtures.py (the authors'
                   Early_conformer with torchaudio Conformer blocks) in the paper configuration,
                   as lu_ee_conformer_paper_config(false): d 256, 8 heads, FFN 2048, kernel 31,
                   6 exits x 2 layers, V 256, 80 mels, PE max_len 2000; all 6 exits computed.
  zipformer-small  Encoder of scripts/make_zipformer_fixtures.py (icefall Conv2dSubsampling +
                   Zipformer2) with its SMALL configuration (asr.md 9.5), which is
                   lu_zipformer_small_config: feature_dim 80, layer channels 8/32/128. The
                   modules come from --icefall DIR (egs/librispeech/ASR/zipformer of an icefall
                   checkout, loaded as make_zipformer_fixtures.py --icefall does) or, without it,
                   from data/zipformer_ref/ as scripts/fetch_zipformer_reference.sh writes it
                   (the PyPI `zipformer` 0.1.3 wheel's modules; see load_wheel_modules). With
                   neither, this model reports an error.

Needs torch and safetensors (the fixture scripts import it); torchaudio is not needed.
"""
import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
WHEEL_DIR = os.path.join(HERE, "..", "data", "zipformer_ref")


def emit(model, **fields):
    print(json.dumps({"model": model, **fields}), flush=True)


def load_script(name):
    """A fixture script of scripts/ as a module (its main() is not run)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def median_seconds(forward, runs, sync=lambda: None):
    """sync waits for the device (torch.cuda.synchronize on a GPU): a pass ends with its last kernel."""
    forward()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        forward()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[runs // 2]  # the C side's choice: the upper median for even counts


def load_wheel_modules(root):
    """zipformer.py, scaling.py and subsampling.py of the `zipformer` wheel (in
    root/zipformer/modules/) are icefall's files with the imports rewritten to the package
    (`from zipformer.modules.scaling import ...`, `from zipformer.utils import torch_autocast`)
    and Zipformer2 renamed Zipformer. Rather than installing the package (its requirements pin
    an older torch and pull in a toolkit), the two packages are made here: `zipformer` and
    `zipformer.modules` as namespace modules over the extracted directories, so that the
    package's __init__ files (which import its inference and training code) never run, and
    `zipformer.utils` holding only torch_autocast, which the modules use under fp16 autocast only
    (a no-op here, as make_zipformer_fixtures.py stubs icefall.utils). K2_ONNX_EXPORT=1 makes the
    package's scaling.torch_compile return SwooshL/SwooshR uncompiled, so the model runs eager,
    as icefall's own files do."""
    mod_dir = os.path.join(root, "zipformer", "modules")
    for f in ("zipformer.py", "scaling.py", "subsampling.py"):
        if not os.path.isfile(os.path.join(mod_dir, f)):
            raise FileNotFoundError(f"no Zipformer reference: pass --icefall DIR or run "
                                    f"scripts/fetch_zipformer_reference.sh ({os.path.join(mod_dir, f)} is missing)")
    os.environ["K2_ONNX_EXPORT"] = "1"
    pkg = types.ModuleType("zipformer")
    pkg.__path__ = [os.path.join(root, "zipformer")]
    modules = types.ModuleType("zipformer.modules")
    modules.__path__ = [mod_dir]
    utils = types.ModuleType("zipformer.utils")
    utils.torch_autocast = lambda *a, **k: contextlib.nullcontext()
    pkg.modules, pkg.utils = modules, utils
    sys.modules.update({"zipformer": pkg, "zipformer.modules": modules, "zipformer.utils": utils})
    zipformer = importlib.import_module("zipformer.modules.zipformer")
    subsampling = importlib.import_module("zipformer.modules.subsampling")
    return types.SimpleNamespace(Zipformer2=zipformer.Zipformer), subsampling


def bench_conformer(torch, fx, args):
    model = fx.EarlyExitConformer(n_mels=80, d=256, heads=8, ffn=2048, kernel=31, layers=2, n_exits=6, vocab=256,
                                  split_exits=[], max_len=2000).float().eval()
    frames = round(args.seconds * 100)
    feats = torch.rand(1, 80, frames) * 2 - 1  # the authors' (B, n_mels, T) layout
    lengths = torch.tensor([frames])
    with torch.no_grad():
        sec = median_seconds(lambda: model(feats, lengths), args.runs)
    emit("ee-conformer", params=sum(p.numel() for p in model.parameters()), seconds_per_forward=sec)


def bench_zipformer(torch, fx, args):
    if args.icefall:
        missing = [f for f in ("zipformer.py", "scaling.py", "subsampling.py")
                   if not os.path.isfile(os.path.join(args.icefall, f))]
        if missing:
            raise FileNotFoundError(f"--icefall {args.icefall} lacks {', '.join(missing)}")
        fx.install_stubs()
        sys.path.insert(0, os.path.abspath(args.icefall))
        zipformer = importlib.import_module("zipformer")
        subsampling = importlib.import_module("subsampling")
    else:
        zipformer, subsampling = load_wheel_modules(os.path.abspath(WHEEL_DIR))
    cfg = dict(fx.SMALL, feature_dim=80, layer1_channels=8, layer2_channels=32, layer3_channels=128)
    model = fx.Encoder(zipformer, subsampling, cfg).float().eval()
    frames = round(args.seconds * 100)
    x = torch.rand(1, frames, 80) * 2 - 1
    x_lens = torch.tensor([frames])
    with torch.no_grad():
        sec = median_seconds(lambda: model(x, x_lens), args.runs)
    emit("zipformer-small", params=sum(p.numel() for p in model.parameters()), seconds_per_forward=sec)


def bench_split_train(torch, fx, args):
    """The small Splitformer (experiments/asr/splitformer-small.yaml) trained as the authors'
    train.py does: dropout on, sum of the exits' CTC losses (blank 0, mean, zero_infinity, input
    length T' for every utterance), backward, AdamW; on --device (cuda: f32, TF32 off, cuDNN CTC
    where torch picks it)."""
    dev = torch.device(args.device)
    model = fx.EarlyExitConformer(n_mels=80, d=144, heads=4, ffn=576, kernel=15, layers=1, n_exits=6, vocab=32,
                                  split_exits=[0, 5], max_len=2000).float().train().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    frames, chars, batch = round(args.seconds * 100), round(args.seconds * 10), args.batch
    feats = (torch.rand(batch, 80, frames) * 2 - 1).to(dev)
    lengths = torch.full((batch,), frames).to(dev)
    targets = torch.randint(1, 32, (batch, chars)).to(dev)
    target_lengths = torch.full((batch,), chars).to(dev)

    def step():
        opt.zero_grad()
        outs, _ = model(feats, lengths)
        input_lengths = torch.full((batch,), outs.shape[2])
        loss = sum(torch.nn.functional.ctc_loss(o.transpose(0, 1), targets, input_lengths, target_lengths, blank=0,
                                                reduction="mean", zero_infinity=True) for o in outs)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sec = median_seconds(step, args.runs, sync)
    emit("splitformer-small-train", params=sum(p.numel() for p in model.parameters()), seconds_per_step=sec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="utterance length (100 frames a second)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--runs", type=int, default=5, help="timed passes after one warm-up (median reported)")
    ap.add_argument("--icefall", help="egs/librispeech/ASR/zipformer of an icefall checkout")
    ap.add_argument("--train", action="store_true", help="time training steps of the small Splitformer instead")
    ap.add_argument("--batch", type=int, default=8, help="--train: utterances per step")
    ap.add_argument("--device", default="cpu", help="--train: cpu or cuda")
    args = ap.parse_args()
    if args.train:
        try:
            import torch
            torch.set_num_threads(args.threads)
            torch.manual_seed(0)
            torch.backends.cuda.matmul.allow_tf32 = False  # f32 as ours
            torch.backends.cudnn.allow_tf32 = False
            bench_split_train(torch, load_script("make_conformer_fixtures"), args)
        except Exception as e:  # noqa: BLE001 - the failure becomes the reason in the table
            emit("splitformer-small-train", error=f"{type(e).__name__}: {e}")
        return
    names = ("ee-conformer", "zipformer-small")
    try:
        import torch
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        # The conformer script first: make_zipformer_fixtures.install_stubs() hides torchaudio,
        # from which make_conformer_fixtures loads its Conformer.
        fixtures = (load_script("make_conformer_fixtures"), load_script("make_zipformer_fixtures"))
    except Exception as e:  # noqa: BLE001 - every failure becomes the reason in the table
        for name in names:
            emit(name, error=f"cannot load torch or the fixture scripts: {type(e).__name__}: {e}")
        return
    for name, bench, fx in zip(names, (bench_conformer, bench_zipformer), fixtures):
        try:
            bench(torch, fx, args)
        except Exception as e:  # noqa: BLE001
            emit(name, error=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
