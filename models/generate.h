/* generate.h - autoregressive generation from a decoder (decoder.h) with its key/value cache:
 * the prompt is processed in one forward (prefill), then one token per step against the cache.
 * Tokens are chosen greedily or sampled as transformers' logits warpers do, in their order:
 * temperature, then top-k, then top-p (nucleus). Sampling draws from the counter-based RNG
 * (rng.h) keyed by (seed, step), so a run is a pure function of its inputs. Generation records
 * no autograd and allocates each step's activations in its own arena, reset between steps. */
#ifndef LU_GENERATE_H
#define LU_GENERATE_H

#include "models/decoder.h"

typedef struct lu_sampling {
    bool greedy;         /* argmax (ties: lowest id); the other fields are then unused */
    double temperature;  /* > 0: logits are divided by it */
    int64_t top_k;       /* keep the k highest logits (and any tied with the k-th); 0 keeps all */
    double top_p;        /* in (0, 1]: keep the most likely tokens until their mass reaches top_p */
    uint64_t seed;
} lu_sampling;

/* Called once per new token, end token included; a nonzero return stops after that token. */
typedef int (*lu_token_fn)(int64_t token, void *ctx);

typedef struct lu_generate_opts {
    int64_t max_new_tokens;
    lu_sampling sampling;
    const int64_t *eos_ids; /* end tokens; NULL uses the model config's (cfg.eos_token_ids) */
    int n_eos;
    lu_token_fn on_token;   /* or NULL */
    void *ctx;
} lu_generate_opts;

/* Checks the settings; error naming the bad field. */
lu_status lu_sampling_check(const lu_sampling *s);

/* The next token from logits[vocab] under s; `step` selects the random stream, so equal
 * (logits, s, step) give the same token. -1 with an error for invalid settings. */
int64_t lu_sample_token(const float *logits, int64_t vocab, const lu_sampling *s, uint64_t step);

/* Continues prompt[0 .. n_prompt-1] (one sequence, n_prompt >= 1): writes the new tokens to
 * out[0 .. max_new_tokens-1], an end token included as the last one, and returns their count;
 * it is max_new_tokens unless an end token or the callback stopped earlier. -1 with an error. */
int64_t lu_generate(lu_decoder *m, const int64_t *prompt, int64_t n_prompt, const lu_generate_opts *opts,
                    int64_t *out);

#endif
