/* conformer.h - the Conformer family of the early-exit ASR experiments (asr.md sections 2-7):
 * torchaudio's Conformer (a stack of ConformerLayer), the early-exit Conformer baseline
 * (augustgw/early-exit-transformer `Early_conformer`) and Splitformer (`Splitformer`: parallel
 * single layers on x2-decimated inputs at chosen exits), with the sum of per-exit CTC losses.
 *
 * Parameters are named as in the PyTorch state dicts, so converted checkpoints load unchanged:
 *   torchaudio Conformer       conformer_layers.{l}.ffn1.sequential.1.weight, ...
 *   EE-Conformer/Splitformer   conv_subsample.sequential.{0,1}.*, conformer.{i}.conformer_layers.{l}.*,
 *                              conformer_parallel.{k}.conformer_layers.{l}.*, linears.{i}.*
 * BatchNorm running statistics are buffers (not trainable). The authors' `positional_encoder.pe`
 * buffer and BatchNorm `num_batches_tracked` counters are not declared: the encoding is
 * recomputed, the counters only matter for momentum=None, which torchaudio does not use; the
 * loader skips both.
 *
 * Forward functions allocate activations in the active arena (arena.h); call them inside one. */
#ifndef LU_CONFORMER_H
#define LU_CONFORMER_H

#include "core/params.h"

#define LU_CONFORMER_MAX_EXITS 32

/* torchaudio.models.Conformer arguments (use_group_norm and convolution_first are False). */
typedef struct lu_conformer_config {
    int64_t input_dim;
    int num_heads;
    int64_t ffn_dim;
    int num_layers;
    int depthwise_conv_kernel_size;  /* odd ("SAME" padding (k-1)/2) */
    double dropout;                  /* FFN, attention weights, attention output, conv module */
} lu_conformer_config;

/* How a forward pass runs: eval (dropout off, BatchNorm on running statistics) or training
 * (dropout with Philox masks keyed by (seed, step, site), BatchNorm on batch statistics, running
 * statistics updated in place with momentum 0.1). `site` numbers the dropout sites in call
 * order; start it at 0 for each forward pass. */
typedef struct lu_conformer_run {
    bool training;
    uint64_t seed, step;
    uint32_t site;
} lu_conformer_run;

lu_status lu_conformer_config_check(const lu_conformer_config *c);
/* Reads a JSON object with torchaudio's argument names (input_dim, num_heads, ffn_dim,
 * num_layers, depthwise_conv_kernel_size; optional dropout, and use_group_norm /
 * convolution_first which must be false). Unknown keys are errors naming the key and file. */
lu_status lu_conformer_config_load_json(const char *path, lu_conformer_config *c);

/* Declares the layers of a torchaudio Conformer as `<prefix>conformer_layers.{l}.*`. */
lu_status lu_conformer_declare(lu_params *p, const char *prefix, const lu_conformer_config *c);
/* One ConformerLayer (asr.md 3) on x [B,T,D]; key_padding_mask [B,T] u8 (nonzero = padding) or
 * NULL. `name` is the layer's parameter prefix ("conformer_layers.0."). */
lu_tensor *lu_conformer_layer_forward(const lu_params *p, const char *name, const lu_conformer_config *c,
                                      lu_tensor *x, lu_tensor *key_padding_mask, lu_conformer_run *run);
/* torchaudio Conformer.forward: x [B,T,D], lengths [B] int with values in [1, T] -> y [B,T,D].
 * Padding mask t >= lengths[b]; padded frames are computed, not zeroed (torchaudio). */
lu_tensor *lu_conformer_forward(const lu_params *p, const char *prefix, const lu_conformer_config *c, lu_tensor *x,
                                lu_tensor *lengths, lu_conformer_run *run);

/* Early-exit Conformer baseline and Splitformer (asr.md 2.1, 4, 6). */
typedef struct lu_ee_conformer_config {
    lu_conformer_config block;   /* num_layers = Conformer layers per exit block */
    int64_t n_mels;              /* feature dimension (features_length, 80) */
    int64_t vocab_size;
    int n_exits;
    int64_t max_len;             /* positional-encoding table length (2000); longer inputs are errors */
    int n_split;                 /* Splitformer: blocks with a parallel branch (0 = EE-baseline) */
    int split_exits[LU_CONFORMER_MAX_EXITS];  /* block indices, increasing */
    int split_num_layers;        /* layers of each parallel Conformer (1) */
    int split_factor;            /* decimation factor of the branch input (2) */
    bool ctc_utterance_lengths;  /* false (the authors' train.py): CTC input length T' for every
                                    utterance; true: the per-utterance frame counts */
} lu_ee_conformer_config;

/* The paper configurations: d 256, 8 heads, FFN 2048, kernel 31, 6 exits x 2 layers, dropout 0.1,
 * V 256, 80 mels, max_len 2000; Splitformer adds branches at the first and last exits. */
lu_ee_conformer_config lu_ee_conformer_paper_config(bool splitformer);

typedef struct lu_ee_conformer {
    lu_ee_conformer_config cfg;
    lu_params *params;
} lu_ee_conformer;

/* Declares the parameters in `params` (not yet finalised). */
lu_status lu_ee_conformer_declare(lu_ee_conformer *m, const lu_ee_conformer_config *c, lu_params *params);
/* Initialisation as train.py: Xavier-uniform for every weight with more than one dim
 * (model.apply(initialize_weights), plus MultiheadAttention's own Xavier in_proj_weight); torch
 * defaults elsewhere: Linear/Conv1d biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), attention
 * in_proj_bias and out_proj.bias 0, LayerNorm/BatchNorm weight 1 and bias 0, running mean 0 and
 * running variance 1. Needs finalised params. */
lu_status lu_ee_conformer_init(lu_ee_conformer *m, uint64_t seed);

/* Front-end output length T' = floor((floor((T-3)/2) + 1 - 3)/2) + 1 (asr.md 7.3); < 1 if T < 7. */
int64_t lu_ee_conformer_out_frames(int64_t t);

/* feats [B,T,n_mels] (batch-first; the authors' (B, n_mels, T) transposed), lengths [B] int: the
 * frame counts at 100 Hz. Writes n_exits log-probabilities [B,T',V] into exits and, when
 * out_lengths is non-NULL, the per-utterance lengths at the exit rate min(floor(lengths/4), T')
 * as an i64 [B] tensor. */
lu_status lu_ee_conformer_forward(lu_ee_conformer *m, lu_tensor *feats, lu_tensor *lengths, lu_conformer_run *run,
                                  lu_tensor **exits, lu_tensor **out_lengths);

/* Block by block, so that inference can stop at an exit: lu_ee_conformer_begin runs the front
 * end, each lu_ee_conformer_next runs the next exit block (its layers and, in Splitformer, the
 * parallel branch on the block's input) and returns that exit's log-probabilities [B,T',V].
 * lu_ee_conformer_forward is begin then next for every block, so an exit's values are
 * bit-identical whichever way it was reached, and in training the dropout sites are numbered in
 * the same order. A begun state refers to itself (run may point at st->eval): do not copy it;
 * end it with lu_ee_conformer_steps_end (it frees the host lengths). */
typedef struct lu_ee_conformer_steps {
    lu_ee_conformer *m;
    lu_conformer_run *run, eval;   /* eval: the run when begin got NULL */
    lu_tensor *h, *mask;           /* the encoder state after `done` blocks; key-padding mask */
    int64_t *raw, *len;            /* [batch] lengths at 100 Hz and at the exit rate (host) */
    int64_t batch;
    lu_device device;
    int done;                      /* blocks run */
} lu_ee_conformer_steps;

lu_status lu_ee_conformer_begin(lu_ee_conformer *m, lu_tensor *feats, lu_tensor *lengths, lu_conformer_run *run,
                                lu_ee_conformer_steps *st);
/* Runs block st->done and returns its exit's log-probabilities, or NULL + error (also when
 * every block has run). */
lu_tensor *lu_ee_conformer_next(lu_ee_conformer_steps *st);
/* The exit-rate lengths as an i64 [B] tensor (lu_ee_conformer_forward's out_lengths). */
lu_tensor *lu_ee_conformer_steps_lengths(const lu_ee_conformer_steps *st);
void lu_ee_conformer_steps_end(lu_ee_conformer_steps *st);

/* Sum over exits of CTC losses (blank 0, mean reduction, zero_infinity) (asr.md 7.1); targets
 * [B,S] int padded, target_lengths [B]. */
lu_tensor *lu_ee_conformer_loss(lu_ee_conformer *m, lu_tensor *feats, lu_tensor *lengths, lu_tensor *targets,
                                lu_tensor *target_lengths, lu_conformer_run *run);

/* Reads every declared tensor of a finalised store from a safetensors file by name (converted
 * to the declared dtype; shapes must match). Every tensor of the file must be declared, except
 * BatchNorm `*.num_batches_tracked` counters and the authors' `positional_encoder.pe` (see
 * above); errors name the tensor and the file. */
lu_status lu_conformer_load_safetensors(lu_params *p, const char *path);

#endif
