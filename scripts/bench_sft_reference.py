#!/usr/bin/env python3
"""transformers reference figure for `luthier bench sft` (experiments/runner/bench_sft.c), which
runs this script itself on a temporary HF directory and batch it writes; by hand:

    python3 scripts/bench_sft_reference.py --model DIR --batch BATCH.safetensors [--threads N]
        [--steps 3] [--warmup 1] [--attn sdpa|eager] [--lr 5e-5] [--clip 0.1]

Loads DIR with AutoModelForCausalLM (LlamaForCausalLM for the demo model) in float32 with the
given attention implementation, and times the SFT step the C side times: zero_grad, forward on the
packed row (input_ids [1, L], position_ids restarting at each sample, and an additive 4D mask
[1, 1, L, L] that is causal within each sample of cu_seqlens and blocks attention across them,
which is what cu_seqlens means to luthier's attention), the model's own shifted mean cross-entropy
over labels != -100, backward, torch.nn.utils.clip_grad_norm_(clip), torch.optim.AdamW(lr,
weight_decay=0.01). --warmup untimed steps, then the median of --steps, torch.set_num_threads(N).

Prints one JSON line {"seconds_per_step", "loss0" (loss of the first step), "params", "versions"}
or {"error": "why"}; other output lines are diagnostics.
"""
import argparse
import json
import os
import sys
import time


def emit(**fields):
    print(json.dumps(fields), flush=True)


def packed_mask(torch, cu, L):
    """Additive mask: 0 where query i may attend key j (same sample, j <= i), dtype min elsewhere."""
    sample = torch.zeros(L, dtype=torch.long)
    for k in range(1, len(cu) - 1):
        sample[cu[k]:] += 1
    idx = torch.arange(L)
    allowed = (sample[:, None] == sample[None, :]) & (idx[None, :] <= idx[:, None])
    mask = torch.zeros(L, L, dtype=torch.float32)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory (f32 weights)")
    ap.add_argument("--batch", required=True, help="safetensors with input_ids, labels, position_ids, cu_seqlens")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--clip", type=float, default=0.1)
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
    try:
        torch.set_num_threads(args.threads)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=args.attn)
        model.train()
        batch = load_file(args.batch)
        ids = batch["input_ids"].long()
        labels = batch["labels"].long()
        pos = batch["position_ids"].long()
        cu = batch["cu_seqlens"].tolist()
        mask = packed_mask(torch, cu, ids.shape[1])
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        losses, times = [], []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = model(input_ids=ids, position_ids=pos, attention_mask=mask, labels=labels, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            losses.append(loss.item())
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        seconds = sorted(times)[len(times) // 2]  # the C side's choice: the upper median for even counts
        emit(seconds_per_step=seconds, loss0=losses[0], params=sum(p.numel() for p in model.parameters()),
             versions=f"torch {torch.__version__}, transformers {transformers.__version__}")
    except Exception as e:  # noqa: BLE001
        emit(error=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
