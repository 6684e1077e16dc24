/* autograd.h - a tape of recorded ops, replayed in reverse by lu_backward.
 *
 * Every op run while gradients are enabled and with an input that requires a gradient is
 * appended to the thread's tape with references to its inputs, outputs and a copy of its params.
 * lu_backward(loss) seeds d loss = 1, walks the tape backwards calling each op's backward kernel
 * (or the node's own backward function, for views and composite ops), accumulates gradients
 * into the inputs' ->grad, and clears the tape. Gradients of leaves add up across calls, which is
 * how micro-batches accumulate; lu_tensor_zero_grad / the optimiser reset them. */
#ifndef LU_AUTOGRAD_H
#define LU_AUTOGRAD_H

#include "op.h"

struct lu_node;
/* grad_out[j]: gradient of output j (NULL = zero). Must set grad_in[i] for each input whose
 * needs[i] is true, to a new tensor the tape takes ownership of (or leave NULL for zero). */
typedef lu_status (*lu_backward_fn)(struct lu_node *node, lu_tensor **grad_out, lu_tensor **grad_in,
                                    const bool *needs);

typedef struct lu_node {
    lu_op op;                     /* backend op, or LU_OP_COUNT for a custom node */
    lu_backward_fn backward;      /* custom nodes only */
    lu_tensor *in[LU_MAX_IO];
    int n_in;
    lu_tensor *out[LU_MAX_IO];
    int n_out;
    _Alignas(16) unsigned char params[LU_MAX_PARAMS];
} lu_node;

bool lu_grad_enabled(void);
/* Sets the mode and returns the previous one: bool prev = lu_grad_set_enabled(false); ... */
bool lu_grad_set_enabled(bool enabled);

/* Marks a leaf tensor as needing a gradient. */
void lu_tensor_set_requires_grad(lu_tensor *t, bool requires);
/* Frees (or zeroes, for preallocated parameter gradients) t->grad. */
void lu_tensor_zero_grad(lu_tensor *t);

/* Runs the backward pass from a one-element tensor and clears the tape. */
lu_status lu_backward(lu_tensor *loss);
/* Backward from any output y with a given gradient dy (a vector-Jacobian product). */
lu_status lu_backward_from(lu_tensor *y, lu_tensor *dy);
/* Drops the tape without computing gradients (e.g. after a no-grad evaluation mistake). */
void lu_tape_clear(void);
int lu_tape_size(void);

/* Used by op frontends: runs the op's forward kernel on the inputs' device and records it. */
lu_status lu_op_run(lu_op op, lu_tensor **in, int n_in, lu_tensor **out, int n_out,
                    const void *params, size_t params_size);
/* Records a custom node (views, composite ops) when grad mode is on and an input requires a
 * gradient; marks the outputs as requiring gradients. */
lu_status lu_node_record(lu_backward_fn backward, lu_tensor **in, int n_in, lu_tensor **out, int n_out,
                         const void *params, size_t params_size);

/* Recomputation (gradient checkpointing): y = fn(ctx, in), whose inner activations are not kept
 * for backward. With gradients on and an arena active, fn runs without a tape in the arena's
 * scratch arena, y is copied out and the scratch dropped; backward runs fn again on the saved
 * inputs, with a tape, in the scratch arena, and takes its gradients from that: the step holds
 * each call's inputs and output instead of every activation inside. fn must give the same result
 * on both runs (it may read more tensors from ctx, e.g. weights: their gradients are added
 * directly during the recomputation); ctx must stay valid until the backward (allocate it from
 * the arena). Without gradients or without an arena it is fn(ctx, in). */
typedef lu_tensor *(*lu_recompute_fn)(void *ctx, lu_tensor **in, int n_in);
lu_tensor *lu_recompute(lu_recompute_fn fn, void *ctx, lu_tensor **in, int n_in);

#endif
