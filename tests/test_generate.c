/* test_generate.c - the key/value cache gives the logits of the full forward; sampling follows
 * transformers' warpers (temperature, top-k, top-p) and is reproducible from its seed;
 * generation stops on end tokens and streams each token. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/generate.h"
#include "testutil.h"

static lu_decoder model;
static lu_arena *arena;

/* A small random Qwen3-style model: GQA (4 query, 2 kv heads), head_dim != hidden / heads. */
static void setup_model(void)
{
    lu_decoder_config c = {.vocab_size = 37, .hidden_size = 24, .intermediate_size = 40, .num_layers = 2,
                           .num_heads = 4, .num_kv_heads = 2, .head_dim = 10, .rope_theta = 10000,
                           .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.4,
                           .bos_token_id = -1, .dtype = LU_F32};
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert(p);
    cr_assert_eq(lu_decoder_declare(&model, &c, p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_decoder_init(&model, 11), LU_OK, "%s", lu_error_message());
    arena = lu_arena_new(LU_CPU, 0);
    lu_arena_activate(arena);
}

static void teardown_model(void)
{
    lu_arena_activate(NULL);
    lu_arena_free(arena);
    lu_params_free(model.params);
}

TestSuite(generate, .init = setup_model, .fini = teardown_model);

static lu_tensor *ids_tensor(const int64_t *ids, int64_t b, int64_t t)
{
    return lu_tensor_from_host(LU_I64, LU_SHAPE(b, t), LU_CPU, ids);
}

/* Compares cached logits rows [t0, t0 + n) with the full forward's rows of the same positions. */
static void assert_rows_match(const lu_tensor *full, const lu_tensor *part, int64_t t0, const char *what)
{
    int64_t B = full->shape[0], T = full->shape[1], V = full->shape[2], n = part->shape[1];
    double *f = tu_to_doubles(full), *ref = malloc((size_t)(B * n * V) * sizeof *ref);
    for (int64_t b = 0; b < B; b++)
        memcpy(ref + b * n * V, f + (b * T + t0) * V, (size_t)(n * V) * sizeof *ref);
    tu_assert_close(part, ref, B * n * V, 1e-5, 1e-5, what);
    free(f);
    free(ref);
}

Test(generate, cached_prefill_then_steps_match_full_forward)
{
    const int64_t T = 9;
    int64_t ids[2 * 9];
    for (int i = 0; i < 2 * 9; i++) ids[i] = (i * 7 + 3) % 37;
    lu_decoder_batch batch = {.input_ids = ids_tensor(ids, 2, T)};
    lu_tensor *full = lu_decoder_forward(&model, &batch);
    cr_assert(full, "%s", lu_error_message());
    lu_kv_cache *kc = lu_kv_cache_new(&model, 2, T);
    cr_assert(kc, "%s", lu_error_message());
    /* Prefill 5 positions, then 1, then 3. */
    int64_t cuts[] = {0, 5, 6, 9};
    for (int s = 0; s < 3; s++) {
        int64_t n = cuts[s + 1] - cuts[s], part[2 * 9];
        for (int64_t b = 0; b < 2; b++) memcpy(part + b * n, ids + b * T + cuts[s], (size_t)n * sizeof *part);
        lu_tensor *y = lu_decoder_forward_cached(&model, ids_tensor(part, 2, n), kc, false);
        cr_assert(y, "%s", lu_error_message());
        cr_assert_eq(kc->length, cuts[s + 1]);
        assert_rows_match(full, y, cuts[s], "cached logits");
    }
    lu_kv_cache_free(kc);
}

Test(generate, cached_last_only_returns_the_last_row)
{
    int64_t ids[6] = {1, 5, 9, 2, 30, 4};
    lu_decoder_batch batch = {.input_ids = ids_tensor(ids, 1, 6)};
    lu_tensor *full = lu_decoder_forward(&model, &batch);
    lu_kv_cache *kc = lu_kv_cache_new(&model, 1, 6);
    lu_tensor *y = lu_decoder_forward_cached(&model, ids_tensor(ids, 1, 6), kc, true);
    cr_assert(full && y, "%s", lu_error_message());
    cr_assert_eq(y->shape[1], 1);
    assert_rows_match(full, y, 5, "last-row logits");
    lu_kv_cache_free(kc);
}

Test(generate, cached_forward_rejects_overflowing_the_cache)
{
    int64_t ids[4] = {1, 2, 3, 4};
    lu_kv_cache *kc = lu_kv_cache_new(&model, 1, 3);
    cr_assert_null(lu_decoder_forward_cached(&model, ids_tensor(ids, 1, 4), kc, false));
    tu_assert_error_contains("do not fit a kv cache");
    cr_assert_eq(kc->length, 0);
    lu_kv_cache_free(kc);
}

/* Greedy generation equals repeated argmax over the full forward of the growing sequence. */
Test(generate, greedy_matches_argmax_of_full_forward)
{
    int64_t seq[16] = {3, 14, 15, 9, 26};
    int64_t n0 = 5, out[8];
    lu_generate_opts o = {.max_new_tokens = 8, .sampling = {.greedy = true}};
    cr_assert_eq(lu_generate(&model, seq, n0, &o, out), 8, "%s", lu_error_message());
    for (int64_t i = 0; i < 8; i++) {
        lu_decoder_batch batch = {.input_ids = ids_tensor(seq, 1, n0 + i)};
        lu_tensor *y = lu_decoder_forward(&model, &batch);
        cr_assert(y, "%s", lu_error_message());
        double *l = tu_to_doubles(y);
        const double *last = l + (n0 + i - 1) * 37;
        int64_t best = 0;
        for (int64_t v = 1; v < 37; v++)
            if (last[v] > last[best]) best = v;
        free(l);
        cr_assert_eq(out[i], best, "step %lld: generated %lld, argmax %lld", (long long)i, (long long)out[i],
                     (long long)best);
        seq[n0 + i] = best;
        lu_arena_reset(arena);
    }
}

typedef struct {
    int64_t seen[16];
    int n, stop_after;
} stream;

static int on_token(int64_t tok, void *ctx)
{
    stream *s = ctx;
    s->seen[s->n++] = tok;
    return s->stop_after && s->n >= s->stop_after;
}

Test(generate, stops_on_eos_and_streams_every_token)
{
    int64_t prompt[3] = {7, 8, 9}, out[10];
    lu_generate_opts o = {.max_new_tokens = 10, .sampling = {.greedy = true}};
    int64_t n = lu_generate(&model, prompt, 3, &o, out);
    cr_assert_eq(n, 10, "%s", lu_error_message());
    /* Make the 4th greedy token an end token: generation must stop right after it. */
    int64_t eos[1] = {out[3]};
    stream s = {0};
    lu_generate_opts oe = {.max_new_tokens = 10, .sampling = {.greedy = true}, .eos_ids = eos, .n_eos = 1,
                           .on_token = on_token, .ctx = &s};
    int64_t out2[10];
    int64_t n2 = lu_generate(&model, prompt, 3, &oe, out2);
    int64_t first = 0;
    while (out[first] != out[3]) first++;
    cr_assert_eq(n2, first + 1);
    cr_assert_eq(s.n, n2);
    for (int64_t i = 0; i < n2; i++) cr_assert_eq(s.seen[i], out[i]);
}

Test(generate, config_eos_ids_are_used_by_default)
{
    int64_t prompt[2] = {4, 2}, out[6];
    lu_generate_opts o = {.max_new_tokens = 6, .sampling = {.greedy = true}};
    cr_assert_eq(lu_generate(&model, prompt, 2, &o, out), 6);
    model.cfg.n_eos = 1;
    model.cfg.eos_token_ids[0] = out[0];
    int64_t out2[6];
    cr_assert_eq(lu_generate(&model, prompt, 2, &o, out2), 1);
    cr_assert_eq(out2[0], out[0]);
    model.cfg.n_eos = 0;
}

Test(generate, callback_can_stop_generation)
{
    int64_t prompt[2] = {4, 2}, out[6];
    stream s = {.stop_after = 2};
    lu_generate_opts o = {.max_new_tokens = 6, .sampling = {.greedy = true}, .on_token = on_token, .ctx = &s};
    cr_assert_eq(lu_generate(&model, prompt, 2, &o, out), 2);
}

Test(generate, sampling_is_reproducible_from_its_seed)
{
    int64_t prompt[3] = {1, 2, 3}, a[12], b[12], c[12];
    lu_generate_opts o = {.max_new_tokens = 12, .sampling = {.temperature = 1.5, .top_p = 1, .seed = 5}};
    cr_assert_eq(lu_generate(&model, prompt, 3, &o, a), 12, "%s", lu_error_message());
    cr_assert_eq(lu_generate(&model, prompt, 3, &o, b), 12);
    o.sampling.seed = 6;
    cr_assert_eq(lu_generate(&model, prompt, 3, &o, c), 12);
    cr_assert_arr_eq(a, b, sizeof a);
    cr_assert(memcmp(a, c, sizeof a), "seeds 5 and 6 gave the same 12 tokens");
}

Test(generate, rejects_bad_prompt_and_settings)
{
    int64_t prompt[2] = {4, 99}, out[2];
    lu_generate_opts o = {.max_new_tokens = 2, .sampling = {.greedy = true}};
    cr_assert_eq(lu_generate(&model, prompt, 2, &o, out), -1);
    tu_assert_error_contains("token 99 at position 1 is outside the vocabulary [0, 37)");
    prompt[1] = 3;
    o.sampling = (lu_sampling){.temperature = 0, .top_p = 1};
    cr_assert_eq(lu_generate(&model, prompt, 2, &o, out), -1);
    tu_assert_error_contains("temperature must be > 0");
    o.sampling = (lu_sampling){.temperature = 1, .top_p = 1.5};
    cr_assert_eq(lu_generate(&model, prompt, 2, &o, out), -1);
    tu_assert_error_contains("top_p must be in (0, 1]");
}

/* ---- lu_sample_token on fixed logits ---- */

/* Empirical frequencies over many seeds against the expected distribution. */
static void assert_frequencies(const float *logits, int64_t V, lu_sampling s, const double *expect)
{
    enum { N = 20000 };
    int counts[8] = {0};
    for (uint64_t i = 0; i < N; i++) {
        s.seed = i;
        int64_t t = lu_sample_token(logits, V, &s, 3);
        cr_assert(t >= 0 && t < V);
        counts[t]++;
    }
    /* 4.5 standard deviations of a binomial proportion with p <= 0.5: < 0.016. */
    for (int64_t v = 0; v < V; v++)
        cr_assert(fabs(counts[v] / (double)N - expect[v]) < 0.016, "token %lld: frequency %.4f, expected %.4f",
                  (long long)v, counts[v] / (double)N, expect[v]);
}

static void softmax(const float *z, int64_t n, double t, double *p)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (p[i] = exp(z[i] / t));
    for (int64_t i = 0; i < n; i++) p[i] /= s;
}

Test(sample, greedy_takes_the_lowest_id_among_tied_maxima)
{
    float z[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
    lu_sampling s = {.greedy = true};
    cr_assert_eq(lu_sample_token(z, 5, &s, 0), 1);
}

Test(sample, temperature_scales_the_softmax)
{
    float z[4] = {1.0f, 0.2f, -0.5f, 0.7f};
    double p[4];
    softmax(z, 4, 2.0, p);
    assert_frequencies(z, 4, (lu_sampling){.temperature = 2.0, .top_p = 1}, p);
}

Test(sample, top_k_keeps_the_k_highest)
{
    float z[5] = {1.0f, 3.0f, 0.0f, 2.0f, -1.0f};
    double p[2];
    float kept[2] = {3.0f, 2.0f};
    softmax(kept, 2, 1.0, p);
    double expect[5] = {0, p[0], 0, p[1], 0};
    assert_frequencies(z, 5, (lu_sampling){.temperature = 1, .top_k = 2, .top_p = 1}, expect);
}

Test(sample, top_k_keeps_ties_with_the_kth)
{
    float z[4] = {2.0f, 1.0f, 1.0f, 0.0f};
    double p[3];
    softmax(z, 3, 1.0, p);
    double expect[4] = {p[0], p[1], p[2], 0};
    assert_frequencies(z, 4, (lu_sampling){.temperature = 1, .top_k = 2, .top_p = 1}, expect);
}

/* Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0.5, 0.3} (0.5 < 0.7 above the second,
 * 0.8 >= 0.7 above the third), renormalised to 0.625 / 0.375. */
Test(sample, top_p_keeps_the_smallest_set_reaching_p)
{
    float z[4] = {(float)log(0.5), (float)log(0.3), (float)log(0.15), (float)log(0.05)};
    double expect[4] = {0.625, 0.375, 0, 0};
    assert_frequencies(z, 4, (lu_sampling){.temperature = 1, .top_p = 0.7}, expect);
}

Test(sample, tiny_top_p_keeps_the_most_likely_token)
{
    float z[3] = {0.1f, 0.9f, 0.3f};
    lu_sampling s = {.temperature = 1, .top_p = 1e-9};
    for (uint64_t seed = 0; seed < 50; seed++) {
        s.seed = seed;
        cr_assert_eq(lu_sample_token(z, 3, &s, 0), 1);
    }
}

Test(sample, same_seed_and_step_give_the_same_token)
{
    float z[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    lu_sampling s = {.temperature = 1, .top_p = 1, .seed = 42};
    int64_t first = lu_sample_token(z, 6, &s, 9);
    for (int i = 0; i < 5; i++) cr_assert_eq(lu_sample_token(z, 6, &s, 9), first);
}

Test(sample, rejects_negative_top_k)
{
    float z[2] = {0, 1};
    lu_sampling s = {.temperature = 1, .top_k = -1, .top_p = 1};
    cr_assert_eq(lu_sample_token(z, 2, &s, 0), -1);
    tu_assert_error_contains("top_k must be >= 0, got -1");
}
