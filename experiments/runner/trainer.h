/* trainer.h - the training loop shared by every task: config, run directory, micro-batch
 * accumulation, clipping, schedule, optimiser, metrics, progress, evaluation and exact resume. */
#ifndef LU_TRAINER_H
#define LU_TRAINER_H

#include "core/optim.h"
#include "core/schedule.h"
#include "experiments/runner/task.h"

typedef struct lu_train_config {
    char *task;
    char *name;
    int64_t seed;
    /* train */
    int64_t max_steps;       /* 0: epochs * epoch_size / grad_accum */
    int64_t epochs;
    int64_t grad_accum;
    int64_t log_every;
    int64_t eval_every;      /* 0: only at the end */
    int64_t save_every;      /* 0: only at the end */
    double clip_norm;        /* 0: no clipping (ScaledAdam clips by itself) */
    int64_t keep_checkpoints; /* also keep checkpoints/step-N.h5 of the last N saves (for --avg) */
    char *out_dir;
    int device;              /* lu_device: where parameters, optimiser state and steps live */
    /* optim */
    int optim_kind;
    double lr, beta1, beta2, eps, weight_decay;
    /* schedule */
    int sched_kind;
    double warmup_ratio;
    int64_t warmup_steps;
    double min_lr_ratio;
    double noam_d_model, noam_factor;
    double eden_lr_batches, eden_lr_epochs, eden_warmup_start;
    int64_t eden_warmup_batches;
} lu_train_config;

extern const lu_cfg_field lu_train_schema[];

typedef struct lu_run_options {
    const char *config_path;
    const char *out_dir;     /* --out, overrides train.out_dir */
    int64_t max_steps;       /* --max-steps: total steps (sets the schedule's length), 0 = config */
    int64_t stop_after;      /* --stop-after: leave (with a checkpoint) after this many steps of
                                this invocation, schedule unchanged (Slurm time slices); 0 = never */
    bool resume;
    const char *checkpoint;  /* eval: --checkpoint */
    int avg;                 /* eval: average the parameters of the newest N step-*.h5 (icefall --avg) */
    int n_overrides;
    char *const *overrides;
} lu_run_options;

/* Joins the ranks a launcher (mpirun, srun) started (core/dist.h), one GPU per process by its rank
 * on the node when device is LU_CUDA; one process of its own otherwise. Training, `luthier eval`
 * and `luthier lm eval` call it. */
lu_status lu_join_ranks(lu_device device);

/* `luthier train`: returns LU_OK when training finished (or was interrupted and saved). */
lu_status lu_train_run(const lu_run_options *opt);
/* `luthier eval`: loads a checkpoint and prints the task's evaluation as a table. */
lu_status lu_eval_run(const lu_run_options *opt);

/* A task built from its config with a checkpoint loaded, as `luthier eval` does, for tools that
 * use a trained model (e.g. `luthier asr transcribe`); its parameters are on the config's
 * train.device, as in training and `luthier eval`. opt->checkpoint NULL: the run's
 * checkpoints/last.h5. NULL + error on failure; free with lu_task_close. */
typedef struct lu_loaded_task lu_loaded_task;
lu_loaded_task *lu_task_open(const lu_run_options *opt);
const lu_task *lu_loaded_task_kind(const lu_loaded_task *t);
void *lu_loaded_task_state(const lu_loaded_task *t);
int64_t lu_loaded_task_step(const lu_loaded_task *t);
lu_params *lu_loaded_task_params(const lu_loaded_task *t);
void lu_task_close(lu_loaded_task *t);

#endif
