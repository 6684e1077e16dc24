/* optim.c - AdamW and ScaledAdam over the flat parameter store, and gradient-norm clipping
 * (see optim.h; ScaledAdam formulas from icefall optim.py, reference/asr.md 9.6). */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "autograd.h"
#include "backend.h"
#include "ops.h"

const char *const lu_optim_kind_names = "adamw|scaled_adam";

/* icefall ScaledAdam: clipping_update_period, and the early steps at which the threshold is
 * estimated from the norms seen so far. */
#define SA_CLIP_PERIOD 100
static const int64_t sa_early_estimates[] = {10, 20, 40};

/* One trainable parameter and its state tensors (views into the state store).
 * AdamW: a = exp_avg, b = exp_avg_sq. ScaledAdam: a = delta (momentum of the update),
 * b = exp_avg_sq, and for non-scalars rms = param_rms [1], scale_sq = scale_exp_avg_sq [1],
 * scale_grads [size_update_period]; hrms, hscale_sq, hscale_grads are the same three as the host
 * reads and writes them (the tensors themselves on the CPU, views of the host mirror otherwise). */
typedef struct slot {
    lu_tensor *p, *a, *b, *rms, *scale_sq, *scale_grads;
    lu_tensor *hrms, *hscale_sq, *hscale_grads;
} slot;

/* ScaledAdam's small state (the per-tensor scalars, the recent norms and the threshold) sits at
 * the end of each dtype's state buffer, after every delta and exp_avg_sq (declare_state); off the
 * CPU the host works on a copy of that tail, fetched before each step and written back after. */
typedef struct mirror {
    lu_tensor *dev, *host; /* views: the tail of the state buffer, and its host copy */
    size_t start;          /* element offset of the tail in the state buffer */
} mirror;

/* A run of trainable tensors that sit back to back in the parameter, gradient and both moment
 * buffers: AdamW updates it with one op call. */
typedef struct run {
    lu_tensor *p, *g, *m, *v;
} run;

struct lu_optim {
    lu_optim_config cfg;
    lu_params *params, *state;
    lu_tensor *step;                 /* i64 [1]: steps taken */
    lu_tensor *norms, *threshold;    /* ScaledAdam: f64 [100] recent norms; f64 [1], < 0 = not set */
    slot *slots;
    int n_slots;
    run *runs;
    int n_runs;
    /* ScaledAdam: per-slot sums [n_slots, 3] f64 on the parameters' device and on the host; the
     * host views of norms and threshold; the mirrors (off the CPU only). */
    lu_tensor *stats;
    double *host_stats;
    lu_tensor *hnorms, *hthreshold;
    mirror mirrors[LU_DTYPE_COUNT];
};

void lu_optim_config_defaults(lu_optim_config *c, lu_optim_kind kind)
{
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->eps = 1e-8;
    c->beta1 = 0.9;
    if (kind == LU_OPTIM_ADAMW) {
        c->beta2 = 0.999;      /* torch.optim.AdamW */
        c->weight_decay = 0.01;
    } else {
        c->beta2 = 0.98;       /* icefall ScaledAdam, clipping_scale from zipformer/train.py */
        c->clipping_scale = 2.0;
        c->scalar_lr_scale = 0.1;
        c->param_min_rms = 1e-5;
        c->param_max_rms = 3.0;
        c->scalar_max = 10.0;
        c->size_update_period = 4;
    }
}

const char *lu_optim_kind_name(lu_optim_kind kind) { return kind == LU_OPTIM_ADAMW ? "adamw" : "scaled_adam"; }
lu_optim_kind lu_optim_get_kind(const lu_optim *o) { return o->cfg.kind; }
lu_params *lu_optim_state(lu_optim *o) { return o->state; }
int64_t lu_optim_steps(const lu_optim *o) { return (int64_t)lu_tensor_item(o->step); }

void lu_optim_free(lu_optim *o)
{
    if (!o) return;
    for (int i = 0; i < o->n_runs; i++) {
        lu_tensor_release(o->runs[i].p);
        lu_tensor_release(o->runs[i].g);
        lu_tensor_release(o->runs[i].m);
        lu_tensor_release(o->runs[i].v);
    }
    free(o->runs);
    for (int i = 0; i < o->n_slots && o->params->device != LU_CPU; i++) {
        lu_tensor_release(o->slots[i].hrms);
        lu_tensor_release(o->slots[i].hscale_sq);
        lu_tensor_release(o->slots[i].hscale_grads);
    }
    if (o->params->device != LU_CPU) {
        lu_tensor_release(o->hnorms);
        lu_tensor_release(o->hthreshold);
    }
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        lu_tensor_release(o->mirrors[d].dev);
        lu_tensor_release(o->mirrors[d].host);
    }
    lu_tensor_release(o->stats);
    free(o->host_stats);
    free(o->slots);
    lu_params_free(o->state);
    free(o);
}

static lu_status check_config(const lu_optim_config *c)
{
    if (c->kind != LU_OPTIM_ADAMW && c->kind != LU_OPTIM_SCALED_ADAM)
        return lu_errorf(LU_ERR_CONFIG, "optim: unknown optimiser kind %d", (int)c->kind);
    const char *k = lu_optim_kind_name(c->kind);
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
        return lu_errorf(LU_ERR_CONFIG, "%s: betas must lie in [0, 1), got (%g, %g)", k, c->beta1, c->beta2);
    if (!(c->eps >= 0) || !(c->weight_decay >= 0))
        return lu_errorf(LU_ERR_CONFIG, "%s: eps (%g) and weight_decay (%g) must be >= 0", k, c->eps, c->weight_decay);
    if (c->kind == LU_OPTIM_SCALED_ADAM) {
        if (c->size_update_period < 1)
            return lu_errorf(LU_ERR_CONFIG, "scaled_adam: size_update_period must be >= 1, got %d", c->size_update_period);
        if (!(c->clipping_scale >= 0) || !(c->param_min_rms > 0) || !(c->param_max_rms > c->param_min_rms))
            return lu_errorf(LU_ERR_CONFIG, "scaled_adam: need clipping_scale >= 0 and 0 < param_min_rms < "
                             "param_max_rms, got %g, %g, %g", c->clipping_scale, c->param_min_rms, c->param_max_rms);
    }
    return LU_OK;
}

/* "<what>.<name>" in a new string (caller frees), or NULL with an error. */
static char *state_name(const char *what, const char *name)
{
    size_t n = strlen(what) + strlen(name) + 2;
    char *full = malloc(n);
    if (full) snprintf(full, n, "%s.%s", what, name);
    else lu_errorf(LU_ERR_NOMEM, "optim: out of memory");
    return full;
}

/* Declares state tensor "<what>.<param name>" in the state store. */
static lu_status declare(lu_params *st, const char *what, const char *name, lu_dtype dt, int ndim,
                         const int64_t *shape)
{
    char *full = state_name(what, name);
    lu_tensor *t = full ? lu_params_add(st, full, dt, ndim, shape, false) : NULL;
    free(full);
    return t ? LU_OK : lu_error_code();
}

static lu_tensor *state_of(lu_params *st, const char *what, const char *name)
{
    char *full = state_name(what, name);
    const lu_param *q = full ? lu_params_find(st, full) : NULL;
    free(full);
    return q ? q->t : NULL;
}

static lu_status declare_state(lu_optim *o)
{
    lu_params *p = o->params, *st = o->state;
    bool scaled = o->cfg.kind == LU_OPTIM_SCALED_ADAM;
    /* All first moments, then all second moments: a run of adjacent parameters has adjacent
     * moments too (see build_runs). */
    const char *names[2] = {scaled ? "delta" : "exp_avg", "exp_avg_sq"};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < p->n; i++) {
            const lu_param *q = &p->items[i];
            if (q->trainable) LU_TRY(declare(st, names[k], q->name, q->t->dtype, q->t->ndim, q->t->shape));
        }
    if (scaled) {
        for (int i = 0; i < p->n; i++) {
            const lu_param *q = &p->items[i];
            if (!q->trainable || lu_tensor_numel(q->t) == 1) continue;
            LU_TRY(declare(st, "param_rms", q->name, q->t->dtype, 1, (int64_t[]){1}));
            LU_TRY(declare(st, "scale_exp_avg_sq", q->name, q->t->dtype, 1, (int64_t[]){1}));
            LU_TRY(declare(st, "scale_grads", q->name, q->t->dtype, 1, (int64_t[]){o->cfg.size_update_period}));
        }
        if (!(o->norms = lu_params_add(st, "model_norms", LU_F64, 1, (int64_t[]){SA_CLIP_PERIOD}, false)) ||
            !(o->threshold = lu_params_add(st, "model_norm_threshold", LU_F64, 1, (int64_t[]){1}, false)))
            return lu_error_code();
    }
    if (!(o->step = lu_params_add(st, "step", LU_I64, 1, (int64_t[]){1}, false))) return lu_error_code();
    return lu_params_finalize(st);
}

static lu_status bind_slots(lu_optim *o)
{
    lu_params *p = o->params;
    bool scaled = o->cfg.kind == LU_OPTIM_SCALED_ADAM;
    o->slots = calloc((size_t)p->n, sizeof *o->slots);
    if (!o->slots) return lu_errorf(LU_ERR_NOMEM, "optim: out of memory");
    for (int i = 0; i < p->n; i++) {
        const lu_param *q = &p->items[i];
        if (!q->trainable) continue;
        slot *s = &o->slots[o->n_slots++];
        s->p = q->t;
        s->a = state_of(o->state, scaled ? "delta" : "exp_avg", q->name);
        s->b = state_of(o->state, "exp_avg_sq", q->name);
        if (scaled && lu_tensor_numel(q->t) > 1) {
            s->rms = state_of(o->state, "param_rms", q->name);
            s->scale_sq = state_of(o->state, "scale_exp_avg_sq", q->name);
            s->scale_grads = state_of(o->state, "scale_grads", q->name);
        }
    }
    return LU_OK;
}

static lu_tensor *flat_view(lu_tensor *flat, size_t offset, int64_t n)
{
    return lu_slice(flat, 0, (int64_t)offset, (int64_t)offset + n, 1);
}

static lu_status add_run(lu_optim *o, int d, const slot *first, int64_t n)
{
    run *r = &o->runs[o->n_runs++];
    r->p = flat_view(o->params->flat[d], first->p->offset, n);
    r->g = flat_view(o->params->flat_grad[d], first->p->offset, n);
    r->m = flat_view(o->state->flat[d], first->a->offset, n);
    r->v = flat_view(o->state->flat[d], first->b->offset, n);
    return r->p && r->g && r->m && r->v ? LU_OK : lu_error_code();
}

/* Groups the slots of each dtype into runs that are contiguous in the parameter, gradient and
 * both moment buffers (a buffer declared between two parameters ends a run). */
static lu_status build_runs(lu_optim *o)
{
    o->runs = calloc((size_t)o->n_slots, sizeof *o->runs);
    if (!o->runs) return lu_errorf(LU_ERR_NOMEM, "optim: out of memory");
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        const slot *first = NULL;
        int64_t n = 0;
        for (int i = 0; i < o->n_slots; i++) {
            const slot *s = &o->slots[i];
            if (s->p->dtype != (lu_dtype)d) continue;
            size_t end = first ? first->p->offset + (size_t)n : 0;
            if (first && s->p->offset == end && s->a->offset == first->a->offset + (size_t)n &&
                s->b->offset == first->b->offset + (size_t)n) {
                n += lu_tensor_numel(s->p);
                continue;
            }
            if (first) LU_TRY(add_run(o, d, first, n));
            first = s;
            n = lu_tensor_numel(s->p);
        }
        if (first) LU_TRY(add_run(o, d, first, n));
    }
    return LU_OK;
}

/* The view of the host copy m->host for the state tensor t of the mirrored tail m. */
static lu_tensor *mirror_view(const mirror *m, const lu_tensor *t)
{
    int64_t at = (int64_t)(t->offset - m->start);
    return lu_slice(m->host, 0, at, at + lu_tensor_numel(t), 1);
}

/* ScaledAdam's per-slot sums, and the tensors the host reads: on the CPU the state tensors
 * themselves; elsewhere views of a host copy of each dtype's small-state tail (see mirror). */
static lu_status sa_bind_host(lu_optim *o)
{
    lu_device dev = o->params->device;
    o->stats = lu_tensor_empty(LU_F64, 2, (int64_t[]){o->n_slots, 3}, dev);
    o->host_stats = malloc((size_t)o->n_slots * 3 * sizeof *o->host_stats);
    if (!o->stats || !o->host_stats) return o->stats ? lu_errorf(LU_ERR_NOMEM, "scaled_adam: out of memory") : lu_error_code();
    if (dev == LU_CPU) {
        for (int i = 0; i < o->n_slots; i++) {
            slot *s = &o->slots[i];
            s->hrms = s->rms;
            s->hscale_sq = s->scale_sq;
            s->hscale_grads = s->scale_grads;
        }
        o->hnorms = o->norms;
        o->hthreshold = o->threshold;
        return LU_OK;
    }
    /* Where each dtype's tail starts: its first small-state tensor. */
    size_t start[LU_DTYPE_COUNT];
    for (int d = 0; d < LU_DTYPE_COUNT; d++) start[d] = SIZE_MAX;
    for (int i = 0; i < o->n_slots; i++) {
        const slot *s = &o->slots[i];
        const lu_tensor *small[3] = {s->rms, s->scale_sq, s->scale_grads};
        for (int k = 0; k < 3; k++)
            if (small[k] && small[k]->offset < start[small[k]->dtype]) start[small[k]->dtype] = small[k]->offset;
    }
    if (o->norms->offset < start[LU_F64]) start[LU_F64] = o->norms->offset;
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        if (start[d] == SIZE_MAX) continue;
        mirror *m = &o->mirrors[d];
        int64_t end = lu_tensor_numel(o->state->flat[d]);
        m->start = start[d];
        m->dev = lu_slice(o->state->flat[d], 0, (int64_t)start[d], end, 1);
        m->host = lu_tensor_empty((lu_dtype)d, 1, (int64_t[]){end - (int64_t)start[d]}, LU_CPU);
        if (!m->dev || !m->host) return lu_error_code();
    }
    for (int i = 0; i < o->n_slots; i++) {
        slot *s = &o->slots[i];
        if (!s->rms) continue;
        s->hrms = mirror_view(&o->mirrors[s->rms->dtype], s->rms);
        s->hscale_sq = mirror_view(&o->mirrors[s->scale_sq->dtype], s->scale_sq);
        s->hscale_grads = mirror_view(&o->mirrors[s->scale_grads->dtype], s->scale_grads);
        if (!s->hrms || !s->hscale_sq || !s->hscale_grads) return lu_error_code();
    }
    o->hnorms = mirror_view(&o->mirrors[LU_F64], o->norms);
    o->hthreshold = mirror_view(&o->mirrors[LU_F64], o->threshold);
    return o->hnorms && o->hthreshold ? LU_OK : lu_error_code();
}

/* Off the CPU: the small state from the device into the host copies (to_device false), or back. */
static lu_status sa_sync(lu_optim *o, bool to_device)
{
    for (int d = 0; d < LU_DTYPE_COUNT; d++) {
        mirror *m = &o->mirrors[d];
        if (!m->dev) continue;
        LU_TRY(to_device ? lu_tensor_copy(m->dev, m->host) : lu_tensor_copy(m->host, m->dev));
    }
    return LU_OK;
}

lu_optim *lu_optim_new(lu_params *p, const lu_optim_config *c)
{
    if (check_config(c)) return NULL;
    const char *k = lu_optim_kind_name(c->kind);
    if (!p->finalized) {
        lu_errorf(LU_ERR_STATE, "%s: the parameter store must be finalized first", k);
        return NULL;
    }
    if (lu_params_count(p, true) == 0) {
        lu_errorf(LU_ERR_INVALID, "%s: the parameter store has no trainable parameters", k);
        return NULL;
    }
    for (int i = 0; i < p->n; i++) {
        const lu_param *q = &p->items[i];
        if (q->trainable && !lu_dtype_is_float(q->t->dtype)) {
            lu_errorf(LU_ERR_DTYPE, "%s: trainable parameter '%s' has dtype %s", k, q->name, lu_dtype_name(q->t->dtype));
            return NULL;
        }
        if (c->kind == LU_OPTIM_SCALED_ADAM && q->trainable && q->t->dtype != LU_F32 &&
            (q->t->dtype != LU_F64 || p->device != LU_CPU)) {
            lu_errorf(LU_ERR_DTYPE, "scaled_adam: parameter '%s' is %s; it updates f32 parameters (and f64 ones on "
                      "the cpu)", q->name, lu_dtype_name(q->t->dtype));
            return NULL;
        }
    }
    lu_optim *o = calloc(1, sizeof *o);
    if (!o) {
        lu_errorf(LU_ERR_NOMEM, "optim: out of memory");
        return NULL;
    }
    o->cfg = *c;
    o->params = p;
    lu_arena *prev = lu_arena_activate(NULL); /* state outlives every step's arena */
    lu_status s = (o->state = lu_params_new(p->device)) ? declare_state(o) : lu_error_code();
    if (!s) s = bind_slots(o);
    if (!s && c->kind == LU_OPTIM_ADAMW) s = build_runs(o);
    if (!s && c->kind == LU_OPTIM_SCALED_ADAM) s = sa_bind_host(o);
    if (!s && o->threshold) s = lu_tensor_fill(o->threshold, -1.0);
    lu_arena_activate(prev);
    if (s) {
        lu_error_context("%s: ", k);
        lu_optim_free(o);
        return NULL;
    }
    return o;
}

/* ---- AdamW ---------------------------------------------------------------------------------- */

static lu_status adamw_step(lu_optim *o, double lr, int64_t t)
{
    lu_adamw_params a = {lr, o->cfg.beta1, o->cfg.beta2, o->cfg.eps, o->cfg.weight_decay, t};
    lu_tensor *none[1] = {NULL};
    for (int i = 0; i < o->n_runs; i++) {
        lu_tensor *in[4] = {o->runs[i].p, o->runs[i].g, o->runs[i].m, o->runs[i].v};
        LU_TRY(lu_op_run(LU_OP_ADAMW, in, 4, none, 0, &a, sizeof a));
    }
    return LU_OK;
}

/* ---- ScaledAdam ---------------------------------------------------------------------------- */

static inline double ld(const lu_tensor *t, int64_t i)
{
    return t->dtype == LU_F64 ? ((const double *)lu_tensor_data(t))[i] : ((const float *)lu_tensor_data(t))[i];
}

static inline void st(lu_tensor *t, int64_t i, double x)
{
    if (t->dtype == LU_F64) ((double *)lu_tensor_data(t))[i] = x;
    else ((float *)lu_tensor_data(t))[i] = (float)x;
}

static int cmp_norm(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    if (isnan(x) || isnan(y)) return isnan(x) - isnan(y); /* NaN sorts last, as torch.sort */
    return (x > y) - (x < y);
}

/* icefall _get_clipping_scale: the factor (<= 1) applied to this step's gradients. */
static lu_status sa_clip_factor(lu_optim *o, int64_t t, double *factor)
{
    *factor = 1.0;
    if (o->cfg.clipping_scale == 0 || t == 0) return LU_OK;
    /* sum over tensors of (g w)^2 = w^2 sum(g^2), w the tensor's rms (scalar_lr_scale for scalars) */
    double sumsq = 0;
    for (int i = 0; i < o->n_slots; i++) {
        const slot *s = &o->slots[i];
        double w = s->hrms ? ld(s->hrms, 0) : o->cfg.scalar_lr_scale;
        sumsq += w * w * o->host_stats[3 * i + 2];
    }
    double norm = sqrt(sumsq), *norms = lu_tensor_data(o->hnorms), *thr = lu_tensor_data(o->hthreshold);
    norms[t % SA_CLIP_PERIOD] = norm;
    bool early = false;
    for (size_t k = 0; k < sizeof sa_early_estimates / sizeof *sa_early_estimates; k++)
        early |= t == sa_early_estimates[k];
    if (t % SA_CLIP_PERIOD == 0 || early) {
        double sorted[SA_CLIP_PERIOD];
        memcpy(sorted, norms, sizeof sorted);
        qsort(sorted, SA_CLIP_PERIOD, sizeof *sorted, cmp_norm);
        /* Early estimates use the `t` largest entries (the buffer holds zeros elsewhere). */
        int64_t n = early ? t : SA_CLIP_PERIOD;
        const double *use = sorted + (SA_CLIP_PERIOD - n);
        int64_t mid = (n / 4) * 2 < n - 1 ? (n / 4) * 2 : n - 1;
        double median = use[mid];
        if (isnan(median))
            return lu_errorf(LU_ERR_STATE, "scaled_adam: too many gradients were not finite (median gradient norm "
                             "is NaN at step %lld)", (long long)t);
        *thr = o->cfg.clipping_scale * median * (early ? 2.0 : 1.0);
    }
    if (*thr < 0) return LU_OK; /* no estimate yet */
    double f = fmin(1.0, *thr / (norm + 1e-20));
    *factor = isnan(f) ? 0.0 : f;
    return LU_OK;
}

/* One tensor's update at step t with clipped gradients g*clip (icefall basic_step,
 * scaling_step and momentum_step): the per-tensor scalars here, from the slot's sums
 * (host_stats: sum(p g), sum(p p), sum(g g)), the elementwise part by the SCALED_ADAM op. */
static lu_status sa_update(const lu_optim *o, int i, double lr, double clip, int64_t t)
{
    const lu_optim_config *c = &o->cfg;
    const slot *s = &o->slots[i];
    const double *sums = o->host_stats + 3 * i;
    int64_t n = lu_tensor_numel(s->p), period = c->size_update_period;
    bool scalar = s->rms == NULL;
    double step_lr = scalar ? lr * c->scalar_lr_scale : lr, factor = 1.0, scale_step = 0.0;
    bool size_update = false;
    if (!scalar) {
        /* sum(p * g clip); clip == 0 zeroes the gradients (icefall does so to get rid of infinities). */
        double pg = clip == 0 ? 0.0 : clip == 1 ? sums[0] : sums[0] * clip, pp = sums[1];
        st(s->hscale_grads, t % period, pg);
        if (t == 0 || t % period == period - 1) st(s->hrms, 0, sqrt(pp / (double)n));
        double rms = ld(s->hrms, 0);
        factor = fmax(rms, c->param_min_rms);
        if (t % period == period - 1 && t > 0) {
            /* Learns the tensor's overall scale: one Adam step on the scale gradients
             * sum(p * g) of the last `period` steps, with beta2^period. */
            size_update = true;
            double beta2_corr = pow(c->beta2, (double)period), sum = 0, sumsq = 0;
            for (int64_t k = 0; k < period; k++) {
                sum += ld(s->hscale_grads, k);
                sumsq += ld(s->hscale_grads, k) * ld(s->hscale_grads, k);
            }
            double sq = beta2_corr * ld(s->hscale_sq, 0) + (1 - beta2_corr) * (sumsq / (double)period);
            st(s->hscale_sq, 0, sq);
            sq = ld(s->hscale_sq, 0);
            double size_step = (double)((t + 1) / period);
            double bc2 = 1 - pow(beta2_corr, size_step);
            scale_step = -lr * c->scalar_lr_scale * sqrt(bc2) * sum / (sqrt(sq) + c->eps);
            if (rms < c->param_min_rms) scale_step = 0;
            scale_step = fmin(fmax(scale_step, -0.1), 0.1);
            scale_step = fmin(scale_step, (c->param_max_rms - rms) / rms);
        }
    }
    double bc2 = 1 - pow(c->beta2, (double)(t + 1));
    lu_scaled_adam_params a = {.grad_scale = clip, .lr = step_lr, .factor = factor, .inv_bc2 = bc2 < 0.99 ? 1.0 / bc2 : 1.0,
                               .scale_step = scale_step, .clamp = c->scalar_max, .beta1 = c->beta1, .beta2 = c->beta2,
                               .eps = c->eps, .size_update = size_update, .clamped = scalar};
    lu_tensor *in[4] = {s->p, s->p->grad, s->a, s->b}, *none[1] = {NULL};
    return lu_op_run(LU_OP_SCALED_ADAM, in, 4, none, 0, &a, sizeof a);
}

/* Every slot's sum(p g), sum(p p), sum(g g) by the SCALED_ADAM_STATS op on the parameters'
 * device, into host_stats with one read. */
static lu_status sa_stats(lu_optim *o)
{
    for (int i = 0; i < o->n_slots; i++) {
        lu_tensor *row = lu_slice(o->stats, 0, i, i + 1, 1);
        lu_tensor *in[2] = {o->slots[i].p, o->slots[i].p->grad};
        lu_status s = row ? lu_op_run(LU_OP_SCALED_ADAM_STATS, in, 2, &row, 1, NULL, 0) : lu_error_code();
        lu_tensor_release(row);
        LU_TRY(s);
    }
    return lu_tensor_to_host(o->stats, LU_F64, o->host_stats);
}

static lu_status scaled_adam_step(lu_optim *o, double lr, int64_t t)
{
    LU_TRY(sa_sync(o, false));
    LU_TRY(sa_stats(o));
    double clip;
    LU_TRY(sa_clip_factor(o, t, &clip));
    for (int i = 0; i < o->n_slots; i++) LU_TRY(sa_update(o, i, lr, clip, t));
    return sa_sync(o, true);
}

lu_status lu_optim_step(lu_optim *o, double lr)
{
    if (!isfinite(lr) || lr < 0)
        return lu_errorf(LU_ERR_INVALID, "%s: learning rate must be finite and >= 0, got %g", lu_optim_kind_name(o->cfg.kind), lr);
    int64_t t = lu_optim_steps(o);
    if (o->cfg.kind == LU_OPTIM_ADAMW) LU_TRY(adamw_step(o, lr, t + 1));
    else LU_TRY(scaled_adam_step(o, lr, t));
    return lu_tensor_fill(o->step, (double)(t + 1));
}

/* ---- global gradient norm ------------------------------------------------------------------- */

#define NORM_CHUNK 16384

/* Applies fn to every trainable gradient in chunks of NORM_CHUNK doubles (copied to the host),
 * in store order; fn may change the chunk, which is then written back when write is set. */
typedef void (*chunk_fn)(double *x, int64_t n, void *ctx);

static lu_status for_each_grad_chunk(lu_params *p, chunk_fn fn, void *ctx, bool write)
{
    lu_backend *b = lu_backend_get(p->device);
    if (!b) return lu_error_code();
    double *x = malloc(NORM_CHUNK * sizeof *x);
    unsigned char *raw = malloc(NORM_CHUNK * sizeof(double));
    if (!x || !raw) {
        free(x);
        free(raw);
        return lu_errorf(LU_ERR_NOMEM, "grad norm: out of memory");
    }
    lu_status s = LU_OK;
    for (int i = 0; i < p->n && !s; i++) {
        const lu_param *q = &p->items[i];
        if (!q->trainable) continue;
        lu_tensor *g = q->t->grad;
        size_t es = lu_dtype_size(g->dtype);
        int64_t n = lu_tensor_numel(g);
        for (int64_t off = 0; off < n && !s; off += NORM_CHUNK) {
            int64_t m = n - off < NORM_CHUNK ? n - off : NORM_CHUNK;
            char *dev = (char *)lu_tensor_data(g) + (size_t)off * es;
            s = b->copy(raw, LU_CPU, dev, p->device, (size_t)m * es);
            if (s) break;
            lu_dtype_convert(x, LU_F64, raw, g->dtype, (size_t)m);
            fn(x, m, ctx);
            if (!write) continue;
            lu_dtype_convert(raw, g->dtype, x, LU_F64, (size_t)m);
            s = b->copy(dev, p->device, raw, LU_CPU, (size_t)m * es);
        }
    }
    free(x);
    free(raw);
    return s;
}

static void add_squares(double *x, int64_t n, void *ctx)
{
    double *sum = ctx;
    for (int64_t i = 0; i < n; i++) *sum += x[i] * x[i];
}

static void scale_chunk(double *x, int64_t n, void *ctx)
{
    double c = *(double *)ctx;
    for (int64_t i = 0; i < n; i++) x[i] *= c;
}

/* CPU gradients in f32/f64 are read in place: blocks of NORM_CHUNK elements on OpenMP threads,
 * each block's sum of squares in a double, the block sums added in order, so the norm is the
 * same for any thread count. */
static bool cpu_fast_path(const lu_params *p)
{
    if (p->device != LU_CPU) return false;
    for (int i = 0; i < p->n; i++) {
        const lu_tensor *g = p->items[i].trainable ? p->items[i].t->grad : NULL;
        if (g && ((g->dtype != LU_F32 && g->dtype != LU_F64) || !lu_tensor_is_contiguous(g))) return false;
    }
    return true;
}

static double cpu_sum_squares(const lu_tensor *g)
{
    int64_t n = lu_tensor_numel(g), nb = (n + NORM_CHUNK - 1) / NORM_CHUNK;
    double *part = malloc((size_t)(nb > 0 ? nb : 1) * sizeof *part), sum = 0;
    if (!part) return NAN;
    const void *d = lu_tensor_data(g);
    bool f32 = g->dtype == LU_F32;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * NORM_CHUNK, hi = lo + NORM_CHUNK < n ? lo + NORM_CHUNK : n;
        double s = 0;
        if (f32)
            for (int64_t i = lo; i < hi; i++) s += (double)((const float *)d)[i] * ((const float *)d)[i];
        else
            for (int64_t i = lo; i < hi; i++) s += ((const double *)d)[i] * ((const double *)d)[i];
        part[b] = s;
    }
    for (int64_t b = 0; b < nb; b++) sum += part[b];
    free(part);
    return sum;
}

static void cpu_scale(lu_tensor *g, double c)
{
    int64_t n = lu_tensor_numel(g);
    void *d = lu_tensor_data(g);
    if (g->dtype == LU_F32) {
#pragma omp parallel for schedule(static) if (n > NORM_CHUNK)
        for (int64_t i = 0; i < n; i++) ((float *)d)[i] = (float)(((float *)d)[i] * c);
    } else {
#pragma omp parallel for schedule(static) if (n > NORM_CHUNK)
        for (int64_t i = 0; i < n; i++) ((double *)d)[i] *= c;
    }
}

/* Off the CPU, f32 gradients stay on their device and are reached through the op library: the
 * flat gradient buffer of the store (the slots of non-trainable tensors in it are never written,
 * so they hold zeros and add nothing) is squared and summed by the backend's SQUARE and SUM, and
 * only the total comes to the host. Other dtypes take the chunked host copies above. */
#define DEVICE_CHUNK ((int64_t)1 << 24) /* elements squared per launch: bounds the scratch */

static bool device_path(const lu_params *p)
{
    if (p->device == LU_CPU) return false;
    for (int d = 0; d < LU_DTYPE_COUNT; d++)
        if (p->flat_grad[d] && d != LU_F32) return false;
    return true;
}

/* Chunks of g are squared into one scratch tensor and summed into a partial each, the partials
 * then summed: f32 sums in an order fixed by the sizes (SUM has no atomics), so the same
 * gradients give the same norm. Scratch comes from the active arena when it is on g's device. */
static double device_sum_squares(lu_tensor *g)
{
    int64_t n = lu_tensor_numel(g);
    if (n == 0) return 0.0;
    int64_t chunk = n < DEVICE_CHUNK ? n : DEVICE_CHUNK, n_parts = (n + chunk - 1) / chunk;
    lu_device dev = lu_tensor_device(g);
    lu_tensor *scratch = lu_tensor_empty(g->dtype, 1, &chunk, dev), *part = lu_tensor_empty(g->dtype, 1, &n_parts, dev);
    lu_status s = scratch && part ? LU_OK : lu_error_code();
    lu_reduce_params all = {LU_ALL_DIMS};
    for (int64_t c = 0; c < n_parts && !s; c++) {
        int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        lu_tensor *x = lu_slice(g, 0, lo, hi, 1), *sq = lu_slice(scratch, 0, 0, hi - lo, 1);
        lu_tensor *y = lu_slice(part, 0, c, c + 1, 1);
        s = x && sq && y ? lu_op_run(LU_OP_SQUARE, &x, 1, &sq, 1, NULL, 0) : lu_error_code();
        if (!s) s = lu_op_run(LU_OP_SUM, &sq, 1, &y, 1, &all, sizeof all);
        lu_tensor_release(x);
        lu_tensor_release(sq);
        lu_tensor_release(y);
    }
    lu_tensor *total = s ? NULL : lu_sum(part, LU_ALL_DIMS, false);
    double sum = total ? lu_tensor_item(total) : NAN;
    lu_tensor_release(total);
    lu_tensor_release(part);
    lu_tensor_release(scratch);
    return sum;
}

/* g *= c in place: AFFINE maps each element on its own, so its output may be its input. */
static lu_status device_scale(lu_tensor *g, double c)
{
    lu_affine_params a = {c, 0.0};
    return lu_op_run(LU_OP_AFFINE, &g, 1, &g, 1, &a, sizeof a);
}

double lu_grad_global_norm(lu_params *p)
{
    double sum = 0;
    if (cpu_fast_path(p)) {
        for (int i = 0; i < p->n; i++)
            if (p->items[i].trainable) sum += cpu_sum_squares(p->items[i].t->grad);
        return sqrt(sum);
    }
    if (device_path(p)) {
        /* Gradients do not require gradients, but no tape should see these ops in any case. */
        bool grad = lu_grad_set_enabled(false);
        for (int d = 0; d < LU_DTYPE_COUNT; d++)
            if (p->flat_grad[d]) sum += device_sum_squares(p->flat_grad[d]);
        lu_grad_set_enabled(grad);
        return sqrt(sum);
    }
    if (for_each_grad_chunk(p, add_squares, &sum, false)) return NAN;
    return sqrt(sum);
}

double lu_clip_grad_norm(lu_params *p, double max_norm)
{
    double norm = lu_grad_global_norm(p);
    double coef = max_norm / (norm + 1e-6);
    /* torch multiplies by min(coef, 1); a factor of exactly 1 changes nothing. NaN norms pass
     * through unscaled (torch's error_if_nonfinite=False leaves them to the caller). */
    if (!(coef < 1.0)) return norm;
    if (cpu_fast_path(p)) {
        for (int i = 0; i < p->n; i++)
            if (p->items[i].trainable) cpu_scale(p->items[i].t->grad, coef);
        return norm;
    }
    if (device_path(p)) {
        bool grad = lu_grad_set_enabled(false);
        lu_status s = LU_OK;
        for (int d = 0; d < LU_DTYPE_COUNT && !s; d++)
            if (p->flat_grad[d]) s = device_scale(p->flat_grad[d], coef);
        lu_grad_set_enabled(grad);
        return s ? NAN : norm;
    }
    if (for_each_grad_chunk(p, scale_chunk, &coef, true)) return NAN;
    return norm;
}
