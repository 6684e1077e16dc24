/* safetensors.c - safetensors reader (mmap + full validation) and writer (see safetensors.h). */
#include "safetensors.h"

#include "fileio.h"
#include "params.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; tensors are read in place");

/* tensor.rs: MAX_HEADER_SIZE = 100_000_000. */
#define ST_MAX_HEADER 100000000ull
/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

/* The format's byte-sized dtypes in the order of safetensors' Dtype enum, which the reference
 * writer sorts by (descending). lu < 0: known to the format, not loadable here. */
static const struct {
    const char *name;
    int size;
    int lu;
} st_dtypes[] = {
    {"BOOL", 1, LU_BOOL}, {"U8", 1, LU_U8},   {"I8", 1, -1},       {"F8_E5M2", 1, -1}, {"F8_E4M3", 1, -1},
    {"F8_E8M0", 1, -1},   {"I16", 2, -1},     {"U16", 2, -1},      {"F16", 2, LU_F16}, {"BF16", 2, LU_BF16},
    {"I32", 4, LU_I32},   {"U32", 4, -1},     {"F32", 4, LU_F32},  {"C64", 8, -1},     {"F64", 8, LU_F64},
    {"I64", 8, LU_I64},   {"U64", 8, -1},
};
#define ST_N_DTYPES (int)(sizeof st_dtypes / sizeof st_dtypes[0])

typedef struct st_entry {
    const char *name;        /* points into the parsed header */
    int dtype;               /* index into st_dtypes */
    int ndim;
    int64_t shape[LU_MAX_DIMS];
    uint64_t begin, end;     /* byte offsets into the buffer */
} st_entry;

struct lu_st_file {
    char *path;
    uint8_t *map;
    size_t size;
    const uint8_t *buffer;   /* first byte after the header */
    cJSON *header;
    const cJSON *metadata;   /* "__metadata__" object, or NULL */
    int n;
    st_entry *entries;       /* sorted by begin: file order */
    const st_entry **by_name;
};

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

/* A JSON number that is an integer in [0, 2^53]. */
static bool json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d > ST_MAX_JSON_INT || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

static lu_status parse_entry(const char *path, const cJSON *item, st_entry *e)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': needs \"dtype\" (string), \"shape\" and \"data_offsets\" (arrays)",
                         path, name);
    e->name = name;
    e->dtype = -1;
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (!strcmp(dt->valuestring, st_dtypes[i].name)) e->dtype = i;
    if (e->dtype < 0) return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%s\"", path, name, dt->valuestring);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > LU_MAX_DIMS)
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': shape has %d dims, at most %d are supported", path, name, ndim,
                         LU_MAX_DIMS);
    e->ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t n;
        if (!json_uint(v, &n))
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
        if (__builtin_mul_overflow(numel, n, &numel) || numel > INT64_MAX)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': shape[%d] = %llu makes the element count overflow", path,
                             name, d, (unsigned long long)n);
        e->shape[d] = (int64_t)n;
    }
    if (cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &e->begin) || !json_uint(offs->child->next, &e->end) ||
        e->end < e->begin)
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end", path,
                         name);
    uint64_t need;
    char sb[LU_SHAPE_STR_MAX];
    if (__builtin_mul_overflow(numel, (uint64_t)st_dtypes[e->dtype].size, &need) || e->end - e->begin != need)
        return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, shape %s %s needs %llu",
                         path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                         (unsigned long long)(e->end - e->begin), shape_str(ndim, e->shape, sb, sizeof sb),
                         dt->valuestring, (unsigned long long)numel * (unsigned long long)st_dtypes[e->dtype].size);
    return LU_OK;
}

static int cmp_begin(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const st_entry *const *)a)->name, (*(const st_entry *const *)b)->name);
}

static lu_status parse_metadata(const char *path, const cJSON *meta)
{
    if (!cJSON_IsObject(meta)) return lu_errorf(LU_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", path);
    for (const cJSON *v = meta->child; v; v = v->next)
        if (!cJSON_IsString(v))
            return lu_errorf(LU_ERR_FORMAT, "%s: \"__metadata__\" value of key '%s' is not a string", path, v->string);
    return LU_OK;
}

/* Everything after the 8 length bytes: JSON, entries, tiling of the buffer. */
static lu_status parse_header(lu_st_file *f, uint64_t hlen)
{
    const char *path = f->path;
    const char *text = (const char *)f->map + 8;
    const char *end = NULL;
    f->header = cJSON_ParseWithLengthOpts(text, (size_t)hlen, &end, false);
    if (!f->header) {
        const char *at = cJSON_GetErrorPtr();
        long pos = at && at >= text && at <= text + hlen ? (long)(at - text) : 0;
        return lu_errorf(LU_ERR_FORMAT, "%s: header is not valid JSON (error near byte %ld of %llu)", path, pos,
                         (unsigned long long)hlen);
    }
    for (const char *p = end; p < text + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return lu_errorf(LU_ERR_FORMAT, "%s: header has bytes after its JSON value (at byte %ld)", path,
                             (long)(p - text));
    if (!cJSON_IsObject(f->header)) return lu_errorf(LU_ERR_FORMAT, "%s: header is not a JSON object", path);

    int n = 0;
    for (const cJSON *it = f->header->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__")) n++;
        else if (f->metadata)
            return lu_errorf(LU_ERR_FORMAT, "%s: \"__metadata__\" appears twice in the header", path);
        else {
            LU_TRY(parse_metadata(path, it));
            f->metadata = it;
        }
    }
    f->entries = calloc((size_t)n + 1, sizeof *f->entries);
    f->by_name = calloc((size_t)n + 1, sizeof *f->by_name);
    if (!f->entries || !f->by_name) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory for %d tensor entries", path, n);
    for (const cJSON *it = f->header->child; it; it = it->next)
        if (strcmp(it->string, "__metadata__")) LU_TRY(parse_entry(path, it, &f->entries[f->n++]));

    uint64_t buffer_size = f->size - 8 - hlen;
    for (int i = 0; i < n; i++) {
        const st_entry *e = &f->entries[i];
        if (e->end > buffer_size)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] extend past the end of the file "
                             "(the data buffer has %llu bytes)", path, e->name, (unsigned long long)e->begin,
                             (unsigned long long)e->end, (unsigned long long)buffer_size);
    }
    qsort(f->entries, (size_t)n, sizeof *f->entries, cmp_begin);
    for (int i = 0; i < n; i++) f->by_name[i] = &f->entries[i];
    qsort(f->by_name, (size_t)n, sizeof *f->by_name, cmp_name);
    for (int i = 1; i < n; i++)
        if (!strcmp(f->by_name[i]->name, f->by_name[i - 1]->name))
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", path, f->by_name[i]->name);
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        const st_entry *e = &f->entries[i];
        if (e->begin < at)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' (ends at %llu)",
                             path, e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                             f->entries[i - 1].name, (unsigned long long)at);
        if (e->begin > at)
            return lu_errorf(LU_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] leave a gap after byte %llu", path,
                             e->name, (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)at);
        at = e->end;
    }
    if (at != buffer_size)
        return lu_errorf(LU_ERR_FORMAT, "%s: the tensors end at byte %llu of the data buffer but the file holds %llu bytes "
                         "after the header (8 + header + data must equal the file size)",
                         path, (unsigned long long)at, (unsigned long long)buffer_size);
    return LU_OK;
}

lu_st_file *lu_st_open(const char *path)
{
    lu_st_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path);
    if (!f || !f->path) {
        free(f);
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    lu_status s = LU_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) s = lu_errorf(LU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    else if (fstat(fd, &st) != 0) s = lu_errorf(LU_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode)) s = lu_errorf(LU_ERR_IO, "%s: not a regular file", path);
    else if (st.st_size < 8)
        s = lu_errorf(LU_ERR_FORMAT, "%s: file has %lld bytes, too short for the 8-byte header length", path,
                      (long long)st.st_size);
    if (!s) {
        f->size = (size_t)st.st_size;
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) s = lu_errorf(LU_ERR_IO, "%s: cannot map %zu bytes: %s", path, f->size, strerror(errno));
        else f->map = m;
    }
    if (fd >= 0) close(fd);
    if (!s) {
        uint64_t hlen;
        memcpy(&hlen, f->map, 8);
        if (hlen > ST_MAX_HEADER)
            s = lu_errorf(LU_ERR_FORMAT, "%s: header length %llu exceeds the format's limit of 100 MB", path,
                          (unsigned long long)hlen);
        else if (hlen > f->size - 8)
            s = lu_errorf(LU_ERR_FORMAT, "%s: header length %llu is larger than the %zu bytes that follow it", path,
                          (unsigned long long)hlen, f->size - 8);
        else {
            f->buffer = f->map + 8 + hlen;
            s = parse_header(f, hlen);
        }
    }
    if (s) {
        lu_st_close(f);
        return NULL;
    }
    return f;
}

void lu_st_close(lu_st_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, f->size);
    cJSON_Delete(f->header);
    free(f->entries);
    free(f->by_name);
    free(f->path);
    free(f);
}

int lu_st_count(const lu_st_file *f) { return f->n; }

const char *lu_st_name(const lu_st_file *f, int i) { return i >= 0 && i < f->n ? f->entries[i].name : NULL; }

int lu_st_find(const lu_st_file *f, const char *name)
{
    st_entry key = {.name = name};
    const st_entry *kp = &key;
    const st_entry **hit = bsearch(&kp, f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_name);
    return hit ? (int)(*hit - f->entries) : -1;
}

const char *lu_st_metadata(const lu_st_file *f, const char *key)
{
    const cJSON *v = f->metadata ? cJSON_GetObjectItemCaseSensitive(f->metadata, key) : NULL;
    return v ? v->valuestring : NULL;
}

lu_status lu_st_info(const lu_st_file *f, int i, lu_dtype *dt, int *ndim, int64_t *shape)
{
    if (i < 0 || i >= f->n)
        return lu_errorf(LU_ERR_INVALID, "%s: tensor index %d out of range [0, %d)", f->path, i, f->n);
    const st_entry *e = &f->entries[i];
    if (ndim) *ndim = e->ndim;
    if (shape) memcpy(shape, e->shape, sizeof e->shape);
    if (st_dtypes[e->dtype].lu < 0)
        return lu_errorf(LU_ERR_DTYPE, "%s: tensor '%s' has dtype %s, which luthier cannot load "
                         "(supported: F32, F64, BF16, F16, I32, I64, U8, BOOL)", f->path, e->name, st_dtypes[e->dtype].name);
    if (dt) *dt = (lu_dtype)st_dtypes[e->dtype].lu;
    return LU_OK;
}

/* The entry called name with a loadable dtype, or NULL + error. */
static const st_entry *loadable(const lu_st_file *f, const char *name)
{
    int i = lu_st_find(f, name);
    if (i < 0) {
        lu_errorf(LU_ERR_INVALID, "%s: no tensor named '%s'", f->path, name);
        return NULL;
    }
    return lu_st_info(f, i, NULL, NULL, NULL) ? NULL : &f->entries[i];
}

/* A tensor may start at any byte offset in a file written by another tool; typed reads of a
 * misaligned address go through an aligned bounce buffer. */
static void convert_from_file(void *dst, lu_dtype dst_dt, const uint8_t *src, lu_dtype src_dt, size_t n)
{
    size_t es = lu_dtype_size(src_dt), ds = lu_dtype_size(dst_dt);
    if ((uintptr_t)src % es == 0) {
        lu_dtype_convert(dst, dst_dt, src, src_dt, n);
        return;
    }
    double bounce[512];
    size_t per = sizeof bounce / es;
    for (size_t i = 0; i < n; i += per) {
        size_t m = n - i < per ? n - i : per;
        memcpy(bounce, src + i * es, m * es);
        lu_dtype_convert((uint8_t *)dst + i * ds, dst_dt, bounce, src_dt, m);
    }
}

static size_t entry_numel(const st_entry *e)
{
    return (size_t)(e->end - e->begin) / (size_t)st_dtypes[e->dtype].size;
}

lu_tensor *lu_st_load(const lu_st_file *f, const char *name, lu_dtype as)
{
    const st_entry *e = loadable(f, name);
    if (!e) return NULL;
    lu_tensor *t = lu_tensor_empty(as, e->ndim, e->shape, LU_CPU);
    if (!t) {
        lu_error_context("%s: tensor '%s': ", f->path, name);
        return NULL;
    }
    convert_from_file(lu_tensor_data(t), as, f->buffer + e->begin, (lu_dtype)st_dtypes[e->dtype].lu, entry_numel(e));
    return t;
}

lu_status lu_st_read_into(const lu_st_file *f, const char *name, lu_tensor *dst)
{
    const st_entry *e = loadable(f, name);
    if (!e) return lu_error_code();
    bool same = e->ndim == dst->ndim;
    for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == dst->shape[d];
    if (!same) {
        char a[LU_SHAPE_STR_MAX], b[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "%s: tensor '%s' has shape %s but the destination has shape %s", f->path, name,
                         shape_str(e->ndim, e->shape, a, sizeof a), lu_shape_str(dst, b, sizeof b));
    }
    if (dst->storage->device == LU_CPU && lu_tensor_is_contiguous(dst)) {
        convert_from_file(lu_tensor_data(dst), dst->dtype, f->buffer + e->begin, (lu_dtype)st_dtypes[e->dtype].lu,
                          entry_numel(e));
        return LU_OK;
    }
    lu_tensor *tmp = lu_st_load(f, name, dst->dtype);
    if (!tmp) return lu_error_code();
    lu_status s = lu_tensor_copy(dst, tmp);
    lu_tensor_release(tmp);
    return s;
}

/* ---- writing ---------------------------------------------------------------------------------- */

static int st_dtype_of(lu_dtype dt)
{
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (st_dtypes[i].lu == (int)dt) return i;
    return -1;
}

typedef struct save_item {
    const char *name;
    lu_tensor *t;
    int dtype;
} save_item;

/* Reference order (tensor.rs prepare): descending dtype, then name. */
static int cmp_save(const void *a, const void *b)
{
    const save_item *x = a, *y = b;
    if (x->dtype != y->dtype) return y->dtype - x->dtype;
    return strcmp(x->name, y->name);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static lu_status check_unique(const char *path, const char *what, int n, const char *const *names)
{
    const char **s = malloc(((size_t)n + 1) * sizeof *s);
    if (!s) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
    if (n > 0) memcpy(s, names, (size_t)n * sizeof *s); /* names may be NULL when n == 0 */
    qsort(s, (size_t)n, sizeof *s, cmp_str);
    lu_status st = LU_OK;
    for (int i = 1; i < n && !st; i++)
        if (!strcmp(s[i], s[i - 1])) st = lu_errorf(LU_ERR_INVALID, "%s: %s '%s' given twice", path, what, s[i]);
    free(s);
    return st;
}

/* The header text, padded with spaces to a multiple of 8 (as the reference writer does). */
static char *build_header(const char *path, const save_item *items, int n, int n_meta, const char *const *keys,
                          const char *const *values, size_t *len)
{
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        ok = meta != NULL;
        for (int i = 0; ok && i < n_meta; i++) ok = cJSON_AddStringToObject(meta, keys[i], values[i]) != NULL;
    }
    uint64_t at = 0;
    for (int i = 0; ok && i < n; i++) {
        const lu_tensor *t = items[i].t;
        cJSON *e = cJSON_AddObjectToObject(root, items[i].name);
        cJSON *shape = e ? cJSON_CreateArray() : NULL;
        cJSON *offs = shape ? cJSON_CreateArray() : NULL;
        ok = offs && cJSON_AddStringToObject(e, "dtype", st_dtypes[items[i].dtype].name) &&
             cJSON_AddItemToObject(e, "shape", shape) && cJSON_AddItemToObject(e, "data_offsets", offs);
        if (!ok) {
            cJSON_Delete(shape);
            cJSON_Delete(offs);
            break;
        }
        for (int d = 0; ok && d < t->ndim; d++) ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        uint64_t end = at + lu_tensor_nbytes(t);
        ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at)) &&
             cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)end));
        at = end;
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) {
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory building the header", path);
        return NULL;
    }
    size_t l = strlen(text), padded = (l + 7) / 8 * 8;
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        lu_errorf(LU_ERR_NOMEM, "%s: out of memory building the header", path);
        return NULL;
    }
    memset(out + l, ' ', padded - l);
    out[padded] = '\0';
    *len = padded;
    return out;
}

static lu_status write_all(FILE *fp, const char *tmp, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, fp) != n) return lu_errorf(LU_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    return LU_OK;
}

static lu_status write_tensor(FILE *fp, const char *tmp, const save_item *it)
{
    const lu_tensor *t = it->t;
    size_t nbytes = lu_tensor_nbytes(t);
    if (t->storage->device == LU_CPU && lu_tensor_is_contiguous(t)) return write_all(fp, tmp, lu_tensor_data(t), nbytes);
    void *host = malloc(nbytes ? nbytes : 1);
    if (!host) return lu_errorf(LU_ERR_NOMEM, "%s: out of memory copying tensor '%s'", tmp, it->name);
    lu_status s = lu_tensor_to_host(t, t->dtype, host);
    if (!s) s = write_all(fp, tmp, host, nbytes);
    free(host);
    return s;
}

static lu_status write_file(const char *tmp, const save_item *items, int n, const char *header, size_t hlen)
{
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return lu_errorf(LU_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    uint64_t n8 = hlen;
    lu_status s = write_all(fp, tmp, &n8, 8);
    if (!s) s = write_all(fp, tmp, header, hlen);
    for (int i = 0; i < n && !s; i++) s = write_tensor(fp, tmp, &items[i]);
    if (!s && (fflush(fp) != 0 || fsync(fileno(fp)) != 0))
        s = lu_errorf(LU_ERR_IO, "%s: cannot flush: %s", tmp, strerror(errno));
    if (fclose(fp) != 0 && !s) s = lu_errorf(LU_ERR_IO, "%s: cannot close: %s", tmp, strerror(errno));
    return s;
}

static lu_status check_save_args(const char *path, int n, const char *const *names, lu_tensor *const *tensors, int n_meta,
                                  const char *const *keys, const char *const *values)
{
    if (n < 0 || n_meta < 0 || (n && (!names || !tensors)) || (n_meta && (!keys || !values)))
        return lu_errorf(LU_ERR_INVALID, "%s: bad tensor or metadata lists (n = %d, n_meta = %d)", path, n, n_meta);
    for (int i = 0; i < n; i++) {
        if (!names[i] || !tensors[i])
            return lu_errorf(LU_ERR_INVALID, "%s: tensor %d has no name or is NULL", path, i);
        if (!strcmp(names[i], "__metadata__"))
            return lu_errorf(LU_ERR_INVALID, "%s: \"__metadata__\" is reserved and cannot name a tensor", path);
        if (st_dtype_of(tensors[i]->dtype) < 0)
            return lu_errorf(LU_ERR_DTYPE, "%s: tensor '%s' has dtype %s, which safetensors cannot store", path,
                             names[i], lu_dtype_name(tensors[i]->dtype));
    }
    for (int i = 0; i < n_meta; i++)
        if (!keys[i] || !values[i]) return lu_errorf(LU_ERR_INVALID, "%s: metadata entry %d is NULL", path, i);
    LU_TRY(check_unique(path, "tensor name", n, names));
    return check_unique(path, "metadata key", n_meta, keys);
}

lu_status lu_st_save(const char *path, int n, const char *const *names, lu_tensor *const *tensors, int n_meta,
                     const char *const *meta_keys, const char *const *meta_values)
{
    LU_TRY(check_save_args(path, n, names, tensors, n_meta, meta_keys, meta_values));
    save_item *items = malloc(((size_t)n + 1) * sizeof *items);
    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (!items || !tmp) {
        free(items);
        free(tmp);
        return lu_errorf(LU_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) items[i] = (save_item){names[i], tensors[i], st_dtype_of(tensors[i]->dtype)};
    qsort(items, (size_t)n, sizeof *items, cmp_save);
    size_t hlen = 0;
    char *header = build_header(path, items, n, n_meta, meta_keys, meta_values, &hlen);
    lu_status s = header ? LU_OK : lu_error_code();
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    if (!s) s = write_file(tmp, items, n, header, hlen);
    if (!s && rename(tmp, path) != 0) s = lu_errorf(LU_ERR_IO, "%s: cannot rename '%s' into place: %s", path, tmp, strerror(errno));
    if (s) unlink(tmp);
    else s = lu_file_sync_dir(path);
    free(header);
    free(items);
    free(tmp);
    return s;
}

lu_status lu_st_load_params(const char *path, lu_params *p, const char *what, lu_st_scope in_scope, void *ctx)
{
    if (!p->finalized) return lu_errorf(LU_ERR_STATE, "%s %s: params must be finalised before loading", what, path);
    lu_st_file *f = lu_st_open(path);
    if (!f) return lu_error_code();
    lu_status s = LU_OK;
    for (int i = 0; i < p->n && s == LU_OK; i++) {
        const char *name = p->items[i].name;
        lu_tensor *t = p->items[i].t;
        if (in_scope && !in_scope(name, ctx)) continue;
        int at = lu_st_find(f, name), ndim = 0;
        int64_t shape[LU_MAX_DIMS];
        if (at < 0) {
            s = lu_errorf(LU_ERR_FORMAT, "%s %s: missing tensor '%s'", what, path, name);
        } else if ((s = lu_st_info(f, at, NULL, &ndim, shape)) == LU_OK) {
            bool same = ndim == t->ndim;
            for (int d = 0; same && d < ndim; d++) same = shape[d] == t->shape[d];
            if (!same) {
                char want[LU_SHAPE_STR_MAX], got[LU_SHAPE_STR_MAX] = "[";
                for (int d = 0; d < ndim; d++) {
                    size_t n = strlen(got);
                    snprintf(got + n, sizeof got - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
                }
                strncat(got, "]", sizeof got - strlen(got) - 1);
                s = lu_errorf(LU_ERR_SHAPE, "%s %s: tensor '%s' has shape %s, the model expects %s", what, path, name, got,
                              lu_shape_str(t, want, sizeof want));
            } else {
                s = lu_st_read_into(f, name, t);
            }
        }
    }
    for (int i = 0; i < lu_st_count(f) && s == LU_OK; i++) {
        const char *name = lu_st_name(f, i);
        if ((!in_scope || in_scope(name, ctx)) && !lu_params_find(p, name))
            s = lu_errorf(LU_ERR_FORMAT, "%s %s: unexpected tensor '%s' (does the config match the checkpoint?)", what,
                          path, name);
    }
    lu_st_close(f);
    return s;
}
