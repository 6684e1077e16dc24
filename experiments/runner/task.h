/* task.h - what the shared trainer needs from a model family: its config fields, its
 * parameters, a loss for the micro-batch at a data position, and an evaluation.
 *
 * Data positions make resuming exact: micro-batch number `position` (counted from the start of
 * training over all epochs) always yields the same examples, whatever was run before. */
#ifndef LU_TASK_H
#define LU_TASK_H

#include <stdio.h>

#include "core/config.h"
#include "core/params.h"

#define LU_TASK_MAX_METRICS 48

typedef struct lu_task_metrics {
    int n;
    const char *keys[LU_TASK_MAX_METRICS];
    double values[LU_TASK_MAX_METRICS];
} lu_task_metrics;

typedef struct lu_task {
    const char *name;
    const char *description;
    const lu_cfg_field *schema;      /* the task's own sections (model.*, data.*) */
    size_t config_size;              /* size of the struct the schema fills */
    /* loss and evaluate run on the device of the parameter store (train.device), building their
     * batches on the host and uploading them; false: the task runs on the CPU only. */
    bool any_device;
    /* Loads data and declares parameters in params (not yet finalised, on the CPU). */
    lu_status (*create)(void **state, const void *config, uint64_t seed, lu_params *params);
    /* Initialises the finalised parameters on the CPU; the trainer then moves the store to
     * train.device (lu_params_to_device) and, when resuming, loads the checkpoint into it. */
    lu_status (*init_params)(void *state, uint64_t seed);
    /* Micro-batches in one epoch. */
    int64_t (*epoch_size)(void *state);
    /* Loss of the micro-batch at `position` (inside the trainer's arena, on the parameters'
     * device); *items counts what it processed (tokens, seconds of audio) for throughput.
     * `step` keys dropout. */
    lu_tensor *(*loss)(void *state, int64_t position, int64_t step, double *items);
    /* Held-out evaluation: fills metrics (e.g. loss, perplexity); runs in no-grad mode and
     * allocates its activations from an arena of its own on the parameters' device. */
    lu_status (*evaluate)(void *state, lu_task_metrics *out);
    /* In a data-parallel run, evaluate is called on every rank, which scores its share and sums
     * the totals across ranks itself (core/dist.h); false: rank 0 evaluates alone. */
    bool collective_eval;
    /* Optional: a human-readable demonstration after evaluation (a text sample, a transcript). */
    void (*demo)(void *state, FILE *f);
    /* Optional: runs once at the end of a completed training run, after the final evaluation
     * (e.g. exports the trained model into run_dir). */
    lu_status (*finish)(void *state, const char *run_dir);
    /* In a data-parallel run, finish is called on every rank, which share its work themselves
     * (rank 0 writing the files); false: rank 0 finishes alone. */
    bool collective_finish;
    void (*destroy)(void *state);
} lu_task;

/* Registered tasks, NULL-terminated. */
extern const lu_task *const lu_tasks[];
const lu_task *lu_task_find(const char *name);

#endif
