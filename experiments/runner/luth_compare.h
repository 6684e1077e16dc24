/* luth_compare.h - the Luth paper's comparison at the end of an SFT run: the starting model, the
 * fine-tuned model and their merge, evaluated on the same task files and printed as the paper's
 * tables (luth.md section 7: one row per benchmark, one column per model, French then English).
 *
 * In <run dir>: base/ (the starting model as a Hugging Face directory, when it was a GGUF file),
 * model/ (the fine-tuned export, already written by the sft task), merge.yaml (a mergekit config:
 * slerp with base_model = the starting model, or linear), merged/, compare.json (every metric of
 * every model and task) and compare.md (the tables). Directories already complete from an earlier
 * call are reused, so a rerun only evaluates. */
#ifndef LU_LUTH_COMPARE_H
#define LU_LUTH_COMPARE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef enum lu_compare_merge { LU_COMPARE_SLERP, LU_COMPARE_LINEAR, LU_COMPARE_NO_MERGE } lu_compare_merge;

typedef struct lu_compare_opts {
    const char *tasks;        /* a directory of *.jsonl task files (sorted by name), or a comma-separated list */
    bool chat;                /* chat template and system prompt, as `luthier lm eval --chat` */
    const char *system;       /* NULL: none */
    int64_t limit;            /* items per task, <= 0: all */
    int64_t max_new_tokens;   /* generative tasks, <= 0: 256 */
    lu_compare_merge merge;
    double t;                 /* slerp t (0: the starting model, 1: the fine-tuned one); linear weight of the fine-tuned model */
    int export_dtype;         /* of base/ (lu_dtype) */
    int device;               /* where the models are evaluated (lu_device; 0: the CPU) */
} lu_compare_opts;

/* start_model: the HF directory or GGUF file training started from. In a data-parallel job every
 * rank calls it: rank 0 writes the directories and the results, each rank scores its share of
 * every task's items (lu_lmeval_opts.shared). */
lu_status lu_luth_compare(const char *run_dir, const char *start_model, const lu_compare_opts *o);

#endif
