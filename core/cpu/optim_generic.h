/* optim_generic.h - the AdamW update written over `real` (see generic.h).
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
