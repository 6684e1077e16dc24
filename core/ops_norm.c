/* ops_norm.c - normalisations over the last dim (RMSNorm, LayerNorm, BiasNorm) and rotary
 * position embeddings (RoPE). Kernels: core/cpu/norm_generic.h. */
#include "autograd.h"
#include "ops.h"

/* A per-channel parameter: the name used in messages, the tensor (NULL when optional and
 * absent) and the length it must have. */
typedef struct norm_arg {
    const char *name;
    lu_tensor *t;
    int64_t len;
} norm_arg;

static lu_status check_input(const char *op, const lu_tensor *x)
{
    char s[LU_SHAPE_STR_MAX];
    if (!lu_dtype_is_float(x->dtype))
        return lu_errorf(LU_ERR_DTYPE, "%s: x %s has dtype %s, expected a float dtype", op, lu_shape_str(x, s, sizeof s),
                         lu_dtype_name(x->dtype));
    if (x->ndim < 1 || x->shape[x->ndim - 1] == 0)
        return lu_errorf(LU_ERR_SHAPE, "%s: x %s needs a non-empty last dim", op, lu_shape_str(x, s, sizeof s));
    return LU_OK;
}

static lu_status check_arg(const char *op, const lu_tensor *x, const norm_arg *a)
{
    char sx[LU_SHAPE_STR_MAX], sa[LU_SHAPE_STR_MAX];
    if (!a->t) return LU_OK;
    if (a->t->dtype != x->dtype)
        return lu_errorf(LU_ERR_DTYPE, "%s: %s has dtype %s, x has %s", op, a->name, lu_dtype_name(a->t->dtype),
                         lu_dtype_name(x->dtype));
    if (a->t->ndim != 1 || a->t->shape[0] != a->len)
        return lu_errorf(LU_ERR_SHAPE, "%s: %s %s must have shape [%lld] for x %s", op, a->name,
                         lu_shape_str(a->t, sa, sizeof sa), (long long)a->len, lu_shape_str(x, sx, sizeof sx));
    return LU_OK;
}

/* Runs a last-dim normalisation: in = x, args...; out = y, then n_aux statistics of shape
 * x.shape[:-1] (kept only by the tape) in x's dtype, or f32 for 16-bit x: the backward rescales
 * every element by them, and a bf16 rstd would round them all by up to 2^-9. */
static lu_tensor *norm_run(lu_op op, lu_tensor *x, norm_arg *args, int n_args, int n_aux, const void *params,
                           size_t params_size)
{
    const char *name = lu_op_name(op);
    if (check_input(name, x)) return NULL;
    for (int i = 0; i < n_args; i++)
        if (check_arg(name, x, &args[i])) return NULL;
    lu_tensor *in[LU_MAX_IO] = {0}, *out[LU_MAX_IO] = {0}, *y = NULL;
    int n_in = 1 + n_args, n_out = 1 + n_aux;
    bool ok = (in[0] = lu_contiguous(x)) != NULL;
    for (int i = 0; i < n_args && ok; i++)
        if (args[i].t) ok = (in[1 + i] = lu_contiguous(args[i].t)) != NULL;
    lu_device dev = lu_tensor_device(x);
    if (ok) ok = (out[0] = lu_tensor_empty(x->dtype, x->ndim, x->shape, dev)) != NULL;
    lu_dtype sdt = x->dtype == LU_BF16 || x->dtype == LU_F16 ? LU_F32 : x->dtype;
    for (int i = 0; i < n_aux && ok; i++) ok = (out[1 + i] = lu_tensor_empty(sdt, x->ndim - 1, x->shape, dev)) != NULL;
    if (ok && lu_op_run(op, in, n_in, out, n_out, params, params_size) == LU_OK) y = lu_tensor_retain(out[0]);
    for (int i = 0; i < n_in; i++) lu_tensor_release(in[i]);
    for (int i = 0; i < n_out; i++) lu_tensor_release(out[i]);
    return y;
}

lu_tensor *lu_rmsnorm(lu_tensor *x, lu_tensor *weight, double eps)
{
    LU_PROPAGATE_NULL(x);
    if (check_input("rmsnorm", x)) return NULL;
    if (!(eps >= 0)) {
        lu_errorf(LU_ERR_INVALID, "rmsnorm: eps must be >= 0, got %g", eps);
        return NULL;
    }
    norm_arg args[1] = {{"weight", weight, x->shape[x->ndim - 1]}};
    lu_norm_params p = {eps};
    return norm_run(LU_OP_RMSNORM, x, args, 1, 1, &p, sizeof p);
}

lu_tensor *lu_layernorm(lu_tensor *x, lu_tensor *weight, lu_tensor *bias, double eps)
{
    LU_PROPAGATE_NULL(x);
    if (check_input("layernorm", x)) return NULL;
    if (!(eps >= 0)) {
        lu_errorf(LU_ERR_INVALID, "layernorm: eps must be >= 0, got %g", eps);
        return NULL;
    }
    int64_t d = x->shape[x->ndim - 1];
    norm_arg args[2] = {{"weight", weight, d}, {"bias", bias, d}};
    lu_norm_params p = {eps};
    return norm_run(LU_OP_LAYERNORM, x, args, 2, 2, &p, sizeof p);
}

lu_tensor *lu_biasnorm(lu_tensor *x, lu_tensor *bias, lu_tensor *log_scale)
{
    LU_PROPAGATE_NULL(x);
    if (check_input("biasnorm", x)) return NULL;
    if (!bias || !log_scale) {
        lu_errorf(LU_ERR_INVALID, "biasnorm: bias and log_scale are required");
        return NULL;
    }
    norm_arg args[2] = {{"bias", bias, x->shape[x->ndim - 1]}, {"log_scale", log_scale, 1}};
    return norm_run(LU_OP_BIASNORM, x, args, 2, 1, NULL, 0);
}

lu_tensor *lu_rope(lu_tensor *x, lu_tensor *positions, double theta, int rotary_dim)
{
    LU_PROPAGATE_NULL(x, positions);
    char sx[LU_SHAPE_STR_MAX], sp[LU_SHAPE_STR_MAX];
    if (check_input("rope", x)) return NULL;
    if (x->ndim != 4) {
        lu_errorf(LU_ERR_SHAPE, "rope: x %s must be [B, T, H, D]", lu_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    if ((positions->dtype != LU_I32 && positions->dtype != LU_I64) || positions->ndim != 2 ||
        positions->shape[0] != x->shape[0] || positions->shape[1] != x->shape[1]) {
        lu_errorf(LU_ERR_SHAPE, "rope: positions %s %s must be i32/i64 [B, T] for x %s",
                  lu_shape_str(positions, sp, sizeof sp), lu_dtype_name(positions->dtype), lu_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    int64_t d = x->shape[3];
    if (rotary_dim < 0 || rotary_dim > d || rotary_dim % 2) {
        lu_errorf(LU_ERR_INVALID, "rope: rotary_dim %d must be even and in [0, %lld] (0 = all of head dim)", rotary_dim,
                  (long long)d);
        return NULL;
    }
    if (rotary_dim == 0 && d % 2) {
        lu_errorf(LU_ERR_INVALID, "rope: head dim %lld of x %s is odd; pass an even rotary_dim", (long long)d,
                  lu_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    if (!(theta > 0)) {
        lu_errorf(LU_ERR_INVALID, "rope: theta must be > 0, got %g", theta);
        return NULL;
    }
    lu_rope_params p = {theta, rotary_dim};
    lu_tensor *in[2] = {lu_contiguous(x), lu_contiguous(positions)}, *y = NULL;
    if (in[0] && in[1]) y = lu_tensor_empty(x->dtype, 4, x->shape, lu_tensor_device(x));
    if (y && lu_op_run(LU_OP_ROPE, in, 2, &y, 1, &p, sizeof p) != LU_OK) {
        lu_tensor_release(y);
        y = NULL;
    }
    lu_tensor_release(in[0]);
    lu_tensor_release(in[1]);
    return y;
}
