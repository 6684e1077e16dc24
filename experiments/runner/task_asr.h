/* task_asr.h - what inference tools (`luthier asr transcribe`, experiments/runner/asr_infer.c)
 * need from a trained `asr` task (experiments/runner/task_asr.c): opening a checkpoint, its
 * feature settings, the encoder run exit by exit on one utterance with the training feature
 * normalisation, stopping at a chosen exit or where a confidence policy fires, and the mapping
 * from token ids to text. */
#ifndef LU_TASK_ASR_H
#define LU_TASK_ASR_H

#include "core/tensor.h"
#include "experiments/runner/task.h"
#include "models/exit_policy.h"

extern const lu_task lu_task_asr;

#define LU_ASR_MAX_EXITS 15

/* Opens a trained model for inference. checkpoint: a checkpoint file or a run directory (its
 * checkpoints/last.h5); NULL: the last checkpoint of the run config_path describes. The config
 * is config_path when given, else the one the checkpoint stores. A self-contained checkpoint
 * (tensor asr.assets: token set, feature kind, rate and normalisation, Zipformer JSON) needs no
 * training data; an older one falls back to the training data its config names, and the error
 * says so when that fails. Close the state with lu_asr_task_close. */
lu_status lu_asr_task_open(const char *checkpoint, const char *config_path, void **state);
void lu_asr_task_close(void *state);

/* Exits of the model. */
int lu_asr_task_n_exits(void *state);
/* The training store's feature kind ("fbank", "mel" or "logmel"), rate (Hz) and dimension. */
const char *lu_asr_task_features(void *state, int *sample_rate, int64_t *dim);
/* Encoder layers below exit i (0-based). */
int lu_asr_task_exit_layers(void *state, int exit);

/* The log-probabilities an utterance was decoded from. */
typedef struct lu_asr_exit_out {
    int exit;        /* 1-based exit they come from */
    int layers;      /* encoder layers the run executed (Splitformer branches not counted) */
    int64_t frames;  /* valid frames (<= t_out) */
    int64_t t_out, vocab;
    float *logp;     /* [t_out, vocab] CTC log-probabilities (host, malloc'd: free it) */
} lu_asr_exit_out;

/* Runs the model in eval mode on feats [T, dim] (host, unnormalised: the task applies its
 * mean/deviation) exit by exit, and stops the encoder at exit `exit` (1-based), or, for exit 0,
 * at the first exit whose confidence passes `policy` (the last when none does, or when policy is
 * NULL). Every exit's values are those of the full forward. Activations come from the active
 * arena. */
lu_status lu_asr_task_run(void *state, const float *feats, int64_t T, int exit, const lu_exit_policy *policy,
                          lu_asr_exit_out *out);
/* Text of token ids (malloc'd), or NULL + error. */
char *lu_asr_task_detokenize(void *state, const int *ids, int n);

#endif
