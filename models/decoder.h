/* decoder.h - the decoder-only transformer of the Llama/Qwen family, configured by the same
 * fields as a Hugging Face config.json: RMSNorm, rotary positions (half-split), grouped-query
 * attention with optional per-head q/k RMSNorm (Qwen3), SwiGLU MLP, tied or untied embeddings.
 * Parameters are named as in transformers (model.layers.0.self_attn.q_proj.weight, ...).
 *
 * Forward functions allocate their activations in the active arena (arena.h); call them inside
 * one. */
#ifndef LU_DECODER_H
#define LU_DECODER_H

#include "core/params.h"

typedef struct lu_decoder_config {
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t intermediate_size;
    int num_layers;
    int num_heads;
    int num_kv_heads;
    int head_dim;            /* independent of hidden_size / num_heads (Qwen3) */
    double rope_theta;
    double rms_norm_eps;
    bool qk_norm;            /* Qwen3: RMSNorm over head_dim on q and k before RoPE */
    bool attention_bias;     /* Qwen2: biases on q/k/v projections */
    bool tie_embeddings;
    double init_std;         /* initializer_range */
    int64_t max_position_embeddings;
    int64_t bos_token_id;    /* -1 when the config names none */
    int n_eos;               /* end-of-sequence ids (config.json eos_token_id: int or list) */
    int64_t eos_token_ids[8];
    lu_dtype dtype;          /* torch_dtype / dtype of the stored weights */
} lu_decoder_config;

typedef struct lu_decoder {
    lu_decoder_config cfg;
    lu_params *params;
    /* The dtype the forward computes in (weights, activations, logits). LU_F32, the parameters'
     * dtype, unless changed after lu_decoder_declare. Mixed precision (LU_BF16 on the GPU): each
     * f32 parameter is cast once at the start of every forward (torch.autocast casts at each use)
     * and autograd carries the casts' gradients back to the f32 parameters' gradients. */
    lu_dtype compute_dtype;
    /* Memory for long sequences (Axolotl's gradient_checkpointing / chunked_cross_entropy), both
     * off after lu_decoder_declare. recompute_layers: each layer's activations are recomputed in
     * backward instead of kept (lu_recompute). loss_chunk: lu_decoder_loss computes the final
     * norm, LM head and cross-entropy this many tokens at a time, recomputed in backward, so the
     * [tokens, vocab] logits never exist whole (0: at once). Both need the caller's arena. */
    bool recompute_layers;
    int64_t loss_chunk;
} lu_decoder;

/* Declares the parameters in `params` (not yet finalised); compute_dtype becomes LU_F32. */
lu_status lu_decoder_declare(lu_decoder *m, const lu_decoder_config *cfg, lu_params *params);
/* Random initialisation as transformers' _init_weights: N(0, init_std) for matrices, 1 for norms. */
lu_status lu_decoder_init(lu_decoder *m, uint64_t seed);

typedef struct lu_decoder_batch {
    lu_tensor *input_ids;    /* [B, T] i32/i64 */
    lu_tensor *positions;    /* [B, T] i32, or NULL for 0..T-1 */
    lu_tensor *cu_seqlens;   /* packed sequences (B == 1), or NULL */
} lu_decoder_batch;

/* Logits [B, T, V] in the compute dtype. The batch's tensors live on the parameters' device. */
lu_tensor *lu_decoder_forward(lu_decoder *m, const lu_decoder_batch *batch);
/* Mean next-token cross-entropy, an f32 scalar: labels [B, T] (-100 ignored) are shifted inside,
 * as transformers does (logits at t predict labels at t+1). */
lu_tensor *lu_decoder_loss(lu_decoder *m, const lu_decoder_batch *batch, lu_tensor *labels);
/* The same loss from given logits [B, T, V] (when the logits are wanted too), f32 for every
 * logits dtype (the cross-entropy op computes it in f32 for 16-bit logits). */
lu_tensor *lu_decoder_lm_loss(lu_tensor *logits, lu_tensor *labels);

/* Keys and values of every layer (after k_norm and RoPE) for the positions processed so far, so
 * that decoding one more token costs one token's forward: k[l], v[l] are [batch, capacity,
 * num_kv_heads, head_dim] in the decoder's compute dtype when the cache was made, on the
 * parameters' device, heap-allocated (they outlive arena resets); positions 0 .. length-1 are
 * filled. */
typedef struct lu_kv_cache {
    int num_layers;
    int64_t batch, capacity, length;
    lu_tensor **k, **v;
} lu_kv_cache;

lu_kv_cache *lu_kv_cache_new(const lu_decoder *m, int64_t batch, int64_t capacity);
void lu_kv_cache_free(lu_kv_cache *cache);

/* Logits of input_ids [B, T] at positions cache->length .. cache->length + T - 1 given the cached
 * earlier positions, equal to the rows of the full forward over the whole sequence; appends
 * this call's keys and values and advances cache->length. last_only returns the logits of the
 * last position only ([B, 1, V]: a prefill needs no more). Runs without recording autograd. */
lu_tensor *lu_decoder_forward_cached(lu_decoder *m, lu_tensor *input_ids, lu_kv_cache *cache, bool last_only);

#endif
