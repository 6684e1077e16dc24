/* hf_model.c - Hugging Face config.json and safetensors checkpoints for the decoder (see
 * hf_model.h). */
#include "models/hf_model.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/safetensors.h"


/* transformers' per-family defaults and names (configuration_*.py). head_dim 0: hidden / heads. */
typedef struct family {
    const char *model_type, *architecture;
    bool qk_norm, attention_bias_fixed;
    int64_t max_position_embeddings, bos, eos, head_dim;
} family;

static const family families[] = {
    {"qwen3", "Qwen3ForCausalLM", true, false, 32768, -1, -1, 128},
    {"qwen2", "Qwen2ForCausalLM", false, true, 32768, -1, -1, 0},
    {"llama", "LlamaForCausalLM", false, false, 2048, 1, 2, 0},
};

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    else lu_errorf(LU_ERR_NOMEM, "%s: out of memory", dir);
    return p;
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static lu_status write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return lu_errorf(LU_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    lu_status s = LU_OK;
    if (fwrite(text, 1, n, fp) != n || fputc('\n', fp) == EOF || fflush(fp) != 0 || fsync(fileno(fp)) != 0)
        s = lu_errorf(LU_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (fclose(fp) != 0 && !s) s = lu_errorf(LU_ERR_IO, "%s: cannot close: %s", path, strerror(errno));
    return s;
}

/* ---- config.json ------------------------------------------------------------------------------ */

/* The value of key, or NULL when absent or null. */
static const cJSON *get(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static lu_status json_int(const char *path, const char *key, const cJSON *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 9.0e15)
        return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' must be an integer", path, key);
    int64_t x = (int64_t)v->valuedouble;
    if (x < lo || x > hi)
        return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' is %lld, must be in [%lld, %lld]", path, key, (long long)x,
                         (long long)lo, (long long)hi);
    *out = x;
    return LU_OK;
}

/* dflt < lo: the key is required. */
static lu_status get_int(const char *path, const cJSON *o, const char *key, int64_t dflt, int64_t lo, int64_t hi,
                         int64_t *out)
{
    const cJSON *v = get(o, key);
    if (v) return json_int(path, key, v, lo, hi, out);
    if (dflt < lo) return lu_errorf(LU_ERR_CONFIG, "%s: missing key '%s'", path, key);
    *out = dflt;
    return LU_OK;
}

static lu_status get_double(const char *path, const cJSON *o, const char *key, double dflt, double *out)
{
    const cJSON *v = get(o, key);
    if (!v) *out = dflt;
    else if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble > 0) *out = v->valuedouble;
    else return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' must be a positive number", path, key);
    return LU_OK;
}

static lu_status get_bool(const char *path, const cJSON *o, const char *key, bool dflt, bool *out)
{
    const cJSON *v = get(o, key);
    if (!v) *out = dflt;
    else if (cJSON_IsBool(v)) *out = cJSON_IsTrue(v);
    else return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' must be true or false", path, key);
    return LU_OK;
}

/* rope_theta at the top level (4.x) or inside rope_parameters (5.x) / rope_scaling (4.x), whose
 * type must be the default one: scaled variants change the frequencies (modeling_rope_utils.py). */
static lu_status read_rope(const char *path, const cJSON *root, double *theta)
{
    LU_TRY(get_double(path, root, "rope_theta", 10000.0, theta));
    const char *keys[] = {"rope_scaling", "rope_parameters"};
    for (int k = 0; k < 2; k++) {
        const cJSON *v = get(root, keys[k]);
        if (!v) continue;
        if (!cJSON_IsObject(v)) return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' must be an object or null", path, keys[k]);
        const cJSON *type = get(v, "rope_type");
        const char *tkey = "rope_type";
        if (!type) type = get(v, tkey = "type");
        if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "default")))
            return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key '%s.%s' is %s; only \"default\" rotary embeddings are supported",
                             path, keys[k], tkey, cJSON_IsString(type) ? type->valuestring : "not a string");
        const cJSON *t = get(v, "rope_theta");
        if (t && (!cJSON_IsNumber(t) || !(t->valuedouble > 0)))
            return lu_errorf(LU_ERR_CONFIG, "%s: key '%s.rope_theta' must be a positive number", path, keys[k]);
        if (t) *theta = t->valuedouble;
    }
    return LU_OK;
}

/* eos_token_id: absent -> the family default, null -> none, an int, or a list of ints. */
static lu_status read_eos(const char *path, const cJSON *root, const family *fam, lu_decoder_config *c)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    c->n_eos = 0;
    if (!v) {
        if (fam->eos >= 0) c->eos_token_ids[c->n_eos++] = fam->eos;
        return LU_OK;
    }
    if (cJSON_IsNull(v)) return LU_OK;
    if (cJSON_IsNumber(v)) {
        c->n_eos = 1;
        return json_int(path, "eos_token_id", v, 0, INT64_MAX, &c->eos_token_ids[0]);
    }
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0 || n > (int)(sizeof c->eos_token_ids / sizeof c->eos_token_ids[0]))
        return lu_errorf(LU_ERR_CONFIG, "%s: key 'eos_token_id' must be an integer or a list of at most 8 integers", path);
    for (const cJSON *e = v->child; e; e = e->next)
        LU_TRY(json_int(path, "eos_token_id", e, 0, INT64_MAX, &c->eos_token_ids[c->n_eos++]));
    return LU_OK;
}

static lu_status read_dtype(const char *path, const cJSON *root, lu_dtype *dt)
{
    const char *key = "dtype";
    const cJSON *v = get(root, key);
    if (!v) v = get(root, key = "torch_dtype");
    *dt = LU_F32;
    if (!v) return LU_OK;
    if (!cJSON_IsString(v) || !lu_dtype_parse(v->valuestring, dt) || !lu_dtype_is_float(*dt))
        return lu_errorf(LU_ERR_CONFIG, "%s: key '%s' must name a float dtype (\"float32\", \"bfloat16\", \"float16\")",
                         path, key);
    return LU_OK;
}

/* Keys that ask for something the decoder does not implement. */
static lu_status refuse_unsupported(const char *path, const cJSON *root, const family *fam, bool attention_bias)
{
    const cJSON *act = get(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key 'hidden_act' must be \"silu\" (SwiGLU MLP)", path);
    if (!fam->attention_bias_fixed && attention_bias)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key 'attention_bias' is true, which in %s also puts a bias on o_proj; "
                         "the decoder has q/k/v biases only (qwen2)", path, fam->model_type);
    bool flag = false;
    LU_TRY(get_bool(path, root, "mlp_bias", false, &flag));
    if (flag) return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key 'mlp_bias' is true; the decoder's MLP has no biases", path);
    LU_TRY(get_bool(path, root, "use_sliding_window", false, &flag));
    if (flag)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key 'use_sliding_window' is true; sliding-window attention is not supported",
                         path);
    return LU_OK;
}

static lu_status parse_config(const char *path, const cJSON *root, lu_decoder_config *c)
{
    memset(c, 0, sizeof *c);
    const cJSON *mt = get(root, "model_type");
    if (!cJSON_IsString(mt)) return lu_errorf(LU_ERR_CONFIG, "%s: missing key 'model_type' (a string)", path);
    const family *fam = NULL;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (!strcmp(mt->valuestring, families[i].model_type)) fam = &families[i];
    if (!fam)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key 'model_type' is \"%s\"; supported: qwen3, qwen2, llama", path,
                         mt->valuestring);
    int64_t layers, heads, kv, hd, bos;
    LU_TRY(get_int(path, root, "vocab_size", 0, 1, INT64_MAX, &c->vocab_size));
    LU_TRY(get_int(path, root, "hidden_size", 0, 1, INT64_MAX, &c->hidden_size));
    LU_TRY(get_int(path, root, "intermediate_size", 0, 1, INT64_MAX, &c->intermediate_size));
    LU_TRY(get_int(path, root, "num_hidden_layers", 0, 1, INT_MAX, &layers));
    LU_TRY(get_int(path, root, "num_attention_heads", 0, 1, INT_MAX, &heads));
    LU_TRY(get_int(path, root, "num_key_value_heads", heads, 1, INT_MAX, &kv));
    LU_TRY(get_int(path, root, "head_dim", fam->head_dim ? fam->head_dim : c->hidden_size / heads, 1, INT_MAX, &hd));
    LU_TRY(get_int(path, root, "max_position_embeddings", fam->max_position_embeddings, 1, INT64_MAX,
                   &c->max_position_embeddings));
    const cJSON *bv = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    if (!bv) bos = fam->bos;
    else if (cJSON_IsNull(bv)) bos = -1;
    else LU_TRY(json_int(path, "bos_token_id", bv, 0, INT64_MAX, &bos));
    c->num_layers = (int)layers;
    c->num_heads = (int)heads;
    c->num_kv_heads = (int)kv;
    c->head_dim = (int)hd;
    c->bos_token_id = bos;
    LU_TRY(read_eos(path, root, fam, c));
    LU_TRY(read_rope(path, root, &c->rope_theta));
    LU_TRY(get_double(path, root, "rms_norm_eps", 1e-6, &c->rms_norm_eps));
    LU_TRY(get_double(path, root, "initializer_range", 0.02, &c->init_std));
    LU_TRY(get_bool(path, root, "tie_word_embeddings", false, &c->tie_embeddings));
    LU_TRY(read_dtype(path, root, &c->dtype));
    bool bias = false;
    LU_TRY(get_bool(path, root, "attention_bias", false, &bias));
    LU_TRY(refuse_unsupported(path, root, fam, bias));
    c->qk_norm = fam->qk_norm;
    c->attention_bias = fam->attention_bias_fixed;
    return LU_OK;
}

lu_status lu_hf_read_config(const char *dir, lu_decoder_config *cfg)
{
    char *path = join(dir, "config.json");
    if (!path) return lu_error_code();
    cJSON *root = lu_json_read(path);
    lu_status s = root ? parse_config(path, root, cfg) : lu_error_code();
    cJSON_Delete(root);
    free(path);
    return s;
}

/* ---- reading weights -------------------------------------------------------------------------- */

/* The safetensors files of a checkpoint: one model.safetensors, or the shards of an index. */
typedef struct shard_set {
    int n;
    lu_st_file **files;
    const char **names;      /* file names inside the directory */
    char *index_path;
    cJSON *index;            /* NULL for a single file */
    const cJSON *map;        /* the index's weight_map */
} shard_set;

static void shards_close(shard_set *s)
{
    for (int i = 0; i < s->n; i++) lu_st_close(s->files[i]);
    free(s->files);
    free(s->names);
    free(s->index_path);
    cJSON_Delete(s->index);
}

static int shard_index(const shard_set *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) return i;
    return -1;
}

/* The file holding tensor `name`, or NULL when the checkpoint lacks it. */
static lu_st_file *shards_lookup(const shard_set *s, const char *name)
{
    if (!s->map) return lu_st_find(s->files[0], name) >= 0 ? s->files[0] : NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s->map, name);
    int i = cJSON_IsString(v) ? shard_index(s, v->valuestring) : -1;
    return i >= 0 ? s->files[i] : NULL;
}

static lu_status open_shard(shard_set *s, const char *dir, const char *name)
{
    char *p = join(dir, name);
    if (!p) return lu_error_code();
    s->files[s->n] = lu_st_open(p);
    free(p);
    if (!s->files[s->n]) return lu_error_code();
    s->names[s->n++] = name;
    return LU_OK;
}

/* Opens every shard named by the index and checks that the index and the shards agree. */
static lu_status open_index(shard_set *s, const char *dir)
{
    const char *path = s->index_path;
    LU_TRY_PTR(s->index, lu_json_read(path));
    s->map = get(s->index, "weight_map");
    if (!cJSON_IsObject(s->map)) return lu_errorf(LU_ERR_FORMAT, "%s: missing key 'weight_map' (an object)", path);
    int n = cJSON_GetArraySize(s->map);
    s->files = calloc((size_t)n + 1, sizeof *s->files);
    s->names = calloc((size_t)n + 1, sizeof *s->names);
    if (!s->files || !s->names) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
    for (const cJSON *e = s->map->child; e; e = e->next) {
        const char *f = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!f || !*f || strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, ".."))
            return lu_errorf(LU_ERR_FORMAT, "%s: weight_map['%s'] must name a file in the model directory", path,
                             e->string);
        if (shard_index(s, f) < 0) LU_TRY(open_shard(s, dir, f));
        if (lu_st_find(s->files[shard_index(s, f)], e->string) < 0)
            return lu_errorf(LU_ERR_FORMAT, "%s: weight_map puts tensor '%s' in %s, which does not hold it", path,
                             e->string, f);
    }
    for (int i = 0; i < s->n; i++)
        for (int t = 0; t < lu_st_count(s->files[i]); t++) {
            const char *name = lu_st_name(s->files[i], t);
            if (shards_lookup(s, name) != s->files[i])
                return lu_errorf(LU_ERR_FORMAT, "%s: shard %s holds tensor '%s', which weight_map does not assign to it",
                                 path, s->names[i], name);
        }
    return LU_OK;
}

/* model.safetensors when present (transformers looks for it first), else the index. */
static lu_status shards_open(shard_set *s, const char *dir)
{
    char *single = join(dir, "model.safetensors");
    if (!single) return lu_error_code();
    bool have_single = is_file(single);
    free(single);
    if (have_single) {
        s->files = calloc(1, sizeof *s->files);
        s->names = calloc(1, sizeof *s->names);
        if (!s->files || !s->names) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", dir);
        return open_shard(s, dir, "model.safetensors");
    }
    LU_TRY_PTR(s->index_path, join(dir, "model.safetensors.index.json"));
    if (!is_file(s->index_path))
        return lu_errorf(LU_ERR_IO, "%s: holds neither model.safetensors nor model.safetensors.index.json", dir);
    return open_index(s, dir);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Every stored tensor must be a parameter, except a tied model's lm_head.weight (mergekit writes
 * it; same shape as the embedding) and rotary inv_freq buffers (recomputed, as transformers does). */
static lu_status check_extras(const char *dir, const shard_set *s, const lu_params *p, const lu_decoder_config *c)
{
    for (int i = 0; i < s->n; i++)
        for (int t = 0; t < lu_st_count(s->files[i]); t++) {
            const char *name = lu_st_name(s->files[i], t);
            if (lu_params_find(p, name) || ends_with(name, ".rotary_emb.inv_freq")) continue;
            if (c->tie_embeddings && !strcmp(name, "lm_head.weight")) {
                int ndim;
                int64_t shape[LU_MAX_DIMS];
                lu_st_info(s->files[i], t, NULL, &ndim, shape);
                if (ndim == 2 && shape[0] == c->vocab_size && shape[1] == c->hidden_size) continue;
                return lu_errorf(LU_ERR_SHAPE, "%s/%s: tensor 'lm_head.weight' of a tied model must have shape [%lld, %lld]",
                                 dir, s->names[i], (long long)c->vocab_size, (long long)c->hidden_size);
            }
            return lu_errorf(LU_ERR_FORMAT, "%s/%s: unexpected tensor '%s': not a parameter of the model config.json describes",
                             dir, s->names[i], name);
        }
    return LU_OK;
}

static lu_status load_weights(const char *dir, lu_params *p, const lu_decoder_config *c)
{
    shard_set s = {0};
    lu_status st = shards_open(&s, dir);
    if (!st) st = check_extras(dir, &s, p, c);
    for (int i = 0; !st && i < p->n; i++) {
        const char *name = p->items[i].name;
        lu_st_file *f = shards_lookup(&s, name);
        char sb[LU_SHAPE_STR_MAX];
        if (!f)
            st = lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s' (shape %s) is missing from the checkpoint", dir, name,
                           lu_shape_str(p->items[i].t, sb, sizeof sb));
        else st = lu_st_read_into(f, name, p->items[i].t);
    }
    shards_close(&s);
    return st;
}

lu_status lu_hf_load(const char *dir, lu_decoder *m, lu_params **params_out)
{
    *params_out = NULL;
    lu_decoder_config cfg;
    LU_TRY(lu_hf_read_config(dir, &cfg));
    lu_params *p = lu_params_new(LU_CPU);
    if (!p) return lu_error_code();
    lu_status s = lu_decoder_declare(m, &cfg, p);
    if (!s) s = lu_params_finalize(p);
    if (!s) s = load_weights(dir, p, &cfg);
    if (s) {
        lu_params_free(p);
        m->params = NULL;
        return s;
    }
    *params_out = p;
    return LU_OK;
}

/* ---- writing ---------------------------------------------------------------------------------- */

static const char *torch_dtype_name(lu_dtype dt)
{
    return dt == LU_BF16 ? "bfloat16" : dt == LU_F16 ? "float16" : "float32";
}

static cJSON *int_or_null(int64_t v) { return v >= 0 ? cJSON_CreateNumber((double)v) : cJSON_CreateNull(); }

/* config.json in transformers' layout: keys sorted, the family's own keys included. */
static cJSON *config_json(const lu_decoder_config *c, const family *fam, lu_dtype dtype)
{
    bool qwen = fam->model_type[0] == 'q', llama = !qwen;
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(fam->architecture));
    if (!fam->attention_bias_fixed) cJSON_AddBoolToObject(o, "attention_bias", c->attention_bias);
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    cJSON_AddItemToObject(o, "bos_token_id", int_or_null(c->bos_token_id));
    if (c->n_eos == 1) {
        cJSON_AddNumberToObject(o, "eos_token_id", (double)c->eos_token_ids[0]);
    } else if (c->n_eos == 0) {
        cJSON_AddNullToObject(o, "eos_token_id");
    } else {
        cJSON *eos = cJSON_AddArrayToObject(o, "eos_token_id");
        for (int i = 0; i < c->n_eos; i++) cJSON_AddItemToArray(eos, cJSON_CreateNumber((double)c->eos_token_ids[i]));
    }
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden_size);
    cJSON_AddNumberToObject(o, "initializer_range", c->init_std);
    cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size);
    cJSON_AddNumberToObject(o, "max_position_embeddings",
                            (double)(c->max_position_embeddings > 0 ? c->max_position_embeddings : fam->max_position_embeddings));
    if (qwen) cJSON_AddNumberToObject(o, "max_window_layers", c->num_layers);
    if (llama) cJSON_AddBoolToObject(o, "mlp_bias", false);
    cJSON_AddStringToObject(o, "model_type", fam->model_type);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->num_heads);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->num_layers);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->num_kv_heads);
    if (llama) cJSON_AddNumberToObject(o, "pretraining_tp", 1);
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddNullToObject(o, "rope_scaling");
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    if (qwen) cJSON_AddNullToObject(o, "sliding_window");
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddStringToObject(o, "torch_dtype", torch_dtype_name(dtype));
    cJSON_AddBoolToObject(o, "use_cache", true);
    if (qwen) cJSON_AddBoolToObject(o, "use_sliding_window", false);
    cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size);
    return o;
}

static lu_status write_json(const char *dir, const char *name, cJSON *o)
{
    char *text = o ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    char *path = join(dir, name);
    lu_status s = !text || !path ? lu_errorf(LU_ERR_NOMEM, "%s/%s: out of memory", dir, name) : write_text(path, text);
    free(text);
    free(path);
    return s;
}

/* Writes the tensors whose shard_of is k into dir/file, converted to dtype. */
static lu_status write_shard(const char *dir, const char *file, const lu_params *p, const int *shard_of, int k,
                             lu_dtype dtype)
{
    const char **names = calloc((size_t)p->n + 1, sizeof *names);
    lu_tensor **ts = calloc((size_t)p->n + 1, sizeof *ts);
    char *path = join(dir, file);
    lu_status s = names && ts && path ? LU_OK : lu_errorf(LU_ERR_NOMEM, "%s/%s: out of memory", dir, file);
    int n = 0;
    for (int i = 0; !s && i < p->n; i++) {
        if (shard_of[i] != k) continue;
        names[n] = p->items[i].name;
        if (!(ts[n++] = lu_tensor_convert(p->items[i].t, dtype, LU_CPU))) s = lu_error_code();
    }
    if (!s) s = lu_st_save(path, n, names, ts, 1, (const char *[]){"format"}, (const char *[]){"pt"});
    for (int i = 0; ts && i < n; i++) lu_tensor_release(ts[i]);
    free(names);
    free(ts);
    free(path);
    return s;
}

/* Shards are filled in declaration order; a tensor larger than the limit gets a shard alone. */
static lu_status write_weights(const char *dir, const lu_params *p, lu_dtype dtype, int64_t max_shard_bytes)
{
    int *shard_of = calloc((size_t)p->n + 1, sizeof *shard_of);
    if (!shard_of) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", dir);
    int64_t total = 0, cur = 0;
    for (int i = 0; i < p->n; i++) total += lu_tensor_numel(p->items[i].t) * (int64_t)lu_dtype_size(dtype);
    int n_shards = 1;
    if (max_shard_bytes > 0 && total > max_shard_bytes)
        for (int i = 0; i < p->n; i++) {
            int64_t b = lu_tensor_numel(p->items[i].t) * (int64_t)lu_dtype_size(dtype);
            if (cur > 0 && cur + b > max_shard_bytes) n_shards++, cur = 0;
            shard_of[i] = n_shards - 1;
            cur += b;
        }
    lu_status s = LU_OK;
    if (n_shards == 1) s = write_shard(dir, "model.safetensors", p, shard_of, 0, dtype);
    cJSON *index = n_shards > 1 ? cJSON_CreateObject() : NULL;
    cJSON *map = NULL;
    if (index) {
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(index, "metadata"), "total_size", (double)total);
        map = cJSON_AddObjectToObject(index, "weight_map");
    }
    for (int k = 0; !s && n_shards > 1 && k < n_shards; k++) {
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
        s = write_shard(dir, file, p, shard_of, k, dtype);
        for (int i = 0; !s && i < p->n; i++)
            if (shard_of[i] == k) cJSON_AddStringToObject(map, p->items[i].name, file);
    }
    if (index && !s) s = write_json(dir, "model.safetensors.index.json", index);
    else cJSON_Delete(index);
    free(shard_of);
    return s;
}

/* Removes the plain files of a directory this process created, then the directory. */
static void remove_own_dir(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = join(dir, e->d_name);
        if (p) unlink(p);
        free(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

/* Sets *exists; an existing dir must be an empty directory (a model is never saved over files). */
static lu_status target_state(const char *dir, bool *exists)
{
    struct stat st;
    *exists = stat(dir, &st) == 0;
    if (!*exists) return LU_OK;
    if (!S_ISDIR(st.st_mode)) return lu_errorf(LU_ERR_IO, "%s: exists and is not a directory", dir);
    DIR *d = opendir(dir);
    if (!d) return lu_errorf(LU_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    if (n) return lu_errorf(LU_ERR_IO, "%s: exists and is not empty; a model is saved into a new directory", dir);
    return LU_OK;
}

static lu_status sync_parent(const char *dir)
{
    char *copy = strdup(dir);
    if (!copy) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", dir);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    lu_status s = fd >= 0 && fsync(fd) == 0 ? LU_OK : lu_errorf(LU_ERR_IO, "%s: cannot sync its parent directory", dir);
    if (fd >= 0) close(fd);
    free(copy);
    return s;
}

lu_status lu_hf_save(const char *dir, const lu_decoder *m, lu_dtype dtype, int64_t max_shard_bytes)
{
    if (dtype != LU_F32 && dtype != LU_BF16 && dtype != LU_F16)
        return lu_errorf(LU_ERR_DTYPE, "%s: models are saved as f32, bf16 or f16, not %s", dir, lu_dtype_name(dtype));
    if (!m->params || !m->params->finalized)
        return lu_errorf(LU_ERR_STATE, "%s: the model has no finalised parameters to save", dir);
    if (m->cfg.qk_norm && m->cfg.attention_bias)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: q/k norm with q/k/v biases has no transformers model type", dir);
    const family *fam = &families[m->cfg.qk_norm ? 0 : m->cfg.attention_bias ? 1 : 2];
    bool exists;
    LU_TRY(target_state(dir, &exists));
    size_t n = strlen(dir) + 32;
    char *tmp = malloc(n);
    if (!tmp) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", dir);
    snprintf(tmp, n, "%s.tmp.%ld", dir, (long)getpid());
    if (mkdir(tmp, 0755) != 0) {
        lu_status s = lu_errorf(LU_ERR_IO, "%s: cannot create the temporary directory: %s", tmp, strerror(errno));
        free(tmp);
        return s;
    }
    lu_status s = write_json(tmp, "config.json", config_json(&m->cfg, fam, dtype));
    if (!s) s = write_weights(tmp, m->params, dtype, max_shard_bytes);
    if (!s && exists && rmdir(dir) != 0) s = lu_errorf(LU_ERR_IO, "%s: cannot replace: %s", dir, strerror(errno));
    if (!s && rename(tmp, dir) != 0) s = lu_errorf(LU_ERR_IO, "%s: cannot rename '%s' into place: %s", dir, tmp, strerror(errno));
    if (s) remove_own_dir(tmp);
    else s = sync_parent(dir);
    free(tmp);
    return s;
}
