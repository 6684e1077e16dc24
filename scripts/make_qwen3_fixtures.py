#!/usr/bin/env python3
"""make_qwen3_fixtures.py [--out tests/fixtures/qwen3]
   make_qwen3_fixtures.py --check-load DIR --input-ids IDS.safetensors --logits LOGITS.safetensors [--tol T]

Regenerates tests/fixtures/qwen3/: small random Qwen3 models (and one Llama model without q/k norm,
like SmolLM2) written by transformers' save_pretrained, each with expected.safetensors holding the
reference values that tests/test_qwen3.c compares luthier against (transformers + torch, CPU, f32):

  input_ids [2, 11] i64, logits [2, 11, V] f32, greedy [2, 19] i64 (prompt + 8 greedy tokens,
  no eos configured so generation runs fully), labels [2, 11] i64 (some -100), loss and grad_norm
  (0-dim f64: masked mean cross-entropy and global L2 norm of every parameter gradient).

The bf16 model is stored in bfloat16; its expected file also holds logits_f32, the logits of its
bf16 weights widened to f32 (what luthier computes), while logits is transformers' bf16 run.

--check-load loads a directory written by luthier (lu_hf_save) with transformers and checks that
its logits on input_ids match a logits file (e.g. from `luthier lm forward`); exit 1 on mismatch.

Run from the repository root:  python3 scripts/make_qwen3_fixtures.py
"""
import argparse
import os
import sys

import torch

try:  # transformers imports torchaudio when present; a build for another CUDA fails to load,
    import torchaudio  # noqa: F401  and nothing here needs audio.
except Exception:
    sys.modules["torchaudio"] = None
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

VOCAB = 320
PROMPT_LEN = 11
NEW_TOKENS = 8


def base(**kw):
    c = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
             tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    c.update(kw)
    return c


# name -> (config class, model class, config kwargs)
MODELS = {
    "tied": (Qwen3Config, Qwen3ForCausalLM, base(tie_word_embeddings=True)),
    "untied_mha": (Qwen3Config, Qwen3ForCausalLM, base(num_key_value_heads=4)),
    "h6_kv2": (Qwen3Config, Qwen3ForCausalLM, base(num_attention_heads=6, num_key_value_heads=2,
                                                   tie_word_embeddings=True)),
    "head_dim32": (Qwen3Config, Qwen3ForCausalLM, base(head_dim=32, num_hidden_layers=3, tie_word_embeddings=True,
                                                       rope_parameters={"rope_type": "default",
                                                                        "rope_theta": 1e6})),
    "llama": (LlamaConfig, LlamaForCausalLM, base(tie_word_embeddings=True, rms_norm_eps=1e-5,
                                                  rope_parameters={"rope_type": "default",
                                                                   "rope_theta": 100000.0})),
}
BF16_OF = "head_dim32"


def randomize(model, gen):
    """Weights large enough that logits are O(1) and every norm weight matters (transformers'
    own init, N(0, 0.02) and norms at 1, would make the comparison nearly vacuous)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def greedy_margin(model, ids):
    """Smallest gap between the two best logits over the greedy steps: ties would make the
    comparison of greedy tokens depend on rounding."""
    margin = float("inf")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    for s in out.scores:
        top = torch.topk(s.float(), 2, dim=-1).values
        margin = min(margin, float((top[:, 0] - top[:, 1]).min()))
    return out.sequences, margin


def reference(model, ids, labels):
    model.zero_grad()
    logits = model(ids).logits.float()
    out = model(ids, labels=labels)
    out.loss.backward()
    sq = sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None)
    return logits.detach(), out.loss.detach().double(), torch.tensor(sq ** 0.5, dtype=torch.float64)


def make(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for i, (name, (cfg_cls, model_cls, kw)) in enumerate(MODELS.items()):
        for attempt in range(20):
            gen = torch.Generator().manual_seed(1000 * i + attempt)
            model = model_cls(cfg_cls(**kw)).float().eval()
            randomize(model, gen)
            ids = torch.randint(0, VOCAB, (2, PROMPT_LEN), generator=gen)
            seqs, margin = greedy_margin(model, ids)
            if margin > 1e-2:
                break
        else:
            sys.exit(f"{name}: no seed gave a greedy margin above 1e-2")
        labels = ids.clone()
        labels[0, 3] = labels[0, 7] = labels[1, 0] = labels[1, 9] = -100
        logits, loss, gnorm = reference(model, ids, labels)
        d = os.path.join(out_dir, name)
        model.generation_config.eos_token_id = None
        model.save_pretrained(d, safe_serialization=True)
        save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(), "greedy": seqs.contiguous(),
                   "labels": labels.contiguous(), "loss": loss, "grad_norm": gnorm},
                  os.path.join(d, "expected.safetensors"))
        print(f"{name}: loss {float(loss):.6f} grad_norm {float(gnorm):.6f} greedy margin {margin:.3g}")
        if name == BF16_OF:
            bf = model.to(torch.bfloat16)
            wide = model_cls(model.config).float().eval()
            wide.load_state_dict({k: v.float() for k, v in bf.state_dict().items()})
            with torch.no_grad():
                lb = bf(ids).logits.float()
                lw = wide(ids).logits.float()
            db = os.path.join(out_dir, name + "_bf16")
            bf.save_pretrained(db, safe_serialization=True)
            save_file({"input_ids": ids.contiguous(), "logits": lb.contiguous(), "logits_f32": lw.contiguous()},
                      os.path.join(db, "expected.safetensors"))
            print(f"{name}_bf16: max |bf16 - f32| logits {float((lb - lw).abs().max()):.4f}")


def first_tensor(path, key):
    t = load_file(path)
    if key not in t:
        sys.exit(f"{path}: no tensor '{key}' (has {sorted(t)})")
    return t[key]


def check_load(d, ids_path, logits_path, tol):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = first_tensor(ids_path, "input_ids").long()
    want = first_tensor(logits_path, "logits").float()
    with torch.no_grad():
        got = model(ids).logits.float()
    if got.shape != want.shape:
        sys.exit(f"check-load: logits shape {tuple(got.shape)} from transformers, {tuple(want.shape)} in file")
    err = float((got - want).abs().max())
    print(f"check-load {d}: {type(model).__name__}, logits {tuple(got.shape)}, max abs error {err:.3g} (tol {tol:g})")
    return 0 if err <= tol else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/qwen3")
    ap.add_argument("--check-load", metavar="DIR")
    ap.add_argument("--input-ids")
    ap.add_argument("--logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.check_load:
        if not a.input_ids or not a.logits:
            ap.error("--check-load needs --input-ids and --logits")
        sys.exit(check_load(a.check_load, a.input_ids, a.logits, a.tol))
    make(a.out)


if __name__ == "__main__":
    main()
