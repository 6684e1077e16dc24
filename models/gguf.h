/* gguf.h - GGUF checkpoints (llama.cpp's format, versions 2 and 3): reading the file, dequantising
 * its tensors to f32, and turning a Llama / Qwen2 / Qwen3 GGUF into the decoder (decoder.h) with
 * its tokenizer (tokenizer.h).
 *
 * Layout (ggml docs/gguf.md; little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value
 * count; key/values (string key, u32 value type, value; strings are u64 length + bytes, arrays are
 * u32 element type + u64 count + elements); tensor infos (string name, u32 n_dims, u64 ne[n_dims]
 * innermost first, u32 ggml type, u64 offset into the data section); padding to
 * general.alignment (default 32); the data section. The file is memory-mapped and everything is
 * checked before use: counts and lengths against the bytes left, types, dimensions against the
 * type's block size, each tensor inside the data section at an aligned offset. Errors name the
 * file and the key or tensor at fault.
 *
 * Tensor shapes are reported in row-major order (torch order: ne reversed), so a weight stored as
 * ne = [in, out] reads as [out, in], as in transformers. Dequantisation follows ggml-quants.c
 * (dequantize_row_*): F32, F16, BF16, Q8_0, Q4_0 and Q4_1; other types (K-quants, i-quants, ...)
 * are refused naming the tensor. */
#ifndef LU_GGUF_H
#define LU_GGUF_H

#include "models/decoder.h"
#include "models/tokenizer.h"

/* Metadata value types (gguf_type). */
typedef enum lu_gguf_type {
    LU_GGUF_UINT8 = 0, LU_GGUF_INT8, LU_GGUF_UINT16, LU_GGUF_INT16, LU_GGUF_UINT32, LU_GGUF_INT32,
    LU_GGUF_FLOAT32, LU_GGUF_BOOL, LU_GGUF_STRING, LU_GGUF_ARRAY, LU_GGUF_UINT64, LU_GGUF_INT64,
    LU_GGUF_FLOAT64, LU_GGUF_TYPE_COUNT
} lu_gguf_type;

/* The tensor types read here (ggml_type values); a file may hold others (reported by number). */
typedef enum lu_ggml_type {
    LU_GGML_F32 = 0, LU_GGML_F16 = 1, LU_GGML_Q4_0 = 2, LU_GGML_Q4_1 = 3, LU_GGML_Q8_0 = 8, LU_GGML_BF16 = 30
} lu_ggml_type;

typedef struct lu_gguf lu_gguf;

/* Maps and validates a file; NULL + error naming the file and the key or tensor at fault. */
lu_gguf *lu_gguf_open(const char *path);
void lu_gguf_close(lu_gguf *g);
const char *lu_gguf_path(const lu_gguf *g);
uint32_t lu_gguf_version(const lu_gguf *g);
uint32_t lu_gguf_alignment(const lu_gguf *g);

/* ---- metadata ---- */
int lu_gguf_kv_count(const lu_gguf *g);
const char *lu_gguf_kv_key(const lu_gguf *g, int i);
int lu_gguf_find_kv(const lu_gguf *g, const char *key); /* -1 if absent */
/* Type of key's value; for arrays *elem (may be NULL) gets the element type and *n the length.
 * Error for an absent key. */
lu_status lu_gguf_kv_info(const lu_gguf *g, const char *key, lu_gguf_type *type, lu_gguf_type *elem, int64_t *n);
/* Scalar getters: errors name the key when it is absent or of another kind. _int takes every
 * integer type and bool (a uint64 above INT64_MAX is an error); _float takes float32/64 and
 * integers. */
lu_status lu_gguf_get_int(const lu_gguf *g, const char *key, int64_t *out);
lu_status lu_gguf_get_float(const lu_gguf *g, const char *key, double *out);
lu_status lu_gguf_get_bool(const lu_gguf *g, const char *key, bool *out);
/* NUL-terminated copy owned by g (*len, if not NULL, gets the length: strings may hold NULs);
 * NULL + error when absent or not a string. */
const char *lu_gguf_get_str(const lu_gguf *g, const char *key, size_t *len);
/* Element i of an array, as the scalar getters convert. */
lu_status lu_gguf_array_int(const lu_gguf *g, const char *key, int64_t i, int64_t *out);
lu_status lu_gguf_array_float(const lu_gguf *g, const char *key, int64_t i, double *out);
const char *lu_gguf_array_str(const lu_gguf *g, const char *key, int64_t i, size_t *len);

/* ---- tensors ---- */
int lu_gguf_tensor_count(const lu_gguf *g);
const char *lu_gguf_tensor_name(const lu_gguf *g, int i);
int lu_gguf_find_tensor(const lu_gguf *g, const char *name); /* -1 if absent */
/* ggml type number, rank and row-major shape of tensor i. */
lu_status lu_gguf_tensor_info(const lu_gguf *g, int i, int *type, int *ndim, int64_t *shape);
/* Stored bytes of tensor i (in the map, valid while g is open). */
const void *lu_gguf_tensor_data(const lu_gguf *g, int i, size_t *nbytes);
/* "Q4_1", ... for any ggml type number; "unknown" otherwise. */
const char *lu_ggml_type_name(int type);

/* n elements (a whole number of blocks) of ggml type `type` at src -> f32. */
lu_status lu_ggml_dequantize(int type, const void *src, int64_t n, float *dst);
/* New f32 CPU tensor with the dequantised values of a tensor; NULL + error naming it. */
lu_tensor *lu_gguf_load(const lu_gguf *g, const char *name);
/* Dequantises into dst (f32, contiguous, same shape). */
lu_status lu_gguf_read_into(const lu_gguf *g, const char *name, lu_tensor *dst);

/* ---- models (gguf_model.c) ----
 * general.architecture "llama", "qwen2" (q/k/v biases) or "qwen3" (q/k norm). Config from
 * <arch>.embedding_length, block_count, feed_forward_length, attention.head_count(_kv),
 * attention.key_length (else embedding_length / head_count), rope.freq_base (default 10000),
 * attention.layer_norm_rms_epsilon, context_length; vocabulary size from token_embd.weight; tied
 * embeddings when output.weight is absent; bos/eos from tokenizer.ggml.bos_token_id /
 * eos_token_id (and eot_token_id when it differs). RoPE scaling and partial rotary dimensions are
 * refused.
 *
 * Tensors map to transformers names (token_embd -> model.embed_tokens, blk.N.attn_q ->
 * model.layers.N.self_attn.q_proj, attn_norm -> input_layernorm, ffn_norm ->
 * post_attention_layernorm, ffn_gate/up/down -> mlp.gate_proj/up_proj/down_proj, output_norm ->
 * model.norm, output -> lm_head). For "llama", llama.cpp's converter (convert_hf_to_gguf.py,
 * LlamaModel.permute) reorders the rows of q and k within each head from rotate-half to
 * interleaved pairs: GGUF row 2i + s of a head is HF row s * head_dim / 2 + i; this is undone here
 * so the decoder's half-split RoPE applies. Qwen2/Qwen3 files are not permuted. */
lu_status lu_gguf_read_config(const lu_gguf *g, lu_decoder_config *cfg);
/* Declares and finalises a new CPU parameter store (*params_out) and dequantises every weight
 * into it. Any GGUF tensor that is not a parameter is an error naming it. */
lu_status lu_gguf_read_decoder(const lu_gguf *g, lu_decoder *m, lu_params **params_out);
/* Byte-level BPE tokenizer from tokenizer.ggml.* (model "gpt2": tokens, merges, token_type;
 * control tokens (type 3) become special added tokens, user-defined ones (type 4) added tokens).
 * tokenizer.ggml.pre picks the pre-tokenizer as tokenizers would from the original
 * tokenizer.json: "gpt-2"/"default" the GPT-2 regex; "smollm" single digits then the GPT-2 regex;
 * "qwen2" NFC and the Qwen2 regex; "llama-bpe" the Llama-3 regex. */
lu_tokenizer *lu_gguf_read_tokenizer(const lu_gguf *g);
/* Writes that tokenizer as dir/tokenizer.json (Hugging Face tokenizers loads it and encodes the
 * same ids) and dir/tokenizer_config.json (bos/eos/pad tokens, tokenizer.chat_template), so that
 * a model exported from a GGUF file is a complete Hugging Face directory. */
lu_status lu_gguf_save_tokenizer(const lu_gguf *g, const char *dir);

/* Opens path and reads the decoder and, when tok is not NULL, the tokenizer; on failure nothing
 * is left allocated. For `luthier lm generate --model FILE.gguf`. */
lu_status lu_gguf_load_decoder(const char *path, lu_decoder *m, lu_params **params_out, lu_tokenizer **tok);

#endif
