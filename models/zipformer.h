/* zipformer.h - icefall's Zipformer2 encoder with its Conv2dSubsampling front end (asr.md 9;
 * k2-fsa/icefall egs/librispeech/ASR/zipformer/{zipformer,scaling,subsampling}.py at 36e0420),
 * eval-mode exact, and the early-exit Zipformer (CTC heads after chosen stacks).
 *
 * Eval semantics as icefall's: Balancer, Whiten, ScaleGrad, limit_param_value and the
 * penalties are the identity in the forward pass and are omitted; dropout, layer/module skip
 * rates, feature masks and const_attention_rate are training-only and off; bypass scales are
 * used unclamped. Only non-causal models are implemented (causal=true is a config error).
 *
 * Parameters carry the names of icefall's AsrModel state dict, so converted checkpoints
 * (scripts/convert_torch_to_safetensors.py) load unchanged:
 *   encoder_embed.conv.{0,4,7}.*, encoder_embed.convnext.*, encoder_embed.out.*, encoder_embed.out_norm.*
 *   encoder.encoders.{i}.layers.{l}.*            stacks with downsampling_factor 1
 *   encoder.encoders.{i}.encoder.layers.{l}.*    downsampled stacks, with .downsample.bias and
 *                                                .out_combiner.bypass_scale
 *   encoder.downsample_output.bias
 * The per-layer `layers.{l}.bypass_scale` (icefall: "TODO: remove it") is never read by
 * icefall's forward; it is declared as a buffer (not trainable) so checkpoints load.
 *
 * Forward functions allocate activations in the active arena (arena.h); call them inside one. */
#ifndef LU_ZIPFORMER_H
#define LU_ZIPFORMER_H

#include "core/params.h"

#define LU_ZIPFORMER_MAX_STACKS 16

/* icefall Zipformer2 constructor arguments, one entry per stack, plus the Conv2dSubsampling
 * arguments of train.py's get_encoder_embed (in_channels = feature_dim, out_channels =
 * encoder_dim[0], layer channels 8/32/128 by default). */
typedef struct lu_zipformer_config {
    int num_stacks;
    int output_downsampling_factor;               /* 2 (icefall asserts it) */
    int downsampling_factor[LU_ZIPFORMER_MAX_STACKS];
    int64_t encoder_dim[LU_ZIPFORMER_MAX_STACKS];
    int num_encoder_layers[LU_ZIPFORMER_MAX_STACKS];
    int64_t encoder_unmasked_dim[LU_ZIPFORMER_MAX_STACKS];  /* training feature masks only */
    int query_head_dim[LU_ZIPFORMER_MAX_STACKS];
    int pos_head_dim[LU_ZIPFORMER_MAX_STACKS];
    int value_head_dim[LU_ZIPFORMER_MAX_STACKS];
    int num_heads[LU_ZIPFORMER_MAX_STACKS];
    int64_t feedforward_dim[LU_ZIPFORMER_MAX_STACKS];
    int cnn_module_kernel[LU_ZIPFORMER_MAX_STACKS];      /* odd */
    int pos_dim;                                         /* even */
    bool causal;                                         /* must be false */
    int64_t feature_dim;                                 /* 80 */
    int layer1_channels, layer2_channels, layer3_channels; /* 8, 32, 128 */
} lu_zipformer_config;

lu_status lu_zipformer_config_check(const lu_zipformer_config *c);
/* Reads a JSON object with icefall's argument names: output_downsampling_factor,
 * downsampling_factor (its length is the number of stacks), encoder_dim, num_encoder_layers,
 * encoder_unmasked_dim, query_head_dim, pos_head_dim, value_head_dim, num_heads,
 * feedforward_dim, cnn_module_kernel (each an integer or a list; one element applies to every
 * stack), pos_dim; optional causal (false), feature_dim (80), layer1_channels (8),
 * layer2_channels (32), layer3_channels (128). Unknown keys are errors naming the key. */
lu_status lu_zipformer_config_load_json(const char *path, lu_zipformer_config *c);
/* The same from the JSON text; `name` stands for the file in errors. */
lu_status lu_zipformer_config_parse_json(const char *text, const char *name, lu_zipformer_config *c);
/* The "small" recipe (asr.md 9.5) with 80 features. */
lu_zipformer_config lu_zipformer_small_config(void);

/* Declares encoder_embed.* and encoder.* (not finalised). */
lu_status lu_zipformer_declare(lu_params *p, const lu_zipformer_config *c);
/* icefall's initialisation: Linear/Conv weights and biases U(+-1/sqrt(fan_in)) (torch
 * defaults), ScaledLinear/ScaledConv2d weights times initial_scale s and biases U(+-0.1 s)
 * (attention in_proj s = query_head_dim^-0.25, linear_pos 0.05 (no bias), attention/nonlinear
 * attention/convolution out_proj 0.05, feed-forward out_proj 0.1, ConvNeXt pointwise_conv2
 * 0.01), bypass scales 0.5, BiasNorm bias N(0, 1e-4) and log_scale 1, downsample biases 0.
 * Needs finalised params. */
lu_status lu_zipformer_init(lu_params *p, const lu_zipformer_config *c, uint64_t seed);

/* Subsampled frame count (T - 7) // 2 (Python floor division). */
int64_t lu_zipformer_embed_frames(int64_t t);
/* Conv2dSubsampling: x [B,T,feature_dim] -> [B,(T-7)//2,encoder_dim[0]]. */
lu_tensor *lu_zipformer_embed_forward(const lu_params *p, const lu_zipformer_config *c, lu_tensor *x);
/* One Zipformer2EncoderLayer of stack `stack` (asr.md 9.2) on x [B,T,dim] at that stack's frame
 * rate, with its own positional encoding; lens [B] (host) are the valid frame counts at that
 * rate (keys t >= lens[b] are masked, padded frames are zeroed before the convolutions).
 * `name` is the layer prefix ("encoder.encoders.0.layers.0."). */
lu_tensor *lu_zipformer_layer_forward(const lu_params *p, const lu_zipformer_config *c, int stack, const char *name,
                                      lu_tensor *x, const int64_t *lens);

/* icefall AsrModel.forward_encoder: x [B,T,feature_dim] (the params' dtype, f32), x_lens [B] i32/i64 with
 * (x_lens - 7) // 2 >= 1 and x_lens <= T. Returns encoder_out [B,T',max(encoder_dim)],
 * T' = ceil(((T-7)//2) / 2); *out_lens (if non-NULL) receives i64 [B] = ((x_lens-7)//2 + 1) // 2.
 * stack_out (if non-NULL, num_stacks entries) receives each stack's output at the subsampled
 * frame rate [B,(T-7)//2,encoder_dim[i]]. */
lu_tensor *lu_zipformer_forward(const lu_params *p, const lu_zipformer_config *c, lu_tensor *x, lu_tensor *x_lens,
                                lu_tensor **out_lens, lu_tensor **stack_out);

/* Reads every declared tensor whose name starts with one of `keep_prefixes` from a safetensors
 * file by name (converted to the declared dtype; shapes must match; a missing one is an error).
 * File tensors under those prefixes that are not declared are errors (a config mismatch); other
 * tensors (an AsrModel's decoder.*, joiner.*, simple_*_proj.*, ...) are ignored. Errors name
 * the tensor and the file. The encoder: {"encoder_embed.", "encoder."}; an early-exit model
 * adds "exits." and "ctc_output.". */
lu_status lu_zipformer_load_safetensors(lu_params *p, const char *path, int n_prefixes, const char *const *keep_prefixes);

/* ---- early-exit Zipformer -------------------------------------------------------------------
 *
 * CTC exit heads after chosen stacks (log_softmax(Linear(.)) at the 25 Hz output rate).
 *
 * How an exit after stack s reads the encoder: every stack's output is at the subsampled 50 Hz
 * rate (downsampled stacks upsample back and bypass), so an exit takes _get_full_dim_output over
 * stacks 0..s (each channel from the most recent stack that has it: max(encoder_dim[0..s])
 * channels), downsamples by 2 with its own SimpleDownsample (`exits.{k}.downsample.bias`), and
 * applies `exits.{k}.linear`. Why: this is exactly the representation and rate change icefall
 * gives its own CTC head after the last stack, so an exit sees the same channel layout (the
 * wide channels that a narrower stack does not update still carry the earlier stacks' values)
 * at the same 25 Hz rate and with the same output lengths as the final head. An exit after the
 * last stack IS icefall's CTC head: it reads encoder_out (encoder.downsample_output) through
 * `ctc_output.1.*` (icefall's nn.Sequential(Dropout, Linear, LogSoftmax)), so an icefall CTC
 * checkpoint loads into the final exit.
 *
 * Placement (exit_stacks): configurable; the default (lu_ee_zipformer_default_exits) puts an
 * exit after every stack. Why: the 6-stack recipes then get 6 exits, as the EE-Conformer baseline
 * has (asr.md 2.1), each after 2-5 further layers, and the exits see every frame rate of the
 * U-Net (50, 25, 12.5, 6.25, 12.5, 25 Hz stacks), so deciding where to stop can use all of them.
 *
 * Loss: the sum over exits of icefall's CTC loss (blank 0, reduction sum, input lengths
 * encoder_out_lens, no zero_infinity), as model.py forward_ctc; the Conformer family likewise
 * sums its exits. The forward is the eval-mode forward (no dropout or skip regularisers). */
typedef struct lu_ee_zipformer_config {
    lu_zipformer_config enc;
    int64_t vocab_size;
    int n_exits;
    int exit_stacks[LU_ZIPFORMER_MAX_STACKS];   /* increasing stack indices */
} lu_ee_zipformer_config;

/* Sets n_exits/exit_stacks to one exit after every stack. */
void lu_ee_zipformer_default_exits(lu_ee_zipformer_config *c);

typedef struct lu_ee_zipformer {
    lu_ee_zipformer_config cfg;
    lu_params *params;
} lu_ee_zipformer;

/* Declares the encoder and the exit heads in `params` (not yet finalised). */
lu_status lu_ee_zipformer_declare(lu_ee_zipformer *m, const lu_ee_zipformer_config *c, lu_params *params);
/* lu_zipformer_init for the encoder; exit linears as torch nn.Linear, exit downsample biases 0. */
lu_status lu_ee_zipformer_init(lu_ee_zipformer *m, uint64_t seed);
/* feats [B,T,feature_dim], lengths [B]: writes n_exits log-probabilities [B,T',V] into exits
 * and, when out_lengths is non-NULL, encoder_out_lens (i64 [B]). */
lu_status lu_ee_zipformer_forward(lu_ee_zipformer *m, lu_tensor *feats, lu_tensor *lengths, lu_tensor **exits,
                                  lu_tensor **out_lengths);

/* Stack by stack, so that inference can stop at an exit: lu_ee_zipformer_begin runs the front
 * end, each lu_ee_zipformer_next runs the next stack and gives the log-probabilities of the exit
 * after it (NULL when it has none). An exit's values are bit-identical to lu_ee_zipformer_forward's:
 * the same ops on the same inputs (the forward runs every stack before the heads). End every
 * begun state with lu_ee_zipformer_steps_end (it frees the host lengths). */
typedef struct lu_ee_zipformer_steps {
    lu_ee_zipformer *m;
    lu_tensor *h;                                  /* output of the last stack run (or the front end) */
    lu_tensor *outputs[LU_ZIPFORMER_MAX_STACKS];   /* stack outputs so far */
    int64_t *len;                                  /* [batch] lengths at the subsampled rate (host) */
    int64_t batch;
    lu_device device;
    int done;                                      /* stacks run */
} lu_ee_zipformer_steps;

lu_status lu_ee_zipformer_begin(lu_ee_zipformer *m, lu_tensor *feats, lu_tensor *lengths, lu_ee_zipformer_steps *st);
/* Runs stack st->done; *exit receives its exit's log-probabilities [B,T',V] or NULL. Stepping
 * past the last stack is an error. */
lu_status lu_ee_zipformer_next(lu_ee_zipformer_steps *st, lu_tensor **exit);
/* encoder_out_lens (i64 [B]), as lu_ee_zipformer_forward's out_lengths. */
lu_tensor *lu_ee_zipformer_steps_lengths(const lu_ee_zipformer_steps *st);
void lu_ee_zipformer_steps_end(lu_ee_zipformer_steps *st);
/* Sum over exits of CTC losses (see above); targets [B,S] int padded, target_lengths [B]. */
lu_tensor *lu_ee_zipformer_loss(lu_ee_zipformer *m, lu_tensor *feats, lu_tensor *lengths, lu_tensor *targets,
                                lu_tensor *target_lengths);

#endif
