/* ops_conv.c - the ops of convolution modules and front ends: lu_conv1d and lu_conv2d (as
 * torch.nn.functional.conv1d/conv2d: zero padding, stride, dilation, groups), lu_batchnorm (as
 * torch.nn.BatchNorm1d/2d) and lu_dropout (Philox mask, regenerated in the backward). */
#include "autograd.h"
#include "ops.h"

static lu_tensor *conv_fail(lu_status code, const char *op, const char *what, const lu_tensor *x,
                            const lu_tensor *w, const lu_tensor *bias)
{
    char sx[LU_SHAPE_STR_MAX], sw[LU_SHAPE_STR_MAX], sb[LU_SHAPE_STR_MAX] = "none";
    if (bias) lu_shape_str(bias, sb, sizeof sb);
    lu_errorf(code, "%s: %s (x %s %s, w %s %s, bias %s)", op, what, lu_shape_str(x, sx, sizeof sx),
              lu_dtype_name(x->dtype), lu_shape_str(w, sw, sizeof sw), lu_dtype_name(w->dtype), sb);
    return NULL;
}

/* Shared by conv1d (nsp = 1) and conv2d (nsp = 2): checks shapes and hyperparameters, computes
 * the output size per spatial axis, out = (n + 2p - d(k-1) - 1)/s + 1, and runs the kernel. */
static lu_tensor *conv_run(lu_op op, lu_tensor *x, lu_tensor *w, lu_tensor *bias, int nsp, const int *stride,
                           const int *pad, const int *dil, int groups, const void *params, size_t params_size)
{
    const char *name = lu_op_name(op);
    char msg[160];
    if (x->ndim != nsp + 2 || w->ndim != nsp + 2) {
        snprintf(msg, sizeof msg, "x and w need %d dims ([B, Cin, %s] and [Cout, Cin/groups, %s])", nsp + 2,
                 nsp == 1 ? "T" : "H, W", nsp == 1 ? "K" : "KH, KW");
        return conv_fail(LU_ERR_SHAPE, name, msg, x, w, bias);
    }
    if (!lu_dtype_is_float(x->dtype) || w->dtype != x->dtype || (bias && bias->dtype != x->dtype))
        return conv_fail(LU_ERR_DTYPE, name, "x, w and bias need one float dtype", x, w, bias);
    if (groups < 1) {
        snprintf(msg, sizeof msg, "groups %d must be >= 1", groups);
        return conv_fail(LU_ERR_INVALID, name, msg, x, w, bias);
    }
    int64_t cin = x->shape[1], cout = w->shape[0];
    if (cin % groups || cout % groups || w->shape[1] * groups != cin) {
        snprintf(msg, sizeof msg, "with groups %d, Cin and Cout must be multiples of groups and w.shape[1] == Cin/groups",
                 groups);
        return conv_fail(LU_ERR_SHAPE, name, msg, x, w, bias);
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != cout))
        return conv_fail(LU_ERR_SHAPE, name, "bias must be [Cout]", x, w, bias);
    int64_t shape[4] = {x->shape[0], cout};
    for (int a = 0; a < nsp; a++) {
        if (stride[a] < 1 || dil[a] < 1 || pad[a] < 0) {
            snprintf(msg, sizeof msg, "stride %d and dilation %d must be >= 1 and padding %d >= 0 (axis %d)", stride[a],
                     dil[a], pad[a], a);
            return conv_fail(LU_ERR_INVALID, name, msg, x, w, bias);
        }
        int64_t span = x->shape[2 + a] + 2 * (int64_t)pad[a] - (int64_t)dil[a] * (w->shape[2 + a] - 1) - 1;
        if (span < 0) {
            snprintf(msg, sizeof msg, "padded input size %lld is smaller than the dilated kernel size %lld (axis %d)",
                     (long long)(x->shape[2 + a] + 2 * (int64_t)pad[a]),
                     (long long)((int64_t)dil[a] * (w->shape[2 + a] - 1) + 1), a);
            return conv_fail(LU_ERR_SHAPE, name, msg, x, w, bias);
        }
        shape[2 + a] = span / stride[a] + 1;
    }
    lu_tensor *xc = lu_contiguous(x), *wc = xc ? lu_contiguous(w) : NULL, *bc = NULL, *y = NULL;
    bool ok = wc && (!bias || (bc = lu_contiguous(bias)));
    if (ok) y = lu_tensor_empty(x->dtype, nsp + 2, shape, lu_tensor_device(x));
    if (y) {
        lu_tensor *in[3] = {xc, wc, bc};
        if (lu_op_run(op, in, 3, &y, 1, params, params_size)) {
            lu_tensor_release(y);
            y = NULL;
        }
    }
    lu_tensor_release(xc);
    lu_tensor_release(wc);
    lu_tensor_release(bc);
    return y;
}

lu_tensor *lu_conv1d(lu_tensor *x, lu_tensor *w, lu_tensor *bias, int stride, int padding, int dilation, int groups)
{
    LU_PROPAGATE_NULL(x, w);
    lu_conv1d_params p = {stride, padding, dilation, groups};
    return conv_run(LU_OP_CONV1D, x, w, bias, 1, &stride, &padding, &dilation, groups, &p, sizeof p);
}

lu_tensor *lu_conv2d(lu_tensor *x, lu_tensor *w, lu_tensor *bias, const lu_conv2d_params *p)
{
    LU_PROPAGATE_NULL(x, w);
    return conv_run(LU_OP_CONV2D, x, w, bias, 2, p->stride, p->padding, p->dilation, p->groups, p, sizeof *p);
}

static lu_tensor *batchnorm_fail(lu_status code, const char *what, const lu_tensor *x)
{
    char sx[LU_SHAPE_STR_MAX];
    lu_errorf(code, "batchnorm: %s (x %s %s)", what, lu_shape_str(x, sx, sizeof sx), lu_dtype_name(x->dtype));
    return NULL;
}

/* A per-channel tensor [C] of x's dtype; the running statistics must also be contiguous, since
 * the forward updates them in place. */
static bool batchnorm_channel_ok(const lu_tensor *t, const lu_tensor *x, const char *name, bool in_place)
{
    char msg[160], st[LU_SHAPE_STR_MAX];
    const char *bad = NULL;
    if (t->ndim != 1 || t->shape[0] != x->shape[1]) bad = "must be [C]";
    else if (t->dtype != x->dtype) bad = "must have x's dtype";
    else if (in_place && !lu_tensor_is_contiguous(t)) bad = "must be contiguous (updated in place)";
    if (!bad) return true;
    snprintf(msg, sizeof msg, "%s %s %s %s", name, lu_shape_str(t, st, sizeof st), lu_dtype_name(t->dtype), bad);
    batchnorm_fail(t->dtype != x->dtype ? LU_ERR_DTYPE : LU_ERR_SHAPE, msg, x);
    return false;
}

lu_tensor *lu_batchnorm(lu_tensor *x, lu_tensor *weight, lu_tensor *bias, lu_tensor *running_mean,
                        lu_tensor *running_var, bool training, double momentum, double eps)
{
    LU_PROPAGATE_NULL(x, running_mean, running_var);
    if (x->ndim < 2) return batchnorm_fail(LU_ERR_SHAPE, "x needs at least 2 dims [B, C, ...]", x);
    if (!lu_dtype_is_float(x->dtype)) return batchnorm_fail(LU_ERR_DTYPE, "x must be a float tensor", x);
    if (!running_mean || !running_var) return batchnorm_fail(LU_ERR_INVALID, "running_mean and running_var are required", x);
    if (!batchnorm_channel_ok(running_mean, x, "running_mean", true) ||
        !batchnorm_channel_ok(running_var, x, "running_var", true) ||
        (weight && !batchnorm_channel_ok(weight, x, "weight", false)) ||
        (bias && !batchnorm_channel_ok(bias, x, "bias", false)))
        return NULL;
    if (!(eps > 0) || !(momentum >= 0 && momentum <= 1)) {
        char msg[96];
        snprintf(msg, sizeof msg, "eps %g must be > 0 and momentum %g in [0, 1]", eps, momentum);
        return batchnorm_fail(LU_ERR_INVALID, msg, x);
    }
    if (training && lu_tensor_numel(x) <= x->shape[1])
        return batchnorm_fail(LU_ERR_SHAPE, "training needs more than 1 value per channel", x);
    lu_tensor *xc = lu_contiguous(x), *wc = NULL, *bc = NULL, *out[3] = {NULL, NULL, NULL};
    bool ok = xc && (!weight || (wc = lu_contiguous(weight))) && (!bias || (bc = lu_contiguous(bias)));
    if (ok) {
        lu_device dev = lu_tensor_device(x);
        out[0] = lu_tensor_empty(x->dtype, x->ndim, x->shape, dev);
        out[1] = lu_tensor_empty(x->dtype, 1, &x->shape[1], dev);
        out[2] = lu_tensor_empty(x->dtype, 1, &x->shape[1], dev);
        lu_batchnorm_params p = {training, momentum, eps};
        lu_tensor *in[5] = {xc, wc, bc, running_mean, running_var};
        ok = out[0] && out[1] && out[2] && lu_op_run(LU_OP_BATCHNORM, in, 5, out, 3, &p, sizeof p) == LU_OK;
    }
    lu_tensor_release(xc);
    lu_tensor_release(wc);
    lu_tensor_release(bc);
    lu_tensor_release(out[1]);
    lu_tensor_release(out[2]);
    if (!ok) {
        lu_tensor_release(out[0]);
        return NULL;
    }
    return out[0];
}

lu_tensor *lu_dropout(lu_tensor *x, double p, uint64_t seed, uint64_t step, uint32_t op_id)
{
    LU_PROPAGATE_NULL(x);
    char sx[LU_SHAPE_STR_MAX];
    if (!lu_dtype_is_float(x->dtype)) {
        lu_errorf(LU_ERR_DTYPE, "dropout: x %s %s must be a float tensor", lu_shape_str(x, sx, sizeof sx),
                  lu_dtype_name(x->dtype));
        return NULL;
    }
    if (!(p >= 0 && p < 1)) {
        lu_errorf(LU_ERR_INVALID, "dropout: p = %g must be in [0, 1) (x %s)", p, lu_shape_str(x, sx, sizeof sx));
        return NULL;
    }
    if (p == 0) return lu_tensor_retain(x);
    lu_tensor *xc = lu_contiguous(x);
    lu_tensor *y = xc ? lu_tensor_empty_like(xc) : NULL;
    if (y) {
        lu_dropout_params prm = {p, seed, step, op_id};
        if (lu_op_run(LU_OP_DROPOUT, &xc, 1, &y, 1, &prm, sizeof prm)) {
            lu_tensor_release(y);
            y = NULL;
        }
    }
    lu_tensor_release(xc);
    return y;
}
