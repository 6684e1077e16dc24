/* optim.h - optimisers over a parameter store (params.h) and global gradient-norm clipping.
 *
 * AdamW is torch.optim.AdamW (decoupled weight decay p *= 1 - lr*wd, bias-corrected moments,
 * no amsgrad), run as the backend op LU_OP_ADAMW on runs of trainable tensors of the flat
 * buffers, so it works on any backend that implements that op.
 *
 * ScaledAdam is icefall's optimiser (reference/asr.md 9.6): Adam steps scaled by each tensor's
 * rms, a learned tensor scale updated every size_update_period steps, scalar parameters (numel 1)
 * with lr * scalar_lr_scale and no rms factor, momentum on the combined update, and its own
 * gradient clipping at clipping_scale x the median of recent (rms-weighted) gradient norms. It
 * updates f32 parameters on any backend (and f64 ones on the CPU): each tensor's sums by the
 * SCALED_ADAM_STATS op (one read of them all per step), its scalars on the host (off the CPU on
 * a host copy of the small per-tensor state, fetched before and written back after each step),
 * the elementwise update by the SCALED_ADAM op. It never modifies the store's gradients.
 *
 * All optimiser state lives in a store of its own (lu_optim_state): per-parameter tensors named
 * "<state>.<param>" plus globals ("step", ...), so that a checkpoint saves and restores it
 * exactly. Non-trainable tensors of the store are never touched. */
#ifndef LU_OPTIM_H
#define LU_OPTIM_H

#include "params.h"

typedef enum lu_optim_kind { LU_OPTIM_ADAMW, LU_OPTIM_SCALED_ADAM } lu_optim_kind;

/* "adamw|scaled_adam", in enum order, for config enums. */
extern const char *const lu_optim_kind_names;

typedef struct lu_optim_config {
    lu_optim_kind kind;
    double beta1, beta2, eps, weight_decay; /* weight_decay: AdamW only */
    double clipping_scale;                  /* ScaledAdam, 2.0; 0 = no clipping */
    double scalar_lr_scale;                 /* ScaledAdam, 0.1 */
    double param_min_rms, param_max_rms, scalar_max;
    int size_update_period;
} lu_optim_config;

/* AdamW: torch defaults (0.9, 0.999, 1e-8, wd 0.01). ScaledAdam: icefall defaults (0.9, 0.98,
 * 1e-8, clipping 2.0, scalar_lr_scale 0.1, rms in [1e-5, 3.0], scalar_max 10, period 4). */
void lu_optim_config_defaults(lu_optim_config *c, lu_optim_kind kind);

typedef struct lu_optim lu_optim;

/* Allocates the state (zeros) for every trainable tensor of the finalized store p, which must
 * outlive the optimiser. */
lu_optim *lu_optim_new(lu_params *p, const lu_optim_config *c);
/* One update with learning rate lr from the store's gradients; increments the step. */
lu_status lu_optim_step(lu_optim *o, double lr);
int64_t lu_optim_steps(const lu_optim *o);
const char *lu_optim_kind_name(lu_optim_kind kind);
lu_optim_kind lu_optim_get_kind(const lu_optim *o);
/* The state store: "exp_avg.<param>", "exp_avg_sq.<param>", ... and "step" (i64 [1]). */
lu_params *lu_optim_state(lu_optim *o);
void lu_optim_free(lu_optim *o);

/* L2 norm over all trainable gradients, accumulated in a fixed order: in double on the CPU; for
 * f32 gradients on another device, on that device in f32 partial sums (the backend's SUM) with
 * one host read of the total. NaN or Inf when a gradient holds one, NaN with an error recorded
 * when the gradients cannot be read. */
double lu_grad_global_norm(lu_params *p);
/* torch.nn.utils.clip_grad_norm_: scales every gradient by max_norm / (norm + 1e-6) when that is
 * below 1, and returns the norm before clipping (NaN on failure, as lu_grad_global_norm). */
double lu_clip_grad_norm(lu_params *p, double max_norm);

#endif
