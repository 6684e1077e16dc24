/* test_qwen3.c - parity with Hugging Face transformers on the small random models of
 * tests/fixtures/qwen3 (scripts/make_qwen3_fixtures.py): logits, greedy continuations, masked
 * loss and gradient norm for Qwen3 configurations (tied/untied, GQA and MHA, head_dim !=
 * hidden/heads, rope_theta 1e6) and a Llama one without q/k norm; a bf16 checkpoint; checkpoints
 * written by lu_hf_save reloading identically; the `luthier lm` verbs called in-process; and mixed
 * precision (f32 parameters, the forward in f64 on the CPU or bf16 on a GPU when one is present). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/optim.h"
#include "core/safetensors.h"
#include "experiments/runner/cli.h"
#include "models/chat_template.h"
#include "models/generate.h"
#include "models/hf_model.h"
#include "models/tokenizer.h"
#include "testutil.h"

#define FIXTURES "tests/fixtures/qwen3"

static lu_arena *arena;

static void setup(void)
{
    arena = lu_arena_new(LU_CPU, 0);
}

static void teardown(void)
{
    lu_arena_activate(NULL);
    lu_arena_free(arena);
}

TestSuite(qwen3, .init = setup, .fini = teardown);

typedef struct fixture {
    lu_decoder m;
    lu_params *params;
    lu_st_file *expected;
} fixture;

static void fixture_open(fixture *f, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, FIXTURES "/%s", name);
    cr_assert_eq(lu_hf_load(path, &f->m, &f->params), LU_OK, "%s", lu_error_message());
    snprintf(path, sizeof path, FIXTURES "/%s/expected.safetensors", name);
    f->expected = lu_st_open(path);
    cr_assert(f->expected, "%s", lu_error_message());
    lu_arena_activate(arena);
}

static void fixture_close(fixture *f)
{
    lu_arena_activate(NULL);
    lu_st_close(f->expected);
    lu_params_free(f->params);
}

static lu_tensor *expected(const fixture *f, const char *name, lu_dtype dt)
{
    lu_tensor *t = lu_st_load(f->expected, name, dt);
    cr_assert(t, "%s", lu_error_message());
    return t;
}

static lu_tensor *forward(lu_decoder *m, lu_tensor *ids)
{
    lu_decoder_batch batch = {.input_ids = ids};
    lu_tensor *y = lu_decoder_forward(m, &batch);
    cr_assert(y, "%s", lu_error_message());
    return y;
}

static void check_logits(const char *name)
{
    fixture f;
    fixture_open(&f, name);
    lu_tensor *y = forward(&f.m, expected(&f, "input_ids", LU_I64));
    tu_assert_tensors_close(y, expected(&f, "logits", LU_F32), 1e-4, 0, name);
    fixture_close(&f);
}

/* Each row's 8 greedy tokens (KV-cached generation) equal transformers' generate(do_sample=False). */
static void check_greedy(const char *name)
{
    fixture f;
    fixture_open(&f, name);
    lu_tensor *ids = expected(&f, "input_ids", LU_I64), *greedy = expected(&f, "greedy", LU_I64);
    int64_t B = ids->shape[0], T = ids->shape[1], G = greedy->shape[1];
    const int64_t *p = lu_tensor_data(ids), *want = lu_tensor_data(greedy);
    cr_assert_eq(f.m.cfg.n_eos, 0, "%s: the fixture configures no end token", name);
    for (int64_t b = 0; b < B; b++) {
        int64_t out[8];
        lu_generate_opts o = {.max_new_tokens = G - T, .sampling = {.greedy = true}};
        cr_assert_eq(lu_generate(&f.m, p + b * T, T, &o, out), G - T, "%s", lu_error_message());
        for (int64_t i = 0; i < G - T; i++)
            cr_assert_eq(out[i], want[b * G + T + i], "%s row %lld token %lld: %lld, transformers %lld", name,
                         (long long)b, (long long)i, (long long)out[i], (long long)want[b * G + T + i]);
    }
    fixture_close(&f);
}

static void check_loss_and_grad(const char *name)
{
    fixture f;
    fixture_open(&f, name);
    lu_decoder_batch batch = {.input_ids = expected(&f, "input_ids", LU_I64)};
    cr_assert_eq(lu_params_zero_grad(f.params), LU_OK);
    lu_tensor *loss = lu_decoder_loss(&f.m, &batch, expected(&f, "labels", LU_I64));
    cr_assert(loss, "%s", lu_error_message());
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    double got = lu_tensor_item(loss), want = lu_tensor_item(expected(&f, "loss", LU_F64));
    double gn = lu_grad_global_norm(f.params), want_gn = lu_tensor_item(expected(&f, "grad_norm", LU_F64));
    cr_assert(fabs(got - want) <= 1e-5 * fabs(want), "%s: loss %.9g, transformers %.9g", name, got, want);
    cr_assert(fabs(gn - want_gn) <= 1e-4 * want_gn, "%s: grad norm %.9g, transformers %.9g", name, gn, want_gn);
    fixture_close(&f);
}

#define PARITY_TESTS(name)                                                                 \
    Test(qwen3, name##_logits_match_transformers) { check_logits(#name); }               \
    Test(qwen3, name##_greedy_tokens_match_transformers) { check_greedy(#name); }        \
    Test(qwen3, name##_loss_and_grad_norm_match_transformers) { check_loss_and_grad(#name); }

PARITY_TESTS(tied)
PARITY_TESTS(untied_mha)
PARITY_TESTS(h6_kv2)
PARITY_TESTS(head_dim32)
PARITY_TESTS(llama)

Test(qwen3, configs_load_as_written_by_transformers)
{
    lu_decoder_config c;
    cr_assert_eq(lu_hf_read_config(FIXTURES "/head_dim32", &c), LU_OK, "%s", lu_error_message());
    cr_assert(c.qk_norm && c.tie_embeddings);
    cr_assert_eq(c.head_dim, 32);
    cr_assert_eq(c.rope_theta, 1e6);
    cr_assert_eq(lu_hf_read_config(FIXTURES "/llama", &c), LU_OK, "%s", lu_error_message());
    cr_assert(!c.qk_norm);
    cr_assert_eq(c.rms_norm_eps, 1e-5);
}

/* The bf16 weights widened to f32 are what luthier computes with: f32 tolerance applies. */
Test(qwen3, bf16_checkpoint_matches_its_widened_f32_reference)
{
    fixture f;
    fixture_open(&f, "head_dim32_bf16");
    lu_tensor *y = forward(&f.m, expected(&f, "input_ids", LU_I64));
    tu_assert_tensors_close(y, expected(&f, "logits_f32", LU_F32), 1e-4, 0, "bf16 weights, f32 compute");
    fixture_close(&f);
}

/* Against transformers computing in bf16: each op rounds to 8 significant bits (relative 2^-9),
 * which over 3 layers moved transformers' own logits by up to 0.16 from the f32 result; allow
 * twice that plus 2% of the logit. */
Test(qwen3, bf16_checkpoint_matches_transformers_bf16_within_bf16_tolerance)
{
    fixture f;
    fixture_open(&f, "head_dim32_bf16");
    lu_tensor *y = forward(&f.m, expected(&f, "input_ids", LU_I64));
    tu_assert_tensors_close(y, expected(&f, "logits", LU_F32), 0.32, 0.02, "bf16 logits");
    fixture_close(&f);
}

Test(qwen3, kv_cache_steps_match_full_forward_on_fixture)
{
    fixture f;
    fixture_open(&f, "h6_kv2");
    lu_tensor *ids = expected(&f, "input_ids", LU_I64), *full = forward(&f.m, ids);
    int64_t B = ids->shape[0], T = ids->shape[1], V = full->shape[2];
    lu_kv_cache *kc = lu_kv_cache_new(&f.m, B, T);
    cr_assert(kc, "%s", lu_error_message());
    double *ref = tu_to_doubles(full), *row = malloc((size_t)(B * V) * sizeof *row);
    for (int64_t t = 0; t < T; t++) {
        lu_tensor *step = lu_contiguous(lu_slice(ids, 1, t, t + 1, 1));
        lu_tensor *y = lu_decoder_forward_cached(&f.m, step, kc, false);
        cr_assert(y, "%s", lu_error_message());
        for (int64_t b = 0; b < B; b++) memcpy(row + b * V, ref + (b * T + t) * V, (size_t)V * sizeof *row);
        tu_assert_close(y, row, B * V, 1e-5, 1e-5, "one-token cached logits");
    }
    free(ref);
    free(row);
    lu_kv_cache_free(kc);
    fixture_close(&f);
}

static void temp_dir(char *buf, size_t n)
{
    snprintf(buf, n, "/tmp/lu_qwen3_XXXXXX");
    cr_assert(mkdtemp(buf));
}

static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(qwen3, saved_checkpoint_reloads_with_identical_logits)
{
    fixture f;
    fixture_open(&f, "untied_mha");
    char dir[64], out[96];
    temp_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/model", dir);
    cr_assert_eq(lu_hf_save(out, &f.m, LU_F32, 0), LU_OK, "%s", lu_error_message());
    lu_decoder m2;
    lu_params *p2;
    cr_assert_eq(lu_hf_load(out, &m2, &p2), LU_OK, "%s", lu_error_message());
    lu_tensor *ids = expected(&f, "input_ids", LU_I64);
    tu_assert_tensors_close(forward(&m2, ids), forward(&f.m, ids), 0, 0, "reloaded logits");
    lu_params_free(p2);
    remove_dir(dir);
    fixture_close(&f);
}

/* A bf16 save of the bf16 model is lossless, sharded or not. */
Test(qwen3, sharded_bf16_save_of_bf16_model_reloads_identically)
{
    fixture f;
    fixture_open(&f, "head_dim32_bf16");
    char dir[64], out[96], index[128];
    temp_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/model", dir);
    cr_assert_eq(lu_hf_save(out, &f.m, LU_BF16, 20000), LU_OK, "%s", lu_error_message());
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", out);
    struct stat st;
    cr_assert_eq(stat(index, &st), 0, "no %s", index);
    lu_decoder m2;
    lu_params *p2;
    cr_assert_eq(lu_hf_load(out, &m2, &p2), LU_OK, "%s", lu_error_message());
    lu_tensor *ids = expected(&f, "input_ids", LU_I64);
    tu_assert_tensors_close(forward(&m2, ids), forward(&f.m, ids), 0, 0, "reloaded bf16 logits");
    lu_params_free(p2);
    remove_dir(dir);
    fixture_close(&f);
}

/* ---- the CLI, in-process, stdout captured ---- */

static char *run_lm(int *rc, int argc, const char **argv) { return tu_run_captured_text(lu_cli_lm, argc, argv, rc); }

Test(qwen3, cli_forward_writes_logits_and_prints_loss_and_grad_norm)
{
    char dir[64], out[96];
    temp_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    const char *ids = FIXTURES "/tied/expected.safetensors";
    const char *argv[] = {"lm", "forward", "--model", FIXTURES "/tied", "--input-ids", ids, "--out", out,
                          "--labels", ids};
    int rc;
    char *text = run_lm(&rc, 10, argv);
    cr_assert_eq(rc, 0, "%s", lu_error_message());
    double loss, gn;
    cr_assert_eq(sscanf(text, "{\"loss\": %lf, \"grad_norm\": %lf}", &loss, &gn), 2, "printed: %s", text);
    fixture f;
    fixture_open(&f, "tied");
    double want = lu_tensor_item(expected(&f, "loss", LU_F64)), want_gn = lu_tensor_item(expected(&f, "grad_norm", LU_F64));
    cr_assert(fabs(loss - want) <= 1e-5 * want && fabs(gn - want_gn) <= 1e-4 * want_gn, "printed %s", text);
    lu_st_file *o = lu_st_open(out);
    cr_assert(o, "%s", lu_error_message());
    lu_tensor *logits = lu_st_load(o, "logits", LU_F32);
    cr_assert(logits, "%s", lu_error_message());
    tu_assert_tensors_close(logits, expected(&f, "logits", LU_F32), 1e-4, 0, "cli logits");
    lu_st_close(o);
    fixture_close(&f);
    free(text);
    remove_dir(dir);
}

Test(qwen3, cli_generate_prints_prompt_and_greedy_ids)
{
    fixture f;
    fixture_open(&f, "llama");
    lu_tensor *ids = expected(&f, "input_ids", LU_I64), *greedy = expected(&f, "greedy", LU_I64);
    lu_tensor *row = lu_contiguous(lu_slice(ids, 0, 1, 2, 1));
    char dir[64], path[96];
    temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ids.safetensors", dir);
    const char *name = "input_ids";
    cr_assert_eq(lu_st_save(path, 1, &name, &row, 0, NULL, NULL), LU_OK, "%s", lu_error_message());
    const char *argv[] = {"lm", "generate", "--model", FIXTURES "/llama", "--input-ids", path,
                          "--max-new-tokens", "8", "--greedy", "--print-ids"};
    int rc;
    char *text = run_lm(&rc, 10, argv);
    cr_assert_eq(rc, 0, "%s", lu_error_message());
    const int64_t *g = lu_tensor_data(greedy);
    char want[512] = "[";
    for (int64_t i = 0; i < greedy->shape[1]; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "",
                 (long long)g[greedy->shape[1] + i]);
    strcat(want, "]\n");
    cr_assert_str_eq(text, want);
    free(text);
    remove_dir(dir);
    fixture_close(&f);
}

Test(qwen3, cli_usage_errors_exit_2)
{
    int rc;
    const char *a1[] = {"lm", "forward", "--model", FIXTURES "/tied", "--bogus"};
    free(run_lm(&rc, 5, a1));
    cr_assert_eq(rc, 2);
    const char *a2[] = {"lm", "generate", "--model", FIXTURES "/tied", "--max-new-tokens", "4", "--greedy",
                        "--temperature", "0.7", "--input-ids", "x"};
    free(run_lm(&rc, 11, a2));
    cr_assert_eq(rc, 2);
    const char *a3[] = {"lm", "translate"};
    free(run_lm(&rc, 2, a3));
    cr_assert_eq(rc, 2);
}

Test(qwen3, cli_forward_without_input_ids_tensor_fails_naming_it)
{
    int rc;
    char dir[64], out[96];
    temp_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    const char *argv[] = {"lm", "forward", "--model", FIXTURES "/tied", "--input-ids",
                          FIXTURES "/tied/model.safetensors", "--out", out};
    free(run_lm(&rc, 8, argv));
    cr_assert_eq(rc, 1);
    tu_assert_error_contains("no tensor 'input_ids'");
    remove_dir(dir);
}

/* A random model whose vocabulary covers tests/fixtures/tokenizer/small_qwen2.json (ids < 880),
 * saved with that tokenizer and <|im_end|> as end token, for the text paths of the CLI. */
static void make_text_model(const char *dir)
{
    lu_decoder_config c = {.vocab_size = 880, .hidden_size = 16, .intermediate_size = 24, .num_layers = 1,
                           .num_heads = 2, .num_kv_heads = 1, .head_dim = 8, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                           .qk_norm = true, .tie_embeddings = true, .init_std = 0.5, .bos_token_id = -1,
                           .n_eos = 1, .eos_token_ids = {851}, .dtype = LU_F32};
    lu_decoder m;
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert(p && !lu_decoder_declare(&m, &c, p) && !lu_params_finalize(p) && !lu_decoder_init(&m, 3), "%s",
              lu_error_message());
    cr_assert_eq(lu_hf_save(dir, &m, LU_F32, 0), LU_OK, "%s", lu_error_message());
    lu_params_free(p);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cp tests/fixtures/tokenizer/small_qwen2.json '%s/tokenizer.json'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(qwen3, cli_generate_chat_prompt_starts_with_the_rendered_template)
{
    char dir[64], model[96];
    temp_dir(dir, sizeof dir);
    snprintf(model, sizeof model, "%s/model", dir);
    make_text_model(model);
    const char *argv[] = {"lm", "generate", "--model", model, "--prompt", "Bonjour !", "--chat",
                          "--max-new-tokens", "6", "--temperature", "0.8", "--top-p", "0.9", "--seed", "4",
                          "--print-ids"};
    int rc;
    char *text = run_lm(&rc, 16, argv);
    cr_assert_eq(rc, 0, "%s", lu_error_message());
    char *ids_line = strrchr(text, '[');
    cr_assert(ids_line, "printed: %s", text);
    /* <|im_start|>user\nBonjour !<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n */
    char path[160];
    snprintf(path, sizeof path, "%s/tokenizer.json", model);
    lu_tokenizer *tok = lu_tokenizer_load(path);
    cr_assert(tok, "%s", lu_error_message());
    char *prompt = lu_chat_render(&(lu_chat_message){"user", "Bonjour !", NULL}, 1, true, false);
    int32_t *ids;
    int64_t n;
    cr_assert_eq(lu_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n), LU_OK);
    char want[4096] = "[";
    for (int64_t i = 0; i < n; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", i ? ", " : "", ids[i]);
    cr_assert(!strncmp(ids_line, want, strlen(want)), "ids %s do not start with the prompt %s", ids_line, want);
    int count = 1;
    for (const char *c = ids_line; *c; c++) count += *c == ',';
    cr_assert(count > n && count <= n + 6, "%d ids for a %lld-token prompt and at most 6 new", count, (long long)n);
    free(ids);
    free(prompt);
    lu_tokenizer_free(tok);
    free(text);
    remove_dir(dir);
}

Test(qwen3, cli_chat_answers_each_line_until_exit)
{
    char dir[64], model[96], input[128];
    temp_dir(dir, sizeof dir);
    snprintf(model, sizeof model, "%s/model", dir);
    make_text_model(model);
    snprintf(input, sizeof input, "%s/input.txt", dir);
    FILE *f = fopen(input, "w");
    cr_assert(f);
    fputs("Salut\nCa va ?\n/exit\nnever read\n", f);
    fclose(f);
    cr_assert(freopen(input, "r", stdin));
    const char *argv[] = {"lm", "chat", "--model", model, "--max-new-tokens", "4"};
    int rc;
    char *text = run_lm(&rc, 6, argv);
    cr_assert_eq(rc, 0, "%s", lu_error_message());
    int lines = 0;
    for (const char *c = text; *c; c++) lines += *c == '\n';
    cr_assert_eq(lines, 2, "two replies expected, got: %s", text);
    free(text);
    remove_dir(dir);
}

/* ---- mixed precision: f32 parameters, the forward in another compute dtype ---- */

/* A random Qwen3 (tied embeddings, q/k norm, GQA, head_dim 64: the GPU attention's tensor-core
 * size) on dev with the parameters of seed 3, whatever the device. */
static lu_params *mixed_model(lu_device dev, lu_decoder *m)
{
    lu_decoder_config c = {.vocab_size = 211, .hidden_size = 96, .intermediate_size = 160, .num_layers = 2,
                           .num_heads = 4, .num_kv_heads = 2, .head_dim = 64, .rope_theta = 1e6,
                           .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.1,
                           .max_position_embeddings = 512, .bos_token_id = -1, .dtype = LU_F32};
    lu_params *host = lu_params_new(LU_CPU), *p = dev == LU_CPU ? host : lu_params_new(dev);
    lu_decoder hm;
    cr_assert(host && p, "%s", lu_error_message());
    cr_assert(!lu_decoder_declare(&hm, &c, host) && !lu_params_finalize(host) && !lu_decoder_init(&hm, 3), "%s",
              lu_error_message());
    if (p != host) {
        cr_assert(!lu_decoder_declare(m, &c, p) && !lu_params_finalize(p), "%s", lu_error_message());
        cr_assert_eq(lu_tensor_copy(p->flat[LU_F32], host->flat[LU_F32]), LU_OK, "%s", lu_error_message());
        lu_params_free(host);
    } else {
        *m = hm;
    }
    return p;
}

/* One SFT step's loss and gradients: a packed row of 3 samples (cu_seqlens, restarting
 * positions), the first 4 tokens of each unlabelled; the loss must be f32 and the parameters and
 * their gradients stay f32. Returns the loss; *grads receives a host copy of the flat gradients. */
/* Bytes of arena (the step's and its recomputation scratch) the last mixed_step held at most. */
static size_t mixed_step_peak;

static double mixed_step(lu_decoder *m, lu_dtype compute, lu_tensor **grads)
{
    enum { L = 48 };
    int32_t ids[L], labels[L], pos[L], cu[4] = {0, 17, 30, L};
    for (int s = 0; s < 3; s++)
        for (int t = cu[s]; t < cu[s + 1]; t++) {
            ids[t] = (t * 37 + 11) % 211;
            pos[t] = t - cu[s];
            labels[t] = pos[t] < 4 ? -100 : ids[t];
        }
    lu_device dev = m->params->device;
    lu_arena *a = lu_arena_new(dev, 0);
    lu_arena *prev = lu_arena_activate(a);
    lu_decoder_batch batch = {.input_ids = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), dev, ids),
                              .positions = lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), dev, pos),
                              .cu_seqlens = lu_tensor_from_host(LU_I32, LU_SHAPE(4), dev, cu)};
    m->compute_dtype = compute;
    cr_assert_eq(lu_params_zero_grad(m->params), LU_OK, "%s", lu_error_message());
    lu_tensor *loss = lu_decoder_loss(m, &batch, lu_tensor_from_host(LU_I32, LU_SHAPE(1, L), dev, labels));
    cr_assert(loss, "%s compute on %s: %s", lu_dtype_name(compute), lu_device_name(dev), lu_error_message());
    cr_assert_eq(loss->dtype, LU_F32, "the loss is %s", lu_dtype_name(loss->dtype));
    cr_assert_eq(lu_backward(loss), LU_OK, "%s", lu_error_message());
    double value = lu_tensor_item(loss);
    lu_arena_activate(prev);
    for (int i = 0; i < m->params->n; i++) {
        const lu_tensor *t = m->params->items[i].t;
        cr_assert(t->dtype == LU_F32 && t->grad && t->grad->dtype == LU_F32, "%s: %s parameter or gradient",
                  m->params->items[i].name, lu_dtype_name(t->dtype));
    }
    *grads = lu_tensor_convert(m->params->flat_grad[LU_F32], LU_F32, LU_CPU);
    cr_assert(*grads, "%s", lu_error_message());
    mixed_step_peak = lu_arena_peak(a) + lu_arena_peak(lu_arena_scratch(a));
    lu_arena_free(a);
    return value;
}

static double max_abs(const lu_tensor *t)
{
    double *x = tu_to_doubles(t), mx = 0;
    for (int64_t i = 0; i < lu_tensor_numel(t); i++) mx = fmax(mx, fabs(x[i]));
    free(x);
    return mx;
}

/* The CPU's other compute dtype runs the mixed-precision path end to end: casts once per forward,
 * gradients back through the casts into the f32 parameters' gradients. f64 compute differs from
 * f32 compute by f32 rounding only. */
Test(qwen3, f64_compute_from_f32_parameters_matches_f32_compute)
{
    lu_decoder m;
    lu_params *p = mixed_model(LU_CPU, &m);
    lu_tensor *g32, *g64;
    double l32 = mixed_step(&m, LU_F32, &g32), l64 = mixed_step(&m, LU_F64, &g64);
    cr_assert(fabs(l64 - l32) <= 1e-6 * l32, "loss: f64 compute %.9g, f32 compute %.9g", l64, l32);
    tu_assert_tensors_close(g64, g32, 1e-5 * max_abs(g32), 1e-4, "gradients, f64 compute against f32");
    lu_tensor_release(g32);
    lu_tensor_release(g64);
    lu_params_free(p);
}

/* Gradient checkpointing and the chunked loss change what is kept, not what is computed: the
 * same loss and gradients (chunk sums in another order: f32 rounding), with f32 parameters and
 * with f64 compute (the cast weights the recomputation reads from its context), and a chunk
 * size that does not divide the 48 tokens. */
Test(qwen3, recomputed_layers_and_chunked_loss_match_the_plain_step)
{
    lu_decoder m;
    lu_params *p = mixed_model(LU_CPU, &m);
    lu_dtype dts[2] = {LU_F32, LU_F64};
    for (int k = 0; k < 2; k++) {
        lu_tensor *g0, *g1;
        m.recompute_layers = false;
        m.loss_chunk = 0;
        double l0 = mixed_step(&m, dts[k], &g0);
        m.recompute_layers = true;
        m.loss_chunk = 7;
        double l1 = mixed_step(&m, dts[k], &g1);
        cr_assert(fabs(l1 - l0) <= 1e-6 * l0, "%s loss: recomputed %.9g, plain %.9g", lu_dtype_name(dts[k]), l1, l0);
        tu_assert_tensors_close(g1, g0, 1e-6 * max_abs(g0), 1e-5, "gradients, recomputed against plain");
        lu_tensor_release(g0);
        lu_tensor_release(g1);
    }
    lu_params_free(p);
}

/* Arena bytes (the step's and its recomputation scratch) that a training step of a narrow,
 * 4-layer decoder on 2 x 256 tokens holds at most: activations dominate, as in long-sequence SFT. */
static size_t long_step_peak(bool recompute, int64_t chunk)
{
    enum { B = 2, T = 256, V = 512 };
    lu_decoder_config c = {.vocab_size = V, .hidden_size = 32, .intermediate_size = 64, .num_layers = 4,
                           .num_heads = 2, .num_kv_heads = 1, .head_dim = 16, .rope_theta = 1e4,
                           .rms_norm_eps = 1e-6, .qk_norm = true, .tie_embeddings = true, .init_std = 0.05,
                           .max_position_embeddings = T, .bos_token_id = -1, .dtype = LU_F32};
    lu_params *p = lu_params_new(LU_CPU);
    lu_decoder m;
    cr_assert(p && !lu_decoder_declare(&m, &c, p) && !lu_params_finalize(p) && !lu_decoder_init(&m, 5), "%s",
              lu_error_message());
    m.recompute_layers = recompute;
    m.loss_chunk = chunk;
    int32_t ids[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (i * 131 + 7) % V;
    lu_arena *a = lu_arena_new(LU_CPU, 1 << 20);
    lu_arena *prev = lu_arena_activate(a);
    lu_tensor *in = lu_tensor_from_host(LU_I32, LU_SHAPE(B, T), LU_CPU, ids);
    lu_tensor *loss = lu_decoder_loss(&m, &(lu_decoder_batch){.input_ids = in}, in);
    cr_assert(loss && lu_backward(loss) == LU_OK, "%s", lu_error_message());
    size_t peak = lu_arena_peak(a) + lu_arena_peak(lu_arena_scratch(a));
    lu_arena_activate(prev);
    lu_arena_free(a);
    lu_params_free(p);
    return peak;
}

/* What recomputation is for: the step keeps each layer's input instead of its activations, and
 * 64 tokens' logits at a time instead of 512's. */
Test(qwen3, recomputation_lowers_the_step_peak)
{
    size_t plain = long_step_peak(false, 0), recomputed = long_step_peak(true, 64);
    cr_assert_lt(recomputed, plain / 2, "peak: recomputed %zu bytes, plain %zu", recomputed, plain);
}

/* The CPU backend stores bf16 but has no bf16 kernels: a bf16 forward there fails saying so. */
Test(qwen3, bf16_compute_on_the_cpu_is_refused_by_its_kernels)
{
    lu_decoder m;
    lu_params *p = mixed_model(LU_CPU, &m);
    m.compute_dtype = LU_BF16;
    lu_arena_activate(arena);
    lu_decoder_batch batch = {.input_ids = lu_tensor_from_host(LU_I32, LU_SHAPE(1, 3), LU_CPU, (int32_t[]){1, 2, 3})};
    cr_assert_null(lu_decoder_forward(&m, &batch));
    tu_assert_error_contains("not supported by the cpu backend");
    lu_arena_activate(NULL);
    lu_params_free(p);
}

/* bf16 weights and activations with f32 accumulation (the GPU's mixed precision) against f32 on
 * the CPU from the same parameters: the loss within 1% (bf16 logits carry 8 significant bits),
 * each gradient within 5% of the largest gradient plus 10% of itself. */
Test(qwen3, bf16_compute_on_cuda_matches_f32_on_the_cpu_within_bf16_tolerance)
{
    if (!lu_device_available(LU_CUDA)) cr_skip_test("no CUDA GPU here (or luthier built without LUTHIER_CUDA)");
    lu_decoder mc, mg;
    lu_params *pc = mixed_model(LU_CPU, &mc), *pg = mixed_model(LU_CUDA, &mg);
    lu_tensor *gc, *gg;
    double lc = mixed_step(&mc, LU_F32, &gc), lg = mixed_step(&mg, LU_BF16, &gg);
    cr_assert(fabs(lg - lc) <= 1e-2 * lc, "loss: bf16 on cuda %.6g, f32 on the cpu %.6g", lg, lc);
    tu_assert_tensors_close(gg, gc, 5e-2 * max_abs(gc), 0.1, "gradients, bf16 on cuda against f32 on the cpu");
    lu_tensor_release(gc);
    lu_tensor_release(gg);
    lu_params_free(pc);
    lu_params_free(pg);
}
