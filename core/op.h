/* op.h - the op catalogue: every op a backend implements, its kernel calling convention and
 * its parameter struct.
 *
 * Kernel convention (both backends):
 *   forward:  in  = the op's inputs in the order below (a slot may be NULL where marked optional)
 *             out = the op's outputs, already allocated contiguous by the frontend; out[0] is what
 *                   the user gets, further outputs are saved statistics the backward reuses
 *                   (listed as "aux").
 *   backward: in  = [dy_0 .. dy_{m-1}, x_0 .. x_{n-1}, y_0 .. y_{m-1}] (m outputs, n inputs);
 *                   a dy slot is NULL when no gradient reached that output (read it as zero).
 *             out = [dx_0 .. dx_{n-1}], allocated contiguous with x_i's shape and dtype, to be
 *                   overwritten (not accumulated); NULL where x_i needs no gradient.
 * Inputs are contiguous unless the op says otherwise. Dims in params are already normalised
 * (0 <= dim < ndim). Kernels return LU_OK or an lu_errorf() status. */
#ifndef LU_OP_H
#define LU_OP_H

#include <stdbool.h>
#include <stdint.h>

#include "tensor.h"

/* X(NAME, "name") - inputs -> outputs; see the params structs below. */
#define LU_OP_LIST(X)                                                                          \
    X(CONTIGUOUS, "contiguous")   /* x (any strides) -> y contiguous */                        \
    X(CAST, "cast")               /* x -> y of out dtype */                                    \
    X(ACCUMULATE, "accumulate")   /* in-place: out[0] += in[0] (same shape and dtype, or bf16  \
                                     into f32); no backward */                                  \
    X(MATMUL, "matmul")           /* a [Ba,M,K], b [Bb,K,N] (Ba,Bb equal or 1) -> c [B,M,N] */ \
    X(LINEAR, "linear")           /* x [M,K], w [N,K], bias [N] -> y [M,N] = x w^T + bias      \
                                     (torch.nn.Linear; lu_linear with a bias) */                \
    X(ADD, "add")                 /* a, b (own shapes, numpy-broadcast; any strides) -> y */   \
    X(SUB, "sub")                                                                              \
    X(MUL, "mul")                                                                              \
    X(DIV, "div")                                                                              \
    X(AFFINE, "affine")           /* x -> alpha*x + beta */                                    \
    X(EXP, "exp")                                                                              \
    X(LOG, "log")                                                                              \
    X(TANH, "tanh")                                                                            \
    X(SIGMOID, "sigmoid")                                                                      \
    X(RELU, "relu")                                                                            \
    X(SILU, "silu")                                                                            \
    X(SWIGLU, "swiglu")           /* gate, up (same shape, contiguous) -> y = silu(gate) * up */ \
    X(GELU, "gelu")               /* lu_gelu_params */                                         \
    X(SWOOSH_L, "swoosh_l")       /* log(1+e^(x-4)) - 0.08x - 0.035 */                         \
    X(SWOOSH_R, "swoosh_r")       /* log(1+e^(x-1)) - 0.08x - 0.313261687 */                   \
    X(SQUARE, "square")                                                                        \
    X(SQRT, "sqrt")                                                                            \
    X(SUM, "sum")                 /* x -> y, lu_reduce_params */                               \
    X(MEAN, "mean")                                                                            \
    X(MAX, "max")                 /* x -> y, aux argmax (i64, same shape as y) */              \
    X(SOFTMAX, "softmax")         /* x -> y, lu_dim_params */                                  \
    X(LOG_SOFTMAX, "log_softmax")                                                              \
    X(CROSS_ENTROPY, "cross_entropy") /* logits [N,V], target [N] int -> loss, aux lse [N] f, aux count [1] f */ \
    X(EMBEDDING, "embedding")     /* weight [V,D], ids (int, any shape S) -> y [S..,D] */      \
    X(RMSNORM, "rmsnorm")         /* x [..,D], weight [D] (optional) -> y, aux rstd [..] */    \
    X(LAYERNORM, "layernorm")     /* x [..,D], weight [D]?, bias [D]? -> y, aux mean, aux rstd */ \
    X(BIASNORM, "biasnorm")       /* x [..,D], bias [D], log_scale [1] -> y, aux rstd [..] */ \
    X(ROPE, "rope")               /* x [B,T,H,D], positions [B,T] int -> y (half-split) */     \
    X(ATTENTION, "attention")     /* q [B,Tq,Hq,D], k [B,Tk,Hkv,D], v [B,Tk,Hkv,Dv],           \
                                     key_padding_mask [B,Tk] u8/bool (1 = ignore)?,            \
                                     cu_seqlens [S+1] i32? (packed: B == 1)                    \
                                     -> o [B,Tq,Hq,Dv], aux lse [B,Hq,Tq] f,                   \
                                        weights [B,Hq,Tq,Tk] (only if return_weights) */       \
    X(CONV1D, "conv1d")           /* x [B,Cin,T], w [Cout,Cin/g,K], bias [Cout]? -> y */       \
    X(CONV2D, "conv2d")           /* x [B,Cin,H,W], w [Cout,Cin/g,KH,KW], bias? -> y */        \
    X(BATCHNORM, "batchnorm")     /* x [B,C,...], weight [C]?, bias [C]?, running_mean [C],    \
                                     running_var [C] (updated in training) -> y, aux mean, aux invstd */ \
    X(DROPOUT, "dropout")         /* x -> y (mask regenerated from the Philox key) */          \
    X(CONCAT, "concat")           /* x_0 .. x_{n-1} -> y, lu_dim_params */                     \
    X(GATHER, "gather")           /* x, index (int, same rank) -> y, lu_dim_params (torch.gather) */ \
    X(DECIMATE, "decimate")       /* x -> y = x[.., ::factor, ..] along dim */                 \
    X(DOWNSAMPLE, "downsample")   /* x [B,T,C], bias [factor] -> y [B,ceil(T/f),C]:             \
                                     softmax(bias)-weighted frames, last frame repeated as pad */ \
    X(UPSAMPLE, "upsample")       /* x -> y, each frame repeated factor times, cut to out_len */ \
    X(CTC_LOSS, "ctc_loss")       /* log_probs [B,T,V], targets [B,S] int, input_lengths [B] int, \
                                     target_lengths [B] int -> loss, aux nll [B] */             \
    X(ADAMW, "adamw")             /* in-place on in[0..3] = param, grad, m, v; no outputs */   \
    X(SCALED_ADAM_STATS, "scaled_adam_stats") /* param, grad -> f64 [3]: sum(p g), sum(p p),   \
                                     sum(g g), each accumulated in f64; no backward */          \
    X(SCALED_ADAM, "scaled_adam") /* in-place on in[0..3] = param, grad, delta, exp_avg_sq;    \
                                     lu_scaled_adam_params; no outputs */

typedef enum lu_op {
#define LU_OP_ENUM(name, str) LU_OP_##name,
    LU_OP_LIST(LU_OP_ENUM)
#undef LU_OP_ENUM
    LU_OP_COUNT
} lu_op;

const char *lu_op_name(lu_op op);

#define LU_MAX_IO 16          /* most inputs or outputs of one op (concat) */
#define LU_MAX_PARAMS 128     /* bytes of a params struct */

typedef struct lu_op_call {
    lu_op op;
    lu_tensor *in[3 * LU_MAX_IO];
    int n_in;
    lu_tensor *out[LU_MAX_IO];
    int n_out;
    const void *params;
} lu_op_call;

/* ---- params structs ---------------------------------------------------------------------- */

typedef struct lu_matmul_params { bool trans_a, trans_b; } lu_matmul_params; /* a/b stored transposed */
typedef struct lu_affine_params { double alpha, beta; } lu_affine_params;
typedef struct lu_gelu_params { bool tanh_approx; } lu_gelu_params;
typedef struct lu_dim_params { int dim; } lu_dim_params;
/* dim == LU_ALL_DIMS reduces everything to one element. The output keeps the reduced dim with
 * size 1 (the frontend reshapes when keepdim is false). */
#define LU_ALL_DIMS (-1)
typedef struct lu_reduce_params { int dim; } lu_reduce_params;

typedef enum lu_reduction { LU_REDUCE_MEAN = 0, LU_REDUCE_SUM, LU_REDUCE_NONE } lu_reduction;
/* Mean is over targets != ignore_index. */
typedef struct lu_cross_entropy_params { int64_t ignore_index; lu_reduction reduction; } lu_cross_entropy_params;
typedef struct lu_norm_params { double eps; } lu_norm_params;
/* theta: rope base; rotary_dim: leading part of D rotated (0 = all D). */
typedef struct lu_rope_params { double theta; int rotary_dim; } lu_rope_params;
/* scale: multiplies q.k (0 = 1/sqrt(D)). Causal with Tq != Tk aligns the last query with the
 * last key (as a KV cache does). */
typedef struct lu_attention_params { bool causal; double scale; bool return_weights; } lu_attention_params;
typedef struct lu_conv1d_params { int stride, padding, dilation, groups; } lu_conv1d_params;
typedef struct lu_conv2d_params { int stride[2], padding[2], dilation[2], groups; } lu_conv2d_params;
typedef struct lu_batchnorm_params { bool training; double momentum, eps; } lu_batchnorm_params;
/* Element i is dropped when philox(seed, step, op_id, i) < p; kept ones are scaled by 1/(1-p). */
typedef struct lu_dropout_params { double p; uint64_t seed, step; uint32_t op_id; } lu_dropout_params;
typedef struct lu_resample_params { int dim, factor; int64_t out_len; } lu_resample_params;
/* Loss per sample is -log p(target | x); mean reduction divides each by its target length and
 * averages over the batch (torch.nn.CTCLoss). */
typedef struct lu_ctc_params { int blank; lu_reduction reduction; bool zero_infinity; } lu_ctc_params;
/* Decoupled weight decay: p -= lr*wd*p; m,v moments with bias correction at `step` (1-based). */
typedef struct lu_adamw_params { double lr, beta1, beta2, eps, weight_decay; int64_t step; } lu_adamw_params;
/* One tensor's ScaledAdam update (icefall optim.py), its per-tensor scalars computed on the host
 * (core/optim.c): with g' = g * grad_scale (grad_scale 0: g' = 0, as icefall zeroes non-finite
 * steps), v <- beta2 v + (1 - beta2) g'^2; d = -lr g' / (sqrt(v inv_bc2) + eps) * factor, plus
 * p * scale_step when size_update; delta <- beta1 delta + (1 - beta1) d; p <- p + delta, then
 * clamped to [-clamp, clamp] when clamped (scalar parameters). */
typedef struct lu_scaled_adam_params {
    double grad_scale, lr, factor, inv_bc2, scale_step, clamp, beta1, beta2, eps;
    bool size_update, clamped;
} lu_scaled_adam_params;

#endif
