/* checkpoint.h - training checkpoints in HDF5: parameters, optimiser state, step, epoch, data
 * position, RNG seed and the resolved config, enough to resume a run bit-exactly.
 *
 * Layout (format_version 1):
 *   /params/<name>  one dataset per tensor of the store, in its native type and shape (bf16 and
 *                   f16 as uint16); every dataset has a string attribute "dtype" (lu_dtype_name)
 *   /optim/<name>   the optimiser's state store (lu_optim_state), attribute "optimizer"
 *                   ("adamw" | "scaled_adam"); absent when saved without an optimiser
 *   /meta           attributes step, epoch, data_position (int64), rng_seed (uint64),
 *                   format_version (int) and config (variable-length UTF-8 string, absent when
 *                   no config text was given)
 * Names may contain '.'; '%' and '/' in names are written as "%25" and "%2F".
 *
 * Saving writes "<path>.tmp.<pid>", fsyncs it, renames it over path and fsyncs the directory,
 * so an interrupted or failed save never damages an existing checkpoint. Loading checks the
 * whole file against the store before reading any value (missing or extra tensors, shapes,
 * dtypes) and restores values bit-exactly; a failed read can leave the store partly loaded. */
#ifndef LU_CHECKPOINT_H
#define LU_CHECKPOINT_H

#include "optim.h"

#define LU_CKPT_FORMAT_VERSION 1

typedef struct lu_ckpt_meta {
    int64_t step;
    int64_t epoch;
    int64_t data_position;
    uint64_t rng_seed;
    const char *config_text;   /* save: resolved YAML, or NULL */
    char *loaded_config_text;  /* load: set to a malloc'ed copy (caller frees), or NULL if none */
} lu_ckpt_meta;

/* optim and meta may be NULL (no optimiser state; zero meta). */
lu_status lu_ckpt_save(const char *path, lu_params *params, lu_optim *optim, const lu_ckpt_meta *meta);
/* optim may be NULL (the file's optimiser state is then ignored); meta may be NULL. */
lu_status lu_ckpt_load(const char *path, lu_params *params, lu_optim *optim, lu_ckpt_meta *meta);

#endif
