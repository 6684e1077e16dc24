/* task_asr.h - what inference tools (`luthier asr transcribe`, experiments/runner/asr_infer.c)
 * need from a trained `asr` task state (experiments/runner/task_asr.c): its feature settings,
 * the encoder forward on one utterance with the training feature normalisation, and the
 * mapping from token ids to text. */
#ifndef LU_TASK_ASR_H
#define LU_TASK_ASR_H

#include "core/tensor.h"
#include "experiments/runner/task.h"

extern const lu_task lu_task_asr;

#define LU_ASR_MAX_EXITS 15

/* Exits of the model. */
int lu_asr_task_n_exits(void *state);
/* The training store's feature kind ("fbank", "mel" or "logmel"), rate (Hz) and dimension. */
const char *lu_asr_task_features(void *state, int *sample_rate, int64_t *dim);
/* Encoder layers below exit i (0-based). */
int lu_asr_task_exit_layers(void *state, int exit);
/* Runs the model in eval mode on feats [T, dim] (host, unnormalised: the task applies its
 * mean/deviation): exits[i] receives [1, T', V] CTC log-probabilities (in the active arena) and
 * *frames the valid output frames. The forward computes every exit in one pass. */
lu_status lu_asr_task_forward(void *state, const float *feats, int64_t T, lu_tensor **exits, int64_t *frames);
/* Text of token ids (malloc'd), or NULL + error. */
char *lu_asr_task_detokenize(void *state, const int *ids, int n);

#endif
