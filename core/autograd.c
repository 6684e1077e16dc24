/* autograd.c - op dispatch, the tape and the reverse pass (see autograd.h). */
#include "autograd.h"

#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "backend.h"
#include "ops.h"
#include "profile.h"

static _Thread_local bool grad_disabled;
static _Thread_local lu_node *tape;
static _Thread_local int tape_len, tape_cap;

bool lu_grad_enabled(void) { return !grad_disabled; }

bool lu_grad_set_enabled(bool enabled)
{
    bool prev = !grad_disabled;
    grad_disabled = !enabled;
    return prev;
}

void lu_tensor_set_requires_grad(lu_tensor *t, bool requires) { t->requires_grad = requires; }

int lu_tape_size(void) { return tape_len; }

static void node_release(lu_node *n)
{
    for (int i = 0; i < n->n_in; i++) lu_tensor_release(n->in[i]);
    for (int i = 0; i < n->n_out; i++) lu_tensor_release(n->out[i]);
}

void lu_tape_clear(void)
{
    for (int i = 0; i < tape_len; i++) node_release(&tape[i]);
    tape_len = 0;
}

static bool needs_record(lu_tensor **in, int n_in)
{
    if (grad_disabled) return false;
    for (int i = 0; i < n_in; i++)
        if (in[i] && in[i]->requires_grad) return true;
    return false;
}

static lu_status record(lu_op op, lu_backward_fn fn, lu_tensor **in, int n_in, lu_tensor **out, int n_out,
                        const void *params, size_t params_size)
{
    if (n_in > LU_MAX_IO || n_out > LU_MAX_IO || params_size > LU_MAX_PARAMS)
        return lu_errorf(LU_ERR_INVALID, "%s: too many tensors or params for the tape", lu_op_name(op));
    if (tape_len == tape_cap) {
        int cap = tape_cap ? 2 * tape_cap : 256;
        lu_node *t = realloc(tape, (size_t)cap * sizeof *t);
        if (!t) return lu_errorf(LU_ERR_NOMEM, "autograd: cannot grow the tape to %d nodes", cap);
        tape = t;
        tape_cap = cap;
    }
    lu_node *n = &tape[tape_len++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->backward = fn;
    n->n_in = n_in;
    n->n_out = n_out;
    for (int i = 0; i < n_in; i++) n->in[i] = lu_tensor_retain(in[i]);
    for (int i = 0; i < n_out; i++) {
        n->out[i] = lu_tensor_retain(out[i]);
        if (out[i] && lu_dtype_is_float(out[i]->dtype)) {
            out[i]->requires_grad = true;
            out[i]->is_leaf = false;
        }
    }
    if (params_size) memcpy(n->params, params, params_size);
    return LU_OK;
}

/* Runs a kernel, timed (device synchronised) under LUTHIER_PROFILE. */
static lu_status timed_kernel(lu_backend *b, lu_kernel k, const lu_op_call *call, lu_profile_dir dir)
{
    if (!lu_profile_enabled()) return k(call);
    double t0 = lu_profile_begin();
    lu_status s = k(call);
    if (s == LU_OK) s = b->synchronize();
    lu_profile_end(call->op, dir, t0);
    return s;
}

lu_status lu_op_run(lu_op op, lu_tensor **in, int n_in, lu_tensor **out, int n_out, const void *params,
                    size_t params_size)
{
    lu_tensor *first = NULL;
    for (int i = 0; i < n_in && !first; i++) first = in[i];
    lu_device dev = first ? lu_tensor_device(first) : LU_CPU;
    for (int i = 0; i < n_in; i++) {
        if (in[i] && lu_tensor_device(in[i]) != dev)
            return lu_errorf(LU_ERR_DEVICE, "%s: input %d is on %s, input 0 on %s", lu_op_name(op), i,
                             lu_device_name(lu_tensor_device(in[i])), lu_device_name(dev));
    }
    lu_backend *b = lu_backend_get(dev);
    if (!b) return lu_error_context("%s: ", lu_op_name(op));
    if (!b->forward[op])
        return lu_errorf(LU_ERR_UNSUPPORTED, "%s: not implemented on the %s backend", lu_op_name(op), b->name);
    lu_op_call call = {.op = op, .n_in = n_in, .n_out = n_out, .params = params};
    memcpy(call.in, in, (size_t)n_in * sizeof *in);
    memcpy(call.out, out, (size_t)n_out * sizeof *out);
    LU_TRY(timed_kernel(b, b->forward[op], &call, LU_PROFILE_FORWARD));
    if (b->backward[op] && needs_record(in, n_in)) return record(op, NULL, in, n_in, out, n_out, params, params_size);
    return LU_OK;
}

lu_status lu_node_record(lu_backward_fn backward, lu_tensor **in, int n_in, lu_tensor **out, int n_out,
                         const void *params, size_t params_size)
{
    if (!needs_record(in, n_in)) return LU_OK;
    return record(LU_OP_COUNT, backward, in, n_in, out, n_out, params, params_size);
}

/* Adds g into t->grad, taking ownership of g. Preallocated gradients (parameters) are added
 * into in place so that they stay inside the parameter store's flat buffer. */
static lu_status accumulate(lu_tensor *t, lu_tensor *g)
{
    if (!t->grad) {
        if (g->arena != NULL && g->arena != t->arena) {
            /* t outlives g's arena (a leaf on the heap, a tensor of the step seen from a
             * recomputation's scratch arena): its gradient goes where t lives. */
            lu_arena *prev = lu_arena_activate(t->arena);
            lu_tensor *copy = lu_tensor_empty_like(g);
            lu_arena_activate(prev);
            lu_status st = copy ? lu_tensor_copy(copy, g) : lu_error_code();
            lu_tensor_release(g);
            if (st) {
                lu_tensor_release(copy);
                return st;
            }
            t->grad = copy;
            return LU_OK;
        }
        t->grad = g;
        return LU_OK;
    }
    lu_backend *b = lu_backend_get(lu_tensor_device(t->grad));
    if (!b) return lu_error_code();
    lu_op_call call = {.op = LU_OP_ACCUMULATE, .n_in = 1, .n_out = 1};
    call.in[0] = g;
    call.out[0] = t->grad;
    lu_status s = timed_kernel(b, b->forward[LU_OP_ACCUMULATE], &call, LU_PROFILE_BACKWARD);
    lu_tensor_release(g);
    return s;
}

static lu_status run_node(lu_node *n)
{
    lu_tensor *dy[LU_MAX_IO] = {0}, *dx[LU_MAX_IO] = {0};
    bool needs[LU_MAX_IO] = {0}, any_dy = false, any_need = false;
    for (int j = 0; j < n->n_out; j++) {
        dy[j] = n->out[j] ? n->out[j]->grad : NULL;
        any_dy |= dy[j] != NULL;
    }
    for (int i = 0; i < n->n_in; i++) {
        needs[i] = n->in[i] && n->in[i]->requires_grad && lu_dtype_is_float(n->in[i]->dtype);
        any_need |= needs[i];
    }
    if (!any_dy || !any_need) return LU_OK;
    if (n->op == LU_OP_COUNT) {
        bool timed = lu_profile_enabled();
        double t0 = timed ? lu_profile_begin() : 0;
        lu_status s = n->backward(n, dy, dx, needs);
        if (timed) lu_profile_end(LU_OP_COUNT, LU_PROFILE_BACKWARD, t0);
        LU_TRY(s);
    } else {
        lu_backend *b = lu_backend_get(lu_tensor_device(n->out[0] ? n->out[0] : n->in[0]));
        if (!b) return lu_error_code();
        lu_op_call call = {.op = n->op, .n_in = 2 * n->n_out + n->n_in, .n_out = n->n_in, .params = n->params};
        for (int j = 0; j < n->n_out; j++) {
            call.in[j] = dy[j];
            call.in[n->n_out + n->n_in + j] = n->out[j];
        }
        for (int i = 0; i < n->n_in; i++) {
            call.in[n->n_out + i] = n->in[i];
            if (needs[i]) {
                dx[i] = lu_tensor_empty_like(n->in[i]);
                if (!dx[i]) return lu_error_code();
            }
            call.out[i] = dx[i];
        }
        lu_status s = timed_kernel(b, b->backward[n->op], &call, LU_PROFILE_BACKWARD);
        if (s) {
            for (int i = 0; i < n->n_in; i++) lu_tensor_release(dx[i]);
            return lu_error_context("%s backward: ", lu_op_name(n->op));
        }
    }
    for (int i = 0; i < n->n_in; i++) {
        if (!dx[i]) continue;
        if (!needs[i]) {
            lu_tensor_release(dx[i]);
            continue;
        }
        LU_TRY(accumulate(n->in[i], dx[i]));
    }
    /* Gradients of intermediate outputs are no longer needed once propagated. */
    for (int j = 0; j < n->n_out; j++) {
        lu_tensor *y = n->out[j];
        if (y && !y->is_leaf && y->grad) {
            lu_tensor_release(y->grad);
            y->grad = NULL;
        }
    }
    return LU_OK;
}

lu_status lu_backward_from(lu_tensor *y, lu_tensor *dy)
{
    if (!lu_tensor_same_shape(y, dy) || y->dtype != dy->dtype) {
        char a[LU_SHAPE_STR_MAX], b[LU_SHAPE_STR_MAX];
        lu_tape_clear();
        return lu_errorf(LU_ERR_SHAPE, "backward: output %s %s and its gradient %s %s differ", lu_shape_str(y, a, sizeof a),
                         lu_dtype_name(y->dtype), lu_shape_str(dy, b, sizeof b), lu_dtype_name(dy->dtype));
    }
    if (!y->requires_grad) {
        lu_tape_clear();
        return lu_errorf(LU_ERR_STATE, "backward: the output does not depend on any tensor requiring a gradient");
    }
    lu_tensor *seed = lu_contiguous(dy);
    if (!seed) {
        lu_tape_clear();
        return lu_error_code();
    }
    /* Custom backward functions call ops; those must not append to the tape being walked. */
    bool prev = lu_grad_set_enabled(false);
    /* Gradients die as soon as they are propagated: their arena memory is reused within the step
     * (arena.h), so backward does not add every gradient of the step to the forward's peak. */
    lu_arena *arena = lu_arena_current();
    bool recycling = arena ? lu_arena_set_recycling(arena, true) : false;
    lu_status s = accumulate(y, seed);
    for (int i = tape_len - 1; i >= 0 && s == LU_OK; i--) s = run_node(&tape[i]);
    if (arena) lu_arena_set_recycling(arena, recycling);
    lu_grad_set_enabled(prev);
    if (!y->is_leaf && y->grad) {
        lu_tensor_release(y->grad);
        y->grad = NULL;
    }
    lu_tape_clear();
    return s;
}

/* ---- recomputation ---- */

typedef struct recompute_params {
    lu_recompute_fn fn;
    void *ctx;
} recompute_params;

/* The copy of x in the active arena (a computation's result leaving its scratch arena). */
static lu_tensor *copy_out(lu_tensor *x)
{
    lu_tensor *y = x ? lu_tensor_empty_like(x) : NULL;
    if (y && lu_tensor_copy(y, x)) {
        lu_tensor_release(y);
        return NULL;
    }
    return y;
}

static lu_status recompute_backward(lu_node *n, lu_tensor **grad_out, lu_tensor **grad_in, const bool *needs)
{
    const recompute_params *p = (const recompute_params *)n->params;
    lu_arena *main = lu_arena_current(), *scratch = main ? lu_arena_scratch(main) : NULL;
    if (!scratch) return main ? lu_error_code() : lu_errorf(LU_ERR_STATE, "recompute: backward without an arena");
    if (!grad_out[0]) return LU_OK;
    /* The recomputation records on a tape of its own, walked and cleared by its own backward;
     * the outer tape, being walked, is set aside meanwhile. */
    lu_node *outer = tape;
    int outer_len = tape_len, outer_cap = tape_cap;
    tape = NULL;
    tape_len = tape_cap = 0;
    lu_arena *prev = lu_arena_activate(scratch);
    bool grad = lu_grad_set_enabled(true);
    lu_tensor *in[LU_MAX_IO] = {0};
    lu_status s = LU_OK;
    for (int i = 0; i < n->n_in && !s; i++) {
        /* Leaves sharing the saved inputs' storage: their gradients are this node's. */
        in[i] = lu_detach(n->in[i]);
        if (!in[i]) s = lu_error_code();
        else if (needs[i]) lu_tensor_set_requires_grad(in[i], true);
    }
    lu_tensor *y = s ? NULL : p->fn(p->ctx, in, n->n_in);
    if (!s && !y) s = lu_error_context("recompute: ");
    if (!s && y->requires_grad) s = lu_backward_from(y, grad_out[0]);
    lu_grad_set_enabled(grad);
    lu_arena_activate(main);
    for (int i = 0; i < n->n_in && !s; i++)
        if (needs[i] && in[i]->grad && !(grad_in[i] = copy_out(in[i]->grad))) s = lu_error_code();
    lu_tape_clear(); /* what an error left of the recomputation's tape */
    free(tape);
    tape = outer;
    tape_len = outer_len;
    tape_cap = outer_cap;
    lu_arena_reset(scratch);
    lu_arena_activate(prev);
    return s;
}

lu_tensor *lu_recompute(lu_recompute_fn fn, void *ctx, lu_tensor **in, int n_in)
{
    lu_arena *main = lu_arena_current();
    if (!needs_record(in, n_in) || !main) return fn(ctx, in, n_in);
    if (n_in > LU_MAX_IO) {
        lu_errorf(LU_ERR_INVALID, "recompute: %d inputs, at most %d", n_in, LU_MAX_IO);
        return NULL;
    }
    lu_arena *scratch = lu_arena_scratch(main);
    if (!scratch) return NULL;
    lu_arena_activate(scratch);
    bool grad = lu_grad_set_enabled(false);
    lu_tensor *ys = fn(ctx, in, n_in);
    lu_grad_set_enabled(grad);
    lu_arena_activate(main);
    lu_tensor *y = copy_out(ys);
    lu_arena_reset(scratch);
    if (!y) return NULL;
    recompute_params p = {fn, ctx};
    if (lu_node_record(recompute_backward, in, n_in, &y, 1, &p, sizeof p)) {
        lu_tensor_release(y);
        return NULL;
    }
    return y;
}

lu_status lu_backward(lu_tensor *loss)
{
    if (lu_tensor_numel(loss) != 1) {
        char s[LU_SHAPE_STR_MAX];
        lu_tape_clear();
        return lu_errorf(LU_ERR_SHAPE, "backward: the loss must have one element, got shape %s",
                         lu_shape_str(loss, s, sizeof s));
    }
    lu_tensor *seed = lu_tensor_full(loss->dtype, loss->ndim, loss->shape, lu_tensor_device(loss), 1.0);
    if (!seed) {
        lu_tape_clear();
        return lu_error_code();
    }
    lu_status s = lu_backward_from(loss, seed);
    lu_tensor_release(seed);
    return s;
}

void lu_tensor_zero_grad(lu_tensor *t)
{
    if (!t->grad) return;
    if (t->is_param) {
        lu_tensor_fill(t->grad, 0.0);
        return;
    }
    lu_tensor_release(t->grad);
    t->grad = NULL;
}
