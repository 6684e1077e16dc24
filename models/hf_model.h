/* hf_model.h - Hugging Face model directories for the decoder (decoder.h): config.json plus
 * model.safetensors, or shards listed by model.safetensors.index.json.
 *
 * config.json as written by transformers 4.x and 5.x is accepted for model_type "qwen3" (q/k norm),
 * "qwen2" (q/k/v biases) and "llama". Missing optional keys take transformers' class defaults
 * (configuration_qwen3.py, configuration_qwen2.py, configuration_llama.py): num_key_value_heads =
 * num_attention_heads; head_dim = 128 for qwen3, hidden_size / num_attention_heads otherwise;
 * rope_theta 10000 (top level, or inside "rope_parameters" / "rope_scaling", whose rope_type must
 * be "default"); rms_norm_eps 1e-6; tie_word_embeddings false; initializer_range 0.02;
 * max_position_embeddings 32768 (qwen) or 2048 (llama); bos/eos none (qwen) or 1/2 (llama);
 * dtype from "dtype" or "torch_dtype", else f32. Features the decoder lacks (o_proj or MLP biases,
 * sliding-window attention, scaled RoPE, activations other than silu) are refused naming the key.
 *
 * Weights load as f32 whatever their stored dtype (f32, bf16, f16, ...). Every declared parameter
 * must be present with its shape; any other tensor is an error, except lm_head.weight in a tied
 * model (mergekit writes it; its shape is checked, its values ignored) and rotary inv_freq buffers.
 *
 * lu_hf_save writes config.json (model_type/architectures qwen3/Qwen3ForCausalLM when qk_norm,
 * qwen2/Qwen2ForCausalLM when attention_bias, else llama/LlamaForCausalLM; torch_dtype = dtype)
 * and the weights in dtype with metadata {"format": "pt"}: one model.safetensors, or, when they
 * exceed max_shard_bytes (> 0), shards model-00001-of-0000N.safetensors filled in declaration order
 * plus model.safetensors.index.json. Everything is written into "<dir>.tmp.<pid>" and renamed to
 * dir, which must not exist or be empty, so a failure never leaves a half-written model. */
#ifndef LU_HF_MODEL_H
#define LU_HF_MODEL_H

#include "models/decoder.h"

/* Reads dir/config.json into cfg. */
lu_status lu_hf_read_config(const char *dir, lu_decoder_config *cfg);
/* Reads the config, declares and finalises a new CPU parameter store (*params_out, caller frees
 * with lu_params_free) and loads every weight as f32. On failure nothing is allocated. */
lu_status lu_hf_load(const char *dir, lu_decoder *m, lu_params **params_out);
/* dtype: LU_F32, LU_BF16 or LU_F16. max_shard_bytes <= 0: never shard. */
lu_status lu_hf_save(const char *dir, const lu_decoder *m, lu_dtype dtype, int64_t max_shard_bytes);

#endif
