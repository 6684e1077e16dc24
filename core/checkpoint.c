/* checkpoint.c - HDF5 training checkpoints (layout and guarantees in checkpoint.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate */
#endif
#include "checkpoint.h"

#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* HDF5 prints its error stack to stderr by default; luthier reports errors itself. */
static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* '%' -> "%25", '/' -> "%2F" (a '/' would make a nested HDF5 path). Caller frees. */
static char *escape_name(const char *name)
{
    size_t n = strlen(name), k = 0;
    char *e = malloc(3 * n + 1);
    if (!e) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (name[i] == '%' || name[i] == '/') {
            e[k++] = '%';
            e[k++] = '2';
            e[k++] = name[i] == '%' ? '5' : 'F';
        } else {
            e[k++] = name[i];
        }
    }
    e[k] = 0;
    return e;
}

/* The inverse of escape_name, in place. */
static void unescape_name(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (r[0] == '%' && r[1] == '2' && (r[2] == 'F' || r[2] == '5')) {
            *w++ = r[2] == 'F' ? '/' : '%';
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
}

/* Memory and file types of a luthier dtype; bf16/f16 travel as uint16, bool as uint8. */
static void h5_types(lu_dtype dt, hid_t *mem, hid_t *file)
{
    switch (dt) {
    case LU_F32: *mem = H5T_NATIVE_FLOAT, *file = H5T_IEEE_F32LE; break;
    case LU_F64: *mem = H5T_NATIVE_DOUBLE, *file = H5T_IEEE_F64LE; break;
    case LU_BF16:
    case LU_F16: *mem = H5T_NATIVE_UINT16, *file = H5T_STD_U16LE; break;
    case LU_I32: *mem = H5T_NATIVE_INT32, *file = H5T_STD_I32LE; break;
    case LU_I64: *mem = H5T_NATIVE_INT64, *file = H5T_STD_I64LE; break;
    default: *mem = H5T_NATIVE_UINT8, *file = H5T_STD_U8LE; break;
    }
}

/* The type of every string attribute luthier writes: variable-length UTF-8. Caller closes;
 * < 0 on failure. */
static hid_t vlstr_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* Reads string attribute `name` of obj into a malloc'ed copy (*out), or NULL when absent. */
static lu_status read_string_attr(hid_t obj, const char *name, char **out)
{
    *out = NULL;
    if (H5Aexists(obj, name) <= 0) return LU_OK;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = vlstr_type(), ft = a >= 0 ? H5Aget_type(a) : -1;
    char *v = NULL;
    lu_status s = LU_OK;
    /* Read ASCII strings (other writers) as ASCII: HDF5 does not convert character sets. */
    if (ft >= 0 && t >= 0 && H5Tget_class(ft) == H5T_STRING) H5Tset_cset(t, H5Tget_cset(ft));
    if (ft >= 0) H5Tclose(ft);
    if (a < 0 || t < 0 || H5Aread(a, t, &v) < 0 || !v) s = lu_errorf(LU_ERR_FORMAT, "cannot read attribute '%s'", name);
    else if (!(*out = strdup(v))) s = lu_errorf(LU_ERR_NOMEM, "out of memory");
    if (v) H5free_memory(v);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    return s;
}

/* ---- save ----------------------------------------------------------------------------------- */

static lu_status write_string_attr(hid_t obj, const char *name, const char *value)
{
    hid_t type = vlstr_type(), space = H5Screate(H5S_SCALAR), attr = -1;
    herr_t e = -1;
    if (type >= 0 && space >= 0 && (attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0)
        e = H5Awrite(attr, type, &value);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return e < 0 ? lu_errorf(LU_ERR_IO, "cannot write attribute '%s'", name) : LU_OK;
}

static lu_status write_scalar_attr(hid_t obj, const char *name, hid_t type, const void *value)
{
    hid_t space = H5Screate(H5S_SCALAR), attr = -1;
    herr_t e = -1;
    if (space >= 0 && (attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0)
        e = H5Awrite(attr, type, value);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return e < 0 ? lu_errorf(LU_ERR_IO, "cannot write attribute '%s'", name) : LU_OK;
}

static lu_status write_tensor(hid_t group, const char *name, const lu_tensor *t)
{
    char *ename = escape_name(name);
    if (!ename) return lu_errorf(LU_ERR_NOMEM, "out of memory");
    hsize_t dims[LU_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) dims[i] = (hsize_t)t->shape[i];
    hid_t mem, file;
    h5_types(t->dtype, &mem, &file);
    void *host = NULL;
    const void *data = lu_tensor_data(t);
    lu_status s = LU_OK;
    if (lu_tensor_device(t) != LU_CPU || !lu_tensor_is_contiguous(t)) {
        host = malloc(lu_tensor_nbytes(t) + 1);
        if (!host) s = lu_errorf(LU_ERR_NOMEM, "out of memory for tensor '%s'", name);
        else s = lu_tensor_to_host(t, t->dtype, host);
        data = host;
    }
    hid_t space = -1, ds = -1;
    if (!s) {
        space = t->ndim ? H5Screate_simple(t->ndim, dims, NULL) : H5Screate(H5S_SCALAR);
        ds = space >= 0 ? H5Dcreate2(group, ename, file, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
        if (ds < 0 || H5Dwrite(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
            s = lu_errorf(LU_ERR_IO, "cannot write tensor '%s'", name);
        else s = write_string_attr(ds, "dtype", lu_dtype_name(t->dtype));
    }
    if (ds >= 0) H5Dclose(ds);
    if (space >= 0) H5Sclose(space);
    free(host);
    free(ename);
    return s;
}

static lu_status write_store(hid_t file, const char *group_name, const lu_params *p, const char *optimizer)
{
    hid_t g = H5Gcreate2(file, group_name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return lu_errorf(LU_ERR_IO, "cannot create group /%s", group_name);
    lu_status s = optimizer ? write_string_attr(g, "optimizer", optimizer) : LU_OK;
    for (int i = 0; i < p->n && !s; i++) s = write_tensor(g, p->items[i].name, p->items[i].t);
    H5Gclose(g);
    return s;
}

static lu_status write_meta(hid_t file, const lu_ckpt_meta *meta)
{
    lu_ckpt_meta zero = {0};
    if (!meta) meta = &zero;
    hid_t g = H5Gcreate2(file, "meta", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return lu_errorf(LU_ERR_IO, "cannot create group /meta");
    int version = LU_CKPT_FORMAT_VERSION;
    lu_status s = write_scalar_attr(g, "format_version", H5T_NATIVE_INT, &version);
    if (!s) s = write_scalar_attr(g, "step", H5T_NATIVE_INT64, &meta->step);
    if (!s) s = write_scalar_attr(g, "epoch", H5T_NATIVE_INT64, &meta->epoch);
    if (!s) s = write_scalar_attr(g, "data_position", H5T_NATIVE_INT64, &meta->data_position);
    if (!s) s = write_scalar_attr(g, "rng_seed", H5T_NATIVE_UINT64, &meta->rng_seed);
    if (!s && meta->config_text) s = write_string_attr(g, "config", meta->config_text);
    H5Gclose(g);
    return s;
}

static lu_status fsync_path(const char *path, int flags)
{
    int fd = open(path, flags);
    if (fd < 0) return lu_errorf(LU_ERR_IO, "cannot open '%s' to sync it: %s", path, strerror(errno));
    int r = fsync(fd);
    int err = errno;
    close(fd);
    return r ? lu_errorf(LU_ERR_IO, "cannot sync '%s': %s", path, strerror(err)) : LU_OK;
}

/* An upper bound on the file size: the tensors' bytes, plus room for each dataset's header and
 * attribute, the config text and the superblock. */
static off_t size_bound(const lu_params *params, lu_optim *optim, const lu_ckpt_meta *meta)
{
    off_t bytes = 1 << 20;
    const lu_params *stores[2] = {params, optim ? lu_optim_state(optim) : NULL};
    for (int k = 0; k < 2; k++)
        for (int i = 0; stores[k] && i < stores[k]->n; i++)
            bytes += (off_t)lu_tensor_nbytes(stores[k]->items[i].t) + 4096;
    if (meta && meta->config_text) bytes += (off_t)strlen(meta->config_text);
    return bytes;
}

/* Creates the temporary file with `bytes` allocated, so that a full disk (or file size limit)
 * is reported here, before HDF5 writes anything: HDF5 1.10 cannot close a file whose flush
 * failed and crashes at exit. File systems without fallocate skip the check. */
static lu_status reserve_space(const char *tmp, off_t bytes)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return lu_errorf(LU_ERR_IO, "cannot create the temporary file '%s': %s", tmp, strerror(errno));
    int r = fallocate(fd, 0, 0, bytes), err = errno;
    close(fd);
    if (r != 0 && err != EOPNOTSUPP && err != ENOSYS) {
        unlink(tmp);
        return lu_errorf(LU_ERR_IO, "cannot allocate %lld bytes for '%s': %s", (long long)bytes, tmp, strerror(err));
    }
    return LU_OK;
}

lu_status lu_ckpt_save(const char *path, lu_params *params, lu_optim *optim, const lu_ckpt_meta *meta)
{
    if (!params->finalized) return lu_errorf(LU_ERR_STATE, "checkpoint '%s': the parameter store is not finalized", path);
    h5_quiet();
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp) return lu_errorf(LU_ERR_NOMEM, "checkpoint '%s': out of memory", path);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    lu_status s = reserve_space(tmp, size_bound(params, optim, meta));
    /* H5F_ACC_TRUNC gives the reserved blocks back for HDF5 to fill. */
    hid_t file = s ? -1 : H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) {
        if (!s) {
            s = lu_errorf(LU_ERR_IO, "cannot create the temporary file '%s'", tmp);
            unlink(tmp);
        }
        free(tmp);
        return lu_error_context("checkpoint '%s': ", path);
    }
    s = write_store(file, "params", params, NULL);
    if (!s && optim) s = write_store(file, "optim", lu_optim_state(optim), lu_optim_kind_name(lu_optim_get_kind(optim)));
    if (!s) s = write_meta(file, meta);
    /* Closing flushes cached metadata: a full disk may only show here. */
    if (H5Fclose(file) < 0 && !s) s = lu_errorf(LU_ERR_IO, "cannot close (flush) the file");
    if (!s) s = fsync_path(tmp, O_RDONLY);
    if (!s && rename(tmp, path) != 0) s = lu_errorf(LU_ERR_IO, "cannot rename '%s': %s", tmp, strerror(errno));
    if (!s) s = lu_file_sync_dir(path);
    else unlink(tmp);
    free(tmp);
    return s ? lu_error_context("checkpoint '%s': ", path) : LU_OK;
}

/* ---- load ----------------------------------------------------------------------------------- */

/* The dtype of a dataset: its "dtype" attribute, else inferred from the HDF5 type (files
 * written by other tools). */
static bool dataset_dtype(hid_t ds, lu_dtype *out)
{
    if (H5Aexists(ds, "dtype") > 0) {
        char *v = NULL;
        bool ok = read_string_attr(ds, "dtype", &v) == LU_OK && v && lu_dtype_parse(v, out);
        free(v);
        return ok;
    }
    hid_t t = H5Dget_type(ds);
    if (t < 0) return false;
    H5T_class_t cls = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    H5T_sign_t sign = H5Tget_sign(t);
    H5Tclose(t);
    if (cls == H5T_FLOAT && (size == 4 || size == 8)) *out = size == 4 ? LU_F32 : LU_F64;
    else if (cls == H5T_INTEGER && sign == H5T_SGN_2 && (size == 4 || size == 8)) *out = size == 4 ? LU_I32 : LU_I64;
    else if (cls == H5T_INTEGER && sign == H5T_SGN_NONE && size == 1) *out = LU_U8;
    else return false;
    return true;
}

static void shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && k < size; i++) k += (size_t)snprintf(buf + k, size - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < size) snprintf(buf + k, size - k, "]");
}

/* Checks that dataset `ename` of group g matches tensor t; returns the open dataset in *ds. */
static lu_status check_tensor(hid_t g, const char *gname, const char *name, const char *ename, const lu_tensor *t,
                              hid_t *ds)
{
    *ds = -1;
    if (H5Lexists(g, ename, H5P_DEFAULT) <= 0)
        return lu_errorf(LU_ERR_FORMAT, "tensor '%s' is missing from /%s", name, gname);
    *ds = H5Dopen2(g, ename, H5P_DEFAULT);
    if (*ds < 0) return lu_errorf(LU_ERR_FORMAT, "/%s/%s is not a readable dataset", gname, ename);
    hid_t space = H5Dget_space(*ds);
    int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    hsize_t dims[LU_MAX_DIMS];
    int64_t shape[LU_MAX_DIMS];
    if (ndim >= 0 && ndim <= LU_MAX_DIMS) H5Sget_simple_extent_dims(space, dims, NULL);
    if (space >= 0) H5Sclose(space);
    if (ndim < 0 || ndim > LU_MAX_DIMS)
        return lu_errorf(LU_ERR_FORMAT, "tensor '%s' in /%s has an unreadable shape", name, gname);
    bool same = ndim == t->ndim;
    for (int i = 0; i < ndim; i++) {
        shape[i] = (int64_t)dims[i];
        same &= i >= t->ndim || shape[i] == t->shape[i];
    }
    if (!same) {
        char a[LU_SHAPE_STR_MAX], b[LU_SHAPE_STR_MAX];
        shape_str(ndim, shape, a, sizeof a);
        return lu_errorf(LU_ERR_SHAPE, "tensor '%s' has shape %s in the file, %s in the model", name, a,
                         lu_shape_str(t, b, sizeof b));
    }
    lu_dtype dt;
    if (!dataset_dtype(*ds, &dt))
        return lu_errorf(LU_ERR_DTYPE, "tensor '%s' in /%s has a type luthier cannot read", name, gname);
    if (dt != t->dtype)
        return lu_errorf(LU_ERR_DTYPE, "tensor '%s' is %s in the file, %s in the model", name, lu_dtype_name(dt),
                         lu_dtype_name(t->dtype));
    return LU_OK;
}

static lu_status read_tensor(hid_t ds, const char *name, lu_tensor *t)
{
    hid_t mem, file;
    h5_types(t->dtype, &mem, &file);
    if (lu_tensor_device(t) == LU_CPU && lu_tensor_is_contiguous(t)) {
        if (H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, lu_tensor_data(t)) < 0)
            return lu_errorf(LU_ERR_IO, "cannot read tensor '%s' (truncated or damaged file?)", name);
        return LU_OK;
    }
    lu_tensor *host = lu_tensor_empty(t->dtype, t->ndim, t->shape, LU_CPU);
    if (!host) return lu_error_code();
    lu_status s = LU_OK;
    if (H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, lu_tensor_data(host)) < 0)
        s = lu_errorf(LU_ERR_IO, "cannot read tensor '%s' (truncated or damaged file?)", name);
    else s = lu_tensor_copy(t, host);
    lu_tensor_release(host);
    return s;
}

/* Names the first link of g that is not a tensor of p. */
static lu_status report_extra(hid_t g, const char *gname, const lu_params *p, hsize_t nlinks)
{
    for (hsize_t k = 0; k < nlinks; k++) {
        char link[1024];
        if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, k, link, sizeof link, H5P_DEFAULT) < 0) continue;
        bool known = false;
        for (int i = 0; i < p->n && !known; i++) {
            char *e = escape_name(p->items[i].name);
            known = e && !strcmp(e, link);
            free(e);
        }
        if (known) continue;
        unescape_name(link);
        return lu_errorf(LU_ERR_FORMAT, "tensor '%s' in /%s is not in the model", link, gname);
    }
    return lu_errorf(LU_ERR_FORMAT, "/%s holds %llu entries, the model %d tensors", gname, (unsigned long long)nlinks, p->n);
}

/* A group of the file opened against a store: one open dataset per tensor. */
typedef struct opened_store {
    hid_t group;
    hid_t *ds;
    lu_params *p;
} opened_store;

static void close_store(opened_store *o)
{
    for (int i = 0; o->ds && i < o->p->n; i++)
        if (o->ds[i] >= 0) H5Dclose(o->ds[i]);
    free(o->ds);
    if (o->group >= 0) H5Gclose(o->group);
}

/* Opens group gname and checks it holds exactly the tensors of p, with their shapes and dtypes. */
static lu_status open_store(hid_t file, const char *gname, lu_params *p, opened_store *o)
{
    *o = (opened_store){-1, NULL, p};
    if (H5Lexists(file, gname, H5P_DEFAULT) <= 0) return lu_errorf(LU_ERR_FORMAT, "no /%s group", gname);
    if ((o->group = H5Gopen2(file, gname, H5P_DEFAULT)) < 0) return lu_errorf(LU_ERR_FORMAT, "cannot open /%s", gname);
    if (!(o->ds = malloc(((size_t)p->n + 1) * sizeof *o->ds))) return lu_errorf(LU_ERR_NOMEM, "out of memory");
    for (int i = 0; i < p->n; i++) o->ds[i] = -1;
    for (int i = 0; i < p->n; i++) {
        char *e = escape_name(p->items[i].name);
        if (!e) return lu_errorf(LU_ERR_NOMEM, "out of memory");
        lu_status s = check_tensor(o->group, gname, p->items[i].name, e, p->items[i].t, &o->ds[i]);
        free(e);
        LU_TRY(s);
    }
    H5G_info_t info;
    if (H5Gget_info(o->group, &info) < 0) return lu_errorf(LU_ERR_FORMAT, "cannot list /%s", gname);
    if (info.nlinks != (hsize_t)p->n) return report_extra(o->group, gname, p, info.nlinks);
    return LU_OK;
}

static lu_status read_store(opened_store *o)
{
    for (int i = 0; i < o->p->n; i++) LU_TRY(read_tensor(o->ds[i], o->p->items[i].name, o->p->items[i].t));
    return LU_OK;
}

static lu_status read_scalar_attr(hid_t obj, const char *name, hid_t type, void *value)
{
    hid_t a = H5Aexists(obj, name) > 0 ? H5Aopen(obj, name, H5P_DEFAULT) : -1;
    herr_t e = a >= 0 ? H5Aread(a, type, value) : -1;
    if (a >= 0) H5Aclose(a);
    return e < 0 ? lu_errorf(LU_ERR_FORMAT, "/meta has no readable attribute '%s'", name) : LU_OK;
}

static lu_status read_meta(hid_t file, lu_ckpt_meta *meta)
{
    if (H5Lexists(file, "meta", H5P_DEFAULT) <= 0) return lu_errorf(LU_ERR_FORMAT, "no /meta group");
    hid_t g = H5Gopen2(file, "meta", H5P_DEFAULT);
    if (g < 0) return lu_errorf(LU_ERR_FORMAT, "cannot open /meta");
    int version = 0;
    lu_status s = read_scalar_attr(g, "format_version", H5T_NATIVE_INT, &version);
    if (!s && version != LU_CKPT_FORMAT_VERSION)
        s = lu_errorf(LU_ERR_FORMAT, "format_version %d, this build reads %d", version, LU_CKPT_FORMAT_VERSION);
    if (!s && meta) {
        s = read_scalar_attr(g, "step", H5T_NATIVE_INT64, &meta->step);
        if (!s) s = read_scalar_attr(g, "epoch", H5T_NATIVE_INT64, &meta->epoch);
        if (!s) s = read_scalar_attr(g, "data_position", H5T_NATIVE_INT64, &meta->data_position);
        if (!s) s = read_scalar_attr(g, "rng_seed", H5T_NATIVE_UINT64, &meta->rng_seed);
        if (!s) s = read_string_attr(g, "config", &meta->loaded_config_text);
    }
    H5Gclose(g);
    return s;
}

static lu_status check_optimizer(hid_t file, const lu_optim *optim)
{
    const char *want = lu_optim_kind_name(lu_optim_get_kind(optim));
    if (H5Lexists(file, "optim", H5P_DEFAULT) <= 0)
        return lu_errorf(LU_ERR_FORMAT, "no optimiser state (/optim); the run expects %s state", want);
    hid_t g = H5Gopen2(file, "optim", H5P_DEFAULT);
    if (g < 0) return lu_errorf(LU_ERR_FORMAT, "cannot open /optim");
    char *v = NULL;
    lu_status s = read_string_attr(g, "optimizer", &v);
    H5Gclose(g);
    LU_TRY(s);
    if (!v) s = lu_errorf(LU_ERR_FORMAT, "/optim has no 'optimizer' attribute");
    else if (strcmp(v, want))
        s = lu_errorf(LU_ERR_FORMAT, "the optimiser state is for %s, the run uses %s", v, want);
    free(v);
    return s;
}

lu_status lu_ckpt_load(const char *path, lu_params *params, lu_optim *optim, lu_ckpt_meta *meta)
{
    if (meta) meta->loaded_config_text = NULL;
    if (!params->finalized) return lu_errorf(LU_ERR_STATE, "checkpoint '%s': the parameter store is not finalized", path);
    h5_quiet();
    if (access(path, R_OK) != 0) return lu_errorf(LU_ERR_IO, "checkpoint '%s': cannot read: %s", path, strerror(errno));
    if (H5Fis_hdf5(path) <= 0) return lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': not an HDF5 file", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return lu_errorf(LU_ERR_FORMAT, "checkpoint '%s': cannot open (truncated or damaged HDF5 file)", path);
    lu_ckpt_meta got = {0};
    opened_store ps = {-1, NULL, params}, os = {-1, NULL, NULL};
    /* Everything is checked before the first value is read. */
    lu_status s = read_meta(file, meta ? &got : NULL);
    if (!s && optim) s = check_optimizer(file, optim);
    if (!s) s = open_store(file, "params", params, &ps);
    if (!s && optim) s = open_store(file, "optim", lu_optim_state(optim), &os);
    if (!s) s = read_store(&ps);
    if (!s && optim) s = read_store(&os);
    close_store(&ps);
    if (os.p) close_store(&os);
    H5Fclose(file);
    if (s) {
        free(got.loaded_config_text);
        return lu_error_context("checkpoint '%s': ", path);
    }
    got.config_text = meta ? meta->config_text : NULL;
    if (meta) *meta = got;
    return LU_OK;
}
