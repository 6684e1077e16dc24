/* gguf.c - GGUF reader and ggml dequantisation (see gguf.h; the decoder and tokenizer built from a
 * GGUF are in gguf_model.c). References: ggml docs/gguf.md and gguf.c (layout and checks),
 * ggml-quants.c (block formats). */
#include "models/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF is little-endian; values are read in place");

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4 /* GGML_MAX_DIMS */

/* Block size (elements) and block bytes of every ggml type number (ggml.c type_traits; gguf-py
 * GGML_QUANT_SIZES). Zero size: a retired number. */
static const struct {
    const char *name;
    int block, bytes;
} ggml_types[] = {
    [0] = {"F32", 1, 4},        [1] = {"F16", 1, 2},        [2] = {"Q4_0", 32, 18},     [3] = {"Q4_1", 32, 20},
    [6] = {"Q5_0", 32, 22},     [7] = {"Q5_1", 32, 24},     [8] = {"Q8_0", 32, 34},     [9] = {"Q8_1", 32, 40},
    [10] = {"Q2_K", 256, 84},   [11] = {"Q3_K", 256, 110},  [12] = {"Q4_K", 256, 144},  [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},  [15] = {"Q8_K", 256, 292},  [16] = {"IQ2_XXS", 256, 66}, [17] = {"IQ2_XS", 256, 74},
    [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50}, [20] = {"IQ4_NL", 32, 18},  [21] = {"IQ3_S", 256, 110},
    [22] = {"IQ2_S", 256, 82},  [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},       [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},       [27] = {"I64", 1, 8},       [28] = {"F64", 1, 8},       [29] = {"IQ1_M", 256, 56},
    [30] = {"BF16", 1, 2},      [34] = {"TQ1_0", 256, 54},  [35] = {"TQ2_0", 256, 66},  [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (int)(sizeof ggml_types / sizeof ggml_types[0])

static const int gguf_scalar_size[LU_GGUF_TYPE_COUNT] = {
    [LU_GGUF_UINT8] = 1, [LU_GGUF_INT8] = 1,    [LU_GGUF_UINT16] = 2,  [LU_GGUF_INT16] = 2, [LU_GGUF_UINT32] = 4,
    [LU_GGUF_INT32] = 4, [LU_GGUF_FLOAT32] = 4, [LU_GGUF_BOOL] = 1,    [LU_GGUF_UINT64] = 8, [LU_GGUF_INT64] = 8,
    [LU_GGUF_FLOAT64] = 8,
};

typedef struct gguf_kv {
    char *key;
    lu_gguf_type type, elem;  /* elem: arrays only */
    uint64_t n;               /* array length */
    const uint8_t *data;      /* scalar or numeric array elements, in the map */
    char **strs;              /* strings (n of them for arrays, 1 for a scalar), NUL-terminated copies */
    size_t *lens;
} gguf_kv;

typedef struct gguf_tensor {
    char *name;
    int type, ndim;
    int64_t shape[GGUF_MAX_DIMS]; /* row-major (ne reversed) */
    uint64_t offset, nbytes;      /* in the data section */
} gguf_tensor;

struct lu_gguf {
    char *path;
    uint8_t *map;
    size_t size;
    uint32_t version, alignment;
    int n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    const uint8_t *data;
    uint64_t data_size;
};

/* ---- reading the file ------------------------------------------------------------------------ */

typedef struct cursor {
    const lu_gguf *g;
    size_t pos;
} cursor;

static size_t left(const cursor *c) { return c->g->size - c->pos; }

/* Copies n bytes to out, or records an error saying what was being read. */
static lu_status take(cursor *c, void *out, size_t n, const char *what)
{
    if (n > left(c))
        return lu_errorf(LU_ERR_FORMAT, "%s: truncated: %s needs %zu bytes at offset %zu, the file has %zu left",
                         c->g->path, what, n, c->pos, left(c));
    memcpy(out, c->g->map + c->pos, n);
    c->pos += n;
    return LU_OK;
}

/* A GGUF string as a new NUL-terminated copy; its length is checked against the file first. */
static lu_status take_string(cursor *c, char **out, size_t *len, const char *what)
{
    uint64_t n = 0;
    LU_TRY(take(c, &n, 8, what));
    if (n > left(c))
        return lu_errorf(LU_ERR_FORMAT, "%s: %s: string length %llu at offset %zu runs past the end of the file",
                         c->g->path, what, (unsigned long long)n, c->pos - 8);
    char *s = malloc((size_t)n + 1);
    if (!s) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory for a string of %llu bytes", c->g->path, (unsigned long long)n);
    memcpy(s, c->g->map + c->pos, (size_t)n);
    s[n] = '\0';
    c->pos += (size_t)n;
    *out = s;
    if (len) *len = (size_t)n;
    return LU_OK;
}

static lu_status read_strings(cursor *c, gguf_kv *kv, uint64_t n)
{
    /* Each string takes at least its 8-byte length: n is bounded by the file before allocating. */
    if (n > left(c) / 8)
        return lu_errorf(LU_ERR_FORMAT, "%s: key '%s': %llu strings cannot fit in the %zu bytes left", c->g->path,
                         kv->key, (unsigned long long)n, left(c));
    kv->strs = calloc((size_t)n + 1, sizeof *kv->strs);
    kv->lens = calloc((size_t)n + 1, sizeof *kv->lens);
    if (!kv->strs || !kv->lens) return lu_errorf(LU_ERR_NOMEM, "%s: key '%s': out of memory", c->g->path, kv->key);
    char what[96];
    for (uint64_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "key '%.60s' string %llu", kv->key, (unsigned long long)i);
        LU_TRY(take_string(c, &kv->strs[i], &kv->lens[i], what));
    }
    return LU_OK;
}

static lu_status read_value(cursor *c, gguf_kv *kv)
{
    uint32_t t = 0;
    LU_TRY(take(c, &t, 4, "value type"));
    if (t >= LU_GGUF_TYPE_COUNT)
        return lu_errorf(LU_ERR_FORMAT, "%s: key '%s': unknown value type %u", c->g->path, kv->key, t);
    kv->type = (lu_gguf_type)t;
    if (kv->type == LU_GGUF_STRING) return read_strings(c, kv, 1);
    if (kv->type != LU_GGUF_ARRAY) {
        kv->data = c->g->map + c->pos;
        uint64_t v = 0;
        return take(c, &v, (size_t)gguf_scalar_size[t], kv->key);
    }
    uint32_t e = 0;
    LU_TRY(take(c, &e, 4, "array element type"));
    LU_TRY(take(c, &kv->n, 8, "array length"));
    if (e == LU_GGUF_ARRAY)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: key '%s': arrays of arrays are not supported", c->g->path, kv->key);
    if (e >= LU_GGUF_TYPE_COUNT)
        return lu_errorf(LU_ERR_FORMAT, "%s: key '%s': unknown array element type %u", c->g->path, kv->key, e);
    kv->elem = (lu_gguf_type)e;
    if (kv->elem == LU_GGUF_STRING) return read_strings(c, kv, kv->n);
    if (kv->n > left(c) / (uint64_t)gguf_scalar_size[e])
        return lu_errorf(LU_ERR_FORMAT, "%s: key '%s': %llu array elements of %d bytes run past the end of the file",
                         c->g->path, kv->key, (unsigned long long)kv->n, gguf_scalar_size[e]);
    kv->data = c->g->map + c->pos;
    c->pos += (size_t)kv->n * (size_t)gguf_scalar_size[e];
    return LU_OK;
}

static lu_status read_kvs(cursor *c, lu_gguf *g, uint64_t n)
{
    /* A key/value takes at least 12 bytes (key length, value type). */
    if (n > left(c) / 12)
        return lu_errorf(LU_ERR_FORMAT, "%s: %llu key/values cannot fit in the %zu bytes left", g->path,
                         (unsigned long long)n, left(c));
    g->kv = calloc((size_t)n + 1, sizeof *g->kv);
    if (!g->kv) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < n; i++) {
        char what[48];
        snprintf(what, sizeof what, "key %llu", (unsigned long long)i);
        LU_TRY(take_string(c, &g->kv[i].key, NULL, what));
        g->n_kv = (int)i + 1;
        if (lu_gguf_find_kv(g, g->kv[i].key) != (int)i)
            return lu_errorf(LU_ERR_FORMAT, "%s: key '%s' appears twice", g->path, g->kv[i].key);
        LU_TRY(read_value(c, &g->kv[i]));
    }
    return LU_OK;
}

static lu_status read_tensor_info(cursor *c, lu_gguf *g, gguf_tensor *t, int i)
{
    char what[48];
    snprintf(what, sizeof what, "tensor info %d", i);
    LU_TRY(take_string(c, &t->name, NULL, what));
    uint32_t ndim = 0, type = 0;
    uint64_t ne[GGUF_MAX_DIMS] = {0};
    LU_TRY(take(c, &ndim, 4, t->name));
    if (ndim == 0 || ndim > GGUF_MAX_DIMS)
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': %u dimensions, expected 1 to %d", g->path, t->name, ndim,
                         GGUF_MAX_DIMS);
    LU_TRY(take(c, ne, 8 * (size_t)ndim, t->name));
    LU_TRY(take(c, &type, 4, t->name));
    LU_TRY(take(c, &t->offset, 8, t->name));
    if (type >= N_GGML_TYPES || !ggml_types[type].bytes)
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': unknown tensor type %u", g->path, t->name, type);
    t->type = (int)type;
    t->ndim = (int)ndim;
    uint64_t numel = 1;
    for (uint32_t d = 0; d < ndim; d++) {
        if (__builtin_mul_overflow(numel, ne[d], &numel) || numel > INT64_MAX)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': ne[%u] = %llu makes the element count overflow", g->path,
                             t->name, d, (unsigned long long)ne[d]);
        t->shape[ndim - 1 - d] = (int64_t)ne[d];
    }
    int block = ggml_types[type].block;
    if (ne[0] % (uint64_t)block)
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': row length %llu is not a multiple of the %s block size %d",
                         g->path, t->name, (unsigned long long)ne[0], ggml_types[type].name, block);
    t->nbytes = numel / (uint64_t)block * (uint64_t)ggml_types[type].bytes;
    return LU_OK;
}

static lu_status read_tensors(cursor *c, lu_gguf *g, uint64_t n)
{
    /* A tensor info takes at least 32 bytes (name length, n_dims, one dim, type, offset). */
    if (n > left(c) / 32)
        return lu_errorf(LU_ERR_FORMAT, "%s: %llu tensor infos cannot fit in the %zu bytes left", g->path,
                         (unsigned long long)n, left(c));
    g->tensors = calloc((size_t)n + 1, sizeof *g->tensors);
    if (!g->tensors) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < n; i++) {
        g->n_tensors = (int)i + 1;
        LU_TRY(read_tensor_info(c, g, &g->tensors[i], (int)i));
        if (lu_gguf_find_tensor(g, g->tensors[i].name) != (int)i)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s' appears twice", g->path, g->tensors[i].name);
    }
    return LU_OK;
}

static lu_status read_alignment(lu_gguf *g)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int i = lu_gguf_find_kv(g, "general.alignment");
    if (i < 0) return LU_OK;
    uint32_t a;
    if (g->kv[i].type != LU_GGUF_UINT32)
        return lu_errorf(LU_ERR_FORMAT, "%s: key 'general.alignment' must be a uint32", g->path);
    memcpy(&a, g->kv[i].data, 4);
    if (a == 0 || (a & (a - 1)))
        return lu_errorf(LU_ERR_FORMAT, "%s: key 'general.alignment' = %u is not a power of two", g->path, a);
    g->alignment = a;
    return LU_OK;
}

static lu_status parse(lu_gguf *g)
{
    cursor c = {g, 0};
    char magic[4] = {0};
    uint64_t n_tensors = 0, n_kv = 0;
    LU_TRY(take(&c, magic, 4, "magic"));
    if (memcmp(magic, "GGUF", 4))
        return lu_errorf(LU_ERR_FORMAT, "%s: not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")", g->path,
                         (uint8_t)magic[0], (uint8_t)magic[1], (uint8_t)magic[2], (uint8_t)magic[3]);
    LU_TRY(take(&c, &g->version, 4, "version"));
    if (g->version != 2 && g->version != 3)
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (2 or 3)", g->path, g->version);
    LU_TRY(take(&c, &n_tensors, 8, "tensor count"));
    LU_TRY(take(&c, &n_kv, 8, "key/value count"));
    if (n_tensors > INT_MAX || n_kv > INT_MAX)
        return lu_errorf(LU_ERR_FORMAT, "%s: %llu tensors and %llu key/values: too many", g->path,
                         (unsigned long long)n_tensors, (unsigned long long)n_kv);
    LU_TRY(read_kvs(&c, g, n_kv));
    LU_TRY(read_alignment(g));
    LU_TRY(read_tensors(&c, g, n_tensors));
    size_t start = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (start > g->size) start = g->size; /* no data section: only tensors of 0 bytes fit */
    g->data = g->map + start;
    g->data_size = g->size - start;
    for (int i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': offset %llu is not a multiple of the alignment %u", g->path,
                             t->name, (unsigned long long)t->offset, g->alignment);
        if (t->offset > g->data_size || t->nbytes > g->data_size - t->offset)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': bytes [%llu, %llu) lie outside the data section of %llu bytes",
                             g->path, t->name, (unsigned long long)t->offset,
                             (unsigned long long)t->offset + (unsigned long long)t->nbytes,
                             (unsigned long long)g->data_size);
    }
    return LU_OK;
}

lu_gguf *lu_gguf_open(const char *path)
{
    lu_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        lu_errorf(LU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        lu_gguf_close(g);
        return NULL;
    }
    g->size = (size_t)st.st_size;
    if (g->size) {
        void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            lu_errorf(LU_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
            g->size = 0;
        } else {
            g->map = m;
        }
    }
    close(fd);
    if ((st.st_size && !g->map) || parse(g) != LU_OK) {
        lu_gguf_close(g);
        return NULL;
    }
    return g;
}

void lu_gguf_close(lu_gguf *g)
{
    if (!g) return;
    for (int i = 0; g->kv && i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        uint64_t n = kv->type == LU_GGUF_STRING ? 1 : kv->n;
        for (uint64_t k = 0; kv->strs && k < n; k++) free(kv->strs[k]);
        free(kv->strs);
        free(kv->lens);
        free(kv->key);
    }
    for (int i = 0; g->tensors && i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->map) munmap(g->map, g->size);
    free(g->path);
    free(g);
}

const char *lu_gguf_path(const lu_gguf *g) { return g->path; }
uint32_t lu_gguf_version(const lu_gguf *g) { return g->version; }
uint32_t lu_gguf_alignment(const lu_gguf *g) { return g->alignment; }

/* ---- metadata -------------------------------------------------------------------------------- */

int lu_gguf_kv_count(const lu_gguf *g) { return g->n_kv; }
const char *lu_gguf_kv_key(const lu_gguf *g, int i) { return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL; }

int lu_gguf_find_kv(const lu_gguf *g, const char *key)
{
    for (int i = 0; i < g->n_kv; i++)
        if (!strcmp(g->kv[i].key, key)) return i;
    return -1;
}

static const gguf_kv *find(const lu_gguf *g, const char *key)
{
    int i = lu_gguf_find_kv(g, key);
    if (i < 0) lu_errorf(LU_ERR_FORMAT, "%s: missing key '%s'", g->path, key);
    return i < 0 ? NULL : &g->kv[i];
}

lu_status lu_gguf_kv_info(const lu_gguf *g, const char *key, lu_gguf_type *type, lu_gguf_type *elem, int64_t *n)
{
    const gguf_kv *kv = find(g, key);
    if (!kv) return lu_error_code();
    if (type) *type = kv->type;
    if (elem) *elem = kv->elem;
    if (n) *n = kv->type == LU_GGUF_ARRAY ? (int64_t)kv->n : 1;
    return LU_OK;
}

static bool is_int_type(lu_gguf_type t)
{
    return t <= LU_GGUF_INT32 || t == LU_GGUF_BOOL || t == LU_GGUF_UINT64 || t == LU_GGUF_INT64;
}

/* Integer value of type t at p. */
static lu_status int_at(const lu_gguf *g, const char *key, lu_gguf_type t, const uint8_t *p, int64_t *out)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; } v;
    memcpy(&v, p, (size_t)gguf_scalar_size[t]);
    switch (t) {
    case LU_GGUF_UINT8: case LU_GGUF_BOOL: *out = v.u8; return LU_OK;
    case LU_GGUF_INT8: *out = v.i8; return LU_OK;
    case LU_GGUF_UINT16: *out = v.u16; return LU_OK;
    case LU_GGUF_INT16: *out = v.i16; return LU_OK;
    case LU_GGUF_UINT32: *out = v.u32; return LU_OK;
    case LU_GGUF_INT32: *out = v.i32; return LU_OK;
    case LU_GGUF_INT64: *out = v.i64; return LU_OK;
    case LU_GGUF_UINT64:
        if (v.u64 > INT64_MAX)
            return lu_errorf(LU_ERR_FORMAT, "%s: key '%s': %llu does not fit an int64", g->path, key,
                             (unsigned long long)v.u64);
        *out = (int64_t)v.u64;
        return LU_OK;
    default: return lu_errorf(LU_ERR_FORMAT, "%s: key '%s' is not an integer", g->path, key);
    }
}

static lu_status float_at(const lu_gguf *g, const char *key, lu_gguf_type t, const uint8_t *p, double *out)
{
    if (t == LU_GGUF_FLOAT32) {
        float f;
        memcpy(&f, p, 4);
        *out = f;
        return LU_OK;
    }
    if (t == LU_GGUF_FLOAT64) {
        memcpy(out, p, 8);
        return LU_OK;
    }
    int64_t i;
    if (!is_int_type(t) || t == LU_GGUF_BOOL) return lu_errorf(LU_ERR_FORMAT, "%s: key '%s' is not a number", g->path, key);
    LU_TRY(int_at(g, key, t, p, &i));
    *out = (double)i;
    return LU_OK;
}

static const gguf_kv *find_scalar(const lu_gguf *g, const char *key)
{
    const gguf_kv *kv = find(g, key);
    if (kv && (kv->type == LU_GGUF_ARRAY || kv->type == LU_GGUF_STRING)) {
        lu_errorf(LU_ERR_FORMAT, "%s: key '%s' holds a %s, not a number", g->path, key,
                  kv->type == LU_GGUF_ARRAY ? "array" : "string");
        return NULL;
    }
    return kv;
}

lu_status lu_gguf_get_int(const lu_gguf *g, const char *key, int64_t *out)
{
    const gguf_kv *kv = find_scalar(g, key);
    return kv ? int_at(g, key, kv->type, kv->data, out) : lu_error_code();
}

lu_status lu_gguf_get_float(const lu_gguf *g, const char *key, double *out)
{
    const gguf_kv *kv = find_scalar(g, key);
    return kv ? float_at(g, key, kv->type, kv->data, out) : lu_error_code();
}

lu_status lu_gguf_get_bool(const lu_gguf *g, const char *key, bool *out)
{
    const gguf_kv *kv = find(g, key);
    if (!kv) return lu_error_code();
    if (kv->type != LU_GGUF_BOOL) return lu_errorf(LU_ERR_FORMAT, "%s: key '%s' is not a bool", g->path, key);
    *out = kv->data[0] != 0;
    return LU_OK;
}

const char *lu_gguf_get_str(const lu_gguf *g, const char *key, size_t *len)
{
    const gguf_kv *kv = find(g, key);
    if (kv && kv->type != LU_GGUF_STRING) {
        lu_errorf(LU_ERR_FORMAT, "%s: key '%s' is not a string", g->path, key);
        return NULL;
    }
    if (kv && len) *len = kv->lens[0];
    return kv ? kv->strs[0] : NULL;
}

static const gguf_kv *find_element(const lu_gguf *g, const char *key, int64_t i)
{
    const gguf_kv *kv = find(g, key);
    if (kv && kv->type != LU_GGUF_ARRAY) {
        lu_errorf(LU_ERR_FORMAT, "%s: key '%s' is not an array", g->path, key);
        return NULL;
    }
    if (kv && (i < 0 || (uint64_t)i >= kv->n)) {
        lu_errorf(LU_ERR_INVALID, "%s: key '%s': index %lld outside the array of %llu", g->path, key, (long long)i,
                  (unsigned long long)kv->n);
        return NULL;
    }
    return kv;
}

lu_status lu_gguf_array_int(const lu_gguf *g, const char *key, int64_t i, int64_t *out)
{
    const gguf_kv *kv = find_element(g, key, i);
    if (!kv) return lu_error_code();
    if (kv->elem == LU_GGUF_STRING) return lu_errorf(LU_ERR_FORMAT, "%s: key '%s' holds strings, not integers", g->path, key);
    return int_at(g, key, kv->elem, kv->data + (size_t)i * (size_t)gguf_scalar_size[kv->elem], out);
}

lu_status lu_gguf_array_float(const lu_gguf *g, const char *key, int64_t i, double *out)
{
    const gguf_kv *kv = find_element(g, key, i);
    if (!kv) return lu_error_code();
    if (kv->elem == LU_GGUF_STRING) return lu_errorf(LU_ERR_FORMAT, "%s: key '%s' holds strings, not numbers", g->path, key);
    return float_at(g, key, kv->elem, kv->data + (size_t)i * (size_t)gguf_scalar_size[kv->elem], out);
}

const char *lu_gguf_array_str(const lu_gguf *g, const char *key, int64_t i, size_t *len)
{
    const gguf_kv *kv = find_element(g, key, i);
    if (kv && kv->elem != LU_GGUF_STRING) {
        lu_errorf(LU_ERR_FORMAT, "%s: key '%s' does not hold strings", g->path, key);
        return NULL;
    }
    if (kv && len) *len = kv->lens[i];
    return kv ? kv->strs[i] : NULL;
}

/* ---- tensors --------------------------------------------------------------------------------- */

int lu_gguf_tensor_count(const lu_gguf *g) { return g->n_tensors; }
const char *lu_gguf_tensor_name(const lu_gguf *g, int i) { return i >= 0 && i < g->n_tensors ? g->tensors[i].name : NULL; }

int lu_gguf_find_tensor(const lu_gguf *g, const char *name)
{
    for (int i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name)) return i;
    return -1;
}

lu_status lu_gguf_tensor_info(const lu_gguf *g, int i, int *type, int *ndim, int64_t *shape)
{
    if (i < 0 || i >= g->n_tensors)
        return lu_errorf(LU_ERR_INVALID, "%s: tensor index %d outside [0, %d)", g->path, i, g->n_tensors);
    const gguf_tensor *t = &g->tensors[i];
    if (type) *type = t->type;
    if (ndim) *ndim = t->ndim;
    if (shape) memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
    return LU_OK;
}

const void *lu_gguf_tensor_data(const lu_gguf *g, int i, size_t *nbytes)
{
    if (i < 0 || i >= g->n_tensors) {
        lu_errorf(LU_ERR_INVALID, "%s: tensor index %d outside [0, %d)", g->path, i, g->n_tensors);
        return NULL;
    }
    if (nbytes) *nbytes = (size_t)g->tensors[i].nbytes;
    return g->data + g->tensors[i].offset;
}

const char *lu_ggml_type_name(int type)
{
    return type >= 0 && type < N_GGML_TYPES && ggml_types[type].bytes ? ggml_types[type].name : "unknown";
}

static float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return lu_f16_to_f32(h);
}

/* ggml-quants.c dequantize_row_q8_0 / q4_0 / q4_1: each block of 32 starts with an f16 scale d
 * (Q4_1: then an f16 minimum m). Q8_0: x = q * d, q int8. Q4_0/Q4_1: byte j holds element j in
 * its low nibble and element j + 16 in its high nibble; x = (q - 8) * d, resp. x = q * d + m. */
static void dequant_q8_0(const uint8_t *b, int64_t nb, float *y)
{
    for (int64_t i = 0; i < nb; i++, b += 34, y += 32) {
        float d = f16_at(b);
        for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
    }
}

static void dequant_q4_0(const uint8_t *b, int64_t nb, float *y)
{
    for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
        float d = f16_at(b);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((b[2 + j] & 0x0F) - 8) * d;
            y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const uint8_t *b, int64_t nb, float *y)
{
    for (int64_t i = 0; i < nb; i++, b += 20, y += 32) {
        float d = f16_at(b), m = f16_at(b + 2);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(b[4 + j] & 0x0F) * d + m;
            y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
        }
    }
}

lu_status lu_ggml_dequantize(int type, const void *src, int64_t n, float *dst)
{
    const char *name = lu_ggml_type_name(type);
    int block = type >= 0 && type < N_GGML_TYPES ? ggml_types[type].block : 0;
    if (block && (n < 0 || n % block))
        return lu_errorf(LU_ERR_INVALID, "dequantize: %lld elements are not whole %s blocks of %d", (long long)n, name,
                         block);
    const uint8_t *s = src;
    switch (type) {
    case LU_GGML_F32: memcpy(dst, src, (size_t)n * 4); return LU_OK;
    case LU_GGML_F16: lu_dtype_convert(dst, LU_F32, src, LU_F16, (size_t)n); return LU_OK;
    case LU_GGML_BF16: lu_dtype_convert(dst, LU_F32, src, LU_BF16, (size_t)n); return LU_OK;
    case LU_GGML_Q8_0: dequant_q8_0(s, n / 32, dst); return LU_OK;
    case LU_GGML_Q4_0: dequant_q4_0(s, n / 32, dst); return LU_OK;
    case LU_GGML_Q4_1: dequant_q4_1(s, n / 32, dst); return LU_OK;
    default:
        return lu_errorf(LU_ERR_UNSUPPORTED, "dequantize: unsupported tensor type %s (%d); supported: F32, F16, BF16, "
                         "Q8_0, Q4_0, Q4_1", name, type);
    }
}

static int find_loadable(const lu_gguf *g, const char *name)
{
    int i = lu_gguf_find_tensor(g, name);
    if (i < 0) lu_errorf(LU_ERR_FORMAT, "%s: no tensor '%s'", g->path, name);
    return i;
}

static lu_status dequantize_tensor(const lu_gguf *g, int i, float *dst)
{
    const gguf_tensor *t = &g->tensors[i];
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
    if (lu_ggml_dequantize(t->type, g->data + t->offset, numel, dst) != LU_OK)
        return lu_error_context("%s: tensor '%s': ", g->path, t->name);
    return LU_OK;
}

lu_tensor *lu_gguf_load(const lu_gguf *g, const char *name)
{
    int i = find_loadable(g, name);
    if (i < 0) return NULL;
    const gguf_tensor *t = &g->tensors[i];
    lu_tensor *out = lu_tensor_empty(LU_F32, t->ndim, t->shape, LU_CPU);
    if (out && dequantize_tensor(g, i, lu_tensor_data(out)) != LU_OK) {
        lu_tensor_release(out);
        return NULL;
    }
    return out;
}

lu_status lu_gguf_read_into(const lu_gguf *g, const char *name, lu_tensor *dst)
{
    int i = find_loadable(g, name);
    if (i < 0) return lu_error_code();
    const gguf_tensor *t = &g->tensors[i];
    bool same = dst->ndim == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = dst->shape[d] == t->shape[d];
    char sd[LU_SHAPE_STR_MAX];
    if (!same || dst->dtype != LU_F32 || dst->storage->device != LU_CPU || !lu_tensor_is_contiguous(dst)) {
        lu_tensor want = {.ndim = t->ndim};
        memcpy(want.shape, t->shape, sizeof t->shape);
        char sw[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "%s: tensor '%s' has shape %s; the destination is %s %s%s", g->path, t->name,
                         lu_shape_str(&want, sw, sizeof sw), lu_shape_str(dst, sd, sizeof sd), lu_dtype_name(dst->dtype),
                         dst->dtype == LU_F32 ? " (must be a contiguous CPU f32 tensor)" : " (must be f32)");
    }
    return dequantize_tensor(g, i, lu_tensor_data(dst));
}
