/* ops_ctc.c - lu_ctc_loss: connectionist temporal classification (Graves et al., ICML 2006) as
 * torch.nn.functional.ctc_loss, with batch-first log_probs [B, T, V]. The exit losses of the
 * early-exit ASR models (asr.md 7.1). Targets and lengths are checked here, on a host copy, for
 * every backend. */
#include <stdlib.h>

#include "autograd.h"
#include "ops.h"

static lu_tensor *ctc_fail(lu_status code, const char *what, const lu_tensor *lp, const lu_tensor *targets)
{
    char sl[LU_SHAPE_STR_MAX], st[LU_SHAPE_STR_MAX];
    lu_errorf(code, "ctc_loss: %s (log_probs %s %s, targets %s %s)", what, lu_shape_str(lp, sl, sizeof sl),
              lu_dtype_name(lp->dtype), lu_shape_str(targets, st, sizeof st), lu_dtype_name(targets->dtype));
    return NULL;
}

static bool ctc_is_int(const lu_tensor *t) { return t->dtype == LU_I32 || t->dtype == LU_I64; }

/* Input lengths in [0, T], target lengths in [0, S], and the first target_length ids of each
 * row in [0, V) and != blank. Records the error and returns false otherwise. */
static bool ctc_check_values(const lu_tensor *lp, const lu_tensor *targets, const lu_tensor *il, const lu_tensor *tl,
                             int blank)
{
    int64_t B = lp->shape[0], T = lp->shape[1], V = lp->shape[2], S = targets->shape[1];
    int64_t *buf = malloc((size_t)(B * S + 2 * B + 1) * sizeof *buf), *ilen = buf + B * S, *tlen = ilen + B;
    if (!buf) {
        lu_errorf(LU_ERR_NOMEM, "ctc_loss: cannot copy %lld targets to the host", (long long)(B * S));
        return false;
    }
    bool ok = lu_tensor_to_host(targets, LU_I64, buf) == LU_OK && lu_tensor_to_host(il, LU_I64, ilen) == LU_OK &&
              lu_tensor_to_host(tl, LU_I64, tlen) == LU_OK;
    char msg[160] = "";
    for (int64_t b = 0; ok && b < B; b++) {
        if (ilen[b] < 0 || ilen[b] > T) {
            snprintf(msg, sizeof msg, "input_lengths[%lld] = %lld is outside [0, T = %lld]", (long long)b,
                     (long long)ilen[b], (long long)T);
            ok = false;
        } else if (tlen[b] < 0 || tlen[b] > S) {
            snprintf(msg, sizeof msg, "target_lengths[%lld] = %lld is outside [0, S = %lld]", (long long)b,
                     (long long)tlen[b], (long long)S);
            ok = false;
        }
        for (int64_t s = 0; ok && s < tlen[b]; s++) {
            int64_t id = buf[b * S + s];
            if (id < 0 || id >= V || id == blank) {
                snprintf(msg, sizeof msg, "targets[%lld, %lld] = %lld must be in [0, V = %lld) and differ from blank %d",
                         (long long)b, (long long)s, (long long)id, (long long)V, blank);
                ok = false;
            }
        }
    }
    free(buf);
    if (!ok && msg[0]) ctc_fail(LU_ERR_INVALID, msg, lp, targets);
    return ok;
}

lu_tensor *lu_ctc_loss(lu_tensor *log_probs, lu_tensor *targets, lu_tensor *input_lengths,
                       lu_tensor *target_lengths, int blank, lu_reduction red, bool zero_infinity)
{
    LU_PROPAGATE_NULL(log_probs, targets, input_lengths, target_lengths);
    const lu_tensor *lp = log_probs;
    if (lp->ndim != 3 || !lu_dtype_is_float(lp->dtype))
        return ctc_fail(lp->ndim != 3 ? LU_ERR_SHAPE : LU_ERR_DTYPE, "log_probs must be a float [B, T, V]", lp, targets);
    int64_t B = lp->shape[0];
    if (targets->ndim != 2 || targets->shape[0] != B || !ctc_is_int(targets))
        return ctc_fail(targets->ndim != 2 || targets->shape[0] != B ? LU_ERR_SHAPE : LU_ERR_DTYPE,
                        "targets must be a padded i32/i64 [B, S]", lp, targets);
    const lu_tensor *len[2] = {input_lengths, target_lengths};
    for (int i = 0; i < 2; i++) {
        if (len[i]->ndim != 1 || len[i]->shape[0] != B || !ctc_is_int(len[i])) {
            char msg[128], sh[LU_SHAPE_STR_MAX];
            snprintf(msg, sizeof msg, "%s %s %s must be i32/i64 [B]", i ? "target_lengths" : "input_lengths",
                     lu_shape_str(len[i], sh, sizeof sh), lu_dtype_name(len[i]->dtype));
            return ctc_fail(len[i]->ndim == 1 && len[i]->shape[0] == B ? LU_ERR_DTYPE : LU_ERR_SHAPE, msg, lp, targets);
        }
    }
    if (blank < 0 || blank >= lp->shape[2] || (red != LU_REDUCE_MEAN && red != LU_REDUCE_SUM && red != LU_REDUCE_NONE)) {
        char msg[96];
        snprintf(msg, sizeof msg, "blank %d must be in [0, V) and reduction %d valid", blank, (int)red);
        return ctc_fail(LU_ERR_INVALID, msg, lp, targets);
    }
    if (!ctc_check_values(lp, targets, input_lengths, target_lengths, blank)) return NULL;

    lu_tensor *in[4] = {lu_contiguous(log_probs), lu_contiguous(targets), lu_contiguous(input_lengths),
                        lu_contiguous(target_lengths)};
    lu_tensor *out[2] = {NULL, NULL};
    bool ok = in[0] && in[1] && in[2] && in[3];
    if (ok) {
        lu_device dev = lu_tensor_device(log_probs);
        out[0] = lu_tensor_empty(lp->dtype, red == LU_REDUCE_NONE ? 1 : 0, &B, dev);
        out[1] = lu_tensor_empty(lp->dtype, 1, &B, dev);
        lu_ctc_params p = {blank, red, zero_infinity};
        ok = out[0] && out[1] && lu_op_run(LU_OP_CTC_LOSS, in, 4, out, 2, &p, sizeof p) == LU_OK;
    }
    for (int i = 0; i < 4; i++) lu_tensor_release(in[i]);
    lu_tensor_release(out[1]);
    if (!ok) {
        lu_tensor_release(out[0]);
        return NULL;
    }
    return out[0];
}
