#!/usr/bin/env python3
"""Regenerates tests/fixtures/ctc/torch_ctc.safetensors: torch.nn.functional.ctc_loss references.

Run from the repository root (needs torch and safetensors; see scripts/requirements-fixtures.txt).
Random logits [B, T, V] go through log_softmax and ctc_loss (blank 0 and blank V-1, reductions none,
sum and mean, zero_infinity on a batch with one infeasible sample); the file holds the inputs, the
losses and the gradients with respect to the logits (torch's CTC backward assumes a log_softmax
upstream, so gradients are compared at the logits, where both conventions agree)."""
import torch
from safetensors.torch import save_file

OUT = "tests/fixtures/ctc/torch_ctc.safetensors"


def case(out, name, logits, targets, in_lens, tgt_lens, blank, reduction, zero_inf):
    x = logits.clone().requires_grad_(True)
    lp = torch.log_softmax(x, dim=-1)
    loss = torch.nn.functional.ctc_loss(lp.transpose(0, 1), targets, in_lens, tgt_lens, blank=blank,
                                        reduction=reduction, zero_infinity=zero_inf)
    loss.sum().backward()
    out[f"{name}.loss"] = loss.detach().reshape(-1).double()
    out[f"{name}.grad"] = x.grad.double()


def main():
    g = torch.Generator().manual_seed(20261126)
    B, T, V, S = 3, 17, 7, 5
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    out = {"logits": logits}
    for blank in (0, V - 1):
        labels = [l for l in range(V) if l != blank]
        targets = torch.tensor([[labels[int(i)] for i in torch.randint(0, V - 1, (S,), generator=g)] for _ in range(B)])
        targets[1, 1] = targets[1, 2]  # a repeated label needs a blank between its copies
        in_lens = torch.tensor([T, T - 4, 11])
        tgt_lens = torch.tensor([S, 3, 4])
        out[f"blank{blank}.targets"] = targets.to(torch.int64)
        out[f"blank{blank}.input_lengths"] = in_lens.to(torch.int64)
        out[f"blank{blank}.target_lengths"] = tgt_lens.to(torch.int64)
        for red in ("none", "sum", "mean"):
            case(out, f"blank{blank}.{red}", logits, targets, in_lens, tgt_lens, blank, red, False)
    # Infeasible sample: 6 labels with repeats need more frames than the 4 it has.
    targets = torch.tensor([[1, 1, 2, 2, 3, 3], [1, 2, 3, 4, 5, 6], [2, 3, 2, 3, 2, 3]])
    in_lens, tgt_lens = torch.tensor([T, 4, T]), torch.tensor([6, 6, 6])
    out["infeasible.targets"] = targets.to(torch.int64)
    out["infeasible.input_lengths"] = in_lens.to(torch.int64)
    out["infeasible.target_lengths"] = tgt_lens.to(torch.int64)
    case(out, "infeasible.mean", logits, targets, in_lens, tgt_lens, 0, "mean", True)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata={"torch": torch.__version__})
    print(f"wrote {OUT} ({len(out)} tensors, torch {torch.__version__})")


if __name__ == "__main__":
    main()
