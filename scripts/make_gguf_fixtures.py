#!/usr/bin/env python3
"""Regenerates tests/fixtures/gguf/ for tests/test_gguf.c.

    python3 scripts/make_gguf_fixtures.py            # needs: numpy, gguf (PyPI), torch, transformers, accelerate

Writes, with the `gguf` package (llama.cpp's gguf-py) as the independent reference:
  types.gguf        one metadata key of every GGUF value type (arrays of ints, floats, strings and
                    bools included), general.alignment = 64, and tensors of every type the C reader
                    dequantises (F32, F16, BF16, Q8_0, Q4_0, Q4_1), each beside an F32 tensor
                    "expect.<name>" holding gguf.quants.dequantize of its bytes.
  tiny_llama.gguf   a random LlamaForCausalLM (2 layers, 4 query / 2 kv heads, head_dim 16, untied)
                    written as llama.cpp's convert_hf_to_gguf.py writes llama models (tensor names,
                    q/k rows permuted by LlamaModel.permute, FFN matrices in Q8_0).
  tiny_llama.json   logits of transformers loading tiny_llama.gguf itself (gguf_file=..., its own
                    reverse permutation and dequantisation), for input ids below.
If data/models/SmolLM2-135M-Instruct.Q4_1.gguf exists (scripts/fetch_smollm2.sh) it also writes
  smollm2.json      for that file: token ids of transformers' GGUF tokenizer on sample texts, the
                    chat-formatted prompt's ids, the top-5 next-token logits and the greedy reply.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
SMOLLM2 = os.path.join(ROOT, "data", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def write_types(path):
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(path, "types")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.15625)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "café ≠ cafe")
    w.add_uint64("t.u64", 2**40 + 3)
    w.add_int64("t.i64", -(2**40) - 5)
    w.add_float64("t.f64", -2.5e-300)
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.25])
    w.add_array("t.arr_str", ["a", "", "ünï"])
    w.add_array("t.arr_bool", [True, False])
    specs = [("f32", QT.F32, (3, 5, 7)), ("f16", QT.F16, (4, 6)), ("bf16", QT.BF16, (2, 32)),
             ("q8_0", QT.Q8_0, (3, 64)), ("q4_0", QT.Q4_0, (2, 96)), ("q4_1", QT.Q4_1, (5, 32))]
    for name, qt, shape in specs:
        x = rng.normal(0, 1, size=shape).astype(np.float32)
        if qt == QT.F32:
            w.add_tensor(name, x)
            ref = x
        elif qt == QT.F16:
            w.add_tensor(name, x.astype(np.float16))
            ref = x.astype(np.float16).astype(np.float32)
        else:
            q = gguf.quants.quantize(x, qt)
            w.add_tensor(name, q, raw_dtype=qt)
            ref = gguf.quants.dequantize(q, qt).astype(np.float32)
        w.add_tensor("expect." + name, np.ascontiguousarray(ref.reshape(shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def write_tiny_llama(gguf_path, json_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(3)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(gguf_path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(16)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(96)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(2):
        for hf, gg in names.items():
            x = sd[f"model.layers.{layer}.{hf}.weight"]
            if gg == "attn_q":
                x = permute(x, 4, 4)
            if gg == "attn_k":
                x = permute(x, 4, 2)
            if gg.startswith("ffn_") and gg != "ffn_norm":
                w.add_tensor(f"blk.{layer}.{gg}.weight", gguf.quants.quantize(x, QT.Q8_0), raw_dtype=QT.Q8_0)
            else:
                w.add_tensor(f"blk.{layer}.{gg}.weight", np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                                               dtype=torch.float32).eval()
    # transformers undoes the permutation: every F32 weight comes back exactly as in the original model.
    back = ref.state_dict()
    for k, v in model.state_dict().items():
        assert "mlp" in k or torch.equal(v, back[k]), k
    ids = [[5, 17, 88, 3, 41, 60, 9, 72, 30, 11, 95]]
    with torch.no_grad():
        logits = ref(torch.tensor(ids)).logits[0]
    with open(json_path, "w") as f:
        json.dump({"input_ids": ids[0], "logits": [[round(float(v), 6) for v in row] for row in logits]}, f)


def write_smollm2(json_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(SMOLLM2), os.path.basename(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    texts = ["Hello world!", "The year 2025 has 365 days.\n\n  Indented   spaces\ttab",
             "<|im_start|>user\nhi<|im_end|>", "naïve café, don't stop"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        last = model(ids).logits[0, -1]
        top = last.topk(5)
        out = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:]
    with open(json_path, "w") as fp:
        json.dump({"texts": [{"text": t, "ids": tok(t).input_ids} for t in texts],
                   "prompt": prompt, "prompt_ids": ids[0].tolist(),
                   "top_ids": top.indices.tolist(), "top_logits": [round(float(v), 5) for v in top.values],
                   "greedy_ids": out.tolist(), "greedy_text": tok.decode(out)}, fp, indent=1, ensure_ascii=False)


def main():
    # torchaudio built for another CUDA version breaks `import transformers` models; it is not needed here.
    import transformers.utils
    import transformers.utils.import_utils
    transformers.utils.is_torchaudio_available = lambda: False
    transformers.utils.import_utils.is_torchaudio_available = lambda: False
    os.makedirs(OUT, exist_ok=True)
    write_types(os.path.join(OUT, "types.gguf"))
    write_tiny_llama(os.path.join(OUT, "tiny_llama.gguf"), os.path.join(OUT, "tiny_llama.json"))
    if os.path.exists(SMOLLM2):
        write_smollm2(os.path.join(OUT, "smollm2.json"))
    else:
        print(f"{SMOLLM2} absent (scripts/fetch_smollm2.sh): smollm2.json not written", file=sys.stderr)


if __name__ == "__main__":
    main()
