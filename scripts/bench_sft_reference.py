#!/usr/bin/env python3
"""transformers reference figure for `luthier bench sft` (experiments/runner/bench_sft.c), which
runs this script itself on a temporary HF directory and batch it writes; by hand:

    python3 scripts/bench_sft_reference.py --model DIR --batch BATCH.safetensors [--threads N]
        [--steps 3] [--warmup 1] [--attn sdpa|eager|flash_attention_2[,...]] [--lr 5e-5] [--clip 0.1]
        [--device cpu|cuda] [--dtype f32|bf16|f64] [--rows B]

Loads DIR with AutoModelForCausalLM (LlamaForCausalLM for the demo model, Qwen3ForCausalLM for
Qwen3 shapes) with each given attention implementation in turn and times the SFT step the C side
times: zero_grad, forward, the model's own shifted mean cross-entropy over labels != -100,
backward, torch.nn.utils.clip_grad_norm_(clip), torch.optim.AdamW(lr, weight_decay=0.01).
--warmup untimed steps, then the median of --steps.

The batch file holds one packed row (input_ids [1, L], position_ids restarting at each sample,
cu_seqlens). --rows B cuts it into B rows of L / B tokens, which is the same batch when every row
starts a sample (the C side packs B sequences of L / B tokens); the last token of a row then
predicts nothing, as in the packed row it predicts the next sample's first label, which is
unlabelled (a prompt token). Where samples meet inside a row, the row gets an additive 4D mask
[rows, 1, T, T] that is causal within each sample and blocks attention across them (what
cu_seqlens means to luthier's attention); flash_attention_2 gets the restarting position_ids
instead, which is how transformers packs for it. On the CPU the mask is always passed, as before.

--device cpu: float32 (float64 with --dtype f64), torch.set_num_threads(N). --device cuda --dtype bf16: the weights in
bfloat16 (transformers' bf16 training without autocast: bf16 weights, gradients and AdamW state),
fused AdamW when torch has it; each step ends with torch.cuda.synchronize().

Prints one JSON line per implementation {"attn", "seconds_per_step", "loss0" (loss of the first
step), "params", "versions", "memory_bytes" (cuda: torch.cuda.max_memory_reserved)} or
{"attn", "error": "why"}, or one {"error": "why"} when nothing can run; other output lines are
diagnostics.
"""
import argparse
import importlib.util
import json
import os
import sys
import time


def emit(**fields):
    print(json.dumps(fields), flush=True)


def sample_ids(torch, cu, L):
    """The sample index of every position of the packed row."""
    sample = torch.zeros(L, dtype=torch.long)
    for k in range(1, len(cu) - 1):
        sample[cu[k]:] += 1
    return sample


def packed_mask(torch, sample, rows, dtype):
    """Additive mask [rows, 1, T, T]: 0 where query i may attend key j (same sample, j <= i),
    dtype min elsewhere."""
    s = sample.view(rows, -1)
    T = s.shape[1]
    idx = torch.arange(T)
    allowed = (s[:, :, None] == s[:, None, :]) & (idx[None, None, :] <= idx[None, :, None])
    mask = torch.zeros(rows, T, T, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def measure(args, attn, torch, AutoModelForCausalLM, batch):
    dev = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f64": torch.float64}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=attn)
    model.to(device=dev, dtype=dtype)  # whatever the loader made of the dtype argument
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    L = batch["input_ids"].shape[1]
    if L % args.rows:
        raise ValueError(f"--rows {args.rows} does not divide the packed row of {L} tokens")
    ids = batch["input_ids"].long().view(args.rows, -1).to(dev)
    labels = batch["labels"].long().view(args.rows, -1).to(dev)
    pos = batch["position_ids"].long().view(args.rows, -1).to(dev)
    sample = sample_ids(torch, batch["cu_seqlens"].tolist(), L)
    joined = bool((sample.view(args.rows, -1)[:, 1:] != sample.view(args.rows, -1)[:, :1]).any())
    mask = None
    if args.device == "cpu" or (joined and attn != "flash_attention_2"):
        mask = packed_mask(torch, sample, args.rows, dtype).to(dev)
    fused = dev.type == "cuda" and "fused" in torch.optim.AdamW.__init__.__code__.co_varnames
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, **({"fused": True} if fused else {}))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = model(input_ids=ids, position_ids=pos, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    seconds = sorted(times)[len(times) // 2]  # the C side's choice: the upper median for even counts
    result = dict(attn=attn, seconds_per_step=seconds, loss0=losses[0],
                  params=sum(p.numel() for p in model.parameters()))
    if dev.type == "cuda":
        result["memory_bytes"] = torch.cuda.max_memory_reserved()
    del model, opt, loss
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return result, fused


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--batch", required=True, help="safetensors with input_ids, labels, position_ids, cu_seqlens")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--attn", default="sdpa", help="comma-separated attn_implementation values, each measured")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="f32", choices=("f32", "bf16", "f64"))
    ap.add_argument("--rows", type=int, default=1, help="rows the packed row is cut into")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="model.gradient_checkpointing_enable() (luthier: model.gradient_checkpointing)")
    args = ap.parse_args()
    try:
        sys.modules.setdefault("torchaudio", None)  # a torchaudio built for another CUDA breaks transformers
        import torch
        import transformers
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001 - the failure becomes the reason in the table
        emit(error=f"cannot import torch/transformers/safetensors: {type(e).__name__}: {e}")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        emit(error="torch sees no CUDA GPU")
        return
    torch.set_num_threads(args.threads)
    batch = load_file(args.batch)
    for attn in args.attn.split(","):
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            emit(attn=attn, error="the flash_attn package is not installed")
            continue
        try:
            result, fused = measure(args, attn, torch, AutoModelForCausalLM, batch)
            versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
            if args.device == "cuda":
                versions += ", fused AdamW" if fused else ", AdamW (no fused)"
            emit(versions=versions, **result)
        except Exception as e:  # noqa: BLE001
            emit(attn=attn, error=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
