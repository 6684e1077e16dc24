/* test_hf_model.c - Hugging Face model directories: save -> load round trips (f32 exact, bf16
 * within rounding, sharded, qwen3 / qwen2 / llama), config.json variants of transformers 4.x and
 * 5.x with their defaults, and the errors for malformed configs and checkpoints (missing, extra
 * or misshapen tensors, broken indexes). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "models/hf_model.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------------------------- */

static char root[64];      /* per-test scratch directory */
static char mdir[128];     /* root/model: the model directory under test */

static void make_root(void)
{
    strcpy(root, "/tmp/lu_hf_XXXXXX");
    cr_assert_not_null(mkdtemp(root));
    snprintf(mdir, sizeof mdir, "%s/model", root);
}

/* Removes root, root/model and the plain files inside them. */
static void remove_files(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[512];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        remove(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static void remove_root(void)
{
    remove_files(mdir);
    remove_files(root);
}

TestSuite(hf_model, .init = make_root, .fini = remove_root);

static const char *in_model(const char *name)
{
    static char p[256];
    snprintf(p, sizeof p, "%s/%s", mdir, name);
    return p;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int count_shards(void)
{
    int n = 0;
    DIR *d = opendir(mdir);
    for (struct dirent *e; d && (e = readdir(d));) n += !strncmp(e->d_name, "model-", 6);
    if (d) closedir(d);
    return n;
}

static void write_config(const char *text)
{
    mkdir(mdir, 0755);
    FILE *fp = fopen(in_model("config.json"), "w");
    cr_assert_not_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* Small Qwen3-like config: head_dim (6) != hidden / heads (4), grouped KV heads. */
static lu_decoder_config small_config(void)
{
    return (lu_decoder_config){
        .vocab_size = 37, .hidden_size = 16, .intermediate_size = 24, .num_layers = 2, .num_heads = 4,
        .num_kv_heads = 2, .head_dim = 6, .rope_theta = 1e6, .rms_norm_eps = 1e-6, .qk_norm = true,
        .tie_embeddings = true, .init_std = 0.02, .max_position_embeddings = 4096, .bos_token_id = 3,
        .n_eos = 2, .eos_token_ids = {5, 7}, .dtype = LU_F32,
    };
}

/* A decoder with random weights; norms get random values too so that they round-trip visibly. */
static lu_params *make_model(lu_decoder *m, const lu_decoder_config *cfg, uint64_t seed)
{
    lu_params *p = lu_params_new(LU_CPU);
    cr_assert_eq(lu_decoder_declare(m, cfg, p), LU_OK, "%s", lu_error_message());
    cr_assert_eq(lu_params_finalize(p), LU_OK);
    for (int i = 0; i < p->n; i++) {
        lu_tensor *r = tu_rand(LU_F32, p->items[i].t->ndim, p->items[i].t->shape, -1, 1, seed * 1000 + (uint64_t)i);
        cr_assert_eq(lu_tensor_copy(p->items[i].t, r), LU_OK);
        lu_tensor_release(r);
    }
    return p;
}

static lu_params *load_ok(lu_decoder *m)
{
    lu_params *p = NULL;
    cr_assert_eq(lu_hf_load(mdir, m, &p), LU_OK, "%s", lu_error_message());
    cr_assert_not_null(p);
    return p;
}

static void assert_stores_equal(const lu_params *a, const lu_params *b)
{
    cr_assert_eq(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        cr_assert_str_eq(a->items[i].name, b->items[i].name);
        tu_assert_tensors_close(b->items[i].t, a->items[i].t, 0, 0, a->items[i].name);
    }
}

static void assert_configs_equal(const lu_decoder_config *a, const lu_decoder_config *b)
{
    cr_assert(a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
              a->intermediate_size == b->intermediate_size && a->num_layers == b->num_layers);
    cr_assert(a->num_heads == b->num_heads && a->num_kv_heads == b->num_kv_heads && a->head_dim == b->head_dim);
    cr_assert(a->rope_theta == b->rope_theta && a->rms_norm_eps == b->rms_norm_eps && a->init_std == b->init_std);
    cr_assert(a->qk_norm == b->qk_norm && a->attention_bias == b->attention_bias && a->tie_embeddings == b->tie_embeddings);
    cr_assert(a->max_position_embeddings == b->max_position_embeddings && a->bos_token_id == b->bos_token_id);
    cr_assert_eq(a->n_eos, b->n_eos);
    for (int i = 0; i < a->n_eos; i++) cr_assert_eq(a->eos_token_ids[i], b->eos_token_ids[i]);
}

static void save_ok(const lu_decoder *m, lu_dtype dt, int64_t max_shard)
{
    cr_assert_eq(lu_hf_save(mdir, m, dt, max_shard), LU_OK, "%s", lu_error_message());
}

/* Rewrites model.safetensors without `drop` and with `add` (NULL: none) under `add_name`. */
static void rewrite_weights(const char *drop, const char *add_name, lu_tensor *add)
{
    char path[256];
    snprintf(path, sizeof path, "%s", in_model("model.safetensors"));
    lu_st_file *f = lu_st_open(path);
    cr_assert_not_null(f, "%s", lu_error_message());
    int n = 0;
    const char *names[64];
    lu_tensor *ts[64];
    for (int i = 0; i < lu_st_count(f); i++) {
        const char *name = lu_st_name(f, i);
        if (drop && !strcmp(name, drop)) continue;
        names[n] = name;
        ts[n++] = lu_st_load(f, name, LU_F32);
    }
    if (add) names[n] = add_name, ts[n++] = add;
    cr_assert_eq(lu_st_save(path, n, names, ts, 0, NULL, NULL), LU_OK, "%s", lu_error_message());
    for (int i = 0; i < n; i++)
        if (ts[i] != add) lu_tensor_release(ts[i]);
    lu_st_close(f);
}

static void expect_load_error(lu_status code, const char *needle)
{
    lu_decoder m;
    lu_params *p = (lu_params *)&m; /* must be reset to NULL on failure */
    cr_assert_eq(lu_hf_load(mdir, &m, &p), code, "got %s: %s", lu_status_name(lu_error_code()), lu_error_message());
    cr_assert_null(p);
    tu_assert_error_contains(needle);
}

/* ---- round trips ---------------------------------------------------------------------------- */

Test(hf_model, f32_round_trip_is_exact_and_keeps_the_config)
{
    lu_decoder_config cfg = small_config();
    lu_decoder m, back;
    lu_params *p = make_model(&m, &cfg, 1);
    save_ok(&m, LU_F32, 0);
    cr_assert(exists(in_model("model.safetensors")) && !exists(in_model("model.safetensors.index.json")));
    lu_params *q = load_ok(&back);
    assert_configs_equal(&cfg, &back.cfg);
    cr_assert_eq(back.cfg.dtype, LU_F32);
    assert_stores_equal(p, q);
    lu_st_file *f = lu_st_open(in_model("model.safetensors"));
    cr_assert_str_eq(lu_st_metadata(f, "format"), "pt");
    cr_assert_eq(lu_st_find(f, "lm_head.weight"), -1, "a tied model stores no lm_head");
    lu_st_close(f);
    lu_params_free(p);
    lu_params_free(q);
}

Test(hf_model, bf16_round_trip_matches_bf16_rounding)
{
    lu_decoder_config cfg = small_config();
    lu_decoder m, back;
    lu_params *p = make_model(&m, &cfg, 2);
    save_ok(&m, LU_BF16, 0);
    lu_params *q = load_ok(&back);
    cr_assert_eq(back.cfg.dtype, LU_BF16, "torch_dtype bfloat16 read back");
    for (int i = 0; i < p->n; i++) {
        const float *a = lu_tensor_data(p->items[i].t), *b = lu_tensor_data(q->items[i].t);
        for (int64_t j = 0; j < lu_tensor_numel(p->items[i].t); j++)
            cr_assert_eq(b[j], lu_bf16_to_f32(lu_f32_to_bf16(a[j])), "%s[%lld]", p->items[i].name, (long long)j);
    }
    lu_st_file *f = lu_st_open(in_model("model.safetensors"));
    lu_dtype dt;
    cr_assert_eq(lu_st_info(f, 0, &dt, NULL, NULL), LU_OK);
    cr_assert_eq(dt, LU_BF16);
    lu_st_close(f);
    lu_params_free(p);
    lu_params_free(q);
}

Test(hf_model, sharded_save_writes_an_index_and_loads_back)
{
    lu_decoder_config cfg = small_config();
    lu_decoder m, back;
    lu_params *p = make_model(&m, &cfg, 3);
    /* 21216 bytes in all, filled in declaration order into shards of <= 4000 bytes: the
     * embedding (2368) and layer 0's q_proj (1536) first, then six more. */
    save_ok(&m, LU_F32, 4000);
    cr_assert(!exists(in_model("model.safetensors")));
    cr_assert(exists(in_model("model.safetensors.index.json")));
    cr_assert_eq(count_shards(), 7);
    cr_assert(exists(in_model("model-00001-of-00007.safetensors")));
    lu_st_file *f = lu_st_open(in_model("model-00001-of-00007.safetensors"));
    cr_assert(f && lu_st_count(f) == 2);
    cr_assert(lu_st_find(f, "model.embed_tokens.weight") >= 0 && lu_st_find(f, "model.layers.0.self_attn.q_proj.weight") >= 0);
    lu_st_close(f);
    lu_params *q = load_ok(&back);
    assert_stores_equal(p, q);
    lu_params_free(p);
    lu_params_free(q);
}

Test(hf_model, untied_llama_round_trip_keeps_lm_head)
{
    lu_decoder_config cfg = small_config();
    cfg.qk_norm = false;
    cfg.tie_embeddings = false;
    cfg.head_dim = 4;
    lu_decoder m, back;
    lu_params *p = make_model(&m, &cfg, 4);
    save_ok(&m, LU_F32, 0);
    lu_params *q = load_ok(&back);
    assert_configs_equal(&cfg, &back.cfg);
    cr_assert_not_null(lu_params_find(q, "lm_head.weight"));
    assert_stores_equal(p, q);
    lu_params_free(p);
    lu_params_free(q);
}

Test(hf_model, qwen2_round_trip_keeps_qkv_biases)
{
    lu_decoder_config cfg = small_config();
    cfg.qk_norm = false;
    cfg.attention_bias = true;
    lu_decoder m, back;
    lu_params *p = make_model(&m, &cfg, 5);
    save_ok(&m, LU_F32, 0);
    lu_params *q = load_ok(&back);
    assert_configs_equal(&cfg, &back.cfg);
    cr_assert_not_null(lu_params_find(q, "model.layers.1.self_attn.v_proj.bias"));
    assert_stores_equal(p, q);
    lu_params_free(p);
    lu_params_free(q);
}

Test(hf_model, save_refuses_a_non_empty_directory_and_fills_an_empty_one)
{
    lu_decoder_config cfg = small_config();
    lu_decoder m;
    lu_params *p = make_model(&m, &cfg, 6);
    write_config("{}");
    cr_assert_eq(lu_hf_save(mdir, &m, LU_F32, 0), LU_ERR_IO);
    tu_assert_error_contains("exists and is not empty");
    remove(in_model("config.json"));
    save_ok(&m, LU_F32, 0); /* mdir exists and is empty */
    cr_assert(exists(in_model("config.json")));
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", mdir, (long)getpid());
    cr_assert(!exists(tmp), "temporary directory left behind");
    cr_assert_eq(lu_hf_save(mdir, &m, LU_I32, 0), LU_ERR_DTYPE);
    lu_params_free(p);
}

/* ---- config.json variants ------------------------------------------------------------------- */

static lu_decoder_config read_config_ok(const char *text)
{
    write_config(text);
    lu_decoder_config c;
    cr_assert_eq(lu_hf_read_config(mdir, &c), LU_OK, "%s", lu_error_message());
    return c;
}

static void expect_config_error(const char *text, lu_status code, const char *needle)
{
    write_config(text);
    lu_decoder_config c;
    cr_assert_eq(lu_hf_read_config(mdir, &c), code, "got: %s", lu_error_message());
    tu_assert_error_contains("config.json");
    tu_assert_error_contains(needle);
}

#define SIZES "\"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 2, " \
              "\"num_attention_heads\": 4"

Test(hf_model, config_transformers4_style)
{
    lu_decoder_config c = read_config_ok("{\"model_type\": \"qwen3\", " SIZES ", \"num_key_value_heads\": 2, "
                                         "\"head_dim\": 16, \"rope_theta\": 1000000, \"rope_scaling\": null, "
                                         "\"torch_dtype\": \"bfloat16\", \"tie_word_embeddings\": true, "
                                         "\"rms_norm_eps\": 1e-05, \"bos_token_id\": 151643, \"eos_token_id\": 151645}");
    cr_assert(c.qk_norm && !c.attention_bias && c.tie_embeddings);
    cr_assert(c.num_kv_heads == 2 && c.head_dim == 16 && c.rope_theta == 1e6 && c.rms_norm_eps == 1e-5);
    cr_assert(c.dtype == LU_BF16 && c.bos_token_id == 151643 && c.n_eos == 1 && c.eos_token_ids[0] == 151645);
}

Test(hf_model, config_transformers5_style)
{
    lu_decoder_config c = read_config_ok("{\"model_type\": \"qwen3\", " SIZES ", \"dtype\": \"float16\", "
                                         "\"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"default\"}, "
                                         "\"layer_types\": [\"full_attention\", \"full_attention\"], "
                                         "\"eos_token_id\": [1, 2, 3]}");
    cr_assert_eq(c.rope_theta, 500000.0);
    cr_assert_eq(c.dtype, LU_F16);
    cr_assert(c.n_eos == 3 && c.eos_token_ids[2] == 3);
}

Test(hf_model, config_qwen3_defaults_follow_transformers)
{
    lu_decoder_config c = read_config_ok("{\"model_type\": \"qwen3\", " SIZES "}");
    cr_assert_eq(c.head_dim, 128, "Qwen3Config.head_dim defaults to 128, not hidden / heads");
    cr_assert_eq(c.num_kv_heads, 4);
    cr_assert(!c.tie_embeddings && c.rope_theta == 10000.0 && c.rms_norm_eps == 1e-6 && c.init_std == 0.02);
    cr_assert(c.max_position_embeddings == 32768 && c.bos_token_id == -1 && c.n_eos == 0 && c.dtype == LU_F32);
}

Test(hf_model, config_llama_defaults_follow_transformers)
{
    lu_decoder_config c = read_config_ok("{\"model_type\": \"llama\", " SIZES ", \"head_dim\": null}");
    cr_assert_eq(c.head_dim, 8, "hidden / heads");
    cr_assert(!c.qk_norm && !c.attention_bias && !c.tie_embeddings);
    cr_assert(c.max_position_embeddings == 2048 && c.bos_token_id == 1 && c.n_eos == 1 && c.eos_token_ids[0] == 2);
}

Test(hf_model, config_qwen2_has_qkv_biases_and_null_tokens)
{
    lu_decoder_config c = read_config_ok("{\"model_type\": \"qwen2\", " SIZES ", \"bos_token_id\": null, "
                                         "\"eos_token_id\": null, \"use_sliding_window\": false}");
    cr_assert(c.attention_bias && !c.qk_norm && c.head_dim == 8);
    cr_assert(c.bos_token_id == -1 && c.n_eos == 0);
}

Test(hf_model, config_rejects_scaled_rope)
{
    expect_config_error("{\"model_type\": \"llama\", " SIZES ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}",
                        LU_ERR_UNSUPPORTED, "key 'rope_scaling.type' is linear");
    expect_config_error("{\"model_type\": \"llama\", " SIZES ", \"rope_parameters\": {\"rope_type\": \"llama3\", "
                        "\"rope_theta\": 500000}}", LU_ERR_UNSUPPORTED, "key 'rope_parameters.rope_type' is llama3");
}

Test(hf_model, config_missing_key_names_it)
{
    expect_config_error("{\"model_type\": \"qwen3\", \"vocab_size\": 64}", LU_ERR_CONFIG, "missing key 'hidden_size'");
}

Test(hf_model, config_wrong_type_names_the_key)
{
    expect_config_error("{\"model_type\": \"qwen3\", \"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 48, "
                        "\"num_hidden_layers\": 2, \"num_attention_heads\": \"4\"}",
                        LU_ERR_CONFIG, "key 'num_attention_heads' must be an integer");
    expect_config_error("{\"model_type\": \"qwen3\", " SIZES ", \"tie_word_embeddings\": 1}", LU_ERR_CONFIG,
                        "key 'tie_word_embeddings' must be true or false");
    expect_config_error("{\"model_type\": \"qwen3\", " SIZES ", \"torch_dtype\": \"int8\"}", LU_ERR_CONFIG,
                        "key 'torch_dtype' must name a float dtype");
    expect_config_error("{\"model_type\": \"qwen3\", " SIZES ", \"num_key_value_heads\": 0}", LU_ERR_CONFIG,
                        "key 'num_key_value_heads' is 0, must be in [1,");
}

Test(hf_model, config_bad_json_is_an_error)
{
    expect_config_error("{\"model_type\": \"qwen3\", ", LU_ERR_FORMAT, "not valid JSON");
    expect_config_error("[1, 2]", LU_ERR_FORMAT, "the top level is not a JSON object");
}

Test(hf_model, config_refuses_what_the_decoder_lacks)
{
    expect_config_error("{\"model_type\": \"gpt2\", " SIZES "}", LU_ERR_UNSUPPORTED, "key 'model_type' is \"gpt2\"");
    expect_config_error("{\"model_type\": \"llama\", " SIZES ", \"attention_bias\": true}", LU_ERR_UNSUPPORTED,
                        "key 'attention_bias' is true");
    expect_config_error("{\"model_type\": \"llama\", " SIZES ", \"mlp_bias\": true}", LU_ERR_UNSUPPORTED, "key 'mlp_bias'");
    expect_config_error("{\"model_type\": \"qwen3\", " SIZES ", \"use_sliding_window\": true}", LU_ERR_UNSUPPORTED,
                        "key 'use_sliding_window'");
    expect_config_error("{\"model_type\": \"qwen3\", " SIZES ", \"hidden_act\": \"gelu\"}", LU_ERR_UNSUPPORTED,
                        "key 'hidden_act'");
}

Test(hf_model, config_missing_file_is_an_error)
{
    lu_decoder_config c;
    cr_assert_eq(lu_hf_read_config(root, &c), LU_ERR_IO);
    tu_assert_error_contains("config.json: cannot open");
}

/* ---- malformed checkpoints ------------------------------------------------------------------ */

/* Saves a small model and returns its store (caller frees). */
static lu_params *saved_model(lu_decoder_config cfg)
{
    lu_decoder m;
    lu_params *p = make_model(&m, &cfg, 9);
    save_ok(&m, LU_F32, 0);
    return p;
}

Test(hf_model, missing_tensor_is_named)
{
    lu_params *p = saved_model(small_config());
    rewrite_weights("model.layers.1.mlp.up_proj.weight", NULL, NULL);
    expect_load_error(LU_ERR_FORMAT, "tensor 'model.layers.1.mlp.up_proj.weight' (shape [24, 16]) is missing");
    lu_params_free(p);
}

Test(hf_model, wrong_shape_is_named)
{
    lu_params *p = saved_model(small_config());
    lu_tensor *bad = lu_tensor_zeros(LU_F32, LU_SHAPE(17), LU_CPU);
    rewrite_weights("model.norm.weight", "model.norm.weight", bad);
    expect_load_error(LU_ERR_SHAPE, "tensor 'model.norm.weight' has shape [17] but the destination has shape [16]");
    lu_tensor_release(bad);
    lu_params_free(p);
}

Test(hf_model, unexpected_tensor_is_an_error)
{
    lu_params *p = saved_model(small_config());
    lu_tensor *extra = lu_tensor_zeros(LU_F32, LU_SHAPE(2), LU_CPU);
    rewrite_weights(NULL, "model.layers.0.mlp.extra.weight", extra);
    expect_load_error(LU_ERR_FORMAT, "unexpected tensor 'model.layers.0.mlp.extra.weight'");
    lu_tensor_release(extra);
    lu_params_free(p);
}

Test(hf_model, tied_model_ignores_an_equal_shaped_lm_head)
{
    lu_params *p = saved_model(small_config());
    lu_tensor *head = lu_tensor_zeros(LU_F32, LU_SHAPE(37, 16), LU_CPU);
    rewrite_weights(NULL, "lm_head.weight", head);
    lu_decoder m;
    lu_params *q = load_ok(&m);
    assert_stores_equal(p, q);
    lu_params_free(q);
    lu_tensor *bad = lu_tensor_zeros(LU_F32, LU_SHAPE(36, 16), LU_CPU);
    rewrite_weights("lm_head.weight", "lm_head.weight", bad);
    expect_load_error(LU_ERR_SHAPE, "tensor 'lm_head.weight' of a tied model must have shape [37, 16]");
    lu_tensor_release(head);
    lu_tensor_release(bad);
    lu_params_free(p);
}

Test(hf_model, directory_without_weights_is_an_error)
{
    write_config("{\"model_type\": \"qwen3\", " SIZES ", \"head_dim\": 8}");
    expect_load_error(LU_ERR_IO, "holds neither model.safetensors nor model.safetensors.index.json");
}

Test(hf_model, index_naming_a_missing_shard_is_an_error)
{
    lu_decoder_config cfg = small_config();
    lu_decoder m;
    lu_params *p = make_model(&m, &cfg, 10);
    save_ok(&m, LU_F32, 4000);
    remove(in_model("model-00002-of-00007.safetensors"));
    expect_load_error(LU_ERR_IO, "model-00002-of-00007.safetensors: cannot open");
    lu_params_free(p);
}

Test(hf_model, index_disagreeing_with_its_shards_is_an_error)
{
    lu_decoder_config cfg = small_config();
    lu_decoder m;
    lu_params *p = make_model(&m, &cfg, 11);
    save_ok(&m, LU_F32, 4000);
    FILE *fp = fopen(in_model("model.safetensors.index.json"), "w");
    fputs("{\"metadata\": {}, \"weight_map\": {\"model.embed_tokens.weight\": \"model-00002-of-00007.safetensors\"}}", fp);
    fclose(fp);
    expect_load_error(LU_ERR_FORMAT, "weight_map puts tensor 'model.embed_tokens.weight' in "
                                     "model-00002-of-00007.safetensors, which does not hold it");
    fp = fopen(in_model("model.safetensors.index.json"), "w");
    fputs("{\"weight_map\": {\"model.norm.weight\": \"../model-00007-of-00007.safetensors\"}}", fp);
    fclose(fp);
    expect_load_error(LU_ERR_FORMAT, "weight_map['model.norm.weight'] must name a file in the model directory");
    lu_params_free(p);
}

Test(hf_model, config_rope_theta_inside_rope_parameters_must_be_positive)
{
    expect_config_error("{\"model_type\": \"qwen3\", " SIZES ", \"rope_parameters\": {\"rope_type\": \"default\", "
                        "\"rope_theta\": \"big\"}}", LU_ERR_CONFIG, "key 'rope_parameters.rope_theta' must be a positive number");
}

Test(hf_model, config_eos_list_longer_than_eight_is_an_error)
{
    expect_config_error("{\"model_type\": \"qwen3\", " SIZES ", \"eos_token_id\": [1, 2, 3, 4, 5, 6, 7, 8, 9]}",
                        LU_ERR_CONFIG, "key 'eos_token_id' must be an integer or a list of at most 8 integers");
}
