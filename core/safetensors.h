/* safetensors.h - reading and writing the safetensors format of Hugging Face
 * (huggingface/safetensors README and safetensors/src/tensor.rs; ../shared/reference/formats.md §2).
 *
 * Layout: u64 little-endian header length N, N bytes of JSON object {"__metadata__": {str: str},
 * "<name>": {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, ...}, then the byte
 * buffer the offsets point into (relative to its first byte, end exclusive).
 *
 * lu_st_open maps the file read-only and validates all of it before any use: header length
 * (<= 100 MB and inside the file), JSON object, metadata string -> string, known dtype strings,
 * shapes (<= 8 non-negative dims, no overflow), end - begin == numel * dtype size, offsets tiling
 * the buffer from 0 without gap or overlap, 8 + N + buffer end == file size, no duplicate names.
 * Every error names the file and, where one is at fault, the tensor. Tensors are listed in file
 * order (by data offset).
 *
 * dtypes F32, F64, BF16, F16, I32, I64, U8 and BOOL load (converted to any lu_dtype); the other
 * byte-sized dtypes of the format (I8, I16, U16, U32, U64, F8_E5M2, F8_E4M3, F8_E8M0) are accepted by
 * lu_st_open and reported by lu_st_info / lu_st_load as unsupported. Sub-byte packed dtypes (F4,
 * F6_*) and unknown strings are rejected by lu_st_open.
 *
 * lu_st_save orders tensors as the reference writer does (descending dtype in the format's dtype
 * order, then by name), so every tensor is aligned to its element size; pads the header with
 * spaces to a multiple of 8; writes "<path>.tmp.<pid>", fsyncs it and renames it over path. */
#ifndef LU_SAFETENSORS_H
#define LU_SAFETENSORS_H

#include "tensor.h"

typedef struct lu_st_file lu_st_file;

/* Maps and validates path; NULL + error on any defect. */
lu_st_file *lu_st_open(const char *path);
void lu_st_close(lu_st_file *f);
int lu_st_count(const lu_st_file *f);
/* Name of tensor i (0 <= i < count), in file order. */
const char *lu_st_name(const lu_st_file *f, int i);
/* Index of the tensor called name, or -1 if absent. */
int lu_st_find(const lu_st_file *f, const char *name);
/* dtype, rank and shape (LU_MAX_DIMS entries) of tensor i; ndim and shape are filled even when
 * the dtype is unsupported (LU_ERR_DTYPE, message naming it). dt, ndim or shape may be NULL. */
lu_status lu_st_info(const lu_st_file *f, int i, lu_dtype *dt, int *ndim, int64_t *shape);
/* New contiguous CPU tensor (heap, or the active arena) holding the tensor converted to `as`. */
lu_tensor *lu_st_load(const lu_st_file *f, const char *name, lu_dtype as);
/* Reads the tensor into dst (any dtype, layout or device), converting; shapes must be equal. */
lu_status lu_st_read_into(const lu_st_file *f, const char *name, lu_tensor *dst);
/* Value of a "__metadata__" key, or NULL if absent. */
const char *lu_st_metadata(const lu_st_file *f, const char *key);
/* Writes n tensors (any dtype, layout or device) under unique names, and n_meta metadata pairs. */
lu_status lu_st_save(const char *path, int n, const char *const *names, lu_tensor *const *tensors, int n_meta,
                     const char *const *meta_keys, const char *const *meta_values);

/* Strict load of a model's weights: every declared tensor of the finalised store `p` that
 * `in_scope` accepts must be in the file with the same shape (values converted to the declared
 * dtype), and every file tensor that `in_scope` accepts must be declared - a mismatch means the
 * config does not fit the checkpoint. in_scope NULL accepts everything. Errors name `what`
 * ("conformer weights"), the file and the tensor. */
struct lu_params;
typedef bool (*lu_st_scope)(const char *name, void *ctx);
lu_status lu_st_load_params(const char *path, struct lu_params *p, const char *what, lu_st_scope in_scope, void *ctx);

#endif
