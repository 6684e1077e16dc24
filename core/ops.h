/* ops.h - the differentiable op API that model code calls.
 *
 * Each function checks its arguments (naming the op, shapes and dtypes in the error), allocates
 * its result on the inputs' device, runs the backend kernel and records the op for autograd.
 * Returns a new tensor, or NULL with an error recorded (error.h). Negative dims count from the
 * end. Results belong to the caller (lu_tensor_release), or to the active arena.
 *
 * A NULL required input means an earlier op failed: the op returns NULL and leaves that error
 * in place, so a chain of ops (a model's forward pass) needs one check, at its end. */
#ifndef LU_OPS_H
#define LU_OPS_H

#include "op.h"

#define LU_PROPAGATE_NULL(...)                                                   \
    do {                                                                         \
        const lu_tensor *lu_pn_[] = {__VA_ARGS__};                               \
        for (size_t lu_pn_i_ = 0; lu_pn_i_ < sizeof lu_pn_ / sizeof *lu_pn_; lu_pn_i_++) \
            if (!lu_pn_[lu_pn_i_]) return NULL;                                  \
    } while (0)

/* ---- views and layout (core/view.c) ---- */
lu_tensor *lu_reshape(lu_tensor *x, int ndim, const int64_t *shape); /* one dim may be -1 */
lu_tensor *lu_transpose(lu_tensor *x, int d0, int d1);
lu_tensor *lu_permute(lu_tensor *x, const int *perm);
lu_tensor *lu_slice(lu_tensor *x, int dim, int64_t start, int64_t end, int64_t step);
lu_tensor *lu_expand(lu_tensor *x, int ndim, const int64_t *shape);  /* size-1 dims broadcast */
lu_tensor *lu_unsqueeze(lu_tensor *x, int dim);
lu_tensor *lu_squeeze(lu_tensor *x, int dim);
/* n pieces of sizes[i] along dim; out receives n views. */
lu_status lu_split(lu_tensor *x, int dim, int n, const int64_t *sizes, lu_tensor **out);
lu_tensor *lu_contiguous(lu_tensor *x);      /* retains x when already contiguous */
lu_tensor *lu_cast(lu_tensor *x, lu_dtype dt);
lu_tensor *lu_detach(lu_tensor *x);          /* shares storage, no gradient */

/* ---- linear algebra (core/ops_matmul.c) ---- */
/* a [..., M, K] @ b [..., K, N]; batch dims equal, or b 2-D (shared). Flags read a/b transposed. */
lu_tensor *lu_matmul(lu_tensor *a, lu_tensor *b, bool trans_a, bool trans_b);
/* x [..., in] @ w[out, in]^T + bias[out] (bias may be NULL), as torch.nn.Linear. */
lu_tensor *lu_linear(lu_tensor *x, lu_tensor *w, lu_tensor *bias);

/* ---- elementwise (core/ops_elementwise.c) ---- */
lu_tensor *lu_add(lu_tensor *a, lu_tensor *b);
lu_tensor *lu_sub(lu_tensor *a, lu_tensor *b);
lu_tensor *lu_mul(lu_tensor *a, lu_tensor *b);
lu_tensor *lu_div(lu_tensor *a, lu_tensor *b);
lu_tensor *lu_affine(lu_tensor *x, double alpha, double beta);
lu_tensor *lu_scale(lu_tensor *x, double alpha);
lu_tensor *lu_exp(lu_tensor *x);
lu_tensor *lu_log(lu_tensor *x);
lu_tensor *lu_tanh(lu_tensor *x);
lu_tensor *lu_sigmoid(lu_tensor *x);
lu_tensor *lu_relu(lu_tensor *x);
lu_tensor *lu_silu(lu_tensor *x);
/* silu(gate) * up in one op (the SwiGLU of Llama/Qwen MLPs): one pass, and no silu(gate) kept
 * for the backward. gate and up: same shape and float dtype. */
lu_tensor *lu_swiglu(lu_tensor *gate, lu_tensor *up);
lu_tensor *lu_gelu(lu_tensor *x, bool tanh_approx);
lu_tensor *lu_swoosh_l(lu_tensor *x);
lu_tensor *lu_swoosh_r(lu_tensor *x);
lu_tensor *lu_square(lu_tensor *x);
lu_tensor *lu_sqrt(lu_tensor *x);

/* ---- reductions, softmax, losses (core/ops_reduce.c) ---- */
lu_tensor *lu_sum(lu_tensor *x, int dim, bool keepdim);   /* dim LU_ALL_DIMS: all */
lu_tensor *lu_mean(lu_tensor *x, int dim, bool keepdim);
lu_tensor *lu_max(lu_tensor *x, int dim, bool keepdim);
lu_tensor *lu_softmax(lu_tensor *x, int dim);
lu_tensor *lu_log_softmax(lu_tensor *x, int dim);
/* logits [N, V] (or [..., V], flattened), target [N] i32/i64; fused log-softmax. */
lu_tensor *lu_cross_entropy(lu_tensor *logits, lu_tensor *target, int64_t ignore_index, lu_reduction red);

/* ---- indexing (core/ops_index.c) ---- */
lu_tensor *lu_embedding(lu_tensor *weight, lu_tensor *ids);
lu_tensor *lu_concat(lu_tensor **xs, int n, int dim);
lu_tensor *lu_gather(lu_tensor *x, int dim, lu_tensor *index);

/* ---- normalisation and positions (core/ops_norm.c) ---- */
lu_tensor *lu_rmsnorm(lu_tensor *x, lu_tensor *weight, double eps);
lu_tensor *lu_layernorm(lu_tensor *x, lu_tensor *weight, lu_tensor *bias, double eps);
/* icefall BiasNorm: x * exp(log_scale) / sqrt(mean((x - bias)^2)) over the last dim. */
lu_tensor *lu_biasnorm(lu_tensor *x, lu_tensor *bias, lu_tensor *log_scale);
lu_tensor *lu_rope(lu_tensor *x, lu_tensor *positions, double theta, int rotary_dim);

/* ---- attention (core/ops_attention.c) ---- */
typedef struct lu_attention_opts {
    bool causal;
    double scale;                  /* 0: 1/sqrt(head_dim) */
    lu_tensor *key_padding_mask;   /* [B, Tk] u8/bool, nonzero = ignore; or NULL */
    lu_tensor *cu_seqlens;         /* [S+1] i32 cumulative lengths of packed sequences; or NULL */
    lu_tensor **weights_out;       /* if non-NULL receives the attention weights [B,Hq,Tq,Tk] */
} lu_attention_opts;
lu_tensor *lu_attention(lu_tensor *q, lu_tensor *k, lu_tensor *v, const lu_attention_opts *opts);
/* Applies given attention weights [B,H,Tq,Tk] to v [B,Tk,H,Dv] -> [B,Tq,H,Dv] (Zipformer reuse). */
lu_tensor *lu_attention_apply(lu_tensor *weights, lu_tensor *v);

/* ---- convolution, batch norm, dropout (core/ops_conv.c) ---- */
lu_tensor *lu_conv1d(lu_tensor *x, lu_tensor *w, lu_tensor *bias, int stride, int padding, int dilation, int groups);
lu_tensor *lu_conv2d(lu_tensor *x, lu_tensor *w, lu_tensor *bias, const lu_conv2d_params *p);
lu_tensor *lu_batchnorm(lu_tensor *x, lu_tensor *weight, lu_tensor *bias, lu_tensor *running_mean,
                        lu_tensor *running_var, bool training, double momentum, double eps);
/* Identity when p == 0 or grad mode off is not implied: callers pass p = 0 in eval. */
lu_tensor *lu_dropout(lu_tensor *x, double p, uint64_t seed, uint64_t step, uint32_t op_id);

/* ---- frame rate changes (core/ops_resample.c) ---- */
lu_tensor *lu_decimate(lu_tensor *x, int dim, int factor);
lu_tensor *lu_downsample(lu_tensor *x, lu_tensor *bias);          /* x [B,T,C], bias [factor] */
lu_tensor *lu_upsample(lu_tensor *x, int dim, int factor, int64_t out_len);

/* ---- CTC (core/ops_ctc.c) ---- */
lu_tensor *lu_ctc_loss(lu_tensor *log_probs, lu_tensor *targets, lu_tensor *input_lengths,
                       lu_tensor *target_lengths, int blank, lu_reduction red, bool zero_infinity);

#endif
