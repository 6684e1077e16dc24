#!/usr/bin/env python3
"""Fixtures and checks for luthier's safetensors and Hugging Face model I/O.

  python3 scripts/make_hf_fixtures.py
      Regenerates tests/fixtures/hf/py_written.safetensors with the `safetensors` library
      (torch writer): one tensor of every dtype luthier loads, a 0-dim and an empty tensor, and
      metadata. Values follow formulas that tests/test_safetensors.c recomputes:
        f32  [3, 5]  (i - 7) * 0.25           f64 [2, 3] (i - 2) * 0.125
        bf16 [4, 3]  (i - 6) * 0.5            f16 [7]    (i - 3) * 0.75
        i32  [2, 2]  i * 1000 - 1500          i64 [3]    i * 4000000000 - 4000000000
        u8   [5]     i * 50                   bool [4]   i % 2 == 1
        scalar []    2.5 (f32)                empty [0, 3] (f32)
      metadata {"format": "pt", "source": "make_hf_fixtures.py"}.

  python3 scripts/make_hf_fixtures.py --check-load DIR
      Loads the Hugging Face model directory DIR (e.g. written by luthier's lu_hf_save) with
      transformers' AutoModelForCausalLM in float32 and prints its class, dtype and the logits of
      the tokens [1, 2, 3, 4] (first 5 values of each position) plus their max abs value, as JSON.
      Exit status 0 when it loads with no missing or unexpected weights.

Needs torch, safetensors and (for --check-load) transformers; CI never runs this script.
"""
import argparse
import json
import os
import sys

import torch

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf",
                       "py_written.safetensors")


def make_safetensors(path):
    from safetensors.torch import save_file

    def ar(n):
        return torch.arange(n, dtype=torch.float64)

    tensors = {
        "f32": ((ar(15) - 7) * 0.25).to(torch.float32).reshape(3, 5),
        "f64": ((ar(6) - 2) * 0.125).reshape(2, 3),
        "bf16": ((ar(12) - 6) * 0.5).to(torch.bfloat16).reshape(4, 3),
        "f16": ((ar(7) - 3) * 0.75).to(torch.float16),
        "i32": (torch.arange(4, dtype=torch.int32) * 1000 - 1500).reshape(2, 2),
        "i64": torch.arange(3, dtype=torch.int64) * 4000000000 - 4000000000,
        "u8": (torch.arange(5, dtype=torch.int32) * 50).to(torch.uint8),
        "bool": torch.arange(4) % 2 == 1,
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata={"format": "pt", "source": "make_hf_fixtures.py"})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def check_load(model_dir):
    # The installed torchaudio may not match torch; text models do not need it.
    sys.modules.setdefault("torchaudio", None)
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits[0]
    print(json.dumps({
        "class": type(model).__name__,
        "config_dtype": str(model.config.dtype),
        "loading_problems": {k: [str(x) for x in v] for k, v in problems.items()},
        "logits_first5": [[round(float(x), 6) for x in row[:5]] for row in logits],
        "logits_max_abs": float(logits.abs().max()),
    }))
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-load", metavar="DIR", help="load DIR with transformers and print logits")
    args = ap.parse_args()
    if args.check_load:
        return check_load(args.check_load)
    make_safetensors(FIXTURE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
