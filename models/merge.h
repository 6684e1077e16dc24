/* merge.h - model merging with mergekit's semantics (../shared/reference/merging.md; checked
 * against mergekit 0.1.5 itself by tests/test_merge.c).
 *
 * lu_merge_run reads a mergekit YAML config (merge_method, base_model, models or slices,
 * parameters as scalars, gradients or {filter, value} conditions, dtype, out_dtype,
 * tokenizer_source) and writes a Hugging Face model directory. Model paths are directories;
 * relative ones are resolved against the config file's directory. The merge is streamed tensor by
 * tensor: inputs are mmap'd safetensors, and only the tensors of the one output tensor being
 * computed are held in memory. Output: safetensors shards of at most max_shard_params parameters
 * (model.safetensors, or model-0000i-of-0000N.safetensors + model.safetensors.index.json), the
 * donor's config.json (torch_dtype and num_hidden_layers updated) and tokenizer files, written
 * into "<out>.tmp.<pid>" and renamed to out, which must not exist or be empty.
 *
 * Arithmetic is done in double on the f32 values of the inputs (cast to `dtype` first, as mergekit
 * casts on load), then rounded once to the output dtype. mergekit computes in f32 (linear, slerp,
 * nuslerp) or in `dtype` (task-arithmetic family, model_stock): for f32 the two agree to about
 * 1e-7 relative; for bf16 the task-arithmetic family may differ by one bf16 rounding.
 *
 * DARE's random drop cannot reproduce torch.bernoulli bit for bit: luthier draws its Bernoulli
 * mask from Philox (core/rng.h), stream (seed, output tensor index, input index), so a merge is
 * reproducible for a given seed and the drop statistics (keep rate = density, L1 rescale) are
 * mergekit's. */
#ifndef LU_MERGE_H
#define LU_MERGE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef enum lu_merge_method {
    LU_MERGE_LINEAR,
    LU_MERGE_SLERP,
    LU_MERGE_NUSLERP,
    LU_MERGE_TASK_ARITHMETIC,
    LU_MERGE_TIES,
    LU_MERGE_DARE_TIES,
    LU_MERGE_DARE_LINEAR,
    LU_MERGE_MODEL_STOCK
} lu_merge_method;

/* Parses a mergekit registry name ("dare_ties"); false when luthier does not implement it. */
bool lu_merge_method_parse(const char *name, lu_merge_method *out);

/* One output tensor's inputs and resolved parameters. x[i] holds numel values (row-major, shape
 * [rows, numel / rows]; rows = 1 for a vector); base indexes x (-1: none). weight and density
 * have one entry per input (the base's entry is unused by methods whose parameters are per
 * non-base model). Defaults are mergekit's: lu_merge_args_defaults fills them for a method. */
typedef struct lu_merge_args {
    lu_merge_method method;
    int n;
    const float *const *x;
    int base;
    int64_t numel, rows;
    const double *weight, *density;
    double t;           /* slerp */
    double lambda;      /* task-arithmetic family */
    bool normalize;     /* linear, task-arithmetic family */
    bool rescale;       /* sparsification: L1 rescale of the kept entries */
    bool flatten;       /* nuslerp_flatten */
    bool row_wise;      /* nuslerp_row_wise */
    bool filter_wise;   /* model_stock */
    uint64_t seed, stream; /* DARE mask: Philox (seed, stream, op = input index) */
} lu_merge_args;

void lu_merge_args_defaults(lu_merge_args *a, lu_merge_method method);
/* Computes the merged tensor into out (numel values). Errors name the method and the problem. */
lu_status lu_merge_tensor(const lu_merge_args *a, float *out);

/* DARE's random sparsification (sparsify.py::bernoulli): keeps delta[i] with probability density
 * (element i of Philox stream (seed, stream, op)); with rescale multiplies the kept entries by
 * ||delta||_1 / ||kept||_1 (skipped when either is < 1e-7). density >= 1 keeps everything. */
void lu_merge_sparsify_random(double *delta, int64_t n, double density, bool rescale, uint64_t seed, uint64_t stream,
                              uint32_t op);
/* TIES' magnitude sparsification (sparsify.py::magnitude): keeps the k = max(1, int(density * n))
 * entries of largest |delta| (ties: lower index first), zeroes the rest; density >= 1 keeps all,
 * density <= 0 none. */
lu_status lu_merge_sparsify_magnitude(double *delta, int64_t n, double density);

typedef struct lu_merge_options {
    int64_t max_shard_params; /* <= 0: mergekit's default, 5e9 */
    uint64_t seed;            /* DARE masks */
    bool progress;            /* per-tensor progress line on stderr */
} lu_merge_options;

lu_status lu_merge_run(const char *config_path, const char *out_dir, const lu_merge_options *opt);

#endif
