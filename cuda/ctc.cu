/* ctc.cu - the CTC loss (Graves et al., ICML 2006) on the GPU: log_probs [B, T, V] f32 or bf16,
 * recursions in double as on the CPU (core/cpu/ctc_generic.h is the reference, with its
 * formulas). One block per utterance; its threads cover the 2S+1 states of the extended label
 * sequence l' = (blank, l_1, blank, ..., l_S, blank) and step through time together.
 *
 * Forward: the alpha recursion over two rows gives nll = -log Z per utterance; one thread then
 * reduces the batch in order (none / sum / mean over target lengths, zero_infinity). Backward:
 * alpha is kept for every step, beta runs from the end over two rows, and at each step the
 * gradient of every label k of l' is -scale * exp(lse_{s: l'(s) = k}(alpha + beta) - log Z -
 * lp[t, k]), the log-sum taken over the states of k in increasing order (a chain of "next state
 * with the same label"), as the CPU does. Targets and lengths were validated by lu_ctc_loss. */
#include <math.h>

#include "device.cuh"

/* Threads per utterance block; larger label sequences loop. Double math needs the registers. */
#define CTC_THREADS 256

/* One utterance, as every thread of its block sees it. */
typedef struct ctc_utt {
    const void *targets; /* [B, S] */
    bool i64;            /* targets are i64 (else i32) */
    int64_t b, S, T, L;  /* T: input length, L = 2 * target length + 1 */
    int64_t lp0;         /* element offset of the utterance's [T, V] block */
    int blank;
} ctc_utt;

/* The integer operands and their dtypes (i32 or i64 each). */
typedef struct ctc_ints {
    const void *targets, *il, *tl;
    bool targets64, il64, tl64;
} ctc_ints;

static __device__ __forceinline__ int64_t load_int(const void *p, bool i64, int64_t i)
{
    return i64 ? ((const int64_t *)p)[i] : ((const int32_t *)p)[i];
}

static __device__ __forceinline__ int64_t ctc_label(const ctc_utt *u, int64_t s)
{
    return s % 2 ? load_int(u->targets, u->i64, u->b * u->S + s / 2) : u->blank;
}

/* The path may jump from s-2 to s: l'(s) is a label that differs from l'(s-2). */
static __device__ __forceinline__ bool ctc_can_skip(const ctc_utt *u, int64_t s)
{
    return s >= 2 && s % 2 == 1 && ctc_label(u, s) != ctc_label(u, s - 2);
}

/* log(exp(a) + exp(b)); -inf is the log of zero. */
static __device__ __forceinline__ double ctc_logaddexp(double a, double b)
{
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

static __device__ ctc_utt ctc_utt_of(const ctc_ints *in, int64_t b, int64_t S, int64_t T, int64_t V, int blank)
{
    ctc_utt u;
    u.targets = in->targets;
    u.i64 = in->targets64;
    u.b = b;
    u.S = S;
    u.T = load_int(in->il, in->il64, b);
    u.L = 2 * load_int(in->tl, in->tl64, b) + 1;
    u.lp0 = b * T * V;
    u.blank = blank;
    return u;
}

/* Alpha rows 0 .. u->T-1 of utterance u over its block of lp. Row t is written at
 * alpha + (all_rows ? t : t % 2) * stride. Returns log Z to every thread (u->T >= 1). */
static __device__ double ctc_alpha(const ctc_utt *u, int dt, const void *lp, int64_t V, double *alpha, int64_t stride,
                                   bool all_rows)
{
    int64_t L = u->L;
    for (int64_t s = threadIdx.x; s < L; s += blockDim.x)
        alpha[s] = s < 2 ? (double)lu_dev_load(lp, dt, u->lp0 + ctc_label(u, s)) : -INFINITY;
    __syncthreads();
    for (int64_t t = 1; t < u->T; t++) {
        const double *prev = alpha + (all_rows ? t - 1 : (t - 1) % 2) * stride;
        double *cur = alpha + (all_rows ? t : t % 2) * stride;
        for (int64_t s = threadIdx.x; s < L; s += blockDim.x) {
            double a = prev[s];
            if (s >= 1) a = ctc_logaddexp(a, prev[s - 1]);
            if (ctc_can_skip(u, s)) a = ctc_logaddexp(a, prev[s - 2]);
            cur[s] = a + (double)lu_dev_load(lp, dt, u->lp0 + t * V + ctc_label(u, s));
        }
        __syncthreads();
    }
    const double *last = alpha + (all_rows ? u->T - 1 : (u->T - 1) % 2) * stride;
    return ctc_logaddexp(last[L - 1], L >= 2 ? last[L - 2] : -INFINITY);
}

/* nll[b] = -log Z (+inf when no alignment exists); alpha: two rows of `stride` per block. */
static __global__ void __launch_bounds__(CTC_THREADS)
    ctc_forward_kernel(int dt, const void *lp, ctc_ints in, int64_t B, int64_t T, int64_t V, int64_t S, int blank,
                       int ndt, void *nll, double *alpha, int64_t stride)
{
    alpha += (size_t)blockIdx.x * 2 * stride;
    for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
        ctc_utt u = ctc_utt_of(&in, b, S, T, V, blank);
        double logz;
        if (u.T == 0) logz = u.L == 1 ? 0.0 : -INFINITY;
        else logz = ctc_alpha(&u, dt, lp, V, alpha, stride, false);
        if (threadIdx.x == 0) lu_dev_store(nll, ndt, b, (float)-logz);
        __syncthreads(); /* the alpha rows are reused by the next utterance */
    }
}

/* The batch loss from the saved nll, in batch order (one thread). */
static __global__ void ctc_loss_kernel(int ndt, const void *nll, const void *tl, bool tl64, int64_t B, int reduction,
                                       bool zero_infinity, void *loss)
{
    double total = 0.0;
    for (int64_t b = 0; b < B; b++) {
        double v = lu_dev_load(nll, ndt, b);
        if (zero_infinity && isinf(v)) v = 0.0;
        int64_t len = load_int(tl, tl64, b);
        if (reduction == LU_REDUCE_NONE) lu_dev_store(loss, ndt, b, (float)v);
        else if (reduction == LU_REDUCE_SUM) total += v;
        else total += v / (double)(len > 1 ? len : 1);
    }
    if (reduction == LU_REDUCE_SUM) lu_dev_store(loss, ndt, 0, (float)total);
    else if (reduction == LU_REDUCE_MEAN) lu_dev_store(loss, ndt, 0, (float)(total / (double)B));
}

/* dlp (zeroed) for each utterance. Scratch per block: alpha [T][stride], beta [2][stride],
 * next [stride] (the next state with the same label, -1 at the end of a chain) and first
 * [stride] (1 where a state's label has no earlier state). */
static __global__ void __launch_bounds__(CTC_THREADS)
    ctc_backward_kernel(int dt, const void *lp, ctc_ints in, int64_t B, int64_t T, int64_t V, int64_t S, int blank,
                        int reduction, bool zero_infinity, const void *dloss, void *dlp, double *alpha, double *beta,
                        int *next, int *first, int64_t stride)
{
    alpha += (size_t)blockIdx.x * T * stride;
    beta += (size_t)blockIdx.x * 2 * stride;
    next += (size_t)blockIdx.x * stride;
    first += (size_t)blockIdx.x * stride;
    for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
        ctc_utt u = ctc_utt_of(&in, b, S, T, V, blank);
        int64_t L = u.L, g0 = u.lp0;
        double scale = 0.0;
        if (dloss) {
            int64_t len = (u.L - 1) / 2;
            if (reduction == LU_REDUCE_NONE) scale = lu_dev_load(dloss, dt, b);
            else if (reduction == LU_REDUCE_SUM) scale = lu_dev_load(dloss, dt, 0);
            else scale = lu_dev_load(dloss, dt, 0) / ((double)(len > 1 ? len : 1) * (double)B);
        }
        if (scale == 0.0 || u.T == 0) continue; /* uniform over the block */
        double logz = ctc_alpha(&u, dt, lp, V, alpha, stride, true);
        if (isinf(logz)) {
            float fill = zero_infinity ? 0.0f : NAN;
            for (int64_t i = threadIdx.x; i < u.T * V; i += blockDim.x) lu_dev_store(dlp, dt, g0 + i, fill);
            __syncthreads();
            continue;
        }
        for (int64_t s = threadIdx.x; s < L; s += blockDim.x) {
            int64_t k = ctc_label(&u, s), nx = -1;
            bool is_first = true;
            /* labels differ from blank: only states of s's parity can share its label */
            for (int64_t q = s + 2; q < L && nx < 0; q += 2)
                if (ctc_label(&u, q) == k) nx = q;
            for (int64_t q = s - 2; q >= 0 && is_first; q -= 2) is_first = ctc_label(&u, q) != k;
            next[s] = (int)nx;
            first[s] = is_first;
        }
        for (int64_t t = u.T - 1; t >= 0; t--) {
            double *cur = beta + (t % 2) * stride;
            const double *later = beta + ((t + 1) % 2) * stride;
            for (int64_t s = threadIdx.x; s < L; s += blockDim.x) {
                double lps = lu_dev_load(lp, dt, g0 + t * V + ctc_label(&u, s));
                if (t == u.T - 1) {
                    cur[s] = s >= L - 2 ? lps : -INFINITY;
                } else {
                    double v = later[s];
                    if (s + 1 < L) v = ctc_logaddexp(v, later[s + 1]);
                    if (s + 2 < L && ctc_can_skip(&u, s + 2)) v = ctc_logaddexp(v, later[s + 2]);
                    cur[s] = v + lps;
                }
            }
            __syncthreads();
            const double *at = alpha + t * stride;
            for (int64_t s = threadIdx.x; s < L; s += blockDim.x) {
                if (!first[s]) continue;
                double acc = -INFINITY;
                for (int64_t q = s; q >= 0; q = next[q]) acc = ctc_logaddexp(acc, at[q] + cur[q]);
                if (acc == -INFINITY) continue;
                int64_t k = ctc_label(&u, s);
                double lpk = lu_dev_load(lp, dt, g0 + t * V + k);
                lu_dev_store(dlp, dt, g0 + t * V + k, (float)(-scale * exp(acc - logz - lpk)));
            }
        }
        __syncthreads(); /* the scratch is reused by the next utterance */
    }
}

/* Checks the operands: log_probs [B, T, V] f32/bf16, targets [B, S], lengths [B] (i32 or i64). */
static lu_status ctc_check(const lu_op_call *c, const lu_tensor *lp, const lu_tensor *targets, const lu_tensor *il,
                           const lu_tensor *tl)
{
    const lu_tensor *ts[1] = {lp};
    LU_TRY(lu_cuda_check_float(c, ts, 1, lp->dtype));
    bool ok = lp->ndim == 3 && targets->ndim == 2 && targets->shape[0] == lp->shape[0] &&
              lu_tensor_numel(il) == lp->shape[0] && lu_tensor_numel(tl) == lp->shape[0];
    if (!ok) {
        char sl[LU_SHAPE_STR_MAX], st[LU_SHAPE_STR_MAX];
        return lu_errorf(LU_ERR_SHAPE, "ctc_loss: log_probs %s, targets %s and the lengths do not fit",
                         lu_shape_str(lp, sl, sizeof sl), lu_shape_str(targets, st, sizeof st));
    }
    const lu_tensor *ints[3] = {targets, il, tl};
    for (int i = 0; i < 3; i++)
        if (ints[i]->dtype != LU_I32 && ints[i]->dtype != LU_I64)
            return lu_errorf(LU_ERR_DTYPE, "ctc_loss: targets and lengths must be i32 or i64, got %s, %s, %s",
                             lu_dtype_name(targets->dtype), lu_dtype_name(il->dtype), lu_dtype_name(tl->dtype));
    return LU_OK;
}

static ctc_ints ctc_ints_of(const lu_tensor *targets, const lu_tensor *il, const lu_tensor *tl)
{
    ctc_ints in = {lu_tensor_data(targets), lu_tensor_data(il), lu_tensor_data(tl), targets->dtype == LU_I64,
                   il->dtype == LU_I64, tl->dtype == LU_I64};
    return in;
}

static unsigned ctc_grid(int64_t B) { return (unsigned)(B < 65535 ? B : 65535); }

/* in = [log_probs, targets, input_lengths, target_lengths], out = [loss ([] or [B]), nll [B]]. */
static lu_status ctc_forward(const lu_op_call *c)
{
    const lu_ctc_params *p = (const lu_ctc_params *)c->params;
    const lu_tensor *lp = c->in[0], *targets = c->in[1], *il = c->in[2], *tl = c->in[3];
    lu_tensor *loss = c->out[0], *nll = c->out[1];
    LU_TRY(ctc_check(c, lp, targets, il, tl));
    int64_t B = lp->shape[0], T = lp->shape[1], V = lp->shape[2], S = targets->shape[1], stride = 2 * S + 1;
    if (!lu_cuda_is_float(nll->dtype) || nll->dtype != loss->dtype || lu_tensor_numel(nll) != B ||
        lu_tensor_numel(loss) != (p->reduction == LU_REDUCE_NONE ? B : 1))
        return lu_errorf(LU_ERR_SHAPE, "ctc_loss: loss (%lld elements) and nll (%lld) do not fit a batch of %lld",
                         (long long)lu_tensor_numel(loss), (long long)lu_tensor_numel(nll), (long long)B);
    if (B > 0) {
        double *alpha;
        unsigned grid = ctc_grid(B);
        LU_TRY(lu_cuda_scratch_alloc((void **)&alpha, (size_t)grid * 2 * (size_t)stride * sizeof *alpha));
        ctc_forward_kernel<<<grid, CTC_THREADS>>>(lp->dtype, lu_tensor_data(lp), ctc_ints_of(targets, il, tl), B, T, V,
                                                  S, p->blank, nll->dtype, lu_tensor_data(nll), alpha, stride);
        LU_CUDA_CHECK_LAUNCH();
        lu_cuda_scratch_free(alpha);
    }
    ctc_loss_kernel<<<1, 1>>>(nll->dtype, lu_tensor_data(nll), lu_tensor_data(tl), tl->dtype == LU_I64, B, (int)p->reduction,
                              p->zero_infinity, lu_tensor_data(loss));
    LU_CUDA_CHECK_LAUNCH();
    return LU_OK;
}

/* in = [dloss, dnll, log_probs, targets, input_lengths, target_lengths, loss, nll], out = [dlp].
 * dnll is ignored: nll is a saved statistic. */
static lu_status ctc_backward(const lu_op_call *c)
{
    const lu_ctc_params *p = (const lu_ctc_params *)c->params;
    const lu_tensor *dloss = c->in[0], *lp = c->in[2], *targets = c->in[3], *il = c->in[4], *tl = c->in[5];
    lu_tensor *dlp = c->out[0];
    if (!dlp) return LU_OK;
    LU_TRY(ctc_check(c, lp, targets, il, tl));
    const lu_tensor *ts[3] = {lp, dloss, dlp};
    LU_TRY(lu_cuda_check_float(c, ts, 3, lp->dtype));
    int64_t B = lp->shape[0], T = lp->shape[1], V = lp->shape[2], S = targets->shape[1], stride = 2 * S + 1;
    if (lu_tensor_numel(dlp) == 0) return LU_OK;
    LU_TRY(lu_cuda_zero(dlp));
    if (!dloss) return LU_OK;
    unsigned grid = ctc_grid(B);
    /* alpha [grid][T][stride], beta [grid][2][stride] doubles, then next and first ints. */
    size_t n_alpha = (size_t)grid * (size_t)T * (size_t)stride, n_beta = (size_t)grid * 2 * (size_t)stride;
    size_t n_int = (size_t)grid * (size_t)stride;
    double *alpha;
    LU_TRY(lu_cuda_scratch_alloc((void **)&alpha, (n_alpha + n_beta) * sizeof(double) + 2 * n_int * sizeof(int)));
    double *beta = alpha + n_alpha;
    int *next = (int *)(void *)(beta + n_beta), *first = next + n_int;
    ctc_backward_kernel<<<grid, CTC_THREADS>>>(lp->dtype, lu_tensor_data(lp), ctc_ints_of(targets, il, tl), B, T, V,
                                               S, p->blank, (int)p->reduction, p->zero_infinity, lu_tensor_data(dloss),
                                               lu_tensor_data(dlp), alpha, beta, next, first, stride);
    LU_CUDA_CHECK_LAUNCH();
    lu_cuda_scratch_free(alpha);
    return LU_OK;
}

extern "C" void lu_cuda_register_ctc(lu_backend *b)
{
    b->forward[LU_OP_CTC_LOSS] = ctc_forward;
    b->backward[LU_OP_CTC_LOSS] = ctc_backward;
}
