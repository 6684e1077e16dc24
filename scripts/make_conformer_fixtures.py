#!/usr/bin/env python3
"""Regenerate tests/fixtures/conformer/ (read by tests/test_conformer.c).

Run from the repository root:  python3 scripts/make_conformer_fixtures.py
Needs torch, torchaudio and safetensors. Writes, all small (< 1 MB together):

torchaudio Conformer (input_dim 32, 4 heads, ffn 48, 2 layers, kernel 7), random weights and
random BatchNorm running statistics (so eval-mode BatchNorm is not the identity), eval mode:
  ta_config.json          torchaudio Conformer arguments
  ta_weights.safetensors  state dict via scripts/convert_torch_to_safetensors.py (names unchanged)
  ta_input.safetensors    x [2, 13, 32] f32 (padded frames random, not zero), lengths [2] i64 = 13, 9
  ta_expected.safetensors y [2, 13, 32], lengths

Early-exit Conformer baseline and Splitformer, written below after augustgw/early-exit-transformer
models/model/early_exit.py (commit 7adad07, classes Early_conformer and Splitformer; asr.md 4, 6)
with torchaudio Conformer blocks, small dims (80 mels -> 12, d 16, 2 heads, ffn 24, kernel 5,
2 layers per exit, 3 exits, V 11, PE max_len 64; Splitformer branches at exits 0 and 2), eval mode:
  ee_input.safetensors     feats [3, 41, 12] (batch-first; the model reads them as (B, 12, T)),
                           lengths [3] = 41, 30, 7 (the 7 makes the branch key padding mask not
                           all-valid, the code's quirk), targets [3, 4], target_lengths [3]
  ee_weights.safetensors / ee_expected.safetensors          EE-baseline
  split_weights.safetensors / split_expected.safetensors    Splitformer
  expected: exits [3 exits, B, T', V] log-probs, lengths [B] (= clamp(lengths/4, max=T')),
            loss (sum over exits of CTCLoss(blank 0, mean, zero_infinity) with input length T'
            for every utterance, as train.py), loss_utt (per-utterance input lengths instead)
"""
import importlib.util
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_torch_to_safetensors import convert  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "conformer")


def load_conformer_class():
    """torchaudio.models.Conformer. If `import torchaudio` fails (its compiled extension checks
    the CUDA version of torch at import), load models/conformer.py from the installed package by
    path: that file only imports torch."""
    try:
        from torchaudio.models import Conformer
        return Conformer
    except (ImportError, RuntimeError, OSError) as e:
        spec = importlib.util.find_spec("torchaudio")
        if spec is None or not spec.submodule_search_locations:
            raise
        path = os.path.join(list(spec.submodule_search_locations)[0], "models", "conformer.py")
        print(f"import torchaudio failed ({e}); loading {path} directly")
        mspec = importlib.util.spec_from_file_location("torchaudio_conformer", path)
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
        return mod.Conformer


Conformer = load_conformer_class()


def randomise(model, gen):
    """Every parameter ~ N(0, 0.3) (norm weights ~ 1 + N(0, 0.1)); BatchNorm running_mean ~
    N(0, 0.2), running_var ~ U(0.5, 1.5)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


class PositionalEncoding(torch.nn.Module):
    """models/embedding/positional_encoding.py of the authors' code."""

    def __init__(self, d_model, dropout, max_len):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        x = x.permute(1, 0, 2)
        x = x + self.pe[: x.size(0)]
        x = x.permute(1, 0, 2)
        return self.dropout(x)


class Conv1dSubampling(torch.nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.sequential = torch.nn.Sequential(
            torch.nn.Conv1d(in_channels, out_channels, kernel_size=3, stride=2, padding=0),
            torch.nn.Conv1d(out_channels, out_channels, kernel_size=3, stride=2, padding=0),
        )

    def forward(self, x):
        return self.sequential(x)


class EarlyExitConformer(torch.nn.Module):
    """Early_conformer (split_exits empty) and Splitformer (branches at split_exits), with the
    forward of early_exit.py: the main blocks use clamp(lengths/4, max=T'); a branch at block i
    zero-pads its input to even length, keeps ::2, runs one Conformer layer with lengths
    clamp((lengths + pad)/2, max=T_ds) from the 100 Hz counts, repeat_interleave(2), drops the pad
    frame and is added to the block output."""

    def __init__(self, n_mels, d, heads, ffn, kernel, layers, n_exits, vocab, split_exits, max_len):
        super().__init__()
        self.split_exits = list(split_exits)
        self.factor = 2
        self.conv_subsample = Conv1dSubampling(n_mels, d)
        self.positional_encoder = PositionalEncoding(d, 0.1, max_len)
        self.linears = torch.nn.ModuleList([torch.nn.Linear(d, vocab) for _ in range(n_exits)])
        self.conformer = torch.nn.ModuleList(
            [Conformer(input_dim=d, num_heads=heads, ffn_dim=ffn, num_layers=layers,
                       depthwise_conv_kernel_size=kernel, dropout=0.1) for _ in range(n_exits)])
        if self.split_exits:
            self.conformer_parallel = torch.nn.ModuleList(
                [Conformer(input_dim=d, num_heads=heads, ffn_dim=ffn, num_layers=1,
                           depthwise_conv_kernel_size=kernel, dropout=0.1) for _ in self.split_exits])

    def forward(self, src, lengths):
        src = self.conv_subsample(src)
        src = self.positional_encoder(src.permute(0, 2, 1))
        length = torch.clamp(lengths / 4, max=src.size(1)).to(torch.int)
        enc = src
        outs = []
        for index in range(len(self.conformer)):
            enc_in = enc
            enc, _ = self.conformer[index](enc, length)
            if index in self.split_exits:
                k = self.split_exits.index(index)
                pad = enc_in.size(1) % self.factor
                if pad != 0:
                    pad = self.factor - pad
                    zeros = torch.zeros(enc_in.size(0), pad, enc_in.size(2), device=enc_in.device, dtype=enc_in.dtype)
                    enc_in = torch.cat((enc_in, zeros), dim=1)
                enc_in = enc_in[:, :: self.factor, :]
                blen = torch.clamp((lengths + pad) / self.factor, max=enc_in.size(1)).to(torch.int)
                enc_in, _ = self.conformer_parallel[k](enc_in, blen)
                enc_in = torch.repeat_interleave(enc_in, self.factor, dim=1)
                if pad != 0:
                    enc_in = enc_in[:, :-pad, :]
                enc = enc + enc_in
            outs.append(torch.nn.functional.log_softmax(self.linears[index](enc), dim=2).unsqueeze(0))
        return torch.cat(outs), length


def write_torchaudio_fixture(gen):
    cfg = dict(input_dim=32, num_heads=4, ffn_dim=48, num_layers=2, depthwise_conv_kernel_size=7, dropout=0.1)
    model = Conformer(**cfg)
    randomise(model, gen)
    model.eval()
    lengths = torch.tensor([13, 9], dtype=torch.int64)
    x = torch.randn(2, 13, 32, generator=gen)
    with torch.no_grad():
        y, out_len = model(x, lengths)
    with open(os.path.join(OUT, "ta_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    convert(model.state_dict(), os.path.join(OUT, "ta_weights.safetensors"), verbose=False)
    save_file({"x": x, "lengths": lengths}, os.path.join(OUT, "ta_input.safetensors"))
    save_file({"y": y.contiguous(), "lengths": out_len}, os.path.join(OUT, "ta_expected.safetensors"))
    print("torchaudio Conformer keys:", ", ".join(k for k in model.state_dict() if ".0." in k and "layers.0" in k))


def ctc_sum(exits, targets, input_lengths, target_lengths):
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    return sum(ctc(e.permute(1, 0, 2), targets, input_lengths, target_lengths) for e in exits)


def write_ee_fixtures(gen):
    dims = dict(n_mels=12, d=16, heads=2, ffn=24, kernel=5, layers=2, n_exits=3, vocab=11, max_len=64)
    feats = torch.randn(3, 41, 12, generator=gen)
    lengths = torch.tensor([41, 30, 7], dtype=torch.int64)
    targets = torch.randint(1, dims["vocab"], (3, 4), generator=gen)
    target_lengths = torch.tensor([4, 3, 1], dtype=torch.int64)
    save_file({"feats": feats, "lengths": lengths, "targets": targets, "target_lengths": target_lengths},
              os.path.join(OUT, "ee_input.safetensors"))
    for tag, split in (("ee", []), ("split", [0, 2])):
        model = EarlyExitConformer(**dims, split_exits=split)
        randomise(model, gen)
        model.eval()
        with torch.no_grad():
            exits, out_len = model(feats.transpose(1, 2), lengths)
            t = exits.size(2)
            full = torch.full((3,), t, dtype=torch.long)
            loss = ctc_sum(exits, targets, full, target_lengths)
            loss_utt = ctc_sum(exits, targets, out_len.to(torch.long), target_lengths)
        convert(model.state_dict(), os.path.join(OUT, f"{tag}_weights.safetensors"), verbose=False)
        save_file({"exits": exits.contiguous(), "lengths": out_len.to(torch.int64),
                   "loss": loss.reshape(1), "loss_utt": loss_utt.reshape(1)},
                  os.path.join(OUT, f"{tag}_expected.safetensors"))
        print(f"{tag}: exits {list(exits.shape)}, lengths {out_len.tolist()}, loss {loss.item():.6f}, "
              f"loss_utt {loss_utt.item():.6f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(20250622)
    write_torchaudio_fixture(gen)
    write_ee_fixtures(gen)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{OUT}: {total} bytes")


if __name__ == "__main__":
    main()
