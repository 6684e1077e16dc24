/* ops_attention.c - scaled dot-product attention (lu_attention) and the application of given
 * attention weights to values (lu_attention_apply). Kernels: core/cpu/attention_generic.h. */
#include <math.h>
#include <stdlib.h>

#include "autograd.h"
#include "ops.h"

static lu_tensor *fail_qkv(lu_status code, const char *what, const lu_tensor *q, const lu_tensor *k, const lu_tensor *v)
{
    char sq[LU_SHAPE_STR_MAX], sk[LU_SHAPE_STR_MAX], sv[LU_SHAPE_STR_MAX];
    lu_errorf(code, "attention: %s (q %s %s, k %s %s, v %s %s)", what, lu_shape_str(q, sq, sizeof sq),
              lu_dtype_name(q->dtype), lu_shape_str(k, sk, sizeof sk), lu_dtype_name(k->dtype),
              lu_shape_str(v, sv, sizeof sv), lu_dtype_name(v->dtype));
    return NULL;
}

/* cu_seqlens [S+1] must run from 0 to T without decreasing (values read on the host). */
static lu_status check_cu_seqlens(const lu_tensor *cu, const lu_tensor *q, const lu_tensor *k)
{
    char sc[LU_SHAPE_STR_MAX], sq[LU_SHAPE_STR_MAX], sk[LU_SHAPE_STR_MAX];
    if ((cu->dtype != LU_I32 && cu->dtype != LU_I64) || cu->ndim != 1 || cu->shape[0] < 2)
        return lu_errorf(LU_ERR_SHAPE, "attention: cu_seqlens %s %s must be i32/i64 [S+1] with S >= 1",
                         lu_shape_str(cu, sc, sizeof sc), lu_dtype_name(cu->dtype));
    if (q->shape[0] != 1 || q->shape[1] != k->shape[1])
        return lu_errorf(LU_ERR_SHAPE, "attention: cu_seqlens needs packed self-attention (B == 1, Tq == Tk), got q %s, k %s",
                         lu_shape_str(q, sq, sizeof sq), lu_shape_str(k, sk, sizeof sk));
    int64_t n = cu->shape[0], t = q->shape[1];
    int64_t *c = malloc((size_t)n * sizeof *c);
    if (!c) return lu_errorf(LU_ERR_NOMEM, "attention: out of memory reading cu_seqlens");
    lu_status s = lu_tensor_to_host(cu, LU_I64, c);
    if (s == LU_OK && c[0] != 0)
        s = lu_errorf(LU_ERR_INVALID, "attention: cu_seqlens must start at 0, got %lld", (long long)c[0]);
    for (int64_t i = 1; i < n && s == LU_OK; i++)
        if (c[i] < c[i - 1])
            s = lu_errorf(LU_ERR_INVALID, "attention: cu_seqlens decreases at %lld (%lld after %lld)", (long long)i,
                          (long long)c[i], (long long)c[i - 1]);
    if (s == LU_OK && c[n - 1] != t)
        s = lu_errorf(LU_ERR_INVALID, "attention: cu_seqlens must end at T = %lld, got %lld", (long long)t,
                      (long long)c[n - 1]);
    free(c);
    return s;
}

lu_tensor *lu_attention(lu_tensor *q, lu_tensor *k, lu_tensor *v, const lu_attention_opts *opts)
{
    LU_PROPAGATE_NULL(q, k, v);
    static const lu_attention_opts defaults = {0};
    if (!opts) opts = &defaults;
    if (opts->weights_out) *opts->weights_out = NULL;
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4)
        return fail_qkv(LU_ERR_SHAPE, "q, k, v must be [B, T, H, D]", q, k, v);
    if (!lu_dtype_is_float(q->dtype) || k->dtype != q->dtype || v->dtype != q->dtype)
        return fail_qkv(LU_ERR_DTYPE, "q, k, v need one float dtype", q, k, v);
    int64_t b = q->shape[0], tq = q->shape[1], hq = q->shape[2], d = q->shape[3];
    int64_t tk = k->shape[1], hkv = k->shape[2], dv = v->shape[3];
    if (k->shape[0] != b || v->shape[0] != b) return fail_qkv(LU_ERR_SHAPE, "batch sizes differ", q, k, v);
    if (v->shape[1] != tk || v->shape[2] != hkv) return fail_qkv(LU_ERR_SHAPE, "k and v differ in length or heads", q, k, v);
    if (k->shape[3] != d) return fail_qkv(LU_ERR_SHAPE, "q and k head dims differ", q, k, v);
    if (d == 0 || dv == 0) return fail_qkv(LU_ERR_SHAPE, "head dims must be non-zero", q, k, v);
    if (hkv == 0 || hq % hkv) return fail_qkv(LU_ERR_SHAPE, "query heads must be a multiple of key/value heads", q, k, v);
    if (!isfinite(opts->scale)) {
        lu_errorf(LU_ERR_INVALID, "attention: scale must be finite, got %g", opts->scale);
        return NULL;
    }
    lu_tensor *mask = opts->key_padding_mask, *cu = opts->cu_seqlens;
    if (mask && ((mask->dtype != LU_U8 && mask->dtype != LU_BOOL) || mask->ndim != 2 || mask->shape[0] != b ||
                 mask->shape[1] != tk)) {
        char sm[LU_SHAPE_STR_MAX];
        lu_errorf(LU_ERR_SHAPE, "attention: key_padding_mask %s %s must be u8/bool [B, Tk] = [%lld, %lld]",
                  lu_shape_str(mask, sm, sizeof sm), lu_dtype_name(mask->dtype), (long long)b, (long long)tk);
        return NULL;
    }
    if (cu && check_cu_seqlens(cu, q, k)) return NULL;

    lu_attention_params p = {opts->causal, opts->scale != 0 ? opts->scale : 1.0 / sqrt((double)d),
                             opts->weights_out != NULL};
    lu_device dev = lu_tensor_device(q);
    lu_tensor *in[5] = {lu_contiguous(q), lu_contiguous(k), lu_contiguous(v), mask ? lu_contiguous(mask) : NULL,
                        cu ? lu_contiguous(cu) : NULL};
    lu_tensor *out[3] = {0}, *o = NULL;
    bool ok = in[0] && in[1] && in[2] && (!mask || in[3]) && (!cu || in[4]);
    if (ok) ok = (out[0] = lu_tensor_empty(q->dtype, 4, (int64_t[]){b, tq, hq, dv}, dev)) != NULL;
    /* lse stays f32 for bf16/f16 inputs: the backward recomputes P = exp(s - lse) from it. */
    lu_dtype lse_dt = q->dtype == LU_F64 ? LU_F64 : LU_F32;
    if (ok) ok = (out[1] = lu_tensor_empty(lse_dt, 3, (int64_t[]){b, hq, tq}, dev)) != NULL;
    if (ok && p.return_weights) ok = (out[2] = lu_tensor_empty(q->dtype, 4, (int64_t[]){b, hq, tq, tk}, dev)) != NULL;
    if (ok && lu_op_run(LU_OP_ATTENTION, in, 5, out, p.return_weights ? 3 : 2, &p, sizeof p) == LU_OK) {
        o = lu_tensor_retain(out[0]);
        if (opts->weights_out) *opts->weights_out = lu_tensor_retain(out[2]);
    }
    for (int i = 0; i < 5; i++) lu_tensor_release(in[i]);
    for (int i = 0; i < 3; i++) lu_tensor_release(out[i]);
    return o;
}

lu_tensor *lu_attention_apply(lu_tensor *weights, lu_tensor *v)
{
    LU_PROPAGATE_NULL(weights, v);
    char sw[LU_SHAPE_STR_MAX], sv[LU_SHAPE_STR_MAX];
    if (weights->ndim != 4 || v->ndim != 4 || v->shape[0] != weights->shape[0] || v->shape[1] != weights->shape[3] ||
        v->shape[2] != weights->shape[1]) {
        lu_errorf(LU_ERR_SHAPE, "attention_apply: weights %s must be [B, H, Tq, Tk] and v %s [B, Tk, H, Dv]",
                  lu_shape_str(weights, sw, sizeof sw), lu_shape_str(v, sv, sizeof sv));
        return NULL;
    }
    /* [B,H,Tq,Tk] @ [B,H,Tk,Dv] -> [B,H,Tq,Dv] -> [B,Tq,H,Dv]. */
    static const int swap[4] = {0, 2, 1, 3};
    lu_tensor *vh = lu_permute(v, swap), *oh = vh ? lu_matmul(weights, vh, false, false) : NULL;
    lu_tensor *ot = oh ? lu_permute(oh, swap) : NULL, *o = ot ? lu_contiguous(ot) : NULL;
    lu_tensor_release(vh);
    lu_tensor_release(oh);
    lu_tensor_release(ot);
    return o;
}
