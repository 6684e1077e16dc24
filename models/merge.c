/* merge.c - `luthier merge`: the mergekit YAML config, the per-tensor plan and the streamed writer
 * (mergekit config.py, plan.py, io/tasks.py, io/tensor_writer.py, merge.py; merging.md §1-3).
 * The formulas themselves are in merge_methods.c. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "core/dtype.h"
#include "core/progress.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "models/merge.h"

/* ---- a model directory: config.json and its safetensors files ----------------------------------- */

typedef struct model {
    char *path;
    cJSON *config;
    int n_layers;
    int n_files;
    lu_st_file **files;
} model;

/* dir/name into out (PATH_MAX bytes); false when too long (the caller's open then fails). Not
 * inlined: gcc would warn that the lengths it sees at each call could exceed PATH_MAX. */
__attribute__((noinline)) static bool path_join(char *out, const char *dir, const char *name)
{
    return snprintf(out, PATH_MAX, "%s/%s", dir, name) < PATH_MAX;
}

static void model_close(model *m)
{
    for (int i = 0; i < m->n_files; i++) lu_st_close(m->files[i]);
    free(m->files);
    cJSON_Delete(m->config);
    free(m->path);
}

static lu_status model_add_file(model *m, const char *name)
{
    char p[PATH_MAX];
    path_join(p, m->path, name);
    lu_st_file **grown = realloc(m->files, (size_t)(m->n_files + 1) * sizeof *grown);
    if (!grown) return lu_errorf(LU_ERR_NOMEM, "merge: no memory");
    m->files = grown;
    if (!(m->files[m->n_files] = lu_st_open(p))) return lu_error_code();
    m->n_files++;
    return LU_OK;
}

/* model.safetensors, or the shards named by model.safetensors.index.json. */
static lu_status model_open(model *m, const char *path)
{
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return lu_errorf(LU_ERR_IO, "merge: model directory '%s' not found", path);
    if (!(m->path = strdup(path))) return lu_errorf(LU_ERR_NOMEM, "merge: no memory");
    char p[PATH_MAX];
    path_join(p, path, "config.json");
    if (!(m->config = lu_json_read(p))) return lu_error_context("merge: ");
    const cJSON *nl = cJSON_GetObjectItemCaseSensitive(m->config, "num_hidden_layers");
    if (!cJSON_IsNumber(nl) || nl->valueint < 1)
        return lu_errorf(LU_ERR_FORMAT, "merge: '%s' has no positive num_hidden_layers", p);
    m->n_layers = nl->valueint;
    path_join(p, path, "model.safetensors");
    if (access(p, F_OK) == 0) return model_add_file(m, "model.safetensors");
    path_join(p, path, "model.safetensors.index.json");
    if (access(p, F_OK) != 0) return lu_errorf(LU_ERR_IO, "merge: '%s' holds no model.safetensors(.index.json)", path);
    cJSON *index = lu_json_read(p);
    if (!index) return lu_error_context("merge: ");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(index, "weight_map"), *e;
    lu_status s = cJSON_IsObject(map) ? LU_OK : lu_errorf(LU_ERR_FORMAT, "merge: '%s' has no weight_map", p);
    cJSON_ArrayForEach(e, map) {
        if (s != LU_OK) break;
        if (!cJSON_IsString(e)) {
            s = lu_errorf(LU_ERR_FORMAT, "merge: '%s': weight_map value of '%s' is not a file name", p, e->string);
            break;
        }
        bool seen = false;
        for (const cJSON *f = map->child; f != e && !seen; f = f->next) seen = !strcmp(f->valuestring, e->valuestring);
        if (!seen) s = model_add_file(m, e->valuestring);
    }
    cJSON_Delete(index);
    return s;
}

static lu_st_file *model_find(const model *m, const char *name)
{
    for (int i = 0; i < m->n_files; i++)
        if (lu_st_find(m->files[i], name) >= 0) return m->files[i];
    return NULL;
}

/* ---- the config ----------------------------------------------------------------------------------- */

typedef struct source {
    int model;           /* index into the merge's models */
    int start, end;      /* layer_range [start, end) */
    yaml_node_t *params; /* mapping or NULL */
} source;

typedef struct slice {
    source *src;
    int n_src;
    yaml_node_t *params;
} slice;

typedef struct merge {
    yaml_document_t doc;
    const char *config_path;
    lu_merge_method method;
    int base;               /* model index, -1: none */
    model *models;
    int n_models;
    slice *slices;
    int n_slices;
    yaml_node_t *params;
    bool has_dtype, has_out_dtype;
    lu_dtype dtype, out_dtype;
} merge;

static int line_of(const yaml_node_t *n) { return n ? (int)n->start_mark.line + 1 : 0; }

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *map_get(merge *g, const yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *k = scalar(yaml_document_get_node(&g->doc, p->key));
        if (k && !strcmp(k, key)) return yaml_document_get_node(&g->doc, p->value);
    }
    return NULL;
}

static int seq_len(const yaml_node_t *n)
{
    return n && n->type == YAML_SEQUENCE_NODE ? (int)(n->data.sequence.items.top - n->data.sequence.items.start) : 0;
}

static yaml_node_t *seq_at(merge *g, const yaml_node_t *n, int i)
{
    return yaml_document_get_node(&g->doc, n->data.sequence.items.start[i]);
}

static lu_status config_error(merge *g, const yaml_node_t *n, const char *what)
{
    return lu_errorf(LU_ERR_CONFIG, "merge: %s: line %d: %s", g->config_path, line_of(n), what);
}

/* A YAML scalar as a number; booleans read as 1 / 0 (mergekit's bool parameters). */
static bool scalar_number(const yaml_node_t *n, double *v)
{
    const char *s = scalar(n);
    if (!s) return false;
    if (!strcmp(s, "true") || !strcmp(s, "True")) return *v = 1, true;
    if (!strcmp(s, "false") || !strcmp(s, "False")) return *v = 0, true;
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return *s && !*end && errno == 0;
}

/* config.py::evaluate_setting: a scalar; a gradient sampled at layer position p (linear
 * interpolation between neighbours); or conditions, the first whose filter is absent, "*" or a
 * substring of the tensor name giving the value. 1: found; 0: no value (next scope); -1: error. */
static int eval_setting(merge *g, yaml_node_t *n, const char *tensor, double p, double *v)
{
    if (n->type == YAML_SCALAR_NODE) {
        if (!scalar_number(n, v)) return config_error(g, n, "parameter value is not a number"), -1;
        return 1;
    }
    if (n->type == YAML_MAPPING_NODE) {
        const char *filter = scalar(map_get(g, n, "filter"));
        yaml_node_t *value = map_get(g, n, "value");
        if (!value) return config_error(g, n, "condition without 'value'"), -1;
        if (filter && strcmp(filter, "*") && !strstr(tensor, filter)) return 0;
        return eval_setting(g, value, tensor, p, v);
    }
    int len = seq_len(n);
    if (len == 0) return 0;
    bool numbers = true;
    for (int i = 0; i < len; i++) numbers = numbers && seq_at(g, n, i)->type == YAML_SCALAR_NODE;
    if (!numbers) {
        for (int i = 0; i < len; i++) {
            yaml_node_t *c = seq_at(g, n, i);
            if (c->type != YAML_MAPPING_NODE)
                return config_error(g, c, "a list of conditions must hold only {filter, value} entries"), -1;
            const char *filter = scalar(map_get(g, c, "filter"));
            if (!filter || !strcmp(filter, "*") || strstr(tensor, filter)) return eval_setting(g, c, tensor, p, v);
        }
        return 0;
    }
    double s = p * (len - 1), f;
    int i0 = (int)s, i1 = i0 + 1 < len ? i0 + 1 : len - 1;
    double a, b;
    if (!scalar_number(seq_at(g, n, i0), &a) || !scalar_number(seq_at(g, n, i1), &b))
        return config_error(g, n, "gradient holds a non-number"), -1;
    f = s - i0;
    *v = (1 - f) * a + f * b;
    return 1;
}

/* parameter_resolver.py: source parameters, then slice, then top level; def when nothing gives a
 * value (required when def is NaN). */
static lu_status resolve(merge *g, const slice *sl, const source *src, const char *key, const char *tensor, double p,
                         double def, double *v)
{
    yaml_node_t *scopes[3] = {src ? src->params : NULL, sl ? sl->params : NULL, g->params};
    for (int i = 0; i < 3; i++) {
        yaml_node_t *n = map_get(g, scopes[i], key);
        if (!n) continue;
        int r = eval_setting(g, n, tensor, p, v);
        if (r < 0) return lu_error_code();
        if (r > 0) return LU_OK;
    }
    if (def != def)
        return lu_errorf(LU_ERR_CONFIG, "merge: %s: missing required parameter '%s' for %s.%s", g->config_path, key,
                         src ? g->models[src->model].path : "merge", tensor);
    *v = def;
    return LU_OK;
}

static char *resolve_path(const char *config_path, const char *p)
{
    if (p[0] == '/') return strdup(p);
    char *c = strdup(config_path);
    const char *dir = c ? dirname(c) : NULL;
    size_t n = dir ? strlen(dir) + strlen(p) + 2 : 0;
    char *out = dir ? malloc(n) : NULL;
    if (out) snprintf(out, n, "%s/%s", dir, p);
    free(c);
    return out;
}

/* Index of the model at `ref` (opened on first use). */
static int model_ref(merge *g, yaml_node_t *n)
{
    const char *ref = scalar(n);
    if (!ref) return config_error(g, n, "model must be a path"), -1;
    char *path = resolve_path(g->config_path, ref);
    if (!path) return lu_errorf(LU_ERR_NOMEM, "merge: no memory"), -1;
    for (int i = 0; i < g->n_models; i++)
        if (!strcmp(g->models[i].path, path)) return free(path), i;
    model *grown = realloc(g->models, (size_t)(g->n_models + 1) * sizeof *grown);
    if (!grown) return free(path), lu_errorf(LU_ERR_NOMEM, "merge: no memory"), -1;
    g->models = grown;
    lu_status s = model_open(&g->models[g->n_models], path);
    free(path);
    g->n_models++;
    return s == LU_OK ? g->n_models - 1 : -1;
}

static lu_status add_source(merge *g, slice *sl, yaml_node_t *model_node, int start, int end, yaml_node_t *params)
{
    int m = model_ref(g, model_node);
    if (m < 0) return lu_error_code();
    if (end < 0) end = g->models[m].n_layers;
    if (start < 0 || end > g->models[m].n_layers || start >= end)
        return config_error(g, model_node, "layer_range outside the model's layers");
    source *grown = realloc(sl->src, (size_t)(sl->n_src + 1) * sizeof *grown);
    if (!grown) return lu_errorf(LU_ERR_NOMEM, "merge: no memory");
    sl->src = grown;
    sl->src[sl->n_src++] = (source){m, start, end, params};
    return LU_OK;
}

static lu_status parse_dtype(merge *g, yaml_node_t *n, lu_dtype *dt)
{
    const char *s = scalar(n);
    if (!s || !lu_dtype_parse(s, dt) || !(*dt == LU_F32 || *dt == LU_BF16 || *dt == LU_F16))
        return config_error(g, n, "dtype must be float32, bfloat16 or float16");
    return LU_OK;
}

static lu_status parse_config(merge *g)
{
    FILE *f = fopen(g->config_path, "rb");
    if (!f) return lu_errorf(LU_ERR_IO, "merge: cannot open config '%s'", g->config_path);
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    int ok = yaml_parser_load(&parser, &g->doc);
    if (!ok)
        lu_errorf(LU_ERR_CONFIG, "merge: %s: line %d: %s", g->config_path, (int)parser.problem_mark.line + 1,
                  parser.problem ? parser.problem : "malformed YAML");
    yaml_parser_delete(&parser);
    fclose(f);
    if (!ok) return LU_ERR_CONFIG;
    yaml_node_t *root = yaml_document_get_root_node(&g->doc);
    if (!root || root->type != YAML_MAPPING_NODE) return config_error(g, root, "the config must be a mapping");
    const char *method = scalar(map_get(g, root, "merge_method"));
    if (!method) return config_error(g, root, "merge_method is required");
    if (!lu_merge_method_parse(method, &g->method))
        return lu_errorf(LU_ERR_CONFIG,
                         "merge: %s: line %d: unknown merge_method '%s' (luthier has linear, slerp, nuslerp, "
                         "task_arithmetic, ties, dare_ties, dare_linear, model_stock)",
                         g->config_path, line_of(map_get(g, root, "merge_method")), method);
    g->params = map_get(g, root, "parameters");
    yaml_node_t *n;
    if ((n = map_get(g, root, "dtype"))) {
        LU_TRY(parse_dtype(g, n, &g->dtype));
        g->has_dtype = true;
    }
    if ((n = map_get(g, root, "out_dtype"))) {
        LU_TRY(parse_dtype(g, n, &g->out_dtype));
        g->has_out_dtype = true;
    }
    if ((n = map_get(g, root, "tokenizer_source"))) {
        const char *ts = scalar(n);
        if (!ts || strcmp(ts, "base"))
            return config_error(g, n, "tokenizer_source: luthier copies the base model's tokenizer only ('base')");
    }
    g->base = -1;
    if ((n = map_get(g, root, "base_model")) && (g->base = model_ref(g, n)) < 0) return lu_error_code();
    yaml_node_t *models = map_get(g, root, "models"), *slices = map_get(g, root, "slices");
    if (!models == !slices) return config_error(g, root, "exactly one of 'models' and 'slices' is required");
    if (models) {
        /* plan.py: one slice of whole models; a base_model not listed is appended. */
        if (!seq_len(models)) return config_error(g, models, "'models' must be a non-empty list");
        if (!(g->slices = calloc(1, sizeof *g->slices))) return lu_errorf(LU_ERR_NOMEM, "merge: no memory");
        g->n_slices = 1;
        bool base_listed = false;
        for (int i = 0; i < seq_len(models); i++) {
            yaml_node_t *e = seq_at(g, models, i), *mn = map_get(g, e, "model");
            if (!mn) return config_error(g, e, "models entry without 'model'");
            LU_TRY(add_source(g, g->slices, mn, 0, -1, map_get(g, e, "parameters")));
            base_listed = base_listed || g->slices->src[i].model == g->base;
        }
        if (g->base >= 0 && !base_listed)
            LU_TRY(add_source(g, g->slices, map_get(g, root, "base_model"), 0, -1, NULL));
        if (g->slices->n_src > 1)
            for (int i = 1; i < g->slices->n_src; i++)
                if (g->slices->src[i].end != g->slices->src[0].end)
                    return config_error(g, models, "all models must have the same num_hidden_layers");
        return LU_OK;
    }
    if (!seq_len(slices)) return config_error(g, slices, "'slices' must be a non-empty list");
    if (!(g->slices = calloc((size_t)seq_len(slices), sizeof *g->slices))) return lu_errorf(LU_ERR_NOMEM, "merge: no memory");
    for (int i = 0; i < seq_len(slices); i++) {
        yaml_node_t *e = seq_at(g, slices, i), *srcs = map_get(g, e, "sources");
        slice *sl = &g->slices[g->n_slices++];
        sl->params = map_get(g, e, "parameters");
        if (!seq_len(srcs)) return config_error(g, e, "slice without 'sources'");
        for (int j = 0; j < seq_len(srcs); j++) {
            yaml_node_t *s = seq_at(g, srcs, j), *lr = map_get(g, s, "layer_range");
            double a, b;
            if (seq_len(lr) != 2 || !scalar_number(seq_at(g, lr, 0), &a) || !scalar_number(seq_at(g, lr, 1), &b))
                return config_error(g, s, "source needs layer_range: [start, end]");
            LU_TRY(add_source(g, sl, map_get(g, s, "model"), (int)a, (int)b, map_get(g, s, "parameters")));
            if (sl->src[j].end - sl->src[j].start != sl->src[0].end - sl->src[0].start)
                return config_error(g, s, "all sources of a slice must have the same number of layers");
        }
    }
    return LU_OK;
}

/* ---- the plan: one entry per output tensor ----------------------------------------------------- */

typedef struct planned {
    char name[256];
    int slice;        /* whose sources give the inputs */
    int in_layer_off; /* input layer = source start + in_layer_off; -1: not a layer weight */
    char suffix[200]; /* after "model.layers.<i>." */
    double p;         /* layer position for gradients */
    int ndim;
    int64_t shape[LU_MAX_DIMS];
    int64_t numel;
    lu_dtype dt;
    int shard;
    int index; /* position in the plan: the DARE stream */
} planned;

/* Name of source s's input for planned tensor t. */
static void input_name(const planned *t, const source *s, char *buf, size_t n)
{
    if (t->in_layer_off < 0)
        snprintf(buf, n, "%s", t->name);
    else
        snprintf(buf, n, "model.layers.%d.%s", s->start + t->in_layer_off, t->suffix);
}

/* The file holding `name` for model m, falling back to the tied embedding for lm_head.weight
 * (io/tasks.py::LoadTensor with qwen3.json's tied_names); *resolved gets the name used. */
static lu_st_file *find_input(const merge *g, int m, const char *name, const char **resolved)
{
    *resolved = name;
    lu_st_file *f = model_find(&g->models[m], name);
    if (!f && !strcmp(name, "lm_head.weight")) {
        *resolved = "model.embed_tokens.weight";
        f = model_find(&g->models[m], *resolved);
    }
    return f;
}

/* Shapes and dtypes of every input, so that missing tensors and mismatches fail before writing. */
static lu_status plan_check(merge *g, planned *t)
{
    const slice *sl = &g->slices[t->slice];
    for (int j = 0; j < sl->n_src; j++) {
        char name[256];
        const char *resolved;
        input_name(t, &sl->src[j], name, sizeof name);
        lu_st_file *f = find_input(g, sl->src[j].model, name, &resolved);
        if (!f)
            return lu_errorf(LU_ERR_FORMAT, "merge: tensor %s required but not present in model %s", name,
                             g->models[sl->src[j].model].path);
        int ndim;
        int64_t shape[LU_MAX_DIMS];
        lu_dtype dt;
        LU_TRY(lu_st_info(f, lu_st_find(f, resolved), &dt, &ndim, shape));
        if (j == 0) {
            t->ndim = ndim;
            memcpy(t->shape, shape, sizeof shape);
            t->numel = 1;
            for (int d = 0; d < ndim; d++) t->numel *= shape[d];
            t->dt = g->has_out_dtype ? g->out_dtype : g->has_dtype ? g->dtype : dt;
            continue;
        }
        bool same = ndim == t->ndim;
        for (int d = 0; same && d < ndim; d++) same = shape[d] == t->shape[d];
        if (!same)
            return lu_errorf(LU_ERR_SHAPE, "merge: shape mismatch for %s: %s has %lld x %lld, %s has %lld x %lld", t->name,
                             g->models[sl->src[0].model].path, (long long)t->shape[0],
                             (long long)(t->ndim > 1 ? t->shape[1] : 1), g->models[sl->src[j].model].path,
                             (long long)shape[0], (long long)(ndim > 1 ? shape[1] : 1));
    }
    return LU_OK;
}

static lu_status plan_push(planned **list, int *n, int *cap, const planned *t)
{
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        planned *grown = realloc(*list, (size_t)nc * sizeof *grown);
        if (!grown) return lu_errorf(LU_ERR_NOMEM, "merge: no memory");
        *list = grown;
        *cap = nc;
    }
    (*list)[(*n)++] = *t;
    return LU_OK;
}

static bool is_post_weight(const char *name) { return !strcmp(name, "model.norm.weight") || strstr(name, "lm_head"); }

/* plan.py::plan_module: pre-weights from slice 0's sources, each slice's layers (output layers
 * numbered consecutively, position idx / (L - 1), 1 when L = 1), post-weights from the last
 * slice's sources; pre/post weights at position 0. lm_head.weight is planned only when some source
 * stores it (it is optional in qwen3.json). Layer weight names come from the first source's
 * first layer of each slice. */
static lu_status make_plan(merge *g, planned **out, int *n_out)
{
    planned *list = NULL;
    int n = 0, cap = 0;
    lu_status s = LU_OK;
    const model *first = &g->models[g->slices[0].src[0].model];
    for (int pass = 0; pass < 2 && s == LU_OK; pass++) {
        int si = pass == 0 ? 0 : g->n_slices - 1;
        for (int fi = 0; fi < first->n_files && s == LU_OK; fi++)
            for (int k = 0; k < lu_st_count(first->files[fi]) && s == LU_OK; k++) {
                const char *name = lu_st_name(first->files[fi], k);
                if (!strncmp(name, "model.layers.", 13) || is_post_weight(name) != (pass == 1)) continue;
                planned t = {.slice = si, .in_layer_off = -1};
                snprintf(t.name, sizeof t.name, "%s", name);
                s = plan_push(&list, &n, &cap, &t);
            }
        if (pass == 1 && s == LU_OK && !model_find(first, "lm_head.weight")) {
            const slice *sl = &g->slices[si];
            for (int j = 0; j < sl->n_src; j++)
                if (model_find(&g->models[sl->src[j].model], "lm_head.weight")) {
                    planned t = {.slice = si, .in_layer_off = -1, .name = "lm_head.weight"};
                    s = plan_push(&list, &n, &cap, &t);
                    break;
                }
        }
        if (pass == 1) break;
        int out_layer = 0;
        for (int i = 0; i < g->n_slices && s == LU_OK; i++) {
            const source *s0 = &g->slices[i].src[0];
            const model *m0 = &g->models[s0->model];
            int L = s0->end - s0->start;
            char prefix[64];
            snprintf(prefix, sizeof prefix, "model.layers.%d.", s0->start);
            for (int idx = 0; idx < L; idx++, out_layer++)
                for (int fi = 0; fi < m0->n_files && s == LU_OK; fi++)
                    for (int k = 0; k < lu_st_count(m0->files[fi]) && s == LU_OK; k++) {
                        const char *name = lu_st_name(m0->files[fi], k);
                        if (strncmp(name, prefix, strlen(prefix))) continue;
                        planned t = {.slice = i, .in_layer_off = idx, .p = L > 1 ? (double)idx / (L - 1) : 1};
                        snprintf(t.suffix, sizeof t.suffix, "%s", name + strlen(prefix));
                        snprintf(t.name, sizeof t.name, "model.layers.%d.%s", out_layer, t.suffix);
                        s = plan_push(&list, &n, &cap, &t);
                    }
        }
    }
    for (int i = 0; i < n && s == LU_OK; i++) s = plan_check(g, &list[i]);
    if (s != LU_OK) {
        free(list);
        return s;
    }
    *out = list;
    *n_out = n;
    return LU_OK;
}

/* ---- computing one tensor ------------------------------------------------------------------------ */

/* Buffers reused from tensor to tensor, sized for the largest: one f32 array per input, the merged
 * f32 values and their conversion to the output dtype (fresh buffers per tensor would cost a page
 * fault per 4 KB of every tensor); and the previous tensor's bytes still to write, which go to the
 * file while this tensor's inputs are read. */
typedef struct scratch {
    float **in;
    int n_in;
    float *out;
    void *conv;
    FILE *f;            /* pending: bytes of conv for f, from path */
    const char *path;
    size_t pending;
} scratch;

static lu_status flush_pending(scratch *sc)
{
    size_t n = sc->pending;
    sc->pending = 0;
    return n && fwrite(sc->conv, 1, n, sc->f) != n ? LU_ERR_IO : LU_OK;
}

/* Input `name` of f into `into` as f32, cast through dtype when the config sets one (mergekit
 * casts every input to dtype on load); a value stored in dtype already is unchanged by that cast.
 * Runs on any thread: a failure's message goes to why, as errors are per thread. */
static lu_status load_input(const merge *g, const planned *t, lu_st_file *f, const char *name, float *into, char *why,
                            size_t why_size)
{
    lu_dtype stored;
    lu_status s = lu_st_info(f, lu_st_find(f, name), &stored, NULL, NULL);
    lu_tensor *view = s ? NULL : lu_tensor_wrap(LU_F32, t->ndim, t->shape, LU_CPU, into, NULL, NULL);
    if (!s) s = view ? lu_st_read_into(f, name, view) : lu_error_code();
    lu_tensor_release(view);
    if (s) {
        snprintf(why, why_size, "%s", lu_error_message());
        return s;
    }
    if (!g->has_dtype || g->dtype == LU_F32 || g->dtype == stored) return LU_OK;
    uint16_t tmp[4096];
    for (int64_t e = 0; e < t->numel; e += 4096) {
        size_t m = (size_t)(t->numel - e < 4096 ? t->numel - e : 4096);
        lu_dtype_convert(tmp, g->dtype, into + e, LU_F32, m);
        lu_dtype_convert(into + e, LU_F32, tmp, g->dtype, m);
    }
    return LU_OK;
}

static lu_status merge_one(merge *g, const planned *t, uint64_t stream, uint64_t seed, scratch *sc)
{
    const slice *sl = &g->slices[t->slice];
    int n = sl->n_src;
    lu_st_file **files = calloc((size_t)n, sizeof *files);
    char(*names)[256] = calloc((size_t)n, sizeof *names); /* the tensor read from each input */
    lu_status *st = calloc((size_t)n, sizeof *st);
    char(*why)[512] = calloc((size_t)n, sizeof *why);
    double *weight = calloc((size_t)n, sizeof *weight), *density = calloc((size_t)n, sizeof *density);
    bool ok = files && names && st && why && weight && density;
    lu_status s = ok ? LU_OK : lu_errorf(LU_ERR_NOMEM, "merge: no memory");
    lu_merge_args a;
    lu_merge_args_defaults(&a, g->method);
    a.n = n;
    a.numel = t->numel;
    a.rows = t->ndim > 0 ? t->shape[0] : 1;
    a.seed = seed;
    a.stream = stream;
    double nan = 0.0 / 0.0, v;
    bool linear = g->method == LU_MERGE_LINEAR, needs_weight = linear || g->method == LU_MERGE_NUSLERP ||
                                                           (g->method >= LU_MERGE_TASK_ARITHMETIC &&
                                                            g->method <= LU_MERGE_DARE_LINEAR);
    for (int j = 0; j < n && s == LU_OK; j++) {
        char name[256];
        const char *resolved;
        input_name(t, &sl->src[j], name, sizeof name);
        files[j] = find_input(g, sl->src[j].model, name, &resolved);
        snprintf(names[j], sizeof names[j], "%s", resolved);
        if (sl->src[j].model == g->base) a.base = j;
        /* Per-input parameters are resolved with the input's own tensor name. */
        bool is_base = sl->src[j].model == g->base;
        if (needs_weight && (linear || !is_base))
            s = resolve(g, sl, &sl->src[j], "weight", name, t->p, nan, &weight[j]);
        if (s == LU_OK && !is_base) s = resolve(g, sl, &sl->src[j], "density", name, t->p, 1.0, &density[j]);
    }
    /* The previous tensor's write and the inputs' reads (and conversions to f32), in parallel. */
    lu_status written = LU_OK;
    if (s == LU_OK) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int j = -1; j < n; j++) {
            if (j < 0) written = flush_pending(sc);
            else st[j] = load_input(g, t, files[j], names[j], sc->in[j], why[j], sizeof why[j]);
        }
        if (written) s = lu_errorf(LU_ERR_IO, "merge: write to '%s' failed", sc->path);
        for (int j = 0; j < n && s == LU_OK; j++)
            if (st[j]) s = lu_errorf(st[j], "%s", why[j]);
    }
    if (s == LU_OK) s = resolve(g, sl, NULL, "t", t->name, t->p, g->method == LU_MERGE_SLERP ? nan : 0, &a.t);
    if (s == LU_OK) s = resolve(g, sl, NULL, "lambda", t->name, t->p, 1.0, &a.lambda);
    if (s == LU_OK) s = resolve(g, sl, NULL, "normalize", t->name, t->p, a.normalize, &v), a.normalize = v != 0;
    if (s == LU_OK) s = resolve(g, sl, NULL, "rescale", t->name, t->p, a.rescale, &v), a.rescale = v != 0;
    if (s == LU_OK) s = resolve(g, sl, NULL, "nuslerp_flatten", t->name, t->p, 1, &v), a.flatten = v != 0;
    if (s == LU_OK) s = resolve(g, sl, NULL, "nuslerp_row_wise", t->name, t->p, 0, &v), a.row_wise = v != 0;
    if (s == LU_OK) s = resolve(g, sl, NULL, "filter_wise", t->name, t->p, 0, &v), a.filter_wise = v != 0;
    if (s == LU_OK) {
        a.x = (const float *const *)sc->in;
        a.weight = weight;
        a.density = density;
        s = lu_merge_tensor(&a, sc->out);
        if (s != LU_OK) lu_error_context("tensor %s: ", t->name);
    }
    free(files);
    free(names);
    free(st);
    free(why);
    free(weight);
    free(density);
    return s;
}

/* ---- the streamed writer ------------------------------------------------------------------------- */

static const char *st_dtype_name(lu_dtype dt) { return dt == LU_BF16 ? "BF16" : dt == LU_F16 ? "F16" : "F32"; }
static const char *torch_dtype_name(lu_dtype dt) { return dt == LU_BF16 ? "bfloat16" : dt == LU_F16 ? "float16" : "float32"; }

static void shard_file_name(int shard, int n_shards, char *buf, size_t n)
{
    if (n_shards == 1)
        snprintf(buf, n, "model.safetensors");
    else
        snprintf(buf, n, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

/* Unlike lu_st_save, which needs every tensor of a file in memory, the header is written first
 * from the plan (shapes and dtypes are known before any value), then each tensor is computed and
 * appended: memory stays at one output tensor and its inputs. Tensors are ordered by descending
 * element size, then name, so each is aligned to its element size (as lu_st_save orders them). */
static int by_shard_order(const void *pa, const void *pb)
{
    const planned *a = *(planned *const *)pa, *b = *(planned *const *)pb;
    size_t sa = lu_dtype_size(a->dt), sb = lu_dtype_size(b->dt);
    if (sa != sb) return sa > sb ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* f32 -> dt in blocks, one block per thread at a time. */
static void convert_output(void *dst, lu_dtype dt, const float *src, int64_t n)
{
    const int64_t block = (int64_t)1 << 16;
    size_t es = lu_dtype_size(dt);
#pragma omp parallel for schedule(static) if (n > block)
    for (int64_t b = 0; b < (n + block - 1) / block; b++) {
        int64_t m = n - b * block < block ? n - b * block : block;
        lu_dtype_convert((char *)dst + (size_t)(b * block) * es, dt, src + b * block, LU_F32, (size_t)m);
    }
}

static lu_status write_shard(merge *g, planned **ts, int n, const char *path, uint64_t seed, lu_progress *pr,
                             int *done, scratch *sc)
{
    qsort(ts, (size_t)n, sizeof *ts, by_shard_order);
    cJSON *h = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(h, ts[i]->name), *shape = cJSON_AddArrayToObject(e, "shape");
        cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddStringToObject(e, "dtype", st_dtype_name(ts[i]->dt));
        for (int d = 0; d < ts[i]->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)ts[i]->shape[d]));
        int64_t bytes = ts[i]->numel * (int64_t)lu_dtype_size(ts[i]->dt);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *json = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    FILE *f = json ? fopen(path, "wb") : NULL;
    if (!f) {
        free(json);
        return lu_errorf(LU_ERR_IO, "merge: cannot write '%s'", path);
    }
    size_t len = strlen(json), padded = (len + 7) / 8 * 8;
    uint64_t hl = padded;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(hl >> (8 * i));
    bool ok = fwrite(le, 1, 8, f) == 8 && fwrite(json, 1, len, f) == len;
    for (size_t i = len; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    free(json);
    lu_status s = ok ? LU_OK : lu_errorf(LU_ERR_IO, "merge: write to '%s' failed", path);
    sc->f = f;
    sc->path = path;
    for (int i = 0; i < n && s == LU_OK; i++) {
        const planned *t = ts[i];
        s = merge_one(g, t, (uint64_t)t->index, seed, sc);
        if (s != LU_OK) break;
        convert_output(sc->conv, t->dt, sc->out, t->numel);
        sc->pending = (size_t)t->numel * lu_dtype_size(t->dt);
        (*done)++;
        if (pr) lu_progress_update(pr, *done, 0, NULL, NULL, (double)sc->pending, "B");
    }
    if (s == LU_OK && flush_pending(sc)) s = lu_errorf(LU_ERR_IO, "merge: write to '%s' failed", path);
    sc->pending = 0;
    if (fclose(f) != 0 && s == LU_OK) s = lu_errorf(LU_ERR_IO, "merge: closing '%s' failed", path);
    return s;
}

/* ---- config.json, tokenizer files, the output directory ---------------------------------------- */

/* merge.py::_model_out_config: the donor's config with torch_dtype = out_dtype or dtype and
 * num_hidden_layers = the output's layers (layer_types, where present, follows the sources). */
static lu_status write_config(merge *g, int donor, const char *dir, int out_layers)
{
    cJSON *c = cJSON_Duplicate(g->models[donor].config, 1);
    if (!c) return lu_errorf(LU_ERR_NOMEM, "merge: no memory");
    if (g->has_dtype || g->has_out_dtype) {
        const char *dt = torch_dtype_name(g->has_out_dtype ? g->out_dtype : g->dtype);
        cJSON_DeleteItemFromObjectCaseSensitive(c, "torch_dtype");
        cJSON_AddStringToObject(c, "torch_dtype", dt);
        if (cJSON_GetObjectItemCaseSensitive(c, "dtype")) cJSON_ReplaceItemInObjectCaseSensitive(c, "dtype", cJSON_CreateString(dt));
    }
    cJSON_ReplaceItemInObjectCaseSensitive(c, "num_hidden_layers", cJSON_CreateNumber(out_layers));
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(g->models[donor].config, "layer_types");
    if (cJSON_IsArray(types) && cJSON_GetArraySize(types) != out_layers) {
        cJSON *nt = cJSON_CreateArray();
        for (int i = 0; i < g->n_slices; i++)
            for (int l = g->slices[i].src[0].start; l < g->slices[i].src[0].end; l++) {
                const cJSON *e = cJSON_GetArrayItem(types, l < cJSON_GetArraySize(types) ? l : 0);
                cJSON_AddItemToArray(nt, cJSON_Duplicate(e, 1));
            }
        cJSON_ReplaceItemInObjectCaseSensitive(c, "layer_types", nt);
    }
    char *text = cJSON_Print(c), p[PATH_MAX];
    cJSON_Delete(c);
    path_join(p, dir, "config.json");
    FILE *f = text ? fopen(p, "wb") : NULL;
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = false;
    free(text);
    return ok ? LU_OK : lu_errorf(LU_ERR_IO, "merge: cannot write '%s'", p);
}

static const char *const tokenizer_files[] = {"tokenizer.json",   "tokenizer_config.json", "special_tokens_map.json",
                                              "vocab.json",       "merges.txt",            "chat_template.jinja",
                                              "tokenizer.model", "added_tokens.json"};

static lu_status copy_file(const char *from, const char *to)
{
    size_t n = 0;
    char *text = lu_file_read(from, (size_t)1 << 30, &n);
    if (!text) return lu_error_context("merge: ");
    FILE *f = fopen(to, "wb");
    bool ok = f && fwrite(text, 1, (size_t)n, f) == (size_t)n;
    if (f && fclose(f) != 0) ok = false;
    free(text);
    return ok ? LU_OK : lu_errorf(LU_ERR_IO, "merge: cannot write '%s'", to);
}

static lu_status copy_tokenizer(merge *g, int donor, const char *dir)
{
    for (size_t i = 0; i < sizeof tokenizer_files / sizeof tokenizer_files[0]; i++) {
        char from[PATH_MAX], to[PATH_MAX];
        path_join(from, g->models[donor].path, tokenizer_files[i]);
        path_join(to, dir, tokenizer_files[i]);
        if (access(from, F_OK) == 0) LU_TRY(copy_file(from, to));
    }
    return LU_OK;
}

static lu_status write_index(const char *dir, planned *plan, int n, int n_shards)
{
    cJSON *idx = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(idx, "metadata");
    cJSON *map = cJSON_AddObjectToObject(idx, "weight_map");
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        char shard[64];
        shard_file_name(plan[i].shard, n_shards, shard, sizeof shard);
        cJSON_AddStringToObject(map, plan[i].name, shard);
        total += plan[i].numel * (int64_t)lu_dtype_size(plan[i].dt);
    }
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    char *text = cJSON_Print(idx), p[PATH_MAX];
    cJSON_Delete(idx);
    path_join(p, dir, "model.safetensors.index.json");
    FILE *f = text ? fopen(p, "wb") : NULL;
    bool ok = f && fputs(text, f) >= 0;
    if (f && fclose(f) != 0) ok = false;
    free(text);
    return ok ? LU_OK : lu_errorf(LU_ERR_IO, "merge: cannot write '%s'", p);
}

/* Removes dir and the plain files in it (a failed merge's temporary directory). */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[PATH_MAX];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        path_join(p, dir, e->d_name);
        remove(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static lu_status write_model(merge *g, planned *plan, int n, const char *tmp, const lu_merge_options *opt)
{
    int64_t max_params = opt && opt->max_shard_params > 0 ? opt->max_shard_params : 5000000000LL, acc = 0;
    int n_shards = 1, out_layers = 0;
    int64_t max_numel = 1;
    for (int i = 0; i < n; i++) {
        plan[i].index = i;
        if (acc > 0 && acc + plan[i].numel > max_params) n_shards++, acc = 0;
        plan[i].shard = n_shards - 1;
        acc += plan[i].numel;
        if (plan[i].numel > max_numel) max_numel = plan[i].numel;
    }
    for (int i = 0; i < g->n_slices; i++) out_layers += g->slices[i].src[0].end - g->slices[i].src[0].start;
    int n_in = 0;
    for (int i = 0; i < g->n_slices; i++) n_in = g->slices[i].n_src > n_in ? g->slices[i].n_src : n_in;
    planned **ts = malloc((size_t)n * sizeof *ts);
    scratch sc = {.in = calloc((size_t)n_in, sizeof *sc.in), .n_in = n_in,
                  .out = malloc((size_t)max_numel * sizeof(float)), .conv = malloc((size_t)max_numel * sizeof(float))};
    bool ok = ts && sc.in && sc.out && sc.conv;
    for (int j = 0; ok && j < n_in; j++) ok = (sc.in[j] = malloc((size_t)max_numel * sizeof(float))) != NULL;
    lu_status s = ok ? LU_OK
                     : lu_errorf(LU_ERR_NOMEM, "merge: no memory for %d inputs of %lld values", n_in, (long long)max_numel);
    lu_progress *pr = s == LU_OK && opt && opt->progress ? lu_progress_begin(stderr, "merge", n) : NULL;
    int done = 0;
    for (int sh = 0; sh < n_shards && s == LU_OK; sh++) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if (plan[i].shard == sh) ts[k++] = &plan[i];
        char name[64], path[PATH_MAX];
        shard_file_name(sh, n_shards, name, sizeof name);
        path_join(path, tmp, name);
        s = write_shard(g, ts, k, path, opt ? opt->seed : 0, pr, &done, &sc);
    }
    if (pr) lu_progress_end(pr);
    free(ts);
    for (int j = 0; sc.in && j < n_in; j++) free(sc.in[j]);
    free(sc.in);
    free(sc.out);
    free(sc.conv);
    if (s == LU_OK && n_shards > 1) s = write_index(tmp, plan, n, n_shards);
    int donor = g->base >= 0 ? g->base : g->slices[0].src[0].model;
    if (s == LU_OK) s = write_config(g, donor, tmp, out_layers);
    if (s == LU_OK) s = copy_tokenizer(g, donor, tmp);
    return s;
}

lu_status lu_merge_run(const char *config_path, const char *out_dir, const lu_merge_options *opt)
{
    struct stat st;
    /* An existing empty directory is removed so that the finished merge can be renamed onto it. */
    if (stat(out_dir, &st) == 0 && !(S_ISDIR(st.st_mode) && rmdir(out_dir) == 0))
        return lu_errorf(LU_ERR_IO, "merge: output '%s' exists and is not an empty directory", out_dir);
    merge g = {.config_path = config_path};
    lu_status s = parse_config(&g);
    bool loaded = g.doc.nodes.start != NULL;
    planned *plan = NULL;
    int n = 0;
    if (s == LU_OK) s = make_plan(&g, &plan, &n);
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", out_dir, (int)getpid());
    if (s == LU_OK && mkdir(tmp, 0755) != 0) s = lu_errorf(LU_ERR_IO, "merge: cannot create '%s': %s", tmp, strerror(errno));
    if (s == LU_OK) {
        s = write_model(&g, plan, n, tmp, opt);
        if (s == LU_OK && rename(tmp, out_dir) != 0)
            s = lu_errorf(LU_ERR_IO, "merge: cannot rename '%s' to '%s': %s", tmp, out_dir, strerror(errno));
        if (s != LU_OK) remove_dir(tmp);
    }
    free(plan);
    for (int i = 0; i < g.n_slices; i++) free(g.slices[i].src);
    free(g.slices);
    for (int i = 0; i < g.n_models; i++) model_close(&g.models[i]);
    free(g.models);
    if (loaded) yaml_document_delete(&g.doc);
    return s;
}
