/* asr_data.c - manifests, the HDF5 feature store and duration buckets (see asr_data.h). */
#include "models/asr_data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

/* ---- manifests ------------------------------------------------------------------------------ */

/* `audio` relative to the manifest's folder unless absolute. */
static char *resolve(const char *manifest, const char *audio)
{
    const char *slash = strrchr(manifest, '/');
    if (audio[0] == '/' || !slash) return strdup(audio);
    size_t dn = (size_t)(slash - manifest) + 1, an = strlen(audio) + 1;
    char *p = malloc(dn + an);
    if (!p) return NULL;
    memcpy(p, manifest, dn);
    memcpy(p + dn, audio, an);
    return p;
}

static lu_status parse_line(const char *path, int line, const char *text, lu_asr_utt *u)
{
    cJSON *j = cJSON_Parse(text);
    lu_status s = LU_OK;
    const cJSON *audio = j ? cJSON_GetObjectItemCaseSensitive(j, "audio") : NULL;
    const cJSON *tr = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
    const cJSON *dur = j ? cJSON_GetObjectItemCaseSensitive(j, "duration") : NULL;
    const cJSON *spk = j ? cJSON_GetObjectItemCaseSensitive(j, "speaker") : NULL;
    if (!j || !cJSON_IsObject(j))
        s = lu_errorf(LU_ERR_FORMAT, "%s:%d: not a JSON object", path, line);
    else if (!cJSON_IsString(audio) || !audio->valuestring[0])
        s = lu_errorf(LU_ERR_FORMAT, "%s:%d: \"audio\" must be a non-empty string", path, line);
    else if (!cJSON_IsString(tr))
        s = lu_errorf(LU_ERR_FORMAT, "%s:%d: \"text\" must be a string", path, line);
    else if (!cJSON_IsNumber(dur) || !(dur->valuedouble > 0))
        s = lu_errorf(LU_ERR_FORMAT, "%s:%d: \"duration\" must be a positive number of seconds", path, line);
    else if (spk && !cJSON_IsNull(spk) && !cJSON_IsString(spk))
        s = lu_errorf(LU_ERR_FORMAT, "%s:%d: \"speaker\" must be a string", path, line);
    if (!s) {
        u->audio = resolve(path, audio->valuestring);
        u->text = strdup(tr->valuestring);
        u->speaker = strdup(cJSON_IsString(spk) ? spk->valuestring : "");
        u->duration = dur->valuedouble;
        u->line = line;
        if (!u->audio || !u->text || !u->speaker) s = lu_errorf(LU_ERR_NOMEM, "%s:%d: out of memory", path, line);
    }
    cJSON_Delete(j);
    return s;
}

lu_status lu_asr_manifest_read(const char *path, lu_asr_manifest *m)
{
    memset(m, 0, sizeof *m);
    FILE *f = fopen(path, "rb");
    if (!f) return lu_errorf(LU_ERR_IO, "manifest %s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0;
    int line = 0, cap_utts = 0;
    lu_status s = LU_OK;
    ssize_t len;
    while (!s && (len = getline(&buf, &cap, f)) >= 0) {
        line++;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ')) buf[--len] = 0;
        if (len == 0) continue;
        if (m->n == cap_utts) {
            cap_utts = cap_utts ? 2 * cap_utts : 64;
            lu_asr_utt *u = realloc(m->utts, (size_t)cap_utts * sizeof *u);
            if (!u) {
                s = lu_errorf(LU_ERR_NOMEM, "manifest %s: out of memory", path);
                break;
            }
            m->utts = u;
        }
        memset(&m->utts[m->n], 0, sizeof m->utts[m->n]);
        s = parse_line(path, line, buf, &m->utts[m->n]);
        m->n++;
    }
    free(buf);
    fclose(f);
    if (!s && m->n == 0) s = lu_errorf(LU_ERR_FORMAT, "manifest %s: no utterances", path);
    if (s) lu_asr_manifest_free(m);
    return s;
}

void lu_asr_manifest_free(lu_asr_manifest *m)
{
    for (int i = 0; i < m->n; i++) {
        free(m->utts[i].audio);
        free(m->utts[i].text);
        free(m->utts[i].speaker);
    }
    free(m->utts);
    memset(m, 0, sizeof *m);
}

/* ---- feature store -------------------------------------------------------------------------- */

struct lu_asr_store_writer {
    char *path, *tmp;
    hid_t file, feats;
    int64_t dim, n, cap, frames;
    int64_t *offsets;
    char **text, **speaker;
    double *duration;
};

static hid_t utf8_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static herr_t write_attr(hid_t obj, const char *name, hid_t type, const void *v)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t r = a >= 0 ? H5Awrite(a, type, v) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return r;
}

lu_asr_store_writer *lu_asr_store_writer_open(const char *path, const char *features, int sample_rate, int64_t dim)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (dim < 1) {
        lu_errorf(LU_ERR_INVALID, "feature store %s: dim must be >= 1, got %lld", path, (long long)dim);
        return NULL;
    }
    lu_asr_store_writer *w = calloc(1, sizeof *w);
    size_t n = strlen(path);
    if (w) w->path = strdup(path), w->tmp = malloc(n + 5);
    if (!w || !w->path || !w->tmp) {
        if (w) free(w->path), free(w->tmp), free(w);
        lu_errorf(LU_ERR_NOMEM, "feature store %s: out of memory", path);
        return NULL;
    }
    snprintf(w->tmp, n + 5, "%s.tmp", path);
    w->dim = dim;
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t cur[2] = {0, (hsize_t)dim}, max[2] = {H5S_UNLIMITED, (hsize_t)dim}, chunk[2] = {1024, (hsize_t)dim};
    hid_t sp = H5Screate_simple(2, cur, max), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 2, chunk);
    w->feats = w->file >= 0 ? H5Dcreate2(w->file, "feats", H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT) : -1;
    H5Pclose(dcpl);
    H5Sclose(sp);
    hid_t st = utf8_type();
    int64_t d64 = dim;
    int sr = sample_rate;
    bool ok = w->feats >= 0 && write_attr(w->file, "features", st, &features) >= 0 &&
              write_attr(w->file, "sample_rate", H5T_NATIVE_INT, &sr) >= 0 &&
              write_attr(w->file, "dim", H5T_NATIVE_INT64, &d64) >= 0;
    H5Tclose(st);
    if (!ok) {
        lu_errorf(LU_ERR_IO, "feature store: cannot create %s", w->tmp);
        lu_asr_store_writer_close(w, false);
        return NULL;
    }
    return w;
}

lu_status lu_asr_store_writer_add(lu_asr_store_writer *w, const float *feats, int64_t frames, const char *text,
                                  const char *speaker, double duration)
{
    if (frames < 1) return lu_errorf(LU_ERR_INVALID, "feature store %s: an utterance needs >= 1 frame", w->path);
    if (w->n + 1 >= w->cap) {
        int64_t cap = w->cap ? 2 * w->cap : 256;
        int64_t *o = realloc(w->offsets, (size_t)(cap + 1) * sizeof *o);
        if (o) w->offsets = o;
        char **t = realloc(w->text, (size_t)cap * sizeof *t);
        if (t) w->text = t;
        char **sp = realloc(w->speaker, (size_t)cap * sizeof *sp);
        if (sp) w->speaker = sp;
        double *d = realloc(w->duration, (size_t)cap * sizeof *d);
        if (d) w->duration = d;
        if (!o || !t || !sp || !d) return lu_errorf(LU_ERR_NOMEM, "feature store %s: out of memory", w->path);
        w->cap = cap;
    }
    hsize_t size[2] = {(hsize_t)(w->frames + frames), (hsize_t)w->dim};
    hsize_t start[2] = {(hsize_t)w->frames, 0}, count[2] = {(hsize_t)frames, (hsize_t)w->dim};
    if (H5Dset_extent(w->feats, size) < 0) return lu_errorf(LU_ERR_IO, "feature store %s: cannot grow /feats", w->tmp);
    hid_t fs = H5Dget_space(w->feats), ms = H5Screate_simple(2, count, NULL);
    herr_t r = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (r >= 0) r = H5Dwrite(w->feats, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, feats);
    H5Sclose(ms);
    H5Sclose(fs);
    if (r < 0) return lu_errorf(LU_ERR_IO, "feature store %s: cannot write utterance %lld", w->tmp, (long long)w->n);
    w->text[w->n] = strdup(text);
    w->speaker[w->n] = strdup(speaker ? speaker : "");
    if (!w->text[w->n] || !w->speaker[w->n]) {
        free(w->text[w->n]);
        free(w->speaker[w->n]);
        return lu_errorf(LU_ERR_NOMEM, "feature store %s: out of memory", w->path);
    }
    w->duration[w->n] = duration;
    w->offsets[w->n] = w->frames;
    w->frames += frames;
    w->n++;
    return LU_OK;
}

static herr_t write_1d(hid_t file, const char *name, hid_t ftype, hid_t mtype, int64_t n, const void *data)
{
    hsize_t dims[1] = {(hsize_t)n};
    hid_t sp = H5Screate_simple(1, dims, NULL);
    hid_t d = H5Dcreate2(file, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t r = d >= 0 && n > 0 ? H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : (d >= 0 ? 0 : -1);
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return r;
}

lu_status lu_asr_store_writer_close(lu_asr_store_writer *w, bool commit)
{
    lu_status s = LU_OK;
    if (commit && w->n == 0) s = lu_errorf(LU_ERR_INVALID, "feature store %s: no utterances to write", w->path);
    if (commit && !s) {
        if (w->offsets) w->offsets[w->n] = w->frames;
        int64_t zero = 0;
        hid_t st = utf8_type();
        bool ok = write_1d(w->file, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, w->n + 1, w->offsets ? (void *)w->offsets : &zero) >= 0 &&
                  write_1d(w->file, "text", st, st, w->n, w->text) >= 0 &&
                  write_1d(w->file, "speaker", st, st, w->n, w->speaker) >= 0 &&
                  write_1d(w->file, "duration", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, w->n, w->duration) >= 0;
        H5Tclose(st);
        if (!ok) s = lu_errorf(LU_ERR_IO, "feature store %s: cannot write the utterance index", w->tmp);
    }
    if (w->feats >= 0) H5Dclose(w->feats);
    if (w->file >= 0 && H5Fclose(w->file) < 0 && !s) s = lu_errorf(LU_ERR_IO, "feature store %s: cannot close", w->tmp);
    if (commit && !s && rename(w->tmp, w->path) != 0)
        s = lu_errorf(LU_ERR_IO, "feature store: cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
    if (!commit || s) remove(w->tmp);
    for (int64_t i = 0; i < w->n; i++) free(w->text[i]), free(w->speaker[i]);
    free(w->text);
    free(w->speaker);
    free(w->offsets);
    free(w->duration);
    free(w->path);
    free(w->tmp);
    free(w);
    return s;
}

static lu_status read_dataset(hid_t file, const char *path, const char *name, hid_t mtype, int64_t n, void *out)
{
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0) return lu_errorf(LU_ERR_FORMAT, "feature store %s: no dataset /%s", path, name);
    hid_t sp = H5Dget_space(d);
    hssize_t got = H5Sget_simple_extent_npoints(sp);
    herr_t r = got == n ? H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) : -1;
    H5Sclose(sp);
    H5Dclose(d);
    if (got != n)
        return lu_errorf(LU_ERR_FORMAT, "feature store %s: /%s has %lld entries, expected %lld", path, name,
                         (long long)got, (long long)n);
    if (r < 0) return lu_errorf(LU_ERR_FORMAT, "feature store %s: cannot read /%s", path, name);
    return LU_OK;
}

/* Variable-length strings read into malloc'd copies (HDF5's own buffers freed). */
static lu_status read_strings(hid_t file, const char *path, const char *name, int64_t n, char **out)
{
    char **raw = calloc((size_t)n, sizeof *raw);
    if (!raw) return lu_errorf(LU_ERR_NOMEM, "feature store %s: out of memory", path);
    hid_t st = utf8_type();
    lu_status s = read_dataset(file, path, name, st, n, raw);
    H5Tclose(st);
    for (int64_t i = 0; i < n; i++) {
        if (!s && !(out[i] = strdup(raw[i] ? raw[i] : ""))) s = lu_errorf(LU_ERR_NOMEM, "feature store %s: out of memory", path);
        if (raw[i]) H5free_memory(raw[i]);
    }
    free(raw);
    return s;
}

lu_status lu_asr_store_open(const char *path, lu_asr_store *s)
{
    memset(s, 0, sizeof *s);
    s->file = s->feats = -1;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return lu_errorf(LU_ERR_IO, "feature store %s: cannot open (run `luthier data prepare-speech`?)", path);
    s->file = f;
    lu_status st = LU_OK;
    hid_t d = H5Dopen2(f, "offsets", H5P_DEFAULT), sp = d >= 0 ? H5Dget_space(d) : -1;
    int64_t n1 = sp >= 0 ? (int64_t)H5Sget_simple_extent_npoints(sp) : 0;
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    if (n1 < 2) st = lu_errorf(LU_ERR_FORMAT, "feature store %s: missing or empty /offsets", path);
    s->n = n1 - 1;
    if (!st) {
        s->offsets = malloc((size_t)n1 * sizeof *s->offsets);
        s->duration = malloc((size_t)s->n * sizeof *s->duration);
        s->text = calloc((size_t)s->n, sizeof *s->text);
        s->speaker = calloc((size_t)s->n, sizeof *s->speaker);
        if (!s->offsets || !s->duration || !s->text || !s->speaker) st = lu_errorf(LU_ERR_NOMEM, "feature store %s: out of memory", path);
    }
    if (!st) st = read_dataset(f, path, "offsets", H5T_NATIVE_INT64, n1, s->offsets);
    if (!st) st = read_dataset(f, path, "duration", H5T_NATIVE_DOUBLE, s->n, s->duration);
    if (!st) st = read_strings(f, path, "text", s->n, s->text);
    if (!st) st = read_strings(f, path, "speaker", s->n, s->speaker);
    if (!st) {
        hid_t fd = H5Dopen2(f, "feats", H5P_DEFAULT), fsp = fd >= 0 ? H5Dget_space(fd) : -1;
        hsize_t dims[2] = {0, 0};
        if (fsp < 0 || H5Sget_simple_extent_ndims(fsp) != 2) {
            st = lu_errorf(LU_ERR_FORMAT, "feature store %s: /feats missing or not 2-D", path);
        } else {
            H5Sget_simple_extent_dims(fsp, dims, NULL);
            s->dim = (int64_t)dims[1];
            s->feats = fd;
            if ((int64_t)dims[0] != s->offsets[s->n])
                st = lu_errorf(LU_ERR_FORMAT, "feature store %s: /feats has %llu frames, /offsets ends at %lld", path,
                               (unsigned long long)dims[0], (long long)s->offsets[s->n]);
        }
        if (fsp >= 0) H5Sclose(fsp);
        if (fd >= 0 && s->feats < 0) H5Dclose(fd);
    }
    for (int64_t i = 0; !st && i < s->n; i++)
        if (s->offsets[i + 1] <= s->offsets[i])
            st = lu_errorf(LU_ERR_FORMAT, "feature store %s: utterance %lld has no frames", path, (long long)i);
    if (!st && H5Aexists(f, "features") > 0) {
        hid_t a = H5Aopen(f, "features", H5P_DEFAULT), t = utf8_type();
        char *v = NULL;
        if (a >= 0 && H5Aread(a, t, &v) >= 0 && v) snprintf(s->features, sizeof s->features, "%s", v);
        if (v) H5free_memory(v);
        H5Tclose(t);
        if (a >= 0) H5Aclose(a);
    }
    if (!st && H5Aexists(f, "sample_rate") > 0) {
        hid_t a = H5Aopen(f, "sample_rate", H5P_DEFAULT);
        if (a >= 0) H5Aread(a, H5T_NATIVE_INT, &s->sample_rate), H5Aclose(a);
    }
    if (st) lu_asr_store_close(s);
    return st;
}

lu_status lu_asr_store_read(const lu_asr_store *s, int64_t i, float *out)
{
    if (i < 0 || i >= s->n) return lu_errorf(LU_ERR_INVALID, "feature store: utterance %lld out of range [0, %lld)", (long long)i, (long long)s->n);
    hsize_t start[2] = {(hsize_t)s->offsets[i], 0}, count[2] = {(hsize_t)lu_asr_store_frames(s, i), (hsize_t)s->dim};
    hid_t fs = H5Dget_space(s->feats), ms = H5Screate_simple(2, count, NULL);
    herr_t r = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (r >= 0) r = H5Dread(s->feats, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, out);
    H5Sclose(ms);
    H5Sclose(fs);
    if (r < 0) return lu_errorf(LU_ERR_IO, "feature store: cannot read utterance %lld", (long long)i);
    return LU_OK;
}

void lu_asr_store_close(lu_asr_store *s)
{
    for (int64_t i = 0; i < s->n; i++) {
        if (s->text) free(s->text[i]);
        if (s->speaker) free(s->speaker[i]);
    }
    free(s->text);
    free(s->speaker);
    free(s->offsets);
    free(s->duration);
    if (s->feats >= 0) H5Dclose(s->feats);
    if (s->file >= 0) H5Fclose(s->file);
    memset(s, 0, sizeof *s);
    s->file = s->feats = -1;
}

/* ---- duration-bucketed batches -------------------------------------------------------------- */

typedef struct len_id { int64_t len, id; } len_id;

static int by_length(const void *a, const void *b)
{
    const len_id *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

lu_status lu_asr_buckets_make(const int64_t *frames, int64_t n, int64_t max_frames, uint64_t seed, lu_asr_buckets *b)
{
    memset(b, 0, sizeof *b);
    if (n < 1 || max_frames < 1)
        return lu_errorf(LU_ERR_INVALID, "asr buckets: need >= 1 utterance and max_frames >= 1, got %lld and %lld",
                         (long long)n, (long long)max_frames);
    b->order = malloc((size_t)n * sizeof *b->order);
    b->start = malloc((size_t)(n + 1) * sizeof *b->start);
    b->perm = malloc((size_t)n * sizeof *b->perm);
    len_id *sorted = malloc((size_t)n * sizeof *sorted);
    if (!b->order || !b->start || !b->perm || !sorted) {
        free(sorted);
        lu_asr_buckets_free(b);
        return lu_errorf(LU_ERR_NOMEM, "asr buckets: out of memory");
    }
    for (int64_t i = 0; i < n; i++) sorted[i] = (len_id){frames[i], i};
    qsort(sorted, (size_t)n, sizeof *sorted, by_length);
    for (int64_t i = 0; i < n; i++) b->order[i] = sorted[i].id;
    free(sorted);
    /* Sorted ascending, so the batch's longest is its last: count x frames[last] is its padded size. */
    int64_t nb = 0, first = 0;
    b->start[0] = 0;
    for (int64_t i = 1; i <= n; i++)
        if (i == n || (i - first + 1) * frames[b->order[i]] > max_frames) {
            b->start[++nb] = i;
            first = i;
        }
    b->n_batches = nb;
    b->seed = seed;
    b->perm_epoch = -1;
    return LU_OK;
}

void lu_asr_buckets_at(lu_asr_buckets *b, int64_t position, const int64_t **ids, int64_t *count)
{
    int64_t epoch = position / b->n_batches, k = position % b->n_batches;
    if (b->perm_epoch != epoch) {
        /* Fisher-Yates driven by Philox(seed, epoch), as the bytelm task shuffles its windows. */
        for (int64_t i = 0; i < b->n_batches; i++) b->perm[i] = i;
        for (int64_t i = b->n_batches - 1; i > 0; i--) {
            int64_t j = (int64_t)(lu_rng_uniform(b->seed, (uint64_t)epoch, 0xa5b0, (uint64_t)i) * (double)(i + 1));
            if (j > i) j = i;
            int64_t t = b->perm[i];
            b->perm[i] = b->perm[j];
            b->perm[j] = t;
        }
        b->perm_epoch = epoch;
    }
    int64_t batch = b->perm[k];
    *ids = b->order + b->start[batch];
    *count = b->start[batch + 1] - b->start[batch];
}

void lu_asr_buckets_free(lu_asr_buckets *b)
{
    free(b->order);
    free(b->start);
    free(b->perm);
    memset(b, 0, sizeof *b);
}
