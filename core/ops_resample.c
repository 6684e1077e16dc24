/* ops_resample.c - frame-rate changes of the ASR encoders: lu_decimate (Splitformer's
 * zero-pad-then-::2, asr.md section 6), lu_downsample (icefall SimpleDownsample, asr.md 9.3) and
 * lu_upsample (SimpleUpsample and Splitformer's repeat_interleave, cut to a length). */
#include "autograd.h"
#include "ops.h"

static lu_tensor *resample_fail(lu_status code, const char *op, const char *what, const lu_tensor *x)
{
    char sx[LU_SHAPE_STR_MAX];
    lu_errorf(code, "%s: %s (x %s %s)", op, what, lu_shape_str(x, sx, sizeof sx), lu_dtype_name(x->dtype));
    return NULL;
}

/* Runs op on contiguous x (and bias) into a tensor of x's shape with dim resized to len. */
static lu_tensor *resample_run(lu_op op, lu_tensor *x, lu_tensor *bias, const lu_resample_params *p, int64_t len)
{
    int64_t shape[LU_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[p->dim] = len;
    lu_tensor *xc = lu_contiguous(x), *bc = NULL, *y = NULL;
    if (xc && (!bias || (bc = lu_contiguous(bias)))) y = lu_tensor_empty(x->dtype, x->ndim, shape, lu_tensor_device(x));
    if (y) {
        lu_tensor *in[2] = {xc, bc};
        if (lu_op_run(op, in, bias ? 2 : 1, &y, 1, p, sizeof *p)) {
            lu_tensor_release(y);
            y = NULL;
        }
    }
    lu_tensor_release(xc);
    lu_tensor_release(bc);
    return y;
}

lu_tensor *lu_decimate(lu_tensor *x, int dim, int factor)
{
    LU_PROPAGATE_NULL(x);
    lu_resample_params p = {0, factor, 0};
    if (lu_dim_normalize("decimate", x, dim, &p.dim)) return NULL;
    if (factor < 1) {
        char msg[64];
        snprintf(msg, sizeof msg, "factor %d must be >= 1", factor);
        return resample_fail(LU_ERR_INVALID, "decimate", msg, x);
    }
    /* Frames 0, f, 2f, ...: ceil(T/f) of them. */
    return resample_run(LU_OP_DECIMATE, x, NULL, &p, (x->shape[p.dim] + factor - 1) / factor);
}

lu_tensor *lu_upsample(lu_tensor *x, int dim, int factor, int64_t out_len)
{
    LU_PROPAGATE_NULL(x);
    lu_resample_params p = {0, factor, out_len};
    if (lu_dim_normalize("upsample", x, dim, &p.dim)) return NULL;
    char msg[128];
    if (factor < 1) {
        snprintf(msg, sizeof msg, "factor %d must be >= 1", factor);
        return resample_fail(LU_ERR_INVALID, "upsample", msg, x);
    }
    if (out_len < 0 || out_len > x->shape[p.dim] * factor) {
        snprintf(msg, sizeof msg, "out_len %lld must be in [0, %lld] (T %lld * factor %d)", (long long)out_len,
                 (long long)(x->shape[p.dim] * factor), (long long)x->shape[p.dim], factor);
        return resample_fail(LU_ERR_SHAPE, "upsample", msg, x);
    }
    return resample_run(LU_OP_UPSAMPLE, x, NULL, &p, out_len);
}

lu_tensor *lu_downsample(lu_tensor *x, lu_tensor *bias)
{
    LU_PROPAGATE_NULL(x, bias);
    char msg[128], sb[LU_SHAPE_STR_MAX];
    if (x->ndim != 3) return resample_fail(LU_ERR_SHAPE, "downsample", "x must be [B, T, C]", x);
    if (bias->ndim != 1 || bias->shape[0] < 1) {
        snprintf(msg, sizeof msg, "bias %s must be [factor] with factor >= 1", lu_shape_str(bias, sb, sizeof sb));
        return resample_fail(LU_ERR_SHAPE, "downsample", msg, x);
    }
    if (!lu_dtype_is_float(x->dtype) || bias->dtype != x->dtype) {
        snprintf(msg, sizeof msg, "x and bias (%s) need one float dtype", lu_dtype_name(bias->dtype));
        return resample_fail(LU_ERR_DTYPE, "downsample", msg, x);
    }
    if (bias->shape[0] > INT32_MAX) return resample_fail(LU_ERR_SHAPE, "downsample", "factor too large", x);
    lu_resample_params p = {1, (int)bias->shape[0], 0};
    return resample_run(LU_OP_DOWNSAMPLE, x, bias, &p, (x->shape[1] + p.factor - 1) / p.factor);
}
