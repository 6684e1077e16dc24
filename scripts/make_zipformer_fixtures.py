#!/usr/bin/env python3
"""Regenerate tests/fixtures/zipformer/ (read by tests/test_zipformer.c).

Run from the repository root:
    python3 scripts/make_zipformer_fixtures.py --icefall DIR
where DIR is egs/librispeech/ASR/zipformer of a k2-fsa/icefall checkout (the fixtures were made
at commit 36e0420; asr.md section 9). Its zipformer.py, scaling.py and subsampling.py are
imported unchanged; encoder_interface.py there is a symlink into ../transducer_stateless/ and must
resolve (a full checkout does). Needs torch and safetensors, not k2, lhotse or icefall itself:

  - `k2` is replaced by a stub module whose swoosh_{l,r}[_forward] compute the Swoosh formulas
    in torch, as scaling.py itself does on its TorchScript path
    (logaddexp(0, x - 4) - 0.08 x - 0.035 and logaddexp(0, x - 1) - 0.08 x - 0.313261687).
    scaling.py calls them for SwooshL/SwooshR modules (Conv2dSubsampling, ConvNeXt) in eval
    mode; the k2 `*_forward_and_deriv` kernels are only used in backward and are not stubbed.
  - `icefall.utils.torch_autocast` (used by scaling.py/zipformer.py only under autocast, i.e.
    in fp16 training) is replaced by a context manager that does nothing.
  - torchaudio is not imported by these files; it is set to None so that nothing pulls it in
    (it is broken on the machine that made the fixtures).

Model: Conv2dSubsampling(in_channels 80, out_channels 32, layer channels 8/16/32 instead of the
default 8/32/128 to keep the weights small) + Zipformer2(output_downsampling_factor 2,
downsampling_factor (1, 2, 4), encoder_dim (32, 48, 40) (so convert_num_channels both pads and
truncates and _get_full_dim_output joins two pieces), num_encoder_layers (2, 1, 1),
encoder_unmasked_dim 32, query_head_dim 8, pos_head_dim 4, value_head_dim 6, num_heads 2,
feedforward_dim 64, cnn_module_kernel (7, 5, 5), pos_dim 16), eval mode. icefall initialises
several modules near the identity (bypass scales 0.5, BiasNorm bias ~1e-4, downsample biases 0,
small output scales), so every parameter gets N(0, 0.1 * max(std, 0.5)) noise added before
recording. Writes (< 1 MB together):
  config.json               Zipformer2 arguments plus feature_dim and layer{1,2,3}_channels
  weights.safetensors       state dict of {encoder_embed, encoder} via
                            scripts/convert_torch_to_safetensors.py (names unchanged)
  input.safetensors         x [2, 60, 80] f32 (utterance 1 valid for 45 frames; its padding is
                            random, not zero), x_lens [2] i64 = 60, 45
  expected.safetensors      encoder_out [2, 13, 48], encoder_out_lens [2]; intermediate values:
                            embed_out [2, 26, 32] and embed_lens (Conv2dSubsampling output),
                            layer0_out [2, 26, 32] (the first Zipformer2EncoderLayer of stack 0
                            on embed_out with its positional encoding and padding mask), and
                            stack_out.{i} [2, 26, dim_i] (each stack's output)
The expected values are computed in float64 (model.double()) from the float32 weights and
input; the float32 forward agrees with them to the printed difference.

Also prints the encoder parameter counts of the icefall "small" configuration (asr.md 9.5).
"""
import argparse
import contextlib
import json
import os
import sys
import types

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_torch_to_safetensors import convert  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "zipformer")

CONFIG = {
    "output_downsampling_factor": 2,
    "downsampling_factor": [1, 2, 4],
    "encoder_dim": [32, 48, 40],
    "num_encoder_layers": [2, 1, 1],
    "encoder_unmasked_dim": [32],
    "query_head_dim": [8],
    "pos_head_dim": [4],
    "value_head_dim": [6],
    "num_heads": [2],
    "feedforward_dim": [64],
    "cnn_module_kernel": [7, 5, 5],
    "pos_dim": 16,
    "causal": False,
    "feature_dim": 80,
    "layer1_channels": 8,
    "layer2_channels": 16,
    "layer3_channels": 32,
}

SMALL = {  # train.py defaults with the "small" row of RESULTS.md (asr.md 9.5)
    "output_downsampling_factor": 2,
    "downsampling_factor": [1, 2, 4, 8, 4, 2],
    "encoder_dim": [192, 256, 256, 256, 256, 256],
    "num_encoder_layers": [2, 2, 2, 2, 2, 2],
    "encoder_unmasked_dim": [192] * 6,
    "query_head_dim": [32],
    "pos_head_dim": [4],
    "value_head_dim": [12],
    "num_heads": [4, 4, 4, 8, 4, 4],
    "feedforward_dim": [512, 768, 768, 768, 768, 768],
    "cnn_module_kernel": [31, 31, 15, 15, 15, 31],
    "pos_dim": 48,
    "causal": False,
}


def install_stubs():
    def swoosh_l(x):
        return torch.logaddexp(torch.zeros_like(x), x - 4.0) - 0.08 * x - 0.035

    def swoosh_r(x):
        return torch.logaddexp(torch.zeros_like(x), x - 1.0) - 0.08 * x - 0.313261687

    k2 = types.ModuleType("k2")
    k2.swoosh_l_forward = k2.swoosh_l = swoosh_l
    k2.swoosh_r_forward = k2.swoosh_r = swoosh_r
    sys.modules["k2"] = k2
    icefall = types.ModuleType("icefall")
    utils = types.ModuleType("icefall.utils")
    utils.torch_autocast = lambda *a, **k: contextlib.nullcontext()
    icefall.utils = utils
    sys.modules["icefall"] = icefall
    sys.modules["icefall.utils"] = utils
    sys.modules["torchaudio"] = None


class Encoder(torch.nn.Module):
    """icefall AsrModel.forward_encoder: encoder_embed, the padding mask of the subsampled
    lengths, encoder (time-major inside). Holds the two modules under icefall's names."""

    def __init__(self, zipformer, subsampling, cfg):
        super().__init__()
        enc = {k: v for k, v in cfg.items() if k not in ("feature_dim", "layer1_channels", "layer2_channels",
                                                          "layer3_channels")}
        for k, v in enc.items():
            if isinstance(v, list):
                enc[k] = tuple(v)
        self.encoder_embed = subsampling.Conv2dSubsampling(
            in_channels=cfg.get("feature_dim", 80), out_channels=cfg["encoder_dim"][0],
            layer1_channels=cfg.get("layer1_channels", 8), layer2_channels=cfg.get("layer2_channels", 32),
            layer3_channels=cfg.get("layer3_channels", 128))
        self.encoder = zipformer.Zipformer2(**enc)

    def forward(self, x, x_lens):
        x, x_lens = self.encoder_embed(x, x_lens)
        mask = torch.arange(x.shape[1]).unsqueeze(0) >= x_lens.unsqueeze(1)
        y, y_lens = self.encoder(x.permute(1, 0, 2), x_lens, mask)
        return y.permute(1, 0, 2), y_lens, x, x_lens, mask


def randomise(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.1 * max(p.float().std().item() if p.numel() > 1 else 0.0, 0.5)
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--icefall", required=True, help="egs/librispeech/ASR/zipformer of an icefall checkout")
    args = ap.parse_args()
    install_stubs()
    sys.path.insert(0, os.path.abspath(args.icefall))
    import subsampling  # noqa: E402
    import zipformer  # noqa: E402

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    model = Encoder(zipformer, subsampling, CONFIG)
    randomise(model, gen)
    model.eval()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
        f.write("\n")
    names = convert(model.state_dict(), os.path.join(OUT, "weights.safetensors"))

    x = torch.randn(2, 60, 80, generator=gen)
    x_lens = torch.tensor([60, 45], dtype=torch.int64)
    save_file({"x": x, "x_lens": x_lens}, os.path.join(OUT, "input.safetensors"))

    with torch.no_grad():
        y32, _, _, _, _ = model(x, x_lens)
        model.double()
        y, y_lens, emb, emb_lens, mask = model(x.double(), x_lens)
        enc = model.encoder
        stack0 = enc.encoders[0]
        src = emb.permute(1, 0, 2)
        layer0 = stack0.layers[0](src, stack0.encoder_pos(src), src_key_padding_mask=mask)
        stacks, h = [], src
        for i, m in enumerate(enc.encoders):
            h = m(zipformer.convert_num_channels(h, enc.encoder_dim[i]),
                  src_key_padding_mask=mask[..., ::enc.downsampling_factor[i]])
            stacks.append(h)
    print(f"float32 vs float64 encoder_out: max abs diff {(y32.double() - y).abs().max().item():.3g}, "
          f"max abs {y.abs().max().item():.3g}")
    out = {"encoder_out": y.float().contiguous(), "encoder_out_lens": y_lens.to(torch.int64),
           "embed_out": emb.float().contiguous(), "embed_lens": emb_lens.to(torch.int64),
           "layer0_out": layer0.permute(1, 0, 2).float().contiguous()}
    for i, s in enumerate(stacks):
        out[f"stack_out.{i}"] = s.permute(1, 0, 2).float().contiguous()
    save_file(out, os.path.join(OUT, "expected.safetensors"))
    print(f"{len(names)} tensors; encoder_out {tuple(y.shape)}, lengths {y_lens.tolist()}, "
          f"embed {tuple(emb.shape)} lengths {emb_lens.tolist()}")

    small = Encoder(zipformer, subsampling, dict(SMALL, feature_dim=80))
    n_embed = sum(p.numel() for p in small.encoder_embed.parameters())
    n_enc = sum(p.numel() for p in small.encoder.parameters())
    print(f"icefall small: encoder_embed {n_embed}, encoder {n_enc}, together {n_embed + n_enc}")


if __name__ == "__main__":
    main()
