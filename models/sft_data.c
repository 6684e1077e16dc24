/* sft_data.c - chat JSONL -> packed SFT shards, and their reader (see sft_data.h). */
#define _XOPEN_SOURCE 700
#include "models/sft_data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/rng.h"
#include "models/chat_template.h"

#define PATH_LEN 4096
#define MAX_MESSAGES 1024

/* ---- packing -------------------------------------------------------------------------------- */

bool lu_sft_pack_append(int32_t *input_ids, int32_t *labels, int32_t *cu, int *n_cu, int64_t *used, int64_t seq_len,
                        const int32_t *ids, const uint8_t *mask, int64_t n)
{
    if (n <= 0 || *used + n > seq_len) return false;
    if (*n_cu == 0) cu[(*n_cu)++] = 0;
    for (int64_t t = 0; t < n; t++) {
        input_ids[*used + t] = ids[t];
        labels[*used + t] = mask[t] && t > 0 ? ids[t] : -100;
    }
    *used += n;
    cu[(*n_cu)++] = (int32_t)*used;
    return true;
}

void lu_sft_pack_finish(int32_t *input_ids, int32_t *labels, int32_t *cu, int *n_cu, int64_t used, int64_t seq_len,
                        int32_t pad_id)
{
    if (*n_cu == 0) cu[(*n_cu)++] = 0;
    for (int64_t t = used; t < seq_len; t++) {
        input_ids[t] = pad_id;
        labels[t] = -100;
    }
    if (used < seq_len) cu[(*n_cu)++] = (int32_t)seq_len;
}

/* ---- parsing -------------------------------------------------------------------------------- */

/* Messages of one JSONL line; the strings point into *root (caller deletes it). NULL message on
 * success, otherwise what is wrong. */
static const char *parse_line(const char *line, cJSON **root, lu_chat_message *m, int *n)
{
    *root = cJSON_Parse(line);
    if (!*root) return "invalid JSON";
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(*root, "messages");
    if (!cJSON_IsArray(msgs)) return "no \"messages\" array";
    *n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs)
    {
        if (*n == MAX_MESSAGES) return "more than 1024 messages";
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsString(role) || !cJSON_IsString(content)) return "a message without string \"role\" and \"content\"";
        const cJSON *rc = cJSON_GetObjectItemCaseSensitive(it, "reasoning_content");
        m[*n] = (lu_chat_message){.role = role->valuestring, .content = content->valuestring,
                                  .reasoning = cJSON_IsString(rc) ? rc->valuestring : NULL};
        (*n)++;
    }
    if (*n == 0) return "empty \"messages\" array";
    return NULL;
}

/* ---- files ---------------------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static lu_status make_dir(const char *path)
{
    if (mkdir(path, 0755) && errno != EEXIST) return lu_errorf(LU_ERR_IO, "sft data: cannot create %s: %s", path, strerror(errno));
    return LU_OK;
}

static lu_status write_shard(const char *path, const int32_t *ids, const int32_t *labels, int64_t n_seq,
                             int64_t seq_len, const int32_t *cu, int64_t n_cu, const int64_t *cu_off, int32_t pad_id)
{
    hid_t f = H5Fcreate(path, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return lu_errorf(LU_ERR_IO, "sft data: cannot create %s", path);
    struct { const char *name; int rank; hsize_t dims[2]; hid_t type; const void *data; } sets[] = {
        {"input_ids", 2, {(hsize_t)n_seq, (hsize_t)seq_len}, H5T_NATIVE_INT32, ids},
        {"labels", 2, {(hsize_t)n_seq, (hsize_t)seq_len}, H5T_NATIVE_INT32, labels},
        {"cu_seqlens", 1, {(hsize_t)n_cu, 0}, H5T_NATIVE_INT32, cu},
        {"cu_offsets", 1, {(hsize_t)n_seq + 1, 0}, H5T_NATIVE_INT64, cu_off},
    };
    bool ok = true;
    for (size_t i = 0; i < sizeof sets / sizeof sets[0] && ok; i++) {
        hid_t sp = H5Screate_simple(sets[i].rank, sets[i].dims, NULL);
        hid_t d = sp < 0 ? -1 : H5Dcreate2(f, sets[i].name, sets[i].type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        ok = d >= 0 && H5Dwrite(d, sets[i].type, H5S_ALL, H5S_ALL, H5P_DEFAULT, sets[i].data) >= 0;
        if (d >= 0) H5Dclose(d);
        if (sp >= 0) H5Sclose(sp);
    }
    int64_t attrs[2] = {seq_len, pad_id};
    const char *attr_names[2] = {"seq_len", "pad_id"};
    for (int i = 0; i < 2 && ok; i++) {
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(f, attr_names[i], H5T_NATIVE_INT64, sp, H5P_DEFAULT, H5P_DEFAULT);
        ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &attrs[i]) >= 0;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp);
    }
    ok = H5Fclose(f) >= 0 && ok;
    if (!ok) return lu_errorf(LU_ERR_IO, "sft data: cannot write %s", path);
    return LU_OK;
}

/* ---- the pipeline --------------------------------------------------------------------------- */

/* One kept sample in the scratch file: ids (i32) then mask (u8), n tokens at byte `offset`. */
typedef struct sample_ref {
    int64_t offset;
    int32_t n;
    int32_t valid;
} sample_ref;

typedef struct prep {
    const lu_sft_options *o;
    lu_sft_stats *st;
    char tmp[PATH_LEN];
    FILE *scratch;
    sample_ref *refs;
    int64_t n_refs, cap_refs;
    int64_t scratch_bytes;
} prep;

static lu_status scan_input(prep *p)
{
    const lu_sft_options *o = p->o;
    FILE *in = fopen(o->input, "rb");
    if (!in) return lu_errorf(LU_ERR_IO, "sft data: cannot open %s: %s", o->input, strerror(errno));
    lu_chat_message *msgs = malloc(MAX_MESSAGES * sizeof *msgs);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t line_no = 0, index = 0;
    lu_status s = msgs ? LU_OK : lu_errorf(LU_ERR_NOMEM, "sft data: out of memory");
    while (!s && (len = getline(&line, &cap, in)) >= 0) {
        line_no++;
        bool blank = true;
        for (ssize_t i = 0; i < len && blank; i++) blank = line[i] == ' ' || line[i] == '\t' || line[i] == '\n' || line[i] == '\r';
        if (blank) continue;
        p->st->lines++;
        cJSON *root = NULL;
        int n_msgs = 0;
        const char *why = parse_line(line, &root, msgs, &n_msgs);
        int32_t *ids = NULL;
        uint8_t *mask = NULL;
        int64_t n = 0;
        char detail[512] = "";
        if (!why && lu_chat_encode(o->tok, msgs, n_msgs, o->train_think, &ids, &mask, &n)) {
            snprintf(detail, sizeof detail, "%s", lu_error_message());
            why = detail;
        }
        cJSON_Delete(root);
        if (why) {
            if (!o->skip_malformed) {
                s = lu_errorf(LU_ERR_INVALID, "%s:%lld: %s", o->input, (long long)line_no, why);
            } else {
                if (o->log) fprintf(o->log, "%s:%lld: %s (skipped)\n", o->input, (long long)line_no, why);
                p->st->malformed++;
                if (!p->st->first_malformed_line) p->st->first_malformed_line = line_no;
            }
            continue;
        }
        bool valid = lu_rng_uniform(o->seed, (uint64_t)index, LU_SFT_SPLIT_STREAM, 0) < o->valid_fraction;
        index++;
        lu_sft_split_stats *ss = valid ? &p->st->valid : &p->st->train;
        int64_t keep = n;
        if (n > o->seq_len) keep = o->drop_overlong ? 0 : o->seq_len;
        int64_t targets = 0;
        for (int64_t t = 1; t < keep; t++) targets += mask[t];
        if (targets == 0) {
            ss->dropped_samples++;
            ss->dropped_tokens += n;
        } else {
            if (keep < n) {
                ss->truncated_samples++;
                ss->truncated_tokens += n - keep;
            }
            ss->samples++;
            ss->tokens += keep;
            ss->target_tokens += targets;
            if (p->n_refs == p->cap_refs) {
                int64_t nc = p->cap_refs ? 2 * p->cap_refs : 1024;
                sample_ref *r = realloc(p->refs, (size_t)nc * sizeof *r);
                if (!r) s = lu_errorf(LU_ERR_NOMEM, "sft data: out of memory");
                else p->refs = r, p->cap_refs = nc;
            }
            if (!s) {
                p->refs[p->n_refs++] = (sample_ref){.offset = p->scratch_bytes, .n = (int32_t)keep, .valid = valid};
                if (fwrite(ids, 4, (size_t)keep, p->scratch) != (size_t)keep || fwrite(mask, 1, (size_t)keep, p->scratch) != (size_t)keep)
                    s = lu_errorf(LU_ERR_IO, "sft data: cannot write the scratch file in %s", p->tmp);
                p->scratch_bytes += 5 * keep;
            }
        }
        free(ids);
        free(mask);
    }
    if (!s && ferror(in)) s = lu_errorf(LU_ERR_IO, "sft data: cannot read %s", o->input);
    free(line);
    free(msgs);
    fclose(in);
    return s;
}

/* Shuffles one split's samples and writes its packed shards into tmp/<split>/. */
static lu_status pack_split(prep *p, bool valid, lu_sft_split_stats *ss)
{
    const lu_sft_options *o = p->o;
    int64_t T = o->seq_len, n = 0;
    for (int64_t i = 0; i < p->n_refs; i++) n += p->refs[i].valid == valid;
    if (n == 0) return LU_OK;
    char dir[PATH_LEN + 8], path[PATH_LEN + 40];
    snprintf(dir, sizeof dir, "%s/%s", p->tmp, valid ? "valid" : "train");
    LU_TRY(make_dir(dir));
    int64_t per_shard = o->shard_tokens / T > 0 ? o->shard_tokens / T : 1;
    int64_t *order = malloc((size_t)n * sizeof *order);
    int32_t *ids = malloc((size_t)(per_shard * T) * sizeof *ids), *labels = malloc((size_t)(per_shard * T) * sizeof *labels);
    int32_t *cu = malloc((size_t)(per_shard * (T + 1)) * sizeof *cu);
    int64_t *cu_off = malloc((size_t)(per_shard + 1) * sizeof *cu_off);
    int32_t *sid = malloc((size_t)T * sizeof *sid);
    uint8_t *smask = malloc((size_t)T);
    lu_status s = order && ids && labels && cu && cu_off && sid && smask ? LU_OK : lu_errorf(LU_ERR_NOMEM, "sft data: out of memory");
    for (int64_t i = 0, k = 0; !s && i < p->n_refs; i++)
        if (p->refs[i].valid == valid) order[k++] = i;
    /* Fisher-Yates driven by Philox(seed), one stream per split. */
    for (int64_t i = n - 1; !s && i > 0; i--) {
        int64_t j = (int64_t)(lu_rng_uniform(o->seed, (uint64_t)valid, LU_SFT_SHUFFLE_STREAM, (uint64_t)i) * (double)(i + 1));
        if (j > i) j = i;
        int64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int64_t n_seq = 0, n_cu = 0, used = 0;
    int seq_cu = 0;
    cu_off[0] = 0;
    for (int64_t k = 0; !s && k <= n; k++) {
        const sample_ref *r = k < n ? &p->refs[order[k]] : NULL;
        if (r && (fseeko(p->scratch, r->offset, SEEK_SET) || fread(sid, 4, (size_t)r->n, p->scratch) != (size_t)r->n ||
                  fread(smask, 1, (size_t)r->n, p->scratch) != (size_t)r->n)) {
            s = lu_errorf(LU_ERR_IO, "sft data: cannot read the scratch file in %s", p->tmp);
            break;
        }
        int32_t *row = ids + n_seq * T, *lab = labels + n_seq * T;
        if (r && lu_sft_pack_append(row, lab, cu + n_cu, &seq_cu, &used, T, sid, smask, r->n)) continue;
        /* The sample does not fit (or the input ended): close this sequence. */
        if (used > 0) {
            lu_sft_pack_finish(row, lab, cu + n_cu, &seq_cu, used, T, o->pad_id);
            n_cu += seq_cu;
            cu_off[++n_seq] = n_cu;
            seq_cu = 0;
            used = 0;
            ss->sequences++;
        }
        if (n_seq == per_shard || (!r && n_seq > 0)) {
            snprintf(path, sizeof path, "%s/shard-%05lld.h5", dir, (long long)ss->shards);
            s = write_shard(path, ids, labels, n_seq, T, cu, n_cu, cu_off, o->pad_id);
            ss->shards++;
            n_seq = n_cu = 0;
        }
        if (r && !s) {
            row = ids + n_seq * T, lab = labels + n_seq * T;
            lu_sft_pack_append(row, lab, cu + n_cu, &seq_cu, &used, T, sid, smask, r->n);
        }
    }
    free(order), free(ids), free(labels), free(cu), free(cu_off), free(sid), free(smask);
    return s;
}

static void add_split(cJSON *root, const char *name, const lu_sft_split_stats *s)
{
    cJSON *o = cJSON_AddObjectToObject(root, name);
    if (!o) return;
    cJSON_AddNumberToObject(o, "samples", (double)s->samples);
    cJSON_AddNumberToObject(o, "tokens", (double)s->tokens);
    cJSON_AddNumberToObject(o, "target_tokens", (double)s->target_tokens);
    cJSON_AddNumberToObject(o, "truncated_samples", (double)s->truncated_samples);
    cJSON_AddNumberToObject(o, "truncated_tokens", (double)s->truncated_tokens);
    cJSON_AddNumberToObject(o, "dropped_samples", (double)s->dropped_samples);
    cJSON_AddNumberToObject(o, "dropped_tokens", (double)s->dropped_tokens);
    cJSON_AddNumberToObject(o, "sequences", (double)s->sequences);
    cJSON_AddNumberToObject(o, "shards", (double)s->shards);
}

static lu_status write_summary(const prep *p)
{
    const lu_sft_options *o = p->o;
    cJSON *root = cJSON_CreateObject();
    if (!root) return lu_errorf(LU_ERR_NOMEM, "sft data: out of memory");
    cJSON_AddStringToObject(root, "input", o->input);
    cJSON_AddStringToObject(root, "tokenizer", o->tokenizer_name ? o->tokenizer_name : "");
    cJSON_AddNumberToObject(root, "vocab_size", (double)lu_tokenizer_vocab_size(o->tok));
    cJSON_AddNumberToObject(root, "seq_len", (double)o->seq_len);
    cJSON_AddNumberToObject(root, "seed", (double)o->seed);
    cJSON_AddNumberToObject(root, "valid_fraction", o->valid_fraction);
    cJSON_AddStringToObject(root, "overlong", o->drop_overlong ? "drop" : "truncate");
    cJSON_AddBoolToObject(root, "train_think", o->train_think);
    cJSON_AddNumberToObject(root, "pad_id", o->pad_id);
    int32_t im_end = lu_tokenizer_token_id(o->tok, "<|im_end|>");
    if (im_end >= 0) cJSON_AddNumberToObject(root, "im_end_id", im_end);
    cJSON_AddNumberToObject(root, "lines", (double)p->st->lines);
    cJSON_AddNumberToObject(root, "malformed_lines", (double)p->st->malformed);
    add_split(root, "train", &p->st->train);
    add_split(root, "valid", &p->st->valid);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    char path[PATH_LEN + 16];
    snprintf(path, sizeof path, "%s/summary.json", p->tmp);
    FILE *f = text ? fopen(path, "w") : NULL;
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f) ok = fclose(f) == 0 && ok;
    free(text);
    if (!ok) return lu_errorf(LU_ERR_IO, "sft data: cannot write %s", path);
    return LU_OK;
}

lu_status lu_sft_prepare(const lu_sft_options *o, lu_sft_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    if (o->seq_len < 2 || o->seq_len > INT32_MAX)
        return lu_errorf(LU_ERR_INVALID, "sft data: seq_len must be in [2, 2^31), got %lld", (long long)o->seq_len);
    if (!(o->valid_fraction >= 0 && o->valid_fraction < 1))
        return lu_errorf(LU_ERR_INVALID, "sft data: valid_fraction must be in [0, 1), got %g", o->valid_fraction);
    if (o->shard_tokens < 1) return lu_errorf(LU_ERR_INVALID, "sft data: shard_tokens must be positive");
    struct stat sb;
    if (stat(o->out_dir, &sb) == 0) return lu_errorf(LU_ERR_IO, "sft data: %s already exists (choose a new --out)", o->out_dir);
    prep p = {.o = o, .st = stats};
    if (snprintf(p.tmp, sizeof p.tmp, "%s.tmp.%d", o->out_dir, (int)getpid()) >= (int)sizeof p.tmp)
        return lu_errorf(LU_ERR_IO, "sft data: path too long: %s", o->out_dir);
    remove_tree(p.tmp);
    LU_TRY(make_dir(p.tmp));
    char scratch[PATH_LEN + 16];
    snprintf(scratch, sizeof scratch, "%s/scratch.bin", p.tmp);
    p.scratch = fopen(scratch, "w+b");
    lu_status s = p.scratch ? LU_OK : lu_errorf(LU_ERR_IO, "sft data: cannot create %s: %s", scratch, strerror(errno));
    if (!s) s = scan_input(&p);
    if (!s && fflush(p.scratch)) s = lu_errorf(LU_ERR_IO, "sft data: cannot write %s", scratch);
    if (!s) s = pack_split(&p, false, &stats->train);
    if (!s) s = pack_split(&p, true, &stats->valid);
    if (p.scratch) fclose(p.scratch);
    remove(scratch);
    free(p.refs);
    if (!s && stats->train.sequences == 0)
        s = lu_errorf(LU_ERR_INVALID, "sft data: %s yields no training sample (%lld lines, %lld malformed)", o->input,
                      (long long)stats->lines, (long long)stats->malformed);
    if (!s) s = write_summary(&p);
    if (!s && rename(p.tmp, o->out_dir)) s = lu_errorf(LU_ERR_IO, "sft data: cannot rename %s to %s: %s", p.tmp, o->out_dir, strerror(errno));
    if (s) remove_tree(p.tmp);
    return s;
}

/* ---- reader --------------------------------------------------------------------------------- */

typedef struct shard {
    hid_t file, ids, labels;
    int64_t n;
    int32_t *cu;
    int64_t *cu_off;
} shard;

struct lu_sft_data {
    shard *shards;
    int n_shards;
    int64_t n, seq_len;
};

void lu_sft_data_close(lu_sft_data *d)
{
    if (!d) return;
    for (int i = 0; i < d->n_shards; i++) {
        shard *s = &d->shards[i];
        if (s->ids >= 0) H5Dclose(s->ids);
        if (s->labels >= 0) H5Dclose(s->labels);
        if (s->file >= 0) H5Fclose(s->file);
        free(s->cu);
        free(s->cu_off);
    }
    free(d->shards);
    free(d);
}

/* Reads a whole 1-D dataset of `type` into a new array of *n elements. */
static void *read_vector(hid_t f, const char *name, hid_t type, size_t elem, hsize_t *n)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t sp = H5Dget_space(d);
    *n = 0;
    void *buf = NULL;
    if (H5Sget_simple_extent_ndims(sp) == 1) {
        H5Sget_simple_extent_dims(sp, n, NULL);
        buf = malloc(*n * elem + 1);
        if (buf && H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
            free(buf);
            buf = NULL;
        }
    }
    H5Sclose(sp);
    H5Dclose(d);
    return buf;
}

static lu_status open_shard(shard *s, const char *path, int64_t *seq_len)
{
    s->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (s->file < 0) return lu_errorf(LU_ERR_IO, "sft data: cannot open %s", path);
    s->ids = H5Dopen2(s->file, "input_ids", H5P_DEFAULT);
    s->labels = H5Dopen2(s->file, "labels", H5P_DEFAULT);
    hsize_t dims[2] = {0, 0}, ldims[2] = {0, 0}, n_cu = 0, n_off = 0;
    if (s->ids < 0 || s->labels < 0) return lu_errorf(LU_ERR_FORMAT, "sft data: %s lacks input_ids or labels", path);
    hid_t sp = H5Dget_space(s->ids), lsp = H5Dget_space(s->labels);
    int rank = H5Sget_simple_extent_ndims(sp), lrank = H5Sget_simple_extent_ndims(lsp);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sget_simple_extent_dims(lsp, ldims, NULL);
    H5Sclose(sp);
    H5Sclose(lsp);
    if (rank != 2 || lrank != 2 || dims[0] != ldims[0] || dims[1] != ldims[1] || (*seq_len && (int64_t)dims[1] != *seq_len))
        return lu_errorf(LU_ERR_FORMAT, "sft data: %s: input_ids and labels must be [N, %lld] alike", path, (long long)*seq_len);
    *seq_len = (int64_t)dims[1];
    s->n = (int64_t)dims[0];
    s->cu = read_vector(s->file, "cu_seqlens", H5T_NATIVE_INT32, 4, &n_cu);
    s->cu_off = read_vector(s->file, "cu_offsets", H5T_NATIVE_INT64, 8, &n_off);
    if (!s->cu || !s->cu_off || (int64_t)n_off != s->n + 1)
        return lu_errorf(LU_ERR_FORMAT, "sft data: %s: cu_seqlens / cu_offsets [%lld] missing or not [N+1] = [%lld]", path,
                         (long long)n_off, (long long)s->n + 1);
    for (int64_t i = 0; i < s->n; i++) {
        int64_t a = s->cu_off[i], b = s->cu_off[i + 1];
        if (a < 0 || b < a + 2 || b > (int64_t)n_cu || b - a > *seq_len + 1 || s->cu[a] != 0 || s->cu[b - 1] != *seq_len)
            return lu_errorf(LU_ERR_FORMAT, "sft data: %s: cu_seqlens of sequence %lld do not run from 0 to %lld", path,
                             (long long)i, (long long)*seq_len);
    }
    return LU_OK;
}

lu_sft_data *lu_sft_data_open(const char *dir, const char *split)
{
    lu_sft_data *d = calloc(1, sizeof *d);
    if (!d) {
        lu_errorf(LU_ERR_NOMEM, "sft data: out of memory");
        return NULL;
    }
    char path[PATH_LEN];
    for (;;) {
        snprintf(path, sizeof path, "%s/%s/shard-%05d.h5", dir, split, d->n_shards);
        if (access(path, R_OK)) break;
        shard *ns = realloc(d->shards, (size_t)(d->n_shards + 1) * sizeof *ns);
        if (!ns) {
            lu_errorf(LU_ERR_NOMEM, "sft data: out of memory");
            lu_sft_data_close(d);
            return NULL;
        }
        d->shards = ns;
        shard *s = &d->shards[d->n_shards++];
        *s = (shard){.file = -1, .ids = -1, .labels = -1};
        if (open_shard(s, path, &d->seq_len)) {
            lu_sft_data_close(d);
            return NULL;
        }
        d->n += s->n;
    }
    if (d->n == 0) {
        lu_errorf(LU_ERR_IO, "sft data: no %s sequences in %s (expected %s/%s/shard-00000.h5; run `luthier data prepare-chat`)",
                  split, dir, dir, split);
        lu_sft_data_close(d);
        return NULL;
    }
    return d;
}

int64_t lu_sft_data_count(const lu_sft_data *d)
{
    return d->n;
}

int64_t lu_sft_data_seq_len(const lu_sft_data *d)
{
    return d->seq_len;
}

static bool read_row(hid_t set, int64_t row, int64_t T, int32_t *out)
{
    hid_t sp = H5Dget_space(set);
    hsize_t start[2] = {(hsize_t)row, 0}, count[2] = {1, (hsize_t)T}, mdims[1] = {(hsize_t)T};
    hid_t mem = H5Screate_simple(1, mdims, NULL);
    bool ok = H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
              H5Dread(set, H5T_NATIVE_INT32, mem, sp, H5P_DEFAULT, out) >= 0;
    H5Sclose(mem);
    H5Sclose(sp);
    return ok;
}

lu_status lu_sft_data_read(lu_sft_data *d, int64_t i, int32_t *ids, int32_t *labels, int32_t *cu, int *n_cu)
{
    if (i < 0 || i >= d->n)
        return lu_errorf(LU_ERR_INVALID, "sft data: sequence %lld out of range [0, %lld)", (long long)i, (long long)d->n);
    int k = 0;
    while (i >= d->shards[k].n) i -= d->shards[k++].n;
    shard *s = &d->shards[k];
    if (!read_row(s->ids, i, d->seq_len, ids) || !read_row(s->labels, i, d->seq_len, labels))
        return lu_errorf(LU_ERR_IO, "sft data: cannot read sequence %lld of shard %d", (long long)i, k);
    *n_cu = (int)(s->cu_off[i + 1] - s->cu_off[i]);
    memcpy(cu, s->cu + s->cu_off[i], (size_t)*n_cu * sizeof *cu);
    return LU_OK;
}

/* A number of DIR/summary.json; -1 when absent (an error names the key). */
static int64_t summary_int(const char *dir, const char *key)
{
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        lu_errorf(LU_ERR_IO, "sft data: cannot open %s", path);
        return -1;
    }
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *root = cJSON_Parse(buf);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    int64_t out = cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
    cJSON_Delete(root);
    if (out < 0) lu_errorf(LU_ERR_FORMAT, "sft data: %s has no \"%s\"", path, key);
    return out;
}

int64_t lu_sft_data_vocab_size(const char *dir)
{
    int64_t v = summary_int(dir, "vocab_size");
    if (v == 0) lu_errorf(LU_ERR_FORMAT, "sft data: %s/summary.json has no positive \"vocab_size\"", dir);
    return v > 0 ? v : -1;
}

int64_t lu_sft_data_im_end_id(const char *dir) { return summary_int(dir, "im_end_id"); }
