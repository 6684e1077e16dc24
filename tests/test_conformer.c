/* test_conformer.c - models/conformer.c against PyTorch: torchaudio's Conformer, and the
 * early-exit Conformer baseline and Splitformer of the authors' code with their CTC loss, on the
 * fixtures of scripts/make_conformer_fixtures.py (tests/fixtures/conformer/); the paper's
 * parameter counts; initialisation; gradient flow in training mode; the JSON config, weight
 * loading and `luthier asr forward` errors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/conformer.h"
#include "testutil.h"

#define FIX "tests/fixtures/conformer/"
/* Encoder outputs within 1e-4 relative (issue 5); the absolute floor covers values near 0. */
#define RTOL 1e-4
#define ATOL 1e-5

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

TestSuite(conformer, .init = setup, .fini = teardown);

static lu_conformer_config ta_config(void)
{
    lu_conformer_config c;
    cr_assert_eq(lu_conformer_config_load_json(FIX "ta_config.json", &c), LU_OK, "%s", lu_error_message());
    return c;
}

/* A finalised store holding a torchaudio Conformer of config c. */
static lu_params *ta_params(const lu_conformer_config *c)
{
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_conformer_declare(p, "", c), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    return p;
}

/* Compares got and ref [B,T,...] on frames t < len[b] of each utterance b. */
static void assert_valid_frames_close(lu_tensor *got, lu_tensor *ref, const int64_t *len, const char *what)
{
    cr_assert(lu_tensor_same_shape(got, ref), "%s: shapes differ", what);
    for (int64_t b = 0; b < got->shape[0]; b++) {
        lu_tensor *g = lu_slice(lu_slice(got, 0, b, b + 1, 1), 1, 0, len[b], 1);
        lu_tensor *r = lu_slice(lu_slice(ref, 0, b, b + 1, 1), 1, 0, len[b], 1);
        tu_assert_tensors_close(g, r, ATOL, RTOL, what);
    }
}

Test(conformer, config_json_reads_torchaudio_arguments)
{
    lu_conformer_config c = ta_config();
    cr_assert_eq(c.input_dim, 32);
    cr_assert_eq(c.num_heads, 4);
    cr_assert_eq(c.ffn_dim, 48);
    cr_assert_eq(c.num_layers, 2);
    cr_assert_eq(c.depthwise_conv_kernel_size, 7);
    cr_assert_float_eq(c.dropout, 0.1, 1e-12);
}

Test(conformer, torchaudio_outputs_match_on_valid_frames)
{
    lu_conformer_config c = ta_config();
    lu_params *p = ta_params(&c);
    cr_assert_eq(lu_conformer_load_safetensors(p, FIX "ta_weights.safetensors"), LU_OK, "%s", lu_error_message());
    lu_tensor *x = tu_load_fixture(FIX "ta_input.safetensors", "x", LU_F32);
    lu_tensor *lengths = tu_load_fixture(FIX "ta_input.safetensors", "lengths", LU_I64);
    lu_tensor *y = lu_conformer_forward(p, "", &c, x, lengths, NULL);
    cr_assert(y, "%s", lu_error_message());
    assert_valid_frames_close(y, tu_load_fixture(FIX "ta_expected.safetensors", "y", LU_F32), (int64_t[]){13, 9}, "torchaudio y");
    lu_params_free(p);
}

Test(conformer, eval_batchnorm_uses_the_loaded_running_statistics)
{
    /* The fixture's running statistics are random; resetting them must change the output, so the
     * parity test above exercises eval-mode BatchNorm. */
    lu_conformer_config c = ta_config();
    lu_params *p = ta_params(&c);
    cr_assert_eq(lu_conformer_load_safetensors(p, FIX "ta_weights.safetensors"), LU_OK, "%s", lu_error_message());
    lu_tensor *x = tu_load_fixture(FIX "ta_input.safetensors", "x", LU_F32);
    lu_tensor *lengths = tu_load_fixture(FIX "ta_input.safetensors", "lengths", LU_I64);
    double *before = tu_to_doubles(lu_conformer_forward(p, "", &c, x, lengths, NULL));
    lu_tensor_fill(lu_params_get(p, "conformer_layers.1.conv_module.sequential.3.running_var"), 1.0);
    lu_tensor *y = lu_conformer_forward(p, "", &c, x, lengths, NULL);
    double *after = tu_to_doubles(y), diff = 0;
    for (int64_t i = 0; i < lu_tensor_numel(y); i++) diff = fmax(diff, fabs(after[i] - before[i]));
    cr_assert_gt(diff, 1e-3, "output moved by only %g", diff);
    free(before);
    free(after);
    lu_params_free(p);
}

Test(conformer, forward_rejects_lengths_outside_one_to_t)
{
    lu_conformer_config c = ta_config();
    lu_params *p = ta_params(&c);
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 5, 32), -1, 1, 3);
    lu_tensor *bad = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){5, 6});
    cr_assert_null(lu_conformer_forward(p, "", &c, x, bad, NULL));
    tu_assert_error_contains("length 6 of utterance 1 is outside [1, T = 5]");
    lu_tensor *zero = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){0, 5});
    cr_assert_null(lu_conformer_forward(p, "", &c, x, zero, NULL));
    tu_assert_error_contains("length 0 of utterance 0");
    lu_params_free(p);
}

Test(conformer, forward_rejects_wrong_feature_dim)
{
    lu_conformer_config c = ta_config();
    lu_params *p = ta_params(&c);
    lu_tensor *x = tu_rand(LU_F32, LU_SHAPE(2, 5, 31), -1, 1, 3);
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){5, 5});
    cr_assert_null(lu_conformer_forward(p, "", &c, x, len, NULL));
    tu_assert_error_contains("x [2, 5, 31] must be [B, T, input_dim = 32]");
    lu_params_free(p);
}

/* ---- config and weight errors ---- */

static const char *write_text(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/lu_conformer_cfg_%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void assert_config_error(const char *json, const char *needle)
{
    lu_conformer_config c;
    const char *path = write_text(json);
    cr_assert_eq(lu_conformer_config_load_json(path, &c), LU_ERR_CONFIG, "accepted %s", json);
    tu_assert_error_contains(needle);
    remove(path);
}

Test(conformer, config_json_rejects_unknown_and_missing_keys)
{
    assert_config_error("{\"input_dim\": 8, \"num_heads\": 2, \"ffn_dim\": 4, \"num_layers\": 1, "
                        "\"depthwise_conv_kernel_size\": 3, \"n_heads\": 2}", "unknown key 'n_heads'");
    assert_config_error("{\"input_dim\": 8, \"num_heads\": 2, \"ffn_dim\": 4, \"num_layers\": 1}",
                        "missing key 'depthwise_conv_kernel_size'");
}

Test(conformer, config_json_rejects_bad_values)
{
    assert_config_error("{\"input_dim\": 8, \"num_heads\": 3, \"ffn_dim\": 4, \"num_layers\": 1, "
                        "\"depthwise_conv_kernel_size\": 3}", "input_dim 8 must be a positive multiple of num_heads 3");
    assert_config_error("{\"input_dim\": 8, \"num_heads\": 2, \"ffn_dim\": 4.5, \"num_layers\": 1, "
                        "\"depthwise_conv_kernel_size\": 3}", "'ffn_dim' must be an integer >= 1");
    assert_config_error("{\"input_dim\": 8, \"num_heads\": 2, \"ffn_dim\": 4, \"num_layers\": 1, "
                        "\"depthwise_conv_kernel_size\": 4}", "depthwise_conv_kernel_size 4 must be positive and odd");
    assert_config_error("{\"input_dim\": 8, \"num_heads\": 2, \"ffn_dim\": 4, \"num_layers\": 1, "
                        "\"depthwise_conv_kernel_size\": 3, \"use_group_norm\": true}", "'use_group_norm' must be false");
}

Test(conformer, config_json_rejects_non_json_and_missing_file)
{
    assert_config_error("input_dim: 8\n", "not a JSON object");
    lu_conformer_config c;
    cr_assert_eq(lu_conformer_config_load_json("/nonexistent/cfg.json", &c), LU_ERR_IO);
    tu_assert_error_contains("/nonexistent/cfg.json: cannot open");
}

/* Writes the fixture's weights except `drop` to a temporary file. */
static const char *weights_without(const char *drop)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/lu_conformer_w_%d.safetensors", (int)getpid());
    lu_st_file *f = lu_st_open(FIX "ta_weights.safetensors");
    cr_assert(f, "%s", lu_error_message());
    int n = 0;
    const char *names[128];
    lu_tensor *ts[128];
    for (int i = 0; i < lu_st_count(f) && n < 128; i++) {
        if (!strcmp(lu_st_name(f, i), drop)) continue;
        names[n] = lu_st_name(f, i);
        ts[n] = lu_st_load(f, names[n], LU_F32);
        n++;
    }
    cr_assert_eq(lu_st_save(path, n, names, (lu_tensor *const *)ts, 0, NULL, NULL), LU_OK, "%s", lu_error_message());
    lu_st_close(f);
    return path;
}

Test(conformer, load_reports_a_missing_weight_by_name)
{
    lu_conformer_config c = ta_config();
    lu_params *p = ta_params(&c);
    const char *path = weights_without("conformer_layers.1.self_attn.in_proj_bias");
    cr_assert_eq(lu_conformer_load_safetensors(p, path), LU_ERR_FORMAT);
    tu_assert_error_contains("missing tensor 'conformer_layers.1.self_attn.in_proj_bias'");
    remove(path);
    lu_params_free(p);
}

Test(conformer, load_reports_a_shape_mismatch)
{
    lu_conformer_config c = ta_config();
    c.ffn_dim = 40;
    lu_params *p = ta_params(&c);
    cr_assert_eq(lu_conformer_load_safetensors(p, FIX "ta_weights.safetensors"), LU_ERR_SHAPE);
    tu_assert_error_contains("tensor 'conformer_layers.0.ffn1.sequential.1.weight' has shape [48, 32], the model expects [40, 32]");
    lu_params_free(p);
}

Test(conformer, load_rejects_tensors_the_config_does_not_declare)
{
    lu_conformer_config c = ta_config();
    c.num_layers = 1;
    lu_params *p = ta_params(&c);
    cr_assert_eq(lu_conformer_load_safetensors(p, FIX "ta_weights.safetensors"), LU_ERR_FORMAT);
    tu_assert_error_contains("unexpected tensor 'conformer_layers.1.");
    lu_params_free(p);
}

/* ---- parameter counts (asr.md 2.1) ---- */

Test(conformer, one_paper_layer_has_2573568_parameters)
{
    lu_ee_conformer_config c = lu_ee_conformer_paper_config(false);
    c.block.num_layers = 1;
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_conformer_declare(p, "", &c.block), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_count(p, true), 2573568);
    cr_assert_eq(lu_params_count(p, false), 2573568 + 2 * 256, "running statistics are 2 x 256 buffers");
    lu_params_free(p);
}

static int64_t paper_count(bool splitformer)
{
    lu_ee_conformer_config c = lu_ee_conformer_paper_config(splitformer);
    lu_ee_conformer m;
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_ee_conformer_declare(&m, &c, p), LU_OK, "%s", lu_error_message());
    int64_t n = lu_params_count(p, true);
    lu_params_free(p);
    return n;
}

Test(conformer, ee_baseline_paper_config_has_31536128_parameters) { cr_assert_eq(paper_count(false), 31536128); }

Test(conformer, splitformer_paper_config_has_36683264_parameters) { cr_assert_eq(paper_count(true), 36683264); }

/* ---- EE-Conformer and Splitformer against the reference in the fixture script ---- */

static lu_ee_conformer_config fixture_ee_config(bool split)
{
    lu_ee_conformer_config c = {
        .block = {.input_dim = 16, .num_heads = 2, .ffn_dim = 24, .num_layers = 2, .depthwise_conv_kernel_size = 5,
                  .dropout = 0.1},
        .n_mels = 12, .vocab_size = 11, .n_exits = 3, .max_len = 64, .split_num_layers = 1, .split_factor = 2,
    };
    if (split) {
        c.n_split = 2;
        c.split_exits[0] = 0;
        c.split_exits[1] = 2;
    }
    return c;
}

static lu_params *fixture_ee_model(lu_ee_conformer *m, bool split, bool load)
{
    lu_ee_conformer_config c = fixture_ee_config(split);
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_ee_conformer_declare(m, &c, p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK, "%s", lu_error_message());
    if (load)
        cr_assert_eq(lu_conformer_load_safetensors(p, split ? FIX "split_weights.safetensors" : FIX "ee_weights.safetensors"),
                     LU_OK, "%s", lu_error_message());
    return p;
}

static void check_exits(bool split)
{
    lu_ee_conformer m;
    lu_params *p = fixture_ee_model(&m, split, true);
    const char *expected = split ? FIX "split_expected.safetensors" : FIX "ee_expected.safetensors";
    lu_tensor *exits[LU_CONFORMER_MAX_EXITS], *len = NULL;
    lu_status s = lu_ee_conformer_forward(&m, tu_load_fixture(FIX "ee_input.safetensors", "feats", LU_F32),
                                          tu_load_fixture(FIX "ee_input.safetensors", "lengths", LU_I64), NULL, exits, &len);
    cr_assert_eq(s, LU_OK, "%s", lu_error_message());
    int64_t want_len[3], got_len[3];
    lu_tensor_to_host(tu_load_fixture(expected, "lengths", LU_I64), LU_I64, want_len);
    lu_tensor_to_host(len, LU_I64, got_len);
    for (int b = 0; b < 3; b++) cr_assert_eq(got_len[b], want_len[b], "length %d: %lld vs %lld", b, (long long)got_len[b], (long long)want_len[b]);
    lu_tensor *ref = tu_load_fixture(expected, "exits", LU_F32);
    for (int i = 0; i < 3; i++) {
        char what[32];
        snprintf(what, sizeof what, "exit %d", i);
        assert_valid_frames_close(exits[i], lu_squeeze(lu_slice(ref, 0, i, i + 1, 1), 0), want_len, what);
    }
    lu_params_free(p);
}

Test(conformer, ee_baseline_exits_match_reference) { check_exits(false); }

Test(conformer, splitformer_exits_match_reference) { check_exits(true); }

static void check_loss(bool split, bool utterance_lengths)
{
    lu_ee_conformer m;
    lu_params *p = fixture_ee_model(&m, split, true);
    m.cfg.ctc_utterance_lengths = utterance_lengths;
    const char *in = FIX "ee_input.safetensors";
    lu_tensor *loss = lu_ee_conformer_loss(&m, tu_load_fixture(in, "feats", LU_F32), tu_load_fixture(in, "lengths", LU_I64),
                                           tu_load_fixture(in, "targets", LU_I64), tu_load_fixture(in, "target_lengths", LU_I64), NULL);
    cr_assert(loss, "%s", lu_error_message());
    lu_tensor *ref = tu_load_fixture(split ? FIX "split_expected.safetensors" : FIX "ee_expected.safetensors",
                             utterance_lengths ? "loss_utt" : "loss", LU_F32);
    tu_assert_tensors_close(lu_reshape(loss, LU_SHAPE(1)), ref, 1e-5, 1e-5, "sum of exit CTC losses");
    lu_params_free(p);
}

Test(conformer, loss_is_the_sum_of_exit_ctc_losses_with_padded_input_lengths) { check_loss(true, false); }

Test(conformer, loss_option_uses_per_utterance_input_lengths)
{
    check_loss(false, true);
    check_loss(true, true);
}

Test(conformer, front_end_frame_count_follows_two_stride_2_convolutions)
{
    cr_assert_eq(lu_ee_conformer_out_frames(41), 9);
    cr_assert_eq(lu_ee_conformer_out_frames(100), 24);
    cr_assert_eq(lu_ee_conformer_out_frames(7), 1);
    cr_assert_eq(lu_ee_conformer_out_frames(6), 0);
}

Test(conformer, ee_forward_rejects_inputs_too_short_or_wrong_width)
{
    lu_ee_conformer m;
    lu_params *p = fixture_ee_model(&m, false, false);
    lu_tensor *exits[LU_CONFORMER_MAX_EXITS];
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(1), LU_CPU, (int64_t[]){6});
    cr_assert_neq(lu_ee_conformer_forward(&m, tu_rand(LU_F32, LU_SHAPE(1, 6, 12), -1, 1, 1), len, NULL, exits, NULL), LU_OK);
    tu_assert_error_contains("give 0 frames after subsampling");
    cr_assert_neq(lu_ee_conformer_forward(&m, tu_rand(LU_F32, LU_SHAPE(1, 9, 13), -1, 1, 1), len, NULL, exits, NULL), LU_OK);
    tu_assert_error_contains("must be [B, T, n_mels = 12]");
    lu_tensor *three = lu_tensor_from_host(LU_I64, LU_SHAPE(1), LU_CPU, (int64_t[]){3});
    cr_assert_neq(lu_ee_conformer_forward(&m, tu_rand(LU_F32, LU_SHAPE(1, 9, 12), -1, 1, 1), three, NULL, exits, NULL), LU_OK);
    tu_assert_error_contains("length 0 of utterance 0");
    lu_params_free(p);
}

Test(conformer, ee_config_rejects_bad_split_exits)
{
    lu_ee_conformer_config c = fixture_ee_config(true);
    c.split_exits[1] = 3;
    lu_ee_conformer m;
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_ee_conformer_declare(&m, &c, p), LU_ERR_CONFIG);
    tu_assert_error_contains("split exit 3 must be an increasing block index in [0, 3)");
    lu_params_free(p);
}

/* ---- initialisation and training ---- */

Test(conformer, init_is_xavier_for_matrices_and_torch_defaults_elsewhere)
{
    lu_ee_conformer m;
    lu_params *p = fixture_ee_model(&m, true, false);
    cr_assert_eq(lu_ee_conformer_init(&m, 7), LU_OK, "%s", lu_error_message());
    struct { const char *name; double lo, hi; bool constant; } want[] = {
        /* xavier bound sqrt(6 / (fan_in + fan_out)) */
        {"conformer.0.conformer_layers.0.self_attn.in_proj_weight", -sqrt(6.0 / 64), sqrt(6.0 / 64), false},
        {"conformer.1.conformer_layers.1.ffn2.sequential.1.weight", -sqrt(6.0 / 40), sqrt(6.0 / 40), false},
        {"conformer.2.conformer_layers.0.conv_module.sequential.2.weight", -sqrt(6.0 / 85), sqrt(6.0 / 85), false},
        {"conv_subsample.sequential.0.weight", -sqrt(6.0 / 84), sqrt(6.0 / 84), false},
        /* Linear / Conv1d bias U(+-1/sqrt(fan_in)) */
        {"linears.2.bias", -0.25, 0.25, false},
        {"conformer.0.conformer_layers.0.conv_module.sequential.2.bias", -1 / sqrt(5.0), 1 / sqrt(5.0), false},
        {"conformer_parallel.1.conformer_layers.0.self_attn.in_proj_bias", 0, 0, true},
        {"conformer_parallel.1.conformer_layers.0.self_attn.out_proj.bias", 0, 0, true},
        {"conformer.0.conformer_layers.1.final_layer_norm.weight", 1, 1, true},
        {"conformer.0.conformer_layers.1.conv_module.sequential.3.bias", 0, 0, true},
        {"conformer.0.conformer_layers.1.conv_module.sequential.3.running_var", 1, 1, true},
        {"conformer.0.conformer_layers.1.conv_module.sequential.3.running_mean", 0, 0, true},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        lu_tensor *t = lu_params_get(p, want[i].name);
        cr_assert(t, "%s", lu_error_message());
        double *v = tu_to_doubles(t), mn = INFINITY, mx = -INFINITY;
        for (int64_t k = 0; k < lu_tensor_numel(t); k++) {
            mn = fmin(mn, v[k]);
            mx = fmax(mx, v[k]);
        }
        free(v);
        cr_assert(mn >= want[i].lo - 1e-6 && mx <= want[i].hi + 1e-6, "%s: values in [%g, %g], expected within [%g, %g]",
                  want[i].name, mn, mx, want[i].lo, want[i].hi);
        if (!want[i].constant)
            cr_assert_gt(mx - mn, 0.5 * (want[i].hi - want[i].lo), "%s: values in [%g, %g] do not fill the range",
                         want[i].name, mn, mx);
    }
    lu_params_free(p);
}

Test(conformer, training_loss_gives_finite_nonzero_gradients_to_every_parameter)
{
    lu_ee_conformer m;
    lu_params *p = fixture_ee_model(&m, true, false);
    cr_assert_eq(lu_ee_conformer_init(&m, 11), LU_OK, "%s", lu_error_message());
    lu_conformer_run run = {.training = true, .seed = 5, .step = 1};
    lu_tensor *feats = tu_rand(LU_F32, LU_SHAPE(2, 37, 12), -1, 1, 21);
    lu_tensor *len = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){37, 29});
    lu_tensor *tgt = lu_tensor_from_host(LU_I64, LU_SHAPE(2, 3), LU_CPU, (int64_t[]){1, 2, 3, 4, 5, 5});
    lu_tensor *tlen = lu_tensor_from_host(LU_I64, LU_SHAPE(2), LU_CPU, (int64_t[]){3, 2});
    lu_tensor *loss = lu_ee_conformer_loss(&m, feats, len, tgt, tlen, &run);
    cr_assert(loss, "%s", lu_error_message());
    cr_assert(isfinite(lu_tensor_item(loss)) && lu_tensor_item(loss) > 0, "loss %g", lu_tensor_item(loss));
    cr_assert_gt(run.site, 0, "training must apply dropout");
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
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
    }
    lu_params_free(p);
}

Test(conformer, training_forward_is_reproducible_and_updates_batchnorm_statistics)
{
    lu_ee_conformer m;
    lu_params *p = fixture_ee_model(&m, false, true);
    lu_tensor *feats = tu_load_fixture(FIX "ee_input.safetensors", "feats", LU_F32);
    lu_tensor *len = tu_load_fixture(FIX "ee_input.safetensors", "lengths", LU_I64);
    lu_tensor *rv = lu_params_get(p, "conformer.0.conformer_layers.0.conv_module.sequential.3.running_var");
    double *rv0 = tu_to_doubles(rv);
    lu_tensor *a[LU_CONFORMER_MAX_EXITS], *b[LU_CONFORMER_MAX_EXITS], *e[LU_CONFORMER_MAX_EXITS];
    lu_conformer_run r1 = {.training = true, .seed = 3, .step = 9}, r2 = r1;
    cr_assert_eq(lu_ee_conformer_forward(&m, feats, len, &r1, a, NULL), LU_OK, "%s", lu_error_message());
    double *rv1 = tu_to_doubles(rv);
    cr_assert(rv1[0] != rv0[0], "running_var[0] stayed %g", rv0[0]);
    cr_assert_eq(lu_ee_conformer_forward(&m, feats, len, &r2, b, NULL), LU_OK, "%s", lu_error_message());
    tu_assert_tensors_close(b[2], a[2], 0, 0, "same seed and step, same batch statistics");
    cr_assert_eq(lu_ee_conformer_forward(&m, feats, len, NULL, e, NULL), LU_OK, "%s", lu_error_message());
    double *va = tu_to_doubles(a[2]), *ve = tu_to_doubles(e[2]), diff = 0;
    for (int64_t k = 0; k < lu_tensor_numel(a[2]); k++) diff = fmax(diff, fabs(va[k] - ve[k]));
    cr_assert_gt(diff, 1e-3, "training and eval outputs differ by only %g", diff);
    free(rv0);
    free(rv1);
    free(va);
    free(ve);
    lu_params_free(p);
}

/* ---- luthier asr forward ---- */

static int run_cli(int argc, const char **argv) { return lu_cli_asr(argc, (char **)argv); }

Test(conformer, cli_forward_writes_y_matching_torchaudio)
{
    char out[64];
    snprintf(out, sizeof out, "/tmp/lu_conformer_out_%d.safetensors", (int)getpid());
    const char *argv[] = {"asr", "forward", "--arch", "conformer", "--config", FIX "ta_config.json", "--weights",
                          FIX "ta_weights.safetensors", "--input", FIX "ta_input.safetensors", "--out", out};
    cr_assert_eq(run_cli(12, argv), 0, "%s", lu_error_message());
    assert_valid_frames_close(tu_load_fixture(out, "y", LU_F32), tu_load_fixture(FIX "ta_expected.safetensors", "y", LU_F32),
                              (int64_t[]){13, 9}, "cli y");
    int64_t len[2];
    lu_tensor_to_host(tu_load_fixture(out, "lengths", LU_I64), LU_I64, len);
    cr_assert(len[0] == 13 && len[1] == 9);
    remove(out);
}

Test(conformer, cli_reports_usage_errors_and_unsupported_arch)
{
    const char *help[] = {"asr", "forward", "--help"};
    cr_assert_eq(run_cli(3, help), 0);
    const char *missing[] = {"asr", "forward", "--arch", "conformer", "--config", FIX "ta_config.json"};
    cr_assert_eq(run_cli(6, missing), 2);
    const char *unknown[] = {"asr", "forward", "--arch", "lstm", "--config", "c", "--weights", "w", "--input", "i",
                             "--out", "o"};
    cr_assert_eq(run_cli(12, unknown), 2);
    const char *zip[] = {"asr", "forward", "--arch", "zipformer", "--config", "c", "--weights", "w", "--input", "i",
                         "--out", "o"};
    cr_assert_eq(run_cli(12, zip), 1);
    const char *verb[] = {"asr", "transcribe"};
    cr_assert_eq(run_cli(2, verb), 2);
}

Test(conformer, cli_fails_on_a_bad_config_without_writing_output)
{
    char out[64];
    snprintf(out, sizeof out, "/tmp/lu_conformer_out_%d.safetensors", (int)getpid());
    const char *cfg = write_text("{\"input_dim\": 32, \"num_heads\": 4}");
    const char *argv[] = {"asr", "forward", "--arch", "conformer", "--config", cfg, "--weights",
                          FIX "ta_weights.safetensors", "--input", FIX "ta_input.safetensors", "--out", out};
    cr_assert_eq(run_cli(12, argv), 1);
    tu_assert_error_contains("missing key 'ffn_dim'");
    cr_assert_neq(access(out, F_OK), 0, "output written despite the error");
    remove(cfg);
}
