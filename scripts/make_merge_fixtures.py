#!/usr/bin/env python3
"""Regenerates tests/fixtures/merge/: three tiny random Qwen3 models and mergekit's merges of them.

    python3 -m venv --system-site-packages /tmp/mkvenv
    /tmp/mkvenv/bin/pip install --no-deps mergekit==0.1.5 immutables scipy protobuf sentencepiece peft datasets
    /tmp/mkvenv/bin/python scripts/make_merge_fixtures.py

(--no-deps keeps the installed torch/transformers; mergekit's other dependencies are already there.)

models/base (tied embeddings: no lm_head.weight stored), models/ft_a and models/ft_b (untied, = base
plus a shared and an individual random offset, so that task vectors correlate as fine-tunes do):
vocab 64, hidden 16, 2 layers, intermediate 32, 2 heads, 1 kv head, head_dim 8, float32. ft_b's
layer-0 input_layernorm is exactly 2x base's, so SLERP takes its colinear (lerp) fallback there.
Every parameter is random (not the 0.02-std / all-ones init), so no tensor merges trivially.

configs/<name>.yaml are mergekit configs with paths relative to configs/; mergekit runs with
that directory as working directory and the merged model.safetensors of each is kept as
expected/<name>/model.safetensors (plus config.json). The dare_* merges are random (torch RNG,
seed 7): the C tests compare them statistically, not elementwise. base also gets small tokenizer
files so that the copy of the donor's tokenizer can be tested.
"""
import json
import os
import shutil
import sys

sys.modules["torchaudio"] = None  # a torchaudio built for another CUDA breaks transformers' import

import torch
import yaml
from transformers import Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "merge")

CONFIGS = {
    "linear": """
merge_method: linear
models:
  - model: ../models/ft_a
    parameters: {weight: 0.7}
  - model: ../models/ft_b
    parameters:
      weight:
        - filter: mlp
          value: [0.2, 1.0]
        - value: 0.3
  - model: ../models/base
    parameters: {weight: 0.5}
dtype: float32
""",
    "linear_nonorm": """
merge_method: linear
models:
  - model: ../models/ft_a
    parameters: {weight: 0.6}
  - model: ../models/ft_b
    parameters: {weight: [0.1, 0.9]}
parameters:
  normalize: false
dtype: float32
""",
    "slerp": """
slices:
  - sources:
      - model: ../models/ft_b
        layer_range: [0, 2]
      - model: ../models/base
        layer_range: [0, 2]
merge_method: slerp
base_model: ../models/base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    "slerp_bf16": """
models:
  - model: ../models/ft_a
  - model: ../models/base
merge_method: slerp
base_model: ../models/base
parameters:
  t: 0.7
dtype: bfloat16
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: ../models/base
models:
  - model: ../models/ft_a
    parameters: {weight: 0.8}
  - model: ../models/ft_b
    parameters: {weight: [0.3, 0.6]}
parameters:
  lambda: 0.9
dtype: float32
""",
    "ties": """
merge_method: ties
base_model: ../models/base
models:
  - model: ../models/ft_a
    parameters:
      weight: 0.6
      density: [1.0, 0.5, 0.3]
  - model: ../models/ft_b
    parameters:
      weight:
        - filter: self_attn
          value: 0.4
        - value: 0.9
      density: 0.6
dtype: float32
""",
    "dare_ties_dense": """
merge_method: dare_ties
base_model: ../models/base
models:
  - model: ../models/ft_a
    parameters: {weight: 0.6, density: 1.0}
  - model: ../models/ft_b
    parameters: {weight: 0.4, density: 1.0}
dtype: float32
""",
    "dare_ties": """
merge_method: dare_ties
base_model: ../models/base
models:
  - model: ../models/ft_a
    parameters: {weight: 1.0, density: 0.5}
  - model: ../models/ft_b
    parameters: {weight: 1.0, density: 0.5}
dtype: float32
""",
    "dare_linear": """
merge_method: dare_linear
base_model: ../models/base
models:
  - model: ../models/ft_a
    parameters: {weight: 1.0, density: 0.5}
  - model: ../models/ft_b
    parameters: {weight: 1.0, density: 0.5}
dtype: float32
""",
    "model_stock": """
merge_method: model_stock
base_model: ../models/base
models:
  - model: ../models/ft_a
  - model: ../models/ft_b
dtype: float32
""",
    "nuslerp": """
merge_method: nuslerp
base_model: ../models/base
models:
  - model: ../models/ft_a
    parameters: {weight: 0.3}
  - model: ../models/ft_b
    parameters: {weight: 0.5}
dtype: float32
""",
    "nuslerp_rows": """
merge_method: nuslerp
models:
  - model: ../models/ft_a
    parameters: {weight: 1.0}
  - model: ../models/ft_b
    parameters: {weight: 3.0}
parameters:
  nuslerp_flatten: false
dtype: float32
""",
    "slices": """
merge_method: linear
slices:
  - sources:
      - model: ../models/ft_a
        layer_range: [1, 2]
        parameters: {weight: 0.7}
      - model: ../models/base
        layer_range: [1, 2]
        parameters:
          weight:
            - filter: self_attn
              value: 0.1
  - sources:
      - model: ../models/ft_b
        layer_range: [0, 1]
      - model: ../models/base
        layer_range: [0, 1]
    parameters:
      weight: 0.5
parameters:
  weight: 0.3
dtype: float32
""",
}


def make_models():
    torch.manual_seed(1234)
    cfg = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, intermediate_size=32, num_attention_heads=2,
               num_key_value_heads=1, head_dim=8, max_position_embeddings=128, dtype=torch.float32)
    base = Qwen3ForCausalLM(Qwen3Config(tie_word_embeddings=True, **cfg))
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0.0, 0.5)
    shared = {k: torch.randn_like(v) * 0.2 for k, v in base.state_dict().items()}
    out = {"base": base}
    for name in ("ft_a", "ft_b"):
        m = Qwen3ForCausalLM(Qwen3Config(tie_word_embeddings=False, **cfg))
        sd = {k: v + shared[k] + 0.2 * torch.randn_like(v) for k, v in base.state_dict().items()}
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 0.3 * torch.randn_like(sd["model.embed_tokens.weight"])
        if name == "ft_b":
            sd["model.layers.0.input_layernorm.weight"] = 2.0 * base.state_dict()["model.layers.0.input_layernorm.weight"]
        m.load_state_dict(sd, strict=True)
        out[name] = m
    for name, m in out.items():
        d = os.path.join(ROOT, "models", name)
        shutil.rmtree(d, ignore_errors=True)
        m.save_pretrained(d, safe_serialization=True)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
    base_dir = os.path.join(ROOT, "models", "base")
    with open(os.path.join(base_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 128, "eos_token": "<|im_end|>"}, f)
    with open(os.path.join(base_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>"}, f)
    with open(os.path.join(base_dir, "chat_template.jinja"), "w") as f:
        f.write("{% for m in messages %}{{ m['content'] }}{% endfor %}\n")


def run_mergekit():
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    cfg_dir = os.path.join(ROOT, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    cwd = os.getcwd()
    for name, text in CONFIGS.items():
        path = os.path.join(cfg_dir, name + ".yaml")
        with open(path, "w") as f:
            f.write(text.lstrip())
        out = os.path.join(ROOT, "expected", name)
        tmp = out + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.chdir(cfg_dir)
        try:
            config = MergeConfiguration.model_validate(yaml.safe_load(text))
            run_merge(config, tmp, MergeOptions(copy_tokenizer=False, write_model_card=False, random_seed=7,
                                               out_shard_size=10**9))
        finally:
            os.chdir(cwd)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        for keep in ("model.safetensors", "config.json"):
            shutil.copy(os.path.join(tmp, keep), os.path.join(out, keep))
        shutil.rmtree(tmp)
        print("merged", name)


if __name__ == "__main__":
    make_models()
    run_mergekit()
