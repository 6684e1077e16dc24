#!/usr/bin/env python3
"""Convert a PyTorch state dict to safetensors with the tensor names unchanged.

Reads a .pt / .pth / .ckpt file holding a state dict, or a dict with the state dict nested under
"model" or "state_dict" (icefall checkpoints keep it under "model", Lightning under
"state_dict"; a "module." prefix left by DistributedDataParallel is kept, since luthier matches
names exactly). Names stay as PyTorch writes them: torchaudio Conformer `conformer_layers.*`,
icefall Zipformer `encoder_embed.*` / `encoder.*`, the Splitformer code's `conformer.*`,
`linears.*`, ... Non-tensor entries are skipped and listed. Tensors are written contiguous and
detached, in their own dtype; tensors sharing storage are copied (safetensors forbids aliasing).

Usage:
    python3 scripts/convert_torch_to_safetensors.py IN.pt OUT.safetensors [--key model]

Also importable: convert(state_dict_or_checkpoint, out_path) -> list of written names.
"""
import argparse
import sys

import torch
from safetensors.torch import save_file


def find_state_dict(obj, key=None):
    """The state dict inside a loaded checkpoint: obj[key] if given, else obj["model"] or
    obj["state_dict"] when present and a dict, else obj itself."""
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise KeyError(f"checkpoint has no entry {key!r}")
        return obj[key]
    if isinstance(obj, dict):
        for k in ("model", "state_dict"):
            if isinstance(obj.get(k), dict):
                return obj[k]
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    return obj


def convert(obj, out_path, key=None, metadata=None, verbose=True):
    sd = find_state_dict(obj, key)
    if not isinstance(sd, dict):
        raise TypeError(f"expected a state dict, found {type(sd).__name__}")
    tensors, skipped = {}, []
    for name, value in sd.items():
        if isinstance(value, torch.Tensor):
            tensors[str(name)] = value.detach().cpu().contiguous().clone()
        else:
            skipped.append(str(name))
    if not tensors:
        raise ValueError("no tensors found in the state dict")
    save_file(tensors, out_path, metadata=metadata)
    if verbose:
        n = sum(t.numel() for t in tensors.values())
        print(f"wrote {out_path}: {len(tensors)} tensors, {n} elements")
        for name, t in tensors.items():
            print(f"  {name} {list(t.shape)} {str(t.dtype).replace('torch.', '')}")
        if skipped:
            print(f"skipped {len(skipped)} non-tensor entries: {', '.join(skipped)}")
    return list(tensors)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="PyTorch checkpoint (.pt/.pth/.ckpt)")
    ap.add_argument("output", help="safetensors file to write")
    ap.add_argument("--key", help="entry holding the state dict (default: model, state_dict or the whole file)")
    args = ap.parse_args(argv)
    obj = torch.load(args.input, map_location="cpu", weights_only=False)
    try:
        convert(obj, args.output, key=args.key)
    except (KeyError, TypeError, ValueError) as e:
        print(f"convert_torch_to_safetensors: {args.input}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
