/* test_zipformer.c - models/zipformer.c against icefall's Zipformer2 + Conv2dSubsampling on the
 * fixtures of scripts/make_zipformer_fixtures.py (tests/fixtures/zipformer/): subsampling, one
 * layer, every stack and the encoder output on the valid frames; the parameter count of the
 * "small" recipe; initialisation; the JSON config, weight loading and `luthier asr forward
 * --arch zipformer`; the early-exit heads and their summed CTC loss with its gradients. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/zipformer.h"
#include "testutil.h"

#define FIX "tests/fixtures/zipformer/"
/* Encoder outputs within 1e-4 relative (issue 5); the absolute floor covers values near 0. */
#define RTOL 1e-4
#define ATOL 1e-5

static const char *const ENCODER_PREFIXES[] = {"encoder_embed.", "encoder."};

static lu_arena *arena;

static void setup(void)
{
    arena = lu_arena_new(LU_CPU, 16u << 20);
    lu_arena_activate(arena);
}

static void teardown(void)
{
    lu_arena_activate(NULL);
    lu_arena_free(arena);
}

TestSuite(zipformer, .init = setup, .fini = teardown);

static lu_zipformer_config fixture_config(void)
{
    lu_zipformer_config c;
    cr_assert_eq(lu_zipformer_config_load_json(FIX "config.json", &c), LU_OK, "%s", lu_error_message());
    return c;
}

/* A finalised store of config c, with the fixture weights when load is set. */
static lu_params *model(const lu_zipformer_config *c, bool load)
{
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_zipformer_declare(p, c), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    if (load)
        cr_assert_eq(lu_zipformer_load_safetensors(p, FIX "weights.safetensors", 2, ENCODER_PREFIXES), LU_OK, "%s",
                     lu_error_message());
    return p;
}

static lu_tensor *input_x(void) { return tu_load_fixture(FIX "input.safetensors", "x", LU_F32); }
static lu_tensor *input_lens(void) { return tu_load_fixture(FIX "input.safetensors", "x_lens", LU_I64); }
static lu_tensor *expected(const char *name) { return tu_load_fixture(FIX "expected.safetensors", name, LU_F32); }

/* Compares got and ref [B,T,...] on frames t < len[b] of each utterance b. */
static void assert_valid_frames_close(lu_tensor *got, lu_tensor *ref, const int64_t *len, const char *what)
{
    cr_assert(got, "%s: %s", what, lu_error_message());
    cr_assert(lu_tensor_same_shape(got, ref), "%s: shapes differ", what);
    for (int64_t b = 0; b < got->shape[0]; b++) {
        lu_tensor *g = lu_slice(lu_slice(got, 0, b, b + 1, 1), 1, 0, len[b], 1);
        lu_tensor *r = lu_slice(lu_slice(ref, 0, b, b + 1, 1), 1, 0, len[b], 1);
        tu_assert_tensors_close(g, r, ATOL, RTOL, what);
    }
}

/* Subsampled lengths (60 - 7) // 2 = 26, (45 - 7) // 2 = 19; output lengths 13, 10. */
static const int64_t EMBED_LENS[2] = {26, 19}, OUT_LENS[2] = {13, 10};

/* ---- parity with icefall ---- */

Test(zipformer, config_json_reads_icefall_arguments_and_spreads_single_values)
{
    lu_zipformer_config c = fixture_config();
    cr_assert_eq(c.num_stacks, 3);
    cr_assert(c.downsampling_factor[0] == 1 && c.downsampling_factor[1] == 2 && c.downsampling_factor[2] == 4);
    cr_assert(c.encoder_dim[0] == 32 && c.encoder_dim[1] == 48 && c.encoder_dim[2] == 40);
    cr_assert(c.num_encoder_layers[0] == 2 && c.num_encoder_layers[2] == 1);
    cr_assert(c.num_heads[0] == 2 && c.num_heads[2] == 2, "a one-element list applies to every stack");
    cr_assert(c.query_head_dim[2] == 8 && c.pos_head_dim[2] == 4 && c.value_head_dim[2] == 6);
    cr_assert(c.feedforward_dim[1] == 64 && c.cnn_module_kernel[0] == 7 && c.cnn_module_kernel[2] == 5);
    cr_assert(c.pos_dim == 16 && !c.causal && c.feature_dim == 80);
    cr_assert(c.layer1_channels == 8 && c.layer2_channels == 16 && c.layer3_channels == 32);
}

Test(zipformer, subsampling_matches_icefall)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, true);
    lu_tensor *y = lu_zipformer_embed_forward(p, &c, input_x());
    assert_valid_frames_close(y, expected("embed_out"), EMBED_LENS, "embed_out");
    lu_params_free(p);
}

Test(zipformer, first_layer_matches_icefall)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, true);
    lu_tensor *y = lu_zipformer_layer_forward(p, &c, 0, "encoder.encoders.0.layers.0.", expected("embed_out"), EMBED_LENS);
    assert_valid_frames_close(y, expected("layer0_out"), EMBED_LENS, "layer0_out");
    lu_params_free(p);
}

Test(zipformer, every_stack_output_matches_icefall)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, true);
    lu_tensor *stacks[LU_ZIPFORMER_MAX_STACKS];
    lu_tensor *y = lu_zipformer_forward(p, &c, input_x(), input_lens(), NULL, stacks);
    cr_assert(y, "%s", lu_error_message());
    for (int i = 0; i < c.num_stacks; i++) {
        char name[32];
        snprintf(name, sizeof name, "stack_out.%d", i);
        assert_valid_frames_close(stacks[i], expected(name), EMBED_LENS, name);
    }
    lu_params_free(p);
}

Test(zipformer, encoder_out_matches_icefall_on_valid_frames)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, true);
    lu_tensor *lens = NULL;
    lu_tensor *y = lu_zipformer_forward(p, &c, input_x(), input_lens(), &lens, NULL);
    assert_valid_frames_close(y, expected("encoder_out"), OUT_LENS, "encoder_out");
    int64_t got[2], want[2];
    lu_tensor_to_host(lens, LU_I64, got);
    lu_tensor_to_host(tu_load_fixture(FIX "expected.safetensors", "encoder_out_lens", LU_I64), LU_I64, want);
    cr_assert(got[0] == want[0] && got[1] == want[1] && got[0] == OUT_LENS[0] && got[1] == OUT_LENS[1],
              "lengths %lld, %lld", (long long)got[0], (long long)got[1]);
    lu_params_free(p);
}

Test(zipformer, padded_utterance_is_not_the_same_as_a_full_one)
{
    /* The parity above covers the padding masks only if they matter: dropping utterance 1's
     * length to the padded length must change its valid frames. */
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, true);
    lu_tensor *full = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){60, 60});
    double *masked = tu_to_doubles(lu_zipformer_forward(p, &c, input_x(), input_lens(), NULL, NULL));
    lu_tensor *y = lu_zipformer_forward(p, &c, input_x(), full, NULL, NULL);
    double *unmasked = tu_to_doubles(y), diff = 0;
    int64_t C = y->shape[2], T = y->shape[1];
    for (int64_t t = 0; t < OUT_LENS[1]; t++)
        for (int64_t k = 0; k < C; k++) diff = fmax(diff, fabs(masked[(T + t) * C + k] - unmasked[(T + t) * C + k]));
    cr_assert_gt(diff, 1e-3, "masking moved utterance 1 by only %g", diff);
    free(masked);
    free(unmasked);
    lu_params_free(p);
}

/* ---- parameter count and initialisation (asr.md 9.5) ---- */

Test(zipformer, small_recipe_encoder_has_21989779_parameters)
{
    /* The reference script prints encoder_embed 611953 + encoder 21377826 = 21989779 for the
     * small recipe; asr.md's 23,285,615 also counts the transducer's decoder and joiner. The
     * 12 unused per-layer bypass_scale vectors (2 x (192 + 5 x 256) values) are buffers here. */
    lu_zipformer_config c = lu_zipformer_small_config();
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_zipformer_declare(p, &c), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_count(p, false), 21989779);
    cr_assert_eq(lu_params_count(p, true), 21989779 - 2 * (192 + 5 * 256));
    lu_params_free(p);
}

Test(zipformer, init_follows_icefall_module_scales)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, false);
    cr_assert_eq(lu_zipformer_init(p, &c, 3), LU_OK, "%s", lu_error_message());
    const char *L = "encoder.encoders.1.encoder.layers.0.";
    struct { const char *suffix; double lo, hi; bool constant; } want[] = {
        {"bypass.bypass_scale", 0.5, 0.5, true},
        {"norm.log_scale", 1, 1, true},
        /* nn.Linear: U(+-1/sqrt(fan_in)) for weight and bias */
        {"feed_forward2.in_proj.weight", -1 / sqrt(48.0), 1 / sqrt(48.0), false},
        {"conv_module1.depthwise_conv.bias", -1 / sqrt(5.0), 1 / sqrt(5.0), false},
        /* ScaledLinear(initial_scale s): weight * s, bias U(+-0.1 s) */
        {"feed_forward2.out_proj.weight", -0.1 / sqrt(64.0), 0.1 / sqrt(64.0), false},
        {"feed_forward2.out_proj.bias", -0.01, 0.01, false},
        {"self_attn_weights.in_proj.weight", -pow(8, -0.25) / sqrt(48.0), pow(8, -0.25) / sqrt(48.0), false},
        {"self_attn_weights.linear_pos.weight", -0.05 / 4, 0.05 / 4, false},
        {"nonlin_attention.out_proj.bias", -0.005, 0.005, false},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char name[160];
        snprintf(name, sizeof name, "%s%s", L, want[i].suffix);
        lu_tensor *t = lu_params_get(p, name);
        cr_assert(t, "%s", lu_error_message());
        double *v = tu_to_doubles(t), mn = INFINITY, mx = -INFINITY;
        for (int64_t k = 0; k < lu_tensor_numel(t); k++) {
            mn = fmin(mn, v[k]);
            mx = fmax(mx, v[k]);
        }
        free(v);
        cr_assert(mn >= want[i].lo - 1e-7 && mx <= want[i].hi + 1e-7, "%s: values in [%g, %g], expected within [%g, %g]",
                  name, mn, mx, want[i].lo, want[i].hi);
        if (!want[i].constant)
            cr_assert_gt(mx - mn, 0.5 * (want[i].hi - want[i].lo), "%s: [%g, %g] does not fill the range", name, mn, mx);
    }
    lu_tensor *dsb = lu_params_get(p, "encoder.encoders.2.downsample.bias");
    double *ds = tu_to_doubles(dsb);
    for (int64_t k = 0; k < lu_tensor_numel(dsb); k++)
        cr_assert(ds[k] == 0, "downsample biases start at 0 (uniform weights)");
    free(ds);
    double *nb = tu_to_doubles(lu_params_get(p, "encoder_embed.out_norm.bias")), amax = 0;
    for (int k = 0; k < 32; k++) amax = fmax(amax, fabs(nb[k]));
    free(nb);
    cr_assert(amax > 0 && amax < 1e-3, "BiasNorm bias ~ N(0, 1e-4), max |b| = %g", amax);
    lu_params_free(p);
}

/* ---- config, weights and input errors ---- */

static const char *write_text(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/lu_zipformer_cfg_%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    return path;
}

#define BASE_KEYS "\"output_downsampling_factor\": 2, \"downsampling_factor\": [1, 2], \"encoder_dim\": 16, " \
                  "\"num_encoder_layers\": 1, \"encoder_unmasked_dim\": 16, \"query_head_dim\": 4, \"pos_head_dim\": 2, " \
                  "\"value_head_dim\": 4, \"num_heads\": 2, \"feedforward_dim\": 24, \"pos_dim\": 8"

static void assert_config_error(const char *json, const char *needle)
{
    lu_zipformer_config c;
    const char *path = write_text(json);
    cr_assert_eq(lu_zipformer_config_load_json(path, &c), LU_ERR_CONFIG, "accepted %s", json);
    tu_assert_error_contains(needle);
    remove(path);
}

Test(zipformer, config_json_accepts_ints_for_lists_and_defaults_the_front_end)
{
    lu_zipformer_config c;
    const char *path = write_text("{" BASE_KEYS ", \"cnn_module_kernel\": [7, 5]}");
    cr_assert_eq(lu_zipformer_config_load_json(path, &c), LU_OK, "%s", lu_error_message());
    remove(path);
    cr_assert(c.num_stacks == 2 && c.encoder_dim[1] == 16 && c.cnn_module_kernel[1] == 5);
    cr_assert(c.feature_dim == 80 && c.layer1_channels == 8 && c.layer2_channels == 32 && c.layer3_channels == 128);
}

Test(zipformer, config_json_rejects_unknown_and_missing_keys)
{
    assert_config_error("{" BASE_KEYS ", \"cnn_module_kernel\": 7, \"dropout\": 0.1}", "unknown key 'dropout'");
    assert_config_error("{" BASE_KEYS "}", "missing key 'cnn_module_kernel'");
}

Test(zipformer, config_json_rejects_causal_and_bad_values)
{
    assert_config_error("{" BASE_KEYS ", \"cnn_module_kernel\": 7, \"causal\": true}", "causal=true (chunked streaming) is not implemented");
    assert_config_error("{" BASE_KEYS ", \"cnn_module_kernel\": [7, 5, 3]}", "'cnn_module_kernel' has 3 entries; needs 1 or 2");
    assert_config_error("{" BASE_KEYS ", \"cnn_module_kernel\": 6}", "cnn_module_kernel 6 must be positive and odd");
    assert_config_error("{" BASE_KEYS ", \"cnn_module_kernel\": 7, \"feature_dim\": [80]}", "'feature_dim' must be one integer");
    assert_config_error("{\"output_downsampling_factor\": 4, \"downsampling_factor\": [1, 2], \"encoder_dim\": 16, "
                        "\"num_encoder_layers\": 1, \"encoder_unmasked_dim\": 16, \"query_head_dim\": 4, \"pos_head_dim\": 2, "
                        "\"value_head_dim\": 4, \"num_heads\": 2, \"feedforward_dim\": 24, \"pos_dim\": 8, "
                        "\"cnn_module_kernel\": 7}", "output_downsampling_factor 4 must be 2");
    assert_config_error("{" BASE_KEYS ", \"cnn_module_kernel\": -7}", "'cnn_module_kernel' must hold non-negative integers");
}

Test(zipformer, config_json_rejects_non_json_and_missing_file)
{
    assert_config_error("encoder_dim: 16\n", "not a JSON object");
    lu_zipformer_config c;
    cr_assert_eq(lu_zipformer_config_load_json("/nonexistent/zcfg.json", &c), LU_ERR_IO);
    tu_assert_error_contains("/nonexistent/zcfg.json: cannot open");
}

/* Writes the fixture's weights except `drop`, plus `extra` (a [1] tensor) when non-NULL. */
static const char *rewrite_weights(const char *drop, const char *extra)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/lu_zipformer_w_%d.safetensors", (int)getpid());
    lu_st_file *f = lu_st_open(FIX "weights.safetensors");
    cr_assert(f, "%s", lu_error_message());
    int n = 0;
    const char *names[256];
    lu_tensor *ts[256];
    for (int i = 0; i < lu_st_count(f) && n < 255; i++) {
        if (drop && !strcmp(lu_st_name(f, i), drop)) continue;
        names[n] = lu_st_name(f, i);
        ts[n] = lu_st_load(f, names[n], LU_F32);
        n++;
    }
    if (extra) {
        names[n] = extra;
        ts[n++] = lu_tensor_zeros(LU_F32, LU_SHAPE(1), LU_CPU);
    }
    cr_assert_eq(lu_st_save(path, n, names, (lu_tensor *const *)ts, 0, NULL, NULL), LU_OK, "%s", lu_error_message());
    lu_st_close(f);
    return path;
}

Test(zipformer, load_reports_a_missing_weight_by_name)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, false);
    const char *path = rewrite_weights("encoder.encoders.1.encoder.layers.0.self_attn_weights.linear_pos.weight", NULL);
    cr_assert_eq(lu_zipformer_load_safetensors(p, path, 2, ENCODER_PREFIXES), LU_ERR_FORMAT);
    tu_assert_error_contains("missing tensor 'encoder.encoders.1.encoder.layers.0.self_attn_weights.linear_pos.weight'");
    remove(path);
    lu_params_free(p);
}

Test(zipformer, load_reports_a_shape_mismatch)
{
    lu_zipformer_config c = fixture_config();
    c.feedforward_dim[0] = 48;
    lu_params *p = model(&c, false);
    cr_assert_eq(lu_zipformer_load_safetensors(p, FIX "weights.safetensors", 2, ENCODER_PREFIXES), LU_ERR_SHAPE);
    tu_assert_error_contains("tensor 'encoder.encoders.0.layers.0.feed_forward1.in_proj.weight' has shape [48, 32], "
                             "the model expects [36, 32]");
    lu_params_free(p);
}

Test(zipformer, load_rejects_undeclared_encoder_tensors_and_ignores_other_modules)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, false);
    const char *path = rewrite_weights(NULL, "joiner.output_linear.bias");
    cr_assert_eq(lu_zipformer_load_safetensors(p, path, 2, ENCODER_PREFIXES), LU_OK, "%s", lu_error_message());
    path = rewrite_weights(NULL, "encoder.encoders.3.downsample.bias");
    cr_assert_eq(lu_zipformer_load_safetensors(p, path, 2, ENCODER_PREFIXES), LU_ERR_FORMAT);
    tu_assert_error_contains("unexpected tensor 'encoder.encoders.3.downsample.bias'");
    remove(path);
    lu_params_free(p);
}

Test(zipformer, forward_rejects_short_inputs_and_bad_lengths)
{
    lu_zipformer_config c = fixture_config();
    lu_params *p = model(&c, false);
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){8, 8});
    cr_assert_null(lu_zipformer_forward(p, &c, tu_rand(LU_F32, LU_SHAPE(2, 8, 80), -1, 1, 1), len, NULL, NULL));
    tu_assert_error_contains("x [2, 8, 80] must be [B, T >= 9, feature_dim = 80]");
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 20, 80), -1, 1, 2);
    lu_tensor *too_long = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){21, 20});
    cr_assert_null(lu_zipformer_forward(p, &c, x, too_long, NULL, NULL));
    tu_assert_error_contains("x_lens[0] = 21 must be in [9, T = 20]");
    lu_tensor *too_short = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){20, 8});
    cr_assert_null(lu_zipformer_forward(p, &c, x, too_short, NULL, NULL));
    tu_assert_error_contains("x_lens[1] = 8");
    cr_assert_null(lu_zipformer_forward(p, &c, x, lu_tensor_zeros(LU_F32, LU_SHAPE(2), LU_CPU), NULL, NULL));
    tu_assert_error_contains("must be i32/i64 [B]");
    lu_params_free(p);
}

Test(zipformer, subsampled_frames_use_floor_division)
{
    cr_assert_eq(lu_zipformer_embed_frames(60), 26);
    cr_assert_eq(lu_zipformer_embed_frames(45), 19);
    cr_assert_eq(lu_zipformer_embed_frames(9), 1);
    cr_assert_eq(lu_zipformer_embed_frames(8), 0);
    cr_assert_eq(lu_zipformer_embed_frames(6), -1);
}

/* ---- luthier asr forward --arch zipformer ---- */

static int run_cli(int argc, const char **argv) { return lu_cli_asr(argc, (char **)argv); }

Test(zipformer, cli_forward_writes_encoder_out_matching_icefall)
{
    char out[64];
    snprintf(out, sizeof out, "/tmp/lu_zipformer_out_%d.safetensors", (int)getpid());
    const char *argv[] = {"asr", "forward", "--arch", "zipformer", "--config", FIX "config.json", "--weights",
                          FIX "weights.safetensors", "--input", FIX "input.safetensors", "--out", out};
    cr_assert_eq(run_cli(12, argv), 0, "%s", lu_error_message());
    assert_valid_frames_close(tu_load_fixture(out, "encoder_out", LU_F32), expected("encoder_out"), OUT_LENS, "cli encoder_out");
    int64_t len[2];
    lu_tensor_to_host(tu_load_fixture(out, "encoder_out_lens", LU_I64), LU_I64, len);
    cr_assert(len[0] == OUT_LENS[0] && len[1] == OUT_LENS[1]);
    remove(out);
}

Test(zipformer, cli_fails_on_an_input_without_x_lens_without_writing_output)
{
    char out[64];
    snprintf(out, sizeof out, "/tmp/lu_zipformer_out_%d.safetensors", (int)getpid());
    const char *argv[] = {"asr", "forward", "--arch", "zipformer", "--config", FIX "config.json", "--weights",
                          FIX "weights.safetensors", "--input", FIX "expected.safetensors", "--out", out};
    cr_assert_eq(run_cli(12, argv), 1);
    tu_assert_error_contains("needs tensors 'x' and 'x_lens'");
    cr_assert_neq(access(out, F_OK), 0, "output written despite the error");
}

/* ---- early-exit Zipformer ---- */

static lu_params *ee_model(lu_ee_zipformer *m, const lu_ee_zipformer_config *c, bool load)
{
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_ee_zipformer_declare(m, c, p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_ee_zipformer_init(m, 5), LU_OK, "%s", lu_error_message());
    if (load)
        cr_assert_eq(lu_zipformer_load_safetensors(p, FIX "weights.safetensors", 2, ENCODER_PREFIXES), LU_OK, "%s",
                     lu_error_message());
    return p;
}

static lu_ee_zipformer_config ee_config(void)
{
    lu_ee_zipformer_config c = {.enc = fixture_config(), .vocab_size = 11};
    lu_ee_zipformer_default_exits(&c);
    return c;
}

Test(zipformer, ee_default_exits_follow_every_stack_at_the_output_rate)
{
    lu_ee_zipformer_config c = ee_config();
    cr_assert(c.n_exits == 3 && c.exit_stacks[0] == 0 && c.exit_stacks[2] == 2);
    lu_ee_zipformer m;
    lu_params *p = ee_model(&m, &c, true);
    /* Exit heads read _get_full_dim_output over the stacks so far: 32, max(32, 48), 48 channels. */
    cr_assert_eq(lu_params_get(p, "exits.0.linear.weight")->shape[1], 32);
    cr_assert_eq(lu_params_get(p, "exits.1.linear.weight")->shape[1], 48);
    cr_assert_eq(lu_params_get(p, "ctc_output.1.weight")->shape[1], 48);
    lu_tensor *exits[LU_ZIPFORMER_MAX_STACKS], *len = NULL;
    cr_assert_eq(lu_ee_zipformer_forward(&m, input_x(), input_lens(), exits, &len), LU_OK, "%s", lu_error_message());
    for (int k = 0; k < 3; k++) {
        cr_assert(exits[k]->ndim == 3 && exits[k]->shape[0] == 2 && exits[k]->shape[1] == 13 && exits[k]->shape[2] == 11,
                  "exit %d shape", k);
        double *v = tu_to_doubles(exits[k]);
        for (int64_t r = 0; r < 2 * 13; r++) {
            double s = 0;
            for (int j = 0; j < 11; j++) s += exp(v[r * 11 + j]);
            cr_assert_float_eq(s, 1.0, 1e-5, "exit %d row %lld is not a log-distribution", k, (long long)r);
        }
        free(v);
    }
    int64_t l[2];
    lu_tensor_to_host(len, LU_I64, l);
    cr_assert(l[0] == 13 && l[1] == 10);
    /* The last exit is icefall's CTC head on encoder_out. */
    lu_tensor *enc = lu_zipformer_forward(p, &c.enc, input_x(), input_lens(), NULL, NULL);
    lu_tensor *ref = lu_log_softmax(lu_linear(enc, lu_params_get(p, "ctc_output.1.weight"), lu_params_get(p, "ctc_output.1.bias")), -1);
    tu_assert_tensors_close(exits[2], ref, 0, 0, "final exit = ctc_output(encoder_out)");
    lu_params_free(p);
}

Test(zipformer, ee_config_rejects_bad_exit_stacks)
{
    lu_ee_zipformer_config c = ee_config();
    c.n_exits = 2;
    c.exit_stacks[0] = 1;
    c.exit_stacks[1] = 1;
    lu_ee_zipformer m;
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_ee_zipformer_declare(&m, &c, p), LU_ERR_CONFIG);
    tu_assert_error_contains("exit stack 1 must be an increasing stack index in [0, 3)");
    c.exit_stacks[1] = 3;
    cr_assert_eq(lu_ee_zipformer_declare(&m, &c, p), LU_ERR_CONFIG);
    tu_assert_error_contains("exit stack 3 must be");
    lu_params_free(p);
}

Test(zipformer, ee_loss_is_the_sum_of_exit_ctc_losses)
{
    lu_ee_zipformer_config c = ee_config();
    c.n_exits = 2;
    c.exit_stacks[0] = 1;
    c.exit_stacks[1] = 2;
    lu_ee_zipformer m;
    lu_params *p = ee_model(&m, &c, true);
    lu_tensor *tgt = lu_tensor_from_host(LU_I64, LU_SHAPE(2, 4), LU_CPU, (int64_t[]){1, 2, 3, 4, 5, 6, 7, 7});
    lu_tensor *tlen = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){4, 3});
    lu_tensor *loss = lu_ee_zipformer_loss(&m, input_x(), input_lens(), tgt, tlen);
    cr_assert(loss, "%s", lu_error_message());
    lu_tensor *exits[LU_ZIPFORMER_MAX_STACKS], *len = NULL;
    cr_assert_eq(lu_ee_zipformer_forward(&m, input_x(), input_lens(), exits, &len), LU_OK, "%s", lu_error_message());
    double want = 0;
    for (int k = 0; k < 2; k++) /* icefall forward_ctc: blank 0, reduction "sum" */
        want += lu_tensor_item(lu_ctc_loss(exits[k], tgt, len, tlen, 0, LU_REDUCE_SUM, false));
    cr_assert(isfinite(want) && want > 0);
    cr_assert_float_eq(lu_tensor_item(loss), want, 1e-6 * want);
    lu_params_free(p);
}

Test(zipformer, ee_loss_gives_finite_nonzero_gradients_to_every_parameter)
{
    lu_ee_zipformer_config c = ee_config();
    lu_ee_zipformer m;
    lu_params *p = ee_model(&m, &c, false);
    lu_tensor *feats = tu_rand(LU_F32, LU_SHAPE(2, 41, 80), -1, 1, 21);
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){41, 30});
    lu_tensor *tgt = lu_tensor_from_host(LU_I64, LU_SHAPE(2, 3), LU_CPU, (int64_t[]){1, 2, 3, 4, 5, 5});
    lu_tensor *tlen = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){3, 2});
    lu_tensor *loss = lu_ee_zipformer_loss(&m, feats, len, tgt, tlen);
    cr_assert(loss, "%s", lu_error_message());
    cr_assert(isfinite(lu_tensor_item(loss)) && lu_tensor_item(loss) > 0, "loss %g", lu_tensor_item(loss));
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    int checked = 0;
    for (int i = 0; i < p->n; i++) {
        if (!p->items[i].trainable) continue;
        lu_tensor *g = p->items[i].t->grad;
        cr_assert(g, "%s has no gradient", p->items[i].name);
        double *v = tu_to_doubles(g), amax = 0;
        for (int64_t k = 0; k < lu_tensor_numel(g); k++) {
            cr_assert(isfinite(v[k]), "%s: gradient %lld is %g", p->items[i].name, (long long)k, v[k]);
            amax = fmax(amax, fabs(v[k]));
        }
        free(v);
        cr_assert_gt(amax, 0, "%s: gradient is all zero", p->items[i].name);
        checked++;
    }
    cr_assert_gt(checked, 150);
    lu_params_free(p);
}
