/* optim_generic.h - the AdamW and ScaledAdam updates written over `real` (see generic.h).
 * torch.optim.AdamW (single-tensor path, amsgrad off), at 1-based step t:
 *   p <- p * (1 - lr*wd);  m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2
 *   p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps) */

static lu_status R(adamw_fwd)(const lu_op_call *call)
{
    const lu_adamw_params *a = call->params;
    real *p = lu_tensor_data(call->in[0]), *m = lu_tensor_data(call->in[2]), *v = lu_tensor_data(call->in[3]);
    const real *g = lu_tensor_data(call->in[1]);
    int64_t n = lu_tensor_numel(call->in[0]);
    real decay = (real)(1.0 - a->lr * a->weight_decay), b1 = (real)a->beta1, b2 = (real)a->beta2;
    real step_size = (real)(a->lr / (1.0 - pow(a->beta1, (double)a->step)));
    real bc2_sqrt = (real)sqrt(1.0 - pow(a->beta2, (double)a->step)), eps = (real)a->eps;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        real gi = g[i];
        real mi = b1 * m[i] + (1 - b1) * gi;
        real vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrt(vi) / bc2_sqrt + eps);
    }
    return LU_OK;
}

/* sum(p g), sum(p p), sum(g g) in double, in element order (the update's scalars depend on them). */
static lu_status R(scaled_adam_stats_fwd)(const lu_op_call *call)
{
    const real *p = lu_tensor_data(call->in[0]), *g = lu_tensor_data(call->in[1]);
    int64_t n = lu_tensor_numel(call->in[0]);
    double pg = 0, pp = 0, gg = 0;
    for (int64_t i = 0; i < n; i++) {
        pg += (double)p[i] * (double)g[i];
        pp += (double)p[i] * (double)p[i];
        gg += (double)g[i] * (double)g[i];
    }
    double *out = lu_tensor_data(call->out[0]);
    out[0] = pg;
    out[1] = pp;
    out[2] = gg;
    return LU_OK;
}

/* The ScaledAdam update of lu_scaled_adam_params, in double per element. */
static lu_status R(scaled_adam_fwd)(const lu_op_call *call)
{
    const lu_scaled_adam_params *a = call->params;
    real *p = lu_tensor_data(call->in[0]), *delta = lu_tensor_data(call->in[2]), *v = lu_tensor_data(call->in[3]);
    const real *g = lu_tensor_data(call->in[1]);
    int64_t n = lu_tensor_numel(call->in[0]);
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        double gi = a->grad_scale == 0 ? 0.0 : a->grad_scale == 1 ? (double)g[i] : (double)g[i] * a->grad_scale;
        double pi = p[i];
        v[i] = (real)(a->beta2 * (double)v[i] + (1 - a->beta2) * gi * gi);
        double d = -a->lr * gi / (sqrt((double)v[i] * a->inv_bc2) + a->eps) * a->factor;
        if (a->size_update) d += pi * a->scale_step;
        delta[i] = (real)(a->beta1 * (double)delta[i] + (1 - a->beta1) * d);
        pi += (double)delta[i];
        if (a->clamped) pi = fmin(fmax(pi, -a->clamp), a->clamp);
        p[i] = (real)pi;
    }
    return LU_OK;
}
